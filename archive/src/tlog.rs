//! The signed log over the manifest: one Merkle leaf per manifest record (the leaf data is
//! the SHA-256 of the record's bytes), stored as C2SP `tlog-tiles` hash tiles under
//! `_log/tile/`, with a C2SP `tlog-checkpoint` signed by the archive's key (and cosigned by
//! witnesses) at `_log/checkpoint`. Specified in `archive/FORMAT.md` §7.
//!
//! The log is a function of the manifest chain: any writer can extend it from the records,
//! tiles are written create-if-absent (two writers computing the same tile write the same
//! bytes), and a writer that finds the log behind the chain catches up.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use object_store::PutMode;

use crate::archive::Archive;
use crate::error::ArchiveError;
use crate::merkle::{self, Hash, NodeId};
use crate::note::{KeyKind, NoteError, SignedNote, Signer};

/// Prefix under the archive root holding the log.
pub const LOG_DIR: &str = "_log";
/// The newest signed checkpoint, relative to the archive root.
pub const CHECKPOINT_FILE: &str = "_log/checkpoint";
/// Checkpoints of key rotations, signed by the old and the new key, by size.
pub const ROTATION_DIR: &str = "_log/rotation";
/// Hashes per full tile (tile height 8).
const TILE_WIDTH: u64 = 256;

/// Where tile `index` of `level` holding `width` hashes lives, relative to the archive root
/// (`tlog-tiles`: the index in groups of three digits, all but the last prefixed `x`; a
/// partial tile adds `.p/<width>`).
pub fn tile_path(level: u8, index: u64, width: u64) -> String {
    let digits = format!("{index:03}");
    // Pad to a multiple of three digits so the groups line up (the digits are ASCII).
    let padded = format!("{}{digits}", "0".repeat((3 - digits.len() % 3) % 3));
    let groups: Vec<&str> = (0..padded.len())
        .step_by(3)
        .map(|i| &padded[i..i + 3])
        .collect();
    let mut path = format!("{LOG_DIR}/tile/{level}");
    for (i, g) in groups.iter().enumerate() {
        path.push('/');
        if i + 1 < groups.len() {
            path.push('x');
        }
        path.push_str(g);
    }
    if width < TILE_WIDTH {
        path.push_str(&format!(".p/{width}"));
    }
    path
}

/// What a checkpoint says: the log's origin, its size and root (`tlog-checkpoint`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeHead {
    /// The log's name (the first signing key's name unless configured).
    pub origin: String,
    /// Number of leaves (manifest records).
    pub size: u64,
    /// The Merkle root.
    pub root: Hash,
}

impl TreeHead {
    /// The checkpoint body that is signed.
    pub fn text(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    /// Parses a checkpoint body (extension lines after the root are allowed and ignored).
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let bad = |m: String| NoteError::Malformed(format!("checkpoint: {m}"));
        let mut lines = text.lines();
        let origin = lines.next().filter(|o| !o.is_empty());
        let (Some(origin), Some(size), Some(root)) = (origin, lines.next(), lines.next()) else {
            return Err(bad("want origin, size and root hash lines".into()));
        };
        let size = size
            .parse::<u64>()
            .map_err(|e| bad(format!("size {size:?}: {e}")))?;
        let root: Hash = B64
            .decode(root)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| bad(format!("root {root:?} is not 32 bytes of base64")))?;
        Ok(TreeHead {
            origin: origin.to_string(),
            size,
            root,
        })
    }
}

/// A signed checkpoint as stored: the tree head and the signed note around it.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// What it says.
    pub head: TreeHead,
    /// The note, with its signature lines.
    pub note: SignedNote,
    /// The bytes as read.
    pub raw: String,
}

impl Checkpoint {
    /// Parses a signed checkpoint without checking signatures.
    pub fn parse(raw: &str) -> Result<Self, NoteError> {
        let note = SignedNote::parse(raw)?;
        Ok(Checkpoint {
            head: TreeHead::parse(&note.text)?,
            note,
            raw: raw.to_string(),
        })
    }
}

