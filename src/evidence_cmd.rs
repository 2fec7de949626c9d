//! `auditlake keys` and `auditlake verify`, and the signing flags `ingest` and `serve`
//! share: the archive as evidence a third party checks with public keys only.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use auditlake_archive::note::{KeyKind, Signer, Verifier};
use auditlake_archive::tlog::{Checkpoint, LogKeys};
use auditlake_archive::verify::{Verdict, VerifyOptions, VerifyReport, verify};
use auditlake_ingest::Archive;
use clap::{Args, Subcommand};

/// A failure that ends the process with its own exit code (verify's verdicts).
#[derive(Debug)]
pub(crate) struct ExitWith {
    pub code: u8,
    pub message: String,
}

impl std::fmt::Display for ExitWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExitWith {}

/// `auditlake keys`.
#[derive(Args, Debug)]
pub(crate) struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Write a new Ed25519 signing key (C2SP signed-note format, owner-only permissions)
    /// and print its public key (a vkey), which is also written beside it as `<out>.vkey`.
    Generate {
        /// File to write the private key to (refused if it exists).
        #[arg(long)]
        out: PathBuf,
        /// The key's name, shown on every signature (no spaces or '+'); for the log key it
        /// also names the log (the checkpoint's origin).
        #[arg(long, default_value = "auditlake")]
        name: String,
        /// A witness key (cosignature/v1) instead of a log key: given to someone else, who
        /// cosigns the archive's checkpoints with it (`--witness-key`).
        #[arg(long)]
        witness: bool,
    },
    /// Print the public key (vkey) of a private key file.
    Public {
        /// The private key file.
        key: PathBuf,
    },
    /// Rotate the archive's log key: commits a record naming the old and the new key, whose
    /// checkpoint both keys sign (kept under `_log/rotation/`), so a verifier trusting the
    /// old key follows it. Sign with the new key (`--signing-key`) from then on.
    Rotate {
        /// The current signing key.
        #[arg(long)]
        old_key: PathBuf,
        /// The key that signs from now on (`keys generate`).
        #[arg(long)]
        new_key: PathBuf,
    },
}

/// `auditlake verify`.
#[derive(Args, Debug)]
pub(crate) struct VerifyArgs {
    /// Trusted public keys: vkey files (one key per line) or vkey text, repeatable. Give the
    /// old and the new log key across a rotation, and witness keys to count cosignatures.
    #[arg(long = "public-key", required = true)]
    public_keys: Vec<String>,

    /// How many of the trusted keys must have signed the checkpoint (default: all given).
    #[arg(long)]
    require: Option<usize>,

    /// A checkpoint saved earlier (`_log/checkpoint` as it was): the archive's must extend
    /// it, proving history was only appended to since.
    #[arg(long)]
    since_checkpoint: Option<PathBuf>,

    /// Re-read only this fraction (0 < p <= 1) of the files, drawn from the checkpoint's
    /// root so the choice cannot be known before the checkpoint exists.
    #[arg(long)]
    sample: Option<f64>,

    /// Check only files with events from this date on (YYYY-MM-DD, UTC).
    #[arg(long)]
    from: Option<String>,

    /// Check only files with events before this date (YYYY-MM-DD, UTC, exclusive).
    #[arg(long)]
    to: Option<String>,
}

/// `auditlake prove`.
#[derive(Args, Debug)]
pub(crate) struct ProveArgs {
    /// The event's audit ID (every stage of it is proven unless --stage narrows).
    #[arg(long)]
    audit_id: String,

    /// Only this stage (RequestReceived, ResponseStarted, ResponseComplete, Panic).
    #[arg(long)]
    stage: Option<String>,

    /// Write the proof here instead of stdout.
    #[arg(long, short)]
    out: Option<PathBuf>,
}

/// `auditlake verify-proof`.
#[derive(Args, Debug)]
pub(crate) struct VerifyProofArgs {
    /// The proof file (`auditlake prove` output; `-` for stdin).
    proof: PathBuf,

    /// Trusted public keys: vkey files or vkey text, repeatable.
    #[arg(long = "public-key", required = true)]
    public_keys: Vec<String>,

    /// How many of the trusted keys must have signed the checkpoint (default: all given).
    #[arg(long)]
    require: Option<usize>,
}

/// Reads a text file (`what`: a key, a checkpoint), naming it in errors.
fn read_text(what: &str, path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {what} {}", path.display()))
}

/// Reads a private key file (`what`: signing key, witness key, ...).
fn read_signer(what: &str, path: &Path) -> Result<Signer> {
    Signer::parse(&read_text(what, path)?).with_context(|| format!("{what} {}", path.display()))
}

