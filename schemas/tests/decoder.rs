//! Decoder behaviour on hand-written samples, Falco's real traces and malformed input.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int32Type, TimestampMicrosecondType};
use auditlake_fixtures::data_dir;
use auditlake_schema::{DecoderOptions, EventDecoder, Quarantined, SourcePos, col, lines};

fn decode_lines(text: &[u8], options: DecoderOptions) -> (Option<RecordBatch>, Vec<Quarantined>) {
    let mut d = EventDecoder::new(options);
    let mut q = Vec::new();
    for (n, off, line) in lines(text) {
        d.decode_line(
            line,
            SourcePos {
                cluster: "test",
                source: "t.ndjson",
                line: Some(n + 1),
                byte_offset: off as u64,
            },
            &mut q,
        );
    }
    (d.finish_batch(), q)
}

fn str_col<'a>(b: &'a RecordBatch, name: &str) -> &'a arrow::array::StringArray {
    b.column_by_name(name).unwrap().as_string::<i32>()
}

#[test]
fn handwritten_samples_decode_every_shape() {
    let text = std::fs::read(data_dir().join("samples/handwritten.ndjson")).unwrap();
    let (batch, q) = decode_lines(&text, DecoderOptions::default());
    assert!(q.is_empty(), "{q:?}");
    let b = batch.unwrap();
    assert_eq!(b.num_rows(), 8, "6 events + an EventList of 2");
    let stages: Vec<_> = str_col(&b, col::STAGE).iter().map(Option::unwrap).collect();
    for s in [
        "RequestReceived",
        "ResponseStarted",
        "ResponseComplete",
        "Panic",
    ] {
        assert!(stages.contains(&s), "{s}");
    }
    // Impersonation and bodies on the ClusterRoleBinding event.
    assert_eq!(
        str_col(&b, col::IMPERSONATED_USERNAME).value(3),
        "kubernetes-admin"
    );
    let req: serde_json::Value =
        serde_json::from_str(str_col(&b, col::REQUEST_OBJECT).value(3)).unwrap();
    assert_eq!(req["roleRef"]["name"], "cluster-admin");
    // Non-resource URL: no objectRef.
    assert!(str_col(&b, col::RESOURCE).is_null(4));
    assert_eq!(str_col(&b, col::REQUEST_URI).value(4), "/healthz");
    assert_eq!(
        b.column_by_name(col::RESPONSE_CODE)
            .unwrap()
            .as_primitive::<Int32Type>()
            .value(2),
        101
    );
    assert_eq!(str_col(&b, col::SUBRESOURCE).value(2), "exec");
    assert_eq!(str_col(&b, col::AUTHZ_DECISION).value(4), "forbid");
    // Unknown top-level field kept whole.
    let unmapped: serde_json::Value =
        serde_json::from_str(str_col(&b, col::UNMAPPED).value(5)).unwrap();
    assert_eq!(
        unmapped,
        serde_json::json!({"someFutureField": {"x": [1, 2.5, true, null]}})
    );
    // EventList items inherit the list's apiVersion, carry their index, keep UTF-8.
    assert_eq!(
        str_col(&b, col::EVENT_API_VERSION).value(6),
        "audit.k8s.io/v1"
    );
    assert_eq!(str_col(&b, col::SOURCE_REF).value(7), "t.ndjson:7#1");
    assert_eq!(str_col(&b, col::NAMESPACE).value(7), "team-α");
    let ts = b
        .column_by_name(col::STAGE_AT)
        .unwrap()
        .as_primitive::<TimestampMicrosecondType>();
    assert_eq!(ts.value(5), 1_793_507_400_100_000, "2026-11-01T04:30:00.1Z");
}

#[test]
fn one_bad_line_never_drops_its_neighbours() {
    let text = std::fs::read(data_dir().join("samples/malformed.ndjson")).unwrap();
    let (batch, q) = decode_lines(&text, DecoderOptions::default());
    let b = batch.unwrap();
    assert_eq!(b.num_rows(), 1);
    assert_eq!(
        str_col(&b, col::AUDIT_ID).value(0),
        "22222222-0000-4000-8000-000000000001"
    );
    let reasons: Vec<_> = q
        .iter()
        .map(|q| (q.line.unwrap(), q.reason.as_str()))
        .collect();
    assert_eq!(reasons.len(), 6, "{reasons:?}");
    assert!(
        reasons[0].1.starts_with("invalid JSON"),
        "not JSON: {reasons:?}"
    );
    assert!(
        reasons[1].1.starts_with("invalid JSON"),
        "truncated: {reasons:?}"
    );
    assert_eq!(reasons[2].1, "field `verb`: expected string, found number");
    assert_eq!(reasons[3].1, "missing field `auditID`");
    assert_eq!(reasons[4].1, "missing field `requestReceivedTimestamp`");
    assert_eq!(
        reasons[5].1,
        "field `requestReceivedTimestamp`: not a timestamp (RFC 3339, or the same with a space for T or no zone): \"last tuesday\""
    );
    assert_eq!([q[0].line, q[5].line], [Some(1), Some(7)]);
    assert_eq!(q[0].raw, b"this is not json");
}

#[test]
fn invalid_utf8_and_huge_lines_are_quarantined_with_position() {
    let good = br#"{"auditID":"a","stage":"ResponseComplete","requestReceivedTimestamp":"2026-11-01T00:00:00Z","stageTimestamp":"2026-11-01T00:00:00Z"}"#;
    let mut text = good.to_vec();
    text.extend_from_slice(b"\n{\"auditID\":\"b\xff\xfe\",\"stageTimestamp\":\"x\"}\n");
    text.extend_from_slice(&[b'{'; 0].repeat(0));
    let huge = format!(r#"{{"auditID":"c","pad":"{}"}}"#, "x".repeat(5000));
    text.extend_from_slice(huge.as_bytes());
    text.push(b'\n');
    text.extend_from_slice(good);
    let options = DecoderOptions {
        max_event_bytes: 4096,
        max_quarantined_bytes: 100,
        ..DecoderOptions::default()
    };
    let (batch, q) = decode_lines(&text, options);
    assert_eq!(batch.unwrap().num_rows(), 2);
    assert_eq!(q.len(), 2);
    assert_eq!(
        q[0].reason,
        "invalid UTF-8: byte 13 is not part of a valid UTF-8 sequence"
    );
    assert_eq!(q[0].line, Some(2));
    assert_eq!(
        q[1].reason,
        format!(
            "line of {} bytes exceeds max_event_bytes (4096)",
            huge.len()
        )
    );
    assert_eq!((q[1].raw.len(), q[1].raw_len), (100, huge.len() as u64));
}

#[test]
fn every_falco_trace_decodes_but_the_malformed_one() {
    let dir = data_dir().join("falco/trace_files");
    let mut events = 0;
    let mut quarantined = Vec::new();
    let mut files = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let mut d = EventDecoder::new(DecoderOptions::default());
        let mut q = Vec::new();
        events += d.decode_document(
            &bytes,
            SourcePos {
                cluster: "falco",
                source: &name,
                line: None,
                byte_offset: 0,
            },
            &mut q,
        );
        quarantined.extend(q);
        files += 1;
    }
    assert_eq!(files, 47);
    assert_eq!(events, 51);
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    assert_eq!(quarantined[0].source, "fal_01_003.json");
    assert_eq!(
        quarantined[0].reason,
        "field `kind`: expected string, found number"
    );
}

