//! `verify`: re-reads the archive and checks it against the signed log with public keys
//! only. Every problem found is named with its object and has a verdict of its own
//! ([`Verdict`], each with an exit code); a store that cannot be read is an error instead.

use std::collections::{BTreeMap, HashMap, HashSet};

use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use sha2::{Digest, Sha256};

use crate::archive::Archive;
use crate::error::{ArchiveError, store_err};
use crate::layout::{MANIFEST_DIR, QUARANTINE_DIR, Table};
use crate::manifest::ManifestRecord;
use crate::merkle::{self, Hash};
use crate::note::Verifier;
use crate::tlog::{self, Checkpoint, Edge, Tile, TileReader};

/// Files read and hashed at once.
const FILE_CONCURRENCY: usize = 4;

/// What is wrong, from the most to the least fundamental; each has its own exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// No checkpoint, a signature by a trusted key that does not verify, or fewer trusted
    /// signatures than required.
    CheckpointSignature,
    /// The checkpoint does not extend a pinned checkpoint (history rewritten or truncated).
    CheckpointInconsistent,
    /// A manifest record the log or the chain says exists is missing.
    RecordMissing,
    /// A manifest record is not the one that was signed (edited, replaced, unreadable).
    RecordAltered,
    /// A tile of the log is missing.
    TileMissing,
    /// A tile of the log does not hold the hashes of the records.
    TileAltered,
    /// A file a record names is missing (and no signed retention record removed it).
    FileMissing,
    /// A file's bytes are not the ones its record names by SHA-256.
    FileAltered,
    /// A file under a table's or the quarantine's directory that no record names.
    Orphan,
    /// Records after the newest checkpoint: not signed yet.
    Unsigned,
}

impl Verdict {
    /// The process exit code for this verdict (the most fundamental problem found decides).
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::CheckpointSignature => 10,
            Verdict::CheckpointInconsistent => 11,
            Verdict::RecordMissing => 12,
            Verdict::RecordAltered => 13,
            Verdict::TileMissing => 14,
            Verdict::TileAltered => 15,
            Verdict::FileMissing => 16,
            Verdict::FileAltered => 17,
            Verdict::Orphan => 18,
            Verdict::Unsigned => 19,
        }
    }

    /// The label printed at the start of the problem's line.
    pub fn label(self) -> &'static str {
        match self {
            Verdict::CheckpointSignature => "CHECKPOINT SIGNATURE",
            Verdict::CheckpointInconsistent => "CHECKPOINT INCONSISTENT",
            Verdict::RecordMissing => "RECORD MISSING",
            Verdict::RecordAltered => "RECORD ALTERED",
            Verdict::TileMissing => "TILE MISSING",
            Verdict::TileAltered => "TILE ALTERED",
            Verdict::FileMissing => "FILE MISSING",
            Verdict::FileAltered => "FILE ALTERED",
            Verdict::Orphan => "ORPHAN",
            Verdict::Unsigned => "UNSIGNED",
        }
    }

    /// Every verdict, in order (for documentation and `--help`).
    pub const ALL: [Verdict; 10] = [
        Verdict::CheckpointSignature,
        Verdict::CheckpointInconsistent,
        Verdict::RecordMissing,
        Verdict::RecordAltered,
        Verdict::TileMissing,
        Verdict::TileAltered,
        Verdict::FileMissing,
        Verdict::FileAltered,
        Verdict::Orphan,
        Verdict::Unsigned,
    ];
}

/// One problem: its verdict, the object (path) it concerns, and what was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What is wrong.
    pub verdict: Verdict,
    /// The object, relative to the archive root (or the pinned checkpoint's name).
    pub object: String,
    /// What was found, for a person.
    pub detail: String,
}

/// What to check.
#[derive(Debug, Default)]
pub struct VerifyOptions {
    /// Public keys trusted to sign checkpoints (log keys, also old ones; witness keys).
    pub trusted: Vec<Verifier>,
    /// How many of `trusted` must have signed the checkpoint (0: all of them).
    pub required: usize,
    /// A checkpoint seen earlier that the current one must extend.
    pub pinned: Option<Checkpoint>,
    /// Check only this fraction of the files, chosen from the checkpoint's root.
    pub sample: Option<f64>,
    /// Check only files whose time range meets `[from, to)` (µs since the epoch);
    /// quarantine files by their record's commit time.
    pub time_range: Option<(i64, i64)>,
}

