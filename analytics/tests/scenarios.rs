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
    use auditlake_analytics::{FalcoOutcome, run_falco};

    let dir = fixtures("falco-k8s-audit");
    let rules = RuleSet::builtin().unwrap();
    let report = run_falco(&dir, &rules, &DetectorOptions::default()).unwrap();
    let table = report.table();
    println!("{table}");
    let by_design = std::fs::read_to_string(dir.join("differences.csv"))
        .unwrap()
        .lines()
        .count()
        - 1;
    assert!(report.passed(), "{table}");
    assert_eq!(
        report.count(|o| matches!(o, FalcoOutcome::QuietByDesign(_))),
        by_design,
        "every listed difference still holds\n{table}"
    );
    assert_eq!(report.cases.len(), 66, "{table}");
    assert!(
        report.count(|o| matches!(o, FalcoOutcome::Detected | FalcoOutcome::Quiet)) >= 25,
        "{table}"
    );
}

#[test]
fn rules_test_names_a_conjunct_that_is_null_on_a_scenario_event() {
    use auditlake_analytics::Scenario;
    let dir = tempfile::tempdir().unwrap();
    let rule = dir.path().join("mine.yaml");
    std::fs::write(
        &rule,
        "rules:\n  - id: MY-001\n    title: t\n    severity: low\n    description: d\n    \
         mitre: []\n    remediation: r\n    condition: >-\n      resource = 'secrets' AND \
         array_has(user_groups, 'contractors')\n",
    )
    .unwrap();
    let rules = RuleSet::load(&[rule]).unwrap();
    let scenario: Scenario = serde_yaml::from_str(
        "description: a read without groups\nlabel: benign\nevents:\n  - {verb: get, \
         user: {username: eve, groups: null}, objectRef: {resource: secrets, name: s}}\n",
    )
    .unwrap();
    let result = scenario
        .run("no-groups", &rules, &DetectorOptions::default())
        .unwrap();
    // The built-in pack (loaded under the file) has one such rule too: system:masters
    // membership cannot be told without groups.
    let mine: Vec<&String> = result
        .null_warnings
        .iter()
        .filter(|w| w.starts_with("MY-001"))
        .collect();
    assert_eq!(mine.len(), 1, "{:?}", result.null_warnings);
    assert!(
        mine[0].starts_with(
            "MY-001: `array_has(user_groups, Utf8(\"contractors\"))` is NULL on event 1"
        ),
        "{}",
        mine[0]
    );
    assert!(
        result
            .null_warnings
            .iter()
            .any(|w| w.starts_with("K8S-AUTH-004: `array_has(user_groups")),
        "{:?}",
        result.null_warnings
    );
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
    let files = auditlake_analytics::scenario_files(&dir).unwrap();
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
    let mut decoder = EventDecoder::new(DecoderOptions::default());
    let mut quarantine = Vec::new();
    let mut findings = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let pos = SourcePos {
            cluster: "benign",
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