#[test]
fn eventlist_with_a_poison_item_keeps_the_rest() {
    let doc = br#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[
      {"auditID":"a","requestReceivedTimestamp":"2026-11-01T00:00:00Z","stageTimestamp":"2026-11-01T00:00:00Z"},
      {"auditID":"b","requestReceivedTimestamp":7},
      {"auditID":"c","requestReceivedTimestamp":"2026-11-01T00:00:00Z","stageTimestamp":"2026-11-01T00:00:00Z"}]}"#;
    let mut d = EventDecoder::new(DecoderOptions::default());
    let mut q = Vec::new();
    let n = d.decode_document(
        doc,
        SourcePos {
            cluster: "c",
            source: "webhook",
            line: None,
            byte_offset: 0,
        },
        &mut q,
    );
    assert_eq!(n, 2);
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].item, Some(1));
    assert_eq!(
        q[0].reason,
        "item 1: field `requestReceivedTimestamp`: expected string, found number"
    );
    let v: serde_json::Value = serde_json::from_slice(&q[0].raw).unwrap();
    assert_eq!(v["auditID"], "b");
}

#[test]
fn bodies_are_kept_as_the_bytes_they_arrived_as() {
    // Escapes, non-ASCII, nested arrays and odd spacing: the kept text must be the sent text,
    // for a bare event, inside an EventList, and for unknown fields kept in `unmapped`.
    let request = r#"{"kind":"ConfigMap","data":{"q":"say \"hi\"\n","é":"ü\u00e9"},"l":[1, -2.5e-3, [true, null], {}]}"#;
    let response = r#"{ "metadata" : { "name" : "x" } }"#;
    let event = format!(
        r#"{{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"RequestResponse","auditID":"a1","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/d/configmaps","verb":"create","user":{{"username":"u","extra":{{"k":["v \"1\""]}}}},"requestObject":{request},"responseObject":{response},"futureField":{{"n":[1,2]}},"requestReceivedTimestamp":"2026-01-02T03:04:05.000001Z","stageTimestamp":"2026-01-02T03:04:05.000002Z"}}"#
    );
    let list = format!(
        r#"{{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{{}},"items":[{event},{event}]}}"#
    );
    let (batch, q) = decode_lines(
        format!("{event}\n{list}\n").as_bytes(),
        DecoderOptions::default(),
    );
    assert!(q.is_empty(), "{q:?}");
    let b = batch.unwrap();
    assert_eq!(b.num_rows(), 3);
    for row in 0..3 {
        assert_eq!(str_col(&b, col::REQUEST_OBJECT).value(row), request);
        assert_eq!(str_col(&b, col::RESPONSE_OBJECT).value(row), response);
        assert_eq!(
            str_col(&b, col::USER_EXTRA).value(row),
            r#"{"k":["v \"1\""]}"#
        );
        assert_eq!(
            str_col(&b, col::UNMAPPED).value(row),
            r#"{"futureField":{"n":[1,2]}}"#
        );
    }
}

fn pos(source: &str) -> SourcePos<'_> {
    SourcePos {
        cluster: "c",
        source,
        line: None,
        byte_offset: 0,
    }
}

#[test]
fn a_large_eventlist_decodes_item_by_item_to_the_same_rows_as_its_lines() {
    // ~2 MB: over the size at which documents are cut into events before parsing.
    let ndjson = auditlake_fixtures::TrafficGenerator::new(41, Default::default()).ndjson(2_500);
    let mut items: Vec<&str> = ndjson.lines().collect();
    let poison = r#"{"auditID":"p","requestReceivedTimestamp":7}"#;
    items.insert(100, poison);
    let doc = format!(
        r#"{{"items":[{}],"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{{}}}}"#,
        items.join(",")
    );
    assert!(doc.len() > 1 << 20);
    let mut d = EventDecoder::new(DecoderOptions::default());
    let mut q = Vec::new();
    let n = d.decode_document(doc.as_bytes(), pos("webhook"), &mut q);
    assert_eq!(n, 2_500);
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0].item, Some(100));
    assert!(
        q[0].reason
            .starts_with("item 100: field `requestReceivedTimestamp`")
    );
    let large = d.finish_batch().unwrap();
    let (lines_batch, lq) = decode_lines(ndjson.as_bytes(), DecoderOptions::default());
    assert!(lq.is_empty());
    let small = lines_batch.unwrap();
    assert_eq!(large.num_rows(), small.num_rows());
    for field in large.schema().fields() {
        let name = field.name();
        if [col::SOURCE_REF, col::INGESTED_AT, col::CLUSTER].contains(&name.as_str()) {
            continue;
        }
        assert_eq!(
            large.column_by_name(name).unwrap().as_ref(),
            small.column_by_name(name).unwrap().as_ref(),
            "column {name} differs between the item-by-item and the whole decode"
        );
    }
}

#[test]
fn a_body_of_millions_of_bad_items_costs_a_hundred_records_and_one_summary() {
    let mut doc = String::from("[");
    for _ in 0..1_000_000 {
        doc.push_str("0,");
    }
    doc.push_str("0]");
    let options = DecoderOptions::default();
    let cap = options.max_quarantined_per_input;
    let mut d = EventDecoder::new(options);
    let mut q = Vec::new();
    assert_eq!(d.decode_document(doc.as_bytes(), pos("webhook"), &mut q), 0);
    assert_eq!(q.len(), cap + 1);
    let summary = q.last().unwrap();
    assert!(
        summary
            .reason
            .starts_with("1000001 items of this input could not be decoded"),
        "{}",
        summary.reason
    );
    assert_eq!(
        summary.raw,
        doc.as_bytes(),
        "the summary keeps the whole input"
    );
    assert_eq!(d.take_summarised(), 1_000_001 - cap as u64);
}

#[test]
fn a_large_body_that_is_not_json_is_quarantined_or_read_line_by_line() {
    let good = r#"{"auditID":"a","requestReceivedTimestamp":"2026-11-01T00:00:00Z","stageTimestamp":"2026-11-01T00:00:00Z"}"#;
    // NDJSON of 20k lines with one broken line: the rest is kept.
    let mut text = String::new();
    for i in 0..20_000 {
        if i == 7 {
            text.push_str("{oops\n");
        } else {
            text.push_str(&good.replace("\"a\"", &format!("\"a{i}\"")));
            text.push('\n');
        }
    }
    assert!(text.len() > 1 << 20);
    let mut d = EventDecoder::new(DecoderOptions::default());
    let mut q = Vec::new();
    assert_eq!(
        d.decode_document(text.as_bytes(), pos("webhook"), &mut q),
        19_999
    );
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].line, Some(8));
    // One huge line of garbage: one record, no parse of the whole.
    let garbage = format!("[{}", "1,".repeat(1 << 20));
    let mut q = Vec::new();
    assert_eq!(
        d.decode_document(garbage.as_bytes(), pos("webhook"), &mut q),
        0
    );
    assert_eq!(q.len(), 1);
    assert!(q[0].reason.starts_with("invalid JSON"), "{}", q[0].reason);
}

