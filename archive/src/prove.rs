//! `prove` and `verify-proof`: a self-contained proof that one event is in the archive as
//! committed, checked offline with public keys only. The proof carries the event's row, its
//! path to the file's rows root, the manifest record naming the file (verbatim), that
//! record's path in the signed log, and the signed checkpoint (`archive/FORMAT.md` §8).

use std::collections::{BTreeMap, HashMap};

use arrow::array::{AsArray, RecordBatch};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, RowSelection, RowSelector,
};
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::archive::Archive;
use crate::attested::AttestedFiles;
use crate::error::ArchiveError;
use crate::layout::{MANIFEST_DIR, Table};
use crate::manifest::ManifestRecord;
use crate::merkle::{self, Hash};
use crate::note::{NoteError, Verifier};
use crate::row_tree::{self, GROUP_ROOTS_KEY, LEAF_GROUP_ROWS};
use crate::tlog::{self, Checkpoint, TileReader};

/// Format tag of a proof document.
pub const PROOF_FORMAT: &str = "auditlake-event-proof/1";
/// Files searched at once.
const SEARCH_CONCURRENCY: usize = 8;

/// A proof document: one or more events (the stages of one audit ID) under one checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventProof {
    /// [`PROOF_FORMAT`].
    pub format: String,
    /// The signed checkpoint, verbatim.
    pub checkpoint: String,
    /// Each event proven.
    pub events: Vec<ProvenEvent>,
}

/// One event and its paths to the checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvenEvent {
    /// The events file holding it, relative to the archive root.
    pub file: String,
    /// Its row in the file (from 0).
    pub row_index: u64,
    /// The row: `[column, value]` pairs in the file's column order.
    pub row: serde_json::Value,
    /// Path from the row's leaf to the file's rows root (base64 hashes).
    pub row_path: Vec<String>,
    /// The manifest record naming the file, verbatim.
    pub record: String,
    /// Path from the record's leaf (index = sequence - 1) to the checkpoint's root.
    pub log_path: Vec<String>,
}

/// Why a proof does not hold.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    /// Not a proof document of this format.
    #[error("not an auditlake event proof: {0}")]
    Malformed(String),
    /// The checkpoint's signatures do not satisfy the trusted keys.
    #[error("checkpoint: {0}")]
    Signature(String),
    /// The manifest record is not the one the signed log holds at its index.
    #[error("event {event}: the manifest record is not in the signed log (altered record or path)")]
    NotInLog {
        /// Which event of the document (from 1).
        event: usize,
    },
    /// The row is not the one committed in the file.
    #[error("event {event}: the row is not the one committed in {file} (altered event or path)")]
    NotInFile {
        /// Which event of the document (from 1).
        event: usize,
        /// The file it claims.
        file: String,
    },
}

impl From<NoteError> for ProofError {
    fn from(e: NoteError) -> Self {
        ProofError::Signature(e.to_string())
    }
}

/// What a proof showed about one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedEvent {
    /// `audit_id` of the row.
    pub audit_id: String,
    /// `stage` of the row.
    pub stage: String,
    /// The cluster its file belongs to.
    pub cluster: String,
    /// The file.
    pub file: String,
    /// The manifest record that committed it.
    pub sequence: u64,
}

/// A Parquet file in the archive's store, read by ranges.
#[derive(Clone)]
struct StoreFile {
    store: std::sync::Arc<dyn object_store::ObjectStore>,
    path: object_store::path::Path,
    size: u64,
    /// Load the page index with the metadata (to skip pages outside a row selection).
    page_index: bool,
}

impl StoreFile {
    fn new(archive: &Archive, file: &str, size: u64, page_index: bool) -> Self {
        StoreFile {
            store: archive.store(),
            path: archive.path(file),
            size,
            page_index,
        }
    }
}

