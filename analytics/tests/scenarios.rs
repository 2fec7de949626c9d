//! The built-in rule pack against every labelled scenario in `fixtures/scenarios/`: each
//! must fire exactly its expected findings, and every built-in rule must be expected somewhere.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::PathBuf;

use auditlake_analytics::{DetectorOptions, RuleSet, run_scenarios};

/// The findings of the built-in pack on one scenario of `fixtures/scenarios/`.
fn run_builtin(file: &str) -> auditlake_analytics::ScenarioResult {
    let scenario = auditlake_analytics::Scenario::load(&fixtures("scenarios").join(file)).unwrap();
    scenario
        .run(
            file,
            &RuleSet::builtin().unwrap(),
            &DetectorOptions::default(),
        )
        .unwrap()
}

/// `fixtures/<sub>` of the checkout under test, from the directory cargo runs the test with
/// (not a compiled-in path, which goes stale when checkouts share a target directory).
fn fixtures(sub: &str) -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo test"))
        .join("../fixtures")
        .join(sub)
}

#[test]
fn every_scenario_fires_exactly_its_expected_findings() {
    let dir = fixtures("scenarios");
    let rules = RuleSet::builtin().unwrap();
    let report = run_scenarios(&dir, &rules, &DetectorOptions::default()).unwrap();
    let table = report.table();
    println!("{table}");
    assert!(report.results.len() >= 30, "{table}");
    assert!(report.passed(), "{table}");
    assert!(report.uncovered_rules.is_empty(), "{table}");
}

#[test]
fn an_unauthorized_grant_names_granter_role_subjects_scope_and_evidence() {
    let result = run_builtin("rbac-crb-cluster-admin-by-stranger.yaml");
    let grant = result
        .findings
        .iter()
        .find(|f| f.rule_id == "K8S-RBAC-005")
        .unwrap();
    assert_eq!(grant.principal.as_deref(), Some("mallory"));
    assert_eq!(
        grant.details.as_deref(),
        Some("ClusterRole/cluster-admin -> User:mallory scope=cluster")
    );
    assert_eq!(
        grant.object.resource.as_deref(),
        Some("clusterrolebindings")
    );
    assert_eq!(grant.object.name.as_deref(), Some("pwn"));
    assert_eq!(grant.evidence, ["crb-1"]);
    assert_eq!(grant.source_ip.as_deref(), Some("10.0.0.1"));
    assert_eq!(grant.response_code, Some(201));
    let json = serde_json::to_value(grant).unwrap();
    for key in [
        "rule_id",
        "severity",
        "title",
        "cluster",
        "time",
        "principal",
        "object",
        "evidence",
        "remediation",
    ] {
        assert!(json.get(key).is_some(), "{key} in {json}");
    }
    assert_eq!(json["severity"], "high");
    assert_eq!(json["time"], "2026-11-01T10:00:01.000000Z");
}

/// K8S-AUTH-004 folds by principal: one system:masters user touching three objects is one
/// finding (emitted at once, naming the first object) and one summary counting all three.
#[test]
fn a_rule_folded_by_principal_counts_every_object_in_one_finding() {
    let result = run_builtin("auth-system-masters-certificate.yaml");
    let masters: Vec<_> = result
        .findings
        .iter()
        .filter(|f| f.rule_id == "K8S-AUTH-004")
        .collect();
    assert_eq!(masters.len(), 2, "{masters:#?}");
    assert_eq!((masters[0].count, masters[0].evidence.len()), (1, 1));
    assert_eq!(masters[0].object.resource.as_deref(), Some("pods"));
    assert_eq!(masters[1].count, 3);
    assert_eq!(masters[1].evidence.len(), 3);
    assert_eq!(masters[1].principal.as_deref(), Some("backdoor"));
}

