//! The webhook target over real HTTP and TLS on loopback: authentication, bad bodies,
//! poison events, resends, backpressure, and the hardening regressions (each test is named
//! after the failure it prevents). Certificates are generated per test.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::HashSet;
use std::path::Path;

use auditlake_ingest::{Archive, ArchiveLocation, ServeConfig, serve};

mod common;
use common::*;

fn base_config(dir: &Path) -> ServeConfig {
    ServeConfig {
        listen: "127.0.0.1:0".into(),
        ops_listen: "127.0.0.1:0".into(),
        wal_dir: dir.join("wal"),
        flush_interval_seconds: 3600,
        ..ServeConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_are_refused_poison_events_quarantined_and_resends_kept_once() {
    let dir = tempfile::tempdir().unwrap();
    let archive_dir = dir.path().join("archive");
    let config = ServeConfig {
        insecure_plain_http: true,
        allow_unauthenticated: true,
        max_body_bytes: 256 << 10,
        ..base_config(dir.path())
    };
    let server = start(&archive_dir, config).await;
    let url = format!("http://{}/audit/webhook/prod", server.bound.webhook);
    let http = reqwest::Client::new();
    let post = |body: Vec<u8>, gzip: bool| {
        let mut r = http
            .post(&url)
            .header("Content-Type", "application/json")
            .body(body);
        if gzip {
            r = r.header("Content-Encoding", "gzip");
        }
        r.send()
    };

    // Not JSON: 400 naming the problem; nothing stored.
    let r = post(b"{\"kind\":\"EventList\",\"items\":[".to_vec(), false)
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("invalid JSON"));
    let r = post(b"{\"a\":1}\n{oops\n".to_vec(), false).await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.text().await.unwrap().contains("line 2"),
        "NDJSON errors name the line"
    );

    // A cluster name that cannot be a partition value: 400, like `--cluster` on the CLI.
    let r = http
        .post(format!(
            "http://{}/audit/webhook/prod%2F..",
            server.bound.webhook
        ))
        .header("Content-Type", "application/json")
        .body(event_list(&generated(9, 1)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(text.contains("use 1 to 253 letters"), "{text}");

    // Over the limit, plain or once decompressed: 413.
    let big = event_list(&generated(1, 600));
    assert!(big.len() > 256 << 10);
    let r = post(big.clone().into_bytes(), false).await.unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.text().await.unwrap().contains("max_body_bytes"));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, big.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    assert!(
        gz.len() < 256 << 10,
        "compressed it fits; decompressed it does not"
    );
    let r = post(gz, true).await.unwrap();
    assert_eq!(r.status(), 413);

    // A batch with poison events: 200, the good ones kept, the bad ones quarantined.
    let mut items = generated(2, 50);
    items.insert(
        10,
        serde_json::json!({"kind": "Event", "stage": "ResponseComplete"}),
    );
    items.insert(20, serde_json::json!({"kind": "Event", "auditID": "x", "requestReceivedTimestamp": "yesterday", "stageTimestamp": "2026-01-01T00:00:00Z"}));
    let batch = event_list(&items);
    let r = post(batch.clone().into_bytes(), false).await.unwrap();
    assert_eq!(r.status(), 200);
    // The apiserver resends a batch after a timeout: same events, kept once. Gzip works too.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, batch.as_bytes()).unwrap();
    let r = post(gz.finish().unwrap(), true).await.unwrap();
    assert_eq!(r.status(), 200);

    let metrics = reqwest::get(format!("http://{}/metrics", server.bound.ops))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("auditlake_webhook_http_responses_total{code=\"413\"} 2"),
        "{metrics}"
    );
    let summary = server.stop().await;
    assert_eq!(summary.events_committed, 50);

    let rows = archived_rows(&archive_dir);
    assert_eq!(rows.len(), 50, "each of the 50 good events exactly once");
    let keys: HashSet<_> = rows
        .iter()
        .map(|(id, stage, _)| (id.clone(), stage.clone()))
        .collect();
    assert_eq!(keys.len(), 50);
    let expected: HashSet<_> = generated(2, 50)
        .iter()
        .map(|e| {
            (
                e["auditID"].as_str().unwrap().to_string(),
                e["stage"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(keys, expected);
    let q = quarantined(&archive_dir);
    let reasons: Vec<&str> = q.iter().map(|r| r["reason"].as_str().unwrap()).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("item 10") && r.contains("missing field `auditID`")),
        "{reasons:?}"
    );
    // Event files are named from the log position their commit starts at, so a commit
    // redone after a crash puts the same names again: part-<log id>-<first seq>-<n>.
    for path in event_paths(&archive_dir) {
        let name = path.rsplit('/').next().unwrap();
        let parts: Vec<&str> = name.trim_end_matches(".parquet").rsplitn(3, '-').collect();
        assert!(
            name.starts_with("part-wal-") && parts[0].len() == 6 && parts[1].len() == 12,
            "{path}"
        );
        assert!(parts[1].parse::<u64>().unwrap() >= 1, "{path}");
    }
    // Filed under the cluster the request named, not the server's default one.
    let paths = quarantine_paths(&archive_dir);
    assert!(
        !paths.is_empty()
            && paths
                .iter()
                .all(|p| p.starts_with("_quarantine/cluster=prod/")),
        "{paths:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("item 20") && r.contains("requestReceivedTimestamp")),
        "{reasons:?}"
    );
    // Refused bodies were stored nowhere: the log holds exactly the two accepted ones (kept
    // after commit for the dedup window).
    let mut logged = Vec::new();
    auditlake_ingest::wal::recover(&dir.path().join("wal"), |r| {
        logged.push((r.seq, r.cluster.clone()))
    })
    .unwrap();
    assert_eq!(logged, [(1, "prod".to_string()), (2, "prod".to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_write_ahead_log_answers_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let archive_dir = dir.path().join("archive");
    let config = ServeConfig {
        insecure_plain_http: true,
        allow_unauthenticated: true,
        wal_max_bytes: 10_000,
        wal_segment_bytes: 1_000,
        ..base_config(dir.path())
    };
    let server = start(&archive_dir, config).await;
    let url = format!("http://{}/audit/webhook", server.bound.webhook);
    let http = reqwest::Client::new();
    let body = event_list(&generated(3, 40));
    assert!(body.len() > 10_000);
    let first = http
        .post(&url)
        .header("Content-Type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let second = http
        .post(&url)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 429);
    assert_eq!(second.headers()["retry-after"], "10");
    let summary = server.stop().await;
    assert_eq!(
        summary.events_committed, 40,
        "what was accepted is archived; the refused body is not"
    );
    assert_eq!(archived_rows(&archive_dir).len(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_and_bearer_tokens_gate_every_request() {
    let dir = tempfile::tempdir().unwrap();
    let archive_dir = dir.path().join("archive");
    let p = auditlake_fixtures::Pki::generate("kube-apiserver-prod").unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let config = ServeConfig {
        tls_cert: Some(write("server.crt", &p.server_cert_pem)),
        tls_key: Some(write("server.key", &p.server_key_pem)),
        client_ca: Some(write("ca.crt", &p.ca_pem)),
        bearer_tokens_file: Some(write(
            "tokens",
            "# apiservers\ns3cret-token-1-0123456789 prod-apiserver\n",
        )),
        cluster_from_client_cert: true,
        ..base_config(dir.path())
    };
    let server = start(&archive_dir, config).await;
    let url = format!(
        "https://localhost:{}/audit/webhook",
        server.bound.webhook.port()
    );
    let ca = reqwest::Certificate::from_pem(p.ca_pem.as_bytes()).unwrap();
    let client = |identity: Option<&str>| {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca.clone())
            .resolve("localhost", server.bound.webhook);
        if let Some(id) = identity {
            b = b.identity(reqwest::Identity::from_pem(id.as_bytes()).unwrap());
        }
        b.build().unwrap()
    };
    let body = event_list(&generated(4, 5));
    let send = |c: reqwest::Client, token: Option<&'static str>| {
        let mut r = c
            .post(&url)
            .header("Content-Type", "application/json")
            .body(body.clone());
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };

    // No client certificate: the handshake fails, nothing is answered (mutual TLS is
    // required in the handshake, so such a client cannot hold a request open).
    assert!(
        send(client(None), Some("s3cret-token-1-0123456789"))
            .await
            .is_err()
    );
    // A certificate from another CA: the handshake fails, nothing is answered.
    assert!(
        send(
            client(Some(&p.stranger_identity_pem)),
            Some("s3cret-token-1-0123456789")
        )
        .await
        .is_err()
    );
    // Right certificate, missing or wrong token: 401 / 403.
    let r = send(client(Some(&p.client_identity_pem)), None)
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let r = send(
        client(Some(&p.client_identity_pem)),
        Some("s3cret-token-2-0123456789"),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 403);
    // Both right: 200.
    let r = send(
        client(Some(&p.client_identity_pem)),
        Some("s3cret-token-1-0123456789"),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 200);

    let summary = server.stop().await;
    assert_eq!(
        summary.events_committed, 5,
        "only the authenticated request was stored"
    );
    let rows = archived_rows(&archive_dir);
    assert_eq!(rows.len(), 5);
    for (_, _, source_ref) in &rows {
        assert!(
            source_ref.starts_with("webhook[kube-apiserver-prod token:prod-apiserver] wal:"),
            "{source_ref}"
        );
    }
    // The certificate named the cluster.
    assert!(
        archive_dir
            .join("events/cluster=kube-apiserver-prod")
            .is_dir()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_event_and_ndjson_are_accepted_too() {
    let dir = tempfile::tempdir().unwrap();
    let archive_dir = dir.path().join("archive");
    let config = ServeConfig {
        insecure_plain_http: true,
        allow_unauthenticated: true,
        ..base_config(dir.path())
    };
    let server = start(&archive_dir, config).await;
    let url = format!("http://{}/audit/webhook", server.bound.webhook);
    let http = reqwest::Client::new();
    let bare = generated(5, 1);
    let lines = generated(6, 3);
    let ndjson: String = lines.iter().map(|e| format!("{e}\n")).collect();
    for (body, content_type) in [
        (bare[0].to_string(), "application/json"),
        (ndjson, "application/x-ndjson"),
    ] {
        let r = http
            .post(&url)
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{content_type}");
    }
    assert_eq!(server.stop().await.events_committed, 4);
    let got: HashSet<String> = archived_rows(&archive_dir)
        .into_iter()
        .map(|(id, _, _)| id)
        .collect();
    let want: HashSet<String> = bare
        .iter()
        .chain(&lines)
        .map(|e| e["auditID"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, want);
}

// ---------------------------------------------------------------------------------------
// Hardening regressions: each test is named after the failure it prevents.

const TOKEN: &str = "apiserver-token-0123456789abcdef";

/// TLS with mutual TLS (client certificates from `pki`'s CA) and the bearer token `TOKEN`.
fn tls_config(dir: &Path, pki: &auditlake_fixtures::Pki, tokens: &str) -> ServeConfig {
    let files = pki.write_to(&dir.join("pki")).unwrap();
    let tokens_file = dir.join("tokens");
    std::fs::write(&tokens_file, tokens).unwrap();
    ServeConfig {
        tls_cert: Some(files.server_cert),
        tls_key: Some(files.server_key),
        client_ca: Some(files.ca),
        bearer_tokens_file: Some(tokens_file),
        ..base_config(dir)
    }
}

/// An HTTPS client trusting `pki`'s CA, presenting `identity` (certificate + key PEM).
fn https_client(
    pki: &auditlake_fixtures::Pki,
    identity: Option<&str>,
    addr: std::net::SocketAddr,
) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap())
        .resolve("localhost", addr);
    if let Some(id) = identity {
        b = b.identity(reqwest::Identity::from_pem(id.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

/// POSTs `body` to `path` of the TLS webhook at `addr` with the bearer token; the status.
async fn post_tls(
    client: &reqwest::Client,
    addr: std::net::SocketAddr,
    path: &str,
    body: String,
) -> u16 {
    client
        .post(format!("https://localhost:{}{path}", addr.port()))
        .header("Content-Type", "application/json")
        .bearer_auth(TOKEN)
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn ids(items: &[serde_json::Value]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|e| {
            (
                e["auditID"].as_str().unwrap().to_string(),
                e["stage"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_fails_then_recovers_loses_nothing_and_readyz_says_why_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let archive_dir = dir.path().join("archive");
    let pki = auditlake_fixtures::Pki::generate("prod-eu").unwrap();
    let config = ServeConfig {
        flush_interval_seconds: 1,
        cluster_from_client_cert: true,
        ..tls_config(dir.path(), &pki, &format!("{TOKEN} apiserver\n"))
    };
    let server = start(&archive_dir, config).await;
    server.wait_readyz(200, 10).await;
    // The archive's events/ becomes a regular file: every put under it fails.
    std::fs::create_dir_all(&archive_dir).unwrap();
    std::fs::write(archive_dir.join("events"), b"not a directory").unwrap();
    let client = https_client(&pki, Some(&pki.client_identity_pem), server.bound.webhook);
    let mut sent = HashSet::new();
    for seed in 0..5 {
        let items = generated(100 + seed, 40);
        let status = post_tls(
            &client,
            server.bound.webhook,
            "/audit/webhook",
            event_list(&items),
        )
        .await;
        assert_eq!(
            status, 200,
            "the log keeps taking requests while the store fails"
        );
        sent.extend(ids(&items));
    }
    let why = server.wait_readyz(503, 20).await;
    assert!(
        why.contains("archiving is failing") && why.contains("events"),
        "{why}"
    );
    let m = server.metrics().await;
    assert!(
        metric(&m, "auditlake_commit_failures_total").unwrap() >= 1.0,
        "{m}"
    );
    assert_eq!(metric(&m, "auditlake_archiving_failing"), Some(1.0));
    assert!(metric(&m, "auditlake_last_commit_error_timestamp_seconds").unwrap() > 0.0);
    assert!(metric(&m, "auditlake_wal_oldest_unarchived_age_seconds").is_some());
    // The store recovers: archiving resumes by itself, nothing lost, nothing twice.
    std::fs::remove_file(archive_dir.join("events")).unwrap();
    server.wait_readyz(200, 45).await;
    let m = server.metrics().await;
    assert_eq!(metric(&m, "auditlake_archiving_failing"), Some(0.0), "{m}");
    let summary = server.stop().await;
    assert_eq!(summary.events_committed, 200);
    let rows = archived_rows(&archive_dir);
    let got: HashSet<_> = rows
        .iter()
        .map(|(i, s, _)| (i.clone(), s.clone()))
        .collect();
    assert_eq!(rows.len(), 200);
    assert_eq!(got, sent);
}

/// A body of millions of tiny values: slow to decode, so the test can act meanwhile.
fn zeros_body(bytes: usize) -> String {
    let mut s = String::with_capacity(bytes);
    s.push('[');
    while s.len() + 3 < bytes {
        s.push_str("0,");
    }
    s.push_str("0]");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archiver_that_keeps_failing_stops_the_server_with_an_error_instead_of_lingering() {
    let dir = tempfile::tempdir().unwrap();
    let archive_dir = dir.path().join("archive");
    let config = ServeConfig {
        insecure_plain_http: true,
        allow_unauthenticated: true,
        wal_segment_bytes: 1, // one record per segment
        ..base_config(dir.path())
    };
    let server = start(&archive_dir, config).await;
    let url = format!("http://{}/audit/webhook/prod", server.bound.webhook);
    let http = reqwest::Client::new();
    for body in [zeros_body(4 << 20), event_list(&generated(7, 5))] {
        let r = http
            .post(&url)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // While the archiver decodes the first body, the second record's segment disappears:
    // the archiver cannot read on, now or after any restart from the last commit.
    std::fs::remove_file(dir.path().join("wal").join(format!("{:020}.wal", 2))).unwrap();
    let (code, why) = {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let r = server.readyz().await;
            if r.0 == 503 || std::time::Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    assert_eq!(code, 503, "not ready while the archiver restarts: {why}");
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(180), server.done)
        .await
        .expect("the server must stop by itself, not linger")
        .unwrap();
    let e = outcome.expect_err("archiving cannot go on: an error, so the process exits non-zero");
    let msg = e.to_string();
    assert!(
        msg.contains("the archiver failed") && msg.contains("without committing anything"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_or_a_bound_token_cannot_post_events_of_another_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let archive_dir = dir.path().join("archive");
    let pki = auditlake_fixtures::Pki::generate("prod-eu").unwrap();
    let config = ServeConfig {
        cluster_from_client_cert: true,
        ..tls_config(dir.path(), &pki, &format!("{TOKEN} apiserver\n"))
    };
    let server = start(&archive_dir, config).await;
    let client = https_client(&pki, Some(&pki.client_identity_pem), server.bound.webhook);
    let addr = server.bound.webhook;
    let body = || event_list(&generated(21, 3));
    assert_eq!(
        post_tls(&client, addr, "/audit/webhook/prod-us", body()).await,
        403
    );
    assert_eq!(
        post_tls(&client, addr, "/audit/webhook/prod-eu", body()).await,
        200
    );
    assert_eq!(post_tls(&client, addr, "/audit/webhook", body()).await, 200);
    server.stop().await;
    assert!(archive_dir.join("events/cluster=prod-eu").is_dir());
    assert!(!archive_dir.join("events/cluster=prod-us").exists());

    // A token that names its clusters (TLS without client certificates).
    let dir = tempfile::tempdir().unwrap();
    let archive_dir = dir.path().join("archive");
    let config = ServeConfig {
        client_ca: None,
        ..tls_config(
            dir.path(),
            &pki,
            &format!("{TOKEN} staging-apiserver clusters=staging\n"),
        )
    };
    let server = start(&archive_dir, config).await;
    let client = https_client(&pki, None, server.bound.webhook);
    let addr = server.bound.webhook;
    assert_eq!(
        post_tls(&client, addr, "/audit/webhook/prod", body()).await,
        403
    );
    assert_eq!(post_tls(&client, addr, "/audit/webhook", body()).await, 200);
    server.stop().await;
    assert!(archive_dir.join("events/cluster=staging").is_dir());
    assert!(!archive_dir.join("events/cluster=prod").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_mid_log_loses_only_that_record_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let archive_dir = dir.path().join("archive");
    let wal_dir = dir.path().join("wal");
    // A log of ten accepted requests that were never archived (the process died).
    let batches: Vec<Vec<serde_json::Value>> = (0..10).map(|i| generated(300 + i, 20)).collect();
    {
        let rt = tokio::runtime::Handle::current();
        let recovered = auditlake_ingest::wal::recover(&wal_dir, |_| {}).unwrap();
        let (wal, thread) = auditlake_ingest::wal::Wal::start(
            recovered,
            auditlake_ingest::wal::WalOptions {
                dir: wal_dir.clone(),
                segment_bytes: 64 << 20,
            },
            std::sync::Arc::new(|_, _| {}),
        )
        .unwrap();
        for b in &batches {
            wal.append(
                "prod".into(),
                String::new(),
                auditlake_fixtures_now(),
                event_list(b).into_bytes().into(),
            )
            .await
            .unwrap();
        }
        wal.close();
        drop(wal);
        let _ = rt;
        tokio::task::spawn_blocking(move || thread.join().unwrap())
            .await
            .unwrap();
    }
    let segment = auditlake_ingest::wal::segment_files(&wal_dir).unwrap()[0].clone();
    let mut bytes = std::fs::read(&segment).unwrap();
    // Flip a bit inside the third record's body.
    let third = nth_frame_start(&bytes, 2);
    bytes[third + 200] ^= 0x04;
    std::fs::write(&segment, &bytes).unwrap();

    let config = ServeConfig {
        insecure_plain_http: true,
        allow_unauthenticated: true,
        ..base_config(dir.path())
    };
    let server = start(&archive_dir, config).await;
    server.wait_readyz(200, 30).await;
    let m = server.metrics().await;
    assert_eq!(
        metric(&m, "auditlake_wal_cut_regions_total"),
        Some(1.0),
        "{m}"
    );
    server.stop().await;
    let got: HashSet<_> = archived_rows(&archive_dir)
        .into_iter()
        .map(|(i, s, _)| (i, s))
        .collect();
    let want: HashSet<_> = batches
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .flat_map(|(_, b)| ids(b))
        .collect();
    assert_eq!(got, want, "every record but the damaged one is archived");
    // The damaged bytes are in the archive's quarantine, with the reason.
    let q = quarantined(&archive_dir);
    assert_eq!(q.len(), 1, "{q:?}");
    assert!(
        q[0]["reason"]
            .as_str()
            .unwrap()
            .contains("corrupt write-ahead log bytes"),
        "{q:?}"
    );
    assert!(q[0]["raw_len"].as_u64().unwrap() > 1000);
    assert!(
        !wal_dir.join("quarantine").read_dir().unwrap().any(|_| true),
        "the local copy is removed once the archive holds it"
    );
}

/// Arrival time for records written straight into a log.
fn auditlake_fixtures_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// Offset of the `n`th (from 0) frame in a segment: frames start with `ALW1` and a length.
fn nth_frame_start(segment: &[u8], n: usize) -> usize {
    let mut at = 0;
    for _ in 0..n {
        assert_eq!(&segment[at..at + 4], b"ALW1");
        let len = u32::from_le_bytes(segment[at + 4..at + 8].try_into().unwrap()) as usize;
        at += 12 + len;
    }
    at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_ahead_log_never_replays_into_another_archive() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServeConfig {
        insecure_plain_http: true,
        allow_unauthenticated: true,
        ..base_config(dir.path())
    };
    let server = start(&dir.path().join("archive-a"), config.clone()).await;
    server.stop().await;
    let archive_b = Archive::open(
        ArchiveLocation::parse(dir.path().join("archive-b").to_str().unwrap()).unwrap(),
    )
    .unwrap();
    let e = serve(archive_b.clone(), config.clone(), None, async {}, None)
        .await
        .expect_err("a log of archive A must not start against archive B");
    let msg = e.to_string();
    assert!(
        msg.contains("archive-a") && msg.contains("archive-b") && msg.contains("--wal-retarget"),
        "{msg}"
    );
    // Re-targeting is explicit.
    let config = ServeConfig {
        wal_retarget: true,
        ..config
    };
    serve(archive_b, config, None, async {}, None)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_to_start_open_to_anyone_or_in_plain_http_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let pki = auditlake_fixtures::Pki::generate("prod").unwrap();
    let archive =
        Archive::open(ArchiveLocation::parse(dir.path().join("a").to_str().unwrap()).unwrap())
            .unwrap();
    let no_auth = ServeConfig {
        client_ca: None,
        bearer_tokens_file: None,
        ..tls_config(dir.path(), &pki, "")
    };
    let e = serve(archive.clone(), no_auth, None, async {}, None)
        .await
        .expect_err("TLS without client CA or tokens must be refused");
    assert!(
        e.to_string().contains("no client authentication")
            && e.to_string().contains("--allow-unauthenticated"),
        "{e}"
    );
    let plain_everywhere = ServeConfig {
        insecure_plain_http: true,
        allow_unauthenticated: true,
        listen: "0.0.0.0:0".into(),
        ..base_config(dir.path())
    };
    let e = serve(
        archive.clone(),
        plain_everywhere.clone(),
        None,
        async {},
        None,
    )
    .await
    .expect_err("plain HTTP beyond loopback must be refused");
    assert!(e.to_string().contains("loopback"), "{e}");
    let forced = ServeConfig {
        allow_plain_http_beyond_loopback: true,
        ..plain_everywhere
    };
    serve(archive, forced, None, async {}, None).await.unwrap();
}

/// The value of `name{labels}` in the metrics text.
fn labelled(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Reads until the server closes the connection; `true` if it did within `secs`.
async fn closed_within(stream: &mut tokio::net::TcpStream, secs: u64) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slowloris_connection_floods_are_cut_and_the_apiserver_still_gets_through() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let archive_dir = dir.path().join("archive");
    let pki = auditlake_fixtures::Pki::generate("prod").unwrap();
    let config = ServeConfig {
        max_connections: 100,
        header_read_timeout_seconds: 2,
        request_timeout_seconds: 5,
        idle_timeout_seconds: 4,
        ..tls_config(dir.path(), &pki, &format!("{TOKEN} apiserver\n"))
    };
    let server = start(&archive_dir, config).await;
    let addr = server.bound.webhook;
    // 300 connections that never start TLS, 3 times the cap.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // 20 that drip a TLS ClientHello, one byte every 300 ms.
    let drips: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                let started = std::time::Instant::now();
                for b in [0x16u8, 0x03, 0x01, 0x02, 0x00].iter().cycle() {
                    if s.write_all(&[*b]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                    if started.elapsed() > std::time::Duration::from_secs(60) {
                        break;
                    }
                }
                started.elapsed()
            })
        })
        .collect();
    // The apiserver, during the flood.
    let client = https_client(&pki, Some(&pki.client_identity_pem), addr);
    let sent = std::time::Instant::now();
    let status = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        post_tls(
            &client,
            addr,
            "/audit/webhook",
            event_list(&generated(31, 5)),
        ),
    )
    .await
    .expect("the apiserver's request must get through the flood");
    assert_eq!(status, 200);
    let waited = sent.elapsed();
    // Every flooding connection is cut by the server, within the timeouts (the last wave
    // waits its turn behind the cap).
    for (i, c) in idle.iter_mut().enumerate() {
        assert!(closed_within(c, 20).await, "idle connection {i} still open");
    }
    for d in drips {
        let lasted = d.await.unwrap();
        assert!(
            lasted < std::time::Duration::from_secs(20),
            "a dripping handshake lasted {lasted:?}"
        );
    }
    let m = server.metrics().await;
    assert!(
        labelled(
            &m,
            "auditlake_connection_timeouts_total{kind=\"handshake\"}"
        ) >= 300.0,
        "{m}"
    );
    assert!(metric(&m, "auditlake_connections_over_cap_total").unwrap() >= 1.0);
    server.stop().await;
    eprintln!("apiserver request answered after {waited:?} during a flood of 320 connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dripped_headers_or_body_and_silent_http2_clients_are_cut() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let config = ServeConfig {
        insecure_plain_http: true,
        allow_unauthenticated: true,
        header_read_timeout_seconds: 2,
        request_timeout_seconds: 4,
        idle_timeout_seconds: 30,
        ..base_config(dir.path())
    };
    let server = start(&dir.path().join("archive"), config).await;
    let addr = server.bound.webhook;
    // Headers a line at a time, forever.
    let mut headers = tokio::net::TcpStream::connect(addr).await.unwrap();
    headers
        .write_all(b"POST /audit/webhook HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let drip = tokio::spawn(async move {
        let started = std::time::Instant::now();
        while headers.write_all(b"X-Slow: 1\r\n").await.is_ok()
            && started.elapsed() < std::time::Duration::from_secs(30)
        {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
        started.elapsed()
    });
    // Complete headers, then a body a byte at a time: 408 at the request timeout.
    let mut body = tokio::net::TcpStream::connect(addr).await.unwrap();
    body.write_all(
        b"POST /audit/webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n[",
    )
    .await
    .unwrap();
    let body_drip = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let mut answer = Vec::new();
        loop {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 512];
            tokio::select! {
                n = body.read(&mut buf) => match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                },
                () = tokio::time::sleep(std::time::Duration::from_millis(300)) => {
                    if body.write_all(b"0").await.is_err() { break; }
                }
            }
            if started.elapsed() > std::time::Duration::from_secs(30) {
                break;
            }
        }
        (
            started.elapsed(),
            String::from_utf8_lossy(&answer).into_owned(),
        )
    });
    // An HTTP/2 client that sends its preface and then nothing.
    let mut h2 = tokio::net::TcpStream::connect(addr).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    h2.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap(); // empty SETTINGS
    let silent_h2 = std::time::Instant::now();
    assert!(
        closed_within(&mut h2, 10).await,
        "silent HTTP/2 client kept"
    );
    assert!(silent_h2.elapsed() < std::time::Duration::from_secs(6));
    let lasted = drip.await.unwrap();
    assert!(
        lasted < std::time::Duration::from_secs(8),
        "dripped headers kept the connection {lasted:?}"
    );
    let (lasted, answer) = body_drip.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(lasted < std::time::Duration::from_secs(10), "{lasted:?}");
    let m = server.metrics().await;
    assert!(labelled(&m, "auditlake_connection_timeouts_total{kind=\"request\"}") >= 1.0);
    assert!(
        labelled(&m, "auditlake_connection_timeouts_total{kind=\"header\"}") >= 1.0,
        "{m}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_disk_answers_503_without_revealing_paths_or_os_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServeConfig {
        insecure_plain_http: true,
        allow_unauthenticated: true,
        wal_segment_bytes: 1, // a new segment file for every append
        ..base_config(dir.path())
    };
    let server = start(&dir.path().join("archive"), config).await;
    let url = format!("http://{}/audit/webhook/prod", server.bound.webhook);
    let http = reqwest::Client::new();
    let post = || {
        http.post(&url)
            .header("Content-Type", "application/json")
            .body(event_list(&generated(61, 3)))
            .send()
    };
    assert_eq!(post().await.unwrap().status(), 200);
    // The log's directory disappears: the next segment cannot be created.
    std::fs::rename(dir.path().join("wal"), dir.path().join("wal-gone")).unwrap();
    let r = post().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "10");
    let text = r.text().await.unwrap();
    assert!(
        !text.contains("wal") && !text.contains('/') && !text.contains("os error"),
        "the answer reveals the server's insides: {text}"
    );
    std::fs::rename(dir.path().join("wal-gone"), dir.path().join("wal")).unwrap();
    server.stop().await;
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The tests' Google stand-in: signs OIDC tokens with the fixture key; its JWKS.
struct TokenSigner {
    key: ring::signature::RsaKeyPair,
}

impl TokenSigner {
    fn new() -> Self {
        let der = std::fs::read(auditlake_fixtures::data_dir().join("pubsub/test-signing-key.pk8"))
            .unwrap();
        Self {
            key: ring::signature::RsaKeyPair::from_pkcs8(&der).unwrap(),
        }
    }

    fn jwks(&self) -> String {
        let public = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(self.key.public());
        let (n, e) = (&public.n, &public.e);
        serde_json::json!({"keys": [{"kty": "RSA", "alg": "RS256", "use": "sig", "kid": "test-key-1", "n": b64url(n), "e": b64url(e)}]})
            .to_string()
    }

    fn token(&self, claims: serde_json::Value) -> String {
        let header = b64url(br#"{"alg":"RS256","kid":"test-key-1","typ":"JWT"}"#);
        let signed = format!("{header}.{}", b64url(claims.to_string().as_bytes()));
        let mut sig = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                signed.as_bytes(),
                &mut sig,
            )
            .unwrap();
        format!("{signed}.{}", b64url(&sig))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firehose_and_pubsub_push_requests_are_answered_in_their_protocol_once_durable() {
    let dir = tempfile::tempdir().unwrap();
    let archive_dir = dir.path().join("archive");
    let pki = auditlake_fixtures::Pki::generate("apiserver").unwrap();
    let files = pki.write_to(&dir.path().join("pki")).unwrap();
    const KEY: &str = "firehose-access-key-0123456789";
    std::fs::write(dir.path().join("firehose-key"), format!("{KEY}\n")).unwrap();
    let signer = TokenSigner::new();
    std::fs::write(dir.path().join("jwks.json"), signer.jwks()).unwrap();
    const AUDIENCE: &str = "https://auditlake.example.com/pubsub/push";
    const ACCOUNT: &str = "auditlake-push@acme-prod.iam.gserviceaccount.com";
    let config = ServeConfig {
        tls_cert: Some(files.server_cert),
        tls_key: Some(files.server_key),
        firehose_access_key_file: Some(dir.path().join("firehose-key")),
        pubsub_jwks_file: Some(dir.path().join("jwks.json")),
        pubsub_audience: AUDIENCE.into(),
        pubsub_service_account: ACCOUNT.into(),
        ..base_config(dir.path())
    };
    let server = start(&archive_dir, config).await;
    let addr = server.bound.webhook;
    let client = https_client(&pki, None, addr);
    let url = |path: &str| format!("https://localhost:{}{path}", addr.port());

    // Only the push receivers are served: the webhook had no credentials configured.
    let r = client
        .post(url("/audit/webhook"))
        .header("Content-Type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Firehose: EKS events in a CloudWatch Logs subscription message, gzip, base64.
    let events = generated(41, 30);
    let log_events: Vec<_> = events
        .iter()
        .enumerate()
        .map(|(i, e)| serde_json::json!({"id": format!("{i:056}"), "timestamp": 1_780_000_000_000_i64, "message": e.to_string()}))
        .collect();
    let message = serde_json::json!({"messageType": "DATA_MESSAGE", "owner": "123456789012",
        "logGroup": "/aws/eks/prod-eu/cluster", "logStream": "kube-apiserver-audit-0a1b2c",
        "subscriptionFilters": ["auditlake"], "logEvents": log_events});
    let control = serde_json::json!({"messageType": "CONTROL_MESSAGE", "owner": "CloudwatchLogs", "logGroup": "", "logStream": "",
        "subscriptionFilters": [], "logEvents": [{"id": "", "timestamp": 1, "message": "CWL CONTROL MESSAGE: Checking health of destination Firehose."}]});
    let request = serde_json::json!({"requestId": "ed4acda5-034f-9f42-bba1-f29aea6d7d8f", "timestamp": 1_780_000_000_500_i64,
        "records": [{"data": b64(&gzip(message.to_string().as_bytes()))}, {"data": b64(&gzip(control.to_string().as_bytes()))}]});
    let firehose = |key: &'static str| {
        client
            .post(url("/firehose"))
            .header("Content-Type", "application/json")
            .header("Content-Encoding", "gzip")
            .header("X-Amz-Firehose-Protocol-Version", "1.0")
            .header(
                "X-Amz-Firehose-Request-Id",
                "ed4acda5-034f-9f42-bba1-f29aea6d7d8f",
            )
            .header(
                "X-Amz-Firehose-Source-Arn",
                "arn:aws:firehose:eu-west-1:123456789012:deliverystream/eks-audit",
            )
            .header("X-Amz-Firehose-Access-Key", key)
            .body(gzip(request.to_string().as_bytes()))
            .send()
    };
    let r = firehose("firehose-access-key-0123456788").await.unwrap();
    assert_eq!(r.status(), 401);
    let refused: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(refused["requestId"], "ed4acda5-034f-9f42-bba1-f29aea6d7d8f");
    assert!(
        refused["timestamp"].is_u64()
            && refused["errorMessage"]
                .as_str()
                .unwrap()
                .contains("Access-Key")
    );
    for _ in 0..2 {
        // The second is Firehose retrying after a lost answer: kept once.
        let r = firehose(KEY).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/json");
        let ok: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        assert_eq!(ok["requestId"], "ed4acda5-034f-9f42-bba1-f29aea6d7d8f");
        assert!(
            ok["timestamp"].as_u64().unwrap() > 1_780_000_000_000
                && ok.get("errorMessage").is_none()
        );
    }

    // Pub/Sub push: a GKE LogEntry in message.data, with Google's OIDC token.
    let entry = serde_json::json!({"insertId": "c0ffee-1", "logName": "projects/acme-prod/logs/cloudaudit.googleapis.com%2Factivity",
        "operation": {"id": "c0ffee-1", "producer": "k8s.io", "first": true, "last": true},
        "protoPayload": {"@type": "type.googleapis.com/google.cloud.audit.AuditLog", "serviceName": "k8s.io",
            "methodName": "io.k8s.authorization.rbac.v1.clusterrolebindings.create",
            "resourceName": "rbac.authorization.k8s.io/v1/clusterrolebindings/backdoor",
            "authenticationInfo": {"principalEmail": "mallory@example.com"},
            "requestMetadata": {"callerIp": "203.0.113.7"}, "status": {}},
        "resource": {"type": "k8s_cluster", "labels": {"cluster_name": "gke-prod", "location": "europe-west1", "project_id": "acme-prod"}},
        "timestamp": "2026-11-01T03:12:00.80581Z", "receiveTimestamp": "2026-11-01T03:12:19Z"});
    let push = serde_json::json!({"message": {"data": b64(entry.to_string().as_bytes()), "messageId": "1", "message_id": "1",
        "publishTime": "2026-11-01T03:12:20Z", "publish_time": "2026-11-01T03:12:20Z", "attributes": {}},
        "subscription": "projects/acme-prod/subscriptions/gke-audit-auditlake"});
    let now = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()) as i64;
    let claims = |aud: &str, email: &str, exp: i64| {
        serde_json::json!({"iss": "https://accounts.google.com", "aud": aud,
        "email": email, "email_verified": true, "iat": now - 10, "exp": exp, "sub": "1"})
    };
    let send = |token: String| {
        client
            .post(url("/pubsub/push"))
            .header("Content-Type", "application/json")
            .bearer_auth(token)
            .body(push.to_string())
            .send()
    };
    let good = signer.token(claims(AUDIENCE, ACCOUNT, now + 3600));
    let mut tampered = good.clone();
    tampered.replace_range(tampered.len() - 4.., "AAAA");
    for (token, why) in [
        (
            signer.token(claims("https://elsewhere.example.com", ACCOUNT, now + 3600)),
            "audience",
        ),
        (
            signer.token(claims(
                AUDIENCE,
                "someone@else.iam.gserviceaccount.com",
                now + 3600,
            )),
            "e-mail",
        ),
        (
            signer.token(claims(AUDIENCE, ACCOUNT, now - 3600)),
            "expired",
        ),
        (tampered, "signature"),
    ] {
        let r = send(token).await.unwrap();
        assert_eq!(r.status(), 401, "{why}");
        assert!(r.text().await.unwrap().contains(why), "{why}");
    }
    for _ in 0..2 {
        // The second is Pub/Sub redelivering (at least once): kept once.
        let r = send(good.clone()).await.unwrap();
        assert_eq!(r.status(), 204, "a 2xx acknowledges the message");
    }

    server.stop().await;
    let paths = event_paths(&archive_dir);
    let rows = archived_rows(&archive_dir);
    assert_eq!(
        rows.len(),
        31,
        "30 EKS events and 1 GKE event, each once though sent twice: {rows:?}"
    );
    assert!(
        paths.iter().any(|p| p.contains("cluster=prod-eu/")),
        "{paths:?}"
    );
    assert!(
        paths.iter().any(|p| p.contains("cluster=gke-prod/")),
        "{paths:?}"
    );
    let got: HashSet<String> = rows.iter().map(|r| r.0.clone()).collect();
    for e in &events {
        assert!(got.contains(e["auditID"].as_str().unwrap()));
    }
    assert!(got.contains("c0ffee-1"));
}