#[test]
fn duplicate_digests_are_keyed_so_no_sender_can_predict_them() {
    let line = br#"{"auditID":"a","stage":"ResponseComplete","requestReceivedTimestamp":"2026-11-01T00:00:00Z","stageTimestamp":"2026-11-01T00:00:00Z"}"#;
    let digest = |cluster: &str, key: u64| {
        let mut d = EventDecoder::new(DecoderOptions::default());
        d.enable_row_digests(key);
        let mut q = Vec::new();
        d.decode_line(
            line,
            SourcePos {
                cluster,
                ..pos("t")
            },
            &mut q,
        );
        d.take_row_digests()[0]
    };
    assert_eq!(
        digest("prod", 1),
        digest("prod", 1),
        "one process: resends match"
    );
    assert_ne!(digest("prod", 1), digest("prod", 2), "another process key");
    assert_ne!(digest("prod", 1), digest("staging", 1), "another cluster");

    // An envelope's cluster keys its events' digests, whatever the input's cluster: the same
    // event from two EKS clusters differs, and equals the bare event sent for its cluster.
    let wrapped = |group: &str| {
        let message = serde_json::json!({"messageType": "DATA_MESSAGE", "logGroup": group,
            "logStream": "kube-apiserver-audit-1",
            "logEvents": [{"id": "1", "timestamp": 1, "message": std::str::from_utf8(line).unwrap()}]});
        let mut d = EventDecoder::new(DecoderOptions::default());
        d.enable_row_digests(1);
        let mut q = Vec::new();
        d.decode_document(message.to_string().as_bytes(), pos("firehose"), &mut q);
        assert!(q.is_empty(), "{q:?}");
        d.take_row_digests()[0]
    };
    assert_eq!(wrapped("/aws/eks/prod/cluster"), digest("prod", 1));
    assert_eq!(wrapped("/aws/eks/staging/cluster"), digest("staging", 1));
}

