//! Azure Monitor diagnostic records of AKS's `kube-audit` and `kube-audit-admin` logs: an
//! Event Hubs body (`{"records":[...]}`, also through its Kafka endpoint) or a Storage
//! account's JSON Lines (one record per line).

use simd_json::prelude::*;

use super::{Envelope, Meta, Skipped, append_inline, decode_embedded, field, record_of_value};
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

/// The AKS cluster a resource id names, lower-cased (Azure upper-cases resource ids: the
/// cluster's own case is lost, lower case is the likelier spelling).
fn cluster_of(resource_id: Option<&str>) -> Option<String> {
    resource_id
        .and_then(|id| resource_part(id, "managedClusters"))
        .map(str::to_ascii_lowercase)
}

/// What the records of one resource share, worked out once: consecutive records of an
/// Event Hubs body name the same cluster, category and API server pod.
#[derive(Default)]
pub(crate) struct RecordCache {
    category: Option<String>,
    resource_id: Option<String>,
    pod: Option<String>,
    transport: Option<Envelope>,
    /// The cluster `resourceId` names, lower-cased (Azure upper-cases resource ids: the
    /// cluster's own case is lost, lower case is the likelier spelling).
    cluster: Option<String>,
    /// The `envelope` column's text up to the per-record keys.
    meta: String,
}

impl RecordCache {
    /// Starts `meta` for a record of `resource_id` (computing what it derives when the
    /// record differs from the last one) and sets `self.cluster`.
    fn describe(
        &mut self,
        meta: &mut Meta,
        category: Option<&str>,
        resource_id: Option<&str>,
        pod: Option<&str>,
    ) {
        let same = self.category.as_deref() == category
            && self.resource_id.as_deref() == resource_id
            && self.pod.as_deref() == pod
            && self.transport == meta.transport
            && !self.meta.is_empty();
        if !same {
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
            meta.str("pod", pod);
            self.meta.clear();
            self.meta.push_str(meta.text());
            self.category = category.map(str::to_string);
            self.resource_id = resource_id.map(str::to_string);
            self.pod = pod.map(str::to_string);
            self.transport = meta.transport;
            self.cluster = cluster_of(resource_id);
        } else {
            meta.restore(&self.meta);
            if self.cluster.is_none() {
                // Taken by a record being decoded further up (an envelope nested in one).
                self.cluster = cluster_of(resource_id);
            }
        }
    }
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
    // One pass over the record's keys and one over its properties (a record has a dozen).
    let (mut category, mut resource_id, mut time, mut properties) = (None, None, None, None);
    for (k, v) in record.entries() {
        match k {
            "category" => category = v.value.into_string(),
            "resourceId" => resource_id = v.value.into_string(),
            "time" => time = v.value.into_string(),
            "properties" => properties = Some(v),
            _ => {}
        }
    }
    if let Some(c) = category
        && c != "kube-audit"
        && c != "kube-audit-admin"
    {
        scratch.skip(Skipped::AzureOtherCategory, 1);
        return 0;
    }
    let (mut log, mut pod) = (None, None);
    for (k, v) in properties.into_iter().flat_map(|p| p.entries()) {
        match k {
            "log" => log = Some(v),
            "pod" => pod = v.value.into_string(),
            _ => {}
        }
    }
    let Scratch { meta, azure, .. } = &mut *scratch;
    azure.describe(meta, category, resource_id, pod);
    meta.str("time", time);
    meta.end();
    // Taken out of the cache while the event is decoded (which needs the whole scratch),
    // put back after: no copy of the cluster per record.
    let named = azure.cluster.take();
    let cluster = named.as_deref().unwrap_or(ctx.pos.cluster);
    let n = match log {
        Some(log) if log.value.is_object() => {
            let map = |c: &Ctx<'_>, b: &mut EventBatchBuilder, s: &mut Scratch| {
                append_event(log, None, c, item, b, s)
            };
            let what = "Azure record `properties.log`";
            Some(append_inline(
                record, what, cluster, item, ctx, b, scratch, quarantine, map,
            ))
        }
        Some(log) => log.value.into_string().map(|text| {
            decode_embedded(
                text,
                "properties.log",
                cluster,
                item,
                ctx,
                b,
                scratch,
                quarantine,
            )
        }),
        None => None,
    };
    scratch.azure.cluster = named;
    if let Some(n) = n {
        return n;
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
