//! Manifest records: the hash-chained list of committed files that makes the archive
//! verifiable (a removed, altered or inserted file breaks a SHA-256 or the chain).
//! The format is specified in `archive/FORMAT.md`.

use serde::{Deserialize, Serialize};

use crate::error::ArchiveError;
use crate::layout::Table;

/// Format tag written in every record by this version.
pub const MANIFEST_FORMAT: &str = "auditlake-manifest/3";
/// Format tag of the records written before rows were hashed (read as v3 without roots).
pub const MANIFEST_FORMAT_V2: &str = "auditlake-manifest/2";
/// Format tag of the records written before manifest v2 (still read).
pub const MANIFEST_FORMAT_V1: &str = "auditlake-manifest/1";
/// Prefix shared by every version's format tag.
const FORMAT_PREFIX: &str = "auditlake-manifest/";

/// One committed data file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    /// The table the file belongs to (`events`, `findings`, `rbac_history`).
    pub table: String,
    /// Path relative to the archive root.
    pub path: String,
    /// SHA-256 of the file's bytes, hex.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Number of rows.
    pub rows: u64,
    /// Cluster partition.
    pub cluster: String,
    /// Earliest row time, µs since the epoch (events: `request_received_at`).
    pub min_time_micros: i64,
    /// Latest row time, µs since the epoch.
    pub max_time_micros: i64,
    /// Root (hex) of the Merkle tree over the file's rows (`archive/FORMAT.md` §8): one
    /// event is proven by a path to it. Events files of signed archives only (v3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_root: Option<String>,
}

/// One quarantine file written by the commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestQuarantine {
    /// Path relative to the archive root.
    pub path: String,
    /// SHA-256 of the file's bytes, hex.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Number of quarantined inputs in it.
    pub records: u64,
}

/// A file an earlier record committed that this record takes out of its table (compaction
/// replaced it, retention expired it). Its bytes may be deleted once the record is durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemovedFile {
    /// Path relative to the archive root, as committed.
    pub path: String,
    /// SHA-256 it was committed with.
    pub sha256: String,
    /// Why (`compacted`, `retention`).
    pub reason: String,
}

/// One Kafka partition's offsets covered by a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaRange {
    /// Topic.
    pub topic: String,
    /// Partition number.
    pub partition: i32,
    /// First offset covered.
    pub from_offset: i64,
    /// Last offset covered (inclusive).
    pub through_offset: i64,
}

/// One input file's bytes covered by a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRange {
    /// The input as given (`-` for stdin).
    pub path: String,
    /// First byte covered (of the decompressed stream).
    pub from_byte: u64,
    /// One past the last byte covered.
    pub to_byte: u64,
}

/// Where the events of a commit came from, and how far that source is archived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceMark {
    /// The webhook's write-ahead log: every record of log `log_id` up to `through_seq` is in
    /// this commit's files or an earlier commit's.
    Webhook {
        /// The log's identifier (stable across restarts of the server that owns it).
        log_id: String,
        /// Last sequence number covered.
        through_seq: u64,
        /// First sequence number this commit archives (absent in heartbeats and in records
        /// written before it was kept): a commit starting past the previous one's
        /// `through_seq + 1` left records out, which `evidence` reports as a gap.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from_seq: Option<u64>,
    },
    /// A Kafka consumer group: these offset ranges are in this commit. A range of a
    /// partition is archived by one record only: a commit whose ranges overlap an earlier
    /// record's is refused ([`crate::ArchiveError::RangeArchived`]).
    Kafka {
        /// Consumer group.
        group: String,
        /// Offsets per topic and partition.
        ranges: Vec<KafkaRange>,
    },
    /// Files read by `auditlake ingest`.
    Files {
        /// The byte ranges of each input.
        inputs: Vec<FileRange>,
    },
}

impl SourceMark {
    /// Where the source stands after this mark, without what the commit added: what a
    /// heartbeat repeats (a webhook mark without `from_seq`, a Kafka or files mark without
    /// ranges).
    pub fn position(&self) -> SourceMark {
        match self {
            SourceMark::Webhook {
                log_id,
                through_seq,
                ..
            } => SourceMark::Webhook {
                log_id: log_id.clone(),
                through_seq: *through_seq,
                from_seq: None,
            },
            SourceMark::Kafka { group, .. } => SourceMark::Kafka {
                group: group.clone(),
                ranges: Vec::new(),
            },
            SourceMark::Files { .. } => SourceMark::Files { inputs: Vec::new() },
        }
    }
}

