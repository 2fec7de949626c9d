//! Baselines the decoder benchmark compares auditlake's simd-json decoder against.
//!
//! - [`serde_decode_lines`]: a straightforward serde_json decoder (`serde_json::Value` per
//!   line) into the same events schema, via the same [`EventBatchBuilder`].
//! - [`arrow_json_scalar_schema`]: the scalar columns for arrow-json's own reader.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use auditlake_schema::timestamp::parse_rfc3339_micros;
use auditlake_schema::{EventBatchBuilder, EventDecoder, SourcePos, lines};
use serde_json::Value;

fn s(v: &Value) -> Option<&str> {
    v.as_str()
}

fn json_text(v: &Value) -> Option<String> {
    (!v.is_null()).then(|| v.to_string())
}

fn list(b: &mut arrow::array::ListBuilder<arrow::array::StringBuilder>, v: &Value) {
    match v.as_array() {
        Some(items) => {
            for i in items {
                b.values().append_option(i.as_str());
            }
            b.append(true);
        }
        None => b.append_null(),
    }
}

/// Decodes NDJSON audit events with serde_json into a batch of the events schema.
/// Lines that are not events with an auditID and timestamps are skipped (counted).
pub fn serde_decode_lines(text: &[u8], cluster: &str) -> (RecordBatch, usize) {
    let mut b = EventBatchBuilder::new();
    let mut skipped = 0;
    for line in text.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
        let Ok(e) = serde_json::from_slice::<Value>(line) else {
            skipped += 1;
            continue;
        };
        let ts = |k: &str| e[k].as_str().and_then(parse_rfc3339_micros);
        let (Some(id), Some(rr), Some(st)) = (
            s(&e["auditID"]),
            ts("requestReceivedTimestamp"),
            ts("stageTimestamp"),
        ) else {
            skipped += 1;
            continue;
        };
        b.cluster.append_value(cluster);
        b.event_api_version.append_option(s(&e["apiVersion"]));
        b.audit_id.append_value(id);
        b.stage.append_option(s(&e["stage"]));
        b.level.append_option(s(&e["level"]));
        b.verb.append_option(s(&e["verb"]));
        b.request_uri.append_option(s(&e["requestURI"]));
        let u = &e["user"];
        b.user_username.append_option(s(&u["username"]));
        b.user_uid.append_option(s(&u["uid"]));
        list(&mut b.user_groups, &u["groups"]);
        b.user_extra.append_option(json_text(&u["extra"]));
        let iu = &e["impersonatedUser"];
        b.impersonated_username.append_option(s(&iu["username"]));
        b.impersonated_uid.append_option(s(&iu["uid"]));
        list(&mut b.impersonated_groups, &iu["groups"]);
        b.impersonated_extra.append_option(json_text(&iu["extra"]));
        list(&mut b.source_ips, &e["sourceIPs"]);
        b.user_agent.append_option(s(&e["userAgent"]));
        let o = &e["objectRef"];
        b.resource.append_option(s(&o["resource"]));
        b.subresource.append_option(s(&o["subresource"]));
        b.namespace.append_option(s(&o["namespace"]));
        b.name.append_option(s(&o["name"]));
        b.object_uid.append_option(s(&o["uid"]));
        b.api_group.append_option(s(&o["apiGroup"]));
        b.api_version.append_option(s(&o["apiVersion"]));
        b.resource_version.append_option(s(&o["resourceVersion"]));
        let r = &e["responseStatus"];
        b.response_code
            .append_option(r["code"].as_i64().map(|c| c as i32));
        b.response_status.append_option(s(&r["status"]));
        b.response_reason.append_option(s(&r["reason"]));
        b.response_message.append_option(s(&r["message"]));
        b.response_details.append_option(json_text(&r["details"]));
        let a = &e["annotations"];
        b.authz_decision
            .append_option(s(&a["authorization.k8s.io/decision"]));
        b.authz_reason
            .append_option(s(&a["authorization.k8s.io/reason"]));
        b.annotations.append_option(json_text(a));
        b.request_object
            .append_option(json_text(&e["requestObject"]));
        b.response_object
            .append_option(json_text(&e["responseObject"]));
        b.request_received_at.append_value(rr);
        b.stage_at.append_value(st);
        b.ingested_at.append_value(0);
        b.source_ref.append_value("bench");
        b.unmapped.append_null();
        b.envelope.append_null();
        b.row_done();
    }
    (b.finish(), skipped)
}

