//! The built-in rule pack against every labelled scenario in `fixtures/scenarios/`: each
//! must fire exactly its expected findings, and every built-in rule must be expected somewhere.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::PathBuf;

use auditlake_analytics::{DetectorOptions, RuleSet, run_scenarios};

#[test]
fn every_scenario_fires_exactly_its_expected_findings() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/scenarios");
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
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/scenarios");
    let rules = RuleSet::builtin().unwrap();
    let scenario =
        auditlake_analytics::Scenario::load(&dir.join("rbac-crb-cluster-admin-by-stranger.yaml"))
            .unwrap();
    let result = scenario
        .run("stranger", &rules, &DetectorOptions::default())
        .unwrap();
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
