//! `auditlake serve` under hostile input and faults, as a real process: memory stays
//! bounded (peak RSS read from /proc), a record that kills the archiver is set aside, a
//! restart is ready as soon as its replay is archived, a stuck alert target stalls nothing,
//! and SQL stays read-only. Each test is named after the failure it prevents.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;
use common::*;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use auditlake_fixtures::{Mix, TrafficGenerator};

/// Peak RSS allowed for `serve` (debug build) holding and archiving one 16 MiB body of
/// millions of tiny values; see README "Memory" (release builds need less).
const MAX_RSS_ONE_HOSTILE_BODY_MIB: f64 = 256.0;
/// Peak RSS allowed for `serve` (debug build) while 12 clients post 16 MiB bodies at once
/// (the body budget, 128 MiB by default, bounds what is held).
const MAX_RSS_CONCURRENT_BODIES_MIB: f64 = 400.0;

fn zeros_body(bytes: usize) -> Vec<u8> {
    let mut s = Vec::with_capacity(bytes);
    s.push(b'[');
    while s.len() + 3 < bytes {
        s.extend_from_slice(b"0,");
    }
    s.extend_from_slice(b"0]");
    s
}

/// NDJSON lines of the committed quarantine files.
fn quarantine_records(archive: &std::path::Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let Ok(clusters) = std::fs::read_dir(archive.join("_quarantine")) else {
        return out;
    };
    for c in clusters {
        for f in std::fs::read_dir(c.unwrap().path()).unwrap() {
            out.extend(read_ndjson(&f.unwrap().path()));
        }
    }
    out
}

fn parquet_files(dir: &std::path::Path) -> usize {
    let mut n = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            n += parquet_files(&p);
        } else if p.extension().is_some_and(|x| x == "parquet") {
            n += 1;
        }
    }
    n
}

