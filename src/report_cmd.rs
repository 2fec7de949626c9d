//! `auditlake evidence`: the evidence report of a period, as HTML, JSON or Markdown.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use auditlake_archive::HOUR_MICROS as HOUR;
use auditlake_archive::verify::{VerifyOptions, verify};
use auditlake_ingest::Archive;
use auditlake_queries::evidence_report::{ReportOptions, Verification, gather};
use clap::{Args, ValueEnum};

use crate::evidence_cmd::{ExitWith, date_micros, parse_legal_holds, trusted_keys};

/// Exit code when `--fail-on-gap` is given and the period has a GAP hour.
pub(crate) const EXIT_GAP: u8 = 20;

/// The report's format.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ReportFormat {
    /// One self-contained page (inline CSS and SVG charts; no scripts or fonts fetched).
    Html,
    /// Every figure, every cluster-hour (`auditlake-evidence-report/1`).
    Json,
    /// Markdown tables, for tickets and wikis.
    Md,
}

/// `auditlake evidence`.
#[derive(Args, Debug)]
pub(crate) struct EvidenceArgs {
    /// First day of the period (YYYY-MM-DD, UTC); default 30 days before --to.
    #[arg(long)]
    from: Option<String>,

    /// Day after the last day of the period (YYYY-MM-DD, UTC, exclusive); default now. A
    /// period reaching past now ends at the end of the current hour.
    #[arg(long)]
    to: Option<String>,

    /// html, json or md.
    #[arg(long, value_enum, default_value = "md")]
    format: ReportFormat,

    /// Write the report here instead of stdout.
    #[arg(long, short)]
    out: Option<PathBuf>,

    /// Trusted public keys (vkey files or text, repeatable): the report then includes a
    /// full `verify` of the period against the signed log. Without one the integrity
    /// section says NOT CHECKED.
    #[arg(long = "public-key")]
    public_keys: Vec<String>,

    /// How many of the trusted keys must have signed the checkpoint (default: all given).
    #[arg(long)]
    require: Option<usize>,

    /// Re-read only this fraction of the period's files (see `verify --sample`).
    #[arg(long)]
    sample: Option<f64>,

    /// Only this cluster (repeatable; default every cluster the archive knows).
    #[arg(long = "cluster")]
    clusters: Vec<String>,

    /// Longest silence of a live source (no heartbeat or commit) that is not a gap: a
    /// little over the sources' heartbeat_interval_seconds (default 60).
    #[arg(long, default_value = "5m")]
    max_silence: String,

    /// RBAC changes listed at most (the total is always given).
    #[arg(long, default_value_t = 500)]
    max_rbac_changes: usize,

    /// A legal hold given to `retention` on its command line, reported with the marker
    /// objects (`name[:cluster=C][,from=YYYY-MM-DD][,to=YYYY-MM-DD]`, repeatable).
    #[arg(long = "legal-hold")]
    legal_holds: Vec<String>,

    /// Exit with code 20 (after writing the report) when any cluster-hour is a GAP.
    #[arg(long)]
    fail_on_gap: bool,
}

pub(crate) async fn run(archive: Archive, args: EvidenceArgs) -> Result<()> {
    let now = crate::rules_cmd::now_micros();
    let end_of_this_hour = (now.div_euclid(HOUR) + 1) * HOUR;
    let to = match &args.to {
        Some(d) => date_micros("to", d)?.min(end_of_this_hour),
        None => end_of_this_hour,
    };
    let from = match &args.from {
        Some(d) => date_micros("from", d)?,
        None => to - 30 * 24 * HOUR,
    };
    if from >= to {
        bail!("--from must be before --to (and before now)");
    }
    let max_silence = crate::rules_cmd::parse_duration("--max-silence", &args.max_silence)?;
    if max_silence < 1 {
        bail!("--max-silence {}: want at least 1s", args.max_silence);
    }
    let configured_holds = parse_legal_holds(&args.legal_holds)?;
    if let Some(p) = args.sample
        && !(p > 0.0 && p <= 1.0)
    {
        bail!("--sample {p}: want a fraction above 0 and at most 1");
    }

    let mut worst = None;
    let verification = if args.public_keys.is_empty() {
        Verification::NotChecked {
            reason: "no public key was given".into(),
        }
    } else {
        let trusted = trusted_keys(&args.public_keys)?;
        let opts = VerifyOptions {
            required: args.require.unwrap_or(trusted.len()),
            trusted,
            pinned: None,
            sample: args.sample,
            time_range: Some((from, to)),
        };
        tracing::info!("verifying the period's files against the signed log");
        let report = verify(&archive, &opts)
            .await
            .with_context(|| format!("verifying {}", archive.location().url))?;
        worst = report.worst();
        Verification::from_report(&report)
    };

    let session = crate::open_session(&archive).await?;
    let opts = ReportOptions {
        from_micros: from,
        to_micros: to,
        max_silence_micros: max_silence * 1_000_000,
        clusters: args.clusters.clone(),
        max_rbac_changes: args.max_rbac_changes,
        configured_holds,
        as_of_micros: now,
    };
    let report = gather(&archive, &session, &opts, verification)
        .await
        .with_context(|| format!("gathering the evidence of {}", archive.location().url))?;
    let text = match args.format {
        ReportFormat::Html => auditlake_queries::evidence_html::render(&report),
        ReportFormat::Md => auditlake_queries::evidence_markdown::render(&report),
        ReportFormat::Json => {
            let mut s = serde_json::to_string_pretty(&report).context("encoding the report")?;
            s.push('\n');
            s
        }
    };
    match &args.out {
        Some(path) => std::fs::write(path, text)
            .with_context(|| format!("writing the report to {}", path.display()))?,
        None => std::io::stdout()
            .lock()
            .write_all(text.as_bytes())
            .context("writing the report to stdout")?,
    }
    let h = report.headline();
    tracing::info!(
        integrity = %report.verdict(),
        ok = h.ok,
        quiet = h.quiet,
        gap = h.gap,
        events = h.events,
        "evidence report written"
    );
    if let Some(v) = worst {
        return Err(ExitWith {
            code: v.exit_code(),
            message: format!(
                "the report is written, and verification failed: the first problem is of kind {} (exit code {})",
                v.label(),
                v.exit_code()
            ),
        }
        .into());
    }
    if args.fail_on_gap && h.gap > 0 {
        return Err(ExitWith {
            code: EXIT_GAP,
            message: format!(
                "the report is written; {} cluster-hour(s) are GAPs (exit code {EXIT_GAP})",
                h.gap
            ),
        }
        .into());
    }
    Ok(())
}
