//! The optional dead-letter topic of a Kafka member (`kafka_dead_letter_topic`): once a
//! commit is durable, each of its quarantine records is also sent there, so the team that
//! owns the producer sees what auditlake could not read. The archive's quarantine stays the
//! record of it; a failed send is counted and logged, never retried forever.
//!
//! Each message's value is the quarantined bytes (cut as in the quarantine, see the
//! `auditlake-original-bytes` header), its key the message it came from, and its headers
//! `auditlake-reason`, `auditlake-origin`, `auditlake-cluster` and
//! `auditlake-original-bytes`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use auditlake_schema::Quarantined;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::kafka_log::KafkaTarget;
use crate::kafka_metrics::KafkaMetrics;

/// How long librdkafka may try to deliver one dead letter.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// A producer to the dead-letter topic.
pub struct DeadLetter {
    producer: FutureProducer,
    topic: String,
    metrics: Arc<KafkaMetrics>,
}

impl DeadLetter {
    /// A dead-letter producer on `brokers` (with the member's librdkafka `properties`: TLS,
    /// SASL) writing to `topic`.
    pub fn new(
        brokers: &str,
        topic: &str,
        properties: &BTreeMap<String, String>,
        metrics: Arc<KafkaMetrics>,
    ) -> Result<Self, String> {
        let target = KafkaTarget {
            brokers: brokers.to_string(),
            topic: topic.to_string(),
        };
        // The member's properties are a consumer's; the producer takes only those both
        // kinds of client know (connection, TLS, SASL).
        let shared: BTreeMap<String, String> = properties
            .iter()
            .filter(|(k, _)| !CONSUMER_ONLY.iter().any(|p| k.starts_with(p)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let producer = target
            .producer(&shared)
            .map_err(|e| format!("creating the dead-letter producer for {topic:?}: {e}"))?;
        Ok(Self {
            producer,
            topic: topic.to_string(),
            metrics,
        })
    }

    /// Sends `records` and waits for each delivery report; failures are counted and logged.
    pub fn send(&self, records: &[Quarantined]) {
        let mut pending = Vec::with_capacity(records.len());
        for q in records {
            let original = q.raw_len.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "auditlake-reason",
                    value: Some(&q.reason),
                })
                .insert(Header {
                    key: "auditlake-origin",
                    value: Some(&q.source),
                })
                .insert(Header {
                    key: "auditlake-cluster",
                    value: Some(&q.cluster),
                })
                .insert(Header {
                    key: "auditlake-original-bytes",
                    value: Some(&original),
                });
            let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&self.topic)
                .payload(q.raw.as_slice())
                .key(q.source.as_str())
                .headers(headers);
            pending.push(self.producer.send(record, DELIVERY_TIMEOUT));
        }
        let outcomes = futures::executor::block_on(futures::future::join_all(pending));
        let mut failed = 0u64;
        for outcome in outcomes {
            match outcome {
                Ok(_) => {
                    self.metrics.dead_letters.inc();
                }
                Err((e, _)) => {
                    failed += 1;
                    if failed == 1 {
                        tracing::error!(topic = %self.topic, error = %e,
                            "a quarantined message could not be sent to the dead-letter topic (it is in the archive's quarantine)");
                    }
                }
            }
        }
        if failed > 0 {
            self.metrics.dead_letter_failures.inc_by(failed);
        }
    }
}

/// Prefixes of librdkafka properties only consumers take.
const CONSUMER_ONLY: &[&str] = &[
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "auto.offset.reset",
    "partition.assignment.strategy",
    "group.",
    "fetch.",
    "queued.",
    "isolation.level",
    "check.crcs",
    "allow.auto.create.topics",
    "auto.commit.interval.ms",
    "enable.auto.",
    "consume.callback.max.messages",
    "coordinator.query.interval.ms",
];
