//! `auditlake serve`: the webhook target, its write-ahead log, and the archiver that turns
//! the log into committed Parquet.
//!
//! ```text
//! apiserver --HTTPS--> webhook --append+fsync--> WAL --read in order--> archiver thread
//!     ^ 200 after fsync                                (decode, dedup, Parquet)
//!                                                    batches |   \--> detection thread
//!                                                            |        (rules, drift; its
//!                                                            |         tables at commit)
//!                                                           | files + WAL mark
//!                                     committer task: intent file, puts, manifest, WAL trim
//! ```
//!
//! On start the log is recovered (a torn tail cut off, damage set aside), the manifest chain
//! says how far it is archived, and the archiver replays the rest before the server reports
//! ready. A supervisor watches the archiver: a failed commit is retried with backoff (and
//! the server reports not ready meanwhile), a failed archiver is restarted from the last
//! commit, and one that keeps failing without progress stops the process with an error, so
//! the orchestrator restarts it; archiving never stops silently.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use auditlake_schema::DecoderOptions;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

use crate::archive_health::ArchiveHealth;
use crate::archiver::{self, ArchiverFailure, ArchiverKit, ArchiverSettings};
use crate::committer::{Committer, error_chain, resolve_intent};
use crate::credentials::Credentials;
use crate::detection_thread::DetectionThread;
use crate::error::IngestError;
use crate::observer::BatchObserver;
use crate::partitioned_writer::{ArrivalWindow, WriterOptions};
use crate::record_attempts::RecordAttempts;
use crate::serve_metrics::ServeMetrics;
use crate::sources::webhook::{LogTrimmer, WebhookSource};
use crate::tls::TlsError;
use crate::wal::{self, Wal, WalError, WalOptions};
use crate::webhook::{self, ConnectionLimits, DurableLog, WebhookSettings, WebhookState};
use auditlake_archive::Archive;

