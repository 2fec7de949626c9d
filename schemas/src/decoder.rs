//! simd-json -> Arrow decoder of Kubernetes audit events (`audit.k8s.io/v1` and `v1beta1`).
//!
//! Each input is parsed into a simd-json tape (no tree of maps is built) and walked once:
//! known fields land in typed columns, free-form bodies are re-encoded as JSON text, and
//! every field the schema does not name is kept in `unmapped`. An event that cannot be
//! decoded becomes a [`Quarantined`] record; its neighbours are unaffected.

use std::borrow::Cow;

use arrow::array::{ListBuilder, RecordBatch, StringBuilder};
use simd_json::prelude::*;
use simd_json::tape::{Array, Object, Value};
use simd_json::{Buffers, INPUT_PADDING, Tape, fill_tape_padded};

use crate::large_document;
use crate::tape_span::{Doc, Located};

use crate::event_builder::EventBatchBuilder;
use crate::timestamp::parse_timestamp;

/// Limits and sizes of a decoder.
#[derive(Debug, Clone)]
pub struct DecoderOptions {
    /// An NDJSON line longer than this is quarantined without being parsed.
    pub max_event_bytes: usize,
    /// How many bytes of a quarantined input are kept in the quarantine record.
    pub max_quarantined_bytes: usize,
    /// Quarantine records made for one input (a line, a request body) at most; the rest of
    /// its bad items are counted in one summary record that keeps the whole input.
    pub max_quarantined_per_input: usize,
    /// How many bytes of the input a summary record keeps.
    pub max_summary_bytes: usize,
    /// Documents larger than this are cut into their events before parsing, so memory
    /// follows the largest event rather than the document (see `large_document.rs`).
    pub large_document_bytes: usize,
}

impl Default for DecoderOptions {
    fn default() -> Self {
        // The API server's own limit on a request body is 3 MiB and truncation cuts events at
        // 100 KiB, so an 8 MiB event is not an audit event anyone should archive whole.
        Self {
            max_event_bytes: 8 << 20,
            max_quarantined_bytes: 1 << 20,
            max_quarantined_per_input: 100,
            max_summary_bytes: 16 << 20,
            large_document_bytes: 1 << 20,
        }
    }
}

/// An input that could not be decoded, with why and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// Where the input came from (file name, `-` for stdin, webhook, Kafka topic).
    pub source: String,
    /// 1-based line number in the source, when the source is line oriented.
    pub line: Option<u64>,
    /// Index of the event inside an `EventList` or JSON array, when it was one of several.
    pub item: Option<u64>,
    /// Byte offset of the input in the (decompressed) source.
    pub byte_offset: u64,
    /// What was wrong, naming the field where one is to blame.
    pub reason: String,
    /// The offending bytes (re-encoded JSON for an item of a list), cut to `max_quarantined_bytes`.
    pub raw: Vec<u8>,
    /// Length of the offending input before cutting.
    pub raw_len: u64,
}

/// Where an input sits in its source.
#[derive(Debug, Clone, Copy)]
pub struct SourcePos<'a> {
    /// Source name as shown in `source_ref` and quarantine records.
    pub source: &'a str,
    /// 1-based line number, if line oriented.
    pub line: Option<u64>,
    /// Byte offset in the source.
    pub byte_offset: u64,
}

/// Reusable simd-json parse state: input copy with padding, stage-1 buffers and tape.
struct Parser {
    input: Vec<u8>,
    buffers: Buffers,
    tape: Tape<'static>,
}

impl Parser {
    fn new() -> Self {
        Self {
            input: Vec::new(),
            buffers: Buffers::new(4096),
            tape: Tape(Vec::new()),
        }
    }

    /// Parses `bytes` and hands the root value and the located input to `f`. The input is
    /// copied first because simd-json unescapes strings in place, and the original is what
    /// bodies are sliced from and what quarantine keeps.
    fn parse<R>(
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
const KEEP_PARSER_BUFFERS_UP_TO: usize = 4 << 20;

/// Where `part` (a slice of `whole`) starts in it.
fn offset_in(whole: &[u8], part: &[u8]) -> u64 {
    (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize) as u64
}

/// Bodies up to this size are checked with simd-json (fast, but its tape of a large input
/// can be ten times the input); larger ones with serde_json, which allocates nothing.
const SIMD_SYNTAX_CHECK_UP_TO: usize = 1 << 20;

/// Decodes audit events into record batches of the events schema.
pub struct EventDecoder {
    cluster: String,
    options: DecoderOptions,
    builder: EventBatchBuilder,
    parser: Parser,
    scratch: Scratch,
    ingested_at: i64,
    input_bytes: usize,
    summarised: u64,
}

/// The quarantine records of one input: at most `cap` one by one; beyond, bad items are
/// only counted (so a body of millions of bad items costs a count, not millions of records).
struct Bounded<'q> {
    out: &'q mut Vec<Quarantined>,
    start: usize,
    cap: usize,
    suppressed: u64,
}

impl<'q> Bounded<'q> {
    fn new(out: &'q mut Vec<Quarantined>, cap: usize) -> Self {
        let start = out.len();
        Self {
            out,
            start,
            cap,
            suppressed: 0,
        }
    }

