//! The `auditlake` binary end to end: `serve` killed with SIGKILL while apiservers post (after
//! a restart every acknowledged event is in the archive exactly once), and `demo`.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use auditlake_fixtures::{Mix, TrafficGenerator};

mod common;
use common::*;

#[test]
fn every_acknowledged_event_survives_sigkill_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (webhook, ops) = (free_port(), free_port());
    // Signed: the log must come through the kill with every record under a checkpoint.
    let key = dir.path().join("log.key");
    auditlake_ok(
        &dir.path().join("archive"),
        &["keys", "generate", "--out", key.to_str().unwrap()],
    );
    let mut server = start(dir.path(), webhook, ops, Stdio::null());

    // Four apiservers post 100-event batches; we remember what was acknowledged.
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let posters: Vec<_> = (0..4u64)
        .map(|t| {
            let (acked, stop) = (acked.clone(), stop.clone());
            std::thread::spawn(move || {
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let items: Vec<serde_json::Value> = TrafficGenerator::new(t * 100_000 + i, Mix::default())
                        .starting_recently(60)
                        .ndjson(100)
                        .lines()
                        .map(|l| serde_json::from_str(l).unwrap())
                        .collect();
                    let body = serde_json::json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": items}).to_string();
                    match http(webhook, "POST", "/audit/webhook/crash", body.as_bytes()) {
                        Some(200) => acked.lock().unwrap().extend(items.iter().map(|e| {
                            (e["auditID"].as_str().unwrap().to_string(), e["stage"].as_str().unwrap().to_string())
                        })),
                        Some(_) | None => break,
                    }
                }
            })
        })
        .collect();
    // Let some batches commit to Parquet and others sit only in the log, then kill -9.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 20_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1_300));
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for p in posters {
        p.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 1_000,
        "only {} events acknowledged before the kill",
        acked.len()
    );

    // Restart: the log is replayed; then stop cleanly.
    let server = start(dir.path(), webhook, ops, Stdio::piped());
    let status = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = server.wait_with_output().unwrap();
    assert!(out.status.success(), "SIGTERM exits 0");
    let log = String::from_utf8_lossy(&out.stderr);
    let replayed: u64 = log
        .split(" log records replayed at start")
        .next()
        .and_then(|s| s.rsplit('(').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no replay summary in: {log}"));
    assert!(
        replayed > 0,
        "the kill should leave acknowledged records only in the log: {log}"
    );

    let csv = query_csv(
        &dir.path().join("archive"),
        "SELECT audit_id, stage FROM events",
    );
    let mut counts: HashMap<(String, String), usize> = HashMap::new();
    for line in csv.lines().skip(1) {
        let (id, stage) = line.split_once(',').unwrap();
        *counts
            .entry((id.to_string(), stage.to_string()))
            .or_default() += 1;
    }
    let acked_set: HashSet<_> = acked.iter().cloned().collect();
    assert_eq!(acked_set.len(), acked.len(), "generated keys are unique");
    let missing = acked_set
        .iter()
        .filter(|k| !counts.contains_key(*k))
        .count();
    let duplicated = counts.values().filter(|&&n| n > 1).count();
    assert_eq!(missing, 0, "acknowledged events missing from the archive");
    // Rows beyond the acknowledged set are fine: stored, but the answer was lost in the kill.
    assert_eq!(duplicated, 0, "events archived more than once");
    // Every record is signed, every file is as committed, and the files of the commit the
    // kill cut short were cleaned up at restart (no orphan).
    let vkey = format!("{}.vkey", key.display());
    let (code, out) = auditlake_status(
        &dir.path().join("archive"),
        &["verify", "--public-key", &vkey],
    );
    assert_eq!(code, 0, "{out}");
    // The log's sequence numbers continue across the kill and the replay: no record
    // starts past the one before it, so the evidence report finds no hole.
    let report: serde_json::Value = serde_json::from_str(&auditlake_ok(
        &dir.path().join("archive"),
        &["evidence", "--format", "json"],
    ))
    .unwrap();
    assert_eq!(
        report["completeness"]["holes"],
        serde_json::json!([]),
        "{:#}",
        report["completeness"]["holes"]
    );
}

#[test]
fn demo_posts_through_the_mutual_tls_webhook_and_archives_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let demo = Command::new(BIN)
        .args(["--archive", archive.to_str().unwrap(), "demo"])
        .args([
            "--events",
            "1500",
            "--batch-events",
            "100",
            "--cluster",
            "demo-test",
        ])
        .env("AUDITLAKE_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&demo.stderr);
    assert!(demo.status.success(), "{stderr}");
    assert!(stderr.contains("posted 1500 events"), "{stderr}");
    assert!(stderr.contains("1500 events committed"), "{stderr}");
    let stdout = String::from_utf8_lossy(&demo.stdout);
    assert!(
        stdout.contains("events/cluster=demo-test/date="),
        "{stdout}"
    );
    assert!(stdout.contains("| user_username"), "{stdout}");

    let out = query_csv(
        &archive,
        "SELECT count(*) AS n, count(DISTINCT audit_id || stage) AS k, \
         min(split_part(source_ref, ' wal:', 1)) AS sender, max(cluster) AS c FROM events",
    );
    assert_eq!(
        out.lines().nth(1),
        Some("1500,1500,webhook[kube-apiserver-demo token:demo-apiserver],demo-test"),
        "every event once, sent with the demo's client certificate and token: {out}"
    );
    // Detection runs on its own thread in `serve`: every finding it emitted, the summaries
    // of folded repeats at shutdown included, is in the archive's findings table.
    let raised: usize = stdout
        .split("detectors raised ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no findings count in {stdout}"));
    assert!(raised > 0, "{stdout}");
    let out = query_csv(&archive, "SELECT count(*) AS n FROM findings");
    assert_eq!(
        out.lines().nth(1),
        Some(raised.to_string().as_str()),
        "{out}"
    );
}

/// `auditlake serve --print-config` with `args` and the environment `env` (nothing else of
/// the test's environment): the effective configuration.
fn effective_config(args: &[&str], env: &[(&str, &str)]) -> toml::Table {
    let out = Command::new(BIN)
        .arg("serve")
        .args(args)
        .arg("--print-config")
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap();
    toml::from_str(&success_stdout(out)).unwrap()
}

