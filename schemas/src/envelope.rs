//! The envelope layer of the decoder: what holds the events. A bare Event, an `EventList`
//! (its `items`), a JSON array of events, NDJSON of any of those; the syntax check the
//! webhook runs before storing a body; and the simd-json parse state they share. Large
//! documents are cut into their events first by [`crate::large_document`].
//!
//! Managed clusters' log envelopes are recognised by shape and peeled down to the event
//! (spec and sources: `schemas/ENVELOPES.md`): a CloudWatch Logs subscription message
//! (EKS), Azure diagnostic records (AKS, with or without the `records` wrapper) and a
//! shipper's wrapper holding the event line as a string (`log`, `message`). The cluster
//! named by the envelope is the events' cluster; records that hold no audit event (other
//! log streams or categories, health checks) are counted by reason ([`Skipped`]).

use simd_json::prelude::*;
use simd_json::{Buffers, INPUT_PADDING, Tape, fill_tape_padded};

use crate::decoder::{Bounded, Quarantined, Scratch, SourcePos, quarantine_record};
use crate::event_builder::EventBatchBuilder;
use crate::event_mapping::{Ctx, append_event, json_text, type_name};
use crate::tape_span::{Doc, Located};

mod aws;
mod azure;
pub(crate) use azure::RecordCache as AzureRecordCache;
mod gcp;
mod shippers;
mod skim;
pub(crate) use skim::Buffers as SkimBuffers;

/// Reusable simd-json parse state: input copy with padding, stage-1 buffers and tape.
pub(crate) struct Parser {
    input: Vec<u8>,
    buffers: Buffers,
    tape: Tape<'static>,
}

impl Default for Parser {
    fn default() -> Self {
        Self::new()
    }
}

impl Parser {
    pub(crate) fn new() -> Self {
        Self {
            input: Vec::new(),
            buffers: Buffers::new(4096),
            tape: Tape(Vec::new()),
        }
    }

