//! The hook through which the detectors see every stored batch, without this crate knowing
//! about them (dependencies point from the binary to `ingest` and `analytics`, not between).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use arrow::array::RecordBatch;

use auditlake_archive::FinishedFile;

/// Sees every batch of events on its way into the archive (after decoding and, on the
/// webhook path, after duplicate removal), in order: on the archiving thread for files, on a
/// detection thread of its own behind a bounded queue for the webhook.
pub trait BatchObserver: Send {
    /// Looks at one batch; returns how many findings it produced (for the counters).
    fn observe(&mut self, batch: &RecordBatch) -> u64;
    /// The input ended (or the server is stopping): emit what is pending; returns how many.
    fn finish(&mut self) -> u64;
    /// Files of the observer's own tables (findings, RBAC history) to commit in the same
    /// manifest record as the events seen so far; called just before each commit.
    fn commit_files(&mut self) -> Vec<FinishedFile> {
        Vec::new()
    }
    /// The batches seen since the last [`BatchObserver::commit_files`] will be seen again
    /// (the archiver restarts from its last commit): drop the table rows they produced, so
    /// the archive's tables hold them once.
    fn discard_uncommitted(&mut self) {}
    /// Counters the observer keeps (findings a sink dropped, rule errors), exposed with the
    /// server's metrics.
    fn counters(&self) -> Vec<ObserverCounter> {
        Vec::new()
    }
}

/// A counter an observer keeps, shown on `/metrics` as `auditlake_<name>_total`.
#[derive(Debug, Clone)]
pub struct ObserverCounter {
    /// Metric name without prefix or `_total` (lowercase, `_`).
    pub name: &'static str,
    /// Its help text.
    pub help: &'static str,
    /// The value, updated by the observer.
    pub value: Arc<AtomicU64>,
}
