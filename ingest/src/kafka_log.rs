//! Kafka as the webhook's durable log (`serve --durable-log kafka://brokers/topic`): a
//! request body is answered 200 only once Kafka acknowledged it (idempotent producer,
//! `acks=all`, delivery report received). The receiver keeps no state; consumer-group
//! members (`serve --kafka-brokers`) archive the topic.
//!
//! Each message carries the body as sent (an EventList), the cluster in the `cluster`
//! header (what the members read by default) and the authenticated sender in
//! `auditlake-sender`.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

/// Where bodies go: `kafka://host:port[,host:port]/topic`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaTarget {
    /// Bootstrap brokers.
    pub brokers: String,
    /// Topic.
    pub topic: String,
}

impl KafkaTarget {
    /// Parses `kafka://brokers/topic`; `None` when `text` is not a `kafka://` URL.
    pub fn parse(text: &str) -> Option<Result<Self, String>> {
        let rest = text.strip_prefix("kafka://")?;
        Some(match rest.split_once('/') {
            Some((brokers, topic))
                if !brokers.is_empty() && !topic.is_empty() && !topic.contains('/') =>
            {
                Ok(Self {
                    brokers: brokers.to_string(),
                    topic: topic.to_string(),
                })
            }
            _ => Err(format!(
                "{text:?}: expected kafka://host:port[,host:port]/topic"
            )),
        })
    }

    /// An idempotent producer with `acks=all` for this target, with the user's librdkafka
    /// `properties` (TLS, SASL) applied.
    pub fn producer(
        &self,
        properties: &BTreeMap<String, String>,
    ) -> Result<FutureProducer, rdkafka::error::KafkaError> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", "auditlake")
            .set("linger.ms", "5")
            .set("compression.type", "zstd")
            .set("message.max.bytes", (32 << 20).to_string());
        for (k, v) in properties {
            c.set(k, v);
        }
        // Not overridable: a 200 must mean the body is on every in-sync replica, once.
        c.set("enable.idempotence", "true").set("acks", "all");
        c.create()
    }
}

/// The producer a webhook appends bodies to.
#[derive(Clone)]
pub struct KafkaLog {
    producer: FutureProducer,
    topic: String,
    timeout: Duration,
}

impl KafkaLog {
    /// A log on `target`; a body not acknowledged within `timeout` is answered 503.
    pub fn new(
        target: &KafkaTarget,
        properties: &BTreeMap<String, String>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let producer = target
            .producer(properties)
            .map_err(|e| format!("creating the Kafka producer for {}: {e}", target.brokers))?;
        Ok(Self {
            producer,
            topic: target.topic.clone(),
            timeout,
        })
    }

    /// Sends one body and waits for Kafka's acknowledgement; returns `partition@offset`.
    pub async fn append(
        &self,
        cluster: &str,
        identity: &str,
        body: &[u8],
    ) -> Result<String, String> {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "cluster",
                value: Some(cluster),
            })
            .insert(Header {
                key: "auditlake-sender",
                value: Some(identity),
            });
        let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&self.topic)
            .payload(body)
            .key(cluster)
            .headers(headers);
        match self.producer.send(record, self.timeout).await {
            Ok(delivery) => Ok(format!("{}@{}", delivery.partition, delivery.offset)),
            Err((e, _)) => Err(e.to_string()),
        }
    }

    /// Waits up to `timeout` for messages still in flight (at shutdown).
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::error!(error = %e, "Kafka producer: messages still in flight at shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_durable_log_url_names_brokers_and_one_topic() {
        assert_eq!(
            KafkaTarget::parse("kafka://b1:9092,b2:9092/k8s-audit"),
            Some(Ok(KafkaTarget {
                brokers: "b1:9092,b2:9092".into(),
                topic: "k8s-audit".into()
            }))
        );
        assert_eq!(KafkaTarget::parse("wal"), None);
        for bad in ["kafka://b1:9092", "kafka:///t", "kafka://b/t/x"] {
            let e = KafkaTarget::parse(bad).unwrap().unwrap_err();
            assert!(e.contains("kafka://host:port"), "{e}");
        }
    }
}
