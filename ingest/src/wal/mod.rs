//! Write-ahead log of webhook request bodies: the promise behind an HTTP 200.
//!
//! A body is framed, appended to the active segment and fsynced before its request is
//! answered; appends that arrive while an fsync runs share the next one (group commit).
//! The archiver reads the log back in sequence order, so the log is also the queue between
//! the HTTP side and the Parquet side: a slow archive costs disk, never memory. Segments are
//! deleted once every record in them is in a committed Parquet file.
//!
//! The frame layout is in `frame.rs` and specified in `ingest/WAL.md`; recovery
//! (`recovery.rs`) cuts only a torn append at the very end and sets damaged bytes aside
//! without losing the intact records after them. A log belongs to one archive: it records the
//! archive's URL and refuses to replay into another ([`bind_archive`]).

mod frame;
mod recovery;

pub use recovery::{CutRegion, PendingCut, Recovered, pending_cuts, recover, segment_files};

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, IoSlice, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use frame::Read1;

const SEGMENT_SUFFIX: &str = ".wal";
const ID_FILE: &str = "wal-id";
/// The archive this log feeds (its URL): a log replays only into the archive it belongs to.
const ARCHIVE_FILE: &str = "archive";
/// Where recovery keeps bytes it had to cut out of the log.
const QUARANTINE_DIR: &str = "quarantine";
/// Appends gathered under one fsync at most (bounds one group's write).
const MAX_GROUP_BYTES: usize = 64 << 20;
/// Arrival times are remembered for one record per this many µs of arrival time, so the age
/// of the oldest record not yet archived is known to a second with bounded memory.
const ARRIVAL_SAMPLE_MICROS: i64 = 1_000_000;

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
    /// The log was written for another archive.
    #[error(
        "write-ahead log {dir} belongs to the archive {bound}, not {requested}: replaying it here \
         would copy that archive's events into this one. Use the write-ahead log directory of \
         this archive, or pass --wal-retarget to archive this log's records into {requested}"
    )]
    OtherArchive {
        /// The log directory.
        dir: PathBuf,
        /// The archive it records.
        bound: String,
        /// The archive asked for.
        requested: String,
    },
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

/// Locks a mutex whose data stays consistent even if a holder panicked (plain lists).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

enum Msg {
    Append(Append),
    Close,
}

struct Append {
    cluster: String,
    identity: String,
    received_at_micros: i64,
    body: Bytes,
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
    /// (seq, arrival µs) of one record per second of arrivals not yet archived.
    arrivals: Mutex<VecDeque<(u64, i64)>>,
    /// Every record up to this one is in a committed archive file.
    archived: AtomicU64,
}

