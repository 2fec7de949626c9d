//! simd-json -> Arrow decoder of Kubernetes audit events (`audit.k8s.io/v1` and `v1beta1`).
//!
//! Each input is parsed into a simd-json tape (no tree of maps is built) and walked once.
//! Two layers: the envelope ([`crate::envelope`]: NDJSON, a bare Event, an `EventList`, a
//! JSON array; large documents cut first) finds the events, and the event mapping
//! ([`crate::event_mapping`]) puts known fields in typed columns, re-encodes free-form
//! bodies as JSON text and keeps every field the schema does not name in `unmapped`. An
//! event that cannot be decoded becomes a [`Quarantined`] record; its neighbours are
//! unaffected. The cluster comes with each input ([`SourcePos::cluster`]), so one decoder
//! serves every cluster.

use arrow::array::RecordBatch;

use crate::byte_layers::{decode_base64, inflate_gzip, is_gzip, looks_like_base64_payload};
use crate::envelope::{
    Envelope, Meta, Parser, Payload, Skipped, UTF8_BOM, contains_two_lines, decode_root, lines,
    offset_in, record_of_value,
};
use crate::event_builder::EventBatchBuilder;
use crate::event_mapping::{Ctx, append_event};
use crate::large_document;
use crate::tape_span::{Doc, Located};

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
    /// A gzip layer (a CloudWatch Logs payload, a Firehose object) inflating to more than
    /// this is quarantined instead (a small compressed input must not fill memory).
    pub max_inflated_bytes: usize,
    /// The envelope every input is decoded as; `None` (`auto`) recognises each by shape.
    pub envelope: Option<Envelope>,
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
            // Firehose's largest buffer is 128 MiB of compressed records.
            max_inflated_bytes: 256 << 20,
            envelope: None,
        }
    }
}

/// An input that could not be decoded, with why and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    /// The cluster the input was for (its quarantine file is filed under it).
    pub cluster: String,
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
    /// The cluster its events belong to (the `cluster` column and partition).
    pub cluster: &'a str,
    /// Source name as shown in `source_ref` and quarantine records.
    pub source: &'a str,
    /// 1-based line number, if line oriented.
    pub line: Option<u64>,
    /// Byte offset in the source.
    pub byte_offset: u64,
}

impl SourcePos<'_> {
    /// Where line `line_no` (0-based, from [`crate::lines`]) starting `start` bytes into an
    /// input at `self` sits.
    pub(crate) fn at_line(self, line_no: u64, start: usize) -> Self {
        SourcePos {
            line: Some(self.line.unwrap_or(1) + line_no),
            byte_offset: self.byte_offset + start as u64,
            ..self
        }
    }
}

/// Decodes audit events into record batches of the events schema.
pub struct EventDecoder {
    options: DecoderOptions,
    builder: EventBatchBuilder,
    parser: Parser,
    scratch: Scratch,
    ingested_at: i64,
    input_bytes: usize,
    summarised: u64,
    /// How many byte layers (base64, gzip) deep the input being decoded is.
    depth: u8,
    /// Whether the envelopes the tapeless scan takes are decoded by it (always, but in the
    /// tests and the fuzzer that compare it with the tape path).
    skim: bool,
    /// Inputs the tapeless scan decoded (for those tests).
    #[cfg(test)]
    pub(crate) skimmed: u64,
}

/// Byte layers (a transport's base64 payload, gzip) peeled inside one another at most; a
/// payload nested deeper is quarantined (no real transport nests more than three).
const MAX_BYTE_LAYERS: u8 = 4;

