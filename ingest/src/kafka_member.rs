//! `auditlake serve --kafka-brokers ...`: a consumer-group member archiving its partitions.
//!
//! ```text
//! Kafka topics --poll--> KafkaSource --> archiver thread (decode, dedup, detectors, Parquet)
//!   ^ offsets committed                       | files + offset ranges
//!   | after the record        committer task: puts, manifest record (refused if another
//!   +--------------------------- member archived an overlapping range), offsets to Kafka
//! ```
//!
//! The operations port serves `/metrics` (per-partition archived offsets and lag) and
//! `/readyz` (ready while the member holds partitions, or the group assigned it none, and
//! commits succeed). A supervisor restarts the member after a failure, and at once after a
//! commit refused because another member archived its offsets: the new member rejoins the
//! group and resumes every partition from the manifest.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::archive_health::ArchiveHealth;
use crate::archiver::{self, ArchiverFailure, ArchiverKit};
use crate::committer::{Committer, error_chain};
use crate::detection_thread::DetectionThread;
use crate::observer::BatchObserver;
use crate::serve::{ServeError, ServeSummary};
use crate::serve_config::ServeConfig;
use crate::serve_metrics::ServeMetrics;
use crate::sources::kafka::{CommitCuts, KafkaSource, KafkaSourceOptions};
use crate::sources::{Pulled, Source, SourceError};
use auditlake_archive::Archive;

/// Failures in a row, without a commit in between, after which the process stops.
const MAX_RESTARTS_WITHOUT_PROGRESS: u32 = 5;

/// A source that ends once `stop` is set, so the archiver commits what it holds.
struct Stoppable {
    inner: KafkaSource,
    stop: Arc<AtomicBool>,
}

impl Source for Stoppable {
    fn kind(&self) -> crate::telemetry::SourceKind {
        self.inner.kind()
    }
    fn resends(&self) -> bool {
        self.inner.resends()
    }
    fn cuts_commits(&self) -> bool {
        self.inner.cuts_commits()
    }
    fn pull(&mut self, wait: Duration) -> Result<Pulled, SourceError> {
        if self.stop.load(Ordering::Acquire) {
            // Hands out what is buffered, cut per partition, then ends.
            self.inner.stop();
        }
        // Short polls, so a stop is seen soon.
        self.inner.pull(wait.min(Duration::from_millis(500)))
    }
    fn marker(&self) -> Box<dyn crate::sources::Marker> {
        self.inner.marker()
    }
}

/// The Kafka source `config` asks for (`kafka_brokers` set), if any.
pub fn kafka_source_options(config: &ServeConfig) -> Option<KafkaSourceOptions> {
    (!config.kafka_brokers.is_empty()).then(|| KafkaSourceOptions {
        brokers: config.kafka_brokers.clone(),
        topics: config.kafka_topic.clone(),
        group: config.kafka_group.clone(),
        properties: config.kafka.clone(),
        cluster_header: config.kafka_cluster_header.clone(),
        topic_clusters: config.kafka_topic_cluster.clone(),
        default_cluster: config.cluster.clone(),
        max_message_bytes: config.max_body_bytes.min(usize::MAX as u64) as usize,
        cuts: CommitCuts {
            max_messages: config.kafka_commit_messages.clamp(1, usize::MAX as u64) as usize,
            max_bytes: config.kafka_commit_bytes.max(1),
            interval: Duration::from_secs(config.flush_interval_seconds),
            buffer_bytes: config.kafka_buffer_bytes.max(1),
        },
        dead_letter_topic: config.kafka_dead_letter_topic.clone(),
    })
}

