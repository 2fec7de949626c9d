//! The ingest pipeline: read + decode on one thread, partition + Parquet encode on another,
//! commits on the async runtime, so both cores work and every stage is bounded.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};
use tracing::Instrument;

use arrow::array::RecordBatch;
use auditlake_schema::{DecoderOptions, EventDecoder, Quarantined, SourcePos};
use tokio::sync::mpsc;

use crate::error::IngestError;
use crate::file_source::Input;
use crate::observer::BatchObserver;
use crate::partitioned_writer::{PartitionedWriter, WriterOptions};
use crate::telemetry::{SourceKind, Telemetry};
use auditlake_archive::FinishedFile;
use auditlake_archive::{Archive, CommitContents, quarantine_stem, quarantine_weight};
use std::sync::Arc;

/// How an ingest run decodes, batches and writes.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Cluster the events belong to (partition `cluster=`).
    pub cluster: String,
    /// Decoder limits.
    pub decoder: DecoderOptions,
    /// Parquet file sizes.
    pub writer: WriterOptions,
    /// Rows per Arrow batch handed from the decoder to the writer.
    pub batch_rows: usize,
    /// Input bytes per Arrow batch handed from the decoder to the writer.
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

enum Decoded {
    Batch(RecordBatch, Vec<Quarantined>),
    Stats {
        inputs: u64,
        bytes_read: u64,
        /// Bad items counted in summary records rather than recorded one by one.
        summarised: u64,
    },
}

struct CommitUnit {
    files: Vec<FinishedFile>,
    quarantine: Vec<Quarantined>,
}

pub(crate) fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Ingests `inputs` into `archive`, showing every batch to `observer` first. Returns once
/// everything read is committed.
pub async fn ingest(
    archive: &Archive,
    inputs: Vec<Input>,
    options: IngestOptions,
    observer: Option<Box<dyn BatchObserver>>,
) -> Result<IngestSummary, IngestError> {
    clean_orphans(archive).await;
    let (decoded_tx, decoded_rx) = sync_channel::<Decoded>(4);
    let (commit_tx, mut commit_rx) = mpsc::channel::<CommitUnit>(2);
    let decode_opts = options.clone();
    let decoder = std::thread::Builder::new()
        .name("auditlake-decode".into())
        .spawn(move || decode_inputs(inputs, &decode_opts, decoded_tx))
        .map_err(|e| IngestError::Pipeline(format!("spawning decoder: {e}")))?;
    let writer_opts = options.clone();
    let telemetry = Arc::new(Telemetry::default());
    if let Some(o) = &observer {
        telemetry.add_external(o.counters());
    }
    let encoder_telemetry = telemetry.clone();
    let encoder = std::thread::Builder::new()
        .name("auditlake-encode".into())
        .spawn(move || {
            encode_batches(
                decoded_rx,
                &writer_opts,
                observer,
                commit_tx,
                &encoder_telemetry,
            )
        })
        .map_err(|e| IngestError::Pipeline(format!("spawning encoder: {e}")))?;

    let mut summary = IngestSummary::default();
    let mut commit_error = None;
    while let Some(unit) = commit_rx.recv().await {
        if unit.files.is_empty() && unit.quarantine.is_empty() {
            continue;
        }
        let span = tracing::info_span!(
            "commit",
            files = unit.files.len(),
            quarantined = unit.quarantine.len()
        );
        let quarantined = unit.quarantine.len() as u64;
        let contents = CommitContents {
            files: unit.files,
            quarantine_stem: (!unit.quarantine.is_empty())
                .then(|| quarantine_stem(&options.writer_id)),
            quarantine: unit.quarantine,
            removed: Vec::new(),
            source: None,
        };
        let committed = archive
            .commit(&options.writer_id, &contents, None, false)
            .instrument(span.clone())
            .await;
        let _g = span.enter(); // no await below in this iteration
        match committed {
            Ok(outcome) => {
                let r = &outcome.record;
                summary.commits += 1;
                summary.files += r.files.len() as u64;
                summary.events += r.rows();
                summary.archive_bytes += r.files.iter().map(|f| f.bytes).sum::<u64>();
                summary.quarantined += quarantined;
                tracing::info!(
                    sequence = r.sequence,
                    files = r.files.len(),
                    events = r.rows(),
                    quarantined,
                    commit_latency_ms = outcome.latency.as_millis() as u64,
                    "committed"
                );
            }
            Err(e) => {
                commit_error = Some(e);
                break;
            }
        }
    }
    drop(commit_rx);
    let decode_result = decoder
        .join()
        .map_err(|_| IngestError::Pipeline("decoder thread panicked".into()))?;
    let encode_result = encoder
        .join()
        .map_err(|_| IngestError::Pipeline("encoder thread panicked".into()))?;
    if let Some(e) = commit_error {
        return Err(e.into());
    }
    decode_result?;
    let (inputs, bytes_read, findings, summarised) = encode_result?;
    summary.quarantined += summarised;
    summary.inputs = inputs;
    summary.bytes_read = bytes_read;
    summary.findings = findings;
    summary.counters = telemetry.totals();
    Ok(summary)
}

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

