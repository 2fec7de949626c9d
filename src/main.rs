//! `auditlake`: Kubernetes audit events -> Arrow -> Parquet evidence archive, queried with SQL.
//!
//! A thin CLI: every subcommand parses flags and calls the library crates.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use auditlake_ingest::{Archive, ArchiveLocation, IngestOptions, IngestSummary, Input};
use auditlake_queries::ArchiveSession;
use clap::{Args, Parser, Subcommand};

/// glibc malloc serialises threads that free what another thread allocated (each decoded
/// record crosses from the decoder to the writer), which measured as the Kafka member's main wait.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod demo_cmd;
mod detect;
mod evidence_cmd;
mod findings_cmd;
mod query_cmd;
mod report_cmd;
mod rules_cmd;
mod serve_cmd;

/// Kubernetes audit events into a tamper-evident Parquet archive you can query with SQL.
#[derive(Parser, Debug)]
#[command(name = "auditlake", version, about, long_about = None)]
struct Cli {
    /// Archive location: a local directory or an object_store URL (file://, s3://, gs://,
    /// az://). Cloud credentials come from the environment (AWS_*, GOOGLE_*, AZURE_*).
    #[arg(
        long,
        global = true,
        env = "AUDITLAKE_ARCHIVE",
        default_value = "./auditlake-data"
    )]
    archive: String,

    /// Log filter (tracing syntax: info, debug, auditlake_ingest=debug, ...).
    #[arg(long, global = true, env = "AUDITLAKE_LOG", default_value = "info")]
    log: String,

    /// Log format: text or json.
    #[arg(
        long,
        global = true,
        env = "AUDITLAKE_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Ingest audit log files (NDJSON, EventList, gzip, directories, `-` for stdin) into the archive.
    Ingest(IngestArgs),
    /// Run SQL over the archive (tables events, findings, rbac_history; JSON and k8s_*
    /// functions): `-c SQL`, `-f FILE`, or an interactive prompt without either.
    Query(query_cmd::QueryArgs),
    /// Receive kube-apiserver audit webhook batches over HTTPS; a 200 means the batch is fsynced
    /// in the write-ahead log, from where it is archived as Parquet. With --kafka-brokers,
    /// archive Kafka topics as a consumer group member instead.
    Serve(Box<serve_cmd::ServeArgs>),
    /// Start the webhook server on loopback, post generated batches to it like a kube-apiserver,
    /// then list the archive and run a query over it.
    Demo(demo_cmd::DemoArgs),
    /// Write deterministic, realistic generated audit events as NDJSON (for tests and benchmarks).
    Generate(GenerateArgs),
    /// Send audit log files to a Kafka topic, one NDJSON line per message as a shipper would
    /// (backfill); returns once Kafka acknowledged every message.
    Produce(ProduceArgs),
    /// The detection rules: list them, run the labelled scenarios, backtest one over the archive.
    Rules(rules_cmd::RulesArgs),
    /// The archived findings (table `findings`), newest first: `--since 24h`, by rule, severity.
    Findings(findings_cmd::FindingsArgs),
    /// Signing keys for the evidence log: `generate` one (prints its public key), print the
    /// public key of one, `rotate` the archive's key.
    Keys(evidence_cmd::KeysArgs),
    /// Check the archive against its signed log with public keys only: the checkpoint's
    /// signatures, every manifest record, the log's tiles, every file's SHA-256, files no
    /// record names, and (--since-checkpoint) that history was only appended to. Prints a
    /// line per problem naming the object.
    #[command(after_help = evidence_cmd::exit_codes_help())]
    Verify(evidence_cmd::VerifyArgs),
    /// Write a self-contained proof that an event is in the archive as committed: its row,
    /// its path to its file's rows root, the manifest record naming the file, the record's
    /// path in the signed log, and the signed checkpoint (check it with `verify-proof`).
    Prove(evidence_cmd::ProveArgs),
    /// Check a proof from `prove` offline with public keys only: exit 0 and a line per event
    /// when it holds; 10 checkpoint signature, 13 record not in the log, 17 event not as
    /// committed.
    VerifyProof(evidence_cmd::VerifyProofArgs),
    /// Remove whole partitions older than `--keep` under a retention record written (and
    /// signed) before any byte is deleted; legal holds keep what they cover. `--dry-run`
    /// first.
    Retention(evidence_cmd::RetentionArgs),
    /// The evidence report of a period for an auditor (HTML, JSON or Markdown): integrity
    /// against the signed log (with --public-key), events per cluster per day, every
    /// cluster-hour OK / QUIET / GAP with what is missing named, quarantine by reason,
    /// findings by rule and severity, RBAC changes, retention and legal holds.
    #[command(
        after_help = "Exit codes: 0 written; verify's 10-19 (`auditlake verify --help`) when the \
                      verification failed, after the report is written; 20 with --fail-on-gap when \
                      a cluster-hour is a GAP."
    )]
    Evidence(report_cmd::EvidenceArgs),
}