impl AsyncFileReader for StoreFile {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> futures::future::BoxFuture<'_, parquet::errors::Result<bytes::Bytes>> {
        let (store, path) = (self.store.clone(), self.path.clone());
        Box::pin(async move {
            store
                .get_range(&path, range)
                .await
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
        })
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> futures::future::BoxFuture<'a, parquet::errors::Result<std::sync::Arc<ParquetMetaData>>>
    {
        Box::pin(async move {
            let policy = if self.page_index {
                PageIndexPolicy::Optional
            } else {
                PageIndexPolicy::Skip
            };
            let size = self.size;
            let meta = ParquetMetaDataReader::new()
                .with_page_index_policy(policy)
                .load_and_finish(self, size)
                .await?;
            Ok(std::sync::Arc::new(meta))
        })
    }
}

fn b64_hashes(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(|h| B64.encode(h)).collect()
}

fn hashes_of(texts: &[String]) -> Option<Vec<Hash>> {
    texts
        .iter()
        .map(|t| B64.decode(t).ok().and_then(|b| b.try_into().ok()))
        .collect()
}

fn proof_err(file: &str, message: impl Into<String>) -> ArchiveError {
    ArchiveError::Log {
        path: file.to_string(),
        message: message.into(),
    }
}

/// Rows of `file` whose `audit_id` is `audit_id`, found through the row groups' bloom
/// filters: `(row index, stage)`.
async fn find_rows(
    archive: &Archive,
    file: &str,
    bytes: u64,
    audit_id: &str,
) -> Result<Vec<(u64, String)>, ArchiveError> {
    let mut reader = StoreFile::new(archive, file, bytes, false);
    let meta = ArrowReaderMetadata::load_async(&mut reader, ArrowReaderOptions::new()).await?;
    let schema = meta.metadata().file_metadata().schema_descr_ptr();
    let column = |name: &str| schema.columns().iter().position(|c| c.name() == name);
    let (Some(id_col), Some(stage_col)) = (
        column(auditlake_schema::col::AUDIT_ID),
        column(auditlake_schema::col::STAGE),
    ) else {
        return Ok(Vec::new());
    };
    let mut bloom =
        ParquetRecordBatchStreamBuilder::new_with_metadata(reader.clone(), meta.clone());
    let mut out = Vec::new();
    let mut first_row = 0u64;
    for rg in 0..meta.metadata().num_row_groups() {
        let rows = meta.metadata().row_group(rg).num_rows() as u64;
        let maybe = match bloom.get_row_group_column_bloom_filter(rg, id_col).await? {
            Some(filter) => filter.check(audit_id),
            None => true,
        };
        if maybe {
            let mut stream =
                ParquetRecordBatchStreamBuilder::new_with_metadata(reader.clone(), meta.clone())
                    .with_row_groups(vec![rg])
                    .with_projection(ProjectionMask::leaves(&schema, [id_col, stage_col]))
                    .build()?;
            let mut at = first_row;
            while let Some(batch) = stream.try_next().await? {
                let ids = batch.column(0).as_string::<i32>();
                let stages = batch.column(1).as_string::<i32>();
                for i in 0..batch.num_rows() {
                    if ids.value(i) == audit_id {
                        out.push((at + i as u64, stages.value(i).to_string()));
                    }
                }
                at += batch.num_rows() as u64;
            }
        }
        first_row += rows;
    }
    Ok(out)
}

/// The rows of leaf group `group` of `file` (all columns) and the file's group roots.
async fn read_group(
    archive: &Archive,
    file: &str,
    bytes: u64,
    rows: u64,
    group: u64,
) -> Result<(Vec<RecordBatch>, Vec<Hash>), ArchiveError> {
    let reader = StoreFile::new(archive, file, bytes, true);
    let builder = ParquetRecordBatchStreamBuilder::new(reader).await?;
    let roots = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|k| k.key == GROUP_ROOTS_KEY))
        .and_then(|k| k.value.as_deref())
        .and_then(row_tree::decode_group_roots)
        .ok_or_else(|| proof_err(file, "the file keeps no row group roots (written unsigned)"))?;
    let skip = group * LEAF_GROUP_ROWS;
    let take = LEAF_GROUP_ROWS.min(rows - skip);
    let selection = RowSelection::from(vec![
        RowSelector::skip(skip as usize),
        RowSelector::select(take as usize),
    ]);
    let batches: Vec<RecordBatch> = builder
        .with_row_selection(selection)
        .build()?
        .try_collect()
        .await?;
    Ok((batches, roots))
}

