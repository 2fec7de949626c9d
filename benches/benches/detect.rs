#![allow(missing_docs)] // criterion_group! generates undocumented items
//! Cost of the detectors: decoding alone against decoding plus the full built-in rule pack
//! (and the 403-burst detector) on the same generated traffic, in one run. The budget:
//! the rule pack may cost at most 30% of decode throughput, i.e. decode+rules >= 0.7x decode.

use std::hint::black_box;

use auditlake_analytics::{Detector, DetectorOptions, RuleSet};
use auditlake_fixtures::{Mix, TrafficGenerator};
use auditlake_schema::{DecoderOptions, EventDecoder, SourcePos, lines};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const EVENTS: usize = 20_000;

/// Decodes `bytes` into 8192-row batches, handing each to `each`.
fn decode_batches(
    d: &mut EventDecoder,
    bytes: &[u8],
    mut each: impl FnMut(arrow::array::RecordBatch),
) {
    let mut q = Vec::new();
    for (n, off, line) in lines(bytes) {
        d.decode_line(
            line,
            SourcePos {
                source: "bench",
                line: Some(n),
                byte_offset: off as u64,
            },
            &mut q,
        );
        if d.buffered_rows() >= 8192
            && let Some(b) = d.finish_batch()
        {
            each(b);
        }
    }
    if let Some(b) = d.finish_batch() {
        each(b);
    }
}

fn detect(c: &mut Criterion) {
    let text = TrafficGenerator::new(11, Mix::default()).ndjson(EVENTS);
    let bytes = text.as_bytes();
    let rules = RuleSet::builtin().expect("built-in rules");
    let mut group = c.benchmark_group("detect");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.sample_size(20);
    group.bench_function("decode_only", |b| {
        let mut d = EventDecoder::new("bench", DecoderOptions::default());
        b.iter(|| decode_batches(&mut d, bytes, |batch| drop(black_box(batch))))
    });
    group.bench_function("decode_plus_rule_pack", |b| {
        let mut d = EventDecoder::new("bench", DecoderOptions::default());
        let mut detector =
            Detector::compile(&rules, &DetectorOptions::default()).expect("compile rules");
        let mut findings = 0usize;
        b.iter(|| {
            decode_batches(&mut d, bytes, |batch| {
                findings += detector.evaluate(&batch).expect("evaluate").len();
            });
            findings += detector.flush().len();
        })
    });
    group.finish();
    let mut d = EventDecoder::new("bench", DecoderOptions::default());
    let mut detector = Detector::compile(&rules, &DetectorOptions::default()).expect("compile");
    let mut n = 0;
    decode_batches(&mut d, bytes, |batch| {
        n += detector.evaluate(&batch).expect("evaluate").len()
    });
    n += detector.flush().len();
    eprintln!(
        "input: {EVENTS} events, {} bytes; {} rules; {n} findings per pass",
        bytes.len(),
        detector.rules().count()
    );
}

criterion_group!(benches, detect);
criterion_main!(benches);