#[derive(Args, Debug)]
struct GenerateArgs {
    /// Number of events to write.
    #[arg(long, default_value_t = 10_000)]
    events: usize,

    /// Seed of the generator (same seed and mix, same events).
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// Relative weights of reads, writes and RBAC changes, as `reads,writes,rbac`.
    #[arg(long, default_value = "80,17,3")]
    mix: String,

    /// Output file (`-` for stdout).
    #[arg(long, short, default_value = "-")]
    output: PathBuf,

    /// `mixed`: anyone does anything, attack-like requests included (load for benchmarks);
    /// `benign`: a healthy cluster whose RBAC is changed by its GitOps controller (Argo CD)
    /// and the control plane, to count the alerts ordinary work raises.
    #[arg(long, default_value = "mixed")]
    profile: GenerateProfile,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum GenerateProfile {
    Mixed,
    Benign,
}

#[derive(Args, Debug)]
struct IngestArgs {
    /// Cluster the events belong to (the `cluster=` partition): letters, digits, `-`, `_`, `.`.
    #[arg(long, env = "AUDITLAKE_CLUSTER", default_value = "default")]
    cluster: String,

    /// An NDJSON line longer than this is quarantined without being parsed.
    #[arg(long, env = "AUDITLAKE_MAX_EVENT_BYTES", default_value_t = 8 << 20)]
    max_event_bytes: usize,

    /// How the inputs are wrapped: `auto` recognises each line or document by its shape
    /// (plain events; EKS CloudWatch Logs, Firehose and Logs Insights output; GKE
    /// LogEntries; AKS diagnostic records; Fluent Bit, Vector, OTLP and OpenShift
    /// forwarders; gzip and base64 layers; see schemas/ENVELOPES.md). A format name
    /// (`azure_diagnostic`, `cloudwatch_subscription`, `gke_log_entry`, `event`, ...)
    /// decodes every input as that and quarantines what is not.
    #[arg(long, env = "AUDITLAKE_ENVELOPE", default_value = "auto")]
    envelope: String,

    /// Events per Arrow batch between decoding and Parquet encoding.
    #[arg(long, env = "AUDITLAKE_BATCH_ROWS", default_value_t = 8192)]
    batch_rows: usize,

    /// Cut a Parquet file after this many events.
    #[arg(long, env = "AUDITLAKE_MAX_FILE_ROWS", default_value_t = 1_000_000)]
    max_file_rows: usize,

    /// Cut a Parquet file once its encoded size reaches this many bytes (bounds memory).
    #[arg(long, env = "AUDITLAKE_MAX_FILE_BYTES", default_value_t = 64 << 20)]
    max_file_bytes: usize,

    /// Rule files or directories (YAML) added to the built-in pack; same id replaces.
    #[arg(long, env = "AUDITLAKE_RULES", value_delimiter = ',')]
    rules: Vec<PathBuf>,

    /// Where findings go: stdout, a file path, an http(s):// URL, kafka://host:port/topic (repeatable); `none` turns
    /// detection off.
    #[arg(
        long,
        env = "AUDITLAKE_FINDINGS",
        value_delimiter = ',',
        default_value = "stdout"
    )]
    findings: Vec<String>,

    /// Repeats of a finding (same rule, principal and object; a rule with `fold_by: principal`
    /// ignores the object) within this many seconds of event time are folded into one with a
    /// count.
    #[arg(
        long,
        env = "AUDITLAKE_FINDINGS_FOLD_WINDOW_SECONDS",
        default_value_t = 300
    )]
    findings_fold_window_seconds: u64,

    /// Directory (or file) of RBAC manifests (a GitOps repo, `kubectl get -o yaml` output):
    /// RBAC objects created, changed or deleted away from it are reported as drift.
    #[arg(long, env = "AUDITLAKE_RBAC_BASELINE")]
    rbac_baseline: Option<PathBuf>,

    /// The archive's signing key (`auditlake keys generate`): every commit becomes a leaf of
    /// the signed log with a checkpoint signed by it (archive/FORMAT.md §7).
    #[arg(long, env = "AUDITLAKE_SIGNING_KEY")]
    signing_key: Option<PathBuf>,

    /// Witness keys (`auditlake keys generate --witness`) whose cosignatures are added to
    /// every checkpoint (repeatable); needs --signing-key.
    #[arg(long, env = "AUDITLAKE_WITNESS_KEY", value_delimiter = ',')]
    witness_key: Vec<PathBuf>,

    /// Inputs: files (plain or gzip), directories (every file below), or `-` for stdin.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
}