#[test]
fn a_16_mib_body_of_tiny_values_costs_bounded_memory_and_101_quarantine_records() {
    let _shared = SOAK.read().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::spawn(
        dir.path(),
        &["--flush-interval-seconds", "1", "--findings", "none"],
        None,
        Stdio::null(),
    );
    server.wait_ready(60);
    let body = zeros_body(16 << 20);
    assert_eq!(server.post("prod", &body), Some(200));
    server.wait_metric("auditlake_commits_total", 1.0, 120);
    let peak = server.peak_rss_mib();
    let (status, _) = server.terminate(60);
    assert!(status.success());
    let q = quarantine_records(&dir.path().join("archive"));
    assert_eq!(q.len(), 101, "100 items one by one and one summary");
    let summary = q.iter().find(|r| r.get("item").is_none()).unwrap();
    assert_eq!(summary["raw_len"], body.len());
    let items = body.iter().filter(|b| **b == b',').count() + 1;
    assert!(
        summary["reason"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{items} items of this input could not be decoded")),
        "{}",
        summary["reason"]
    );
    // Filed under the cluster the request named.
    let bytes: u64 = std::fs::read_dir(dir.path().join("archive/_quarantine/cluster=prod"))
        .unwrap()
        .map(|f| f.unwrap().metadata().unwrap().len())
        .sum();
    assert!(bytes < 17 << 20, "quarantine of {bytes} bytes");
    eprintln!("16 MiB hostile body: peak RSS {peak:.0} MiB, quarantine {bytes} bytes");
    assert!(
        peak < MAX_RSS_ONE_HOSTILE_BODY_MIB,
        "peak RSS {peak:.0} MiB"
    );
}

#[test]
fn events_with_thousands_of_distinct_hours_open_one_partition_not_thousands() {
    let _shared = SOAK.read().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::spawn(
        dir.path(),
        &["--flush-interval-seconds", "1", "--findings", "none"],
        None,
        Stdio::null(),
    );
    server.wait_ready(60);
    // 8,000 events whose request times are 8,000 distinct hours, years apart.
    let mut body = String::new();
    let events = TrafficGenerator::new(77, Mix::default()).ndjson(8_000);
    for (i, line) in events.lines().enumerate() {
        let mut e: serde_json::Value = serde_json::from_str(line).unwrap();
        let hour = 1_000_000_000_000_000i64 + i as i64 * 3_600_000_000;
        let t = time_text(hour);
        e["requestReceivedTimestamp"] = t.clone().into();
        e["stageTimestamp"] = t.into();
        body.push_str(&e.to_string());
        body.push('\n');
    }
    assert_eq!(server.post("prod", body.as_bytes()), Some(200));
    server.wait_metric("auditlake_events_committed_total", 8_000.0, 120);
    assert_eq!(
        server.metric("auditlake_events_out_of_window_total"),
        8_000.0
    );
    let peak = server.peak_rss_mib();
    assert!(server.terminate(60).0.success());
    let archive = dir.path().join("archive");
    let files = parquet_files(&archive.join("events"));
    assert!(files <= 2, "{files} Parquet files for one request");
    let csv = query_csv(
        &archive,
        "SELECT count(*) AS n, count(DISTINCT date_trunc('hour', request_received_at)) AS hours FROM events",
    );
    assert_eq!(
        csv.lines().nth(1),
        Some("8000,8000"),
        "true times kept: {csv}"
    );
    eprintln!("8,000 distinct hours: {files} file(s), peak RSS {peak:.0} MiB");
    assert!(
        peak < MAX_RSS_ONE_HOSTILE_BODY_MIB,
        "peak RSS {peak:.0} MiB"
    );
}

/// RFC 3339 text of `micros` (UTC).
fn time_text(micros: i64) -> String {
    auditlake_schema::timestamp::format_rfc3339_micros(micros)
}

#[test]
fn many_concurrent_large_bodies_stay_within_the_body_budget() {
    let _shared = SOAK.read().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::spawn(
        dir.path(),
        &["--findings", "none", "--flush-interval-seconds", "1"],
        None,
        Stdio::null(),
    );
    server.wait_ready(60);
    // Twelve 16 MiB NDJSON bodies of real events at once.
    let line_events = TrafficGenerator::new(5, Mix::default())
        .starting_recently(60)
        .ndjson(2_000);
    let mut body = Vec::new();
    while body.len() + line_events.len() < (16 << 20) - 1 {
        body.extend_from_slice(line_events.as_bytes());
    }
    let body = std::sync::Arc::new(body);
    let webhook = server.webhook;
    let answers: Vec<Option<u16>> = (0..12)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || http(webhook, "POST", "/audit/webhook/prod", &body))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let ok = answers.iter().filter(|a| **a == Some(200)).count();
    let busy = answers.iter().filter(|a| **a == Some(503)).count();
    assert_eq!(ok + busy, 12, "every client got 200 or 503: {answers:?}");
    assert!(ok >= 1);
    let peak = server.peak_rss_mib();
    server.kill();
    eprintln!(
        "12 concurrent 16 MiB bodies: {ok} stored, {busy} told to retry, peak RSS {peak:.0} MiB"
    );
    assert!(
        peak < MAX_RSS_CONCURRENT_BODIES_MIB,
        "peak RSS {peak:.0} MiB"
    );
}

