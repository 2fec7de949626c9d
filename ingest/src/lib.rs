//! Sources, batching and the Parquet evidence archive of auditlake.
//!
//! Sources: files (`file_source`, [`ingest`]) and the apiserver's audit webhook ([`serve`]:
//! HTTPS -> fsynced write-ahead log -> archiver). Data flows `file_source` -> decoder (in `auditlake-schema`) -> [`PartitionedWriter`]
//! (Parquet per `cluster=/date=/hour=`) -> [`Archive::commit`] (data files, quarantine,
//! then a hash-chained manifest record written create-if-absent).

mod archive;
mod archive_health;
mod archiver;
mod bearer_tokens;
mod committer;
mod credentials;
mod dedup;
mod detection_thread;
mod error;
mod file_source;
mod http_connections;
mod manifest;
mod observer;
mod partitioned_writer;
mod pipeline;
mod quarantine;
mod record_attempts;
mod serve;
mod serve_metrics;
mod thread_priority;
mod tls;
pub mod wal;
mod webhook;

pub use archive::{Archive, ArchiveLocation, CommitContents};
pub use bearer_tokens::{BearerTokens, MIN_TOKEN_CHARS};
pub use error::IngestError;
pub use file_source::{Input, InputReader};
pub use manifest::{
    MANIFEST_DIR, MANIFEST_FORMAT, ManifestFile, ManifestQuarantine, ManifestRecord, WalMark,
};
pub use observer::{BatchObserver, ObserverCounter};
pub use partitioned_writer::{
    ArrivalWindow, FinishedFile, PartitionedWriter, WriterOptions, cluster_name_error, partition_of,
};
pub use pipeline::{IngestOptions, IngestSummary, ingest, new_writer_id};
pub use quarantine::{QUARANTINE_DIR, quarantine_line, quarantine_ndjson};
pub use serve::{Bound, ServeConfig, ServeError, ServeSummary, serve};
pub use serve_metrics::ServeMetrics;
pub use tls::{TlsError, certificate_identity, server_config};

/// Prefix under the archive root holding the events table.
pub const EVENTS_DIR: &str = "events";
