//! What the stateful detectors report as: id, title, severity and MITRE techniques, defined
//! once for the findings they raise and for `rules list`.

use crate::rule::Severity;

/// The identity of the findings one stateful detector raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatefulRule {
    /// Rule id of its findings.
    pub id: &'static str,
    /// Title of its findings.
    pub title: &'static str,
    /// Severity of its findings.
    pub severity: Severity,
    /// MITRE ATT&CK techniques.
    pub mitre: &'static [&'static str],
    /// What it needs to run, if not on by default (shown by `rules list`).
    pub needs: Option<&'static str>,
}

impl StatefulRule {
    /// Its MITRE techniques as a finding carries them.
    pub fn mitre_list(&self) -> Vec<String> {
        self.mitre.iter().map(|m| m.to_string()).collect()
    }
}

/// A burst of 403 answers to one principal (permission enumeration).
pub const BURST: StatefulRule = StatefulRule {
    id: "K8S-RECON-002",
    title: "Burst of denied requests from one principal (permission enumeration)",
    severity: Severity::Medium,
    mitre: &["T1069", "T1087"],
    needs: None,
};

/// An RBAC object created or changed that the baseline does not declare.
pub const DRIFT_ADDED: StatefulRule = StatefulRule {
    id: "K8S-DRIFT-001",
    title: "RBAC object created or changed outside the baseline",
    severity: Severity::High,
    mitre: &["T1098"],
    needs: Some("--rbac-baseline"),
};

/// A declared RBAC object changed so that it no longer matches the baseline.
pub const DRIFT_CHANGED: StatefulRule = StatefulRule {
    id: "K8S-DRIFT-002",
    title: "RBAC object changed away from its baseline",
    severity: Severity::High,
    mitre: &["T1098"],
    needs: Some("--rbac-baseline"),
};

/// A declared RBAC object deleted.
pub const DRIFT_REMOVED: StatefulRule = StatefulRule {
    id: "K8S-DRIFT-003",
    title: "RBAC object of the baseline deleted",
    severity: Severity::Medium,
    mitre: &["T1098"],
    needs: Some("--rbac-baseline"),
};

/// Every stateful detector's findings, in the order `rules list` shows them.
pub const STATEFUL_RULES: [StatefulRule; 4] = [BURST, DRIFT_ADDED, DRIFT_CHANGED, DRIFT_REMOVED];
