//! The evidence report of a period: everything an auditor receives about the archive
//! (verification against the signed log, completeness per cluster-hour, events per day,
//! quarantine, findings, RBAC changes, retention and legal holds), gathered once and
//! rendered as JSON, Markdown or HTML (`evidence_markdown.rs`, `evidence_html.rs`).

use std::collections::BTreeMap;

use arrow::util::display::{ArrayFormatter, FormatOptions};
use auditlake_archive::completeness::{self, Completeness, CompletenessOptions};
use auditlake_archive::layout::partition_value;
use auditlake_archive::retention::{LegalHold, hold_markers};
use auditlake_archive::verify::VerifyReport;
use auditlake_archive::{Archive, ManifestRecord};
use auditlake_schema::timestamp::format_rfc3339_micros;
use serde::Serialize;

use crate::findings_query::{SEVERITIES, quoted};
use crate::session::{ArchiveSession, QueryError};

/// Format tag of the JSON report.
pub const REPORT_FORMAT: &str = "auditlake-evidence-report/1";
/// Quarantine reasons longer than this are cut (they quote the input).
const MAX_REASON_CHARS: usize = 160;
/// Distinct quarantine reasons listed; the rest are summed as one row.
const MAX_REASONS: usize = 50;

/// What to report on.
#[derive(Debug, Clone)]
pub struct ReportOptions {
    /// Start of the period (µs since the epoch, inclusive).
    pub from_micros: i64,
    /// End of the period (µs, exclusive).
    pub to_micros: i64,
    /// Longest silence of a live source that is not a gap (µs).
    pub max_silence_micros: i64,
    /// Only these clusters (empty: all).
    pub clusters: Vec<String>,
    /// RBAC changes listed at most (the total is always given).
    pub max_rbac_changes: usize,
    /// Legal holds configured for retention (`--legal-hold`), reported beside the markers.
    pub configured_holds: Vec<LegalHold>,
    /// When the report is made (µs): its `generated_at`, and the end of what can have been
    /// silent.
    pub as_of_micros: i64,
}

/// The report, as the JSON format writes it.
#[derive(Debug, Clone, Serialize)]
pub struct EvidenceReport {
    /// [`REPORT_FORMAT`].
    pub format: &'static str,
    /// When it was made (RFC 3339).
    pub generated_at: String,
    /// The archive (its URL).
    pub archive: String,
    /// The auditlake version that made it.
    pub auditlake_version: &'static str,
    /// The period, start inclusive (RFC 3339).
    pub from: String,
    /// End, exclusive.
    pub to: String,
    /// The check of the archive against its signed log.
    pub verification: Verification,
    /// Events per cluster per day (UTC).
    pub events_per_day: Vec<DayCount>,
    /// Every cluster-hour: OK, QUIET or GAP.
    pub completeness: Completeness,
    /// Inputs set aside in the quarantine, by cluster and reason.
    pub quarantine: Vec<ReasonCount>,
    /// Findings of the detectors, by rule and severity.
    pub findings: Vec<FindingCount>,
    /// RBAC objects created, changed or deleted, oldest first (at most `max_rbac_changes`).
    pub rbac_changes: Vec<RbacChange>,
    /// All RBAC changes in the period (the list may be cut).
    pub rbac_changes_total: u64,
    /// Retention records and legal holds.
    pub retention: RetentionSection,
}

/// The outcome of `verify` for the report.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Verification {
    /// Not checked: no public key was given.
    NotChecked {
        /// Why.
        reason: String,
    },
    /// Checked against the signed checkpoint.
    Checked {
        /// No problem found.
        passed: bool,
        /// The checkpoint's origin line (the log's name).
        origin: String,
        /// Records the checkpoint covers.
        tree_size: u64,
        /// Its root hash (base64).
        root_hash: String,
        /// The checkpoint as signed (C2SP signed note).
        checkpoint: String,
        /// Names of the trusted keys whose signatures verified.
        signed_by: Vec<String>,
        /// Manifest records checked.
        records: u64,
        /// Files re-read and hashed.
        files_checked: u64,
        /// Their bytes.
        bytes_checked: u64,
        /// Files outside the sample or the period.
        files_skipped: u64,
        /// Files removed by signed retention records.
        removed_by_retention: u64,
        /// Every problem: verdict, object, detail.
        problems: Vec<VerifyProblem>,
    },
}