/// Falco's labelled Kubernetes audit traces (`fixtures/falco-k8s-audit/`), with Falco's rule
/// names mapped to ours by meaning (`mapping.csv`): a positive case must fire the mapped rule;
/// a negative case must fire none of the mapped rules, unless it is negative only because of a
/// Falco allow-list override (trusted image, allowed user), which we do not replicate.
#[test]
fn falco_traces_fire_the_rules_that_mean_the_same() {
    use std::collections::{BTreeMap, BTreeSet};

    use auditlake_analytics::Detector;
    use auditlake_schema::{DecoderOptions, EventDecoder, SourcePos};

    let dir = fixtures("falco-k8s-audit");
    let mapping: BTreeMap<String, String> = std::fs::read_to_string(dir.join("mapping.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let mut f = l.splitn(3, ',');
            (f.next().unwrap().to_string(), f.next().unwrap().to_string())
        })
        .collect();
    let covered: BTreeSet<&str> = mapping
        .values()
        .filter(|r| *r != "-")
        .map(String::as_str)
        .collect();
    // Cases where our pack stays quiet on purpose; they must indeed stay quiet.
    let by_design: BTreeMap<String, String> = std::fs::read_to_string(dir.join("differences.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let (case, reason) = l.split_once(',').unwrap();
            (case.to_string(), reason.to_string())
        })
        .collect();
    let rules = RuleSet::builtin().unwrap();
    let mut table = String::from("| case | falco expects | ours | result |\n|---|---|---|---|\n");
    let (mut passed, mut failed, mut not_covered, mut override_only, mut differs) = (0, 0, 0, 0, 0);
    for line in std::fs::read_to_string(dir.join("labels_derived.csv"))
        .unwrap()
        .lines()
        .skip(1)
    {
        let cols: Vec<&str> = line.split(',').collect();
        let (case, trace, detect, expected, overrides) =
            (cols[0], cols[1], cols[2], cols[3], cols[5]);
        let text = std::fs::read_to_string(dir.join("trace_files").join(trace)).unwrap();
        let mut detector = Detector::compile(&rules, &DetectorOptions::default()).unwrap();
        let mut decoder = EventDecoder::new("falco", DecoderOptions::default());
        let mut quarantine = Vec::new();
        for (i, l) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let pos = SourcePos {
                source: trace,
                line: Some(i as u64 + 1),
                byte_offset: 0,
            };
            decoder.decode_document(l.as_bytes(), pos, &mut quarantine);
        }
        let mut fired = BTreeSet::new();
        if let Some(batch) = decoder.finish_batch() {
            for f in detector
                .evaluate(&batch)
                .unwrap()
                .into_iter()
                .chain(detector.flush())
            {
                fired.insert(f.rule_id);
            }
        }
        let falco_rule = expected.split('=').next().unwrap_or("");
        let ours = mapping.get(falco_rule).map(String::as_str).unwrap_or("-");
        let fired_covered: Vec<&String> = fired
            .iter()
            .filter(|r| covered.contains(r.as_str()))
            .collect();
        let result = if detect == "True" {
            if ours == "-" {
                not_covered += 1;
                "not covered (see mapping.csv)".to_string()
            } else if fired.contains(ours) {
                passed += 1;
                "pass".to_string()
            } else if let Some(reason) = by_design.get(case) {
                differs += 1;
                format!("quiet by design: {reason}")
            } else {
                failed += 1;
                format!("FAIL: fired {fired:?}")
            }
        } else if fired_covered.is_empty() {
            passed += 1;
            "pass (quiet)".to_string()
        } else if overrides.contains("trust_") || overrides.contains("allow_") {
            override_only += 1;
            format!("negative only by a Falco override ({overrides}); we fire {fired_covered:?}")
        } else {
            failed += 1;
            format!("FAIL: fired {fired_covered:?}")
        };
        table.push_str(&format!("| {case} | {expected} | {ours} | {result} |\n"));
    }
    table.push_str(&format!(
        "\n{passed} pass, {failed} fail, {differs} quiet by design, {not_covered} not covered by \
         our pack, {override_only} negative only under a Falco allow-list\n"
    ));
    println!("{table}");
    assert_eq!(failed, 0, "{table}");
    assert_eq!(
        differs,
        by_design.len(),
        "every listed difference still holds\n{table}"
    );
    assert_eq!(
        passed + failed + not_covered + override_only + differs,
        66,
        "{table}"
    );
    assert!(passed >= 25, "{table}");
}

