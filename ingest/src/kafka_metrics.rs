//! What a Kafka consumer-group member counts: messages and quarantined messages per topic;
//! per partition its messages, the offset the manifest archives, the high watermark, the
//! lag and how long its commits take; commits by why they were cut; dead letters.
//! Labels are configured topics, their partitions and fixed reasons: bounded.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Why a partition's commit ended where it did.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum CutReason {
    /// It reached `kafka_commit_messages`.
    Messages,
    /// It reached `kafka_commit_bytes`.
    Bytes,
    /// The next message's timestamp was a flush interval past its first one's.
    EventTime,
    /// The partition went quiet for a flush interval (the one timed cut).
    Quiet,
    /// The partition was read to its end right after a size cut of messages read before
    /// its end: the rest of a backlog, cut at once instead of a flush interval later.
    Drained,
    /// More than `kafka_buffer_bytes` were buffered: the largest commit was cut early.
    Pressure,
    /// The member was stopping.
    Stop,
}

impl CutReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Messages => "messages",
            Self::Bytes => "bytes",
            Self::EventTime => "event_time",
            Self::Quiet => "quiet",
            Self::Drained => "drained",
            Self::Pressure => "pressure",
            Self::Stop => "stop",
        }
    }
}

impl EncodeLabelValue for CutReason {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

/// Label of the cut counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CutLabel {
    /// Why.
    pub reason: CutReason,
}

/// Buckets of the per-partition commit latency, 10 ms to about 80 s.
fn commit_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

/// Label of a per-topic counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabel {
    /// The topic (from the configuration: bounded).
    pub topic: String,
}

/// Label of a per-partition gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
}

/// What the Kafka source counts (labels: configured topics and their partitions).
pub struct KafkaMetrics {
    /// Messages read, per topic.
    pub messages: Family<TopicLabel, Counter>,
    /// Messages read, per partition.
    pub partition_messages: Family<PartitionLabel, Counter>,
    /// Seconds from a partition's commit being cut to its manifest record being durable.
    pub commit_seconds: Family<PartitionLabel, Histogram, fn() -> Histogram>,
    /// Commits cut, by why.
    pub cuts: Family<CutLabel, Counter>,
    /// Quarantine records sent to the dead-letter topic.
    pub dead_letters: Counter,
    /// Quarantine records the dead-letter topic did not take (they stay in the quarantine).
    pub dead_letter_failures: Counter,
    /// Messages quarantined whole (too large) or with undecodable content, per topic.
    pub quarantined: Family<TopicLabel, Counter>,
    /// The last offset the manifest archives, per partition.
    pub archived_offset: Family<PartitionLabel, Gauge>,
    /// The partition's high watermark (from librdkafka's statistics).
    pub high_watermark: Family<PartitionLabel, Gauge>,
    /// High watermark minus the next offset to archive.
    pub lag: Family<PartitionLabel, Gauge>,
    /// Partitions this member holds.
    pub assigned_partitions: Gauge,
    /// Commits refused because another member had archived an overlapping range.
    pub range_conflicts: Counter,
    /// Rebalances this member went through (assignments and revocations).
    pub rebalances: Counter,
    /// Partitions found ending before the offset the archive holds them to (recreated or
    /// truncated topics).
    pub offset_regressions: Counter,
}

impl Default for KafkaMetrics {
    fn default() -> Self {
        Self {
            messages: Family::default(),
            partition_messages: Family::default(),
            commit_seconds: Family::new_with_constructor(commit_histogram),
            cuts: Family::default(),
            dead_letters: Counter::default(),
            dead_letter_failures: Counter::default(),
            quarantined: Family::default(),
            archived_offset: Family::default(),
            high_watermark: Family::default(),
            lag: Family::default(),
            assigned_partitions: Gauge::default(),
            range_conflicts: Counter::default(),
            rebalances: Counter::default(),
            offset_regressions: Counter::default(),
        }
    }
}

impl KafkaMetrics {
    /// Counts a commit cut for `reason`.
    pub fn cut(&self, reason: CutReason) {
        self.cuts.get_or_create(&CutLabel { reason }).inc();
    }

    /// Registers the metrics (names without the `auditlake_` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kafka_messages",
            "Kafka messages read, by topic",
            self.messages.clone(),
        );
        registry.register(
            "kafka_partition_messages",
            "Kafka messages read, by partition",
            self.partition_messages.clone(),
        );
        registry.register(
            "kafka_commit_seconds",
            "Seconds from a partition's commit being cut to its manifest record being durable",
            self.commit_seconds.clone(),
        );
        registry.register(
            "kafka_commit_cuts",
            "Commits cut, by why: messages, bytes and event_time depend only on the records (a replay cuts the same); quiet, pressure and stop on timing",
            self.cuts.clone(),
        );
        registry.register(
            "kafka_dead_letters",
            "Quarantined messages also sent to the dead-letter topic",
            self.dead_letters.clone(),
        );
        registry.register(
            "kafka_dead_letter_failures",
            "Quarantined messages the dead-letter topic did not take (they are in the archive's quarantine)",
            self.dead_letter_failures.clone(),
        );
        registry.register(
            "kafka_quarantined",
            "Kafka messages quarantined (too large, or holding undecodable input), by topic",
            self.quarantined.clone(),
        );
        registry.register(
            "kafka_archived_offset",
            "Last offset of the partition a committed manifest record archives",
            self.archived_offset.clone(),
        );
        registry.register(
            "kafka_high_watermark",
            "High watermark of the partition",
            self.high_watermark.clone(),
        );
        registry.register(
            "kafka_lag",
            "Messages of the partition not yet archived (high watermark minus the next offset to archive)",
            self.lag.clone(),
        );
        registry.register(
            "kafka_assigned_partitions",
            "Partitions this consumer group member holds",
            self.assigned_partitions.clone(),
        );
        registry.register(
            "kafka_range_conflicts",
            "Commits refused because another member had archived an overlapping offset range",
            self.range_conflicts.clone(),
        );
        registry.register(
            "kafka_offset_regressions",
            "Partitions found ending before the offset the archive holds them to (a recreated or truncated topic): the member is not ready",
            self.offset_regressions.clone(),
        );
        registry.register(
            "kafka_rebalances",
            "Partition assignments and revocations this member went through",
            self.rebalances.clone(),
        );
    }

    pub(crate) fn label(topic: &str, partition: i32) -> PartitionLabel {
        PartitionLabel {
            topic: topic.to_string(),
            partition,
        }
    }

    /// Records that the manifest archives `topic`/`partition` through `offset`.
    pub fn archived(&self, topic: &str, partition: i32, offset: i64) {
        let l = Self::label(topic, partition);
        self.archived_offset.get_or_create(&l).set(offset);
        let hw = self.high_watermark.get_or_create(&l).get();
        if hw > 0 {
            self.lag.get_or_create(&l).set((hw - offset - 1).max(0));
        }
    }
}
