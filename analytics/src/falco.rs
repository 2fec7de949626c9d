//! Falco's labelled Kubernetes audit traces (`fixtures/falco-k8s-audit/`) as a second
//! scenario set: each test case names a trace file and whether Falco's rule fires on it;
//! `mapping.csv` maps Falco rules to ours by meaning, `differences.csv` lists the cases where
//! our pack stays quiet on purpose, with the reason.
//!
//! A positive case passes when our mapped rule fires; a negative case when none of the
//! mapped rules fire. Cases whose Falco rule has no counterpart in our pack are "not
//! covered"; negatives that are negative only because of a Falco allow-list override (a
//! trusted image, an allowed user) are reported as such (our lists are configured
//! differently).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use auditlake_schema::{DecoderOptions, EventDecoder, SourcePos};

use crate::engine::{Detector, DetectorOptions};
use crate::error::RuleError;
use crate::rule::RuleSet;

/// How one Falco test case went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FalcoOutcome {
    /// Positive, and our mapped rule fired.
    Detected,
    /// Negative, and none of the mapped rules fired.
    Quiet,
    /// Falco's rule has no counterpart in our pack.
    NotCovered,
    /// Positive, our rule stayed quiet on purpose (the reason).
    QuietByDesign(String),
    /// Negative only under a Falco allow-list override; the mapped rules we fired.
    OverrideOnly(Vec<String>),
    /// Positive missed, or negative fired (the mapped rules we fired).
    Failed(Vec<String>),
}

/// One Falco test case.
#[derive(Debug, Clone)]
pub struct FalcoCase {
    /// Falco's test case name.
    pub case: String,
    /// Falco's expectation (`Rule=count`, empty for a negative case).
    pub falco_expects: String,
    /// Our rule that means the same, `-` when none.
    pub ours: String,
    /// Whether Falco's rule fires on the trace.
    pub positive: bool,
    /// Every rule of ours that fired on the trace.
    pub fired: BTreeSet<String>,
    /// The verdict.
    pub outcome: FalcoOutcome,
}

/// All Falco cases.
#[derive(Debug, Clone, Default)]
pub struct FalcoReport {
    /// One per case, in file order.
    pub cases: Vec<FalcoCase>,
}

fn csv_rows(path: &Path) -> Result<Vec<String>, RuleError> {
    let text = std::fs::read_to_string(path).map_err(|source| RuleError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text.lines().skip(1).map(str::to_string).collect())
}

/// Runs every Falco case of `dir` (a copy of Falco's test data with `mapping.csv`,
/// `differences.csv`, `labels_derived.csv` and `trace_files/`) against `rules`.
pub fn run_falco(
    dir: &Path,
    rules: &RuleSet,
    options: &DetectorOptions,
) -> Result<FalcoReport, RuleError> {
    let mapping: BTreeMap<String, String> = csv_rows(&dir.join("mapping.csv"))?
        .iter()
        .filter_map(|l| {
            let mut f = l.splitn(3, ',');
            Some((f.next()?.to_string(), f.next()?.to_string()))
        })
        .collect();
    let covered: BTreeSet<&str> = mapping
        .values()
        .filter(|r| *r != "-")
        .map(String::as_str)
        .collect();
    let by_design: BTreeMap<String, String> = csv_rows(&dir.join("differences.csv"))?
        .iter()
        .filter_map(|l| l.split_once(','))
        .map(|(c, r)| (c.to_string(), r.to_string()))
        .collect();
    let mut report = FalcoReport::default();
    for line in csv_rows(&dir.join("labels_derived.csv"))? {
        let cols: Vec<&str> = line.split(',').collect();
        let [case, trace, detect, expected, _level, overrides, ..] = cols[..] else {
            continue;
        };
        let path = dir.join("trace_files").join(trace);
        let text = std::fs::read_to_string(&path).map_err(|source| RuleError::Read {
            path: path.clone(),
            source,
        })?;
        let mut detector = Detector::compile(rules, options)?;
        let mut decoder = EventDecoder::new(DecoderOptions::default());
        let mut quarantine = Vec::new();
        for (i, l) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let pos = SourcePos {
                cluster: "falco",
                source: trace,
                line: Some(i as u64 + 1),
                byte_offset: 0,
            };
            decoder.decode_document(l.as_bytes(), pos, &mut quarantine);
        }
        let mut fired = BTreeSet::new();
        if let Some(batch) = decoder.finish_batch() {
            for f in detector
                .evaluate(&batch)?
                .into_iter()
                .chain(detector.flush())
            {
                fired.insert(f.rule_id);
            }
        }
        let falco_rule = expected.split('=').next().unwrap_or("");
        let ours = mapping
            .get(falco_rule)
            .cloned()
            .unwrap_or_else(|| "-".into());
        let fired_covered: Vec<String> = fired
            .iter()
            .filter(|r| covered.contains(r.as_str()))
            .cloned()
            .collect();
        let positive = detect == "True";
        let outcome = if positive {
            if ours == "-" {
                FalcoOutcome::NotCovered
            } else if fired.contains(&ours) {
                FalcoOutcome::Detected
            } else if let Some(reason) = by_design.get(case) {
                FalcoOutcome::QuietByDesign(reason.clone())
            } else {
                FalcoOutcome::Failed(fired.iter().cloned().collect())
            }
        } else if fired_covered.is_empty() {
            FalcoOutcome::Quiet
        } else if overrides.contains("trust_") || overrides.contains("allow_") {
            FalcoOutcome::OverrideOnly(fired_covered)
        } else {
            FalcoOutcome::Failed(fired_covered)
        };
        report.cases.push(FalcoCase {
            case: case.to_string(),
            falco_expects: expected.to_string(),
            ours,
            positive,
            fired,
            outcome,
        });
    }
    Ok(report)
}

