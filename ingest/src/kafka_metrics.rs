//! What a Kafka consumer-group member counts: messages and quarantined messages per topic,
//! and per partition the offset the manifest archives, the high watermark and the lag.
//! Labels are configured topics and their partitions: bounded.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

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
#[derive(Default)]
pub struct KafkaMetrics {
    /// Messages read, per topic.
    pub messages: Family<TopicLabel, Counter>,
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

impl KafkaMetrics {
    /// Registers the metrics (names without the `auditlake_` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kafka_messages",
            "Kafka messages read, by topic",
            self.messages.clone(),
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
