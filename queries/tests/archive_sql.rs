//! Ingest -> archive -> SQL, end to end on real files, Parquet and DataFusion.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! (One test binary: linking DataFusion is slow.)

use std::io::Write;
use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int32Type, TimestampMicrosecondType};
use auditlake_fixtures::{Mix, TrafficGenerator, data_dir};
use auditlake_ingest::{Archive, ArchiveLocation, IngestOptions, IngestSummary, Input};
use auditlake_queries::{ArchiveSession, OutputFormat, write_batches};
use auditlake_schema::timestamp::parse_rfc3339_micros;
use proptest::prelude::*;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn archive_at(dir: &Path) -> Archive {
    Archive::open(ArchiveLocation::parse(dir.to_str().unwrap()).unwrap()).unwrap()
}

async fn ingest_files(archive: &Archive, cluster: &str, files: &[&Path]) -> IngestSummary {
    let inputs = files.iter().map(|p| Input::File(p.to_path_buf())).collect();
    auditlake_ingest::ingest(archive, inputs, IngestOptions::new(cluster), None)
        .await
        .unwrap()
}

async fn ingest_handwritten(archive: &Archive, cluster: &str) -> IngestSummary {
    ingest_files(
        archive,
        cluster,
        &[&data_dir().join("samples/handwritten.ndjson")],
    )
    .await
}

async fn query(archive: &Archive, sql: &str) -> Vec<RecordBatch> {
    let session = ArchiveSession::open(archive).await.unwrap();
    session.sql(sql).await.unwrap().1
}

/// Each row as a JSON object: strings, lists of strings, integers, timestamps as µs.
fn rows_as_json(batches: &[RecordBatch]) -> Vec<serde_json::Map<String, Value>> {
    let mut rows = Vec::new();
    for b in batches {
        for i in 0..b.num_rows() {
            let mut row = serde_json::Map::new();
            for (field, col) in b.schema().fields().iter().zip(b.columns()) {
                let v = if col.is_null(i) {
                    Value::Null
                } else {
                    match field.data_type() {
                        DataType::Utf8 => json!(col.as_string::<i32>().value(i)),
                        DataType::Utf8View => json!(col.as_string_view().value(i)),
                        DataType::Int32 => json!(col.as_primitive::<Int32Type>().value(i)),
                        DataType::Int64 => {
                            json!(col.as_primitive::<arrow::datatypes::Int64Type>().value(i))
                        }
                        DataType::Timestamp(_, _) => {
                            json!(col.as_primitive::<TimestampMicrosecondType>().value(i))
                        }
                        DataType::List(_) => {
                            let l = col.as_list::<i32>().value(i);
                            let s = l.as_string::<i32>();
                            json!((0..s.len()).map(|j| s.value(j)).collect::<Vec<_>>())
                        }
                        other => panic!("unexpected column type {other}"),
                    }
                };
                row.insert(field.name().clone(), v);
            }
            rows.push(row);
        }
    }
    rows
}

/// Parses a JSON-text column back into a value for comparison.
fn json_col(row: &serde_json::Map<String, Value>, name: &str) -> Value {
    match &row[name] {
        Value::Null => Value::Null,
        Value::String(s) => {
            serde_json::from_str(s).unwrap_or_else(|e| panic!("{name} is not JSON: {e}: {s}"))
        }
        other => panic!("{name}: {other}"),
    }
}

fn opt(v: &Value) -> Value {
    if v.is_null() { Value::Null } else { v.clone() }
}

