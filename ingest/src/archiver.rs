//! The archiver thread of `auditlake serve`: reads the write-ahead log in order, decodes,
//! drops resent events, shows batches to the detectors, encodes Parquet, and decides when a
//! commit is due; the committer task does the commits.
//!
//! A record it fails on (an error, a panic, or the process dying while on it) is retried
//! from the last commit; after [`crate::record_attempts::MAX_FAILURES`] failures it is set
//! aside whole in the quarantine and the log moves on. Memory stays bounded whatever a
//! request holds: each input gets at most a fixed number of quarantine records, a commit is
//! due once the quarantine is large, and events whose request time is far from their
//! arrival are filed under the arrival hour (see [`crate::ArrivalWindow`]).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use arrow::array::BooleanArray;
use arrow::compute::filter_record_batch;
use auditlake_schema::{DecoderOptions, EventDecoder, Quarantined, SourcePos};
use tokio::sync::mpsc;

use crate::dedup::Deduplicator;
use crate::detection_thread::DetectionThread;
use crate::partitioned_writer::{PartitionedWriter, WriterOptions};
use crate::record_attempts::{Attempt, RecordAttempts};
use crate::serve::ServeError;
use crate::serve_metrics::ServeMetrics;
use crate::sources::{Position, Pulled, Shape, Source, SourceRecord};
use crate::telemetry::SourceKind;
use crate::wal::PendingCut;
use auditlake_archive::FinishedFile;
use auditlake_archive::{CommitContents, quarantine_stem, quarantine_weight};

/// A commit is due once this many quarantine records wait...
const MAX_QUARANTINE_RECORDS_PER_COMMIT: usize = 10_000;
/// ...or once they would take this many bytes.
const MAX_QUARANTINE_BYTES_PER_COMMIT: usize = 32 << 20;

/// How one archiver run reads, batches and writes.
pub(crate) struct ArchiverSettings {
    /// Names this run's files and manifest records.
    pub writer_id: String,
    /// The log's identifier, in every commit's mark.
    pub wal_id: String,
    /// Cluster that damaged log bytes (whose request is unknown) are quarantined under.
    pub default_cluster: String,
    pub decoder: DecoderOptions,
    pub writer: WriterOptions,
    pub flush_interval: Duration,
    /// Commit once this many log bytes are read since the last commit.
    pub flush_bytes: u64,
    /// Every record up to this one is archived: read only to rebuild the duplicate filter.
    pub committed_seq: u64,
    /// The last record durable at start: reaching it ends the replay, and commits at once.
    pub replay_target: u64,
    pub dedup_window_micros: i64,
    pub dedup_max_events: usize,
    /// Process secret keying the duplicate digests.
    pub digest_key: u64,
}

/// One commit's worth of work for the committer.
pub(crate) struct CommitUnit {
    pub contents: CommitContents,
    /// The last log record it covers.
    pub through_seq: u64,
    /// Local files to delete once it is committed (damaged log bytes now in the archive).
    pub cleanup: Vec<PathBuf>,
}

/// What an archiver run keeps across restarts: the detectors and the attempts file.
pub(crate) struct ArchiverKit {
    pub detection: Option<DetectionThread>,
    /// Failures per write-ahead log record (a source read afresh by each run has none).
    pub attempts: Option<RecordAttempts>,
}

/// Why a run ended early.
pub(crate) struct ArchiverFailure(pub String);

impl From<ServeError> for ArchiverFailure {
    fn from(e: ServeError) -> Self {
        Self(e.to_string())
    }
}

impl From<crate::wal::WalError> for ArchiverFailure {
    fn from(e: crate::wal::WalError) -> Self {
        Self(e.to_string())
    }
}

impl From<crate::error::IngestError> for ArchiverFailure {
    fn from(e: crate::error::IngestError) -> Self {
        Self(e.to_string())
    }
}

/// The part of a commit being gathered.
struct Pending {
    finished: Vec<FinishedFile>,
    quarantine: Vec<Quarantined>,
    quarantine_weight: usize,
    cleanup: Vec<PathBuf>,
    dirty: bool,
    /// The source is revoking partitions: commit now.
    revoked: bool,
    bytes: u64,
    since: Instant,
    outlier_log: LogEvery,
}

/// Counts occurrences of something worth a warning and says when to log it: at most once a
/// minute, with the count since the last message (a flood of them must not flood the log).
struct LogEvery {
    last: Option<Instant>,
    count: u64,
}

impl LogEvery {
    const INTERVAL: Duration = Duration::from_secs(60);

    /// Adds `n`; `Some(total)` when a message is due.
    fn count(&mut self, n: u64) -> Option<u64> {
        self.count += n;
        if self.last.is_some_and(|t| t.elapsed() < Self::INTERVAL) {
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.count))
    }
}

impl Pending {
    fn new() -> Self {
        Self {
            finished: Vec::new(),
            quarantine: Vec::new(),
            quarantine_weight: 0,
            cleanup: Vec::new(),
            dirty: false,
            revoked: false,
            bytes: 0,
            since: Instant::now(),
            outlier_log: LogEvery {
                last: None,
                count: 0,
            },
        }
    }

