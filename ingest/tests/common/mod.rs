//! What the integration tests of the ingest crate share: reading an archive back the way
//! an auditor would (manifest records, then the files they name).
#![allow(clippy::unwrap_used, dead_code)] // tests: a panic is the failure report; each binary uses part

use std::path::Path;

use arrow::array::AsArray;
use auditlake_fixtures::{Mix, TrafficGenerator};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// The value of the metric line starting with `name` (no labels), if present.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Paths of the manifest records (`_manifest/*.json`), in sequence order.
pub fn manifest_records(archive_dir: &Path) -> Vec<std::path::PathBuf> {
    let mut records: Vec<_> = std::fs::read_dir(archive_dir.join("_manifest"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    records.retain(|p: &std::path::PathBuf| p.extension().is_some_and(|e| e == "json"));
    records.sort();
    records
}

/// `(audit_id, stage, source_ref)` of every committed row, read from the manifests' files.
pub fn archived_rows(archive_dir: &Path) -> Vec<(String, String, String)> {
    let mut rows = Vec::new();
    for m in manifest_records(archive_dir) {
        let record: serde_json::Value = serde_json::from_slice(&std::fs::read(m).unwrap()).unwrap();
        for f in record["files"].as_array().unwrap() {
            let file = std::fs::File::open(archive_dir.join(f["path"].as_str().unwrap())).unwrap();
            for batch in ParquetRecordBatchReaderBuilder::try_new(file)
                .unwrap()
                .build()
                .unwrap()
            {
                let batch = batch.unwrap();
                let col = |name: &str| {
                    batch
                        .column_by_name(name)
                        .unwrap()
                        .as_string::<i32>()
                        .clone()
                };
                let (ids, stages, refs) = (col("audit_id"), col("stage"), col("source_ref"));
                for i in 0..batch.num_rows() {
                    rows.push((
                        ids.value(i).to_string(),
                        stages.value(i).to_string(),
                        refs.value(i).to_string(),
                    ));
                }
            }
        }
    }
    rows
}

/// Paths of the `events` files the manifests name.
pub fn event_paths(archive_dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for m in manifest_records(archive_dir) {
        let record: serde_json::Value = serde_json::from_slice(&std::fs::read(m).unwrap()).unwrap();
        for f in record["files"].as_array().unwrap() {
            if f["table"] == "events" {
                out.push(f["path"].as_str().unwrap().to_string());
            }
        }
    }
    assert!(!out.is_empty());
    out
}

/// Paths of the quarantine files the manifests name.
pub fn quarantine_paths(archive_dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for m in manifest_records(archive_dir) {
        let record: serde_json::Value = serde_json::from_slice(&std::fs::read(m).unwrap()).unwrap();
        for q in record["quarantine"].as_array().unwrap() {
            out.push(q["path"].as_str().unwrap().to_string());
        }
    }
    out
}

/// Quarantine records committed (lines of the quarantine files the manifests name).
pub fn quarantined(archive_dir: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for m in manifest_records(archive_dir) {
        let record: serde_json::Value = serde_json::from_slice(&std::fs::read(m).unwrap()).unwrap();
        for q in record["quarantine"].as_array().unwrap() {
            let text =
                std::fs::read_to_string(archive_dir.join(q["path"].as_str().unwrap())).unwrap();
            out.extend(
                text.lines()
                    .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()),
            );
        }
    }
    out
}

pub fn event_list(items: &[serde_json::Value]) -> String {
    serde_json::json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "metadata": {}, "items": items}).to_string()
}

pub fn generated(seed: u64, n: usize) -> Vec<serde_json::Value> {
    TrafficGenerator::new(seed, Mix::default())
        .starting_recently(60)
        .ndjson(n)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
