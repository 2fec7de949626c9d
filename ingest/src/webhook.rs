//! The kube-apiserver audit webhook target: HTTPS (or, when asked for, plain HTTP) with
//! optional client certificates and bearer tokens. A 200 means the body is in the fsynced
//! write-ahead log; the apiserver retries anything else, so the answers are chosen for it:
//! 400/413 for a body no retry can fix is still refused (nothing is stored), 429/503 with
//! `Retry-After` when the log is full or the disk fails.

use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::serve_metrics::ServeMetrics;
use crate::tls::certificate_identity;
use crate::wal::{Wal, WalError};

/// Bearer tokens accepted by the webhook, kept only as SHA-256 digests.
#[derive(Clone, Default)]
pub struct BearerTokens {
    tokens: Vec<([u8; 32], String)>,
}

impl BearerTokens {
    /// Reads a tokens file: one token per line, optionally followed by whitespace and a name
    /// recorded as the sender's identity; blank lines and `#` comments are skipped.
    pub fn load(path: &Path) -> Result<Self, std::io::Error> {
        let text = std::fs::read_to_string(path)?;
        let mut tokens = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.splitn(2, char::is_whitespace);
            let token = parts.next().unwrap_or_default();
            let name = parts
                .next()
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map_or_else(|| format!("token-line-{}", i + 1), str::to_string);
            tokens.push((Sha256::digest(token.as_bytes()).into(), name));
        }
        if tokens.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no token in the file",
            ));
        }
        Ok(Self { tokens })
    }

    /// The name of the token presented, comparing against every token in constant time.
    fn check(&self, presented: &[u8]) -> Option<&str> {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        let mut found = None;
        for (t, name) in &self.tokens {
            if bool::from(t.ct_eq(&digest)) {
                found = Some(name.as_str());
            }
        }
        found
    }
}

/// Who is on the other end of a connection.
#[derive(Clone, Debug, Default)]
pub struct Peer {
    /// The verified client certificate's identity, if one was presented.
    pub certificate: Option<String>,
    /// The TCP peer.
    pub addr: Option<SocketAddr>,
}

/// How the webhook authenticates and limits requests.
#[derive(Clone)]
pub struct WebhookSettings {
    /// Cluster for requests to `/audit/webhook` (no cluster in the path).
    pub default_cluster: String,
    /// Tag events with the client certificate's identity as cluster when the path names none.
    pub cluster_from_client_cert: bool,
    /// A client certificate is required (mutual TLS is configured).
    pub require_client_cert: bool,
    /// Bearer tokens, when configured: requests must carry one.
    pub tokens: Option<BearerTokens>,
    /// Largest request body accepted, compressed or not, and after decompression.
    pub max_body_bytes: usize,
    /// Refuse new bodies (429) once the write-ahead log holds this many bytes.
    pub wal_max_bytes: u64,
}

/// State shared by the webhook handlers.
#[derive(Clone)]
pub struct WebhookState {
    /// Settings.
    pub settings: Arc<WebhookSettings>,
    /// The log bodies are appended to.
    pub wal: Wal,
    /// Metrics.
    pub metrics: Arc<ServeMetrics>,
    /// Set once the log has been replayed into the archive.
    pub ready: Arc<AtomicBool>,
}

