//! The evidence report's tables, built once for every rendering: the HTML page and the
//! Markdown show the same rows, each renderer only deciding how a cell looks.

use std::collections::{BTreeMap, BTreeSet};

use crate::evidence_report::{EvidenceReport, Verification, grouped, readable_time};

/// One cell of a table.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// Plain text.
    Text(String),
    /// An identifier shown as code (paths, rule IDs, audit IDs).
    Code(String),
    /// A count, right-aligned, thousands separated.
    Number(u64),
    /// A severity (`critical` and `high` stand out).
    Severity(String),
    /// A problem the reader must see (a verify verdict, audit errors above 0).
    Alert(String),
    /// Text standing for nothing there (`no live source`).
    Muted(String),
    /// Several statements, one per line.
    Lines(Vec<String>),
}

impl Cell {
    /// The cell as plain text (lines joined with `; `).
    pub fn text(&self) -> String {
        match self {
            Cell::Text(s) | Cell::Code(s) | Cell::Severity(s) | Cell::Alert(s) | Cell::Muted(s) => {
                s.clone()
            }
            Cell::Number(n) => grouped(*n),
            Cell::Lines(l) => l.join("; "),
        }
    }
}

/// A table: an `id` (the HTML element's, so tests and readers can find it), column titles
/// and rows.
#[derive(Debug, Clone)]
pub struct Table {
    /// Element ID in the HTML page.
    pub id: &'static str,
    /// Column titles.
    pub columns: Vec<String>,
    /// Which columns hold numbers (right-aligned).
    pub numeric: Vec<bool>,
    /// The rows, each as long as `columns`.
    pub rows: Vec<Vec<Cell>>,
}

impl Table {
    fn new(id: &'static str, columns: &[&str], numeric: &[usize]) -> Self {
        Table {
            id,
            columns: columns.iter().map(|c| c.to_string()).collect(),
            numeric: (0..columns.len()).map(|i| numeric.contains(&i)).collect(),
            rows: Vec::new(),
        }
    }
}

fn text(s: &str) -> Cell {
    Cell::Text(s.to_string())
}

fn when(s: &str) -> Cell {
    Cell::Text(readable_time(s))
}

impl EvidenceReport {
    /// Verify's problems (empty when none or not checked).
    pub fn problems_table(&self) -> Table {
        let mut t = Table::new(
            "problems",
            &["Verdict", "Exit code", "Object", "Detail"],
            &[1],
        );
        if let Verification::Checked { problems, .. } = &self.verification {
            for p in problems {
                t.rows.push(vec![
                    Cell::Alert(p.verdict.clone()),
                    Cell::Number(u64::from(p.exit_code)),
                    Cell::Code(p.object.clone()),
                    text(&p.detail),
                ]);
            }
        }
        t
    }

    /// What verify checked: records, files, bytes, skipped, removed by retention.
    pub fn checked_table(&self) -> Table {
        let mut t = Table::new("checked", &["Checked", "Count"], &[1]);
        if let Verification::Checked {
            records,
            files_checked,
            bytes_checked,
            files_skipped,
            removed_by_retention,
            ..
        } = &self.verification
        {
            for (what, n) in [
                ("Manifest records checked", *records),
                ("Files re-read and hashed", *files_checked),
                ("Bytes re-read and hashed", *bytes_checked),
                ("Files outside the period or sample", *files_skipped),
                (
                    "Files removed by signed retention records",
                    *removed_by_retention,
                ),
            ] {
                t.rows.push(vec![text(what), Cell::Number(n)]);
            }
        }
        t
    }

