//! A tapeless scan of the envelopes that hold each event as JSON text (AKS diagnostic records,
//! CloudWatch Logs subscription messages), so that each event is parsed once.
//!
//! Through simd-json, an event inside an envelope is parsed twice: once as a string of the
//! envelope (stage 1 over its escaped text, then unescaping it) and once as the event. This
//! scan validates the envelope and unescapes the strings it keeps in one pass, 64 bytes at a
//! time, without building a tape; only the event is then parsed by simd-json.
//!
//! It takes only what it is sure of: any value of an unexpected type, a duplicate key, a
//! `\u` escape, invalid UTF-8, nesting deeper than [`MAX_DEPTH`] or anything that is not
//! valid JSON makes it answer `None` before anything is decoded, and the input then goes the
//! tape path, which decides (decodes, quarantines, counts) exactly as before. The scan only
//! makes the common case fast; it never makes a different decision.

use std::ops::Range;

use wide::u8x16;

/// Containers nested deeper than this inside a skipped value send the input the tape path.
const MAX_DEPTH: u32 = 64;

/// A string value the scan kept: its text, in the input (no escapes) or unescaped into
/// [`Buffers::text`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Text {
    /// The bytes between the quotes in the input.
    Input(Range<usize>),
    /// The unescaped bytes in [`Buffers::text`].
    Unescaped(Range<usize>),
}

impl Text {
    /// The text as a string. The scan validated the string as UTF-8, and unescaping only
    /// cuts it at ASCII bytes (a backslash) and inserts ASCII bytes, so the conversion cannot
    /// fail; an empty string stands in for what cannot happen.
    pub(crate) fn get<'a>(&self, input: &'a [u8], text: &'a [u8]) -> &'a str {
        simdutf8::basic::from_utf8(self.bytes(input, text)).unwrap_or_default()
    }

    /// The text's bytes (UTF-8, see [`Text::get`]).
    pub(crate) fn bytes<'a>(&self, input: &'a [u8], text: &'a [u8]) -> &'a [u8] {
        let bytes = match self {
            Text::Input(r) => input.get(r.clone()),
            Text::Unescaped(r) => text.get(r.clone()),
        };
        bytes.unwrap_or_default()
    }
}

/// Unescaped strings of one input, back to back, reused across inputs.
#[derive(Default)]
pub(crate) struct Buffers {
    /// The strings up to `used`; beyond, zeroes kept from earlier inputs, so that unescaping
    /// writes into bytes that exist (whole 16-byte runs at a time) without zeroing them anew.
    bytes: Vec<u8>,
    used: usize,
}

/// Buffers grown past this by one input are given back afterwards.
const KEEP_TEXT_UP_TO: usize = 4 << 20;

impl Buffers {
    /// Starts a new input.
    pub(crate) fn clear(&mut self) {
        if self.bytes.len() > KEEP_TEXT_UP_TO {
            self.bytes = Vec::new();
        }
        self.used = 0;
    }

    /// The strings unescaped so far.
    pub(crate) fn text(&self) -> &[u8] {
        &self.bytes[..self.used]
    }

    /// Makes room for `n` more bytes after `at`.
    fn reserve(&mut self, at: usize, n: usize) {
        if self.bytes.len() < at + n {
            let len = (at + n).max(self.bytes.len() * 2).max(4096);
            self.bytes.resize(len, 0);
        }
    }

    /// Appends `src[from..to]` at `at`; returns the new end. A short run is copied as 16
    /// bytes (one move, where a call to memcpy would cost more than the copy): the bytes past
    /// the run are overwritten by what follows or lie beyond `used`.
    #[inline]
    fn run(&mut self, at: usize, src: &[u8], from: usize, to: usize) -> usize {
        let len = to - from;
        self.reserve(at, len.max(16));
        match src.get(from..from + 16) {
            Some(chunk) if len <= 16 => self.bytes[at..at + 16].copy_from_slice(chunk),
            _ => self.bytes[at..at + len].copy_from_slice(&src[from..to]),
        }
        at + len
    }

    /// Appends one byte at `at`; returns the new end.
    #[inline]
    fn push(&mut self, at: usize, c: u8) -> usize {
        self.reserve(at, 1);
        self.bytes[at] = c;
        at + 1
    }
}

/// The key of the first member of the JSON object `bytes` holds, when it has no escapes:
/// enough to tell an envelope from an event before scanning anything.
pub(crate) fn first_key(bytes: &[u8]) -> Option<&[u8]> {
    let rest = bytes.trim_ascii_start().strip_prefix(b"{")?;
    let rest = rest.trim_ascii_start().strip_prefix(b"\"")?;
    let end = memchr::memchr2(b'"', b'\\', rest)?;
    (rest[end] == b'"').then(|| &rest[..end])
}

