//! Parquet files of the tables the detectors add to the archive (`findings`,
//! `rbac_history`), laid out like events (`<table>/cluster=<c>/date=<d>/part-*.parquet`)
//! and handed to the archive's commit, so they land in the same manifest record as the
//! events that produced them.

use std::collections::BTreeMap;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

pub(crate) use auditlake_archive::date_of;
use auditlake_archive::{
    FinishedFile, ParquetSettings, Table, data_file_path, encode_file, escape_partition_value,
};

/// Rows of one table waiting for the next commit, grouped by partition.
pub(crate) struct TableBuffer<R> {
    table: Table,
    schema: SchemaRef,
    run_id: String,
    files_written: u64,
    pending: BTreeMap<(String, String), Vec<(i64, R)>>,
}

impl<R> TableBuffer<R> {
    /// A buffer for `table`; `run_id` keeps file names of concurrent or successive runs apart.
    pub(crate) fn new(table: Table, schema: SchemaRef, run_id: &str) -> Self {
        Self {
            table,
            schema,
            run_id: run_id.to_string(),
            files_written: 0,
            pending: BTreeMap::new(),
        }
    }

    /// Adds a row of `cluster` at time `micros`.
    pub(crate) fn push(&mut self, cluster: &str, micros: i64, row: R) {
        self.pending
            .entry((cluster.to_string(), date_of(micros)))
            .or_default()
            .push((micros, row));
    }

    /// Drops what is pending (its rows will be produced again: the events they came from
    /// are being replayed).
    pub(crate) fn discard(&mut self) {
        self.pending.clear();
    }

    /// Encodes what is pending into one Parquet file per partition, with `to_batch` building
    /// the columns of a partition's rows.
    pub(crate) fn take_files(
        &mut self,
        to_batch: impl Fn(&SchemaRef, &[(i64, R)]) -> Result<RecordBatch, String>,
    ) -> Result<Vec<FinishedFile>, String> {
        let mut files = Vec::new();
        for ((cluster, date), rows) in std::mem::take(&mut self.pending) {
            let batch = to_batch(&self.schema, &rows)?;
            let bytes = encode_file(self.table, &self.schema, &batch, ParquetSettings::default())
                .map_err(|e| format!("encoding {} Parquet: {e}", self.table.name()))?;
            self.files_written += 1;
            files.push(FinishedFile {
                table: self.table,
                relative_path: data_file_path(
                    self.table,
                    &format!("cluster={}/date={date}", escape_partition_value(&cluster)),
                    &self.run_id,
                    self.files_written,
                ),
                min_micros: rows.iter().map(|r| r.0).min().unwrap_or(0),
                max_micros: rows.iter().map(|r| r.0).max().unwrap_or(0),
                rows_root: None,
                rows: rows.len() as u64,
                cluster,
                bytes: bytes.into(),
            });
        }
        Ok(files)
    }
}