/// A file holding the audit ID: path, size, record sequence, `(row, stage)` matches.
type Found = (String, u64, u64, Vec<(u64, String)>);

/// Builds the proof of every event with `audit_id` (of stage `stage`, when given) against
/// the archive's newest checkpoint.
pub async fn prove(
    archive: &Archive,
    audit_id: &str,
    stage: Option<&str>,
) -> Result<EventProof, ArchiveError> {
    let checkpoint = tlog::read_checkpoint(archive).await?.ok_or_else(|| {
        proof_err(
            tlog::CHECKPOINT_FILE,
            "the archive has no signed checkpoint (was it written with --signing-key?)",
        )
    })?;
    let size = checkpoint.head.size;
    let live = AttestedFiles::load_through(archive, size).await?;
    let files: Vec<(String, u64, u64)> = live
        .files(Table::Events)
        .map(|(p, f)| (p.to_string(), f.bytes, f.sequence))
        .collect();
    let found: Vec<Found> = futures::stream::iter(files)
        .map(|(path, bytes, sequence)| async move {
            let rows = find_rows(archive, &path, bytes, audit_id).await?;
            Ok::<_, ArchiveError>((path, bytes, sequence, rows))
        })
        .buffer_unordered(SEARCH_CONCURRENCY)
        .try_filter(|(_, _, _, rows)| futures::future::ready(!rows.is_empty()))
        .try_collect()
        .await?;
    let mut events = Vec::new();
    let mut reader = TileReader::new(archive, size);
    let mut records: HashMap<u64, (String, ManifestRecord)> = HashMap::new();
    for (path, bytes, sequence, rows) in found {
        if sequence == 0 {
            // Known only from a live-file cache written before caches kept sequences, so
            // committed by a version that did not hash rows.
            return Err(proof_err(
                &path,
                "it was committed before the archive's rows were hashed (no rows root)",
            ));
        }
        if let std::collections::hash_map::Entry::Vacant(slot) = records.entry(sequence) {
            slot.insert(read_record_text(archive, sequence).await?);
        }
        let (record_text, record) = &records[&sequence];
        let entry = record
            .files
            .iter()
            .find(|f| f.path == path)
            .ok_or_else(|| proof_err(&path, format!("record {sequence} does not name it")))?;
        let rows_root = entry
            .rows_root
            .as_deref()
            .and_then(merkle::hash_from_hex)
            .ok_or_else(|| {
                proof_err(
                    &path,
                    "its record has no rows root: the file was committed before the archive was signed",
                )
            })?;
        let log_path = reader
            .run(|node| merkle::inclusion_proof(sequence - 1, size, node))
            .await?;
        // The stages of one event are usually in one leaf group: each group is read once.
        let mut by_group: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for (row_index, row_stage) in rows {
            if stage.is_none_or(|s| s == row_stage) {
                by_group
                    .entry(row_index / LEAF_GROUP_ROWS)
                    .or_default()
                    .push(row_index);
            }
        }
        for (group, wanted) in by_group {
            let (batches, roots) = read_group(archive, &path, bytes, entry.rows, group).await?;
            let mut leaves = Vec::new();
            let mut found_rows = Vec::new();
            let mut at = group * LEAF_GROUP_ROWS;
            for b in &batches {
                row_tree::row_leaves(b, &mut leaves)
                    .map_err(|e| proof_err(&path, e.to_string()))?;
                for &row_index in wanted
                    .iter()
                    .filter(|r| (at..at + b.num_rows() as u64).contains(r))
                {
                    let row = row_tree::row_json(b, (row_index - at) as usize)
                        .map_err(|e| proof_err(&path, e.to_string()))?;
                    found_rows.push((row_index, row));
                }
                at += b.num_rows() as u64;
            }
            for (row_index, row) in found_rows {
                let row_path = row_tree::row_path(row_index, entry.rows, &leaves, &roots);
                // Checked before it is handed out: a file whose rows or footer do not give
                // the committed root would make a proof that fails later.
                let leaf = leaves[(row_index % LEAF_GROUP_ROWS) as usize];
                if !merkle::verify_inclusion(row_index, entry.rows, &leaf, &row_path, &rows_root) {
                    return Err(proof_err(
                        &path,
                        "its rows do not give the rows root its record names (run auditlake verify)",
                    ));
                }
                events.push(ProvenEvent {
                    file: path.clone(),
                    row_index,
                    row,
                    row_path: b64_hashes(&row_path),
                    record: record_text.clone(),
                    log_path: b64_hashes(&log_path),
                });
            }
        }
    }
    events.sort_by(|a, b| (&a.file, a.row_index).cmp(&(&b.file, b.row_index)));
    Ok(EventProof {
        format: PROOF_FORMAT.to_string(),
        checkpoint: checkpoint.raw,
        events,
    })
}