/// Fills `slot` with the first value of a key; `None` for a second (the tape path decides
/// which of two values counts).
pub(crate) fn once(slot: &mut Option<Text>, value: Text) -> Option<()> {
    match slot {
        Some(_) => None,
        None => {
            *slot = Some(value);
            Some(())
        }
    }
}

/// A cursor over one JSON document.
pub(crate) struct Skim<'a> {
    bytes: &'a [u8],
    at: usize,
    depth: u32,
}

impl<'a> Skim<'a> {
    /// A cursor at the start of `bytes`. Whether they are UTF-8 is checked as they are
    /// scanned: outside strings only ASCII is valid JSON, and each string is checked.
    pub(crate) fn new(bytes: &'a [u8]) -> Option<Self> {
        Some(Self {
            bytes,
            at: 0,
            depth: 0,
        })
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.bytes.get(self.at).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        let found = self.peek() == Some(c);
        self.at += usize::from(found);
        found
    }

    /// Whether only whitespace is left.
    pub(crate) fn at_end(&mut self) -> bool {
        self.peek().is_none()
    }

    /// The members of an object: `each` gets the key's raw bytes (a key with escapes gets
    /// `None`: no key the scan looks for has any) and must consume the value.
    pub(crate) fn object(
        &mut self,
        mut each: impl FnMut(&mut Self, Option<&'a [u8]>) -> Option<()>,
    ) -> Option<()> {
        if !self.eat(b'{') {
            return None;
        }
        if self.eat(b'}') {
            return Some(());
        }
        loop {
            if !self.eat(b'"') {
                return None;
            }
            let start = self.at;
            let (end, escaped) = string_end(self.bytes, start)?;
            self.at = end + 1;
            if !self.eat(b':') {
                return None;
            }
            each(self, (!escaped).then(|| &self.bytes[start..end]))?;
            if !self.eat(b',') {
                return self.eat(b'}').then_some(());
            }
        }
    }

    /// The items of an array; `each` must consume each item.
    pub(crate) fn array(&mut self, mut each: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        if !self.eat(b'[') {
            return None;
        }
        if self.eat(b']') {
            return Some(());
        }
        loop {
            each(self)?;
            if !self.eat(b',') {
                return self.eat(b']').then_some(());
            }
        }
    }

    /// A string value, kept: in place when it has no escapes, else unescaped onto `text`.
    pub(crate) fn string(&mut self, text: &mut Buffers) -> Option<Text> {
        if !self.eat(b'"') {
            return None;
        }
        let start = self.at;
        let mark = text.used;
        let (end, escaped) = scan_string(self.bytes, start, Some(text))?;
        self.at = end + 1;
        Some(match escaped {
            false => {
                text.used = mark;
                Text::Input(start..end)
            }
            true => Text::Unescaped(mark..text.used),
        })
    }

    /// An integer value that fits an `i64` (`None` for any other value, a fraction or an
    /// exponent included).
    pub(crate) fn integer(&mut self) -> Option<i64> {
        self.skip_ws();
        let start = self.at;
        self.number()?;
        let digits = std::str::from_utf8(&self.bytes[start..self.at]).ok()?;
        // `-0` is a float to simd-json: not an integer the tape path would read.
        (digits != "-0").then(|| digits.parse().ok()).flatten()
    }

    /// Skips any JSON value, validating it.
    pub(crate) fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => {
                self.at += 1;
                let (end, _) = string_end(self.bytes, self.at)?;
                self.at = end + 1;
                Some(())
            }
            b'{' => self.nested(|s| s.object(|s, _| s.skip_value())),
            b'[' => self.nested(|s| s.array(Self::skip_value)),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }

    fn nested(&mut self, f: impl FnOnce(&mut Self) -> Option<()>) -> Option<()> {
        if self.depth >= MAX_DEPTH {
            return None;
        }
        self.depth += 1;
        let r = f(self);
        self.depth -= 1;
        r
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let found = self.bytes.get(self.at..self.at + word.len()) == Some(word);
        self.at += word.len();
        found.then_some(())
    }