/// The quarantine records of one input: at most `cap` one by one; beyond, bad items are
/// only counted (so a body of millions of bad items costs a count, not millions of records).
pub(crate) struct Bounded<'q> {
    pub(crate) out: &'q mut Vec<Quarantined>,
    pub(crate) start: usize,
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
    pub(crate) fn push_with(&mut self, make: impl FnOnce() -> Quarantined) {
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
pub(crate) struct Scratch {
    pub(crate) json: Vec<u8>,
    pub(crate) source_ref: String,
    /// Per-row identity digests, when asked for (see [`EventDecoder::enable_row_digests`]).
    pub(crate) digests: Option<Vec<u128>>,
    /// The process secret the digests are keyed with.
    digest_key: u64,
    /// Parse states for the events envelopes hold as JSON text, one per depth of nesting
    /// (see [`crate::envelope`]).
    pub(crate) embedded: Vec<Parser>,
    /// The `envelope` column's value for the events being appended.
    pub(crate) meta: Meta,
    /// Payloads transports carried as bytes, decoded once the input holding them is done.
    pub(crate) payloads: Vec<Payload>,
    /// What consecutive Azure records of one resource share.
    pub(crate) azure: crate::envelope::AzureRecordCache,
    /// The strings the tapeless envelope scan unescaped.
    pub(crate) skim: crate::envelope::SkimBuffers,
    /// Envelope records holding no audit event, by [`Skipped::ALL`] index, since the last
    /// [`EventDecoder::take_skipped`].
    skipped: [u64; Skipped::ALL.len()],
}

impl Scratch {
    /// Counts `n` envelope records skipped for `why`.
    pub(crate) fn skip(&mut self, why: Skipped, n: u64) {
        self.skipped[why as usize] += n;
    }

    /// The seed of the digests of `cluster`'s events (see [`Ctx::digest_seed`]).
    pub(crate) fn digest_seed(&self, cluster: &str) -> u64 {
        match self.digests {
            Some(_) => {
                twox_hash::XxHash3_64::oneshot_with_seed(self.digest_key, cluster.as_bytes())
            }
            None => 0,
        }
    }
}

impl EventDecoder {
    /// A decoder; each input names its cluster ([`SourcePos::cluster`]).
    pub fn new(options: DecoderOptions) -> Self {
        Self {
            options,
            builder: EventBatchBuilder::new(),
            parser: Parser::new(),
            scratch: Scratch::default(),
            ingested_at: 0,
            input_bytes: 0,
            summarised: 0,
            depth: 0,
            skim: true,
            #[cfg(test)]
            skimmed: 0,
        }
    }

    /// Decodes every envelope from the simd-json tape, never with the tapeless scan: for the
    /// tests and the fuzzer that check both decode every input the same.
    #[doc(hidden)]
    pub fn without_tapeless_scan(mut self) -> Self {
        self.skim = false;
        self
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

    /// Envelope records that held no audit event (other log streams and categories, health
    /// checks), by reason, since the last call; reasons with none are left out.
    pub fn take_skipped(&mut self) -> Vec<(Skipped, u64)> {
        let counts = std::mem::take(&mut self.scratch.skipped);
        Skipped::ALL
            .into_iter()
            .zip(counts)
            .filter(|(_, n)| *n > 0)
            .collect()
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
        self.scratch.digest_key = key;
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

    /// Decodes NDJSON: each non-blank line on its own, as [`EventDecoder::decode_line`]
    /// would (its own quarantine cap, lines over `max_event_bytes` quarantined unparsed).
    /// `pos` is where the first line starts. Returns how many events were appended.
    pub fn decode_ndjson(
        &mut self,
        bytes: &[u8],
        pos: SourcePos<'_>,
        quarantine: &mut Vec<Quarantined>,
    ) -> usize {
        let mut appended = 0;
        for (line_no, start, line) in lines(bytes) {
            let line_pos = pos.at_line(line_no, start);
            appended += self.decode_line(line, line_pos, quarantine);
        }
        appended
    }

    /// Decodes a line longer than `max_event_bytes` that a reader kept whole: JSON values
    /// back to back (a Firehose object's records once inflated), each decoded on its own
    /// and quarantined when it alone exceeds `max_event_bytes`. A line that is one value, or
    /// not JSON, is quarantined as an over-long line, as if it had been cut while reading.
    pub fn decode_long_line(
        &mut self,
        line: &[u8],
        pos: SourcePos<'_>,
        quarantine: &mut Vec<Quarantined>,
    ) -> usize {
        let line = line.strip_prefix(UTF8_BOM).unwrap_or(line);
        let values = match large_document::top_level_values(line) {
            Ok(v) if v.len() > 1 => v,
            _ => {
                let kept = &line[..line.len().min(self.options.max_quarantined_bytes)];
                self.quarantine_oversized(kept, line.len() as u64, pos, quarantine);
                return 0;
            }
        };
        let mut q = Bounded::new(quarantine, self.options.max_quarantined_per_input);
        let mut n = 0;
        for v in values {
            let raw = v.get().as_bytes();
            let v_pos = SourcePos {
                byte_offset: pos.byte_offset + offset_in(line, raw),
                ..pos
            };
            n += self.decode_piece(large_document::Piece::Whole(raw), v_pos, &mut q);
        }
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
        let n = self.decode_whole(bytes, pos, &mut q);
        self.close_input(q, bytes, pos);
        n
    }

    /// A document: gzip inflated first, then parsed whole, cut first when large.
    fn decode_whole(&mut self, bytes: &[u8], pos: SourcePos<'_>, q: &mut Bounded<'_>) -> usize {
        if is_gzip(bytes) {
            return self.decode_layer(bytes, pos, None, "gzip", q);
        }
        let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
        if bytes.len() > self.options.large_document_bytes {
            self.decode_large(bytes, pos, q)
        } else {
            self.decode_small(bytes, pos, q)
        }
    }

    /// Decodes the document inside a byte layer (`what`: a gzip stream, a transport's
    /// payload), one layer deeper; what cannot be peeled is quarantined with the reason.
    fn decode_layer(
        &mut self,
        bytes: &[u8],
        pos: SourcePos<'_>,
        item: Option<u64>,
        what: &str,
        q: &mut Bounded<'_>,
    ) -> usize {
        let max = self.options.max_quarantined_bytes;
        if self.depth >= MAX_BYTE_LAYERS {
            let reason =
                format!("{what}: more than {MAX_BYTE_LAYERS} byte layers (base64, gzip) nested");
            q.push_with(|| quarantine_record(pos, item, reason, bytes, max));
            return 0;
        }
        let inflated;
        let inner = if is_gzip(bytes) {
            match inflate_gzip(bytes, self.options.max_inflated_bytes) {
                Ok(v) => {
                    inflated = v;
                    &inflated[..]
                }
                Err(e) => {
                    let reason = format!("{what}: {e}");
                    q.push_with(|| quarantine_record(pos, item, reason, bytes, max));
                    return 0;
                }
            }
        } else {
            bytes
        };
        // What is inside is recognised by its own shape: the source's `--envelope` named
        // the outer layer.
        let forced = self.options.envelope.take();
        self.depth += 1;
        let n = self.decode_whole(inner, pos, q);
        self.depth -= 1;
        self.options.envelope = forced;
        n
    }

    /// Decodes the payloads the input just parsed queued (a transport's `data` fields).
    fn decode_payloads(&mut self, pos: SourcePos<'_>, q: &mut Bounded<'_>) -> usize {
        let payloads = std::mem::take(&mut self.scratch.payloads);
        let mut n = 0;
        for p in payloads {
            let source = format!(
                "{}#{}[{}]",
                pos.source,
                p.what.split('[').next().unwrap_or(p.what),
                p.item
            );
            let inner_pos = SourcePos {
                source: &source,
                ..pos
            };
            let outer = self.scratch.meta.transport.replace(p.transport);
            n += self.decode_layer(&p.bytes, inner_pos, Some(p.item), p.what, q);
            self.scratch.meta.transport = outer;
        }
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

    /// Decodes `bytes` without a tape when it is an envelope the tapeless scan takes (see
    /// [`crate::envelope::decode_skimmed`]); `None`, with nothing decoded, otherwise.
    fn decode_skimmed(
        &mut self,
        bytes: &[u8],
        pos: SourcePos<'_>,
        quarantine: &mut Bounded<'_>,
    ) -> Option<usize> {
        let format =
            crate::envelope::skimmable(bytes, self.options.envelope).filter(|_| self.skim)?;
        let ctx = self.context(pos, Doc::new(bytes, &[]));
        let (b, scratch) = (&mut self.builder, &mut self.scratch);
        let n = crate::envelope::decode_skimmed(format, bytes, &ctx, b, scratch, quarantine);
        #[cfg(test)]
        {
            self.skimmed += u64::from(n.is_some());
        }
        n
    }

    /// The decoding context of an input at `pos` whose document is `doc`.
    fn context<'a>(&self, pos: SourcePos<'a>, doc: Doc<'a>) -> Ctx<'a> {
        Ctx {
            ingested_at: self.ingested_at,
            pos,
            max_quarantined: self.options.max_quarantined_bytes,
            doc,
            digest_seed: self.scratch.digest_seed(pos.cluster),
            envelope: self.options.envelope,
        }
    }

    /// Parses `bytes` and runs `f` on its root with the decoding context and the builders.
    fn with_parsed<R>(
        &mut self,
        bytes: &[u8],
        pos: SourcePos<'_>,
        f: impl FnOnce(Located<'_, '_>, &Ctx<'_>, &mut EventBatchBuilder, &mut Scratch) -> R,
    ) -> Result<R, simd_json::Error> {
        let ctx = self.context(pos, Doc::new(&[], &[]));
        let Self {
            builder,
            parser,
            scratch,
            ..
        } = self;
        parser.parse(bytes, |root, doc| {
            let ctx = Ctx { doc, ..ctx };
            f(root, &ctx, builder, scratch)
        })
    }

    /// NDJSON: each line on its own (lines over `max_event_bytes` quarantined unparsed).
    fn decode_lines(&mut self, bytes: &[u8], pos: SourcePos<'_>, q: &mut Bounded<'_>) -> usize {
        let mut appended = 0;
        for (line_no, start, line) in lines(bytes) {
            let line_pos = pos.at_line(line_no, start);
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
        let parsed = match self.decode_skimmed(bytes, pos, quarantine) {
            Some(n) => Ok(n),
            None => self.with_parsed(bytes, pos, |root, ctx, builder, scratch| {
                decode_root(root, ctx, builder, scratch, quarantine)
            }),
        };
        match parsed {
            Ok(n) => {
                self.input_bytes += bytes.len();
                match self.scratch.payloads.is_empty() {
                    true => n,
                    false => n + self.decode_payloads(pos, quarantine),
                }
            }
            Err(e) => {
                if let Some(n) = self.decode_unparsed(bytes, pos, quarantine) {
                    return n;
                }
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

    /// An input that is not one JSON value may still be a known layer: gzip, base64, a
    /// CloudWatch export line (`<ISO time> <event>`), or JSON values back to back with no
    /// delimiter (Firehose's records in S3). `None` when it is none of these.
    fn decode_unparsed(
        &mut self,
        bytes: &[u8],
        pos: SourcePos<'_>,
        q: &mut Bounded<'_>,
    ) -> Option<usize> {
        if is_gzip(bytes) {
            return Some(self.decode_layer(bytes, pos, None, "gzip", q));
        }
        if looks_like_base64_payload(bytes) {
            let text = std::str::from_utf8(bytes).ok()?;
            let payload = decode_base64(text).ok()?;
            return Some(self.decode_layer(&payload, pos, None, "base64", q));
        }
        if let Some((time, rest)) = export_line(bytes) {
            let rest_pos = SourcePos {
                byte_offset: pos.byte_offset + offset_in(bytes, rest),
                ..pos
            };
            self.scratch.meta.begin(Envelope::CloudWatchExport);
            self.scratch.meta.str("timestamp", Some(time));
            self.scratch.meta.end();
            let n = self.decode_value_bytes(rest, rest_pos, q);
            self.scratch.meta.off();
            return Some(n);
        }
        if memchr::memchr(b'\n', bytes).is_none()
            && let Ok(values) = large_document::top_level_values(bytes)
            && values.len() > 1
        {
            let mut n = 0;
            for v in values {
                let raw = v.get().as_bytes();
                let v_pos = SourcePos {
                    byte_offset: pos.byte_offset + offset_in(bytes, raw),
                    ..pos
                };
                n += self.decode_value_bytes(raw, v_pos, q);
            }
            return Some(n);
        }
        None
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

/// A line of a CloudWatch Logs export to S3: `<ISO-8601 time> <message>`, the message
/// starting with `{`; the time and the message.
fn export_line(bytes: &[u8]) -> Option<(&str, &[u8])> {
    // An ISO time is at most 35 bytes: a line with no space before is no export line.
    let space = memchr::memchr(b' ', &bytes[..bytes.len().min(40)])?;
    let (time, rest) = (&bytes[..space], bytes[space + 1..].trim_ascii_start());
    let looks_like_time = time.len() >= 20
        && time[..4].iter().all(u8::is_ascii_digit)
        && time[4] == b'-'
        && time[10] == b'T';
    (looks_like_time && rest.first() == Some(&b'{'))
        .then(|| std::str::from_utf8(time).ok().map(|t| (t, rest)))
        .flatten()
}

pub(crate) fn quarantine_record(
    pos: SourcePos<'_>,
    item: Option<u64>,
    reason: String,
    raw: &[u8],
    max: usize,
) -> Quarantined {
    Quarantined {
        cluster: pos.cluster.to_string(),
        source: pos.source.to_string(),
        line: pos.line,
        item,
        byte_offset: pos.byte_offset,
        reason,
        raw: raw[..raw.len().min(max)].to_vec(),
        raw_len: raw.len() as u64,
    }
}