/// One commit: the files it made visible (or removed) and the hash of the record before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestRecord {
    /// [`MANIFEST_FORMAT`] (records read from v1 say [`MANIFEST_FORMAT_V1`]).
    pub format: String,
    /// 1 for the first commit, then +1 per commit.
    pub sequence: u64,
    /// SHA-256 of the previous record's bytes; `None` only for sequence 1.
    pub previous_sha256: Option<String>,
    /// Commit time, RFC 3339.
    pub committed_at: String,
    /// Identifier of the writer process run that committed.
    pub writer: String,
    /// Events schema version of the data files.
    pub schema_version: u32,
    /// Data files committed.
    pub files: Vec<ManifestFile>,
    /// Quarantine files committed.
    pub quarantine: Vec<ManifestQuarantine>,
    /// Files taken out of their tables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<RemovedFile>,
    /// Where the events came from and how far that source is archived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceMark>,
    /// The policy a retention record applied (its `removed` lists what it took out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionInfo>,
    /// A key rotation: from this record on, the log is signed by `to` instead of `from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_rotation: Option<KeyRotation>,
    /// A heartbeat: no files; the source of `source` was up at `committed_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<Heartbeat>,
}

/// What a heartbeat record attests (`archive/FORMAT.md` §3): the writer was up at
/// `committed_at`, archiving for these clusters (written every interval, busy or idle).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// Clusters the source serves: its configured cluster and every cluster it committed
    /// events of in this run.
    pub clusters: Vec<String>,
    /// The apiserver's own audit counters, scraped from its metrics endpoint when the source
    /// is given one, so a report can reconcile what it audited with what was archived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apiserver: Option<ApiserverAuditCounters>,
}

/// An apiserver's audit counters at one moment (its `/metrics`, Prometheus text format).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiserverAuditCounters {
    /// The cluster whose apiserver was scraped.
    pub cluster: String,
    /// `apiserver_audit_event_total`: audit events the apiserver generated and sent to its
    /// backends.
    pub audit_event_total: u64,
    /// `apiserver_audit_error_total`, summed over plugins: events it failed to audit.
    pub audit_error_total: u64,
}

/// The log's signing key changing (`archive/FORMAT.md` §7): the checkpoint covering this
/// record is signed by both keys and kept under `_log/rotation/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRotation {
    /// The old key's vkey.
    pub from: String,
    /// The new key's vkey.
    pub to: String,
}

/// What a retention record applied (`archive/FORMAT.md` §9).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionInfo {
    /// The policy as asked (`keep 400d`).
    pub policy: String,
    /// Partitions that ended at or before this time were removed (RFC 3339).
    pub cutoff: String,
    /// Names of the legal holds checked.
    pub legal_holds: Vec<String>,
    /// Files past the cutoff that a hold kept.
    pub held_files: u64,
}

impl ManifestRecord {
    /// A record for `sequence` chaining after `previous_sha256`, stamped now.
    pub fn new(
        sequence: u64,
        previous_sha256: Option<String>,
        writer: &str,
        files: Vec<ManifestFile>,
        quarantine: Vec<ManifestQuarantine>,
    ) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        Self {
            format: MANIFEST_FORMAT.to_string(),
            sequence,
            previous_sha256,
            committed_at: auditlake_schema::timestamp::format_rfc3339_micros(now),
            writer: writer.to_string(),
            schema_version: auditlake_schema::SCHEMA_VERSION,
            files,
            quarantine,
            removed: Vec::new(),
            source: None,
            retention: None,
            key_rotation: None,
            heartbeat: None,
        }
    }

    /// File name of the record for `sequence`: zero padded so names sort by sequence.
    pub fn file_name(sequence: u64) -> String {
        format!("{sequence:020}.json")
    }

    /// Events in this commit (files of the detectors' tables, also committed here, are not
    /// events).
    pub fn rows(&self) -> u64 {
        self.event_files().map(|f| f.rows).sum()
    }

    /// The committed files of the `events` table.
    pub fn event_files(&self) -> impl Iterator<Item = &ManifestFile> {
        self.files
            .iter()
            .filter(|f| f.table == Table::Events.name())
    }

    /// The webhook log mark of this record, if it has one.
    pub fn webhook_mark(&self) -> Option<(&str, u64)> {
        match &self.source {
            Some(SourceMark::Webhook {
                log_id,
                through_seq,
                ..
            }) => Some((log_id, *through_seq)),
            _ => None,
        }
    }

    /// Reads a record of any supported format from its bytes (`path` names it in errors).
    /// A v1 record is returned in v2's shape with `format` left at v1; its bytes, which the
    /// chain hashes, are untouched.
    pub fn parse(bytes: &[u8], path: &str) -> Result<Self, ArchiveError> {
        let bad = |message: String| ArchiveError::Manifest {
            path: path.to_string(),
            message,
        };
        #[derive(Deserialize)]
        struct Tag {
            format: String,
        }
        let tag: Tag = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        match tag.format.as_str() {
            MANIFEST_FORMAT | MANIFEST_FORMAT_V2 => {
                serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))
            }
            MANIFEST_FORMAT_V1 => {
                let v1: v1::Record =
                    serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
                Ok(v1.into_current())
            }
            other => match other
                .strip_prefix(FORMAT_PREFIX)
                .and_then(|v| v.parse::<u32>().ok())
            {
                Some(v) if v > 3 => Err(ArchiveError::NewerFormat {
                    path: path.to_string(),
                    found: other.to_string(),
                    supported: MANIFEST_FORMAT,
                }),
                _ => Err(bad(format!(
                    "not an auditlake manifest record (format {other:?})"
                ))),
            },
        }
    }
}