    /// Parses `bytes` and hands the root value and the located input to `f`. The input is
    /// copied first because simd-json unescapes strings in place, and the original is what
    /// bodies are sliced from and what quarantine keeps.
    pub(crate) fn parse<R>(
        &mut self,
        bytes: &[u8],
        f: impl FnOnce(Located<'_, '_>, Doc<'_>) -> R,
    ) -> Result<R, simd_json::Error> {
        self.input.clear();
        self.input.extend_from_slice(bytes);
        self.input.resize(bytes.len() + INPUT_PADDING, b' ');
        let mut tape = std::mem::replace(&mut self.tape, Tape(Vec::new())).reset();
        let res = fill_tape_padded(&mut self.input, bytes.len(), &mut self.buffers, &mut tape).map(
            |()| {
                let doc = Doc::new(bytes, self.buffers.structural_indexes());
                f(Located::root(&tape.0, tape.as_value()), doc)
            },
        );
        self.tape = tape.reset();
        if bytes.len() > KEEP_PARSER_BUFFERS_UP_TO {
            // The tape of a large input can be ten times its size (a body of millions of tiny
            // values): give it back instead of holding it until the next large input.
            *self = Self::new();
        }
        res
    }
}

/// Inputs up to this size leave their parse buffers for the next input to reuse.
pub(crate) const KEEP_PARSER_BUFFERS_UP_TO: usize = 4 << 20;

/// Where `part` (a slice of `whole`) starts in it.
pub(crate) fn offset_in(whole: &[u8], part: &[u8]) -> u64 {
    (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize) as u64
}

/// Bodies up to this size are checked with simd-json (fast, but its tape of a large input
/// can be ten times the input); larger ones with serde_json, which allocates nothing.
pub(crate) const SIMD_SYNTAX_CHECK_UP_TO: usize = 1 << 20;

/// Why `bytes` is neither one JSON value nor NDJSON of JSON values, naming the line and
/// byte where parsing failed; `None` when it is JSON. Cheaper than decoding: a source that
/// must refuse non-JSON before storing anything (the webhook answers 400) checks with this.
pub fn json_syntax_error(bytes: &[u8]) -> Option<String> {
    thread_local! {
        // One per thread, reused: a webhook checks every request body, and a fresh parser
        // would allocate an input copy and a tape per request. Holds the largest body seen.
        static PARSER: std::cell::RefCell<Parser> = std::cell::RefCell::new(Parser::new());
    }
    PARSER.with(|p| syntax_error_with(&mut p.borrow_mut(), bytes))
}

pub(crate) fn syntax_error_with(parser: &mut Parser, bytes: &[u8]) -> Option<String> {
    if bytes.len() > SIMD_SYNTAX_CHECK_UP_TO {
        return syntax_error_streaming(bytes);
    }
    let err = parser.parse(bytes, |_, _| ()).err()?;
    if let Err(utf8) = std::str::from_utf8(bytes) {
        return Some(format!("invalid UTF-8 at byte {}", utf8.valid_up_to()));
    }
    if !contains_two_lines(bytes) {
        return Some(if bytes.iter().all(u8::is_ascii_whitespace) {
            "empty body".to_string()
        } else {
            format!("invalid JSON: {err}")
        });
    }
    for (line_no, start, line) in lines(bytes) {
        if let Err(e) = parser.parse(line, |_, _| ()) {
            return Some(format!(
                "invalid JSON on line {} (byte {start}): {e}",
                line_no + 1
            ));
        }
    }
    None
}

/// The syntax check of a large body: JSON values one after another (one value, or NDJSON),
/// validated without building anything, so its memory does not grow with the body.
pub(crate) fn syntax_error_streaming(bytes: &[u8]) -> Option<String> {
    if let Err(utf8) = std::str::from_utf8(bytes) {
        return Some(format!("invalid UTF-8 at byte {}", utf8.valid_up_to()));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Some("empty body".to_string());
    }
    let values = serde_json::Deserializer::from_slice(bytes).into_iter::<serde::de::IgnoredAny>();
    for v in values {
        if let Err(e) = v {
            return Some(format!(
                "invalid JSON on line {} (column {}): {e}",
                e.line(),
                e.column()
            ));
        }
    }
    None
}

/// The UTF-8 byte order mark.
pub(crate) const UTF8_BOM: &[u8] = b"\xef\xbb\xbf";

pub(crate) fn contains_two_lines(bytes: &[u8]) -> bool {
    lines(bytes).nth(1).is_some()
}

/// Non-blank lines of `bytes` as (0-based line number, byte offset, line without `\r\n`).
pub fn lines(bytes: &[u8]) -> impl Iterator<Item = (u64, usize, &[u8])> {
    let mut offset = 0;
    let mut line_no = 0u64;
    std::iter::from_fn(move || {
        while offset < bytes.len() {
            let start = offset;
            let rest = &bytes[start..];
            let len = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
            let line = &rest[..len];
            offset += len + 1;
            let n = line_no;
            line_no += 1;
            let trimmed = line.strip_suffix(b"\r").unwrap_or(line);
            // Files saved by some Windows tools (an Azure sample among them) start with a
            // UTF-8 byte order mark, which is no part of the first line's JSON.
            let trimmed = match n {
                0 => trimmed.strip_prefix(UTF8_BOM).unwrap_or(trimmed),
                _ => trimmed,
            };
            if !trimmed.iter().all(u8::is_ascii_whitespace) {
                return Some((n, start, trimmed));
            }
        }
        None
    })
}

/// The envelope formats the decoder recognises, by the name `--envelope` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Envelope {
    /// Audit events themselves: an Event, an `EventList`, a JSON array of events.
    Event,
    /// A CloudWatch Logs subscription message (EKS through Kinesis, Firehose or Lambda).
    CloudWatchSubscription,
    /// `aws logs filter-log-events` / `get-log-events` output (`events[].message`).
    CloudWatchApi,
    /// A CloudWatch Logs Insights result row (`@message`), or a JSON array of them.
    CloudWatchInsights,
    /// A line of a CloudWatch export to S3: `<ISO-8601 time> <event>`.
    CloudWatchExport,
    /// AWS Lambda's CloudWatch Logs event (`awslogs.data`, base64 of gzip).
    LambdaAwslogs,
    /// An Amazon Data Firehose HTTP endpoint request (`records[].data`, base64).
    FirehoseHttp,
    /// Kinesis records as JSON (`Records[].Data` or `Records[].kinesis.data`, base64).
    Kinesis,
    /// Azure Monitor diagnostic records (AKS), in `records` or one per line.
    AzureDiagnostic,
    /// A Google Cloud Logging `LogEntry` of a GKE audit log.
    GkeLogEntry,
    /// A Pub/Sub push request (`message.data`, base64).
    PubSubPush,
    /// A Pub/Sub pull response (`receivedMessages[].message.data`, base64).
    PubSubPull,
    /// OpenTelemetry logs as `otlp_json` (`resourceLogs[]...logRecords[].body.stringValue`).
    OtlpJson,
    /// A shipper's wrapper of one `audit.log` line (Fluent Bit `log`; Fluentd, Vector,
    /// Filebeat `message`).
    Shipper,
    /// OpenShift's log forwarder: the event's fields inline, ViaQ fields beside them.
    OpenShift,
}