    /// The clusters of the report, in order.
    pub fn day_clusters(&self) -> Vec<&str> {
        self.events_per_day
            .iter()
            .map(|d| d.cluster.as_str())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// Events per day (rows) and cluster (columns), with the per-day counts by cluster.
    pub fn events_by_day(&self) -> BTreeMap<&str, BTreeMap<&str, u64>> {
        let mut by_day: BTreeMap<&str, BTreeMap<&str, u64>> = BTreeMap::new();
        for d in &self.events_per_day {
            by_day
                .entry(&d.date)
                .or_default()
                .insert(&d.cluster, d.events);
        }
        by_day
    }

    /// Events per day, a column per cluster.
    pub fn days_table(&self) -> Table {
        let clusters = self.day_clusters();
        let mut columns = vec!["Date (UTC)"];
        columns.extend(clusters.iter().copied());
        let numeric: Vec<usize> = (1..columns.len()).collect();
        let mut t = Table::new("days", &columns, &numeric);
        for (day, counts) in self.events_by_day() {
            let mut row = vec![text(day)];
            row.extend(
                clusters
                    .iter()
                    .map(|c| Cell::Number(counts.get(c).copied().unwrap_or(0))),
            );
            t.rows.push(row);
        }
        t
    }

    /// Per cluster: events, hours OK/QUIET/GAP, the live sources.
    pub fn clusters_table(&self) -> Table {
        let mut t = Table::new(
            "clusters",
            &["Cluster", "Events", "OK", "QUIET", "GAP", "Attested by"],
            &[1, 2, 3, 4],
        );
        for s in &self.completeness.clusters {
            t.rows.push(vec![
                text(&s.cluster),
                Cell::Number(s.events),
                Cell::Number(s.ok),
                Cell::Number(s.quiet),
                if s.gap > 0 {
                    Cell::Alert(grouped(s.gap))
                } else {
                    Cell::Number(0)
                },
                if s.live_sources.is_empty() {
                    Cell::Muted("no live source (files only)".into())
                } else {
                    text(&s.live_sources.join(", "))
                },
            ]);
        }
        t
    }

    /// The gap runs.
    pub fn gaps_table(&self) -> Table {
        let mut t = Table::new(
            "gaps",
            &[
                "Cluster",
                "From",
                "To",
                "Hours",
                "Events",
                "What is missing",
            ],
            &[3, 4],
        );
        for g in &self.completeness.gaps {
            t.rows.push(vec![
                text(&g.cluster),
                when(&g.from),
                when(&g.to),
                Cell::Number(g.hours),
                Cell::Number(g.events),
                Cell::Lines(g.reasons.clone()),
            ]);
        }
        t
    }

    /// The apiserver's counters beside the archive's.
    pub fn reconciliation_table(&self) -> Table {
        let mut t = Table::new(
            "reconciliation",
            &[
                "Cluster",
                "From",
                "To",
                "Heartbeats",
                "Audited by the apiserver",
                "Audit errors",
                "Archived",
            ],
            &[3, 4, 5, 6],
        );
        for x in &self.completeness.reconciliation {
            t.rows.push(vec![
                text(&x.cluster),
                when(&x.from),
                when(&x.to),
                Cell::Number(x.heartbeats),
                Cell::Number(x.apiserver_events),
                if x.apiserver_errors > 0 {
                    Cell::Alert(grouped(x.apiserver_errors))
                } else {
                    Cell::Number(0)
                },
                Cell::Number(x.archived_events),
            ]);
        }
        t
    }

    /// Quarantined inputs by cluster and reason.
    pub fn quarantine_table(&self) -> Table {
        let mut t = Table::new("quarantine", &["Cluster", "Reason", "Inputs"], &[2]);
        for q in &self.quarantine {
            t.rows.push(vec![
                text(&q.cluster),
                text(&q.reason),
                Cell::Number(q.records),
            ]);
        }
        t
    }

    /// Findings by rule and severity.
    pub fn findings_table(&self) -> Table {
        let mut t = Table::new(
            "findings-table",
            &["Severity", "Rule", "Title", "Findings", "Events"],
            &[3, 4],
        );
        for f in &self.findings {
            t.rows.push(vec![
                Cell::Severity(f.severity.clone()),
                Cell::Code(f.rule_id.clone()),
                text(&f.title),
                Cell::Number(f.findings),
                Cell::Number(f.events),
            ]);
        }
        t
    }

    /// RBAC changes, oldest first.
    pub fn rbac_table(&self) -> Table {
        let mut t = Table::new(
            "rbac",
            &[
                "When", "Cluster", "Change", "Object", "Who", "Verb", "Audit ID",
            ],
            &[],
        );
        for x in &self.rbac_changes {
            let object = if x.namespace.is_empty() {
                format!("{} {}", x.kind, x.name)
            } else {
                format!("{} {}/{}", x.kind, x.namespace, x.name)
            };
            t.rows.push(vec![
                when(&x.changed_at),
                text(&x.cluster),
                text(&x.change),
                Cell::Text(object),
                text(&x.principal),
                text(&x.verb),
                Cell::Code(x.audit_id.clone()),
            ]);
        }
        t
    }

    /// Retention records.
    pub fn retention_table(&self) -> Table {
        let mut t = Table::new(
            "retention",
            &[
                "Record",
                "When",
                "Policy",
                "Cutoff",
                "Files removed",
                "Holds checked",
                "Files held",
            ],
            &[0, 4, 6],
        );
        for x in &self.retention.records {
            t.rows.push(vec![
                Cell::Number(x.sequence),
                when(&x.committed_at),
                text(&x.policy),
                when(&x.cutoff),
                Cell::Number(x.removed_files),
                text(&x.legal_holds.join(", ")),
                Cell::Number(x.held_files),
            ]);
        }
        t
    }

    /// Legal holds.
    pub fn holds_table(&self) -> Table {
        let mut t = Table::new(
            "holds",
            &["Legal hold", "Cluster", "From", "To", "Reason"],
            &[],
        );
        for x in &self.retention.legal_holds {
            t.rows.push(vec![
                text(&x.name),
                text(x.cluster.as_deref().unwrap_or("every cluster")),
                text(x.from.as_deref().unwrap_or("the beginning")),
                text(x.to.as_deref().unwrap_or("no end")),
                text(&x.reason),
            ]);
        }
        t
    }
}