/// Asserts that one archived row holds exactly the values of its source event.
fn assert_row_matches_source(row: &serde_json::Map<String, Value>, src: &Value, cluster: &str) {
    let ctx = format!("auditID {}", src["auditID"]);
    assert_eq!(row["cluster"], json!(cluster), "{ctx}");
    assert_eq!(row["event_api_version"], src["apiVersion"], "{ctx}");
    for (col, key) in [
        ("audit_id", "auditID"),
        ("stage", "stage"),
        ("level", "level"),
        ("verb", "verb"),
        ("request_uri", "requestURI"),
        ("user_agent", "userAgent"),
    ] {
        assert_eq!(row[col], opt(&src[key]), "{ctx}: {col}");
    }
    for (prefix, key) in [("user", "user"), ("impersonated", "impersonatedUser")] {
        let u = &src[key];
        assert_eq!(
            row[&format!("{prefix}_username")],
            opt(&u["username"]),
            "{ctx}"
        );
        assert_eq!(row[&format!("{prefix}_uid")], opt(&u["uid"]), "{ctx}");
        assert_eq!(row[&format!("{prefix}_groups")], opt(&u["groups"]), "{ctx}");
        assert_eq!(
            json_col(row, &format!("{prefix}_extra")),
            opt(&u["extra"]),
            "{ctx}"
        );
    }
    assert_eq!(row["source_ips"], opt(&src["sourceIPs"]), "{ctx}");
    let o = &src["objectRef"];
    for (col, key) in [
        ("resource", "resource"),
        ("subresource", "subresource"),
        ("namespace", "namespace"),
        ("name", "name"),
        ("object_uid", "uid"),
        ("api_group", "apiGroup"),
        ("api_version", "apiVersion"),
        ("resource_version", "resourceVersion"),
    ] {
        assert_eq!(row[col], opt(&o[key]), "{ctx}: {col}");
    }
    let rs = &src["responseStatus"];
    assert_eq!(row["response_code"], opt(&rs["code"]), "{ctx}");
    assert_eq!(row["response_status"], opt(&rs["status"]), "{ctx}");
    assert_eq!(row["response_reason"], opt(&rs["reason"]), "{ctx}");
    assert_eq!(row["response_message"], opt(&rs["message"]), "{ctx}");
    assert_eq!(
        json_col(row, "response_details"),
        opt(&rs["details"]),
        "{ctx}"
    );
    let ann = &src["annotations"];
    assert_eq!(json_col(row, "annotations"), opt(ann), "{ctx}");
    assert_eq!(
        row["authz_decision"],
        opt(&ann["authorization.k8s.io/decision"]),
        "{ctx}"
    );
    assert_eq!(
        row["authz_reason"],
        opt(&ann["authorization.k8s.io/reason"]),
        "{ctx}"
    );
    assert_eq!(
        json_col(row, "request_object"),
        opt(&src["requestObject"]),
        "{ctx}"
    );
    assert_eq!(
        json_col(row, "response_object"),
        opt(&src["responseObject"]),
        "{ctx}"
    );
    let micros = |k: &str| json!(parse_rfc3339_micros(src[k].as_str().unwrap()).unwrap());
    assert_eq!(
        row["request_received_at"],
        micros("requestReceivedTimestamp"),
        "{ctx}"
    );
    assert_eq!(row["stage_at"], micros("stageTimestamp"), "{ctx}");
    assert_eq!(row["unmapped"], Value::Null, "{ctx}");
}

fn line_of(source_ref: &Value) -> usize {
    source_ref
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// Generated events -> ingest -> SQL returns, for every column, the source JSON's values.
    #[test]
    fn round_trip_every_column(seed in any::<u64>(), reads in 0u32..10, writes in 0u32..10, rbac in 1u32..10) {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("audit.log");
        let text = TrafficGenerator::new(seed, Mix { reads, writes, rbac }).ndjson(400);
        std::fs::write(&src_path, &text).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let archive = archive_at(&dir.path().join("archive"));
        let rows = rt.block_on(async {
            let s = ingest_files(&archive, "rt", &[&src_path]).await;
            assert_eq!((s.events, s.quarantined), (400, 0));
            rows_as_json(&query(&archive, "SELECT * FROM events").await)
        });
        prop_assert_eq!(rows.len(), 400);
        let sources: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let mut seen = vec![false; sources.len()];
        for row in &rows {
            let line = line_of(&row["source_ref"]);
            prop_assert!(!seen[line - 1], "line {} twice", line);
            seen[line - 1] = true;
            assert_row_matches_source(row, &sources[line - 1], "rt");
        }
    }
}