    /// A number by JSON's grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        let b = self.bytes;
        let digits = |at: &mut usize| {
            let from = *at;
            while b.get(*at).is_some_and(u8::is_ascii_digit) {
                *at += 1;
            }
            *at > from
        };
        let mut at = self.at;
        at += usize::from(b.get(at) == Some(&b'-'));
        match b.get(at) {
            Some(b'0') => at += 1,
            Some(b'1'..=b'9') => {
                digits(&mut at);
            }
            _ => return None,
        }
        if b.get(at) == Some(&b'.') {
            at += 1;
            if !digits(&mut at) {
                return None;
            }
        }
        if let Some(b'e' | b'E') = b.get(at) {
            at += 1;
            at += usize::from(matches!(b.get(at), Some(b'+' | b'-')));
            if !digits(&mut at) {
                return None;
            }
        }
        self.at = at;
        Some(())
    }
}

/// What the character after a backslash stands for, for the escapes this scan takes; 0 for
/// `\u` (left to the tape path) and for what is no escape at all.
const fn escape_table() -> [u8; 256] {
    let mut t = [0u8; 256];
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t[b'/' as usize] = b'/';
    t[b'b' as usize] = 0x08;
    t[b'f' as usize] = 0x0c;
    t[b'n' as usize] = b'\n';
    t[b'r' as usize] = b'\r';
    t[b't' as usize] = b'\t';
    t
}
static ESCAPES: [u8; 256] = escape_table();

/// Bit masks of 16 bytes: backslashes, quotes, bytes below 0x20 (never allowed in a JSON
/// string) and bytes beyond ASCII, one bit per byte.
#[inline]
fn lane_masks(lanes: [u8; 16]) -> [u32; 4] {
    let v = u8x16::new(lanes);
    [
        v.simd_eq(u8x16::splat(b'\\')).to_bitmask(),
        v.simd_eq(u8x16::splat(b'"')).to_bitmask(),
        v.simd_lt(u8x16::splat(0x20)).to_bitmask(),
        v.to_bitmask(),
    ]
}

/// [`lane_masks`] of a 64-byte block.
#[inline]
fn masks(block: &[u8; 64]) -> (u64, u64, u64, u64) {
    let (mut bs, mut q, mut ctrl, mut high) = (0u64, 0u64, 0u64, 0u64);
    for (k, chunk) in block.chunks_exact(16).enumerate() {
        let mut lanes = [0u8; 16];
        lanes.copy_from_slice(chunk);
        let [b, qq, c, h] = lane_masks(lanes).map(u64::from);
        bs |= b << (k * 16);
        q |= qq << (k * 16);
        ctrl |= c << (k * 16);
        high |= h << (k * 16);
    }
    (bs, q, ctrl, high)
}

/// Where the string whose text starts at `start` ends (the index of its closing quote) and
/// whether it holds escapes; `None` when it is not a valid string, or holds a `\u` escape.
fn string_end(bytes: &[u8], start: usize) -> Option<(usize, bool)> {
    scan_string(bytes, start, None)
}

