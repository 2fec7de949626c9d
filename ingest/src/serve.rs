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
//! On start the log is recovered (a torn tail cut off), the manifest chain says how far it
//! is archived, and the archiver replays the rest before the server reports ready.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arrow::array::BooleanArray;
use arrow::compute::filter_record_batch;
use auditlake_schema::{DecoderOptions, EventDecoder, Quarantined, SourcePos};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use crate::archive::Archive;
use crate::dedup::Deduplicator;
use crate::detection_thread::DetectionThread;
use crate::error::IngestError;
use crate::manifest::WalMark;
use crate::observer::BatchObserver;
use crate::partitioned_writer::{FinishedFile, PartitionedWriter, WriterOptions};
use crate::serve_metrics::ServeMetrics;
use crate::tls::TlsError;
use crate::wal::{self, ReadOutcome, Wal, WalError, WalOptions, WalReader};
use crate::webhook::{self, BearerTokens, WebhookSettings, WebhookState};

/// Every setting of `auditlake serve`; the TOML config file has exactly these keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Address the webhook listens on.
    pub listen: String,
    /// Server certificate chain (PEM). Required unless `insecure_plain_http`.
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// CA that signs the apiserver's client certificate (PEM); enables mutual TLS.
    pub client_ca: Option<PathBuf>,
    /// Serve plain HTTP (no TLS). Only for tests and loopback demos.
    pub insecure_plain_http: bool,
    /// File of accepted bearer tokens (one per line, optionally followed by a name).
    pub bearer_tokens_file: Option<PathBuf>,
    /// Cluster of requests to `/audit/webhook` (the path `/audit/webhook/{cluster}` overrides).
    pub cluster: String,
    /// Use the client certificate's common name as the cluster when the path names none.
    pub cluster_from_client_cert: bool,
    /// Address of `/healthz`, `/readyz` and `/metrics` (plain HTTP, no credentials).
    pub ops_listen: String,
    /// Directory of the write-ahead log (local disk; keep it across restarts).
    pub wal_dir: PathBuf,
    /// Answer 429 once the write-ahead log holds this many bytes.
    pub wal_max_bytes: u64,
    /// Size at which the write-ahead log starts a new segment.
    pub wal_segment_bytes: u64,
    /// Largest request body, before and after gzip decompression.
    pub max_body_bytes: u64,
    /// Longest an accepted event waits before its Parquet file is committed (sooner once a
    /// quarter of `wal_max_bytes` is waiting).
    pub flush_interval_seconds: u64,
    /// How long resent events are recognised as duplicates (the apiserver retries for minutes).
    pub dedup_window_seconds: u64,
    /// Most event digests kept for duplicate detection.
    pub dedup_max_events: usize,
    /// How long shutdown waits for requests in flight.
    pub shutdown_timeout_seconds: u64,
    /// Rule files or directories added to (and overriding) the built-in rule pack.
    pub rules: Vec<PathBuf>,
    /// Where findings go: `stdout`, a file path, an `http(s)://` URL; `none` turns detection off.
    pub findings: Vec<String>,
    /// Repeats of a finding (same rule, principal, object) within this window are folded.
    pub findings_fold_window_seconds: u64,
    /// Directory (or file) of RBAC manifests that RBAC drift is reported against.
    pub rbac_baseline: Option<PathBuf>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8443".into(),
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            insecure_plain_http: false,
            bearer_tokens_file: None,
            cluster: "default".into(),
            cluster_from_client_cert: false,
            ops_listen: "127.0.0.1:9464".into(),
            wal_dir: PathBuf::from("auditlake-wal"),
            wal_max_bytes: 1 << 30,
            wal_segment_bytes: 64 << 20,
            max_body_bytes: 16 << 20,
            flush_interval_seconds: 30,
            dedup_window_seconds: 600,
            dedup_max_events: 2_000_000,
            shutdown_timeout_seconds: 25,
            rules: Vec::new(),
            findings: vec!["stdout".into()],
            findings_fold_window_seconds: 300,
            rbac_baseline: None,
        }
    }
}

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

const INTENT_FILE: &str = "commit-intent.json";

/// The files a commit is about to put, written to the WAL directory first so that, if the
/// process dies before the manifest record names them, the next start deletes them (the
/// SQL table lists every file under `events/`, so an orphan would count twice).
#[derive(Debug, Serialize, Deserialize)]
struct CommitIntent {
    wal_through_seq: u64,
    paths: Vec<String>,
}