/// The scalar top-level fields of an audit event, as arrow-json's reader wants them.
pub fn arrow_json_scalar_schema() -> SchemaRef {
    // arrow-json without chrono-tz only knows offset time zones.
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()));
    Arc::new(Schema::new(vec![
        Field::new("apiVersion", DataType::Utf8, true),
        Field::new("auditID", DataType::Utf8, true),
        Field::new("stage", DataType::Utf8, true),
        Field::new("level", DataType::Utf8, true),
        Field::new("verb", DataType::Utf8, true),
        Field::new("requestURI", DataType::Utf8, true),
        Field::new("userAgent", DataType::Utf8, true),
        Field::new("requestReceivedTimestamp", ts.clone(), true),
        Field::new("stageTimestamp", ts, true),
    ]))
}

/// Decodes the NDJSON `bytes` with auditlake's decoder into 8,192-row batches, as the ingest
/// pipeline batches them, handing each to `each` (malformed lines are quarantined and dropped).
pub fn decode_batches(d: &mut EventDecoder, bytes: &[u8], mut each: impl FnMut(RecordBatch)) {
    let mut quarantine = Vec::new();
    for (n, off, line) in lines(bytes) {
        d.decode_line(
            line,
            SourcePos {
                cluster: "bench",
                source: "bench",
                line: Some(n),
                byte_offset: off as u64,
            },
            &mut quarantine,
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

/// `ndjson`'s events wrapped as AKS delivers them through Event Hubs: one
/// `{"records":[...]}` body of `per` diagnostic records per line, each event the API
/// server's stdout line (a JSON string ending in a newline) in `properties.log`.
pub fn aks_records(ndjson: &str, per: usize) -> String {
    let resource = "/SUBSCRIPTIONS/0000/RESOURCEGROUPS/RG/PROVIDERS/MICROSOFT.CONTAINERSERVICE/MANAGEDCLUSTERS/BENCH";
    wrap_lines(ndjson, per, |events| {
        let records: Vec<_> = events
            .iter()
            .map(|e| serde_json::json!({"operationName": "Microsoft.ContainerService/managedClusters/diagnosticLogs/Read",
                "category": "kube-audit", "resourceId": resource, "time": "2026-11-01T03:12:00.0000000Z",
                "properties": {"log": format!("{e}\n"), "stream": "stdout", "pod": "kube-apiserver-1"}}))
            .collect();
        serde_json::json!({ "records": records })
    })
}

/// `ndjson`'s events wrapped as EKS delivers them through a CloudWatch Logs subscription
/// (un-gzipped): one `DATA_MESSAGE` of `per` log events per line.
pub fn eks_subscription(ndjson: &str, per: usize) -> String {
    wrap_lines(ndjson, per, |events| {
        let log_events: Vec<_> = events
            .iter()
            .enumerate()
            .map(|(i, e)| serde_json::json!({"id": format!("{i:056}"), "timestamp": 1_780_000_000_000_i64, "message": e}))
            .collect();
        serde_json::json!({"messageType": "DATA_MESSAGE", "owner": "123456789012",
            "logGroup": "/aws/eks/bench/cluster", "logStream": "kube-apiserver-audit-0a1b2c",
            "subscriptionFilters": ["auditlake"], "logEvents": log_events})
    })
}

/// One line per `per` lines of `ndjson`, made by `wrap`.
fn wrap_lines(ndjson: &str, per: usize, wrap: impl Fn(&[&str]) -> serde_json::Value) -> String {
    let lines: Vec<&str> = ndjson.lines().filter(|l| !l.trim().is_empty()).collect();
    lines
        .chunks(per.max(1))
        .map(|chunk| format!("{}\n", wrap(chunk)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_baseline_decodes_the_same_rows_as_auditlake() {
        let text = auditlake_fixtures::TrafficGenerator::new(3, Default::default()).ndjson(300);
        let (baseline, skipped) = serde_decode_lines(text.as_bytes(), "c");
        assert_eq!((baseline.num_rows(), skipped), (300, 0));
        let mut d = auditlake_schema::EventDecoder::new(Default::default());
        let mut q = Vec::new();
        for (n, off, line) in auditlake_schema::lines(text.as_bytes()) {
            let pos = auditlake_schema::SourcePos {
                cluster: "c",
                source: "bench",
                line: Some(n),
                byte_offset: off as u64,
            };
            d.decode_line(line, pos, &mut q);
        }
        let ours = d.finish_batch().unwrap();
        for name in [
            "audit_id",
            "verb",
            "user_groups",
            "response_code",
            "request_received_at",
            "stage_at",
        ] {
            assert_eq!(
                baseline.column_by_name(name),
                ours.column_by_name(name),
                "{name}"
            );
        }
    }
}