/// The string scan, 64 bytes at a time. In each block, bit masks mark backslashes, quotes and
/// control bytes; from the backslashes come the escapes (a backslash escapes the next byte
/// unless it is escaped itself); the first quote or control byte that is not escaped ends the
/// string (a control byte makes it invalid). With `out`, the unescaped text of a string that
/// holds escapes is appended (of one without, maybe not: it is where it is in `bytes`): the
/// escaped characters that stand for others (`\n`, ...) are replaced in a copy of the block,
/// then the runs between the escaping backslashes are copied ([`cut_runs`]): 16 bytes per
/// run, more only for a run that long (the escaped text of an event holds an escape every
/// ten bytes or so). A branch-free cut of each 8-byte group, by shifts and table masks, was
/// slower: its table loads chained eight times per block.
fn scan_string(bytes: &[u8], start: usize, mut out: Option<&mut Buffers>) -> Option<(usize, bool)> {
    // Keys and short values: the closing quote in the first 16 bytes, with no backslash,
    // control byte or byte beyond ASCII before it.
    if let Some(Ok(chunk)) = bytes.get(start..start + 16).map(<[u8; 16]>::try_from) {
        let [backslashes, quotes, ctrl, high] = lane_masks(chunk);
        let first = quotes & quotes.wrapping_neg();
        if first != 0 && (backslashes | ctrl | high) & (first - 1) == 0 {
            return Some((start + quotes.trailing_zeros() as usize, false));
        }
    }
    // Keys and metadata values hold no escapes: their closing quote is the first quote, found
    // without computing a block's masks.
    let rest = bytes.get(start..)?;
    if let Some(i) = memchr::memchr2(b'"', b'\\', rest)
        && rest[i] == b'"'
    {
        // No early exit: the fold compiles to vector compares.
        let (ctrl, high) = rest[..i].iter().fold((false, false), |(l, h), &c| {
            (l | (c < 0x20), h | (c >= 0x80))
        });
        if ctrl || high && simdutf8::basic::from_utf8(&rest[..i]).is_err() {
            return None;
        }
        return Some((start + i, false));
    }
    let mut at = start;
    let mut carry = false;
    let mut escaped_any = false;
    // Whether the string holds bytes beyond ASCII (then it is checked as UTF-8 at its end).
    let mut non_ascii = false;
    while let Some(chunk) = bytes.get(at..at + 64) {
        let mut block = [0u8; 64];
        block.copy_from_slice(chunk);
        let (bs, q, ctrl, high) = masks(&block);
        let (starts, escaped, next_carry) = escapes(bs, carry);
        let stops = (q | ctrl) & !escaped;
        let end = stops.trailing_zeros();
        let within = (!0u64).checked_shl(end).map_or(!0, |m| !m);
        if end < 64 && q >> end & 1 == 0 {
            return None;
        }
        // Escaped characters other than `"` and `\`: `/`, letters standing for control
        // characters, or no escape at all (`\u` included: left to the tape path).
        let mut odd = escaped & within & !(q | bs);
        let replaced = odd != 0;
        while odd != 0 {
            let p = odd.trailing_zeros() as usize;
            block[p] = ESCAPES[usize::from(block[p])];
            if block[p] == 0 {
                return None;
            }
            odd &= odd - 1;
        }
        let cut = starts & within;
        escaped_any |= cut != 0 || carry;
        non_ascii |= high & within != 0;
        if let Some(out) = out.as_deref_mut() {
            out.reserve(out.used, 80);
            let used = out.used;
            if cut == 0 {
                out.bytes[used..used + 64].copy_from_slice(&block);
            } else if let Ok(dst) = <&mut [u8; 80]>::try_from(&mut out.bytes[used..used + 80]) {
                // (The slice is 80 bytes by construction: the conversion always succeeds; it
                // gives the compiler the length.) The runs are read from the input when the
                // block's bytes are as they are there (no escape replaced) and it has 16
                // bytes to spare: a copy of the block, read back at other offsets than it
                // was written, would stall each read on the store.
                match bytes.get(at..at + 80).map(<&[u8; 80]>::try_from) {
                    Some(Ok(src)) if !replaced => cut_runs(src, cut, dst),
                    _ => {
                        let mut padded = [0u8; 80];
                        padded[..64].copy_from_slice(&block);
                        cut_runs(&padded, cut, dst);
                    }
                }
            }
            out.used += (end.min(64) - cut.count_ones()) as usize;
        }
        if end < 64 {
            let end = at + end as usize;
            return utf8(bytes, start, end, non_ascii).then_some((end, escaped_any));
        }
        carry = next_carry;
        at += 64;
    }
    // The last bytes of the input (under 64): one at a time.
    let mut run = at;
    if carry {
        let unescaped = ESCAPES[usize::from(*bytes.get(at)?)];
        if unescaped == 0 {
            return None;
        }
        if let Some(out) = out.as_deref_mut() {
            out.used = out.push(out.used, unescaped);
        }
        at += 1;
        run = at;
    }
    loop {
        match *bytes.get(at)? {
            b'"' => {
                if let Some(out) = out {
                    out.used = out.run(out.used, bytes, run, at);
                }
                return utf8(bytes, start, at, non_ascii).then_some((at, escaped_any));
            }
            b'\\' => {
                let unescaped = ESCAPES[usize::from(*bytes.get(at + 1)?)];
                if unescaped == 0 {
                    return None;
                }
                escaped_any = true;
                if let Some(out) = out.as_deref_mut() {
                    let end = out.run(out.used, bytes, run, at);
                    out.used = out.push(end, unescaped);
                }
                at += 2;
                run = at;
            }
            c if c < 0x20 => return None,
            c => {
                non_ascii |= c >= 0x80;
                at += 1;
            }
        }
    }
}

/// Whether the string `bytes[start..end]` is UTF-8 (escapes are ASCII: the raw bytes are as
/// valid as the unescaped ones); only checked when it holds bytes beyond ASCII.
fn utf8(bytes: &[u8], start: usize, end: usize, non_ascii: bool) -> bool {
    !non_ascii || simdutf8::basic::from_utf8(&bytes[start..end]).is_ok()
}