/// One problem `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyProblem {
    /// The verdict (`FILE ALTERED`, ...).
    pub verdict: String,
    /// Its exit code.
    pub exit_code: u8,
    /// The object.
    pub object: String,
    /// What was found.
    pub detail: String,
}

impl Verification {
    /// The report's view of a `verify` run.
    pub fn from_report(r: &VerifyReport) -> Self {
        let Some(cp) = &r.checkpoint else {
            return Verification::NotChecked {
                reason: "the archive has no signed checkpoint (it was written without \
                         --signing-key)"
                    .into(),
            };
        };
        Verification::Checked {
            passed: r.problems.is_empty(),
            origin: cp.head.origin.clone(),
            tree_size: cp.head.size,
            // The checkpoint's third line is the root in base64 (C2SP tlog-checkpoint).
            root_hash: cp
                .head
                .text()
                .lines()
                .nth(2)
                .unwrap_or_default()
                .to_string(),
            checkpoint: cp.raw.clone(),
            signed_by: r.signed_by.clone(),
            records: r.records,
            files_checked: r.files_checked,
            bytes_checked: r.bytes_checked,
            files_skipped: r.files_skipped,
            removed_by_retention: r.removed.len() as u64,
            problems: r
                .problems
                .iter()
                .map(|p| VerifyProblem {
                    verdict: p.verdict.label().to_string(),
                    exit_code: p.verdict.exit_code(),
                    object: p.object.clone(),
                    detail: p.detail.clone(),
                })
                .collect(),
        }
    }
}

/// Events of one cluster on one day.
#[derive(Debug, Clone, Serialize)]
pub struct DayCount {
    /// `YYYY-MM-DD` (UTC).
    pub date: String,
    /// The cluster.
    pub cluster: String,
    /// Events archived.
    pub events: u64,
}

/// Quarantined inputs of one cluster with one reason.
#[derive(Debug, Clone, Serialize)]
pub struct ReasonCount {
    /// The cluster they were sent for.
    pub cluster: String,
    /// The reason (cut to 160 characters; `(other reasons)` sums the rarest).
    pub reason: String,
    /// Inputs.
    pub records: u64,
}

/// Findings of one rule at one severity.
#[derive(Debug, Clone, Serialize)]
pub struct FindingCount {
    /// The rule.
    pub rule_id: String,
    /// Its severity.
    pub severity: String,
    /// The rule's title.
    pub title: String,
    /// Findings.
    pub findings: u64,
    /// Events behind them (a finding can stand for a burst).
    pub events: u64,
}

/// One RBAC change.
#[derive(Debug, Clone, Serialize)]
pub struct RbacChange {
    /// When (RFC 3339).
    pub changed_at: String,
    /// The cluster.
    pub cluster: String,
    /// Role, ClusterRole, RoleBinding or ClusterRoleBinding.
    pub kind: String,
    /// Namespace (empty for cluster-scoped).
    pub namespace: String,
    /// Name.
    pub name: String,
    /// created, updated or deleted.
    pub change: String,
    /// Who did it.
    pub principal: String,
    /// The API verb.
    pub verb: String,
    /// The audit ID of the event (for `auditlake prove`).
    pub audit_id: String,
}

/// Retention as applied and the holds that stop it.
#[derive(Debug, Clone, Serialize)]
pub struct RetentionSection {
    /// Retention records in the archive (all time: a removal before the period explains
    /// missing data in it).
    pub records: Vec<RetentionApplied>,
    /// Legal holds: marker objects in the archive and holds given on the command line.
    pub legal_holds: Vec<LegalHold>,
}

