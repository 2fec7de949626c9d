//! `auditlake demo`: the webhook path end to end on loopback. A server with mutual TLS and a
//! bearer token is started in this process, a simulated kube-apiserver posts generated
//! `EventList` batches to it, and the resulting archive is listed and queried.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use auditlake_fixtures::{Mix, Pki, SenderOptions, TrafficGenerator, WebhookSender};
use auditlake_ingest::{Archive, ServeConfig};
use auditlake_queries::{OutputFormat, write_batches};
use clap::Args;
use futures::TryStreamExt;
use tokio::sync::oneshot;

/// Flags of `auditlake demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Number of events the simulated apiserver sends.
    #[arg(long, env = "AUDITLAKE_DEMO_EVENTS", default_value_t = 20_000)]
    events: usize,

    /// Events per webhook batch (the apiserver's `--audit-webhook-batch-max-size`).
    #[arg(long, env = "AUDITLAKE_DEMO_BATCH_EVENTS", default_value_t = 400)]
    batch_events: usize,

    /// Seed of the traffic generator (same seed, same events).
    #[arg(long, env = "AUDITLAKE_DEMO_SEED", default_value_t = 1)]
    seed: u64,

    /// Cluster name of the generated traffic (sent as `/audit/webhook/{cluster}`).
    #[arg(long, env = "AUDITLAKE_CLUSTER", default_value = "demo")]
    pub cluster: String,
}

/// A temporary directory removed when dropped (certificates and the write-ahead log).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the demo against the archive at `archive_arg`.
pub async fn run(archive: Archive, archive_arg: &str, args: DemoArgs) -> Result<()> {
    let scratch =
        Scratch(std::env::temp_dir().join(format!("auditlake-demo-{}", std::process::id())));
    let pki = Pki::generate("kube-apiserver-demo").context("generating demo certificates")?;
    let files = pki
        .write_to(&scratch.0.join("pki"))
        .context("writing demo certificates")?;
    let token = format!("demo-{:016x}", rand_seed());
    let tokens_file = scratch.0.join("tokens");
    std::fs::write(&tokens_file, format!("{token} demo-apiserver\n"))
        .with_context(|| format!("writing {}", tokens_file.display()))?;

    let config = ServeConfig {
        listen: "127.0.0.1:0".into(),
        ops_listen: "127.0.0.1:0".into(),
        tls_cert: Some(files.server_cert),
        tls_key: Some(files.server_key),
        client_ca: Some(files.ca),
        bearer_tokens_file: Some(tokens_file),
        cluster: args.cluster.clone(),
        wal_dir: scratch.0.join("wal"),
        flush_interval_seconds: 1,
        ..ServeConfig::default()
    };
    let findings_file = scratch.0.join("findings.ndjson");
    let observer = crate::detect::detection(
        &crate::detect::DetectionSettings {
            rules: &[],
            findings: &[findings_file.display().to_string()],
            fold_window_seconds: 300,
            rbac_baseline: None,
            kafka_properties: None,
        },
        &archive,
        &auditlake_ingest::new_writer_id(),
    )
    .await?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (bound_tx, bound_rx) = oneshot::channel();
    let server = tokio::spawn(auditlake_ingest::serve(
        archive.clone(),
        config,
        observer,
        async {
            let _ = stop_rx.await;
        },
        Some(bound_tx),
    ));
    let bound = match bound_rx.await {
        Ok(b) => b,
        // The server ended before binding: its error says why.
        Err(_) => {
            server.await.context("webhook server task")??;
            return Err(anyhow!("the webhook server stopped before listening"));
        }
    };
    let url = format!(
        "https://localhost:{}/audit/webhook/{}",
        bound.webhook.port(),
        args.cluster
    );
    eprintln!("webhook server (mutual TLS + bearer token) listening at {url}");
    eprintln!(
        "operations endpoints at http://{}/metrics and /readyz",
        bound.ops
    );

    let sender = WebhookSender::new(SenderOptions {
        ca_pem: Some(pki.ca_pem.clone()),
        identity_pem: Some(pki.client_identity_pem.clone()),
        bearer_token: Some(token),
        resolve_to: Some(bound.webhook),
        ..SenderOptions::new(url)
    })
    .context("building the simulated apiserver's client")?;
    let posted = post_generated(&sender, &args).await;
    // Stop the server whatever happened to the posts, so it commits what it acknowledged.
    let _ = stop_tx.send(());
    let summary = server.await.context("webhook server task")??;
    let posted = posted?;
    eprintln!(
        "server stopped: {} events committed to Parquet in {} commit(s)",
        summary.events_committed, summary.commits
    );
    show_findings(&findings_file)?;
    drop(scratch);

    show_archive(&archive).await?;
    query(&archive, archive_arg, &args.cluster).await?;
    if posted.events as u64 != summary.events_committed {
        return Err(anyhow!(
            "{} events were acknowledged but {} committed",
            posted.events,
            summary.events_committed
        ));
    }
    Ok(())
}

/// A seed for the demo's bearer token (not a secret worth more than the demo's lifetime).
fn rand_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)
}

/// What the simulated apiserver got acknowledged.
struct Posted {
    events: usize,
}

