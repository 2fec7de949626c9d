//! Load benchmark of `auditlake serve`: starts the real server binary (TLS, mutual TLS,
//! bearer token, fsync on every acknowledged batch) on loopback and drives it with concurrent
//! simulated apiservers posting 400-event `EventList` batches. Reports sustained events/s,
//! ack latency percentiles, the server's peak RSS and CPU, and checks that every acknowledged
//! event was committed to Parquet when the server stopped.
//!
//! ```text
//! cargo build --profile ingest-bench --bin auditlake -p auditlake-benches --bin webhook_load
//! $CARGO_TARGET_DIR/ingest-bench/webhook_load --clients 8 --seconds 20
//! ```
//! `--rate` paces the clients to an offered load (open loop; latency is measured from each
//! batch's scheduled send time, so a stalled server cannot hide its queueing).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use auditlake_fixtures::{Mix, Pki, SendError, SenderOptions, TrafficGenerator, WebhookSender};
use clap::Parser;

/// Drive `auditlake serve` over loopback like a fleet of kube-apiservers.
#[derive(Parser, Debug)]
struct Args {
    /// Concurrent clients (each posts one batch at a time, like one apiserver's webhook backend).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Events per batch (the apiserver's default maximum is 400).
    #[arg(long, default_value_t = 400)]
    batch_events: usize,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Warm-up seconds, not measured.
    #[arg(long, default_value_t = 3)]
    warmup_seconds: u64,
    /// Offered load in events/s across all clients; 0 = as fast as acknowledgements allow.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// One HTTP/1.1 connection per client (like separate apiservers) instead of all clients
    /// multiplexed over one HTTP/2 connection (like one apiserver's concurrent batches).
    #[arg(long)]
    http1: bool,
    /// The `auditlake` binary; default: the one beside this benchmark's executable.
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Extra `auditlake serve` flags, e.g. `--flush-interval-seconds 5`.
    #[arg(long, allow_hyphen_values = true, num_args = 1..)]
    serve_args: Vec<String>,
    /// Work directory (archive, WAL, certificates); default: a new temporary directory, removed
    /// at the end.
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

fn free_port() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Status and body of a plain `GET` on the operations port, `None` if it cannot be reached.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    let status = answer.split_whitespace().nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// The value of an unlabelled Prometheus sample `name` in a `/metrics` text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// The upper bound of the histogram bucket holding quantile `q` of Prometheus histogram
/// `name`, in milliseconds (a bound, not an interpolation).
fn histogram_quantile_ms(text: &str, name: &str, q: f64) -> f64 {
    let prefix = format!("{name}_bucket{{le=\"");
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| {
            let (le, count) = l.strip_prefix(&prefix)?.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    let total = buckets.last().map_or(0.0, |b| b.1);
    buckets
        .iter()
        .find(|(_, n)| *n >= q * total)
        .map_or(f64::NAN, |(le, _)| le * 1e3)
}

/// `VmHWM` (peak resident set) and CPU seconds (user + system) of a live process.
fn process_stats(pid: u32) -> Option<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some((hwm_kb * 1024, ticks / 100.0))
}

/// Batches to post: `pool` distinct templates whose auditIDs are rewritten per use, so that
/// no two posted events are identical (identical ones would be dropped as resends).
struct Bodies {
    templates: Vec<(Vec<u8>, Vec<usize>)>,
    events_per_body: usize,
    next: AtomicU64,
}

impl Bodies {
    fn new(pool: usize, events: usize) -> Self {
        let mut generator = TrafficGenerator::new(11, Mix::default()).starting_recently(3600);
        let marker = br#""auditID":""#;
        let templates = (0..pool)
            .map(|_| {
                let body = generator.event_list(events).into_bytes();
                let offsets = memchr_all(&body, marker)
                    .into_iter()
                    .map(|at| at + marker.len())
                    .collect();
                (body, offsets)
            })
            .collect();
        Self {
            templates,
            events_per_body: events,
            next: AtomicU64::new(0),
        }
    }

    /// The next body: a template with the first 8 hex digits of every auditID set to the use
    /// count, which keeps the two stages of one request under one auditID.
    fn take(&self) -> Vec<u8> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let (template, offsets) = &self.templates[(n % self.templates.len() as u64) as usize];
        let mut body = template.clone();
        let tag = format!("{:08x}", (n / self.templates.len() as u64) as u32);
        for &at in offsets {
            body[at..at + 8].copy_from_slice(tag.as_bytes());
        }
        body
    }
}