/// The backslashes of a block that escape the byte after them, and the bytes they escape,
/// given whether the block's first byte is escaped by the last byte of the block before;
/// also whether this block's last byte escapes the next block's first.
///
/// Without a branch, as simdjson finds them: in a run of backslashes, the first escapes the
/// second, the third the fourth, and so on; a run's last backslash escapes the byte after
/// it when the run is odd. Subtracting each run from the odd bits above it carries through
/// the run and flips bits by the parity of where it starts: the result, with the odd bits
/// taken away again, marks every escaping backslash and every escaped byte.
#[inline]
fn escapes(bs: u64, carry: bool) -> (u64, u64, bool) {
    const ODD_BITS: u64 = 0xAAAA_AAAA_AAAA_AAAA;
    let carry = u64::from(carry);
    let potential = bs & !carry;
    let code = ((potential << 1) | ODD_BITS).wrapping_sub(potential) ^ ODD_BITS;
    let escaped = code ^ (bs | carry);
    let starts = code & bs;
    (starts, escaped, starts >> 63 == 1)
}

/// Copies a 64-byte block (the first 64 bytes of `padded`; 16 more may be read, not kept)
/// to `dst` without the bytes `cut` marks: run by run, 16 bytes at a time (the bytes copied
/// past a run are overwritten by the next run, or lie past the text).
#[inline]
fn cut_runs(padded: &[u8; 80], cut: u64, dst: &mut [u8; 80]) {
    // Before each run, `src - d` backslashes were cut.
    let (mut src, mut d, mut c) = (0usize, 0usize, cut);
    loop {
        let end = if c == 0 {
            64
        } else {
            c.trailing_zeros() as usize
        };
        let mut k = 0;
        loop {
            // `& 63` tells the compiler the copies are in bounds. It changes nothing: both
            // are below 64 (a run ends by the block's end), but for the empty last run after
            // a cut at the block's last byte (`src` 64), whose bytes land past the text.
            let (s63, d63) = ((src + k) & 63, (d + k) & 63);
            dst[d63..d63 + 16].copy_from_slice(&padded[s63..s63 + 16]);
            k += 16;
            if k >= end - src {
                break;
            }
        }
        if c == 0 {
            return;
        }
        d += end - src;
        src = end + 1;
        c &= c - 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`escapes`] taken backslash by backslash, left to right: what it must agree with.
    fn escapes_one_by_one(bs: u64, carry: bool) -> (u64, u64, bool) {
        let (mut starts, mut escaped, mut next) = (0u64, u64::from(carry), false);
        let mut p = u32::from(carry);
        while p < 64 {
            if bs >> p & 1 == 1 {
                starts |= 1 << p;
                if p == 63 {
                    next = true;
                } else {
                    escaped |= 1 << (p + 1);
                }
                p += 2;
            } else {
                p += 1;
            }
        }
        (starts, escaped, next)
    }

    #[test]
    fn escapes_agree_with_taking_backslashes_one_by_one() {
        let mut x = 0x9E37_79B9_7F4A_7C15_u64;
        let mut masks = vec![0, !0, 1, 1 << 63, 3 << 62, 0x5555_5555_5555_5555];
        for _ in 0..20_000 {
            // xorshift; sparse and dense masks both, runs of backslashes included.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            masks.push(x);
            masks.push(x & x.rotate_left(7));
            masks.push(x | x.rotate_left(1));
        }
        for bs in masks {
            for carry in [false, true] {
                assert_eq!(
                    escapes(bs, carry),
                    escapes_one_by_one(bs, carry),
                    "{bs:064b} {carry}"
                );
            }
        }
    }

    /// What the scan makes of the JSON string `json` (quotes included), checked against
    /// serde_json's reading of it.
    /// Scanned bare (the string ends the input: its last bytes go byte by byte) and followed
    /// by white space (its closing quote falls inside a 64-byte block), the same.
    fn scanned(json: &str) -> Option<String> {
        let scan = |input: &str| {
            let mut text = Buffers::default();
            let mut skim = Skim::new(input.as_bytes())?;
            let t = skim.string(&mut text)?;
            assert!(skim.at_end(), "{input}");
            Some(t.get(input.as_bytes(), text.text()).to_string())
        };
        let got = scan(json);
        assert_eq!(scan(&format!("{json}{}", " ".repeat(80))), got, "{json}");
        let expected: String = serde_json::from_str(json).expect("serde reads it");
        assert_eq!(got.as_deref(), Some(&expected[..]), "{json}");
        got
    }

    #[test]
    fn strings_unescape_as_serde_json_reads_them_at_every_block_offset() {
        // Escapes at every position around the 64-byte block edges, runs of backslashes.
        for pad in 0..140 {
            for esc in [
                r#"\""#,
                r#"\\"#,
                r#"\\\""#,
                r#"\n"#,
                r#"\/"#,
                r#"\t\r\b\f"#,
                "é",
            ] {
                let body = format!("{}{esc}{}{esc}", "a".repeat(pad), "b".repeat(pad % 7));
                let json = format!("\"{body}\"");
                assert!(scanned(&json).is_some(), "{json}");
                let nested = format!("\"{{\\\"k\\\":\\\"{body}\\\"}}\"");
                assert!(scanned(&nested).is_some(), "{nested}");
            }
        }
    }

    #[test]
    fn what_the_scan_does_not_take_is_refused_not_guessed() {
        let refused = |bad: &[u8]| {
            let mut text = Buffers::default();
            Skim::new(bad)
                .and_then(|mut s| s.string(&mut text))
                .is_none()
        };
        for bad in [
            &br#"\u0041""#[..], // \u: left to the tape path
            b"a\x01b\"",        // control character
            br#"a\qb""#,        // no such escape
            b"unterminated",    // no closing quote
            b"x\\",             // backslash at the very end
            b"\xff\"",          // invalid UTF-8
            b"\xc3(\"",
        ] {
            // At the end of the input (byte by byte), and inside a 64-byte block, after 70
            // bytes and before 80 more.
            for (before, after) in [(0, 0), (70, 0), (0, 80), (70, 80)] {
                let input = [&b"\""[..], &b"x".repeat(before), bad, &b" ".repeat(after)].concat();
                assert!(refused(&input), "{}", String::from_utf8_lossy(&input));
            }
        }
        // The same after escapes (which send the scan to its 64-byte blocks).
        for bad in [&b"\xc3(\""[..], b"\x01\"", br#"\u0041""#, br#"\q""#] {
            for after in [0, 80] {
                let escapes = b"\\\"a".repeat(30);
                let input = [&b"\""[..], &escapes, bad, &b" ".repeat(after)].concat();
                assert!(refused(&input), "{}", String::from_utf8_lossy(&input));
            }
        }
    }

    #[test]
    fn skip_value_validates_json_like_serde() {
        let cases = [
            (
                "{\"a\":[1,-2.5e+3,true,false,null,{\"b\":\"c\"}],\"d\":{}}",
                true,
            ),
            ("[ 1 , 2 ]", true),
            ("[1,]", false),
            ("{\"a\" 1}", false),
            ("01", false),
            ("1.", false),
            ("-", false),
            ("tru", false),
            ("[1 2]", false),
            ("{\"a\":1,}", false),
        ];
        for (json, valid) in cases {
            let ok = Skim::new(json.as_bytes())
                .and_then(|mut s| s.skip_value().map(|()| s.at_end()))
                .unwrap_or(false);
            assert_eq!(ok, valid, "{json}");
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(json).is_ok(),
                valid
            );
        }
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        let mut s = Skim::new(deep.as_bytes()).expect("utf-8");
        assert!(
            s.skip_value().is_none(),
            "deeper than MAX_DEPTH goes the tape path"
        );
    }

    #[test]
    fn integers_only_when_they_fit() {
        let int = |j: &str| Skim::new(j.as_bytes()).and_then(|mut s| s.integer());
        assert_eq!(int("1780000000000"), Some(1_780_000_000_000));
        assert_eq!(int("-7"), Some(-7));
        assert_eq!(int("1.5"), None);
        assert_eq!(int("1e3"), None);
        assert_eq!(int("99999999999999999999"), None);
    }

    #[test]
    fn first_key_names_the_shape() {
        assert_eq!(first_key(b" {\"records\":[]}"), Some(&b"records"[..]));
        assert_eq!(first_key(b"{ \"kind\" : \"Event\"}"), Some(&b"kind"[..]));
        assert_eq!(first_key(b"[{\"records\":1}]"), None);
        assert_eq!(first_key(b"{\"a\\\"b\":1}"), None);
    }
}