    fn quarantine(&mut self, q: Vec<Quarantined>) {
        self.quarantine_weight += q.iter().map(quarantine_weight).sum::<usize>();
        self.quarantine.extend(q);
    }
}

/// A record set aside after repeated failures, kept whole in the quarantine.
fn poison_record(r: &SourceRecord, failures: u64, max_bytes: usize) -> Quarantined {
    Quarantined {
        cluster: r.cluster.clone(),
        source: r.origin.clone(),
        line: None,
        item: None,
        byte_offset: 0,
        reason: format!(
            "the archiver failed {failures} times on this write-ahead log record (an error, a \
             panic or the process dying while decoding or writing it); it is set aside here \
             whole instead of being archived as events"
        ),
        raw: r.body[..r.body.len().min(max_bytes)].to_vec(),
        raw_len: r.body.len() as u64,
    }
}

/// Damaged log bytes found at start, as quarantine records.
fn cut_record(cut: &PendingCut, cluster: &str) -> Quarantined {
    Quarantined {
        cluster: cluster.to_string(),
        source: format!("write-ahead log {}", cut.region.segment),
        line: None,
        item: None,
        byte_offset: cut.region.offset,
        reason: cut.region.describe(),
        raw: cut.bytes.clone(),
        raw_len: cut.bytes.len() as u64,
    }
}

/// Runs until the source ends (`Ok`) or something fails (`Err`: the supervisor restarts it
/// from the last commit). Hands commit units to `commits`.
pub(crate) fn run(
    source: &mut dyn Source,
    s: &ArchiverSettings,
    kit: &mut ArchiverKit,
    cuts: Vec<PendingCut>,
    metrics: &ServeMetrics,
    commits: &mpsc::Sender<CommitUnit>,
) -> Result<(), ArchiverFailure> {
    // One decoder for every cluster: each record names its own.
    let mut decoder = EventDecoder::new(s.decoder.clone());
    let resends = source.resends();
    if resends {
        decoder.enable_row_digests(s.digest_key);
    }
    let mut writer = PartitionedWriter::new(&s.writer_id, s.writer.clone());
    let mut dedup = resends.then(|| Deduplicator::new(s.dedup_window_micros, s.dedup_max_events));
    let mut pending = Pending::new();
    if !cuts.is_empty() {
        pending.quarantine(
            cuts.iter()
                .map(|c| cut_record(c, &s.default_cluster))
                .collect(),
        );
        pending.cleanup = cuts.into_iter().flat_map(|c| c.files).collect();
        pending.dirty = true;
    }
    let mut last_seq = s.committed_seq;
    let mut replay_committed = s.replay_target <= s.committed_seq;
    loop {
        let wait = s
            .flush_interval
            .saturating_sub(pending.since.elapsed())
            .max(Duration::from_millis(5));
        let mut closing = false;
        let kind = source.kind();
        match source
            .pull(wait)
            .map_err(|e| ArchiverFailure(e.to_string()))?
        {
            Pulled::Record(r) => {
                let span = tracing::debug_span!("record", origin = %r.origin, bytes = r.body.len());
                let _g = span.enter();
                // A log record is tracked across runs, so one the archiver keeps failing on is
                // set aside; other sources are read afresh by a new run.
                let mut tracked = match (r.position, kit.attempts.as_mut()) {
                    (Position::Log { seq }, Some(attempts)) => Some((seq, attempts)),
                    _ => None,
                };
                let attempt = match &mut tracked {
                    Some((seq, attempts)) => attempts.begin(*seq)?,
                    None => Attempt::Try(1),
                };
                match attempt {
                    Attempt::SetAside => {
                        // `tracked` is Some: only a tracked record is ever set aside.
                        if let Some((seq, attempts)) = tracked {
                            if !r.archived {
                                let failures = attempts.failures(seq);
                                tracing::error!(
                                    seq,
                                    failures,
                                    bytes = r.body.len(),
                                    "setting a record aside in the quarantine: the archiver failed on it repeatedly"
                                );
                                metrics.poison_records.inc();
                                metrics.telemetry.quarantined(
                                    kind,
                                    &r.origin,
                                    1,
                                    0,
                                    "set aside after repeated failures",
                                );
                                pending.quarantine(vec![poison_record(
                                    &r,
                                    failures,
                                    s.decoder.max_summary_bytes,
                                )]);
                                last_seq = seq;
                                pending.dirty = true;
                            }
                            attempts.set_aside(seq)?;
                        }
                    }
                    Attempt::Try(attempt) => {
                        if attempt > 1 {
                            tracing::warn!(attempt, "retrying a record the archiver failed on");
                        }
                        let archived = r.archived;
                        archive_record(
                            &r,
                            &mut decoder,
                            dedup.as_mut(),
                            &mut writer,
                            kit.detection.as_ref(),
                            metrics,
                            (kind, archived, &mut pending),
                        )?;
                        if let Some((seq, attempts)) = tracked {
                            attempts.done(seq)?;
                            if !archived {
                                last_seq = seq;
                            }
                        }
                        if !archived {
                            pending.dirty = true;
                            pending.bytes += r.body.len() as u64;
                        }
                    }
                }
            }
            Pulled::Idle => {}
            // Commit what is held now, so the offsets read from the partitions are durable
            // before another consumer takes them.
            Pulled::Revoked(_) => pending.revoked = true,
            Pulled::End => closing = true,
        }
        let replay_done = !replay_committed && last_seq >= s.replay_target;
        let due = replay_done
            || pending.revoked
            || !pending.finished.is_empty()
            || pending.bytes >= s.flush_bytes
            || pending.quarantine.len() >= MAX_QUARANTINE_RECORDS_PER_COMMIT
            || pending.quarantine_weight >= MAX_QUARANTINE_BYTES_PER_COMMIT
            || pending.since.elapsed() >= s.flush_interval;
        if closing || (pending.dirty && due) {
            // The detectors' files for the events up to `last_seq`; at the end also the
            // summaries of folded findings, which may come with no new events.
            let tables = if closing {
                kit.detection.take().map(DetectionThread::finish)
            } else {
                kit.detection.as_ref().map(DetectionThread::commit_files)
            }
            .transpose()?
            .unwrap_or_default();
            if pending.dirty || !tables.is_empty() {
                let mut files = std::mem::take(&mut pending.finished);
                files.extend(writer.finish_all()?);
                files.extend(tables);
                let quarantine = std::mem::take(&mut pending.quarantine);
                let unit = CommitUnit {
                    contents: CommitContents {
                        files,
                        quarantine_stem: (!quarantine.is_empty())
                            .then(|| quarantine_stem(&s.writer_id)),
                        quarantine,
                        removed: Vec::new(),
                        source: source.mark(),
                    },
                    through_seq: last_seq,
                    cleanup: std::mem::take(&mut pending.cleanup),
                };
                commits
                    .blocking_send(unit)
                    .map_err(|_| ArchiverFailure("the committer stopped".into()))?;
                if replay_done {
                    replay_committed = true;
                }
            }
            if closing {
                return Ok(());
            }
            let log = std::mem::replace(
                &mut pending.outlier_log,
                LogEvery {
                    last: None,
                    count: 0,
                },
            );
            pending = Pending::new();
            pending.outlier_log = log;
        }
    }
}

