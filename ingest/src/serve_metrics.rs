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

use crate::wal::Wal;

/// Label of an HTTP answer: its status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// HTTP status code.
    pub code: u16,
}

/// The counters, gauges and histograms of a server.
pub struct ServeMetrics {
    /// The named events of the archiving path (quarantine and events by source, the
    /// detectors' queue and failures, the detectors' own counters).
    pub telemetry: crate::telemetry::Telemetry,
    /// The Kafka source's counters and per-partition gauges.
    pub kafka: Arc<crate::kafka_metrics::KafkaMetrics>,
    /// Webhook answers by status code.
    pub http_responses: Family<StatusLabel, Counter>,
    /// Request bodies accepted (written to the WAL).
    pub batches: Counter,
    /// Decompressed bytes of accepted bodies.
    pub bytes_in: Counter,
    /// Resent events dropped as duplicates.
    pub duplicates: Counter,
    /// Events in committed Parquet files.
    pub events_committed: Counter,
    /// Manifest commits.
    pub commits: Counter,
    /// Heartbeat records written (a record with no files, attesting the source was up).
    pub heartbeats: Counter,
    /// Heartbeats written without the apiserver's audit counters (the scrape failed).
    pub apiserver_scrape_failures: Counter,
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
    /// Commit attempts that failed (each is retried).
    pub commit_failures: Counter,
    /// 1 while the last commit attempt failed, else 0.
    pub archiving_failing: Gauge,
    /// Unix time of the last failed commit attempt.
    pub last_commit_error_time: Gauge,
    /// Unix time of the last successful commit.
    pub last_commit_time: Gauge,
    /// Times the archiver was restarted after a failure.
    pub archiver_restarts: Counter,
    /// Write-ahead log records set aside after the archiver failed on them repeatedly.
    pub poison_records: Counter,
    /// Events filed under their arrival hour (request time far from arrival).
    pub events_out_of_window: Counter,
    /// Damaged write-ahead log stretches set aside at start.
    pub wal_cut_regions: Counter,
    /// Connections refused or delayed because the connection cap was reached.
    pub connections_over_cap: Counter,
    /// Connections closed by a timeout (TLS handshake, request header, idle, request).
    pub connection_timeouts: Family<TimeoutLabel, Counter>,
    wal_bytes: Gauge,
    wal_oldest_unarchived_age: Gauge,
    wal: std::sync::Mutex<Option<Wal>>,
    registry: Registry,
}

/// Label of a connection timeout: which one fired.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TimeoutLabel {
    /// `handshake`, `header`, `idle` or `request`.
    pub kind: &'static str,
}