pub use crate::serve_config::ServeConfig;

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is inconsistent.
    #[error("configuration: {0}")]
    Config(String),
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The write-ahead log failed.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// The archive failed.
    #[error(transparent)]
    Archive(#[from] IngestError),
    /// The archive refused a read or a commit.
    #[error(transparent)]
    ArchiveStore(#[from] auditlake_archive::ArchiveError),
    /// A thread or task of the server failed outside any one input (a bug or a panic).
    #[error("serve pipeline: {0}")]
    Pipeline(String),
    /// A listener could not be bound.
    #[error("listening on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// A file of the server could not be used.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The addresses the server listens on (useful when the config asked for port 0).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// The webhook.
    pub webhook: SocketAddr,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub ops: SocketAddr,
}

/// What a server run did.
#[derive(Debug, Clone, Default)]
pub struct ServeSummary {
    /// Write-ahead log records replayed at start.
    pub replayed_records: u64,
    /// Events committed to Parquet.
    pub events_committed: u64,
    /// Manifest commits.
    pub commits: u64,
}

/// The archiver is restarted after a failure at most this many times in a row without a
/// commit in between; then the process stops with an error.
const MAX_RESTARTS_WITHOUT_PROGRESS: u32 = 5;
/// Connections the operations port serves at once.
const OPS_MAX_CONNECTIONS: usize = 64;

/// The routes of the receiving port: the webhook (unless only push receivers are
/// configured), Firehose's and Pub/Sub's when configured.
fn receivers_router(config: &ServeConfig, state: WebhookState) -> Result<axum::Router, ServeError> {
    let mut router = axum::Router::new();
    if !push_receivers_only(config) {
        router = router.merge(webhook::router(state.clone()));
    }
    if let Some(path) = &config.firehose_access_key_file {
        let key = crate::firehose_http::FirehoseKey::load(path).map_err(ServeError::Config)?;
        router = router.merge(crate::firehose_http::router(state.clone(), key));
        tracing::info!("Firehose HTTP endpoint receiver on POST /firehose");
    }
    let pubsub = match (&config.pubsub_jwks_file, &config.pubsub_token_file) {
        (Some(jwks), _) => Some(crate::pubsub_push::PushAuth::Oidc(std::sync::Arc::new(
            crate::oidc::OidcVerifier::load(
                jwks,
                &config.pubsub_audience,
                Some(&config.pubsub_service_account),
            )
            .map_err(ServeError::Config)?,
        ))),
        (None, Some(token)) => {
            Some(crate::pubsub_push::PushAuth::shared_token(token).map_err(ServeError::Config)?)
        }
        (None, None) => None,
    };
    if let Some(auth) = pubsub {
        router = router.merge(crate::pubsub_push::router(state, auth));
        tracing::info!("Pub/Sub push receiver on POST /pubsub/push");
    }
    Ok(router)
}

/// The `envelope` setting: `None` for `auto`.
pub(crate) fn parse_envelope(text: &str) -> Result<Option<auditlake_schema::Envelope>, String> {
    match text {
        "auto" | "" => Ok(None),
        name => name
            .parse()
            .map(Some)
            .map_err(|e| format!("--envelope: {e}")),
    }
}

/// Whether only push receivers (Firehose, Pub/Sub) are to be served: they are configured
/// and the webhook has no authentication and was not allowed to go without.
fn push_receivers_only(config: &ServeConfig) -> bool {
    let push = config.firehose_access_key_file.is_some()
        || config.pubsub_jwks_file.is_some()
        || config.pubsub_token_file.is_some();
    push && config.client_ca.is_none()
        && config.bearer_tokens_file.is_none()
        && !config.allow_unauthenticated
}

fn validate(config: &ServeConfig) -> Result<(), ServeError> {
    let refuse = |m: String| Err(ServeError::Config(m));
    if config.insecure_plain_http && config.client_ca.is_some() {
        return refuse(
            "--client-ca needs TLS; it cannot be combined with --insecure-plain-http".into(),
        );
    }
    if config.max_body_bytes == 0 || config.wal_max_bytes == 0 || config.flush_interval_seconds == 0
    {
        return refuse(
            "max_body_bytes, wal_max_bytes and flush_interval_seconds must be above 0".into(),
        );
    }
    if config.max_inflight_body_bytes < 2 * config.max_body_bytes {
        return refuse(format!(
            "max_inflight_body_bytes ({}) must be at least twice max_body_bytes ({})",
            config.max_inflight_body_bytes, config.max_body_bytes
        ));
    }
    if config.max_connections == 0
        || config.header_read_timeout_seconds == 0
        || config.request_timeout_seconds == 0
        || config.idle_timeout_seconds == 0
    {
        return refuse("max_connections and the timeouts must be above 0".into());
    }
    parse_envelope(&config.envelope).map_err(ServeError::Config)?;
    if config.apiserver_metrics_url.is_some() && config.heartbeat_interval_seconds == 0 {
        return refuse(
            "apiserver_metrics_url is scraped for each heartbeat: it needs \
             heartbeat_interval_seconds above 0"
                .into(),
        );
    }
    crate::apiserver_metrics::ApiserverMetrics::from_config(config)?;
    if config.apiserver_metrics_url.is_none()
        && (config.apiserver_metrics_token_file.is_some()
            || config.apiserver_metrics_ca_file.is_some())
    {
        return refuse(
            "apiserver_metrics_token_file and apiserver_metrics_ca_file need apiserver_metrics_url"
                .into(),
        );
    }
    if config.pubsub_jwks_file.is_some() && config.pubsub_token_file.is_some() {
        return refuse(
            "give --pubsub-jwks-file (OIDC, preferred) or --pubsub-token-file, not both".into(),
        );
    }
    if config.pubsub_jwks_file.is_some() && config.pubsub_audience.is_empty() {
        return refuse(
            "--pubsub-jwks-file needs --pubsub-audience (the push subscription's OIDC audience)"
                .into(),
        );
    }
    if config.client_ca.is_none()
        && config.bearer_tokens_file.is_none()
        && push_receivers_only(config)
    {
        tracing::info!(
            "no webhook client authentication configured: only the Firehose and Pub/Sub push receivers are served"
        );
    } else if config.client_ca.is_none() && config.bearer_tokens_file.is_none() {
        if !config.allow_unauthenticated {
            return refuse(
                "no client authentication: give --client-ca (mutual TLS with the apiserver's \
                 client certificate) and/or --bearer-tokens-file, or --allow-unauthenticated \
                 to accept events from anyone who can reach the port"
                    .into(),
            );
        }
        tracing::warn!(listen = %config.listen, "NO CLIENT AUTHENTICATION: anyone who reaches the webhook can add events to the archive (--allow-unauthenticated)");
    }
    if config.insecure_plain_http {
        let loopback = config
            .listen
            .parse::<SocketAddr>()
            .map(|a| a.ip().is_loopback())
            .unwrap_or_else(|_| config.listen.starts_with("localhost:"));
        if !loopback && !config.allow_plain_http_beyond_loopback {
            return refuse(format!(
                "--insecure-plain-http serves only a loopback address (127.0.0.1, ::1), not {}: \
                 use TLS, or add --allow-plain-http-beyond-loopback",
                config.listen
            ));
        }
        tracing::warn!(listen = %config.listen, "serving the webhook over PLAIN HTTP: audit events and credentials cross the network unencrypted");
    }
    Ok(())
}

/// A listener on `addr` and the address it got (the port, when `addr` asked for port 0).
async fn bind(addr: &str) -> Result<(TcpListener, SocketAddr), ServeError> {
    let err = |source| ServeError::Bind {
        addr: addr.to_string(),
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    Ok((listener, local))
}

/// How the archiver of `serve` reads, batches and writes, whatever its source: a new writer
/// id, commits per `flush_interval_seconds` or a quarter of `wal_max_bytes`, the dedup
/// window; records up to `committed` are archived, and reaching `replay_target` ends the
/// replay (both 0 for a source without a replay, Kafka).
pub(crate) fn archiver_settings(
    config: &ServeConfig,
    committed: u64,
    replay_target: u64,
    digest_key: u64,
) -> ArchiverSettings {
    ArchiverSettings {
        writer_id: crate::pipeline::new_writer_id(),
        default_cluster: config.cluster.clone(),
        decoder: DecoderOptions {
            max_summary_bytes: config.max_body_bytes as usize,
            // Checked when the configuration was validated.
            envelope: parse_envelope(&config.envelope).unwrap_or_default(),
            ..DecoderOptions::default()
        },
        writer: WriterOptions {
            arrival_window: Some(ArrivalWindow::WEBHOOK),
            ..WriterOptions::default()
        },
        flush_interval: Duration::from_secs(config.flush_interval_seconds),
        flush_bytes: (config.wal_max_bytes / 4).max(1 << 20),
        committed_seq: committed,
        replay_target,
        dedup_window_micros: (config.dedup_window_seconds as i64).saturating_mul(1_000_000),
        dedup_max_events: config.dedup_max_events,
        digest_key,
    }
}

/// A secret of this process that keys the duplicate digests (std's hasher seeds are random
/// per process).
pub(crate) fn process_key() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(crate::pipeline::now_micros())
}

/// What the supervisor needs to (re)start the archiver and the committer.
struct Supervisor {
    archive: Archive,
    wal: Wal,
    wal_id: String,
    config: ServeConfig,
    metrics: Arc<ServeMetrics>,
    health: Arc<ArchiveHealth>,
    give_up_at: watch::Receiver<Option<tokio::time::Instant>>,
    digest_key: u64,
}

impl Supervisor {
    /// Retries `op` with backoff until it succeeds, or gives up once shutdown's deadline
    /// passed (the store may be down when the server starts: keep saying so, keep trying).
    async fn retry<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, ServeError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ServeError>>,
    {
        let mut backoff = Duration::from_secs(1);
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let chain = error_chain(&e);
                    self.health.commit_failed(format!("{what}: {chain}"));
                    self.metrics.archiving_failing.set(1);
                    if (*self.give_up_at.borrow())
                        .is_some_and(|t| tokio::time::Instant::now() + backoff > t)
                    {
                        return Err(e);
                    }
                    tracing::error!(error = %chain, retry_in_seconds = backoff.as_secs(), "{what} failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Runs archiver + committer, restarting them from the last commit after a failure,
    /// until the log closes and everything read is committed.
    async fn run(
        self,
        mut kit: ArchiverKit,
        durable_at_start: u64,
    ) -> Result<ServeSummary, ServeError> {
        let mut summary = ServeSummary::default();
        let mut first = true;
        let mut restarts_without_progress = 0u32;
        let mut backoff = Duration::from_secs(1);
        loop {
            let committed = self
                .retry("reading the manifest", || async {
                    Ok(self.archive.wal_mark(&self.wal_id).await?)
                })
                .await?;
            self.retry("cleaning up an interrupted commit", || {
                resolve_intent(&self.archive, &self.config.wal_dir, committed)
            })
            .await?;
            self.wal.set_archived(committed);
            let replay_target = if first { durable_at_start } else { 0 };
            if first {
                summary.replayed_records = durable_at_start.saturating_sub(committed);
                tracing::info!(
                    archived_through = committed,
                    to_replay = summary.replayed_records,
                    "write-ahead log position in the archive"
                );
                if durable_at_start <= committed {
                    self.health.set_replayed();
                    tracing::info!("ready");
                }
                first = false;
            }
            let mut settings =
                archiver_settings(&self.config, committed, replay_target, self.digest_key);
            settings.writer.row_proofs = self.archive.signs();
            let writer_id = settings.writer_id.clone();
            let cuts = wal::pending_cuts(&self.config.wal_dir)?;
            let (commit_tx, commit_rx) = mpsc::channel(2);
            let committer = tokio::spawn(
                Committer {
                    archive: self.archive.clone(),
                    durable: Some(Arc::new(LogTrimmer {
                        wal: self.wal.clone(),
                        log_id: self.wal_id.clone(),
                        keep_segments: Duration::from_secs(self.config.dedup_window_seconds),
                        wal_max_bytes: self.config.wal_max_bytes,
                    })),
                    wal_dir: Some(self.config.wal_dir.clone()),
                    max_attempts: None,
                    writer_id,
                    metrics: self.metrics.clone(),
                    health: self.health.clone(),
                    replay_target,
                    give_up_at: self.give_up_at.clone(),
                    heartbeat: crate::committer::Heartbeats::for_config(
                        &self.config,
                        auditlake_archive::SourceMark::Webhook {
                            log_id: self.wal_id.clone(),
                            through_seq: committed,
                            from_seq: None,
                        },
                    ),
                }
                .run(commit_rx),
            );
            // The source owns the log's identity: its marks name it.
            let mut source = WebhookSource::new(
                self.wal.reader(0, tokio::runtime::Handle::current()),
                self.wal_id.clone(),
                committed,
            );
            let metrics = self.metrics.clone();
            let thread = std::thread::Builder::new()
                .name("auditlake-archiver".into())
                .spawn(move || {
                    crate::thread_priority::lower_current_thread();
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        archiver::run(&mut source, &settings, &mut kit, cuts, &metrics, &commit_tx)
                    }));
                    drop(commit_tx);
                    let outcome = match outcome {
                        Ok(r) => r,
                        Err(panic) => Err(ArchiverFailure(format!(
                            "panic: {}",
                            panic
                                .downcast_ref::<&str>()
                                .map(|s| s.to_string())
                                .or_else(|| panic.downcast_ref::<String>().cloned())
                                .unwrap_or_default()
                        ))),
                    };
                    (kit, outcome)
                })
                .map_err(|e| ServeError::Pipeline(format!("spawning the archiver: {e}")))?;
            let (kit_back, outcome) = tokio::task::spawn_blocking(move || thread.join())
                .await
                .map_err(|e| ServeError::Pipeline(format!("archiver: {e}")))?
                .map_err(|_| ServeError::Pipeline("the archiver thread was lost".into()))?;
            kit = kit_back;
            let done = committer
                .await
                .map_err(|e| ServeError::Pipeline(format!("committer: {e}")))?;
            summary.commits += done.commits;
            summary.events_committed += done.events;
            if let Some(message) = done.abandoned {
                return Err(ServeError::Pipeline(message));
            }
            let ArchiverFailure(message) = match outcome {
                Ok(()) => return Ok(summary),
                Err(f) => f,
            };
            self.metrics.archiver_restarts.inc();
            let record = match kit.attempts.as_mut() {
                Some(a) => a.failed()?,
                None => None,
            };
            if done.commits > 0 {
                restarts_without_progress = 0;
                backoff = Duration::from_secs(1);
            }
            restarts_without_progress += 1;
            if restarts_without_progress > MAX_RESTARTS_WITHOUT_PROGRESS {
                return Err(ServeError::Pipeline(format!(
                    "the archiver failed {restarts_without_progress} times in a row without \
                     committing anything; stopping so the process is restarted (accepted \
                     events stay in the write-ahead log). Last failure: {message}"
                )));
            }
            tracing::error!(error = %message, record, restart_in_seconds = backoff.as_secs(),
                "the archiver failed; restarting it from the last commit");
            // Not ready until a commit succeeds again.
            self.health
                .commit_failed(format!("the archiver failed and is restarting: {message}"));
            if let Some(d) = &kit.detection {
                // Blocks briefly: the detection thread answers once its queue is seen.
                d.discard_uncommitted()?;
            }
            let stopping = self.give_up_at.borrow().is_some();
            if !stopping {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Runs the server until `shutdown` completes, then stops accepting, drains, commits what
/// was accepted and returns. Returns an error (so the process exits non-zero) when
/// archiving cannot go on. `observer` (the detectors) sees every new batch before it is
/// written; `bound` receives the listening addresses once bound.
pub async fn serve(
    archive: Archive,
    config: ServeConfig,
    observer: Option<Box<dyn BatchObserver>>,
    shutdown: impl std::future::Future<Output = ()>,
    bound: Option<oneshot::Sender<Bound>>,
) -> Result<ServeSummary, ServeError> {
    validate(&config)?;
    let credentials = Credentials::load(&config)?;
    let metrics = ServeMetrics::new();
    let flush = Duration::from_secs(config.flush_interval_seconds);
    let health = Arc::new(ArchiveHealth::new((flush * 3).max(Duration::from_secs(60))));
    let limits = ConnectionLimits {
        max_connections: crate::webhook::usable_connections(config.max_connections),
        handshake_timeout: Duration::from_secs(config.header_read_timeout_seconds),
        header_read_timeout: Duration::from_secs(config.header_read_timeout_seconds),
        request_timeout: Duration::from_secs(config.request_timeout_seconds),
        idle_timeout: Duration::from_secs(config.idle_timeout_seconds),
    };

    // Operations endpoint first, so probes see "not ready" during replay.
    let (ops_listener, ops_addr) = bind(&config.ops_listen).await?;
    let (webhook_listener, webhook_addr) = bind(&config.listen).await?;
    let addrs = Bound {
        webhook: webhook_addr,
        ops: ops_addr,
    };
    let (ops_stop_tx, ops_stop_rx) = watch::channel(false);
    let ops = tokio::spawn(webhook::serve_connections(
        ops_listener,
        None,
        webhook::ops_router(metrics.clone(), health.clone()),
        ops_stop_rx,
        Duration::from_secs(1),
        ConnectionLimits {
            max_connections: OPS_MAX_CONNECTIONS,
            ..limits
        },
        metrics.clone(),
    ));

    let (log, mut wal_side) = match durable_log(&config)? {
        LogChoice::Wal => {
            let side = start_wal_side(&archive, &config, observer, &metrics, &health)?;
            (DurableLog::Wal(side.wal.clone()), Some(side))
        }
        #[cfg(feature = "kafka")]
        LogChoice::Kafka(target) => {
            // Stateless: nothing to replay, nothing archived here.
            health.set_replayed();
            if observer.is_some() {
                tracing::info!(
                    "detection runs in the members archiving the topic, not in a receiver with a Kafka durable log"
                );
            }
            tracing::info!(brokers = %target.brokers, topic = %target.topic, "durable log: Kafka (a 200 means Kafka acknowledged the body)");
            let log = crate::kafka_log::KafkaLog::new(
                &target,
                &config.kafka,
                Duration::from_secs(config.request_timeout_seconds),
            )
            .map_err(ServeError::Config)?;
            (DurableLog::Kafka(log), None)
        }
    };
    let state = WebhookState {
        settings: Arc::new(WebhookSettings {
            default_cluster: config.cluster.clone(),
            cluster_from_client_cert: config.cluster_from_client_cert,
            max_body_bytes: config.max_body_bytes.min(usize::MAX as u64) as usize,
            wal_max_bytes: config.wal_max_bytes,
        }),
        credentials: credentials.clone(),
        body_budget: webhook::BodyBudget::new(config.max_inflight_body_bytes),
        log: log.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
    };
    let reload = tokio::spawn(crate::credentials::reload_on_change(
        config.clone(),
        credentials.clone(),
    ));
    let snapshot = credentials.current();
    tracing::info!(webhook = %addrs.webhook, ops = %addrs.ops, tls = snapshot.tls.is_some(),
        mutual_tls = config.client_ca.is_some(), bearer_tokens = snapshot.tokens.is_some(),
        max_connections = limits.max_connections, "listening");
    if let Some(tx) = bound {
        let _ = tx.send(addrs);
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let router = receivers_router(&config, state)?;
    let server = tokio::spawn(webhook::serve_connections(
        webhook_listener,
        Some(credentials),
        router,
        stop_rx,
        Duration::from_secs(config.shutdown_timeout_seconds),
        limits,
        metrics.clone(),
    ));

    let failed = match wal_side.as_mut() {
        Some(side) => tokio::select! {
            () = shutdown => None,
            r = &mut side.supervisor => Some(r),
        },
        None => {
            shutdown.await;
            None
        }
    };
    health.set_stopping();
    reload.abort();
    let _ = stop_tx.send(true);
    let _ = server.await;
    let result = match wal_side {
        Some(side) => side.stop(failed, config.shutdown_timeout_seconds).await,
        None => {
            #[cfg(feature = "kafka")]
            if let DurableLog::Kafka(k) = &log {
                k.flush(Duration::from_secs(config.shutdown_timeout_seconds));
            }
            Ok(ServeSummary::default())
        }
    };
    drop(log);
    let _ = ops_stop_tx.send(true);
    let _ = ops.await;
    let summary = result?;
    tracing::info!(
        events_committed = summary.events_committed,
        commits = summary.commits,
        "stopped"
    );
    Ok(summary)
}

/// Where `durable_log` says accepted bodies go.
enum LogChoice {
    Wal,
    #[cfg(feature = "kafka")]
    Kafka(crate::kafka_log::KafkaTarget),
}

fn durable_log(config: &ServeConfig) -> Result<LogChoice, ServeError> {
    if config.durable_log == "wal" {
        return Ok(LogChoice::Wal);
    }
    #[cfg(feature = "kafka")]
    if let Some(target) = crate::kafka_log::KafkaTarget::parse(&config.durable_log) {
        return target
            .map(LogChoice::Kafka)
            .map_err(|e| ServeError::Config(format!("--durable-log {e}")));
    }
    Err(ServeError::Config(format!(
        "--durable-log {:?}: expected wal or kafka://host:port/topic",
        config.durable_log
    )))
}

/// The local write-ahead log and the archiving behind it.
struct WalSide {
    wal: Wal,
    wal_thread: std::thread::JoinHandle<()>,
    supervisor: tokio::task::JoinHandle<Result<ServeSummary, ServeError>>,
    give_up_tx: watch::Sender<Option<tokio::time::Instant>>,
}

/// Recovers the log and starts the supervised archiver over it.
fn start_wal_side(
    archive: &Archive,
    config: &ServeConfig,
    observer: Option<Box<dyn BatchObserver>>,
    metrics: &Arc<ServeMetrics>,
    health: &Arc<ArchiveHealth>,
) -> Result<WalSide, ServeError> {
    // Off the start-up path: readiness must not wait for a look through the archive.
    tokio::spawn({
        let archive = archive.clone();
        async move { crate::pipeline::clean_orphans(&archive).await }
    });
    // The log belongs to this archive; recover it.
    wal::bind_archive(
        &config.wal_dir,
        archive.location().url.as_str(),
        config.wal_retarget,
    )?;
    let span = tracing::info_span!("recover", wal_dir = %config.wal_dir.display());
    let recovered = {
        let _g = span.enter();
        wal::recover(&config.wal_dir, |_| {})?
    };
    metrics.wal_cut_regions.inc_by(recovered.cut.len() as u64);
    let durable_at_start = recovered.next_seq - 1;
    tracing::info!(wal_id = %recovered.wal_id, records = recovered.records, torn_bytes = recovered.torn_bytes,
            damaged_regions = recovered.cut.iter().filter(|c| !c.torn_tail).count(), "write-ahead log recovered");
    let wal_id = recovered.wal_id.clone();
    let on_fsync: wal::FsyncObserver = {
        let m = metrics.clone();
        Arc::new(move |n, d| m.fsynced(n, d))
    };
    let (wal, wal_thread) = Wal::start(
        recovered,
        WalOptions {
            dir: config.wal_dir.clone(),
            segment_bytes: config.wal_segment_bytes,
        },
        on_fsync,
    )?;
    metrics.watch_wal(wal.clone());
    health.watch(wal.clone());

    let kit = ArchiverKit {
        detection: observer
            .map(|o| DetectionThread::start(o, metrics.clone()))
            .transpose()?,
        attempts: Some(RecordAttempts::open(&config.wal_dir)?),
    };
    let (give_up_tx, give_up_at) = watch::channel(None);
    let supervisor = tokio::spawn(
        Supervisor {
            archive: archive.clone(),
            wal: wal.clone(),
            wal_id,
            config: config.clone(),
            metrics: metrics.clone(),
            health: health.clone(),
            give_up_at,
            digest_key: process_key(),
        }
        .run(kit, durable_at_start),
    );

    Ok(WalSide {
        wal,
        wal_thread,
        supervisor,
        give_up_tx,
    })
}

impl WalSide {
    /// After the webhook stopped: lets the archiver commit what was accepted (within
    /// `shutdown_timeout_seconds`), or reports why archiving failed.
    async fn stop(
        self,
        failed: Option<Result<Result<ServeSummary, ServeError>, tokio::task::JoinError>>,
        shutdown_timeout_seconds: u64,
    ) -> Result<ServeSummary, ServeError> {
        self.wal.close();
        let result = match failed {
            Some(r) => {
                let e = match r {
                    Ok(Ok(_)) => ServeError::Pipeline("archiving ended unexpectedly".into()),
                    Ok(Err(e)) => e,
                    Err(e) => ServeError::Pipeline(format!("the supervisor failed: {e}")),
                };
                tracing::error!(error = %error_chain(&e), "archiving cannot go on; stopping with an error so the process is restarted");
                Err(e)
            }
            None => {
                tracing::info!(
                    "shutting down: no new requests; draining, then committing what was accepted"
                );
                let deadline =
                    tokio::time::Instant::now() + Duration::from_secs(shutdown_timeout_seconds);
                let _ = self.give_up_tx.send(Some(deadline));
                match self.supervisor.await {
                    Ok(r) => r,
                    Err(e) => Err(ServeError::Pipeline(format!("the supervisor failed: {e}"))),
                }
            }
        };
        drop(self.wal);
        let thread = self.wal_thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        result
    }
}