#[test]
fn every_unambiguous_timestamp_form_decodes_and_keeps_its_original_text() {
    let t = 1_669_761_246_892_000i64; // 2022-11-29T22:34:06.892Z
    let cases = [
        ("2022-11-29T22:34:06.892Z", t, false),
        ("2022-11-29T22:34:06Z", t - 892_000, false),
        ("2022-11-29T22:34:06.892123456Z", t + 123, false),
        ("2022-11-29T23:34:06.892+01:00", t, false),
        ("2022-11-29 22:34:06.892", t, true),
        ("2022-11-29T22:34:06.892", t, true),
        ("2022-11-29T23:34:06.892+0100", t, true),
    ];
    let mut text = String::new();
    for (i, (ts, _, _)) in cases.iter().enumerate() {
        text.push_str(&format!(
            r#"{{"auditID":"t{i}","stage":"ResponseComplete","requestReceivedTimestamp":"{ts}","stageTimestamp":"{ts}"}}"#
        ));
        text.push('\n');
    }
    text.push_str(r#"{"auditID":"bad","requestReceivedTimestamp":"29/11/2022 22:34","stageTimestamp":"2022-11-29T22:34:06Z"}"#);
    let (batch, q) = decode_lines(text.as_bytes(), DecoderOptions::default());
    assert_eq!(q.len(), 1, "only the unreadable one is quarantined: {q:?}");
    assert!(
        q[0].reason.contains("requestReceivedTimestamp"),
        "{}",
        q[0].reason
    );
    let b = batch.unwrap();
    let received = b
        .column_by_name(col::REQUEST_RECEIVED_AT)
        .unwrap()
        .as_primitive::<TimestampMicrosecondType>();
    let unmapped = str_col(&b, col::UNMAPPED);
    for (i, (ts, micros, kept)) in cases.iter().enumerate() {
        assert_eq!(received.value(i), *micros, "{ts}");
        if *kept {
            let u: serde_json::Value = serde_json::from_str(unmapped.value(i)).unwrap();
            assert_eq!(u["requestReceivedTimestamp"], *ts);
            assert_eq!(u["stageTimestamp"], *ts);
        } else {
            assert!(unmapped.is_null(i), "{ts}: {}", unmapped.value(i));
        }
    }
}

#[test]
fn a_key_given_twice_decodes_the_same_whether_the_document_is_cut_or_whole() {
    // Found by the decoder fuzz target: `apiVersion` twice in an EventList gave the items the
    // first value when parsed whole and the last when cut into items. Duplicate `kind` and
    // `items` are the same ambiguity.
    let event = |id: &str| {
        format!(
            r#"{{"auditID":"{id}","stage":"ResponseComplete","verb":"get","requestURI":"/api","user":{{"username":"u"}},"requestReceivedTimestamp":"2026-11-01T05:00:00Z","stageTimestamp":"2026-11-01T05:00:00Z"}}"#
        )
    };
    let list = format!(
        r#"{{"kind":"EventList","apiVersion":"first/v1","apiVersion":"audit.k8s.io/v1","items":[{}],"items":[{}]}}"#,
        event("a"),
        event("b")
    );
    // Read as an EventList only if the first `kind` counts.
    let kind_twice = format!(
        r#"{{"kind":"EventList","kind":"Nope","apiVersion":"first/v1","items":[{}]}}"#,
        event("a"),
    );
    for doc in [list, kind_twice] {
        same_rows_cut_or_whole(&doc);
    }
}

fn same_rows_cut_or_whole(doc: &str) {
    let decode = |large_document_bytes| {
        let mut d = EventDecoder::new(DecoderOptions {
            large_document_bytes,
            ..DecoderOptions::default()
        });
        let mut q = Vec::new();
        let n = d.decode_document(doc.as_bytes(), pos("webhook"), &mut q);
        assert!(q.is_empty(), "{q:?}");
        (n, d.finish_batch().unwrap())
    };
    let (whole_rows, whole) = decode(usize::MAX);
    let (cut_rows, cut) = decode(0);
    assert_eq!((whole_rows, cut_rows), (1, 1));
    for name in [col::AUDIT_ID, col::EVENT_API_VERSION] {
        assert_eq!(str_col(&whole, name).value(0), str_col(&cut, name).value(0));
    }
    assert_eq!(str_col(&cut, col::AUDIT_ID).value(0), "a");
    assert_eq!(str_col(&cut, col::EVENT_API_VERSION).value(0), "first/v1");
}

/// The sample events (one per line; the EventList line is left out: envelopes carry Events).
fn sample_events() -> Vec<String> {
    let text = std::fs::read_to_string(data_dir().join("samples/handwritten.ndjson")).unwrap();
    text.lines()
        .filter(|l| !l.contains("\"EventList\""))
        .map(str::to_string)
        .collect()
}

/// `body` decoded as one document (as a Kafka message or a webhook body is).
fn decode_doc(body: &[u8], cluster: &str) -> (EventDecoder, Option<RecordBatch>, Vec<Quarantined>) {
    let mut d = EventDecoder::new(DecoderOptions::default());
    let mut q = Vec::new();
    d.decode_document(
        body,
        SourcePos {
            cluster,
            ..pos("envelope")
        },
        &mut q,
    );
    let b = d.finish_batch();
    (d, b, q)
}

/// Every column but those saying where and when a row was read.
fn event_columns(b: &RecordBatch) -> Vec<(String, arrow::array::ArrayRef)> {
    b.schema()
        .fields()
        .iter()
        .zip(b.columns())
        .filter(|(f, _)| {
            ![
                col::CLUSTER,
                col::SOURCE_REF,
                col::INGESTED_AT,
                col::ENVELOPE,
            ]
            .contains(&f.name().as_str())
        })
        .map(|(f, c)| (f.name().clone(), c.clone()))
        .collect()
}

fn assert_same_events(wrapped: &RecordBatch, plain: &RecordBatch) {
    assert_eq!(wrapped.num_rows(), plain.num_rows());
    for ((name, w), (_, p)) in event_columns(wrapped).iter().zip(event_columns(plain)) {
        assert_eq!(w.as_ref(), p.as_ref(), "column {name}");
    }
}

/// Decodes `body`, an envelope around the events of `plain`: nothing quarantined, the same
/// events, all of `cluster` (the envelope's, not the input's `default`).
fn decode_wrapped(body: &[u8], plain: &RecordBatch, cluster: &str) -> EventDecoder {
    decode_wrapped_with(body, plain, cluster).0
}

/// [`decode_wrapped`], also returning the rows.
fn decode_wrapped_with(
    body: &[u8],
    plain: &RecordBatch,
    cluster: &str,
) -> (EventDecoder, RecordBatch) {
    let (d, wrapped, q) = decode_doc(body, "default");
    assert!(q.is_empty(), "{q:?}");
    let wrapped = wrapped.unwrap();
    assert_same_events(&wrapped, plain);
    let clusters = str_col(&wrapped, col::CLUSTER);
    assert!(clusters.iter().all(|c| c == Some(cluster)), "{clusters:?}");
    (d, wrapped)
}

/// The `envelope` column of row `row` as JSON.
fn envelope_of(b: &RecordBatch, row: usize) -> serde_json::Value {
    let text = str_col(b, col::ENVELOPE);
    assert!(text.is_valid(row), "row {row} has no envelope");
    serde_json::from_str(text.value(row)).unwrap()
}

#[test]
fn a_cloudwatch_subscription_message_yields_its_events_for_the_eks_cluster_and_counts_the_rest() {
    let events = sample_events();
    let (_, plain, q) = decode_doc(events.join("\n").as_bytes(), "default");
    assert!(q.is_empty(), "{q:?}");
    let plain = plain.unwrap();
    let log_events: Vec<_> = events
        .iter()
        .enumerate()
        .map(|(i, e)| serde_json::json!({"id": format!("{i:056}"), "timestamp": 1_780_000_000_000_i64 + i as i64, "message": e}))
        .collect();
    let data = serde_json::json!({"messageType": "DATA_MESSAGE", "owner": "123456789012",
        "logGroup": "/aws/eks/prod-eu/cluster", "logStream": "kube-apiserver-audit-0a1b2c",
        "subscriptionFilters": ["auditlake"], "logEvents": log_events});
    decode_wrapped(data.to_string().as_bytes(), &plain, "prod-eu");

    // The same log group's klog streams, a health check, and an event CloudWatch cut.
    let cut = &events[3][..events[3].len() / 2];
    let noise = [
        serde_json::json!({"messageType": "DATA_MESSAGE", "owner": "123456789012",
            "logGroup": "/aws/eks/prod-eu/cluster", "logStream": "kube-scheduler-0a1b2c",
            "logEvents": [{"id": "1", "timestamp": 1, "message": "I1101 03:12:00.000 1 scheduler.go:42] ok"},
                          {"id": "2", "timestamp": 2, "message": "I1101 03:12:01.000 1 scheduler.go:42] ok"}]}),
        serde_json::json!({"messageType": "CONTROL_MESSAGE", "owner": "CloudwatchLogs", "logGroup": "",
            "logStream": "", "logEvents": [{"id": "", "timestamp": 1, "message": "CWL CONTROL MESSAGE: Checking health of destination Firehose."}]}),
        serde_json::json!({"messageType": "DATA_MESSAGE", "owner": "123456789012",
            "logGroup": "/aws/eks/prod-eu/cluster", "logStream": "kube-apiserver-audit-0a1b2c",
            "logEvents": [{"id": "3", "timestamp": 3, "message": format!("{cut}[Truncated...]")}]}),
    ];
    let mut d = EventDecoder::new(DecoderOptions::default());
    let mut q = Vec::new();
    for m in &noise {
        d.decode_document(m.to_string().as_bytes(), pos("firehose"), &mut q);
    }
    assert!(d.finish_batch().is_none());
    let skipped: Vec<_> = d
        .take_skipped()
        .into_iter()
        .map(|(s, n)| (s.as_str(), n))
        .collect();
    assert_eq!(
        skipped,
        [
            ("cloudwatch_control_message", 1),
            ("cloudwatch_other_stream", 2),
            ("cloudwatch_truncated", 1)
        ]
    );
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!(q[0].cluster, "prod-eu");
    assert!(
        q[0].reason.contains("truncated") && q[0].reason.contains(&audit_id_of(&events[3])),
        "{}",
        q[0].reason
    );
    assert!(q[0].raw.ends_with(b"[Truncated...]"));
}

#[test]
fn azure_diagnostic_records_yield_their_events_for_the_aks_cluster_whether_log_is_a_string_or_an_object()
 {
    let events = sample_events();
    let (_, plain, _) = decode_doc(events.join("\n").as_bytes(), "default");
    let plain = plain.unwrap();
    let resource = "/SUBSCRIPTIONS/0000/RESOURCEGROUPS/RG/PROVIDERS/MICROSOFT.CONTAINERSERVICE/MANAGEDCLUSTERS/AKS-WEST";
    let record = |i: usize, e: &str| {
        // Alternately the API server's stdout line (with its newline) and the event's own
        // bytes as an object.
        let log = if i.is_multiple_of(2) {
            serde_json::Value::String(format!("{e}\n")).to_string()
        } else {
            e.to_string()
        };
        let category = if i == 1 {
            "kube-audit-admin"
        } else {
            "kube-audit"
        };
        format!(
            r#"{{"operationName":"Microsoft.ContainerService/managedClusters/diagnosticLogs/Read","category":"{category}","resourceId":"{resource}","properties":{{"log":{log},"stream":"stdout","pod":"kube-apiserver-abc"}},"time":"2026-11-01T03:12:00.0000000Z"}}"#
        )
    };
    let mut records: Vec<_> = events
        .iter()
        .enumerate()
        .map(|(i, e)| record(i, e))
        .collect();
    records.insert(
        2,
        format!(
            r#"{{"category":"kube-apiserver","resourceId":"{resource}","properties":{{"log":"I1101 03:12:00.000 1 handler.go:1] GET /readyz\n"}}}}"#
        ),
    );
    let body = format!(r#"{{"records":[{}]}}"#, records.join(","));
    let mut d = decode_wrapped(body.as_bytes(), &plain, "aks-west");
    let skipped: Vec<_> = d
        .take_skipped()
        .into_iter()
        .map(|(s, n)| (s.as_str(), n))
        .collect();
    assert_eq!(skipped, [("azure_other_category", 1)]);

    // A Storage account's blob: the same records as JSON Lines, one starting with a BOM.
    let lines_body: String = events
        .iter()
        .enumerate()
        .map(|(i, e)| format!("{}\n", record(i, e)))
        .collect();
    let mut d = EventDecoder::new(DecoderOptions::default());
    let mut q = Vec::new();
    d.decode_ndjson(
        format!("\u{feff}{lines_body}").as_bytes(),
        pos("PT1H.json"),
        &mut q,
    );
    assert!(q.is_empty(), "{q:?}");
    assert_same_events(&d.finish_batch().unwrap(), &plain);
}

#[test]
fn a_shippers_wrapper_yields_the_line_it_carries_and_the_configured_cluster() {
    let events = sample_events();
    let (_, plain, _) = decode_doc(events[3].as_bytes(), "default");
    for wrapper in [
        serde_json::json!({"@timestamp": 1_780_000_000.021_638, "log": events[3]}),
        serde_json::json!({"file": "/var/log/audit.log", "host": "cp-1", "message": format!("{}\n", events[3]), "source_type": "file"}),
    ] {
        let (_, wrapped, q) = decode_doc(wrapper.to_string().as_bytes(), "on-prem");
        assert!(q.is_empty(), "{q:?}");
        let wrapped = wrapped.unwrap();
        assert_same_events(&wrapped, plain.as_ref().unwrap());
        assert_eq!(str_col(&wrapped, col::CLUSTER).value(0), "on-prem");
    }
    // A wrapper around a line that is not an event is quarantined, not dropped.
    let (_, none, q) = decode_doc(br#"{"log":"{not json"}"#, "on-prem");
    assert!(none.is_none());
    assert_eq!(q.len(), 1);
    assert!(
        q[0].reason.contains("`log` is not a JSON event"),
        "{}",
        q[0].reason
    );
}

fn audit_id_of(event: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(event).unwrap();
    v["auditID"].as_str().unwrap().to_string()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The sample events as one CloudWatch Logs subscription message of the EKS cluster
/// `prod-eu`, and the same events decoded plain.
fn subscription_message(events: &[String]) -> (serde_json::Value, RecordBatch) {
    let (_, plain, q) = decode_doc(events.join("\n").as_bytes(), "default");
    assert!(q.is_empty(), "{q:?}");
    let log_events: Vec<_> = events
        .iter()
        .enumerate()
        .map(|(i, e)| serde_json::json!({"id": format!("{i:056}"), "timestamp": 1_780_000_000_000_i64 + i as i64, "message": e}))
        .collect();
    let message = serde_json::json!({"messageType": "DATA_MESSAGE", "owner": "123456789012",
        "logGroup": "/aws/eks/prod-eu/cluster", "logStream": "kube-apiserver-audit-0a1b2c",
        "subscriptionFilters": ["auditlake"], "logEvents": log_events});
    (message, plain.unwrap())
}

#[test]
fn subscription_messages_arrive_through_every_aws_transport_as_base64_of_gzip() {
    let events = sample_events();
    let (message, plain) = subscription_message(&events);
    let data = base64(&gzip(message.to_string().as_bytes()));
    let control = base64(&gzip(
        br#"{"messageType":"CONTROL_MESSAGE","owner":"CloudwatchLogs","logGroup":"","logStream":"","subscriptionFilters":[],"logEvents":[{"id":"","timestamp":1,"message":"CWL CONTROL MESSAGE: Checking health of destination Firehose."}]}"#,
    ));
    for (transport, body) in [
        (
            "lambda_awslogs",
            serde_json::json!({"awslogs": {"data": data}}),
        ),
        // Firehose's HTTP endpoint delivery: a health check beside the data.
        (
            "firehose_http",
            serde_json::json!({"requestId": "ed4acda5-034f-9f42-bba1-f29aea6d7d8f",
            "timestamp": 1_780_000_000_000_i64, "records": [{"data": control}, {"data": data}]}),
        ),
        (
            "kinesis",
            serde_json::json!({"Records": [{"SequenceNumber": "1", "PartitionKey": "k", "Data": data}]}),
        ),
        (
            "kinesis",
            serde_json::json!({"Records": [{"eventSource": "aws:kinesis", "kinesis": {"data": data}}]}),
        ),
    ] {
        let (_, rows) = decode_wrapped_with(body.to_string().as_bytes(), &plain, "prod-eu");
        let envelope = envelope_of(&rows, 1);
        assert_eq!(envelope["format"], "cloudwatch_subscription", "{transport}");
        assert_eq!(envelope["transport"], transport);
        assert_eq!(envelope["owner"], "123456789012");
        assert_eq!(envelope["logStream"], "kube-apiserver-audit-0a1b2c");
        assert_eq!(envelope["id"], format!("{:056}", 1));
        assert_eq!(envelope["timestamp"], 1_780_000_000_001_i64);
    }
    // Raw gzip as a Kafka message value or a file's bytes; base64 text of it too.
    decode_wrapped(&gzip(message.to_string().as_bytes()), &plain, "prod-eu");
    decode_wrapped(data.as_bytes(), &plain, "prod-eu");
}

#[test]
fn a_firehose_object_in_s3_is_gzip_members_of_messages_back_to_back() {
    let events = sample_events();
    let (first, plain_first) = subscription_message(&events[..3]);
    let (second, plain_second) = subscription_message(&events[3..]);
    let control = br#"{"messageType":"CONTROL_MESSAGE","owner":"CloudwatchLogs","logGroup":"","logStream":"","subscriptionFilters":[],"logEvents":[]}"#;
    let mut object = gzip(first.to_string().as_bytes());
    object.extend(gzip(control));
    object.extend(gzip(second.to_string().as_bytes()));
    let plain =
        arrow::compute::concat_batches(&plain_first.schema(), [&plain_first, &plain_second])
            .unwrap();
    let mut d = decode_wrapped(&object, &plain, "prod-eu");
    let skipped: Vec<_> = d
        .take_skipped()
        .into_iter()
        .map(|(s, n)| (s.as_str(), n))
        .collect();
    assert_eq!(skipped, [("cloudwatch_control_message", 1)]);

    // Once inflated (as the file source reads a .gz object): the same, as one document or
    // as a line, also when larger than the large-document threshold.
    let mut inflated = first.to_string();
    inflated.push_str(std::str::from_utf8(control).unwrap());
    inflated.push_str(&second.to_string());
    decode_wrapped(inflated.as_bytes(), &plain, "prod-eu");
    for options in [
        DecoderOptions::default(),
        DecoderOptions {
            large_document_bytes: 1000,
            ..DecoderOptions::default()
        },
    ] {
        let mut d = EventDecoder::new(options.clone());
        let mut q = Vec::new();
        d.decode_line(inflated.as_bytes(), pos("line"), &mut q);
        d.decode_document(inflated.as_bytes(), pos("doc"), &mut q);
        assert!(q.is_empty(), "{q:?}");
        assert_eq!(d.finish_batch().unwrap().num_rows(), 2 * plain.num_rows());
    }

    // A gzip bomb and a cut stream are quarantined with the reason; nothing else is lost.
    let mut d = EventDecoder::new(DecoderOptions {
        max_inflated_bytes: 1 << 16,
        ..DecoderOptions::default()
    });
    let mut q = Vec::new();
    let bomb = gzip(&vec![b' '; 1 << 20]);
    d.decode_document(&bomb, pos("bomb"), &mut q);
    let mut cut = gzip(first.to_string().as_bytes());
    cut.truncate(cut.len() / 2);
    d.decode_document(&cut, pos("cut"), &mut q);
    assert_eq!(q.len(), 2, "{q:?}");
    assert!(
        q[0].reason.contains("max_inflated_bytes (65536)"),
        "{}",
        q[0].reason
    );
    assert!(q[1].reason.starts_with("gzip:"), "{}", q[1].reason);
}

#[test]
fn cloudwatch_api_output_insights_rows_and_export_lines_yield_their_events() {
    let events = sample_events();
    let (_, plain, _) = decode_doc(events.join("\n").as_bytes(), "default");
    let plain = plain.unwrap();
    // filter-log-events: events of many streams, a klog stream among them.
    let mut items: Vec<_> = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            serde_json::json!({"logStreamName": "kube-apiserver-audit-0a1b2c",
            "timestamp": 1_780_000_000_000_i64 + i as i64, "message": e,
            "ingestionTime": 1_780_000_001_000_i64, "eventId": format!("{i:056}")})
        })
        .collect();
    items.insert(1, serde_json::json!({"logStreamName": "authenticator-0a1b2c", "timestamp": 1,
        "message": "time=\"2026-11-01T03:12:00Z\" level=info msg=\"access granted\"", "eventId": "x"}));
    let output = serde_json::json!({"events": items, "searchedLogStreams": [], "nextToken": "Y2E"});
    let (mut d, rows) = decode_wrapped_with(output.to_string().as_bytes(), &plain, "default");
    assert_eq!(envelope_of(&rows, 0)["eventId"], format!("{:056}", 0));
    let skipped: Vec<_> = d
        .take_skipped()
        .into_iter()
        .map(|(s, n)| (s.as_str(), n))
        .collect();
    assert_eq!(skipped, [("cloudwatch_other_stream", 1)]);
    // get-log-events: one stream, no stream name per event.
    let output = serde_json::json!({"events": events.iter().map(|e| serde_json::json!({"timestamp": 1, "message": e, "ingestionTime": 2})).collect::<Vec<_>>(),
        "nextForwardToken": "f/1", "nextBackwardToken": "b/1"});
    decode_wrapped(output.to_string().as_bytes(), &plain, "default");
    // Logs Insights JSON export: an array of rows, `@log` naming the group.
    let rows_json: Vec<_> = events
        .iter()
        .map(|e| serde_json::json!({"@timestamp": "2026-11-01 03:12:00.000", "@message": e,
            "@logStream": "kube-apiserver-audit-0a1b2c", "@log": "123456789012:/aws/eks/prod-eu/cluster"}))
        .collect();
    let (_, rows) = decode_wrapped_with(
        serde_json::Value::from(rows_json).to_string().as_bytes(),
        &plain,
        "prod-eu",
    );
    let envelope = envelope_of(&rows, 0);
    assert_eq!(
        (envelope["format"].as_str(), envelope["account"].as_str()),
        (Some("cloudwatch_insights"), Some("123456789012"))
    );
    assert_eq!(envelope["timestamp"], "2026-11-01 03:12:00.000");
    // A pretty-printed copy shows `@message` as the event object itself.
    let objects: Vec<_> = events
        .iter()
        .map(|e| {
            serde_json::json!({"@message": serde_json::from_str::<serde_json::Value>(e).unwrap(),
            "@log": "123456789012:/aws/eks/prod-eu/cluster"})
        })
        .collect();
    // (Re-encoded by serde_json, so bodies differ in key order: compare the identities.)
    let (_, rows, q) = decode_doc(serde_json::Value::from(objects).to_string().as_bytes(), "x");
    assert!(q.is_empty(), "{q:?}");
    let rows = rows.unwrap();
    assert_eq!(
        str_col(&rows, col::AUDIT_ID),
        str_col(&plain, col::AUDIT_ID)
    );
    assert_eq!(str_col(&rows, col::STAGE), str_col(&plain, col::STAGE));
    assert!(
        str_col(&rows, col::CLUSTER)
            .iter()
            .all(|c| c == Some("prod-eu"))
    );
    // An export to S3: `<ISO time> <message>` lines.
    let export: String = events
        .iter()
        .map(|e| format!("2026-11-01T03:12:00.000Z {e}\n"))
        .collect();
    let mut d = EventDecoder::new(DecoderOptions::default());
    let mut q = Vec::new();
    d.decode_ndjson(export.as_bytes(), pos("000000.gz"), &mut q);
    assert!(q.is_empty(), "{q:?}");
    let rows = d.finish_batch().unwrap();
    assert_same_events(&rows, &plain);
    assert_eq!(
        envelope_of(&rows, 2)["timestamp"],
        "2026-11-01T03:12:00.000Z"
    );
}

/// A GKE audit LogEntry as Cloud Logging writes it (shape from Google's documentation and
/// public samples; values made up).
fn gke_entry(method: &str, resource: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut entry = serde_json::json!({
        "insertId": "8bd6c2a1-7a8b-4a56-9c6b-1f0a4d0e9c11",
        "logName": "projects/acme-prod/logs/cloudaudit.googleapis.com%2Factivity",
        "operation": {"id": "8bd6c2a1-7a8b-4a56-9c6b-1f0a4d0e9c11", "producer": "k8s.io", "first": true, "last": true},
        "protoPayload": {
            "@type": "type.googleapis.com/google.cloud.audit.AuditLog",
            "authenticationInfo": {"principalEmail": "mallory@example.com"},
            "authorizationInfo": [{"granted": true, "permission": method, "resource": resource}],
            "methodName": method,
            "requestMetadata": {"callerIp": "203.0.113.7", "callerSuppliedUserAgent": "kubectl/v1.31.0 (linux/amd64)"},
            "resourceName": resource,
            "serviceName": "k8s.io",
            "status": {}
        },
        "receiveTimestamp": "2026-11-01T03:12:19.71757101Z",
        "resource": {"type": "k8s_cluster", "labels": {"cluster_name": "gke-prod", "location": "europe-west1", "project_id": "acme-prod"}},
        "timestamp": "2026-11-01T03:12:00.80581Z",
        "labels": {"authorization.k8s.io/decision": "allow", "authorization.k8s.io/reason": "RBAC: allowed by ClusterRoleBinding \"x\""}
    });
    if let (Some(e), Some(x)) = (entry.as_object_mut(), extra.as_object()) {
        for (k, v) in x {
            if k == "protoPayload" {
                for (pk, pv) in v.as_object().unwrap() {
                    e["protoPayload"][pk] = pv.clone();
                }
            } else {
                e.insert(k.clone(), v.clone());
            }
        }
    }
    entry
}

#[test]
fn a_gke_log_entry_becomes_an_event_row_with_its_inferences_named() {
    let binding = gke_entry(
        "io.k8s.authorization.rbac.v1.clusterrolebindings.create",
        "rbac.authorization.k8s.io/v1/clusterrolebindings/backdoor",
        serde_json::json!({"protoPayload": {
            "request": {"@type": "rbac.authorization.k8s.io/v1.ClusterRoleBinding", "kind": "ClusterRoleBinding",
                        "metadata": {"name": "backdoor"}, "roleRef": {"kind": "ClusterRole", "name": "cluster-admin"}},
            "response": {"@type": "rbac.authorization.k8s.io/v1.ClusterRoleBinding", "kind": "ClusterRoleBinding", "metadata": {"name": "backdoor"}}}}),
    );
    let exec = gke_entry(
        "io.k8s.core.v1.pods.exec.create",
        "core/v1/namespaces/shop/pods/web-0/exec",
        serde_json::json!({"operation": {"id": "op-exec-1", "producer": "k8s.io", "first": true}}),
    );
    let denied = gke_entry(
        "io.k8s.core.v1.secrets.get",
        "core/v1/namespaces/kube-system/secrets/admin-token",
        serde_json::json!({"protoPayload": {"status": {"code": 7, "message": "Forbidden"}},
            "labels": {"authorization.k8s.io/decision": "forbid", "authorization.k8s.io/reason": ""}}),
    );
    let admission = gke_entry(
        "io.k8s.core.v1.pods.create",
        "core/v1/namespaces/shop/pods/miner",
        serde_json::json!({"protoPayload": {"status": {"code": 3, "message": "denied"},
            "response": {"@type": "core.k8s.io/v1.Status", "apiVersion": "v1", "code": 403, "kind": "Status",
                         "message": "admission webhook denied the request", "reason": "Forbidden", "status": "Failure", "metadata": {}}}}),
    );
    let readyz = gke_entry("io.k8s.get", "readyz", serde_json::json!({}));
    let management = gke_entry(
        "google.container.v1.ClusterManager.UpdateCluster",
        "projects/acme-prod/locations/europe-west1/clusters/gke-prod",
        serde_json::json!({"protoPayload": {"serviceName": "container.googleapis.com"}, "resource": {"type": "gke_cluster", "labels": {}}}),
    );
    // `gcloud logging read --format=json` prints a JSON array.
    let body = serde_json::Value::from(vec![
        binding.clone(),
        exec,
        denied,
        admission,
        readyz,
        management,
    ]);
    let (mut d, rows, q) = decode_doc(body.to_string().as_bytes(), "default");
    assert!(q.is_empty(), "{q:?}");
    let rows = rows.unwrap();
    assert_eq!(rows.num_rows(), 5);
    let skipped: Vec<_> = d
        .take_skipped()
        .into_iter()
        .map(|(s, n)| (s.as_str(), n))
        .collect();
    assert_eq!(skipped, [("gke_other_service", 1)]);
    let s = |name: &str, row: usize| {
        let c = str_col(&rows, name);
        c.is_valid(row).then(|| c.value(row).to_string())
    };
    let code = |row: usize| {
        rows.column_by_name(col::RESPONSE_CODE)
            .unwrap()
            .as_primitive::<Int32Type>()
            .value(row)
    };
    assert!(
        str_col(&rows, col::CLUSTER)
            .iter()
            .all(|c| c == Some("gke-prod"))
    );
    // The binding: verb from the method, group from the resource name (not the method's
    // reversed domain), code 201 from an OK rpc status of a create.
    assert_eq!(s(col::VERB, 0).as_deref(), Some("create"));
    assert_eq!(s(col::RESOURCE, 0).as_deref(), Some("clusterrolebindings"));
    assert_eq!(
        s(col::API_GROUP, 0).as_deref(),
        Some("rbac.authorization.k8s.io")
    );
    assert_eq!(s(col::NAME, 0).as_deref(), Some("backdoor"));
    assert_eq!(s(col::NAMESPACE, 0), None);
    assert_eq!(
        s(col::REQUEST_URI, 0).as_deref(),
        Some("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/backdoor")
    );
    assert_eq!(
        s(col::USER_USERNAME, 0).as_deref(),
        Some("mallory@example.com")
    );
    assert_eq!(
        s(col::USER_AGENT, 0).as_deref(),
        Some("kubectl/v1.31.0 (linux/amd64)")
    );
    assert_eq!(s(col::STAGE, 0).as_deref(), Some("ResponseComplete"));
    assert_eq!(s(col::LEVEL, 0).as_deref(), Some("RequestResponse"));
    assert_eq!(
        s(col::AUDIT_ID, 0).as_deref(),
        Some("8bd6c2a1-7a8b-4a56-9c6b-1f0a4d0e9c11")
    );
    assert_eq!(s(col::AUTHZ_DECISION, 0).as_deref(), Some("allow"));
    assert_eq!(code(0), 201);
    let request: serde_json::Value =
        serde_json::from_str(&s(col::REQUEST_OBJECT, 0).unwrap()).unwrap();
    assert_eq!(
        request,
        serde_json::json!({"kind": "ClusterRoleBinding", "metadata": {"name": "backdoor"}, "roleRef": {"kind": "ClusterRole", "name": "cluster-admin"}})
    );
    let groups = rows.column_by_name(col::USER_GROUPS).unwrap();
    assert!(
        groups.is_null(0),
        "GKE does not log groups: null, never an empty list"
    );
    // Times from `timestamp`, not `receiveTimestamp`.
    let at = rows
        .column_by_name(col::STAGE_AT)
        .unwrap()
        .as_primitive::<TimestampMicrosecondType>()
        .value(0);
    assert_eq!(at % 1_000_000, 805_810);
    let envelope = envelope_of(&rows, 0);
    assert_eq!(envelope["format"], "gke_log_entry");
    assert_eq!(
        (envelope["project"].as_str(), envelope["location"].as_str()),
        (Some("acme-prod"), Some("europe-west1"))
    );
    assert_eq!(
        envelope["inferred"],
        serde_json::json!(["stage", "level", "requestURI", "responseStatus.code"])
    );
    assert!(
        envelope["unknown"]
            .as_array()
            .unwrap()
            .contains(&"user.groups".into())
    );
    assert_eq!(
        envelope["logEntry"], binding,
        "the LogEntry is kept verbatim"
    );
    // exec: the first half of a long-running request, a subresource, a namespace.
    assert_eq!(
        (
            s(col::STAGE, 1).as_deref(),
            s(col::SUBRESOURCE, 1).as_deref(),
            s(col::NAMESPACE, 1).as_deref()
        ),
        (Some("ResponseStarted"), Some("exec"), Some("shop"))
    );
    assert_eq!(
        (
            s(col::AUDIT_ID, 1).as_deref(),
            s(col::API_GROUP, 1).as_deref()
        ),
        (Some("op-exec-1"), Some(""))
    );
    assert_eq!(
        s(col::REQUEST_URI, 1).as_deref(),
        Some("/api/v1/namespaces/shop/pods/web-0/exec")
    );
    // Denied by RBAC: the rpc code maps to 403; the decision label says so.
    assert_eq!(
        (code(2), s(col::AUTHZ_DECISION, 2).as_deref()),
        (403, Some("forbid"))
    );
    // Denied by admission: the v1.Status the API server returned wins over the rpc code.
    assert_eq!(
        (code(3), s(col::RESPONSE_REASON, 3).as_deref()),
        (403, Some("Forbidden"))
    );
    assert_eq!(
        envelope_of(&rows, 3)["inferred"],
        serde_json::json!(["stage", "level", "requestURI"])
    );
    // A non-resource request.
    assert_eq!(
        (
            s(col::REQUEST_URI, 4).as_deref(),
            s(col::RESOURCE, 4),
            s(col::VERB, 4).as_deref()
        ),
        (Some("/readyz"), None, Some("get"))
    );
}

#[test]
fn pub_sub_push_and_pull_carry_log_entries_as_base64() {
    let entry = gke_entry(
        "io.k8s.core.v1.pods.exec.create",
        "core/v1/namespaces/shop/pods/web-0/exec",
        serde_json::json!({}),
    );
    let (_, plain, q) = decode_doc(entry.to_string().as_bytes(), "default");
    assert!(q.is_empty(), "{q:?}");
    let plain = plain.unwrap();
    let data = base64(entry.to_string().as_bytes());
    let message = serde_json::json!({"attributes": {"logging.googleapis.com/timestamp": "2026-11-01T03:12:00.80581Z"},
        "data": data, "messageId": "1", "message_id": "1", "publishTime": "2026-11-01T03:12:20Z", "publish_time": "2026-11-01T03:12:20Z"});
    let push = serde_json::json!({"message": message, "subscription": "projects/acme-prod/subscriptions/auditlake"});
    let pull = serde_json::json!({"receivedMessages": [{"ackId": "a", "message": message}, {"ackId": "b", "message": message}]});
    let (_, rows) = decode_wrapped_with(push.to_string().as_bytes(), &plain, "gke-prod");
    assert_eq!(envelope_of(&rows, 0)["transport"], "pubsub_push");
    let both = arrow::compute::concat_batches(&plain.schema(), [&plain, &plain]).unwrap();
    decode_wrapped(pull.to_string().as_bytes(), &both, "gke-prod");
    // Bad base64 is quarantined with the record, never dropped.
    let (_, none, q) = decode_doc(
        br#"{"message":{"data":"%%%not base64"},"subscription":"s"}"#,
        "default",
    );
    assert!(none.is_none());
    assert_eq!(q.len(), 1);
    assert!(
        q[0].reason.contains("pubsub_push `message.data`") && q[0].reason.contains("base64"),
        "{}",
        q[0].reason
    );
}

#[test]
fn otlp_json_and_openshift_forwarded_events_yield_their_events_and_cluster() {
    let events = sample_events();
    let (_, plain, _) = decode_doc(events.join("\n").as_bytes(), "default");
    let plain = plain.unwrap();
    let records: Vec<_> = events
        .iter()
        .map(|e| serde_json::json!({"timeUnixNano": "1780000000000000000", "body": {"stringValue": e}}))
        .collect();
    let otlp = serde_json::json!({"resourceLogs": [{"resource": {"attributes": [
        {"key": "k8s.cluster.name", "value": {"stringValue": "onprem-1"}}]},
        "scopeLogs": [{"scope": {}, "logRecords": records}]}]});
    let (_, rows) = decode_wrapped_with(otlp.to_string().as_bytes(), &plain, "onprem-1");
    assert_eq!(envelope_of(&rows, 0)["format"], "otlp_json");

    // OpenShift's forwarder: fields inline, the audit level moved, `level` overwritten.
    let forwarded: Vec<String> = events
        .iter()
        .map(|e| {
            let mut v: serde_json::Value = serde_json::from_str(e).unwrap();
            let o = v.as_object_mut().unwrap();
            if let Some(level) = o.remove("level") {
                o.insert("k8s_audit_level".into(), level);
            }
            o.insert("level".into(), "default".into());
            o.insert("log_type".into(), "audit".into());
            o.insert("log_source".into(), "kubeAPI".into());
            o.insert("hostname".into(), "master-0".into());
            o.insert(
                "openshift".into(),
                serde_json::json!({"cluster_id": "3c8e0c1b-ocp", "sequence": 1}),
            );
            v.to_string()
        })
        .collect();
    let (_, rows, q) = decode_doc(forwarded.join("\n").as_bytes(), "default");
    assert!(q.is_empty(), "{q:?}");
    let rows = rows.unwrap();
    assert_eq!(str_col(&rows, col::LEVEL), str_col(&plain, col::LEVEL));
    assert!(
        str_col(&rows, col::CLUSTER)
            .iter()
            .all(|c| c == Some("3c8e0c1b-ocp"))
    );
    let unmapped: serde_json::Value =
        serde_json::from_str(str_col(&rows, col::UNMAPPED).value(0)).unwrap();
    assert_eq!(
        unmapped["level"], "default",
        "ViaQ's level is kept, not lost"
    );
    assert_eq!(envelope_of(&rows, 0)["hostname"], "master-0");
    // An inline event that cannot be decoded is quarantined for the envelope's cluster,
    // its reason naming the envelope.
    let (_, none, q) = decode_doc(
        br#"{"kind":"Event","level":"default","openshift":{"cluster_id":"3c8e0c1b-ocp"}}"#,
        "default",
    );
    assert!(none.is_none());
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].cluster, "3c8e0c1b-ocp");
    assert_eq!(
        q[0].reason,
        "OpenShift forwarded event: missing field `auditID`"
    );
}