/// Records (or checks) the archive the log in `dir` feeds. A log that recorded another
/// archive is refused unless `retarget`, which re-binds it (its records are then archived
/// into `archive_url`).
pub fn bind_archive(dir: &Path, archive_url: &str, retarget: bool) -> Result<(), WalError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let path = dir.join(ARCHIVE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(bound) if bound.trim() == archive_url => return Ok(()),
        Ok(bound) if !retarget => {
            return Err(WalError::OtherArchive {
                dir: dir.to_path_buf(),
                bound: bound.trim().to_string(),
                requested: archive_url.to_string(),
            });
        }
        Ok(bound) => {
            tracing::warn!(wal_dir = %dir.display(), from = %bound.trim(), to = archive_url,
            "write-ahead log re-targeted: its records not yet archived go to the new archive")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&path)(e)),
    }
    let tmp = dir.join(format!("{ARCHIVE_FILE}.tmp"));
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(archive_url.as_bytes()).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
    sync_dir(dir)
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
            arrivals: Mutex::new(recovered.arrivals),
            archived: AtomicU64::new(0),
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
        body: Bytes,
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

    /// Notes that every record up to `seq` is in a committed archive file (for the age of
    /// the oldest record not yet archived).
    pub fn set_archived(&self, seq: u64) {
        self.shared.archived.fetch_max(seq, Ordering::Relaxed);
        let archived = self.shared.archived.load(Ordering::Relaxed);
        let mut arrivals = lock(&self.shared.arrivals);
        // Keep the last sample at or before the first record not archived: it bounds that
        // record's arrival from below.
        while arrivals.get(1).is_some_and(|&(s, _)| s <= archived + 1) {
            arrivals.pop_front();
        }
    }

    /// Arrival time (µs) of the oldest durable record not yet archived, to within a second
    /// (never later than the truth); `None` when everything durable is archived.
    pub fn oldest_unarchived_micros(&self) -> Option<i64> {
        let durable = *self.durable.borrow();
        let archived = self.shared.archived.load(Ordering::Relaxed);
        if durable <= archived {
            return None;
        }
        lock(&self.shared.arrivals).front().map(|&(_, t)| t)
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
            let mut segments = lock(&self.shared.segments);
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
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
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
            self.write_group(&mut group);
        }
        if let Some((file, path, _)) = self.file.take()
            && let Err(e) = file.sync_all()
        {
            tracing::error!(segment = %path.display(), error = %e, "final write-ahead log fsync failed");
        }
    }

    fn write_group(&mut self, group: &mut Vec<Append>) {
        // Each append is its frame head (small) and its body, written from the request's
        // own buffer: the body is never copied into a frame buffer.
        let mut parts: Vec<(Vec<u8>, Bytes)> = Vec::with_capacity(group.len());
        let mut seqs = Vec::with_capacity(group.len());
        let mut seq = self.next_seq;
        let mut first_arrival = None;
        for a in group.iter() {
            match frame::head(seq, a.received_at_micros, &a.cluster, &a.identity, &a.body) {
                Ok(head) => {
                    parts.push((head, a.body.clone()));
                    seqs.push(Some(seq));
                    first_arrival.get_or_insert((seq, a.received_at_micros));
                    seq += 1;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "record refused by the write-ahead log");
                    seqs.push(None);
                }
            }
        }
        let started = Instant::now();
        let result = self.write_and_sync(&parts, seq - 1);
        drop(parts);
        let appended = seq - self.next_seq;
        match result {
            Ok(()) => {
                (self.on_fsync)(group.len(), started.elapsed());
                if let Some((s, t)) = first_arrival {
                    let mut arrivals = lock(&self.shared.arrivals);
                    if arrivals
                        .back()
                        .is_none_or(|&(_, last)| t - last >= ARRIVAL_SAMPLE_MICROS)
                    {
                        arrivals.push_back((s, t));
                    }
                }
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

    /// Writes the frames to the active segment (starting one if needed) and fsyncs it. On
    /// failure the segment is cut back to where it was and closed, so a half-written group
    /// never sits before later appends.
    fn write_and_sync(
        &mut self,
        parts: &[(Vec<u8>, Bytes)],
        last_seq: u64,
    ) -> Result<(), WalError> {
        if parts.is_empty() {
            return Ok(());
        }
        if self.file.is_none() {
            self.open_segment()?;
        }
        let Some((file, path, len)) = self.file.as_mut() else {
            return Err(WalError::Closed);
        };
        let before = *len;
        let total: usize = parts.iter().map(|(h, b)| h.len() + b.len()).sum();
        let written = write_all_vectored(file, parts).and_then(|()| file.sync_data());
        if let Err(e) = written {
            let _ = file.set_len(before);
            let _ = file.seek(SeekFrom::Start(before));
            let _ = file.sync_all();
            let err = io_err(path)(e);
            self.file = None;
            return Err(err);
        }
        *len += total as u64;
        self.shared
            .stats
            .bytes
            .fetch_add(total as u64, Ordering::Relaxed);
        {
            let mut segments = lock(&self.shared.segments);
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
        let mut segments = lock(&self.shared.segments);
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

/// Writes every head and body in order with as few system calls as the kernel allows.
fn write_all_vectored(file: &mut File, parts: &[(Vec<u8>, Bytes)]) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = parts
        .iter()
        .flat_map(|(h, b)| [IoSlice::new(h), IoSlice::new(b)])
        .filter(|s| !s.is_empty())
        .collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
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
                let segments = lock(&self.shared.segments);
                // The segment that holds `want`: the last one starting at or before it; when
                // `want` is older than every segment, those records were trimmed (they are
                // archived), so reading starts at the oldest segment there is.
                let Some(s) = segments
                    .iter()
                    .rev()
                    .find(|s| s.first_seq <= want)
                    .or_else(|| segments.front())
                else {
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
            match frame::read(reader).map_err(io_err(path))? {
                Read1::Record(r, n) => {
                    *offset += n;
                    if r.seq >= want {
                        return Ok(Some(r));
                    }
                }
                Read1::End | Read1::Incomplete => {
                    // End of this segment: move to the one starting right after, if any.
                    let segments = lock(&self.shared.segments);
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
                    wal.append(
                        "c".into(),
                        "id".into(),
                        i,
                        Bytes::from(vec![b'x'; 50 + i as usize]),
                    )
                    .await
                    .unwrap()
                }
            });
            futures::future::join_all(appends).await
        });
        for i in 2..10 {
            seqs.push(
                rt.block_on(wal.append(
                    "c".into(),
                    "id".into(),
                    i,
                    Bytes::from(vec![b'x'; 50 + i as usize]),
                ))
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
        let before = segment_files(dir.path()).unwrap().len();
        assert!(before > 3);
        wal.trim(6, Instant::now()).unwrap();
        let after = segment_files(dir.path()).unwrap();
        assert!(after.len() < before);
        // A reader from the start (an archiver rebuilding its duplicate filter after a
        // restart) begins at the oldest segment left.
        let mut reader = wal.reader(0, rt.handle().clone());
        match reader.next(Duration::from_secs(5)).unwrap() {
            ReadOutcome::Record(r) => assert!(r.seq > 1 && r.seq <= 7, "{}", r.seq),
            other => panic!("{other:?}"),
        }
        wal.close();
        drop(wal);
        thread.join().unwrap();

        // Tear the last frame as a crash mid-append would.
        let last = segment_files(dir.path()).unwrap().pop().unwrap();
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

    /// Writes `n` records of distinct bodies into one segment and stops the log.
    fn log_of(dir: &Path, n: u64) -> Vec<Vec<u8>> {
        let rt = runtime();
        let recovered = recover(dir, |_| {}).unwrap();
        let options = WalOptions {
            dir: dir.to_path_buf(),
            segment_bytes: 1 << 20,
        };
        let (wal, thread) = Wal::start(recovered, options, Arc::new(|_, _| {})).unwrap();
        let bodies: Vec<Vec<u8>> = (1..=n)
            .map(|i| format!("{{\"record\":{i},\"pad\":\"{}\"}}", "x".repeat(40)).into_bytes())
            .collect();
        for (i, b) in bodies.iter().enumerate() {
            let seq = rt
                .block_on(wal.append("c".into(), String::new(), i as i64, Bytes::from(b.clone())))
                .unwrap();
            assert_eq!(seq, i as u64 + 1);
        }
        wal.close();
        drop(wal);
        thread.join().unwrap();
        bodies
    }

    #[test]
    fn a_flipped_bit_mid_log_costs_one_record_not_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let bodies = log_of(dir.path(), 10);
        let segment = segment_files(dir.path()).unwrap().pop().unwrap();
        let mut bytes = std::fs::read(&segment).unwrap();
        // Flip one bit inside the body of record 3.
        let frame_len = bytes.len() / 10;
        let at = 2 * frame_len + frame_len - 5;
        bytes[at] ^= 0x10;
        std::fs::write(&segment, &bytes).unwrap();

        let mut seen = Vec::new();
        let recovered = recover(dir.path(), |r| seen.push((r.seq, r.body.clone()))).unwrap();
        let seqs: Vec<u64> = seen.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            seqs,
            [1, 2, 4, 5, 6, 7, 8, 9, 10],
            "every other record survives"
        );
        for (seq, body) in &seen {
            assert_eq!(body, &bodies[*seq as usize - 1]);
        }
        assert_eq!(recovered.next_seq, 11, "no sequence number is reused");
        assert_eq!(recovered.torn_bytes, 0, "this is damage, not a torn tail");
        assert_eq!(recovered.cut.len(), 1);
        let cut = &recovered.cut[0];
        assert!(!cut.torn_tail);
        assert_eq!(
            (cut.offset, cut.len),
            (2 * frame_len as u64, frame_len as u64)
        );
        assert_eq!(cut.after_seq, 2);
        // The damaged bytes are kept, byte for byte, until the archive holds them.
        let pending = pending_cuts(dir.path()).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].bytes, bytes[2 * frame_len..3 * frame_len]);
        // The segment was rewritten without them: a second recovery finds nothing to cut,
        // and a reader following the log reads records 4.. after 2.
        let mut again = Vec::new();
        let recovered = recover(dir.path(), |r| again.push(r.seq)).unwrap();
        assert_eq!(again, seqs);
        assert!(recovered.cut.is_empty());
        let rt = runtime();
        let options = WalOptions {
            dir: dir.path().to_path_buf(),
            segment_bytes: 1 << 20,
        };
        let (wal, thread) = Wal::start(recovered, options, Arc::new(|_, _| {})).unwrap();
        let mut reader = wal.reader(2, rt.handle().clone());
        match reader.next(Duration::from_secs(5)).unwrap() {
            ReadOutcome::Record(r) => assert_eq!(r.seq, 4),
            other => panic!("{other:?}"),
        }
        wal.close();
        drop(wal);
        thread.join().unwrap();
    }

    #[test]
    fn damage_at_the_end_of_a_full_segment_is_not_mistaken_for_a_torn_append() {
        let dir = tempfile::tempdir().unwrap();
        log_of(dir.path(), 4);
        let first = segment_files(dir.path()).unwrap().pop().unwrap();
        // A later segment exists: the first one's last frame was acknowledged.
        let second = dir.path().join(format!("{:020}{SEGMENT_SUFFIX}", 5));
        let mut frame5 = frame::head(5, 0, "c", "", b"{}").unwrap();
        frame5.extend_from_slice(b"{}");
        std::fs::write(&second, &frame5).unwrap();
        let len = std::fs::metadata(&first).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&first)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let mut seen = Vec::new();
        let recovered = recover(dir.path(), |r| seen.push(r.seq)).unwrap();
        assert_eq!(seen, [1, 2, 3, 5]);
        assert_eq!(recovered.cut.len(), 1);
        assert!(!recovered.cut[0].torn_tail, "{:?}", recovered.cut[0]);
        assert_eq!(recovered.torn_bytes, 0);
    }

    #[test]
    fn a_log_replays_only_into_the_archive_it_was_written_for() {
        let dir = tempfile::tempdir().unwrap();
        bind_archive(dir.path(), "file:///a/", false).unwrap();
        bind_archive(dir.path(), "file:///a/", false).unwrap();
        let e = bind_archive(dir.path(), "s3://other/", false).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("belongs to the archive file:///a/, not s3://other/")
                && msg.contains("--wal-retarget"),
            "{msg}"
        );
        bind_archive(dir.path(), "s3://other/", true).unwrap();
        bind_archive(dir.path(), "s3://other/", false).unwrap();
        assert!(bind_archive(dir.path(), "file:///a/", false).is_err());
    }
}
