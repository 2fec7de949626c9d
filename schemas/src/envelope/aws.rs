//! AWS's envelopes of EKS audit events: CloudWatch Logs subscription messages, the
//! `filter-log-events` / `get-log-events` output, Logs Insights rows, and the transports
//! that carry subscription messages as base64 (Lambda, Firehose HTTP endpoint, Kinesis).

use simd_json::prelude::*;

use super::skim::{Buffers, Skim, Text, once};
use super::{
    Envelope, Meta, Skipped, append_inline, decode_embedded, decode_field, field, path,
    queue_payload, record_of_value, str_field,
};
use crate::decoder::{Bounded, Scratch};
use crate::event_builder::EventBatchBuilder;
use crate::event_mapping::Ctx;
use crate::tape_span::Located;

/// The EKS cluster a log group belongs to: `/aws/eks/<cluster>/cluster`.
fn eks_cluster(group: &str) -> Option<&str> {
    group
        .strip_prefix("/aws/eks/")?
        .strip_suffix("/cluster")
        .filter(|c| !c.is_empty() && !c.contains('/'))
}

/// Whether a log stream holds audit events (the group also holds the control plane's
/// klog text, in streams named after their component).
fn is_audit_stream(stream: &str) -> bool {
    stream.starts_with("kube-apiserver-audit")
}

/// A CloudWatch Logs subscription message (what Kinesis, Firehose and Lambda deliver, once
/// un-gzipped): `DATA_MESSAGE` with `logEvents[].message` each holding one event as a
/// string; the cluster from the EKS log group `/aws/eks/<cluster>/cluster`.
pub(super) fn decode_subscription(
    root: Located<'_, '_>,
    ctx: &Ctx<'_>,
    b: &mut EventBatchBuilder,
    scratch: &mut Scratch,
    quarantine: &mut Bounded<'_>,
) -> usize {
    let message_type = str_field(root, "messageType");
    if message_type == Some("CONTROL_MESSAGE") {
        scratch.skip(Skipped::CloudWatchControlMessage, 1);
        return 0;
    }
    let log_events = field(root, "logEvents").filter(|v| v.value.is_array());
    let (Some("DATA_MESSAGE"), Some(log_events)) = (message_type, log_events) else {
        let reason = match message_type {
            Some(t) if t != "DATA_MESSAGE" => {
                format!("CloudWatch Logs message: unknown messageType {t:?}")
            }
            _ => "CloudWatch Logs message: `messageType` DATA_MESSAGE with a `logEvents` array expected"
                .to_string(),
        };
        quarantine.push_with(|| record_of_value(root, ctx, None, reason, scratch));
        return 0;
    };
    let stream = str_field(root, "logStream").unwrap_or_default();
    if !is_audit_stream(stream) {
        scratch.skip(
            Skipped::CloudWatchOtherStream,
            log_events.items().count() as u64,
        );
        return 0;
    }
    let group = str_field(root, "logGroup");
    let cluster = group.and_then(eks_cluster).unwrap_or(ctx.pos.cluster);
    let mark = subscription_meta(&mut scratch.meta, str_field(root, "owner"), group, stream);
    let mut n = 0;
    for (i, item) in log_events.items().enumerate() {
        let i = i as u64;
        let timestamp = field(item, "timestamp").and_then(|t| t.value.as_i64());
        log_event_meta(&mut scratch.meta, mark, str_field(item, "id"), timestamp);
        let text = str_field(item, "message");
        n += decode_field(
            item,
            text,
            "logEvents[].message",
            cluster,
            i,
            ctx,
            b,
            scratch,
            quarantine,
        );
    }
    n
}

/// Starts the `envelope` column of a subscription message's events; returns where the
/// per-event keys start.
fn subscription_meta(
    meta: &mut Meta,
    owner: Option<&str>,
    group: Option<&str>,
    stream: &str,
) -> usize {
    meta.begin(Envelope::CloudWatchSubscription);
    meta.str("owner", owner);
    meta.str("logGroup", group);
    meta.str("logStream", Some(stream));
    meta.mark()
}

/// Ends the `envelope` column for one log event of a subscription message.
fn log_event_meta(meta: &mut Meta, mark: usize, id: Option<&str>, timestamp: Option<i64>) {
    meta.truncate(mark);
    meta.str("id", id);
    meta.int("timestamp", timestamp);
    meta.end();
}

/// A log event of a subscription message as the tapeless scan found it.
struct LogEvent {
    id: Option<Text>,
    timestamp: Option<i64>,
    message: Text,
}

/// A subscription message's fields as the tapeless scan found them.
#[derive(Default)]
struct Message {
    message_type: Option<Text>,
    owner: Option<Text>,
    group: Option<Text>,
    stream: Option<Text>,
    log_events: bool,
}

