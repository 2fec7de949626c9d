//! `auditlake rules learn`: allowlists proposed from the archive's history, for a person to
//! review. For each list that exempts principals from a rule (who may change RBAC, read
//! Secrets, request tokens...), the archive is asked who actually did that, how often and
//! when; the proposal is a rule file with those lists, the built-in members kept, each
//! principal annotated. Nothing is applied until the file is passed with `--rules`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::rule::RuleSet;

/// One list to learn and what it allows.
#[derive(Debug, Clone, Copy)]
pub struct LearnedList {
    /// The list's name (`rbac_admins`).
    pub list: &'static str,
    /// What being on it allows, for the proposal's comments.
    pub allows: &'static str,
    /// SQL condition over `events` selecting the requests the list exempts (successful ones
    /// only are counted; our own text, never a user's).
    pub condition: &'static str,
}

/// The lists `learn` proposes, with the activity each one exempts.
pub const LEARNED_LISTS: &[LearnedList] = &[
    LearnedList {
        list: "rbac_admins",
        allows: "change Roles, ClusterRoles and their bindings (K8S-RBAC-001..006)",
        condition: "resource IN ('roles', 'clusterroles', 'rolebindings', 'clusterrolebindings') \
                    AND verb IN ('create', 'update', 'patch', 'delete', 'deletecollection')",
    },
    LearnedList {
        list: "secret_readers",
        allows: "read Secrets (K8S-SEC-001)",
        condition: "resource = 'secrets' AND verb IN ('get', 'list', 'watch') \
                    AND user_username NOT LIKE 'system:node:%' \
                    AND user_username NOT LIKE 'system:serviceaccount:kube-system:%'",
    },
    LearnedList {
        list: "token_requesters",
        allows: "request service-account tokens (K8S-SA-001)",
        condition: "resource = 'serviceaccounts' AND subresource = 'token' AND verb = 'create' \
                    AND user_username NOT LIKE 'system:node:%'",
    },
    LearnedList {
        list: "impersonators_allowed",
        allows: "impersonate other identities (K8S-AUTH-001, -002)",
        condition: "impersonated_username IS NOT NULL",
    },
    LearnedList {
        list: "masters_allowed",
        allows: "act in the system:masters group (K8S-AUTH-004)",
        condition: "array_has(user_groups, 'system:masters')",
    },
    LearnedList {
        list: "node_proxy_users",
        allows: "use nodes/proxy (K8S-NODE-001)",
        condition: "resource = 'nodes' AND subresource = 'proxy'",
    },
    LearnedList {
        list: "csr_approvers",
        allows: "approve certificate signing requests (K8S-CSR-001)",
        condition: "resource = 'certificatesigningrequests' AND subresource = 'approval'",
    },
    LearnedList {
        list: "webhook_managers",
        allows: "change admission webhook configurations (K8S-ADM-001)",
        condition: "resource IN ('mutatingwebhookconfigurations', 'validatingwebhookconfigurations') \
                    AND verb IN ('create', 'update', 'patch', 'delete', 'deletecollection')",
    },
    LearnedList {
        list: "reviews_allowed",
        allows: "ask what they may do (K8S-RECON-001)",
        condition: "resource IN ('selfsubjectrulesreviews', 'selfsubjectaccessreviews') \
                    AND user_username LIKE 'system:serviceaccount:%'",
    },
];

/// The query that finds who did what `list` allows since `cutoff` (RFC 3339): one row per
/// principal with the request count and the first and last time.
pub fn learn_query(list: &LearnedList, cutoff: &str) -> String {
    format!(
        "SELECT user_username AS principal, count(*) AS requests, \
         min(stage_at) AS first_seen, max(stage_at) AS last_seen FROM events \
         WHERE date >= '{day}' AND stage_at >= TIMESTAMP '{cutoff}' \
         AND stage = 'ResponseComplete' AND response_code BETWEEN 200 AND 299 \
         AND user_username IS NOT NULL AND ({condition}) \
         GROUP BY user_username ORDER BY requests DESC, principal LIMIT 500",
        day = &cutoff[..cutoff.len().min(10)],
        condition = list.condition,
    )
}