impl FalcoReport {
    /// Cases with `outcome`'s kind.
    pub fn count(&self, kind: fn(&FalcoOutcome) -> bool) -> usize {
        self.cases.iter().filter(|c| kind(&c.outcome)).count()
    }

    /// No case failed.
    pub fn passed(&self) -> bool {
        self.count(|o| matches!(o, FalcoOutcome::Failed(_))) == 0
    }

    /// Per rule of ours: (true positives, false positives, false negatives). A case quiet by
    /// design counts as a miss of its rule; a fired rule on an override-only negative as a
    /// false positive (both are listed as known misses with their reasons).
    pub fn per_rule(&self) -> BTreeMap<String, (usize, usize, usize)> {
        let mut m: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
        for c in &self.cases {
            match &c.outcome {
                FalcoOutcome::Detected => m.entry(c.ours.clone()).or_default().0 += 1,
                FalcoOutcome::QuietByDesign(_) => m.entry(c.ours.clone()).or_default().2 += 1,
                FalcoOutcome::Failed(_) if c.positive => {
                    m.entry(c.ours.clone()).or_default().2 += 1;
                }
                FalcoOutcome::Failed(fired) | FalcoOutcome::OverrideOnly(fired) => {
                    for r in fired {
                        m.entry(r.clone()).or_default().1 += 1;
                    }
                }
                FalcoOutcome::Quiet | FalcoOutcome::NotCovered => {}
            }
        }
        m
    }

    /// The known misses, one line each with the reason.
    pub fn known_misses(&self) -> Vec<String> {
        self.cases
            .iter()
            .filter_map(|c| match &c.outcome {
                FalcoOutcome::QuietByDesign(reason) => Some(format!(
                    "Falco case {}: {} stays quiet by design: {reason}",
                    c.case, c.ours
                )),
                FalcoOutcome::OverrideOnly(fired) => Some(format!(
                    "Falco case {}: negative only under a Falco allow-list override; we fire {} \
                     (set our lists to match)",
                    c.case,
                    fired.join(", ")
                )),
                FalcoOutcome::NotCovered => Some(format!(
                    "Falco case {}: {} has no counterpart in our pack (mapping.csv)",
                    c.case,
                    c.falco_expects.split('=').next().unwrap_or("")
                )),
                _ => None,
            })
            .collect()
    }

    /// The per-case table (Markdown) and the counts.
    pub fn table(&self) -> String {
        let mut s =
            String::from("| Falco case | Falco expects | ours | result |\n|---|---|---|---|\n");
        for c in &self.cases {
            let result = match &c.outcome {
                FalcoOutcome::Detected => "pass".to_string(),
                FalcoOutcome::Quiet => "pass (quiet)".to_string(),
                FalcoOutcome::NotCovered => "not covered (mapping.csv)".to_string(),
                FalcoOutcome::QuietByDesign(r) => format!("quiet by design: {r}"),
                FalcoOutcome::OverrideOnly(f) => {
                    format!("negative only under a Falco override; we fire {f:?}")
                }
                FalcoOutcome::Failed(f) => format!("FAIL: fired {f:?}"),
            };
            s.push_str(&format!(
                "| {} | {} | {} | {result} |\n",
                c.case, c.falco_expects, c.ours
            ));
        }
        s.push_str(&format!(
            "\n{} pass, {} fail, {} quiet by design, {} not covered by our pack, {} negative only \
             under a Falco allow-list\n",
            self.count(|o| matches!(o, FalcoOutcome::Detected | FalcoOutcome::Quiet)),
            self.count(|o| matches!(o, FalcoOutcome::Failed(_))),
            self.count(|o| matches!(o, FalcoOutcome::QuietByDesign(_))),
            self.count(|o| matches!(o, FalcoOutcome::NotCovered)),
            self.count(|o| matches!(o, FalcoOutcome::OverrideOnly(_))),
        ));
        s
    }
}
