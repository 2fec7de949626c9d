//! Completeness of the archive over a period, from the manifest records alone
//! (`archive/FORMAT.md` §10): every cluster-hour is OK (events archived), QUIET (no events,
//! and a live source attested it was up the whole hour) or GAP (nothing attests the hour,
//! a source was silent too long, a hole in a source's continuity, or the apiserver itself
//! failed to audit), each gap with what is missing named.

use std::collections::{BTreeMap, BTreeSet};

use auditlake_schema::timestamp::{format_rfc3339_micros, parse_rfc3339_micros};
use serde::Serialize;

use crate::layout::{HOUR_MICROS as HOUR, Table, partition_span};
use crate::manifest::{ManifestRecord, SourceMark};

/// What to assess.
#[derive(Debug, Clone)]
pub struct CompletenessOptions {
    /// Start of the period (µs since the epoch; rounded down to the hour).
    pub from_micros: i64,
    /// End of the period, exclusive (µs; rounded up to the hour).
    pub to_micros: i64,
    /// Longest time without a heartbeat or commit from a live source that is not a gap.
    pub max_silence_micros: i64,
    /// Only these clusters (empty: every cluster the archive knows).
    pub clusters: Vec<String>,
    /// When the assessment is made (µs): the rest of the current hour is not yet silent.
    pub as_of_micros: i64,
}

/// The verdict on one cluster-hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HourStatus {
    /// Events were archived and nothing says any are missing.
    Ok,
    /// No events, and a live source attested it was up all hour: the cluster was quiet.
    Quiet,
    /// Something may be missing: the reasons say what.
    Gap,
}

impl HourStatus {
    /// `OK`, `QUIET` or `GAP`.
    pub fn label(self) -> &'static str {
        match self {
            HourStatus::Ok => "OK",
            HourStatus::Quiet => "QUIET",
            HourStatus::Gap => "GAP",
        }
    }
}

/// One cluster-hour of the period.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterHour {
    /// The cluster.
    pub cluster: String,
    /// Start of the hour (RFC 3339, UTC).
    pub hour: String,
    /// Hours since the epoch.
    #[serde(skip)]
    pub hour_index: i64,
    /// Events archived for the hour (by the time the apiserver received the request).
    pub events: u64,
    /// The verdict.
    pub status: HourStatus,
    /// Why a GAP is one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

/// Consecutive GAP hours of one cluster with the same reasons: a row of the gap table.
#[derive(Debug, Clone, Serialize)]
pub struct GapRun {
    /// The cluster.
    pub cluster: String,
    /// Start of the first hour (RFC 3339).
    pub from: String,
    /// End of the last hour, exclusive (RFC 3339).
    pub to: String,
    /// Hours in the run.
    pub hours: u64,
    /// Events archived in those hours anyway.
    pub events: u64,
    /// What is missing.
    pub reasons: Vec<String>,
}

/// A hole in a source's continuity: positions no record archived.
#[derive(Debug, Clone, Serialize)]
pub struct Hole {
    /// The source (`webhook log <id>`, `kafka <group> <topic>/<partition>`, `file <path>`).
    pub source: String,
    /// The positions missing (`sequence numbers 101-150`, `offsets 7-9`, `bytes 0-4095`).
    pub missing: String,
    /// The record before the hole (0: none).
    pub after_record: u64,
    /// The record after it.
    pub before_record: u64,
    /// The clusters the source serves.
    pub clusters: Vec<String>,
    /// The hours it is placed in, `[first, last]` (hours since the epoch).
    #[serde(skip)]
    hours: (i64, i64),
}

/// The apiserver's audit counters against the archive for one cluster over the period.
#[derive(Debug, Clone, Serialize)]
pub struct Reconciliation {
    /// The cluster.
    pub cluster: String,
    /// First heartbeat with counters in the period (RFC 3339).
    pub from: String,
    /// Last one.
    pub to: String,
    /// Heartbeats with counters.
    pub heartbeats: u64,
    /// Increase of `apiserver_audit_event_total` (counter resets added back).
    pub apiserver_events: u64,
    /// Increase of `apiserver_audit_error_total`: events the apiserver failed to audit.
    pub apiserver_errors: u64,
    /// Events committed in the window (by commit time, like the counters: at its edges the
    /// archive lags the apiserver by up to a flush interval).
    pub archived_events: u64,
}

