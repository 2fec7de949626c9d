//! `auditlake ingest`: files through the one archiver (decode, Parquet, commit cadence) with
//! the detectors on their own thread and commits on the async runtime, as `serve` runs it.

use std::sync::Arc;
use std::time::Duration;

use auditlake_archive::Archive;
use auditlake_schema::DecoderOptions;
use tokio::sync::{mpsc, watch};

use crate::archive_health::ArchiveHealth;
use crate::archiver::{self, ArchiverFailure, ArchiverKit, ArchiverSettings};
use crate::committer::Committer;
use crate::detection_thread::DetectionThread;
use crate::error::IngestError;
use crate::file_source::Input;
use crate::observer::BatchObserver;
use crate::partitioned_writer::WriterOptions;
use crate::serve_metrics::ServeMetrics;
use crate::sources::file::{FileSource, FileSourceOptions};

/// How an ingest run decodes, batches and writes.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Cluster the events belong to (partition `cluster=`).
    pub cluster: String,
    /// Decoder limits.
    pub decoder: DecoderOptions,
    /// Parquet file sizes.
    pub writer: WriterOptions,
    /// Lines per record read from a file (about the events per Arrow batch handed from the
    /// decoder to the writer and the detectors).
    pub batch_rows: usize,
    /// Bytes of whole lines per record read from a file.
    pub batch_bytes: usize,
    /// Identifier of this run, in file names and manifest records.
    pub writer_id: String,
    /// Largest pretty-printed (multi-line) JSON document read whole.
    pub max_document_bytes: u64,
}

impl IngestOptions {
    /// Defaults for `cluster` with a fresh writer id.
    pub fn new(cluster: &str) -> Self {
        Self {
            cluster: cluster.to_string(),
            decoder: DecoderOptions::default(),
            writer: WriterOptions::default(),
            batch_rows: 8192,
            batch_bytes: 8 << 20,
            writer_id: new_writer_id(),
            max_document_bytes: 1 << 30,
        }
    }
}

/// A writer id unique per run: UTC time plus process id.
pub fn new_writer_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{:x}{:05x}", now.as_micros(), std::process::id() & 0xfffff)
}

/// What an ingest run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestSummary {
    /// Inputs read.
    pub inputs: u64,
    /// Events decoded and committed.
    pub events: u64,
    /// Bytes read (decompressed).
    pub bytes_read: u64,
    /// Inputs quarantined.
    pub quarantined: u64,
    /// Parquet files committed.
    pub files: u64,
    /// Bytes of Parquet committed.
    pub archive_bytes: u64,
    /// Manifest records written.
    pub commits: u64,
    /// Findings the observer (the detectors) reported.
    pub findings: u64,
    /// Every counter of the run's named events (see [`crate::telemetry::Telemetry`]), by
    /// name: the same counters `serve` exposes on `/metrics`.
    pub counters: Vec<(String, u64)>,
}

