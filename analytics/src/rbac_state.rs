//! The RBAC object model of the drift detector: Roles, ClusterRoles and their bindings
//! reduced to what grants access (role reference, subjects, rules), normalised so that two
//! manifests that grant the same thing compare equal, and the baseline loaded from a
//! directory of manifests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};

/// The four RBAC kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RbacKind {
    /// `Role` (namespaced).
    Role,
    /// `ClusterRole`.
    ClusterRole,
    /// `RoleBinding` (namespaced).
    RoleBinding,
    /// `ClusterRoleBinding`.
    ClusterRoleBinding,
}

impl RbacKind {
    /// The kind of an audit event's `objectRef.resource`, if it is an RBAC one.
    pub fn from_resource(resource: &str) -> Option<Self> {
        Some(match resource {
            "roles" => Self::Role,
            "clusterroles" => Self::ClusterRole,
            "rolebindings" => Self::RoleBinding,
            "clusterrolebindings" => Self::ClusterRoleBinding,
            _ => return None,
        })
    }

    /// The kind named by a manifest's `kind`.
    pub fn from_kind(kind: &str) -> Option<Self> {
        Some(match kind {
            "Role" => Self::Role,
            "ClusterRole" => Self::ClusterRole,
            "RoleBinding" => Self::RoleBinding,
            "ClusterRoleBinding" => Self::ClusterRoleBinding,
            _ => return None,
        })
    }

    /// `Role`, `ClusterRole`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Role => "Role",
            Self::ClusterRole => "ClusterRole",
            Self::RoleBinding => "RoleBinding",
            Self::ClusterRoleBinding => "ClusterRoleBinding",
        }
    }

    /// The plural resource name.
    pub fn resource(self) -> &'static str {
        match self {
            Self::Role => "roles",
            Self::ClusterRole => "clusterroles",
            Self::RoleBinding => "rolebindings",
            Self::ClusterRoleBinding => "clusterrolebindings",
        }
    }

    fn namespaced(self) -> bool {
        matches!(self, Self::Role | Self::RoleBinding)
    }

    fn is_binding(self) -> bool {
        matches!(self, Self::RoleBinding | Self::ClusterRoleBinding)
    }
}

/// Which object: kind, namespace (empty when cluster-scoped) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RbacKey {
    /// The kind.
    pub kind: RbacKind,
    /// Namespace, `""` for cluster-scoped kinds.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl RbacKey {
    /// `ClusterRoleBinding/name` or `RoleBinding/ns/name`.
    pub fn display(&self) -> String {
        if self.namespace.is_empty() {
            format!("{}/{}", self.kind.as_str(), self.name)
        } else {
            format!("{}/{}/{}", self.kind.as_str(), self.namespace, self.name)
        }
    }
}

/// What an RBAC object grants, normalised (order and duplicates do not matter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RbacContent {
    /// A RoleBinding or ClusterRoleBinding.
    Binding {
        /// `ClusterRole/name` or `Role/name`.
        role_ref: String,
        /// `User:name`, `Group:name`, `ServiceAccount:namespace/name`.
        subjects: BTreeSet<String>,
    },
    /// A Role or ClusterRole: its rules, or, for an aggregated ClusterRole, only its
    /// aggregation rule (the controller rewrites the rules whenever a matching role changes).
    Role {
        /// Normalised rules, each as canonical JSON text.
        rules: BTreeSet<String>,
        /// Canonical JSON text of `aggregationRule`, when present.
        aggregation: Option<String>,
    },
}

fn sorted_strings(v: Option<&Value>) -> Vec<String> {
    let mut out: Vec<String> = v
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out.dedup();
    out
}

/// A subject as one string; a ServiceAccount without namespace takes the binding's.
fn subject_string(s: &Value, binding_namespace: &str) -> Option<String> {
    let kind = s.get("kind")?.as_str()?;
    let name = s.get("name")?.as_str()?;
    Some(match kind {
        "ServiceAccount" => {
            let ns = s
                .get("namespace")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .unwrap_or(binding_namespace);
            format!("ServiceAccount:{ns}/{name}")
        }
        other => format!("{other}:{name}"),
    })
}