/// Turns on signing for `archive` with the key files given to `ingest` or `serve`, and
/// catches the log up with the manifest.
pub(crate) async fn with_signing(
    archive: Archive,
    signing_key: Option<&Path>,
    witness_keys: &[PathBuf],
) -> Result<Archive> {
    let Some(path) = signing_key else {
        if !witness_keys.is_empty() {
            bail!("--witness-key needs --signing-key: witnesses cosign the log's checkpoints");
        }
        return Ok(archive);
    };
    let signer = read_signer("signing key", path)?;
    let mut keys =
        LogKeys::new(signer).with_context(|| format!("signing key {}", path.display()))?;
    for w in witness_keys {
        let witness = read_signer("witness key", w)?;
        if witness.verifier().kind() != KeyKind::Witness {
            bail!(
                "witness key {}: {} is a log key; witnesses cosign with a key from `auditlake keys generate --witness`",
                w.display(),
                witness.verifier().name()
            );
        }
        keys.witnesses.push(witness);
    }
    let archive = archive.with_signing(keys);
    if let Some(head) = archive
        .sync_log()
        .await
        .context("bringing the signed log up to the manifest")?
    {
        tracing::info!(
            records = head.size,
            origin = %head.origin,
            "the signed log covers the manifest"
        );
    }
    Ok(archive)
}

pub(crate) async fn run_keys(archive: &str, args: KeysArgs) -> Result<()> {
    match args.command {
        KeysCommand::Rotate { old_key, new_key } => {
            let (old, new) = (
                read_signer("old key", &old_key)?,
                read_signer("new key", &new_key)?,
            );
            let (old_name, new_vkey) = (old.verifier().name().to_string(), new.verifier().vkey());
            let archive = crate::open_existing_archive(archive).await?;
            let writer = auditlake_ingest::new_writer_id();
            let sequence = auditlake_archive::tlog::rotate_key(&archive, &writer, old, new)
                .await
                .context("rotating the signing key")?;
            println!(
                "rotated from {old_name} to {new_vkey} at record {sequence} (its checkpoint, signed by both, is in _log/rotation/); sign with {} from now on",
                new_key.display()
            );
            Ok(())
        }
        KeysCommand::Generate { out, name, witness } => {
            let kind = if witness {
                KeyKind::Witness
            } else {
                KeyKind::Log
            };
            let signer = Signer::generate(&name, kind).context("generating a key")?;
            write_private(&out, &signer.encode())?;
            let vkey = signer.verifier().vkey();
            let mut public = out.clone().into_os_string();
            public.push(".vkey");
            let public = PathBuf::from(public);
            std::fs::write(&public, format!("{vkey}\n"))
                .with_context(|| format!("writing {}", public.display()))?;
            println!("{vkey}");
            eprintln!(
                "wrote the private key to {} (keep it secret) and the public key to {}",
                out.display(),
                public.display()
            );
            Ok(())
        }
        KeysCommand::Public { key } => {
            let signer = read_signer("key", &key)?;
            println!("{}", signer.verifier().vkey());
            Ok(())
        }
    }
}

/// Creates `path` with owner-only permissions, refusing to replace a key.
fn write_private(path: &Path, text: &str) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path).with_context(|| {
        format!(
            "creating {} (an existing key is never overwritten)",
            path.display()
        )
    })?;
    writeln!(f, "{text}").with_context(|| format!("writing {}", path.display()))?;
    f.sync_all()
        .with_context(|| format!("syncing {}", path.display()))
}

/// The trusted keys: each argument is a vkey or a file of vkeys, one per line.
pub(crate) fn trusted_keys(args: &[String]) -> Result<Vec<Verifier>> {
    let mut out = Vec::new();
    for a in args {
        let text = if Path::new(a).exists() {
            read_text("public key file", Path::new(a))?
        } else {
            a.clone()
        };
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            out.push(Verifier::parse(line).with_context(|| format!("--public-key {a}"))?);
        }
    }
    Ok(out)
}

pub(crate) fn date_micros(flag: &str, date: &str) -> Result<i64> {
    auditlake_schema::timestamp::parse_rfc3339_micros(&format!("{date}T00:00:00Z"))
        .with_context(|| format!("--{flag} {date:?}: want YYYY-MM-DD"))
}