/// The tapeless scan against the tape path: for every body, both decode to the same rows,
/// quarantine records and skip counts.
#[cfg(test)]
mod same_as_the_tape {
    use auditlake_fixtures::{Mix, TrafficGenerator};
    use serde_json::{Value, json};

    use crate::{DecoderOptions, EventDecoder, SourcePos};

    /// Decodes `body` with the scan allowed and not: asserts that both agree, and returns
    /// how many inputs the scan took.
    fn same_both_ways(body: &[u8]) -> u64 {
        let pos = SourcePos {
            cluster: "configured",
            source: "test",
            line: Some(7),
            byte_offset: 100,
        };
        let run = |skim: bool| {
            let d = EventDecoder::new(DecoderOptions::default());
            let mut d = if skim { d } else { d.without_tapeless_scan() };
            let mut q = Vec::new();
            let n = d.decode_line(body, pos, &mut q);
            let skimmed = d.skimmed;
            (n, d.finish_batch(), q, d.take_skipped(), skimmed)
        };
        let (fast, tape) = (run(true), run(false));
        let text = String::from_utf8_lossy(body);
        assert_eq!(fast.0, tape.0, "events of {text}");
        assert_eq!(fast.1, tape.1, "rows of {text}");
        assert_eq!(fast.2, tape.2, "quarantine of {text}");
        assert_eq!(fast.3, tape.3, "skip counts of {text}");
        assert_eq!(tape.4, 0);
        fast.4
    }

