//! The envelope layer of the decoder: what holds the events. A bare Event, an `EventList`
//! (its `items`), a JSON array of events, NDJSON of any of those; the syntax check the
//! webhook runs before storing a body; and the simd-json parse state they share. Large
//! documents are cut into their events first by [`crate::large_document`]. Cloud log
//! envelopes that carry an event as a JSON string or in another schema belong here.

use simd_json::prelude::*;
use simd_json::{Buffers, INPUT_PADDING, Tape, fill_tape_padded};

use crate::decoder::{Bounded, Quarantined, Scratch, quarantine_record};
use crate::event_builder::EventBatchBuilder;
use crate::event_mapping::{Ctx, append_event, json_text, type_name};
use crate::tape_span::{Doc, Located};

/// Reusable simd-json parse state: input copy with padding, stage-1 buffers and tape.
pub(crate) struct Parser {
    input: Vec<u8>,
    buffers: Buffers,
    tape: Tape<'static>,
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