impl ServeMetrics {
    /// Registers everything under the `auditlake_` prefix.
    pub fn new() -> Arc<Self> {
        let latency = || Histogram::new(exponential_buckets(0.000_25, 2.0, 16));
        let m = Self {
            telemetry: crate::telemetry::Telemetry::default(),
            kafka: Arc::default(),
            http_responses: Family::default(),
            batches: Counter::default(),
            bytes_in: Counter::default(),
            duplicates: Counter::default(),
            events_committed: Counter::default(),
            commits: Counter::default(),
            heartbeats: Counter::default(),
            apiserver_scrape_failures: Counter::default(),
            findings: Counter::default(),
            finding_latency_seconds: latency(),
            commit_seconds: latency(),
            wal_fsync_seconds: latency(),
            wal_group_appends: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            ack_seconds: latency(),
            commit_failures: Counter::default(),
            archiving_failing: Gauge::default(),
            last_commit_error_time: Gauge::default(),
            last_commit_time: Gauge::default(),
            archiver_restarts: Counter::default(),
            poison_records: Counter::default(),
            events_out_of_window: Counter::default(),
            wal_cut_regions: Counter::default(),
            connections_over_cap: Counter::default(),
            connection_timeouts: Family::default(),
            wal_bytes: Gauge::default(),
            wal_oldest_unarchived_age: Gauge::default(),
            wal: std::sync::Mutex::new(None),
            registry: Registry::with_prefix("auditlake"),
        };
        let mut registry = Registry::with_prefix("auditlake");
        m.telemetry.register(&mut registry);
        m.kafka.register(&mut registry);
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
            "heartbeats",
            "Heartbeat records written (the source attests it was up, busy or idle)",
            m.heartbeats.clone(),
        );
        registry.register(
            "apiserver_scrape_failures",
            "Heartbeats written without the apiserver's audit counters (its metrics endpoint failed)",
            m.apiserver_scrape_failures.clone(),
        );
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
        registry.register(
            "wal_oldest_unarchived_age_seconds",
            "Age of the oldest write-ahead log record not yet in a committed archive file (0 when none)",
            m.wal_oldest_unarchived_age.clone(),
        );
        registry.register(
            "commit_failures",
            "Commit attempts that failed (each is retried with backoff)",
            m.commit_failures.clone(),
        );
        registry.register(
            "archiving_failing",
            "1 while the last commit attempt failed",
            m.archiving_failing.clone(),
        );
        registry.register(
            "last_commit_error_timestamp_seconds",
            "Unix time of the last failed commit attempt",
            m.last_commit_error_time.clone(),
        );
        registry.register(
            "last_commit_timestamp_seconds",
            "Unix time of the last successful commit",
            m.last_commit_time.clone(),
        );
        registry.register(
            "archiver_restarts",
            "Times the archiver was restarted after a failure",
            m.archiver_restarts.clone(),
        );
        registry.register(
            "wal_poison_records",
            "Write-ahead log records set aside in the quarantine after the archiver failed on them repeatedly",
            m.poison_records.clone(),
        );
        registry.register(
            "events_out_of_window",
            "Events filed under their arrival hour because their request time was far from it",
            m.events_out_of_window.clone(),
        );
        registry.register(
            "wal_cut_regions",
            "Damaged or torn write-ahead log stretches set aside at start",
            m.wal_cut_regions.clone(),
        );
        registry.register(
            "connections_over_cap",
            "Times the connection cap held new connections back",
            m.connections_over_cap.clone(),
        );
        registry.register(
            "connection_timeouts",
            "Connections closed by a timeout, by kind",
            m.connection_timeouts.clone(),
        );
        Arc::new(Self { registry, ..m })
    }

    /// Reads the WAL's size and oldest unarchived record from `wal` when rendering.
    pub fn watch_wal(&self, wal: Wal) {
        *self.wal.lock().unwrap_or_else(|e| e.into_inner()) = Some(wal);
    }

    /// Counts a connection closed by the timeout `kind`.
    pub fn timed_out(&self, kind: &'static str) {
        self.connection_timeouts
            .get_or_create(&TimeoutLabel { kind })
            .inc();
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
        if let Some(wal) = &*self.wal.lock().unwrap_or_else(|e| e.into_inner()) {
            let bytes = wal.stats().bytes.load(Ordering::Relaxed);
            self.wal_bytes.set(bytes.min(i64::MAX as u64) as i64);
            let age = wal.oldest_unarchived_micros().map_or(0, |t| {
                (crate::pipeline::now_micros() - t).max(0) / 1_000_000
            });
            self.wal_oldest_unarchived_age.set(age);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        let external = self.telemetry.external();
        if !external.is_empty() {
            // Before the OpenMetrics end marker.
            let end = out.rfind("# EOF").unwrap_or(out.len());
            let mut extra = String::new();
            for c in external.iter() {
                let v = c.value.load(Ordering::Relaxed);
                extra.push_str(&format!(
                    "# HELP auditlake_{0} {1}.\n# TYPE auditlake_{0} counter\nauditlake_{0}_total {v}\n",
                    c.name, c.help
                ));
            }
            out.insert_str(end, &extra);
        }
        out
    }
}
