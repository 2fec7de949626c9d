//! Sources: where audit payloads come from, one module per protocol. Each yields
//! [`SourceRecord`]s (the payload, its cluster, where it came from, its position) through
//! [`Source`], and says, as a [`SourceMark`] in each manifest record, how far it is archived.
//!
//! `auditlake ingest` reads [`file::FileSource`], `auditlake serve` its
//! [`webhook::WebhookSource`] or, as a consumer-group member, [`kafka::KafkaSource`]; all
//! through the one archiver. The interface serves Kafka this way:
//!
//! - positions are per partition ([`Position::Kafka`]); a source's [`Source::mark`] covers
//!   every record it handed out since the previous mark, so a Kafka source returns one
//!   offset range per partition it read;
//! - [`Pulled::Revoked`] tells the archiver that partitions are being taken away mid-batch:
//!   it commits what it holds at once, so the offsets of everything it read from them are in
//!   a committed manifest record before the partitions go to another consumer;
//! - a source that decides its commits itself ([`Source::cuts_commits`]: Kafka, so that a
//!   replay cuts the same files) says where each ends with [`Pulled::Cut`], and the archiver
//!   then commits on no timer or byte count of its own;
//! - a source learns that records are durable from the committer ([`Durable`]), after the
//!   manifest record naming their files is written, never before: the webhook then trims
//!   its log, Kafka stores its offsets, files do nothing.

pub mod file;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod webhook;

use std::time::Duration;

use auditlake_archive::SourceMark;

/// Where a record sits in its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// A record of the webhook's write-ahead log.
    Log {
        /// Its sequence number.
        seq: u64,
    },
    /// A stretch of an input file.
    File {
        /// The input's index among those given.
        input: u32,
        /// One past the last byte the record covers (of the decompressed input).
        end_byte: u64,
    },
    /// A Kafka message.
    Kafka {
        /// The topic's index among those the source consumes.
        topic: u16,
        /// Partition.
        partition: i32,
        /// Offset.
        offset: i64,
    },
}

/// What a record's body is, as far as its source knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One document in any envelope the decoder reads (an EventList, an Event, a JSON
    /// array, or NDJSON of those).
    Document,
    /// Whole NDJSON lines, each its own input (a file's lines).
    Lines,
    /// The kept start of a line longer than the source allows, whose full length was
    /// `full_len`: it is quarantined without being parsed.
    Oversized {
        /// The line's true length.
        full_len: u64,
    },
    /// A whole line longer than an event may be, that may hold several JSON values back
    /// to back (Firehose records in an S3 object): each value is decoded on its own; a
    /// line of one value is quarantined as oversized.
    LongLine,
}

/// One payload from a source: audit events in any envelope the decoder reads.
#[derive(Debug, Clone)]
pub struct SourceRecord {
    /// The payload (an EventList, an Event, NDJSON, ...).
    pub body: Vec<u8>,
    /// What the body is.
    pub shape: Shape,
    /// The cluster its events belong to.
    pub cluster: String,
    /// Where it came from, for `source_ref` and the quarantine (`webhook[cn] wal:12`, a
    /// file name).
    pub origin: String,
    /// 1-based line of `origin` the body starts at, when line oriented.
    pub line: Option<u64>,
    /// Byte offset of the body in `origin`.
    pub byte_offset: u64,
    /// Its position in the source.
    pub position: Position,
    /// When the source received it (µs since the epoch): the events' `ingested_at`.
    pub received_at_micros: i64,
    /// A committed manifest record already covers it: it is read again only so the
    /// duplicate filter remembers its events, and is not archived twice.
    pub archived: bool,
}

/// What [`Source::pull`] found.
#[derive(Debug)]
pub enum Pulled {
    /// The next record.
    Record(SourceRecord),
    /// Nothing within the wait.
    Idle,
    /// These partitions are being revoked: commit what is held now.
    Revoked(Vec<i32>),
    /// The records handed out since the last commit form one: commit them now.
    Cut,
    /// The source ended (the log closed, the files were read).
    End,
}

/// Why a source could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

/// A stream of records the archiver consumes.
pub trait Source: Send {
    /// The kind of source, for the counters' label.
    fn kind(&self) -> crate::telemetry::SourceKind;
    /// Whether the source may send an event twice (the apiserver resends a batch after a
    /// timeout), so the archiver drops events it has seen within the dedup window. A file
    /// is archived as it is.
    fn resends(&self) -> bool;
    /// Whether the source says where each commit ends ([`Pulled::Cut`]), so the archiver
    /// cuts none on its own timer or byte count: a commit's contents are then a function of
    /// the records, and a replay after a crash cuts the same files.
    fn cuts_commits(&self) -> bool {
        false
    }
    /// The next record, waiting up to `wait` for one.
    fn pull(&mut self, wait: Duration) -> Result<Pulled, SourceError>;
    /// What turns the records in a commit into the commit's mark. It is kept by the
    /// archiver's writing side, which may run behind the reading side: a mark covers the
    /// records written, never those only read ahead.
    fn marker(&self) -> Box<dyn Marker>;
    /// Takes back the body of a record once it is decoded, so the source can read its next
    /// record into the same memory instead of growing and faulting in a new buffer.
    fn recycle(&mut self, _body: Vec<u8>) {}
}

/// Builds the [`SourceMark`] of each commit from the records that went into it.
pub trait Marker: Send {
    /// A record (not already archived) is in the commit being gathered.
    fn add(&mut self, position: &Position, origin: &str, byte_offset: u64);
    /// The mark of the commit: every record added since the last call. A source whose
    /// marks are cumulative (the webhook's log) gives its position even when nothing was
    /// added; one whose marks are ranges (Kafka offsets, file bytes) gives `None` then.
    fn take(&mut self) -> Option<SourceMark>;
    /// The stem of the data file names of the commit being gathered, decided by its first
    /// record's position, so a commit redone after a crash puts the same names again
    /// (overwriting what the crashed attempt left) instead of new ones; `None` when the
    /// source has no stable positions (a file is read afresh), and the run's id is used.
    fn stem(&self) -> Option<String> {
        None
    }
}

/// Told, by the committer, that the records a mark covers are durable in a committed
/// manifest record: the one callback through which a source learns it may let go of them.
pub trait Durable: Send + Sync {
    /// The records `mark` covers are archived. Runs on a blocking thread (it may do I/O);
    /// returns the bytes it freed, for the log. An error is logged and the next commit's
    /// call tries again.
    fn durable(&self, mark: &SourceMark) -> Result<u64, SourceError>;

    /// Whether [`Durable::quarantined`] wants the quarantine records of each commit (so
    /// they are copied only for a source that passes them on).
    fn wants_quarantine(&self) -> bool {
        false
    }

    /// The quarantine records of a commit now durable, after [`Durable::durable`]: a source
    /// may pass them on (Kafka's dead-letter topic). Runs on a blocking thread.
    fn quarantined(&self, _records: &[auditlake_schema::Quarantined]) {}
}
