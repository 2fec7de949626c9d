//! Every input shape the decoder takes (an NDJSON line; a document: Event, EventList, JSON
//! array, NDJSON, v1beta1, managed clusters' envelopes, garbage): it never panics, the
//! tapeless envelope scan decodes a line exactly as the tape path does, and cutting a
//! document into its events before parsing (the large-document path) gives the same rows as
//! parsing it whole.
#![no_main]

use arrow::array::RecordBatch;
use auditlake_schema::{DecoderOptions, EventDecoder, SourcePos, col};
use libfuzzer_sys::fuzz_target;

fn pos() -> SourcePos<'static> {
    SourcePos {
        cluster: "default",
        source: "fuzz",
        line: None,
        byte_offset: 0,
    }
}

fn document(options: DecoderOptions, data: &[u8]) -> (Option<RecordBatch>, usize) {
    let mut d = EventDecoder::new(options);
    d.enable_row_digests(7);
    let mut q = Vec::new();
    let n = d.decode_document(data, pos(), &mut q);
    let batch = d.finish_batch();
    assert_eq!(n, batch.as_ref().map_or(0, |b| b.num_rows()));
    assert_eq!(d.take_row_digests().len(), n);
    (batch, q.len())
}

fuzz_target!(|data: &[u8]| {
    let _ = auditlake_schema::json_syntax_error(data);
    let mut line = EventDecoder::new(DecoderOptions::default());
    let mut q = Vec::new();
    let n = line.decode_line(data, pos(), &mut q);
    let rows = line.finish_batch();
    assert_eq!(n, rows.as_ref().map_or(0, |b| b.num_rows()));
    // The tapeless scan of AKS and CloudWatch envelopes decides exactly as the tape path.
    let mut tape = EventDecoder::new(DecoderOptions::default()).without_tapeless_scan();
    let mut tape_q = Vec::new();
    assert_eq!(n, tape.decode_line(data, pos(), &mut tape_q));
    assert_eq!(rows, tape.finish_batch(), "rows differ with the tapeless scan");
    assert_eq!(q, tape_q, "quarantine differs with the tapeless scan");
    assert_eq!(line.take_skipped(), tape.take_skipped());

    let whole = DecoderOptions {
        large_document_bytes: usize::MAX,
        max_quarantined_per_input: usize::MAX,
        ..DecoderOptions::default()
    };
    let cut = DecoderOptions {
        large_document_bytes: 0,
        ..whole.clone()
    };
    let (a, _) = document(whole, data);
    let (b, _) = document(cut, data);
    // What parses whole parses the same cut into events (the cut path may accept more:
    // values concatenated without a newline).
    if let Some(a) = a {
        let b = b.expect("rows decoded whole are lost when the document is cut");
        assert_eq!(a.num_rows(), b.num_rows());
        for field in a.schema().fields() {
            if [col::SOURCE_REF, col::INGESTED_AT].contains(&field.name().as_str()) {
                continue;
            }
            assert_eq!(
                a.column_by_name(field.name()).unwrap().as_ref(),
                b.column_by_name(field.name()).unwrap().as_ref(),
                "column {} differs",
                field.name()
            );
        }
    }
});
