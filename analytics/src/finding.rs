//! Findings: the one JSON shape every sink gets, and the folding of repeats.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crate::bounded_state::{MAX_FOLD_WINDOWS, evict_oldest};

use serde::{Deserialize, Serialize};

use auditlake_schema::timestamp::format_rfc3339_micros;

use crate::rule::Severity;

fn summary(o: Open) -> Finding {
    let mut f = o.finding;
    f.last_time = format_rfc3339_micros(o.last_micros);
    f
}

/// The Kubernetes object a finding is about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ObjectRef {
    /// API group (`""` for core).
    pub api_group: Option<String>,
    /// Resource (`clusterrolebindings`).
    pub resource: Option<String>,
    /// Subresource (`exec`).
    pub subresource: Option<String>,
    /// Namespace, `None` when cluster-scoped.
    pub namespace: Option<String>,
    /// Object name.
    pub name: Option<String>,
}

impl ObjectRef {
    /// `resource[/subresource] [namespace/]name`, for folding keys and one-line output.
    pub fn display(&self) -> String {
        let mut s = self.resource.clone().unwrap_or_default();
        if let Some(sub) = &self.subresource {
            s.push('/');
            s.push_str(sub);
        }
        s.push(' ');
        if let Some(ns) = &self.namespace {
            s.push_str(ns);
            s.push('/');
        }
        s.push_str(self.name.as_deref().unwrap_or("*"));
        s
    }
}

/// Whether the matched request was carried out or refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// 2xx (or 101 for an exec/attach upgrade): it happened.
    Done,
    /// 401/403: it was attempted and refused.
    Denied,
    /// The rule judged the event itself (scope `any`, or a stateful detector).
    Observed,
}

impl Outcome {
    /// The lowercase name used in JSON and in the `findings` table.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Denied => "denied",
            Self::Observed => "observed",
        }
    }
}

/// One detection, with the evidence to act on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Rule that fired.
    pub rule_id: String,
    /// Severity (lowered for a denied attempt).
    pub severity: Severity,
    /// The rule's title.
    pub title: String,
    /// Done, denied or observed.
    pub outcome: Outcome,
    /// Cluster of the events.
    pub cluster: String,
    /// Stage time of the first evidence event (RFC 3339, UTC).
    pub time: String,
    /// Stage time of the last folded evidence event.
    pub last_time: String,
    /// Who did it (`user.username`).
    pub principal: Option<String>,
    /// Who they acted as, when impersonating.
    pub impersonated: Option<String>,
    /// The last `sourceIPs` entry (the only one the apiserver vouches for).
    pub source_ip: Option<String>,
    /// The request's verb.
    pub verb: Option<String>,
    /// The object acted on (the first one, for a finding folded by principal).
    pub object: ObjectRef,
    /// Every object the finding's requests touched (`resource[/sub] [namespace/]name`), up to
    /// [`MAX_EVIDENCE`]: one, unless the rule folds by principal.
    pub objects: Vec<String>,
    /// The rule's `details` expression, e.g. the role and subjects of a binding.
    pub details: Option<String>,
    /// Response code of the first evidence event.
    pub response_code: Option<i32>,
    /// `auditID`s of the evidence (at most [`MAX_EVIDENCE`]).
    pub evidence: Vec<String>,
    /// Matching requests folded into this finding.
    pub count: u64,
    /// MITRE ATT&CK technique ids.
    pub mitre: Vec<String>,
    /// What to do.
    pub remediation: String,
    /// Event time of the first evidence in microseconds (for ordering and windows).
    #[serde(skip)]
    pub time_micros: i64,
}

/// Most evidence ids kept on one folded finding.
pub const MAX_EVIDENCE: usize = 50;

struct Open {
    finding: Finding,
    window_end: i64,
    last_micros: i64,
}

/// Folds findings with the same rule, outcome, principal and object within a window of
/// event time: the first is emitted at once (an alert must not wait), repeats are counted,
/// and when the window closes a summary with the count is emitted if there were repeats.
///
/// At most [`MAX_FOLD_WINDOWS`] windows are open: beyond, the ones ending first are closed
/// early (their summaries emitted), so a flood of distinct keys costs bounded memory.
pub struct Folder {
    window_micros: i64,
    open: HashMap<String, Open>,
    /// No open window ends before this: `expire` has nothing to do until then.
    next_expiry: i64,
    evicted: Arc<AtomicU64>,
}