/// One principal seen doing what a list allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Who.
    pub principal: String,
    /// Successful requests.
    pub requests: u64,
    /// First and last time (RFC 3339).
    pub first: String,
    /// Last time.
    pub last: String,
}

/// The proposed rule file: every learned list with its current members (kept, marked) and
/// the principals seen (annotated with counts and times), for review.
pub fn proposal(
    set: &RuleSet,
    seen: &BTreeMap<&'static str, Vec<Seen>>,
    since: &str,
    archive: &str,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Allowlists proposed by `auditlake rules learn` from {archive}, activity since {since}.\n\
         # Each list replaces the built-in one when this file is passed with --rules, so the\n\
         # current members are kept. Review every proposed principal: once listed, it is never\n\
         # reported for what the list allows. Delete the lines you do not trust.\n\
         lists:"
    );
    for l in LEARNED_LISTS {
        let current = set.lists.get(l.list).cloned().unwrap_or_default();
        let found = seen.get(l.list).map(Vec::as_slice).unwrap_or_default();
        let _ = writeln!(out, "  # Who may {}.", l.allows);
        let proposed: Vec<&Seen> = found
            .iter()
            .filter(|s| !current.contains(&s.principal))
            .collect();
        if current.is_empty() && proposed.is_empty() {
            let _ = writeln!(out, "  {}: []", l.list);
            continue;
        }
        let _ = writeln!(out, "  {}:", l.list);
        for member in &current {
            let note = match found.iter().find(|s| &s.principal == member) {
                Some(s) => format!(
                    "current; {} requests, {} .. {}",
                    s.requests, s.first, s.last
                ),
                None => "current; not seen".to_string(),
            };
            let _ = writeln!(out, "    - {}   # {note}", yaml_scalar(member));
        }
        for s in proposed {
            let _ = writeln!(
                out,
                "    - {}   # PROPOSED: {} requests, {} .. {}",
                yaml_scalar(&s.principal),
                s.requests,
                s.first,
                s.last
            );
        }
    }
    out
}

/// A YAML scalar for a principal: quoted (principals hold `:` and may hold `#`).
fn yaml_scalar(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proposal_keeps_the_current_members_and_parses_as_a_rule_file() {
        let set = RuleSet::builtin().unwrap();
        let mut seen = BTreeMap::new();
        seen.insert(
            "rbac_admins",
            vec![
                Seen {
                    principal: "system:serviceaccount:ci:deployer".into(),
                    requests: 412,
                    first: "2026-11-24T00:00:00Z".into(),
                    last: "2026-11-30T00:00:00Z".into(),
                },
                Seen {
                    principal: "system:kube-controller-manager".into(),
                    requests: 3,
                    first: "2026-11-24T00:00:00Z".into(),
                    last: "2026-11-24T00:00:00Z".into(),
                },
            ],
        );
        let text = proposal(&set, &seen, "7d", "file:///a/");
        assert!(
            text.contains("\"system:serviceaccount:ci:deployer\"   # PROPOSED: 412 requests"),
            "{text}"
        );
        assert!(text.contains("\"system:kube-controller-manager\"   # current; 3 requests"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("learned.yaml");
        std::fs::write(&file, &text).unwrap();
        let loaded = RuleSet::load(&[file]).unwrap();
        let admins = &loaded.lists["rbac_admins"];
        assert!(admins.contains(&"system:serviceaccount:ci:deployer".to_string()));
        for member in &set.lists["rbac_admins"] {
            assert!(admins.contains(member), "{member} dropped");
        }
        for l in LEARNED_LISTS {
            assert!(set.lists.contains_key(l.list), "{} is not a list", l.list);
        }
    }
}