impl Envelope {
    /// Every format, in declaration order.
    pub const ALL: [Envelope; 15] = [
        Envelope::Event,
        Envelope::CloudWatchSubscription,
        Envelope::CloudWatchApi,
        Envelope::CloudWatchInsights,
        Envelope::CloudWatchExport,
        Envelope::LambdaAwslogs,
        Envelope::FirehoseHttp,
        Envelope::Kinesis,
        Envelope::AzureDiagnostic,
        Envelope::GkeLogEntry,
        Envelope::PubSubPush,
        Envelope::PubSubPull,
        Envelope::OtlpJson,
        Envelope::Shipper,
        Envelope::OpenShift,
    ];

    /// The name of the format (`--envelope`, the `format` key of the `envelope` column).
    pub fn as_str(self) -> &'static str {
        match self {
            Envelope::Event => "event",
            Envelope::CloudWatchSubscription => "cloudwatch_subscription",
            Envelope::CloudWatchApi => "cloudwatch_api",
            Envelope::CloudWatchInsights => "cloudwatch_insights",
            Envelope::CloudWatchExport => "cloudwatch_export",
            Envelope::LambdaAwslogs => "lambda_awslogs",
            Envelope::FirehoseHttp => "firehose_http",
            Envelope::Kinesis => "kinesis",
            Envelope::AzureDiagnostic => "azure_diagnostic",
            Envelope::GkeLogEntry => "gke_log_entry",
            Envelope::PubSubPush => "pubsub_push",
            Envelope::PubSubPull => "pubsub_pull",
            Envelope::OtlpJson => "otlp_json",
            Envelope::Shipper => "shipper",
            Envelope::OpenShift => "openshift",
        }
    }
}

impl std::str::FromStr for Envelope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Envelope::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Envelope::ALL.iter().map(|e| e.as_str()).collect();
                format!(
                    "unknown envelope {s:?}; expected auto or one of: {}",
                    names.join(", ")
                )
            })
    }
}

impl std::fmt::Display for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The envelope `root` is, by its shape (see `schemas/ENVELOPES.md`): one pass over its
/// top-level keys, so a plain Event costs a key comparison per field.
pub(crate) fn detect(root: Located<'_, '_>) -> Envelope {
    #[derive(Default)]
    struct Keys {
        kind: bool,
        openshift: bool,
        message_type: bool,
        awslogs: bool,
        records: bool,
        kinesis_records: bool,
        received_messages: bool,
        message_object: bool,
        proto_payload: bool,
        resource_logs: bool,
        insights_message: bool,
        events: bool,
        properties: bool,
        category_or_resource: bool,
    }
    if !root.value.is_object() {
        return Envelope::Event;
    }
    let mut k = Keys::default();
    // simd-json's own walk over the keys, not `Located::entries`: that one counts the
    // structurals of every value to locate the next, a walk over the whole tape (the request
    // and response bodies included) for every event, which only slicing a body needs.
    for (key, v) in root.value.as_object().into_iter().flat_map(|o| o.iter()) {
        match key {
            "kind" => k.kind = true,
            "openshift" => k.openshift = v.is_object(),
            "messageType" => k.message_type = true,
            "awslogs" => k.awslogs = v.is_object(),
            "records" => k.records = v.is_array(),
            "Records" => k.kinesis_records = v.is_array(),
            "receivedMessages" => k.received_messages = v.is_array(),
            "message" => k.message_object = v.is_object(),
            "protoPayload" => k.proto_payload = v.is_object(),
            "resourceLogs" => k.resource_logs = v.is_array(),
            "@message" => k.insights_message = true,
            "events" => k.events = v.is_array(),
            "properties" => k.properties = v.is_object(),
            "category" | "resourceId" => k.category_or_resource = v.is_str(),
            _ => {}
        }
    }
    if k.openshift {
        return Envelope::OpenShift;
    }
    if k.kind {
        return Envelope::Event;
    }
    if k.message_type {
        Envelope::CloudWatchSubscription
    } else if k.awslogs {
        Envelope::LambdaAwslogs
    } else if k.records {
        let first = field(root, "records").and_then(|r| r.items().next());
        match first.and_then(|r| str_field(r, "data")) {
            Some(_) => Envelope::FirehoseHttp,
            None => Envelope::AzureDiagnostic,
        }
    } else if k.kinesis_records {
        Envelope::Kinesis
    } else if k.received_messages {
        Envelope::PubSubPull
    } else if k.message_object {
        Envelope::PubSubPush
    } else if k.proto_payload {
        Envelope::GkeLogEntry
    } else if k.resource_logs {
        Envelope::OtlpJson
    } else if k.insights_message {
        Envelope::CloudWatchInsights
    } else if k.events {
        Envelope::CloudWatchApi
    } else if k.properties && k.category_or_resource {
        Envelope::AzureDiagnostic
    } else if shipper_line(root).is_some() {
        Envelope::Shipper
    } else {
        Envelope::Event
    }
}

