//! What the integration tests of the ingest crate share: reading an archive back the way
//! an auditor would (manifest records, then the files they name), and a `serve` running in
//! the test's process.
#![allow(clippy::unwrap_used, dead_code)] // tests: a panic is the failure report; each binary uses part

use std::path::Path;

use arrow::array::AsArray;
use auditlake_fixtures::{Mix, TrafficGenerator};
use auditlake_ingest::{
    Archive, ArchiveLocation, Bound, ServeConfig, ServeError, ServeSummary, serve,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tokio::sync::oneshot;

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

/// A server running in this process until `stop` is sent.
pub struct Running {
    pub bound: Bound,
    pub stop: oneshot::Sender<()>,
    pub done: tokio::task::JoinHandle<Result<ServeSummary, ServeError>>,
}

/// Starts `serve` on the archive at `archive_dir` and waits until it is ready.
pub async fn start(archive_dir: &Path, config: ServeConfig) -> Running {
    let archive =
        Archive::open(ArchiveLocation::parse(archive_dir.to_str().unwrap()).unwrap()).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let (bound_tx, bound_rx) = oneshot::channel();
    let done = tokio::spawn(async move {
        serve(
            archive,
            config,
            None,
            async {
                let _ = stopped.await;
            },
            Some(bound_tx),
        )
        .await
    });
    let bound = bound_rx.await.unwrap();
    let running = Running { bound, stop, done };
    // Requests get 503 until the log is replayed, as an apiserver would be told.
    running.wait_readyz(200, 60).await;
    running
}

impl Running {
    pub async fn stop(self) -> ServeSummary {
        let _ = self.stop.send(());
        self.done.await.unwrap().unwrap()
    }

    /// `/readyz`: its status code and text.
    pub async fn readyz(&self) -> (u16, String) {
        let r = reqwest::get(format!("http://{}/readyz", self.bound.ops))
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.bound.ops))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits up to `secs` for `/readyz` to answer `code`; returns its text.
    pub async fn wait_readyz(&self, code: u16, secs: u64) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let (got, text) = self.readyz().await;
            if got == code {
                return text;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "/readyz still {got} ({text}) after {secs} s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}
