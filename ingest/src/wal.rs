//! Write-ahead log of webhook request bodies: the promise behind an HTTP 200.
//!
//! A body is framed, appended to the active segment and fsynced before its request is
//! answered; appends that arrive while an fsync runs share the next one (group commit).
//! The archiver reads the log back in sequence order, so the log is also the queue between
//! the HTTP side and the Parquet side: a slow archive costs disk, never memory. Segments are
//! deleted once every record in them is in a committed Parquet file.
//!
//! Frame: `b"ALW1"`, payload length (u32 LE), CRC-32 of the payload (u32 LE), then the
//! payload: seq (u64), received_at µs (i64), cluster length (u16), identity length (u16),
//! cluster, identity, body. A torn frame at the end of the last segment is an append whose
//! fsync never finished (so it was never acknowledged) and is cut off on recovery.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

const MAGIC: &[u8; 4] = b"ALW1";
const HEADER: usize = 12;
const FIXED_PAYLOAD: usize = 8 + 8 + 2 + 2;
const SEGMENT_SUFFIX: &str = ".wal";
const ID_FILE: &str = "wal-id";
/// Appends gathered under one fsync at most (bounds the writer's buffer).
const MAX_GROUP_BYTES: usize = 64 << 20;

/// Why the log could not take or give back a record.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// A file of the log could not be read or written.
    #[error("write-ahead log {path}: {source}")]
    Io {
        /// The segment or directory.
        path: PathBuf,
        /// The I/O error (`StorageFull` when the disk is full).
        source: std::io::Error,
    },
    /// The log is closed (the server is shutting down).
    #[error("write-ahead log is closed")]
    Closed,
    /// A field does not fit its frame (cluster or identity over 64 KiB).
    #[error("write-ahead log record: {0}")]
    Record(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Sizes and place of the log.
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// Directory holding the segments (created if missing).
    pub dir: PathBuf,
    /// A new segment starts once the active one reaches this size.
    pub segment_bytes: u64,
}

/// One logged request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRecord {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    /// When the request arrived, µs since the epoch.
    pub received_at_micros: i64,
    /// Cluster the events are for.
    pub cluster: String,
    /// Who sent it: the client certificate's subject or the token's name, empty if anonymous.
    pub identity: String,
    /// The request body (decompressed).
    pub body: Vec<u8>,
}

fn encode_frame(out: &mut Vec<u8>, r: &WalRecord) -> Result<(), WalError> {
    let too_long = |what: &str, len: usize| {
        WalError::Record(format!("{what} of {len} bytes is longer than 65535"))
    };
    let cluster_len =
        u16::try_from(r.cluster.len()).map_err(|_| too_long("cluster", r.cluster.len()))?;
    let identity_len =
        u16::try_from(r.identity.len()).map_err(|_| too_long("identity", r.identity.len()))?;
    let payload_len = FIXED_PAYLOAD + r.cluster.len() + r.identity.len() + r.body.len();
    let payload_len32 = u32::try_from(payload_len)
        .map_err(|_| WalError::Record(format!("body of {} bytes", r.body.len())))?;
    let start = out.len();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&payload_len32.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    let payload_start = out.len();
    out.extend_from_slice(&r.seq.to_le_bytes());
    out.extend_from_slice(&r.received_at_micros.to_le_bytes());
    out.extend_from_slice(&cluster_len.to_le_bytes());
    out.extend_from_slice(&identity_len.to_le_bytes());
    out.extend_from_slice(r.cluster.as_bytes());
    out.extend_from_slice(r.identity.as_bytes());
    out.extend_from_slice(&r.body);
    let crc = crc32fast::hash(&out[payload_start..]);
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Outcome of reading one frame.
enum Frame {
    Record(WalRecord, u64),
    /// Clean end of file.
    End,
    /// A short or corrupt frame; the reason.
    Torn(String),
}

fn read_frame(reader: &mut impl Read, max_frame: u64) -> std::io::Result<Frame> {
    let mut header = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        match reader.read(&mut header[got..])? {
            0 if got == 0 => return Ok(Frame::End),
            0 => return Ok(Frame::Torn(format!("header cut after {got} bytes"))),
            n => got += n,
        }
    }
    if &header[..4] != MAGIC {
        return Ok(Frame::Torn("bad magic".into()));
    }
    let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    let crc = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if len < FIXED_PAYLOAD || len as u64 > max_frame {
        return Ok(Frame::Torn(format!("implausible payload length {len}")));
    }
    let mut payload = vec![0u8; len];
    if let Err(e) = reader.read_exact(&mut payload) {
        return if e.kind() == ErrorKind::UnexpectedEof {
            Ok(Frame::Torn(format!("payload cut short of {len} bytes")))
        } else {
            Err(e)
        };
    }
    if crc32fast::hash(&payload) != crc {
        return Ok(Frame::Torn("CRC mismatch".into()));
    }
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&payload[i..i + 8]);
        b
    };
    let seq = u64::from_le_bytes(u64_at(0));
    let received_at_micros = i64::from_le_bytes(u64_at(8));
    let cluster_len = u16::from_le_bytes([payload[16], payload[17]]) as usize;
    let identity_len = u16::from_le_bytes([payload[18], payload[19]]) as usize;
    if FIXED_PAYLOAD + cluster_len + identity_len > len {
        return Ok(Frame::Torn("field lengths exceed the payload".into()));
    }
    let text =
        |range: std::ops::Range<usize>| String::from_utf8_lossy(&payload[range]).into_owned();
    let cluster = text(FIXED_PAYLOAD..FIXED_PAYLOAD + cluster_len);
    let identity = text(FIXED_PAYLOAD + cluster_len..FIXED_PAYLOAD + cluster_len + identity_len);
    payload.drain(..FIXED_PAYLOAD + cluster_len + identity_len);
    Ok(Frame::Record(
        WalRecord {
            seq,
            received_at_micros,
            cluster,
            identity,
            body: payload,
        },
        (HEADER + len) as u64,
    ))
}

