//! Azure Monitor diagnostic records of AKS's `kube-audit` and `kube-audit-admin` logs: an
//! Event Hubs body (`{"records":[...]}`, also through its Kafka endpoint) or a Storage
//! account's JSON Lines (one record per line).

use simd_json::prelude::*;

use super::{Envelope, Skipped, decode_embedded, field, record_of_value, str_field};
use crate::decoder::{Bounded, Scratch};
use crate::event_builder::EventBatchBuilder;
use crate::event_mapping::{Ctx, append_event};
use crate::tape_span::Located;

/// A `{"records":[...]}` body, or one record.
pub(super) fn decode(
    root: Located<'_, '_>,
    item: Option<u64>,
    ctx: &Ctx<'_>,
    b: &mut EventBatchBuilder,
    scratch: &mut Scratch,
    quarantine: &mut Bounded<'_>,
) -> usize {
    let Some(records) = field(root, "records").filter(|r| r.value.is_array()) else {
        return decode_record(root, item, ctx, b, scratch, quarantine);
    };
    records
        .items()
        .enumerate()
        .map(|(i, r)| decode_record(r, Some(i as u64), ctx, b, scratch, quarantine))
        .sum()
}

/// The parts of an ARM resource id (`/SUBSCRIPTIONS/<s>/RESOURCEGROUPS/<g>/PROVIDERS/
/// MICROSOFT.CONTAINERSERVICE/MANAGEDCLUSTERS/<name>`), by their case-insensitive key.
fn resource_part<'a>(id: &'a str, key: &str) -> Option<&'a str> {
    let mut parts = id.split('/');
    while let Some(p) = parts.next() {
        if p.eq_ignore_ascii_case(key) {
            return parts.next().filter(|v| !v.is_empty());
        }
    }
    None
}

/// One Azure diagnostic record: `properties.log` holds the event, as a string (the API
/// server's stdout line) or an object; the cluster from `resourceId`'s last segment.
fn decode_record(
    record: Located<'_, '_>,
    item: Option<u64>,
    ctx: &Ctx<'_>,
    b: &mut EventBatchBuilder,
    scratch: &mut Scratch,
    quarantine: &mut Bounded<'_>,
) -> usize {
    let category = str_field(record, "category");
    if let Some(c) = category
        && c != "kube-audit"
        && c != "kube-audit-admin"
    {
        scratch.skip(Skipped::AzureOtherCategory, 1);
        return 0;
    }
    let resource_id = str_field(record, "resourceId");
    // Azure upper-cases resource ids: the cluster's own case is lost, lower case is the
    // likelier spelling.
    let cluster = resource_id
        .and_then(|id| resource_part(id, "managedClusters"))
        .map(str::to_ascii_lowercase);
    let cluster = cluster.as_deref().unwrap_or(ctx.pos.cluster);
    let properties = field(record, "properties");
    let meta = &mut scratch.meta;
    meta.begin(Envelope::AzureDiagnostic);
    meta.str("category", category);
    meta.str("resourceId", resource_id);
    meta.str(
        "subscription",
        resource_id.and_then(|id| resource_part(id, "subscriptions")),
    );
    meta.str(
        "resourceGroup",
        resource_id.and_then(|id| resource_part(id, "resourceGroups")),
    );
    meta.str("time", str_field(record, "time"));
    meta.str("pod", properties.and_then(|p| str_field(p, "pod")));
    meta.end();
    let log = properties.and_then(|p| field(p, "log"));
    if let Some(log) = log.filter(|l| l.value.is_object()) {
        let inner = ctx.for_cluster(cluster, ctx.doc, scratch);
        return match append_event(log, None, &inner, item, b, scratch) {
            Ok(()) => 1,
            Err(reason) => {
                let reason = format!("Azure record `properties.log`: {reason}");
                quarantine.push_with(|| record_of_value(record, &inner, item, reason, scratch));
                0
            }
        };
    }
    if let Some(text) = log.and_then(|l| l.value.into_string()) {
        return decode_embedded(
            text,
            "properties.log",
            cluster,
            item,
            ctx,
            b,
            scratch,
            quarantine,
        );
    }
    let reason = if properties.is_some_and(|p| p.value.is_object()) {
        "Azure diagnostic record: `properties.log` (a string or an object) missing"
    } else {
        "Azure diagnostic record: `properties` object with `log` expected"
    };
    let reason = reason.to_string();
    quarantine.push_with(|| record_of_value(record, ctx, item, reason, scratch));
    0
}