pub(crate) async fn run_verify(archive: Archive, args: VerifyArgs) -> Result<()> {
    let trusted = trusted_keys(&args.public_keys)?;
    if let Some(p) = args.sample
        && !(p > 0.0 && p <= 1.0)
    {
        bail!("--sample {p}: want a fraction above 0 and at most 1");
    }
    let pinned = match &args.since_checkpoint {
        Some(path) => Some(
            Checkpoint::parse(&read_text("checkpoint", path)?)
                .with_context(|| format!("--since-checkpoint {}", path.display()))?,
        ),
        None => None,
    };
    let time_range = match (&args.from, &args.to) {
        (None, None) => None,
        (from, to) => Some((
            from.as_deref()
                .map_or(Ok(i64::MIN), |d| date_micros("from", d))?,
            to.as_deref()
                .map_or(Ok(i64::MAX), |d| date_micros("to", d))?,
        )),
    };
    let opts = VerifyOptions {
        required: args.require.unwrap_or(trusted.len()),
        trusted,
        pinned,
        sample: args.sample,
        time_range,
    };
    let started = std::time::Instant::now();
    let report = verify(&archive, &opts)
        .await
        .with_context(|| format!("verifying {}", archive.location().url))?;
    print_report(&report, started.elapsed());
    match report.worst() {
        None => Ok(()),
        Some(v) => Err(ExitWith {
            code: v.exit_code(),
            message: format!(
                "verification failed: {} problem(s), the first of kind {} (exit code {})",
                report.problems.len(),
                v.label(),
                v.exit_code()
            ),
        }
        .into()),
    }
}

fn print_report(r: &VerifyReport, elapsed: std::time::Duration) {
    let mut out = std::io::stdout().lock();
    for p in &r.problems {
        let _ = writeln!(out, "{} {}: {}", p.verdict.label(), p.object, p.detail);
    }
    for (sequence, from, to) in &r.rotations {
        let _ = writeln!(
            out,
            "KEY ROTATION record {sequence}: {from} -> {to} (its checkpoint signed by both)"
        );
    }
    for removed in &r.removed {
        let _ = writeln!(
            out,
            "REMOVED BY RETENTION {} (record {})",
            removed.path, removed.sequence
        );
    }
    let checkpoint = r.checkpoint.as_ref().map_or_else(
        || "no checkpoint".to_string(),
        |c| {
            format!(
                "checkpoint of {} records of log {:?} signed by {}",
                c.head.size,
                c.head.origin,
                if r.signed_by.is_empty() {
                    "no trusted key".to_string()
                } else {
                    r.signed_by.join(", ")
                }
            )
        },
    );
    let verdict = if r.problems.is_empty() {
        "OK"
    } else {
        "FAILED"
    };
    let _ = writeln!(
        out,
        "{verdict}: {} records, {} files ({:.1} MB) re-read and hashed in {:.1} s{}; {checkpoint}",
        r.records,
        r.files_checked,
        r.bytes_checked as f64 / 1e6,
        elapsed.as_secs_f64(),
        if r.files_skipped > 0 {
            format!(", {} left out (sample, dates)", r.files_skipped)
        } else {
            String::new()
        }
    );
}

