//! Labelled scenarios: short audit-event sequences (attacks and benign look-alikes) with the
//! findings they must produce, run through the real decoder and engine. `auditlake rules test`
//! and the test suite run them; the report gives pass/fail per scenario and precision/recall
//! per rule.
//!
//! A scenario file (YAML):
//! ```yaml
//! description: a stranger binds cluster-admin
//! label: attack            # or benign
//! lists: {rbac_admins: [system:serviceaccount:argocd:argocd-application-controller]}
//! defaults: {user: {username: mallory}}   # merged into every event
//! events:                  # audit events; missing fields get defaults (see `complete_event`)
//!   - verb: create
//!     objectRef: {resource: clusterrolebindings, name: pwn}
//! expect:                  # exactly these (rule, outcome) pairs must fire
//!   - {rule: K8S-RBAC-001}                   # outcome defaults to done
//!   - {rule: K8S-RBAC-005, outcome: done, count: 1}
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use auditlake_schema::{DecoderOptions, EventDecoder, SourcePos};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::engine::{Detector, DetectorOptions};
use crate::error::RuleError;
use crate::falco::FalcoReport;
use crate::finding::{Finding, Outcome};
use crate::null_check::NullCheck;
use crate::rbac_state::RbacBaseline;
use crate::rule::RuleSet;

/// Attack or benign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    /// Must produce the expected findings.
    Attack,
    /// Looks like an attack but is not; usually expects nothing.
    Benign,
}

/// One expected finding.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Rule id.
    pub rule: String,
    /// Outcome (default `done`).
    #[serde(default = "done")]
    pub outcome: Outcome,
    /// Exact number of findings emitted for this rule and outcome, when given.
    #[serde(default)]
    pub count: Option<usize>,
}

fn done() -> Outcome {
    Outcome::Done
}

/// A scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// What it shows.
    pub description: String,
    /// Attack or benign.
    pub label: Label,
    /// List overrides for this scenario (e.g. the GitOps controller allowed to change RBAC).
    #[serde(default)]
    pub lists: BTreeMap<String, Vec<String>>,
    /// Fields merged into every event before its own.
    #[serde(default)]
    pub defaults: Value,
    /// RBAC manifests the drift detector compares with (none: no drift findings).
    #[serde(default)]
    pub rbac_baseline: Vec<Value>,
    /// The events, in order.
    pub events: Vec<Value>,
    /// The findings that must fire (and no others).
    #[serde(default)]
    pub expect: Vec<Expect>,
}

/// What one scenario did.
#[derive(Debug, Clone)]
pub struct ScenarioResult {
    /// File name without extension.
    pub name: String,
    /// Attack or benign.
    pub label: Label,
    /// Expected (rule, outcome) pairs.
    pub expected: BTreeSet<(String, Outcome)>,
    /// Fired (rule, outcome) pairs.
    pub fired: BTreeSet<(String, Outcome)>,
    /// Count mismatches: (rule, outcome, expected, got).
    pub count_errors: Vec<(String, Outcome, usize, usize)>,
    /// Every finding emitted.
    pub findings: Vec<Finding>,
    /// Rule conjuncts that were NULL on an event where the rest of the rule held (see
    /// [`NullCheck`]), one line each.
    pub null_warnings: Vec<String>,
}

impl ScenarioResult {
    /// Fired exactly what was expected, with the expected counts.
    pub fn passed(&self) -> bool {
        self.expected == self.fired && self.count_errors.is_empty()
    }
}

/// Results of a directory of scenarios.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// One per scenario, in file name order.
    pub results: Vec<ScenarioResult>,
    /// Enabled rules that no scenario expects to fire.
    pub uncovered_rules: Vec<String>,
    /// Falco's labelled traces run too, when given.
    pub falco: Option<FalcoReport>,
}

fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// Fills what a scenario leaves out: kind and apiVersion, level `RequestResponse`, an auditID,
/// stage `ResponseComplete`, timestamps one second apart from 2026-11-01T10:00:00Z, source IP
/// `10.0.0.1`, response code 200, and user `scenario-user`.
pub fn complete_event(index: usize, defaults: &Value, event: &Value) -> Value {
    let t = format!(
        "2026-11-01T10:{:02}:{:02}.000000Z",
        (index / 60) % 60,
        index % 60
    );
    let mut e = json!({
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "RequestResponse",
        "auditID": format!("scenario-{index:04}"),
        "stage": "ResponseComplete",
        "requestURI": "/",
        "verb": "get",
        "user": {"username": "scenario-user", "groups": ["system:authenticated"]},
        "sourceIPs": ["10.0.0.1"],
        "userAgent": "scenario",
        "responseStatus": {"metadata": {}, "code": 200},
        "requestReceivedTimestamp": t,
        "stageTimestamp": t,
    });
    for layer in [defaults, event] {
        // An absent `defaults` is null: nothing to merge (a null *field* does clear it).
        if layer.is_object() {
            merge(&mut e, layer);
        }
    }
    e
}