/// A file a record removed by a signed retention record: reported, not missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedByRetention {
    /// The file.
    pub path: String,
    /// The record that removed it.
    pub sequence: u64,
}

/// What `verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// The checkpoint verified against.
    pub checkpoint: Option<Checkpoint>,
    /// Names of the trusted keys whose signatures verified.
    pub signed_by: Vec<String>,
    /// Manifest records read.
    pub records: u64,
    /// Files re-read and hashed.
    pub files_checked: u64,
    /// Their bytes.
    pub bytes_checked: u64,
    /// Files left out by sampling or the time range.
    pub files_skipped: u64,
    /// Files removed by retention records.
    pub removed: Vec<RemovedByRetention>,
    /// Key rotations followed: (record, old key name, new key name).
    pub rotations: Vec<(u64, String, String)>,
    /// Every problem, in the order found.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    fn problem(&mut self, verdict: Verdict, object: impl Into<String>, detail: impl Into<String>) {
        self.problems.push(Problem {
            verdict,
            object: object.into(),
            detail: detail.into(),
        });
    }

    /// The most fundamental verdict found, if any.
    pub fn worst(&self) -> Option<Verdict> {
        self.problems.iter().map(|p| p.verdict).min()
    }
}

/// One record as read for verification.
struct ReadRecord {
    /// SHA-256 of its bytes.
    sha: Hash,
    /// The record, when its bytes parse.
    record: Option<ManifestRecord>,
}

fn record_rel(sequence: u64) -> String {
    format!("{MANIFEST_DIR}/{}", ManifestRecord::file_name(sequence))
}

async fn read_record(archive: &Archive, sequence: u64) -> Result<Option<ReadRecord>, ArchiveError> {
    Ok(archive
        .record_bytes(sequence)
        .await?
        .map(|bytes| ReadRecord {
            sha: Sha256::digest(&bytes).into(),
            record: ManifestRecord::parse(&bytes, &record_rel(sequence)).ok(),
        }))
}

/// Sequences of the records listed under `_manifest/`.
async fn listed_records(archive: &Archive) -> Result<Vec<u64>, ArchiveError> {
    Ok(archive
        .manifest_paths()
        .await?
        .iter()
        .filter_map(|p| p.filename()?.strip_suffix(".json")?.parse().ok())
        .collect())
}