    /// Adds the record `make` builds, or counts it once the cap is reached.
    fn push_with(&mut self, make: impl FnOnce() -> Quarantined) {
        if self.out.len() - self.start < self.cap {
            self.out.push(make());
        } else {
            self.suppressed += 1;
        }
    }

    /// Records made for this input so far.
    fn made(&self) -> usize {
        self.out.len() - self.start
    }

    /// Drops what this input recorded (the input is being decoded another way).
    fn reset(&mut self) {
        self.out.truncate(self.start);
        self.suppressed = 0;
    }
}

/// Buffers reused across events so the hot path does not allocate.
#[derive(Default)]
struct Scratch {
    json: Vec<u8>,
    source_ref: String,
    /// Per-row identity digests, when asked for (see [`EventDecoder::enable_row_digests`]).
    digests: Option<Vec<u128>>,
    /// Seed of the digests: the cluster's hash, so equal events of two clusters differ.
    digest_seed: u64,
}

impl EventDecoder {
    /// A decoder tagging every event with `cluster`.
    pub fn new(cluster: &str, options: DecoderOptions) -> Self {
        Self {
            cluster: cluster.to_string(),
            options,
            builder: EventBatchBuilder::new(),
            parser: Parser::new(),
            scratch: Scratch::default(),
            ingested_at: 0,
            input_bytes: 0,
            summarised: 0,
        }
    }

    /// Bad items counted in a summary record rather than recorded one by one, since the
    /// last call.
    pub fn take_summarised(&mut self) -> u64 {
        std::mem::take(&mut self.summarised)
    }

    /// Ends one input: if its bad items were capped, adds the summary record keeping the
    /// whole input.
    fn close_input(&mut self, q: Bounded<'_>, bytes: &[u8], pos: SourcePos<'_>) {
        if q.suppressed == 0 {
            return;
        }
        let made = q.made() as u64;
        let reason = format!(
            "{} items of this input could not be decoded: the first {made} are recorded one by \
             one, {} more are only counted here; this record keeps the whole input",
            made + q.suppressed,
            q.suppressed
        );
        self.summarised += q.suppressed;
        let record = quarantine_record(pos, None, reason, bytes, self.options.max_summary_bytes);
        q.out.push(record);
    }

    /// Options in force.
    pub fn options(&self) -> &DecoderOptions {
        &self.options
    }

    /// Sets the `ingested_at` value (µs since the epoch) of the events decoded from now on.
    pub fn set_ingested_at(&mut self, micros: i64) {
        self.ingested_at = micros;
    }

    /// From now on, records for every decoded row a 128-bit digest of its cluster and the
    /// exact bytes of its event, taken with [`EventDecoder::take_row_digests`]. A source
    /// that receives resends (the webhook) deduplicates on it: the digest covers `auditID`,
    /// `stage` and `stageTimestamp`, and two events that differ in any byte differ in it.
    /// `key` is a secret of the process: without it, whoever can post events could craft
    /// one whose digest equals another's and have the real one dropped as a resend.
    pub fn enable_row_digests(&mut self, key: u64) {
        self.scratch.digests.get_or_insert_with(Vec::new);
        self.scratch.digest_seed =
            twox_hash::XxHash3_64::oneshot_with_seed(key, self.cluster.as_bytes());
    }