fn file_err(path: &Path) -> impl FnOnce(std::io::Error) -> ServeError + '_ {
    move |source| ServeError::File {
        path: path.to_path_buf(),
        source,
    }
}

fn write_intent(dir: &Path, intent: &CommitIntent) -> Result<(), IngestError> {
    use std::io::Write;
    let path = dir.join(INTENT_FILE);
    let tmp = dir.join(format!("{INTENT_FILE}.tmp"));
    let io = |source| IngestError::Fsync {
        path: path.clone(),
        source,
    };
    let body = serde_json::to_vec(intent).map_err(|e| io(std::io::Error::other(e)))?;
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&body).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)
}

/// Deletes what an interrupted commit put, if its manifest record never got written.
async fn resolve_intent(archive: &Archive, dir: &Path, committed: u64) -> Result<(), ServeError> {
    let path = dir.join(INTENT_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(file_err(&path)(e)),
    };
    match serde_json::from_slice::<CommitIntent>(&bytes) {
        Ok(intent) if intent.wal_through_seq > committed => {
            tracing::warn!(
                files = intent.paths.len(),
                through_seq = intent.wal_through_seq,
                "the last commit before the restart did not finish; deleting the files it put"
            );
            archive.delete_uncommitted(&intent.paths).await?;
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "unreadable commit intent ignored")
        }
    }
    std::fs::remove_file(&path).map_err(file_err(&path))?;
    Ok(())
}

struct CommitUnit {
    files: Vec<FinishedFile>,
    quarantine: Vec<Quarantined>,
    through_seq: u64,
}

struct ArchiverSettings {
    writer_id: String,
    decoder: DecoderOptions,
    writer: WriterOptions,
    flush_interval: Duration,
    /// Commit once this many log bytes are read since the last commit, so the uncommitted
    /// part of the log stays well under `wal_max_bytes` at any ingest rate.
    flush_bytes: u64,
    committed_seq: u64,
    dedup_window_micros: i64,
    dedup_max_events: usize,
}