#[test]
fn a_flag_beats_its_variable_which_beats_the_config_file_which_beats_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("auditlake.toml");
    std::fs::write(
        &config,
        "cluster = \"from-file\"\nwal_max_bytes = 5\nflush_interval_seconds = 7\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let c = effective_config(
        &["--config", config, "--cluster", "from-flag"],
        &[
            ("AUDITLAKE_CLUSTER", "from-env"),
            ("AUDITLAKE_WAL_MAX_BYTES", "6"),
        ],
    );
    assert_eq!(c["cluster"].as_str(), Some("from-flag"), "flag over env");
    assert_eq!(c["wal_max_bytes"].as_integer(), Some(6), "env over file");
    assert_eq!(
        c["flush_interval_seconds"].as_integer(),
        Some(7),
        "file over default"
    );
    assert_eq!(
        c["dedup_window_seconds"].as_integer(),
        Some(600),
        "the default"
    );
    // The config file itself can come from the environment; lists and switches too.
    let c = effective_config(
        &["--findings", "none", "--wal-retarget"],
        &[
            ("AUDITLAKE_CONFIG", config),
            ("AUDITLAKE_FINDINGS", "stdout,/tmp/f.ndjson"),
            ("AUDITLAKE_INSECURE_PLAIN_HTTP", "true"),
        ],
    );
    assert_eq!(c["cluster"].as_str(), Some("from-file"));
    assert_eq!(c["findings"].as_array().unwrap().len(), 1, "{c:?}");
    assert_eq!(c["wal_retarget"].as_bool(), Some(true));
    assert_eq!(c["insecure_plain_http"].as_bool(), Some(true));
    // A bad value names its flag.
    let out = Command::new(BIN)
        .args(["serve", "--wal-max-bytes", "lots", "--print-config"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--wal-max-bytes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn query_takes_commands_and_files_prints_every_statement_and_refuses_a_non_archive() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let sample = auditlake_fixtures::data_dir().join("samples/handwritten.ndjson");
    auditlake_ok(
        &archive,
        &["ingest", "--findings", "none", sample.to_str().unwrap()],
    );
    let sql = dir.path().join("investigation.sql");
    std::fs::write(
        &sql,
        "-- two statements, both printed\nSELECT count(*) AS n FROM events;\nSELECT 'second' AS s;\n",
    )
    .unwrap();
    let out = auditlake_ok(
        &archive,
        &[
            "query",
            "--format",
            "csv",
            "-c",
            "SELECT 'first' AS s",
            "-f",
            sql.to_str().unwrap(),
        ],
    );
    assert_eq!(out, "s\nfirst\nn\n8\ns\nsecond\n");
    // --maxrows cuts what is printed and says so; inf prints all.
    let out = Command::new(BIN)
        .arg("--archive")
        .arg(&archive)
        .args(["query", "--maxrows", "3", "--format", "ndjson", "-c"])
        .arg("SELECT audit_id FROM events")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("8 rows; the first 3 shown"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = auditlake_ok(
        &archive,
        &[
            "query",
            "--maxrows",
            "inf",
            "-c",
            "SELECT audit_id FROM events",
        ],
    );
    assert_eq!(
        table
            .lines()
            .filter(|l| l.starts_with("| ") && !l.contains("audit_id"))
            .count(),
        8
    );
    // SQL piped on standard input runs like a file.
    let mut child = Command::new(BIN)
        .arg("--archive")
        .arg(&archive)
        .args(["query", "--format", "csv"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"SELECT count(*) AS n FROM events;")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "n\n8\n");
    // A location that holds no archive is an error naming it, not 0 rows.
    let empty = dir.path().join("not-an-archive");
    std::fs::create_dir(&empty).unwrap();
    let out = Command::new(BIN)
        .arg("--archive")
        .arg(&empty)
        .args(["query", "-c", "SELECT count(*) FROM events"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("holds no auditlake archive") && stderr.contains("not-an-archive"),
        "{stderr}"
    );
    // -f is a file, not a format.
    let out = Command::new(BIN)
        .arg("--archive")
        .arg(&archive)
        .args(["query", "-f", "json"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading SQL file json"));
}

#[test]
fn ingest_runs_the_detectors_and_a_rule_backtests_over_the_archive() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let input = scenario_ndjson(
        dir.path(),
        "fixtures/scenarios/rbac-crb-cluster-admin-by-stranger.yaml",
    );
    let findings = dir.path().join("findings.ndjson");
    auditlake_ok(
        &archive,
        &[
            "ingest",
            "--cluster",
            "prod",
            "--findings",
            findings.to_str().unwrap(),
            input.to_str().unwrap(),
        ],
    );
    let lines = read_ndjson(&findings);
    let mut rules: Vec<&str> = lines
        .iter()
        .map(|f| f["rule_id"].as_str().unwrap())
        .collect();
    rules.sort();
    assert_eq!(rules, ["K8S-RBAC-001", "K8S-RBAC-005"]);
    assert!(
        lines
            .iter()
            .all(|f| f["cluster"] == "prod" && f["evidence"][0] == "crb-1")
    );

    // The same rule text over the archive: one matching event (the ResponseComplete stage).
    let csv = auditlake_ok(
        &archive,
        &[
            "rules",
            "backtest",
            "--rule",
            "K8S-RBAC-001",
            "--since",
            "100000d",
            "--format",
            "csv",
        ],
    );
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{csv}");
    assert!(
        rows[0].contains(",done,mallory,create,clusterrolebindings,"),
        "{csv}"
    );
    assert!(
        rows[0].contains("ClusterRole/cluster-admin -> User:mallory"),
        "{csv}"
    );
}

#[test]
fn rules_test_passes_on_the_shipped_scenarios_and_fails_on_a_wrong_expectation() {
    let scenarios = auditlake_fixtures::checkout_dir().join("fixtures/scenarios");
    let ok = Command::new(BIN)
        .args(["rules", "test", scenarios.to_str().unwrap()])
        .env("AUDITLAKE_LOG", "warn")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{table}");
    assert!(
        table.contains("| **all** |") && table.contains("scenarios passed"),
        "{table}"
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("wrong.yaml"),
        "description: expects a finding that cannot fire\nlabel: attack\nevents:\n  - {verb: list, objectRef: {resource: pods}}\nexpect:\n  - {rule: K8S-WL-001}\n",
    )
    .unwrap();
    let bad = Command::new(BIN)
        .args(["rules", "test", dir.path().to_str().unwrap()])
        .env("AUDITLAKE_LOG", "warn")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stdout).contains("| wrong | attack | K8S-WL-001 | - | FAIL |")
    );
}

/// One RequestResponse-level patch of RoleBinding apps/ci-view by alice at `time`, leaving
/// `subjects` (besides the service account ci) bound to ClusterRole view.
fn ci_view_patch(audit_id: &str, time: &str, users: &[&str]) -> String {
    let mut subjects =
        vec![serde_json::json!({"kind": "ServiceAccount", "name": "ci", "namespace": "apps"})];
    subjects.extend(
        users
            .iter()
            .map(|u| serde_json::json!({"kind": "User", "name": u})),
    );
    let event = serde_json::json!({
        "auditID": audit_id, "verb": "patch", "user": {"username": "alice"},
        "requestReceivedTimestamp": time, "stageTimestamp": time,
        "objectRef": {"resource": "rolebindings", "apiGroup": "rbac.authorization.k8s.io",
                      "namespace": "apps", "name": "ci-view"},
        "requestObject": {"subjects": subjects},
        "responseObject": {"kind": "RoleBinding", "metadata": {"name": "ci-view", "namespace": "apps"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": subjects},
    });
    format!(
        "{}\n",
        auditlake_analytics::complete_event(0, &serde_json::Value::Null, &event)
    )
}

#[test]
fn rbac_drift_is_found_archived_and_remembered_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let baseline = dir.path().join("gitops");
    std::fs::create_dir(&baseline).unwrap();
    std::fs::write(
        baseline.join("ci.yaml"),
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\n\
         metadata: {name: ci-view, namespace: apps}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}\n\
         subjects: [{kind: ServiceAccount, name: ci}]\n",
    )
    .unwrap();
    let findings = dir.path().join("findings.ndjson");
    // Two separate processes: the second must know what the first rebuilt.
    let runs = [
        ("p-1", "2026-11-01T10:00:00.000000Z", vec!["mallory"]),
        ("p-2", "2026-11-01T11:00:00.000000Z", vec!["bob"]),
    ];
    for (id, time, users) in &runs {
        let input = dir.path().join(format!("{id}.ndjson"));
        std::fs::write(&input, ci_view_patch(id, time, users)).unwrap();
        auditlake_ok(
            &archive,
            &[
                "ingest".as_ref(),
                "--rbac-baseline".as_ref(),
                baseline.as_os_str(),
                "--findings".as_ref(),
                findings.as_os_str(),
                input.as_os_str(),
            ],
        );
    }
    let drift: Vec<serde_json::Value> = read_ndjson(&findings)
        .into_iter()
        .filter(|f| f["rule_id"] == "K8S-DRIFT-002")
        .collect();
    assert_eq!(drift.len(), 2, "{drift:?}");
    let details = |f: &serde_json::Value| -> serde_json::Value {
        serde_json::from_str(f["details"].as_str().unwrap()).unwrap()
    };
    let first = details(&drift[0]);
    assert_eq!(
        first["diff_from_baseline"]["subjects_added"],
        serde_json::json!(["User:mallory"])
    );
    assert!(first["diff_from_previous"].is_null(), "{first}");
    // The second run restored the first version from the archive's rbac_history.
    let second = details(&drift[1]);
    assert_eq!(
        second["diff_from_previous"],
        serde_json::json!({"subjects_added": ["User:bob"], "subjects_removed": ["User:mallory"]})
    );
    assert_eq!(drift[1]["principal"], "alice");
    assert_eq!(drift[1]["evidence"], serde_json::json!(["p-2"]));

    // Archived findings, through `auditlake findings`.
    let archived: Vec<serde_json::Value> = auditlake_ok(
        &archive,
        &[
            "findings",
            "--since",
            "100000d",
            "--rule",
            "K8S-DRIFT-002",
            "--format",
            "ndjson",
        ],
    )
    .lines()
    .map(|l| serde_json::from_str(l).unwrap())
    .collect();
    assert_eq!(archived.len(), 2);
    assert_eq!(
        archived[0]["evidence"],
        serde_json::json!(["p-2"]),
        "newest first"
    );

    // Who was bound to view through ci-view, as of a time between the two patches and after.
    let as_of = |t: &str| {
        query_csv(
            &archive,
            &format!(
                "SELECT array_to_string(subjects, ' ') AS s FROM rbac_state \
                 WHERE name = 'ci-view' AND valid_from <= TIMESTAMP '{t}' \
                 AND (valid_until IS NULL OR valid_until > TIMESTAMP '{t}')"
            ),
        )
    };
    assert_eq!(
        as_of("2026-11-01T10:30:00Z"),
        "s\nServiceAccount:apps/ci User:mallory\n"
    );
    assert_eq!(
        as_of("2026-11-01T12:00:00Z"),
        "s\nServiceAccount:apps/ci User:bob\n"
    );
    // Both tables are in the manifest chain with the events.
    let manifests = std::fs::read_dir(archive.join("_manifest"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "json")
        })
        .count();
    assert_eq!(manifests, 2);
}

#[test]
fn rules_learn_proposes_who_did_what_a_list_allows_and_the_proposal_is_a_rule_file() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let input = scenario_ndjson(
        dir.path(),
        "fixtures/scenarios/rbac-unlisted-controller-binds-in-every-namespace.yaml",
    );
    auditlake_ok(
        &archive,
        &["ingest", "--findings", "none", input.to_str().unwrap()],
    );
    let proposal = dir.path().join("learned.yaml");
    auditlake_ok(
        &archive,
        &[
            "rules",
            "learn",
            "--since",
            "100000d",
            "--output",
            proposal.to_str().unwrap(),
        ],
    );
    let text = std::fs::read_to_string(&proposal).unwrap();
    assert!(
        text.contains("\"system:serviceaccount:ci:deployer\"   # PROPOSED: 3 requests"),
        "{text}"
    );
    // Reviewed and passed back with --rules, the controller is no longer reported.
    let findings = dir.path().join("findings.ndjson");
    auditlake_ok(
        &dir.path().join("archive-2"),
        &[
            "ingest",
            "--rules",
            proposal.to_str().unwrap(),
            "--findings",
            findings.to_str().unwrap(),
            input.to_str().unwrap(),
        ],
    );
    let fired: Vec<String> = std::fs::read_to_string(&findings)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["rule_id"].to_string())
        .collect();
    assert!(fired.is_empty(), "{fired:?}");
}