impl RbacContent {
    /// The content of `object` (a manifest or an API response) of `kind`, or `None` when the
    /// object is not of that kind (a `Status`, a patch document).
    pub fn of(kind: RbacKind, object: &Value, namespace: &str) -> Option<Self> {
        if object.get("kind").and_then(Value::as_str) != Some(kind.as_str()) {
            return None;
        }
        if kind.is_binding() {
            let role_ref = object.get("roleRef")?;
            let role_ref = format!(
                "{}/{}",
                role_ref.get("kind")?.as_str()?,
                role_ref.get("name")?.as_str()?
            );
            let subjects = object
                .get("subjects")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|s| subject_string(s, namespace))
                        .collect()
                })
                .unwrap_or_default();
            return Some(Self::Binding { role_ref, subjects });
        }
        if let Some(agg) = object.get("aggregationRule").filter(|a| !a.is_null()) {
            let mut selectors: Vec<String> = agg
                .get("clusterRoleSelectors")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(Value::to_string).collect())
                .unwrap_or_default();
            selectors.sort();
            return Some(Self::Role {
                rules: BTreeSet::new(),
                aggregation: Some(format!("[{}]", selectors.join(","))),
            });
        }
        let rules = object
            .get("rules")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(normalise_rule).collect())
            .unwrap_or_default();
        Some(Self::Role {
            rules,
            aggregation: None,
        })
    }

    /// `ClusterRole/name` for a binding.
    pub fn role_ref(&self) -> Option<&str> {
        match self {
            Self::Binding { role_ref, .. } => Some(role_ref),
            Self::Role { .. } => None,
        }
    }

    /// The subjects of a binding.
    pub fn subjects(&self) -> Option<&BTreeSet<String>> {
        match self {
            Self::Binding { subjects, .. } => Some(subjects),
            Self::Role { .. } => None,
        }
    }

    /// A role's rules (or aggregation rule) as one JSON text.
    pub fn rules_json(&self) -> Option<String> {
        match self {
            Self::Binding { .. } => None,
            Self::Role { rules, aggregation } => Some(match aggregation {
                Some(a) => format!("{{\"aggregationRule\":{a}}}"),
                None => format!(
                    "[{}]",
                    rules
                        .iter()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            }),
        }
    }

    /// The content as JSON, for findings.
    pub fn to_json(&self) -> Value {
        match self {
            Self::Binding { role_ref, subjects } => {
                json!({"roleRef": role_ref, "subjects": subjects})
            }
            Self::Role { .. } => {
                serde_json::from_str(&self.rules_json().unwrap_or_default()).unwrap_or(Value::Null)
            }
        }
    }

    /// What changed from `baseline` to `self`, as JSON: role reference before and after,
    /// subjects or rules added and removed.
    pub fn diff(&self, baseline: &Self) -> Value {
        /// `<name>_added` and `<name>_removed`, each only when not empty.
        fn set_diff(
            d: &mut serde_json::Map<String, Value>,
            name: &str,
            now: &BTreeSet<String>,
            was: &BTreeSet<String>,
            show: impl Fn(&String) -> Option<Value>,
        ) {
            for (side, items) in [
                ("added", now.difference(was)),
                ("removed", was.difference(now)),
            ] {
                let items: Vec<Value> = items.filter_map(&show).collect();
                if !items.is_empty() {
                    d.insert(format!("{name}_{side}"), Value::Array(items));
                }
            }
        }
        let mut d = serde_json::Map::new();
        match (self, baseline) {
            (
                Self::Binding { role_ref, subjects },
                Self::Binding {
                    role_ref: base_ref,
                    subjects: base_subjects,
                },
            ) => {
                if role_ref != base_ref {
                    d.insert(
                        "roleRef".into(),
                        json!({"baseline": base_ref, "now": role_ref}),
                    );
                }
                set_diff(&mut d, "subjects", subjects, base_subjects, |s| {
                    Some(json!(s))
                });
            }
            (
                Self::Role { rules, aggregation },
                Self::Role {
                    rules: base_rules,
                    aggregation: base_agg,
                },
            ) => {
                if aggregation != base_agg {
                    d.insert(
                        "aggregationRule".into(),
                        json!({"baseline": base_agg, "now": aggregation}),
                    );
                }
                // Rules are kept as normalised JSON text: shown as objects.
                set_diff(&mut d, "rules", rules, base_rules, |r| {
                    serde_json::from_str(r).ok()
                });
            }
            _ => {
                d.insert("baseline".into(), baseline.to_json());
                d.insert("now".into(), self.to_json());
            }
        }
        Value::Object(d)
    }
}

