//! Where findings go: stdout (NDJSON), a file (NDJSON, appended), an HTTP endpoint (one JSON
//! object per POST, retried with backoff), a Kafka topic (one JSON message per finding,
//! keyed by rule and principal, idempotent producer retrying until its delivery timeout).
//!
//! Each target has its own bounded queue and its own delivery worker, so a slow or stuck
//! target never holds the detectors (and, behind them, archiving) nor the other targets:
//! when a target's queue is full, further findings for it are dropped and counted (the
//! archive's `findings` table, written by the detectors themselves, still holds every one).
//! An HTTP target posts up to [`HTTP_CONCURRENCY`] findings at once. Closing waits at most a
//! deadline for the queues to drain, then counts what was left undelivered.

use std::io::Write;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::finding::Finding;

/// One destination of findings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkTarget {
    /// NDJSON on standard output.
    Stdout,
    /// NDJSON appended to a file.
    File(PathBuf),
    /// `POST` of each finding as JSON.
    Http(String),
    /// One message per finding on a Kafka topic, keyed `<rule_id>|<principal>`.
    Kafka {
        /// Bootstrap brokers.
        brokers: String,
        /// Topic.
        topic: String,
        /// librdkafka properties (TLS, SASL), as for the Kafka source.
        properties: std::collections::BTreeMap<String, String>,
    },
}

impl SinkTarget {
    /// A short, bounded name for logs and counters (`stdout`, `file`, `http`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::File(_) => "file",
            Self::Http(_) => "http",
            Self::Kafka { .. } => "kafka",
        }
    }
}

impl FromStr for SinkTarget {
    type Err = String;

    /// `stdout` (or `-`), an `http://`/`https://` URL, `kafka://host:port[,host:port]/topic`,
    /// or a file path (`file:` prefix optional).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty findings target: use stdout, a file path or an http(s) URL".into());
        }
        Ok(match s {
            "stdout" | "-" => Self::Stdout,
            _ if s.starts_with("http://") || s.starts_with("https://") => Self::Http(s.into()),
            _ if s.starts_with("kafka://") => match s["kafka://".len()..].split_once('/') {
                Some((brokers, topic))
                    if !brokers.is_empty() && !topic.is_empty() && !topic.contains('/') =>
                {
                    Self::Kafka {
                        brokers: brokers.into(),
                        topic: topic.into(),
                        properties: Default::default(),
                    }
                }
                _ => {
                    return Err(format!(
                        "{s:?}: expected kafka://host:port[,host:port]/topic"
                    ));
                }
            },
            _ => Self::File(PathBuf::from(s.strip_prefix("file:").unwrap_or(s))),
        })
    }
}

/// What happened to the findings handed over, over all targets (a finding sent to two
/// targets counts twice in the per-target numbers).
#[derive(Debug, Default)]
pub struct SinkCounters {
    /// Findings handed over.
    pub findings: Arc<AtomicU64>,
    /// Deliveries that failed for good (after retries).
    pub failed: Arc<AtomicU64>,
    /// Findings not queued for a target because its queue was full.
    pub dropped: Arc<AtomicU64>,
    /// Targets still busy when closing gave up waiting (their queued findings are lost to
    /// them).
    pub abandoned: Arc<AtomicU64>,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Findings handed over.
    pub findings: u64,
    /// Deliveries that failed for good (after retries), over all targets.
    pub failed: u64,
    /// Deliveries dropped because a target's queue was full.
    pub dropped: u64,
    /// Targets still busy when closing gave up waiting.
    pub abandoned: u64,
}

impl SinkCounters {
    /// The counts now.
    pub fn snapshot(&self) -> SinkStats {
        SinkStats {
            findings: self.findings.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            abandoned: self.abandoned.load(Ordering::Relaxed),
        }
    }
}

