//! Named internal events of the archiving path, shared by every source: each one logs what
//! happened and counts it. Labels are bounded (the kind of source, never a cluster, user or
//! path a client chose). `serve` exposes the counters on `/metrics`; `ingest` reports them
//! at its end ([`Telemetry::totals`]).

use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::observer::ObserverCounter;

/// The kind of source events came through: the one label the counters below carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKind {
    /// `auditlake ingest`: files and stdin.
    File,
    /// `auditlake serve`: the audit webhook, through its write-ahead log.
    Webhook,
    /// `auditlake serve --kafka-brokers`: a Kafka consumer group.
    Kafka,
}

impl SourceKind {
    fn label(self) -> SourceLabel {
        SourceLabel {
            source: match self {
                SourceKind::File => "file",
                SourceKind::Webhook => "webhook",
                SourceKind::Kafka => "kafka",
            },
        }
    }
}

/// Label of a per-source counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// `file`, `webhook` or `kafka`.
    pub source: &'static str,
}

/// Label of the counter of envelope records that held no audit event.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SkippedLabel {
    /// `file`, `webhook` or `kafka`.
    pub source: &'static str,
    /// Why (see [`auditlake_schema::Skipped`]).
    pub reason: &'static str,
}

/// The counters of the named events, and the detectors' own counters.
#[derive(Default)]
pub struct Telemetry {
    events_in: Family<SourceLabel, Counter>,
    envelope_skipped: Family<SkippedLabel, Counter>,
    quarantined: Family<SourceLabel, Counter>,
    quarantine_summarised: Family<SourceLabel, Counter>,
    detection_queue_full: Counter,
    detection_queue_wait_ms: Counter,
    detector_failures: Counter,
    queue_full_log: Mutex<Option<Instant>>,
    external: Mutex<Vec<ObserverCounter>>,
}

/// How often a repeated warning may be logged.
const LOG_INTERVAL: Duration = Duration::from_secs(60);

impl Telemetry {
    /// Registers the counters in `registry` (names without the `auditlake_` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "events",
            "Events decoded and written to Parquet, by source",
            self.events_in.clone(),
        );
        registry.register(
            "quarantined",
            "Events or whole inputs quarantined, by source",
            self.quarantined.clone(),
        );
        registry.register(
            "envelope_records_skipped",
            "Records of a managed cluster's log envelope that held no audit event (other log streams or categories, health checks), by source and reason",
            self.envelope_skipped.clone(),
        );
        registry.register(
            "quarantine_summarised",
            "Quarantined inputs counted in a summary record instead of one record each, by source",
            self.quarantine_summarised.clone(),
        );
        registry.register(
            "detection_queue_full",
            "Times the archiver waited because the detectors' queue was full",
            self.detection_queue_full.clone(),
        );
        registry.register(
            "detection_queue_wait_milliseconds",
            "Time the archiver spent waiting for room in the detectors' queue",
            self.detection_queue_wait_ms.clone(),
        );
        registry.register(
            "detector_failures",
            "Batches the detectors failed on (a panic); archiving went on",
            self.detector_failures.clone(),
        );
    }

    /// Events of `source` decoded and handed to the Parquet writer.
    pub fn events_in(&self, source: SourceKind, n: u64) {
        self.events_in.get_or_create(&source.label()).inc_by(n);
    }

    /// Records of an envelope read from `source` at `origin` that held no audit event, by
    /// reason. Logged at DEBUG: a log group's klog streams make many (the counter says how many).
    pub fn envelope_skipped(
        &self,
        source: SourceKind,
        origin: &str,
        skipped: &[(auditlake_schema::Skipped, u64)],
    ) {
        for (why, n) in skipped {
            let label = SkippedLabel {
                source: source.label().source,
                reason: why.as_str(),
            };
            self.envelope_skipped.get_or_create(&label).inc_by(*n);
            tracing::debug!(
                source = label.source,
                origin,
                reason = label.reason,
                records = n,
                "envelope records without an audit event skipped"
            );
        }
    }

    /// Inputs of `source` quarantined: `recorded` one by one and `summarised` only counted
    /// in a summary record. Logged at WARN with where and the first reason.
    pub fn quarantined(
        &self,
        source: SourceKind,
        origin: &str,
        recorded: u64,
        summarised: u64,
        first_reason: &str,
    ) {
        if recorded + summarised == 0 {
            return;
        }
        let label = source.label();
        self.quarantined
            .get_or_create(&label)
            .inc_by(recorded + summarised);
        self.quarantine_summarised
            .get_or_create(&label)
            .inc_by(summarised);
        tracing::warn!(
            source = label.source,
            origin,
            quarantined = recorded + summarised,
            first_reason,
            "events quarantined"
        );
    }

    /// The archiver waited `waited` for room in the detectors' queue (detection is slower
    /// than archiving). Logged at most once a minute.
    pub fn detection_queue_full(&self, waited: Duration) {
        self.detection_queue_full.inc();
        self.detection_queue_wait_ms
            .inc_by(waited.as_millis().min(u128::from(u64::MAX)) as u64);
        let mut last = self
            .queue_full_log
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= LOG_INTERVAL) {
            *last = Some(Instant::now());
            tracing::warn!(
                waited_ms = waited.as_millis() as u64,
                "the detectors' queue was full; archiving waited for detection to catch up"
            );
        }
    }

    /// A detector panicked on a batch (`stage`); its findings for the batch are lost, the
    /// events are archived.
    pub fn detector_failed(&self, stage: &'static str, message: &str) {
        self.detector_failures.inc();
        tracing::error!(stage, panic = %message,
            "a detector panicked; its findings for this batch are lost, the events are archived");
    }

    /// Adds counters the detectors keep (findings a sink dropped or failed to deliver, rule
    /// evaluation errors, state evictions).
    pub fn add_external(&self, counters: Vec<ObserverCounter>) {
        self.external
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(counters);
    }

    /// The detectors' counters, for rendering.
    pub(crate) fn external(&self) -> Vec<ObserverCounter> {
        self.external
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Every counter's total, by name (labels folded in), for a report at the end of a run.
    pub fn totals(&self) -> Vec<(String, u64)> {
        let by_source = |name: &str, f: &Family<SourceLabel, Counter>| {
            [SourceKind::File, SourceKind::Webhook]
                .into_iter()
                .map(|s| {
                    let l = s.label();
                    (
                        format!("{name}{{source={}}}", l.source),
                        f.get_or_create(&l).get(),
                    )
                })
                .collect::<Vec<_>>()
        };
        let mut out = by_source("events", &self.events_in);
        for why in auditlake_schema::Skipped::ALL {
            let label = SkippedLabel {
                source: SourceKind::File.label().source,
                reason: why.as_str(),
            };
            let n = self.envelope_skipped.get_or_create(&label).get();
            if n > 0 {
                out.push((
                    format!("envelope_records_skipped{{reason={}}}", why.as_str()),
                    n,
                ));
            }
        }
        out.extend(by_source("quarantined", &self.quarantined));
        out.extend(by_source(
            "quarantine_summarised",
            &self.quarantine_summarised,
        ));
        out.push((
            "detection_queue_full".into(),
            self.detection_queue_full.get(),
        ));
        out.push(("detector_failures".into(), self.detector_failures.get()));
        for c in self.external() {
            out.push((c.name.to_string(), c.value.load(Ordering::Relaxed)));
        }
        out
    }
}
