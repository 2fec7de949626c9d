//! Sources, batching and the Parquet evidence archive of auditlake.
//!
//! Data flows `file_source` -> decoder (in `auditlake-schema`) -> [`PartitionedWriter`]
//! (Parquet per `cluster=/date=/hour=`) -> [`Archive::commit`] (data files, quarantine,
//! then a hash-chained manifest record written create-if-absent).

mod archive;
mod error;
mod file_source;
mod manifest;
mod partitioned_writer;
mod pipeline;
mod quarantine;

pub use archive::{Archive, ArchiveLocation};
pub use error::IngestError;
pub use file_source::{Input, InputReader};
pub use manifest::{
    MANIFEST_DIR, MANIFEST_FORMAT, ManifestFile, ManifestQuarantine, ManifestRecord,
};
pub use partitioned_writer::{FinishedFile, PartitionedWriter, WriterOptions, partition_of};
pub use pipeline::{IngestOptions, IngestSummary, ingest};
pub use quarantine::{QUARANTINE_DIR, quarantine_ndjson};

/// Prefix under the archive root holding the events table.
pub const EVENTS_DIR: &str = "events";
