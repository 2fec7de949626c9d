//! Files (and stdin) as a source: NDJSON read in chunks of whole lines, a pretty-printed
//! Event or EventList read whole, a line longer than `max_event_bytes` cut while reading and
//! handed on as such (it is quarantined with its true length, never buffered whole).

use std::time::{Duration, Instant};

use auditlake_archive::{FileRange, SourceMark};

use super::{Marker, Position, Pulled, Shape, Source, SourceError, SourceRecord};
use crate::file_source::{Input, InputReader};
use crate::telemetry::SourceKind;

/// How a file source cuts its inputs.
#[derive(Debug, Clone)]
pub struct FileSourceOptions {
    /// The cluster of every event read.
    pub cluster: String,
    /// A line longer than this is cut while reading and quarantined.
    pub max_event_bytes: usize,
    /// Largest pretty-printed (multi-line) document read whole.
    pub max_document_bytes: u64,
    /// Bytes of whole lines per record, at most (about).
    pub chunk_bytes: usize,
    /// Lines per record, at most.
    pub chunk_lines: usize,
}

struct Current {
    reader: InputReader,
    name: String,
    index: u32,
    /// No non-blank line read yet (a first line of `{` or `[` starts a document).
    first: bool,
}

/// Reads its inputs one after the other.
pub struct FileSource {
    inputs: Vec<Input>,
    next_input: usize,
    current: Option<Current>,
    options: FileSourceOptions,
    /// An oversized line met while filling a chunk, handed out next.
    held: Option<SourceRecord>,
    /// A decoded chunk's buffer given back ([`Source::recycle`]), the next chunk's.
    spare: Option<Vec<u8>>,
    /// Decompressed bytes read.
    bytes_read: u64,
    started: Instant,
    last_progress: Instant,
}

/// Room past `chunk_bytes` for the line that fills a chunk, so that line rarely makes the
/// buffer grow.
const CHUNK_SLACK: usize = 64 << 10;

/// How often a long read says how far it got.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

impl FileSource {
    /// A source reading `inputs` in order.
    pub fn new(inputs: Vec<Input>, options: FileSourceOptions) -> Self {
        Self {
            inputs,
            next_input: 0,
            current: None,
            options,
            held: None,
            spare: None,
            bytes_read: 0,
            started: Instant::now(),
            last_progress: Instant::now(),
        }
    }

    /// Decompressed bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Inputs opened so far.
    pub fn inputs_opened(&self) -> usize {
        self.next_input
    }

    /// Hands `r` out (and says how far the reading got, now and then).
    fn hand_out(&mut self, r: SourceRecord) -> Pulled {
        if self.last_progress.elapsed() >= PROGRESS_EVERY {
            self.last_progress = Instant::now();
            let secs = self.started.elapsed().as_secs_f64().max(1e-9);
            tracing::info!(
                input = %r.origin,
                inputs_opened = self.next_input,
                of = self.inputs.len(),
                mb_read = self.bytes_read / 1_000_000,
                mb_per_s = (self.bytes_read as f64 / 1e6 / secs).round() as u64,
                "progress"
            );
        }
        Pulled::Record(r)
    }

    fn record(
        &self,
        body: Vec<u8>,
        line: u64,
        offset: u64,
        end: u64,
        shape: Shape,
    ) -> SourceRecord {
        // `current` is set whenever a record is made from it.
        let (name, index) = self
            .current
            .as_ref()
            .map(|c| (c.name.clone(), c.index))
            .unwrap_or_default();
        SourceRecord {
            body,
            cluster: self.options.cluster.clone(),
            origin: name,
            line: Some(line),
            byte_offset: offset,
            shape,
            position: Position::File {
                input: index,
                end_byte: end,
            },
            received_at_micros: crate::pipeline::now_micros(),
            archived: false,
        }
    }
}

impl Source for FileSource {
    fn kind(&self) -> SourceKind {
        SourceKind::File
    }

    fn resends(&self) -> bool {
        false
    }

