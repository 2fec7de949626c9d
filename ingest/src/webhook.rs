//! The kube-apiserver audit webhook target: HTTPS (or, when asked for, plain HTTP) with
//! client certificates and/or bearer tokens. A 200 means the body is in the fsynced
//! write-ahead log; the apiserver retries anything else, so the answers are chosen for it:
//! 400/413 for a body no retry can fix is still refused (nothing is stored), 429/503 with
//! `Retry-After` when the log is full or the disk fails. Answers never reveal paths or OS
//! errors: those go to the log.
//!
//! Memory per request is bounded whatever the concurrency: a body is read only once it has
//! room in a shared budget ([`BodyBudget`]), and it is never copied after it is read (the
//! log writes it from the request's own buffer).

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::Semaphore;

use crate::archive_health::ArchiveHealth;
use crate::credentials::Credentials;
use crate::serve_metrics::ServeMetrics;
use crate::wal::{Wal, WalError};

pub use crate::http_connections::{ConnectionLimits, Peer, serve_connections, usable_connections};

/// How the webhook names clusters and limits requests.
#[derive(Clone)]
pub struct WebhookSettings {
    /// Cluster for requests to `/audit/webhook` (no cluster in the path).
    pub default_cluster: String,
    /// The client certificate's common name is the cluster (and binds it: a request for
    /// another cluster is refused).
    pub cluster_from_client_cert: bool,
    /// Largest request body accepted, compressed or not, and after decompression.
    pub max_body_bytes: usize,
    /// Refuse new bodies (429) once the write-ahead log holds this many bytes.
    pub wal_max_bytes: u64,
}

/// Request bodies held in memory at once, all requests together. A request reserves the
/// most its body can take (its `Content-Length`, or the body limit; twice that when gzip,
/// for the decompressed copy) before reading it, and waits for room up to a few seconds.
#[derive(Clone)]
pub struct BodyBudget {
    /// Permits of 1 KiB each.
    kib: Arc<Semaphore>,
}

/// How long a request waits for room in the body budget before 503.
const BUDGET_WAIT: Duration = Duration::from_secs(5);

impl BodyBudget {
    /// A budget of `bytes` (at least 1 KiB).
    pub fn new(bytes: u64) -> Self {
        let kib = usize::try_from(bytes / 1024)
            .unwrap_or(usize::MAX)
            .clamp(1, Semaphore::MAX_PERMITS);
        Self {
            kib: Arc::new(Semaphore::new(kib)),
        }
    }

    async fn reserve(&self, bytes: usize) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let kib = u32::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
        tokio::time::timeout(BUDGET_WAIT, self.kib.clone().acquire_many_owned(kib))
            .await
            .ok()?
            .ok()
    }
}

/// State shared by the webhook handlers.
#[derive(Clone)]
pub struct WebhookState {
    /// Settings.
    pub settings: Arc<WebhookSettings>,
    /// Certificates and tokens in force (reloadable).
    pub credentials: Credentials,
    /// Memory for request bodies.
    pub body_budget: BodyBudget,
    /// The log bodies are made durable in before the 200.
    pub log: DurableLog,
    /// Metrics.
    pub metrics: Arc<ServeMetrics>,
    /// Whether requests are taken (replayed, not stopping).
    pub health: Arc<ArchiveHealth>,
}

/// Where an accepted body is made durable before the 200.
#[derive(Clone)]
pub enum DurableLog {
    /// The local write-ahead log, archived by this server.
    Wal(Wal),
    /// A Kafka topic, archived by consumer-group members (stateless receivers).
    #[cfg(feature = "kafka")]
    Kafka(crate::kafka_log::KafkaLog),
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

/// Who sent the request and the clusters their credentials allow, or the answer refusing it.
fn authenticate(
    state: &WebhookState,
    peer: &Peer,
    headers: &HeaderMap,
) -> Result<(String, Option<Vec<String>>), Box<Response>> {
    let mut identity = peer.certificate.clone().unwrap_or_default();
    let mut clusters = None;
    let credentials = state.credentials.current();
    if let Some(tokens) = &credentials.tokens {
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
            Some(t) => {
                identity = if identity.is_empty() {
                    t.name.to_string()
                } else {
                    format!("{identity} token:{}", t.name)
                };
                clusters = t.clusters.map(<[String]>::to_vec);
            }
            None => {
                return Err(Box::new(answer(
                    StatusCode::FORBIDDEN,
                    None,
                    "bearer token not accepted",
                )));
            }
        }
    }
    Ok((identity, clusters))
}

