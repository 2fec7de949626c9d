//! The RBAC drift detector: rebuilds Roles, ClusterRoles and bindings from the audit events
//! of successful changes, records every version in the `rbac_history` table (so the state
//! survives restarts and analysts can ask who was bound to what at any time), and reports
//! each change that leaves the baseline.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, ListBuilder, RecordBatch, StringArray, StringBuilder,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{SchemaRef, TimestampMicrosecondType};
use serde_json::{Value, json};

use auditlake_archive::Table;
use auditlake_schema::rbac_history_file_schema;
use auditlake_schema::timestamp::format_rfc3339_micros;

use crate::archive_table::TableBuffer;
use crate::event_columns::EventColumns;
use crate::finding::{Finding, Outcome};
use crate::rbac_state::{RbacBaseline, RbacContent, RbacKey, RbacKind, normalise_rule};
use auditlake_archive::FinishedFile;

use crate::stateful_rules::{DRIFT_ADDED, DRIFT_CHANGED, DRIFT_REMOVED, StatefulRule};

/// An object created or changed that the baseline does not declare.
pub const DRIFT_ADDED_RULE_ID: &str = DRIFT_ADDED.id;
/// A declared object changed so that it no longer matches the baseline.
pub const DRIFT_CHANGED_RULE_ID: &str = DRIFT_CHANGED.id;
/// A declared object deleted.
pub const DRIFT_REMOVED_RULE_ID: &str = DRIFT_REMOVED.id;

/// The drift findings' identities.
const DRIFT_RULES: [StatefulRule; 3] = [DRIFT_ADDED, DRIFT_CHANGED, DRIFT_REMOVED];

/// The apiserver and controller-manager principals that create and reconcile the built-in
/// RBAC defaults (objects labelled `kubernetes.io/bootstrapping: rbac-defaults`): their work on
/// those objects is not drift even when the baseline does not list the defaults.
const DEFAULT_RECONCILERS: [&str; 2] = [
    "system:apiserver",
    "system:serviceaccount:kube-system:clusterrole-aggregation-controller",
];

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// `create`.
    Created,
    /// `update`/`patch`.
    Changed,
    /// `delete`/`deletecollection`.
    Removed,
}

impl Change {
    fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Changed => "changed",
            Self::Removed => "removed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "created" => Self::Created,
            "changed" => Self::Changed,
            "removed" => Self::Removed,
            _ => return None,
        })
    }
}

/// One version of an object: a row of `rbac_history`.
#[derive(Debug, Clone)]
pub struct RbacVersion {
    /// Cluster.
    pub cluster: String,
    /// When (µs).
    pub changed_at: i64,
    /// Which object.
    pub key: RbacKey,
    /// What happened.
    pub change: Change,
    /// The content after the change (`None` when removed or not logged).
    pub content: Option<RbacContent>,
    /// Whether the event carried the content.
    pub content_known: bool,
    /// Whether this version matches the baseline (`None` without a baseline).
    pub matches_baseline: Option<bool>,
    /// Who.
    pub principal: Option<String>,
    /// The request's verb.
    pub verb: String,
    /// The evidence event.
    pub audit_id: String,
}

/// The stateful drift detector.
///
/// At most [`crate::bounded_state::MAX_RBAC_OBJECTS`] objects are tracked; beyond, those
/// changed longest ago are forgotten (a later change to one is still compared with the
/// baseline; only its diff from the previous version is then unknown).
pub struct RbacDrift {
    baseline: Option<RbacBaseline>,
    state: HashMap<(String, RbacKey), RbacVersion>,
    evicted: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Versions for the archive's `rbac_history` table; `None` when no tables are kept.
    history: Option<TableBuffer<RbacVersion>>,
}

/// Content of the object the event's body shows after the change, if any.
fn logged_content(
    kind: RbacKind,
    verb: &str,
    namespace: &str,
    request: Option<&str>,
    response: Option<&str>,
) -> Option<(RbacContent, Value)> {
    let parse = |s: Option<&str>| s.and_then(|s| serde_json::from_str::<Value>(s).ok());
    // The response is the stored object; a patch request is only the patch.
    if let Some(obj) = parse(response)
        && let Some(c) = RbacContent::of(kind, &obj, namespace)
    {
        return Some((c, obj));
    }
    if verb != "patch"
        && let Some(obj) = parse(request)
        && let Some(c) = RbacContent::of(kind, &obj, namespace)
    {
        return Some((c, obj));
    }
    None
}

fn is_default_object(obj: Option<&Value>) -> bool {
    obj.and_then(|o| o.pointer("/metadata/labels/kubernetes.io~1bootstrapping"))
        .and_then(Value::as_str)
        == Some("rbac-defaults")
}

