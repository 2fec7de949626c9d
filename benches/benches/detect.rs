#![allow(missing_docs)] // criterion_group! generates undocumented items
//! Cost of the detectors: decoding alone against decoding plus the full built-in rule pack
//! (and the 403-burst detector) on the same generated traffic, in one run. The budget:
//! the rule pack may cost at most 30% of decode throughput, i.e. decode+rules >= 0.7x decode.

use std::hint::black_box;
use std::time::Instant;

use auditlake_analytics::{Detector, DetectorOptions, RuleSet};
use auditlake_benches::decode_batches;
use auditlake_fixtures::{Mix, TrafficGenerator};
use auditlake_schema::{DecoderOptions, EventDecoder};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const EVENTS: usize = 20_000;

fn detect(c: &mut Criterion) {
    let text = TrafficGenerator::new(11, Mix::default()).ndjson(EVENTS);
    let bytes = text.as_bytes();
    let rules = RuleSet::builtin().expect("built-in rules");
    let mut group = c.benchmark_group("detect");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.sample_size(20);
    group.bench_function("decode_only", |b| {
        let mut d = EventDecoder::new(DecoderOptions::default());
        b.iter(|| decode_batches(&mut d, bytes, |batch| drop(black_box(batch))))
    });
    group.bench_function("decode_plus_rule_pack", |b| {
        let mut d = EventDecoder::new(DecoderOptions::default());
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
    interleaved(bytes, &rules);
    let mut d = EventDecoder::new(DecoderOptions::default());
    let mut detector = Detector::compile(&rules, &DetectorOptions::default()).expect("compile");
    let mut found = Vec::new();
    decode_batches(&mut d, bytes, |batch| {
        found.extend(detector.evaluate(&batch).expect("evaluate"))
    });
    found.extend(detector.flush());
    let mut per_rule = std::collections::BTreeMap::<&str, usize>::new();
    for f in &found {
        *per_rule.entry(f.rule_id.as_str()).or_default() += 1;
    }
    eprintln!(
        "input: {EVENTS} events, {} bytes; {} rules; {} findings per pass: {per_rule:?}",
        bytes.len(),
        detector.rules().count(),
        found.len()
    );
}

/// The same two passes alternated, one of each per round, so that both see the same machine
/// load (this machine is shared): prints the median of the per-round ratios and the ratio of
/// the fastest passes.
fn interleaved(bytes: &[u8], rules: &RuleSet) {
    const ROUNDS: usize = 30;
    let mut d = EventDecoder::new(DecoderOptions::default());
    let mut detector = Detector::compile(rules, &DetectorOptions::default()).expect("compile");
    let (mut alone, mut with_rules) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let t = Instant::now();
        decode_batches(&mut d, bytes, |batch| drop(black_box(batch)));
        alone.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut n = 0;
        decode_batches(&mut d, bytes, |batch| {
            n += detector.evaluate(&batch).expect("evaluate").len();
        });
        n += detector.flush().len();
        black_box(n);
        with_rules.push(t.elapsed().as_secs_f64());
    }
    let mut ratios: Vec<f64> = alone.iter().zip(&with_rules).map(|(a, w)| a / w).collect();
    ratios.sort_by(f64::total_cmp);
    let fastest = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let mib = bytes.len() as f64 / (1024.0 * 1024.0);
    eprintln!(
        "interleaved, {ROUNDS} rounds: decode+rules / decode throughput: median {:.3}, \
         fastest passes {:.3} ({:.0} vs {:.0} MiB/s)",
        ratios[ROUNDS / 2],
        fastest(&alone) / fastest(&with_rules),
        mib / fastest(&with_rules),
        mib / fastest(&alone),
    );
}

criterion_group!(benches, detect);
criterion_main!(benches);