/// Decodes one record, drops its resent events, and writes the rest (or, for a record
/// already archived, only remembers its events as seen).
#[allow(clippy::too_many_arguments)]
fn archive_record(
    r: &SourceRecord,
    decoder: &mut EventDecoder,
    dedup: Option<&mut Deduplicator>,
    writer: &mut PartitionedWriter,
    detection: Option<&DetectionThread>,
    metrics: &ServeMetrics,
    (kind, archived, pending): (SourceKind, bool, &mut Pending),
) -> Result<(), ArchiverFailure> {
    decoder.set_ingested_at(r.received_at_micros);
    let source = r.origin.as_str();
    let mut q = Vec::new();
    let pos = SourcePos {
        cluster: &r.cluster,
        source,
        line: r.line,
        byte_offset: r.byte_offset,
    };
    match r.shape {
        Shape::Document => {
            decoder.decode_document(&r.body, pos, &mut q);
        }
        Shape::Lines => {
            decoder.decode_ndjson(&r.body, pos, &mut q);
        }
        Shape::Oversized { full_len } => {
            decoder.quarantine_oversized(&r.body, full_len, pos, &mut q)
        }
    }
    let summarised = decoder.take_summarised();
    let batch = decoder.finish_batch();
    let keep: Option<BooleanArray> = dedup.map(|dedup| {
        decoder
            .take_row_digests()
            .iter()
            .map(|d| Some(dedup.first_sighting(*d, r.received_at_micros)))
            .collect()
    });
    if archived {
        return Ok(());
    }
    let duplicates = keep.as_ref().map_or(0, |k| k.false_count() as u64);
    if duplicates > 0 {
        metrics.duplicates.inc_by(duplicates);
        tracing::info!(origin = %r.origin, duplicates, "dropped resent events");
    }
    if !q.is_empty() {
        metrics
            .telemetry
            .quarantined(kind, source, q.len() as u64, summarised, &q[0].reason);
        pending.quarantine(q);
    }
    if let Some(batch) = batch {
        let kept = if let (Some(keep), true) = (&keep, duplicates > 0) {
            filter_record_batch(&batch, keep)
                .map_err(|e| ArchiverFailure(format!("filtering duplicates: {e}")))?
        } else {
            batch
        };
        metrics.telemetry.events_in(kind, kept.num_rows() as u64);
        if let Some(d) = detection {
            d.observe(kept.clone(), r.received_at_micros)?;
        }
        pending.finished.extend(writer.write(&kept)?);
        let outliers = writer.take_out_of_window();
        if outliers > 0 {
            metrics.events_out_of_window.inc_by(outliers);
            if let Some(total) = pending.outlier_log.count(outliers) {
                tracing::warn!(
                    origin = %r.origin,
                    events = total,
                    "events whose request time is more than 7 days before or 1 hour after their arrival were filed under the arrival hour (count since the last such message)"
                );
            }
        }
    }
    Ok(())
}