/// Reads the newest signed checkpoint of the archive, if any.
pub async fn read_checkpoint(archive: &Archive) -> Result<Option<Checkpoint>, ArchiveError> {
    let Some(bytes) = archive.get_if_exists(CHECKPOINT_FILE).await? else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&bytes).map_err(|e| ArchiveError::Log {
        path: CHECKPOINT_FILE.into(),
        message: format!("not UTF-8: {e}"),
    })?;
    Checkpoint::parse(text)
        .map(Some)
        .map_err(|e| ArchiveError::Log {
            path: CHECKPOINT_FILE.into(),
            message: e.to_string(),
        })
}

/// The right edge of the tree: the hashes of the partial tile at every level. Enough to
/// compute the root and to append, whatever the size.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Edge {
    size: u64,
    /// `levels[k]`: the nodes of height `8k` in the newest, partial, level-`k` tile.
    levels: Vec<Vec<Hash>>,
}

/// A tile to write: level, index, hashes.
pub(crate) type Tile = (u8, u64, Vec<Hash>);

impl Edge {
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash; every tile it completes is pushed to `full`.
    pub(crate) fn push(&mut self, leaf: Hash, full: &mut Vec<Tile>) {
        self.size += 1;
        let mut node = leaf;
        let mut level = 0usize;
        loop {
            if self.levels.len() <= level {
                self.levels.push(Vec::new());
            }
            self.levels[level].push(node);
            if self.levels[level].len() as u64 != TILE_WIDTH {
                break;
            }
            let hashes = std::mem::take(&mut self.levels[level]);
            node = merkle::perfect_root(&hashes);
            let index = ((self.size >> (8 * level)) >> 8) - 1;
            full.push((level as u8, index, hashes));
            level += 1;
        }
    }

    /// The partial tiles as of now (level, index, hashes), non-empty ones only.
    pub(crate) fn partial_tiles(&self) -> Vec<Tile> {
        self.levels
            .iter()
            .enumerate()
            .filter(|(_, h)| !h.is_empty())
            .map(|(k, h)| (k as u8, (self.size >> (8 * k)) >> 8, h.clone()))
            .collect()
    }

    /// The root of the tree.
    pub(crate) fn root(&self) -> Hash {
        // Perfect subtrees left to right: higher levels first, larger parts first.
        let mut parts: Vec<Hash> = Vec::new();
        for hashes in self.levels.iter().rev() {
            let mut at = 0usize;
            let w = hashes.len();
            for bit in (0..8).rev() {
                let n = 1usize << bit;
                if w & n != 0 {
                    parts.push(merkle::perfect_root(&hashes[at..at + n]));
                    at += n;
                }
            }
        }
        merkle::fold_right(parts.into_iter())
    }

    /// Loads the edge of the tree of `size` leaves from its partial tiles.
    pub(crate) async fn load(archive: &Archive, size: u64) -> Result<Self, ArchiveError> {
        let mut levels = Vec::new();
        let mut k = 0;
        while size >> (8 * k) > 0 {
            let nodes = size >> (8 * k);
            let width = nodes % TILE_WIDTH;
            levels.push(if width > 0 {
                need_tile(archive, k as u8, nodes / TILE_WIDTH, width).await?
            } else {
                Vec::new()
            });
            k += 1;
        }
        Ok(Edge { size, levels })
    }
}

/// Reads tile `index` of `level` holding `width` hashes (a partial tile missing is read
/// from the full tile when that exists: the log may have grown past it). `None` when
/// neither exists; an error naming the tile when its size is wrong.
pub(crate) async fn read_tile(
    archive: &Archive,
    level: u8,
    index: u64,
    width: u64,
) -> Result<Option<Vec<Hash>>, ArchiveError> {
    let rel = tile_path(level, index, width);
    let mut bytes = archive.get_if_exists(&rel).await?;
    if bytes.is_none() && width < TILE_WIDTH {
        bytes = archive
            .get_if_exists(&tile_path(level, index, TILE_WIDTH))
            .await?;
    }
    let Some(bytes) = bytes else {
        return Ok(None);
    };
    if (bytes.len() as u64) < width * 32 || bytes.len() % 32 != 0 {
        return Err(ArchiveError::Log {
            path: rel,
            message: format!("{} bytes, want {}", bytes.len(), width * 32),
        });
    }
    Ok(Some(
        bytes
            .chunks_exact(32)
            .take(width as usize)
            .filter_map(|c| c.try_into().ok())
            .collect(),
    ))
}