/// Reads the log in order, decodes, drops duplicates, encodes Parquet and hands finished
/// files with the WAL position they cover to the committer.
fn archive_wal(
    mut reader: WalReader,
    settings: ArchiverSettings,
    metrics: Arc<ServeMetrics>,
    observer: Option<Box<dyn BatchObserver>>,
    commits: mpsc::Sender<CommitUnit>,
) -> Result<(), ServeError> {
    let mut detection = observer
        .map(|o| DetectionThread::start(o, metrics.clone()))
        .transpose()?;
    let mut decoders: HashMap<String, EventDecoder> = HashMap::new();
    let mut writer = PartitionedWriter::new(&settings.writer_id, settings.writer.clone());
    let mut dedup = Deduplicator::new(settings.dedup_window_micros, settings.dedup_max_events);
    let mut finished: Vec<FinishedFile> = Vec::new();
    let mut quarantine = Vec::new();
    let mut last_seq = settings.committed_seq;
    let mut dirty = false;
    let mut last_commit = Instant::now();
    let mut bytes_since_commit = 0u64;
    loop {
        let wait = settings
            .flush_interval
            .saturating_sub(last_commit.elapsed())
            .max(Duration::from_millis(5));
        let mut closing = false;
        match reader.next(wait)? {
            ReadOutcome::Record(r) => {
                let span = tracing::debug_span!("wal_record", seq = r.seq, bytes = r.body.len());
                let _g = span.enter();
                let decoder = decoders.entry(r.cluster.clone()).or_insert_with(|| {
                    let mut d = EventDecoder::new(&r.cluster, settings.decoder.clone());
                    d.enable_row_digests();
                    d
                });
                decoder.set_ingested_at(r.received_at_micros);
                let source = if r.identity.is_empty() {
                    format!("webhook wal:{}", r.seq)
                } else {
                    format!("webhook[{}] wal:{}", r.identity, r.seq)
                };
                let mut q = Vec::new();
                let pos = SourcePos {
                    source: &source,
                    line: None,
                    byte_offset: 0,
                };
                decoder.decode_document(&r.body, pos, &mut q);
                let batch = decoder.finish_batch();
                let digests = decoder.take_row_digests();
                let keep: BooleanArray = digests
                    .iter()
                    .map(|d| Some(dedup.first_sighting(*d, r.received_at_micros)))
                    .collect();
                if r.seq <= settings.committed_seq {
                    // Already archived: read only to remember its events as seen.
                    continue;
                }
                let duplicates = keep.false_count() as u64;
                if duplicates > 0 {
                    metrics.duplicates.inc_by(duplicates);
                    tracing::info!(seq = r.seq, duplicates, "dropped resent events");
                }
                if !q.is_empty() {
                    metrics.quarantined.inc_by(q.len() as u64);
                    tracing::warn!(seq = r.seq, quarantined = q.len(), first_reason = %q[0].reason, "events quarantined");
                    quarantine.extend(q);
                }
                if let Some(batch) = batch {
                    let kept = if duplicates > 0 {
                        filter_record_batch(&batch, &keep).map_err(|e| {
                            ServeError::Pipeline(format!("filtering duplicates: {e}"))
                        })?
                    } else {
                        batch
                    };
                    metrics.events_in.inc_by(kept.num_rows() as u64);
                    if let Some(d) = &detection {
                        d.observe(kept.clone(), r.received_at_micros)?;
                    }
                    finished.extend(writer.write(&kept)?);
                }
                last_seq = r.seq;
                dirty = true;
                bytes_since_commit += r.body.len() as u64;
            }
            ReadOutcome::Idle => {}
            ReadOutcome::Closed => closing = true,
        }
        // Commit when a file was cut, enough log bytes wait, the interval passed, or the log
        // closed.
        let due = !finished.is_empty()
            || bytes_since_commit >= settings.flush_bytes
            || last_commit.elapsed() >= settings.flush_interval;
        if closing || (dirty && due) {
            // The detectors' files for the events up to `last_seq`; at the end also the
            // summaries of folded findings, which may come with no new events.
            let tables = if closing {
                detection.take().map(DetectionThread::finish)
            } else {
                detection.as_ref().map(DetectionThread::commit_files)
            }
            .transpose()?
            .unwrap_or_default();
            if dirty || !tables.is_empty() {
                let mut files = std::mem::take(&mut finished);
                files.extend(writer.finish_all()?);
                files.extend(tables);
                commits
                    .blocking_send(CommitUnit {
                        files,
                        quarantine: std::mem::take(&mut quarantine),
                        through_seq: last_seq,
                    })
                    .map_err(|_| ServeError::Pipeline("the committer stopped".into()))?;
            }
            if closing {
                return Ok(());
            }
            dirty = false;
            last_commit = Instant::now();
            bytes_since_commit = 0;
        }
    }
}

/// The TLS config asked for, or `None` for plain HTTP (only when asked for explicitly).
fn tls_config(config: &ServeConfig) -> Result<Option<Arc<rustls::ServerConfig>>, ServeError> {
    if config.insecure_plain_http {
        tracing::warn!(listen = %config.listen, "serving the webhook over PLAIN HTTP: audit events and credentials cross the network unencrypted");
        return Ok(None);
    }
    match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Ok(Some(crate::tls::server_config(
            cert,
            key,
            config.client_ca.as_deref(),
        )?)),
        _ => Err(ServeError::Config(
            "--tls-cert and --tls-key are required (or --insecure-plain-http for a loopback test)"
                .into(),
        )),
    }
}