/// The cluster of a request: the path's, else the certificate's (when it names clusters),
/// else the token's single cluster, else the default; refused with 403 when the
/// credentials are bound to another cluster.
fn resolve_cluster(
    settings: &WebhookSettings,
    peer: &Peer,
    path: Option<String>,
    token_clusters: Option<&[String]>,
) -> Result<String, Box<Response>> {
    let certificate = settings
        .cluster_from_client_cert
        .then(|| peer.certificate.clone())
        .flatten();
    let cluster = path
        .filter(|c| !c.is_empty())
        .or_else(|| certificate.clone())
        .or_else(|| match token_clusters {
            Some([only]) => Some(only.clone()),
            _ => None,
        })
        .unwrap_or_else(|| settings.default_cluster.clone());
    let forbidden = |m: String| Err(Box::new(answer(StatusCode::FORBIDDEN, None, m)));
    if let Some(cert) = &certificate
        && *cert != cluster
    {
        return forbidden(format!(
            "the client certificate is for cluster {cert:?}; it may not post events of cluster {cluster:?}"
        ));
    }
    if let Some(allowed) = token_clusters
        && !allowed.contains(&cluster)
    {
        return forbidden(format!(
            "the bearer token may post events of {allowed:?} only, not of cluster {cluster:?}"
        ));
    }
    Ok(cluster)
}

async fn accept(
    state: &WebhookState,
    peer: Peer,
    cluster: Option<String>,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let settings = &state.settings;
    let (identity, token_clusters) = match authenticate(state, &peer, headers) {
        Ok(id) => id,
        Err(r) => {
            tracing::warn!(peer = ?peer.addr, "webhook request refused: not authenticated");
            return *r;
        }
    };
    let cluster = match resolve_cluster(settings, &peer, cluster, token_clusters.as_deref()) {
        Ok(c) => c,
        Err(r) => {
            tracing::warn!(peer = ?peer.addr, identity = %identity, "webhook request refused: credentials bound to another cluster");
            return *r;
        }
    };
    match store(state, cluster, identity, headers, body).await {
        Ok(place) => answer(StatusCode::OK, None, format!("stored {place}")),
        Err(r) => answer(r.status, r.retry_after, r.message),
    }
}

/// Why a body was not stored: the status to answer, when to retry, and what to say.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) status: StatusCode,
    pub(crate) retry_after: Option<u64>,
    pub(crate) message: String,
}

fn refuse(status: StatusCode, retry_after: Option<u64>, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        retry_after,
        message: message.into(),
    }
}