#[derive(Debug, Clone)]
struct Segment {
    path: PathBuf,
    first_seq: u64,
    /// Last sequence number in it, 0 while empty.
    last_seq: u64,
    bytes: u64,
    /// When its last record was appended (or it was found on recovery).
    last_append: Instant,
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}{SEGMENT_SUFFIX}"))
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

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

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
    segments: Vec<Segment>,
}

/// Scans the log in `dir`, cutting off a torn tail, and calls `each` for every record in
/// order. Creates the directory and the log's id on first use.
pub fn recover(dir: &Path, mut each: impl FnMut(&WalRecord)) -> Result<Recovered, WalError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let id_path = dir.join(ID_FILE);
    let wal_id = match std::fs::read_to_string(&id_path) {
        Ok(id) => id.trim().to_string(),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let id = format!("wal-{}", crate::pipeline::new_writer_id());
            let tmp = dir.join(format!("{ID_FILE}.tmp"));
            let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
            f.write_all(id.as_bytes()).map_err(io_err(&tmp))?;
            f.sync_all().map_err(io_err(&tmp))?;
            std::fs::rename(&tmp, &id_path).map_err(io_err(&id_path))?;
            sync_dir(dir)?;
            id
        }
        Err(e) => return Err(io_err(&id_path)(e)),
    };
    let listed = list_segments(dir)?;
    let mut segments = Vec::with_capacity(listed.len());
    let mut records = 0;
    let mut next_seq = 1;
    let mut torn_bytes = 0;
    let last_index = listed.len().saturating_sub(1);
    for (i, (first_seq, path)) in listed.into_iter().enumerate() {
        let file = File::open(&path).map_err(io_err(&path))?;
        let len = file.metadata().map_err(io_err(&path))?.len();
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut offset = 0u64;
        let mut last_seq = 0;
        loop {
            match read_frame(&mut reader, len).map_err(io_err(&path))? {
                Frame::Record(r, n) => {
                    offset += n;
                    last_seq = r.seq;
                    next_seq = r.seq + 1;
                    records += 1;
                    each(&r);
                }
                Frame::End => break,
                Frame::Torn(why) => {
                    let cut = len - offset;
                    if i == last_index {
                        tracing::warn!(segment = %path.display(), offset, bytes = cut, reason = %why,
                            "cutting off a torn append at the end of the write-ahead log (it was never acknowledged)");
                    } else {
                        tracing::error!(segment = %path.display(), offset, bytes = cut, reason = %why,
                            "write-ahead log segment is corrupt before its end; the rest of it is skipped");
                    }
                    torn_bytes += cut;
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io_err(&path))?;
                    f.set_len(offset).map_err(io_err(&path))?;
                    f.sync_all().map_err(io_err(&path))?;
                    break;
                }
            }
        }
        segments.push(Segment {
            path,
            first_seq,
            last_seq,
            bytes: offset,
            last_append: Instant::now(),
        });
    }
    Ok(Recovered {
        wal_id,
        records,
        next_seq,
        torn_bytes,
        segments,
    })
}

