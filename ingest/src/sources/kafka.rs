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
//! - Each commit holds one partition's messages, cut by the records themselves
//!   ([`CommitCuts`]): so many messages, so many bytes, or a message whose timestamp is a
//!   flush interval past the first one's. A replay after a crash therefore cuts the same
//!   commits and files. Only a partition that has gone quiet (read to its end, or the whole
//!   consumer idle) is cut by the clock, within `flush_interval_seconds`; memory pressure
//!   (more buffered than `buffer_bytes`) cuts the largest partition early, counted. A
//!   partition that reaches its end right after a size cut of messages all read before
//!   its end (the end of a backlog) is cut then, not a flush interval later: a replay of a
//!   backlog may cut its last commit at a different message, as the clock may; either way
//!   no range is archived twice.
//! - On revocation the archiver is told ([`Pulled::Revoked`]) and commits what it holds at
//!   once (only whole cut commits are ever handed to it); what a revoked partition had
//!   buffered is dropped, for its new owner to read from the manifest's offset. If another
//!   member gets its record in first, this one's commit is refused and it re-reads, so no
//!   range is archived twice either way.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use auditlake_archive::{Archive, KafkaRange, SourceMark};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Message, Offset, Statistics};

use super::{Durable, Marker, Position, Pulled, Shape, Source, SourceError, SourceRecord};
use crate::kafka_dead_letter::DeadLetter;
pub use crate::kafka_metrics::{CutReason, KafkaMetrics, PartitionLabel, TopicLabel};
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
    /// Where each partition's commits end.
    pub cuts: CommitCuts,
    /// Topic that quarantined messages are also sent to once archived (empty: none).
    pub dead_letter_topic: String,
}

/// Where a partition's commits end: every limit but the quiet one is a function of the
/// records, so a replay cuts the same commits.
#[derive(Debug, Clone)]
pub struct CommitCuts {
    /// A commit holds at most this many messages of its partition.
    pub max_messages: usize,
    /// A commit ends once its messages' values reach this many bytes.
    pub max_bytes: u64,
    /// A message whose timestamp is this far past the commit's first message starts a new
    /// commit; a quiet partition's messages are committed this long after the first arrived.
    pub interval: Duration,
    /// Messages buffered over all partitions beyond this many bytes cut the largest
    /// partition's commit early (the one cut that depends on timing).
    pub buffer_bytes: u64,
}

impl Default for CommitCuts {
    fn default() -> Self {
        Self {
            max_messages: 100_000,
            max_bytes: 16 << 20,
            interval: Duration::from_secs(30),
            buffer_bytes: 256 << 20,
        }
    }
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
            // Where a partition is read to its end, a quiet commit may be cut by the clock.
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            // librdkafka stops fetching for this long once its queue is full (1 s by
            // default): a member that decodes slower than the broker serves, as every
            // archiver does on a backlog, then sat idle ~40% of the time (measured with
            // benches/kafka_load.sh). A short back-off keeps the queue fed; the queue's size
            // limits still bound memory.
            .set("fetch.queue.backoff.ms", "20")
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
    revoked: Vec<(String, i32)>,
    /// When each commit was cut, by (topic, partition, last offset): its latency is
    /// observed once the offsets are durable.
    cut_at: HashMap<(String, i32, i64), Instant>,
    /// Partitions held now.
    assigned: usize,
    /// Whether the group has assigned anything yet (or told us there is nothing for us).
    joined: bool,
    /// Statistics in a row that showed a partition's high watermark below its next offset.
    low_watermarks: HashMap<(String, i32), u32>,
    /// The manifest could not be read at an assignment: the run must restart.
    failed: Option<String>,
    /// Partitions whose log went back below the offset the manifest archives (the topic was
    /// deleted and created again, or truncated), and what to tell the operator.
    regressed: BTreeMap<(String, i32), String>,
}