/// Optional fields deleted one at a time from every attack scenario's events, with the path
/// of each inside the event.
const OPTIONAL_FIELDS: &[(&str, &[&str])] = &[
    ("user.groups", &["user", "groups"]),
    ("user.extra", &["user", "extra"]),
    ("sourceIPs", &["sourceIPs"]),
    ("userAgent", &["userAgent"]),
    ("annotations", &["annotations"]),
    ("responseStatus.message", &["responseStatus", "message"]),
    ("objectRef.apiGroup", &["objectRef", "apiGroup"]),
    ("requestObject+responseObject", &[]),
];

/// (field, rule, why): findings that may not survive the field's deletion because the field
/// is the rule's evidence itself; every other finding must.
const EVIDENCE_FIELDS: &[(&str, &str, &str)] = &[
    (
        "user.groups",
        "K8S-AUTH-004",
        "membership of system:masters is the evidence: without groups nothing says it",
    ),
    (
        "requestObject+responseObject",
        "K8S-RBAC-001",
        "the role bound is in the body; K8S-RBAC-006 (object not logged) fires instead",
    ),
    (
        "requestObject+responseObject",
        "K8S-RBAC-002",
        "the subjects are in the body; K8S-RBAC-006 fires instead",
    ),
    (
        "requestObject+responseObject",
        "K8S-RBAC-003",
        "the rules are in the body; K8S-RBAC-006 fires instead",
    ),
    (
        "requestObject+responseObject",
        "K8S-WL-003",
        "the pod spec is the evidence (log workloads at RequestResponse)",
    ),
    (
        "requestObject+responseObject",
        "K8S-SVC-001",
        "the service type is in the body",
    ),
    (
        "requestObject+responseObject",
        "K8S-WL-005",
        "the containers' user is in the pod spec",
    ),
    (
        "requestObject+responseObject",
        "K8S-CSR-002",
        "the requested subject is in the CSR's PEM request",
    ),
    (
        "requestObject+responseObject",
        "K8S-DRIFT-002",
        "a change away from the baseline needs the content; K8S-DRIFT-001/003 and \
         K8S-RBAC-006 still say who changed what",
    ),
];

fn delete(event: &mut serde_json::Value, field: &str, path: &[&str]) {
    if path.is_empty() {
        // The bodies.
        if let Some(o) = event.as_object_mut() {
            o.remove("requestObject");
            o.remove("responseObject");
        }
        return;
    }
    let (last, parents) = path.split_last().unwrap();
    let mut node = event;
    for p in parents {
        match node.get_mut(*p) {
            Some(n) => node = n,
            None => return,
        }
    }
    if let Some(o) = node.as_object_mut() {
        o.remove(*last);
    }
    let _ = field;
}

