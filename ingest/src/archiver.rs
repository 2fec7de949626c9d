//! The one archiver of every source (`auditlake serve`'s write-ahead log, `auditlake
//! ingest`'s files): pulls records in order, decodes, drops resent events, shows batches to
//! the detectors, encodes Parquet, and decides when a commit is due; the committer task does
//! the commits.
//!
//! A write-ahead log record it fails on (an error, a panic, or the process dying while on it) is retried
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
use crate::sources::{Marker, Position, Pulled, Shape, Source, SourceRecord};
use crate::telemetry::SourceKind;
use crate::wal::PendingCut;
use arrow::array::RecordBatch;
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
    /// The source is revoking partitions, or ended a commit: commit now.
    cut: bool,
    bytes: u64,
    since: Instant,
}

/// Counts occurrences of something worth a warning and says when to log it: at most once a
/// minute, with the count since the last message (a flood of them must not flood the log).
#[derive(Default)]
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
            cut: false,
            bytes: 0,
            since: Instant::now(),
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

/// A record decoded, ready for the writing side.
struct Decoded {
    position: Position,
    origin: String,
    byte_offset: u64,
    body_len: u64,
    received_at_micros: i64,
    /// Already in a committed record: only its events were remembered as seen.
    archived: bool,
    /// Its events, resends dropped.
    batch: Option<RecordBatch>,
    quarantine: Vec<Quarantined>,
    summarised: u64,
    /// The log record this is, when its attempts are tracked: done once it is written.
    tracked_seq: Option<u64>,
}

impl Decoded {
    /// `r`'s place and size, with nothing decoded yet.
    fn of(r: &SourceRecord) -> Self {
        Self {
            position: r.position,
            origin: r.origin.clone(),
            byte_offset: r.byte_offset,
            body_len: r.body.len() as u64,
            received_at_micros: r.received_at_micros,
            archived: r.archived,
            batch: None,
            quarantine: Vec::new(),
            summarised: 0,
            tracked_seq: None,
        }
    }
}

/// What the reading side hands the writing side.
enum Step {
    Record(Box<Decoded>),
    /// Consecutive records decoded as one batch (see [`Reader::coalesce`]): each record's
    /// place and quarantine, then their events.
    Group {
        records: Vec<Decoded>,
        batch: Option<RecordBatch>,
        received_at_micros: i64,
        origin: String,
    },
    Idle,
    /// Commit now (partitions revoked, or the source ended a commit).
    Cut,
    End,
}

/// Rows of small records gathered into one batch before it is finished...
const COALESCE_ROWS: usize = 8192;
/// ...or this many input bytes.
const COALESCE_BYTES: usize = 8 << 20;

/// The reading side: pulls, decodes and drops resends.
struct Reader<'a> {
    source: &'a mut dyn Source,
    decoder: EventDecoder,
    dedup: Option<Deduplicator>,
    kind: SourceKind,
    max_summary_bytes: usize,
    /// Decode consecutive records into one batch (a source that cuts its own commits, such
    /// as Kafka with one event per message: a batch per message would cost the detectors
    /// and the Parquet writer far more than the event).
    coalesce: bool,
    /// Records whose rows are in the decoder, not yet in a batch.
    held: Vec<Decoded>,
    /// What the source said while rows were held: handled once they are handed over.
    stashed: Option<Pulled>,
}

/// Records in one [`Step::Group`] at most.
const COALESCE_RECORDS: usize = 8192;