pub(crate) fn decode_root(
    root: Located<'_, '_>,
    ctx: &Ctx<'_>,
    b: &mut EventBatchBuilder,
    scratch: &mut Scratch,
    quarantine: &mut Bounded<'_>,
) -> usize {
    let format = ctx.envelope.unwrap_or_else(|| detect(root));
    decode_as(format, root, None, ctx, b, scratch, quarantine)
}

/// The envelope `bytes` is when it holds each event as JSON text and the tapeless scan (see
/// [`skim`]) may take it: an Event Hubs body of AKS records, a CloudWatch Logs subscription
/// message (by their first key; `forced` is the source's `--envelope`). A plain event costs
/// a look at its first key.
pub(crate) fn skimmable(bytes: &[u8], forced: Option<Envelope>) -> Option<Envelope> {
    let format = match skim::first_key(bytes)? {
        b"records" => Envelope::AzureDiagnostic,
        b"messageType"
        | b"owner"
        | b"logGroup"
        | b"logStream"
        | b"logEvents"
        | b"subscriptionFilters"
        | b"policyLevel" => Envelope::CloudWatchSubscription,
        _ => return None,
    };
    forced.is_none_or(|e| e == format).then_some(format)
}

/// Decodes `bytes`, a [`skimmable`] `format`, without a tape. `None`, with nothing decoded,
/// when the scan does not take it after all; it is then parsed and decoded from the tape.
pub(crate) fn decode_skimmed(
    format: Envelope,
    bytes: &[u8],
    ctx: &Ctx<'_>,
    b: &mut EventBatchBuilder,
    scratch: &mut Scratch,
    quarantine: &mut Bounded<'_>,
) -> Option<usize> {
    // Taken out while the events are decoded (which needs the whole scratch), put back after.
    let mut text = std::mem::take(&mut scratch.skim);
    text.clear();
    let (q, t) = (quarantine, &mut text);
    let n = match format {
        Envelope::AzureDiagnostic => azure::decode_skimmed(bytes, t, ctx, b, scratch, q),
        _ => aws::decode_skimmed(bytes, t, ctx, b, scratch, q),
    };
    scratch.skim = text;
    scratch.meta.off();
    n
}

/// Decodes `root` (item `item` of a JSON array, if one) as `format`.
fn decode_as(
    format: Envelope,
    root: Located<'_, '_>,
    item: Option<u64>,
    ctx: &Ctx<'_>,
    b: &mut EventBatchBuilder,
    scratch: &mut Scratch,
    quarantine: &mut Bounded<'_>,
) -> usize {
    if root.value.is_array() && format != Envelope::Event {
        return root
            .items()
            .enumerate()
            .map(|(i, it)| decode_as(format, it, Some(i as u64), ctx, b, scratch, quarantine))
            .sum();
    }
    let n = match format {
        Envelope::Event | Envelope::CloudWatchExport => {
            return decode_events(root, ctx, b, scratch, quarantine);
        }
        Envelope::CloudWatchSubscription => {
            aws::decode_subscription(root, ctx, b, scratch, quarantine)
        }
        Envelope::CloudWatchApi => aws::decode_api_output(root, ctx, b, scratch, quarantine),
        Envelope::CloudWatchInsights => {
            aws::decode_insights_row(root, item, ctx, b, scratch, quarantine)
        }
        Envelope::LambdaAwslogs | Envelope::FirehoseHttp | Envelope::Kinesis => {
            aws::take_payloads(format, root, ctx, scratch, quarantine)
        }
        Envelope::AzureDiagnostic => azure::decode(root, item, ctx, b, scratch, quarantine),
        Envelope::GkeLogEntry => gcp::decode_log_entry(root, item, ctx, b, scratch, quarantine),
        Envelope::PubSubPush | Envelope::PubSubPull => {
            gcp::take_payloads(format, root, ctx, scratch, quarantine)
        }
        Envelope::OtlpJson => shippers::decode_otlp(root, ctx, b, scratch, quarantine),
        Envelope::Shipper => shippers::decode_line(root, item, ctx, b, scratch, quarantine),
        Envelope::OpenShift => shippers::decode_openshift(root, item, ctx, b, scratch, quarantine),
    };
    scratch.meta.off();
    n
}

