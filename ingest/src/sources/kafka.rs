//! Kafka as a source: a consumer-group member (librdkafka) whose progress lives in the
//! archive, not in Kafka.
//!
//! - On assignment each partition starts at the offset after the newest one the manifest
//!   archives ([`auditlake_archive::KafkaProgress`]); a partition the manifest has never
//!   seen starts at the group's committed offset, else at `auto.offset.reset` (earliest).
//! - Each commit's [`SourceMark::Kafka`] names the offset ranges it archives; the archive
//!   refuses a record whose ranges overlap an earlier record's, so a zombie member and its
//!   replacement can never both archive a range (the loser re-reads from the manifest).
//! - Offsets are committed to Kafka only after the manifest record is durable
//!   ([`OffsetCommitter`]), for lag monitoring; nothing reads them back except for a
//!   partition the manifest does not know.
//! - On revocation the archiver is told ([`Pulled::Revoked`]) and commits what it holds at
//!   once; if another member gets its record in first, this one's commit is refused and it
//!   re-reads, so no range is archived twice either way.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use auditlake_archive::{Archive, KafkaRange, SourceMark};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Message, Offset, Statistics};

use super::{Durable, Marker, Position, Pulled, Shape, Source, SourceError, SourceRecord};
pub use crate::kafka_metrics::{KafkaMetrics, PartitionLabel, TopicLabel};
use crate::telemetry::SourceKind;

/// librdkafka properties auditlake sets itself: giving them is an error, since the
/// archive's exactly-once depends on them.
const RESERVED: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "enable.partition.eof",
];

/// How to join the group and where records' clusters come from.
#[derive(Debug, Clone)]
pub struct KafkaSourceOptions {
    /// Bootstrap brokers, `host:port,...`.
    pub brokers: String,
    /// Topics to consume.
    pub topics: Vec<String>,
    /// Consumer group.
    pub group: String,
    /// Any librdkafka property (TLS, SASL, timeouts), applied over auditlake's defaults.
    pub properties: BTreeMap<String, String>,
    /// Message header naming a message's cluster (empty: none is read).
    pub cluster_header: String,
    /// Cluster of each topic, when no header names it.
    pub topic_clusters: BTreeMap<String, String>,
    /// Cluster when neither a header nor the topic map names one.
    pub default_cluster: String,
    /// Larger message values are quarantined (their start kept) instead of decoded.
    pub max_message_bytes: usize,
}

impl KafkaSourceOptions {
    /// The consumer's configuration: auditlake's defaults, then the user's properties.
    pub fn client_config(&self) -> Result<ClientConfig, SourceError> {
        if let Some(k) = self
            .properties
            .keys()
            .find(|k| RESERVED.contains(&k.as_str()))
        {
            return Err(SourceError(format!(
                "kafka option {k:?} is set by auditlake (use --kafka-brokers and --kafka-group; \
                 offsets are stored only once archived)"
            )));
        }
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("group.id", &self.group)
            .set("client.id", "auditlake")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest")
            .set("statistics.interval.ms", "5000");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        Ok(c)
    }
}

/// What the rebalance callback and the source share.
#[derive(Default)]
struct Shared {
    /// The next offset to hand out, per partition held (or held earlier in this session).
    next: HashMap<(String, i32), i64>,
    /// Partitions revoked since the last pull.
    revoked: Vec<i32>,
    /// Partitions held now.
    assigned: usize,
    /// Whether the group has assigned anything yet (or told us there is nothing for us).
    joined: bool,
    /// The manifest could not be read at an assignment: the run must restart.
    failed: Option<String>,
    /// Partitions whose log ends before the offset the manifest archives (the topic was
    /// deleted and created again, or truncated): their new messages would be taken for
    /// archived ones, so the member says so and is not ready.
    regressed: Vec<String>,
}

/// The consumer's context: assigns partitions at the offsets the manifest says.
pub struct ArchiveContext {
    archive: Archive,
    handle: tokio::runtime::Handle,
    shared: Mutex<Shared>,
    metrics: Arc<KafkaMetrics>,
}