pub(crate) fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Ingests `inputs` into `archive`, showing every batch to `observer` first. Returns once
/// everything read is committed. Runs the same archiver and committer as `serve`, on a
/// [`FileSource`].
pub async fn ingest(
    archive: &Archive,
    inputs: Vec<Input>,
    options: IngestOptions,
    observer: Option<Box<dyn BatchObserver>>,
) -> Result<IngestSummary, IngestError> {
    clean_orphans(archive).await;
    let metrics = ServeMetrics::new();
    // No replay: a file run is ready at once; the health only records commit failures.
    let health = Arc::new(ArchiveHealth::new(Duration::from_secs(3600)));
    health.set_replayed();
    let pipeline = |e: crate::serve::ServeError| IngestError::Pipeline(e.to_string());
    let mut kit = ArchiverKit {
        detection: observer
            .map(|o| DetectionThread::start(o, metrics.clone()))
            .transpose()
            .map_err(pipeline)?,
        attempts: None,
    };
    let settings = ArchiverSettings {
        writer_id: options.writer_id.clone(),
        default_cluster: options.cluster.clone(),
        decoder: options.decoder.clone(),
        writer: WriterOptions {
            row_proofs: archive.signs(),
            ..options.writer.clone()
        },
        // Commits follow finished Parquet files (and a large quarantine), not the clock: a
        // timed commit would cut every open partition's file short.
        flush_interval: FILE_FLUSH_INTERVAL,
        flush_bytes: u64::MAX,
        committed_seq: 0,
        replay_target: 0,
        dedup_window_micros: 0,
        dedup_max_events: 0,
        digest_key: 0,
    };
    let (commit_tx, commit_rx) = mpsc::channel(2);
    // Never set: a file run is not shut down from outside; a failing commit is given up
    // after `max_attempts`.
    let (_no_shutdown, give_up_at) = watch::channel(None);
    let committer = tokio::spawn(
        Committer {
            archive: archive.clone(),
            durable: None,
            wal_dir: None,
            max_attempts: Some(COMMIT_ATTEMPTS),
            writer_id: options.writer_id.clone(),
            metrics: metrics.clone(),
            health,
            replay_target: 0,
            give_up_at,
            // A finite source: its byte ranges are its continuity.
            heartbeat: None,
        }
        .run(commit_rx),
    );
    let mut source = FileSource::new(
        inputs,
        FileSourceOptions {
            cluster: options.cluster.clone(),
            max_event_bytes: options.decoder.max_event_bytes,
            max_document_bytes: options.max_document_bytes,
            chunk_bytes: options.batch_bytes,
            chunk_lines: options.batch_rows,
        },
    );
    let archiver_metrics = metrics.clone();
    let thread = std::thread::Builder::new()
        .name("auditlake-archiver".into())
        .spawn(move || {
            let outcome = archiver::run(
                &mut source,
                &settings,
                &mut kit,
                Vec::new(),
                &archiver_metrics,
                &commit_tx,
            );
            drop(commit_tx);
            (outcome, source.inputs_opened() as u64, source.bytes_read())
        })
        .map_err(|e| IngestError::Pipeline(format!("spawning the archiver: {e}")))?;
    let (outcome, inputs, bytes_read) = tokio::task::spawn_blocking(move || thread.join())
        .await
        .map_err(|e| IngestError::Pipeline(format!("archiver: {e}")))?
        .map_err(|_| IngestError::Pipeline("the archiver thread panicked".into()))?;
    let done = committer
        .await
        .map_err(|e| IngestError::Pipeline(format!("committer: {e}")))?;
    if let Some(message) = done.abandoned {
        return Err(IngestError::Pipeline(message));
    }
    if let Err(ArchiverFailure(message)) = outcome {
        return Err(IngestError::Pipeline(message));
    }
    let counters = metrics.telemetry.totals();
    let counter = |name: &str| {
        counters
            .iter()
            .find(|(k, _)| k == name)
            .map_or(0, |(_, v)| *v)
    };
    Ok(IngestSummary {
        inputs,
        events: done.events,
        bytes_read,
        quarantined: counter("quarantined{source=file}"),
        files: done.files,
        archive_bytes: done.bytes,
        commits: done.commits,
        findings: metrics.findings.get(),
        counters,
    })
}

/// A file run commits when Parquet files are finished, at the latest this often.
const FILE_FLUSH_INTERVAL: Duration = Duration::from_secs(3600);
/// A file run gives a commit this many tries (backoff 1, 2, 4, 8 s) before it fails.
const COMMIT_ATTEMPTS: u64 = 5;

/// How old a commit intent must be before its files count as a crashed writer's leftovers:
/// no commit takes that long, so a live writer's files are never touched.
pub(crate) const ORPHAN_AGE: Duration = Duration::from_secs(3600);

/// Deletes what writers that died mid-commit left behind. Best effort: a failure here never
/// stops archiving, and the files are not queried meanwhile (no record names them).
pub(crate) async fn clean_orphans(archive: &Archive) {
    match archive.clean_orphans(ORPHAN_AGE).await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(
            files = n,
            "deleted files of commits that never got their manifest record"
        ),
        Err(e) => tracing::warn!(error = %e, "could not look for files of crashed commits"),
    }
}