/// The events of a value that holds them directly: an Event, an `EventList`, a JSON array
/// (of events, or of envelopes: Logs Insights and `gcloud logging read` export arrays).
fn decode_events(
    root: Located<'_, '_>,
    ctx: &Ctx<'_>,
    b: &mut EventBatchBuilder,
    scratch: &mut Scratch,
    quarantine: &mut Bounded<'_>,
) -> usize {
    if root.value.is_array() {
        let first = root.items().next().map(detect);
        return match first {
            Some(format) if format != Envelope::Event && ctx.envelope.is_none() => root
                .items()
                .enumerate()
                .map(|(i, item)| {
                    decode_as(
                        detect(item),
                        item,
                        Some(i as u64),
                        ctx,
                        b,
                        scratch,
                        quarantine,
                    )
                })
                .sum(),
            _ => decode_items(root, None, ctx, b, scratch, quarantine),
        };
    }
    if let Some(obj) = root.value.as_object()
        && obj.get("kind").and_then(|k| k.into_string()) == Some("EventList")
    {
        let list_api_version = obj.get("apiVersion").and_then(|v| v.into_string());
        let Some((_, items)) = root.entries().find(|(k, _)| *k == "items") else {
            return 0;
        };
        if items.value.is_array() {
            return decode_items(items, list_api_version, ctx, b, scratch, quarantine);
        }
        if items.value.is_null() {
            return 0;
        }
        let reason = format!(
            "EventList field `items`: expected array, found {}",
            type_name(items.value)
        );
        quarantine.push_with(|| record_of_value(root, ctx, None, reason, scratch));
        return 0;
    }
    match append_event(root, None, ctx, None, b, scratch) {
        Ok(()) => 1,
        Err(reason) => {
            quarantine.push_with(|| record_of_value(root, ctx, None, reason, scratch));
            0
        }
    }
}

pub(crate) fn decode_items(
    items: Located<'_, '_>,
    list_api_version: Option<&str>,
    ctx: &Ctx<'_>,
    b: &mut EventBatchBuilder,
    scratch: &mut Scratch,
    quarantine: &mut Bounded<'_>,
) -> usize {
    let mut n = 0;
    for (i, item) in items.items().enumerate() {
        match append_event(item, list_api_version, ctx, Some(i as u64), b, scratch) {
            Ok(()) => n += 1,
            Err(reason) => {
                quarantine.push_with(|| record_of_value(item, ctx, Some(i as u64), reason, scratch))
            }
        }
    }
    n
}

pub(crate) fn record_of_value(
    v: Located<'_, '_>,
    ctx: &Ctx<'_>,
    item: Option<u64>,
    reason: String,
    scratch: &mut Scratch,
) -> Quarantined {
    let raw = json_text(v, ctx.doc, &mut scratch.json);
    let reason = match item {
        Some(i) => format!("item {i}: {reason}"),
        None => reason,
    };
    quarantine_record(ctx.pos, item, reason, raw.as_bytes(), ctx.max_quarantined)
}

/// Why a record of a managed cluster's log envelope holds no archived audit event, or an
/// incomplete one. Each is counted (see [`crate::EventDecoder::take_skipped`]), never
/// dropped silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Skipped {
    /// A CloudWatch Logs `CONTROL_MESSAGE` (the subscription's health check).
    CloudWatchControlMessage = 0,
    /// A CloudWatch log event from a stream other than `kube-apiserver-audit-*` (the EKS
    /// log group also holds the control plane's klog text).
    CloudWatchOtherStream,
    /// A CloudWatch log event cut by CloudWatch (`[Truncated...]`); kept in the quarantine.
    CloudWatchTruncated,
    /// An Azure diagnostic record of a category other than `kube-audit` /
    /// `kube-audit-admin` (other control-plane logs sharing the Event Hub).
    AzureOtherCategory,
    /// An Azure record whose `properties.log` the container runtime cut at 16 KiB; kept in
    /// the quarantine.
    AzureTruncated,
    /// An event archived with a body Azure replaced by `"skipped-too-big-size-object"`.
    AzureObjectTooBig,
    /// A GKE `LogEntry` of a service other than `k8s.io` (GKE's cluster management).
    GkeOtherService,
}

impl Skipped {
    /// Every reason, in declaration order (a reason's discriminant is its index here and
    /// in the decoder's counters).
    pub const ALL: [Skipped; 7] = [
        Skipped::CloudWatchControlMessage,
        Skipped::CloudWatchOtherStream,
        Skipped::CloudWatchTruncated,
        Skipped::AzureOtherCategory,
        Skipped::AzureTruncated,
        Skipped::AzureObjectTooBig,
        Skipped::GkeOtherService,
    ];