impl ArchiveContext {
    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        // Poisoned only by a panic while holding it; the maps are still usable.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The start offset of each partition in `tpl`, from the manifest (and this session's
    /// own reading, which may be ahead of the manifest while a commit is in flight).
    fn position(&self, tpl: &mut TopicPartitionList) -> Vec<((String, i32), i64)> {
        let progress = match self.handle.block_on(self.archive.kafka_progress()) {
            Ok(p) => p,
            Err(e) => {
                self.shared().failed = Some(format!(
                    "reading the archived Kafka offsets from the manifest at a partition \
                     assignment: {e}"
                ));
                return Vec::new();
            }
        };
        let mut starts = Vec::new();
        {
            let mut shared = self.shared();
            for e in tpl.elements() {
                let key = (e.topic().to_string(), e.partition());
                let archived = progress.through.get(&key).map(|t| t + 1);
                // This session's own reading may be ahead while its commit is in flight.
                let start = archived.max(shared.next.get(&key).copied());
                if let Some(t) = progress.through.get(&key) {
                    self.metrics.archived(&key.0, key.1, *t);
                }
                tracing::info!(topic = %key.0, partition = key.1, start_offset = ?start,
                    "partition assigned; reading from the offset after the last archived one");
                match start {
                    Some(s) => shared.next.insert(key.clone(), s),
                    None => shared.next.remove(&key),
                };
                starts.push((key, start));
            }
        }
        let mut archived = Vec::new();
        for ((topic, partition), start) in starts {
            let offset = start.map_or(Offset::Stored, Offset::Offset);
            if let Err(e) = tpl.set_partition_offset(&topic, partition, offset) {
                self.shared().failed = Some(format!("seeking {topic}/{partition}: {e}"));
            }
            if let Some(start) = start {
                archived.push(((topic, partition), start));
            }
        }
        archived
    }

    /// Fails closed on a partition whose log now ends before where the manifest says it
    /// resumes: Kafka would hand out new messages at offsets already archived.
    fn check_watermarks(&self, consumer: &BaseConsumer<Self>, starts: &[((String, i32), i64)]) {
        for ((topic, partition), start) in starts {
            match consumer.fetch_watermarks(topic, *partition, Duration::from_secs(5)) {
                Ok((_, high)) if high < *start => {
                    let problem = format!(
                        "{topic}/{partition} ends at offset {high}, before offset {start} up to \
                         which the archive holds it: the topic was deleted and created again or \
                         truncated, and its new messages would be taken for archived ones. \
                         Archive it under a new topic name (or into a new archive)"
                    );
                    tracing::error!("{problem}");
                    self.metrics.offset_regressions.inc();
                    self.shared().regressed.push(problem);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(topic = %topic, partition, error = %e,
                    "could not read the partition's watermarks at assignment"),
            }
        }
    }
}

impl ClientContext for ArchiveContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition < 0 || p.hi_offset < 0 {
                    continue;
                }
                let l = KafkaMetrics::label(topic, *partition);
                self.metrics
                    .high_watermark
                    .get_or_create(&l)
                    .set(p.hi_offset);
                let archived = self.metrics.archived_offset.get_or_create(&l).get();
                self.metrics
                    .lag
                    .get_or_create(&l)
                    .set((p.hi_offset - archived - 1).max(0));
            }
        }
    }
}

impl ConsumerContext for ArchiveContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        self.metrics.rebalances.inc();
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let outcome = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let starts = self.position(tpl);
                self.check_watermarks(consumer, &starts);
                let n = tpl.count();
                {
                    let mut s = self.shared();
                    s.assigned = if cooperative { s.assigned + n } else { n };
                    s.joined = true;
                    self.metrics.assigned_partitions.set(s.assigned as i64);
                }
                if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(partitions = ?parts, lost = consumer.assignment_lost(),
                    "partitions revoked; committing what was read from them");
                {
                    let mut s = self.shared();
                    s.revoked.extend(parts);
                    s.assigned = if cooperative {
                        s.assigned.saturating_sub(tpl.count())
                    } else {
                        0
                    };
                    self.metrics.assigned_partitions.set(s.assigned as i64);
                }
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::error!(error = ?other, "Kafka rebalance error");
                Ok(())
            }
        };
        if let Err(e) = outcome {
            self.shared().failed = Some(format!("applying a partition assignment: {e}"));
        }
    }
}