impl Reader<'_> {
    /// The next step. With `attempts`, a log record the archiver keeps failing on is set
    /// aside (returned as one quarantine record) instead of decoded.
    fn next(
        &mut self,
        wait: Duration,
        attempts: Option<&mut RecordAttempts>,
        metrics: &ServeMetrics,
    ) -> Result<Step, ArchiverFailure> {
        if self.coalesce {
            return self.next_group(wait, metrics);
        }
        let pulled = self
            .source
            .pull(wait)
            .map_err(|e| ArchiverFailure(e.to_string()))?;
        self.step(pulled, attempts, metrics)
    }

    /// Pulls records into one batch until it is full or the source has nothing at hand,
    /// then hands them over as a [`Step::Group`].
    fn next_group(
        &mut self,
        wait: Duration,
        metrics: &ServeMetrics,
    ) -> Result<Step, ArchiverFailure> {
        let deadline = Instant::now() + wait;
        loop {
            let pulled = match self.stashed.take() {
                Some(p) => p,
                None => {
                    // Held rows are handed over as soon as the source has nothing at hand.
                    let wait = if self.held.is_empty() {
                        deadline.saturating_duration_since(Instant::now())
                    } else {
                        Duration::ZERO
                    };
                    self.source
                        .pull(wait)
                        .map_err(|e| ArchiverFailure(e.to_string()))?
                }
            };
            match pulled {
                Pulled::Record(r) if !r.archived => {
                    self.hold(r, metrics);
                    if self.held.len() >= COALESCE_RECORDS
                        || self.decoder.buffered_rows() >= COALESCE_ROWS
                        || self.decoder.buffered_input_bytes() >= COALESCE_BYTES
                    {
                        return self.finish_held(metrics);
                    }
                }
                // The held rows go first: the step after them may cut a commit.
                other if !self.held.is_empty() => {
                    if !matches!(other, Pulled::Idle) {
                        self.stashed = Some(other);
                    }
                    return self.finish_held(metrics);
                }
                other => return self.step(other, None, metrics),
            }
        }
    }

    /// What one pull means for the writing side.
    fn step(
        &mut self,
        pulled: Pulled,
        attempts: Option<&mut RecordAttempts>,
        metrics: &ServeMetrics,
    ) -> Result<Step, ArchiverFailure> {
        let r = match pulled {
            Pulled::Record(r) => r,
            Pulled::Idle => return Ok(Step::Idle),
            Pulled::Revoked(_) | Pulled::Cut => return Ok(Step::Cut),
            Pulled::End => return Ok(Step::End),
        };
        let span = tracing::debug_span!("record", origin = %r.origin, bytes = r.body.len());
        let _g = span.enter();
        let mut tracked = match (r.position, attempts) {
            (Position::Log { seq }, Some(a)) => Some((seq, a)),
            _ => None,
        };
        if let Some((seq, attempts)) = &mut tracked {
            match attempts.begin(*seq)? {
                Attempt::SetAside => {
                    let failures = attempts.failures(*seq);
                    attempts.set_aside(*seq)?;
                    let mut quarantine = Vec::new();
                    if !r.archived {
                        tracing::error!(
                            seq = *seq,
                            failures,
                            bytes = r.body.len(),
                            "setting a record aside in the quarantine: the archiver failed on it repeatedly"
                        );
                        metrics.poison_records.inc();
                        metrics.telemetry.quarantined(
                            self.kind,
                            &r.origin,
                            1,
                            0,
                            "set aside after repeated failures",
                        );
                        quarantine.push(poison_record(&r, failures, self.max_summary_bytes));
                    }
                    return Ok(Step::Record(Box::new(Decoded {
                        body_len: 0,
                        quarantine,
                        ..Decoded::of(&r)
                    })));
                }
                Attempt::Try(attempt) if attempt > 1 => {
                    tracing::warn!(attempt, "retrying a record the archiver failed on");
                }
                Attempt::Try(_) => {}
            }
        }
        let decoded = self.decode(&r, metrics)?;
        self.source.recycle(r.body);
        Ok(Step::Record(Box::new(Decoded {
            tracked_seq: tracked.map(|(seq, _)| seq),
            ..decoded
        })))
    }

    /// Decodes a record into the rows held.
    fn hold(&mut self, mut r: SourceRecord, metrics: &ServeMetrics) {
        let (quarantine, summarised) = self.decode_rows(&r, metrics);
        // The record is done with once decoded: its origin moves, it is not copied.
        let origin = std::mem::take(&mut r.origin);
        self.held.push(Decoded {
            quarantine,
            summarised,
            origin,
            ..Decoded::of(&r)
        });
        self.source.recycle(r.body);
    }

    /// Hands over the records held and their rows as one batch.
    fn finish_held(&mut self, metrics: &ServeMetrics) -> Result<Step, ArchiverFailure> {
        let records = std::mem::take(&mut self.held);
        let (origin, received_at_micros) = records
            .last()
            .map(|d| (d.origin.clone(), d.received_at_micros))
            .unwrap_or_default();
        let batch = self.finish_rows(&origin, received_at_micros, metrics)?;
        Ok(Step::Group {
            records,
            batch,
            received_at_micros,
            origin,
        })
    }

    /// Decodes `r` into the decoder's rows; its quarantine records and how many more were
    /// only summarised.
    fn decode_rows(&mut self, r: &SourceRecord, metrics: &ServeMetrics) -> (Vec<Quarantined>, u64) {
        let decoder = &mut self.decoder;
        decoder.set_ingested_at(r.received_at_micros);
        let mut q = Vec::new();
        let pos = SourcePos {
            cluster: &r.cluster,
            source: &r.origin,
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
            Shape::LongLine => {
                decoder.decode_long_line(&r.body, pos, &mut q);
            }
            Shape::Oversized { full_len } => {
                decoder.quarantine_oversized(&r.body, full_len, pos, &mut q)
            }
        }
        let skipped = decoder.take_skipped();
        if !skipped.is_empty() {
            metrics
                .telemetry
                .envelope_skipped(self.kind, &r.origin, &skipped);
        }
        (q, decoder.take_summarised())
    }

    /// Finishes the decoder's rows as a batch, resent events dropped.
    fn finish_rows(
        &mut self,
        origin: &str,
        received_at_micros: i64,
        metrics: &ServeMetrics,
    ) -> Result<Option<RecordBatch>, ArchiverFailure> {
        let decoder = &mut self.decoder;
        let batch = decoder.finish_batch();
        let keep: Option<BooleanArray> = self.dedup.as_mut().map(|dedup| {
            decoder
                .take_row_digests()
                .iter()
                .map(|d| Some(dedup.first_sighting(*d, received_at_micros)))
                .collect()
        });
        let duplicates = keep.as_ref().map_or(0, |k| k.false_count() as u64);
        if duplicates > 0 {
            metrics.duplicates.inc_by(duplicates);
            tracing::info!(origin = %origin, duplicates, "dropped resent events");
        }
        Ok(match (batch, keep) {
            (Some(batch), Some(keep)) if duplicates > 0 => Some(
                filter_record_batch(&batch, &keep)
                    .map_err(|e| ArchiverFailure(format!("filtering duplicates: {e}")))?,
            ),
            (batch, _) => batch,
        })
    }

    /// Decodes one record and drops its resent events (for a record already archived, only
    /// remembers its events as seen).
    fn decode(
        &mut self,
        r: &SourceRecord,
        metrics: &ServeMetrics,
    ) -> Result<Decoded, ArchiverFailure> {
        let (quarantine, summarised) = self.decode_rows(r, metrics);
        if r.archived {
            // Remembered as seen, not counted as dropped.
            let decoder = &mut self.decoder;
            decoder.finish_batch();
            if let Some(dedup) = self.dedup.as_mut() {
                for d in decoder.take_row_digests() {
                    dedup.first_sighting(d, r.received_at_micros);
                }
            }
            return Ok(Decoded::of(r));
        }
        let batch = self.finish_rows(&r.origin, r.received_at_micros, metrics)?;
        Ok(Decoded {
            batch,
            quarantine,
            summarised,
            ..Decoded::of(r)
        })
    }
}