    fn events(n: usize) -> Vec<String> {
        TrafficGenerator::new(5, Mix::default())
            .ndjson(n)
            .lines()
            .map(str::to_string)
            .collect()
    }

    const RESOURCE: &str = "/SUBSCRIPTIONS/0000/RESOURCEGROUPS/RG/PROVIDERS/MICROSOFT.CONTAINERSERVICE/MANAGEDCLUSTERS/PROD-1";

    /// A record with every field real ones have (`../shared/MANAGED-CLUSTERS.md` §3).
    fn aks_record(log: Value, category: &str) -> Value {
        json!({"operationName": "Microsoft.ContainerService/managedClusters/diagnosticLogs/Read",
            "category": category, "ccpNamespace": "5eb120ce0a1b", "resourceId": RESOURCE,
            "properties": {"log": log, "stream": "stdout", "pod": "kube-apiserver-1", "containerID": "3f2a"},
            "time": "2026-11-01T03:12:00.123456789Z", "Cloud": "AzureCloud", "Environment": "prod",
            "UnderlayClass": "hcp-underlay", "UnderlayName": "hcp-underlay-eastus-cx-1", "serviceBuild": "na"})
    }

    fn aks_body(events: &[String]) -> Value {
        let records: Vec<_> = events
            .iter()
            .map(|e| aks_record(Value::String(format!("{e}\n")), "kube-audit"))
            .collect();
        json!({ "records": records })
    }

    fn cloudwatch(events: &[String], stream: &str) -> Value {
        let log_events: Vec<_> = events
            .iter()
            .enumerate()
            .map(|(i, e)| json!({"id": format!("{i:056}"), "timestamp": 1_780_000_000_000_i64, "message": e}))
            .collect();
        json!({"messageType": "DATA_MESSAGE", "owner": "123456789012",
            "logGroup": "/aws/eks/prod-1/cluster", "logStream": stream,
            "subscriptionFilters": ["auditlake"], "logEvents": log_events})
    }

