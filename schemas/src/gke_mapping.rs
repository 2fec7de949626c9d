//! The GKE mapping: a Cloud Logging `LogEntry` of GKE's Kubernetes audit log (a
//! `google.cloud.audit.AuditLog` in `protoPayload`) becomes a row of the events schema.
//! GKE does not log an audit.k8s.io Event, so some columns are derived (stage, level,
//! request URI, the response code when no `v1.Status` came back) and some are unknown
//! (user groups, uid and extra, impersonation, the request's query string); the `envelope`
//! column lists both and keeps the LogEntry verbatim. Field choices and their sources:
//! `schemas/ENVELOPES.md`, "GKE".

use simd_json::prelude::*;

use crate::decoder::Scratch;
use crate::envelope::{Envelope, field, path, str_field};
use crate::event_builder::EventBatchBuilder;
use crate::event_mapping::{Ctx, finish_row, json_text, write_json_string};
use crate::tape_span::{Doc, Located};
use crate::timestamp::parse_timestamp;

/// What GKE's audit log never carries: detectors reading these columns must treat a null
/// as unknown, not as absent.
pub const GKE_UNKNOWN_FIELDS: [&str; 5] = [
    "user.groups",
    "user.uid",
    "user.extra",
    "impersonatedUser",
    "requestURI.query",
];

/// The parts of a resource request, read from `resourceName` as the API server's request
/// info resolver reads a URL path (`namespaces/<ns>/<resource>/<name>/<subresource>`; a
/// namespace's own `status` and `finalize` are its subresources).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ResourcePath<'a> {
    pub(crate) group: &'a str,
    pub(crate) version: Option<&'a str>,
    pub(crate) namespace: Option<&'a str>,
    pub(crate) resource: Option<&'a str>,
    pub(crate) name: Option<&'a str>,
    pub(crate) subresource: Option<&'a str>,
}

/// Splits `resourceName` (`core/v1/namespaces/ns/pods/x/exec`,
/// `rbac.authorization.k8s.io/v1/clusterroles/x`); `None` for a non-resource path.
pub(crate) fn split_resource_name(name: &str) -> Option<ResourcePath<'_>> {
    let mut parts = name.split('/');
    let group = parts.next()?;
    let version = parts.next()?;
    let rest: Vec<&str> = parts.collect();
    let mut cur: &[&str] = &rest;
    if cur.is_empty() || version.is_empty() {
        return None;
    }
    let mut namespace = None;
    if cur[0] == "namespaces" && cur.len() > 1 {
        namespace = Some(cur[1]);
        if cur.len() > 2 && !matches!(cur[2], "status" | "finalize") {
            cur = &cur[2..];
        }
    }
    Some(ResourcePath {
        // The core group is "" in audit.k8s.io; GKE spells it `core`.
        group: if group == "core" { "" } else { group },
        version: Some(version),
        namespace,
        resource: cur.first().copied(),
        name: cur.get(1).copied(),
        subresource: cur.get(2).copied(),
    })
}

/// The HTTP status of a google.rpc code (googleapis `google/rpc/code.proto`).
fn http_of_rpc(code: i64, verb: Option<&str>) -> i32 {
    match code {
        0 if verb == Some("create") => 201,
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    }
}

/// `v` re-encoded without its top-level `@type` key (GKE injects the proto type into
/// request and response bodies); its `@type`, if it had one.
fn without_type<'i>(v: Located<'_, 'i>, doc: Doc<'_>, out: &mut Vec<u8>) -> Option<&'i str> {
    let mut ty = None;
    out.clear();
    out.push(b'{');
    let mut first = true;
    let mut tmp = Vec::new();
    for (k, val) in v.entries() {
        if k == "@type" {
            ty = val.value.into_string();
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        write_json_string(out, k);
        out.push(b':');
        out.extend_from_slice(json_text(val, doc, &mut tmp).as_bytes());
    }
    out.push(b'}');
    ty
}