pub(crate) async fn run_prove(archive: Archive, args: ProveArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let proof = auditlake_archive::prove::prove(&archive, &args.audit_id, args.stage.as_deref())
        .await
        .with_context(|| format!("proving audit ID {}", args.audit_id))?;
    if proof.events.is_empty() {
        bail!(
            "no event with audit ID {}{} in the signed part of the archive",
            args.audit_id,
            args.stage
                .as_deref()
                .map(|s| format!(" and stage {s}"))
                .unwrap_or_default()
        );
    }
    let text = serde_json::to_string_pretty(&proof).context("encoding the proof")?;
    match &args.out {
        Some(path) => std::fs::write(path, format!("{text}\n"))
            .with_context(|| format!("writing {}", path.display()))?,
        None => println!("{text}"),
    }
    eprintln!(
        "proved {} event(s) of audit ID {} in {:.2} s",
        proof.events.len(),
        args.audit_id,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

pub(crate) fn run_verify_proof(args: VerifyProofArgs) -> Result<()> {
    use auditlake_archive::prove::{EventProof, ProofError, verify_proof};
    let trusted = trusted_keys(&args.public_keys)?;
    let text = if args.proof.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the proof from stdin")?
    } else {
        read_text("proof", &args.proof)?
    };
    let proof: EventProof = serde_json::from_str(&text)
        .with_context(|| format!("{} is not an auditlake event proof", args.proof.display()))?;
    let required = args.require.unwrap_or(trusted.len());
    match verify_proof(&proof, &trusted, required) {
        Ok(events) => {
            for e in events {
                println!(
                    "VERIFIED audit ID {} stage {} of cluster {}: in {} (manifest record {}), under a checkpoint signed by the trusted keys",
                    e.audit_id, e.stage, e.cluster, e.file, e.sequence
                );
            }
            Ok(())
        }
        Err(e) => {
            let code = match e {
                ProofError::Malformed(_) => 1,
                ProofError::Signature(_) => Verdict::CheckpointSignature.exit_code(),
                ProofError::NotInLog { .. } => Verdict::RecordAltered.exit_code(),
                ProofError::NotInFile { .. } => Verdict::FileAltered.exit_code(),
            };
            Err(ExitWith {
                code,
                message: format!("the proof does not hold: {e}"),
            }
            .into())
        }
    }
}

/// The exit codes, for `verify --help`.
pub(crate) fn exit_codes_help() -> String {
    let mut s =
        String::from("Exit codes: 0 verified; 1 could not verify (bad flags, store unreachable);");
    for v in Verdict::ALL {
        s.push_str(&format!(" {} {};", v.exit_code(), v.label().to_lowercase()));
    }
    s.push_str(" the most fundamental problem found decides.");
    s
}

/// `auditlake retention`.
#[derive(Args, Debug)]
pub(crate) struct RetentionArgs {
    /// Keep this much history (`400d`, `52w` is not a unit: use days): partitions whose
    /// hour (events) or day (findings, RBAC history, quarantine) ended before now minus this
    /// are removed.
    #[arg(long)]
    keep: String,

    /// Print what would be removed and what legal holds keep; change nothing.
    #[arg(long)]
    dry_run: bool,

    /// A legal hold, `name[:cluster=C][,from=YYYY-MM-DD][,to=YYYY-MM-DD]` (repeatable): what
    /// it covers is never removed. Holds kept as marker objects under `_legal_hold/` (JSON
    /// with the same keys and `reason`) count too.
    #[arg(long = "legal-hold")]
    legal_holds: Vec<String>,

    /// The archive's signing key: the retention record is signed like every commit (needed
    /// when the archive's log is signed).
    #[arg(long, env = "AUDITLAKE_SIGNING_KEY")]
    signing_key: Option<PathBuf>,
}

/// The `--legal-hold` specs given on the command line.
pub(crate) fn parse_legal_holds(
    specs: &[String],
) -> Result<Vec<auditlake_archive::retention::LegalHold>> {
    specs
        .iter()
        .map(|s| {
            auditlake_archive::retention::LegalHold::parse_spec(s)
                .map_err(|e| anyhow::anyhow!("--legal-hold: {e}"))
        })
        .collect()
}

pub(crate) async fn run_retention(archive: Archive, args: RetentionArgs) -> Result<()> {
    use auditlake_archive::retention;
    let keep = crate::rules_cmd::parse_duration("--keep", &args.keep)?;
    if keep < 86_400 {
        bail!("--keep {}: retention keeps at least one day", args.keep);
    }
    let holds = parse_legal_holds(&args.legal_holds)?;
    let signed = auditlake_archive::tlog::read_checkpoint(&archive)
        .await
        .context("reading the archive's checkpoint")?
        .is_some();
    if signed && args.signing_key.is_none() && !args.dry_run {
        bail!(
            "the archive's log is signed: give --signing-key so the retention record is signed too"
        );
    }
    let cutoff = crate::rules_cmd::now_micros() - keep * 1_000_000;
    let plan = retention::plan(&archive, cutoff, holds)
        .await
        .context("planning retention")?;
    let bytes: u64 = plan.remove.iter().map(|f| f.bytes).sum();
    let partitions: std::collections::BTreeSet<&str> =
        plan.remove.iter().map(|f| f.partition.as_str()).collect();
    let cutoff_text = auditlake_schema::timestamp::format_rfc3339_micros(cutoff);
    let mut out = std::io::stdout().lock();
    for p in &partitions {
        let _ = writeln!(
            out,
            "{} {p}",
            if args.dry_run {
                "would remove"
            } else {
                "remove"
            }
        );
    }
    for (f, hold) in &plan.held {
        let _ = writeln!(out, "held by {hold}: {}", f.path);
    }
    let _ = writeln!(
        out,
        "{} {} files ({:.1} MB) in {} partitions ending before {cutoff_text}; {} files kept by legal holds ({} holds checked)",
        if args.dry_run {
            "would remove"
        } else {
            "removing"
        },
        plan.remove.len(),
        bytes as f64 / 1e6,
        partitions.len(),
        plan.held.len(),
        plan.holds.len()
    );
    drop(out);
    if args.dry_run || plan.remove.is_empty() {
        return Ok(());
    }
    let archive = with_signing(archive, args.signing_key.as_deref(), &[]).await?;
    let writer = auditlake_ingest::new_writer_id();
    let policy = format!("keep {}", args.keep);
    let (record, deleted) = retention::apply(&archive, &writer, &policy, &plan)
        .await
        .context("writing the retention record")?;
    println!(
        "wrote retention record {} ({policy}, cutoff {cutoff_text}); deleted {deleted} files",
        record.sequence
    );
    Ok(())
}