/// Decodes a CloudWatch Logs subscription `DATA_MESSAGE` with the tapeless scan (see
/// [`super::skim`]): each log event's `message` is unescaped once and parsed once. `None`,
/// with nothing decoded, when the message is not one the scan takes (another message type,
/// a log event without a `message` string, a field of an unexpected type or unknown at the
/// top, a duplicate key, ...): it is then decoded from the tape by [`decode_subscription`],
/// which decides the same for what both take.
pub(super) fn decode_skimmed(
    bytes: &[u8],
    text: &mut Buffers,
    ctx: &Ctx<'_>,
    b: &mut EventBatchBuilder,
    scratch: &mut Scratch,
    quarantine: &mut Bounded<'_>,
) -> Option<usize> {
    let mut events = Vec::new();
    scan_message(bytes, &mut events, text).and_then(|m| {
        let text = text.text();
        let get = |t: &Option<Text>| t.as_ref().map(|t| t.get(bytes, text));
        if get(&m.message_type) != Some("DATA_MESSAGE") || !m.log_events {
            return None;
        }
        let stream = get(&m.stream).unwrap_or_default();
        if !is_audit_stream(stream) {
            scratch.skip(Skipped::CloudWatchOtherStream, events.len() as u64);
            return Some(0);
        }
        let group = get(&m.group);
        let cluster = group.and_then(eks_cluster).unwrap_or(ctx.pos.cluster);
        let mark = subscription_meta(&mut scratch.meta, get(&m.owner), group, stream);
        let mut n = 0;
        for (i, e) in events.iter().enumerate() {
            log_event_meta(&mut scratch.meta, mark, get(&e.id), e.timestamp);
            let message = e.message.bytes(bytes, text);
            let (what, item) = ("logEvents[].message", Some(i as u64));
            n += decode_embedded(message, what, cluster, item, ctx, b, scratch, quarantine);
        }
        Some(n)
    })
}

/// Scans a subscription message, keeping its fields and log events; `None` for what the
/// scan does not take.
fn scan_message(bytes: &[u8], events: &mut Vec<LogEvent>, text: &mut Buffers) -> Option<Message> {
    let mut s = Skim::new(bytes)?;
    let mut m = Message::default();
    s.object(|s, key| match key? {
        b"messageType" => once(&mut m.message_type, s.string(text)?),
        b"owner" => once(&mut m.owner, s.string(text)?),
        b"logGroup" => once(&mut m.group, s.string(text)?),
        b"logStream" => once(&mut m.stream, s.string(text)?),
        b"subscriptionFilters" | b"policyLevel" => s.skip_value(),
        b"logEvents" if !m.log_events => {
            m.log_events = true;
            s.array(|s| {
                let e = scan_log_event(s, text)?;
                events.push(e);
                Some(())
            })
        }
        // Any other key (`kind`, `openshift`, a second `logEvents`): the tape path decides.
        _ => None,
    })?;
    s.at_end().then_some(m)
}

/// One log event: `id`, `timestamp` (an integer) and `message` (a string, required) kept,
/// other fields validated and skipped.
fn scan_log_event(s: &mut Skim<'_>, text: &mut Buffers) -> Option<LogEvent> {
    let (mut id, mut timestamp, mut message) = (None, None, None);
    s.object(|s, key| match key? {
        b"id" => once(&mut id, s.string(text)?),
        b"message" => once(&mut message, s.string(text)?),
        b"timestamp" if timestamp.is_none() => {
            timestamp = Some(s.integer()?);
            Some(())
        }
        b"timestamp" => None,
        _ => s.skip_value(),
    })?;
    Some(LogEvent {
        id,
        timestamp,
        message: message?,
    })
}

/// `aws logs filter-log-events` (events of many streams, each naming its `logStreamName`)
/// or `get-log-events` (one stream's events) output: `events[].message`. The log group is
/// in the request, not the output: the events get the input's cluster.
pub(super) fn decode_api_output(
    root: Located<'_, '_>,
    ctx: &Ctx<'_>,
    b: &mut EventBatchBuilder,
    scratch: &mut Scratch,
    quarantine: &mut Bounded<'_>,
) -> usize {
    let Some(events) = field(root, "events").filter(|v| v.value.is_array()) else {
        let reason = "CloudWatch Logs API output: `events` array expected".to_string();
        quarantine.push_with(|| record_of_value(root, ctx, None, reason, scratch));
        return 0;
    };
    let mut n = 0;
    for (i, item) in events.items().enumerate() {
        let i = i as u64;
        let stream = str_field(item, "logStreamName");
        if stream.is_some_and(|s| !is_audit_stream(s)) {
            scratch.skip(Skipped::CloudWatchOtherStream, 1);
            continue;
        }
        let meta = &mut scratch.meta;
        meta.begin(Envelope::CloudWatchApi);
        meta.str("logStream", stream);
        meta.str("eventId", str_field(item, "eventId"));
        meta.int(
            "timestamp",
            field(item, "timestamp").and_then(|t| t.value.as_i64()),
        );
        meta.end();
        let text = str_field(item, "message");
        n += decode_field(
            item,
            text,
            "events[].message",
            ctx.pos.cluster,
            i,
            ctx,
            b,
            scratch,
            quarantine,
        );
    }
    n
}