enum Msg {
    Append(Append),
    Close,
}

struct Append {
    cluster: String,
    identity: String,
    received_at_micros: i64,
    body: Vec<u8>,
    done: oneshot::Sender<Result<u64, Arc<WalError>>>,
}

/// Counters the log keeps for backpressure and metrics.
#[derive(Debug, Default)]
pub struct WalStats {
    /// Bytes in all segment files.
    pub bytes: AtomicU64,
}

struct Shared {
    dir: PathBuf,
    segments: Mutex<VecDeque<Segment>>,
    stats: Arc<WalStats>,
}

/// The log's writing end: appends, trimming and the sequence number made durable last.
#[derive(Clone)]
pub struct Wal {
    tx: Sender<Msg>,
    shared: Arc<Shared>,
    durable: watch::Receiver<u64>,
    wal_id: String,
}

/// Observes each group commit: how many appends it held and how long the fsync took.
pub type FsyncObserver = Arc<dyn Fn(usize, Duration) + Send + Sync>;

impl Wal {
    /// Starts the writer thread after [`recover`]; appends go to a new segment.
    pub fn start(
        recovered: Recovered,
        options: WalOptions,
        on_fsync: FsyncObserver,
    ) -> Result<(Self, std::thread::JoinHandle<()>), WalError> {
        let stats = Arc::new(WalStats::default());
        let total: u64 = recovered.segments.iter().map(|s| s.bytes).sum();
        stats.bytes.store(total, Ordering::Relaxed);
        let shared = Arc::new(Shared {
            dir: options.dir.clone(),
            segments: Mutex::new(recovered.segments.into_iter().collect()),
            stats,
        });
        let (tx, rx) = channel();
        let (durable_tx, durable) = watch::channel(recovered.next_seq - 1);
        let writer = Writer {
            shared: shared.clone(),
            options,
            next_seq: recovered.next_seq,
            file: None,
            durable: durable_tx,
            on_fsync,
        };
        let handle = std::thread::Builder::new()
            .name("auditlake-wal".into())
            .spawn(move || writer.run(rx))
            .map_err(io_err(&shared.dir))?;
        Ok((
            Self {
                tx,
                shared,
                durable,
                wal_id: recovered.wal_id,
            },
            handle,
        ))
    }

    /// Identifier of this log (stable across restarts).
    pub fn id(&self) -> &str {
        &self.wal_id
    }