#[tokio::test]
async fn partition_pruning_reads_only_the_matching_files() {
    let dir = tempfile::tempdir().unwrap();
    let archive = archive_at(dir.path());
    let sample = data_dir().join("samples/handwritten.ndjson");
    ingest_files(&archive, "alpha", &[&sample]).await;
    ingest_files(&archive, "beta", &[&sample]).await;
    let plan = query(&archive, "EXPLAIN SELECT audit_id, verb FROM events WHERE cluster = 'alpha' AND date = '2026-11-01' AND hour = '04'").await;
    let text = arrow::util::pretty::pretty_format_batches(&plan)
        .unwrap()
        .to_string();
    let physical = text.split("physical_plan").nth(1).expect("a physical plan");
    assert!(
        physical.contains("cluster=alpha/date=2026-11-01/hour=04/part-"),
        "{text}"
    );
    for other in ["cluster=beta", "hour=03", "hour=05"] {
        assert!(
            !physical.contains(other),
            "{other} should be pruned:\n{text}"
        );
    }
    let counts = rows_as_json(
        &query(
            &archive,
            // `cluster` after a comma: DataFusion's generic dialect would take it for `CLUSTER BY`.
            "SELECT hour, cluster, count(*) AS n FROM events GROUP BY cluster, hour ORDER BY cluster, hour",
        )
        .await,
    );
    let got: Vec<_> = counts
        .iter()
        .map(|r| (r["cluster"].clone(), r["hour"].clone(), r["n"].clone()))
        .collect();
    let expect = |c: &str| {
        vec![
            (json!(c), json!("03"), json!(4)),
            (json!(c), json!("04"), json!(2)),
            (json!(c), json!("05"), json!(2)),
        ]
    };
    assert_eq!(got, [expect("alpha"), expect("beta")].concat());
}

#[tokio::test]
async fn json_functions_reach_into_request_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let archive = archive_at(dir.path());
    ingest_handwritten(&archive, "c1").await;
    let rows = rows_as_json(
        &query(
            &archive,
            "SELECT user_username, json_get_str(request_object, 'roleRef', 'name') AS role, \
             json_get_str(json_get_json(request_object, 'subjects'), 0, 'name') AS subject \
             FROM events WHERE resource = 'clusterrolebindings' AND verb = 'create'",
        )
        .await,
    );
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0]["user_username"],
        "system:serviceaccount:ci:deployer"
    );
    assert_eq!(rows[0]["role"], "cluster-admin");
    assert_eq!(rows[0]["subject"], "deployer");
}

#[tokio::test]
async fn malformed_input_is_quarantined_and_the_manifest_chain_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let archive_dir = dir.path().join("archive");
    let archive = archive_at(&archive_dir);
    // gzip the malformed sample so the gzip path is exercised too.
    let gz_path = dir.path().join("malformed.ndjson.gz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&std::fs::read(data_dir().join("samples/malformed.ndjson")).unwrap())
        .unwrap();
    std::fs::write(&gz_path, gz.finish().unwrap()).unwrap();
    let s1 = ingest_files(&archive, "q", &[&gz_path]).await;
    assert_eq!((s1.events, s1.quarantined, s1.commits), (1, 6, 1));
    // The run reports the same named counters `serve` exposes, labelled by source.
    let counter = |name: &str| s1.counters.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
    assert_eq!(counter("quarantined{source=file}"), Some(6));
    assert_eq!(counter("events{source=file}"), Some(1));
    assert_eq!(counter("quarantined{source=webhook}"), Some(0));
    let s2 = ingest_handwritten(&archive, "q").await;
    assert_eq!((s2.events, s2.quarantined), (8, 0));

    // Quarantine: one NDJSON record per bad line, with reason, position and raw bytes.
    let qdir = archive_dir.join("_quarantine/cluster=q");
    let qfiles: Vec<_> = std::fs::read_dir(&qdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(qfiles.len(), 1);
    let records: Vec<Value> = std::fs::read_to_string(&qfiles[0])
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 6);
    assert_eq!(records[0]["raw"], "this is not json");
    assert_eq!(records[0]["line"], 1);
    assert_eq!(records[3]["reason"], "missing field `auditID`");
    assert!(
        records[3]["source"]
            .as_str()
            .unwrap()
            .ends_with("malformed.ndjson.gz")
    );

    // Manifest: two records chained by hash; every file's SHA-256 and row count hold.
    let paths = archive.manifest_paths().await.unwrap();
    assert_eq!(paths.len(), 2);
    let (first, first_sha) = archive.read_manifest(&paths[0]).await.unwrap();
    let (second, _) = archive.read_manifest(&paths[1]).await.unwrap();
    assert_eq!((first.sequence, second.sequence), (1, 2));
    assert_eq!(first.previous_sha256, None);
    assert_eq!(second.previous_sha256.as_deref(), Some(first_sha.as_str()));
    assert_eq!(first.quarantine[0].records, 6);
    let mut total = 0;
    for f in first.files.iter().chain(&second.files) {
        let bytes = std::fs::read(archive_dir.join(&f.path)).unwrap();
        assert_eq!(hex::encode(Sha256::digest(&bytes)), f.sha256, "{}", f.path);
        assert_eq!(bytes.len() as u64, f.bytes);
        total += f.rows;
    }
    assert_eq!(total, 9);
    let n = rows_as_json(&query(&archive, "SELECT count(*) AS n FROM events").await);
    assert_eq!(n[0]["n"], 9);
}