fn memchr_all(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    hay.windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

/// What one client saw during the measured window.
#[derive(Default)]
struct ClientReport {
    latencies: Vec<Duration>,
    events: u64,
    retried_batches: u64,
    /// Batches refused on every attempt (an apiserver drops them); never acknowledged.
    dropped_batches: u64,
}

struct Server {
    child: Child,
    ops: SocketAddr,
    webhook: SocketAddr,
    peak: Arc<AtomicU64>,
}

impl Drop for Server {
    /// The server must not outlive a failed benchmark (it holds the work directory's ports).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(
    bin: &Path,
    work: &Path,
    pki_dir: &Path,
    token_file: &Path,
    extra: &[String],
) -> Result<Server> {
    let (webhook, ops) = (free_port()?, free_port()?);
    let log = std::fs::File::create(work.join("server.log")).context("creating server.log")?;
    let mut child = Command::new(bin)
        .arg("--archive")
        .arg(work.join("archive"))
        .args(["--log", "warn", "serve", "--cluster", "load"])
        .args([
            "--listen",
            &webhook.to_string(),
            "--ops-listen",
            &ops.to_string(),
        ])
        .arg("--tls-cert")
        .arg(pki_dir.join("server.crt"))
        .arg("--tls-key")
        .arg(pki_dir.join("server.key"))
        .arg("--client-ca")
        .arg(pki_dir.join("ca.crt"))
        .arg("--bearer-tokens-file")
        .arg(token_file)
        .arg("--wal-dir")
        .arg(work.join("wal"))
        .args(extra)
        .stdout(Stdio::from(
            std::fs::File::create(work.join("findings.ndjson"))
                .context("creating findings.ndjson")?,
        ))
        .stderr(Stdio::from(log))
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(ops, "/readyz").map(|r| r.0) != Some(200) {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the server exited with {status}; see {}",
                work.join("server.log").display()
            );
        }
        if Instant::now() > deadline {
            bail!("the server was not ready within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let peak = Arc::new(AtomicU64::new(0));
    {
        let (peak, pid) = (peak.clone(), child.id());
        std::thread::spawn(move || {
            while let Some((hwm, _)) = process_stats(pid) {
                peak.fetch_max(hwm, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    }
    Ok(Server {
        child,
        ops,
        webhook,
        peak,
    })
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1e3
}

fn main() -> Result<()> {
    let args = Args::parse();
    let bin = match &args.server_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("locating the benchmark's directory")?
            .join("auditlake"),
    };
    let temp;
    let work = match &args.work_dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::tempdir().context("creating a work directory")?;
            temp.path().to_path_buf()
        }
    };
    let pki = Pki::generate("kube-apiserver-load").context("generating certificates")?;
    let pki_dir = work.join("pki");
    pki.write_to(&pki_dir)?;
    let token = "load-bench-token-0123456789";
    let token_file = work.join("tokens");
    std::fs::write(&token_file, format!("{token} load-bench\n"))?;

    eprintln!("generating batch templates...");
    let bodies = Arc::new(Bodies::new(64, args.batch_events));
    let body_bytes: usize =
        bodies.templates.iter().map(|(b, _)| b.len()).sum::<usize>() / bodies.templates.len();
    let mut server = start_server(&bin, &work, &pki_dir, &token_file, &args.serve_args)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let sender = WebhookSender::new(SenderOptions {
        ca_pem: Some(pki.ca_pem.clone()),
        identity_pem: Some(pki.client_identity_pem.clone()),
        bearer_token: Some(token.into()),
        resolve_to: Some(server.webhook),
        http1_only: args.http1,
        ..SenderOptions::new(format!(
            "https://localhost:{}/audit/webhook/load",
            server.webhook.port()
        ))
    })?;
    let warmup = Duration::from_secs(args.warmup_seconds);
    let window = Duration::from_secs(args.seconds);
    let clients = args.clients.max(1);
    // Per-client interval between scheduled sends in paced mode.
    let interval = (args.rate > 0).then(|| {
        Duration::from_secs_f64(clients as f64 * args.batch_events as f64 / args.rate as f64)
    });
    let started = Instant::now();
    let (reports, acked_total, cpu_measured) = runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..clients {
            let (sender, bodies) = (sender.clone(), bodies.clone());
            tasks.spawn(async move {
                let mut report = ClientReport::default();
                let mut acked = 0u64;
                let measure_from = started + warmup;
                let end = measure_from + window;
                // Stagger paced clients evenly over one interval.
                let mut scheduled =
                    started + interval.map_or(Duration::ZERO, |i| i * c as u32 / clients as u32);
                loop {
                    let sent_at = match interval {
                        Some(i) => {
                            let at = scheduled;
                            scheduled += i;
                            tokio::time::sleep_until(at.into()).await;
                            at
                        }
                        None => Instant::now(),
                    };
                    if sent_at >= end {
                        break;
                    }
                    let body = bodies.take();
                    let delivery = match sender.send(body).await {
                        Ok(d) => d,
                        // What an apiserver does after its last retry: drop the batch and go
                        // on. Overload shows up as this count, and the run goes on.
                        Err(SendError::GaveUp { .. }) => {
                            report.dropped_batches += 1;
                            continue;
                        }
                        Err(e) => return Err(e.into()),
                    };
                    acked += bodies.events_per_body as u64;
                    if sent_at >= measure_from && Instant::now() <= end {
                        report.latencies.push(sent_at.elapsed());
                        report.events += bodies.events_per_body as u64;
                        if delivery.attempts > 1 {
                            report.retried_batches += 1;
                        }
                    }
                }
                Ok::<_, anyhow::Error>((report, acked))
            });
        }
        let pid = server.child.id();
        let cpu_handle = tokio::spawn(async move {
            tokio::time::sleep_until((started + warmup).into()).await;
            let a = process_stats(pid).map_or(0.0, |s| s.1);
            tokio::time::sleep(window).await;
            process_stats(pid).map_or(0.0, |s| s.1) - a
        });
        let mut reports = Vec::new();
        let mut acked_total = 0;
        while let Some(r) = tasks.join_next().await {
            let (report, acked) = r??;
            reports.push(report);
            acked_total += acked;
        }
        let cpu = cpu_handle.await?;
        Ok::<_, anyhow::Error>((reports, acked_total, cpu))
    })?;

    let metrics = get(server.ops, "/metrics").map(|r| r.1).unwrap_or_default();
    let fsyncs = metric(&metrics, "auditlake_wal_fsync_seconds_count");
    let group_mean = metric(&metrics, "auditlake_wal_group_appends_sum")
        / metric(&metrics, "auditlake_wal_group_appends_count");
    let commits = metric(&metrics, "auditlake_commits_total");
    let server_p50 = histogram_quantile_ms(&metrics, "auditlake_webhook_ack_seconds", 0.5);
    let server_p99 = histogram_quantile_ms(&metrics, "auditlake_webhook_ack_seconds", 0.99);
    let findings = metric(&metrics, "auditlake_findings_total");
    let finding_p50 = histogram_quantile_ms(&metrics, "auditlake_finding_latency_seconds", 0.5);
    let finding_p99 = histogram_quantile_ms(&metrics, "auditlake_finding_latency_seconds", 0.99);
    let _ = std::fs::write(work.join("metrics.txt"), &metrics);

    // Stop the server and read how many events it committed.
    let stopped_at = Instant::now();
    Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .context("sending SIGTERM")?;
    let status = server.child.wait()?;
    let drain_secs = stopped_at.elapsed().as_secs_f64();
    let log = std::fs::read_to_string(work.join("server.log")).unwrap_or_default();
    let committed: u64 = log
        .lines()
        .find_map(|l| l.strip_prefix("stopped: "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);

    let mut latencies: Vec<Duration> = reports
        .iter()
        .flat_map(|r| r.latencies.iter().copied())
        .collect();
    latencies.sort();
    let events: u64 = reports.iter().map(|r| r.events).sum();
    let retried: u64 = reports.iter().map(|r| r.retried_batches).sum();
    let dropped: u64 = reports.iter().map(|r| r.dropped_batches).sum();
    let secs = window.as_secs_f64();
    println!(
        "clients {clients} over {}, {} events/batch ({:.0} KB), offered {}, {} s measured after {} s warm-up",
        if args.http1 {
            "HTTP/1.1 connections"
        } else {
            "one HTTP/2 connection"
        },
        args.batch_events,
        body_bytes as f64 / 1e3,
        if args.rate > 0 {
            format!("{} events/s", args.rate)
        } else {
            "closed loop".into()
        },
        args.seconds,
        args.warmup_seconds
    );
    println!(
        "sustained {:.0} events/s ({:.1} MB/s, {:.0} batches/s); ack latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; retried batches {retried}, dropped after 5 attempts {dropped}",
        events as f64 / secs,
        events as f64 / args.batch_events as f64 * body_bytes as f64 / 1e6 / secs,
        latencies.len() as f64 / secs,
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        percentile(&latencies, 100.0),
    );
    println!(
        "server: peak RSS {:.0} MB, CPU {:.2} cores during the window; SIGTERM -> exit {:?} in {:.1} s; committed {committed} of {acked_total} acknowledged events",
        server.peak.load(Ordering::Relaxed) as f64 / 1e6,
        cpu_measured / secs,
        status.code(),
        drain_secs,
    );
    println!(
        "server metrics over the whole run: {fsyncs:.0} fsyncs, {group_mean:.1} batches per fsync, {commits:.0} commits; \
         server-side ack (request headers to answer) p50 <= {server_p50} ms, p99 <= {server_p99} ms"
    );
    if findings > 0.0 {
        println!(
            "detection: {findings:.0} findings; request arrival to finding p50 <= {finding_p50} ms, p99 <= {finding_p99} ms"
        );
    } else {
        println!("detection: no findings (detectors off, or nothing matched)");
    }
    if committed != acked_total {
        bail!(
            "{acked_total} events were acknowledged but {committed} committed; see {}",
            work.join("server.log").display()
        );
    }
    Ok(())
}