/// The folding key of a finding: rule, outcome, principal and object.
pub fn fold_key(rule_id: &str, outcome: Outcome, principal: Option<&str>, object: &str) -> String {
    let mut key = String::with_capacity(rule_id.len() + object.len() + 48);
    fold_key_prefix(&mut key, rule_id, outcome, principal);
    key.push_str(object);
    key
}

/// Writes the part of a folding key before the object into `key` (cleared first): the
/// engine appends the object itself, or nothing for rules folded by principal.
pub(crate) fn fold_key_prefix(
    key: &mut String,
    rule_id: &str,
    outcome: Outcome,
    principal: Option<&str>,
) {
    key.clear();
    key.push_str(rule_id);
    key.push('\0');
    key.push_str(match outcome {
        Outcome::Done => "d",
        Outcome::Denied => "x",
        Outcome::Observed => "o",
    });
    key.push('\0');
    key.push_str(principal.unwrap_or(""));
    key.push('\0');
}

impl Folder {
    /// A folder with a window of `window_seconds` (0 = never fold).
    pub fn new(window_seconds: u64) -> Self {
        Self {
            window_micros: (window_seconds as i64).saturating_mul(1_000_000),
            open: HashMap::new(),
            next_expiry: i64::MAX,
            evicted: Arc::default(),
        }
    }

    /// Windows closed early because the cap was reached (counted from creation).
    pub fn evictions(&self) -> Arc<AtomicU64> {
        self.evicted.clone()
    }

    /// Counts a match into the open window of `key` if there is one covering `time_micros`;
    /// `true` when absorbed (a repeat, or the same event at another stage), so the caller
    /// need not build the finding at all.
    pub fn try_fold(
        &mut self,
        key: &str,
        time_micros: i64,
        audit_id: &str,
        object: Option<&str>,
    ) -> bool {
        if self.window_micros == 0 {
            return false;
        }
        let Some(open) = self.open.get_mut(key) else {
            return false;
        };
        if time_micros >= open.window_end {
            return false;
        }
        let acc = &mut open.finding;
        if acc.evidence.iter().any(|id| id == audit_id) {
            return true;
        }
        acc.count += 1;
        if acc.evidence.len() < MAX_EVIDENCE {
            acc.evidence.push(audit_id.to_string());
        }
        if let Some(o) = object
            && acc.objects.len() < MAX_EVIDENCE
            && !acc.objects.iter().any(|x| x == o)
        {
            acc.objects.push(o.to_string());
        }
        open.last_micros = open.last_micros.max(time_micros);
        true
    }

    /// Takes a new finding; returns what to emit now: nothing if it was folded, else the
    /// finding itself, preceded by the summary of the expired window it replaces if that one
    /// folded repeats. The same evidence event seen twice (several stages) is counted once.
    pub fn push(&mut self, f: Finding) -> Vec<Finding> {
        if self.window_micros == 0 {
            return vec![f];
        }
        let key = fold_key(
            &f.rule_id,
            f.outcome,
            f.principal.as_deref(),
            &f.object.display(),
        );
        if f.evidence.len() == 1
            && self.try_fold(
                &key,
                f.time_micros,
                &f.evidence[0],
                f.objects.first().map(String::as_str),
            )
        {
            return Vec::new();
        }
        self.open_window(key, f)
    }

    /// Opens a window for `f` (not folded) under `key`; returns what to emit.
    pub fn open_window(&mut self, key: String, f: Finding) -> Vec<Finding> {
        if self.window_micros == 0 {
            return vec![f];
        }
        let window_end = f.time_micros.saturating_add(self.window_micros);
        self.next_expiry = self.next_expiry.min(window_end);
        let mut out = Vec::new();
        if let Some(closed) = self.open.insert(
            key,
            Open {
                finding: f.clone(),
                window_end,
                last_micros: f.time_micros,
            },
        ) && closed.finding.count > 1
        {
            out.push(summary(closed));
        }
        out.push(f);
        for (_, early) in evict_oldest(&mut self.open, MAX_FOLD_WINDOWS, &self.evicted, |o| {
            o.window_end
        }) {
            if early.finding.count > 1 {
                out.push(summary(early));
            }
        }
        out
    }

