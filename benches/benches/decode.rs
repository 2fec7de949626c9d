#![allow(missing_docs)] // criterion_group! generates undocumented items
//! Decoder throughput: auditlake's simd-json tape decoder against a serde_json decoder into
//! the same schema and arrow-json's reader on the scalar columns, on the same generated
//! traffic in one run (report the ratios; this machine is shared and noisy). Then the
//! envelope layer's cost: the same events wrapped as AKS and EKS deliver them, against the
//! plain NDJSON, in events per second.

use std::hint::black_box;
use std::io::Cursor;

use auditlake_benches::{
    aks_records, arrow_json_scalar_schema, decode_batches, eks_subscription, serde_decode_lines,
};
use auditlake_fixtures::{Mix, TrafficGenerator};
use auditlake_schema::{DecoderOptions, EventDecoder};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const EVENTS: usize = 20_000;

fn decode(c: &mut Criterion) {
    let text = TrafficGenerator::new(11, Mix::default()).ndjson(EVENTS);
    let bytes = text.as_bytes();
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.sample_size(20);
    group.bench_function("auditlake_simd_json", |b| {
        let mut d = EventDecoder::new(DecoderOptions::default());
        b.iter(|| decode_batches(&mut d, bytes, |batch| drop(black_box(batch))))
    });
    group.bench_function("serde_json_baseline", |b| {
        b.iter(|| black_box(serde_decode_lines(bytes, "bench")))
    });
    group.bench_function("arrow_json_scalar_columns", |b| {
        let schema = arrow_json_scalar_schema();
        b.iter(|| {
            let reader = arrow_json::ReaderBuilder::new(schema.clone())
                .with_batch_size(8192)
                .build(Cursor::new(bytes))
                .expect("reader");
            for batch in reader {
                black_box(batch.expect("arrow-json batch"));
            }
        })
    });
    group.finish();
    eprintln!(
        "input: {EVENTS} events, {} bytes ({:.0} B/event)",
        bytes.len(),
        bytes.len() as f64 / EVENTS as f64
    );
}

fn envelopes(c: &mut Criterion) {
    let plain = TrafficGenerator::new(11, Mix::default()).ndjson(EVENTS);
    // 100 events per message: Event Hubs batches and CloudWatch messages hold many.
    let inputs = [
        ("plain_ndjson", plain.clone()),
        ("aks_event_hubs_records", aks_records(&plain, 100)),
        ("eks_cloudwatch_subscription", eks_subscription(&plain, 100)),
    ];
    let mut group = c.benchmark_group("envelope");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.sample_size(20);
    for (name, text) in &inputs {
        group.bench_function(*name, |b| {
            let mut d = EventDecoder::new(DecoderOptions::default());
            b.iter(|| {
                let mut rows = 0;
                decode_batches(&mut d, text.as_bytes(), |batch| rows += batch.num_rows());
                assert_eq!(rows, EVENTS, "{name}: every event decoded");
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decode, envelopes);
criterion_main!(benches);