impl RbacDrift {
    /// A detector comparing with `baseline` (none: the state is kept, no drift findings);
    /// with `run_id` it also keeps the history for the archive (the id goes into file names).
    pub fn new(baseline: Option<RbacBaseline>, run_id: Option<&str>) -> Self {
        Self {
            baseline,
            state: HashMap::new(),
            evicted: Default::default(),
            history: run_id.map(|id| {
                TableBuffer::new(
                    Table::RbacHistory,
                    rbac_history_file_schema(),
                    id,
                    history_batch,
                )
            }),
        }
    }

    /// Objects forgotten because the cap was reached.
    pub fn evictions(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        self.evicted.clone()
    }

    /// Keeps the state within its cap.
    fn bound(&mut self) {
        crate::bounded_state::evict_oldest(
            &mut self.state,
            crate::bounded_state::MAX_RBAC_OBJECTS,
            &self.evicted,
            |v| v.changed_at,
        );
    }

    /// Objects currently tracked.
    pub fn tracked(&self) -> usize {
        self.state.len()
    }

    /// Restores the state from `rbac_history` rows read back from the archive (any order;
    /// the latest version of each object wins).
    pub fn restore(&mut self, batches: &[RecordBatch]) -> Result<usize, String> {
        let mut restored = 0;
        for b in batches {
            for v in versions_of(b)? {
                let slot = (v.cluster.clone(), v.key.clone());
                if self
                    .state
                    .get(&slot)
                    .is_none_or(|old| old.changed_at <= v.changed_at)
                {
                    self.state.insert(slot, v);
                }
                restored += 1;
            }
            self.bound();
        }
        Ok(restored)
    }

    /// Feeds a batch: every successful change of an RBAC object becomes a version in the
    /// history, and, with a baseline, a finding when it leaves the baseline.
    pub fn observe(&mut self, cols: &EventColumns<'_>, rows: usize) -> Vec<Finding> {
        let mut out = Vec::new();
        for row in 0..rows {
            let Some(kind) = cols.resource_str(row).and_then(RbacKind::from_resource) else {
                continue;
            };
            // An event without `objectRef.apiGroup` is judged by its resource alone (fail
            // closed: a missing field must not hide an RBAC change).
            if cols
                .api_group_str(row)
                .is_some_and(|g| g != "rbac.authorization.k8s.io")
                || cols.stage(row) != Some("ResponseComplete")
                || !cols.code(row).is_some_and(|c| (200..300).contains(&c))
            {
                continue;
            }
            let verb = cols.verb_str(row).unwrap_or("");
            let (namespace, name) = cols.namespace_and_name(row);
            let namespace = if kind == RbacKind::Role || kind == RbacKind::RoleBinding {
                namespace.unwrap_or("default")
            } else {
                ""
            };
            let change = match verb {
                "create" => Change::Created,
                "update" | "patch" => Change::Changed,
                "delete" => Change::Removed,
                "deletecollection" => {
                    self.deleted_collection(cols, row, kind, namespace, &mut out);
                    continue;
                }
                _ => continue,
            };
            let Some(name) = name else { continue };
            let key = RbacKey {
                kind,
                namespace: namespace.into(),
                name: name.into(),
            };
            let logged = if change == Change::Removed {
                None
            } else {
                logged_content(
                    kind,
                    verb,
                    namespace,
                    cols.request_object(row),
                    cols.response_object(row),
                )
            };
            let (content, object) = match logged {
                Some((c, o)) => (Some(c), Some(o)),
                None => (None, None),
            };
            let default_reconcile = is_default_object(object.as_ref())
                && cols
                    .principal_str(row)
                    .is_some_and(|p| DEFAULT_RECONCILERS.contains(&p));
            out.extend(self.record(cols, row, key, change, content, default_reconcile));
        }
        out
    }

    /// `deletecollection` of bindings or roles: the response lists the removed objects
    /// when logged at RequestResponse level.
    fn deleted_collection(
        &mut self,
        cols: &EventColumns<'_>,
        row: usize,
        kind: RbacKind,
        namespace: &str,
        out: &mut Vec<Finding>,
    ) {
        let items: Vec<String> = cols
            .response_object(row)
            .and_then(|s| serde_json::from_str::<Value>(s).ok())
            .and_then(|v| v.get("items").cloned())
            .and_then(|i| i.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|i| i.pointer("/metadata/name")?.as_str().map(str::to_string))
            .collect();
        for name in items {
            let key = RbacKey {
                kind,
                namespace: namespace.into(),
                name,
            };
            out.extend(self.record(cols, row, key, Change::Removed, None, false));
        }
    }

