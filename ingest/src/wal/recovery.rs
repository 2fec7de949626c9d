//! Recovery of the write-ahead log at start: every intact frame is kept, wherever it is.
//!
//! Only a torn append (a partial last frame at the very end of the log, whose fsync never
//! finished, so it was never acknowledged) is expected. Anything else that is not an intact
//! frame is damage to acknowledged data: recovery skips it, finds the next intact frame and
//! goes on, so one flipped bit costs one record, not the rest of the log. Every byte cut out
//! is first written to `quarantine/` in the log directory with the reason, and from there
//! goes to the archive's quarantine with the next commit.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::frame::{self, MAGIC, Parsed};
use super::{
    ARRIVAL_SAMPLE_MICROS, ID_FILE, QUARANTINE_DIR, SEGMENT_SUFFIX, Segment, WalError, WalRecord,
    io_err, sync_dir,
};

/// What recovery found in the log directory.
#[derive(Debug)]
pub struct Recovered {
    /// Identifier of this log, stable across restarts; manifests name it.
    pub wal_id: String,
    /// Records found, oldest first.
    pub records: u64,
    /// The sequence number the next append gets.
    pub next_seq: u64,
    /// Bytes cut off the end of the last segment (an append that was never acknowledged).
    pub torn_bytes: u64,
    /// Damaged stretches of the log that were set aside (torn tail included).
    pub cut: Vec<CutRegion>,
    pub(super) segments: Vec<Segment>,
    pub(super) arrivals: VecDeque<(u64, i64)>,
}

/// Bytes of the log that were not intact frames, kept in a file of `quarantine/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CutRegion {
    /// The segment file they were in.
    pub segment: String,
    /// Their offset in it.
    pub offset: u64,
    /// How many bytes.
    pub len: u64,
    /// Why they are not a frame.
    pub reason: String,
    /// A partial append at the very end of the log (never acknowledged), rather than damage
    /// to acknowledged records.
    pub torn_tail: bool,
    /// Sequence number of the last intact record before them (0: none).
    pub after_seq: u64,
}

impl CutRegion {
    /// The file stem of its quarantine files (`.bin` holds the bytes, `.json` this record).
    fn stem(&self) -> String {
        format!("{}-at-{:012}", self.segment, self.offset)
    }

    /// A one-line description for logs and quarantine records.
    pub fn describe(&self) -> String {
        if self.torn_tail {
            format!(
                "torn append at the end of write-ahead log segment {} (offset {}, {} bytes; it \
                 was never acknowledged): {}",
                self.segment, self.offset, self.len, self.reason
            )
        } else {
            format!(
                "corrupt write-ahead log bytes in segment {} at offset {} ({} bytes, after \
                 record {}): {}; acknowledged records in them could not be read",
                self.segment, self.offset, self.len, self.after_seq, self.reason
            )
        }
    }
}

/// A cut region waiting in `quarantine/` to be committed to the archive.
#[derive(Debug)]
pub struct PendingCut {
    /// What it is.
    pub region: CutRegion,
    /// The bytes.
    pub bytes: Vec<u8>,
    /// Its two files, deleted once the archive holds it.
    pub files: [PathBuf; 2],
}