/// One cluster's totals.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterSummary {
    /// The cluster.
    pub cluster: String,
    /// Events archived in the period.
    pub events: u64,
    /// Hours OK.
    pub ok: u64,
    /// Hours QUIET.
    pub quiet: u64,
    /// Hours GAP.
    pub gap: u64,
    /// The live sources that attest it (`webhook log <id>`, `kafka group <g>`).
    pub live_sources: Vec<String>,
}

/// The assessment of a period.
#[derive(Debug, Clone, Serialize)]
pub struct Completeness {
    /// Start of the period (RFC 3339).
    pub from: String,
    /// End, exclusive.
    pub to: String,
    /// The silence tolerated, in seconds.
    pub max_silence_seconds: i64,
    /// Per cluster.
    pub clusters: Vec<ClusterSummary>,
    /// Every cluster-hour, by cluster then hour.
    pub hours: Vec<ClusterHour>,
    /// The GAP hours, merged into runs.
    pub gaps: Vec<GapRun>,
    /// Holes in sources' continuity (the whole archive, not only the period).
    pub holes: Vec<Hole>,
    /// Apiserver counters against the archive, per cluster with counters.
    pub reconciliation: Vec<Reconciliation>,
}

/// The hour (since the epoch) of an events file, from its `date=/hour=` partition, else
/// from its first event.
fn file_hour(path: &str, min_time_micros: i64) -> i64 {
    partition_span(path, Table::Events)
        .map_or(min_time_micros, |(_, _, (start, _))| start)
        .div_euclid(HOUR)
}

/// A stretch without a heartbeat or commit from any live source of a cluster; `None` ends
/// are unbounded (before the first, after the last).
#[derive(Debug, Clone, Copy)]
struct Silence {
    start: Option<i64>,
    end: Option<i64>,
    /// How long after `start` the silence begins to count (the last record attests the
    /// tolerated silence after it).
    grace: i64,
}

impl Silence {
    fn overlaps(&self, from: i64, to: i64) -> bool {
        self.start.is_none_or(|s| s + self.grace < to) && self.end.is_none_or(|e| e > from)
    }

    fn reason(&self) -> String {
        match (self.start, self.end) {
            (None, None) => "no live source attests this cluster (no webhook or Kafka \
                             heartbeats or commits: nothing shows the hour was quiet)"
                .into(),
            (None, Some(e)) => format!(
                "no live source yet: the first heartbeat or commit is at {}",
                second(e)
            ),
            (Some(s), None) => format!("no heartbeat or commit since {}", second(s)),
            (Some(s), Some(e)) => format!(
                "no heartbeat or commit from {} to {} ({} min)",
                second(s),
                second(e),
                (e - s) / 60_000_000
            ),
        }
    }
}

/// A time to the second (`2026-11-30T10:05:12Z`), as reasons print it.
fn second(micros: i64) -> String {
    let text = format_rfc3339_micros(micros);
    match text.split_once('.') {
        Some((whole, _)) => format!("{whole}Z"),
        None => text,
    }
}

/// What a writer (one process run) attests.
#[derive(Default)]
struct Writer {
    live: bool,
    clusters: BTreeSet<String>,
    times: Vec<i64>,
    sources: BTreeSet<String>,
}

