//! The auditlake evidence archive: where it lives ([`ArchiveLocation`]), its tables and
//! their partitions ([`Table`], [`layout`]), the one set of Parquet settings
//! ([`TableFileEncoder`]), the quarantine file format, the commit protocol
//! ([`Archive::commit`]) and the hash-chained manifest ([`ManifestRecord`], specified in
//! `archive/FORMAT.md`). Readers list the files the manifest attests ([`AttestedFiles`]).
//!
//! Knows nothing of sources, HTTP, TLS, the write-ahead log or SQL: those depend on it.

mod archive;
mod attested;
mod checkpoint;
pub mod completeness;
mod error;
mod failpoint;
mod hashed_buffer;
mod kafka_progress;
pub mod layout;
mod location;
mod manifest;
pub mod merkle;
pub mod note;
mod parquet_properties;
pub mod prove;
mod quarantine;
pub mod retention;
pub mod row_tree;
pub mod tlog;
pub mod verify;

pub use archive::{Archive, BeforePut, CommitContents, CommitOutcome, HEAD_FILE, INTENTS_DIR};
pub use attested::{AttestedFile, AttestedFiles, AttestedStore};
pub use checkpoint::{CHECKPOINT_EVERY, CHECKPOINT_FORMAT, CHECKPOINTS_DIR};
pub use error::ArchiveError;
pub use failpoint::failpoint;
pub use kafka_progress::KafkaProgress;
pub use layout::{
    DAY_MICROS, DERIVED_PARTITION_COLUMNS, EVENTS_PARTITION_COLUMNS, FinishedFile, HOUR_MICROS,
    MANIFEST_DIR, QUARANTINE_DIR, Table, cluster_name_error, data_file_path, date_of,
    escape_partition_value, events_partition_dir, partition_of, quarantine_file, quarantine_stem,
};
pub use location::ArchiveLocation;
pub use manifest::{
    ApiserverAuditCounters, FileRange, Heartbeat, KafkaRange, KeyRotation, MANIFEST_FORMAT,
    MANIFEST_FORMAT_V1, MANIFEST_FORMAT_V2, ManifestFile, ManifestQuarantine, ManifestRecord,
    RemovedFile, RetentionInfo, SourceMark,
};
pub use parquet_properties::{ParquetSettings, TableFileEncoder};
pub use quarantine::{quarantine_line, quarantine_ndjson, quarantine_weight};