    fn record(
        &mut self,
        cols: &EventColumns<'_>,
        row: usize,
        key: RbacKey,
        change: Change,
        content: Option<RbacContent>,
        default_reconcile: bool,
    ) -> Option<Finding> {
        let cluster = cols.cluster(row);
        let at = cols.stage_at(row);
        let declared = self.baseline.as_ref().map(|b| b.get(&key));
        let matches_baseline = declared.map(|d| match (change, d, &content) {
            (Change::Removed, None, _) => true,
            (Change::Removed, Some(_), _) => false,
            (_, Some(d), Some(c)) => d == c,
            _ => false,
        });
        let slot = (cluster.clone(), key.clone());
        let previous = self.state.get(&slot).and_then(|p| p.content.clone());
        let version = RbacVersion {
            cluster: cluster.clone(),
            changed_at: at,
            key: key.clone(),
            change,
            // A removal needs no body; anything else is known only when its body was logged.
            content_known: change == Change::Removed || content.is_some(),
            content: content.clone(),
            matches_baseline,
            principal: cols.principal(row),
            verb: cols.verb(row).unwrap_or_default(),
            audit_id: cols.audit_id(row),
        };
        if let Some(h) = &mut self.history {
            h.push(&cluster, at, version.clone());
        }
        self.state.insert(slot, version);
        // Not `self.bound()`: `declared` still borrows the baseline.
        crate::bounded_state::evict_oldest(
            &mut self.state,
            crate::bounded_state::MAX_RBAC_OBJECTS,
            &self.evicted,
            |v| v.changed_at,
        );

        let declared = declared?;
        if matches_baseline == Some(true) || (declared.is_none() && default_reconcile) {
            return None;
        }
        let (rule, details) = match (change, declared, &content) {
            (Change::Removed, Some(d), _) => (
                DRIFT_REMOVED_RULE_ID,
                json!({"removed": key.display(), "baseline": d.to_json()}),
            ),
            (_, None, Some(c)) => (
                DRIFT_ADDED_RULE_ID,
                json!({"not_in_baseline": key.display(), "now": c.to_json(),
                       "previous": previous.map(|p| p.to_json())}),
            ),
            (_, None, None) => (
                DRIFT_ADDED_RULE_ID,
                json!({"not_in_baseline": key.display(),
                       "now": "not logged (Metadata level): read the live object"}),
            ),
            (_, Some(d), Some(c)) => (
                DRIFT_CHANGED_RULE_ID,
                json!({"object": key.display(), "diff_from_baseline": c.diff(d),
                       "diff_from_previous": previous.map(|p| c.diff(&p))}),
            ),
            (_, Some(d), None) => (
                DRIFT_CHANGED_RULE_ID,
                json!({"object": key.display(), "baseline": d.to_json(),
                       "now": "not logged (Metadata level): compare the live object with the baseline"}),
            ),
        };
        // `rule` is one of the three ids above, each in DRIFT_RULES.
        let identity = DRIFT_RULES
            .iter()
            .find(|r| r.id == rule)
            .copied()
            .unwrap_or(DRIFT_ADDED);
        let (title, severity) = (identity.title, identity.severity);
        let mut finding = Finding {
            rule_id: rule.into(),
            severity,
            title: title.into(),
            outcome: Outcome::Done,
            cluster,
            time: format_rfc3339_micros(at),
            last_time: format_rfc3339_micros(at),
            principal: cols.principal(row),
            impersonated: cols.impersonated(row),
            source_ip: cols.source_ip(row),
            verb: cols.verb(row),
            objects: Vec::new(),
            object: crate::finding::ObjectRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                resource: Some(key.kind.resource().into()),
                subresource: None,
                namespace: (!key.namespace.is_empty()).then(|| key.namespace.clone()),
                name: Some(key.name.clone()),
            },
            details: Some(details.to_string()),
            response_code: cols.code(row),
            evidence: vec![cols.audit_id(row)],
            count: 1,
            mitre: identity.mitre_list(),
            remediation: "Compare the object with the GitOps repository: revert the change (or \
                re-apply the baseline) unless it is an approved change, then update the \
                repository so the baseline says what the cluster should hold."
                .into(),
            time_micros: at,
        };
        finding.objects = vec![finding.object.display()];
        Some(finding)
    }

    /// Drops the versions recorded since the last [`RbacDrift::take_files`] (they will be
    /// recorded again: their events are being replayed).
    pub fn discard_pending(&mut self) {
        if let Some(h) = &mut self.history {
            h.discard();
        }
    }

    /// Versions recorded since the last call, as `rbac_history` Parquet files.
    pub fn take_files(&mut self) -> Result<Vec<FinishedFile>, String> {
        match &mut self.history {
            Some(h) => h.take_files(),
            None => Ok(Vec::new()),
        }
    }
}