/// Checks the archive: the checkpoint's signatures, the records against the log, the
/// tiles, the files against their records, orphans, and consistency with a pinned
/// checkpoint.
pub async fn verify(archive: &Archive, opts: &VerifyOptions) -> Result<VerifyReport, ArchiveError> {
    let mut report = VerifyReport::default();
    let (checkpoint, unreadable) = match tlog::read_checkpoint(archive).await {
        Ok(c) => (c, false),
        Err(ArchiveError::Log { path, message }) => {
            report.problem(Verdict::CheckpointSignature, path, message);
            (None, true)
        }
        Err(e) => return Err(e),
    };
    let signed_size = checkpoint.as_ref().map_or(0, |c| c.head.size);
    let listed = listed_records(archive).await?;
    let last = listed.iter().copied().max().unwrap_or(0).max(signed_size);
    let records: Vec<Option<ReadRecord>> = futures::stream::iter(1..=last)
        .map(|seq| read_record(archive, seq))
        .buffered(32)
        .try_collect()
        .await?;
    report.records = records.iter().flatten().count() as u64;
    // Leaves as the records give them.
    let from_records: Vec<Option<Hash>> = records
        .iter()
        .map(|r| r.as_ref().map(|r| merkle::leaf_hash(&r.sha)))
        .collect();
    let trust = Trust::build(archive, opts, &records, &from_records, &mut report).await?;
    match &checkpoint {
        None if !unreadable => report.problem(
            Verdict::CheckpointSignature,
            tlog::CHECKPOINT_FILE,
            "the archive has no signed checkpoint (was it written with --signing-key?)",
        ),
        None => {}
        Some(cp) => {
            if let Some(names) = trust.check(cp, trust.required, tlog::CHECKPOINT_FILE, &mut report)
            {
                report.signed_by = names;
            }
        }
    }

    // Leaves as the records give them and as the log's level-0 tiles hold them.
    if let Some(cp) = &checkpoint {
        check_log(archive, cp, &from_records, &records, &mut report).await?;
        if let Some(pinned) = &opts.pinned {
            check_pinned(archive, cp, pinned, &from_records, &trust, &mut report).await?;
        }
    }
    for (i, r) in records.iter().enumerate() {
        let seq = i as u64 + 1;
        match r {
            None if seq > signed_size => report.problem(
                Verdict::RecordMissing,
                record_rel(seq),
                format!("record {seq} is missing; the chain goes on to {last}"),
            ),
            // Inside the checkpoint, check_log reported it.
            None => {}
            Some(r) => {
                if r.record.is_none() && seq > signed_size {
                    report.problem(
                        Verdict::RecordAltered,
                        record_rel(seq),
                        "not a readable manifest record",
                    );
                }
                // The chain: a record after the checkpoint is evidence only through it.
                if seq > signed_size
                    && let Some(Some(prev)) = i.checked_sub(1).map(|p| &records[p])
                    && let Some(rec) = &r.record
                    && rec.previous_sha256.as_deref() != Some(hex::encode(prev.sha).as_str())
                {
                    report.problem(
                        Verdict::RecordAltered,
                        record_rel(seq),
                        format!("does not chain to record {} (previous_sha256)", seq - 1),
                    );
                }
            }
        }
    }
    if last > signed_size && checkpoint.is_some() {
        report.problem(
            Verdict::Unsigned,
            record_rel(signed_size + 1),
            format!(
                "records {}..={last} are not covered by the signed checkpoint (size {signed_size}); \
                 a writer may be between its record and its checkpoint: verify again",
                signed_size + 1
            ),
        );
    }
    check_files(archive, &records, checkpoint.as_ref(), opts, &mut report).await?;
    report.checkpoint = checkpoint;
    Ok(report)
}

/// The keys a verification trusts: those given, and every key a rotation introduced (a
/// rotation checkpoint signed by a trusted key and by the new key its record names). A key
/// and the keys rotated in from it count as one signer.
struct Trust {
    keys: Vec<Verifier>,
    /// `identity[i]`: index of the given key that `keys[i]` descends from.
    identity: Vec<usize>,
    /// Distinct signers required on the checkpoint.
    required: usize,
}