#[test]
fn a_named_envelope_overrides_detection() {
    let events = sample_events();
    let shipper = serde_json::json!({"log": events[0]}).to_string();
    // `--envelope event`: a wrapper is not an Event, and says so.
    let mut d = EventDecoder::new(DecoderOptions {
        envelope: Some(auditlake_schema::Envelope::Event),
        ..DecoderOptions::default()
    });
    let mut q = Vec::new();
    d.decode_document(shipper.as_bytes(), pos("s"), &mut q);
    assert!(d.finish_batch().is_none());
    assert_eq!(q.len(), 1);
    assert!(q[0].reason.contains("auditID"), "{}", q[0].reason);
    // `--envelope azure_diagnostic`: plain events are not records, and are quarantined.
    let mut d = EventDecoder::new(DecoderOptions {
        envelope: Some("azure_diagnostic".parse().unwrap()),
        ..DecoderOptions::default()
    });
    let mut q = Vec::new();
    d.decode_document(events[0].as_bytes(), pos("s"), &mut q);
    assert!(d.finish_batch().is_none());
    assert!(
        q[0].reason.contains("`properties` object"),
        "{}",
        q[0].reason
    );
    let err = "cloudtrail"
        .parse::<auditlake_schema::Envelope>()
        .unwrap_err();
    assert!(
        err.contains("azure_diagnostic") && err.contains("gke_log_entry"),
        "{err}"
    );
}