/// Records decoded ahead of the writing side when reading runs on its own thread.
const DECODED_AHEAD: usize = 2;

/// Runs until the source ends (`Ok`) or something fails (`Err`: the supervisor restarts it
/// from the last commit). Hands commit units to `commits`.
///
/// A source whose records are tracked across runs (the webhook's log, with `kit.attempts`)
/// is read and decoded on this thread, one record at a time, so a record that kills the
/// process is the one the attempts file names. Any other source (files) is read and decoded
/// on a thread of its own, a couple of records ahead of the Parquet writing here, so both
/// cores work.
pub(crate) fn run(
    source: &mut dyn Source,
    s: &ArchiverSettings,
    kit: &mut ArchiverKit,
    cuts: Vec<PendingCut>,
    metrics: &ServeMetrics,
    commits: &mpsc::Sender<CommitUnit>,
) -> Result<(), ArchiverFailure> {
    let resends = source.resends();
    // One decoder for every cluster: each record names its own.
    let mut decoder = EventDecoder::new(s.decoder.clone());
    if resends {
        decoder.enable_row_digests(s.digest_key);
    }
    let marker = source.marker();
    let kind = source.kind();
    let self_cut = source.cuts_commits();
    let mut reader = Reader {
        source,
        decoder,
        dedup: resends.then(|| Deduplicator::new(s.dedup_window_micros, s.dedup_max_events)),
        kind,
        max_summary_bytes: s.decoder.max_summary_bytes,
        // The tracked path decodes record by record (see below).
        coalesce: self_cut && kit.attempts.is_none(),
        held: Vec::new(),
        stashed: None,
    };
    let mut writing = Writing::new(s, marker, kind, cuts);
    writing.self_cut = self_cut;
    if kit.attempts.is_some() {
        loop {
            let wait = writing.wait(s);
            let step = reader.next(wait, kit.attempts.as_mut(), metrics)?;
            if writing.take(step, s, kit, metrics, commits)? {
                return Ok(());
            }
        }
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Step, ArchiverFailure>>(DECODED_AHEAD);
    std::thread::scope(|scope| {
        let read = std::thread::Builder::new()
            .name("auditlake-decode".into())
            .spawn_scoped(scope, move || {
                loop {
                    let step = reader.next(Duration::from_millis(200), None, metrics);
                    let last = !matches!(
                        step,
                        Ok(Step::Record(_) | Step::Group { .. } | Step::Idle | Step::Cut)
                    );
                    if tx.send(step).is_err() || last {
                        return;
                    }
                }
            })
            .map_err(|e| ArchiverFailure(format!("spawning the decoder: {e}")))?;
        let outcome = (|| {
            for step in &rx {
                if writing.take(step?, s, kit, metrics, commits)? {
                    return Ok(());
                }
            }
            Err(ArchiverFailure("the decoder stopped".into()))
        })();
        // Unblocks the reading side if it is waiting to hand over a record.
        drop(rx);
        read.join()
            .map_err(|_| ArchiverFailure("the decoder thread panicked".into()))?;
        outcome
    })
}

/// The writing side: Parquet, the detectors, the commit cadence and the commits.
struct Writing {
    writer: PartitionedWriter,
    pending: Pending,
    marker: Box<dyn Marker>,
    kind: SourceKind,
    /// The source says where commits end ([`Source::cuts_commits`]).
    self_cut: bool,
    last_seq: u64,
    /// The writer has this commit's stem (see [`Marker::stem`]).
    stem_named: bool,
    replay_committed: bool,
    /// Across commits: the warning it rate-limits is about the stream, not one commit.
    outlier_log: LogEvery,
}

impl Writing {
    fn new(
        s: &ArchiverSettings,
        marker: Box<dyn Marker>,
        kind: SourceKind,
        cuts: Vec<PendingCut>,
    ) -> Self {
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
        Self {
            writer: PartitionedWriter::new(&s.writer_id, s.writer.clone()),
            pending,
            marker,
            kind,
            self_cut: false,
            last_seq: s.committed_seq,
            stem_named: false,
            replay_committed: s.replay_target <= s.committed_seq,
            outlier_log: LogEvery::default(),
        }
    }

    /// How long the reading side may wait for a record before a timed commit is due.
    fn wait(&self, s: &ArchiverSettings) -> Duration {
        s.flush_interval
            .saturating_sub(self.pending.since.elapsed())
            .max(Duration::from_millis(5))
    }

    /// Takes one step; `Ok(true)` once the source ended and everything is handed to the
    /// committer.
    fn take(
        &mut self,
        step: Step,
        s: &ArchiverSettings,
        kit: &mut ArchiverKit,
        metrics: &ServeMetrics,
        commits: &mpsc::Sender<CommitUnit>,
    ) -> Result<bool, ArchiverFailure> {
        if commits.is_closed() {
            // The committer gave up (at shutdown, or refused a commit whose Kafka offsets
            // another member archived): what is held must be read again, not kept idle.
            return Err(ArchiverFailure("the committer stopped".into()));
        }
        let mut closing = false;
        match step {
            Step::Record(d) => self.take_record(*d, kit, metrics)?,
            Step::Group {
                records,
                batch,
                received_at_micros,
                origin,
            } => {
                for d in records {
                    self.take_record(d, kit, metrics)?;
                }
                if let Some(batch) = batch {
                    self.write_batch(
                        batch,
                        received_at_micros,
                        &origin,
                        kit.detection.as_ref(),
                        metrics,
                    )?;
                }
            }
            Step::Idle => {}
            // Commit what is held now: the source ended a commit, or it is revoking
            // partitions and their offsets must be durable before another consumer takes them.
            Step::Cut => self.pending.cut = true,
            Step::End => closing = true,
        }
        let pending = &mut self.pending;
        let replay_done = !self.replay_committed && self.last_seq >= s.replay_target;
        // A source that cuts its own commits gets no timed or sized ones; the other reasons
        // below are functions of the records too (a full file, a large quarantine).
        let timed = !self.self_cut
            && (pending.bytes >= s.flush_bytes || pending.since.elapsed() >= s.flush_interval);
        let due = replay_done
            || pending.cut
            || timed
            || !pending.finished.is_empty()
            || pending.quarantine.len() >= MAX_QUARANTINE_RECORDS_PER_COMMIT
            || pending.quarantine_weight >= MAX_QUARANTINE_BYTES_PER_COMMIT;
        if closing || (pending.dirty && due) {
            // The detectors' files for the events written so far; at the end also the
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
                files.extend(self.writer.finish_all()?);
                files.extend(tables);
                let quarantine = std::mem::take(&mut pending.quarantine);
                // The next record opens the next commit, and names its stem.
                let source = self.marker.take();
                self.stem_named = false;
                let unit = CommitUnit {
                    contents: CommitContents {
                        files,
                        quarantine_stem: (!quarantine.is_empty())
                            .then(|| quarantine_stem(&s.writer_id)),
                        quarantine,
                        removed: Vec::new(),
                        source,
                        retention: None,
                        key_rotation: None,
                        heartbeat: None,
                    },
                    through_seq: self.last_seq,
                    cleanup: std::mem::take(&mut pending.cleanup),
                };
                commits
                    .blocking_send(unit)
                    .map_err(|_| ArchiverFailure("the committer stopped".into()))?;
                if replay_done {
                    self.replay_committed = true;
                }
            }
            if closing {
                return Ok(true);
            }
            *pending = Pending::new();
        }
        Ok(false)
    }

    /// Files a decoded record and counts it into the commit being gathered.
    fn take_record(
        &mut self,
        d: Decoded,
        kit: &mut ArchiverKit,
        metrics: &ServeMetrics,
    ) -> Result<(), ArchiverFailure> {
        let tracked = d.tracked_seq;
        let archived = d.archived;
        let (position, body_len) = (d.position, d.body_len);
        self.write(d, kit.detection.as_ref(), metrics)?;
        if let (Some(seq), Some(attempts)) = (tracked, kit.attempts.as_mut()) {
            attempts.done(seq)?;
        }
        if !archived {
            if let Position::Log { seq } = position {
                self.last_seq = seq;
            }
            self.pending.dirty = true;
            self.pending.bytes += body_len;
        }
        Ok(())
    }

    /// Files a decoded record: its quarantine, its events to the detectors and the Parquet
    /// writer, its place in the commit's mark.
    fn write(
        &mut self,
        d: Decoded,
        detection: Option<&DetectionThread>,
        metrics: &ServeMetrics,
    ) -> Result<(), ArchiverFailure> {
        if !d.archived {
            self.marker.add(&d.position, &d.origin, d.byte_offset);
            // The stem comes from the commit's first record: named once per commit, not
            // formatted again for every record after it.
            if !self.stem_named
                && let Some(stem) = self.marker.stem()
            {
                self.writer.set_stem(&stem);
                self.stem_named = true;
            }
        }
        if let Some(first) = d.quarantine.first() {
            metrics.telemetry.quarantined(
                self.kind,
                &d.origin,
                d.quarantine.len() as u64,
                d.summarised,
                &first.reason,
            );
        }
        if !d.quarantine.is_empty() {
            self.pending.quarantine(d.quarantine);
        }
        match d.batch {
            Some(kept) => {
                self.write_batch(kept, d.received_at_micros, &d.origin, detection, metrics)
            }
            None => Ok(()),
        }
    }

    /// Shows a batch to the detectors and writes it to Parquet.
    fn write_batch(
        &mut self,
        kept: RecordBatch,
        received_at_micros: i64,
        origin: &str,
        detection: Option<&DetectionThread>,
        metrics: &ServeMetrics,
    ) -> Result<(), ArchiverFailure> {
        metrics
            .telemetry
            .events_in(self.kind, kept.num_rows() as u64);
        if let Some(det) = detection {
            det.observe(kept.clone(), received_at_micros)?;
        }
        self.pending.finished.extend(self.writer.write(&kept)?);
        let outliers = self.writer.take_out_of_window();
        if outliers > 0 {
            metrics.events_out_of_window.inc_by(outliers);
            if let Some(total) = self.outlier_log.count(outliers) {
                tracing::warn!(
                    origin = %origin,
                    events = total,
                    "events whose request time is more than 7 days before or 1 hour after their arrival were filed under the arrival hour (count since the last such message)"
                );
            }
        }
        Ok(())
    }
}