/// One retention record.
#[derive(Debug, Clone, Serialize)]
pub struct RetentionApplied {
    /// Its manifest sequence number.
    pub sequence: u64,
    /// When (RFC 3339).
    pub committed_at: String,
    /// The policy (`keep 400d`).
    pub policy: String,
    /// Partitions that ended before this were removed.
    pub cutoff: String,
    /// Files removed.
    pub removed_files: u64,
    /// Holds checked.
    pub legal_holds: Vec<String>,
    /// Files a hold kept.
    pub held_files: u64,
}

/// Gathers the report of `opts`'s period from `archive` (its manifest, quarantine files,
/// findings and RBAC history through `session`) and a verification already run.
pub async fn gather(
    archive: &Archive,
    session: &ArchiveSession,
    opts: &ReportOptions,
    verification: Verification,
) -> Result<EvidenceReport, QueryError> {
    let archive_err = |e: auditlake_archive::ArchiveError| QueryError::Archive {
        url: archive.location().url.to_string(),
        message: e.to_string(),
    };
    let records: Vec<ManifestRecord> = archive
        .records()
        .await
        .map_err(archive_err)?
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    let completeness = completeness::assess(
        &records,
        &CompletenessOptions {
            from_micros: opts.from_micros,
            to_micros: opts.to_micros,
            max_silence_micros: opts.max_silence_micros,
            clusters: opts.clusters.clone(),
            as_of_micros: opts.as_of_micros,
        },
    );
    let mut days: BTreeMap<(String, String), u64> = BTreeMap::new();
    for h in &completeness.hours {
        *days
            .entry((h.hour[..10].to_string(), h.cluster.clone()))
            .or_default() += h.events;
    }
    let events_per_day = days
        .into_iter()
        .map(|((date, cluster), events)| DayCount {
            date,
            cluster,
            events,
        })
        .collect();

    let quarantine = quarantine_reasons(archive, &records, opts)
        .await
        .map_err(archive_err)?;
    let (findings, rbac_changes, rbac_changes_total) = detector_tables(session, opts).await?;

    let mut legal_holds = hold_markers(archive).await.map_err(archive_err)?;
    legal_holds.extend(opts.configured_holds.iter().cloned());
    let retention = RetentionSection {
        records: records
            .iter()
            .filter_map(|r| {
                r.retention.as_ref().map(|p| RetentionApplied {
                    sequence: r.sequence,
                    committed_at: r.committed_at.clone(),
                    policy: p.policy.clone(),
                    cutoff: p.cutoff.clone(),
                    removed_files: r.removed.len() as u64,
                    legal_holds: p.legal_holds.clone(),
                    held_files: p.held_files,
                })
            })
            .collect(),
        legal_holds,
    };

    Ok(EvidenceReport {
        format: REPORT_FORMAT,
        generated_at: format_rfc3339_micros(opts.as_of_micros),
        archive: archive.location().url.to_string(),
        auditlake_version: env!("CARGO_PKG_VERSION"),
        from: format_rfc3339_micros(opts.from_micros),
        to: format_rfc3339_micros(opts.to_micros),
        verification,
        events_per_day,
        completeness,
        quarantine,
        findings,
        rbac_changes,
        rbac_changes_total,
        retention,
    })
}