/// Why sinks could not start.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A findings file could not be opened.
    #[error("opening findings file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The HTTP client or its runtime could not be built.
    #[error("findings HTTP client: {0}")]
    Http(String),
    /// The Kafka producer could not be built.
    #[error("findings Kafka producer: {0}")]
    Kafka(String),
}

/// Findings queued per target at most (~1 KB each). Room for a whole detector batch's
/// findings (batches are at most 8,192 events) with some to spare, so a target that keeps up
/// never drops any.
pub const QUEUE_FINDINGS: usize = 16 * 1024;
/// HTTP attempts per finding and the first backoff (doubled after each failure).
const HTTP_ATTEMPTS: u32 = 5;
const HTTP_BACKOFF: Duration = Duration::from_millis(500);
/// One POST may take this long.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// POSTs in flight per HTTP target.
pub const HTTP_CONCURRENCY: usize = 8;
/// How long closing waits for the queues to drain.
pub const CLOSE_DEADLINE: Duration = Duration::from_secs(10);

/// One target's queue and worker. The queue carries a detector batch's findings as one
/// message (one wake-up and one write per batch, not per finding); `queued` bounds it in
/// findings.
struct Lane {
    kind: &'static str,
    tx: Option<UnboundedSender<Vec<Arc<str>>>>,
    /// Findings handed to the queue and not yet taken by the worker (at most
    /// [`QUEUE_FINDINGS`]).
    queued: Arc<AtomicUsize>,
    worker: Option<std::thread::JoinHandle<()>>,
    /// Rate limit of the "queue full" error: last time it was logged.
    last_full_log: Option<Instant>,
}

/// The findings targets; dropping it closes them (see [`FindingSinks::close`]).
pub struct FindingSinks {
    lanes: Vec<Lane>,
    counters: Arc<SinkCounters>,
}