impl Shared {
    /// Records that `key`'s log went back: `what` happened where offset `next` was due.
    fn regression(&mut self, key: &(String, i32), what: &str, next: i64, metrics: &KafkaMetrics) {
        if self.regressed.contains_key(key) {
            return;
        }
        let (topic, partition) = key;
        let problem = format!(
            "{topic}/{partition} {what}, below offset {next} up to which the archive holds \
             it: the topic was deleted and created again or truncated, and its new messages \
             would be taken for archived ones, so none is archived. Archive it under a new \
             topic name (or into a new archive)"
        );
        tracing::error!("{problem}");
        metrics.offset_regressions.inc();
        self.regressed.insert(key.clone(), problem);
    }
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
    fn position(&self, tpl: &mut TopicPartitionList) {
        let progress = match self.handle.block_on(self.archive.kafka_progress()) {
            Ok(p) => p,
            Err(e) => {
                self.shared().failed = Some(format!(
                    "reading the archived Kafka offsets from the manifest at a partition \
                     assignment: {e}"
                ));
                return;
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
        for ((topic, partition), start) in starts {
            let offset = start.map_or(Offset::Stored, Offset::Offset);
            if let Err(e) = tpl.set_partition_offset(&topic, partition, offset) {
                self.shared().failed = Some(format!("seeking {topic}/{partition}: {e}"));
            }
        }
    }
}

impl ArchiveContext {
    /// A partition whose log (as the fetches see it) ends before the offset due next went
    /// back: a broker that answers fetches past the end with nothing, rather than an
    /// out-of-range error, shows it only this way. Twice in a row, so a high watermark from
    /// before a new assignment's first fetch is not taken for one.
    fn check_high_watermark(&self, topic: &str, partition: i32, high: i64) {
        let mut s = self.shared();
        let key = (topic.to_string(), partition);
        match s.next.get(&key).copied() {
            Some(next) if high < next => {
                let seen = s.low_watermarks.entry(key.clone()).or_default();
                *seen += 1;
                if *seen >= 2 {
                    let what = format!("ends at offset {high}");
                    s.regression(&key, &what, next, &self.metrics);
                }
            }
            _ => {
                s.low_watermarks.remove(&key);
            }
        }
    }
}

impl ClientContext for ArchiveContext {
    /// librdkafka also reports each partition read to its end as a global error; the
    /// source takes that from `poll`, so it is no error here.
    fn error(&self, error: KafkaError, reason: &str) {
        match error {
            KafkaError::Global(rdkafka::error::RDKafkaErrorCode::PartitionEOF) => {}
            e => tracing::error!(error = %e, reason, "librdkafka error"),
        }
    }

    fn stats(&self, statistics: Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition < 0 || p.hi_offset < 0 {
                    continue;
                }
                if p.desired {
                    self.check_high_watermark(topic, *partition, p.hi_offset);
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
                self.position(tpl);
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
                let parts: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect();
                tracing::info!(partitions = ?parts, lost = consumer.assignment_lost(),
                    "partitions revoked; committing what was cut from them, leaving the rest to their next owner");
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

/// A consumer-group member yielding its messages as records, one partition's commit at a
/// time.
pub struct KafkaSource {
    consumer: Arc<Member>,
    options: KafkaSourceOptions,
    metrics: Arc<KafkaMetrics>,
    /// Each topic's message counter, by its index in `options.topics` (no label built per
    /// message).
    topic_messages: Vec<prometheus_client::metrics::counter::Counter>,
    /// Each partition's message counter, resolved once per partition.
    partition_messages: HashMap<(u16, i32), prometheus_client::metrics::counter::Counter>,
    /// This member's run, in its file names (see [`OffsetMarker::stem`]).
    run: String,
    /// Messages read but not yet cut into a commit, per (topic index, partition).
    chunks: BTreeMap<(u16, i32), Chunk>,
    /// Bytes held in `chunks`.
    buffered: u64,
    /// Partition numbers read to their end since their last message (librdkafka's
    /// end-of-partition event names no topic: with several topics this errs toward cutting
    /// a quiet commit early, never toward holding one back).
    at_end: HashSet<i32>,
    /// Each partition's last commit, as the next one needs it.
    last_cut: HashMap<(u16, i32), LastCut>,
    /// When the last message of any partition arrived.
    last_message: Instant,
    /// Cut commits and revocations, handed out one per pull.
    out: VecDeque<Pulled>,
    /// Shutting down: cut everything buffered, then end.
    stopping: bool,
}

/// A partition's messages since its last cut.
struct Chunk {
    records: Vec<SourceRecord>,
    bytes: u64,
    /// The first message's timestamp (ms), when messages carry one.
    first_timestamp_ms: Option<i64>,
    opened: Instant,
    /// The partition was read to its end while these messages came in: they are a live
    /// stream's, not a backlog's.
    reached_end: bool,
}

/// What a partition's last commit tells its next one.
struct LastCut {
    /// How many messages it held (at most `max_messages`): the next list is sized so.
    len: usize,
    /// It was cut by its size (or memory pressure) with the partition never read to its end
    /// meanwhile: the partition is reading a backlog, and what is left of it when the end
    /// is read is cut then ([`CutReason::Drained`]), not a flush interval later. A live
    /// stream reaches its end as its commits fill, and a trickle's are cut by time, so
    /// neither gets an early commit this way.
    backlog: bool,
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
            topic_messages,
            partition_messages: HashMap::new(),
            run: crate::pipeline::new_writer_id(),
            chunks: BTreeMap::new(),
            buffered: 0,
            at_end: HashSet::new(),
            last_cut: HashMap::new(),
            last_message: Instant::now(),
            out: VecDeque::new(),
            stopping: false,
        })
    }

    /// The callback that commits offsets to Kafka once their manifest record is durable,
    /// and sends quarantined messages to the dead-letter topic, if one is configured.
    pub fn offset_committer(&self) -> Result<Arc<dyn Durable>, SourceError> {
        let dead_letter = if self.options.dead_letter_topic.is_empty() {
            None
        } else {
            Some(
                DeadLetter::new(
                    &self.options.brokers,
                    &self.options.dead_letter_topic,
                    &self.options.properties,
                    self.metrics.clone(),
                )
                .map_err(SourceError)?,
            )
        };
        Ok(Arc::new(OffsetCommitter {
            consumer: self.consumer.clone(),
            group: self.options.group.clone(),
            metrics: self.metrics.clone(),
            dead_letter,
        }))
    }

    /// Stops reading: the next pulls hand out everything buffered, cut per partition, then
    /// end.
    pub fn stop(&mut self) {
        self.stopping = true;
    }

    fn topic_index(&self, topic: &str) -> Option<u16> {
        self.options
            .topics
            .iter()
            .position(|t| t == topic)
            .map(|i| i as u16)
    }

    fn topic_name(&self, index: u16) -> &str {
        self.options
            .topics
            .get(index as usize)
            .map_or("", String::as_str)
    }

    /// Adds a message to its partition's commit, cutting where the records say.
    fn buffer(&mut self, key: (u16, i32), record: SourceRecord, timestamp_ms: Option<i64>) {
        let interval_ms = self.options.cuts.interval.as_millis() as i64;
        if let Some(c) = self.chunks.get(&key)
            && let (Some(first), Some(ts)) = (c.first_timestamp_ms, timestamp_ms)
            && ts.saturating_sub(first) >= interval_ms
        {
            self.cut(key, CutReason::EventTime);
        }
        let len = record.body.len() as u64;
        let last = &self.last_cut;
        let c = self.chunks.entry(key).or_insert_with(|| Chunk {
            // Sized like the partition's last commit: a backlog's commits hold thousands of
            // messages, and growing the list by doubling copied it and faulted pages in.
            records: Vec::with_capacity(last.get(&key).map_or(0, |l| l.len)),
            bytes: 0,
            first_timestamp_ms: None,
            opened: Instant::now(),
            reached_end: false,
        });
        if c.first_timestamp_ms.is_none() {
            c.first_timestamp_ms = timestamp_ms;
        }
        c.records.push(record);
        c.bytes += len;
        self.buffered += len;
        if c.records.len() >= self.options.cuts.max_messages {
            self.cut(key, CutReason::Messages);
        } else if c.bytes >= self.options.cuts.max_bytes {
            self.cut(key, CutReason::Bytes);
        }
        if self.buffered > self.options.cuts.buffer_bytes
            && let Some(largest) = self
                .chunks
                .iter()
                .max_by_key(|(_, c)| c.bytes)
                .map(|(k, _)| *k)
        {
            tracing::debug!(
                buffered = self.buffered,
                "Kafka messages buffered beyond kafka_buffer_bytes: cutting the largest partition's commit early"
            );
            self.cut(largest, CutReason::Pressure);
        }
    }

    /// Hands out `key`'s buffered messages as one commit.
    fn cut(&mut self, key: (u16, i32), reason: CutReason) {
        let Some(c) = self.chunks.remove(&key) else {
            return;
        };
        self.buffered -= c.bytes;
        if let Some(Position::Kafka { offset, .. }) = c.records.last().map(|r| r.position) {
            let topic = self.topic_name(key.0).to_string();
            self.consumer
                .context()
                .shared()
                .cut_at
                .insert((topic, key.1, offset), Instant::now());
        }
        self.metrics.cut(reason);
        let by_size = matches!(
            reason,
            CutReason::Messages | CutReason::Bytes | CutReason::Pressure
        );
        let last = LastCut {
            len: c.records.len(),
            backlog: by_size && !c.reached_end,
        };
        self.last_cut.insert(key, last);
        self.out.extend(c.records.into_iter().map(Pulled::Record));
        self.out.push_back(Pulled::Cut);
    }

    /// Cuts the commits of partitions gone quiet: read to their end, or the whole consumer
    /// idle, for a flush interval since their first message arrived.
    fn cut_quiet(&mut self, now: Instant) {
        if self.chunks.is_empty() {
            return;
        }
        let interval = self.options.cuts.interval;
        let all_quiet = now.saturating_duration_since(self.last_message) >= interval;
        let due: Vec<(u16, i32)> = self
            .chunks
            .iter()
            .filter(|(k, c)| {
                now.saturating_duration_since(c.opened) >= interval
                    && (all_quiet || self.at_end.contains(&k.1))
            })
            .map(|(k, _)| *k)
            .collect();
        for k in due {
            self.cut(k, CutReason::Quiet);
        }
    }

    /// A partition was read to its end: its open commit holds a live stream's messages (and
    /// is cut by [`Self::cut_quiet`] a flush interval after its first), or, right after a
    /// backlog's commit, the backlog's rest, which is cut now.
    fn reached_end(&mut self, partition: i32) {
        self.at_end.insert(partition);
        for (k, c) in &mut self.chunks {
            c.reached_end |= k.1 == partition;
        }
        let mut rest = Vec::new();
        for (k, last) in &mut self.last_cut {
            // The backlog is read either way: what arrives next is a live stream's.
            if k.1 == partition && std::mem::take(&mut last.backlog) {
                rest.push(*k);
            }
        }
        for k in rest {
            if self.chunks.contains_key(&k) {
                self.cut(k, CutReason::Drained);
            }
        }
    }

    /// Drops what revoked partitions had buffered (their next owner reads it from the
    /// manifest's offset) and rewinds where this session would resume them.
    fn drop_revoked(&mut self, revoked: &[(String, i32)]) {
        for (topic, partition) in revoked {
            let Some(t) = self.topic_index(topic) else {
                continue;
            };
            self.last_cut.remove(&(t, *partition));
            if let Some(c) = self.chunks.remove(&(t, *partition)) {
                self.buffered -= c.bytes;
                if let Some(Position::Kafka { offset, .. }) = c.records.first().map(|r| r.position)
                {
                    self.consumer
                        .context()
                        .shared()
                        .next
                        .insert((topic.clone(), *partition), offset);
                }
            }
        }
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
        // `kafka <topic>/<partition>@<offset>[ key="<key>"]`, built without `format!`: at a
        // backlog's rate its machinery was a visible share of the reading thread.
        let mut origin = String::with_capacity(m.topic().len() + 32);
        origin.push_str("kafka ");
        origin.push_str(m.topic());
        origin.push('/');
        origin.push_str(itoa::Buffer::new().format(m.partition()));
        origin.push('@');
        origin.push_str(itoa::Buffer::new().format(m.offset()));
        if let Some(k) = key {
            use std::fmt::Write as _;
            // Writing to a String cannot fail.
            let _ = write!(origin, " key={k:?}");
        }
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
        if let Some(problem) = s.regressed.values().next() {
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

    fn cuts_commits(&self) -> bool {
        true
    }

    fn pull(&mut self, wait: Duration) -> Result<Pulled, SourceError> {
        if let Some(p) = self.out.pop_front() {
            return Ok(p);
        }
        if self.stopping {
            let keys: Vec<(u16, i32)> = self.chunks.keys().copied().collect();
            for k in keys {
                self.cut(k, CutReason::Stop);
            }
            return Ok(self.out.pop_front().unwrap_or(Pulled::End));
        }
        let deadline = Instant::now() + wait;
        // The message borrows the consumer, not `self`, so it can be buffered.
        let consumer = self.consumer.clone();
        loop {
            // One clock read per message: at a backlog's rate, reading the clock for every
            // check was a measurable share of the decoding thread.
            let now = Instant::now();
            self.cut_quiet(now);
            if let Some(p) = self.out.pop_front() {
                return Ok(p);
            }
            let left = deadline.saturating_duration_since(now);
            // Short polls, so quiet partitions are looked at between them.
            let polled = consumer.poll(left.min(Duration::from_millis(100)));
            let revoked = {
                let mut s = consumer.context().shared();
                if let Some(why) = s.failed.take() {
                    return Err(SourceError(why));
                }
                std::mem::take(&mut s.revoked)
            };
            if !revoked.is_empty() {
                self.drop_revoked(&revoked);
                self.out
                    .push_back(Pulled::Revoked(revoked.iter().map(|r| r.1).collect()));
            }
            match polled {
                Some(Ok(m)) => {
                    let partition = m.partition();
                    let gone = revoked
                        .iter()
                        .any(|(t, p)| *p == partition && t == m.topic());
                    let Some(topic_index) = self.topic_index(m.topic()) else {
                        continue;
                    };
                    let fresh = !gone && {
                        let mut s = consumer.context().shared();
                        let key = (m.topic().to_string(), partition);
                        match s.next.get(&key).copied() {
                            // librdkafka drops messages fetched before an assignment, so a
                            // message below where this partition was sought means its log
                            // went back: Kafka reset to its start after the archived offset
                            // fell off its end (the topic was deleted and created again, or
                            // truncated). Its messages would be taken for archived ones, so
                            // none is, and the member says so and is not ready.
                            Some(n) if m.offset() < n => {
                                let what = format!("went back to offset {}", m.offset());
                                s.regression(&key, &what, n, &self.metrics);
                                false
                            }
                            _ => {
                                s.next.insert(key, m.offset() + 1);
                                true
                            }
                        }
                    };
                    if fresh {
                        if let Some(c) = self.topic_messages.get(topic_index as usize) {
                            c.inc();
                        }
                        let key = (topic_index, partition);
                        let metrics = &self.metrics;
                        self.partition_messages
                            .entry(key)
                            .or_insert_with(|| {
                                metrics
                                    .partition_messages
                                    .get_or_create(&KafkaMetrics::label(m.topic(), partition))
                                    .clone()
                            })
                            .inc();
                        self.at_end.remove(&partition);
                        self.last_message = now;
                        let record = self.record(&m, topic_index);
                        self.buffer(key, record, m.timestamp().to_millis());
                    }
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    self.reached_end(partition);
                }
                Some(Err(e)) => {
                    // librdkafka retries broker errors itself; they are worth a line, not
                    // the end of the run.
                    tracing::warn!(error = %e, "Kafka consumer error");
                }
                None => {}
            }
            if let Some(p) = self.out.pop_front() {
                return Ok(p);
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
    dead_letter: Option<DeadLetter>,
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
            let cut = self.consumer.context().shared().cut_at.remove(&(
                r.topic.clone(),
                r.partition,
                r.through_offset,
            ));
            if let Some(cut) = cut {
                self.metrics
                    .commit_seconds
                    .get_or_create(&KafkaMetrics::label(&r.topic, r.partition))
                    .observe(cut.elapsed().as_secs_f64());
            }
            tpl.add_partition_offset(&r.topic, r.partition, Offset::Offset(r.through_offset + 1))
                .map_err(|e| SourceError(format!("offsets of {}/{}: {e}", r.topic, r.partition)))?;
        }
        // A partition revoked meanwhile refuses the commit; its new owner commits later.
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(error = %e, "committing offsets to Kafka (they are archived; Kafka's copy is only for lag monitoring)");
        }
        Ok(0)
    }

    fn wants_quarantine(&self) -> bool {
        self.dead_letter.is_some()
    }

    fn quarantined(&self, records: &[auditlake_schema::Quarantined]) {
        if let Some(d) = &self.dead_letter {
            d.send(records);
        }
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
            cuts: CommitCuts::default(),
            dead_letter_topic: String::new(),
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