/// Reads a request's body within the memory budget, checks it is JSON and makes it
/// durable for `cluster`, from `identity`; where it was stored, or why not. Every
/// receiver (the webhook, Firehose, Pub/Sub push) answers success only after this.
// Without the `kafka` feature the write-ahead log is the only durable log.
#[cfg_attr(
    not(feature = "kafka"),
    allow(irrefutable_let_patterns, clippy::infallible_destructuring_match)
)]
pub(crate) async fn store(
    state: &WebhookState,
    cluster: String,
    identity: String,
    headers: &HeaderMap,
    body: Body,
) -> Result<String, Refusal> {
    let settings = &state.settings;
    if let Some(problem) = auditlake_archive::cluster_name_error(&cluster) {
        return Err(refuse(StatusCode::BAD_REQUEST, None, problem));
    }
    if !state.health.accepting() {
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(5),
            "not taking requests yet (replaying the write-ahead log) or any more (shutting down)",
        ));
    }
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or_default().to_ascii_lowercase();
        if !(ct.starts_with("application/json") || ct.starts_with("application/x-ndjson")) {
            return Err(refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                None,
                format!("Content-Type {ct:?}: expected application/json"),
            ));
        }
    }
    if let DurableLog::Wal(wal) = &state.log {
        let wal_bytes = wal.stats().bytes.load(std::sync::atomic::Ordering::Relaxed);
        if wal_bytes >= settings.wal_max_bytes {
            tracing::warn!(
                wal_bytes,
                limit = settings.wal_max_bytes,
                "write-ahead log full: answering 429"
            );
            return Err(refuse(
                StatusCode::TOO_MANY_REQUESTS,
                Some(10),
                "the write-ahead log is full: the archive is behind",
            ));
        }
    }
    let limit = settings.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    let gzip = is_gzip(headers);
    // Reserve what the body can take before reading it: the declared length (or the limit),
    // and the limit again for a decompressed copy.
    let reserve = declared.map_or(limit, |n| n as usize) + if gzip { limit } else { 0 };
    let Some(_room) = state.body_budget.reserve(reserve).await else {
        tracing::warn!(
            bytes = reserve,
            "request bodies in memory are at their limit: answering 503"
        );
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            Some(5),
            "too many request bodies in flight; retry shortly",
        ));
    };
    let raw = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => return Err(too_large(limit)),
    };
    let body = decompress(headers, raw, limit)?;
    if let Some(problem) = auditlake_schema::json_syntax_error(&body) {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            None,
            format!("request body: {problem}"),
        ));
    }
    let len = body.len();
    let received = crate::pipeline::now_micros();
    let wal = match &state.log {
        DurableLog::Wal(wal) => wal,
        #[cfg(feature = "kafka")]
        DurableLog::Kafka(kafka) => {
            return match kafka.append(&cluster, &identity, &body).await {
                Ok(place) => {
                    state.metrics.batches.inc();
                    state.metrics.bytes_in.inc_by(len as u64);
                    Ok(format!("in Kafka at {place}"))
                }
                Err(e) => {
                    tracing::error!(error = %e, "Kafka did not acknowledge a request body: answering 503");
                    Err(refuse(
                        StatusCode::SERVICE_UNAVAILABLE,
                        Some(10),
                        "cannot store the body right now",
                    ))
                }
            };
        }
    };
    match wal.append(cluster, identity, received, body).await {
        Ok(seq) => {
            state.metrics.batches.inc();
            state.metrics.bytes_in.inc_by(len as u64);
            Ok(format!("as write-ahead log record {seq}"))
        }
        Err(e) => Err(match &*e {
            WalError::Record(m) => refuse(StatusCode::BAD_REQUEST, None, m.clone()),
            WalError::Closed => refuse(StatusCode::SERVICE_UNAVAILABLE, Some(5), "shutting down"),
            WalError::Io { .. } | WalError::OtherArchive { .. } => {
                // The path and the OS error are for the operator, not for the client.
                tracing::error!(error = %e, "cannot store a request body: answering 503");
                refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Some(10),
                    "cannot store the body right now",
                )
            }
        }),
    }
}

fn too_large(limit: usize) -> Refusal {
    refuse(
        StatusCode::PAYLOAD_TOO_LARGE,
        None,
        format!("request body exceeds max_body_bytes ({limit})"),
    )
}

fn content_encoding(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase()
}

fn is_gzip(headers: &HeaderMap) -> bool {
    matches!(content_encoding(headers).as_str(), "gzip" | "x-gzip")
}

/// The body as stored: `raw` itself unless it is gzip (never copied otherwise).
fn decompress(headers: &HeaderMap, raw: Bytes, limit: usize) -> Result<Bytes, Refusal> {
    match content_encoding(headers).as_str() {
        "" | "identity" => Ok(raw),
        "gzip" | "x-gzip" => {
            let mut out = Vec::with_capacity((raw.len() * 4).min(limit + 1));
            let mut reader = flate2::read::MultiGzDecoder::new(&raw[..]).take(limit as u64 + 1);
            if let Err(e) = reader.read_to_end(&mut out) {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    None,
                    format!("gzip body: {e} (after {} decompressed bytes)", out.len()),
                ));
            }
            if out.len() > limit {
                return Err(refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    None,
                    format!("decompressed body exceeds max_body_bytes ({limit})"),
                ));
            }
            Ok(Bytes::from(out))
        }
        other => Err(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
            format!("Content-Encoding {other:?}: only gzip is supported"),
        )),
    }
}

/// The operations routes: `/healthz`, `/readyz` (with the reason when not ready), `/metrics`.
pub fn ops_router(metrics: Arc<ServeMetrics>, health: Arc<ArchiveHealth>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let health = health.clone();
                async move {
                    match health.readiness() {
                        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
                        Err(why) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {why}\n"),
                        ),
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
