//! A stateful detector: a burst of 403 answers to one principal (permission enumeration).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crate::bounded_state::{MAX_BURST_PRINCIPALS, evict_oldest};

use auditlake_schema::timestamp::format_rfc3339_micros;

use crate::event_columns::EventColumns;
use crate::finding::{Finding, ObjectRef, Outcome};
use crate::stateful_rules::BURST;

/// Rule id of the 403 burst detector.
pub const BURST_RULE_ID: &str = crate::stateful_rules::BURST.id;

struct Recent {
    denials: VecDeque<(i64, String)>,
    fired_until: i64,
}

/// Counts 403 answers per principal in a sliding window of event time.
///
/// At most [`MAX_BURST_PRINCIPALS`] principals are tracked; beyond, the least recently
/// denied are forgotten. Forgetting principals still inside the window could hide a real
/// burst behind a flood of made-up ones, so that raises a finding of its own (fail closed).
pub struct ForbiddenBurst {
    threshold: usize,
    window_micros: i64,
    principals: HashMap<String, Recent>,
    evicted: Arc<AtomicU64>,
    /// No capacity finding before this time (one per window).
    overflow_quiet_until: i64,
}

impl ForbiddenBurst {
    /// Fires when one principal gets `threshold` 403s within `window_seconds`.
    pub fn new(threshold: usize, window_seconds: u64) -> Self {
        Self {
            threshold: threshold.max(1),
            window_micros: (window_seconds.max(1) as i64).saturating_mul(1_000_000),
            principals: HashMap::new(),
            evicted: Arc::default(),
            overflow_quiet_until: i64::MIN,
        }
    }

    /// Principals forgotten because the cap was reached.
    pub fn evictions(&self) -> Arc<AtomicU64> {
        self.evicted.clone()
    }

    /// Feeds a batch; returns a finding per principal whose denials reached the threshold
    /// (at most one per principal per window).
    pub fn observe(&mut self, cols: &EventColumns<'_>, rows: usize) -> Vec<Finding> {
        let mut out = Vec::new();
        for row in 0..rows {
            if cols.stage(row) != Some("ResponseComplete") || cols.code(row) != Some(403) {
                continue;
            }
            let Some(principal) = cols.principal(row) else {
                continue;
            };
            let at = cols.stage_at(row);
            let recent = self
                .principals
                .entry(principal.clone())
                .or_insert_with(|| Recent {
                    denials: VecDeque::new(),
                    fired_until: i64::MIN,
                });
            recent.denials.push_back((at, cols.audit_id(row)));
            while recent
                .denials
                .front()
                .is_some_and(|(t, _)| *t <= at - self.window_micros)
            {
                recent.denials.pop_front();
            }
            while recent.denials.len() > self.threshold {
                recent.denials.pop_front();
            }
            if recent.denials.len() >= self.threshold && at >= recent.fired_until {
                recent.fired_until = at + self.window_micros;
                let first = recent.denials.front().map_or(at, |d| d.0);
                out.push(Finding {
                    rule_id: BURST.id.into(),
                    severity: BURST.severity,
                    title: BURST.title.into(),
                    outcome: Outcome::Observed,
                    cluster: cols.cluster(row),
                    time: format_rfc3339_micros(first),
                    last_time: format_rfc3339_micros(at),
                    principal: Some(principal),
                    impersonated: cols.impersonated(row),
                    source_ip: cols.source_ip(row),
                    verb: None,
                    object: ObjectRef::default(),
                    objects: Vec::new(),
                    details: Some(format!(
                        "{} requests answered 403 within {} s",
                        recent.denials.len(),
                        self.window_micros / 1_000_000
                    )),
                    response_code: Some(403),
                    evidence: recent.denials.iter().map(|d| d.1.clone()).collect(),
                    count: recent.denials.len() as u64,
                    mitre: BURST.mitre_list(),
                    remediation: "Find out what the principal was trying to reach (the evidence \
                        requests); a workload probing its permissions after a compromise looks \
                        like this. Rotate its credentials if the access pattern is not expected."
                        .into(),
                    time_micros: first,
                });
            }
        }
        if self.principals.len() > MAX_BURST_PRINCIPALS {
            let newest = self
                .principals
                .values()
                .filter_map(|r| r.denials.back().map(|d| d.0))
                .max()
                .unwrap_or(0);
            let horizon = newest - self.window_micros;
            let last = |r: &Recent| r.denials.back().map_or(i64::MIN, |d| d.0);
            let gone = evict_oldest(
                &mut self.principals,
                MAX_BURST_PRINCIPALS,
                &self.evicted,
                last,
            );
            let in_window = gone.iter().filter(|(_, r)| last(r) > horizon).count();
            if in_window > 0 && newest >= self.overflow_quiet_until {
                self.overflow_quiet_until = newest + self.window_micros;
                out.push(self.overflow_finding(in_window, newest));
            }
        }
        out
    }

    /// The finding raised when principals still inside the window had to be forgotten.
    fn overflow_finding(&self, forgotten: usize, at: i64) -> Finding {
        Finding {
            rule_id: BURST.id.into(),
            severity: BURST.severity,
            title: BURST.title.into(),
            outcome: Outcome::Observed,
            cluster: String::new(),
            time: format_rfc3339_micros(at),
            last_time: format_rfc3339_micros(at),
            principal: None,
            impersonated: None,
            source_ip: None,
            verb: None,
            object: ObjectRef::default(),
            objects: Vec::new(),
            details: Some(format!(
                "more than {MAX_BURST_PRINCIPALS} distinct principals were denied within {} s: \
                 {forgotten} still inside the window were forgotten, so a burst among them may \
                 go unreported (a flood of made-up identities, or a cluster-wide outage of \
                 permissions)",
                self.window_micros / 1_000_000
            )),
            response_code: Some(403),
            evidence: Vec::new(),
            count: forgotten as u64,
            mitre: BURST.mitre_list(),
            remediation: "Look at who was denied in this window (`auditlake query` on \
                response_code = 403): many distinct identities at once is itself suspicious."
                .into(),
            time_micros: at,
        }
    }
}