/// The records written before v2, read into v2's shape.
mod v1 {
    use serde::Deserialize;

    use super::{ManifestFile, ManifestQuarantine, ManifestRecord, SourceMark};
    use crate::layout::Table;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct File {
        path: String,
        sha256: String,
        bytes: u64,
        rows: u64,
        cluster: String,
        min_request_received_at: i64,
        max_request_received_at: i64,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct WalMark {
        id: String,
        through_seq: u64,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Record {
        format: String,
        sequence: u64,
        previous_sha256: Option<String>,
        committed_at: String,
        writer: String,
        schema_version: u32,
        files: Vec<File>,
        quarantine: Vec<ManifestQuarantine>,
        #[serde(default)]
        wal: Option<WalMark>,
    }

    impl Record {
        pub(super) fn into_current(self) -> ManifestRecord {
            ManifestRecord {
                format: self.format,
                sequence: self.sequence,
                previous_sha256: self.previous_sha256,
                committed_at: self.committed_at,
                writer: self.writer,
                schema_version: self.schema_version,
                files: self
                    .files
                    .into_iter()
                    .map(|f| ManifestFile {
                        // v1 knew its tables by their directories only.
                        table: Table::of_path(&f.path)
                            .map_or_else(|| "unknown".to_string(), |t| t.name().to_string()),
                        path: f.path,
                        sha256: f.sha256,
                        bytes: f.bytes,
                        rows: f.rows,
                        cluster: f.cluster,
                        min_time_micros: f.min_request_received_at,
                        max_time_micros: f.max_request_received_at,
                        rows_root: None,
                    })
                    .collect(),
                quarantine: self.quarantine,
                removed: Vec::new(),
                source: self.wal.map(|w| SourceMark::Webhook {
                    log_id: w.id,
                    through_seq: w.through_seq,
                    from_seq: None,
                }),
                retention: None,
                key_rotation: None,
                heartbeat: None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_v1_record_of_the_webhook_reads_as_v2_with_its_log_mark() {
        let v1 = br#"{"format":"auditlake-manifest/1","sequence":3,"previous_sha256":"ab",
            "committed_at":"2026-11-30T10:00:00.000000Z","writer":"w1","schema_version":1,
            "files":[{"path":"findings/cluster=a/date=2026-11-30/part-w1-000001.parquet",
            "sha256":"cd","bytes":10,"rows":2,"cluster":"a","min_request_received_at":5,
            "max_request_received_at":6}],"quarantine":[],"wal":{"id":"log-1","through_seq":42}}"#;
        let r = ManifestRecord::parse(v1, "_manifest/3.json").unwrap();
        assert_eq!(r.format, MANIFEST_FORMAT_V1);
        assert_eq!(r.webhook_mark(), Some(("log-1", 42)));
        assert_eq!(r.files[0].table, "findings");
        assert_eq!(
            (r.files[0].min_time_micros, r.files[0].max_time_micros),
            (5, 6)
        );
        assert_eq!(r.rows(), 0, "findings are not events");
    }

    #[test]
    fn a_newer_format_is_an_error_naming_the_version() {
        let v9 = br#"{"format":"auditlake-manifest/9","sequence":1}"#;
        let e = ManifestRecord::parse(v9, "_manifest/1.json").unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("auditlake-manifest/9") && m.contains("upgrade"),
            "{m}"
        );
        let other = br#"{"format":"delta","sequence":1}"#;
        let m = ManifestRecord::parse(other, "x").unwrap_err().to_string();
        assert!(m.contains("not an auditlake manifest record"), "{m}");
    }

    #[test]
    fn v2_round_trips_with_every_source_kind() {
        for source in [
            SourceMark::Webhook {
                log_id: "l".into(),
                through_seq: 9,
                from_seq: Some(3),
            },
            SourceMark::Kafka {
                group: "g".into(),
                ranges: vec![KafkaRange {
                    topic: "audit".into(),
                    partition: 0,
                    from_offset: 10,
                    through_offset: 99,
                }],
            },
            SourceMark::Files {
                inputs: vec![FileRange {
                    path: "a.log".into(),
                    from_byte: 0,
                    to_byte: 1000,
                }],
            },
        ] {
            let mut r = ManifestRecord::new(2, Some("00".into()), "w", vec![], vec![]);
            r.source = Some(source);
            r.removed.push(RemovedFile {
                path: "events/x.parquet".into(),
                sha256: "ff".into(),
                reason: "compacted".into(),
            });
            let bytes = serde_json::to_vec(&r).unwrap();
            assert_eq!(ManifestRecord::parse(&bytes, "p").unwrap(), r);
        }
    }
}
