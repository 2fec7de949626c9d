//! Rule files: the YAML a user writes, the built-in pack, overrides by id, and named lists
//! (`$rbac_admins`) expanded into SQL before compilation.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::RuleError;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// Look when convenient.
    Low,
    /// Look today.
    Medium,
    /// Look now.
    High,
    /// Wake someone up.
    Critical,
}

impl Severity {
    /// `steps` levels lower, never below `Info`.
    pub fn lowered(self, steps: u8) -> Self {
        let all = [
            Self::Info,
            Self::Low,
            Self::Medium,
            Self::High,
            Self::Critical,
        ];
        let i = all.iter().position(|s| *s == self).unwrap_or(0);
        all[i.saturating_sub(steps as usize)]
    }

    /// The lowercase name used in files and findings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which events a rule's condition is asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Completed requests: a success (2xx at ResponseComplete, or 101 at ResponseStarted for
    /// exec/attach upgrades) is a finding at the rule's severity; a denial (401/403) is a
    /// separate `denied` finding at `denied_severity`. Other stages and codes are ignored, so
    /// one request gives one finding.
    #[default]
    Outcome,
    /// Every event; the condition decides on stage and code itself.
    Any,
}

/// What makes two matches of a rule the same finding, to be folded into one with a count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FoldBy {
    /// Same outcome, principal and object (the default).
    #[default]
    Object,
    /// Same outcome and principal, whatever the object: for rules about *who* acts (a
    /// system:masters certificate in use), where one finding per object touched is noise.
    /// The finding shows the first object; the evidence lists the requests.
    Principal,
}

/// One rule as written in a rule file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Stable identifier, e.g. `K8S-RBAC-001`; a later file with the same id replaces it.
    pub id: String,
    /// One line for an alert.
    pub title: String,
    /// Severity of a successful (done) match.
    pub severity: Severity,
    /// Severity of a denied attempt; default two levels below `severity`.
    #[serde(default)]
    pub denied_severity: Option<Severity>,
    /// Why it matters.
    #[serde(default)]
    pub description: String,
    /// MITRE ATT&CK technique ids (`T1078.001`).
    #[serde(default)]
    pub mitre: Vec<String>,
    /// SQL boolean expression over the events schema; `$name` inserts a list as SQL literals.
    pub condition: String,
    /// Optional SQL expression (text) shown as the finding's `details`.
    #[serde(default)]
    pub details: Option<String>,
    /// Which events the condition sees (default `outcome`).
    #[serde(default)]
    pub scope: Scope,
    /// Which repeats fold into one finding (default `object`).
    #[serde(default)]
    pub fold_by: FoldBy,
    /// What to do about it.
    #[serde(default)]
    pub remediation: String,
    /// Set `false` to switch a rule off (e.g. a built-in one) from an override file.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// The shape of a rule file: named lists and rules, both optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    lists: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    rules: Vec<Rule>,
}

/// A rule with the file it came from.
#[derive(Debug, Clone)]
pub struct LoadedRule {
    /// The rule.
    pub rule: Rule,
    /// File name, or `built-in:<file>`.
    pub origin: String,
}

/// Rules and lists after overrides: later sources replace earlier ones by id / list name.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    /// Rules in id order.
    pub rules: BTreeMap<String, LoadedRule>,
    /// Named lists.
    pub lists: BTreeMap<String, Vec<String>>,
}

/// The built-in rule pack, embedded in the binary (`analytics/rules/`).
pub const BUILTIN_RULE_FILES: &[(&str, &str)] = &[
    ("rbac.yaml", include_str!("../rules/rbac.yaml")),
    ("workloads.yaml", include_str!("../rules/workloads.yaml")),
    ("access.yaml", include_str!("../rules/access.yaml")),
    ("lists.yaml", include_str!("../rules/lists.yaml")),
];

impl RuleSet {
    /// The built-in pack alone.
    pub fn builtin() -> Result<Self, RuleError> {
        let mut set = Self::default();
        for (name, text) in BUILTIN_RULE_FILES {
            set.add_text(text, &format!("built-in:{name}"))?;
        }
        Ok(set)
    }

