//! `auditlake findings`: the archived findings (the `findings` table), newest first.

use anyhow::{Context, Result};
use auditlake_ingest::Archive;
use auditlake_queries::{OutputFormat, write_batches};
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

const SEVERITIES: [&str; 5] = ["info", "low", "medium", "high", "critical"];

fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Runs `auditlake findings`.
pub async fn run(archive: Archive, args: FindingsArgs) -> Result<()> {
    let seconds = parse_duration(&args.since)?;
    let rank = SEVERITIES
        .iter()
        .position(|s| *s == args.min_severity)
        .with_context(|| {
            format!(
                "--min-severity {:?}: expected one of {}",
                args.min_severity,
                SEVERITIES.join(", ")
            )
        })?;
    let cutoff = auditlake_schema::timestamp::format_rfc3339_micros(
        now_micros() - seconds.saturating_mul(1_000_000),
    );
    let mut filters = vec![
        format!("date >= '{}'", &cutoff[..10]),
        format!("time >= TIMESTAMP '{cutoff}'"),
        format!(
            "severity IN ({})",
            SEVERITIES[rank..]
                .iter()
                .map(|s| quoted(s))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ];
    if !args.rule.is_empty() {
        let ids: Vec<String> = args.rule.iter().map(|r| quoted(r)).collect();
        filters.push(format!("rule_id IN ({})", ids.join(", ")));
    }
    if let Some(c) = &args.cluster {
        filters.push(format!("cluster = {}", quoted(c)));
    }
    let columns = match args.format {
        OutputFormat::Table => {
            "time, severity, rule_id, outcome, cluster, principal, verb, \
             concat_ws('/', resource, namespace, name) AS object, count, \
             substr(details, 1, 80) AS details"
        }
        _ => "*",
    };
    let sql = format!(
        "SELECT {columns} FROM findings WHERE {} ORDER BY time DESC, rule_id LIMIT {}",
        filters.join(" AND "),
        args.limit
    );
    let session = crate::open_session(&archive).await?;
    let (schema, batches) = session.sql(&sql).await.context("querying findings")?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    write_batches(args.format, &schema, &batches, &mut std::io::stdout())
        .context("writing results")?;
    eprintln!("{rows} finding(s) since {cutoff} (table `findings`; `auditlake query` for more)");
    Ok(())
}
