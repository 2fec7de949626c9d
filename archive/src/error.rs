//! Errors of the archive crate.

use std::path::PathBuf;

/// What can go wrong opening, reading or committing to the archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The archive location could not be understood or its store not built.
    #[error("archive location {location:?}: {message}")]
    Location {
        /// The location as given.
        location: String,
        /// Why it was rejected.
        message: String,
    },
    /// The location holds no archive (no manifest record), so there is nothing to read.
    #[error(
        "{location} holds no auditlake archive (no manifest record under {}/); check --archive",
        crate::MANIFEST_DIR
    )]
    NotAnArchive {
        /// The location as given.
        location: String,
    },
    /// The object store refused an operation.
    #[error("object store {operation} {path}: {source}")]
    Store {
        /// What was attempted (put, get, list, delete).
        operation: &'static str,
        /// Object path.
        path: String,
        /// The store's error.
        source: object_store::Error,
    },
    /// Making a committed local file durable failed.
    #[error("fsync {path}: {source}")]
    Fsync {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Parquet encoding failed.
    #[error("parquet encoding: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// A manifest record could not be read or is not ours.
    #[error("manifest {path}: {message}")]
    Manifest {
        /// Object path of the record.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// The signed log (tiles, checkpoint) could not be read, written or trusted.
    #[error("log {path}: {message}")]
    Log {
        /// Object path (or what was being read).
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A manifest record written by a newer auditlake, in a format this one cannot read.
    #[error(
        "manifest {path}: format {found:?} is newer than this auditlake reads ({supported}); \
         upgrade auditlake to read this archive"
    )]
    NewerFormat {
        /// Object path of the record.
        path: String,
        /// The record's `format`.
        found: String,
        /// The newest format this version reads.
        supported: &'static str,
    },
    /// A commit's Kafka offsets are archived already by an earlier record (another member
    /// of the group, or a zombie of this one, got there first): the commit is refused so no
    /// offset is archived twice; its writer must re-read from the manifest.
    #[error(
        "offsets {from_offset}..={through_offset} of {topic}/{partition} overlap what manifest          record {sequence} and earlier archived (through offset {archived_through}); this          commit is refused so no offset is archived twice"
    )]
    RangeArchived {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The commit's first offset of the partition.
        from_offset: i64,
        /// The commit's last offset of the partition.
        through_offset: i64,
        /// The offset the manifest archives the partition through.
        archived_through: i64,
        /// The newest record checked.
        sequence: u64,
    },
    /// Another writer kept committing manifest records faster than this one could.
    #[error(
        "could not commit after {attempts} attempts: other writers kept taking sequence numbers"
    )]
    CommitContention {
        /// Attempts made.
        attempts: u32,
    },
}

/// Maps an object store error on `path` to [`ArchiveError::Store`].
pub(crate) fn store_err(
    operation: &'static str,
    path: impl ToString,
) -> impl FnOnce(object_store::Error) -> ArchiveError {
    move |source| ArchiveError::Store {
        operation,
        path: path.to_string(),
        source,
    }
}