#[tokio::test]
async fn output_formats_render_the_same_rows() {
    let dir = tempfile::tempdir().unwrap();
    let archive = archive_at(dir.path());
    ingest_handwritten(&archive, "f").await;
    let session = ArchiveSession::open(&archive).await.unwrap();
    let (schema, batches) = session
        .sql("SELECT audit_id, response_code FROM events WHERE stage = 'Panic' OR response_code = 403 ORDER BY audit_id")
        .await
        .unwrap();
    let render = |f| {
        let mut out = Vec::new();
        write_batches(f, &schema, &batches, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    };
    assert_eq!(
        render(OutputFormat::Csv),
        "audit_id,response_code\n11111111-0000-4000-8000-000000000004,403\n11111111-0000-4000-8000-000000000005,500\n"
    );
    let ndjson = render(OutputFormat::Ndjson);
    assert_eq!(ndjson.lines().count(), 2);
    assert_eq!(
        serde_json::from_str::<Value>(ndjson.lines().next().unwrap()).unwrap()["response_code"],
        403
    );
    let arr: Value = serde_json::from_str(&render(OutputFormat::Json)).unwrap();
    assert_eq!(arr[1]["audit_id"], "11111111-0000-4000-8000-000000000005");
    let table = render(OutputFormat::Table);
    assert!(
        table.contains("| 11111111-0000-4000-8000-000000000005 | 500           |"),
        "{table}"
    );
    let err = session
        .sql("SELECT nope FROM events")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope"), "{err}");
}

#[tokio::test]
async fn an_over_long_line_is_cut_while_reading_and_quarantined_with_its_true_length() {
    let dir = tempfile::tempdir().unwrap();
    let archive_dir = dir.path().join("archive");
    let archive = archive_at(&archive_dir);
    let mut text = TrafficGenerator::new(5, Mix::default()).ndjson(3);
    let huge = format!(r#"{{"auditID":"huge","pad":"{}"}}"#, "x".repeat(10_000));
    text.insert_str(0, &format!("{huge}\n"));
    let path = dir.path().join("audit.log");
    std::fs::write(&path, &text).unwrap();
    let mut options = IngestOptions::new("big");
    options.decoder.max_event_bytes = 4096;
    options.decoder.max_quarantined_bytes = 100;
    let s = auditlake_ingest::ingest(&archive, vec![Input::File(path)], options, None)
        .await
        .unwrap();
    assert_eq!((s.events, s.quarantined), (3, 1));
    let qdir = archive_dir.join("_quarantine/cluster=big");
    let qfile = std::fs::read_dir(&qdir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let record: Value =
        serde_json::from_str(std::fs::read_to_string(qfile).unwrap().trim()).unwrap();
    assert_eq!(
        record["reason"],
        format!(
            "line of {} bytes exceeds max_event_bytes (4096)",
            huge.len()
        )
    );
    assert_eq!(record["raw_len"], huge.len());
    assert_eq!(record["raw_truncated"], true);
    assert_eq!(record["raw"].as_str().unwrap().len(), 100);
    assert_eq!(record["line"], 1);
}

/// Copies a directory tree (the fixture archives are read-only inputs).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// Some file of a partition directory (a committed one, in these tests).
fn first_file(partition: &Path) -> std::fs::DirEntry {
    std::fs::read_dir(partition)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
}

fn count(batches: &[RecordBatch]) -> i64 {
    batches[0]
        .column(0)
        .as_primitive::<arrow::datatypes::Int64Type>()
        .value(0)
}

#[tokio::test]
async fn a_parquet_file_no_manifest_record_names_is_not_counted_and_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let archive = archive_at(dir.path());
    let summary = ingest_handwritten(&archive, "x").await;
    let committed = summary.events as i64;
    let session = ArchiveSession::open(&archive).await.unwrap();
    assert!(session.unattested().is_empty());
    // A real Parquet file of real events, dropped next to the committed ones: what a crash
    // between the puts and the manifest record leaves, or what someone could plant.
    let partition = dir.path().join("events/cluster=x/date=2026-11-01/hour=03");
    let committed_file = first_file(&partition);
    let stray = partition.join("part-planted-000001.parquet");
    std::fs::copy(committed_file.path(), &stray).unwrap();
    let session = ArchiveSession::open(&archive).await.unwrap();
    assert_eq!(
        session.unattested(),
        ["events/cluster=x/date=2026-11-01/hour=03/part-planted-000001.parquet"]
    );
    let (_, batches) = session.sql("SELECT count(*) FROM events").await.unwrap();
    assert_eq!(count(&batches), committed, "the stray file was counted");
    let (_, batches) = session
        .sql("SELECT count(*) FROM events WHERE cluster = 'x' AND date = '2026-11-01' AND hour = '03'")
        .await
        .unwrap();
    assert_eq!(
        count(&batches),
        4,
        "the stray file was counted in its partition"
    );
}

#[tokio::test]
async fn an_archive_written_by_manifest_v1_is_read_and_extended_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&data_dir().join("../archive-v1"), dir.path());
    let archive = archive_at(dir.path());
    let session = ArchiveSession::open(&archive).await.unwrap();
    assert!(
        session.unattested().is_empty(),
        "{:?}",
        session.unattested()
    );
    for (sql, n) in [
        ("SELECT count(*) FROM events", 309),
        ("SELECT count(*) FROM events WHERE cluster = 'prod-eu'", 9),
        ("SELECT count(*) FROM findings", 15),
        ("SELECT count(*) FROM rbac_history", 2),
    ] {
        let (_, batches) = session.sql(sql).await.unwrap();
        assert_eq!(count(&batches), n, "{sql}");
    }
    let records = archive.records().await.unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].0.format, "auditlake-manifest/1");
    assert_eq!(records[0].0.quarantine[0].records, 6);
    assert_eq!(
        records[1]
            .0
            .files
            .iter()
            .filter(|f| f.table == "findings")
            .count(),
        1
    );
    // A v2 commit chains after the v1 records, whose bytes stay as they were.
    let v1_head = std::fs::read(dir.path().join("_manifest/00000000000000000002.json")).unwrap();
    let added = ingest_handwritten(&archive, "prod-eu").await.events as i64;
    let records = archive.records().await.unwrap();
    assert_eq!(records.len(), 3);
    assert_eq!(records[2].0.format, auditlake_archive::MANIFEST_FORMAT);
    assert_eq!(
        records[2].0.previous_sha256.as_deref(),
        Some(hex::encode(Sha256::digest(&v1_head)).as_str())
    );
    assert_eq!(
        std::fs::read(dir.path().join("_manifest/00000000000000000002.json")).unwrap(),
        v1_head
    );
    let batches = query(&archive, "SELECT count(*) FROM events").await;
    assert_eq!(count(&batches), 309 + added);
}

