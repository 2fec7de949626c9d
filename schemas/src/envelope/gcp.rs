//! Google Cloud's envelopes of GKE audit logs: a Cloud Logging `LogEntry` (one per line
//! in a Cloud Storage sink, a JSON array from `gcloud logging read --format=json`) and the
//! Pub/Sub push request and pull response that carry one as base64.

use simd_json::prelude::*;

use super::{Envelope, Skipped, append_inline, field, path, queue_payload, record_of_value};
use crate::decoder::{Bounded, Scratch};
use crate::event_builder::EventBatchBuilder;
use crate::event_mapping::Ctx;
use crate::gke_mapping::append_log_entry;
use crate::tape_span::Located;

/// A GKE audit `LogEntry`: mapped to an event row for `resource.labels.cluster_name`;
/// entries of GKE's own cluster-management service (`container.googleapis.com`) counted.
pub(super) fn decode_log_entry(
    root: Located<'_, '_>,
    item: Option<u64>,
    ctx: &Ctx<'_>,
    b: &mut EventBatchBuilder,
    scratch: &mut Scratch,
    quarantine: &mut Bounded<'_>,
) -> usize {
    // A missing `serviceName` is decoded, not dropped: unknown is no reason to be silent.
    let service = path(root, &["protoPayload", "serviceName"]).and_then(|s| s.value.into_string());
    if service.is_some_and(|s| s != "k8s.io") {
        scratch.skip(Skipped::GkeOtherService, 1);
        return 0;
    }
    let cluster = path(root, &["resource", "labels", "cluster_name"])
        .and_then(|c| c.value.into_string())
        .filter(|c| !c.is_empty())
        .unwrap_or(ctx.pos.cluster);
    // The mapping's reasons name the LogEntry already.
    let map = |c: &Ctx<'_>, b: &mut EventBatchBuilder, s: &mut Scratch| {
        append_log_entry(root, c, item, b, s)
    };
    append_inline(root, "", cluster, item, ctx, b, scratch, quarantine, map)
}

/// Queues the base64 `message.data` of a Pub/Sub push request, or of every message of a
/// pull response (`receivedMessages[]`), to be decoded once this input is done.
pub(super) fn take_payloads(
    format: Envelope,
    root: Located<'_, '_>,
    ctx: &Ctx<'_>,
    scratch: &mut Scratch,
    quarantine: &mut Bounded<'_>,
) -> usize {
    if format == Envelope::PubSubPush {
        match path(root, &["message", "data"]).and_then(|d| d.value.into_string()) {
            Some(text) => queue_payload(text, format, 0, "message.data", ctx, scratch, quarantine),
            None => {
                let reason = "Pub/Sub push request: `message.data` string missing".to_string();
                quarantine.push_with(|| record_of_value(root, ctx, None, reason, scratch));
            }
        }
        return 0;
    }
    let Some(messages) = field(root, "receivedMessages").filter(|m| m.value.is_array()) else {
        let reason = "Pub/Sub pull response: `receivedMessages` array missing".to_string();
        quarantine.push_with(|| record_of_value(root, ctx, None, reason, scratch));
        return 0;
    };
    for (i, m) in messages.items().enumerate() {
        let i = i as u64;
        match path(m, &["message", "data"]).and_then(|d| d.value.into_string()) {
            Some(text) => queue_payload(
                text,
                format,
                i,
                "receivedMessages[].message.data",
                ctx,
                scratch,
                quarantine,
            ),
            None => {
                let reason = "Pub/Sub received message: `message.data` string missing".to_string();
                quarantine.push_with(|| record_of_value(m, ctx, Some(i), reason, scratch));
            }
        }
    }
    0
}
