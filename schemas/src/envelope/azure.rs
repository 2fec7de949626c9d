//! Azure Monitor diagnostic records of AKS's `kube-audit` and `kube-audit-admin` logs: an
//! Event Hubs body (`{"records":[...]}`, also through its Kafka endpoint) or a Storage
//! account's JSON Lines (one record per line).

use simd_json::prelude::*;

use super::skim::{Buffers, Skim, Text, once};
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
    if !is_audit_category(category) {
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
    let described = Described {
        category,
        resource_id,
        time,
        pod,
    };
    let n = in_record(described, ctx, scratch, |cluster, scratch| match log {
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
                text.as_bytes(),
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
    });
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

/// Whether a record of `category` holds audit events (records with no category are taken).
fn is_audit_category(category: Option<&str>) -> bool {
    category.is_none_or(|c| c == "kube-audit" || c == "kube-audit-admin")
}

/// What the `envelope` column says of a record, besides its format.
struct Described<'a> {
    category: Option<&'a str>,
    resource_id: Option<&'a str>,
    time: Option<&'a str>,
    pod: Option<&'a str>,
}

/// Sets the `envelope` column for a record and runs `decode` with the cluster its
/// `resourceId` names (or the input's).
fn in_record<R>(
    d: Described<'_>,
    ctx: &Ctx<'_>,
    scratch: &mut Scratch,
    decode: impl FnOnce(&str, &mut Scratch) -> R,
) -> R {
    let Scratch { meta, azure, .. } = &mut *scratch;
    azure.describe(meta, d.category, d.resource_id, d.pod);
    meta.str("time", d.time);
    meta.end();
    // Taken out of the cache while the event is decoded (which needs the whole scratch),
    // put back after: no copy of the cluster per record.
    let named = azure.cluster.take();
    let n = decode(named.as_deref().unwrap_or(ctx.pos.cluster), scratch);
    scratch.azure.cluster = named;
    n
}

/// A record of an Event Hubs body as the tapeless scan found it.
#[derive(Default)]
struct Skimmed {
    category: Option<Text>,
    resource_id: Option<Text>,
    time: Option<Text>,
    pod: Option<Text>,
    log: Option<Text>,
}

/// Decodes an Event Hubs body (`{"records":[...]}` and nothing else) with the tapeless scan
/// (see [`super::skim`]): each record's `properties.log` is unescaped once and parsed once.
/// `None`, with nothing decoded, when the body is not one the scan takes (a record without
/// a `properties.log` string, any field of an unexpected type, a duplicate key, ...): it is
/// then decoded from the tape by [`decode`], which decides the same for what both take.
pub(super) fn decode_skimmed(
    bytes: &[u8],
    text: &mut Buffers,
    ctx: &Ctx<'_>,
    b: &mut EventBatchBuilder,
    scratch: &mut Scratch,
    quarantine: &mut Bounded<'_>,
) -> Option<usize> {
    let mut records = Vec::new();
    scan_body(bytes, &mut records, text).map(|()| {
        let text = text.text();
        let get = |t: &Option<Text>| t.as_ref().map(|t| t.get(bytes, text));
        let mut n = 0;
        for (i, r) in records.iter().enumerate() {
            let category = get(&r.category);
            if !is_audit_category(category) {
                scratch.skip(Skipped::AzureOtherCategory, 1);
                continue;
            }
            let described = Described {
                category,
                resource_id: get(&r.resource_id),
                time: get(&r.time),
                pod: get(&r.pod),
            };
            let log = r
                .log
                .as_ref()
                .map(|t| t.bytes(bytes, text))
                .unwrap_or_default();
            n += in_record(described, ctx, scratch, |cluster, scratch| {
                let item = Some(i as u64);
                let what = "properties.log";
                decode_embedded(log, what, cluster, item, ctx, b, scratch, quarantine)
            });
        }
        n
    })
}

/// Scans `{"records":[...]}`, keeping each record's fields; `None` for anything else.
fn scan_body(bytes: &[u8], records: &mut Vec<Skimmed>, text: &mut Buffers) -> Option<()> {
    let mut s = Skim::new(bytes)?;
    let mut seen = false;
    s.object(|s, key| {
        // Another key could make the body something else (a Firehose request has `records`
        // too; `kind`, `messageType`, ... take precedence in detection).
        if key != Some(&b"records"[..]) || seen {
            return None;
        }
        seen = true;
        s.array(|s| {
            let r = scan_record(s, text)?;
            records.push(r);
            Some(())
        })
    })?;
    (seen && s.at_end()).then_some(())
}

/// One record: `category`, `resourceId`, `time`, `properties.log` (a string, required) and
/// `properties.pod` kept, other fields validated and skipped.
fn scan_record(s: &mut Skim<'_>, text: &mut Buffers) -> Option<Skimmed> {
    let mut r = Skimmed::default();
    let mut properties = false;
    s.object(|s, key| match key? {
        b"category" => once(&mut r.category, s.string(text)?),
        b"resourceId" => once(&mut r.resource_id, s.string(text)?),
        b"time" => once(&mut r.time, s.string(text)?),
        b"properties" if !properties => {
            properties = true;
            s.object(|s, key| match key? {
                b"log" => once(&mut r.log, s.string(text)?),
                b"pod" => once(&mut r.pod, s.string(text)?),
                _ => s.skip_value(),
            })
        }
        // A Firehose record's payload, or a second `properties`: the tape path decides.
        b"data" | b"properties" => None,
        _ => s.skip_value(),
    })?;
    r.log.is_some().then_some(r)
}