/// The consumer, shared by the source and the offset committer.
type Member = BaseConsumer<ArchiveContext>;

/// A consumer-group member yielding its messages as records.
pub struct KafkaSource {
    consumer: Arc<Member>,
    options: KafkaSourceOptions,
    metrics: Arc<KafkaMetrics>,
    /// A message read together with a revocation, handed out at the next pull.
    stashed: Option<SourceRecord>,
    /// Each topic's message counter, by its index in `options.topics` (no label built per
    /// message).
    topic_messages: Vec<prometheus_client::metrics::counter::Counter>,
    /// This member's run, in its file names (see [`OffsetMarker::stem`]).
    run: String,
}

impl KafkaSource {
    /// Joins the group and subscribes to the topics. `archive` says where each partition
    /// resumes; `handle` runs its reads (the source itself runs on a plain thread).
    pub fn join(
        options: KafkaSourceOptions,
        archive: Archive,
        handle: tokio::runtime::Handle,
        metrics: Arc<KafkaMetrics>,
    ) -> Result<Self, SourceError> {
        if options.topics.is_empty() {
            return Err(SourceError("no Kafka topic given (--kafka-topic)".into()));
        }
        let context = ArchiveContext {
            archive,
            handle,
            shared: Mutex::default(),
            metrics: metrics.clone(),
        };
        let consumer: Member = options
            .client_config()?
            .create_with_context(context)
            .map_err(|e| SourceError(format!("creating the Kafka consumer: {e}")))?;
        let topics: Vec<&str> = options.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| SourceError(format!("subscribing to {topics:?}: {e}")))?;
        tracing::info!(brokers = %options.brokers, topics = ?options.topics, group = %options.group,
            "joined the Kafka consumer group");
        let topic_messages = options
            .topics
            .iter()
            .map(|topic| {
                metrics
                    .messages
                    .get_or_create(&TopicLabel {
                        topic: topic.clone(),
                    })
                    .clone()
            })
            .collect();
        Ok(Self {
            consumer: Arc::new(consumer),
            options,
            metrics,
            stashed: None,
            topic_messages,
            run: crate::pipeline::new_writer_id(),
        })
    }

    /// The callback that commits offsets to Kafka once their manifest record is durable.
    pub fn offset_committer(&self) -> Arc<dyn Durable> {
        Arc::new(OffsetCommitter {
            consumer: self.consumer.clone(),
            group: self.options.group.clone(),
            metrics: self.metrics.clone(),
        })
    }

    /// Whether the member holds partitions now, or has joined and was given none (more
    /// members than partitions): what `/readyz` reports.
    pub fn readiness(&self) -> ReadinessProbe {
        ReadinessProbe(self.consumer.clone())
    }

    /// The cluster of a message: its header, its topic's entry, or the default.
    fn cluster_of(&self, m: &BorrowedMessage<'_>) -> String {
        if !self.options.cluster_header.is_empty()
            && let Some(headers) = m.headers()
        {
            for h in headers.iter() {
                if h.key == self.options.cluster_header
                    && let Some(v) = h.value.and_then(|v| std::str::from_utf8(v).ok())
                    && !v.is_empty()
                {
                    return v.to_string();
                }
            }
        }
        self.options
            .topic_clusters
            .get(m.topic())
            .unwrap_or(&self.options.default_cluster)
            .clone()
    }

    fn record(&self, m: &BorrowedMessage<'_>, topic_index: u16) -> SourceRecord {
        let payload = m.payload().unwrap_or_default();
        let key = m
            .key()
            .map(|k| String::from_utf8_lossy(&k[..k.len().min(128)]).into_owned());
        let origin = match key {
            Some(k) => format!(
                "kafka {}/{}@{} key={k:?}",
                m.topic(),
                m.partition(),
                m.offset()
            ),
            None => format!("kafka {}/{}@{}", m.topic(), m.partition(), m.offset()),
        };
        let (body, shape) = if payload.len() > self.options.max_message_bytes {
            (
                payload[..self.options.max_message_bytes.min(4096)].to_vec(),
                Shape::Oversized {
                    full_len: payload.len() as u64,
                },
            )
        } else {
            (payload.to_vec(), Shape::Document)
        };
        SourceRecord {
            body,
            shape,
            cluster: self.cluster_of(m),
            origin,
            line: None,
            byte_offset: 0,
            position: Position::Kafka {
                topic: topic_index,
                partition: m.partition(),
                offset: m.offset(),
            },
            // Arrival here, not the producer's clock.
            received_at_micros: crate::pipeline::now_micros(),
            archived: false,
        }
    }
}