    #[test]
    fn aks_bodies_decode_the_same_with_the_scan_as_from_the_tape() {
        let evs = events(40);
        let body = aks_body(&evs);
        let compact = body.to_string();
        assert_eq!(
            same_both_ways(compact.as_bytes()),
            1,
            "the usual body is scanned"
        );
        let pretty = serde_json::to_string_pretty(&body).expect("json");
        assert_eq!(same_both_ways(pretty.as_bytes()), 1, "whitespace anywhere");
        // Writers that escape `/` (.NET's, PHP's) and non-ASCII text in events and fields.
        let slashes = compact.replace('/', "\\/");
        assert_eq!(same_both_ways(slashes.as_bytes()), 1, "escaped slashes");
        let accents = compact
            .replace("kube-apiserver-1", "kube-apiserver-é")
            .replace("system:", "systém:");
        assert_eq!(same_both_ways(accents.as_bytes()), 1, "non-ASCII");
        // Other categories counted, a record whose log is no JSON quarantined, no records.
        let mut mixed = body.clone();
        let records = mixed["records"].as_array_mut().expect("records");
        records.push(aks_record(
            json!("I1101 03:12:00 klog line"),
            "kube-apiserver",
        ));
        records.push(aks_record(
            json!("{\"kind\":\"Event\",\"auditID\":\"0b5e"),
            "kube-audit",
        ));
        records.push(aks_record(json!("not an event"), "kube-audit-admin"));
        assert_eq!(same_both_ways(mixed.to_string().as_bytes()), 1, "mixed");
        assert_eq!(same_both_ways(br#"{"records":[]}"#), 1, "empty");
        // What the scan leaves to the tape: each still decodes the same.
        let mut object_log = body.clone();
        object_log["records"][0]["properties"]["log"] =
            serde_json::from_str(&evs[0]).expect("event");
        let no_log = compact.replacen("\"log\"", "\"message\"", 1);
        let unicode = compact.replacen("\\\"kind\\\"", "\\\"\\u006bind\\\"", 1);
        let duplicate = compact.replacen(
            "\"category\"",
            "\"category\":\"kube-audit\",\"category\"",
            1,
        );
        let firehose = r#"{"records":[{"data":"eyJhIjoxfQ=="}]}"#.to_string();
        let other_key = compact.replacen("{\"records\"", "{\"kind\":\"EventList\",\"records\"", 1);
        let not_json = compact.replacen("}]}", "},]}", 1);
        for (what, body) in [
            ("object log", object_log.to_string()),
            ("no log", no_log),
            ("\\u escape", unicode),
            ("duplicate key", duplicate),
            ("firehose", firehose),
            ("another key", other_key),
            ("not JSON", not_json),
        ] {
            assert_eq!(same_both_ways(body.as_bytes()), 0, "{what}");
        }
    }

    #[test]
    fn cloudwatch_messages_decode_the_same_with_the_scan_as_from_the_tape() {
        let evs = events(40);
        let message = cloudwatch(&evs, "kube-apiserver-audit-0a1b2c");
        // serde_json orders keys: `logEvents` before `logStream`. AWS sends `messageType` first.
        let sorted = message.to_string();
        assert_eq!(same_both_ways(sorted.as_bytes()), 1, "keys in any order");
        let aws_order = format!(
            r#"{{"messageType":"DATA_MESSAGE","owner":"123456789012","logGroup":"/aws/eks/prod-1/cluster","logStream":"kube-apiserver-audit-0a1b2c","subscriptionFilters":["auditlake"],"policyLevel":"ACCOUNT_LEVEL_POLICY","logEvents":{}}}"#,
            message["logEvents"]
        );
        assert_eq!(same_both_ways(aws_order.as_bytes()), 1, "as AWS sends it");
        let klog = cloudwatch(&evs[..3], "kube-apiserver-0a1b2c").to_string();
        assert_eq!(
            same_both_ways(klog.as_bytes()),
            1,
            "another stream, counted"
        );
        let mut cut = message.clone();
        cut["logEvents"][1]["message"] = json!(format!("{}[Truncated...]", &evs[1][..200]));
        assert_eq!(
            same_both_ways(cut.to_string().as_bytes()),
            1,
            "a truncated event"
        );
        let control = r#"{"messageType":"CONTROL_MESSAGE","owner":"CloudwatchLogs","logGroup":"","logStream":"","subscriptionFilters":[],"logEvents":[{"id":"","timestamp":1,"message":"CWL CONTROL MESSAGE: Checking health of destination Firehose."}]}"#;
        let mut no_message = message.clone();
        no_message["logEvents"][2] = json!({"id": "x", "timestamp": 1});
        let mut float_time = message.clone();
        float_time["logEvents"][0]["timestamp"] = json!(1.5);
        let no_group = sorted.replacen("\"logGroup\"", "\"logGroupName\"", 1);
        for (what, body) in [
            ("control message", control.to_string()),
            ("no message", no_message.to_string()),
            ("float timestamp", float_time.to_string()),
            ("unknown key", no_group),
        ] {
            assert_eq!(same_both_ways(body.as_bytes()), 0, "{what}");
        }
    }

    #[test]
    fn any_one_byte_changed_decodes_the_same_with_the_scan_as_from_the_tape() {
        // Small events, one with escapes of its own (a quote and a backslash in a value).
        let evs = [
            r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"5b1c","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/a/pods?labelSelector=x%3D\"y\"","verb":"list","user":{"username":"dom\\al"},"stageTimestamp":"2026-11-01T03:12:00.000000Z"}"#.to_string(),
            r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"5b1d","stage":"ResponseComplete","requestURI":"/api/v1/pods","verb":"get","user":{"username":"é"},"stageTimestamp":"2026-11-01T03:12:01.000000Z"}"#.to_string(),
        ];
        for body in [
            aks_body(&evs).to_string(),
            cloudwatch(&evs, "kube-apiserver-audit-1").to_string(),
        ] {
            let bytes = body.as_bytes();
            let mut taken = 0;
            for at in 0..bytes.len() {
                let mut cut = bytes.to_vec();
                cut.remove(at);
                taken += same_both_ways(&cut);
                for c in [b'"', b'\\', b'{', b'x', b'\n', 0xc3] {
                    let mut changed = bytes.to_vec();
                    changed[at] = c;
                    taken += same_both_ways(&changed);
                }
            }
            assert!(
                taken > bytes.len() as u64,
                "the scan took most of the changed bodies ({taken})"
            );
        }
    }
}