/// Findings of `ingest` over `input` as (rule, cluster, evidence), sorted, and the
/// counters line of its summary.
fn findings_of(
    dir: &Path,
    name: &str,
    input: &Path,
    env: &[(&str, &str)],
) -> (Vec<(String, String, String)>, String) {
    let findings = dir.join(format!("{name}.findings.ndjson"));
    let out = Command::new(BIN)
        .envs(env.iter().copied())
        .arg("--archive")
        .arg(dir.join(format!("{name}.archive")))
        .args(["ingest", "--cluster", "configured", "--findings"])
        .args([&findings, input])
        .env("AUDITLAKE_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let counters = stderr
        .lines()
        .find(|l| l.starts_with("counters:"))
        .unwrap_or_default()
        .to_string();
    let mut found: Vec<_> = read_ndjson(&findings)
        .iter()
        .map(|f| {
            (
                f["rule_id"].as_str().unwrap().to_string(),
                f["cluster"].as_str().unwrap().to_string(),
                f["evidence"].to_string(),
            )
        })
        .collect();
    found.sort();
    (found, counters)
}

#[test]
fn every_scenario_raises_the_same_findings_wrapped_in_eks_and_aks_envelopes_as_unwrapped() {
    let dir = tempfile::tempdir().unwrap();
    let scenarios = auditlake_fixtures::checkout_dir().join("fixtures/scenarios");
    let events: Vec<String> = auditlake_analytics::scenario_files(&scenarios)
        .unwrap()
        .iter()
        .flat_map(|path| scenario_events(path))
        .collect();
    assert!(events.len() > 100, "{} scenario events", events.len());
    // Unwrapped, for the cluster the envelopes name.
    let plain_file = dir.path().join("plain.ndjson");
    std::fs::write(&plain_file, events.join("\n")).unwrap();
    let (plain, counters) = findings_of(dir.path(), "plain", &plain_file, &[]);
    assert!(!counters.contains("envelope"), "{counters}");
    assert!(plain.len() > 20, "{plain:?}");
    eprintln!("{} scenario events, {} findings", events.len(), plain.len());
    let for_cluster = |c: &str| -> Vec<_> {
        plain
            .iter()
            .map(|(r, _, e)| (r.clone(), c.to_string(), e.clone()))
            .collect()
    };

    // EKS: subscription messages of 50 log events each, one per line, with health checks
    // and the scheduler's klog stream between them.
    let mut eks = String::new();
    for (m, chunk) in events.chunks(50).enumerate() {
        let log_events: Vec<_> = chunk
            .iter()
            .enumerate()
            .map(|(i, e)| serde_json::json!({"id": format!("{m:028}{i:028}"), "timestamp": 1_780_000_000_000_i64, "message": e}))
            .collect();
        let data = serde_json::json!({"messageType": "DATA_MESSAGE", "owner": "123456789012",
            "logGroup": "/aws/eks/prod-eu/cluster", "logStream": "kube-apiserver-audit-0a1b2c",
            "subscriptionFilters": ["auditlake"], "logEvents": log_events});
        eks.push_str(&format!("{data}\n"));
        eks.push_str(&format!("{}\n", serde_json::json!({"messageType": "CONTROL_MESSAGE", "owner": "CloudwatchLogs",
            "logGroup": "", "logStream": "", "logEvents": [{"id": "", "timestamp": 1, "message": "CWL CONTROL MESSAGE: Checking health of destination Firehose."}]})));
        eks.push_str(&format!("{}\n", serde_json::json!({"messageType": "DATA_MESSAGE", "owner": "123456789012",
            "logGroup": "/aws/eks/prod-eu/cluster", "logStream": "kube-scheduler-0a1b2c",
            "logEvents": [{"id": "1", "timestamp": 1, "message": "I1101 03:12:00.000000 1 schedule_one.go:1] scheduled"}]})));
    }
    let eks_file = dir.path().join("eks.ndjson");
    std::fs::write(&eks_file, eks).unwrap();
    let (eks_findings, counters) = findings_of(dir.path(), "eks", &eks_file, &[]);
    assert_eq!(eks_findings, for_cluster("prod-eu"));
    // One health check and one klog line per message, counted.
    let messages = events.len().div_ceil(50);
    for reason in ["cloudwatch_control_message", "cloudwatch_other_stream"] {
        let counted = format!("envelope_records_skipped{{reason={reason}}}={messages}");
        assert!(counters.contains(&counted), "{counted} in {counters}");
    }

    // AKS: Event Hubs bodies of 50 records, `properties.log` the apiserver's stdout line,
    // with another category's record in each.
    let resource = "/SUBSCRIPTIONS/0000/RESOURCEGROUPS/RG/PROVIDERS/MICROSOFT.CONTAINERSERVICE/MANAGEDCLUSTERS/AKS-WEST";
    let mut aks = String::new();
    for chunk in events.chunks(50) {
        let mut records: Vec<_> = chunk
            .iter()
            .map(|e| serde_json::json!({"category": "kube-audit", "resourceId": resource,
                "properties": {"log": format!("{e}\n"), "stream": "stdout", "pod": "kube-apiserver-1"},
                "time": "2026-11-01T03:12:00.0000000Z"}))
            .collect();
        records.push(
            serde_json::json!({"category": "kube-apiserver", "resourceId": resource,
            "properties": {"log": "I1101 03:12:00.000000 1 handler.go:1] GET /readyz\n"}}),
        );
        aks.push_str(&format!("{}\n", serde_json::json!({ "records": records })));
    }
    let aks_file = dir.path().join("aks.json");
    std::fs::write(&aks_file, aks).unwrap();
    let (aks_findings, counters) = findings_of(dir.path(), "aks", &aks_file, &[]);
    assert_eq!(aks_findings, for_cluster("aks-west"));
    let counted = format!("envelope_records_skipped{{reason=azure_other_category}}={messages}");
    assert!(counters.contains(&counted), "{counted} in {counters}");
    // Every event archived under the envelope's cluster, none under the configured one.
    let csv = query_csv(
        &dir.path().join("aks.archive"),
        "SELECT cluster, count(*) AS n FROM events GROUP BY cluster",
    );
    assert_eq!(csv.trim(), format!("cluster,n\naks-west,{}", events.len()));
}

/// `event` (an audit.k8s.io Event) as GKE would log it: a Cloud Logging `LogEntry` of
/// cluster `gke-prod`; `None` for a stage GKE does not log (RequestReceived). `started`:
/// the audit IDs seen at ResponseStarted, whose ResponseComplete is the operation's last.
fn as_gke_log_entry(event: &str, started: &mut HashSet<String>) -> Option<serde_json::Value> {
    let e: serde_json::Value = serde_json::from_str(event).unwrap();
    let id = e["auditID"].as_str().unwrap().to_string();
    let (first, last) = match e["stage"].as_str() {
        Some("ResponseStarted") => {
            started.insert(id.clone());
            (true, false)
        }
        Some("ResponseComplete") => (!started.contains(&id), true),
        _ => return None,
    };
    let verb = e["verb"].as_str().unwrap_or("get");
    let o = &e["objectRef"];
    let (method, resource_name) = match o["resource"].as_str() {
        Some(resource) => {
            let group = match o["apiGroup"].as_str().unwrap_or("") {
                "" => "core",
                g => g,
            };
            let version = o["apiVersion"].as_str().unwrap_or("v1");
            let mut name = format!("{group}/{version}");
            if let Some(ns) = o["namespace"].as_str() {
                name.push_str(&format!("/namespaces/{ns}"));
            }
            name.push_str(&format!("/{resource}"));
            let mut method = format!("io.k8s.{group}.{version}.{resource}");
            if let Some(n) = o["name"].as_str() {
                name.push_str(&format!("/{n}"));
            }
            if let Some(sub) = o["subresource"].as_str() {
                name.push_str(&format!("/{sub}"));
                method.push_str(&format!(".{sub}"));
            }
            (format!("{method}.{verb}"), name)
        }
        None => (
            format!("io.k8s.{verb}"),
            e["requestURI"]
                .as_str()
                .unwrap_or("/")
                .trim_start_matches('/')
                .to_string(),
        ),
    };
    let code = e["responseStatus"]["code"].as_i64().unwrap_or(200);
    let mut proto = serde_json::json!({
        "@type": "type.googleapis.com/google.cloud.audit.AuditLog",
        "serviceName": "k8s.io",
        "methodName": method,
        "resourceName": resource_name,
        "authenticationInfo": {"principalEmail": e["user"]["username"]},
        "requestMetadata": {"callerIp": e["sourceIPs"].as_array().and_then(|a| a.last()).cloned().unwrap_or_default(),
            "callerSuppliedUserAgent": e["userAgent"]},
        "status": {},
    });
    let typed = |body: &serde_json::Value| {
        let mut b = body.clone();
        if let Some(m) = b.as_object_mut() {
            m.insert("@type".into(), "core.k8s.io/v1.Object".into());
        }
        b
    };
    if e["requestObject"].is_object() {
        proto["request"] = typed(&e["requestObject"]);
    }
    if code >= 400 {
        proto["status"] =
            serde_json::json!({"code": if code == 403 { 7 } else { 3 }, "message": "failed"});
        proto["response"] = serde_json::json!({"@type": "core.k8s.io/v1.Status", "apiVersion": "v1", "kind": "Status",
            "code": code, "status": "Failure", "reason": e["responseStatus"]["reason"], "metadata": {}});
    } else if e["responseObject"].is_object() {
        proto["response"] = typed(&e["responseObject"]);
    }
    let mut entry = serde_json::json!({
        "insertId": format!("{id}-{}", if last { "last" } else { "first" }),
        "logName": "projects/acme-prod/logs/cloudaudit.googleapis.com%2Factivity",
        "operation": {"id": id, "producer": "k8s.io", "first": first, "last": last},
        "protoPayload": proto,
        "resource": {"type": "k8s_cluster", "labels": {"cluster_name": "gke-prod", "location": "europe-west1", "project_id": "acme-prod"}},
        "timestamp": e["stageTimestamp"],
        "receiveTimestamp": e["stageTimestamp"],
    });
    if e["annotations"].is_object() {
        entry["labels"] = e["annotations"].clone();
    }
    Some(entry)
}

#[test]
fn openshift_and_firehose_objects_and_gke_mapped_rbac_and_exec_scenarios_raise_the_same_rules() {
    let dir = tempfile::tempdir().unwrap();
    let scenarios_dir = auditlake_fixtures::checkout_dir().join("fixtures/scenarios");
    let scenarios = auditlake_analytics::scenario_files(&scenarios_dir).unwrap();
    let events: Vec<String> = scenarios.iter().flat_map(|p| scenario_events(p)).collect();
    let plain_file = dir.path().join("plain.ndjson");
    std::fs::write(&plain_file, events.join("\n")).unwrap();
    let (plain, _) = findings_of(dir.path(), "plain", &plain_file, &[]);
    let for_cluster = |c: &str| -> Vec<_> {
        plain
            .iter()
            .map(|(r, _, e)| (r.clone(), c.to_string(), e.clone()))
            .collect()
    };

    // OpenShift's forwarder: fields inline, the audit level moved, ViaQ fields added.
    let openshift: String = events
        .iter()
        .map(|e| {
            let mut v: serde_json::Value = serde_json::from_str(e).unwrap();
            let o = v.as_object_mut().unwrap();
            if let Some(level) = o.remove("level") {
                o.insert("k8s_audit_level".into(), level);
            }
            o.insert("level".into(), "default".into());
            o.insert("log_type".into(), "audit".into());
            o.insert("hostname".into(), "master-0".into());
            o.insert(
                "openshift".into(),
                serde_json::json!({"cluster_id": "ocp-1"}),
            );
            format!("{v}\n")
        })
        .collect();
    let file = dir.path().join("openshift.ndjson");
    std::fs::write(&file, openshift).unwrap();
    assert_eq!(
        findings_of(dir.path(), "openshift", &file, &[]).0,
        for_cluster("ocp-1")
    );

    // A Firehose object in S3: each record a gzip member holding one subscription message,
    // back to back with no delimiter; with an event limit below the object's inflated size,
    // so the file source reads its one long line as a document.
    let mut object = Vec::new();
    for (m, chunk) in events.chunks(20).enumerate() {
        let log_events: Vec<_> = chunk
            .iter()
            .enumerate()
            .map(|(i, e)| serde_json::json!({"id": format!("{m:028}{i:028}"), "timestamp": 1_780_000_000_000_i64, "message": e}))
            .collect();
        let message = serde_json::json!({"messageType": "DATA_MESSAGE", "owner": "123456789012",
            "logGroup": "/aws/eks/prod-eu/cluster", "logStream": "kube-apiserver-audit-0a1b2c",
            "subscriptionFilters": ["auditlake"], "logEvents": log_events});
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, message.to_string().as_bytes()).unwrap();
        object.extend(gz.finish().unwrap());
    }
    let file = dir.path().join("firehose-object.gz");
    std::fs::write(&file, object).unwrap();
    let (found, counters) = findings_of(
        dir.path(),
        "firehose",
        &file,
        &[("AUDITLAKE_MAX_EVENT_BYTES", "65536")],
    );
    assert_eq!(found, for_cluster("prod-eu"), "{counters}");

    // GKE: the RBAC and exec scenarios as GKE logs them raise the same rules.
    let (mut mismatched, mut fired) = (Vec::new(), HashSet::new());
    for scenario in scenarios.iter().filter(|p| {
        let name = p.file_name().unwrap().to_string_lossy();
        name.starts_with("rbac-") || name.starts_with("wl-exec-")
    }) {
        let name = scenario
            .file_name()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches(".yaml")
            .to_string();
        let events = scenario_events(scenario);
        let plain_file = dir.path().join(format!("{name}.ndjson"));
        std::fs::write(&plain_file, events.join("\n")).unwrap();
        let rules = |found: Vec<(String, String, String)>| -> Vec<String> {
            let mut r: Vec<String> = found.into_iter().map(|f| f.0).collect();
            r.dedup();
            r
        };
        let expected = rules(findings_of(dir.path(), &format!("{name}.plain"), &plain_file, &[]).0);
        let mut started = HashSet::new();
        let entries: String = events
            .iter()
            .filter_map(|e| as_gke_log_entry(e, &mut started))
            .map(|e| format!("{e}\n"))
            .collect();
        let gke_file = dir.path().join(format!("{name}.gke.ndjson"));
        std::fs::write(&gke_file, entries).unwrap();
        let (found, _) = findings_of(dir.path(), &format!("{name}.gke"), &gke_file, &[]);
        assert!(found.iter().all(|f| f.1 == "gke-prod"), "{name}: {found:?}");
        let got = rules(found);
        fired.extend(got.iter().cloned());
        if got != expected {
            mismatched.push(format!("{name}: plain {expected:?}, GKE {got:?}"));
        }
    }
    assert!(mismatched.is_empty(), "{mismatched:#?}");
    // The RBAC and exec rules themselves fired on GKE's entries, not only the quiet cases.
    for rule in ["K8S-RBAC-001", "K8S-WL-001"] {
        assert!(fired.contains(rule), "{rule} never fired: {fired:?}");
    }
}