/// Appends `root`, a GKE audit `LogEntry`, as a row for `ctx`'s cluster (the caller took it
/// from `resource.labels.cluster_name`). Errors name the field that makes it unusable.
pub(crate) fn append_log_entry(
    root: Located<'_, '_>,
    ctx: &Ctx<'_>,
    item: Option<u64>,
    b: &mut EventBatchBuilder,
    scratch: &mut Scratch,
) -> Result<(), String> {
    let doc = ctx.doc;
    let proto = field(root, "protoPayload").filter(|p| p.value.is_object());
    let proto = proto.ok_or("GKE LogEntry: `protoPayload` object missing")?;
    let operation = field(root, "operation");
    let insert_id = str_field(root, "insertId");
    let audit_id = operation
        .and_then(|o| str_field(o, "id"))
        .filter(|id| !id.is_empty())
        .or(insert_id.filter(|id| !id.is_empty()))
        .ok_or("GKE LogEntry: neither `operation.id` nor `insertId` (the audit ID) present")?;
    let time_text = str_field(root, "timestamp").ok_or("GKE LogEntry: `timestamp` missing")?;
    let time = parse_timestamp(time_text)
        .ok_or_else(|| format!("GKE LogEntry: `timestamp` is not a timestamp: {time_text:?}"))?
        .micros;
    let method = str_field(proto, "methodName");
    let verb = method.and_then(|m| m.rsplit('.').next());
    let resource_name = str_field(proto, "resourceName");
    // `io.k8s.get` (three segments) is a non-resource request such as `/readyz`.
    let non_resource = method.is_some_and(|m| m.split('.').count() <= 3);
    let parts = match non_resource {
        true => None,
        false => resource_name.and_then(split_resource_name),
    };
    let request_uri = match (&parts, resource_name) {
        (Some(_), Some(name)) if name.starts_with("core/") => {
            Some(format!("/api/{}", &name["core/".len()..]))
        }
        (Some(_), Some(name)) => Some(format!("/apis/{name}")),
        (None, Some(name)) => Some(format!("/{}", name.trim_start_matches('/'))),
        (_, None) => None,
    };
    let (first, last) = operation.map_or((None, None), |o| {
        (
            field(o, "first").and_then(|v| v.value.as_bool()),
            field(o, "last").and_then(|v| v.value.as_bool()),
        )
    });
    let stage = match (first, last) {
        (Some(true), None | Some(false)) => "ResponseStarted",
        _ => "ResponseComplete",
    };
    let request = field(proto, "request").filter(|r| r.value.is_object());
    let response = field(proto, "response").filter(|r| r.value.is_object());
    let level = match (request.is_some(), response.is_some()) {
        (true, true) => "RequestResponse",
        (true, false) => "Request",
        _ => "Metadata",
    };
    let labels = field(root, "labels").filter(|l| l.value.is_object());
    let label = |key: &str| labels.and_then(|l| str_field(l, key));

    // The response code: a v1.Status the API server answered with, else the rpc status.
    let status_response =
        response.filter(|r| str_field(*r, "@type") == Some("core.k8s.io/v1.Status"));
    let status_code = status_response
        .and_then(|r| field(r, "code"))
        .and_then(|c| c.value.as_i64())
        .and_then(|c| i32::try_from(c).ok());
    let rpc = field(proto, "status");
    let rpc_code = rpc
        .and_then(|s| field(s, "code"))
        .and_then(|c| c.value.as_i64());
    let mut code = status_code.unwrap_or_else(|| http_of_rpc(rpc_code.unwrap_or(0), verb));
    // The first half of an exec, attach or port-forward is the API server's 101 upgrade
    // (GKE logs no HTTP status for it; the rpc status of a started stream is OK).
    let upgrade = parts
        .as_ref()
        .and_then(|p| p.subresource)
        .is_some_and(|s| matches!(s, "exec" | "attach" | "portforward"));
    if stage == "ResponseStarted" && upgrade && status_code.is_none() && rpc_code.unwrap_or(0) == 0
    {
        code = 101;
    }

    b.cluster.append_value(ctx.pos.cluster);
    b.event_api_version.append_null();
    b.audit_id.append_value(audit_id);
    b.stage.append_value(stage);
    b.level.append_value(level);
    b.verb.append_option(verb);
    b.request_uri.append_option(request_uri.as_deref());
    b.user_username.append_option(
        path(proto, &["authenticationInfo", "principalEmail"]).and_then(|v| v.value.into_string()),
    );
    b.user_uid.append_null();
    b.user_groups.append_null();
    b.user_extra.append_null();
    b.impersonated_username.append_null();
    b.impersonated_uid.append_null();
    b.impersonated_groups.append_null();
    b.impersonated_extra.append_null();
    let metadata = field(proto, "requestMetadata");
    match metadata.and_then(|m| str_field(m, "callerIp")) {
        Some(ip) => {
            b.source_ips.values().append_value(ip);
            b.source_ips.append(true);
        }
        None => b.source_ips.append_null(),
    }
    b.user_agent
        .append_option(metadata.and_then(|m| str_field(m, "callerSuppliedUserAgent")));
    let p = parts.as_ref();
    b.resource.append_option(p.and_then(|p| p.resource));
    b.subresource.append_option(p.and_then(|p| p.subresource));
    b.namespace.append_option(p.and_then(|p| p.namespace));
    b.name.append_option(p.and_then(|p| p.name));
    b.object_uid.append_null();
    b.api_group.append_option(p.map(|p| p.group));
    b.api_version.append_option(p.and_then(|p| p.version));
    b.resource_version.append_null();
    b.response_code.append_value(code);
    b.response_status
        .append_option(status_response.and_then(|r| str_field(r, "status")));
    b.response_reason.append_option(
        status_response
            .and_then(|r| str_field(r, "reason"))
            .or_else(|| {
                rpc.and_then(|s| str_field(s, "message"))
                    .filter(|_| status_code.is_none() && rpc_code.unwrap_or(0) != 0)
            }),
    );
    b.response_message
        .append_option(status_response.and_then(|r| str_field(r, "message")));
    match status_response.and_then(|r| field(r, "details")) {
        Some(d) => {
            let text = json_text(d, doc, &mut scratch.json).into_owned();
            b.response_details.append_value(text)
        }
        None => b.response_details.append_null(),
    }
    b.authz_decision
        .append_option(label("authorization.k8s.io/decision"));
    b.authz_reason
        .append_option(label("authorization.k8s.io/reason"));
    match labels {
        Some(l) => {
            let text = json_text(l, doc, &mut scratch.json).into_owned();
            b.annotations.append_value(text)
        }
        None => b.annotations.append_null(),
    }
    let mut body = Vec::new();
    let request_type = request.and_then(|r| without_type(r, doc, &mut body));
    match request {
        Some(_) => b
            .request_object
            .append_value(String::from_utf8_lossy(&body)),
        None => b.request_object.append_null(),
    }
    let response_type = response.and_then(|r| without_type(r, doc, &mut body));
    match response {
        Some(_) => b
            .response_object
            .append_value(String::from_utf8_lossy(&body)),
        None => b.response_object.append_null(),
    }
    b.request_received_at.append_value(time);
    b.stage_at.append_value(time);
    b.unmapped.append_null();

    let mut inferred = vec!["stage", "level", "requestURI"];
    if status_code.is_none() {
        inferred.push("responseStatus.code");
    }
    if operation.and_then(|o| str_field(o, "id")).is_none() {
        inferred.push("auditID");
    }
    let resource = field(root, "resource");
    let resource_label = |key: &str| {
        resource
            .and_then(|r| path(r, &["labels", key]))
            .and_then(|v| v.value.into_string())
    };
    let meta = &mut scratch.meta;
    meta.begin(Envelope::GkeLogEntry);
    meta.str("logName", str_field(root, "logName"));
    meta.str("insertId", insert_id);
    meta.str("project", resource_label("project_id"));
    meta.str("location", resource_label("location"));
    meta.str("cluster_name", resource_label("cluster_name"));
    meta.str("receiveTimestamp", str_field(root, "receiveTimestamp"));
    meta.str("methodName", method);
    meta.str("requestType", request_type);
    meta.str("responseType", response_type);
    let list = |names: &[&str]| {
        let mut out = Vec::new();
        out.push(b'[');
        for (i, n) in names.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json_string(&mut out, n);
        }
        out.push(b']');
        String::from_utf8_lossy(&out).into_owned()
    };
    meta.raw("inferred", Some(&list(&inferred)));
    meta.raw("unknown", Some(&list(&GKE_UNKNOWN_FIELDS)));
    let entry = json_text(root, doc, &mut scratch.json).into_owned();
    scratch.meta.raw("logEntry", Some(&entry));
    scratch.meta.end();
    finish_row(root, ctx, item, b, scratch);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names_split_as_the_api_server_splits_paths() {
        let p = split_resource_name("core/v1/namespaces/ns/pods/web-0/exec").unwrap();
        assert_eq!(
            p,
            ResourcePath {
                group: "",
                version: Some("v1"),
                namespace: Some("ns"),
                resource: Some("pods"),
                name: Some("web-0"),
                subresource: Some("exec"),
            }
        );
        let p = split_resource_name("rbac.authorization.k8s.io/v1/clusterrolebindings/x").unwrap();
        assert_eq!(
            (p.group, p.resource, p.name, p.namespace),
            (
                "rbac.authorization.k8s.io",
                Some("clusterrolebindings"),
                Some("x"),
                None
            )
        );
        // A namespace itself, and its finalize subresource (Falco reads `finalize` as the resource).
        let p = split_resource_name("core/v1/namespaces/team-a/finalize").unwrap();
        assert_eq!(
            (p.resource, p.name, p.subresource, p.namespace),
            (
                Some("namespaces"),
                Some("team-a"),
                Some("finalize"),
                Some("team-a")
            )
        );
        let p = split_resource_name("core/v1/namespaces/ns/pods").unwrap();
        assert_eq!((p.resource, p.name), (Some("pods"), None));
        assert_eq!(split_resource_name("readyz"), None);
    }

    #[test]
    fn rpc_codes_map_to_http_statuses() {
        assert_eq!(http_of_rpc(0, Some("create")), 201);
        assert_eq!(http_of_rpc(0, Some("get")), 200);
        assert_eq!(http_of_rpc(7, None), 403);
        assert_eq!(http_of_rpc(5, None), 404);
        assert_eq!(http_of_rpc(16, None), 401);
        assert_eq!(http_of_rpc(13, None), 500);
    }
}
