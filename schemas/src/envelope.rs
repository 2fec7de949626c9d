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

pub(crate) fn decode_root(
    root: Located<'_, '_>,
    ctx: &Ctx<'_>,
    b: &mut EventBatchBuilder,
    scratch: &mut Scratch,
    quarantine: &mut Bounded<'_>,
) -> usize {
    if let Some(obj) = root.value.as_object()
        && obj.get("kind").is_none()
    {
        if obj.get("messageType").is_some() {
            return decode_cloudwatch(root, ctx, b, scratch, quarantine);
        }
        if let Some(records) = field(root, "records")
            && records.value.is_array()
        {
            return decode_azure_records(records, ctx, b, scratch, quarantine);
        }
        if is_azure_record(root) {
            return decode_azure_record(root, None, ctx, b, scratch, quarantine);
        }
        if let Some((name, text)) = shipper_line(root) {
            let cluster = ctx.pos.cluster;
            return decode_embedded(text, name, cluster, None, ctx, b, scratch, quarantine);
        }
    }
    decode_events(root, ctx, b, scratch, quarantine)
}

/// The events of a value that holds them directly: an Event, an `EventList`, a JSON array.
fn decode_events(
    root: Located<'_, '_>,
    ctx: &Ctx<'_>,
    b: &mut EventBatchBuilder,
    scratch: &mut Scratch,
    quarantine: &mut Bounded<'_>,
) -> usize {
    if root.value.is_array() {
        return decode_items(root, None, ctx, b, scratch, quarantine);
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

/// Why a record of a managed cluster's log envelope holds no audit event. Each is counted
/// (see [`crate::EventDecoder::take_skipped`]), never dropped silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Skipped {
    /// A CloudWatch Logs `CONTROL_MESSAGE` (the subscription's health check).
    CloudWatchControlMessage = 0,
    /// A CloudWatch log event from a stream other than `kube-apiserver-audit-*` (the EKS
    /// log group also holds the control plane's klog text).
    CloudWatchOtherStream,
    /// An Azure diagnostic record of a category other than `kube-audit` /
    /// `kube-audit-admin` (other control-plane logs sharing the Event Hub).
    AzureOtherCategory,
}

impl Skipped {
    /// Every reason, in declaration order (a reason's discriminant is its index here and
    /// in the decoder's counters).
    pub const ALL: [Skipped; 3] = [
        Skipped::CloudWatchControlMessage,
        Skipped::CloudWatchOtherStream,
        Skipped::AzureOtherCategory,
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
            Skipped::AzureOtherCategory => "azure_other_category",
        }
    }
}

/// The value of `obj`'s field `name`.
fn field<'t, 'i>(obj: Located<'t, 'i>, name: &str) -> Option<Located<'t, 'i>> {
    obj.entries().find(|(k, _)| *k == name).map(|(_, v)| v)
}

/// The string value of `obj`'s field `name`.
fn str_field<'i>(obj: Located<'_, 'i>, name: &str) -> Option<&'i str> {
    field(obj, name).and_then(|v| v.value.into_string())
}

/// A CloudWatch Logs subscription message (what Kinesis, Firehose and Lambda deliver, once
/// un-gzipped): `DATA_MESSAGE` with `logEvents[].message` each holding one event as a
/// string; the cluster from the EKS log group `/aws/eks/<cluster>/cluster`.
fn decode_cloudwatch(
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
    if !stream.starts_with("kube-apiserver-audit") {
        scratch.skip(
            Skipped::CloudWatchOtherStream,
            log_events.items().count() as u64,
        );
        return 0;
    }
    let cluster = str_field(root, "logGroup")
        .and_then(|g| g.strip_prefix("/aws/eks/"))
        .and_then(|g| g.strip_suffix("/cluster"))
        .filter(|c| !c.is_empty() && !c.contains('/'))
        .unwrap_or(ctx.pos.cluster);
    let mut n = 0;
    for (i, item) in log_events.items().enumerate() {
        let i = i as u64;
        match str_field(item, "message") {
            Some(text) => {
                n += decode_embedded(
                    text,
                    "logEvents[].message",
                    cluster,
                    Some(i),
                    ctx,
                    b,
                    scratch,
                    quarantine,
                )
            }
            None => {
                let reason = "CloudWatch log event: `message` string missing".to_string();
                quarantine.push_with(|| record_of_value(item, ctx, Some(i), reason, scratch));
            }
        }
    }
    n
}