impl Trust {
    async fn build(
        archive: &Archive,
        opts: &VerifyOptions,
        records: &[Option<ReadRecord>],
        from_records: &[Option<Hash>],
        report: &mut VerifyReport,
    ) -> Result<Self, ArchiveError> {
        let mut trust = Trust {
            keys: opts.trusted.clone(),
            identity: (0..opts.trusted.len()).collect(),
            required: if opts.required == 0 {
                opts.trusted.len()
            } else {
                opts.required
            }
            .max(1),
        };
        let rotations = match tlog::rotation_checkpoints(archive).await {
            Ok(r) => r,
            Err(ArchiveError::Log { path, message }) => {
                report.problem(Verdict::CheckpointSignature, path, message);
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        for (rel, cp) in rotations {
            let size = cp.head.size as usize;
            let rotation = records
                .get(size.wrapping_sub(1))
                .and_then(|r| r.as_ref())
                .and_then(|r| r.record.as_ref())
                .and_then(|r| r.key_rotation.clone());
            let Some(rotation) = rotation else {
                report.problem(
                    Verdict::CheckpointSignature,
                    rel,
                    format!("record {size} is not a key rotation"),
                );
                continue;
            };
            let (Ok(from), Ok(to)) = (
                Verifier::parse(&rotation.from),
                Verifier::parse(&rotation.to),
            ) else {
                report.problem(
                    Verdict::RecordAltered,
                    record_rel(size as u64),
                    "its key rotation names unreadable keys",
                );
                continue;
            };
            let Some(from_index) = trust.keys.iter().position(|k| *k == from) else {
                // A rotation from a key this verification does not trust: not ours to follow.
                continue;
            };
            let signed_by_both = cp
                .note
                .verified_by(&[from.clone(), to.clone()])
                .is_ok_and(|ok| ok.len() == 2);
            if !signed_by_both {
                report.problem(
                    Verdict::CheckpointSignature,
                    rel,
                    format!("a key rotation to {} not signed by both keys", to.name()),
                );
                continue;
            }
            if from_records.get(..size).and_then(root_of) != Some(cp.head.root) {
                report.problem(
                    Verdict::RecordAltered,
                    rel,
                    format!(
                        "the records do not give the root this rotation signed for {size} records"
                    ),
                );
                continue;
            }
            if !trust.keys.contains(&to) {
                let identity = trust.identity[from_index];
                trust.keys.push(to.clone());
                trust.identity.push(identity);
            }
            report
                .rotations
                .push((size as u64, from.name().to_string(), to.name().to_string()));
        }
        Ok(trust)
    }

    /// Checks the signatures of `cp`; returns the names of the trusted keys that signed.
    fn check(
        &self,
        cp: &Checkpoint,
        required: usize,
        object: &str,
        report: &mut VerifyReport,
    ) -> Option<Vec<String>> {
        match cp.note.verified_by(&self.keys) {
            Err(e) => {
                report.problem(Verdict::CheckpointSignature, object, e.to_string());
                None
            }
            Ok(ok) => {
                let mut signers: Vec<usize> = ok
                    .iter()
                    .filter_map(|v| self.keys.iter().position(|k| k == *v))
                    .map(|i| self.identity[i])
                    .collect();
                signers.sort_unstable();
                signers.dedup();
                if signers.len() < required {
                    let names: Vec<&str> = cp
                        .note
                        .signatures
                        .iter()
                        .map(|(n, _, _)| n.as_str())
                        .collect();
                    report.problem(
                        Verdict::CheckpointSignature,
                        object,
                        format!(
                            "signed by {} of the {required} trusted keys required (signatures on it: {})",
                            signers.len(),
                            names.join(", ")
                        ),
                    );
                    return None;
                }
                Some(ok.iter().map(|v| v.name().to_string()).collect())
            }
        }
    }
}

/// Reads the level-0 tiles of the tree of `size` leaves: the leaf hashes the log holds
/// (`None` for a missing or unreadable tile's leaves, each reported).
async fn tile_leaves(
    archive: &Archive,
    size: u64,
    report: &mut VerifyReport,
) -> Result<Vec<Option<Hash>>, ArchiveError> {
    let mut out = Vec::with_capacity(size as usize);
    let mut index = 0u64;
    while index * 256 < size {
        let width = (size - index * 256).min(256);
        match tlog::read_tile(archive, 0, index, width).await {
            Ok(Some(hashes)) => out.extend(hashes.into_iter().map(Some)),
            Ok(None) => report.problem(
                Verdict::TileMissing,
                tlog::tile_path(0, index, width),
                "tile missing",
            ),
            Err(ArchiveError::Log { path, message }) => {
                report.problem(Verdict::TileAltered, path, message)
            }
            Err(e) => return Err(e),
        }
        out.resize(((index * 256) + width) as usize, None);
        index += 1;
    }
    Ok(out)
}

fn root_of(leaves: &[Option<Hash>]) -> Option<Hash> {
    let mut edge = Edge::default();
    let mut sink = Vec::new();
    for l in leaves {
        edge.push((*l)?, &mut sink);
        sink.clear();
    }
    Some(edge.root())
}

/// Checks the records and the tiles against the signed root, and says which is wrong.
async fn check_log(
    archive: &Archive,
    cp: &Checkpoint,
    from_records: &[Option<Hash>],
    records: &[Option<ReadRecord>],
    report: &mut VerifyReport,
) -> Result<(), ArchiveError> {
    // `records` reaches at least the checkpoint's size (missing ones are `None`).
    let size = cp.head.size as usize;
    let ours = &from_records[..size];
    let from_tiles = tile_leaves(archive, cp.head.size, report).await?;
    let records_signed = root_of(ours) == Some(cp.head.root);
    let tiles_signed = root_of(&from_tiles) == Some(cp.head.root);
    for (i, read) in records[..size].iter().enumerate() {
        let rel = record_rel(i as u64 + 1);
        match read {
            None => report.problem(
                Verdict::RecordMissing,
                rel,
                format!("the signed log holds {size} records; this one is missing"),
            ),
            Some(read) if read.record.is_none() || (tiles_signed && ours[i] != from_tiles[i]) => {
                report.problem(
                    Verdict::RecordAltered,
                    rel,
                    "its SHA-256 is not the one the signed log holds for it",
                )
            }
            Some(_) => {}
        }
    }
    let authentic: &[Option<Hash>] = if records_signed {
        ours
    } else if tiles_signed {
        &from_tiles
    } else {
        if !report
            .problems
            .iter()
            .any(|p| p.verdict <= Verdict::RecordAltered)
        {
            report.problem(
                Verdict::RecordAltered,
                MANIFEST_DIR,
                format!(
                    "neither the records nor the log's tiles give the signed root of {size} records: \
                     history was rewritten"
                ),
            );
        }
        return Ok(());
    };
    // Every tile of the tree, rebuilt from the authentic leaves, against the stored ones (the
    // level-0 tiles as read above).
    let mut edge = Edge::default();
    let mut tiles: Vec<Tile> = Vec::new();
    for leaf in authentic.iter().flatten() {
        edge.push(*leaf, &mut tiles);
    }
    tiles.extend(edge.partial_tiles());
    for (level, index, hashes) in tiles {
        let width = hashes.len() as u64;
        let stored = if level == 0 {
            let first = index as usize * 256;
            let read = &from_tiles[first..first + hashes.len()];
            // The authentic side itself, or a tile already reported as missing or unreadable.
            if !records_signed || read.iter().any(Option::is_none) {
                continue;
            }
            Some(read.iter().flatten().copied().collect())
        } else {
            match tlog::read_tile(archive, level, index, width).await {
                Ok(stored) => stored,
                Err(ArchiveError::Log { path, message }) => {
                    report.problem(Verdict::TileAltered, path, message);
                    continue;
                }
                Err(e) => return Err(e),
            }
        };
        let rel = tlog::tile_path(level, index, width);
        match stored {
            None => report.problem(Verdict::TileMissing, rel, "tile missing"),
            Some(stored) if stored != hashes => report.problem(
                Verdict::TileAltered,
                rel,
                "does not hold the hashes the records give",
            ),
            Some(_) => {}
        }
    }
    Ok(())
}

/// Checks that the checkpoint extends `pinned` by a consistency proof from the tiles.
async fn check_pinned(
    archive: &Archive,
    cp: &Checkpoint,
    pinned: &Checkpoint,
    from_records: &[Option<Hash>],
    trust: &Trust,
    report: &mut VerifyReport,
) -> Result<(), ArchiveError> {
    let object = "pinned checkpoint";
    trust.check(pinned, 1, object, report);
    if pinned.head.origin != cp.head.origin {
        report.problem(
            Verdict::CheckpointInconsistent,
            object,
            format!(
                "is of log {:?}, the archive's is {:?}",
                pinned.head.origin, cp.head.origin
            ),
        );
        return Ok(());
    }
    let (old, new) = (pinned.head.size, cp.head.size);
    if old > new {
        report.problem(
            Verdict::CheckpointInconsistent,
            object,
            format!("covers {old} records but the archive's checkpoint only {new}: history was truncated"),
        );
        return Ok(());
    }
    let mut reader = TileReader::new(archive, new);
    let proof = reader
        .run(|node| merkle::consistency_proof(old, new, node))
        .await;
    let consistent = match proof {
        Ok(p) => merkle::verify_consistency(old, new, &pinned.head.root, &cp.head.root, &p),
        // Tiles broken (reported elsewhere): decide from the records.
        Err(_) => from_records
            .get(..old as usize)
            .and_then(root_of)
            .is_some_and(|r| r == pinned.head.root),
    };
    if !consistent {
        report.problem(
            Verdict::CheckpointInconsistent,
            object,
            format!("the archive's log of {new} records does not extend the pinned one of {old}: history was rewritten"),
        );
    }
    Ok(())
}

/// Whether `path` is in the sample drawn from the checkpoint's root.
fn sampled(root: &Hash, path: &str, fraction: f64) -> bool {
    let mut h = Sha256::new();
    h.update(root);
    h.update(path.as_bytes());
    let d = h.finalize();
    let x = u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
    (x as f64) < fraction * (u64::MAX as f64)
}

/// A file some record names.
struct Named {
    sha256: String,
    bytes: u64,
    sequence: u64,
    /// Its time range (µs), for `--from/--to`.
    range: (i64, i64),
}

/// Re-reads the files the records name and looks for files no record names.
async fn check_files(
    archive: &Archive,
    records: &[Option<ReadRecord>],
    checkpoint: Option<&Checkpoint>,
    opts: &VerifyOptions,
    report: &mut VerifyReport,
) -> Result<(), ArchiveError> {
    let mut named: BTreeMap<String, Named> = BTreeMap::new();
    let mut removed: HashMap<String, u64> = HashMap::new();
    for rec in records.iter().flatten().filter_map(|r| r.record.as_ref()) {
        let committed =
            auditlake_schema::timestamp::parse_rfc3339_micros(&rec.committed_at).unwrap_or(0);
        for f in &rec.files {
            named.insert(
                f.path.clone(),
                Named {
                    sha256: f.sha256.clone(),
                    bytes: f.bytes,
                    sequence: rec.sequence,
                    range: (f.min_time_micros, f.max_time_micros),
                },
            );
        }
        for q in &rec.quarantine {
            named.insert(
                q.path.clone(),
                Named {
                    sha256: q.sha256.clone(),
                    bytes: q.bytes,
                    sequence: rec.sequence,
                    range: (committed, committed),
                },
            );
        }
        for r in &rec.removed {
            removed.insert(r.path.clone(), rec.sequence);
        }
    }
    let root = checkpoint.map_or([0u8; 32], |c| c.head.root);
    let mut to_check = Vec::new();
    for (path, n) in &named {
        if let Some(&sequence) = removed.get(path) {
            report.removed.push(RemovedByRetention {
                path: path.clone(),
                sequence,
            });
            continue;
        }
        let in_range = opts
            .time_range
            .is_none_or(|(from, to)| n.range.1 >= from && n.range.0 < to);
        let in_sample = opts.sample.is_none_or(|p| sampled(&root, path, p));
        if in_range && in_sample {
            to_check.push((path.clone(), n));
        } else {
            report.files_skipped += 1;
        }
    }
    let results: Vec<(String, u64, Hashed)> = futures::stream::iter(to_check)
        .map(|(path, n)| async move {
            let got = hash_object(archive, &path).await;
            (path, n.sequence, got)
        })
        .buffered(FILE_CONCURRENCY)
        .collect()
        .await;
    for (path, sequence, got) in results {
        let n = &named[&path];
        match got {
            Ok((sha, bytes)) => {
                report.files_checked += 1;
                report.bytes_checked += bytes;
                if hex::encode(sha) != n.sha256 || bytes != n.bytes {
                    report.problem(
                        Verdict::FileAltered,
                        path,
                        format!(
                            "SHA-256 {} ({bytes} bytes), record {sequence} names {} ({} bytes)",
                            hex::encode(sha),
                            n.sha256,
                            n.bytes
                        ),
                    );
                }
            }
            Err(object_store::Error::NotFound { .. }) => report.problem(
                Verdict::FileMissing,
                path,
                format!("named by record {sequence}"),
            ),
            Err(e) => return Err(store_err("get", &path)(e)),
        }
    }
    // Orphans: anything under the tables' and the quarantine's directories no record names.
    let named_paths: HashSet<&str> = named.keys().map(String::as_str).collect();
    for dir in Table::ALL.iter().map(|t| t.name()).chain([QUARANTINE_DIR]) {
        let prefix = archive.path(dir);
        let listed: Vec<object_store::ObjectMeta> = archive
            .store()
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(store_err("list", dir))?;
        for meta in listed {
            let Some(rel) = archive.relative(&meta.location) else {
                continue;
            };
            if !named_paths.contains(rel.as_str()) {
                report.problem(
                    Verdict::Orphan,
                    rel,
                    format!("{} bytes that no manifest record names", meta.size),
                );
            }
        }
    }
    Ok(())
}

/// An object's SHA-256 and size, or why it could not be read.
type Hashed = Result<(Hash, u64), object_store::Error>;

/// SHA-256 and size of an object, streamed.
async fn hash_object(archive: &Archive, rel: &str) -> Hashed {
    let mut stream = archive.store().get(&archive.path(rel)).await?.into_stream();
    let mut sha = Sha256::new();
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        bytes += chunk.len() as u64;
        sha.update(&chunk);
    }
    Ok((sha.finalize().into(), bytes))
}
