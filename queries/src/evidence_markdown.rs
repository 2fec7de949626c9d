//! The evidence report as Markdown (GitHub-flavoured tables), for tickets and wikis.

use std::fmt::Write as _;

use crate::evidence_report::{EvidenceReport, Verification, grouped, readable_time};
use crate::evidence_tables::{Cell, Table};

/// Text for a table cell: one line, pipes escaped, no raw markup.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace(['\n', '\r'], " ")
        .replace('<', "&lt;")
}

fn cell(c: &Cell) -> String {
    match c {
        // A backtick inside would end the code span: show it as text then.
        Cell::Code(s) if !s.contains('`') => format!("`{}`", escape(s)),
        Cell::Alert(s) => format!("**{}**", escape(s)),
        Cell::Muted(s) => format!("_{}_", escape(s)),
        other => escape(&other.text()),
    }
}

/// Writes `t`, or `empty` when it has no rows.
fn table(o: &mut String, t: &Table, empty: &str) {
    if t.rows.is_empty() {
        let _ = writeln!(o, "{empty}\n");
        return;
    }
    let _ = writeln!(
        o,
        "| {} |",
        t.columns
            .iter()
            .map(|c| escape(c))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(
        o,
        "|{}",
        t.numeric
            .iter()
            .map(|n| if *n { "---:|" } else { "---|" })
            .collect::<String>()
    );
    for row in &t.rows {
        let _ = writeln!(
            o,
            "| {} |",
            row.iter().map(cell).collect::<Vec<_>>().join(" | ")
        );
    }
    let _ = writeln!(o);
}

/// Renders the report as Markdown.
pub fn render(r: &EvidenceReport) -> String {
    let mut o = String::new();
    let h = r.headline();
    // Writing to a String cannot fail: the results of writeln! are ignored below.
    let _ = writeln!(o, "# Audit log evidence report\n");
    let _ = writeln!(o, "| | |\n|---|---|");
    let _ = writeln!(o, "| Archive | `{}` |", escape(&r.archive));
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
            let _ = writeln!(o, "Not checked: {}.\n", escape(reason));
        }
        Verification::Checked {
            passed,
            origin,
            tree_size,
            root_hash,
            checkpoint,
            signed_by,
            ..
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
                escape(origin),
                root_hash,
                signed_by
                    .iter()
                    .map(|s| format!("`{}`", escape(s)))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            table(&mut o, &r.checked_table(), "");
            table(&mut o, &r.problems_table(), "No problem found.");
            let _ = writeln!(o, "The checkpoint:\n\n```\n{checkpoint}```\n");
        }
    }

    let _ = writeln!(o, "## 2. Events per cluster per day\n");
    table(
        &mut o,
        &r.days_table(),
        "No cluster has events or heartbeats in the archive.",
    );

    let c = &r.completeness;
    let _ = writeln!(o, "## 3. Completeness\n");
    let _ = writeln!(
        o,
        "Each cluster-hour is **OK** (events archived), **QUIET** (no events, and a live \
         source attested it was up all hour, no silence over {} s) or **GAP** (something may \
         be missing; the reason is named).\n",
        c.max_silence_seconds
    );
    table(&mut o, &r.clusters_table(), "No cluster.");
    let _ = writeln!(o, "### Gaps\n");
    table(&mut o, &r.gaps_table(), "No gaps.");
    if !c.reconciliation.is_empty() {
        let _ = writeln!(o, "### Apiserver counters\n");
        table(&mut o, &r.reconciliation_table(), "");
    }

    let _ = writeln!(o, "## 4. Quarantine\n");
    table(
        &mut o,
        &r.quarantine_table(),
        "Nothing was quarantined in the period.",
    );

    let _ = writeln!(o, "## 5. Findings\n");
    table(&mut o, &r.findings_table(), "No findings in the period.");

    let _ = writeln!(o, "## 6. RBAC changes\n");
    if (r.rbac_changes.len() as u64) < r.rbac_changes_total {
        let _ = writeln!(
            o,
            "The first {} of {} changes (query `rbac_history` for all).\n",
            r.rbac_changes.len(),
            grouped(r.rbac_changes_total)
        );
    }
    table(
        &mut o,
        &r.rbac_table(),
        "No RBAC object changed in the period.",
    );

    let _ = writeln!(o, "## 7. Retention and legal holds\n");
    table(
        &mut o,
        &r.retention_table(),
        "No retention was ever applied: nothing was removed.",
    );
    table(&mut o, &r.holds_table(), "No legal hold is in place.");

    let _ = writeln!(o, "## How to check this report\n");
    let _ = writeln!(
        o,
        "With the log's public key only: `auditlake verify --archive {} --public-key <log.vkey>` \
         re-reads every file against the signed log; `auditlake prove --audit-id <id>` and \
         `auditlake verify-proof` prove a single event; `auditlake verify --since-checkpoint \
         <saved checkpoint>` proves history was only appended to since.",
        escape(&r.archive)
    );
    o
}