    fn pull(&mut self, _wait: Duration) -> Result<Pulled, SourceError> {
        if let Some(r) = self.held.take() {
            return Ok(self.hand_out(r));
        }
        let keep = self.options.max_event_bytes + 1;
        loop {
            if self.current.is_none() {
                let Some(input) = self.inputs.get(self.next_input) else {
                    return Ok(Pulled::End);
                };
                let reader = input.open().map_err(|e| SourceError(e.to_string()))?;
                self.current = Some(Current {
                    reader,
                    name: input.name(),
                    index: self.next_input as u32,
                    first: true,
                });
                self.next_input += 1;
            }
            // Sized for a whole chunk up front: grown by doubling, each chunk was copied
            // about once more and faulted in page by page.
            let mut chunk = self.spare.take().unwrap_or_default();
            chunk.clear();
            chunk.reserve(self.options.chunk_bytes + CHUNK_SLACK);
            let mut start: Option<(u64, u64)> = None;
            let mut end = 0u64;
            let mut lines = 0usize;
            let mut input_done = false;
            loop {
                let cur = self
                    .current
                    .as_mut()
                    .ok_or_else(|| SourceError("no input".into()))?;
                // Each line is read straight onto the end of the chunk: copied once.
                let base = chunk.len();
                // A first line of JSON may be a whole document on one line (Firehose's
                // records back to back in an S3 object, a minified EventList): read up to
                // the document limit rather than cut at the event limit.
                let document_keep =
                    usize::try_from(self.options.max_document_bytes).unwrap_or(usize::MAX);
                let line_keep = match cur.first && chunk.is_empty() && cur.reader.starts_json() {
                    true => keep.max(document_keep),
                    false => keep,
                };
                let Some(info) = cur
                    .reader
                    .append_line(&mut chunk, line_keep)
                    .map_err(|e| SourceError(e.to_string()))?
                else {
                    input_done = true;
                    break;
                };
                self.bytes_read += info.len + 1;
                let line = &chunk[base..];
                let blank = line.iter().all(u8::is_ascii_whitespace);
                if cur.first && !blank && matches!(line.trim_ascii(), b"{" | b"[") {
                    // A pretty-printed Event or EventList: read it whole (the blank lines
                    // before it, if any, are dropped).
                    let mut doc = chunk.split_off(base);
                    doc.push(b'\n');
                    cur.reader
                        .read_rest(&mut doc, self.options.max_document_bytes)
                        .map_err(|e| SourceError(e.to_string()))?;
                    self.bytes_read += (doc.len() as u64).saturating_sub(info.len + 1);
                    let to = info.offset + doc.len() as u64;
                    let r = self.record(doc, info.line_no, info.offset, to, Shape::Document);
                    self.current = None;
                    return Ok(self.hand_out(r));
                }
                if cur.first && info.len >= keep as u64 && info.len <= line_keep as u64 {
                    // The long first line, whole: decoded value by value.
                    let doc = chunk.split_off(base);
                    let to = info.offset + info.len + 1;
                    cur.first = false;
                    let r = self.record(doc, info.line_no, info.offset, to, Shape::LongLine);
                    return Ok(self.hand_out(r));
                }
                if !blank {
                    cur.first = false;
                }
                if info.len > (chunk.len() - base) as u64 {
                    // Cut while reading: hand on the kept prefix with the true length.
                    let kept = chunk.split_off(base);
                    let to = info.offset + info.len + 1;
                    let r = self.record(
                        kept,
                        info.line_no,
                        info.offset,
                        to,
                        Shape::Oversized { full_len: info.len },
                    );
                    if chunk.is_empty() {
                        return Ok(self.hand_out(r));
                    }
                    self.held = Some(r);
                    break;
                }
                start.get_or_insert((info.line_no, info.offset));
                chunk.push(b'\n');
                end = info.offset + info.len + 1;
                lines += usize::from(!blank);
                if chunk.len() >= self.options.chunk_bytes || lines >= self.options.chunk_lines {
                    break;
                }
            }
            // The record names its input: close the input only once it is made.
            let made =
                start.map(|(line, offset)| self.record(chunk, line, offset, end, Shape::Lines));
            if input_done {
                self.current = None;
            }
            if let Some(r) = made {
                return Ok(self.hand_out(r));
            }
            if let Some(h) = self.held.take() {
                return Ok(self.hand_out(h));
            }
            // An input of blank lines only: on to the next one.
        }
    }

    fn marker(&self) -> Box<dyn Marker> {
        Box::new(FileMarker { ranges: Vec::new() })
    }

    fn recycle(&mut self, body: Vec<u8>) {
        // A whole document's buffer (up to `max_document_bytes`) is not kept for chunks.
        if body.capacity() <= 2 * (self.options.chunk_bytes + CHUNK_SLACK) {
            self.spare = Some(body);
        }
    }
}

/// The byte ranges of the inputs a commit covers, contiguous stretches merged.
struct FileMarker {
    ranges: Vec<FileRange>,
}

impl Marker for FileMarker {
    fn add(&mut self, position: &Position, origin: &str, byte_offset: u64) {
        let Position::File { end_byte, .. } = *position else {
            return;
        };
        if let Some(last) = self.ranges.last_mut()
            && last.path == origin
            && last.to_byte == byte_offset
        {
            last.to_byte = end_byte;
            return;
        }
        self.ranges.push(FileRange {
            path: origin.to_string(),
            from_byte: byte_offset,
            to_byte: end_byte,
        });
    }