/// [`read_tile`] for a tile the tree must have.
async fn need_tile(
    archive: &Archive,
    level: u8,
    index: u64,
    width: u64,
) -> Result<Vec<Hash>, ArchiveError> {
    read_tile(archive, level, index, width)
        .await?
        .ok_or_else(|| ArchiveError::Log {
            path: tile_path(level, index, width),
            message: "tile missing".into(),
        })
}

/// Reads perfect-subtree hashes of the tree of `size` leaves from its tiles, caching tiles.
pub struct TileReader<'a> {
    archive: &'a Archive,
    size: u64,
    tiles: HashMap<(u8, u64), Vec<Hash>>,
}

impl<'a> TileReader<'a> {
    /// A reader of the tree of `size` leaves.
    pub fn new(archive: &'a Archive, size: u64) -> Self {
        TileReader {
            archive,
            size,
            tiles: HashMap::new(),
        }
    }

    /// The hash of node `id` (which must be complete in the tree of `size` leaves).
    pub async fn node(&mut self, (height, index): NodeId) -> Result<Hash, ArchiveError> {
        let k = height / 8;
        let r = height % 8;
        let first = index << r;
        let count = 1u64 << r;
        let tile = first / TILE_WIDTH;
        let nodes = self.size >> (8 * u32::from(k));
        let width = if (tile + 1) * TILE_WIDTH <= nodes {
            TILE_WIDTH
        } else {
            nodes % TILE_WIDTH
        };
        let offset = first % TILE_WIDTH;
        if offset + count > width {
            return Err(ArchiveError::Log {
                path: tile_path(k, tile, width),
                message: format!(
                    "node {height}/{index} is not in the tree of {} leaves",
                    self.size
                ),
            });
        }
        if !self.tiles.contains_key(&(k, tile)) {
            let hashes = need_tile(self.archive, k, tile, width).await?;
            self.tiles.insert((k, tile), hashes);
        }
        let hashes = &self.tiles[&(k, tile)];
        Ok(merkle::perfect_root(
            &hashes[offset as usize..(offset + count) as usize],
        ))
    }

    /// Runs a proof function over hashes read from the tiles.
    pub async fn run<T>(
        &mut self,
        f: impl Fn(&mut dyn FnMut(NodeId) -> Hash) -> T,
    ) -> Result<T, ArchiveError> {
        let mut fetched = HashMap::new();
        for id in merkle::needed_nodes(|node| {
            f(node);
        }) {
            fetched.insert(id, self.node(id).await?);
        }
        Ok(f(&mut merkle::lookup(&fetched)))
    }
}

/// The keys that sign the log's checkpoints.
#[derive(Debug)]
pub struct LogKeys {
    /// The log's key: signs every checkpoint.
    pub signer: Signer,
    /// Witness keys held elsewhere whose cosignatures are added to every checkpoint.
    pub witnesses: Vec<Signer>,
    /// Extra log keys that also sign (during a key rotation: the old and the new key).
    pub also: Vec<Signer>,
}

impl LogKeys {
    /// Keys with the one log key.
    pub fn new(signer: Signer) -> Result<Self, ArchiveError> {
        if signer.verifier().kind() != KeyKind::Log {
            return Err(ArchiveError::Log {
                path: "signing key".into(),
                message: format!(
                    "{} is a witness key; the log signs with a log key (auditlake keys generate)",
                    signer.verifier().name()
                ),
            });
        }
        Ok(LogKeys {
            signer,
            witnesses: Vec::new(),
            also: Vec::new(),
        })
    }

    /// Signs a tree head.
    pub fn sign(&self, head: &TreeHead) -> String {
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut all: Vec<&Signer> = vec![&self.signer];
        all.extend(self.also.iter());
        all.extend(self.witnesses.iter());
        SignedNote::sign(&head.text(), &all, time)
    }
}

/// Extends the log as manifest records are committed. Shared by every commit of a process.
#[derive(Debug)]
pub struct LogWriter {
    keys: LogKeys,
    state: tokio::sync::Mutex<Option<(String, Edge)>>,
}