/// Runs a consumer-group member until `shutdown` completes, then commits what it read and
/// leaves the group. `bound` receives the operations address once bound.
pub async fn consume_kafka(
    archive: Archive,
    config: ServeConfig,
    source: KafkaSourceOptions,
    observer: Option<Box<dyn BatchObserver>>,
    shutdown: impl std::future::Future<Output = ()>,
    bound: Option<oneshot::Sender<SocketAddr>>,
) -> Result<ServeSummary, ServeError> {
    source
        .client_config()
        .map_err(|e| ServeError::Config(e.to_string()))?;
    if config.flush_interval_seconds == 0 {
        return Err(ServeError::Config(
            "flush_interval_seconds must be above 0".into(),
        ));
    }
    let metrics = ServeMetrics::new();
    let flush = Duration::from_secs(config.flush_interval_seconds);
    let health = Arc::new(ArchiveHealth::new((flush * 3).max(Duration::from_secs(60))));
    health.set_replayed();
    let limits = crate::webhook::ConnectionLimits {
        max_connections: 64,
        handshake_timeout: Duration::from_secs(config.header_read_timeout_seconds),
        header_read_timeout: Duration::from_secs(config.header_read_timeout_seconds),
        request_timeout: Duration::from_secs(config.request_timeout_seconds),
        idle_timeout: Duration::from_secs(config.idle_timeout_seconds),
    };
    let listener = tokio::net::TcpListener::bind(&config.ops_listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.ops_listen.clone(),
            source,
        })?;
    let ops_addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.ops_listen.clone(),
        source,
    })?;
    let (ops_stop_tx, ops_stop_rx) = watch::channel(false);
    let ops = tokio::spawn(crate::webhook::serve_connections(
        listener,
        None,
        crate::webhook::ops_router(metrics.clone(), health.clone()),
        ops_stop_rx,
        Duration::from_secs(1),
        limits,
        metrics.clone(),
    ));
    if let Some(tx) = bound {
        let _ = tx.send(ops_addr);
    }
    tokio::spawn({
        let archive = archive.clone();
        async move { crate::pipeline::clean_orphans(&archive).await }
    });

    let stop = Arc::new(AtomicBool::new(false));
    let (give_up_tx, give_up_at) = watch::channel(None);
    let kit = ArchiverKit {
        detection: observer
            .map(|o| DetectionThread::start(o, metrics.clone()))
            .transpose()?,
        attempts: None,
    };
    let member = Member {
        archive,
        config: config.clone(),
        source,
        metrics: metrics.clone(),
        health: health.clone(),
        stop: stop.clone(),
        give_up_at,
    };
    let mut supervisor = tokio::spawn(member.run(kit));
    tracing::info!(ops = %ops_addr, "archiving Kafka; operations endpoint listening");
    let failed = tokio::select! {
        () = shutdown => None,
        r = &mut supervisor => Some(r),
    };
    health.set_stopping();
    let result = match failed {
        Some(r) => r.unwrap_or_else(|e| Err(ServeError::Pipeline(format!("supervisor: {e}")))),
        None => {
            tracing::info!("shutting down: committing what was read, then leaving the group");
            stop.store(true, Ordering::Release);
            let deadline =
                tokio::time::Instant::now() + Duration::from_secs(config.shutdown_timeout_seconds);
            let _ = give_up_tx.send(Some(deadline));
            supervisor
                .await
                .unwrap_or_else(|e| Err(ServeError::Pipeline(format!("supervisor: {e}"))))
        }
    };
    let _ = ops_stop_tx.send(true);
    let _ = ops.await;
    match &result {
        Ok(s) => tracing::info!(
            events_committed = s.events_committed,
            commits = s.commits,
            "stopped"
        ),
        Err(e) => {
            tracing::error!(error = %error_chain(e), "archiving Kafka cannot go on; stopping with an error")
        }
    }
    result
}

/// What the supervisor needs to (re)start the member.
struct Member {
    archive: Archive,
    config: ServeConfig,
    source: KafkaSourceOptions,
    metrics: Arc<ServeMetrics>,
    health: Arc<ArchiveHealth>,
    stop: Arc<AtomicBool>,
    give_up_at: watch::Receiver<Option<tokio::time::Instant>>,
}