fn init_logging(filter: &str, format: LogFormat) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("invalid --log filter {filter:?}"))?;
    // Colour only for a person at a terminal: a log collector would store the escapes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            match e.downcast_ref::<evidence_cmd::ExitWith>() {
                Some(exit) => std::process::ExitCode::from(exit.code),
                None => std::process::ExitCode::FAILURE,
            }
        }
    }
}

/// The error and its causes on one line, skipping causes that repeat what was already said
/// (DataFusion wraps one message in several layers).
pub(crate) fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if out.contains(msg.trim()) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(msg.trim());
    }
    out
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    init_logging(&cli.log, cli.log_format)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Ingest(args) => run_ingest(&cli.archive, args).await,
        Command::Query(args) => query_cmd::run(&cli.archive, args).await,
        Command::Serve(args) => run_serve(&cli.archive, *args).await,
        Command::Demo(args) => {
            check_cluster(&args.cluster)?;
            demo_cmd::run(open_archive(&cli.archive)?, &cli.archive, args).await
        }
        Command::Generate(args) => run_generate(args),
        Command::Produce(args) => run_produce(args).await,
        Command::Rules(args) => rules_cmd::run(&cli.archive, args).await,
        Command::Findings(args) => {
            findings_cmd::run(open_existing_archive(&cli.archive).await?, args).await
        }
        Command::Keys(args) => evidence_cmd::run_keys(&cli.archive, args).await,
        Command::Verify(args) => {
            evidence_cmd::run_verify(open_existing_archive(&cli.archive).await?, args).await
        }
        Command::Prove(args) => {
            evidence_cmd::run_prove(open_existing_archive(&cli.archive).await?, args).await
        }
        Command::VerifyProof(args) => evidence_cmd::run_verify_proof(args),
        Command::Retention(args) => {
            evidence_cmd::run_retention(open_existing_archive(&cli.archive).await?, args).await
        }
        Command::Evidence(args) => {
            report_cmd::run(open_existing_archive(&cli.archive).await?, args).await
        }
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = interrupt => tracing::info!("SIGINT received"),
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on SIGINT only");
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

async fn run_serve(archive_arg: &str, args: serve_cmd::ServeArgs) -> Result<()> {
    let config = serve_cmd::resolve(&args)?;
    if args.print_config {
        print!("{}", serve_cmd::to_toml(&config)?);
        return Ok(());
    }
    check_cluster(&config.cluster)?;
    let archive = evidence_cmd::with_signing(
        open_archive(archive_arg)?,
        config.signing_key.as_deref(),
        &config.witness_key,
    )
    .await?;
    // A receiver whose durable log is Kafka archives nothing: the members detect.
    let stateless = config.durable_log.starts_with("kafka://");
    let observer = if stateless {
        None
    } else {
        detect::detection(
            &detect::DetectionSettings {
                rules: &config.rules,
                findings: &config.findings,
                fold_window_seconds: config.findings_fold_window_seconds,
                rbac_baseline: config.rbac_baseline.as_deref(),
                kafka_properties: Some(&config.kafka),
            },
            &archive,
            &auditlake_ingest::new_writer_id(),
        )
        .await?
    };
    if let Some(source) = auditlake_ingest::kafka_source_options(&config) {
        let topics = source.topics.join(",");
        let summary = auditlake_ingest::consume_kafka(
            archive,
            config,
            source,
            observer,
            shutdown_signal(),
            None,
        )
        .await
        .with_context(|| format!("serve: archiving Kafka topics {topics}"))?;
        eprintln!(
            "stopped: {} events committed in {} commits",
            summary.events_committed, summary.commits
        );
        return Ok(());
    }
    let summary = auditlake_ingest::serve(archive, config, observer, shutdown_signal(), None)
        .await
        .context("serve")?;
    eprintln!(
        "stopped: {} events committed in {} commits ({} log records replayed at start)",
        summary.events_committed, summary.commits, summary.replayed_records
    );
    Ok(())
}