    /// The built-in pack, then every `.yaml`/`.yml` file under each path (files or
    /// directories, in name order): same id or list name replaces.
    pub fn load(paths: &[PathBuf]) -> Result<Self, RuleError> {
        let mut set = Self::builtin()?;
        for p in paths {
            for file in yaml_files(p)? {
                let text = std::fs::read_to_string(&file).map_err(|source| RuleError::Read {
                    path: file.clone(),
                    source,
                })?;
                set.add_text(&text, &file.display().to_string())?;
            }
        }
        Ok(set)
    }

    /// Adds one file's lists and rules.
    pub fn add_text(&mut self, text: &str, origin: &str) -> Result<(), RuleError> {
        let file: RuleFile = serde_yaml::from_str(text).map_err(|e| RuleError::Parse {
            origin: origin.to_string(),
            message: e.to_string(),
        })?;
        self.lists.extend(file.lists);
        for rule in file.rules {
            if rule.id.trim().is_empty() {
                return Err(RuleError::Parse {
                    origin: origin.to_string(),
                    message: format!("a rule titled {:?} has an empty id", rule.title),
                });
            }
            self.rules.insert(
                rule.id.clone(),
                LoadedRule {
                    rule,
                    origin: origin.to_string(),
                },
            );
        }
        Ok(())
    }

    /// Replaces (or adds) a named list.
    pub fn set_list(&mut self, name: &str, items: Vec<String>) {
        self.lists.insert(name.to_string(), items);
    }

    /// The enabled rules.
    pub fn enabled(&self) -> impl Iterator<Item = &LoadedRule> {
        self.rules.values().filter(|r| r.rule.enabled)
    }

    /// `sql` with every `$name` replaced by the list's items as quoted SQL literals
    /// (an empty list becomes one literal that matches no Kubernetes name).
    pub fn expand_lists(&self, sql: &str) -> Result<String, String> {
        let mut out = String::with_capacity(sql.len());
        let mut rest = sql;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            let name = &after[..len];
            if name.is_empty() {
                out.push('$');
                rest = after;
                continue;
            }
            let items = self
                .lists
                .get(name)
                .ok_or_else(|| format!("unknown list ${name}"))?;
            if items.is_empty() {
                out.push_str("'<empty list>'");
            } else {
                let quoted: Vec<String> = items
                    .iter()
                    .map(|i| format!("'{}'", i.replace('\'', "''")))
                    .collect();
                out.push_str(&quoted.join(", "));
            }
            rest = &after[len..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

fn yaml_files(path: &Path) -> Result<Vec<PathBuf>, RuleError> {
    let read_err = |source| RuleError::Read {
        path: path.to_path_buf(),
        source,
    };
    if !path.is_dir() {
        std::fs::metadata(path).map_err(read_err)?;
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).map_err(read_err)? {
        let p = entry.map_err(read_err)?.path();
        if p.is_dir() {
            files.extend(yaml_files(&p)?);
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn lists_expand_to_quoted_literals_and_unknown_ones_are_named() {
        let mut set = RuleSet::default();
        set.set_list("admins", vec!["a".into(), "o'brien".into()]);
        set.set_list("none", vec![]);
        assert_eq!(
            set.expand_lists("u IN ($admins) AND v NOT IN ($none)")
                .unwrap(),
            "u IN ('a', 'o''brien') AND v NOT IN ('<empty list>')"
        );
        assert_eq!(set.expand_lists("x = '$'").unwrap(), "x = '$'");
        assert_eq!(set.expand_lists("$nope").unwrap_err(), "unknown list $nope");
    }

    #[test]
    fn a_later_file_overrides_a_rule_by_id() {
        let mut set = RuleSet::builtin().unwrap();
        let before = set.rules.len();
        set.add_text(
            "rules:\n  - id: K8S-RBAC-001\n    title: mine\n    severity: low\n    condition: 'true'\n",
            "mine.yaml",
        )
        .unwrap();
        assert_eq!(set.rules.len(), before);
        assert_eq!(set.rules["K8S-RBAC-001"].rule.title, "mine");
        assert_eq!(set.rules["K8S-RBAC-001"].origin, "mine.yaml");
        let err = set
            .add_text("rules:\n  - id: X\n    titel: typo\n", "bad.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("bad.yaml:") && err.contains("titel"),
            "{err}"
        );
    }
}
