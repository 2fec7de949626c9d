//! SQL functions that read Kubernetes objects (the JSON of `request_object` /
//! `response_object`), for rule conditions and for analysts' queries:
//!
//! - `k8s_pod_risks(obj)`: `privileged`, `hostPID`, `hostIPC`, `hostNetwork`,
//!   `hostPath:<path>` (sensitive paths), `capability:<CAP>` (dangerous added capabilities) of
//!   a Pod, or of the pod template of a Deployment, DaemonSet, StatefulSet, ReplicaSet, Job,
//!   ReplicationController or CronJob.
//! - `k8s_rbac_risks(obj)`: `verbs:*`, `resources:*`, `escalate`, `bind`, `impersonate`,
//!   `secrets`, `pods/exec` granted by a Role or ClusterRole's rules.
//! - `k8s_subjects(obj)`: a binding's subjects as `User:alice`, `Group:system:anonymous`,
//!   `ServiceAccount:ns/name`.
//! - `k8s_rbac_summary(obj)`: one line naming a binding's role and subjects, or a role's rules.
//! - `k8s_root_containers(obj)`: the containers of a Pod or pod template told to run as root
//!   (`runAsUser: 0` or `runAsNonRoot: false`, on the container or the pod).
//! - `k8s_csr_subject(obj)`: what a CertificateSigningRequest asks for, as `CN:<user>` and
//!   `O:<group>`, decoded from its PEM request.
//! - `k8s_result(request_object, response_object)`: the object a request resulted in: the
//!   response body, unless it is absent or a `Status` (a refusal, or a delete's answer), then
//!   the request body. For `patch` the request is only the patch, so the response decides.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, ListBuilder, StringArray, StringBuilder};
use arrow::datatypes::{DataType, Field};
use datafusion::common::{Result as DfResult, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;
use serde_json::Value;

/// Host paths whose mount gives a container the node: `hostPath:<path>` for these and below.
const SENSITIVE_HOST_PATHS: &[&str] = &[
    "/",
    "/etc",
    "/root",
    "/home",
    "/proc",
    "/sys",
    "/dev",
    "/boot",
    "/var/lib/kubelet",
    "/var/lib/docker",
    "/var/lib/containerd",
    "/var/run",
    "/run",
    "/var/log",
    "/etc/kubernetes",
];

/// Added capabilities that break container isolation.
const DANGEROUS_CAPABILITIES: &[&str] = &[
    "ALL",
    "SYS_ADMIN",
    "SYS_PTRACE",
    "SYS_MODULE",
    "NET_ADMIN",
    "DAC_READ_SEARCH",
    "BPF",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    PodRisks,
    RootContainers,
    RbacRisks,
    Subjects,
    RbacSummary,
    Result,
    CsrSubject,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct K8sFunction {
    name: &'static str,
    kind: Kind,
    signature: Signature,
}

fn list_type() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}

impl ScalarUDFImpl for K8sFunction {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(match self.kind {
            Kind::RbacSummary | Kind::Result => DataType::Utf8,
            _ => list_type(),
        })
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        if self.kind == Kind::Result {
            return resulting_object(&args);
        }
        let [arg] = &args.args[..] else {
            return exec_err!("{} takes one argument (a JSON object)", self.name);
        };
        let array = arg.to_array(args.number_rows)?;
        let array = arrow::compute::cast(&array, &DataType::Utf8)?;
        let Some(texts) = array.as_any().downcast_ref::<StringArray>() else {
            return exec_err!("{}: expected text", self.name);
        };
        let out: ArrayRef = match self.kind {
            Kind::RbacSummary => {
                let mut b = StringBuilder::with_capacity(texts.len(), 64 * texts.len());
                for t in texts.iter() {
                    b.append_option(parse(t).map(|v| rbac_summary(&v)));
                }
                Arc::new(b.finish())
            }
            kind => {
                let mut b = ListBuilder::new(StringBuilder::new());
                let mut items = Vec::new();
                for t in texts.iter() {
                    match parse(t) {
                        Some(v) => {
                            items.clear();
                            match kind {
                                Kind::PodRisks => pod_risks(&v, &mut items),
                                Kind::RootContainers => root_containers(&v, &mut items),
                                Kind::RbacRisks => rbac_risks(&v, &mut items),
                                Kind::CsrSubject => crate::csr::csr_subject(&v, &mut items),
                                _ => subjects(&v, &mut items),
                            }
                            for i in &items {
                                b.values().append_value(i);
                            }
                            b.append(true);
                        }
                        None => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
        };
        Ok(ColumnarValue::Array(out))
    }
}

fn texts(v: &ColumnarValue, rows: usize) -> DfResult<StringArray> {
    let array = arrow::compute::cast(&v.to_array(rows)?, &DataType::Utf8)?;
    match array.as_any().downcast_ref::<StringArray>() {
        Some(a) => Ok(a.clone()),
        None => exec_err!("expected text"),
    }
}

/// True when `json` is an object whose `kind` is `Status`.
fn is_status(json: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(borrow)]
        kind: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_str::<Kind<'_>>(json).is_ok_and(|k| k.kind.as_deref() == Some("Status"))
}

fn resulting_object(args: &ScalarFunctionArgs) -> DfResult<ColumnarValue> {
    let [request, response] = &args.args[..] else {
        return exec_err!("k8s_result takes two arguments: request_object, response_object");
    };
    let (request, response) = (
        texts(request, args.number_rows)?,
        texts(response, args.number_rows)?,
    );
    let mut b = StringBuilder::with_capacity(request.len(), 0);
    for (req, resp) in request.iter().zip(response.iter()) {
        b.append_option(match resp {
            Some(r) if !is_status(r) => Some(r),
            _ => req,
        });
    }
    Ok(ColumnarValue::Array(Arc::new(b.finish())))
}

fn parse(text: Option<&str>) -> Option<Value> {
    serde_json::from_str(text?).ok()
}

/// The `k8s_*` functions as DataFusion UDFs.
pub fn k8s_functions() -> Vec<ScalarUDF> {
    [
        ("k8s_pod_risks", Kind::PodRisks),
        ("k8s_root_containers", Kind::RootContainers),
        ("k8s_csr_subject", Kind::CsrSubject),
        ("k8s_rbac_risks", Kind::RbacRisks),
        ("k8s_subjects", Kind::Subjects),
        ("k8s_rbac_summary", Kind::RbacSummary),
        ("k8s_result", Kind::Result),
    ]
    .into_iter()
    .map(|(name, kind)| {
        let arity = if kind == Kind::Result { 2 } else { 1 };
        ScalarUDF::new_from_impl(K8sFunction {
            name,
            kind,
            signature: Signature::string(arity, Volatility::Immutable),
        })
    })
    .collect()
}

/// Registers the JSON functions (`json_get_str`, ...) and the `k8s_*` functions on `ctx`.
pub fn register_functions(ctx: &mut SessionContext) -> DfResult<()> {
    datafusion_functions_json::register_all(ctx)?;
    for f in k8s_functions() {
        ctx.register_udf(f);
    }
    Ok(())
}

/// The pod spec of a Pod or of a workload's pod template.
fn pod_spec(obj: &Value) -> Option<&Value> {
    let spec = obj.get("spec")?;
    match obj.get("kind").and_then(Value::as_str) {
        Some("CronJob") => spec.pointer("/jobTemplate/spec/template/spec"),
        Some("Pod") => Some(spec),
        Some(_) => spec.pointer("/template/spec"),
        // A patch or a partial object: look where either shape would have it.
        None => spec
            .pointer("/template/spec")
            .or_else(|| spec.pointer("/jobTemplate/spec/template/spec"))
            .or(Some(spec)),
    }
}

fn pod_risks(obj: &Value, out: &mut Vec<String>) {
    let Some(spec) = pod_spec(obj) else { return };
    for flag in ["hostPID", "hostIPC", "hostNetwork"] {
        if spec.get(flag).and_then(Value::as_bool) == Some(true) {
            out.push(flag.to_string());
        }
    }
    let containers = ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .filter_map(|k| spec.get(*k)?.as_array())
        .flatten();
    let mut privileged = false;
    for c in containers {
        let sc = c.get("securityContext");
        if sc
            .and_then(|s| s.get("privileged"))
            .and_then(Value::as_bool)
            == Some(true)
        {
            privileged = true;
        }
        let added = sc
            .and_then(|s| s.pointer("/capabilities/add"))
            .and_then(Value::as_array);
        for cap in added.into_iter().flatten().filter_map(Value::as_str) {
            let cap = cap.trim_start_matches("CAP_");
            if DANGEROUS_CAPABILITIES.contains(&cap) {
                let risk = format!("capability:{cap}");
                if !out.contains(&risk) {
                    out.push(risk);
                }
            }
        }
    }
    if privileged {
        out.insert(0, "privileged".into());
    }
    let volumes = spec.get("volumes").and_then(Value::as_array);
    for v in volumes.into_iter().flatten() {
        if let Some(path) = v.pointer("/hostPath/path").and_then(Value::as_str) {
            let trimmed = path.trim_end_matches('/');
            let trimmed = if trimmed.is_empty() { "/" } else { trimmed };
            let sensitive = SENSITIVE_HOST_PATHS.iter().any(|s| {
                trimmed == *s
                    || (*s != "/" && trimmed.starts_with(s) && trimmed[s.len()..].starts_with('/'))
            }) || trimmed.ends_with(".sock");
            if sensitive {
                out.push(format!("hostPath:{trimmed}"));
            }
        }
    }
}

/// Containers told to run as root: `runAsUser: 0`, or `runAsNonRoot: false`, set on the
/// container or inherited from the pod's security context (a container that sets neither
/// runs as its image says, which the spec cannot tell).
fn root_containers(obj: &Value, out: &mut Vec<String>) {
    let Some(spec) = pod_spec(obj) else { return };
    let root = |sc: Option<&Value>| -> Option<bool> {
        let sc = sc?;
        match (
            sc.get("runAsUser").and_then(Value::as_i64),
            sc.get("runAsNonRoot").and_then(Value::as_bool),
        ) {
            (Some(0), _) | (None, Some(false)) => Some(true),
            (Some(_), _) | (None, Some(true)) => Some(false),
            (None, None) => None,
        }
    };
    let pod_root = root(spec.get("securityContext"));
    let containers = ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .filter_map(|k| spec.get(*k)?.as_array())
        .flatten();
    for c in containers {
        if root(c.get("securityContext")).or(pod_root) == Some(true) {
            let name = c.get("name").and_then(Value::as_str).unwrap_or("?");
            out.push(name.to_string());
        }
    }
}

fn strings(v: Option<&Value>) -> Vec<&str> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn rbac_risks(obj: &Value, out: &mut Vec<String>) {
    let rules = obj.get("rules").and_then(Value::as_array);
    let mut push = |r: &str| {
        if !out.iter().any(|o| o == r) {
            out.push(r.to_string());
        }
    };
    for rule in rules.into_iter().flatten() {
        let verbs = strings(rule.get("verbs"));
        let resources = strings(rule.get("resources"));
        if verbs.contains(&"*") {
            push("verbs:*");
        }
        if resources.contains(&"*") {
            push("resources:*");
        }
        for v in ["escalate", "bind", "impersonate"] {
            if verbs.contains(&v) {
                push(v);
            }
        }
        let reads = verbs
            .iter()
            .any(|v| matches!(*v, "*" | "get" | "list" | "watch"));
        if reads && resources.iter().any(|r| matches!(*r, "secrets" | "*")) {
            push("secrets");
        }
        let creates = verbs.iter().any(|v| matches!(*v, "*" | "create" | "get"));
        if creates
            && resources
                .iter()
                .any(|r| matches!(*r, "pods/exec" | "pods/*" | "*"))
        {
            push("pods/exec");
        }
    }
}

fn subject_name(s: &Value) -> Option<String> {
    let kind = s.get("kind")?.as_str()?;
    let name = s.get("name")?.as_str()?;
    Some(match (kind, s.get("namespace").and_then(Value::as_str)) {
        ("ServiceAccount", Some(ns)) => format!("ServiceAccount:{ns}/{name}"),
        _ => format!("{kind}:{name}"),
    })
}

fn subjects(obj: &Value, out: &mut Vec<String>) {
    let subjects = obj.get("subjects").and_then(Value::as_array);
    out.extend(subjects.into_iter().flatten().filter_map(subject_name));
}

fn rbac_summary(obj: &Value) -> String {
    if let Some(role) = obj.get("roleRef") {
        let mut s = Vec::new();
        subjects(obj, &mut s);
        return format!(
            "{}/{} -> {}",
            role.get("kind").and_then(Value::as_str).unwrap_or("?"),
            role.get("name").and_then(Value::as_str).unwrap_or("?"),
            if s.is_empty() {
                "(no subjects)".to_string()
            } else {
                s.join(", ")
            }
        );
    }
    let rules = obj.get("rules").and_then(Value::as_array);
    let parts: Vec<String> = rules
        .into_iter()
        .flatten()
        .map(|r| {
            format!(
                "[{}] on [{}]",
                strings(r.get("verbs")).join(","),
                strings(r.get("resources")).join(",")
            )
        })
        .collect();
    if parts.is_empty() {
        "(no rules)".into()
    } else {
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn risks(f: fn(&Value, &mut Vec<String>), json: &str) -> Vec<String> {
        let mut out = Vec::new();
        f(&serde_json::from_str(json).unwrap(), &mut out);
        out
    }

    #[test]
    fn pod_risks_are_found_in_pods_and_in_workload_templates() {
        let pod = r#"{"kind":"Pod","spec":{"hostPID":true,"containers":[{"name":"a"},
            {"name":"b","securityContext":{"privileged":true,"capabilities":{"add":["CAP_SYS_ADMIN","CHOWN"]}}}],
            "volumes":[{"hostPath":{"path":"/var/run/docker.sock"}},{"hostPath":{"path":"/data/cache"}},{"hostPath":{"path":"/etc/"}}]}}"#;
        assert_eq!(
            risks(pod_risks, pod),
            [
                "privileged",
                "hostPID",
                "capability:SYS_ADMIN",
                "hostPath:/var/run/docker.sock",
                "hostPath:/etc"
            ]
        );
        let cron = r#"{"kind":"CronJob","spec":{"jobTemplate":{"spec":{"template":{"spec":{"hostNetwork":true,"containers":[]}}}}}}"#;
        assert_eq!(risks(pod_risks, cron), ["hostNetwork"]);
        let deploy = r#"{"kind":"Deployment","spec":{"template":{"spec":{"containers":[{"securityContext":{"privileged":false}}],
            "volumes":[{"hostPath":{"path":"/etcetera"}}]}}}}"#;
        assert!(risks(pod_risks, deploy).is_empty());
    }

    #[test]
    fn root_containers_are_read_from_the_container_or_the_pod() {
        let pod = r#"{"kind":"Pod","spec":{"securityContext":{"runAsUser":0},"containers":[
            {"name":"inherits"},{"name":"overrides","securityContext":{"runAsUser":1000}},
            {"name":"says-so","securityContext":{"runAsNonRoot":false}}]}}"#;
        assert_eq!(risks(root_containers, pod), ["inherits", "says-so"]);
        let deploy = r#"{"kind":"Deployment","spec":{"template":{"spec":{"containers":[
            {"name":"app","securityContext":{"runAsNonRoot":true}},{"name":"unknown"}]}}}}"#;
        assert!(risks(root_containers, deploy).is_empty());
    }

    #[test]
    fn rbac_risks_subjects_and_summary() {
        let role = r#"{"kind":"ClusterRole","rules":[{"verbs":["get","list"],"resources":["secrets"]},
            {"verbs":["*"],"resources":["pods/exec"]},{"verbs":["bind","escalate"],"resources":["clusterroles"]}]}"#;
        assert_eq!(
            risks(rbac_risks, role),
            ["secrets", "verbs:*", "pods/exec", "escalate", "bind"]
        );
        let binding = r#"{"kind":"ClusterRoleBinding","roleRef":{"kind":"ClusterRole","name":"cluster-admin"},
            "subjects":[{"kind":"Group","name":"system:anonymous"},{"kind":"ServiceAccount","name":"x","namespace":"dev"}]}"#;
        assert_eq!(
            risks(subjects, binding),
            ["Group:system:anonymous", "ServiceAccount:dev/x"]
        );
        assert_eq!(
            rbac_summary(&serde_json::from_str(binding).unwrap()),
            "ClusterRole/cluster-admin -> Group:system:anonymous, ServiceAccount:dev/x"
        );
    }
}