/// Quarantined inputs committed in the period, by cluster and reason.
async fn quarantine_reasons(
    archive: &Archive,
    records: &[ManifestRecord],
    opts: &ReportOptions,
) -> Result<Vec<ReasonCount>, auditlake_archive::ArchiveError> {
    let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
    for r in records {
        let in_period = auditlake_schema::timestamp::parse_rfc3339_micros(&r.committed_at)
            .is_some_and(|t| (opts.from_micros..opts.to_micros).contains(&t));
        if !in_period {
            continue;
        }
        for q in &r.quarantine {
            let cluster = partition_value(&q.path, "cluster")
                .unwrap_or("")
                .to_string();
            if !opts.clusters.is_empty() && !opts.clusters.contains(&cluster) {
                continue;
            }
            let Some(bytes) = archive.get_if_exists(&q.path).await? else {
                // verify reports the missing file; the count the record gives stands.
                *counts
                    .entry((cluster.clone(), "(quarantine file missing)".into()))
                    .or_default() += q.records;
                continue;
            };
            for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let reason = serde_json::from_slice::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(cut_reason))
                    .unwrap_or_else(|| "(unreadable quarantine line)".into());
                *counts.entry((cluster.clone(), reason)).or_default() += 1;
            }
        }
    }
    let mut rows: Vec<ReasonCount> = counts
        .into_iter()
        .map(|((cluster, reason), records)| ReasonCount {
            cluster,
            reason,
            records,
        })
        .collect();
    rows.sort_by(|a, b| b.records.cmp(&a.records).then(a.reason.cmp(&b.reason)));
    if rows.len() > MAX_REASONS {
        let rest: u64 = rows.drain(MAX_REASONS..).map(|r| r.records).sum();
        rows.push(ReasonCount {
            cluster: String::new(),
            reason: "(other reasons)".into(),
            records: rest,
        });
    }
    Ok(rows)
}

fn cut_reason(reason: &str) -> String {
    match reason.char_indices().nth(MAX_REASON_CHARS) {
        Some((i, _)) => format!("{}…", &reason[..i]),
        None => reason.to_string(),
    }
}

/// Findings by rule and severity, and RBAC changes, in the period.
async fn detector_tables(
    session: &ArchiveSession,
    opts: &ReportOptions,
) -> Result<(Vec<FindingCount>, Vec<RbacChange>, u64), QueryError> {
    let from = format_rfc3339_micros(opts.from_micros);
    let to = format_rfc3339_micros(opts.to_micros);
    // The date partitions first, so only the period's files are read (as `findings` does).
    let last_day = format_rfc3339_micros(opts.to_micros - 1);
    let mut filters = format!(
        " AND date >= '{}' AND date <= '{}'",
        &from[..10],
        &last_day[..10]
    );
    if !opts.clusters.is_empty() {
        let list: Vec<String> = opts.clusters.iter().map(|c| quoted(c)).collect();
        filters.push_str(&format!(" AND cluster IN ({})", list.join(", ")));
    }
    // Most severe first.
    let rank: String = SEVERITIES
        .iter()
        .rev()
        .enumerate()
        .map(|(i, s)| format!(" WHEN {} THEN {i}", quoted(s)))
        .collect();
    let findings = strings(
        session,
        &format!(
            "SELECT rule_id, severity, max(title), count(*), sum(count) FROM findings \
             WHERE time >= TIMESTAMP '{from}' AND time < TIMESTAMP '{to}'{filters} \
             GROUP BY rule_id, severity \
             ORDER BY CASE severity{rank} ELSE {} END, count(*) DESC, rule_id",
            SEVERITIES.len()
        ),
    )
    .await?
    .into_iter()
    .map(|r| FindingCount {
        rule_id: r[0].clone(),
        severity: r[1].clone(),
        title: r[2].clone(),
        findings: r[3].parse().unwrap_or(0),
        events: r[4].parse().unwrap_or(0),
    })
    .collect();
    let window = format!(
        "FROM rbac_history WHERE changed_at >= TIMESTAMP '{from}' \
         AND changed_at < TIMESTAMP '{to}'{filters}"
    );
    let total = strings(session, &format!("SELECT count(*) {window}"))
        .await?
        .first()
        .and_then(|r| r[0].parse().ok())
        .unwrap_or(0);
    let changes = strings(
        session,
        &format!(
            "SELECT changed_at, cluster, kind, namespace, name, change, principal, verb, \
             audit_id {window} ORDER BY changed_at, audit_id LIMIT {}",
            opts.max_rbac_changes
        ),
    )
    .await?
    .into_iter()
    .map(|r| RbacChange {
        changed_at: r[0].clone(),
        cluster: r[1].clone(),
        kind: r[2].clone(),
        namespace: r[3].clone(),
        name: r[4].clone(),
        change: r[5].clone(),
        principal: r[6].clone(),
        verb: r[7].clone(),
        audit_id: r[8].clone(),
    })
    .collect();
    Ok((findings, changes, total))
}