#[test]
fn a_record_that_kills_the_archiver_is_set_aside_after_three_tries_and_replay_goes_on() {
    let _shared = SOAK.read().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    // One event whose request body is 4 million tiny values: under a 200 MB data limit the
    // archiver cannot parse it and the process aborts, as it would under a memory limit.
    let n = ((8 << 20) - 400) / 2;
    let mut poison = String::from(
        r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{"auditID":"poison","stage":"ResponseComplete","requestReceivedTimestamp":"2026-12-01T00:00:00Z","stageTimestamp":"2026-12-01T00:00:00Z","requestObject":["#,
    );
    for _ in 0..n - 1 {
        poison.push_str("0,");
    }
    poison.push_str("0]}]}");
    let limited = Some("ulimit -d 200000;");
    let args = ["--findings", "none", "--flush-interval-seconds", "3600"];
    let mut first = Server::spawn(dir.path(), &args, limited, Stdio::null());
    first.wait_ready(60);
    assert_eq!(first.post("prod", poison.as_bytes()), Some(200));
    let status = wait_exit(&mut first.child, 60);
    assert!(
        !status.success(),
        "the archiver died on the record: {status}"
    );
    // Every restart replays the record and dies on it again...
    for attempt in 2..=3 {
        let mut again = Server::spawn(dir.path(), &args, limited, Stdio::null());
        let status = wait_exit(&mut again.child, 60);
        assert!(!status.success(), "attempt {attempt}: {status}");
    }
    // ...until it has failed three times: then it is set aside and the replay goes on.
    let mut server = Server::spawn(dir.path(), &args, limited, Stdio::piped());
    server.wait_ready(60);
    let good = TrafficGenerator::new(8, Mix::default())
        .starting_recently(60)
        .event_list(20);
    assert_eq!(server.post("prod", good.as_bytes()), Some(200));
    assert_eq!(server.metric("auditlake_wal_poison_records_total"), 1.0);
    let (status, _) = server.terminate(60);
    assert!(status.success());
    let q = quarantine_records(&dir.path().join("archive"));
    assert_eq!(q.len(), 1, "{q:?}");
    assert!(
        q[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("the archiver failed 3 times on this write-ahead log record"),
        "{}",
        q[0]["reason"]
    );
    assert_eq!(q[0]["raw_len"], poison.len(), "the record is kept whole");
    let csv = query_csv(&dir.path().join("archive"), "SELECT count(*) FROM events");
    assert_eq!(csv.lines().nth(1), Some("20"));
}

#[test]
fn a_restart_with_records_to_replay_is_ready_within_seconds_not_a_flush_interval() {
    let _shared = SOAK.read().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    // The default flush interval (30 s): records wait for it in normal operation.
    let args = ["--findings", "none"];
    let mut server = Server::spawn(dir.path(), &args, None, Stdio::null());
    server.wait_ready(60);
    let mut sent = 0;
    for seed in 0..100 {
        let body = TrafficGenerator::new(500 + seed, Mix::default())
            .starting_recently(60)
            .event_list(100);
        assert_eq!(server.post("prod", body.as_bytes()), Some(200));
        sent += 100;
    }
    assert_eq!(
        server.metric("auditlake_commits_total"),
        0.0,
        "nothing archived yet"
    );
    server.kill();
    let started = Instant::now();
    let mut server = Server::spawn(dir.path(), &args, None, Stdio::null());
    server.wait_ready(60);
    let ready_after = started.elapsed();
    assert_eq!(
        server.metric("auditlake_events_committed_total"),
        sent as f64
    );
    server.kill();
    eprintln!("restart with {sent} events to replay: ready after {ready_after:?} (debug build)");
    assert!(ready_after < Duration::from_secs(15), "{ready_after:?}");
}

#[test]
fn a_findings_endpoint_that_never_answers_stalls_neither_archiving_nor_shutdown() {
    let _shared = SOAK.read().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    // Accepts connections and reads, never answers.
    let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_url = format!("http://{}/alerts", sink.local_addr().unwrap());
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for c in sink.incoming() {
            keep.lock().unwrap().push(c.unwrap());
        }
    });
    let mut server = Server::spawn(
        dir.path(),
        &["--findings", &sink_url, "--flush-interval-seconds", "1"],
        None,
        Stdio::null(),
    );
    server.wait_ready(60);
    let mut sent = 0;
    for seed in 0..30 {
        let body = TrafficGenerator::new(900 + seed, Mix::default())
            .starting_recently(60)
            .event_list(200);
        assert_eq!(server.post("prod", body.as_bytes()), Some(200));
        sent += 200;
    }
    let started = Instant::now();
    server.wait_metric("auditlake_events_committed_total", sent as f64, 30);
    let archived_in = started.elapsed();
    assert!(server.metric("auditlake_findings_total") > 0.0);
    let (status, took) = server.terminate(60);
    assert!(status.success(), "{status}");
    assert!(!held.lock().unwrap().is_empty(), "the endpoint was reached");
    eprintln!("stuck findings endpoint: archived in {archived_in:?}, shutdown took {took:?}");
    assert!(took < Duration::from_secs(30), "shutdown took {took:?}");
}

#[test]
fn sql_stays_read_only_in_query_and_backtest() {
    let _shared = SOAK.read().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let out = dir.path().join("written.csv");
    let input = dir.path().join("audit.ndjson");
    std::fs::write(&input, TrafficGenerator::new(3, Mix::default()).ndjson(50)).unwrap();
    auditlake_ok(
        &archive,
        &["ingest", "--findings", "none", input.to_str().unwrap()],
    );
    let run = |args: &[&str]| {
        Command::new(BIN)
            .arg("--archive")
            .arg(&archive)
            .args(args)
            .env("AUDITLAKE_LOG", "warn")
            .output()
            .unwrap()
    };
    for sql in [
        format!(
            "COPY (SELECT * FROM events) TO '{}' STORED AS CSV",
            out.display()
        ),
        "CREATE EXTERNAL TABLE p STORED AS CSV LOCATION '/etc/passwd'".to_string(),
        "INSERT INTO events SELECT * FROM events".to_string(),
    ] {
        let o = run(&["query", &sql]);
        assert!(!o.status.success(), "{sql} ran");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("not supported")
                || String::from_utf8_lossy(&o.stderr).contains("not allowed"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert!(!out.exists(), "COPY wrote a file");
    let count = query_csv(&archive, "SELECT count(*) FROM events");
    assert_eq!(count.lines().nth(1), Some("50"), "INSERT added nothing");
    // Explicitly asked for, an external table can be read.
    let csv = dir.path().join("ips.csv");
    std::fs::write(&csv, "ip\n10.0.0.1\n").unwrap();
    let o = run(&[
        "query",
        "--allow-external-tables",
        &format!(
            "CREATE EXTERNAL TABLE ips STORED AS CSV LOCATION '{}' OPTIONS ('format.has_header' 'true'); SELECT count(*) FROM ips",
            csv.display()
        ),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A rule whose condition smuggles a statement is refused, nothing written.
    let rules = dir.path().join("evil.yaml");
    std::fs::write(
        &rules,
        format!(
            "rules:\n  - id: EVIL-1\n    title: evil\n    severity: low\n    description: d\n    mitre: []\n    remediation: r\n    condition: \"TRUE; COPY (SELECT 1) TO '{}' STORED AS CSV\"\n",
            out.display()
        ),
    )
    .unwrap();
    let o = run(&[
        "rules",
        "--rules",
        rules.to_str().unwrap(),
        "backtest",
        "--rule",
        "EVIL-1",
    ]);
    assert!(!o.status.success());
    assert!(!out.exists(), "a backtest wrote a file");
}

#[test]
fn bad_arguments_are_errors_not_panics() {
    let _shared = SOAK.read().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    for args in [
        vec!["findings", "--since", "5é"],
        vec![
            "rules",
            "backtest",
            "--rule",
            "K8S-RBAC-001",
            "--since",
            "é",
        ],
        vec!["ingest", "--cluster", "..", "/dev/null"],
        vec!["ingest", "--cluster", ".", "/dev/null"],
    ] {
        let o = Command::new(BIN)
            .arg("--archive")
            .arg(&archive)
            .args(&args)
            .env("AUDITLAKE_LOG", "warn")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{args:?}: {o:?}");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
    }
}

#[test]
fn certificates_and_tokens_are_reloaded_on_sighup() {
    let _shared = SOAK.read().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let old = "old-token-0123456789abcdef";
    let new = "new-token-0123456789abcdef";
    std::fs::write(&tokens, format!("{old} apiserver\n")).unwrap();
    let (webhook, ops) = (free_port(), free_port());
    let mut child = Command::new(BIN)
        .arg("--archive")
        .arg(dir.path().join("archive"))
        .args(["serve", "--insecure-plain-http", "--findings", "none"])
        .args([
            "--listen",
            &webhook.to_string(),
            "--ops-listen",
            &ops.to_string(),
        ])
        .arg("--wal-dir")
        .arg(dir.path().join("wal"))
        .arg("--bearer-tokens-file")
        .arg(&tokens)
        .env("AUDITLAKE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while http(ops, "GET", "/readyz", b"") != Some(200) {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    let body = TrafficGenerator::new(1, Mix::default())
        .starting_recently(60)
        .event_list(2);
    let post = |token: &str| {
        let mut s = std::net::TcpStream::connect(webhook).unwrap();
        use std::io::{Read, Write};
        write!(
            s,
            "POST /audit/webhook HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer.split_whitespace().nth(1).unwrap().to_string()
    };
    assert_eq!(post(old), "200");
    assert_eq!(post(new), "403");
    std::fs::write(&tokens, format!("{new} apiserver\n")).unwrap();
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while post(new) != "200" {
        assert!(Instant::now() < deadline, "the new token was not loaded");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(post(old), "403", "the old token is gone");
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP does not stop the server"
    );
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(wait_exit(&mut child, 60).success());
}

/// Peak RSS allowed for `serve` (debug build, detectors on) after a million distinct
/// principals were denied: the detectors' per-key state is capped (README "Memory").
const MAX_RSS_MILLION_PRINCIPALS_MIB: f64 = 640.0;

/// `n` denied `list secrets` events, each from its own principal, as NDJSON.
fn denied_by_distinct_principals(from: usize, n: usize) -> String {
    let mut out = String::with_capacity(n * 700);
    for i in from..from + n {
        let t = time_text(1_796_083_200_000_000 + i as i64 * 1_000);
        out.push_str(&format!(
            r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"deny-{i}","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/default/secrets","verb":"list","user":{{"username":"attacker-{i}","groups":["system:authenticated"]}},"sourceIPs":["10.9.0.1"],"userAgent":"curl/8","objectRef":{{"resource":"secrets","namespace":"default","apiVersion":"v1"}},"responseStatus":{{"metadata":{{}},"status":"Failure","reason":"Forbidden","code":403}},"requestReceivedTimestamp":"{t}","stageTimestamp":"{t}","annotations":{{"authorization.k8s.io/decision":"forbid","authorization.k8s.io/reason":""}}}}"#
        ));
        out.push('\n');
    }
    out
}

#[test]
fn a_million_distinct_denied_principals_stay_under_a_fixed_memory_bound() {
    let _shared = SOAK.read().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let findings = dir.path().join("findings.ndjson");
    let mut server = Server::spawn(
        dir.path(),
        &[
            "--flush-interval-seconds",
            "2",
            "--findings",
            findings.to_str().unwrap(),
        ],
        None,
        Stdio::null(),
    );
    server.wait_ready(60);
    const TOTAL: usize = 1_000_000;
    const BATCH: usize = 10_000;
    let started = Instant::now();
    for from in (0..TOTAL).step_by(BATCH) {
        let body = denied_by_distinct_principals(from, BATCH);
        // 429 while the archive catches up: retry as the apiserver would.
        loop {
            match server.post("prod", body.as_bytes()) {
                Some(200) => break,
                Some(429) | Some(503) => std::thread::sleep(Duration::from_millis(500)),
                other => panic!("{other:?}"),
            }
        }
    }
    server.wait_metric("auditlake_events_committed_total", TOTAL as f64, 900);
    let took = started.elapsed();
    let peak = server.peak_rss_mib();
    let evicted_windows = server.metric("auditlake_detector_state_evicted_fold_windows_total");
    let evicted_principals =
        server.metric("auditlake_detector_state_evicted_burst_principals_total");
    assert!(evicted_windows > 0.0, "the finding windows were capped");
    assert!(server.metric("auditlake_findings_total") >= TOTAL as f64 / 2.0);
    let (status, _) = server.terminate(120);
    assert!(status.success());
    eprintln!(
        "1M distinct denied principals in {took:?}: peak RSS {peak:.0} MiB, {evicted_windows} \
         finding windows and {evicted_principals} burst principals evicted"
    );
    assert!(
        peak < MAX_RSS_MILLION_PRINCIPALS_MIB,
        "peak RSS {peak:.0} MiB"
    );
}

/// Kills `serve` with SIGKILL this many times under load in the soak test.
const SOAK_KILLS: usize = 50;

/// The soak runs alone: it kills the server at random moments, and a record the archiver is
/// on at three kills is set aside by design; the other tests' load (16 MiB bodies, a
/// million principals, Kafka members) made that happen by chance and fail its "nothing was
/// set aside" check. The other tests share the lock with each other.
static SOAK: std::sync::RwLock<()> = std::sync::RwLock::new(());

#[test]
fn fifty_sigkills_under_concurrent_load_lose_and_duplicate_no_acknowledged_event() {
    let _alone = SOAK.write().unwrap_or_else(|e| e.into_inner());
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let (webhook, ops) = (free_port(), free_port());
    let spawn = || {
        Command::new(BIN)
            .arg("--archive")
            .arg(dir.path().join("archive"))
            .args(["serve", "--insecure-plain-http", "--allow-unauthenticated"])
            .args([
                "--listen",
                &webhook.to_string(),
                "--ops-listen",
                &ops.to_string(),
            ])
            .arg("--wal-dir")
            .arg(dir.path().join("wal"))
            .args(["--flush-interval-seconds", "1", "--findings", "none"])
            // Small segments and a short duplicate window: a restart re-reads only the log
            // a resend could still come from (the posters resend within a second).
            .args([
                "--wal-segment-bytes",
                "4194304",
                "--dedup-window-seconds",
                "20",
            ])
            .env("AUDITLAKE_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let ready = |child: &mut std::process::Child| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while http(ops, "GET", "/readyz", b"") != Some(200) {
            if let Ok(Some(s)) = child.try_wait() {
                panic!("serve exited by itself: {s}");
            }
            assert!(Instant::now() < deadline, "not ready after a restart");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Four apiservers: each batch is resent until a 200, as the apiserver retries; only a
    // 200 counts as acknowledged.
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let batches = Arc::new(AtomicU64::new(0));
    let posters: Vec<_> = (0..4u64)
        .map(|t| {
            let (acked, stop, batches) = (acked.clone(), stop.clone(), batches.clone());
            std::thread::spawn(move || {
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let items: Vec<serde_json::Value> =
                        TrafficGenerator::new(t * 1_000_000 + i, Mix::default())
                            .starting_recently(60)
                            .ndjson(50)
                            .lines()
                            .map(|l| serde_json::from_str(l).unwrap())
                            .collect();
                    let body = serde_json::json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": items}).to_string();
                    while !stop.load(Ordering::Relaxed) {
                        if http(webhook, "POST", "/audit/webhook/soak", body.as_bytes()) == Some(200)
                        {
                            acked.lock().unwrap().extend(items.iter().map(|e| {
                                (
                                    e["auditID"].as_str().unwrap().to_string(),
                                    e["stage"].as_str().unwrap().to_string(),
                                )
                            }));
                            batches.fetch_add(1, Ordering::Relaxed);
                            // A steady load the archiver keeps up with, as in production.
                            std::thread::sleep(Duration::from_millis(25));
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            })
        })
        .collect();
    let mut rng = auditlake_fixtures::SplitMix64::new(2026);
    let started = Instant::now();
    for kill in 0..SOAK_KILLS {
        let mut child = spawn();
        // One kill in five lands during start-up and replay; the rest under load.
        if kill % 5 == 4 {
            std::thread::sleep(Duration::from_millis(rng.next_u64() % 400));
        } else {
            ready(&mut child);
            std::thread::sleep(Duration::from_millis(50 + rng.next_u64() % 1_200));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        if kill % 10 == 9 {
            eprintln!("soak: {} kills after {:?}", kill + 1, started.elapsed());
        }
    }
    // A last run: replay everything, take a few more batches, then stop cleanly.
    let mut child = spawn();
    ready(&mut child);
    let before = batches.load(Ordering::Relaxed);
    while batches.load(Ordering::Relaxed) < before + 20 {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    for p in posters {
        p.join().unwrap();
    }
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(wait_exit(&mut child, 120).success());
    let acked = acked.lock().unwrap().clone();
    let csv = query_csv(
        &dir.path().join("archive"),
        "SELECT audit_id, stage FROM events",
    );
    let mut counts: std::collections::HashMap<(String, String), usize> = Default::default();
    for line in csv.lines().skip(1) {
        let (id, stage) = line.split_once(',').unwrap();
        *counts
            .entry((id.to_string(), stage.to_string()))
            .or_default() += 1;
    }
    let missing = acked.iter().filter(|k| !counts.contains_key(*k)).count();
    let duplicated = counts.values().filter(|&&n| n > 1).count();
    eprintln!(
        "soak: {SOAK_KILLS} SIGKILLs in {:?}, {} events acknowledged, {} archived, {missing} missing, {duplicated} duplicated",
        started.elapsed(),
        acked.len(),
        counts.len()
    );
    assert!(acked.len() > 10_000, "too little load: {}", acked.len());
    assert_eq!(missing, 0, "acknowledged events missing from the archive");
    assert_eq!(duplicated, 0, "events archived more than once");
    // A kill that lands inside a write-ahead log append leaves a torn frame at the log's
    // end, which recovery keeps in the quarantine: that body was never acknowledged (none
    // is missing above). Anything else set aside (a record the archiver "failed on"
    // repeatedly) is a kill mistaken for a poison record.
    let set_aside: Vec<_> = quarantine_records(&dir.path().join("archive"))
        .iter()
        .map(|r| r["reason"].as_str().unwrap_or_default().to_string())
        .filter(|reason| {
            !(reason.starts_with("torn append at the end of write-ahead log segment")
                && reason.contains("it was never acknowledged"))
        })
        .collect();
    assert!(
        set_aside.is_empty(),
        "records were set aside: {set_aside:?}"
    );
}

/// The out-of-process Kafka broker the Kafka scenarios need, or a failure saying how to
/// start one.
fn external_kafka() -> String {
    std::env::var("AUDITLAKE_TEST_KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!(
            "AUDITLAKE_TEST_KAFKA_BROKERS is not set: run the tests with scripts/test.sh (it \
             starts tansu on loopback), or start a Kafka broker and set it to host:port"
        )
    })
}

fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = rt
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .unwrap();
    for r in results {
        r.unwrap();
    }
}

/// Two Kafka members die (abort, as SIGKILL would) at their first commit: one after putting
/// its files but before the manifest record, the other after the record but before telling
/// Kafka its offsets. Restarted, they archive every produced event exactly once.
#[test]
fn kafka_members_killed_before_their_record_or_their_offset_commit_archive_every_event_once() {
    let _shared = SOAK.read().unwrap_or_else(|e| e.into_inner());
    let brokers = external_kafka();
    let topic = format!(
        "kill-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros()
    );
    create_topic(&brokers, &topic, 3);
    let dir = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a_dir).unwrap();
    std::fs::create_dir_all(&b_dir).unwrap();
    let archive = a_dir.join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    // Both members write the one archive.
    std::os::unix::fs::symlink(&archive, b_dir.join("archive")).unwrap();

    const EVENTS: usize = 3000;
    let input = dir.path().join("audit.ndjson");
    let mut generator = TrafficGenerator::new(11, Mix::default()).starting_recently(600);
    std::fs::write(&input, generator.ndjson(EVENTS)).unwrap();
    let out = Command::new(BIN)
        .args([
            "produce",
            "--kafka-brokers",
            &brokers,
            "--kafka-topic",
            &topic,
        ])
        .args(["--cluster", "kill-test"])
        .arg(&input)
        .env("AUDITLAKE_LOG", "warn")
        .output()
        .unwrap();
    success_stdout(out);

    let group = format!("{topic}-archivers");
    let member_args = [
        "--kafka-brokers",
        &brokers,
        "--kafka-topic",
        &topic,
        "--kafka-group",
        &group,
        "--findings",
        "none",
        "--flush-interval-seconds",
        "1",
        "--kafka-option",
        "session.timeout.ms=6000",
        "--kafka-option",
        "heartbeat.interval.ms=500",
    ];
    let mut a = Server::spawn(
        &a_dir,
        &member_args,
        Some("export AUDITLAKE_FAILPOINT=before-manifest-record;"),
        Stdio::piped(),
    );
    let mut b = Server::spawn(
        &b_dir,
        &member_args,
        Some("export AUDITLAKE_FAILPOINT=before-source-durable;"),
        Stdio::piped(),
    );
    for (m, point) in [
        (&mut a.child, "before-manifest-record"),
        (&mut b.child, "before-source-durable"),
    ] {
        let status = wait_exit(m, 90);
        let mut stderr = String::new();
        std::io::Read::read_to_string(m.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert!(
            !status.success() && stderr.contains(&format!("failpoint {point} reached")),
            "the failpoint aborts the member: {status}: {stderr}"
        );
    }
    let records_after_crash = std::fs::read_dir(archive.join("_manifest"))
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "json")
            })
            .count()
        })
        .unwrap_or(0);
    assert!(
        records_after_crash >= 1,
        "the member killed after its record left that record"
    );

    // Their logs are shown if they fail.
    let logs = [dir.path().join("a.log"), dir.path().join("b.log")];
    let log_to = |p: &std::path::Path| Stdio::from(std::fs::File::create(p).unwrap());
    let info = Some("export AUDITLAKE_LOG=info;");
    let mut a = Server::spawn(&a_dir, &member_args, info, log_to(&logs[0]));
    let mut b = Server::spawn(&b_dir, &member_args, info, log_to(&logs[1]));
    let show = || {
        logs.iter()
            .map(|l| std::fs::read_to_string(l).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n--- the other member ---\n")
    };
    for m in [&mut a, &mut b] {
        if let Err(why) = m.ready_within(60) {
            panic!("{why}; the members' logs:\n{}", show());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = Command::new(BIN)
            .arg("--archive")
            .arg(&archive)
            .args([
                "query",
                "--format",
                "csv",
                "-c",
                "SELECT count(*) FROM events",
            ])
            .env("AUDITLAKE_LOG", "error")
            .output()
            .unwrap();
        let n: usize = String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0);
        if n >= EVENTS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} of {EVENTS} events archived after 120 s; the members' logs:\n{}",
            show()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(a.terminate(30).0.success());
    assert!(b.terminate(30).0.success());
    let csv = query_csv(
        &archive,
        "SELECT count(*) AS n, count(DISTINCT audit_id || '/' || stage) AS distinct_n, \
         min(cluster) AS c FROM events",
    );
    assert_eq!(
        csv.lines().nth(1).unwrap(),
        format!("{EVENTS},{EVENTS},kill-test"),
        "every event once, under the cluster of its header"
    );
}