    /// Appends a body and returns its sequence number once it is on disk.
    pub async fn append(
        &self,
        cluster: String,
        identity: String,
        received_at_micros: i64,
        body: Vec<u8>,
    ) -> Result<u64, Arc<WalError>> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Msg::Append(Append {
                cluster,
                identity,
                received_at_micros,
                body,
                done,
            }))
            .map_err(|_| Arc::new(WalError::Closed))?;
        wait.await.map_err(|_| Arc::new(WalError::Closed))?
    }

    /// Stops the writer once the appends sent so far are written; later appends fail with
    /// [`WalError::Closed`] and readers end after the last durable record.
    pub fn close(&self) {
        let _ = self.tx.send(Msg::Close);
    }

    /// Watches the last sequence number known to be on disk.
    pub fn durable(&self) -> watch::Receiver<u64> {
        self.durable.clone()
    }

    /// Counters of the log.
    pub fn stats(&self) -> Arc<WalStats> {
        self.shared.stats.clone()
    }

    /// The directory of the log.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Deletes the segments whose records are all at or below `committed_seq` and that
    /// were last appended to before `keep_since` (kept that long to rebuild the duplicate
    /// filter after a restart). Returns the bytes freed.
    pub fn trim(&self, committed_seq: u64, keep_since: Instant) -> Result<u64, WalError> {
        // Taken out of the list under the lock, deleted after it: unlinking a 64 MiB segment
        // takes ~14 ms on ext4, and the appender needs this lock after every fsync, so
        // deleting under it held acknowledgements back by ~100 ms per trim.
        let doomed: Vec<Segment> = {
            let mut segments = self
                .shared
                .segments
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let mut doomed = Vec::new();
            // The last segment is the active one (or will be continued): never removed here.
            while segments.len() > 1 {
                let Some(s) = segments.front() else { break };
                if s.last_seq > committed_seq || s.last_append > keep_since {
                    break;
                }
                doomed.extend(segments.pop_front());
            }
            doomed
        };
        let mut freed = 0;
        for s in &doomed {
            match std::fs::remove_file(&s.path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                // Still on disk and no longer listed: recovery after a restart finds it again
                // and skips its records, which are all archived.
                Err(e) => return Err(io_err(&s.path)(e)),
            }
            freed += s.bytes;
            self.shared
                .stats
                .bytes
                .fetch_sub(s.bytes, Ordering::Relaxed);
        }
        if freed > 0 {
            sync_dir(&self.shared.dir)?;
        }
        Ok(freed)
    }

    /// A reader of the records after `after_seq`, in order, following appends as they
    /// become durable.
    pub fn reader(&self, after_seq: u64, runtime: tokio::runtime::Handle) -> WalReader {
        WalReader {
            shared: self.shared.clone(),
            durable: self.durable.clone(),
            after_seq,
            current: None,
            runtime,
        }
    }
}