fn decode_inputs(
    inputs: Vec<Input>,
    options: &IngestOptions,
    tx: SyncSender<Decoded>,
) -> Result<(), IngestError> {
    let mut decoder = EventDecoder::new(options.decoder.clone());
    decoder.set_ingested_at(now_micros());
    let mut quarantine = Vec::new();
    let mut line = Vec::new();
    let keep = options.decoder.max_event_bytes + 1;
    let mut bytes_read = 0u64;
    let mut events = 0u64;
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let send = |tx: &SyncSender<Decoded>, msg| {
        tx.send(msg)
            .map_err(|_| IngestError::Pipeline("writer stopped".into()))
    };
    for (n, input) in inputs.iter().enumerate() {
        let name = input.name();
        let span = tracing::info_span!("source", input = %name);
        let _g = span.enter();
        let mut reader = input.open()?;
        let mut first = true;
        while let Some(info) = reader.next_line(&mut line, keep)? {
            bytes_read += info.len + 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let pos = SourcePos {
                cluster: &options.cluster,
                source: &name,
                line: Some(info.line_no),
                byte_offset: info.offset,
            };
            if first && matches!(line.trim_ascii(), b"{" | b"[") {
                // A pretty-printed Event or EventList: read it whole.
                line.push(b'\n');
                reader.read_rest(&mut line, options.max_document_bytes)?;
                bytes_read += (line.len() as u64).saturating_sub(info.len + 1);
                events += decoder.decode_document(&line, pos, &mut quarantine) as u64;
                break;
            }
            first = false;
            if info.len > line.len() as u64 {
                // Cut while reading: quarantine the kept prefix with the true length.
                decoder.quarantine_oversized(&line, info.len, pos, &mut quarantine);
                continue;
            }
            events += decoder.decode_line(&line, pos, &mut quarantine) as u64;
            if decoder.buffered_rows() >= options.batch_rows
                || decoder.buffered_input_bytes() >= options.batch_bytes
                || quarantine_is_large(&quarantine)
            {
                let b = decoder
                    .finish_batch()
                    .unwrap_or_else(|| RecordBatch::new_empty(auditlake_schema::events_schema()));
                send(&tx, Decoded::Batch(b, std::mem::take(&mut quarantine)))?;
                decoder.set_ingested_at(now_micros());
                if last_progress.elapsed() >= Duration::from_secs(5) {
                    last_progress = Instant::now();
                    let secs = started.elapsed().as_secs_f64().max(1e-9);
                    tracing::info!(
                        events,
                        mb_read = bytes_read / 1_000_000,
                        mb_per_s = (bytes_read as f64 / 1e6 / secs).round() as u64,
                        events_per_s = (events as f64 / secs).round() as u64,
                        "progress"
                    );
                }
            }
        }
        tracing::debug!(input = n + 1, of = inputs.len(), "input done");
    }
    if let Some(b) = decoder.finish_batch() {
        send(&tx, Decoded::Batch(b, std::mem::take(&mut quarantine)))?;
    } else if !quarantine.is_empty() {
        let empty = RecordBatch::new_empty(auditlake_schema::events_schema());
        send(&tx, Decoded::Batch(empty, quarantine))?;
    }
    send(
        &tx,
        Decoded::Stats {
            inputs: inputs.len() as u64,
            bytes_read,
            summarised: decoder.take_summarised(),
        },
    )
}

/// Quarantine records waiting are due for a commit (bounds their memory on an input that
/// is mostly bad: records are committed in pieces, never dropped).
fn quarantine_is_large(q: &[Quarantined]) -> bool {
    q.len() >= MAX_QUARANTINE_RECORDS_PER_COMMIT
        || q.iter().map(quarantine_weight).sum::<usize>() >= MAX_QUARANTINE_BYTES_PER_COMMIT
}

/// A commit is due once this many quarantine records wait...
const MAX_QUARANTINE_RECORDS_PER_COMMIT: usize = 10_000;
/// ...or once they would take this many bytes.
const MAX_QUARANTINE_BYTES_PER_COMMIT: usize = 32 << 20;

/// What the encoder thread reports: inputs, bytes read, findings, summarised bad items.
type EncodeStats = (u64, u64, u64, u64);

fn encode_batches(
    rx: Receiver<Decoded>,
    options: &IngestOptions,
    mut observer: Option<Box<dyn BatchObserver>>,
    tx: mpsc::Sender<CommitUnit>,
    telemetry: &Telemetry,
) -> Result<EncodeStats, IngestError> {
    let mut writer = PartitionedWriter::new(&options.writer_id, options.writer.clone());
    let mut quarantine = Vec::new();
    let mut stats = (0, 0, 0, 0);
    let send = |unit| {
        tx.blocking_send(unit)
            .map_err(|_| IngestError::Pipeline("committer stopped".into()))
    };
    for msg in rx {
        match msg {
            Decoded::Batch(batch, q) => {
                if let Some(first) = q.first() {
                    telemetry.quarantined(
                        SourceKind::File,
                        &first.source,
                        q.len() as u64,
                        0,
                        &first.reason,
                    );
                }
                telemetry.events_in(SourceKind::File, batch.num_rows() as u64);
                quarantine.extend(q);
                let span = tracing::debug_span!("batch", rows = batch.num_rows());
                let _g = span.enter();
                if let Some(o) = &mut observer {
                    stats.2 += o.observe(&batch);
                }
                let mut files = writer.write(&batch)?;
                if !files.is_empty() || quarantine_is_large(&quarantine) {
                    if let Some(o) = &mut observer {
                        files.extend(o.commit_files());
                    }
                    send(CommitUnit {
                        files,
                        quarantine: std::mem::take(&mut quarantine),
                    })?;
                }
            }
            Decoded::Stats {
                inputs,
                bytes_read,
                summarised,
            } => {
                telemetry.quarantined(
                    SourceKind::File,
                    "inputs",
                    0,
                    summarised,
                    "bad items beyond the per-input cap, counted in summary records",
                );
                (stats.0, stats.1, stats.3) = (inputs, bytes_read, summarised)
            }
        }
    }
    if let Some(o) = &mut observer {
        stats.2 += o.finish();
    }
    let mut files = writer.finish_all()?;
    if let Some(o) = &mut observer {
        files.extend(o.commit_files());
    }
    send(CommitUnit { files, quarantine })?;
    Ok(stats)
}