    fn take(&mut self) -> Option<SourceMark> {
        if self.ranges.is_empty() {
            return None;
        }
        Some(SourceMark::Files {
            inputs: std::mem::take(&mut self.ranges),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pull_all(s: &mut FileSource) -> Vec<SourceRecord> {
        let mut out = Vec::new();
        loop {
            match s.pull(Duration::ZERO).unwrap() {
                Pulled::Record(r) => out.push(r),
                Pulled::End => return out,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn a_chunk_given_back_is_read_into_again_and_holds_only_the_next_lines() {
        let dir = tempfile::tempdir().unwrap();
        let lines: Vec<String> = (0..6).map(|i| format!("{{\"n\":{i}}}")).collect();
        std::fs::write(dir.path().join("a.log"), lines.join("\n")).unwrap();
        let inputs = Input::expand(&[dir.path().join("a.log")]).unwrap();
        let mut s = FileSource::new(
            inputs,
            FileSourceOptions {
                cluster: "c".into(),
                max_event_bytes: 100,
                max_document_bytes: 1 << 20,
                chunk_bytes: 1 << 10,
                chunk_lines: 2,
            },
        );
        let mut bodies = Vec::new();
        let mut buffers = Vec::new();
        while let Pulled::Record(r) = s.pull(Duration::ZERO).unwrap() {
            bodies.push(String::from_utf8(r.body.clone()).unwrap());
            buffers.push((r.body.as_ptr(), r.body.capacity()));
            s.recycle(r.body);
        }
        assert_eq!(
            bodies,
            [
                format!("{}\n{}\n", lines[0], lines[1]),
                format!("{}\n{}\n", lines[2], lines[3]),
                format!("{}\n{}\n", lines[4], lines[5]),
            ]
        );
        // One buffer, sized for a chunk once, served every chunk.
        assert!(buffers.iter().all(|b| *b == buffers[0]), "{buffers:?}");
        assert!(buffers[0].1 >= 1 << 10);
        // A buffer far larger than a chunk (a whole document's) is not kept. (The pull that
        // met the end already took the spare: cleared here so this does not rest on that.)
        s.spare = None;
        s.recycle(Vec::with_capacity(4 * (1 << 10) + 4 * CHUNK_SLACK));
        assert!(s.spare.is_none());
    }

    #[test]
    fn lines_come_in_chunks_with_their_positions_and_the_marks_cover_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let long = "x".repeat(50);
        let text = format!("{{\"a\":1}}\n\n{{\"b\":2}}\n{{\"c\":3}}\n{long}\n{{\"d\":4}}\n");
        std::fs::write(dir.path().join("a.log"), &text).unwrap();
        std::fs::write(
            dir.path().join("b.json"),
            "{\n  \"kind\": \"EventList\"\n}\n",
        )
        .unwrap();
        let inputs = Input::expand(&[dir.path().join("a.log"), dir.path().join("b.json")]).unwrap();
        let mut s = FileSource::new(
            inputs,
            FileSourceOptions {
                cluster: "c".into(),
                max_event_bytes: 20,
                max_document_bytes: 1 << 20,
                chunk_bytes: 1 << 20,
                chunk_lines: 2,
            },
        );
        let records = pull_all(&mut s);
        let shapes: Vec<(Shape, Option<u64>, u64)> = records
            .iter()
            .map(|r| (r.shape, r.line, r.byte_offset))
            .collect();
        assert_eq!(
            shapes,
            [
                // Two events' lines per chunk (a blank line rides along, so line numbers
                // and offsets within a chunk stay those of the file).
                (Shape::Lines, Some(1), 0),
                (Shape::Lines, Some(4), 17),
                // Cut while reading, its true length kept.
                (Shape::Oversized { full_len: 50 }, Some(5), 25),
                (Shape::Lines, Some(6), 76),
                // A pretty-printed document, whole.
                (Shape::Document, Some(1), 0),
            ]
        );
        assert_eq!(records[0].body, b"{\"a\":1}\n\n{\"b\":2}\n");
        assert_eq!(
            records[2].body.len(),
            21,
            "the kept prefix: max_event_bytes + 1"
        );
        assert!(records.iter().all(|r| r.cluster == "c" && !r.archived));
        assert_eq!(s.bytes_read(), (text.len() + 26) as u64);
        let mut marker = s.marker();
        for r in &records {
            marker.add(&r.position, &r.origin, r.byte_offset);
        }
        let Some(SourceMark::Files { inputs }) = marker.take() else {
            panic!("no mark")
        };
        assert_eq!(inputs.len(), 2);
        assert_eq!(
            (inputs[0].from_byte, inputs[0].to_byte),
            (0, text.len() as u64)
        );
        assert_eq!((inputs[1].from_byte, inputs[1].to_byte), (0, 26));
        assert!(marker.take().is_none(), "nothing added since the last mark");
    }
}