    // Proof that a reason's discriminant is its index in `ALL` (the counters rely on it).
    const _INDEXED: () = {
        let mut i = 0;
        while i < Self::ALL.len() {
            assert!(Self::ALL[i] as usize == i);
            i += 1;
        }
    };

    /// The reason as a metric label and log field.
    pub fn as_str(self) -> &'static str {
        match self {
            Skipped::CloudWatchControlMessage => "cloudwatch_control_message",
            Skipped::CloudWatchOtherStream => "cloudwatch_other_stream",
            Skipped::CloudWatchTruncated => "cloudwatch_truncated",
            Skipped::AzureOtherCategory => "azure_other_category",
            Skipped::AzureTruncated => "azure_truncated",
            Skipped::AzureObjectTooBig => "azure_object_too_big",
            Skipped::GkeOtherService => "gke_other_service",
        }
    }
}

/// The value of `obj`'s field `name`.
pub(crate) fn field<'t, 'i>(obj: Located<'t, 'i>, name: &str) -> Option<Located<'t, 'i>> {
    obj.entries().find(|(k, _)| *k == name).map(|(_, v)| v)
}

/// The string value of `obj`'s field `name`.
pub(crate) fn str_field<'i>(obj: Located<'_, 'i>, name: &str) -> Option<&'i str> {
    field(obj, name).and_then(|v| v.value.into_string())
}

/// The value at `path` (field names) below `obj`.
pub(crate) fn path<'t, 'i>(obj: Located<'t, 'i>, path: &[&str]) -> Option<Located<'t, 'i>> {
    path.iter().try_fold(obj, |v, name| field(v, name))
}

/// The `envelope` column's value of the events being decoded: a JSON object of the
/// envelope's metadata (its `format`, and what a user filters on: account, log group and
/// stream, resource id, category, insert id, ...), built once per record and per event.
#[derive(Default)]
pub(crate) struct Meta {
    text: String,
    on: bool,
    /// The transport the current payload came in (Firehose, Lambda, Kinesis, Pub/Sub).
    pub(crate) transport: Option<Envelope>,
}

impl Meta {
    /// Starts the object for `format`.
    pub(crate) fn begin(&mut self, format: Envelope) {
        self.text.clear();
        self.text.push_str("{\"format\":\"");
        self.text.push_str(format.as_str());
        self.text.push('"');
        if let Some(t) = self.transport {
            self.text.push_str(",\"transport\":\"");
            self.text.push_str(t.as_str());
            self.text.push('"');
        }
        self.on = false;
    }

    /// Adds `key` with a string value (skipped when `None`).
    pub(crate) fn str(&mut self, key: &str, value: Option<&str>) {
        if let Some(v) = value {
            self.key(key);
            push_json_string(&mut self.text, v);
        }
    }

    /// Adds `key` with an integer value (skipped when `None`).
    pub(crate) fn int(&mut self, key: &str, value: Option<i64>) {
        if let Some(v) = value {
            self.key(key);
            self.text.push_str(itoa::Buffer::new().format(v));
        }
    }

    /// Adds `key` with a value that is JSON text already (skipped when `None`).
    pub(crate) fn raw(&mut self, key: &str, json: Option<&str>) {
        if let Some(v) = json {
            self.key(key);
            self.text.push_str(v);
        }
    }

    fn key(&mut self, key: &str) {
        self.text.push(',');
        push_json_string(&mut self.text, key);
        self.text.push(':');
    }

    /// The text so far (to keep a prefix shared by many events).
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// Starts over from `prefix`, a text [`Meta::text`] returned.
    pub(crate) fn restore(&mut self, prefix: &str) {
        self.text.clear();
        self.text.push_str(prefix);
        self.on = false;
    }

    /// Where the per-event keys start: [`Meta::truncate`] returns here for the next event.
    pub(crate) fn mark(&self) -> usize {
        self.text.len()
    }

    /// Drops what was added after `mark`.
    pub(crate) fn truncate(&mut self, mark: usize) {
        self.text.truncate(mark);
        self.on = false;
    }

    /// Closes the object: the events appended from now on carry it.
    pub(crate) fn end(&mut self) {
        self.text.push('}');
        self.on = true;
    }

    /// The events appended from now on carry no envelope.
    pub(crate) fn off(&mut self) {
        self.on = false;
    }

