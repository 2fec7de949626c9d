//! The detectors of `auditlake serve` on a thread of their own, fed through a bounded queue.
//!
//! Why: on the archiver thread, every rule's time added to decoding and Parquet encoding, so
//! detection lowered the rate the log drains at and, on a busy machine, the webhook's tail
//! latency. Here the archiver hands each batch over and goes on; the queue's bound keeps
//! memory fixed (a detector that cannot keep up slows the archiver down, it never drops a
//! batch). At each commit the two meet: the detector has then seen every batch up to the
//! commit point, so its `findings` and `rbac_history` files go into the same manifest record
//! as the events they came from.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use arrow::array::RecordBatch;

use crate::observer::BatchObserver;
use crate::pipeline::now_micros;
use crate::serve::ServeError;
use crate::serve_metrics::ServeMetrics;
use auditlake_archive::FinishedFile;

/// Batches waiting for the detectors at most: at 400 events per webhook request, about 25k
/// events, a fraction of a second of work.
const QUEUE_BATCHES: usize = 64;
/// Bytes of batches waiting for the detectors at most (a request of 16 MiB decodes to a
/// batch of about that size: a count alone would let 64 of them wait).
const QUEUE_BYTES: usize = 64 << 20;

/// Bytes of the batches queued, and a wake-up when the detectors take one.
#[derive(Default)]
struct Queued {
    bytes: std::sync::Mutex<usize>,
    taken: std::sync::Condvar,
    /// Set when the detection thread ended: nothing will be taken any more.
    gone: std::sync::atomic::AtomicBool,
}

impl Queued {
    /// Waits until `n` more bytes fit (or the queue is empty, or the detection thread is
    /// gone, which the send then reports), then counts them. Returns how long it waited,
    /// if it had to.
    fn add(&self, n: usize) -> Option<std::time::Duration> {
        let mut bytes = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        let mut waited = None;
        while *bytes > 0
            && *bytes + n > QUEUE_BYTES
            && !self.gone.load(std::sync::atomic::Ordering::Acquire)
        {
            waited.get_or_insert_with(std::time::Instant::now);
            bytes = self
                .taken
                .wait_timeout(bytes, std::time::Duration::from_secs(1))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *bytes += n;
        waited.map(|t| t.elapsed())
    }

    fn remove(&self, n: usize) {
        let mut bytes = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        *bytes = bytes.saturating_sub(n);
        self.taken.notify_all();
    }
}

enum Work {
    /// A batch, with the time its request arrived (for the arrival-to-finding latency), and
    /// the bytes it counts for in the queue.
    Batch(RecordBatch, i64, usize),
    /// Every batch before this one is seen: answer with the tables' files.
    Commit(SyncSender<Vec<FinishedFile>>),
    /// The input ended: emit what is pending, answer with the tables' last files, and stop.
    Finish(SyncSender<Vec<FinishedFile>>),
    /// The batches since the last commit will come again: drop their table rows.
    Discard(SyncSender<()>),
}

/// Handle on the detection thread.
pub(crate) struct DetectionThread {
    work: SyncSender<Work>,
    queued: Arc<Queued>,
    thread: Option<JoinHandle<()>>,
    metrics: Arc<ServeMetrics>,
}

fn stopped() -> ServeError {
    ServeError::Pipeline("the detection thread stopped (see the log for its panic)".into())
}

impl DetectionThread {
    /// Starts `observer` on its own thread; findings are counted into `metrics` there.
    pub(crate) fn start(
        mut observer: Box<dyn BatchObserver>,
        metrics: Arc<ServeMetrics>,
    ) -> Result<Self, ServeError> {
        metrics.telemetry.add_external(observer.counters());
        let (work, queue) = sync_channel::<Work>(QUEUE_BATCHES);
        let queued = Arc::new(Queued::default());
        let taken = queued.clone();
        let thread_metrics = metrics.clone();
        let thread = std::thread::Builder::new()
            .name("auditlake-detect".into())
            .spawn(move || {
                crate::thread_priority::lower_current_thread();
                run(observer.as_mut(), queue, &thread_metrics, &taken);
                taken.gone.store(true, std::sync::atomic::Ordering::Release);
                taken.taken.notify_all();
            })
            .map_err(|e| ServeError::Pipeline(format!("spawning the detection thread: {e}")))?;
        Ok(Self {
            work,
            queued,
            thread: Some(thread),
            metrics,
        })
    }

