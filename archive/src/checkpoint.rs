//! Checkpoints: the live files of every table as of one manifest record, so a reader (SQL
//! start-up) reads one checkpoint and the records after it instead of the whole chain.
//! A checkpoint is a cache of the chain, not evidence: it names the record it summarises
//! by SHA-256, and a reader that finds it does not match uses the chain instead.

use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::archive::Archive;
use crate::attested::AttestedFiles;
use crate::error::{ArchiveError, store_err};

/// Prefix under the archive root holding checkpoints.
pub const CHECKPOINTS_DIR: &str = "_checkpoints";
/// Format tag of a checkpoint.
pub const CHECKPOINT_FORMAT: &str = "auditlake-checkpoint/1";
/// A writer writes a checkpoint at every record whose sequence is a multiple of this.
pub const CHECKPOINT_EVERY: u64 = 500;

/// One live file in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckpointFile {
    pub table: String,
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
    /// RFC 3339 commit time of the record that added it.
    pub committed_at: String,
    /// Sequence of the record that added it (absent in caches written before it was kept).
    #[serde(default)]
    pub sequence: u64,
}

/// The live files as of record `sequence`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Checkpoint {
    pub format: String,
    pub sequence: u64,
    /// SHA-256 of the bytes of record `sequence`.
    pub record_sha256: String,
    pub files: Vec<CheckpointFile>,
}

fn checkpoint_path(sequence: u64) -> String {
    format!("{CHECKPOINTS_DIR}/{sequence:020}.json")
}

/// The newest checkpoint at or before record `through` that matches the chain, if any.
pub(crate) async fn newest(
    archive: &Archive,
    through: u64,
) -> Result<Option<Checkpoint>, ArchiveError> {
    let dir = archive.path(CHECKPOINTS_DIR);
    let mut sequences: Vec<u64> = archive
        .store()
        .list(Some(&dir))
        .try_collect::<Vec<_>>()
        .await
        .map_err(store_err("list", &dir))?
        .into_iter()
        .filter_map(|m| {
            m.location
                .filename()?
                .strip_suffix(".json")?
                .parse::<u64>()
                .ok()
        })
        .filter(|s| *s <= through)
        .collect();
    sequences.sort_unstable();
    for seq in sequences.into_iter().rev() {
        match read(archive, seq).await {
            Ok(Some(c)) => return Ok(Some(c)),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(sequence = seq, error = %e, "ignoring an unreadable checkpoint")
            }
        }
    }
    Ok(None)
}

/// Checkpoint `sequence`, if it exists and names the record the chain holds.
async fn read(archive: &Archive, sequence: u64) -> Result<Option<Checkpoint>, ArchiveError> {
    let rel = checkpoint_path(sequence);
    let path = archive.path(&rel);
    let bytes = match archive.store().get(&path).await {
        Ok(r) => r.bytes().await.map_err(store_err("get", &rel))?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(store_err("get", &rel)(e)),
    };
    let c: Checkpoint = serde_json::from_slice(&bytes).map_err(|e| ArchiveError::Manifest {
        path: rel.clone(),
        message: e.to_string(),
    })?;
    if c.format != CHECKPOINT_FORMAT || c.sequence != sequence {
        return Ok(None);
    }
    match archive.record(sequence).await? {
        Some((_, sha)) if sha == c.record_sha256 => Ok(Some(c)),
        _ => {
            tracing::warn!(
                sequence,
                "a checkpoint does not match its manifest record; reading the chain instead"
            );
            Ok(None)
        }
    }
}

/// Writes the checkpoint of record `sequence` (whose bytes hash to `record_sha256`) and
/// deletes checkpoints older than the one before it. Best effort: readers fall back to
/// the chain.
pub(crate) async fn write(archive: &Archive, sequence: u64, record_sha256: &str) {
    let outcome = async {
        let live = AttestedFiles::load_through(archive, sequence).await?;
        let c = Checkpoint {
            format: CHECKPOINT_FORMAT.to_string(),
            sequence,
            record_sha256: record_sha256.to_string(),
            files: live.checkpoint_files(),
        };
        let rel = checkpoint_path(sequence);
        let body = serde_json::to_vec(&c).map_err(|e| ArchiveError::Manifest {
            path: rel.clone(),
            message: e.to_string(),
        })?;
        archive
            .store()
            .put(&archive.path(&rel), PutPayload::from(body))
            .await
            .map_err(store_err("put", &rel))?;
        if let Some(old) = sequence.checked_sub(2 * CHECKPOINT_EVERY) {
            match archive
                .store()
                .delete(&archive.path(&checkpoint_path(old)))
                .await
            {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => tracing::debug!(error = %e, "could not delete an old checkpoint"),
            }
        }
        Ok::<_, ArchiveError>(c.files.len())
    }
    .await;
    match outcome {
        Ok(files) => tracing::info!(sequence, files, "wrote a manifest checkpoint"),
        Err(e) => tracing::warn!(sequence, error = %e, "could not write a manifest checkpoint"),
    }
}