fn answer(status: StatusCode, retry_after: Option<u64>, message: impl Into<String>) -> Response {
    let body = serde_json::json!({
        "status": status.as_u16(),
        "message": message.into(),
    });
    let mut r = (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    if let Some(secs) = retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

/// The webhook routes: `POST /audit/webhook` and `POST /audit/webhook/{cluster}`.
pub fn router(state: WebhookState) -> Router {
    Router::new()
        .route("/audit/webhook", post(webhook_default))
        .route("/audit/webhook/{cluster}", post(webhook_cluster))
        .with_state(state)
}

async fn webhook_default(
    State(state): State<WebhookState>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    receive(state, peer, None, headers, body).await
}

async fn webhook_cluster(
    State(state): State<WebhookState>,
    Extension(peer): Extension<Peer>,
    UrlPath(cluster): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    receive(state, peer, Some(cluster), headers, body).await
}

async fn receive(
    state: WebhookState,
    peer: Peer,
    cluster: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let response = accept(&state, peer, cluster, &headers, body).await;
    state
        .metrics
        .answered(response.status().as_u16(), started.elapsed());
    response
}

/// Who sent the request, or the answer refusing it.
fn authenticate(
    settings: &WebhookSettings,
    peer: &Peer,
    headers: &HeaderMap,
) -> Result<String, Box<Response>> {
    if settings.require_client_cert && peer.certificate.is_none() {
        return Err(Box::new(answer(
            StatusCode::UNAUTHORIZED,
            None,
            "a client certificate signed by the configured client CA is required",
        )));
    }
    let mut identity = peer.certificate.clone().unwrap_or_default();
    if let Some(tokens) = &settings.tokens {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
        let Some(presented) = presented else {
            let mut r = answer(StatusCode::UNAUTHORIZED, None, "missing bearer token");
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return Err(Box::new(r));
        };
        match tokens.check(presented.trim_ascii()) {
            Some(name) if identity.is_empty() => identity = name.to_string(),
            Some(name) => identity = format!("{identity} token:{name}"),
            None => {
                return Err(Box::new(answer(
                    StatusCode::FORBIDDEN,
                    None,
                    "bearer token not accepted",
                )));
            }
        }
    }
    Ok(identity)
}

async fn accept(
    state: &WebhookState,
    peer: Peer,
    cluster: Option<String>,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let settings = &state.settings;
    let identity = match authenticate(settings, &peer, headers) {
        Ok(id) => id,
        Err(r) => {
            tracing::warn!(peer = ?peer.addr, "webhook request refused: not authenticated");
            return *r;
        }
    };
    if !state.ready.load(Ordering::Acquire) {
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(5),
            "replaying the write-ahead log; not ready yet",
        );
    }
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or_default().to_ascii_lowercase();
        if !(ct.starts_with("application/json") || ct.starts_with("application/x-ndjson")) {
            return answer(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                None,
                format!("Content-Type {ct:?}: expected application/json"),
            );
        }
    }
    let wal_bytes = state.wal.stats().bytes.load(Ordering::Relaxed);
    if wal_bytes >= settings.wal_max_bytes {
        tracing::warn!(
            wal_bytes,
            limit = settings.wal_max_bytes,
            "write-ahead log full: answering 429"
        );
        return answer(
            StatusCode::TOO_MANY_REQUESTS,
            Some(10),
            format!(
                "write-ahead log holds {wal_bytes} bytes (wal_max_bytes {}); the archive is behind",
                settings.wal_max_bytes
            ),
        );
    }
    let limit = settings.max_body_bytes;
    let raw = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            return answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                None,
                format!("request body exceeds max_body_bytes ({limit})"),
            );
        }
    };
    let body = match decompress(headers, raw, limit) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    if let Some(problem) = auditlake_schema::json_syntax_error(&body) {
        return answer(
            StatusCode::BAD_REQUEST,
            None,
            format!("request body: {problem}"),
        );
    }
    let cluster = cluster
        .filter(|c| !c.is_empty())
        .or_else(|| {
            settings
                .cluster_from_client_cert
                .then(|| peer.certificate.clone())
                .flatten()
        })
        .unwrap_or_else(|| settings.default_cluster.clone());
    if let Some(problem) = crate::partitioned_writer::cluster_name_error(&cluster) {
        return answer(StatusCode::BAD_REQUEST, None, problem);
    }
    let len = body.len();
    let received = crate::pipeline::now_micros();
    match state.wal.append(cluster, identity, received, body).await {
        Ok(seq) => {
            state.metrics.batches.inc();
            state.metrics.bytes_in.inc_by(len as u64);
            answer(
                StatusCode::OK,
                None,
                format!("stored as write-ahead log record {seq}"),
            )
        }
        Err(e) => match &*e {
            WalError::Record(m) => answer(StatusCode::BAD_REQUEST, None, m.clone()),
            WalError::Closed => answer(StatusCode::SERVICE_UNAVAILABLE, Some(5), "shutting down"),
            WalError::Io { .. } => answer(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(10),
                format!("cannot store the body: {e}"),
            ),
        },
    }
}

fn decompress(headers: &HeaderMap, raw: Bytes, limit: usize) -> Result<Vec<u8>, Box<Response>> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "" | "identity" => Ok(raw.to_vec()),
        "gzip" | "x-gzip" => {
            let mut out = Vec::with_capacity(raw.len() * 4);
            let mut reader = flate2::read::MultiGzDecoder::new(&raw[..]).take(limit as u64 + 1);
            if let Err(e) = reader.read_to_end(&mut out) {
                return Err(Box::new(answer(
                    StatusCode::BAD_REQUEST,
                    None,
                    format!("gzip body: {e} (after {} decompressed bytes)", out.len()),
                )));
            }
            if out.len() > limit {
                return Err(Box::new(answer(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    None,
                    format!("decompressed body exceeds max_body_bytes ({limit})"),
                )));
            }
            Ok(out)
        }
        other => Err(Box::new(answer(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
            format!("Content-Encoding {other:?}: only gzip is supported"),
        ))),
    }
}

/// Serves `router` on `listener` (TLS when `tls` is given) until `shutdown` turns true,
/// then stops accepting and waits up to `drain` for requests in flight.
pub async fn serve_connections(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let stopping = async {
            // The `Ref` must not live across an await of this (Send) future.
            let _ = shutdown.wait_for(|s| *s).await.map(|_| ());
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopping => break,
        };
        let (tcp, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let acceptor = acceptor.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            match acceptor {
                None => {
                    let peer = Peer {
                        certificate: None,
                        addr: Some(addr),
                    };
                    serve_one(tcp, peer, router, watcher).await;
                }
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await;
                    let tls = match handshake {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::warn!(peer = %addr, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::warn!(peer = %addr, "TLS handshake timed out");
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
                    serve_one(tls, peer, router, watcher).await;
                }
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("webhook connections drained"),
        _ = tokio::time::sleep(drain) => tracing::warn!(drain_seconds = drain.as_secs(), "webhook connections still open after the drain timeout"),
    }
}

/// Serves HTTP/1.1 or HTTP/2 on one connection, every request tagged with `peer`.
async fn serve_one<I>(
    io: I,
    peer: Peer,
    router: Router,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = router.map_request(move |mut req: axum::extract::Request<_>| {
        req.extensions_mut().insert(peer.clone());
        req
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(svc));
    let _ = watcher.watch(conn.into_owned()).await;
}

/// The operations routes: `/healthz`, `/readyz`, `/metrics`.
pub fn ops_router(metrics: Arc<ServeMetrics>, ready: Arc<AtomicBool>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    if ready.load(Ordering::Acquire) {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "replaying the write-ahead log\n",
                        )
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        metrics.render(),
                    )
                }
            }),
        )
}