/// Whether `v` is one Azure diagnostic record (a line of a Storage account's JSON Lines blob).
fn is_azure_record(v: Located<'_, '_>) -> bool {
    field(v, "properties").is_some_and(|p| p.value.is_object())
        && (str_field(v, "category").is_some() || str_field(v, "resourceId").is_some())
}

/// Azure Monitor diagnostic records (`{"records":[...]}`, as Event Hubs and its Kafka
/// endpoint deliver them).
fn decode_azure_records(
    records: Located<'_, '_>,
    ctx: &Ctx<'_>,
    b: &mut EventBatchBuilder,
    scratch: &mut Scratch,
    quarantine: &mut Bounded<'_>,
) -> usize {
    let mut n = 0;
    for (i, record) in records.items().enumerate() {
        let i = i as u64;
        if is_azure_record(record) {
            n += decode_azure_record(record, Some(i), ctx, b, scratch, quarantine);
        } else {
            let reason = "Azure diagnostic record: `properties` object and `category` or `resourceId` expected".to_string();
            quarantine.push_with(|| record_of_value(record, ctx, Some(i), reason, scratch));
        }
    }
    n
}

/// One Azure diagnostic record: `properties.log` holds the event, as a string (the API
/// server's stdout line) or an object; the cluster from `resourceId`'s last segment.
fn decode_azure_record(
    record: Located<'_, '_>,
    item: Option<u64>,
    ctx: &Ctx<'_>,
    b: &mut EventBatchBuilder,
    scratch: &mut Scratch,
    quarantine: &mut Bounded<'_>,
) -> usize {
    if let Some(category) = str_field(record, "category")
        && category != "kube-audit"
        && category != "kube-audit-admin"
    {
        scratch.skip(Skipped::AzureOtherCategory, 1);
        return 0;
    }
    // Azure upper-cases resource ids: the cluster's own case is lost, lower case is the
    // likelier spelling.
    let cluster = str_field(record, "resourceId")
        .filter(|id| id.to_ascii_lowercase().contains("/managedclusters/"))
        .and_then(|id| id.rsplit('/').next())
        .filter(|c| !c.is_empty())
        .map(str::to_ascii_lowercase);
    let cluster = cluster.as_deref().unwrap_or(ctx.pos.cluster);
    let log = field(record, "properties").and_then(|p| field(p, "log"));
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
    let reason =
        "Azure diagnostic record: `properties.log` (a string or an object) missing".to_string();
    quarantine.push_with(|| record_of_value(record, ctx, item, reason, scratch));
    0
}

/// A shipper's wrapper around one line of `audit.log`: Fluent Bit's `log`, the `message`
/// of Fluentd, Vector and Filebeat, when it holds a JSON object as a string.
fn shipper_line<'i>(root: Located<'_, 'i>) -> Option<(&'static str, &'i str)> {
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
fn decode_embedded(
    text: &str,
    what: &str,
    cluster: &str,
    item: Option<u64>,
    ctx: &Ctx<'_>,
    b: &mut EventBatchBuilder,
    scratch: &mut Scratch,
    quarantine: &mut Bounded<'_>,
) -> usize {
    let text = text.trim_start_matches('\u{feff}').trim();
    // Taken out while it parses: the events it finds are decoded with the scratch.
    let mut parser = scratch.embedded.take().unwrap_or_default();
    let parsed = parser.parse(text.as_bytes(), |root, doc| {
        let inner = ctx.for_cluster(cluster, doc, scratch);
        match item {
            // One event of a batch: its index names it in `source_ref` and the quarantine.
            Some(i) if root.value.is_object() => {
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
            _ => decode_events(root, &inner, b, scratch, quarantine),
        }
    });
    scratch.embedded = Some(parser);
    match parsed {
        Ok(n) => n,
        Err(e) => {
            let mut reason = if text.ends_with("[Truncated...]") {
                format!("`{what}` holds an event the cloud truncated (it ends with [Truncated...])")
            } else {
                format!("`{what}` is not a JSON event: {e}")
            };
            if let Some(id) = audit_id_in(text) {
                reason.push_str(&format!("; auditID {id}"));
            }
            let (pos, max) = (SourcePos { cluster, ..ctx.pos }, ctx.max_quarantined);
            quarantine.push_with(|| quarantine_record(pos, item, reason, text.as_bytes(), max));
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