/// Classifies every cluster-hour of the period from `records` (the whole chain, in order).
pub fn assess(records: &[ManifestRecord], opts: &CompletenessOptions) -> Completeness {
    let first_hour = opts.from_micros.div_euclid(HOUR);
    let end_hour = (opts.to_micros + HOUR - 1).div_euclid(HOUR).max(first_hour);

    // Events per cluster-hour, every cluster, and what each writer attests.
    let mut events: BTreeMap<(String, i64), u64> = BTreeMap::new();
    // (cluster, commit time, rows) of every events file, for the reconciliation.
    let mut committed: Vec<(String, i64, u64)> = Vec::new();
    let mut known: BTreeSet<String> = BTreeSet::new();
    let mut writers: BTreeMap<&str, Writer> = BTreeMap::new();
    // Each record's commit time, parsed once (`None` if unreadable: verify reports that).
    let times: Vec<Option<i64>> = records
        .iter()
        .map(|r| parse_rfc3339_micros(&r.committed_at))
        .collect();
    for (r, &at) in records.iter().zip(&times) {
        let w = writers.entry(r.writer.as_str()).or_default();
        match &r.source {
            Some(SourceMark::Webhook { log_id, .. }) => {
                w.live = true;
                w.sources.insert(format!("webhook log {log_id}"));
            }
            Some(SourceMark::Kafka { group, .. }) => {
                w.live = true;
                w.sources.insert(format!("kafka group {group}"));
            }
            _ => {}
        }
        if let Some(h) = &r.heartbeat {
            w.live = true;
            w.clusters.extend(h.clusters.iter().cloned());
            known.extend(h.clusters.iter().cloned());
        }
        if let Some(t) = at {
            w.times.push(t);
        }
        for f in &r.files {
            w.clusters.insert(f.cluster.clone());
            if f.table == Table::Events.name() {
                known.insert(f.cluster.clone());
                *events
                    .entry((f.cluster.clone(), file_hour(&f.path, f.min_time_micros)))
                    .or_default() += f.rows;
                if let Some(t) = at {
                    committed.push((f.cluster.clone(), t, f.rows));
                }
            }
        }
    }
    let clusters: Vec<String> = if opts.clusters.is_empty() {
        known.into_iter().collect()
    } else {
        opts.clusters.clone()
    };

    let mut reasons: BTreeMap<(String, i64), Vec<String>> = BTreeMap::new();
    let mut add_reason = |cluster: &str, hour: i64, reason: &str| {
        if (first_hour..end_hour).contains(&hour) {
            let list = reasons.entry((cluster.to_string(), hour)).or_default();
            if !list.iter().any(|r| r == reason) {
                list.push(reason.to_string());
            }
        }
    };

    let holes = find_holes(records, &times, &writers);
    for hole in &holes {
        let text = format!(
            "{}: {} never archived (between records {} and {})",
            hole.source, hole.missing, hole.after_record, hole.before_record
        );
        let (lo, hi) = hole.hours;
        for c in &hole.clusters {
            for h in lo.max(first_hour)..=hi.min(end_hour - 1) {
                add_reason(c, h, &text);
            }
        }
    }

    let (reconciliation, error_reasons) = reconcile(records, &times, opts, &committed);
    for (cluster, hour, text) in error_reasons {
        add_reason(&cluster, hour, &text);
    }

    let mut hours = Vec::new();
    let mut summaries = Vec::new();
    for cluster in &clusters {
        let live: Vec<&Writer> = writers
            .values()
            .filter(|w| w.live && w.clusters.contains(cluster))
            .collect();
        let silences = silences(&live, opts.max_silence_micros);
        let mut summary = ClusterSummary {
            cluster: cluster.clone(),
            events: 0,
            ok: 0,
            quiet: 0,
            gap: 0,
            live_sources: live
                .iter()
                .flat_map(|w| w.sources.iter().cloned())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
        };
        for h in first_hour..end_hour {
            let n = events.get(&(cluster.clone(), h)).copied().unwrap_or(0);
            let mut why = reasons.remove(&(cluster.clone(), h)).unwrap_or_default();
            // The rest of the current hour has not happened: it is not silent.
            let end = ((h + 1) * HOUR).min(opts.as_of_micros);
            for s in silences.iter().filter(|s| s.overlaps(h * HOUR, end)) {
                // Events before any live source existed come from files, whose continuity
                // is their byte ranges: the missing heartbeat only matters for an hour
                // nothing else attests.
                if n == 0 || s.start.is_some() {
                    why.push(s.reason());
                }
            }
            let status = if !why.is_empty() {
                summary.gap += 1;
                HourStatus::Gap
            } else if n > 0 {
                summary.ok += 1;
                HourStatus::Ok
            } else {
                summary.quiet += 1;
                HourStatus::Quiet
            };
            summary.events += n;
            hours.push(ClusterHour {
                cluster: cluster.clone(),
                hour: format_rfc3339_micros(h * HOUR),
                hour_index: h,
                events: n,
                status,
                reasons: why,
            });
        }
        summaries.push(summary);
    }

    Completeness {
        from: format_rfc3339_micros(first_hour * HOUR),
        to: format_rfc3339_micros(end_hour * HOUR),
        max_silence_seconds: opts.max_silence_micros / 1_000_000,
        clusters: summaries,
        gaps: gap_runs(&hours),
        hours,
        holes,
        reconciliation,
    }
}

/// The hour a hole is placed in for a record next to it: its events' hour when it has
/// events (a file source reads the past), else its commit time.
fn hole_hour(r: &ManifestRecord, committed_at: Option<i64>) -> Option<i64> {
    match &r.source {
        Some(SourceMark::Files { .. }) => r
            .event_files()
            .map(|f| file_hour(&f.path, f.min_time_micros))
            .min(),
        _ => None,
    }
    .or_else(|| committed_at.map(|t| t.div_euclid(HOUR)))
}

