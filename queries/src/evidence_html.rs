//! The evidence report as one self-contained HTML page (inline CSS and SVG; no scripts,
//! fonts or images fetched), readable on screen and printed.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use auditlake_archive::completeness::{ClusterHour, HourStatus};

use crate::evidence_report::{EvidenceReport, Verification, grouped, readable_time};
use crate::evidence_tables::{Cell, Table};

const PALETTE: [&str; 8] = [
    "#2b6cb0", "#d69e2e", "#38a169", "#805ad5", "#dd6b20", "#319795", "#b83280", "#718096",
];

/// Escapes text for HTML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"
:root { --ok:#2f855a; --quiet:#a0aec0; --gap:#c53030; --ink:#1a202c; --muted:#4a5568; --line:#e2e8f0; }
* { box-sizing: border-box; }
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: var(--ink);
       max-width: 1100px; margin: 0 auto; padding: 32px 40px 64px; line-height: 1.45; font-size: 15px; }
header { border-bottom: 3px solid var(--ink); padding-bottom: 12px; margin-bottom: 24px; }
h1 { font-size: 28px; margin: 0 0 6px; }
h2 { font-size: 20px; margin: 40px 0 12px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 16px; margin: 24px 0 8px; }
.meta { color: var(--muted); margin: 0; }
.meta code { font-size: 13px; }
.cards { display: grid; grid-template-columns: repeat(4, 1fr); gap: 12px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; }
.card .label { font-size: 12px; text-transform: uppercase; letter-spacing: .06em; color: var(--muted); }
.card .value { font-size: 24px; font-weight: 700; margin-top: 2px; }
.card .note { font-size: 13px; color: var(--muted); }
.pass { color: var(--ok); } .fail { color: var(--gap); } .unchecked { color: #b7791f; }
table { border-collapse: collapse; width: 100%; margin: 8px 0 16px; font-size: 13.5px; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: #f7fafc; font-weight: 600; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; }
td code { font-size: 12px; word-break: break-all; }
pre { background: #f7fafc; border: 1px solid var(--line); padding: 10px; font-size: 12px; overflow-x: auto; }
.badge { display: inline-block; padding: 1px 7px; border-radius: 10px; font-size: 12px; font-weight: 600; color: #fff; }
.badge.OK { background: var(--ok); } .badge.QUIET { background: var(--quiet); } .badge.GAP { background: var(--gap); }
.sev-critical, .sev-high { color: var(--gap); font-weight: 600; } .sev-medium { color: #b7791f; font-weight: 600; }
.legend { display: flex; gap: 16px; flex-wrap: wrap; font-size: 13px; color: var(--muted); margin: 4px 0 8px; }
.legend i { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin-right: 5px; vertical-align: -1px; }
.heatmaps { display: flex; flex-wrap: wrap; gap: 24px; }
.heatmap h3 { margin-top: 8px; }
.empty { color: var(--muted); font-style: italic; }
footer { margin-top: 48px; border-top: 1px solid var(--line); padding-top: 12px; color: var(--muted); font-size: 13px; }
@media print { body { padding: 0; max-width: none; } h2 { break-after: avoid; } table, svg { break-inside: avoid; } }
"#;

/// Renders the report as a self-contained HTML page.
pub fn render(r: &EvidenceReport) -> String {
    let mut o = String::new();
    let h = r.headline();
    // Writing to a String cannot fail: the results of write! are ignored below.
    let _ = writeln!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Audit log evidence report, {} to {}</title><style>{STYLE}</style></head><body>",
        esc(&readable_time(&r.from)),
        esc(&readable_time(&r.to))
    );
    let _ = writeln!(
        o,
        "<header><h1>Audit log evidence report</h1>\
         <p class=\"meta\">Period <b>{}</b> to <b>{}</b> (end excluded) · archive <code>{}</code></p>\
         <p class=\"meta\">Generated {} by auditlake {}</p></header>",
        esc(&readable_time(&r.from)),
        esc(&readable_time(&r.to)),
        esc(&r.archive),
        esc(&readable_time(&r.generated_at)),
        esc(r.auditlake_version)
    );

    let (verdict_class, verdict_note) = match &r.verification {
        Verification::NotChecked { .. } => ("unchecked", "no public key given".to_string()),
        Verification::Checked {
            passed, tree_size, ..
        } => (
            if *passed { "pass" } else { "fail" },
            format!("against checkpoint {tree_size}"),
        ),
    };
    let _ = writeln!(
        o,
        "<section class=\"cards\">\
         <div class=\"card\"><div class=\"label\">Integrity</div><div class=\"value {verdict_class}\" id=\"verdict\">{}</div><div class=\"note\">{}</div></div>\
         <div class=\"card\"><div class=\"label\">Completeness</div><div class=\"value {}\" id=\"gap-hours\">{} GAP</div><div class=\"note\">{} OK · {} QUIET cluster-hours</div></div>\
         <div class=\"card\"><div class=\"label\">Events archived</div><div class=\"value\" id=\"events\">{}</div><div class=\"note\">quarantined inputs: {}</div></div>\
         <div class=\"card\"><div class=\"label\">Findings</div><div class=\"value\" id=\"findings\">{}</div><div class=\"note\">{} critical or high · {} RBAC changes</div></div>\
         </section>",
        esc(&r.verdict()),
        esc(&verdict_note),
        if h.gap == 0 { "pass" } else { "fail" },
        grouped(h.gap),
        grouped(h.ok),
        grouped(h.quiet),
        grouped(h.events),
        grouped(h.quarantined),
        grouped(h.findings),
        grouped(h.severe_findings),
        grouped(r.rbac_changes_total)
    );

    integrity(&mut o, r);
    events_chart(&mut o, r);
    completeness(&mut o, r);
    quarantine(&mut o, r);
    findings(&mut o, r);
    rbac(&mut o, r);
    retention(&mut o, r);

    let _ = writeln!(
        o,
        "<footer><b>How to check this report.</b> With the log's public key only: \
         <code>auditlake verify --archive {0} --public-key log.vkey</code> re-reads every file \
         against the signed log; <code>auditlake prove --audit-id &lt;id&gt;</code> and \
         <code>auditlake verify-proof</code> prove a single event offline; \
         <code>auditlake verify --since-checkpoint saved.checkpoint</code> proves history was \
         only appended to since. The JSON form of this report (<code>--format json</code>) \
         holds every cluster-hour.</footer></body></html>",
        esc(&r.archive)
    );
    o
}

/// Writes `t` as an HTML table, or `empty` (when not blank) as a paragraph.
fn table(o: &mut String, t: &Table, empty: &str) {
    if t.rows.is_empty() {
        if !empty.is_empty() {
            let _ = writeln!(o, "<p id=\"{}\" class=\"empty\">{}</p>", t.id, esc(empty));
        }
        return;
    }
    let _ = write!(o, "<table id=\"{}\"><tr>", t.id);
    for (title, numeric) in t.columns.iter().zip(&t.numeric) {
        let class = if *numeric { " class=\"n\"" } else { "" };
        let _ = write!(o, "<th{class}>{}</th>", esc(title));
    }
    let _ = write!(o, "</tr>");
    for row in &t.rows {
        let _ = write!(o, "<tr>");
        for (c, numeric) in row.iter().zip(&t.numeric) {
            let class = if *numeric { " class=\"n\"" } else { "" };
            let content = match c {
                Cell::Code(s) => format!("<code>{}</code>", esc(s)),
                Cell::Severity(s) => format!("<span class=\"sev-{0}\">{0}</span>", esc(s)),
                Cell::Alert(s) => format!("<span class=\"fail\">{}</span>", esc(s)),
                Cell::Muted(s) => format!("<span class=\"empty\">{}</span>", esc(s)),
                Cell::Lines(l) => l.iter().map(|x| esc(x)).collect::<Vec<_>>().join("<br>"),
                other => esc(&other.text()),
            };
            let _ = write!(o, "<td{class}>{content}</td>");
        }
        let _ = write!(o, "</tr>");
    }
    let _ = writeln!(o, "</table>");
}

fn integrity(o: &mut String, r: &EvidenceReport) {
    let _ = writeln!(o, "<h2>1. Integrity</h2>");
    match &r.verification {
        Verification::NotChecked { reason } => {
            let _ = writeln!(
                o,
                "<p class=\"unchecked\"><b>Not checked:</b> {}. Run with <code>--public-key</code> to \
                 check the archive against its signed log.</p>",
                esc(reason)
            );
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
                "<p>{} The archive was checked against checkpoint <b>{tree_size}</b> of log \
                 <code>{}</code>, root <code>{}</code>, signed by {}.</p>",
                if *passed {
                    "<b class=\"pass\">Every check passed.</b>"
                } else {
                    "<b class=\"fail\">Problems were found.</b>"
                },
                esc(origin),
                esc(root_hash),
                signed_by
                    .iter()
                    .map(|s| format!("<code>{}</code>", esc(s)))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            table(o, &r.checked_table(), "");
            table(o, &r.problems_table(), "");
            let _ = writeln!(
                o,
                "<details><summary>The signed checkpoint</summary><pre>{}</pre></details>",
                esc(checkpoint)
            );
        }
    }
}

/// Rounds up to 1, 2 or 5 times a power of ten, for the chart's axis.
fn nice_ceiling(v: u64) -> u64 {
    let mut step = 1u64;
    loop {
        for m in [1, 2, 5] {
            if step.saturating_mul(m) >= v {
                return step.saturating_mul(m).max(1);
            }
        }
        step = step.saturating_mul(10);
    }
}

fn events_chart(o: &mut String, r: &EvidenceReport) {
    let _ = writeln!(o, "<h2>2. Events per cluster per day</h2>");
    let clusters = r.day_clusters();
    let by_day = r.events_by_day();
    if clusters.is_empty() {
        let _ = writeln!(
            o,
            "<p class=\"empty\">No cluster has events or heartbeats in the archive.</p>"
        );
        return;
    }
    let colour =
        |c: &str| PALETTE[clusters.iter().position(|x| *x == c).unwrap_or(0) % PALETTE.len()];
    let _ = write!(o, "<div class=\"legend\">");
    for c in &clusters {
        let _ = write!(
            o,
            "<span><i style=\"background:{}\"></i>{}</span>",
            colour(c),
            esc(c)
        );
    }
    let _ = writeln!(o, "</div>");
    let max = by_day
        .values()
        .map(|m| m.values().sum::<u64>())
        .max()
        .unwrap_or(0);
    let top = nice_ceiling(max);
    let (w, h, left, bottom, top_pad) = (1000.0, 260.0, 70.0, 28.0, 10.0);
    let plot_w = w - left - 10.0;
    let plot_h = h - bottom - top_pad;
    let n = by_day.len().max(1) as f64;
    let slot = plot_w / n;
    let bar = (slot * 0.8).max(1.0);
    let _ = write!(
        o,
        "<svg id=\"events-chart\" role=\"img\" aria-label=\"Events per cluster per day\" viewBox=\"0 0 {w} {h}\" width=\"100%\" xmlns=\"http://www.w3.org/2000/svg\" font-size=\"11\" font-family=\"inherit\">"
    );
    for i in 0..=4 {
        let v = top / 4 * i;
        let y = top_pad + plot_h - plot_h * (v as f64 / top as f64);
        let _ = write!(
            o,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#e2e8f0\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#4a5568\">{}</text>",
            w - 10.0,
            left - 6.0,
            y + 4.0,
            grouped(v)
        );
    }
    let label_every = (by_day.len() as f64 / 12.0).ceil().max(1.0) as usize;
    for (i, (day, counts)) in by_day.iter().enumerate() {
        let x = left + slot * i as f64 + (slot - bar) / 2.0;
        let mut y = top_pad + plot_h;
        for c in &clusters {
            let v = counts.get(c).copied().unwrap_or(0);
            if v == 0 {
                continue;
            }
            let bh = plot_h * v as f64 / top as f64;
            y -= bh;
            let _ = write!(
                o,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bar:.1}\" height=\"{bh:.1}\" fill=\"{}\"><title>{} {}: {} events</title></rect>",
                colour(c),
                esc(day),
                esc(c),
                grouped(v)
            );
        }
        if i % label_every == 0 {
            let _ = write!(
                o,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#4a5568\">{}</text>",
                x + bar / 2.0,
                h - 10.0,
                esc(&day[5..])
            );
        }
    }
    let _ = writeln!(o, "</svg>");
    let _ = write!(o, "<details><summary>The figures</summary>");
    table(o, &r.days_table(), "");
    let _ = writeln!(o, "</details>");
}

fn status_colour(s: HourStatus) -> &'static str {
    match s {
        HourStatus::Ok => "#2f855a",
        HourStatus::Quiet => "#cbd5e0",
        HourStatus::Gap => "#c53030",
    }
}

/// One cluster's hours as a grid: a row per day, a column per hour (UTC).
fn heatmap(o: &mut String, cluster: &str, hours: &[&ClusterHour]) {
    let mut days: BTreeMap<i64, Vec<&ClusterHour>> = BTreeMap::new();
    for h in hours {
        days.entry(h.hour_index.div_euclid(24)).or_default().push(h);
    }
    let cell = if days.len() > 62 { 6.0 } else { 13.0 };
    let left = 78.0;
    let top = 16.0;
    let w = left + 24.0 * (cell + 1.0);
    let ht = top + days.len() as f64 * (cell + 1.0) + 2.0;
    let label_every = if days.len() > 62 { 7 } else { 1 };
    let _ = write!(
        o,
        "<div class=\"heatmap\"><h3>{}</h3><svg class=\"hours\" role=\"img\" aria-label=\"Hours of {}\" width=\"{w}\" height=\"{ht}\" xmlns=\"http://www.w3.org/2000/svg\" font-size=\"10\" font-family=\"inherit\">",
        esc(cluster),
        esc(cluster)
    );
    for hr in [0, 6, 12, 18] {
        let _ = write!(
            o,
            "<text x=\"{:.1}\" y=\"11\" fill=\"#4a5568\">{hr:02}h</text>",
            left + hr as f64 * (cell + 1.0)
        );
    }
    for (row, (_, list)) in days.iter().enumerate() {
        let y = top + row as f64 * (cell + 1.0);
        if row % label_every == 0
            && let Some(first) = list.first()
        {
            let _ = write!(
                o,
                "<text x=\"0\" y=\"{:.1}\" fill=\"#4a5568\">{}</text>",
                y + cell - 2.0,
                esc(&first.hour[..10])
            );
        }
        // Consecutive hours with the same verdict and reasons are one shape: a year of quiet
        // hours stays a few kilobytes, and a run reads as one.
        let mut i = 0;
        while i < list.len() {
            let h = list[i];
            let run = list[i..]
                .iter()
                .enumerate()
                .take_while(|(k, x)| {
                    x.status == h.status
                        && x.reasons == h.reasons
                        && x.hour_index == h.hour_index + *k as i64
                })
                .count();
            let events: u64 = list[i..i + run].iter().map(|x| x.events).sum();
            let x = left + h.hour_index.rem_euclid(24) as f64 * (cell + 1.0);
            let width = run as f64 * (cell + 1.0) - 1.0;
            let why = if h.reasons.is_empty() {
                String::new()
            } else {
                format!(": {}", h.reasons.join("; "))
            };
            let when = if run == 1 {
                readable_time(&h.hour)
            } else {
                format!(
                    "{} to {:02}:00 UTC",
                    readable_time(&h.hour).trim_end_matches(" UTC"),
                    (h.hour_index.rem_euclid(24) + run as i64)
                )
            };
            let _ = write!(
                o,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{width:.1}\" height=\"{cell}\" fill=\"{}\"><title>{} {} events {}{}</title></rect>",
                status_colour(h.status),
                esc(&when),
                grouped(events),
                h.status.label(),
                esc(&why)
            );
            i += run;
        }
    }
    let _ = write!(o, "</svg></div>");
}

fn completeness(o: &mut String, r: &EvidenceReport) {
    let c = &r.completeness;
    let _ = writeln!(
        o,
        "<h2>3. Completeness</h2>\n<p>Each cluster-hour is <span class=\"badge OK\">OK</span> \
         (events archived), <span class=\"badge QUIET\">QUIET</span> (no events, and a live \
         source attested it was up all hour, never silent over {} s) or \
         <span class=\"badge GAP\">GAP</span> (something may be missing; the table below names \
         it).</p>",
        c.max_silence_seconds
    );
    table(o, &r.clusters_table(), "");
    let _ = write!(
        o,
        "<div class=\"legend\"><span><i style=\"background:#2f855a\"></i>OK</span><span><i style=\"background:#cbd5e0\"></i>QUIET</span><span><i style=\"background:#c53030\"></i>GAP</span><span>one row per day, hours 00 to 23 UTC left to right; a bar is a run of hours with the same verdict</span></div><div class=\"heatmaps\">"
    );
    for s in &c.clusters {
        let hours: Vec<&ClusterHour> = c.hours.iter().filter(|h| h.cluster == s.cluster).collect();
        heatmap(o, &s.cluster, &hours);
    }
    let _ = writeln!(o, "</div>\n<h3>Gaps</h3>");
    table(o, &r.gaps_table(), "No gaps.");
    if !c.reconciliation.is_empty() {
        let _ = writeln!(
            o,
            "<h3>Apiserver counters</h3><p>What the apiserver says it audited \
             (<code>apiserver_audit_event_total</code>) and failed to audit \
             (<code>apiserver_audit_error_total</code>), recorded in the heartbeats, beside \
             what the archive committed in the same window.</p>"
        );
        table(o, &r.reconciliation_table(), "");
    }
}

fn quarantine(o: &mut String, r: &EvidenceReport) {
    let _ = writeln!(
        o,
        "<h2>4. Quarantine</h2><p>Inputs that could not be decoded are kept byte for byte \
         under <code>_quarantine/</code> with the reason.</p>"
    );
    table(
        o,
        &r.quarantine_table(),
        "Nothing was quarantined in the period.",
    );
}

fn findings(o: &mut String, r: &EvidenceReport) {
    let _ = writeln!(o, "<h2>5. Findings</h2>");
    table(o, &r.findings_table(), "No findings in the period.");
}

fn rbac(o: &mut String, r: &EvidenceReport) {
    let _ = writeln!(o, "<h2>6. RBAC changes</h2>");
    if (r.rbac_changes.len() as u64) < r.rbac_changes_total {
        let _ = writeln!(
            o,
            "<p>The first {} of {} changes; query <code>rbac_history</code> for all.</p>",
            r.rbac_changes.len(),
            grouped(r.rbac_changes_total)
        );
    }
    table(o, &r.rbac_table(), "No RBAC object changed in the period.");
}

fn retention(o: &mut String, r: &EvidenceReport) {
    let _ = writeln!(
        o,
        "<h2>7. Retention and legal holds</h2><p>Each removal is announced by a signed record \
         before any file is deleted; <code>verify</code> reports those files as removed by \
         retention.</p>"
    );
    table(
        o,
        &r.retention_table(),
        "No retention was ever applied: nothing was removed from the archive.",
    );
    table(o, &r.holds_table(), "No legal hold is in place.");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_an_attacker_could_put_in_names() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
    }

    #[test]
    fn axis_tops_are_round() {
        assert_eq!(nice_ceiling(0), 1);
        assert_eq!(nice_ceiling(7), 10);
        assert_eq!(nice_ceiling(11), 20);
        assert_eq!(nice_ceiling(4_100), 5_000);
    }
}