/// The scenario files (`*.yaml`, `*.yml`) of `dir`, sorted by name.
pub fn scenario_files(dir: &Path) -> Result<Vec<PathBuf>, RuleError> {
    let err = |source| RuleError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    Ok(files)
}

impl Scenario {
    /// Reads a scenario file.
    pub fn load(path: &Path) -> Result<Self, RuleError> {
        let text = std::fs::read_to_string(path).map_err(|source| RuleError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        serde_yaml::from_str(&text).map_err(|e| RuleError::Parse {
            origin: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Runs the scenario against `rules` (with its list overrides) through the decoder and
    /// the engine; `name` labels the result.
    pub fn run(
        &self,
        name: &str,
        rules: &RuleSet,
        options: &DetectorOptions,
    ) -> Result<ScenarioResult, RuleError> {
        self.run_inner(name, rules, options, &|_| {}, true)
    }

    /// [`Scenario::run`] with `mutate` applied to every completed event first (to show a
    /// rule still fires when a field is absent).
    pub fn run_mutated(
        &self,
        name: &str,
        rules: &RuleSet,
        options: &DetectorOptions,
        mutate: &dyn Fn(&mut Value),
    ) -> Result<ScenarioResult, RuleError> {
        self.run_inner(name, rules, options, mutate, false)
    }

    fn run_inner(
        &self,
        name: &str,
        rules: &RuleSet,
        options: &DetectorOptions,
        mutate: &dyn Fn(&mut Value),
        check_nulls: bool,
    ) -> Result<ScenarioResult, RuleError> {
        let mut rules = rules.clone();
        for (list, items) in &self.lists {
            rules.set_list(list, items.clone());
        }
        let mut options = options.clone();
        if !self.rbac_baseline.is_empty() {
            let mut baseline = RbacBaseline::default();
            for m in &self.rbac_baseline {
                baseline.add(m).map_err(|message| RuleError::Evaluate {
                    rule: format!("(scenario {name}: rbac_baseline)"),
                    message,
                })?;
            }
            options.rbac_baseline = Some(baseline);
        }
        let mut detector = Detector::compile(&rules, &options)?;
        let items: Vec<Value> = self
            .events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let mut e = complete_event(i, &self.defaults, e);
                mutate(&mut e);
                e
            })
            .collect();
        let body = json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": items});
        let bytes = serde_json::to_vec(&body).map_err(|e| RuleError::Scenario {
            scenario: name.to_string(),
            message: e.to_string(),
        })?;
        let mut decoder = EventDecoder::new(DecoderOptions::default());
        let mut quarantine = Vec::new();
        let pos = SourcePos {
            cluster: "scenario",
            source: name,
            line: None,
            byte_offset: 0,
        };
        decoder.decode_document(&bytes, pos, &mut quarantine);
        if let Some(q) = quarantine.first() {
            return Err(RuleError::Scenario {
                scenario: name.to_string(),
                message: format!("an event does not decode: {}", q.reason),
            });
        }
        let mut findings = Vec::new();
        let mut null_warnings = Vec::new();
        if let Some(batch) = decoder.finish_batch() {
            findings.extend(detector.evaluate(&batch)?);
            if check_nulls {
                for w in NullCheck::compile(&rules)?.check(&batch)? {
                    let id = items[w.row]["auditID"].as_str().unwrap_or("?");
                    null_warnings.push(format!(
                        "{}: `{}` is NULL on event {} (auditID {id}) of scenario {name}, so the \
                         rule cannot fire there (a field the event lacks?)",
                        w.rule,
                        w.conjunct,
                        w.row + 1
                    ));
                }
            }
        }
        findings.extend(detector.flush());
        let fired: BTreeSet<_> = findings
            .iter()
            .map(|f| (f.rule_id.clone(), f.outcome))
            .collect();
        let expected: BTreeSet<_> = self
            .expect
            .iter()
            .map(|e| (e.rule.clone(), e.outcome))
            .collect();
        let count_errors = self
            .expect
            .iter()
            .filter_map(|e| {
                let want = e.count?;
                let got = findings
                    .iter()
                    .filter(|f| f.rule_id == e.rule && f.outcome == e.outcome)
                    .count();
                (got != want).then(|| (e.rule.clone(), e.outcome, want, got))
            })
            .collect();
        Ok(ScenarioResult {
            name: name.to_string(),
            label: self.label,
            expected,
            fired,
            count_errors,
            findings,
            null_warnings,
        })
    }
}

/// Runs every scenario file in `dir` against `rules`.
pub fn run_scenarios(
    dir: &Path,
    rules: &RuleSet,
    options: &DetectorOptions,
) -> Result<Report, RuleError> {
    let mut report = Report::default();
    for file in scenario_files(dir)? {
        let name = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let scenario = Scenario::load(&file)?;
        report.results.push(scenario.run(&name, rules, options)?);
    }
    let covered: BTreeSet<&str> = report
        .results
        .iter()
        .flat_map(|r| r.expected.iter().map(|(id, _)| id.as_str()))
        .collect();
    report.falco = None;
    report.uncovered_rules = rules
        .enabled()
        .map(|r| r.rule.id.clone())
        .filter(|id| !covered.contains(id.as_str()))
        .collect();
    Ok(report)
}

fn pairs(set: &BTreeSet<(String, Outcome)>) -> String {
    if set.is_empty() {
        return "-".into();
    }
    set.iter()
        .map(|(id, o)| match o {
            Outcome::Done => id.clone(),
            Outcome::Denied => format!("{id}(denied)"),
            Outcome::Observed => format!("{id}(observed)"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl Report {
    /// Every scenario passed (and every Falco case, when run).
    pub fn passed(&self) -> bool {
        self.results.iter().all(ScenarioResult::passed)
            && self.falco.as_ref().is_none_or(FalcoReport::passed)
    }

    /// Per rule: (true positives, false positives, false negatives) over all scenarios.
    pub fn per_rule(&self) -> BTreeMap<String, (usize, usize, usize)> {
        let mut m: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
        for r in &self.results {
            for key in r.expected.union(&r.fired) {
                let e = m.entry(key.0.clone()).or_default();
                match (r.expected.contains(key), r.fired.contains(key)) {
                    (true, true) => e.0 += 1,
                    (false, true) => e.1 += 1,
                    (true, false) => e.2 += 1,
                    (false, false) => {}
                }
            }
        }
        m
    }

    /// Per rule: (TP, FP, FN) over the scenarios and (TP, FP, FN) over Falco's traces.
    pub fn per_rule_by_source(&self) -> BTreeMap<String, [(usize, usize, usize); 2]> {
        let mut m: BTreeMap<String, [(usize, usize, usize); 2]> = BTreeMap::new();
        for (rule, counts) in self.per_rule() {
            m.entry(rule).or_default()[0] = counts;
        }
        if let Some(f) = &self.falco {
            for (rule, counts) in f.per_rule() {
                m.entry(rule).or_default()[1] = counts;
            }
        }
        m
    }

    /// The pass/fail table and the precision/recall table, as Markdown.
    pub fn table(&self) -> String {
        let mut s = String::from(
            "| scenario | label | expected | fired | result |\n|---|---|---|---|---|\n",
        );
        for r in &self.results {
            let mut result = if r.passed() {
                "pass".to_string()
            } else {
                "FAIL".to_string()
            };
            for (id, _, want, got) in &r.count_errors {
                let _ = write!(result, " ({id}: {got} findings, expected {want})");
            }
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                r.name,
                if r.label == Label::Attack {
                    "attack"
                } else {
                    "benign"
                },
                pairs(&r.expected),
                pairs(&r.fired),
                result
            );
        }
        s.push_str(
            "\n| rule | scenarios TP/FP/FN | Falco TP/FP/FN | precision | recall |\n|---|---|---|---|---|\n",
        );
        let (mut tp_all, mut fp_all, mut fn_all) = (0, 0, 0);
        for (rule, [sc, fa]) in self.per_rule_by_source() {
            let (tp, fp, fneg) = (sc.0 + fa.0, sc.1 + fa.1, sc.2 + fa.2);
            tp_all += tp;
            fp_all += fp;
            fn_all += fneg;
            let falco = if self.falco.is_some() {
                format!("{}/{}/{}", fa.0, fa.1, fa.2)
            } else {
                "-".into()
            };
            let _ = writeln!(
                s,
                "| {rule} | {}/{}/{} | {falco} | {} | {} |",
                sc.0,
                sc.1,
                sc.2,
                ratio(tp, tp + fp),
                ratio(tp, tp + fneg)
            );
        }
        let _ = writeln!(
            s,
            "| **all** | | | {} | {} |",
            ratio(tp_all, tp_all + fp_all),
            ratio(tp_all, tp_all + fn_all)
        );
        let passed = self.results.iter().filter(|r| r.passed()).count();
        let _ = writeln!(s, "\n{passed} of {} scenarios passed.", self.results.len());
        if !self.uncovered_rules.is_empty() {
            let _ = writeln!(
                s,
                "Rules no scenario expects to fire: {}",
                self.uncovered_rules.join(", ")
            );
        }
        if let Some(f) = &self.falco {
            s.push('\n');
            s.push_str(&f.table());
            let misses = f.known_misses();
            if !misses.is_empty() {
                let _ = writeln!(s, "\nKnown misses and differences ({}):", misses.len());
                for m in misses {
                    let _ = writeln!(s, "- {m}");
                }
            }
        }
        let warnings: Vec<&String> = self.results.iter().flat_map(|r| &r.null_warnings).collect();
        if !warnings.is_empty() {
            let _ = writeln!(s, "\nWarnings ({}):", warnings.len());
            for w in warnings {
                let _ = writeln!(s, "- {w}");
            }
        }
        s
    }
}

fn ratio(a: usize, b: usize) -> String {
    if b == 0 {
        "-".into()
    } else {
        format!("{:.2}", a as f64 / b as f64)
    }
}