/// Answers whether the member is ready (see [`KafkaSource::readiness`]).
#[derive(Clone)]
pub struct ReadinessProbe(Arc<Member>);

impl ReadinessProbe {
    /// `Ok` while the member holds partitions or the group gave it none; else why not.
    pub fn check(&self) -> Result<(), String> {
        let s = self.0.context().shared();
        if let Some(problem) = s.regressed.first() {
            return Err(problem.clone());
        }
        if s.assigned > 0 || s.joined {
            Ok(())
        } else {
            Err("not yet assigned partitions by the Kafka consumer group".into())
        }
    }
}

impl Source for KafkaSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Kafka
    }

    /// Shippers deliver at least once: a message may hold events sent before.
    fn resends(&self) -> bool {
        true
    }

    fn pull(&mut self, wait: Duration) -> Result<Pulled, SourceError> {
        if let Some(r) = self.stashed.take() {
            return Ok(Pulled::Record(r));
        }
        let deadline = std::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let polled = self.consumer.poll(left);
            let ctx = self.consumer.context();
            let record = match polled {
                Some(Ok(m)) => {
                    let key = (m.topic().to_string(), m.partition());
                    let mut s = ctx.shared();
                    let next = s.next.get(&key).copied();
                    // Below the start: archived already (a message fetched before the seek).
                    if next.is_some_and(|n| m.offset() < n) {
                        None
                    } else {
                        s.next.insert(key, m.offset() + 1);
                        drop(s);
                        let topic_index = self
                            .options
                            .topics
                            .iter()
                            .position(|t| t == m.topic())
                            .unwrap_or(0) as u16;
                        if let Some(c) = self.topic_messages.get(topic_index as usize) {
                            c.inc();
                        }
                        Some(self.record(&m, topic_index))
                    }
                }
                Some(Err(e)) => {
                    // librdkafka retries broker errors itself; they are worth a line, not
                    // the end of the run.
                    tracing::warn!(error = %e, "Kafka consumer error");
                    None
                }
                None => None,
            };
            let mut s = ctx.shared();
            if let Some(why) = s.failed.take() {
                return Err(SourceError(why));
            }
            if !s.revoked.is_empty() {
                let parts = std::mem::take(&mut s.revoked);
                self.stashed = record;
                return Ok(Pulled::Revoked(parts));
            }
            drop(s);
            if let Some(r) = record {
                return Ok(Pulled::Record(r));
            }
            if left.is_zero() {
                return Ok(Pulled::Idle);
            }
        }
    }

    fn marker(&self) -> Box<dyn Marker> {
        Box::new(OffsetMarker {
            group: self.options.group.clone(),
            topics: self.options.topics.clone(),
            run: self.run.clone(),
            ranges: BTreeMap::new(),
            first: None,
        })
    }
}

/// Gathers the offset range of each partition in a commit.
struct OffsetMarker {
    group: String,
    topics: Vec<String>,
    run: String,
    /// (topic index, partition) -> (first, last) offset.
    ranges: BTreeMap<(u16, i32), (i64, i64)>,
    /// The commit's first record: names its files.
    first: Option<(u16, i32, i64)>,
}

impl Marker for OffsetMarker {
    fn add(&mut self, position: &Position, _origin: &str, _byte_offset: u64) {
        if let Position::Kafka {
            topic,
            partition,
            offset,
        } = *position
        {
            let r = self
                .ranges
                .entry((topic, partition))
                .or_insert((offset, offset));
            r.0 = r.0.min(offset);
            r.1 = r.1.max(offset);
            self.first.get_or_insert((topic, partition, offset));
        }
    }