#[tokio::test]
async fn files_of_a_commit_that_never_got_its_record_are_deleted_and_never_counted() {
    let dir = tempfile::tempdir().unwrap();
    let archive = archive_at(dir.path());
    let committed = ingest_handwritten(&archive, "x").await.events as i64;
    let partition = dir.path().join("events/cluster=x/date=2026-11-01/hour=03");
    let committed_file = first_file(&partition);
    let orphan_rel = "events/cluster=x/date=2026-11-01/hour=03/part-dead-000001.parquet";
    std::fs::copy(committed_file.path(), dir.path().join(orphan_rel)).unwrap();
    std::fs::create_dir_all(dir.path().join("_intents")).unwrap();
    std::fs::write(
        dir.path().join("_intents/dead-000000.json"),
        serde_json::to_vec(&json!({"writer": "dead", "paths": [orphan_rel]})).unwrap(),
    )
    .unwrap();
    // Too young: its writer may still be committing.
    assert_eq!(
        archive
            .clean_orphans(std::time::Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    assert!(dir.path().join(orphan_rel).exists());
    assert_eq!(
        archive
            .clean_orphans(std::time::Duration::ZERO)
            .await
            .unwrap(),
        1
    );
    assert!(!dir.path().join(orphan_rel).exists());
    assert!(
        committed_file.path().exists(),
        "a committed file was deleted"
    );
    assert!(!dir.path().join("_intents/dead-000000.json").exists());
    let batches = query(&archive, "SELECT count(*) FROM events").await;
    assert_eq!(count(&batches), committed);
}

#[tokio::test]
async fn a_location_that_holds_no_archive_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let location = ArchiveLocation::parse(dir.path().to_str().unwrap()).unwrap();
    let e = Archive::open_existing(location)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("holds no auditlake archive"), "{e}");
    assert!(e.contains(dir.path().to_str().unwrap()), "{e}");
    let missing = dir.path().join("nope");
    let location = ArchiveLocation::parse(missing.to_str().unwrap()).unwrap();
    let e = Archive::open_existing(location)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope"), "{e}");
    assert!(!missing.exists(), "a reader created the directory");
}