impl Member {
    async fn run(self, mut kit: ArchiverKit) -> Result<ServeSummary, ServeError> {
        let mut summary = ServeSummary::default();
        let mut failures_without_progress = 0u32;
        let mut backoff = Duration::from_secs(1);
        let digest_key = crate::serve::process_key();
        loop {
            // Kafka has no replay: nothing up to a sequence is archived, none is awaited.
            let mut settings = crate::serve::archiver_settings(&self.config, 0, 0, digest_key);
            settings.writer.row_proofs = self.archive.signs();
            let inner = KafkaSource::join(
                self.source.clone(),
                self.archive.clone(),
                tokio::runtime::Handle::current(),
                self.metrics.kafka.clone(),
            )
            .map_err(|e| ServeError::Config(e.to_string()))?;
            let probe = inner.readiness();
            self.health.require(Box::new(move || probe.check()));
            let (commit_tx, commit_rx) = mpsc::channel(2);
            let committer = tokio::spawn(
                Committer {
                    archive: self.archive.clone(),
                    durable: Some(
                        inner
                            .offset_committer()
                            .map_err(|e| ServeError::Config(e.to_string()))?,
                    ),
                    wal_dir: None,
                    max_attempts: None,
                    writer_id: settings.writer_id.clone(),
                    metrics: self.metrics.clone(),
                    health: self.health.clone(),
                    replay_target: 0,
                    give_up_at: self.give_up_at.clone(),
                    heartbeat: crate::committer::Heartbeats::for_config(
                        &self.config,
                        auditlake_archive::SourceMark::Kafka {
                            group: self.source.group.clone(),
                            ranges: Vec::new(),
                        },
                    ),
                }
                .run(commit_rx),
            );
            let mut source = Stoppable {
                inner,
                stop: self.stop.clone(),
            };
            let metrics = self.metrics.clone();
            let thread = std::thread::Builder::new()
                .name("auditlake-archiver".into())
                .spawn(move || {
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        archiver::run(
                            &mut source,
                            &settings,
                            &mut kit,
                            Vec::new(),
                            &metrics,
                            &commit_tx,
                        )
                    }))
                    .unwrap_or_else(|_| Err(ArchiverFailure("the archiver panicked".into())));
                    drop(commit_tx);
                    (kit, outcome, source)
                })
                .map_err(|e| ServeError::Pipeline(format!("spawning the archiver: {e}")))?;
            let (kit_back, outcome, source) = tokio::task::spawn_blocking(move || thread.join())
                .await
                .map_err(|e| ServeError::Pipeline(format!("archiver: {e}")))?
                .map_err(|_| ServeError::Pipeline("the archiver thread was lost".into()))?;
            kit = kit_back;
            let done = committer
                .await
                .map_err(|e| ServeError::Pipeline(format!("committer: {e}")))?;
            // Leave the group only once the offsets of every commit are handed to Kafka.
            drop(source);
            summary.commits += done.commits;
            summary.events_committed += done.events;
            let message = match (outcome, done.abandoned) {
                (_, Some(m)) if done.conflict => {
                    tracing::warn!(reason = %m, "another member archived offsets this one held; rejoining and resuming from the manifest");
                    if let Some(d) = &kit.detection {
                        d.discard_uncommitted()?;
                    }
                    continue;
                }
                (_, Some(m)) => return Err(ServeError::Pipeline(m)),
                (Ok(()), None) => return Ok(summary),
                (Err(ArchiverFailure(m)), None) => m,
            };
            if self.stop.load(Ordering::Acquire) {
                return Err(ServeError::Pipeline(message));
            }
            self.metrics.archiver_restarts.inc();
            if done.commits > 0 {
                failures_without_progress = 0;
                backoff = Duration::from_secs(1);
            }
            failures_without_progress += 1;
            if failures_without_progress > MAX_RESTARTS_WITHOUT_PROGRESS {
                return Err(ServeError::Pipeline(format!(
                    "the Kafka member failed {failures_without_progress} times in a row without \
                     committing anything; stopping so the process is restarted (nothing is lost: \
                     the manifest says where to resume). Last failure: {message}"
                )));
            }
            tracing::error!(error = %message, restart_in_seconds = backoff.as_secs(),
                "the Kafka member failed; rejoining and resuming from the manifest");
            self.health.commit_failed(format!(
                "the Kafka member failed and is restarting: {message}"
            ));
            if let Some(d) = &kit.detection {
                d.discard_uncommitted()?;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }
}
