//! Serving HTTP/1.1 and HTTP/2 connections (TLS or plain) to a router, with the limits that
//! keep a flood of connections from starving legitimate clients and the process of file
//! descriptors:
//!
//! - a cap on open connections: at the cap the server stops accepting (new clients wait in
//!   the kernel's listen backlog) and says so once per interval, not per attempt;
//! - a TLS handshake timeout, and a request-header timeout (a slowloris client that drips
//!   its headers, or an HTTP/2 client that never sends a request, is cut);
//! - a request timeout (a body dripped slowly; the apiserver gives up after 30 s anyway);
//! - an idle timeout (no byte either way).
//!
//! Every cut is counted by kind (`auditlake_connection_timeouts_total{kind}`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::credentials::Credentials;
use crate::serve_metrics::ServeMetrics;
use crate::tls::certificate_identity;

/// How many connections, and how long each phase of one may take.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// A TLS handshake must end within this.
    pub handshake_timeout: Duration,
    /// A request's headers (HTTP/2: the first request) must arrive within this.
    pub header_read_timeout: Duration,
    /// A request must be read and answered within this.
    pub request_timeout: Duration,
    /// A connection with no byte in either direction for this long is closed.
    pub idle_timeout: Duration,
}

/// How often "connection cap reached" is logged at most.
const CAP_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Who is on the other end of a connection.
#[derive(Clone, Debug, Default)]
pub struct Peer {
    /// The verified client certificate's identity, if one was presented.
    pub certificate: Option<String>,
    /// The TCP peer.
    pub addr: Option<std::net::SocketAddr>,
}

/// `max_connections`, lowered to fit the process's file descriptor limit (keeping room for
/// the log, the archive and the operations port), with a warning when lowered.
pub fn usable_connections(max_connections: usize) -> usize {
    #[cfg(target_os = "linux")]
    {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        let room = usize::try_from(limit.saturating_sub(256)).unwrap_or(usize::MAX);
        if room < max_connections {
            tracing::warn!(
                max_connections,
                open_files_limit = limit,
                using = room.max(16),
                "max_connections lowered to fit the open files limit (raise it with ulimit -n)"
            );
            return room.max(16);
        }
    }
    max_connections
}

/// An I/O stream that fails once no byte went either way for `timeout`.
struct Idle<I> {
    io: I,
    timeout: Duration,
    last: Instant,
    timer: Pin<Box<Sleep>>,
    metrics: Arc<ServeMetrics>,
}

impl<I> Idle<I> {
    fn new(io: I, timeout: Duration, metrics: Arc<ServeMetrics>) -> Self {
        let now = Instant::now();
        Self {
            io,
            timeout,
            last: now,
            timer: Box::pin(tokio::time::sleep_until(now + timeout)),
            metrics,
        }
    }

    /// Whether the idle time ran out (re-arming the timer if there was traffic meanwhile:
    /// traffic only records a time, it never touches the timer).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            let deadline = self.last + self.timeout;
            if Instant::now() >= deadline {
                self.metrics.timed_out("idle");
                return true;
            }
            self.timer.as_mut().reset(deadline);
        }
    }
}

fn idle_error() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "connection idle")
}

impl<I: AsyncRead + Unpin> AsyncRead for Idle<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.last = Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Idle<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.io).poll_write(cx, buf))?;
        self.last = Instant::now();
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, bufs))?;
        self.last = Instant::now();
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Serves `router` on `listener` (TLS with the credentials in force when `credentials`
/// holds TLS, plain HTTP otherwise) until `shutdown` turns true, then stops accepting and
/// waits up to `drain` for requests in flight.
pub async fn serve_connections(
    listener: TcpListener,
    credentials: Option<Credentials>,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
    limits: ConnectionLimits,
    metrics: Arc<ServeMetrics>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut last_cap_log: Option<std::time::Instant> = None;
    let router = with_request_timeout(router, limits.request_timeout, metrics.clone());
    loop {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                metrics.connections_over_cap.inc();
                if last_cap_log.is_none_or(|t| t.elapsed() >= CAP_LOG_INTERVAL) {
                    last_cap_log = Some(std::time::Instant::now());
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        "connection cap reached: new connections wait in the listen backlog until one closes"
                    );
                }
                tokio::select! {
                    // The semaphore is never closed, so this only waits.
                    s = slots.clone().acquire_owned() => match s {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                    _ = shutdown.wait_for(|s| *s) => break,
                }
            }
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let (tcp, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait a little, say so.
                tracing::warn!(error = %e, "accept failed");
                drop(slot);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let tls = credentials
            .as_ref()
            .and_then(|c| c.current().tls.clone())
            .map(tokio_rustls::TlsAcceptor::from);
        let watcher = graceful.watcher();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let io = Idle::new(tcp, limits.idle_timeout, metrics.clone());
            match tls {
                None => {
                    let peer = Peer {
                        certificate: None,
                        addr: Some(addr),
                    };
                    serve_one(io, peer, router, watcher, limits, metrics).await;
                }
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(limits.handshake_timeout, acceptor.accept(io)).await;
                    let tls = match handshake {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %addr, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            metrics.timed_out("handshake");
                            tracing::debug!(peer = %addr, "TLS handshake timed out");
                            return;
                        }
                    };
                    let certificate = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(certificate_identity);
                    let peer = Peer {
                        certificate,
                        addr: Some(addr),
                    };
                    serve_one(tls, peer, router, watcher, limits, metrics).await;
                }
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::debug!("connections drained"),
        _ = tokio::time::sleep(drain) => tracing::warn!(drain_seconds = drain.as_secs(), "connections still open after the drain timeout"),
    }
}

/// Answers 408 when a request is not read and answered within `timeout` (a body dripped a
/// byte at a time would otherwise hold its connection and its memory forever).
fn with_request_timeout(router: Router, timeout: Duration, metrics: Arc<ServeMetrics>) -> Router {
    router.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let metrics = metrics.clone();
            async move {
                match tokio::time::timeout(timeout, next.run(req)).await {
                    Ok(r) => r,
                    Err(_) => {
                        metrics.timed_out("request");
                        (
                            StatusCode::REQUEST_TIMEOUT,
                            [(axum::http::header::CONNECTION, "close")],
                            "request not completed in time\n",
                        )
                            .into_response()
                    }
                }
            }
        },
    ))
}

/// Serves HTTP/1.1 or HTTP/2 on one connection, every request tagged with `peer`; the
/// connection is dropped if no request arrives within the header timeout.
async fn serve_one<I>(
    io: I,
    peer: Peer,
    router: Router,
    watcher: hyper_util::server::graceful::Watcher,
    limits: ConnectionLimits,
    metrics: Arc<ServeMetrics>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let seen_request = Arc::new(AtomicBool::new(false));
    let seen = seen_request.clone();
    let svc = router.map_request(move |mut req: axum::extract::Request<_>| {
        seen.store(true, Ordering::Relaxed);
        req.extensions_mut().insert(peer.clone());
        req
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(svc));
    let conn = watcher.watch(conn.into_owned());
    tokio::pin!(conn);
    // HTTP/1 headers have hyper's own timeout; an HTTP/2 client that never sends a request
    // (or drips its preface) is cut here.
    tokio::select! {
        _ = &mut conn => return,
        () = tokio::time::sleep(limits.header_read_timeout) => {}
    }
    if !seen_request.load(Ordering::Relaxed) {
        metrics.timed_out("header");
        return;
    }
    let _ = conn.await;
}
