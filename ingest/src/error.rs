//! Errors of the ingest crate.

use std::path::PathBuf;

/// What can go wrong while reading sources or writing the archive.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The archive location could not be understood or its store not built.
    #[error("archive location {location:?}: {message}")]
    Location {
        /// The location as given.
        location: String,
        /// Why it was rejected.
        message: String,
    },
    /// An input could not be opened or read.
    #[error("reading {path}: {source}")]
    Input {
        /// The input path (`-` for stdin).
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The object store refused an operation.
    #[error("object store {operation} {path}: {source}")]
    Store {
        /// What was attempted (put, get, list).
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
    /// Another writer kept committing manifest records faster than this one could.
    #[error(
        "could not commit after {attempts} attempts: other writers kept taking sequence numbers"
    )]
    CommitContention {
        /// Attempts made.
        attempts: u32,
    },
    /// A pipeline thread stopped unexpectedly.
    #[error("ingest pipeline: {0}")]
    Pipeline(String),
}
