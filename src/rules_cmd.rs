//! `auditlake rules`: list the rule pack, run the labelled scenarios, backtest a rule over
//! the archive.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use auditlake_analytics::{DetectorOptions, RuleSet, run_scenarios};
use auditlake_queries::{OutputFormat, write_batches};
use clap::{Args, Subcommand};

/// Flags of `auditlake rules`.
#[derive(Args, Debug)]
pub struct RulesArgs {
    /// Rule files or directories added to the built-in pack (same id replaces).
    #[arg(long, global = true, env = "AUDITLAKE_RULES", value_delimiter = ',')]
    rules: Vec<PathBuf>,

    #[command(subcommand)]
    command: RulesCommand,
}

#[derive(Subcommand, Debug)]
enum RulesCommand {
    /// List the rules (id, severity, title, MITRE techniques, where each comes from).
    List,
    /// Run every scenario file in a directory (and Falco's labelled traces with --falco);
    /// print pass/fail, precision and recall per rule, known misses with their reasons, and
    /// warnings for rule conditions that are NULL on a scenario event.
    Test {
        /// Directory of scenario YAML files.
        dir: PathBuf,
        /// Directory of Falco's labelled audit traces with our mapping
        /// (fixtures/falco-k8s-audit).
        #[arg(long)]
        falco: Option<PathBuf>,
    },
    /// Propose allowlists from the archive's history: who changed RBAC, read Secrets,
    /// requested tokens... since `--since`, as a rule file of lists to review and pass with
    /// --rules (nothing is applied by this command).
    Learn {
        /// How far back: a number with s, m, h or d (e.g. 7d).
        #[arg(long, default_value = "7d")]
        since: String,
        /// Write the proposal here instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Run one rule's condition as SQL over the archived events.
    Backtest {
        /// Rule id, e.g. K8S-RBAC-001.
        #[arg(long)]
        rule: String,
        /// How far back: a number with s, m, h or d (e.g. 30d).
        #[arg(long, default_value = "30d")]
        since: String,
        /// Output format: table, csv, json or ndjson.
        #[arg(long, short, default_value = "table")]
        format: OutputFormat,
    },
}

/// Runs `auditlake rules ...`; `archive` is only opened by `backtest`.
pub async fn run(archive_location: &str, args: RulesArgs) -> Result<()> {
    let set = RuleSet::load(&args.rules).context("loading rules")?;
    match args.command {
        RulesCommand::List => {
            println!(
                "{:<14} {:<9} {:<24} {:<70} origin",
                "id", "severity", "mitre", "title"
            );
            for r in set.rules.values() {
                println!(
                    "{:<14} {:<9} {:<24} {:<70} {}{}",
                    r.rule.id,
                    r.rule.severity.as_str(),
                    r.rule.mitre.join(","),
                    r.rule.title,
                    r.origin,
                    if r.rule.enabled { "" } else { " (disabled)" }
                );
            }
            for r in auditlake_analytics::STATEFUL_RULES {
                println!(
                    "{:<14} {:<9} {:<24} {:<70} built-in (stateful{})",
                    r.id,
                    r.severity.as_str(),
                    r.mitre.join(","),
                    r.title,
                    r.needs.map(|n| format!("; needs {n}")).unwrap_or_default()
                );
            }
            Ok(())
        }
        RulesCommand::Test { dir, falco } => {
            let mut report = run_scenarios(&dir, &set, &DetectorOptions::default())
                .with_context(|| format!("running scenarios in {}", dir.display()))?;
            if let Some(f) = falco {
                report.falco = Some(
                    auditlake_analytics::run_falco(&f, &set, &DetectorOptions::default())
                        .with_context(|| format!("running the Falco traces in {}", f.display()))?,
                );
            }
            print!("{}", report.table());
            if !report.passed() {
                bail!("some scenarios failed");
            }
            Ok(())
        }
        RulesCommand::Learn { since, output } => {
            let seconds = parse_duration("--since", &since)?;
            let cutoff = auditlake_schema::timestamp::format_rfc3339_micros(
                now_micros() - seconds.saturating_mul(1_000_000),
            );
            let archive = crate::open_existing_archive(archive_location).await?;
            let session = crate::open_session(&archive).await?;
            let mut seen = std::collections::BTreeMap::new();
            for list in auditlake_analytics::LEARNED_LISTS {
                let (_, batches) = session
                    .sql(&auditlake_analytics::learn_query(list, &cutoff))
                    .await
                    .with_context(|| format!("learning {}", list.list))?;
                seen.insert(list.list, seen_rows(&batches)?);
            }
            let text = auditlake_analytics::proposal(
                &set,
                &seen,
                &format!("{cutoff} ({since})"),
                archive.location().url.as_str(),
            );
            let proposed = text.matches("# PROPOSED").count();
            match output {
                Some(p) => {
                    std::fs::write(&p, &text).with_context(|| format!("writing {}", p.display()))?
                }
                None => print!("{text}"),
            }
            eprintln!(
                "{proposed} principal(s) proposed for review across {} lists",
                auditlake_analytics::LEARNED_LISTS.len()
            );
            Ok(())
        }
        RulesCommand::Backtest {
            rule,
            since,
            format,
        } => {
            let backtest = set.backtest(&rule).map_err(anyhow::Error::msg)?;
            let seconds = parse_duration("--since", &since)?;
            let cutoff_micros = now_micros() - seconds.saturating_mul(1_000_000);
            let cutoff = auditlake_schema::timestamp::format_rfc3339_micros(cutoff_micros);
            let archive = crate::open_existing_archive(archive_location).await?;
            let session = crate::open_session(&archive).await?;
            let (schema, batches) = backtest
                .run(&session, cutoff_micros)
                .await
                .with_context(|| format!("backtest of {rule}"))?;
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            write_batches(format, &schema, &batches, &mut std::io::stdout())
                .context("writing results")?;
            eprintln!(
                "{rule} ({}): {rows} matching event(s) since {cutoff}",
                backtest.title
            );
            Ok(())
        }
    }
}

pub(crate) fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// `30d`, `12h`, `15m`, `90s` in seconds (`flag` names it in errors).
pub(crate) fn parse_duration(flag: &str, s: &str) -> Result<i64> {
    let s = s.trim();
    // Split before the last character, not the last byte (`5é` must be an error, not a panic).
    let cut = s.char_indices().last().map_or(0, |(i, _)| i);
    let (number, unit) = s.split_at(cut);
    let n: i64 = number
        .parse()
        .with_context(|| format!("{flag} {s:?}: expected a number and s, m, h or d, e.g. 30d"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("{flag} {s:?}: the unit must be s, m, h or d"),
    };
    Ok(n.saturating_mul(scale))
}

/// The rows of a learn query: principal, requests, first and last time.
fn seen_rows(batches: &[arrow::array::RecordBatch]) -> Result<Vec<auditlake_analytics::Seen>> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
    let mut out = Vec::new();
    for b in batches {
        // The events table reads strings as views; a plain string array is what we walk.
        let principal = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8)
            .context("reading the principals of a learn query")?;
        let principal = principal.as_string::<i32>();
        let requests = b.column(1).as_primitive::<Int64Type>();
        let first = b.column(2).as_primitive::<TimestampMicrosecondType>();
        let last = b.column(3).as_primitive::<TimestampMicrosecondType>();
        for i in 0..b.num_rows() {
            if principal.is_null(i) {
                continue;
            }
            let time = auditlake_schema::timestamp::format_rfc3339_micros;
            out.push(auditlake_analytics::Seen {
                principal: principal.value(i).to_string(),
                requests: u64::try_from(requests.value(i)).unwrap_or_default(),
                first: time(first.value(i)),
                last: time(last.value(i)),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_bad_ones_are_errors_not_panics() {
        assert_eq!(parse_duration("--since", "30d").unwrap(), 30 * 86_400);
        assert_eq!(parse_duration("--since", " 90s ").unwrap(), 90);
        for bad in ["5é", "é", "", "d", "5", "5w", "-"] {
            assert!(parse_duration("--since", bad).is_err(), "{bad:?} accepted");
        }
    }
}