/// The SQL session of every command that reads the archive: read-only, the `k8s_*`
/// functions (`k8s_pod_risks`, `k8s_subjects`, ...), tables listed from the manifest; files
/// no manifest record names are reported on stderr and not read.
pub(crate) async fn open_session(archive: &Archive) -> Result<ArchiveSession> {
    let session = ArchiveSession::open(archive)
        .await
        .with_context(|| format!("opening {} for SQL", archive.location().url))?;
    let stray = session.unattested();
    if let Some(first) = stray.first() {
        eprintln!(
            "warning: the archive holds {} Parquet file(s) that no manifest record names (left \
             by a crash mid-commit, or put there by someone); they are not queried. First: {first}",
            stray.len()
        );
    }
    Ok(session)
}

/// Opens the archive at `location` to write (a local directory is created if missing).
fn open_archive(location: &str) -> Result<Archive> {
    let loc = ArchiveLocation::parse(location).with_context(|| format!("archive {location:?}"))?;
    Archive::open(loc).with_context(|| format!("opening archive {location:?}"))
}

/// Opens the archive at `location` to read: a location that holds no archive is an error.
pub(crate) async fn open_existing_archive(location: &str) -> Result<Archive> {
    let loc = ArchiveLocation::parse(location).with_context(|| format!("archive {location:?}"))?;
    Archive::open_existing(loc)
        .await
        .with_context(|| format!("opening archive {location:?}"))
}

fn check_cluster(cluster: &str) -> Result<()> {
    match auditlake_ingest::cluster_name_error(cluster) {
        Some(problem) => bail!("invalid --cluster: {problem}"),
        None => Ok(()),
    }
}

#[derive(Debug, Args)]
struct ProduceArgs {
    /// Kafka bootstrap brokers, host:port[,host:port].
    #[arg(long, env = "AUDITLAKE_KAFKA_BROKERS")]
    kafka_brokers: String,

    /// Topic to send to.
    #[arg(long, env = "AUDITLAKE_KAFKA_TOPIC")]
    kafka_topic: String,

    /// A librdkafka property, key=value (TLS, SASL); repeat the flag.
    #[arg(long = "kafka-option", value_name = "KEY=VALUE")]
    kafka_option: Vec<String>,

    /// Put this cluster in every message's `cluster` header (the members file the events
    /// under it).
    #[arg(long)]
    cluster: Option<String>,

    /// NDJSON lines per message.
    #[arg(long, default_value_t = 1)]
    lines_per_message: usize,

    /// Largest message in bytes; a longer line is not sent and the run fails.
    #[arg(long, default_value_t = 1 << 20)]
    max_message_bytes: usize,

    /// NDJSON audit log files (gzip too), directories, or `-` for stdin.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
}

async fn run_produce(args: ProduceArgs) -> Result<()> {
    if let Some(c) = &args.cluster {
        check_cluster(c)?;
    }
    let properties = auditlake_ingest::ServeConfig::default()
        .with_kafka_options(&args.kafka_option)
        .map_err(anyhow::Error::msg)?;
    let options = auditlake_ingest::ProduceOptions {
        target: auditlake_ingest::KafkaTarget {
            brokers: args.kafka_brokers.clone(),
            topic: args.kafka_topic.clone(),
        },
        properties,
        cluster: args.cluster.clone(),
        lines_per_message: args.lines_per_message.max(1),
        max_message_bytes: args.max_message_bytes,
    };
    let inputs = auditlake_ingest::Input::expand(&args.inputs).context("inputs")?;
    let s = tokio::task::spawn_blocking(move || auditlake_ingest::produce(&inputs, &options))
        .await
        .context("producer thread")?
        .with_context(|| format!("producing to {}/{}", args.kafka_brokers, args.kafka_topic))?;
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    eprintln!(
        "produced {} messages ({} lines, {:.1} MB) to {} in {:.2} s: {:.0} lines/s, {:.1} MB/s; {} failed, {} lines too large",
        s.delivered,
        s.lines,
        s.bytes as f64 / 1e6,
        args.kafka_topic,
        secs,
        s.lines as f64 / secs,
        s.bytes as f64 / 1e6 / secs,
        s.failed,
        s.oversized
    );
    if s.failed > 0 || s.oversized > 0 {
        bail!(
            "{} messages were not taken by Kafka and {} lines were too large",
            s.failed,
            s.oversized
        );
    }
    Ok(())
}

