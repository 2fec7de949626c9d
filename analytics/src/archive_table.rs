//! Parquet files of the tables the detectors add to the archive (`findings`,
//! `rbac_history`), laid out like events (`<table>/cluster=<c>/date=<d>/part-*.parquet`)
//! and handed to the archive's commit, so they land in the same manifest record as the
//! events that produced them.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;

use auditlake_schema::timestamp::civil_from_days;
use auditlake_schema::{FinishedFile, escape_partition_value};

/// `YYYY-MM-DD` (UTC) of a time in microseconds.
pub(crate) fn date_of(micros: i64) -> String {
    let (y, m, d) = civil_from_days(micros.div_euclid(86_400_000_000));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Rows of one table waiting for the next commit, grouped by partition.
pub(crate) struct TableBuffer<R> {
    dir: &'static str,
    schema: SchemaRef,
    run_id: String,
    files_written: u64,
    pending: BTreeMap<(String, String), Vec<(i64, R)>>,
}

impl<R> TableBuffer<R> {
    /// A buffer for the table in `dir`; `run_id` keeps file names of concurrent or successive
    /// runs apart.
    pub(crate) fn new(dir: &'static str, schema: SchemaRef, run_id: &str) -> Self {
        Self {
            dir,
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
            let bytes = encode(&self.schema, &batch)
                .map_err(|e| format!("encoding {} Parquet: {e}", self.dir))?;
            self.files_written += 1;
            files.push(FinishedFile {
                relative_path: format!(
                    "{}/cluster={}/date={date}/part-{}-{:06}.parquet",
                    self.dir,
                    escape_partition_value(&cluster),
                    self.run_id,
                    self.files_written
                ),
                min_micros: rows.iter().map(|r| r.0).min().unwrap_or(0),
                max_micros: rows.iter().map(|r| r.0).max().unwrap_or(0),
                rows: rows.len() as u64,
                cluster,
                bytes: bytes.into(),
            });
        }
        Ok(files)
    }
}

fn encode(
    schema: &SchemaRef,
    batch: &RecordBatch,
) -> Result<Vec<u8>, datafusion::parquet::errors::ParquetError> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .build();
    let mut writer = ArrowWriter::try_new(Vec::new(), Arc::clone(schema), Some(props))?;
    writer.write(batch)?;
    writer.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_days() {
        assert_eq!(date_of(0), "1970-01-01");
        assert_eq!(date_of(1_793_491_199_999_999), "2026-10-31");
        assert_eq!(date_of(1_793_491_200_000_000), "2026-11-01");
    }
}