async fn read_record_text(
    archive: &Archive,
    sequence: u64,
) -> Result<(String, ManifestRecord), ArchiveError> {
    let rel = format!("{MANIFEST_DIR}/{}", ManifestRecord::file_name(sequence));
    let bytes = archive
        .record_bytes(sequence)
        .await?
        .ok_or_else(|| proof_err(&rel, "the record is missing"))?;
    let record = ManifestRecord::parse(&bytes, &rel)?;
    let text = String::from_utf8(bytes.to_vec()).map_err(|e| proof_err(&rel, e.to_string()))?;
    Ok((text, record))
}

/// Checks a proof document with public keys only; returns what it proves of each event.
pub fn verify_proof(
    proof: &EventProof,
    trusted: &[Verifier],
    required: usize,
) -> Result<Vec<VerifiedEvent>, ProofError> {
    if proof.format != PROOF_FORMAT {
        return Err(ProofError::Malformed(format!(
            "format {:?}, want {PROOF_FORMAT}",
            proof.format
        )));
    }
    let cp = Checkpoint::parse(&proof.checkpoint)?;
    let signed = cp.note.verified_by(trusted)?;
    let required = if required == 0 {
        trusted.len()
    } else {
        required
    }
    .max(1);
    if signed.len() < required {
        return Err(ProofError::Signature(format!(
            "signed by {} of the {required} trusted keys required",
            signed.len()
        )));
    }
    if proof.events.is_empty() {
        return Err(ProofError::Malformed("it proves no event".into()));
    }
    let mut out = Vec::new();
    for (i, e) in proof.events.iter().enumerate() {
        let event = i + 1;
        let malformed = |m: &str| ProofError::Malformed(format!("event {event}: {m}"));
        let record = ManifestRecord::parse(e.record.as_bytes(), "the proof's record")
            .map_err(|err| malformed(&err.to_string()))?;
        let log_path = hashes_of(&e.log_path).ok_or_else(|| malformed("log_path"))?;
        let record_leaf = merkle::leaf_hash(&Sha256::digest(e.record.as_bytes()));
        if record.sequence == 0
            || !merkle::verify_inclusion(
                record.sequence - 1,
                cp.head.size,
                &record_leaf,
                &log_path,
                &cp.head.root,
            )
        {
            return Err(ProofError::NotInLog { event });
        }
        let not_in_file = || ProofError::NotInFile {
            event,
            file: e.file.clone(),
        };
        let file = record
            .files
            .iter()
            .find(|f| f.path == e.file)
            .ok_or_else(not_in_file)?;
        let root = file
            .rows_root
            .as_deref()
            .and_then(merkle::hash_from_hex)
            .ok_or_else(not_in_file)?;
        let row_path = hashes_of(&e.row_path).ok_or_else(|| malformed("row_path"))?;
        let leaf = row_tree::json_leaf(&e.row).map_err(|err| malformed(&err.to_string()))?;
        if !merkle::verify_inclusion(e.row_index, file.rows, &leaf, &row_path, &root) {
            return Err(not_in_file());
        }
        let field = |name: &str| {
            e.row
                .as_array()
                .and_then(|pairs| {
                    pairs
                        .iter()
                        .find(|p| p.get(0).and_then(|n| n.as_str()) == Some(name))
                })
                .and_then(|p| p.get(1))
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        out.push(VerifiedEvent {
            audit_id: field(auditlake_schema::col::AUDIT_ID),
            stage: field(auditlake_schema::col::STAGE),
            cluster: file.cluster.clone(),
            file: e.file.clone(),
            sequence: record.sequence,
        });
    }
    Ok(out)
}
