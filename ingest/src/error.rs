//! Errors of the ingest crate.

use std::path::PathBuf;

/// What can go wrong while reading sources or writing the archive.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The archive refused a read or a commit.
    #[error(transparent)]
    Archive(#[from] auditlake_archive::ArchiveError),
    /// An input could not be opened or read.
    #[error("reading {path}: {source}")]
    Input {
        /// The input path (`-` for stdin).
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Parquet encoding failed.
    #[error("parquet encoding: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// A pipeline thread stopped unexpectedly.
    #[error("ingest pipeline: {0}")]
    Pipeline(String),
}