impl FindingSinks {
    /// Opens every target (files are created or appended) and starts their workers.
    pub fn start(targets: &[SinkTarget]) -> Result<Self, SinkError> {
        let counters = Arc::new(SinkCounters::default());
        let mut lanes = Vec::new();
        for t in targets {
            let (tx, rx) = unbounded_channel::<Vec<Arc<str>>>();
            let queued = Arc::new(AtomicUsize::new(0));
            let rx = Queue {
                rx,
                queued: queued.clone(),
            };
            let c = counters.clone();
            let worker = match t {
                SinkTarget::Stdout => spawn("stdout", move || {
                    write_lines(rx, std::io::stdout(), "stdout", &c)
                }),
                SinkTarget::File(p) => {
                    let file = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)
                        .map_err(|source| SinkError::File {
                            path: p.clone(),
                            source,
                        })?;
                    let name = p.display().to_string();
                    spawn("file", move || write_lines(rx, file, &name, &c))
                }
                SinkTarget::Http(url) => {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| SinkError::Http(e.to_string()))?;
                    let client = reqwest::Client::builder()
                        .timeout(HTTP_TIMEOUT)
                        .build()
                        .map_err(|e| SinkError::Http(e.to_string()))?;
                    let url = url.clone();
                    spawn("http", move || {
                        runtime.block_on(deliver_all(rx, c, move |json| {
                            let (client, url) = (client.clone(), url.clone());
                            async move { post(&client, &url, &json).await }
                        }));
                    })
                }
                SinkTarget::Kafka {
                    brokers,
                    topic,
                    properties,
                } => {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| SinkError::Kafka(e.to_string()))?;
                    let producer = kafka_producer(brokers, properties)?;
                    let topic: Arc<str> = topic.as_str().into();
                    spawn("kafka", move || {
                        // The producer's client lives on this runtime's thread.
                        let _g = runtime.enter();
                        runtime.block_on(deliver_all(rx, c, move |json| {
                            let (producer, topic) = (producer.clone(), topic.clone());
                            async move { produce(&producer, &topic, &json).await }
                        }));
                    })
                }
            }?;
            lanes.push(Lane {
                kind: t.kind(),
                tx: Some(tx),
                queued,
                worker: Some(worker),
                last_full_log: None,
            });
        }
        Ok(Self { lanes, counters })
    }

    /// The counters (shared: they keep counting until the sinks are closed).
    pub fn counters(&self) -> Arc<SinkCounters> {
        self.counters.clone()
    }

    /// Queues a finding for every target; never waits (see [`FindingSinks::send_all`]).
    pub fn send(&mut self, finding: Finding) {
        self.send_all(vec![finding]);
    }

    /// Queues findings for every target; never waits. A target whose queue is full does
    /// not get those beyond its room (counted in `dropped`, logged at most once a minute per
    /// target).
    pub fn send_all(&mut self, findings: Vec<Finding>) {
        let mut jsons: Vec<Arc<str>> = Vec::with_capacity(findings.len());
        for finding in findings {
            match serde_json::to_string(&finding) {
                Ok(j) => jsons.push(j.into()),
                Err(e) => {
                    tracing::error!(rule = %finding.rule_id, error = %e, "cannot serialise a finding");
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
            self.counters.findings.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                rule = %finding.rule_id,
                severity = %finding.severity,
                principal = finding.principal.as_deref().unwrap_or(""),
                object = %finding.object.display(),
                count = finding.count,
                "finding"
            );
        }
        if jsons.is_empty() {
            return;
        }
        for lane in &mut self.lanes {
            let Some(tx) = &lane.tx else { continue };
            // Only this thread adds to `queued`, so the room seen here cannot shrink before
            // the add below; the worker only takes away.
            let room = QUEUE_FINDINGS.saturating_sub(lane.queued.load(Ordering::Acquire));
            let take = room.min(jsons.len());
            if take > 0 {
                lane.queued.fetch_add(take, Ordering::AcqRel);
                if tx.send(jsons[..take].to_vec()).is_err() {
                    lane.queued.fetch_sub(take, Ordering::AcqRel);
                    self.counters
                        .failed
                        .fetch_add(take as u64, Ordering::Relaxed);
                }
            }
            let dropped = jsons.len() - take;
            if dropped > 0 {
                self.counters
                    .dropped
                    .fetch_add(dropped as u64, Ordering::Relaxed);
                if lane
                    .last_full_log
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
                {
                    lane.last_full_log = Some(Instant::now());
                    tracing::error!(
                        target = lane.kind,
                        queued = QUEUE_FINDINGS,
                        "findings target is not keeping up: findings for it are dropped (counted in auditlake_findings_dropped_total; the archive's findings table keeps them all)"
                    );
                }
            }
        }
    }

    /// Delivers what is queued, waiting at most `deadline`, and stops; returns the counts.
    pub fn close_within(mut self, deadline: Duration) -> SinkStats {
        self.shutdown(deadline)
    }

    /// [`FindingSinks::close_within`] with [`CLOSE_DEADLINE`].
    pub fn close(self) -> SinkStats {
        self.close_within(CLOSE_DEADLINE)
    }

    fn shutdown(&mut self, deadline: Duration) -> SinkStats {
        let until = Instant::now() + deadline;
        for lane in &mut self.lanes {
            lane.tx.take();
        }
        for lane in &mut self.lanes {
            let Some(worker) = lane.worker.take() else {
                continue;
            };
            while !worker.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
            if worker.is_finished() {
                let _ = worker.join();
            } else {
                // Its queue's remaining findings are lost to this target (never to the
                // archive); the thread ends by itself when its current delivery does.
                tracing::error!(
                    target = lane.kind,
                    deadline_seconds = deadline.as_secs(),
                    "findings target still busy at shutdown; giving up on what is queued for it"
                );
                self.counters.abandoned.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.counters.snapshot()
    }
}

impl Drop for FindingSinks {
    fn drop(&mut self) {
        if self.lanes.iter().any(|l| l.worker.is_some()) {
            self.shutdown(CLOSE_DEADLINE);
        }
    }
}

fn spawn(
    kind: &str,
    f: impl FnOnce() + Send + 'static,
) -> Result<std::thread::JoinHandle<()>, SinkError> {
    std::thread::Builder::new()
        .name(format!("auditlake-findings-{kind}"))
        .spawn(f)
        .map_err(|e| SinkError::Http(format!("spawning the delivery thread: {e}")))
}

fn write_lines(mut rx: Queue, mut out: impl Write, name: &str, c: &SinkCounters) {
    let mut buf = Vec::new();
    while let Some(first) = rx.rx.blocking_recv() {
        // Everything queued by now goes out in one write.
        let mut batch = first;
        while let Ok(more) = rx.rx.try_recv() {
            batch.extend(more);
        }
        rx.taken(batch.len());
        buf.clear();
        for json in &batch {
            buf.extend_from_slice(json.as_bytes());
            buf.push(b'\n');
        }
        if let Err(e) = out.write_all(&buf).and_then(|()| out.flush()) {
            tracing::error!(target = name, error = %e, findings = batch.len(), "writing findings");
            c.failed.fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
    }
}

/// A target's end of its queue.
struct Queue {
    rx: UnboundedReceiver<Vec<Arc<str>>>,
    queued: Arc<AtomicUsize>,
}

impl Queue {
    /// `n` findings left the queue: room for as many more.
    fn taken(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Delivers findings from `rx` with `deliver` (true: delivered), up to
/// [`HTTP_CONCURRENCY`] at once, until the queue closes and every delivery in flight ends.
async fn deliver_all<F, Fut>(mut rx: Queue, counters: Arc<SinkCounters>, deliver: F)
where
    F: Fn(Arc<str>) -> Fut,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(HTTP_CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    'queue: while let Some(batch) = rx.rx.recv().await {
        for json in batch {
            // The semaphore is never closed: acquiring only waits for a free slot.
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break 'queue;
            };
            // A finding stays counted in the queue until its delivery starts.
            rx.taken(1);
            let counters = counters.clone();
            let delivery = deliver(json);
            tasks.spawn(async move {
                let _slot = slot;
                if !delivery.await {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                }
            });
            while tasks.try_join_next().is_some() {}
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// How long librdkafka keeps retrying one finding before it counts as failed.
const KAFKA_DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);

fn kafka_producer(
    brokers: &str,
    properties: &std::collections::BTreeMap<String, String>,
) -> Result<rdkafka::producer::FutureProducer, SinkError> {
    let mut c = rdkafka::ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("client.id", "auditlake-findings")
        .set("linger.ms", "20")
        .set(
            "delivery.timeout.ms",
            KAFKA_DELIVERY_TIMEOUT.as_millis().to_string(),
        );
    for (k, v) in properties {
        c.set(k, v);
    }
    c.set("enable.idempotence", "true").set("acks", "all");
    c.create()
        .map_err(|e| SinkError::Kafka(format!("{brokers}: {e}")))
}

/// The message key of a finding: `<rule_id>|<principal>`, so one rule's findings about one
/// principal stay in order on one partition.
fn finding_key(json: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Key {
        rule_id: String,
        principal: Option<String>,
    }
    match serde_json::from_str::<Key>(json) {
        Ok(k) => format!("{}|{}", k.rule_id, k.principal.unwrap_or_default()),
        Err(_) => String::new(),
    }
}

async fn produce(producer: &rdkafka::producer::FutureProducer, topic: &str, json: &str) -> bool {
    let key = finding_key(json);
    let record = rdkafka::producer::FutureRecord::to(topic)
        .payload(json)
        .key(&key);
    match producer
        .send(
            record,
            rdkafka::util::Timeout::After(KAFKA_DELIVERY_TIMEOUT),
        )
        .await
    {
        Ok(_) => true,
        Err((e, _)) => {
            tracing::error!(topic, error = %e, "a finding could not be delivered to Kafka");
            false
        }
    }
}

async fn post(client: &reqwest::Client, url: &str, json: &str) -> bool {
    let mut backoff = HTTP_BACKOFF;
    for attempt in 1..=HTTP_ATTEMPTS {
        let sent = client
            .post(url)
            .header("Content-Type", "application/json")
            .body(json.to_string())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => return true,
            Ok(r) => {
                tracing::warn!(
                    url,
                    attempt,
                    status = r.status().as_u16(),
                    "findings endpoint refused a finding"
                )
            }
            Err(e) => tracing::warn!(url, attempt, error = %e, "findings endpoint unreachable"),
        }
        if attempt < HTTP_ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    tracing::error!(
        url,
        attempts = HTTP_ATTEMPTS,
        "a finding could not be delivered"
    );
    false
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn targets_parse_from_flags() {
        assert_eq!("stdout".parse(), Ok(SinkTarget::Stdout));
        assert_eq!(
            "https://hooks.example/alert".parse(),
            Ok(SinkTarget::Http("https://hooks.example/alert".into()))
        );
        assert_eq!(
            "file:/var/log/f.ndjson".parse(),
            Ok(SinkTarget::File("/var/log/f.ndjson".into()))
        );
        assert!("".parse::<SinkTarget>().is_err());
        assert_eq!(
            "kafka://b1:9092,b2:9092/k8s-findings".parse(),
            Ok(SinkTarget::Kafka {
                brokers: "b1:9092,b2:9092".into(),
                topic: "k8s-findings".into(),
                properties: Default::default()
            })
        );
        assert!("kafka://b1:9092".parse::<SinkTarget>().is_err());
    }

    /// Findings reach a Kafka topic (librdkafka's mock cluster), one message each, keyed by
    /// rule and principal.
    #[test]
    fn findings_reach_a_kafka_topic_keyed_by_rule_and_principal() {
        use rdkafka::Message;
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
        mock.create_topic("findings", 2, 1).unwrap();
        let brokers = mock.bootstrap_servers();
        let mut sinks = FindingSinks::start(&[SinkTarget::Kafka {
            brokers: brokers.clone(),
            topic: "findings".into(),
            properties: Default::default(),
        }])
        .unwrap();
        let mut other = finding();
        other.principal = Some("eve".into());
        sinks.send_all(vec![finding(), other, finding()]);
        let stats = sinks.close();
        assert_eq!((stats.findings, stats.failed, stats.dropped), (3, 0, 0));

        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "t")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&["findings"]).unwrap();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while got.len() < 3 && Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
                let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
                got.push((key, v["principal"].as_str().unwrap().to_string()));
            }
        }
        got.sort();
        assert_eq!(
            got,
            [
                ("K8S-RBAC-001|eve".to_string(), "eve".to_string()),
                ("K8S-RBAC-001|mallory".into(), "mallory".into()),
                ("K8S-RBAC-001|mallory".into(), "mallory".into()),
            ]
        );
    }

    /// Reads one HTTP/1.1 request from `stream`, answers `status` and returns the body.
    fn answer(mut stream: std::net::TcpStream, status: &str) -> String {
        use std::io::Read;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let (head_end, length) = loop {
            let n = stream.read(&mut chunk).unwrap();
            assert!(n > 0, "connection closed before the request ended");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                break (end + 4, length);
            }
        };
        while buf.len() < head_end + length {
            let n = stream.read(&mut chunk).unwrap();
            buf.extend_from_slice(&chunk[..n]);
        }
        write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        String::from_utf8(buf[head_end..head_end + length].to_vec()).unwrap()
    }

    fn finding() -> Finding {
        Finding {
            rule_id: "K8S-RBAC-001".into(),
            severity: crate::rule::Severity::High,
            title: "Binding to a powerful role".into(),
            outcome: crate::finding::Outcome::Done,
            cluster: "prod".into(),
            time: "2026-11-01T10:00:00.000000Z".into(),
            last_time: "2026-11-01T10:00:00.000000Z".into(),
            principal: Some("mallory".into()),
            impersonated: None,
            source_ip: Some("10.0.0.1".into()),
            verb: Some("create".into()),
            object: crate::finding::ObjectRef::default(),
            objects: Vec::new(),
            details: None,
            response_code: Some(201),
            evidence: vec!["crb-1".into()],
            count: 1,
            mitre: vec!["T1098".into()],
            remediation: String::new(),
            time_micros: 0,
        }
    }

    #[test]
    fn a_stuck_target_holds_at_most_its_queue_and_the_rest_is_counted_as_dropped() {
        // Accepts nothing: every POST hangs until its timeout.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/alert", listener.local_addr().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("findings.ndjson");
        let mut sinks =
            FindingSinks::start(&[SinkTarget::Http(url), SinkTarget::File(file.clone())]).unwrap();
        let wait_until = |what: &str, done: &dyn Fn() -> bool| {
            let waited = Instant::now();
            while !done() {
                assert!(waited.elapsed() < Duration::from_secs(5), "{what}");
                std::thread::sleep(Duration::from_millis(2));
            }
        };
        let queued =
            |sinks: &FindingSinks, lane: usize| sinks.lanes[lane].queued.load(Ordering::Acquire);
        // Batches as a detector sends them; the file target drains each before the next.
        let (batch, extra) = (1024, 300);
        let total = QUEUE_FINDINGS + HTTP_CONCURRENCY + extra;
        let mut sent = 0;
        while sent < total {
            let n = batch.min(total - sent);
            sinks.send_all((0..n).map(|_| finding()).collect());
            sent += n;
            if sent == n {
                // The HTTP worker starts its first posts, which frees as many places.
                wait_until("the HTTP worker never started", &|| {
                    queued(&sinks, 0) == n - HTTP_CONCURRENCY
                });
            }
            wait_until("the file target never drained", &|| queued(&sinks, 1) == 0);
        }
        assert_eq!(
            queued(&sinks, 0),
            QUEUE_FINDINGS,
            "posts in flight are bounded, the queue holds its bound"
        );
        let stats = sinks.close_within(Duration::from_millis(200));
        assert_eq!(
            stats,
            SinkStats {
                findings: total as u64,
                failed: 0,
                dropped: extra as u64,
                abandoned: 1,
            }
        );
        // The file target kept up and got every finding, a line each.
        let written = std::fs::read_to_string(&file).unwrap();
        assert_eq!(written.lines().count(), total);
    }

    #[test]
    fn an_http_endpoint_that_refuses_once_gets_the_finding_on_the_retry() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/alert", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let first = answer(listener.accept().unwrap().0, "503 Service Unavailable");
            let second = answer(listener.accept().unwrap().0, "200 OK");
            (first, second)
        });
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("findings.ndjson");
        let mut sinks =
            FindingSinks::start(&[SinkTarget::Http(url), SinkTarget::File(file.clone())]).unwrap();
        sinks.send(finding());
        let stats = sinks.close();
        assert_eq!(
            stats,
            SinkStats {
                findings: 1,
                ..SinkStats::default()
            }
        );
        let (first, second) = server.join().unwrap();
        assert_eq!(first, second, "the retry sends the same finding");
        let posted: serde_json::Value = serde_json::from_str(&second).unwrap();
        assert_eq!(posted["rule_id"], "K8S-RBAC-001");
        assert_eq!(posted["principal"], "mallory");
        assert_eq!(posted["evidence"], serde_json::json!(["crb-1"]));
        let written = std::fs::read_to_string(&file).unwrap();
        assert_eq!(written.lines().count(), 1);
        let line: serde_json::Value = serde_json::from_str(written.trim()).unwrap();
        assert_eq!(line, posted, "the file gets the same JSON as the endpoint");
    }
}
