//! What `auditlake serve` counts, exposed in Prometheus text format on the operations port.
//!
//! Labels are bounded: HTTP status codes and fixed reason kinds, never a user, cluster or
//! path a client chose.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::wal::WalStats;

/// Label of an HTTP answer: its status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// HTTP status code.
    pub code: u16,
}

/// The counters, gauges and histograms of a server.
pub struct ServeMetrics {
    /// Webhook answers by status code.
    pub http_responses: Family<StatusLabel, Counter>,
    /// Request bodies accepted (written to the WAL).
    pub batches: Counter,
    /// Decompressed bytes of accepted bodies.
    pub bytes_in: Counter,
    /// Events decoded from the log and written to Parquet.
    pub events_in: Counter,
    /// Events (or whole inputs) quarantined.
    pub quarantined: Counter,
    /// Resent events dropped as duplicates.
    pub duplicates: Counter,
    /// Events in committed Parquet files.
    pub events_committed: Counter,
    /// Manifest commits.
    pub commits: Counter,
    /// Findings the detectors emitted.
    pub findings: Counter,
    /// Time from a request's arrival to its findings being handed to the sinks.
    pub finding_latency_seconds: Histogram,
    /// Time from the first put to the manifest record being durable.
    pub commit_seconds: Histogram,
    /// Duration of one write-ahead log write + fsync.
    pub wal_fsync_seconds: Histogram,
    /// Appends that shared one fsync.
    pub wal_group_appends: Histogram,
    /// Time from a webhook request's arrival to its answer.
    pub ack_seconds: Histogram,
    wal_bytes: Gauge,
    wal: std::sync::Mutex<Option<Arc<WalStats>>>,
    registry: Registry,
}

impl ServeMetrics {
    /// Registers everything under the `auditlake_` prefix.
    pub fn new() -> Arc<Self> {
        let latency = || Histogram::new(exponential_buckets(0.000_25, 2.0, 16));
        let m = Self {
            http_responses: Family::default(),
            batches: Counter::default(),
            bytes_in: Counter::default(),
            events_in: Counter::default(),
            quarantined: Counter::default(),
            duplicates: Counter::default(),
            events_committed: Counter::default(),
            commits: Counter::default(),
            findings: Counter::default(),
            finding_latency_seconds: latency(),
            commit_seconds: latency(),
            wal_fsync_seconds: latency(),
            wal_group_appends: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            ack_seconds: latency(),
            wal_bytes: Gauge::default(),
            wal: std::sync::Mutex::new(None),
            registry: Registry::with_prefix("auditlake"),
        };
        let mut registry = Registry::with_prefix("auditlake");
        registry.register(
            "webhook_http_responses",
            "Webhook answers by HTTP status code",
            m.http_responses.clone(),
        );
        registry.register(
            "webhook_batches",
            "Request bodies accepted",
            m.batches.clone(),
        );
        registry.register(
            "webhook_bytes",
            "Decompressed bytes of accepted request bodies",
            m.bytes_in.clone(),
        );
        registry.register(
            "events",
            "Events decoded from the write-ahead log",
            m.events_in.clone(),
        );
        registry.register(
            "events_quarantined",
            "Events or inputs quarantined",
            m.quarantined.clone(),
        );
        registry.register(
            "events_duplicate",
            "Resent events dropped as duplicates",
            m.duplicates.clone(),
        );
        registry.register(
            "events_committed",
            "Events in committed Parquet files",
            m.events_committed.clone(),
        );
        registry.register("commits", "Manifest commits", m.commits.clone());
        registry.register(
            "findings",
            "Findings emitted by the detectors",
            m.findings.clone(),
        );
        registry.register(
            "finding_latency_seconds",
            "Time from a webhook request's arrival to its findings being emitted",
            m.finding_latency_seconds.clone(),
        );
        registry.register(
            "commit_seconds",
            "Time from the first put of a commit to its manifest record being durable",
            m.commit_seconds.clone(),
        );
        registry.register(
            "wal_fsync_seconds",
            "Duration of one write-ahead log write and fsync",
            m.wal_fsync_seconds.clone(),
        );
        registry.register(
            "wal_group_appends",
            "Request bodies that shared one write-ahead log fsync",
            m.wal_group_appends.clone(),
        );
        registry.register(
            "webhook_ack_seconds",
            "Time from a webhook request's arrival to its answer",
            m.ack_seconds.clone(),
        );
        registry.register(
            "wal_bytes",
            "Bytes in write-ahead log segments",
            m.wal_bytes.clone(),
        );
        Arc::new(Self { registry, ..m })
    }

    /// Reads the WAL's size from `stats` when rendering.
    pub fn watch_wal(&self, stats: Arc<WalStats>) {
        *self.wal.lock().unwrap_or_else(|e| e.into_inner()) = Some(stats);
    }

    /// Counts an HTTP answer.
    pub fn answered(&self, code: u16, elapsed: Duration) {
        self.http_responses
            .get_or_create(&StatusLabel { code })
            .inc();
        self.ack_seconds.observe(elapsed.as_secs_f64());
    }

    /// Records one group commit of the WAL.
    pub fn fsynced(&self, appends: usize, elapsed: Duration) {
        self.wal_fsync_seconds.observe(elapsed.as_secs_f64());
        self.wal_group_appends.observe(appends as f64);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        if let Some(stats) = &*self.wal.lock().unwrap_or_else(|e| e.into_inner()) {
            self.wal_bytes
                .set(stats.bytes.load(Ordering::Relaxed).min(i64::MAX as u64) as i64);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