/// Runs `auditlake --archive <archive> <args>`: its exit code and stdout.
fn auditlake_status(archive: &Path, args: &[&str]) -> (i32, String) {
    let out = auditlake_output(archive, args);
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
    )
}

#[test]
fn a_signed_archive_verifies_with_public_keys_and_tampering_fails_with_its_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let key = dir.path().join("log.key");
    let witness = dir.path().join("witness.key");
    let vkey = auditlake_ok(
        &archive,
        &[
            "keys",
            "generate",
            "--out",
            key.to_str().unwrap(),
            "--name",
            "example.com/audit",
        ],
    );
    assert!(vkey.starts_with("example.com/audit+"), "{vkey}");
    auditlake_ok(
        &archive,
        &[
            "keys",
            "generate",
            "--witness",
            "--out",
            witness.to_str().unwrap(),
        ],
    );
    // A key is never overwritten.
    let again = Command::new(BIN)
        .args(["keys", "generate", "--out", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!again.status.success());
    let input = scenario_ndjson(
        dir.path(),
        "fixtures/scenarios/rbac-crb-cluster-admin-by-stranger.yaml",
    );
    let ingest = |archive: &Path| {
        auditlake_ok(
            archive,
            &[
                "ingest",
                "--signing-key",
                key.to_str().unwrap(),
                "--witness-key",
                witness.to_str().unwrap(),
                input.to_str().unwrap(),
            ],
        )
    };
    ingest(&archive);
    let pinned = dir.path().join("pinned.checkpoint");
    std::fs::copy(archive.join("_log/checkpoint"), &pinned).unwrap();
    ingest(&archive);
    let log_vkey = format!("{}.vkey", key.display());
    let witness_vkey = format!("{}.vkey", witness.display());
    let (code, out) = auditlake_status(
        &archive,
        &[
            "verify",
            "--public-key",
            &log_vkey,
            "--public-key",
            &witness_vkey,
            "--since-checkpoint",
            pinned.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("OK: 2 records"), "{out}");
    assert!(
        out.contains("signed by example.com/audit, auditlake"),
        "{out}"
    );

    // One event proven offline: both stages of crb-1, in both ingests.
    let proof = dir.path().join("proof.json");
    auditlake_ok(
        &archive,
        &[
            "prove",
            "--audit-id",
            "crb-1",
            "--out",
            proof.to_str().unwrap(),
        ],
    );
    let verify_proof = |path: &Path, keys: &[&str]| {
        let mut cmd = Command::new(BIN);
        cmd.args(["verify-proof", path.to_str().unwrap()]);
        for k in keys {
            cmd.args(["--public-key", k]);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8(out.stdout).unwrap() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, out) = verify_proof(&proof, &[&log_vkey, &witness_vkey]);
    assert_eq!(code, 0, "{out}");
    let verified: Vec<&str> = out.lines().filter(|l| l.starts_with("VERIFIED")).collect();
    assert_eq!(verified.len(), 4, "{out}");
    assert!(
        verified
            .iter()
            .all(|l| l.starts_with("VERIFIED audit ID crb-1 stage ")
                && l.contains("of cluster default")),
        "{out}"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&proof).unwrap()).unwrap();
    let tampered = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut d = doc.clone();
        edit(&mut d);
        let p = dir.path().join("tampered.json");
        std::fs::write(&p, serde_json::to_string(&d).unwrap()).unwrap();
        verify_proof(&p, &[&log_vkey])
    };
    // One field of the event changed: the row is not the one committed.
    let (code, out) = tampered(&|d| {
        for pair in d["events"][0]["row"].as_array_mut().unwrap() {
            if pair[0] == "user_username" {
                pair[1] = "system:admin".into();
            }
        }
    });
    assert_eq!(code, 17, "{out}");
    assert!(out.contains("the row is not the one committed"), "{out}");
    // The record edited: not the record the signed log holds.
    let (code, out) = tampered(&|d| {
        let record = d["events"][0]["record"]
            .as_str()
            .unwrap()
            .replace("\"rows\": 2", "\"rows\": 3");
        d["events"][0]["record"] = record.into();
    });
    assert_eq!(code, 13, "{out}");
    // Checked against a key that never signed it.
    let stranger_key = dir.path().join("other.key");
    auditlake_ok(
        &archive,
        &["keys", "generate", "--out", stranger_key.to_str().unwrap()],
    );
    let (code, out) = verify_proof(&proof, &[&format!("{}.vkey", stranger_key.display())]);
    assert_eq!(code, 10, "{out}");

    // A byte of an events file flipped: exit code 17, the line names the file.
    let events: Vec<_> = std::fs::read_dir(archive.join("events/cluster=default"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .flat_map(|h| std::fs::read_dir(h.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path())
        .collect();
    let victim = &events[0];
    let mut bytes = std::fs::read(victim).unwrap();
    bytes[10] ^= 0x40;
    std::fs::write(victim, bytes).unwrap();
    let (code, out) = auditlake_status(&archive, &["verify", "--public-key", &log_vkey]);
    assert_eq!(code, 17, "{out}");
    let name = victim.file_name().unwrap().to_str().unwrap();
    assert!(
        out.lines()
            .any(|l| l.starts_with("FILE ALTERED events/cluster=default/") && l.contains(name)),
        "{out}"
    );
    // A key that did not sign: exit code 10.
    let stranger = dir.path().join("stranger.key");
    auditlake_ok(
        &archive,
        &["keys", "generate", "--out", stranger.to_str().unwrap()],
    );
    let (code, out) = auditlake_status(
        &archive,
        &[
            "verify",
            "--public-key",
            &format!("{}.vkey", stranger.display()),
        ],
    );
    assert_eq!(code, 10, "{out}");

    // Retention: the archive is signed, so the record must be too.
    let (code, _) = auditlake_status(&archive, &["retention", "--keep", "1d"]);
    assert_eq!(code, 1);
    let dry = auditlake_ok(&archive, &["retention", "--keep", "1d", "--dry-run"]);
    assert!(dry.contains("would remove 6 files"), "{dry}");
    assert!(
        dry.contains("would remove events/cluster=default/date=2026-11-01/hour=10"),
        "{dry}"
    );
    let done = auditlake_ok(
        &archive,
        &[
            "retention",
            "--keep",
            "1d",
            "--signing-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(done.contains("wrote retention record 3"), "{done}");
    // The altered file went with its partition: verify now passes, names what retention
    // removed, and the log still extends the checkpoint pinned before.
    let (code, out) = auditlake_status(
        &archive,
        &[
            "verify",
            "--public-key",
            &log_vkey,
            "--since-checkpoint",
            pinned.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with("REMOVED BY RETENTION events/cluster=default/"))
            .count(),
        2,
        "{out}"
    );
    // A proof made before still holds.
    let (code, out) = verify_proof(&proof, &[&log_vkey]);
    assert_eq!(code, 0, "{out}");

    // The key rotated: a verifier that trusts only the old key follows the rotation.
    let new_key = dir.path().join("2027.key");
    auditlake_ok(
        &archive,
        &[
            "keys",
            "generate",
            "--out",
            new_key.to_str().unwrap(),
            "--name",
            "example.com/audit-2027",
        ],
    );
    let rotated = auditlake_ok(
        &archive,
        &[
            "keys",
            "rotate",
            "--old-key",
            key.to_str().unwrap(),
            "--new-key",
            new_key.to_str().unwrap(),
        ],
    );
    assert!(rotated.contains("at record 4"), "{rotated}");
    auditlake_ok(
        &archive,
        &[
            "ingest",
            "--signing-key",
            new_key.to_str().unwrap(),
            input.to_str().unwrap(),
        ],
    );
    let (code, out) = auditlake_status(&archive, &["verify", "--public-key", &log_vkey]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("KEY ROTATION record 4: example.com/audit -> example.com/audit-2027"),
        "{out}"
    );
    assert!(out.contains("signed by example.com/audit-2027"), "{out}");
}

/// A signed `serve` for cluster `west` (a new key at `key`) that flushes every second and
/// beats every `beat_seconds`, with `extra` flags; ready.
fn beating_server(dir: &Path, key: &Path, beat_seconds: &str, extra: &[&str]) -> Server {
    auditlake_ok(
        &dir.join("archive"),
        &["keys", "generate", "--out", key.to_str().unwrap()],
    );
    let mut args = vec![
        "--signing-key",
        key.to_str().unwrap(),
        "--heartbeat-interval-seconds",
        beat_seconds,
        "--flush-interval-seconds",
        "1",
        "--cluster",
        "west",
    ];
    args.extend_from_slice(extra);
    let mut server = Server::spawn(dir, &args, None, Stdio::null());
    server.wait_ready(60);
    server
}

#[test]
fn a_server_writes_signed_heartbeats_busy_or_idle_naming_its_position_and_clusters() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let key = dir.path().join("log.key");
    let server = beating_server(dir.path(), &key, "2", &[]);
    let body = crb_event_list();
    // Busy: new events every 200 ms, so a commit is due every flush (1 s, less than the 2 s
    // between heartbeats); heartbeats still come every 2 s instead of waiting for 2 idle
    // seconds that never come.
    let beats_before = server.metric("auditlake_heartbeats_total");
    let busy = Instant::now();
    for i in 0.. {
        if busy.elapsed() > Duration::from_millis(5_500) {
            break;
        }
        let batch = body.replace("crb-1", &format!("crb-busy-{i}"));
        assert_eq!(server.post("east", batch.as_bytes()), Some(200));
        std::thread::sleep(Duration::from_millis(200));
    }
    let busy_beats = server.metric("auditlake_heartbeats_total") - beats_before;
    assert!(server.metric("auditlake_commits_total") >= 2.0);
    assert!(
        busy_beats >= 2.0,
        "{busy_beats} heartbeats in 5.5 busy seconds"
    );
    // Idle: heartbeats go on.
    let idle_from = server.metric("auditlake_heartbeats_total");
    server.wait_metric("auditlake_heartbeats_total", idle_from + 2.0, 60);
    let (status, _) = server.terminate(30);
    assert!(status.success());

    let mut paths: Vec<_> = std::fs::read_dir(archive.join("_manifest"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    let records: Vec<serde_json::Value> = paths
        .iter()
        .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
        .collect();
    // The last commit of events (the one at shutdown may hold only the detectors' files,
    // archiving no new log record, so no `from_seq`).
    let commit = records
        .iter()
        .rfind(|r| {
            r["files"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["table"] == "events")
        })
        .expect("the batches were committed");
    assert!(
        commit["source"]["from_seq"].as_u64().is_some(),
        "{commit:#}"
    );
    let beats: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r.get("heartbeat").is_some())
        .collect();
    assert!(beats.len() >= 2, "{records:#?}");
    let last = beats.last().unwrap();
    assert!(last["files"].as_array().unwrap().is_empty());
    assert_eq!(
        last["heartbeat"]["clusters"],
        serde_json::json!(["east", "west"])
    );
    assert_eq!(last["source"]["kind"], "webhook");
    // A heartbeat archives nothing: its mark is a position, not a range.
    assert!(last["source"].get("from_seq").is_none(), "{last:#}");
    assert_eq!(
        last["source"]["through_seq"],
        commit["source"]["through_seq"]
    );
    // Heartbeats are leaves of the signed log like every record.
    let (code, out) = auditlake_status(
        &archive,
        &["verify", "--public-key", &format!("{}.vkey", key.display())],
    );
    assert_eq!(code, 0, "{out}");
}

/// A stand-in for an apiserver's `/metrics`: the n-th GET answers `pages(n)`.
fn metrics_endpoint(pages: fn(u64) -> String) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let body = pages(n as u64);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

/// Headless Chromium, which the HTML report is tested in.
fn chromium() -> String {
    let found = std::env::var("AUDITLAKE_CHROMIUM").ok().or_else(|| {
        ["chromium", "chromium-browser", "google-chrome"]
            .into_iter()
            .find(|c| {
                Command::new(c)
                    .arg("--version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
            .map(str::to_string)
    });
    found.expect(
        "headless Chromium is needed to test the HTML evidence report: install Debian's \
         `chromium` (apt-get install chromium; scripts/test.sh does) or set AUDITLAKE_CHROMIUM",
    )
}

/// Renders `page` in headless Chromium: its DOM after load, and a screenshot at `png`.
fn render_in_chromium(page: &Path, png: &Path) -> String {
    let flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--hide-scrollbars",
        "--window-size=1200,2400",
    ];
    let url = format!("file://{}", page.display());
    let shot = Command::new(chromium())
        .args(flags)
        .arg(format!("--screenshot={}", png.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        shot.status.success() && png.exists(),
        "chromium could not screenshot {url}: {}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let dom = Command::new(chromium())
        .args(flags)
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    String::from_utf8(dom.stdout).unwrap()
}

/// The text of the element with `id` in a DOM dump.
fn element_text(dom: &str, id: &str) -> String {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element #{id} in the rendered report"));
    let open_end = start + dom[start..].find('>').unwrap() + 1;
    let close = open_end + dom[open_end..].find("</").unwrap();
    dom[open_end..close].to_string()
}

#[test]
fn the_evidence_report_holds_the_figures_in_json_markdown_and_html_rendered_by_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let key = dir.path().join("log.key");
    let vkey = format!("{}.vkey", key.display());
    // The apiserver audits 10 events between scrapes and, from the third scrape on, reports
    // 4 events it failed to audit.
    let metrics = metrics_endpoint(|n| {
        format!(
            "# TYPE apiserver_audit_event_total counter\napiserver_audit_event_total {}\n\
             apiserver_audit_error_total{{plugin=\"webhook\"}} {}\n",
            100 + 10 * n,
            if n >= 2 { 4 } else { 0 }
        )
    });
    let url = format!("http://{metrics}/metrics");
    let server = beating_server(dir.path(), &key, "1", &["--apiserver-metrics-url", &url]);
    let body = crb_event_list();
    assert_eq!(server.post("west", body.as_bytes()), Some(200));
    assert_eq!(server.post("east", body.as_bytes()), Some(200));
    let poison = br#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{"kind":"Event","verb":"<b>get</b>"}]}"#;
    assert_eq!(server.post("west", poison), Some(200));
    server.wait_metric("auditlake_commits_total", 1.0, 60);
    server.wait_metric("auditlake_heartbeats_total", 4.0, 60);
    let (status, _) = server.terminate(30);
    assert!(status.success());

    // The scenario's events are on 2026-11-01, older than the arrival window: they are filed
    // (and counted) under the hour they arrived, now.
    let period = ["--from", "2026-11-01", "--public-key", &vkey];
    let json: serde_json::Value = serde_json::from_str(&auditlake_ok(
        &archive,
        &[&["evidence", "--format", "json"][..], &period[..]].concat(),
    ))
    .unwrap();
    assert_eq!(json["format"], "auditlake-evidence-report/1");
    assert_eq!(json["verification"]["result"], "checked");
    assert_eq!(
        json["verification"]["passed"], true,
        "{:#}",
        json["verification"]
    );
    let clusters = json["completeness"]["clusters"].as_array().unwrap();
    let (east, west) = (&clusters[0], &clusters[1]);
    assert_eq!(
        (&east["cluster"], &west["cluster"]),
        (&"east".into(), &"west".into())
    );
    assert_eq!((&east["events"], &west["events"]), (&2.into(), &2.into()));
    // East's hour has its events and nothing missing; west's apiserver failed to audit.
    assert_eq!(
        (&east["ok"], &west["ok"]),
        (&1.into(), &0.into()),
        "{:#}",
        json["completeness"]["gaps"]
    );
    let hours = json["completeness"]["hours"].as_array().unwrap();
    let before = hours
        .iter()
        .find(|h| h["cluster"] == "west" && h["hour"] == "2026-11-02T00:00:00.000000Z")
        .unwrap();
    assert_eq!(before["status"], "GAP");
    assert!(
        before["reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("no live source yet"),
        "{before}"
    );
    let now = hours.iter().rev().find(|h| h["cluster"] == "west").unwrap();
    assert_eq!(
        (&now["status"], &now["events"]),
        (&"GAP".into(), &2.into()),
        "{now}"
    );
    assert_eq!(now["reasons"].as_array().unwrap().len(), 1, "{now}");
    assert!(
        now["reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("the apiserver failed to audit 4 event(s)"),
        "{now}"
    );
    let rec = &json["completeness"]["reconciliation"][0];
    assert_eq!(rec["apiserver_errors"], 4);
    assert!(rec["heartbeats"].as_u64().unwrap() >= 4, "{rec}");
    assert_eq!(
        rec["apiserver_events"].as_u64().unwrap(),
        10 * (rec["heartbeats"].as_u64().unwrap() - 1),
        "{rec}"
    );
    assert_eq!(json["quarantine"][0]["cluster"], "west");
    assert_eq!(json["quarantine"][0]["records"], 1);
    assert!(
        json["quarantine"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("auditID"),
        "{}",
        json["quarantine"]
    );
    let rules: Vec<&str> = json["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rule_id"].as_str().unwrap())
        .collect();
    assert!(rules.contains(&"K8S-RBAC-001"), "{rules:?}");
    assert_eq!(json["rbac_changes_total"], 2);
    // Times as RFC 3339 in µs, like every time of the report.
    assert_eq!(
        json["rbac_changes"][0]["changed_at"],
        "2026-11-01T10:00:01.000000Z"
    );
    let change = &json["rbac_changes"][0];
    assert_eq!(
        (
            &change["kind"],
            &change["name"],
            &change["principal"],
            &change["change"]
        ),
        (
            &"ClusterRoleBinding".into(),
            &"pwn".into(),
            &"mallory".into(),
            &"created".into()
        )
    );
    let events_per_day: u64 = json["events_per_day"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["events"].as_u64().unwrap())
        .sum();
    assert_eq!(events_per_day, 4);

    let md = auditlake_ok(
        &archive,
        &[&["evidence", "--format", "md"][..], &period[..]].concat(),
    );
    assert!(md.contains("- **Integrity: PASSED**"), "{md}");
    assert!(md.contains("| Date (UTC) | east | west |"), "{md}");
    assert!(md.contains("| high | `K8S-RBAC-001` |"), "{md}");
    assert!(
        md.contains("ClusterRoleBinding pwn | mallory | create |"),
        "{md}"
    );

    let html = dir.path().join("report.html");
    auditlake_ok(
        &archive,
        &[
            &[
                "evidence",
                "--format",
                "html",
                "--out",
                html.to_str().unwrap(),
            ][..],
            &period[..],
        ]
        .concat(),
    );
    let page = std::fs::read_to_string(&html).unwrap();
    // Self-contained: nothing fetched, no script.
    for fetch in ["<script", "src=", "href=", "url(", "@import"] {
        assert!(
            !page.contains(fetch),
            "the report fetches or runs something: {fetch}"
        );
    }
    // The quarantined input's markup is text, not markup.
    assert!(!page.contains("<b>get</b>"));
    let png = Path::new(env!("CARGO_TARGET_TMPDIR")).join("evidence-report.png");
    let dom = render_in_chromium(&html, &png);
    assert_eq!(element_text(&dom, "verdict"), "PASSED");
    assert_eq!(element_text(&dom, "events"), "4");
    let gaps = east["gap"].as_u64().unwrap() + west["gap"].as_u64().unwrap();
    assert_eq!(
        element_text(&dom, "gap-hours"),
        format!("{} GAP", auditlake_queries::evidence_report::grouped(gaps))
    );
    assert!(dom.contains("id=\"events-chart\""));
    assert!(dom.contains(" 2 events OK</title>"), "east's hour square");
    assert!(dom.contains("the apiserver failed to audit 4 event(s)"));
    assert!(dom.contains("mallory"));
    assert!(
        std::fs::metadata(&png).unwrap().len() > 20_000,
        "an empty screenshot"
    );
    eprintln!("screenshot of the evidence report: {}", png.display());

    // Tampering: the report is still written, says FAILED, and the exit code is verify's.
    let file = std::fs::read_dir(archive.join("events/cluster=east"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .flat_map(|h| std::fs::read_dir(h.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "parquet"))
        .unwrap();
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    let out = auditlake_output(
        &archive,
        &[&["evidence", "--format", "md"][..], &period[..]].concat(),
    );
    assert_eq!(out.status.code(), Some(17), "FILE ALTERED");
    let md = String::from_utf8(out.stdout).unwrap();
    assert!(
        md.contains("- **Integrity: FAILED (1 problem(s))**"),
        "{md}"
    );
    assert!(md.contains("| **FILE ALTERED** | 17 |"), "{md}");
}

#[test]
fn on_s3_a_signed_ingest_verifies_proves_queries_and_reports() {
    let endpoint = std::env::var("AUDITLAKE_TEST_S3_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "this test needs an S3-compatible server: run scripts/test.sh (it starts moto), or \
             start one (pip install 'moto[server]'; moto_server -p 5000; curl -X PUT \
             http://127.0.0.1:5000/auditlake-test) and set \
             AUDITLAKE_TEST_S3_ENDPOINT=http://127.0.0.1:5000"
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("log.key");
    let vkey = format!("{}.vkey", key.display());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let url = format!("s3://auditlake-test/cli-{}-{nanos}", std::process::id());
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(["--archive", &url])
            .args(args)
            .env("AUDITLAKE_LOG", "warn")
            .env("AWS_ENDPOINT", &endpoint)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "auditlake-test")
            .env("AWS_SECRET_ACCESS_KEY", "auditlake-test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_CHECKSUM_ALGORITHM", "SHA256")
            .output()
            .unwrap()
    };
    success_stdout(run(&["keys", "generate", "--out", key.to_str().unwrap()]));
    let input = scenario_ndjson(
        dir.path(),
        "fixtures/scenarios/rbac-crb-cluster-admin-by-stranger.yaml",
    );
    success_stdout(run(&[
        "ingest",
        "--signing-key",
        key.to_str().unwrap(),
        "--cluster",
        "prod",
        input.to_str().unwrap(),
    ]));
    let out = success_stdout(run(&["verify", "--public-key", &vkey]));
    assert!(out.starts_with("OK: 1 records"), "{out}");
    let csv = success_stdout(run(&[
        "query",
        "--format",
        "csv",
        "SELECT count(*) AS n FROM events WHERE cluster = 'prod'",
    ]));
    assert_eq!(csv, "n\n2\n");
    let proof = dir.path().join("proof.json");
    success_stdout(run(&[
        "prove",
        "--audit-id",
        "crb-1",
        "--out",
        proof.to_str().unwrap(),
    ]));
    let out = Command::new(BIN)
        .args([
            "verify-proof",
            proof.to_str().unwrap(),
            "--public-key",
            &vkey,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("VERIFIED")).count(),
        2,
        "{text}"
    );
    let report: serde_json::Value = serde_json::from_slice(
        &run(&[
            "evidence",
            "--format",
            "json",
            "--from",
            "2026-11-01",
            "--public-key",
            &vkey,
        ])
        .stdout,
    )
    .unwrap();
    assert_eq!(report["verification"]["passed"], true, "{report:#}");
    assert_eq!(report["completeness"]["clusters"][0]["events"], 2);
    assert_eq!(report["rbac_changes"][0]["principal"], "mallory");
}