impl LogWriter {
    /// A writer signing with `keys`.
    pub fn new(keys: LogKeys) -> Arc<Self> {
        Arc::new(LogWriter {
            keys,
            state: tokio::sync::Mutex::new(None),
        })
    }

    /// The keys it signs with.
    pub fn keys(&self) -> &LogKeys {
        &self.keys
    }

    /// Extends the log to cover records `1..=through` and writes a signed checkpoint;
    /// `newest` is the SHA-256 of record `through` when the caller has it. Returns the
    /// tree head signed.
    pub async fn extend(
        &self,
        archive: &Archive,
        through: u64,
        newest: Option<Hash>,
    ) -> Result<TreeHead, ArchiveError> {
        let mut state = self.state.lock().await;
        // First use: start from the stored checkpoint, whose root must be what its tiles
        // give, or the log was tampered with. Later, records another writer committed are
        // read from the chain (the log is a function of it).
        if state.is_none()
            && let Some(cp) = read_checkpoint(archive).await?
        {
            let edge = Edge::load(archive, cp.head.size).await?;
            if edge.root() != cp.head.root {
                return Err(ArchiveError::Log {
                    path: CHECKPOINT_FILE.into(),
                    message: format!(
                        "the checkpoint's root for {} records is not the root of the stored tiles; \
                         the log was altered (run auditlake verify)",
                        cp.head.size
                    ),
                });
            }
            *state = Some((cp.head.origin.clone(), edge));
        }
        let (origin, edge) = state.get_or_insert_with(|| {
            (
                self.keys.signer.verifier().name().to_string(),
                Edge::default(),
            )
        });
        if edge.size() >= through {
            return Ok(TreeHead {
                origin: origin.clone(),
                size: edge.size(),
                root: edge.root(),
            });
        }
        // Records another writer committed since (or all of them, on first use) come from
        // the chain; the newest from the caller when it has it.
        let mut next = edge.clone();
        let mut full = Vec::new();
        let read_through = through - u64::from(newest.is_some());
        if read_through > next.size() {
            for (_, sha) in archive
                .records_between(next.size() + 1, read_through)
                .await?
            {
                let hash = merkle::hash_from_hex(&sha).ok_or_else(|| ArchiveError::Log {
                    path: "manifest".into(),
                    message: format!("{sha:?} is not a SHA-256"),
                })?;
                next.push(merkle::leaf_hash(&hash), &mut full);
            }
        }
        if let Some(h) = newest {
            next.push(merkle::leaf_hash(&h), &mut full);
        }
        let mut tiles = full;
        tiles.extend(next.partial_tiles());
        for (level, index, hashes) in &tiles {
            write_tile(archive, *level, *index, hashes).await?;
        }
        let head = TreeHead {
            origin: origin.clone(),
            size: next.size(),
            root: next.root(),
        };
        let body = self.keys.sign(&head);
        // A writer with an older view must not move the checkpoint back.
        let newer_stored = read_checkpoint(archive)
            .await?
            .is_some_and(|cp| cp.head.size >= head.size);
        if !newer_stored {
            archive
                .put_bytes(
                    CHECKPOINT_FILE,
                    body.into_bytes().into(),
                    PutMode::Overwrite,
                )
                .await?;
        }
        *edge = next;
        Ok(head)
    }
}

async fn write_tile(
    archive: &Archive,
    level: u8,
    index: u64,
    hashes: &[Hash],
) -> Result<(), ArchiveError> {
    let rel = tile_path(level, index, hashes.len() as u64);
    let body: Vec<u8> = hashes.concat();
    match archive.put_bytes(&rel, body.into(), PutMode::Create).await {
        // Tiles are immutable and a function of the records: another writer got there first.
        Err(ArchiveError::Store {
            source: object_store::Error::AlreadyExists { .. },
            ..
        }) => Ok(()),
        other => other,
    }
}