/// The stretches longer than `max_silence` with no record from any of `live`.
fn silences(live: &[&Writer], max_silence: i64) -> Vec<Silence> {
    let mut times: Vec<i64> = live.iter().flat_map(|w| w.times.iter().copied()).collect();
    times.sort_unstable();
    let (Some(&first), Some(&last)) = (times.first(), times.last()) else {
        return vec![Silence {
            start: None,
            end: None,
            grace: 0,
        }];
    };
    let mut out = vec![Silence {
        start: None,
        end: Some(first),
        grace: 0,
    }];
    out.extend(times.windows(2).filter_map(|w| {
        (w[1] - w[0] > max_silence).then_some(Silence {
            start: Some(w[0]),
            end: Some(w[1]),
            grace: 0,
        })
    }));
    out.push(Silence {
        start: Some(last),
        end: None,
        grace: max_silence,
    });
    out
}

/// Holes in every source's continuity, in record order.
fn find_holes(
    records: &[ManifestRecord],
    times: &[Option<i64>],
    writers: &BTreeMap<&str, Writer>,
) -> Vec<Hole> {
    let clusters_of = |r: &ManifestRecord| -> Vec<String> {
        writers
            .get(r.writer.as_str())
            .map(|w| w.clusters.iter().cloned().collect())
            .unwrap_or_default()
    };
    let mut group_clusters: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for r in records {
        if let Some(SourceMark::Kafka { group, .. }) = &r.source {
            group_clusters
                .entry(group)
                .or_default()
                .extend(clusters_of(r));
        }
    }
    // A hole between the record at index `after` (if any) and the one at `before`.
    let hole = |source: String, missing: String, after: Option<usize>, before: usize, clusters| {
        let here = hole_hour(&records[before], times[before]);
        let there = after.and_then(|i| hole_hour(&records[i], times[i]));
        let (lo, hi) = match (here, there) {
            (Some(a), Some(b)) => (a.min(b), a.max(b)),
            (Some(x), None) | (None, Some(x)) => (x, x),
            // Nowhere to place it: it is still listed among the holes.
            (None, None) => (i64::MAX, i64::MIN),
        };
        Hole {
            source,
            missing,
            after_record: after.map_or(0, |i| records[i].sequence),
            before_record: records[before].sequence,
            clusters,
            hours: (lo, hi),
        }
    };
    let mut holes = Vec::new();
    // Per position key: how far it is archived, and the index of the record that did.
    let mut logs: BTreeMap<&str, (u64, usize)> = BTreeMap::new();
    let mut partitions: BTreeMap<(&str, &str, i32), (i64, usize)> = BTreeMap::new();
    let mut inputs: BTreeMap<&str, (u64, usize)> = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        match &r.source {
            Some(SourceMark::Webhook {
                log_id,
                through_seq,
                from_seq,
            }) => {
                let prev = logs.get(log_id.as_str()).copied();
                let done = prev.map_or(0, |p| p.0);
                if let Some(from) = *from_seq
                    && from > done + 1
                {
                    holes.push(hole(
                        format!("webhook log {log_id}"),
                        range_text("sequence number", done + 1, from - 1),
                        prev.map(|p| p.1),
                        i,
                        clusters_of(r),
                    ));
                }
                if prev.is_none() || *through_seq > done {
                    logs.insert(log_id, (*through_seq, i));
                }
            }
            Some(SourceMark::Kafka { group, ranges }) => {
                for k in ranges {
                    let key = (group.as_str(), k.topic.as_str(), k.partition);
                    let prev = partitions.get(&key).copied();
                    if let Some((done, after)) = prev
                        && k.from_offset > done + 1
                    {
                        holes.push(hole(
                            format!("kafka {group} {}/{}", k.topic, k.partition),
                            range_text("offset", done + 1, k.from_offset - 1),
                            Some(after),
                            i,
                            group_clusters
                                .get(group.as_str())
                                .map(|c| c.iter().cloned().collect())
                                .unwrap_or_default(),
                        ));
                    }
                    if prev.is_none_or(|(done, _)| k.through_offset > done) {
                        partitions.insert(key, (k.through_offset, i));
                    }
                }
            }
            Some(SourceMark::Files { inputs: ranges }) => {
                for f in ranges {
                    let prev = inputs.get(f.path.as_str()).copied();
                    let done = prev.map_or(0, |p| p.0);
                    if f.from_byte > done {
                        let clusters: BTreeSet<String> =
                            r.files.iter().map(|f| f.cluster.clone()).collect();
                        holes.push(hole(
                            format!("file {}", f.path),
                            range_text("byte", done, f.from_byte - 1),
                            prev.map(|p| p.1),
                            i,
                            clusters.into_iter().collect(),
                        ));
                    }
                    if f.to_byte > done {
                        inputs.insert(&f.path, (f.to_byte, i));
                    }
                }
            }
            None => {}
        }
    }
    holes
}

