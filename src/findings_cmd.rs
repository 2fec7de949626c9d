//! `auditlake findings`: the archived findings (the `findings` table), newest first.

use anyhow::{Context, Result};
use auditlake_ingest::Archive;
use auditlake_queries::{FindingsFilter, OutputFormat, write_batches};
use clap::Args;

use crate::rules_cmd::{now_micros, parse_duration};

/// Flags of `auditlake findings`.
#[derive(Args, Debug)]
pub struct FindingsArgs {
    /// How far back (by the time of the first evidence): a number with s, m, h or d.
    #[arg(long, default_value = "24h")]
    since: String,
    /// Only this rule (repeatable or comma separated).
    #[arg(long, value_delimiter = ',')]
    rule: Vec<String>,
    /// Only findings at least this severe: info, low, medium, high or critical.
    #[arg(long, default_value = "info")]
    min_severity: String,
    /// Only this cluster.
    #[arg(long)]
    cluster: Option<String>,
    /// Most rows shown.
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    /// Output format: table, csv, json or ndjson (json and ndjson include every column).
    #[arg(long, short, default_value = "table")]
    format: OutputFormat,
}

/// Runs `auditlake findings`.
pub async fn run(archive: Archive, args: FindingsArgs) -> Result<()> {
    let seconds = parse_duration("--since", &args.since)?;
    let since_micros = now_micros() - seconds.saturating_mul(1_000_000);
    let cutoff = auditlake_schema::timestamp::format_rfc3339_micros(since_micros);
    let sql = FindingsFilter {
        since_micros,
        rules: args.rule.clone(),
        min_severity: args.min_severity.clone(),
        cluster: args.cluster.clone(),
        all_columns: args.format != OutputFormat::Table,
        limit: args.limit,
    }
    .sql()
    .map_err(anyhow::Error::msg)?;
    let session = crate::open_session(&archive).await?;
    let (schema, batches) = session.sql(&sql).await.context("querying findings")?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    write_batches(args.format, &schema, &batches, &mut std::io::stdout())
        .context("writing results")?;
    eprintln!("{rows} finding(s) since {cutoff} (table `findings`; `auditlake query` for more)");
    Ok(())
}