/// Rotates the log's signing key from `old` to `new`: commits a record naming both (with a
/// signing writer that signs with both), then keeps the checkpoint of that record, signed by
/// both, under [`ROTATION_DIR`], so a verifier trusting `old` learns `new` from the log.
/// Returns the record's sequence.
pub async fn rotate_key(
    archive: &Archive,
    writer_id: &str,
    old: Signer,
    new: Signer,
) -> Result<u64, ArchiveError> {
    if old.verifier().kind() != KeyKind::Log || new.verifier().kind() != KeyKind::Log {
        return Err(ArchiveError::Log {
            path: "key rotation".into(),
            message: "both keys must be log keys (not witness keys)".into(),
        });
    }
    let rotation = crate::manifest::KeyRotation {
        from: old.verifier().vkey(),
        to: new.verifier().vkey(),
    };
    let mut keys = LogKeys::new(new)?;
    keys.also.push(old);
    let archive = archive.clone().with_signing(keys);
    archive.sync_log().await?;
    let contents = crate::archive::CommitContents {
        key_rotation: Some(rotation),
        ..Default::default()
    };
    let record = archive
        .commit(writer_id, &contents, None, false)
        .await?
        .record;
    let size = record.sequence;
    // The head at exactly the rotation record, signed by both keys.
    let origin = read_checkpoint(&archive)
        .await?
        .map(|c| c.head.origin)
        .ok_or_else(|| ArchiveError::Log {
            path: CHECKPOINT_FILE.into(),
            message: "no checkpoint after the rotation record".into(),
        })?;
    let mut reader = TileReader::new(&archive, size);
    let root = reader.run(|node| merkle::root(size, node)).await?;
    let head = TreeHead { origin, size, root };
    let signed = archive
        .log_keys()
        .map(|k| k.sign(&head))
        .ok_or_else(|| ArchiveError::Log {
            path: "key rotation".into(),
            message: "the archive lost its keys".into(),
        })?;
    let rel = format!("{ROTATION_DIR}/{size:020}");
    archive
        .put_bytes(&rel, signed.into_bytes().into(), PutMode::Create)
        .await?;
    Ok(size)
}

/// The rotation checkpoints kept under [`ROTATION_DIR`], in size order.
pub async fn rotation_checkpoints(
    archive: &Archive,
) -> Result<Vec<(String, Checkpoint)>, ArchiveError> {
    let mut out = Vec::new();
    for (rel, bytes) in archive.read_all_under(ROTATION_DIR).await? {
        let cp = std::str::from_utf8(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|t| Checkpoint::parse(t).map_err(|e| e.to_string()))
            .map_err(|message| ArchiveError::Log {
                path: rel.clone(),
                message,
            })?;
        out.push((rel, cp));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_paths_follow_tlog_tiles() {
        assert_eq!(tile_path(0, 1_234_067, 256), "_log/tile/0/x001/x234/067");
        assert_eq!(tile_path(0, 0, 5), "_log/tile/0/000.p/5");
        assert_eq!(tile_path(1, 12, 256), "_log/tile/1/012");
        assert_eq!(tile_path(2, 1000, 17), "_log/tile/2/x001/000.p/17");
    }

    #[test]
    fn the_edge_gives_the_root_of_every_size_and_the_tiles_of_the_tree() {
        let leaves: Vec<Hash> = (0..70_000u64)
            .map(|i| merkle::leaf_hash(&i.to_be_bytes()))
            .collect();
        let mut edge = Edge::default();
        let mut full = Vec::new();
        let mut tiles: HashMap<(u8, u64), Vec<Hash>> = HashMap::new();
        for (i, leaf) in leaves.iter().enumerate() {
            edge.push(*leaf, &mut full);
            for (l, n, h) in full.drain(..) {
                tiles.insert((l, n), h);
            }
            let n = i as u64 + 1;
            if n.is_multiple_of(997) || n < 600 || n == 65_536 || n == 65_537 {
                assert_eq!(
                    edge.root(),
                    merkle::root(n, &mut merkle::over(&leaves)),
                    "size {n}"
                );
            }
        }
        // Level 1 tile 0 holds the roots of the first 256 level-0 tiles.
        let t = &tiles[&(1, 0)];
        assert_eq!(t[3], merkle::perfect_root(&leaves[3 * 256..4 * 256]));
        assert_eq!(tiles[&(0, 5)], leaves[5 * 256..6 * 256].to_vec());
    }
}