    /// `<topic>-p<partition>-<first offset>-<run>`: from the commit's first message, and
    /// this member's run. Two members holding the same range (a zombie and its
    /// replacement) cut their commits differently: without the run one's puts would
    /// overwrite the other's committed files before the manifest refused its record.
    fn stem(&self) -> Option<String> {
        self.first.map(|(t, p, o)| {
            let topic = self.topics.get(t as usize).map_or("kafka", String::as_str);
            let topic = auditlake_archive::escape_partition_value(topic);
            format!("{topic}-p{p}-{o:012}-{}", self.run)
        })
    }

    fn take(&mut self) -> Option<SourceMark> {
        self.first = None;
        if self.ranges.is_empty() {
            return None;
        }
        let ranges = std::mem::take(&mut self.ranges)
            .into_iter()
            .map(
                |((t, partition), (from_offset, through_offset))| KafkaRange {
                    topic: self.topics.get(t as usize).cloned().unwrap_or_default(),
                    partition,
                    from_offset,
                    through_offset,
                },
            )
            .collect();
        Some(SourceMark::Kafka {
            group: self.group.clone(),
            ranges,
        })
    }
}

/// Commits offsets to Kafka once the manifest archives them (for lag monitoring only: the
/// manifest stays the source of truth).
pub struct OffsetCommitter {
    consumer: Arc<Member>,
    group: String,
    metrics: Arc<KafkaMetrics>,
}

impl Durable for OffsetCommitter {
    fn durable(&self, mark: &SourceMark) -> Result<u64, SourceError> {
        let SourceMark::Kafka { group, ranges } = mark else {
            return Ok(0);
        };
        if *group != self.group {
            return Ok(0);
        }
        let mut tpl = TopicPartitionList::new();
        for r in ranges {
            self.metrics
                .archived(&r.topic, r.partition, r.through_offset);
            tpl.add_partition_offset(&r.topic, r.partition, Offset::Offset(r.through_offset + 1))
                .map_err(|e| SourceError(format!("offsets of {}/{}: {e}", r.topic, r.partition)))?;
        }
        // A partition revoked meanwhile refuses the commit; its new owner commits later.
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(error = %e, "committing offsets to Kafka (they are archived; Kafka's copy is only for lag monitoring)");
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_names_each_partitions_range_and_the_files_take_the_first_offset_and_the_run() {
        let mut m = OffsetMarker {
            group: "g".into(),
            topics: vec!["audit".into(), "audit-eu".into()],
            run: "r1".into(),
            ranges: BTreeMap::new(),
            first: None,
        };
        assert_eq!(m.take(), None, "nothing read: no mark");
        for (t, p, o) in [(0, 2, 40), (0, 1, 7), (0, 2, 41), (1, 0, 3), (0, 2, 42)] {
            m.add(
                &Position::Kafka {
                    topic: t,
                    partition: p,
                    offset: o,
                },
                "",
                0,
            );
        }
        assert_eq!(m.stem().as_deref(), Some("audit-p2-000000000040-r1"));
        let Some(SourceMark::Kafka { group, ranges }) = m.take() else {
            panic!("a Kafka mark")
        };
        assert_eq!(group, "g");
        let got: Vec<(&str, i32, i64, i64)> = ranges
            .iter()
            .map(|r| {
                (
                    r.topic.as_str(),
                    r.partition,
                    r.from_offset,
                    r.through_offset,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("audit", 1, 7, 7),
                ("audit", 2, 40, 42),
                ("audit-eu", 0, 3, 3)
            ]
        );
        assert_eq!(m.stem(), None);
        assert_eq!(m.take(), None, "a mark covers each record once");
    }

    #[test]
    fn properties_auditlake_relies_on_cannot_be_overridden() {
        let mut o = KafkaSourceOptions {
            brokers: "b:9092".into(),
            topics: vec!["t".into()],
            group: "g".into(),
            properties: BTreeMap::new(),
            cluster_header: String::new(),
            topic_clusters: BTreeMap::new(),
            default_cluster: "default".into(),
            max_message_bytes: 1 << 20,
        };
        o.properties
            .insert("security.protocol".into(), "SASL_SSL".into());
        let c = o.client_config().unwrap();
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        o.properties
            .insert("enable.auto.commit".into(), "true".into());
        let e = o.client_config().unwrap_err().to_string();
        assert!(e.contains("enable.auto.commit"), "{e}");
    }
}