fn range_text<T: PartialEq + std::fmt::Display>(what: &str, first: T, last: T) -> String {
    if first == last {
        format!("{what} {first}")
    } else {
        format!("{what}s {first}-{last}")
    }
}

/// A heartbeat's time and apiserver counters (events, errors).
type Sample = (i64, u64, u64);

/// Heartbeat counters per cluster over the period, and the hours in which the apiserver
/// reported audit errors (cluster, hour, reason).
fn reconcile(
    records: &[ManifestRecord],
    times: &[Option<i64>],
    opts: &CompletenessOptions,
    committed: &[(String, i64, u64)],
) -> (Vec<Reconciliation>, Vec<(String, i64, String)>) {
    // (writer, cluster) -> samples in order: a counter belongs to one apiserver process
    // seen by one writer run.
    let mut samples: BTreeMap<(&str, &str), Vec<Sample>> = BTreeMap::new();
    for (r, &at) in records.iter().zip(times) {
        let (Some(a), Some(t)) = (r.heartbeat.as_ref().and_then(|h| h.apiserver.as_ref()), at)
        else {
            continue;
        };
        if (opts.from_micros..opts.to_micros).contains(&t) {
            samples.entry((&r.writer, &a.cluster)).or_default().push((
                t,
                a.audit_event_total,
                a.audit_error_total,
            ));
        }
    }
    let increase = |a: u64, b: u64| if b >= a { b - a } else { b };
    // Per cluster: its reconciliation and the window its samples span.
    let mut per_cluster: BTreeMap<&str, (Reconciliation, i64, i64)> = BTreeMap::new();
    let mut errors = Vec::new();
    for ((_, cluster), s) in &samples {
        let (rec, lo, hi) = per_cluster.entry(cluster).or_insert_with(|| {
            let rec = Reconciliation {
                cluster: cluster.to_string(),
                from: String::new(),
                to: String::new(),
                heartbeats: 0,
                apiserver_events: 0,
                apiserver_errors: 0,
                archived_events: 0,
            };
            (rec, i64::MAX, i64::MIN)
        });
        rec.heartbeats += s.len() as u64;
        // Samples are in record order, so a writer's first and last are its window.
        *lo = (*lo).min(s[0].0);
        *hi = (*hi).max(s[s.len() - 1].0);
        for w in s.windows(2) {
            let (t0, e0, x0) = w[0];
            let (t1, e1, x1) = w[1];
            rec.apiserver_events += increase(e0, e1);
            let failed = increase(x0, x1);
            rec.apiserver_errors += failed;
            if failed > 0 {
                errors.push((
                    cluster.to_string(),
                    t1.div_euclid(HOUR),
                    format!(
                        "the apiserver failed to audit {failed} event(s) between {} and {} \
                         (apiserver_audit_error_total)",
                        second(t0),
                        second(t1)
                    ),
                ));
            }
        }
    }
    let reconciled = per_cluster
        .into_values()
        .map(|(mut rec, lo, hi)| {
            rec.from = format_rfc3339_micros(lo);
            rec.to = format_rfc3339_micros(hi);
            rec.archived_events = committed
                .iter()
                .filter(|(c, t, _)| *c == rec.cluster && (lo..=hi).contains(t))
                .map(|x| x.2)
                .sum();
            rec
        })
        .collect();
    (reconciled, errors)
}

