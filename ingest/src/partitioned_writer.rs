//! Splits event batches by Hive partition (`cluster=/date=/hour=` of `request_received_at`)
//! and encodes each partition's rows as ZSTD Parquet files cut by rows and bytes.
//!
//! A source that knows when each event arrived (the webhook) sets an [`ArrivalWindow`]: an
//! event whose request time lies far outside it (a broken clock, or a forged timestamp) is
//! filed under the hour it *arrived* instead, keeping its true `request_received_at`, so one
//! request can never open thousands of partitions.

use std::collections::BTreeMap;

use auditlake_archive::{
    FinishedFile, ParquetSettings, Table, TableFileEncoder, data_file_path, events_partition_dir,
};

use arrow::array::{AsArray, RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::TimestampMicrosecondType;
use auditlake_archive::row_tree::{GROUP_ROOTS_KEY, RowTree, encode_group_roots, row_leaves};
use auditlake_schema::{col, events_file_schema};
use parquet::file::metadata::KeyValue;

use crate::error::IngestError;

/// Sizes of the files the writer produces.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// A file is cut once it holds this many events.
    pub max_file_rows: usize,
    /// A file is cut once its encoded size reaches this many bytes (bounds memory per partition).
    pub max_file_bytes: usize,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// ZSTD level (1 is fast and already compresses audit JSON ~8x).
    pub zstd_level: i32,
    /// Partitions open at once; the one written least recently is cut beyond this.
    pub max_open_partitions: usize,
    /// Request times accepted for partitioning around each event's arrival (`ingested_at`);
    /// `None` partitions by request time whatever it is (backfills of old files).
    pub arrival_window: Option<ArrivalWindow>,
    /// Hash every row into the file's row tree (signed archives: one event can be proven).
    pub row_proofs: bool,
}

/// How far an event's request time may lie from its arrival for the event to be filed
/// under its request time; beyond, it is filed under its arrival hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArrivalWindow {
    /// µs before arrival (late delivery: retries, buffering, replays).
    pub behind_micros: i64,
    /// µs after arrival (clock skew).
    pub ahead_micros: i64,
}

impl ArrivalWindow {
    /// The webhook's window: 7 days behind (the apiserver retries for minutes; managed
    /// clouds' pipelines can lag by hours), 1 hour ahead.
    pub const WEBHOOK: Self = Self {
        behind_micros: 7 * 24 * 3_600_000_000,
        ahead_micros: 3_600_000_000,
    };

    /// The time an event arriving at `arrived` with request time `request` is filed under.
    pub fn partition_time(&self, request: i64, arrived: i64) -> i64 {
        if request < arrived.saturating_sub(self.behind_micros)
            || request > arrived.saturating_add(self.ahead_micros)
        {
            arrived
        } else {
            request
        }
    }
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            max_file_rows: 1_000_000,
            max_file_bytes: 64 << 20,
            row_group_rows: 64 * 1024,
            zstd_level: 1,
            max_open_partitions: 8,
            arrival_window: None,
            row_proofs: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct PartitionKey {
    cluster: String,
    hour: i64,
}

struct OpenFile {
    writer: TableFileEncoder,
    rows: u64,
    min_micros: i64,
    max_micros: i64,
    last_write: u64,
    /// The tree over its rows, when rows are hashed.
    rows_tree: Option<RowTree>,
}

/// Encodes batches into per-partition Parquet files.
pub struct PartitionedWriter {
    writer_id: String,
    options: WriterOptions,
    settings: ParquetSettings,
    open: BTreeMap<PartitionKey, OpenFile>,
    files_started: u64,
    writes: u64,
    out_of_window: u64,
    /// Leaf hashes of the batch being written, when rows are hashed (reused).
    leaves: Vec<[u8; 32]>,
}

impl PartitionedWriter {
    /// A writer whose file names carry `writer_id` (unique per process run).
    pub fn new(writer_id: &str, options: WriterOptions) -> Self {
        let settings = ParquetSettings {
            row_group_rows: options.row_group_rows,
            zstd_level: options.zstd_level,
        };
        Self {
            writer_id: writer_id.to_string(),
            options,
            settings,
            open: BTreeMap::new(),
            files_started: 0,
            writes: 0,
            out_of_window: 0,
            leaves: Vec::new(),
        }
    }