#[test]
fn an_attack_still_fires_when_any_optional_field_is_missing() {
    let dir = fixtures("scenarios");
    let rules = RuleSet::builtin().unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut failures = Vec::new();
    let mut checked = 0;
    for file in files {
        let scenario = auditlake_analytics::Scenario::load(&file).unwrap();
        if scenario.label != auditlake_analytics::Label::Attack {
            continue;
        }
        let name = file.file_stem().unwrap().to_string_lossy().into_owned();
        for (field, path) in OPTIONAL_FIELDS {
            let result = scenario
                .run_mutated(&name, &rules, &DetectorOptions::default(), &|e| {
                    delete(e, field, path)
                })
                .unwrap();
            for (rule, outcome) in &result.expected {
                checked += 1;
                if result.fired.contains(&(rule.clone(), *outcome)) {
                    continue;
                }
                if EVIDENCE_FIELDS
                    .iter()
                    .any(|(f, r, _)| f == field && r == rule)
                {
                    continue;
                }
                failures.push(format!(
                    "{name}: without {field}, {rule} ({outcome:?}) no longer fires (fired: {:?})",
                    result.fired
                ));
            }
        }
    }
    assert!(checked > 300, "{checked}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn an_unauthorized_grant_is_folded_per_principal_with_the_objects_listed() {
    let result = run_builtin("rbac-unlisted-controller-binds-in-every-namespace.yaml");
    let grants: Vec<_> = result
        .findings
        .iter()
        .filter(|f| f.rule_id == "K8S-RBAC-005")
        .collect();
    assert_eq!(grants.len(), 2, "the first at once, then the summary");
    assert_eq!(grants[0].count, 1);
    let summary = grants[1];
    assert_eq!(summary.count, 3);
    assert_eq!(
        summary.objects,
        [
            "rolebindings payments/ci-admin",
            "rolebindings checkout/ci-admin",
            "rolebindings monitoring/ci-admin"
        ]
    );
    assert_eq!(summary.evidence, ["rb-1", "rb-2", "rb-3"]);
}

/// High or critical findings allowed per 100,000 events of ordinary work (README "Noise").
const HIGH_PER_100K_EVENTS: f64 = 1.0;

#[test]
fn ordinary_work_with_a_gitops_controller_stays_within_the_noise_budget() {
    use auditlake_analytics::{Detector, Severity};
    use auditlake_fixtures::{Mix, Profile, TrafficGenerator};
    use auditlake_schema::{DecoderOptions, EventDecoder, SourcePos};

    const EVENTS: usize = 200_000;
    let text = TrafficGenerator::new(2026, Mix::default())
        .with_profile(Profile::Benign)
        .ndjson(EVENTS);
    let rules = RuleSet::builtin().unwrap();
    let mut detector = Detector::compile(&rules, &DetectorOptions::default()).unwrap();
    let mut decoder = EventDecoder::new("benign", DecoderOptions::default());
    let mut quarantine = Vec::new();
    let mut findings = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let pos = SourcePos {
            source: "benign",
            line: Some(n as u64 + 1),
            byte_offset: 0,
        };
        decoder.decode_line(line.as_bytes(), pos, &mut quarantine);
        if decoder.buffered_rows() >= 8192 {
            findings.extend(detector.evaluate(&decoder.finish_batch().unwrap()).unwrap());
        }
    }
    if let Some(b) = decoder.finish_batch() {
        findings.extend(detector.evaluate(&b).unwrap());
    }
    findings.extend(detector.flush());
    assert!(quarantine.is_empty());
    let loud: Vec<_> = findings
        .iter()
        .filter(|f| f.severity >= Severity::High)
        .collect();
    let per_100k = loud.len() as f64 * 100_000.0 / EVENTS as f64;
    println!(
        "{} findings on {EVENTS} benign events, {} high or critical ({per_100k:.2} per 100k)",
        findings.len(),
        loud.len()
    );
    assert!(
        per_100k <= HIGH_PER_100K_EVENTS,
        "{per_100k} high/critical per 100k events: {:#?}",
        loud.iter().take(5).collect::<Vec<_>>()
    );
    // Every bundled benign scenario stays below high too.
    let dir = fixtures("scenarios");
    let report = run_scenarios(&dir, &rules, &DetectorOptions::default()).unwrap();
    for r in report
        .results
        .iter()
        .filter(|r| r.label == auditlake_analytics::Label::Benign)
    {
        let loud: Vec<_> = r
            .findings
            .iter()
            .filter(|f| f.severity >= Severity::High)
            .map(|f| &f.rule_id)
            .collect();
        assert!(
            loud.is_empty(),
            "benign scenario {} raised {loud:?}",
            r.name
        );
    }
}