    /// The column's value for the event being appended.
    pub(crate) fn current(&self) -> Option<&str> {
        self.on.then_some(self.text.as_str())
    }
}

fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    crate::event_mapping::escape_json(s, |run| out.push_str(run));
    out.push('"');
}

/// A shipper's wrapper around one line of `audit.log`: Fluent Bit's `log`, the `message`
/// of Fluentd, Vector and Filebeat, when it holds a JSON object as a string.
pub(crate) fn shipper_line<'i>(root: Located<'_, 'i>) -> Option<(&'static str, &'i str)> {
    ["log", "message"].into_iter().find_map(|name| {
        let text = str_field(root, name)?;
        text.trim_start_matches('\u{feff}')
            .trim_start()
            .starts_with('{')
            .then_some((name, text))
    })
}

/// Decodes the event(s) held as JSON text in an envelope's field (`what`), for `cluster`.
/// A text that is not JSON (cut by the cloud, or another log's line) is quarantined whole,
/// with the audit ID when one can be read from it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn decode_embedded(
    text: &[u8],
    what: &str,
    cluster: &str,
    item: Option<u64>,
    ctx: &Ctx<'_>,
    b: &mut EventBatchBuilder,
    scratch: &mut Scratch,
    quarantine: &mut Bounded<'_>,
) -> usize {
    let text = trimmed(text);
    // Taken out while it parses: the events it finds are decoded with the scratch. A stack,
    // so a text inside a text (a shipper's line inside a log event) reuses one per depth.
    let mut parser = scratch.embedded.pop().unwrap_or_default();
    let parsed = parser.parse(text, |root, doc| {
        let inner = ctx.for_cluster(cluster, doc, scratch);
        match item {
            // One event of a batch: its index names it in `source_ref` and the quarantine.
            // (Every event the API server writes starts with `kind`: found at the first key.)
            Some(i)
                if root
                    .value
                    .as_object()
                    .is_some_and(|o| o.get("kind").is_some()) =>
            {
                match append_event(root, None, &inner, Some(i), b, scratch) {
                    Ok(()) => 1,
                    Err(reason) => {
                        let reason = format!("`{what}`: {reason}");
                        quarantine
                            .push_with(|| record_of_value(root, &inner, Some(i), reason, scratch));
                        0
                    }
                }
            }
            // An envelope inside (a shipper's line in a log event) brings its own metadata.
            _ => decode_as(detect(root), root, item, &inner, b, scratch, quarantine),
        }
    });
    scratch.embedded.push(parser);
    match parsed {
        Ok(n) => n,
        Err(e) => {
            let mut reason = if text.ends_with(b"[Truncated...]") {
                scratch.skip(Skipped::CloudWatchTruncated, 1);
                format!("`{what}` holds an event the cloud truncated (it ends with [Truncated...])")
            } else if what == "properties.log" && (16_000..=16_384).contains(&text.len()) {
                scratch.skip(Skipped::AzureTruncated, 1);
                format!(
                    "`{what}` holds an event cut at 16 KiB by the node's container runtime \
                     ({} bytes, not valid JSON: {e})",
                    text.len()
                )
            } else {
                format!("`{what}` is not a JSON event: {e}")
            };
            if let Some(id) = std::str::from_utf8(text).ok().and_then(audit_id_in) {
                reason.push_str(&format!("; auditID {id}"));
            }
            let (pos, max) = (SourcePos { cluster, ..ctx.pos }, ctx.max_quarantined);
            quarantine.push_with(|| quarantine_record(pos, item, reason, text, max));
            0
        }
    }
}