/// Posts `args.events` generated events in `args.batch_events` batches from two concurrent
/// senders, like an apiserver's webhook backend, and prints throughput and ack latency.
async fn post_generated(sender: &WebhookSender, args: &DemoArgs) -> Result<Posted> {
    let batch = args.batch_events.max(1);
    // Live traffic: the simulated clock ends about now.
    let span_seconds = (args.events as u64).saturating_mul(400_000) / 1_000_000;
    let mut generator = TrafficGenerator::new(args.seed, Mix::default())
        .with_mean_gap_micros(400_000)
        .starting_recently(span_seconds);
    let mut bodies = Vec::new();
    let mut left = args.events;
    let mut bytes = 0;
    while left > 0 {
        let n = left.min(batch);
        let body = generator.event_list(n);
        bytes += body.len();
        bodies.push((n, body));
        left -= n;
    }
    let started = Instant::now();
    let queue = std::sync::Arc::new(std::sync::Mutex::new(bodies.into_iter()));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let (sender, queue) = (sender.clone(), queue.clone());
        workers.spawn(async move {
            let mut latencies = Vec::new();
            let mut events = 0;
            loop {
                // The lock is only held to take the next body.
                let next = queue.lock().map_err(|_| anyhow!("poisoned"))?.next();
                let Some((n, body)) = next else { break };
                let delivery = sender.send(body).await.context("posting a batch")?;
                latencies.push(delivery.latency);
                events += n;
            }
            Ok::<_, anyhow::Error>((events, latencies))
        });
    }
    let mut events = 0;
    let mut latencies: Vec<Duration> = Vec::new();
    while let Some(done) = workers.join_next().await {
        let (n, l) = done.context("sender task")??;
        events += n;
        latencies.extend(l);
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    latencies.sort();
    eprintln!(
        "simulated apiserver posted {} events ({:.1} MB) in {} batches in {:.2}s: {:.0} events/s; \
         ack latency p50 {:.1} ms, p99 {:.1} ms",
        events,
        bytes as f64 / 1e6,
        latencies.len(),
        secs,
        events as f64 / secs,
        percentile_ms(&latencies, 50.0),
        percentile_ms(&latencies, 99.0),
    );
    Ok(Posted { events })
}

/// The `p`th percentile of sorted durations, in milliseconds (nearest rank).
fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1e3
}

/// Prints how many findings each rule produced, and the first one in full.
fn show_findings(path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading findings from {}", path.display()))?;
    let findings: Vec<serde_json::Value> = text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("reading findings")?;
    let mut per_rule: BTreeMap<(String, String), usize> = BTreeMap::new();
    for f in &findings {
        let key = (
            f["rule_id"].as_str().unwrap_or("?").to_string(),
            f["title"].as_str().unwrap_or("").to_string(),
        );
        *per_rule.entry(key).or_default() += 1;
    }
    println!(
        "\nThe built-in detectors raised {} finding(s) (repeats folded within 5 minutes):",
        findings.len()
    );
    for ((id, title), n) in &per_rule {
        println!("  {n:>5}  {id:<14} {title}");
    }
    if let Some(first) = findings.first() {
        println!(
            "\nThe first one, as sinks receive it (stdout, file or HTTP):\n{}",
            serde_json::to_string_pretty(first).context("formatting a finding")?
        );
    }
    Ok(())
}

/// Prints the archive's layout: files and bytes per partition directory, and manifest records.
async fn show_archive(archive: &Archive) -> Result<()> {
    let store = archive.store();
    let root = archive.location().url.clone();
    let mut per_dir: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    let objects: Vec<_> = store
        .list(None)
        .try_collect()
        .await
        .with_context(|| format!("listing the archive {root}"))?;
    for meta in objects {
        let path = meta.location.as_ref();
        let dir = Path::new(path)
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let entry = per_dir.entry(dir).or_default();
        entry.0 += 1;
        entry.1 += meta.size;
    }
    println!("\nThe archive at {root}:");
    for (dir, (files, bytes)) in &per_dir {
        println!(
            "  {dir:<58} {files:>4} file(s) {:>9.1} KB",
            *bytes as f64 / 1e3
        );
    }
    Ok(())
}

async fn query(archive: &Archive, archive_arg: &str, cluster: &str) -> Result<()> {
    let session = crate::open_session(archive).await?;
    let sql = format!(
        "SELECT user_username, verb, json_get_str(request_object, 'roleRef', 'name') AS role, count(*) AS events \
         FROM events WHERE cluster = '{cluster}' AND resource = 'clusterrolebindings' AND stage = 'ResponseComplete' \
         GROUP BY 1, 2, 3 ORDER BY events DESC, 1, 2, 3 LIMIT 10"
    );
    println!("\nWho changed ClusterRoleBindings, and to which role?\n  {sql}\n");
    let (schema, batches) = session.sql(&sql).await.context("demo query failed")?;
    write_batches(
        OutputFormat::Table,
        &schema,
        &batches,
        &mut std::io::stdout(),
    )
    .context("writing results")?;
    println!(
        "\nTry: auditlake --archive {archive_arg} query \"SELECT date, hour, count(*) FROM events GROUP BY 1, 2 ORDER BY 1, 2\""
    );
    Ok(())
}