/// Runs `sql` and returns its rows as text (NULL as an empty string; times RFC 3339).
async fn strings(session: &ArchiveSession, sql: &str) -> Result<Vec<Vec<String>>, QueryError> {
    let (_, batches) = session.sql(sql).await?;
    let mut rows = Vec::new();
    for b in &batches {
        let columns = b
            .columns()
            .iter()
            .map(column_text)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| QueryError::Archive {
                url: String::new(),
                message: format!("reading the report's query results: {e}"),
            })?;
        for i in 0..b.num_rows() {
            rows.push(columns.iter().map(|c| c[i].clone()).collect());
        }
    }
    Ok(rows)
}

/// One column's values as text: NULL as an empty string, times as RFC 3339 in µs like the
/// rest of the report.
fn column_text(c: &arrow::array::ArrayRef) -> Result<Vec<String>, arrow::error::ArrowError> {
    const RFC3339_MICROS: &str = "%Y-%m-%dT%H:%M:%S%.6fZ";
    let options = FormatOptions::new()
        .with_null("")
        .with_timestamp_format(Some(RFC3339_MICROS))
        .with_timestamp_tz_format(Some(RFC3339_MICROS));
    let text = ArrayFormatter::try_new(c.as_ref(), &options)?;
    Ok((0..c.len()).map(|i| text.value(i).to_string()).collect())
}

/// The figures both renderers put at the top.
#[derive(Debug, Clone, Default)]
pub struct Headline {
    /// Events in the period.
    pub events: u64,
    /// Cluster-hours OK, QUIET, GAP.
    pub ok: u64,
    /// QUIET hours.
    pub quiet: u64,
    /// GAP hours.
    pub gap: u64,
    /// Quarantined inputs.
    pub quarantined: u64,
    /// Findings.
    pub findings: u64,
    /// Findings at critical or high severity.
    pub severe_findings: u64,
}

impl EvidenceReport {
    /// The report's totals.
    pub fn headline(&self) -> Headline {
        let c = &self.completeness;
        Headline {
            events: c.clusters.iter().map(|s| s.events).sum(),
            ok: c.clusters.iter().map(|s| s.ok).sum(),
            quiet: c.clusters.iter().map(|s| s.quiet).sum(),
            gap: c.clusters.iter().map(|s| s.gap).sum(),
            quarantined: self.quarantine.iter().map(|q| q.records).sum(),
            findings: self.findings.iter().map(|f| f.findings).sum(),
            severe_findings: self
                .findings
                .iter()
                .filter(|f| matches!(f.severity.as_str(), "critical" | "high"))
                .map(|f| f.findings)
                .sum(),
        }
    }

    /// The verification in a few words: `PASSED`, `FAILED (n problems)` or `NOT CHECKED`.
    pub fn verdict(&self) -> String {
        match &self.verification {
            Verification::NotChecked { .. } => "NOT CHECKED".into(),
            Verification::Checked { passed: true, .. } => "PASSED".into(),
            Verification::Checked { problems, .. } => {
                format!("FAILED ({} problem(s))", problems.len())
            }
        }
    }
}

/// An RFC 3339 time as a reader wants it: `2026-11-30 10:05:12 UTC` (whole hours and
/// days shortened).
pub fn readable_time(rfc3339: &str) -> String {
    let Some((date, time)) = rfc3339.split_once('T') else {
        return rfc3339.to_string();
    };
    let time = time.trim_end_matches('Z');
    let time = time.split('.').next().unwrap_or(time);
    match time {
        "00:00:00" => format!("{date} 00:00 UTC"),
        t if t.ends_with(":00:00") => format!("{date} {} UTC", &t[..5]),
        t => format!("{date} {t} UTC"),
    }
}

/// The number with thousands separated by a thin space, as a report prints it.
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
