//! The webhook as a source: the requests the HTTP server wrote to its write-ahead log
//! (`crate::webhook` answers 200 once a body is fsynced there), read back in order.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use auditlake_archive::SourceMark;

use super::{Durable, Marker, Position, Pulled, Shape, Source, SourceError, SourceRecord};
use crate::telemetry::SourceKind;
use crate::wal::{ReadOutcome, Wal, WalReader, WalRecord};

/// The write-ahead log read from its oldest kept record; records up to `committed_seq` are
/// marked archived (read again only to rebuild the duplicate filter).
pub struct WebhookSource {
    reader: WalReader,
    log_id: String,
    committed_seq: u64,
}

impl WebhookSource {
    /// Reads `reader`, the log `log_id` whose records up to `committed_seq` are archived.
    pub(crate) fn new(reader: WalReader, log_id: String, committed_seq: u64) -> Self {
        Self {
            reader,
            log_id,
            committed_seq,
        }
    }
}

/// The log's marks are cumulative: every record up to `through_seq` is archived.
struct LogMarker {
    log_id: String,
    through_seq: u64,
    /// The first record of the commit being gathered.
    first_seq: Option<u64>,
}

impl Marker for LogMarker {
    fn add(&mut self, position: &Position, _origin: &str, _byte_offset: u64) {
        if let Position::Log { seq } = position {
            self.through_seq = self.through_seq.max(*seq);
            self.first_seq.get_or_insert(*seq);
        }
    }

    fn stem(&self) -> Option<String> {
        self.first_seq.map(|seq| {
            // The id comes from a file in the log directory: keep it a plain name.
            let id = auditlake_archive::escape_partition_value(&self.log_id);
            format!("{id}-{seq:012}")
        })
    }

    fn take(&mut self) -> Option<SourceMark> {
        Some(SourceMark::Webhook {
            log_id: self.log_id.clone(),
            through_seq: self.through_seq,
            from_seq: self.first_seq.take(),
        })
    }
}

/// What the webhook does once records are archived: mark them so in its log and trim the
/// segments no longer needed.
pub(crate) struct LogTrimmer {
    /// The log.
    pub wal: Wal,
    /// Its identifier: marks of another log are not its own.
    pub log_id: String,
    /// Archived segments are kept this long, to rebuild the duplicate filter after a
    /// restart, unless the log is over half `wal_max_bytes`.
    pub keep_segments: Duration,
    /// The log's size limit.
    pub wal_max_bytes: u64,
}

impl Durable for LogTrimmer {
    fn durable(&self, mark: &SourceMark) -> Result<u64, SourceError> {
        let SourceMark::Webhook {
            log_id,
            through_seq,
            ..
        } = mark
        else {
            return Ok(0);
        };
        if *log_id != self.log_id {
            return Ok(0);
        }
        self.wal.set_archived(*through_seq);
        let under_pressure =
            self.wal.stats().bytes.load(Ordering::Relaxed) > self.wal_max_bytes / 2;
        let keep_since = if under_pressure {
            Instant::now()
        } else {
            Instant::now()
                .checked_sub(self.keep_segments)
                .unwrap_or_else(Instant::now)
        };
        self.wal
            .trim(*through_seq, keep_since)
            .map_err(|e| SourceError(format!("trimming the write-ahead log: {e}")))
    }
}

/// `webhook[<sender>] wal:<seq>`: where a record's events came from.
pub(crate) fn origin(r: &WalRecord) -> String {
    if r.identity.is_empty() {
        format!("webhook wal:{}", r.seq)
    } else {
        format!("webhook[{}] wal:{}", r.identity, r.seq)
    }
}

impl Source for WebhookSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Webhook
    }

    fn resends(&self) -> bool {
        true
    }

    fn pull(&mut self, wait: Duration) -> Result<Pulled, SourceError> {
        match self.reader.next(wait) {
            Ok(ReadOutcome::Record(r)) => {
                let archived = r.seq <= self.committed_seq;
                Ok(Pulled::Record(SourceRecord {
                    shape: Shape::Document,
                    line: None,
                    byte_offset: 0,
                    origin: origin(&r),
                    position: Position::Log { seq: r.seq },
                    received_at_micros: r.received_at_micros,
                    cluster: r.cluster,
                    body: r.body,
                    archived,
                }))
            }
            Ok(ReadOutcome::Idle) => Ok(Pulled::Idle),
            Ok(ReadOutcome::Closed) => Ok(Pulled::End),
            Err(e) => Err(SourceError(e.to_string())),
        }
    }

    fn marker(&self) -> Box<dyn Marker> {
        Box::new(LogMarker {
            log_id: self.log_id.clone(),
            through_seq: self.committed_seq,
            first_seq: None,
        })
    }
}