/// `text` without the byte order marks before it and the white space around it, as
/// `str::trim_start_matches('\u{feff}').trim()` cuts a string: for ASCII at both ends
/// without a UTF-8 check (the parse makes it), else by `str`.
fn trimmed(text: &[u8]) -> &[u8] {
    let mut text = text;
    while let Some(rest) = text.strip_prefix(UTF8_BOM) {
        text = rest;
    }
    // `char::is_whitespace` of ASCII: it counts the vertical tab, `u8::is_ascii_whitespace`
    // does not.
    let space = |c: &u8| matches!(c, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ');
    let start = text.iter().position(|c| !space(c)).unwrap_or(text.len());
    let end = text
        .iter()
        .rposition(|c| !space(c))
        .map_or(start, |i| i + 1);
    let core = &text[start..end];
    // A byte beyond ASCII at either end may belong to Unicode white space.
    let unicode_end = |c: Option<&u8>| c.is_some_and(|c| !c.is_ascii());
    if (unicode_end(core.first()) || unicode_end(core.last()))
        && let Ok(s) = std::str::from_utf8(text)
    {
        return s.trim().as_bytes();
    }
    core
}

/// Appends the event `record` holds inline (an object, not text), mapped by `map`, as an
/// event of `cluster`; when it cannot be, quarantines `record` with `what` before the
/// reason.
#[allow(clippy::too_many_arguments)]
pub(crate) fn append_inline(
    record: Located<'_, '_>,
    what: &str,
    cluster: &str,
    item: Option<u64>,
    ctx: &Ctx<'_>,
    b: &mut EventBatchBuilder,
    scratch: &mut Scratch,
    quarantine: &mut Bounded<'_>,
    map: impl FnOnce(&Ctx<'_>, &mut EventBatchBuilder, &mut Scratch) -> Result<(), String>,
) -> usize {
    let inner = ctx.for_cluster(cluster, ctx.doc, scratch);
    match map(&inner, b, scratch) {
        Ok(()) => 1,
        Err(reason) => {
            let reason = match what {
                "" => reason,
                what => format!("{what}: {reason}"),
            };
            quarantine.push_with(|| record_of_value(record, &inner, item, reason, scratch));
            0
        }
    }
}

/// Decodes the event text `text` that record `item` holds in field `what`, or quarantines
/// the record when the field is missing.
#[allow(clippy::too_many_arguments)]
pub(crate) fn decode_field(
    record: Located<'_, '_>,
    text: Option<&str>,
    what: &'static str,
    cluster: &str,
    item: u64,
    ctx: &Ctx<'_>,
    b: &mut EventBatchBuilder,
    scratch: &mut Scratch,
    quarantine: &mut Bounded<'_>,
) -> usize {
    match text {
        Some(text) => {
            let (text, item) = (text.as_bytes(), Some(item));
            decode_embedded(text, what, cluster, item, ctx, b, scratch, quarantine)
        }
        None => {
            let reason = format!("`{what}` (the event, a string) missing");
            quarantine.push_with(|| record_of_value(record, ctx, Some(item), reason, scratch));
            0
        }
    }
}

/// The `auditID` of an event's text that is not valid JSON (a truncated event still starts
/// with its metadata), so the event can be looked for elsewhere.
fn audit_id_in(text: &str) -> Option<&str> {
    let at = text.find("\"auditID\"")? + "\"auditID\"".len();
    let rest = text[at..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start()
        .strip_prefix('"')?;
    let id = &rest[..rest.find('"')?];
    (!id.is_empty() && id.len() <= 64 && id.bytes().all(|c| c.is_ascii_hexdigit() || c == b'-'))
        .then_some(id)
}

/// A payload a transport carried as bytes (base64 in JSON), decoded once the input holding
/// it is done: it may be gzip, and holds a document of its own.
pub(crate) struct Payload {
    /// The bytes, base64-decoded (maybe still gzip).
    pub(crate) bytes: Vec<u8>,
    /// The transport that carried it.
    pub(crate) transport: Envelope,
    /// Its index among the transport's records.
    pub(crate) item: u64,
    /// The field it was in, for positions and reasons (`records[].data`).
    pub(crate) what: &'static str,
}

/// Base64-decodes the payload at `text` (record `item` of `transport`, field `what`) and
/// queues it; bad base64 is quarantined with the record.
pub(crate) fn queue_payload(
    text: &str,
    transport: Envelope,
    item: u64,
    what: &'static str,
    ctx: &Ctx<'_>,
    scratch: &mut Scratch,
    quarantine: &mut Bounded<'_>,
) {
    match crate::byte_layers::decode_base64(text) {
        Ok(bytes) => scratch.payloads.push(Payload {
            bytes,
            transport,
            item,
            what,
        }),
        Err(e) => {
            let reason = format!("{transport} `{what}` of record {item}: {e}");
            let (pos, max) = (ctx.pos, ctx.max_quarantined);
            quarantine
                .push_with(|| quarantine_record(pos, Some(item), reason, text.as_bytes(), max));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::trimmed;

    #[test]
    fn trimmed_cuts_bytes_as_str_trims_strings() {
        for text in [
            "{}",
            " {} ",
            "\u{feff}\u{feff} {}\n",
            "\u{feff} \u{feff}{}",
            "\x0b{}\x0c",
            "\u{a0}{}\u{2028}",
            "é{}é",
            "",
            "  ",
            "\u{3000}",
            "{\"a\":1}\r\n",
        ] {
            let expected = text.trim_start_matches('\u{feff}').trim();
            assert_eq!(trimmed(text.as_bytes()), expected.as_bytes(), "{text:?}");
        }
    }
}