struct Writer {
    shared: Arc<Shared>,
    options: WalOptions,
    next_seq: u64,
    file: Option<(File, PathBuf, u64)>,
    durable: watch::Sender<u64>,
    on_fsync: FsyncObserver,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        let mut buf = Vec::with_capacity(1 << 20);
        let mut group = Vec::new();
        let mut closing = false;
        while !closing {
            match rx.recv() {
                Ok(Msg::Append(a)) => group.push(a),
                Ok(Msg::Close) | Err(_) => break,
            }
            let mut bytes = group[0].body.len();
            while bytes < MAX_GROUP_BYTES {
                match rx.try_recv() {
                    Ok(Msg::Append(a)) => {
                        bytes += a.body.len();
                        group.push(a);
                    }
                    Ok(Msg::Close) => {
                        closing = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.write_group(&mut group, &mut buf);
        }
        if let Some((file, path, _)) = self.file.take()
            && let Err(e) = file.sync_all()
        {
            tracing::error!(segment = %path.display(), error = %e, "final write-ahead log fsync failed");
        }
    }

    fn write_group(&mut self, group: &mut Vec<Append>, buf: &mut Vec<u8>) {
        buf.clear();
        let mut seqs = Vec::with_capacity(group.len());
        let mut seq = self.next_seq;
        for a in group.iter_mut() {
            let record = WalRecord {
                seq,
                received_at_micros: a.received_at_micros,
                cluster: std::mem::take(&mut a.cluster),
                identity: std::mem::take(&mut a.identity),
                body: std::mem::take(&mut a.body),
            };
            match encode_frame(buf, &record) {
                Ok(()) => {
                    seqs.push(Some(seq));
                    seq += 1;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "record refused by the write-ahead log");
                    seqs.push(None);
                }
            }
        }
        let started = Instant::now();
        let result = self.write_and_sync(buf, seq - 1);
        let appended = seq - self.next_seq;
        match result {
            Ok(()) => {
                (self.on_fsync)(group.len(), started.elapsed());
                self.next_seq = seq;
                self.durable.send_replace(seq - 1);
                for (a, s) in group.drain(..).zip(seqs) {
                    let answer = match s {
                        Some(s) => Ok(s),
                        None => Err(Arc::new(WalError::Record(
                            "cluster or identity longer than 65535 bytes".into(),
                        ))),
                    };
                    let _ = a.done.send(answer);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, appends = appended, "write-ahead log append failed; answering 503");
                let e = Arc::new(e);
                for a in group.drain(..) {
                    let _ = a.done.send(Err(e.clone()));
                }
            }
        }
    }

    /// Writes `buf` to the active segment (starting one if needed) and fsyncs it. On
    /// failure the segment is cut back to where it was and closed, so a half-written group
    /// never sits before later appends.
    fn write_and_sync(&mut self, buf: &[u8], last_seq: u64) -> Result<(), WalError> {
        if buf.is_empty() {
            return Ok(());
        }
        if self.file.is_none() {
            self.open_segment()?;
        }
        let Some((file, path, len)) = self.file.as_mut() else {
            return Err(WalError::Closed);
        };
        let before = *len;
        let written = file.write_all(buf).and_then(|()| file.sync_data());
        if let Err(e) = written {
            let _ = file.set_len(before);
            let _ = file.seek(SeekFrom::Start(before));
            let _ = file.sync_all();
            let err = io_err(path)(e);
            self.file = None;
            return Err(err);
        }
        *len += buf.len() as u64;
        self.shared
            .stats
            .bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        {
            let mut segments = self
                .shared
                .segments
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(s) = segments.back_mut() {
                s.last_seq = last_seq;
                s.bytes = *len;
                s.last_append = Instant::now();
            }
        }
        if *len >= self.options.segment_bytes {
            self.file = None;
        }
        Ok(())
    }

    fn open_segment(&mut self) -> Result<(), WalError> {
        let path = segment_path(&self.options.dir, self.next_seq);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let len = file.metadata().map_err(io_err(&path))?.len();
        sync_dir(&self.options.dir)?;
        let mut segments = self
            .shared
            .segments
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if segments.back().is_none_or(|s| s.path != path) {
            segments.push_back(Segment {
                path: path.clone(),
                first_seq: self.next_seq,
                last_seq: 0,
                bytes: len,
                last_append: Instant::now(),
            });
        }
        self.file = Some((file, path, len));
        Ok(())
    }
}

/// Reads records back in order for the archiver, waiting for appends to become durable.
pub struct WalReader {
    shared: Arc<Shared>,
    durable: watch::Receiver<u64>,
    after_seq: u64,
    current: Option<(BufReader<File>, PathBuf, u64)>,
    runtime: tokio::runtime::Handle,
}

/// What [`WalReader::next`] found.
#[derive(Debug)]
pub enum ReadOutcome {
    /// The next record.
    Record(WalRecord),
    /// Nothing new became durable within the wait.
    Idle,
    /// The log is closed and every durable record has been read.
    Closed,
}

impl WalReader {
    /// The next durable record after the last one returned, waiting up to `wait` for one.
    /// Blocks: it runs on the archiver's own thread, never on the async runtime.
    pub fn next(&mut self, wait: Duration) -> Result<ReadOutcome, WalError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let durable = *self.durable.borrow();
            if self.after_seq < durable {
                if let Some(r) = self.read_next()? {
                    self.after_seq = r.seq;
                    return Ok(ReadOutcome::Record(r));
                }
                // Durable but not found where expected: a segment holding it was trimmed
                // or rolled; reopen from the segment list.
                self.current = None;
                if let Some(r) = self.read_next()? {
                    self.after_seq = r.seq;
                    return Ok(ReadOutcome::Record(r));
                }
                return Err(WalError::Record(format!(
                    "record {} is durable but not in any segment",
                    self.after_seq + 1
                )));
            }
            // Wait for the writer to make more durable (or to close).
            let durable = &mut self.durable;
            let changed = self
                .runtime
                .block_on(async { tokio::time::timeout_at(deadline, durable.changed()).await });
            match changed {
                Err(_elapsed) => return Ok(ReadOutcome::Idle),
                Ok(Err(_closed)) if *self.durable.borrow() <= self.after_seq => {
                    return Ok(ReadOutcome::Closed);
                }
                Ok(_) => {}
            }
        }
    }

    /// Reads frames from the current position until the one after `after_seq`.
    fn read_next(&mut self) -> Result<Option<WalRecord>, WalError> {
        let want = self.after_seq + 1;
        loop {
            if self.current.is_none() {
                let segments = self
                    .shared
                    .segments
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                // The segment that holds `want`: the last one starting at or before it.
                let Some(s) = segments.iter().rev().find(|s| s.first_seq <= want) else {
                    return Ok(None);
                };
                let path = s.path.clone();
                drop(segments);
                let file = File::open(&path).map_err(io_err(&path))?;
                self.current = Some((BufReader::with_capacity(1 << 20, file), path, 0));
            }
            let Some((reader, path, offset)) = self.current.as_mut() else {
                return Ok(None);
            };
            match read_frame(reader, u64::from(u32::MAX)).map_err(io_err(path))? {
                Frame::Record(r, n) => {
                    *offset += n;
                    if r.seq >= want {
                        return Ok(Some(r));
                    }
                }
                Frame::End | Frame::Torn(_) => {
                    // End of this segment: move to the one starting right after, if any.
                    let segments = self
                        .shared
                        .segments
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    let next = segments
                        .iter()
                        .find(|s| s.first_seq > self.after_seq && s.path != *path)
                        .map(|s| s.path.clone());
                    drop(segments);
                    match next {
                        Some(p) => {
                            let file = File::open(&p).map_err(io_err(&p))?;
                            self.current = Some((BufReader::with_capacity(1 << 20, file), p, 0));
                        }
                        None => {
                            // Nothing after: seek back so a later append is read from here.
                            let at = *offset;
                            reader.seek(SeekFrom::Start(at)).map_err(io_err(path))?;
                            return Ok(None);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn appends_read_back_in_order_and_a_torn_tail_is_cut_on_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime();
        let options = WalOptions {
            dir: dir.path().to_path_buf(),
            segment_bytes: 200,
        };
        let recovered = recover(dir.path(), |_| {}).unwrap();
        assert_eq!(recovered.next_seq, 1);
        let (wal, thread) = Wal::start(recovered, options.clone(), Arc::new(|_, _| {})).unwrap();
        // Two concurrent appends (one group commit) then eight one by one (one segment each).
        let mut seqs: Vec<u64> = rt.block_on(async {
            let appends = (0..2).map(|i| {
                let wal = wal.clone();
                async move {
                    wal.append("c".into(), "id".into(), i, vec![b'x'; 50 + i as usize])
                        .await
                        .unwrap()
                }
            });
            futures::future::join_all(appends).await
        });
        for i in 2..10 {
            seqs.push(
                rt.block_on(wal.append("c".into(), "id".into(), i, vec![b'x'; 50 + i as usize]))
                    .unwrap(),
            );
        }
        seqs.sort();
        assert_eq!(
            seqs,
            (1..=10).collect::<Vec<_>>(),
            "appends get distinct sequence numbers"
        );
        let mut reader = wal.reader(0, rt.handle().clone());
        for want in 1..=10 {
            match reader.next(Duration::from_secs(5)).unwrap() {
                ReadOutcome::Record(r) => {
                    assert_eq!(r.seq, want);
                    assert_eq!(r.cluster, "c");
                    assert_eq!(r.body.len(), 50 + r.received_at_micros as usize);
                }
                other => panic!("expected record {want}, got {other:?}"),
            }
        }
        assert!(matches!(
            reader.next(Duration::from_millis(20)).unwrap(),
            ReadOutcome::Idle
        ));
        // Segments are 200 bytes: several exist; trimming through 6 removes the full ones.
        let before = list_segments(dir.path()).unwrap().len();
        assert!(before > 3);
        wal.trim(6, Instant::now()).unwrap();
        let after = list_segments(dir.path()).unwrap();
        assert!(after.len() < before);
        assert!(after.iter().all(|(first, _)| *first <= 10));
        wal.close();
        drop(wal);
        thread.join().unwrap();

        // Tear the last frame as a crash mid-append would.
        let (_, last) = list_segments(dir.path()).unwrap().pop().unwrap();
        let len = std::fs::metadata(&last).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&last)
            .unwrap()
            .set_len(len - 7)
            .unwrap();
        let mut seen = Vec::new();
        let recovered = recover(dir.path(), |r| seen.push(r.seq)).unwrap();
        assert_eq!(seen.last(), Some(&9), "record 10 was torn and is gone");
        assert!(seen.windows(2).all(|w| w[1] == w[0] + 1));
        assert_eq!(recovered.next_seq, 10);
        assert!(recovered.torn_bytes > 0);
        assert_eq!(
            std::fs::metadata(&last).unwrap().len() + recovered.torn_bytes,
            len - 7
        );
    }
}