async fn run_ingest(archive: &str, args: IngestArgs) -> Result<()> {
    check_cluster(&args.cluster)?;
    let archive = evidence_cmd::with_signing(
        open_archive(archive)?,
        args.signing_key.as_deref(),
        &args.witness_key,
    )
    .await?;
    let inputs = Input::expand(&args.inputs).context("resolving inputs")?;
    if inputs.is_empty() {
        bail!("no input files found in {:?}", args.inputs);
    }
    let mut options = IngestOptions::new(&args.cluster);
    options.decoder.max_event_bytes = args.max_event_bytes;
    options.decoder.envelope = match args.envelope.as_str() {
        "auto" => None,
        name => Some(
            name.parse::<auditlake_schema::Envelope>()
                .map_err(anyhow::Error::msg)
                .context("--envelope")?,
        ),
    };
    options.batch_rows = args.batch_rows.max(1);
    options.writer.max_file_rows = args.max_file_rows.max(1);
    options.writer.max_file_bytes = args.max_file_bytes.max(1 << 20);
    let observer = detect::detection(
        &detect::DetectionSettings {
            rules: &args.rules,
            findings: &args.findings,
            fold_window_seconds: args.findings_fold_window_seconds,
            rbac_baseline: args.rbac_baseline.as_deref(),
            kafka_properties: None,
        },
        &archive,
        &options.writer_id,
    )
    .await?;
    let started = Instant::now();
    let summary = auditlake_ingest::ingest(&archive, inputs, options, observer)
        .await
        .with_context(|| format!("ingesting into {}", archive.location().url))?;
    print_summary(&summary, started.elapsed(), &archive);
    Ok(())
}

fn print_summary(s: &IngestSummary, elapsed: std::time::Duration, archive: &Archive) {
    let secs = elapsed.as_secs_f64().max(1e-9);
    eprintln!(
        "ingested {} events from {} input(s) ({:.1} MB) in {:.2}s: {:.0} events/s, {:.1} MB/s",
        s.events,
        s.inputs,
        s.bytes_read as f64 / 1e6,
        secs,
        s.events as f64 / secs,
        s.bytes_read as f64 / 1e6 / secs
    );
    eprintln!(
        "wrote {} Parquet file(s), {:.1} MB, in {} commit(s) to {}",
        s.files,
        s.archive_bytes as f64 / 1e6,
        s.commits,
        archive.location().url
    );
    if s.findings > 0 {
        eprintln!("{} finding(s) emitted", s.findings);
    }
    if s.quarantined > 0 {
        eprintln!(
            "quarantined {} malformed input(s): see _quarantine/ in the archive",
            s.quarantined
        );
    } else {
        eprintln!("quarantined 0 inputs");
    }
    // The same counters `serve` exposes on /metrics; only those that moved.
    let moved: Vec<String> = s
        .counters
        .iter()
        .filter(|(_, v)| *v > 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !moved.is_empty() {
        eprintln!("counters: {}", moved.join(" "));
    }
}

fn run_generate(args: GenerateArgs) -> Result<()> {
    let weights: Vec<u32> = args
        .mix
        .split(',')
        .map(|w| w.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .with_context(|| {
            format!(
                "--mix {:?}: expected three whole numbers like 80,17,3",
                args.mix
            )
        })?;
    let [reads, writes, rbac] = weights[..] else {
        bail!(
            "--mix {:?}: expected three weights: reads,writes,rbac",
            args.mix
        );
    };
    if reads + writes + rbac == 0 {
        bail!("--mix {:?}: at least one weight must be above 0", args.mix);
    }
    let mix = auditlake_fixtures::Mix {
        reads,
        writes,
        rbac,
    };
    let profile = match args.profile {
        GenerateProfile::Mixed => auditlake_fixtures::Profile::Mixed,
        GenerateProfile::Benign => auditlake_fixtures::Profile::Benign,
    };
    let mut generator =
        auditlake_fixtures::TrafficGenerator::new(args.seed, mix).with_profile(profile);
    let out: Box<dyn Write> = if args.output.as_os_str() == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(
            std::fs::File::create(&args.output)
                .with_context(|| format!("creating {}", args.output.display()))?,
        )
    };
    let mut out = std::io::BufWriter::with_capacity(1 << 20, out);
    let bytes = generator
        .write_ndjson(&mut out, args.events)
        .context("writing events")?;
    out.flush().context("writing events")?;
    eprintln!("wrote {} events, {:.1} MB", args.events, bytes as f64 / 1e6);
    Ok(())
}