/// One CloudWatch Logs Insights result row: `@message` holds the event; `@log`
/// (`<account>:<group>`) names the cluster when the query selected it; `@timestamp` has no
/// zone (UTC) and is kept as it was.
pub(super) fn decode_insights_row(
    root: Located<'_, '_>,
    item: Option<u64>,
    ctx: &Ctx<'_>,
    b: &mut EventBatchBuilder,
    scratch: &mut Scratch,
    quarantine: &mut Bounded<'_>,
) -> usize {
    let stream = str_field(root, "@logStream");
    if stream.is_some_and(|s| !is_audit_stream(s)) {
        scratch.skip(Skipped::CloudWatchOtherStream, 1);
        return 0;
    }
    let log = str_field(root, "@log");
    let (account, group) = match log.and_then(|l| l.split_once(':')) {
        Some((a, g)) => (Some(a), Some(g)),
        None => (None, log),
    };
    let cluster = group.and_then(eks_cluster).unwrap_or(ctx.pos.cluster);
    let meta = &mut scratch.meta;
    meta.begin(Envelope::CloudWatchInsights);
    meta.str("account", account);
    meta.str("logGroup", group);
    meta.str("logStream", stream);
    meta.str("timestamp", str_field(root, "@timestamp"));
    meta.str("ptr", str_field(root, "@ptr"));
    meta.end();
    match field(root, "@message") {
        Some(m) if m.value.is_str() => {
            let text = m.value.into_string().unwrap_or_default();
            let text = text.as_bytes();
            decode_embedded(text, "@message", cluster, item, ctx, b, scratch, quarantine)
        }
        // A pretty-printed copy shows `@message` as the event object itself.
        Some(m) if m.value.is_object() => {
            let map = |c: &Ctx<'_>, b: &mut EventBatchBuilder, s: &mut Scratch| {
                crate::event_mapping::append_event(m, None, c, item, b, s)
            };
            let what = "Logs Insights `@message`";
            append_inline(root, what, cluster, item, ctx, b, scratch, quarantine, map)
        }
        _ => {
            let reason = "Logs Insights row: `@message` (the event) missing".to_string();
            quarantine.push_with(|| record_of_value(root, ctx, item, reason, scratch));
            0
        }
    }
}

/// Queues the base64 payloads of AWS transports of subscription messages: Lambda's
/// `awslogs.data`, a Firehose HTTP endpoint request's `records[].data`, Kinesis records'
/// `Data` (GetRecords) or `kinesis.data` (a Lambda event). They are decoded (un-gzipped,
/// then recognised by shape) once this input is done.
pub(super) fn take_payloads(
    format: Envelope,
    root: Located<'_, '_>,
    ctx: &Ctx<'_>,
    scratch: &mut Scratch,
    quarantine: &mut Bounded<'_>,
) -> usize {
    let (list, what): (Option<Located<'_, '_>>, &'static str) = match format {
        Envelope::LambdaAwslogs => {
            let data = path(root, &["awslogs", "data"]).and_then(|d| d.value.into_string());
            match data {
                Some(text) => {
                    queue_payload(text, format, 0, "awslogs.data", ctx, scratch, quarantine)
                }
                None => {
                    let reason =
                        "Lambda CloudWatch Logs event: `awslogs.data` string missing".to_string();
                    quarantine.push_with(|| record_of_value(root, ctx, None, reason, scratch));
                }
            }
            return 0;
        }
        Envelope::FirehoseHttp => (field(root, "records"), "records[].data"),
        _ => (field(root, "Records"), "Records[].Data"),
    };
    let Some(list) = list.filter(|l| l.value.is_array()) else {
        let reason = format!(
            "{format} request: `{}` array missing",
            what.split('[').next().unwrap_or(what)
        );
        quarantine.push_with(|| record_of_value(root, ctx, None, reason, scratch));
        return 0;
    };
    for (i, record) in list.items().enumerate() {
        let i = i as u64;
        let data = str_field(record, "data")
            .or_else(|| str_field(record, "Data"))
            .or_else(|| path(record, &["kinesis", "data"]).and_then(|d| d.value.into_string()));
        match data {
            Some(text) => queue_payload(text, format, i, what, ctx, scratch, quarantine),
            None => {
                let reason = format!("{format} record: `{what}` string missing");
                quarantine.push_with(|| record_of_value(record, ctx, Some(i), reason, scratch));
            }
        }
    }
    0
}