/// A rule with its lists sorted and de-duplicated and empty lists dropped, as JSON text.
pub(crate) fn normalise_rule(rule: &Value) -> String {
    let mut out = BTreeMap::new();
    for field in [
        "apiGroups",
        "nonResourceURLs",
        "resourceNames",
        "resources",
        "verbs",
    ] {
        let v = sorted_strings(rule.get(field));
        if !v.is_empty() {
            out.insert(field, v);
        }
    }
    serde_json::to_string(&out).unwrap_or_default()
}

/// Why a baseline could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    /// A file or directory could not be read.
    #[error("reading RBAC baseline {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A manifest is not valid YAML/JSON, or an RBAC object in it is incomplete.
    #[error("RBAC baseline {path}, document {document}: {message}")]
    Manifest {
        /// The file.
        path: PathBuf,
        /// 1-based document number within the file.
        document: usize,
        /// What is wrong.
        message: String,
    },
}

/// The RBAC objects a GitOps repository (or `kubectl get -o yaml` output) declares.
#[derive(Debug, Default, Clone)]
pub struct RbacBaseline {
    objects: BTreeMap<RbacKey, RbacContent>,
    /// Manifests of other kinds that were skipped.
    pub skipped: usize,
    /// Files read.
    pub files: usize,
}

impl RbacBaseline {
    /// Reads every `.yaml`, `.yml` and `.json` file below `dir` (or the one file `dir`):
    /// multi-document YAML, `List` objects and `kubectl get -o yaml` output all work.
    pub fn load(dir: &Path) -> Result<Self, BaselineError> {
        let mut files = Vec::new();
        collect_files(dir, &mut files)?;
        files.sort();
        let mut baseline = Self::default();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|source| BaselineError::Read {
                path: path.clone(),
                source,
            })?;
            baseline.files += 1;
            for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
                let value = Value::deserialize(doc).map_err(|e| BaselineError::Manifest {
                    path: path.clone(),
                    document: i + 1,
                    message: e.to_string(),
                })?;
                baseline
                    .add(&value)
                    .map_err(|message| BaselineError::Manifest {
                        path: path.clone(),
                        document: i + 1,
                        message,
                    })?;
            }
        }
        Ok(baseline)
    }

    /// Adds one manifest (or every item of a `List`).
    pub fn add(&mut self, value: &Value) -> Result<(), String> {
        if value.is_null() {
            return Ok(());
        }
        if let Some(items) = value.get("items").and_then(Value::as_array) {
            for item in items {
                self.add(item)?;
            }
            return Ok(());
        }
        let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
        let Some(kind) = RbacKind::from_kind(kind) else {
            self.skipped += 1;
            return Ok(());
        };
        let meta = value.get("metadata");
        let name = meta
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{} without metadata.name", kind.as_str()))?;
        // A namespaced manifest without a namespace lands in `default` when applied.
        let namespace = if kind.namespaced() {
            meta.and_then(|m| m.get("namespace"))
                .and_then(Value::as_str)
                .unwrap_or("default")
        } else {
            ""
        };
        let content = RbacContent::of(kind, value, namespace)
            .ok_or_else(|| format!("{} {name}: no roleRef", kind.as_str()))?;
        self.objects.insert(
            RbacKey {
                kind,
                namespace: namespace.into(),
                name: name.into(),
            },
            content,
        );
        Ok(())
    }

    /// The declared content of `key`.
    pub fn get(&self, key: &RbacKey) -> Option<&RbacContent> {
        self.objects.get(key)
    }

    /// Number of RBAC objects declared.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether no RBAC object is declared.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), BaselineError> {
    let read = |source| BaselineError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    if meta.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    for entry in std::fs::read_dir(path).map_err(read)? {
        let p = entry.map_err(read)?.path();
        let hidden = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if p.is_dir() {
            collect_files(&p, out)?;
        } else if p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
        {
            out.push(p);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_grants_compare_equal_whatever_the_order() {
        let a = json!({"kind": "ClusterRole", "rules": [
            {"verbs": ["list", "get", "get"], "resources": ["pods"], "apiGroups": [""]},
            {"verbs": ["get"], "resources": ["nodes"], "apiGroups": [""], "resourceNames": []}]});
        let b = json!({"kind": "ClusterRole", "metadata": {"resourceVersion": "9"}, "rules": [
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]});
        let ca = RbacContent::of(RbacKind::ClusterRole, &a, "").unwrap();
        assert_eq!(
            Some(ca.clone()),
            RbacContent::of(RbacKind::ClusterRole, &b, "")
        );
        let c = json!({"kind": "ClusterRole", "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}]});
        let diff = RbacContent::of(RbacKind::ClusterRole, &c, "")
            .unwrap()
            .diff(&ca);
        assert_eq!(
            diff["rules_added"],
            json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}])
        );
        assert_eq!(diff["rules_removed"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn a_binding_diff_names_the_new_subject_and_service_accounts_take_the_namespace() {
        let base = json!({"kind": "RoleBinding", "roleRef": {"kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "ServiceAccount", "name": "ci"}]});
        let now = json!({"kind": "RoleBinding", "roleRef": {"kind": "ClusterRole", "name": "admin"},
            "subjects": [{"kind": "ServiceAccount", "name": "ci", "namespace": "apps"},
                         {"kind": "User", "name": "mallory", "apiGroup": "rbac.authorization.k8s.io"}]});
        let base = RbacContent::of(RbacKind::RoleBinding, &base, "apps").unwrap();
        let now = RbacContent::of(RbacKind::RoleBinding, &now, "apps").unwrap();
        assert_eq!(
            now.diff(&base),
            json!({"roleRef": {"baseline": "ClusterRole/view", "now": "ClusterRole/admin"},
                   "subjects_added": ["User:mallory"]})
        );
    }

    #[test]
    fn aggregated_roles_compare_by_their_aggregation_rule_only() {
        let manifest = json!({"kind": "ClusterRole", "aggregationRule": {"clusterRoleSelectors": [
            {"matchLabels": {"rbac.example.com/aggregate-to-monitoring": "true"}}]}});
        let live = json!({"kind": "ClusterRole", "aggregationRule": {"clusterRoleSelectors": [
            {"matchLabels": {"rbac.example.com/aggregate-to-monitoring": "true"}}]},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]});
        assert_eq!(
            RbacContent::of(RbacKind::ClusterRole, &manifest, ""),
            RbacContent::of(RbacKind::ClusterRole, &live, "")
        );
    }

    #[test]
    fn a_baseline_reads_multi_document_yaml_lists_and_json_and_names_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("rbac.yaml"),
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: ops\n\
             roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}\n\
             subjects: [{kind: Group, name: ops}]\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("team")).unwrap();
        std::fs::write(
            dir.path().join("team/list.json"),
            r#"{"kind":"List","items":[{"kind":"Role","metadata":{"name":"r","namespace":"team"},"rules":[]}]}"#,
        )
        .unwrap();
        let b = RbacBaseline::load(dir.path()).unwrap();
        assert_eq!((b.len(), b.skipped, b.files), (2, 1, 2));
        let key = RbacKey {
            kind: RbacKind::ClusterRoleBinding,
            namespace: String::new(),
            name: "ops".into(),
        };
        assert_eq!(
            b.get(&key).unwrap().role_ref(),
            Some("ClusterRole/cluster-admin")
        );
        std::fs::write(
            dir.path().join("bad.yaml"),
            "kind: RoleBinding\nmetadata: {name: b}\n",
        )
        .unwrap();
        let err = RbacBaseline::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("bad.yaml") && err.contains("document 1") && err.contains("no roleRef"),
            "{err}"
        );
    }
}
