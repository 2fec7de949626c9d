//! `auditlake produce`: backfills audit log files into a Kafka topic, one NDJSON line (or a
//! few) per message, as a shipper would, so consumer-group members archive them. Exits only
//! once Kafka acknowledged every message (idempotent producer, `acks=all`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use crate::error::IngestError;
use crate::file_source::Input;
use crate::kafka_log::KafkaTarget;

/// What to send where.
#[derive(Debug, Clone)]
pub struct ProduceOptions {
    /// Brokers and topic.
    pub target: KafkaTarget,
    /// librdkafka properties (TLS, SASL).
    pub properties: BTreeMap<String, String>,
    /// Value of the `cluster` header of every message, if any.
    pub cluster: Option<String>,
    /// NDJSON lines per message.
    pub lines_per_message: usize,
    /// A message larger than this is not sent (counted, and the run fails).
    pub max_message_bytes: usize,
}

/// What a run sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProduceSummary {
    /// Messages Kafka acknowledged.
    pub delivered: u64,
    /// Messages Kafka did not take (after librdkafka's retries).
    pub failed: u64,
    /// Lines too large to send.
    pub oversized: u64,
    /// Lines read (blank lines skipped).
    pub lines: u64,
    /// Bytes of the messages sent.
    pub bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// Counts delivery reports.
#[derive(Default)]
struct Reports {
    delivered: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.delivered.fetch_add(1, Ordering::Relaxed),
            Err((e, _)) => {
                if self.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::error!(error = %e, "Kafka did not take a message (further failures are counted)");
                }
                0
            }
        };
    }
}

/// Sends every line of `inputs`; returns once every message is acknowledged or failed.
pub fn produce(inputs: &[Input], options: &ProduceOptions) -> Result<ProduceSummary, IngestError> {
    let started = Instant::now();
    let kafka = |e: KafkaError| IngestError::Pipeline(format!("Kafka producer: {e}"));
    let mut c = rdkafka::ClientConfig::new();
    c.set("bootstrap.servers", &options.target.brokers)
        .set("client.id", "auditlake-produce")
        .set("linger.ms", "20")
        .set("batch.size", (1 << 20).to_string())
        .set("compression.type", "zstd")
        .set(
            "message.max.bytes",
            (options.max_message_bytes + 1024).to_string(),
        );
    for (k, v) in &options.properties {
        c.set(k, v);
    }
    c.set("enable.idempotence", "true").set("acks", "all");
    let producer: ThreadedProducer<Reports> =
        c.create_with_context(Reports::default()).map_err(kafka)?;
    let reports = producer.context().clone();
    let headers = options.cluster.as_ref().map(|cluster| {
        OwnedHeaders::new().insert(Header {
            key: "cluster",
            value: Some(cluster.as_str()),
        })
    });
    let mut summary = ProduceSummary::default();
    let mut message = Vec::new();
    let mut in_message = 0usize;
    let mut line = Vec::new();
    let mut last_log = Instant::now();
    let send = |message: &mut Vec<u8>, summary: &mut ProduceSummary| -> Result<(), IngestError> {
        let mut record: BaseRecord<'_, (), [u8]> =
            BaseRecord::to(&options.target.topic).payload(message.as_slice());
        if let Some(h) = &headers {
            record = record.headers(h.clone());
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    // The local queue is full: wait for deliveries to make room.
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(kafka(e)),
            }
        }
        summary.bytes += message.len() as u64;
        message.clear();
        Ok(())
    };
    for input in inputs {
        let mut reader = input.open()?;
        while let Some(info) = reader.next_line(&mut line, options.max_message_bytes + 1)? {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            summary.lines += 1;
            if info.len as usize > options.max_message_bytes {
                summary.oversized += 1;
                tracing::error!(input = %input.name(), line = info.line_no, bytes = info.len,
                    limit = options.max_message_bytes, "line too large for one message: not sent");
                continue;
            }
            if !message.is_empty()
                && (in_message >= options.lines_per_message
                    || message.len() + line.len() + 1 > options.max_message_bytes)
            {
                send(&mut message, &mut summary)?;
                in_message = 0;
            }
            if !message.is_empty() {
                message.push(b'\n');
            }
            message.extend_from_slice(&line);
            in_message += 1;
            if last_log.elapsed() >= Duration::from_secs(10) {
                last_log = Instant::now();
                tracing::info!(
                    lines = summary.lines,
                    delivered = reports.delivered.load(Ordering::Relaxed),
                    "producing"
                );
            }
        }
    }
    if !message.is_empty() {
        send(&mut message, &mut summary)?;
    }
    // Every message is acknowledged or failed once the queue is empty.
    while producer.in_flight_count() > 0 {
        producer.flush(Duration::from_secs(1)).ok();
    }
    summary.delivered = reports.delivered.load(Ordering::Relaxed);
    summary.failed = reports.failed.load(Ordering::Relaxed);
    summary.elapsed = started.elapsed();
    Ok(summary)
}