/// Consecutive GAP hours of a cluster with the same reasons, merged.
fn gap_runs(hours: &[ClusterHour]) -> Vec<GapRun> {
    let mut runs: Vec<GapRun> = Vec::new();
    let mut last: Option<(&str, i64)> = None;
    for h in hours.iter().filter(|h| h.status == HourStatus::Gap) {
        let extends = last.is_some_and(|(c, i)| c == h.cluster && i + 1 == h.hour_index)
            && runs.last().is_some_and(|r| r.reasons == h.reasons);
        if extends && let Some(run) = runs.last_mut() {
            run.hours += 1;
            run.events += h.events;
            run.to = format_rfc3339_micros((h.hour_index + 1) * HOUR);
        } else {
            runs.push(GapRun {
                cluster: h.cluster.clone(),
                from: h.hour.clone(),
                to: format_rfc3339_micros((h.hour_index + 1) * HOUR),
                hours: 1,
                events: h.events,
                reasons: h.reasons.clone(),
            });
        }
        last = Some((&h.cluster, h.hour_index));
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ApiserverAuditCounters, FileRange, Heartbeat, KafkaRange, ManifestFile};

    const MIN: i64 = 60_000_000;
    /// 2026-11-30T00:00:00Z.
    const DAY0: i64 = 1_795_996_800_000_000;

    struct Log(Vec<ManifestRecord>);

    impl Log {
        fn push(
            &mut self,
            writer: &str,
            at: i64,
            source: Option<SourceMark>,
        ) -> &mut ManifestRecord {
            let seq = self.0.len() as u64 + 1;
            let mut r = ManifestRecord::new(seq, None, writer, Vec::new(), Vec::new());
            r.committed_at = format_rfc3339_micros(at);
            r.source = source;
            self.0.push(r);
            self.0.last_mut().unwrap()
        }

        fn beat(&mut self, writer: &str, at: i64, cluster: &str) -> &mut ManifestRecord {
            let r = self.push(writer, at, None);
            r.heartbeat = Some(Heartbeat {
                clusters: vec![cluster.into()],
                apiserver: None,
            });
            r
        }

        fn assess(&self, from: i64, to: i64) -> Completeness {
            assess(
                &self.0,
                &CompletenessOptions {
                    from_micros: from,
                    to_micros: to,
                    max_silence_micros: 5 * MIN,
                    clusters: Vec::new(),
                    as_of_micros: to,
                },
            )
        }
    }

    fn events(cluster: &str, at: i64, rows: u64) -> ManifestFile {
        let partition = crate::layout::partition_of(cluster, at);
        ManifestFile {
            table: "events".into(),
            path: format!("events/{partition}/part-x-{at}.parquet"),
            sha256: "00".repeat(32),
            bytes: 1,
            rows,
            cluster: cluster.into(),
            min_time_micros: at,
            max_time_micros: at,
            rows_root: None,
        }
    }

    fn webhook(from: Option<u64>, through: u64) -> Option<SourceMark> {
        Some(SourceMark::Webhook {
            log_id: "wal-1".into(),
            through_seq: through,
            from_seq: from,
        })
    }

    fn status(c: &Completeness, cluster: &str, hour: i64) -> (HourStatus, Vec<String>) {
        let h = c
            .hours
            .iter()
            .find(|h| h.cluster == cluster && h.hour_index == (DAY0 / HOUR) + hour)
            .unwrap_or_else(|| panic!("no hour {hour} of {cluster}: {:#?}", c.hours));
        (h.status, h.reasons.clone())
    }

    /// A webhook receiver up from 00:00 to 04:00 beating every minute, with events in hours
    /// 1 and 2, then silent for 20 minutes in hour 3.
    fn live_receiver() -> Log {
        let mut log = Log(Vec::new());
        let mut seq = 0;
        for m in 0..240 {
            let at = DAY0 + m * MIN;
            if (200..220).contains(&m) {
                continue;
            }
            if m % 30 == 10 && (60..180).contains(&m) {
                let r = log.push("w1", at, webhook(Some(seq + 1), seq + 5));
                seq += 5;
                r.files.push(events("prod", at - MIN, 40));
            } else {
                log.beat("w1", at, "prod").source = webhook(None, seq);
            }
        }
        log
    }

    #[test]
    fn hours_with_events_are_ok_attested_silent_hours_quiet_and_a_silence_a_gap() {
        let log = live_receiver();
        let c = log.assess(DAY0, DAY0 + 4 * HOUR);
        assert_eq!(status(&c, "prod", 0), (HourStatus::Quiet, vec![]));
        assert_eq!(status(&c, "prod", 1), (HourStatus::Ok, vec![]));
        assert_eq!(status(&c, "prod", 2), (HourStatus::Ok, vec![]));
        let (s, why) = status(&c, "prod", 3);
        assert_eq!(s, HourStatus::Gap);
        assert_eq!(
            why,
            vec![
                "no heartbeat or commit from 2026-11-30T03:19:00Z to 2026-11-30T03:40:00Z (21 min)"
            ]
        );
        let summary = &c.clusters[0];
        assert_eq!(
            (summary.ok, summary.quiet, summary.gap, summary.events),
            (2, 1, 1, 160)
        );
        assert_eq!(summary.live_sources, vec!["webhook log wal-1"]);
        assert_eq!(c.gaps.len(), 1);
        assert!(c.holes.is_empty(), "{:?}", c.holes);
    }

    #[test]
    fn a_short_pause_is_tolerated_and_the_last_heartbeat_covers_the_tolerance() {
        let mut log = Log(Vec::new());
        for m in (0..=60).step_by(4) {
            log.beat("w1", DAY0 + m * MIN, "prod");
        }
        // Hour 0 is covered (4-minute spacing, last beat at 01:00 covers until 01:05).
        let c = log.assess(DAY0, DAY0 + HOUR);
        assert_eq!(status(&c, "prod", 0).0, HourStatus::Quiet);
        // Hour 1 is silent after 01:05.
        let c = log.assess(DAY0, DAY0 + 2 * HOUR);
        let (s, why) = status(&c, "prod", 1);
        assert_eq!(s, HourStatus::Gap);
        assert_eq!(
            why,
            vec!["no heartbeat or commit since 2026-11-30T01:00:00Z"]
        );
    }

    #[test]
    fn hours_before_any_live_source_are_gaps_unless_files_hold_their_events() {
        let mut log = Log(Vec::new());
        // A backfill of hour 0 from a file, run at 05:00; the receiver starts at 06:00.
        let r = log.push(
            "ingest",
            DAY0 + 5 * HOUR,
            Some(SourceMark::Files {
                inputs: vec![FileRange {
                    path: "old.log".into(),
                    from_byte: 0,
                    to_byte: 100,
                }],
            }),
        );
        r.files.push(events("prod", DAY0 + 10 * MIN, 7));
        for m in 0..60 {
            log.beat("w1", DAY0 + 6 * HOUR + m * MIN, "prod");
        }
        let c = log.assess(DAY0, DAY0 + 7 * HOUR);
        assert_eq!(status(&c, "prod", 0), (HourStatus::Ok, vec![]));
        let (s, why) = status(&c, "prod", 1);
        assert_eq!(s, HourStatus::Gap);
        assert_eq!(
            why,
            vec!["no live source yet: the first heartbeat or commit is at 2026-11-30T06:00:00Z"]
        );
        // The file run at 05:00 does not attest hour 5: only live sources do.
        assert_eq!(status(&c, "prod", 5).0, HourStatus::Gap);
        assert_eq!(status(&c, "prod", 6).0, HourStatus::Quiet);
    }

    #[test]
    fn a_cluster_with_only_files_is_a_gap_where_it_has_no_events() {
        let mut log = Log(Vec::new());
        log.push("ingest", DAY0, None)
            .files
            .push(events("dev", DAY0 + 2 * HOUR, 3));
        let c = log.assess(DAY0, DAY0 + 3 * HOUR);
        assert_eq!(status(&c, "dev", 2).0, HourStatus::Ok);
        let (s, why) = status(&c, "dev", 0);
        assert_eq!(s, HourStatus::Gap);
        assert!(
            why[0].starts_with("no live source attests this cluster"),
            "{why:?}"
        );
        assert_eq!(c.clusters[0].live_sources, Vec::<String>::new());
    }

    #[test]
    fn a_webhook_sequence_hole_is_named_in_the_hour_it_happened() {
        let mut log = live_receiver();
        // The next commit at 03:50 starts at 31 although 26-30 were never archived.
        let r = log.push("w1", DAY0 + 3 * HOUR + 50 * MIN, webhook(Some(31), 33));
        r.files.push(events("prod", DAY0 + 3 * HOUR + 49 * MIN, 3));
        let c = log.assess(DAY0, DAY0 + 4 * HOUR);
        assert_eq!(c.holes.len(), 1, "{:?}", c.holes);
        let hole = &c.holes[0];
        assert_eq!(hole.source, "webhook log wal-1");
        assert_eq!(hole.missing, "sequence numbers 21-30");
        assert_eq!(hole.clusters, vec!["prod"]);
        let (_, why) = status(&c, "prod", 3);
        assert!(
            why.iter()
                .any(|w| w.starts_with("webhook log wal-1: sequence numbers 21-30 never archived")),
            "{why:?}"
        );
    }

    #[test]
    fn kafka_offset_holes_and_file_byte_holes_are_found_and_overlaps_are_not() {
        let mut log = Log(Vec::new());
        let kafka = |from, through| {
            Some(SourceMark::Kafka {
                group: "g".into(),
                ranges: vec![KafkaRange {
                    topic: "audit".into(),
                    partition: 2,
                    from_offset: from,
                    through_offset: through,
                }],
            })
        };
        log.push("m1", DAY0, kafka(0, 99))
            .files
            .push(events("prod", DAY0, 100));
        log.push("m1", DAY0 + MIN, kafka(100, 199));
        log.push("m2", DAY0 + 2 * MIN, kafka(150, 249)); // overlap: not a hole
        log.push("m2", DAY0 + 3 * MIN, kafka(260, 300)); // 250-259 missing
        let files = |from, to| {
            Some(SourceMark::Files {
                inputs: vec![FileRange {
                    path: "a.log".into(),
                    from_byte: from,
                    to_byte: to,
                }],
            })
        };
        log.push("i", DAY0 + 4 * MIN, files(0, 10));
        log.push("i", DAY0 + 5 * MIN, files(10, 20));
        log.push("i", DAY0 + 6 * MIN, files(25, 30));
        let c = log.assess(DAY0, DAY0 + HOUR);
        let found: Vec<(&str, &str, u64, u64)> = c
            .holes
            .iter()
            .map(|h| {
                (
                    h.source.as_str(),
                    h.missing.as_str(),
                    h.after_record,
                    h.before_record,
                )
            })
            .collect();
        assert_eq!(
            found,
            vec![
                ("kafka g audit/2", "offsets 250-259", 3, 4),
                ("file a.log", "bytes 20-24", 6, 7),
            ]
        );
        // The Kafka group's clusters are every member's.
        assert_eq!(c.holes[0].clusters, vec!["prod"]);
    }

    #[test]
    fn apiserver_audit_errors_make_a_gap_and_counts_are_reconciled_across_a_reset() {
        let mut log = Log(Vec::new());
        let samples = [(0, 1_000, 0), (1, 1_400, 0), (2, 50, 0), (3, 90, 2)];
        for (m, events, errors) in samples {
            log.beat("w1", DAY0 + m * MIN, "prod").heartbeat = Some(Heartbeat {
                clusters: vec!["prod".into()],
                apiserver: Some(ApiserverAuditCounters {
                    cluster: "prod".into(),
                    audit_event_total: events,
                    audit_error_total: errors,
                }),
            });
        }
        log.push("w1", DAY0 + 90 * 1_000_000, webhook(Some(1), 1))
            .files
            .push(events("prod", DAY0 + 30 * 1_000_000, 12));
        let c = log.assess(DAY0, DAY0 + HOUR);
        let rec = &c.reconciliation[0];
        // 400, then a restart (1400 -> 50 counts 50), then 40.
        assert_eq!(rec.apiserver_events, 490);
        assert_eq!(rec.apiserver_errors, 2);
        assert_eq!(rec.heartbeats, 4);
        assert_eq!(rec.archived_events, 12);
        let (s, why) = status(&c, "prod", 0);
        assert_eq!(s, HourStatus::Gap);
        assert!(
            why.iter()
                .any(|w| w.starts_with("the apiserver failed to audit 2 event(s)")),
            "{why:?}"
        );
    }

    #[test]
    fn gap_hours_with_the_same_reason_merge_into_one_run() {
        let log = Log(Vec::new());
        let mut c = log.assess(DAY0, DAY0 + 3 * HOUR);
        assert!(c.clusters.is_empty(), "no cluster known, nothing to report");
        c.hours = (0..3)
            .map(|h| ClusterHour {
                cluster: "a".into(),
                hour: format_rfc3339_micros(DAY0 + h * HOUR),
                hour_index: DAY0 / HOUR + h,
                events: 0,
                status: HourStatus::Gap,
                reasons: vec![if h == 2 { "y" } else { "x" }.into()],
            })
            .collect();
        let runs = gap_runs(&c.hours);
        assert_eq!(runs.len(), 2);
        assert_eq!(
            (runs[0].hours, runs[0].to.as_str()),
            (2, "2026-11-30T02:00:00.000000Z")
        );
    }
}