    /// The digests of the rows decoded since the last call, in row order.
    pub fn take_row_digests(&mut self) -> Vec<u128> {
        self.scratch
            .digests
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Rows decoded and not yet taken by [`EventDecoder::finish_batch`].
    pub fn buffered_rows(&self) -> usize {
        self.builder.rows()
    }

    /// Input bytes of the rows not yet taken by [`EventDecoder::finish_batch`].
    pub fn buffered_input_bytes(&self) -> usize {
        self.input_bytes
    }

    /// Takes the decoded rows as a batch; `None` when there are none.
    pub fn finish_batch(&mut self) -> Option<RecordBatch> {
        if self.builder.rows() == 0 {
            return None;
        }
        self.input_bytes = 0;
        Some(self.builder.finish())
    }

    /// Decodes one NDJSON line holding an Event, an `EventList` or a JSON array of events.
    /// Returns how many events were appended; what could not be decoded is pushed to `quarantine`.
    pub fn decode_line(
        &mut self,
        line: &[u8],
        pos: SourcePos<'_>,
        quarantine: &mut Vec<Quarantined>,
    ) -> usize {
        if line.len() > self.options.max_event_bytes {
            self.quarantine_oversized(line, line.len() as u64, pos, quarantine);
            return 0;
        }
        let mut q = Bounded::new(quarantine, self.options.max_quarantined_per_input);
        let n = self.decode_value_bytes(line, pos, &mut q);
        self.close_input(q, line, pos);
        n
    }

    /// Quarantines a line longer than `max_event_bytes` without parsing it. `kept` is what a
    /// bounded reader kept of it and `full_len` its true length, so a huge line is never
    /// buffered whole.
    pub fn quarantine_oversized(
        &self,
        kept: &[u8],
        full_len: u64,
        pos: SourcePos<'_>,
        quarantine: &mut Vec<Quarantined>,
    ) {
        let reason = format!(
            "line of {full_len} bytes exceeds max_event_bytes ({})",
            self.options.max_event_bytes
        );
        let mut q = self.quarantined(pos, None, reason, kept);
        q.raw_len = full_len;
        quarantine.push(q);
    }

    /// Decodes a whole document: a single Event, an `EventList`, a JSON array of events,
    /// or NDJSON (one of those per line). Returns how many events were appended.
    pub fn decode_document(
        &mut self,
        bytes: &[u8],
        pos: SourcePos<'_>,
        quarantine: &mut Vec<Quarantined>,
    ) -> usize {
        let mut q = Bounded::new(quarantine, self.options.max_quarantined_per_input);
        let n = if bytes.len() > self.options.large_document_bytes {
            self.decode_large(bytes, pos, &mut q)
        } else {
            self.decode_small(bytes, pos, &mut q)
        };
        self.close_input(q, bytes, pos);
        n
    }

    /// A document parsed whole; NDJSON line by line when it is not one value.
    fn decode_small(&mut self, bytes: &[u8], pos: SourcePos<'_>, q: &mut Bounded<'_>) -> usize {
        let whole = self.decode_value_bytes(bytes, pos, q);
        // One JSON value that failed to parse may still be NDJSON: retry line by line.
        let parse_failed = whole == 0
            && q.out
                .get(q.start)
                .is_some_and(|r| r.reason.starts_with("invalid JSON"));
        if !parse_failed || !contains_two_lines(bytes) {
            return whole;
        }
        q.reset();
        self.decode_lines(bytes, pos, q)
    }

    /// A large document, cut into its events first (see [`crate::large_document`]); when it
    /// is not a sequence of valid JSON values, line by line (or quarantined whole if it is a
    /// single line).
    fn decode_large(&mut self, bytes: &[u8], pos: SourcePos<'_>, q: &mut Bounded<'_>) -> usize {
        let values = match large_document::top_level_values(bytes) {
            Ok(v) => v,
            Err(_) if contains_two_lines(bytes) => return self.decode_lines(bytes, pos, q),
            Err(e) => {
                let reason = match std::str::from_utf8(bytes) {
                    Err(utf8) => format!(
                        "invalid UTF-8: byte {} is not part of a valid UTF-8 sequence",
                        utf8.valid_up_to()
                    ),
                    Ok(_) => format!("invalid JSON: {e}"),
                };
                let max = self.options.max_quarantined_bytes;
                q.push_with(|| quarantine_record(pos, None, reason, bytes, max));
                return 0;
            }
        };
        let mut appended = 0;
        let whole_up_to = self.options.large_document_bytes;
        for v in values {
            let piece_pos = SourcePos {
                byte_offset: pos.byte_offset + offset_in(bytes, v.get().as_bytes()),
                ..pos
            };
            let cut = large_document::pieces(v, whole_up_to, &mut |piece| {
                appended += self.decode_piece(piece, piece_pos, q);
            });
            if let Err(e) = cut {
                // The value was valid JSON a moment ago: only serde's limits (nesting depth)
                // can stop the cut. Say so rather than parse it whole.
                let max = self.options.max_quarantined_bytes;
                let raw = v.get().as_bytes();
                q.push_with(|| {
                    quarantine_record(piece_pos, None, format!("cannot split: {e}"), raw, max)
                });
            }
        }
        self.input_bytes += bytes.len();
        appended
    }

    /// Decodes one piece of a large document.
    fn decode_piece(
        &mut self,
        piece: large_document::Piece<'_>,
        pos: SourcePos<'_>,
        q: &mut Bounded<'_>,
    ) -> usize {
        let max_event = self.options.max_event_bytes;
        let max = self.options.max_quarantined_bytes;
        match piece {
            large_document::Piece::Whole(raw) if raw.len() > max_event => {
                let reason = format!(
                    "event of {} bytes exceeds max_event_bytes ({max_event})",
                    raw.len()
                );
                q.push_with(|| quarantine_record(pos, None, reason, raw, max));
                0
            }
            large_document::Piece::Whole(raw) => self.decode_value_bytes(raw, pos, q),
            large_document::Piece::Item { raw, index, .. } if raw.len() > max_event => {
                let reason = format!(
                    "item {index}: event of {} bytes exceeds max_event_bytes ({max_event})",
                    raw.len()
                );
                q.push_with(|| quarantine_record(pos, Some(index), reason, raw, max));
                0
            }
            large_document::Piece::Item {
                raw,
                index,
                list_api_version,
            } => self.decode_item(raw, pos, index, list_api_version, q),
            large_document::Piece::BadItems(raw, found) => {
                let reason = format!("EventList field `items`: expected array, found {found}");
                q.push_with(|| quarantine_record(pos, None, reason, raw, max));
                0
            }
        }
    }

    /// Decodes one item of a list as an event.
    fn decode_item(
        &mut self,
        bytes: &[u8],
        pos: SourcePos<'_>,
        index: u64,
        list_api_version: Option<&str>,
        quarantine: &mut Bounded<'_>,
    ) -> usize {
        // The bytes are one valid JSON value (serde cut them out), so parsing succeeds.
        let parsed = self.with_parsed(
            bytes,
            pos,
            |root, ctx, builder, scratch| match append_event(
                root,
                list_api_version,
                ctx,
                Some(index),
                builder,
                scratch,
            ) {
                Ok(()) => 1,
                Err(reason) => {
                    quarantine
                        .push_with(|| record_of_value(root, ctx, Some(index), reason, scratch));
                    0
                }
            },
        );
        parsed.unwrap_or_else(|e| {
            let max = self.options.max_quarantined_bytes;
            let reason = format!("item {index}: invalid JSON: {e}");
            quarantine.push_with(|| quarantine_record(pos, Some(index), reason, bytes, max));
            0
        })
    }

    /// Parses `bytes` and runs `f` on its root with the decoding context and the builders.
    fn with_parsed<R>(
        &mut self,
        bytes: &[u8],
        pos: SourcePos<'_>,
        f: impl FnOnce(Located<'_, '_>, &Ctx<'_>, &mut EventBatchBuilder, &mut Scratch) -> R,
    ) -> Result<R, simd_json::Error> {
        let Self {
            cluster,
            builder,
            parser,
            scratch,
            ingested_at,
            options,
            ..
        } = self;
        let ctx = Ctx {
            cluster,
            ingested_at: *ingested_at,
            pos,
            max_quarantined: options.max_quarantined_bytes,
            doc: Doc::new(&[], &[]),
        };
        parser.parse(bytes, |root, doc| {
            let ctx = Ctx { doc, ..ctx };
            f(root, &ctx, builder, scratch)
        })
    }

    /// NDJSON: each line on its own (lines over `max_event_bytes` quarantined unparsed).
    fn decode_lines(&mut self, bytes: &[u8], pos: SourcePos<'_>, q: &mut Bounded<'_>) -> usize {
        let mut appended = 0;
        for (line_no, start, line) in lines(bytes) {
            let line_pos = SourcePos {
                source: pos.source,
                line: Some(pos.line.unwrap_or(1) + line_no),
                byte_offset: pos.byte_offset + start as u64,
            };
            if line.len() > self.options.max_event_bytes {
                let reason = format!(
                    "line of {} bytes exceeds max_event_bytes ({})",
                    line.len(),
                    self.options.max_event_bytes
                );
                let max = self.options.max_quarantined_bytes;
                q.push_with(|| quarantine_record(line_pos, None, reason, line, max));
                continue;
            }
            appended += self.decode_value_bytes(line, line_pos, q);
        }
        appended
    }

    fn decode_value_bytes(
        &mut self,
        bytes: &[u8],
        pos: SourcePos<'_>,
        quarantine: &mut Bounded<'_>,
    ) -> usize {
        let parsed = self.with_parsed(bytes, pos, |root, ctx, builder, scratch| {
            decode_root(root, ctx, builder, scratch, quarantine)
        });
        match parsed {
            Ok(n) => {
                self.input_bytes += bytes.len();
                n
            }
            Err(e) => {
                let reason = if let Err(utf8) = std::str::from_utf8(bytes) {
                    format!(
                        "invalid UTF-8: byte {} is not part of a valid UTF-8 sequence",
                        utf8.valid_up_to()
                    )
                } else if bytes.iter().all(u8::is_ascii_whitespace) {
                    "empty input".to_string()
                } else {
                    format!("invalid JSON: {e}")
                };
                let max = self.options.max_quarantined_bytes;
                quarantine.push_with(|| quarantine_record(pos, None, reason, bytes, max));
                0
            }
        }
    }

    fn quarantined(
        &self,
        pos: SourcePos<'_>,
        item: Option<u64>,
        reason: String,
        raw: &[u8],
    ) -> Quarantined {
        quarantine_record(pos, item, reason, raw, self.options.max_quarantined_bytes)
    }
}

fn quarantine_record(
    pos: SourcePos<'_>,
    item: Option<u64>,
    reason: String,
    raw: &[u8],
    max: usize,
) -> Quarantined {
    Quarantined {
        source: pos.source.to_string(),
        line: pos.line,
        item,
        byte_offset: pos.byte_offset,
        reason,
        raw: raw[..raw.len().min(max)].to_vec(),
        raw_len: raw.len() as u64,
    }
}

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

fn syntax_error_with(parser: &mut Parser, bytes: &[u8]) -> Option<String> {
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
fn syntax_error_streaming(bytes: &[u8]) -> Option<String> {
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

fn contains_two_lines(bytes: &[u8]) -> bool {
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

struct Ctx<'a> {
    cluster: &'a str,
    ingested_at: i64,
    pos: SourcePos<'a>,
    max_quarantined: usize,
    doc: Doc<'a>,
}

fn decode_root(
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

fn decode_items(
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

fn record_of_value(
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

fn type_name(v: Value<'_, '_>) -> &'static str {
    match v.value_type() {
        ValueType::Null => "null",
        ValueType::Bool => "boolean",
        ValueType::String => "string",
        ValueType::Array => "array",
        ValueType::Object => "object",
        _ => "number",
    }
}

/// Handles on the parts of one event, collected before anything is appended so that a
/// bad event leaves the builders untouched.
#[derive(Default)]
struct Fields<'t, 'i> {
    api_version: Option<&'i str>,
    audit_id: Option<&'i str>,
    stage: Option<&'i str>,
    level: Option<&'i str>,
    verb: Option<&'i str>,
    request_uri: Option<&'i str>,
    user: UserFields<'t, 'i>,
    impersonated: UserFields<'t, 'i>,
    source_ips: Option<Array<'t, 'i>>,
    user_agent: Option<&'i str>,
    object_ref: [Option<&'i str>; 8],
    response_code: Option<i32>,
    response_status: Option<&'i str>,
    response_reason: Option<&'i str>,
    response_message: Option<&'i str>,
    response_details: Option<Located<'t, 'i>>,
    annotations: Option<Located<'t, 'i>>,
    request_object: Option<Located<'t, 'i>>,
    response_object: Option<Located<'t, 'i>>,
    request_received: Option<&'i str>,
    stage_timestamp: Option<&'i str>,
    /// Where the two timestamps are (their text goes to `unmapped` when not RFC 3339).
    request_received_at: Option<Located<'t, 'i>>,
    stage_timestamp_at: Option<Located<'t, 'i>>,
    legacy_timestamp: Option<&'i str>,
    unmapped: Vec<(Cow<'static, str>, Located<'t, 'i>)>,
}

#[derive(Default)]
struct UserFields<'t, 'i> {
    username: Option<&'i str>,
    uid: Option<&'i str>,
    groups: Option<Array<'t, 'i>>,
    extra: Option<Located<'t, 'i>>,
}

/// Error paths of the `objectRef` keys, same order.
const OBJECT_REF_PATHS: [&str; 8] = [
    "objectRef.resource",
    "objectRef.subresource",
    "objectRef.namespace",
    "objectRef.name",
    "objectRef.uid",
    "objectRef.apiGroup",
    "objectRef.apiVersion",
    "objectRef.resourceVersion",
];

/// `objectRef` keys in the order of `Fields::object_ref`.
const OBJECT_REF_KEYS: [&str; 8] = [
    "resource",
    "subresource",
    "namespace",
    "name",
    "uid",
    "apiGroup",
    "apiVersion",
    "resourceVersion",
];

fn expect_str<'i>(v: Value<'_, 'i>, path: &str) -> Result<Option<&'i str>, String> {
    if v.is_null() {
        return Ok(None);
    }
    v.into_string()
        .map(Some)
        .ok_or_else(|| format!("field `{path}`: expected string, found {}", type_name(v)))
}

fn expect_object<'t, 'i>(v: Value<'t, 'i>, path: &str) -> Result<Option<Object<'t, 'i>>, String> {
    if v.is_null() {
        return Ok(None);
    }
    v.as_object()
        .map(Some)
        .ok_or_else(|| format!("field `{path}`: expected object, found {}", type_name(v)))
}

fn expect_str_array<'t, 'i>(v: Value<'t, 'i>, path: &str) -> Result<Option<Array<'t, 'i>>, String> {
    if v.is_null() {
        return Ok(None);
    }
    let arr = v.as_array().ok_or_else(|| {
        format!(
            "field `{path}`: expected array of strings, found {}",
            type_name(v)
        )
    })?;
    for (i, item) in arr.iter().enumerate() {
        if item.as_str().is_none() {
            return Err(format!(
                "field `{path}[{i}]`: expected string, found {}",
                type_name(item)
            ));
        }
    }
    Ok(Some(arr))
}

fn nested_path(parent: &str, key: &str) -> Cow<'static, str> {
    Cow::Owned(format!("{parent}.{key}"))
}

/// Error paths of the `user` and `impersonatedUser` fields, so the hot path never formats.
struct UserPaths {
    parent: &'static str,
    username: &'static str,
    uid: &'static str,
    groups: &'static str,
    extra: &'static str,
}

const USER_PATHS: UserPaths = UserPaths {
    parent: "user",
    username: "user.username",
    uid: "user.uid",
    groups: "user.groups",
    extra: "user.extra",
};

const IMPERSONATED_PATHS: UserPaths = UserPaths {
    parent: "impersonatedUser",
    username: "impersonatedUser.username",
    uid: "impersonatedUser.uid",
    groups: "impersonatedUser.groups",
    extra: "impersonatedUser.extra",
};

fn collect_user<'t, 'i>(
    user: Located<'t, 'i>,
    paths: &UserPaths,
    out: &mut UserFields<'t, 'i>,
    unmapped: &mut Vec<(Cow<'static, str>, Located<'t, 'i>)>,
) -> Result<(), String> {
    if expect_object(user.value, paths.parent)?.is_none() {
        return Ok(());
    }
    for (k, located) in user.entries() {
        let v = located.value;
        match k {
            "username" => out.username = expect_str(v, paths.username)?,
            "uid" => out.uid = expect_str(v, paths.uid)?,
            "groups" => out.groups = expect_str_array(v, paths.groups)?,
            "extra" => {
                if !v.is_null() {
                    expect_object(v, paths.extra)?;
                    out.extra = Some(located);
                }
            }
            _ => unmapped.push((nested_path(paths.parent, k), located)),
        }
    }
    Ok(())
}

fn collect<'t, 'i>(root: Located<'t, 'i>) -> Result<Fields<'t, 'i>, String> {
    if !root.value.is_object() {
        return Err(format!(
            "expected an audit Event object, found {}",
            type_name(root.value)
        ));
    }
    let mut f = Fields::default();
    for (k, located) in root.entries() {
        let v = located.value;
        match k {
            "kind" => match v.as_str() {
                Some("Event") => {}
                Some(other) => {
                    return Err(format!(
                        "field `kind`: expected \"Event\", found \"{other}\""
                    ));
                }
                None => {
                    return Err(format!(
                        "field `kind`: expected string, found {}",
                        type_name(v)
                    ));
                }
            },
            "apiVersion" => f.api_version = expect_str(v, "apiVersion")?,
            "auditID" => f.audit_id = expect_str(v, "auditID")?,
            "stage" => f.stage = expect_str(v, "stage")?,
            "level" => f.level = expect_str(v, "level")?,
            "verb" => f.verb = expect_str(v, "verb")?,
            "requestURI" => f.request_uri = expect_str(v, "requestURI")?,
            "user" => collect_user(located, &USER_PATHS, &mut f.user, &mut f.unmapped)?,
            "impersonatedUser" => collect_user(
                located,
                &IMPERSONATED_PATHS,
                &mut f.impersonated,
                &mut f.unmapped,
            )?,
            "sourceIPs" => f.source_ips = expect_str_array(v, "sourceIPs")?,
            "userAgent" => f.user_agent = expect_str(v, "userAgent")?,
            "objectRef" => {
                if expect_object(v, "objectRef")?.is_none() {
                    continue;
                }
                for (k, located) in located.entries() {
                    match OBJECT_REF_KEYS.iter().position(|&name| name == k) {
                        Some(i) => {
                            f.object_ref[i] = expect_str(located.value, OBJECT_REF_PATHS[i])?
                        }
                        None => f.unmapped.push((nested_path("objectRef", k), located)),
                    }
                }
            }
            "responseStatus" => {
                if expect_object(v, "responseStatus")?.is_none() {
                    continue;
                }
                for (k, located) in located.entries() {
                    let v = located.value;
                    match k {
                        "code" => {
                            if v.is_null() {
                                continue;
                            }
                            let code = v.as_i64().and_then(|c| i32::try_from(c).ok()).ok_or_else(|| {
                                format!("field `responseStatus.code`: expected 32-bit integer, found {}", type_name(v))
                            })?;
                            f.response_code = Some(code);
                        }
                        "status" => f.response_status = expect_str(v, "responseStatus.status")?,
                        "reason" => f.response_reason = expect_str(v, "responseStatus.reason")?,
                        "message" => f.response_message = expect_str(v, "responseStatus.message")?,
                        "details" => f.response_details = (!v.is_null()).then_some(located),
                        // Status objects always carry an empty ListMeta: nothing to keep.
                        "metadata" if v.as_object().is_some_and(|m| m.is_empty()) => {}
                        _ => f.unmapped.push((nested_path("responseStatus", k), located)),
                    }
                }
            }
            "annotations" => {
                if let Some(a) = expect_object(v, "annotations")? {
                    for (k, v) in a.iter() {
                        if v.as_str().is_none() {
                            return Err(format!(
                                "field `annotations.{k}`: expected string, found {}",
                                type_name(v)
                            ));
                        }
                    }
                    f.annotations = Some(located);
                }
            }
            "requestObject" => f.request_object = (!v.is_null()).then_some(located),
            "responseObject" => f.response_object = (!v.is_null()).then_some(located),
            "requestReceivedTimestamp" => {
                f.request_received = expect_str(v, "requestReceivedTimestamp")?;
                f.request_received_at = Some(located);
            }
            "stageTimestamp" => {
                f.stage_timestamp = expect_str(v, "stageTimestamp")?;
                f.stage_timestamp_at = Some(located);
            }
            "timestamp" => {
                // audit.k8s.io/v1beta1: the time of the event; kept in `unmapped` too.
                f.legacy_timestamp = expect_str(v, "timestamp")?;
                f.unmapped.push((Cow::Borrowed("timestamp"), located));
            }
            _ => f.unmapped.push((Cow::Owned(k.to_string()), located)),
        }
    }
    Ok(f)
}

/// Reads a timestamp field; `Ok(Some((micros, rfc3339)))` when present and readable (see
/// [`parse_timestamp`]: a form that is not RFC 3339 is read, its original text kept).
fn parse_time(text: Option<&str>, field: &str) -> Result<Option<(i64, bool)>, String> {
    match text {
        None => Ok(None),
        Some(t) => parse_timestamp(t)
            .map(|t| Some((t.micros, t.rfc3339)))
            .ok_or_else(|| format!("field `{field}`: not a timestamp (RFC 3339, or the same with a space for T or no zone): {t:?}")),
    }
}

fn append_event(
    root: Located<'_, '_>,
    list_api_version: Option<&str>,
    ctx: &Ctx<'_>,
    item: Option<u64>,
    b: &mut EventBatchBuilder,
    scratch: &mut Scratch,
) -> Result<(), String> {
    let f = collect(root)?;
    let audit_id = match f.audit_id {
        Some(id) if !id.is_empty() => id,
        Some(_) => return Err("field `auditID` is empty".into()),
        None => return Err("missing field `auditID`".into()),
    };
    let mut f = f;
    let legacy = parse_time(f.legacy_timestamp, "timestamp")?;
    let received = parse_time(f.request_received, "requestReceivedTimestamp")?;
    let stage = parse_time(f.stage_timestamp, "stageTimestamp")?;
    // A timestamp that was not RFC 3339 is normalised in its column; its original text is
    // kept in `unmapped` under its field name, so nothing the source said is lost.
    for (field, parsed, located) in [
        ("requestReceivedTimestamp", received, f.request_received_at),
        ("stageTimestamp", stage, f.stage_timestamp_at),
    ] {
        if let (Some((_, false)), Some(located)) = (parsed, located) {
            f.unmapped.push((Cow::Borrowed(field), located));
        }
    }
    let received = received
        .or(legacy)
        .map(|t| t.0)
        .ok_or("missing field `requestReceivedTimestamp`")?;
    let stage_at = stage
        .or(legacy)
        .map(|t| t.0)
        .ok_or("missing field `stageTimestamp`")?;

    // Validated: from here on every column gets exactly one value.
    b.cluster.append_value(ctx.cluster);
    b.event_api_version
        .append_option(f.api_version.or(list_api_version));
    b.audit_id.append_value(audit_id);
    b.stage.append_option(f.stage);
    b.level.append_option(f.level);
    b.verb.append_option(f.verb);
    b.request_uri.append_option(f.request_uri);
    append_user(
        &f.user,
        &mut b.user_username,
        &mut b.user_uid,
        &mut b.user_groups,
        &mut b.user_extra,
        ctx.doc,
        scratch,
    );
    append_user(
        &f.impersonated,
        &mut b.impersonated_username,
        &mut b.impersonated_uid,
        &mut b.impersonated_groups,
        &mut b.impersonated_extra,
        ctx.doc,
        scratch,
    );
    append_list(&mut b.source_ips, f.source_ips);
    b.user_agent.append_option(f.user_agent);
    let [
        resource,
        subresource,
        namespace,
        name,
        uid,
        api_group,
        api_version,
        resource_version,
    ] = f.object_ref;
    b.resource.append_option(resource);
    b.subresource.append_option(subresource);
    b.namespace.append_option(namespace);
    b.name.append_option(name);
    b.object_uid.append_option(uid);
    b.api_group.append_option(api_group);
    b.api_version.append_option(api_version);
    b.resource_version.append_option(resource_version);
    b.response_code.append_option(f.response_code);
    b.response_status.append_option(f.response_status);
    b.response_reason.append_option(f.response_reason);
    b.response_message.append_option(f.response_message);
    append_json(
        &mut b.response_details,
        f.response_details,
        ctx.doc,
        scratch,
    );
    let annotation = |key: &str| {
        f.annotations
            .and_then(|a| a.value.get(key))
            .and_then(|v| v.into_string())
    };
    b.authz_decision
        .append_option(annotation("authorization.k8s.io/decision"));
    b.authz_reason
        .append_option(annotation("authorization.k8s.io/reason"));
    append_json(&mut b.annotations, f.annotations, ctx.doc, scratch);
    append_json(&mut b.request_object, f.request_object, ctx.doc, scratch);
    append_json(&mut b.response_object, f.response_object, ctx.doc, scratch);
    b.request_received_at.append_value(received);
    b.stage_at.append_value(stage_at);
    b.ingested_at.append_value(ctx.ingested_at);
    // Formatted by hand: `write!` costs more than the rest of this row's scalars.
    let mut digits = itoa::Buffer::new();
    scratch.source_ref.clear();
    scratch.source_ref.push_str(ctx.pos.source);
    if let Some(line) = ctx.pos.line {
        scratch.source_ref.push(':');
        scratch.source_ref.push_str(digits.format(line));
    }
    if let Some(i) = item {
        scratch.source_ref.push('#');
        scratch.source_ref.push_str(digits.format(i));
    }
    b.source_ref.append_value(&scratch.source_ref);
    if f.unmapped.is_empty() {
        b.unmapped.append_null();
    } else {
        let mut out = std::mem::take(&mut scratch.json);
        out.clear();
        out.push(b'{');
        for (i, (k, v)) in f.unmapped.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_json_string(&mut out, k);
            out.push(b':');
            match v.raw(ctx.doc) {
                Some(raw) => out.extend_from_slice(raw),
                // Writing into a Vec cannot fail.
                None => _ = v.value.write(&mut out),
            }
        }
        out.push(b'}');
        b.unmapped.append_value(String::from_utf8_lossy(&out));
        scratch.json = out;
    }
    if let Some(digests) = &mut scratch.digests {
        let text = json_text(root, ctx.doc, &mut scratch.json);
        digests.push(twox_hash::XxHash3_128::oneshot_with_seed(
            scratch.digest_seed,
            text.as_bytes(),
        ));
    }
    b.row_done();
    Ok(())
}

fn append_user(
    u: &UserFields<'_, '_>,
    username: &mut StringBuilder,
    uid: &mut StringBuilder,
    groups: &mut ListBuilder<StringBuilder>,
    extra: &mut StringBuilder,
    doc: Doc<'_>,
    scratch: &mut Scratch,
) {
    username.append_option(u.username);
    uid.append_option(u.uid);
    append_list(groups, u.groups);
    append_json(extra, u.extra, doc, scratch);
}

fn append_list(b: &mut ListBuilder<StringBuilder>, arr: Option<Array<'_, '_>>) {
    match arr {
        None => b.append_null(),
        Some(arr) => {
            for v in arr.iter() {
                b.values().append_option(v.into_string());
            }
            b.append(true);
        }
    }
}

fn append_json(
    b: &mut StringBuilder,
    v: Option<Located<'_, '_>>,
    doc: Doc<'_>,
    scratch: &mut Scratch,
) {
    match v {
        None => b.append_null(),
        Some(v) => b.append_value(json_text(v, doc, &mut scratch.json)),
    }
}

/// The JSON text of a value: the bytes an object or array arrived as, or a scalar
/// re-encoded into `buf`.
fn json_text<'a>(v: Located<'_, '_>, doc: Doc<'a>, buf: &'a mut Vec<u8>) -> Cow<'a, str> {
    let bytes = match v.raw(doc) {
        Some(raw) => raw,
        None => {
            buf.clear();
            // Writing into a Vec cannot fail.
            let _ = v.value.write(&mut *buf);
            buf
        }
    };
    // simd-json validated the input as UTF-8 and its writer escapes strings, so this is
    // always the borrowed (valid) case; `from_utf8` checks ASCII a word at a time.
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// Appends `s` as a JSON string literal.
fn write_json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}