/// The figure `name=N` in an `EXPLAIN ANALYZE` text.
fn metric(plan: &str, name: &str) -> u64 {
    let at = plan
        .find(&format!("{name}="))
        .unwrap_or_else(|| panic!("no {name} in {plan}"));
    plan[at + name.len() + 1..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_users_first_actions_read_only_the_row_groups_that_can_hold_them() {
    // An hour's events in arrival order, in 20 row groups: the first row groups hold the
    // user's earliest actions, so once they are found the scan can skip the rest (the TopK
    // threshold against each row group's time range). Reading the page index stopped that.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    std::fs::write(
        &path,
        TrafficGenerator::new(11, Mix::default()).ndjson(20_000),
    )
    .unwrap();
    let archive = archive_at(&dir.path().join("archive"));
    let mut options = IngestOptions::new("c1");
    options.writer.row_group_rows = 1_000;
    let s = auditlake_ingest::ingest(&archive, vec![Input::File(path)], options, None)
        .await
        .unwrap();
    assert_eq!(s.events, 20_000);
    let files = query(&archive, "SELECT count(DISTINCT hour) AS n FROM events").await;
    assert_eq!(count(&files), 1, "the events should lie in one hour");
    let top = rows_as_json(
        &query(
            &archive,
            "SELECT user_username FROM events GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1",
        )
        .await,
    );
    let user = top[0]["user_username"].as_str().unwrap().to_string();
    let sql = format!(
        "SELECT request_received_at, audit_id, stage FROM events WHERE user_username = '{user}' \
         ORDER BY request_received_at, audit_id, stage"
    );
    let first = rows_as_json(&query(&archive, &format!("{sql} LIMIT 5")).await);
    let all = rows_as_json(&query(&archive, &sql).await);
    assert!(all.len() > 100, "{} rows", all.len());
    assert_eq!(first, all[..5]);
    let plan = arrow::util::pretty::pretty_format_batches(
        &query(&archive, &format!("EXPLAIN ANALYZE {sql} LIMIT 5")).await,
    )
    .unwrap()
    .to_string();
    let skipped = metric(&plan, "row_groups_pruned_dynamic_filter");
    assert!(skipped >= 15, "{skipped} of 20 row groups skipped:\n{plan}");
}