/// Every cut region in `dir/quarantine/` not yet committed to the archive.
pub fn pending_cuts(dir: &Path) -> Result<Vec<PendingCut>, WalError> {
    let qdir = dir.join(QUARANTINE_DIR);
    let entries = match std::fs::read_dir(&qdir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&qdir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(io_err(&qdir))?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let text = std::fs::read(&path).map_err(io_err(&path))?;
        let region: CutRegion = serde_json::from_slice(&text).map_err(|e| WalError::Io {
            path: path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        let bin = path.with_extension("bin");
        let bytes = std::fs::read(&bin).map_err(io_err(&bin))?;
        out.push(PendingCut {
            region,
            bytes,
            files: [path, bin],
        });
    }
    out.sort_by_key(|a| a.region.stem());
    Ok(out)
}

fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), WalError> {
    let mut f = File::create(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Writes a cut region's bytes and description to `quarantine/` (durably) before the log
/// is changed, so a crash in between loses nothing.
fn save_cut(dir: &Path, region: &CutRegion, bytes: &[u8]) -> Result<(), WalError> {
    let qdir = dir.join(QUARANTINE_DIR);
    std::fs::create_dir_all(&qdir).map_err(io_err(&qdir))?;
    let stem = region.stem();
    write_durably(&qdir.join(format!("{stem}.bin")), bytes)?;
    // A struct of strings and numbers always serialises.
    let json = serde_json::to_vec(region).unwrap_or_default();
    write_durably(&qdir.join(format!("{stem}.json")), &json)?;
    sync_dir(&qdir)
}

/// The first position after `from` where an intact frame with a sequence number above
/// `after_seq` starts.
fn resync(buf: &[u8], from: usize, after_seq: u64) -> Option<usize> {
    let finder = memchr::memmem::Finder::new(MAGIC);
    let mut at = from;
    while let Some(i) = finder.find(&buf[at..]) {
        let p = at + i;
        if let Parsed::Frame(r, _) = frame::parse(&buf[p..])
            && r.seq > after_seq
        {
            return Some(p);
        }
        at = p + 1;
    }
    None
}

/// The log's identifier, created (durably) on first use.
fn wal_id(dir: &Path) -> Result<String, WalError> {
    let id_path = dir.join(ID_FILE);
    match std::fs::read_to_string(&id_path) {
        Ok(id) => Ok(id.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = format!("wal-{}", crate::pipeline::new_writer_id());
            let tmp = dir.join(format!("{ID_FILE}.tmp"));
            write_durably(&tmp, id.as_bytes())?;
            std::fs::rename(&tmp, &id_path).map_err(io_err(&id_path))?;
            sync_dir(dir)?;
            Ok(id)
        }
        Err(e) => Err(io_err(&id_path)(e)),
    }
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let Some(first) = name
            .to_str()
            .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((first, entry.path()));
    }
    out.sort();
    Ok(out)
}

/// Segment files in `dir`, oldest first (for tests and tools).
pub fn segment_files(dir: &Path) -> Result<Vec<PathBuf>, WalError> {
    Ok(list_segments(dir)?.into_iter().map(|(_, p)| p).collect())
}

/// When a segment was last written, as an `Instant` (from its modification time): a segment
/// kept only for the duplicate window must age from its last append, not from the restart,
/// or a process restarted often would never trim its log.
fn last_write(path: &Path) -> Instant {
    let age = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
        .unwrap_or_default();
    Instant::now().checked_sub(age).unwrap_or_else(Instant::now)
}

/// Replaces `path` with the `keep` ranges of `buf`, durably (temporary file, fsync, rename).
fn rewrite(path: &Path, buf: &[u8], keep: &[Range<usize>]) -> Result<u64, WalError> {
    let tmp = path.with_extension("rewrite");
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    let mut len = 0u64;
    for r in keep {
        f.write_all(&buf[r.clone()]).map_err(io_err(&tmp))?;
        len += r.len() as u64;
    }
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    Ok(len)
}

/// Scans the log in `dir` and calls `each` for every intact record in order. A torn tail is
/// cut off; damaged bytes elsewhere are set aside and every intact record after them kept.
/// Creates the directory and the log's id on first use.
pub fn recover(dir: &Path, mut each: impl FnMut(&WalRecord)) -> Result<Recovered, WalError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let wal_id = wal_id(dir)?;
    let listed = list_segments(dir)?;
    let mut segments = Vec::with_capacity(listed.len());
    let mut records = 0;
    let mut last_seq = 0u64;
    let mut torn_bytes = 0;
    let mut cut = Vec::new();
    let mut arrivals: VecDeque<(u64, i64)> = VecDeque::new();
    let last_index = listed.len().saturating_sub(1);
    for (i, (first_seq, path)) in listed.into_iter().enumerate() {
        let buf = std::fs::read(&path).map_err(io_err(&path))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut keep: Vec<Range<usize>> = Vec::new();
        let mut regions: Vec<(CutRegion, Range<usize>)> = Vec::new();
        let mut o = 0usize;
        let mut seg_last = 0;
        while o < buf.len() {
            let problem = match frame::parse(&buf[o..]) {
                Parsed::Frame(r, n) if r.seq > last_seq => {
                    last_seq = r.seq;
                    seg_last = r.seq;
                    records += 1;
                    if arrivals
                        .back()
                        .is_none_or(|&(_, t)| r.received_at_micros - t >= ARRIVAL_SAMPLE_MICROS)
                    {
                        arrivals.push_back((r.seq, r.received_at_micros));
                    }
                    each(&r);
                    keep.push(o..o + n);
                    o += n;
                    continue;
                }
                Parsed::Frame(r, _) => (
                    false,
                    format!("record {} does not follow record {last_seq}", r.seq),
                ),
                Parsed::Short(why) => (true, why),
                Parsed::Bad(why) => (false, why),
            };
            let (short, reason) = problem;
            let next = resync(&buf, o + 1, last_seq);
            let end = next.unwrap_or(buf.len());
            let region = CutRegion {
                segment: name.clone(),
                offset: o as u64,
                len: (end - o) as u64,
                reason,
                torn_tail: short && next.is_none() && i == last_index,
                after_seq: last_seq,
            };
            regions.push((region, o..end));
            o = end;
        }
        let mut bytes = buf.len() as u64;
        if !regions.is_empty() {
            for (region, range) in &regions {
                save_cut(dir, region, &buf[range.clone()])?;
                if region.torn_tail {
                    torn_bytes += region.len;
                    tracing::warn!(segment = %path.display(), offset = region.offset, bytes = region.len,
                        reason = %region.reason,
                        "cutting off a torn append at the end of the write-ahead log (it was never acknowledged); its bytes are kept in quarantine/");
                } else {
                    tracing::error!(segment = %path.display(), offset = region.offset, bytes = region.len,
                        after_record = region.after_seq, reason = %region.reason,
                        "the write-ahead log is damaged: these bytes are set aside in quarantine/ (and go to the archive's quarantine); every intact record after them is recovered");
                }
            }
            bytes = if regions.len() == 1 && regions[0].1.end == buf.len() {
                // Only a tail to cut: shorten the file in place.
                let start = regions[0].1.start as u64;
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                f.set_len(start).map_err(io_err(&path))?;
                f.sync_all().map_err(io_err(&path))?;
                start
            } else {
                rewrite(&path, &buf, &keep)?
            };
            sync_dir(dir)?;
            cut.extend(regions.into_iter().map(|(r, _)| r));
        }
        let last_append = last_write(&path);
        segments.push(Segment {
            path,
            first_seq,
            last_seq: seg_last,
            bytes,
            last_append,
        });
    }
    Ok(Recovered {
        wal_id,
        records,
        next_seq: last_seq + 1,
        torn_bytes,
        cut,
        segments,
        arrivals,
    })
}