    /// Names the files finished from now on `part-<stem>-<n>` (n from 1 again when the stem
    /// changes), instead of after the writer id.
    pub fn set_stem(&mut self, stem: &str) {
        if self.writer_id != stem {
            self.writer_id = stem.to_string();
            self.files_started = 0;
        }
    }

    /// Rows buffered in files not yet finished.
    pub fn buffered_rows(&self) -> u64 {
        self.open.values().map(|f| f.rows).sum()
    }

    /// Events filed under their arrival hour since the last call (see [`ArrivalWindow`]).
    pub fn take_out_of_window(&mut self) -> u64 {
        std::mem::take(&mut self.out_of_window)
    }

    /// Adds a batch of the events schema; returns the files that this completed.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<Vec<FinishedFile>, IngestError> {
        let mut done = Vec::new();
        if batch.num_rows() == 0 {
            return Ok(done);
        }
        let clusters = batch.column(0).as_string::<i32>();
        let received = batch
            .column_by_name(col::REQUEST_RECEIVED_AT)
            .ok_or_else(|| IngestError::Pipeline("batch without request_received_at".into()))?
            .as_primitive::<TimestampMicrosecondType>();
        let arrived = match self.options.arrival_window {
            Some(w) => Some((
                w,
                batch
                    .column_by_name(col::INGESTED_AT)
                    .ok_or_else(|| IngestError::Pipeline("batch without ingested_at".into()))?
                    .as_primitive::<TimestampMicrosecondType>(),
            )),
            None => None,
        };
        let mut outliers = 0u64;
        let mut hour_of = |i: usize| {
            let t = received.value(i);
            let t = match arrived {
                Some((w, a)) => {
                    let p = w.partition_time(t, a.value(i));
                    outliers += u64::from(p != t);
                    p
                }
                None => t,
            };
            t.div_euclid(3_600_000_000)
        };
        let hours: Vec<i64> = (0..batch.num_rows()).map(&mut hour_of).collect();
        self.out_of_window += outliers;
        let hour_of = |i: usize| hours[i];
        let first = (clusters.value(0), hour_of(0));
        let uniform =
            (1..batch.num_rows()).all(|i| clusters.value(i) == first.0 && hour_of(i) == first.1);
        if uniform {
            let key = PartitionKey {
                cluster: first.0.to_string(),
                hour: first.1,
            };
            self.write_partition(key, batch, &mut done)?;
        } else {
            let mut groups: BTreeMap<(&str, i64), Vec<u32>> = BTreeMap::new();
            for i in 0..batch.num_rows() {
                groups
                    .entry((clusters.value(i), hour_of(i)))
                    .or_default()
                    .push(i as u32);
            }
            for ((cluster, hour), idx) in groups {
                let part = take_record_batch(batch, &UInt32Array::from(idx))
                    .map_err(|e| IngestError::Pipeline(format!("splitting batch: {e}")))?;
                self.write_partition(
                    PartitionKey {
                        cluster: cluster.to_string(),
                        hour,
                    },
                    &part,
                    &mut done,
                )?;
            }
        }
        while self.open.len() > self.options.max_open_partitions {
            let oldest = self
                .open
                .iter()
                .min_by_key(|(_, f)| f.last_write)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                done.push(self.finish_partition(&k)?);
            }
        }
        Ok(done)
    }

    fn write_partition(
        &mut self,
        key: PartitionKey,
        batch: &RecordBatch,
        done: &mut Vec<FinishedFile>,
    ) -> Result<(), IngestError> {
        self.writes += 1;
        let received = batch
            .column_by_name(col::REQUEST_RECEIVED_AT)
            .map(|c| c.as_primitive::<TimestampMicrosecondType>().clone());
        let (min, max) = match &received {
            Some(r) => (
                arrow::compute::min(r).unwrap_or(i64::MAX),
                arrow::compute::max(r).unwrap_or(i64::MIN),
            ),
            None => (i64::MAX, i64::MIN),
        };
        // Drop `cluster`: it is in the partition path.
        let file_batch = RecordBatch::try_new(events_file_schema(), batch.columns()[1..].to_vec())
            .map_err(|e| IngestError::Pipeline(format!("projecting batch: {e}")))?;
        if !self.open.contains_key(&key) {
            let writer =
                TableFileEncoder::new(Table::Events, &events_file_schema(), self.settings)?;
            self.open.insert(
                key.clone(),
                OpenFile {
                    writer,
                    rows: 0,
                    min_micros: i64::MAX,
                    max_micros: i64::MIN,
                    last_write: 0,
                    rows_tree: self.options.row_proofs.then(RowTree::default),
                },
            );
        }
        let writes = self.writes;
        let max_rows = self.options.max_file_rows as u64;
        let max_bytes = self.options.max_file_bytes;
        let full = {
            let f = self
                .open
                .get_mut(&key)
                .ok_or_else(|| IngestError::Pipeline("partition vanished".into()))?;
            f.writer.write(&file_batch)?;
            if let Some(tree) = &mut f.rows_tree {
                self.leaves.clear();
                row_leaves(&file_batch, &mut self.leaves)
                    .map_err(|e| IngestError::Pipeline(e.to_string()))?;
                tree.extend(&self.leaves);
            }
            f.rows += file_batch.num_rows() as u64;
            f.min_micros = f.min_micros.min(min);
            f.max_micros = f.max_micros.max(max);
            f.last_write = writes;
            f.rows >= max_rows || f.writer.encoded_bytes() >= max_bytes
        };
        if full {
            done.push(self.finish_partition(&key)?);
        }
        Ok(())
    }

    fn finish_partition(&mut self, key: &PartitionKey) -> Result<FinishedFile, IngestError> {
        let mut f = self
            .open
            .remove(key)
            .ok_or_else(|| IngestError::Pipeline("partition vanished".into()))?;
        // The group roots go in the footer, so proving a row reads only its group.
        let rows_root = f.rows_tree.take().map(|tree| {
            let (root, groups) = tree.finish();
            f.writer.append_key_value_metadata(KeyValue::new(
                GROUP_ROOTS_KEY.to_string(),
                encode_group_roots(&groups),
            ));
            root
        });
        // The buffer grew by doubling, so it holds less than twice the file until the commit.
        // Not shrunk to fit: mimalloc (the binary's allocator) keeps a block shrunk by less
        // than half where it is, so that freed nothing. Not reserved whole up front either:
        // address space counts against a data limit (`ulimit -d`, under which
        // tests/serve_faults.rs runs) as memory does.
        let (bytes, sha256) = f.writer.finish()?;
        self.files_started += 1;
        let relative_path = data_file_path(
            Table::Events,
            &events_partition_dir(&key.cluster, key.hour),
            &self.writer_id,
            self.files_started,
        );
        Ok(FinishedFile {
            table: Table::Events,
            relative_path,
            cluster: key.cluster.clone(),
            bytes: bytes.into(),
            sha256,
            rows: f.rows,
            min_micros: f.min_micros,
            max_micros: f.max_micros,
            rows_root,
        })
    }

    /// Finishes every open file (end of input, or before a commit).
    pub fn finish_all(&mut self) -> Result<Vec<FinishedFile>, IngestError> {
        let keys: Vec<PartitionKey> = self.open.keys().cloned().collect();
        keys.iter().map(|k| self.finish_partition(k)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn far_off_request_times_are_filed_under_their_arrival() {
        let w = ArrivalWindow::WEBHOOK;
        let arrived = 1_793_502_720_000_000;
        let hour = 3_600_000_000;
        assert_eq!(
            w.partition_time(arrived - 2 * hour, arrived),
            arrived - 2 * hour
        );
        assert_eq!(
            w.partition_time(arrived - 6 * 24 * hour, arrived),
            arrived - 6 * 24 * hour
        );
        assert_eq!(w.partition_time(arrived - 8 * 24 * hour, arrived), arrived);
        assert_eq!(
            w.partition_time(arrived + 30 * 60_000_000, arrived),
            arrived + 30 * 60_000_000
        );
        assert_eq!(w.partition_time(arrived + 2 * hour, arrived), arrived);
        assert_eq!(w.partition_time(i64::MIN, arrived), arrived);
        assert_eq!(w.partition_time(i64::MAX, i64::MAX), i64::MAX);
    }
}
