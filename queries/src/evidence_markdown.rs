//! The evidence report as Markdown (GitHub-flavoured tables), for tickets and wikis.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use auditlake_archive::completeness::HourStatus;

use crate::evidence_report::{EvidenceReport, Verification, grouped, readable_time};

/// A table cell: one line, pipes escaped, backticks kept out of code spans.
fn cell(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace(['\n', '\r'], " ")
        .replace('<', "&lt;")
}

/// Renders the report as Markdown.
pub fn render(r: &EvidenceReport) -> String {
    let mut o = String::new();
    let h = r.headline();
    // Writing to a String cannot fail: the results of writeln! are ignored below.
    let _ = writeln!(o, "# Audit log evidence report\n");
    let _ = writeln!(o, "| | |\n|---|---|");
    let _ = writeln!(o, "| Archive | `{}` |", cell(&r.archive));
    let _ = writeln!(
        o,
        "| Period | {} to {} (end excluded) |",
        readable_time(&r.from),
        readable_time(&r.to)
    );
    let _ = writeln!(
        o,
        "| Generated | {} by auditlake {} |\n",
        readable_time(&r.generated_at),
        r.auditlake_version
    );

    let _ = writeln!(o, "## Summary\n");
    let _ = writeln!(o, "- **Integrity: {}**", r.verdict());
    let _ = writeln!(
        o,
        "- **Completeness:** {} cluster-hours OK, {} QUIET, {} GAP across {} cluster(s)",
        grouped(h.ok),
        grouped(h.quiet),
        grouped(h.gap),
        r.completeness.clusters.len()
    );
    let _ = writeln!(
        o,
        "- **Events archived:** {}; inputs quarantined: {}",
        grouped(h.events),
        grouped(h.quarantined)
    );
    let _ = writeln!(
        o,
        "- **Findings:** {} ({} critical or high); RBAC changes: {}\n",
        grouped(h.findings),
        grouped(h.severe_findings),
        grouped(r.rbac_changes_total)
    );

    let _ = writeln!(o, "## 1. Integrity\n");
    match &r.verification {
        Verification::NotChecked { reason } => {
            let _ = writeln!(o, "Not checked: {}.\n", cell(reason));
        }
        Verification::Checked {
            passed,
            origin,
            tree_size,
            root_hash,
            checkpoint,
            signed_by,
            records,
            files_checked,
            bytes_checked,
            files_skipped,
            removed_by_retention,
            problems,
        } => {
            let _ = writeln!(
                o,
                "{} The archive was checked against checkpoint **{}** of log `{}` (root `{}`), \
                 signed by {}.\n",
                if *passed {
                    "Every check passed."
                } else {
                    "**Problems were found.**"
                },
                tree_size,
                cell(origin),
                root_hash,
                signed_by
                    .iter()
                    .map(|s| format!("`{}`", cell(s)))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let _ = writeln!(
                o,
                "- Manifest records checked: {}\n- Files re-read and hashed: {} ({} bytes)\n- \
                 Files outside the period or sample: {}\n- Files removed by signed retention \
                 records: {}\n",
                grouped(*records),
                grouped(*files_checked),
                grouped(*bytes_checked),
                grouped(*files_skipped),
                grouped(*removed_by_retention)
            );
            if !problems.is_empty() {
                let _ = writeln!(
                    o,
                    "| Verdict | Exit code | Object | Detail |\n|---|---|---|---|"
                );
                for p in problems {
                    let _ = writeln!(
                        o,
                        "| {} | {} | `{}` | {} |",
                        p.verdict,
                        p.exit_code,
                        cell(&p.object),
                        cell(&p.detail)
                    );
                }
                let _ = writeln!(o);
            }
            let _ = writeln!(o, "The checkpoint:\n\n```\n{}```\n", checkpoint);
        }
    }

    let _ = writeln!(o, "## 2. Events per cluster per day\n");
    let clusters: BTreeSet<&str> = r
        .events_per_day
        .iter()
        .map(|d| d.cluster.as_str())
        .collect();
    let mut by_day: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
    for d in &r.events_per_day {
        by_day
            .entry(&d.date)
            .or_default()
            .insert(&d.cluster, d.events);
    }
    if clusters.is_empty() {
        let _ = writeln!(o, "No cluster has events or heartbeats in the archive.\n");
    } else {
        let _ = write!(o, "| Date (UTC) |");
        for c in &clusters {
            let _ = write!(o, " {} |", cell(c));
        }
        let _ = write!(o, "\n|---|");
        for _ in &clusters {
            let _ = write!(o, "---:|");
        }
        let _ = writeln!(o);
        for (day, counts) in &by_day {
            let _ = write!(o, "| {day} |");
            for c in &clusters {
                let _ = write!(o, " {} |", grouped(counts.get(c).copied().unwrap_or(0)));
            }
            let _ = writeln!(o);
        }
        let _ = writeln!(o);
    }

    let c = &r.completeness;
    let _ = writeln!(o, "## 3. Completeness\n");
    let _ = writeln!(
        o,
        "Each cluster-hour is **OK** (events archived), **QUIET** (no events, and a live \
         source attested it was up all hour, no silence over {} s) or **GAP** (something may \
         be missing; the reason is named).\n",
        c.max_silence_seconds
    );
    let _ = writeln!(
        o,
        "| Cluster | Events | OK | QUIET | GAP | Attested by |\n|---|---:|---:|---:|---:|---|"
    );
    for s in &c.clusters {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} |",
            cell(&s.cluster),
            grouped(s.events),
            s.ok,
            s.quiet,
            s.gap,
            if s.live_sources.is_empty() {
                "no live source (files only)".to_string()
            } else {
                cell(&s.live_sources.join(", "))
            }
        );
    }
    let _ = writeln!(o);
    if c.gaps.is_empty() {
        let _ = writeln!(o, "No gaps.\n");
    } else {
        let _ = writeln!(
            o,
            "### Gaps\n\n| Cluster | From | To | Hours | Events | What is missing |\n|---|---|---|---:|---:|---|"
        );
        for g in &c.gaps {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} |",
                cell(&g.cluster),
                readable_time(&g.from),
                readable_time(&g.to),
                g.hours,
                grouped(g.events),
                cell(&g.reasons.join("; "))
            );
        }
        let _ = writeln!(o);
    }
    if !c.reconciliation.is_empty() {
        let _ = writeln!(
            o,
            "### Apiserver counters\n\n| Cluster | From | To | Heartbeats | Audited by the apiserver | Audit errors | Archived |\n|---|---|---|---:|---:|---:|---:|"
        );
        for x in &c.reconciliation {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} |",
                cell(&x.cluster),
                readable_time(&x.from),
                readable_time(&x.to),
                x.heartbeats,
                grouped(x.apiserver_events),
                grouped(x.apiserver_errors),
                grouped(x.archived_events)
            );
        }
        let _ = writeln!(o);
    }
    let gap_hours = c
        .hours
        .iter()
        .filter(|h| h.status == HourStatus::Gap)
        .count();
    let _ = writeln!(
        o,
        "{} of {} cluster-hours are gaps.\n",
        grouped(gap_hours as u64),
        grouped(c.hours.len() as u64)
    );

    let _ = writeln!(o, "## 4. Quarantine\n");
    if r.quarantine.is_empty() {
        let _ = writeln!(o, "Nothing was quarantined in the period.\n");
    } else {
        let _ = writeln!(o, "| Cluster | Reason | Inputs |\n|---|---|---:|");
        for q in &r.quarantine {
            let _ = writeln!(
                o,
                "| {} | {} | {} |",
                cell(&q.cluster),
                cell(&q.reason),
                grouped(q.records)
            );
        }
        let _ = writeln!(o);
    }

    let _ = writeln!(o, "## 5. Findings\n");
    if r.findings.is_empty() {
        let _ = writeln!(o, "No findings in the period.\n");
    } else {
        let _ = writeln!(
            o,
            "| Severity | Rule | Title | Findings | Events |\n|---|---|---|---:|---:|"
        );
        for f in &r.findings {
            let _ = writeln!(
                o,
                "| {} | `{}` | {} | {} | {} |",
                cell(&f.severity),
                cell(&f.rule_id),
                cell(&f.title),
                grouped(f.findings),
                grouped(f.events)
            );
        }
        let _ = writeln!(o);
    }

    let _ = writeln!(o, "## 6. RBAC changes\n");
    if r.rbac_changes.is_empty() {
        let _ = writeln!(o, "No RBAC object changed in the period.\n");
    } else {
        if (r.rbac_changes.len() as u64) < r.rbac_changes_total {
            let _ = writeln!(
                o,
                "The first {} of {} changes (query `rbac_history` for all).\n",
                r.rbac_changes.len(),
                grouped(r.rbac_changes_total)
            );
        }
        let _ = writeln!(
            o,
            "| When | Cluster | Change | Object | Who | Verb | Audit ID |\n|---|---|---|---|---|---|---|"
        );
        for x in &r.rbac_changes {
            let object = if x.namespace.is_empty() {
                format!("{} {}", x.kind, x.name)
            } else {
                format!("{} {}/{}", x.kind, x.namespace, x.name)
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | `{}` |",
                readable_time(&x.changed_at),
                cell(&x.cluster),
                cell(&x.change),
                cell(&object),
                cell(&x.principal),
                cell(&x.verb),
                cell(&x.audit_id)
            );
        }
        let _ = writeln!(o);
    }

    let _ = writeln!(o, "## 7. Retention and legal holds\n");
    if r.retention.records.is_empty() {
        let _ = writeln!(o, "No retention was ever applied: nothing was removed.\n");
    } else {
        let _ = writeln!(
            o,
            "| Record | When | Policy | Cutoff | Files removed | Holds checked | Files held |\n|---:|---|---|---|---:|---|---:|"
        );
        for x in &r.retention.records {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | {} |",
                x.sequence,
                readable_time(&x.committed_at),
                cell(&x.policy),
                readable_time(&x.cutoff),
                x.removed_files,
                cell(&x.legal_holds.join(", ")),
                x.held_files
            );
        }
        let _ = writeln!(o);
    }
    if r.retention.legal_holds.is_empty() {
        let _ = writeln!(o, "No legal hold is in place.\n");
    } else {
        let _ = writeln!(
            o,
            "| Legal hold | Cluster | From | To | Reason |\n|---|---|---|---|---|"
        );
        for x in &r.retention.legal_holds {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} |",
                cell(&x.name),
                cell(x.cluster.as_deref().unwrap_or("every cluster")),
                cell(x.from.as_deref().unwrap_or("the beginning")),
                cell(x.to.as_deref().unwrap_or("no end")),
                cell(&x.reason)
            );
        }
        let _ = writeln!(o);
    }
    let _ = writeln!(o, "## How to check this report\n");
    let _ = writeln!(
        o,
        "With the log's public key only: `auditlake verify --archive {} --public-key <log.vkey>` \
         re-reads every file against the signed log; `auditlake prove --audit-id <id>` and \
         `auditlake verify-proof` prove a single event; `auditlake verify --since-checkpoint \
         <saved checkpoint>` proves history was only appended to since.",
        cell(&r.archive)
    );
    o
}