fn validate(config: &ServeConfig) -> Result<(), ServeError> {
    if config.insecure_plain_http && config.client_ca.is_some() {
        return Err(ServeError::Config(
            "--client-ca needs TLS; it cannot be combined with --insecure-plain-http".into(),
        ));
    }
    if config.max_body_bytes == 0 || config.wal_max_bytes == 0 || config.flush_interval_seconds == 0
    {
        return Err(ServeError::Config(
            "max_body_bytes, wal_max_bytes and flush_interval_seconds must be above 0".into(),
        ));
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

/// Runs the server until `shutdown` completes, then stops accepting, drains, commits what
/// was accepted and returns. `observer` (the detectors) sees every new batch before it is
/// written; `bound` receives the listening addresses once bound.
pub async fn serve(
    archive: Archive,
    config: ServeConfig,
    observer: Option<Box<dyn BatchObserver>>,
    shutdown: impl std::future::Future<Output = ()>,
    bound: Option<oneshot::Sender<Bound>>,
) -> Result<ServeSummary, ServeError> {
    validate(&config)?;
    let tls = tls_config(&config)?;
    let tokens = match &config.bearer_tokens_file {
        Some(p) => Some(BearerTokens::load(p).map_err(file_err(p))?),
        None => None,
    };
    let metrics = ServeMetrics::new();
    let ready = Arc::new(AtomicBool::new(false));

    // Operations endpoint first, so probes see "not ready" during replay.
    let (ops_listener, ops_addr) = bind(&config.ops_listen).await?;
    let (webhook_listener, webhook_addr) = bind(&config.listen).await?;
    let addrs = Bound {
        webhook: webhook_addr,
        ops: ops_addr,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let ops = tokio::spawn({
        let router = webhook::ops_router(metrics.clone(), ready.clone());
        let stop = stop_rx.clone();
        async move {
            let _ = axum::serve(ops_listener, router)
                .with_graceful_shutdown(async move {
                    let mut stop = stop;
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
        }
    });

    // Recover the log and find how far it is archived.
    let span = tracing::info_span!("recover", wal_dir = %config.wal_dir.display());
    let recovered = {
        let _g = span.enter();
        wal::recover(&config.wal_dir, |_| {})?
    };
    let committed = archive.wal_mark(&recovered.wal_id).await?;
    resolve_intent(&archive, &config.wal_dir, committed).await?;
    let replay_target = recovered.next_seq - 1;
    let to_replay = replay_target.saturating_sub(committed);
    tracing::info!(wal_id = %recovered.wal_id, records = recovered.records, archived_through = committed,
        to_replay, torn_bytes = recovered.torn_bytes, "write-ahead log recovered");
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
    metrics.watch_wal(wal.stats());

    // Archiver thread and committer task.
    let writer_id = crate::pipeline::new_writer_id();
    let (commit_tx, mut commit_rx) = mpsc::channel::<CommitUnit>(2);
    let reader = wal.reader(0, tokio::runtime::Handle::current());
    let archiver = {
        let settings = ArchiverSettings {
            writer_id: writer_id.clone(),
            decoder: DecoderOptions::default(),
            writer: WriterOptions::default(),
            flush_interval: Duration::from_secs(config.flush_interval_seconds),
            flush_bytes: (config.wal_max_bytes / 4).max(1 << 20),
            committed_seq: committed,
            dedup_window_micros: (config.dedup_window_seconds as i64).saturating_mul(1_000_000),
            dedup_max_events: config.dedup_max_events,
        };
        let metrics = metrics.clone();
        std::thread::Builder::new()
            .name("auditlake-archiver".into())
            .spawn(move || {
                crate::thread_priority::lower_current_thread();
                archive_wal(reader, settings, metrics, observer, commit_tx)
            })
            .map_err(|e| ServeError::Pipeline(format!("spawning the archiver: {e}")))?
    };
    if to_replay == 0 {
        ready.store(true, Ordering::Release);
        tracing::info!("ready");
    }
    let committer = {
        let archive = archive.clone();
        let wal = wal.clone();
        let metrics = metrics.clone();
        let ready = ready.clone();
        let wal_dir = config.wal_dir.clone();
        let cluster = config.cluster.clone();
        let keep = Duration::from_secs(config.dedup_window_seconds);
        let wal_max = config.wal_max_bytes;
        async move {
            let mut summary = ServeSummary {
                replayed_records: to_replay,
                ..Default::default()
            };
            // Kept here rather than read back from `ready`, which shutdown clears: a commit
            // during the drain must not report the server ready again.
            let mut replay_pending = to_replay > 0;
            while let Some(unit) = commit_rx.recv().await {
                let through = unit.through_seq;
                let span = tracing::info_span!(
                    "commit",
                    files = unit.files.len(),
                    quarantined = unit.quarantine.len(),
                    wal_through_seq = through
                );
                let intent_dir = wal_dir.clone();
                let hook = move |paths: &[String]| {
                    let write = || {
                        write_intent(
                            &intent_dir,
                            &CommitIntent {
                                wal_through_seq: through,
                                paths: paths.to_vec(),
                            },
                        )
                    };
                    // Two fsyncs: tell the runtime this worker blocks, so the requests it
                    // would serve move to another one meanwhile.
                    if tokio::runtime::Handle::current().runtime_flavor()
                        == tokio::runtime::RuntimeFlavor::MultiThread
                    {
                        tokio::task::block_in_place(write)
                    } else {
                        write()
                    }
                };
                let outcome = archive
                    .commit(
                        &writer_id,
                        unit.files,
                        &unit.quarantine,
                        &cluster,
                        Some(WalMark {
                            id: wal_id.clone(),
                            through_seq: through,
                        }),
                        Some(&hook),
                    )
                    .instrument(span.clone())
                    .await?;
                let intent = wal_dir.join(INTENT_FILE);
                match std::fs::remove_file(&intent) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(file_err(&intent)(e)),
                }
                let rows = outcome.record.rows();
                metrics.commits.inc();
                metrics.events_committed.inc_by(rows);
                metrics
                    .commit_seconds
                    .observe(outcome.latency.as_secs_f64());
                summary.commits += 1;
                summary.events_committed += rows;
                // Committed segments are kept for the dedup window (to rebuild the filter
                // after a restart) unless the log is over half its limit.
                let under_pressure = wal.stats().bytes.load(Ordering::Relaxed) > wal_max / 2;
                let keep_since = if under_pressure {
                    Instant::now()
                } else {
                    Instant::now()
                        .checked_sub(keep)
                        .unwrap_or_else(Instant::now)
                };
                // Deleting segments blocks on the disk: not on a worker the requests need.
                let trimmer = wal.clone();
                let freed = tokio::task::spawn_blocking(move || trimmer.trim(through, keep_since))
                    .await
                    .map_err(|e| ServeError::Pipeline(format!("trimming the log: {e}")))??;
                let _g = span.enter(); // no await below in this iteration
                tracing::info!(
                    sequence = outcome.record.sequence,
                    files = outcome.record.files.len(),
                    events = rows,
                    quarantined = unit.quarantine.len(),
                    commit_latency_ms = outcome.latency.as_millis() as u64,
                    wal_freed_bytes = freed,
                    "committed"
                );
                if replay_pending && through >= replay_target {
                    replay_pending = false;
                    ready.store(true, Ordering::Release);
                    tracing::info!(replayed = to_replay, "write-ahead log replayed; ready");
                }
            }
            Ok::<_, ServeError>(summary)
        }
    };
    let committer = tokio::spawn(committer);

    let state = WebhookState {
        settings: Arc::new(WebhookSettings {
            default_cluster: config.cluster.clone(),
            cluster_from_client_cert: config.cluster_from_client_cert,
            require_client_cert: config.client_ca.is_some(),
            tokens,
            max_body_bytes: config.max_body_bytes.min(usize::MAX as u64) as usize,
            wal_max_bytes: config.wal_max_bytes,
        }),
        wal: wal.clone(),
        metrics: metrics.clone(),
        ready: ready.clone(),
    };
    tracing::info!(webhook = %addrs.webhook, ops = %addrs.ops, tls = tls.is_some(),
        mutual_tls = config.client_ca.is_some(), bearer_tokens = state.settings.tokens.is_some(), "listening");
    if let Some(tx) = bound {
        let _ = tx.send(addrs);
    }
    let server = tokio::spawn(webhook::serve_connections(
        webhook_listener,
        tls,
        webhook::router(state),
        stop_rx,
        Duration::from_secs(config.shutdown_timeout_seconds),
    ));

    shutdown.await;
    tracing::info!("shutting down: no new requests; draining, then committing what was accepted");
    ready.store(false, Ordering::Release);
    let _ = stop_tx.send(true);
    let _ = server.await;
    wal.close();
    drop(wal);
    let archived = tokio::task::spawn_blocking(move || archiver.join())
        .await
        .map_err(|e| ServeError::Pipeline(format!("archiver: {e}")))?;
    let summary = committer
        .await
        .map_err(|e| ServeError::Pipeline(format!("committer: {e}")))??;
    match archived {
        Ok(r) => r?,
        Err(_) => return Err(ServeError::Pipeline("the archiver thread panicked".into())),
    }
    let _ = tokio::task::spawn_blocking(move || wal_thread.join()).await;
    let _ = ops.await;
    tracing::info!(
        events_committed = summary.events_committed,
        commits = summary.commits,
        "stopped"
    );
    Ok(summary)
}
