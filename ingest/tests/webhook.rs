//! The webhook target over real HTTP and TLS on loopback: authentication, bad bodies,
//! poison events, resends, backpressure. Certificates are generated per test.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::HashSet;
use std::path::Path;

use arrow::array::AsArray;
use auditlake_fixtures::{Mix, TrafficGenerator};
use auditlake_ingest::{Archive, ArchiveLocation, Bound, ServeConfig, ServeSummary, serve};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tokio::sync::oneshot;

/// A server running in this process until `stop` is sent.
struct Running {
    bound: Bound,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<ServeSummary>,
}

async fn start(archive_dir: &Path, config: ServeConfig) -> Running {
    let archive =
        Archive::open(ArchiveLocation::parse(archive_dir.to_str().unwrap()).unwrap()).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let (bound_tx, bound_rx) = oneshot::channel();
    let done = tokio::spawn(async move {
        serve(
            archive,
            config,
            None,
            async {
                let _ = stopped.await;
            },
            Some(bound_tx),
        )
        .await
        .unwrap()
    });
    let bound = bound_rx.await.unwrap();
    Running { bound, stop, done }
}

impl Running {
    async fn stop(self) -> ServeSummary {
        self.stop.send(()).unwrap();
        self.done.await.unwrap()
    }
}

fn base_config(dir: &Path) -> ServeConfig {
    ServeConfig {
        listen: "127.0.0.1:0".into(),
        ops_listen: "127.0.0.1:0".into(),
        wal_dir: dir.join("wal"),
        flush_interval_seconds: 3600,
        ..ServeConfig::default()
    }
}

/// `(audit_id, stage, source_ref)` of every committed row, read from the manifests' files.
fn archived_rows(archive_dir: &Path) -> Vec<(String, String, String)> {
    let mut rows = Vec::new();
    let mut manifests: Vec<_> = std::fs::read_dir(archive_dir.join("_manifest"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    manifests.sort();
    for m in manifests {
        let record: serde_json::Value = serde_json::from_slice(&std::fs::read(m).unwrap()).unwrap();
        for f in record["files"].as_array().unwrap() {
            let file = std::fs::File::open(archive_dir.join(f["path"].as_str().unwrap())).unwrap();
            for batch in ParquetRecordBatchReaderBuilder::try_new(file)
                .unwrap()
                .build()
                .unwrap()
            {
                let batch = batch.unwrap();
                let col = |name: &str| {
                    batch
                        .column_by_name(name)
                        .unwrap()
                        .as_string::<i32>()
                        .clone()
                };
                let (ids, stages, refs) = (col("audit_id"), col("stage"), col("source_ref"));
                for i in 0..batch.num_rows() {
                    rows.push((
                        ids.value(i).to_string(),
                        stages.value(i).to_string(),
                        refs.value(i).to_string(),
                    ));
                }
            }
        }
    }
    rows
}

/// Quarantine records committed (lines of the quarantine files the manifests name).
fn quarantined(archive_dir: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(archive_dir.join("_manifest")) else {
        return out;
    };
    for m in dir {
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(m.unwrap().path()).unwrap()).unwrap();
        for q in record["quarantine"].as_array().unwrap() {
            let text =
                std::fs::read_to_string(archive_dir.join(q["path"].as_str().unwrap())).unwrap();
            out.extend(
                text.lines()
                    .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()),
            );
        }
    }
    out
}

fn event_list(items: &[serde_json::Value]) -> String {
    serde_json::json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": items}).to_string()
}

fn generated(seed: u64, n: usize) -> Vec<serde_json::Value> {
    TrafficGenerator::new(seed, Mix::default())
        .starting_recently(60)
        .ndjson(n)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
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