fn history_batch(schema: &SchemaRef, rows: &[(i64, RbacVersion)]) -> Result<RecordBatch, String> {
    let strs = |f: &dyn Fn(&RbacVersion) -> Option<String>| -> ArrayRef {
        Arc::new(rows.iter().map(|r| f(&r.1)).collect::<StringArray>())
    };
    let mut subjects = ListBuilder::new(StringBuilder::new());
    for (_, v) in rows {
        match v.content.as_ref().and_then(RbacContent::subjects) {
            Some(s) => {
                for x in s {
                    subjects.values().append_value(x);
                }
                subjects.append(true);
            }
            None => subjects.append(false),
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(
            rows.iter()
                .map(|r| Some(r.1.changed_at))
                .collect::<TimestampMicrosecondArray>()
                .with_timezone("UTC"),
        ),
        strs(&|v| Some(v.key.kind.as_str().into())),
        strs(&|v| Some(v.key.namespace.clone())),
        strs(&|v| Some(v.key.name.clone())),
        strs(&|v| Some(v.change.as_str().into())),
        Arc::new(
            rows.iter()
                .map(|r| Some(r.1.content_known))
                .collect::<BooleanArray>(),
        ),
        strs(&|v| {
            v.content
                .as_ref()
                .and_then(|c| c.role_ref().map(str::to_string))
        }),
        Arc::new(subjects.finish()),
        strs(&|v| v.content.as_ref().and_then(RbacContent::rules_json)),
        Arc::new(
            rows.iter()
                .map(|r| r.1.matches_baseline)
                .collect::<BooleanArray>(),
        ),
        strs(&|v| v.principal.clone()),
        strs(&|v| Some(v.verb.clone())),
        strs(&|v| Some(v.audit_id.clone())),
    ];
    RecordBatch::try_new(Arc::clone(schema), columns).map_err(|e| e.to_string())
}

/// Reads `rbac_history` rows (with the `cluster` partition column) back into versions.
fn versions_of(b: &RecordBatch) -> Result<Vec<RbacVersion>, String> {
    let s = |name: &str| {
        b.column_by_name(name)
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| format!("rbac_history column {name} is missing or not Utf8"))
    };
    let (cluster, kind, ns, name, change) = (
        s("cluster")?,
        s("kind")?,
        s("namespace")?,
        s("name")?,
        s("change")?,
    );
    let (role_ref, rules, principal, verb, audit_id) = (
        s("role_ref")?,
        s("rules")?,
        s("principal")?,
        s("verb")?,
        s("audit_id")?,
    );
    let at = b
        .column_by_name("changed_at")
        .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
        .ok_or("rbac_history column changed_at is missing")?;
    let bools = |name: &str| {
        b.column_by_name(name)
            .and_then(|c| c.as_boolean_opt())
            .ok_or_else(|| format!("rbac_history column {name} is missing"))
    };
    let (known, matches) = (bools("content_known")?, bools("matches_baseline")?);
    let subjects = b
        .column_by_name("subjects")
        .and_then(|c| c.as_list_opt::<i32>())
        .ok_or("rbac_history column subjects is missing")?;
    let opt = |a: &StringArray, i: usize| a.is_valid(i).then(|| a.value(i).to_string());
    let mut out = Vec::with_capacity(b.num_rows());
    for i in 0..b.num_rows() {
        let Some(k) = RbacKind::from_kind(kind.value(i)) else {
            continue;
        };
        let content = if let Some(r) = opt(role_ref, i) {
            let list = subjects.value(i);
            let list = list.as_string::<i32>();
            Some(RbacContent::Binding {
                role_ref: r,
                subjects: list.iter().flatten().map(str::to_string).collect(),
            })
        } else if let Some(text) = opt(rules, i) {
            let v: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            match v.get("aggregationRule") {
                Some(a) => Some(RbacContent::Role {
                    rules: BTreeSet::new(),
                    aggregation: Some(a.to_string()),
                }),
                None => Some(RbacContent::Role {
                    rules: v
                        .as_array()
                        .map(|a| a.iter().map(normalise_rule).collect())
                        .unwrap_or_default(),
                    aggregation: None,
                }),
            }
        } else {
            None
        };
        out.push(RbacVersion {
            cluster: cluster.value(i).to_string(),
            changed_at: at.value(i),
            key: RbacKey {
                kind: k,
                namespace: ns.value(i).to_string(),
                name: name.value(i).to_string(),
            },
            change: Change::parse(change.value(i)).unwrap_or(Change::Changed),
            content,
            content_known: known.value(i),
            matches_baseline: matches.is_valid(i).then(|| matches.value(i)),
            principal: opt(principal, i),
            verb: verb.value(i).to_string(),
            audit_id: audit_id.value(i).to_string(),
        });
    }
    Ok(out)
}