    /// Queues `batch` (waits while the queue is full).
    pub(crate) fn observe(
        &self,
        batch: RecordBatch,
        received_at_micros: i64,
    ) -> Result<(), ServeError> {
        let bytes = batch.get_array_memory_size();
        if let Some(waited) = self.queued.add(bytes) {
            self.metrics.telemetry.detection_queue_full(waited);
        }
        self.work
            .send(Work::Batch(batch, received_at_micros, bytes))
            .map_err(|_| stopped())
    }

    /// Waits until every queued batch is seen and returns the tables' files to commit.
    pub(crate) fn commit_files(&self) -> Result<Vec<FinishedFile>, ServeError> {
        let (answer, files) = sync_channel(1);
        self.work
            .send(Work::Commit(answer))
            .map_err(|_| stopped())?;
        files.recv().map_err(|_| stopped())
    }

    /// Drops the table rows of the batches seen since the last commit (they will be seen
    /// again after the archiver restarts from that commit).
    pub(crate) fn discard_uncommitted(&self) -> Result<(), ServeError> {
        let (answer, done) = sync_channel(1);
        self.work
            .send(Work::Discard(answer))
            .map_err(|_| stopped())?;
        done.recv().map_err(|_| stopped())
    }

    /// Sees the rest of the queue, emits pending findings (folded summaries), stops the
    /// thread and returns the tables' files to commit.
    pub(crate) fn finish(mut self) -> Result<Vec<FinishedFile>, ServeError> {
        let (answer, files) = sync_channel(1);
        self.work
            .send(Work::Finish(answer))
            .map_err(|_| stopped())?;
        let files = files.recv().map_err(|_| stopped())?;
        if let Some(t) = self.thread.take() {
            t.join().map_err(|_| stopped())?;
        }
        Ok(files)
    }
}

/// Runs `f` on the observer; a panic in a detector is logged and counted, and archiving
/// goes on (the batch's findings are lost, its events are not).
fn guarded<T>(what: &'static str, metrics: &ServeMetrics, fallback: T, f: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            metrics.telemetry.detector_failed(what, &message);
            fallback
        }
    }
}

fn run(
    observer: &mut dyn BatchObserver,
    queue: Receiver<Work>,
    metrics: &ServeMetrics,
    queued: &Queued,
) {
    while let Ok(work) = queue.recv() {
        match work {
            Work::Batch(batch, received_at, bytes) => {
                queued.remove(bytes);
                let span = tracing::debug_span!("detect", rows = batch.num_rows());
                let _g = span.enter();
                let found = guarded("observe", metrics, 0, || observer.observe(&batch));
                if found > 0 {
                    metrics.findings.inc_by(found);
                    let lag = (now_micros() - received_at).max(0) as f64 / 1e6;
                    for _ in 0..found {
                        metrics.finding_latency_seconds.observe(lag);
                    }
                }
            }
            Work::Commit(answer) => {
                // The archiver waits for this answer; if it is gone, so is the server.
                let files = guarded("commit", metrics, Vec::new(), || observer.commit_files());
                let _ = answer.send(files);
            }
            Work::Discard(answer) => {
                guarded("discard", metrics, (), || observer.discard_uncommitted());
                let _ = answer.send(());
            }
            Work::Finish(answer) => {
                let found = guarded("finish", metrics, 0, || observer.finish());
                metrics.findings.inc_by(found);
                let files = guarded("commit", metrics, Vec::new(), || observer.commit_files());
                let _ = answer.send(files);
                return;
            }
        }
    }
}