    /// Closes windows that ended before `now_micros` (event time); returns summaries of
    /// the ones that folded repeats.
    pub fn expire(&mut self, now_micros: i64) -> Vec<Finding> {
        if now_micros < self.next_expiry {
            return Vec::new();
        }
        self.next_expiry = i64::MAX;
        let next = &mut self.next_expiry;
        let mut closed = Vec::new();
        self.open.retain(|key, o| {
            if o.window_end <= now_micros {
                if o.finding.count > 1 {
                    let mut f = o.finding.clone();
                    f.last_time = format_rfc3339_micros(o.last_micros);
                    closed.push((key.clone(), f));
                }
                false
            } else {
                *next = (*next).min(o.window_end);
                true
            }
        });
        // By time, then by key (unique among open windows): summaries of the same time came
        // out in the map's iteration order, so the findings file of the same input differed
        // from one build to another.
        closed.sort_by(|(ka, a), (kb, b)| (a.time_micros, ka).cmp(&(b.time_micros, kb)));
        closed.into_iter().map(|(_, f)| f).collect()
    }

    /// Closes every window (end of input or shutdown).
    pub fn flush(&mut self) -> Vec<Finding> {
        self.expire(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn finding(id: &str, secs: i64) -> Finding {
        Finding {
            rule_id: "R".into(),
            severity: Severity::High,
            title: "t".into(),
            outcome: Outcome::Done,
            cluster: "c".into(),
            time: format!("t{secs:04}"),
            last_time: format!("t{secs:04}"),
            principal: Some("mallory".into()),
            impersonated: None,
            source_ip: None,
            verb: Some("get".into()),
            object: ObjectRef::default(),
            objects: Vec::new(),
            details: None,
            response_code: Some(200),
            evidence: vec![id.into()],
            count: 1,
            mitre: vec![],
            remediation: String::new(),
            time_micros: secs * 1_000_000,
        }
    }

    #[test]
    fn repeats_fold_into_one_summary_per_window_and_a_stage_twice_counts_once() {
        let mut f = Folder::new(60);
        assert_eq!(f.push(finding("a", 0)).len(), 1, "the first alerts at once");
        assert!(
            f.push(finding("a", 1)).is_empty(),
            "same event, another stage"
        );
        assert!(f.push(finding("b", 10)).is_empty());
        assert!(f.push(finding("c", 59)).is_empty());
        // 61 s: the window closed; its summary comes before the new window's first finding.
        let out = f.push(finding("d", 61));
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].count, out[0].evidence.len()), (3, 3));
        assert_eq!(out[0].last_time, "1970-01-01T00:00:59.000000Z");
        assert_eq!(out[1].evidence, ["d"]);
        assert!(
            f.flush().is_empty(),
            "a window without repeats needs no summary"
        );
    }

    #[test]
    fn summaries_of_the_same_time_come_out_in_one_order_whatever_order_they_came_in() {
        let rules: Vec<String> = (0..40).map(|i| format!("R{i:02}")).collect();
        let summaries = |order: &mut dyn Iterator<Item = &String>| {
            let mut folder = Folder::new(60);
            for rule in order {
                for (id, secs) in [("a", 5), ("b", 6)] {
                    folder.push(Finding {
                        rule_id: rule.clone(),
                        ..finding(id, secs)
                    });
                }
            }
            folder
                .flush()
                .into_iter()
                .map(|f| (f.time_micros, f.rule_id, f.count))
                .collect::<Vec<_>>()
        };
        let forward = summaries(&mut rules.iter());
        let backward = summaries(&mut rules.iter().rev());
        let expected: Vec<_> = rules.iter().map(|r| (5_000_000, r.clone(), 2)).collect();
        assert_eq!(forward, expected);
        assert_eq!(backward, expected);
    }
}
