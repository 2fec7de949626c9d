//! Shippers' wrappers of a self-managed cluster's `audit.log`: one line in a field (Fluent
//! Bit `log`; Fluentd, Vector, Filebeat `message`), OpenTelemetry's `otlp_json` encoding,
//! and OpenShift's log forwarder (the event's fields inline, ViaQ fields beside them).

use simd_json::prelude::*;

use super::{
    Envelope, append_inline, decode_embedded, decode_field, field, path, record_of_value,
    shipper_line, str_field,
};
use crate::decoder::{Bounded, Scratch};
use crate::event_builder::EventBatchBuilder;
use crate::event_mapping::{Ctx, append_event};
use crate::tape_span::Located;

/// A wrapper holding one `audit.log` line as a string.
pub(super) fn decode_line(
    root: Located<'_, '_>,
    item: Option<u64>,
    ctx: &Ctx<'_>,
    b: &mut EventBatchBuilder,
    scratch: &mut Scratch,
    quarantine: &mut Bounded<'_>,
) -> usize {
    let Some((name, text)) = shipper_line(root) else {
        let reason =
            "shipper record: `log` or `message` holding the event as JSON text expected".into();
        quarantine.push_with(|| record_of_value(root, ctx, item, reason, scratch));
        return 0;
    };
    scratch.meta.begin(Envelope::Shipper);
    scratch.meta.str("field", Some(name));
    scratch.meta.end();
    decode_embedded(
        text.as_bytes(),
        name,
        ctx.pos.cluster,
        item,
        ctx,
        b,
        scratch,
        quarantine,
    )
}

/// The string value of the OTLP attribute `key` in `attributes` (`[{key, value}]`).
fn otlp_attribute<'i>(attributes: Option<Located<'_, 'i>>, key: &str) -> Option<&'i str> {
    attributes?.items().find_map(|a| {
        (str_field(a, "key")? == key)
            .then(|| path(a, &["value", "stringValue"]).and_then(|v| v.value.into_string()))
            .flatten()
    })
}

/// OpenTelemetry logs in `otlp_json`: each log record's `body.stringValue` holds one line
/// of `audit.log`; the cluster from the resource attribute `k8s.cluster.name` (or
/// OpenShift's `openshift.cluster.uid`).
pub(super) fn decode_otlp(
    root: Located<'_, '_>,
    ctx: &Ctx<'_>,
    b: &mut EventBatchBuilder,
    scratch: &mut Scratch,
    quarantine: &mut Bounded<'_>,
) -> usize {
    let mut n = 0;
    let mut index = 0u64;
    let Some(resource_logs) = field(root, "resourceLogs").filter(|r| r.value.is_array()) else {
        let reason = "OTLP logs: `resourceLogs` array expected".to_string();
        quarantine.push_with(|| record_of_value(root, ctx, None, reason, scratch));
        return 0;
    };
    for rl in resource_logs.items() {
        let attributes = path(rl, &["resource", "attributes"]);
        let cluster = otlp_attribute(attributes, "k8s.cluster.name")
            .or_else(|| otlp_attribute(attributes, "openshift.cluster.uid"))
            .unwrap_or(ctx.pos.cluster);
        let scopes = field(rl, "scopeLogs").into_iter().flat_map(|s| s.items());
        for record in
            scopes.flat_map(|s| field(s, "logRecords").into_iter().flat_map(|r| r.items()))
        {
            let i = index;
            index += 1;
            let meta = &mut scratch.meta;
            meta.begin(Envelope::OtlpJson);
            meta.str("timeUnixNano", str_field(record, "timeUnixNano"));
            meta.str(
                "observedTimeUnixNano",
                str_field(record, "observedTimeUnixNano"),
            );
            meta.end();
            let text = path(record, &["body", "stringValue"]).and_then(|v| v.value.into_string());
            n += decode_field(
                record,
                text,
                "body.stringValue",
                cluster,
                i,
                ctx,
                b,
                scratch,
                quarantine,
            );
        }
    }
    n
}

/// An event forwarded by OpenShift's ClusterLogForwarder: the event's own fields inline,
/// the cluster in `openshift.cluster_id`, the audit level moved to `k8s_audit_level` (the
/// event mapping reads it back; ViaQ's own `level` is kept in `unmapped`).
pub(super) fn decode_openshift(
    root: Located<'_, '_>,
    item: Option<u64>,
    ctx: &Ctx<'_>,
    b: &mut EventBatchBuilder,
    scratch: &mut Scratch,
    quarantine: &mut Bounded<'_>,
) -> usize {
    let openshift = field(root, "openshift");
    let cluster = openshift
        .and_then(|o| str_field(o, "cluster_id"))
        .filter(|c| !c.is_empty())
        .unwrap_or(ctx.pos.cluster);
    let meta = &mut scratch.meta;
    meta.begin(Envelope::OpenShift);
    meta.str(
        "cluster_id",
        openshift.and_then(|o| str_field(o, "cluster_id")),
    );
    meta.str("hostname", str_field(root, "hostname"));
    meta.str("log_type", str_field(root, "log_type"));
    meta.str("log_source", str_field(root, "log_source"));
    meta.end();
    let map = |c: &Ctx<'_>, b: &mut EventBatchBuilder, s: &mut Scratch| {
        append_event(root, None, c, item, b, s)
    };
    let what = "OpenShift forwarded event";
    append_inline(root, what, cluster, item, ctx, b, scratch, quarantine, map)
}
