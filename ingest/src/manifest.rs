//! Manifest records: the hash-chained list of committed files that makes the archive
//! verifiable (a removed, altered or inserted file breaks a SHA-256 or the chain).

use serde::{Deserialize, Serialize};

/// Prefix under the archive root holding manifest records.
pub const MANIFEST_DIR: &str = "_manifest";

/// Format tag written in every record.
pub const MANIFEST_FORMAT: &str = "auditlake-manifest/1";

/// One committed data file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestFile {
    /// Path relative to the archive root.
    pub path: String,
    /// SHA-256 of the file's bytes, hex.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Number of events.
    pub rows: u64,
    /// Cluster partition.
    pub cluster: String,
    /// Earliest `request_received_at`, µs since the epoch.
    pub min_request_received_at: i64,
    /// Latest `request_received_at`, µs since the epoch.
    pub max_request_received_at: i64,
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

/// How far a webhook write-ahead log is archived: every record of log `id` up to
/// `through_seq` is in this commit's files or an earlier commit's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalMark {
    /// The log's identifier (stable across restarts of the server that owns it).
    pub id: String,
    /// Last sequence number covered.
    pub through_seq: u64,
}

/// One commit: the files it made visible and the hash of the record before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestRecord {
    /// Always [`MANIFEST_FORMAT`].
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
    /// For commits from the webhook: how far its write-ahead log is archived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal: Option<WalMark>,
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
            wal: None,
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
        self.files.iter().filter(|f| {
            f.path.starts_with(crate::EVENTS_DIR)
                && f.path[crate::EVENTS_DIR.len()..].starts_with('/')
        })
    }
}