#[test]
fn azure_truncations_and_placeholders_are_counted() {
    let events = sample_events();
    let resource = "/SUBSCRIPTIONS/0000/RESOURCEGROUPS/RG/PROVIDERS/MICROSOFT.CONTAINERSERVICE/MANAGEDCLUSTERS/AKS-WEST";
    let mut big: serde_json::Value = serde_json::from_str(&events[0]).unwrap();
    big["requestObject"] = "skipped-too-big-size-object".into();
    big["responseObject"] = serde_json::json!({"padding": "x".repeat(20_000)});
    let cut = &big.to_string()[..16_384];
    let mut placeholder = big.clone();
    placeholder["responseObject"] = "skipped-too-big-size-object".into();
    let record = |log: String| {
        format!(
            r#"{{"category":"kube-audit","resourceId":"{resource}","properties":{{"log":{log}}}}}"#
        )
    };
    let body = format!(
        r#"{{"records":[{},{}]}}"#,
        record(serde_json::Value::from(cut).to_string()),
        record(serde_json::Value::from(placeholder.to_string()).to_string())
    );
    let (mut d, rows, q) = decode_doc(body.as_bytes(), "default");
    assert_eq!(rows.unwrap().num_rows(), 1);
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].cluster, "aks-west");
    assert!(
        q[0].reason.contains("cut at 16 KiB") && q[0].reason.contains(&audit_id_of(&events[0])),
        "{}",
        q[0].reason
    );
    let skipped: Vec<_> = d
        .take_skipped()
        .into_iter()
        .map(|(s, n)| (s.as_str(), n))
        .collect();
    assert_eq!(
        skipped,
        [("azure_truncated", 1), ("azure_object_too_big", 2)]
    );
}
