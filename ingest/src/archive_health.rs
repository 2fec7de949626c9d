//! Whether the server takes requests and whether archiving keeps up: what `/readyz` says.
//!
//! The webhook keeps answering 200 while archiving is failing (the write-ahead log buffers
//! on disk, so nothing is lost and the apiserver spends none of its retries), but the server
//! is then *not ready*, says why, and the gauges show it: a commit that failed, or a log
//! record that has waited far longer than the flush interval.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::wal::Wal;

/// The server's state as the probes and the webhook see it.
pub struct ArchiveHealth {
    replayed: AtomicBool,
    stopping: AtomicBool,
    /// The last commit error and since when commits fail, while they do.
    failing: Mutex<Option<(Instant, String)>>,
    /// A log record older than this and not archived means archiving is stuck.
    stall_after: Duration,
    wal: Mutex<Option<Wal>>,
    /// A source's own condition for readiness (a Kafka member must hold an assignment).
    source: Mutex<Option<SourceProbe>>,
}

/// A source's readiness: `Err(why)` while it cannot archive.
pub type SourceProbe = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

impl ArchiveHealth {
    /// A server that is replaying its log; stuck once a record waits longer than `stall_after`.
    pub fn new(stall_after: Duration) -> Self {
        Self {
            replayed: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            failing: Mutex::new(None),
            stall_after,
            wal: Mutex::new(None),
            source: Mutex::new(None),
        }
    }

    /// Watches `wal` for records that wait too long.
    pub fn watch(&self, wal: Wal) {
        *lock(&self.wal) = Some(wal);
    }

    /// Adds the source's own readiness condition.
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))]
    pub fn require(&self, probe: SourceProbe) {
        *lock(&self.source) = Some(probe);
    }

    /// The log is replayed: requests are taken from now on.
    pub fn set_replayed(&self) {
        self.replayed.store(true, Ordering::Release);
    }

    /// Whether the log has been replayed.
    pub fn replayed(&self) -> bool {
        self.replayed.load(Ordering::Acquire)
    }

    /// Shutdown began: no new requests.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Whether the webhook takes requests (replayed and not stopping). Archiving failures
    /// do not stop it: the log buffers on disk.
    pub fn accepting(&self) -> bool {
        self.replayed.load(Ordering::Acquire) && !self.stopping.load(Ordering::Acquire)
    }

    /// Records a failed commit attempt.
    pub fn commit_failed(&self, error: String) {
        let mut f = lock(&self.failing);
        let since = f.as_ref().map_or_else(Instant::now, |(t, _)| *t);
        *f = Some((since, error));
    }

    /// Records a successful commit.
    pub fn commit_succeeded(&self) {
        *lock(&self.failing) = None;
    }

    /// Ready, or why not (the text `/readyz` answers with).
    pub fn readiness(&self) -> Result<(), String> {
        if self.stopping.load(Ordering::Acquire) {
            return Err("shutting down".into());
        }
        if !self.replayed.load(Ordering::Acquire) {
            return Err("replaying the write-ahead log".into());
        }
        if let Some((since, error)) = &*lock(&self.failing) {
            return Err(format!(
                "archiving is failing for {} s and is being retried; last error: {error}",
                since.elapsed().as_secs()
            ));
        }
        if let Some(probe) = &*lock(&self.source) {
            probe()?;
        }
        let oldest = lock(&self.wal)
            .as_ref()
            .and_then(Wal::oldest_unarchived_micros);
        if let Some(t) = oldest {
            let age = (crate::pipeline::now_micros() - t).max(0) as u64 / 1_000_000;
            if age > self.stall_after.as_secs() {
                return Err(format!(
                    "the oldest write-ahead log record not yet archived arrived {age} s ago \
                     (limit {} s): archiving is stuck or far behind",
                    self.stall_after.as_secs()
                ));
            }
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_while_replaying_failing_or_stopping() {
        let h = ArchiveHealth::new(Duration::from_secs(60));
        assert!(h.readiness().unwrap_err().contains("replaying"));
        assert!(!h.accepting());
        h.set_replayed();
        assert_eq!(h.readiness(), Ok(()));
        h.commit_failed("object store put events/x: permission denied".into());
        let why = h.readiness().unwrap_err();
        assert!(why.contains("archiving is failing") && why.contains("permission denied"));
        assert!(h.accepting(), "the log still buffers");
        h.commit_succeeded();
        assert_eq!(h.readiness(), Ok(()));
        h.set_stopping();
        assert!(!h.accepting());
        assert_eq!(h.readiness().unwrap_err(), "shutting down");
    }
}
