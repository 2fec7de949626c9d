//! Parquet files of the tables the detectors add to the archive (`findings`,
//! `rbac_history`), laid out like events (`<table>/cluster=<c>/date=<d>/part-*.parquet`)
//! and handed to the archive's commit, so they land in the same manifest record as the
//! events that produced them.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

pub(crate) use auditlake_archive::date_of;
use auditlake_archive::{
    FinishedFile, ParquetSettings, Table, TableFileEncoder, data_file_path, escape_partition_value,
};

/// Rows a partition gathers before they are encoded into its open file. Encoding them as
/// they come spreads the work over a run: encoded all at the commit, the 20k findings of the
/// 490k-event `auditlake ingest` benchmark (2% of its CPU samples) were encoded after
/// everything else had finished, and the run took ~5% longer.
const ENCODE_ROWS: usize = 4096;

/// Builds the columns of a table from rows (with their times in µs).
pub(crate) type ToBatch<R> = fn(&SchemaRef, &[(i64, R)]) -> Result<RecordBatch, String>;

/// The file of one partition: rows encoded so far, and rows still to encode.
struct OpenFile<R> {
    encoder: TableFileEncoder,
    waiting: Vec<(i64, R)>,
    rows: u64,
    min_micros: i64,
    max_micros: i64,
}

/// Rows of one table waiting for the next commit, grouped by partition, encoded into each
/// partition's file as they come.
pub(crate) struct TableBuffer<R> {
    table: Table,
    schema: SchemaRef,
    run_id: String,
    to_batch: ToBatch<R>,
    files_written: u64,
    pending: BTreeMap<(String, String), OpenFile<R>>,
    /// The first encoding failure since the last commit: reported by `take_files`.
    failed: Option<String>,
}

impl<R> TableBuffer<R> {
    /// A buffer for `table` whose rows become columns through `to_batch`; `run_id` keeps
    /// file names of concurrent or successive runs apart.
    pub(crate) fn new(table: Table, schema: SchemaRef, run_id: &str, to_batch: ToBatch<R>) -> Self {
        Self {
            table,
            schema,
            run_id: run_id.to_string(),
            to_batch,
            files_written: 0,
            pending: BTreeMap::new(),
            failed: None,
        }
    }

    /// Adds a row of `cluster` at time `micros`. After an encoding failure the rows up to
    /// the next commit are dropped: that commit fails anyway, and encoding them again on
    /// every push would cost quadratic time.
    pub(crate) fn push(&mut self, cluster: &str, micros: i64, row: R) {
        if self.failed.is_some() {
            return;
        }
        let key = (cluster.to_string(), date_of(micros));
        let file = match self.pending.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => match open_file(self.table, &self.schema, micros) {
                Ok(file) => e.insert(file),
                Err(err) => {
                    self.failed.get_or_insert(err);
                    return;
                }
            },
        };
        file.min_micros = file.min_micros.min(micros);
        file.max_micros = file.max_micros.max(micros);
        file.rows += 1;
        file.waiting.push((micros, row));
        if file.waiting.len() >= ENCODE_ROWS
            && let Err(e) = encode_waiting(file, &self.schema, self.to_batch)
        {
            self.failed.get_or_insert(encode_error(self.table, e));
        }
    }

    /// Drops what is pending (its rows will be produced again: the events they came from
    /// are being replayed).
    pub(crate) fn discard(&mut self) {
        self.pending.clear();
        self.failed = None;
    }

    /// Closes the file of every partition that has rows since the last call.
    pub(crate) fn take_files(&mut self) -> Result<Vec<FinishedFile>, String> {
        if let Some(e) = self.failed.take() {
            self.pending.clear();
            return Err(e);
        }
        let mut files = Vec::new();
        for ((cluster, date), mut file) in std::mem::take(&mut self.pending) {
            let (bytes, sha256) = encode_waiting(&mut file, &self.schema, self.to_batch)
                .and_then(|()| file.encoder.finish().map_err(|e| e.to_string()))
                .map_err(|e| encode_error(self.table, e))?;
            self.files_written += 1;
            files.push(FinishedFile {
                table: self.table,
                relative_path: data_file_path(
                    self.table,
                    &format!("cluster={}/date={date}", escape_partition_value(&cluster)),
                    &self.run_id,
                    self.files_written,
                ),
                min_micros: file.min_micros,
                max_micros: file.max_micros,
                rows_root: None,
                rows: file.rows,
                cluster,
                bytes: bytes.into(),
                sha256,
            });
        }
        Ok(files)
    }
}

/// A new, empty file of `table` whose first row is at `micros`.
fn open_file<R>(table: Table, schema: &SchemaRef, micros: i64) -> Result<OpenFile<R>, String> {
    let encoder = TableFileEncoder::new(table, schema, ParquetSettings::default())
        .map_err(|e| encode_error(table, e))?;
    Ok(OpenFile {
        encoder,
        waiting: Vec::new(),
        rows: 0,
        min_micros: micros,
        max_micros: micros,
    })
}

fn encode_error(table: Table, e: impl std::fmt::Display) -> String {
    format!("encoding {} Parquet: {e}", table.name())
}

/// Encodes the rows `file` holds unencoded.
fn encode_waiting<R>(
    file: &mut OpenFile<R>,
    schema: &SchemaRef,
    to_batch: ToBatch<R>,
) -> Result<(), String> {
    if file.waiting.is_empty() {
        return Ok(());
    }
    let batch = to_batch(schema, &file.waiting)?;
    file.waiting.clear();
    file.encoder.write(&batch).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use std::sync::Arc;

    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use super::*;

    const DAY_MICROS: i64 = 86_400_000_000;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("at", DataType::Int64, false),
            Field::new("value", DataType::Int64, false),
        ]))
    }

    /// A value `to_batch` refuses, standing for a row that cannot be encoded.
    const UNENCODABLE: i64 = i64::MIN;

    fn to_batch(schema: &SchemaRef, rows: &[(i64, i64)]) -> Result<RecordBatch, String> {
        if rows.iter().any(|r| r.1 == UNENCODABLE) {
            return Err("a value that cannot be encoded".into());
        }
        let at: Int64Array = rows.iter().map(|r| r.0).collect();
        let value: Int64Array = rows.iter().map(|r| r.1).collect();
        RecordBatch::try_new(schema.clone(), vec![Arc::new(at), Arc::new(value)])
            .map_err(|e| e.to_string())
    }

    /// The (at, value) rows of a finished file, read back by a Parquet reader.
    fn read(file: &FinishedFile) -> Vec<(i64, i64)> {
        let reader = ParquetRecordBatchReaderBuilder::try_new(file.bytes.clone())
            .unwrap()
            .build()
            .unwrap();
        let mut rows = Vec::new();
        for batch in reader {
            let batch = batch.unwrap();
            let at = batch.column(0).as_primitive::<Int64Type>();
            let value = batch.column(1).as_primitive::<Int64Type>();
            rows.extend(
                at.values()
                    .iter()
                    .copied()
                    .zip(value.values().iter().copied()),
            );
        }
        rows
    }

    #[test]
    fn rows_encoded_as_they_come_read_back_whole_and_in_order_per_partition() {
        let mut t = TableBuffer::new(Table::Findings, schema(), "run", to_batch);
        // Past several encoding steps in one partition, and a remainder; one row in another.
        let many = 2 * ENCODE_ROWS + 17;
        for i in 0..many as i64 {
            t.push("c", 1000 + i, i);
        }
        t.push("c", DAY_MICROS + 5, -1);
        let files = t.take_files().unwrap();
        assert_eq!(files.len(), 2, "one file per cluster and day");
        let first = &files[0];
        assert!(first.relative_path.contains("date=1970-01-01"));
        assert_eq!(first.rows, many as u64);
        assert_eq!(
            (first.min_micros, first.max_micros),
            (1000, 1000 + many as i64 - 1)
        );
        let expected: Vec<(i64, i64)> = (0..many as i64).map(|i| (1000 + i, i)).collect();
        assert_eq!(read(first), expected);
        assert!(files[1].relative_path.contains("date=1970-01-02"));
        assert_eq!(read(&files[1]), vec![(DAY_MICROS + 5, -1)]);
        assert_ne!(first.relative_path, files[1].relative_path);

        // Nothing since: no file. Discarded rows never reach one, even once encoded.
        assert!(t.take_files().unwrap().is_empty());
        for i in 0..ENCODE_ROWS as i64 + 1 {
            t.push("c", 7, i);
        }
        t.discard();
        assert!(t.take_files().unwrap().is_empty());

        // The next commit's file has a name of its own and only its rows.
        t.push("c", 9, 42);
        let next = t.take_files().unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!(read(&next[0]), vec![(9, 42)]);
        assert!(
            files
                .iter()
                .all(|f| f.relative_path != next[0].relative_path)
        );
    }

    /// Batches built by [`counted_to_batch`] (only the test below uses it).
    static BATCHES_BUILT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    fn counted_to_batch(schema: &SchemaRef, rows: &[(i64, i64)]) -> Result<RecordBatch, String> {
        BATCHES_BUILT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        to_batch(schema, rows)
    }

    #[test]
    fn an_encoding_failure_met_while_rows_come_is_reported_by_the_commit_and_not_carried_on() {
        let mut t = TableBuffer::new(Table::Findings, schema(), "run", counted_to_batch);
        // The failure happens during a push (the partition's rows reach ENCODE_ROWS) ...
        t.push("c", 1, UNENCODABLE);
        for i in 0..3 * ENCODE_ROWS as i64 {
            t.push("c", 2, i);
        }
        t.push("d", 3, 1);
        // ... once: the rows after it are not encoded again and again.
        assert_eq!(BATCHES_BUILT.load(std::sync::atomic::Ordering::Relaxed), 1);
        // ... and the commit that would take the files says so, naming the table.
        let err = t.take_files().unwrap_err();
        assert!(err.contains("encoding findings Parquet"), "{err}");
        assert!(err.contains("cannot be encoded"), "{err}");
        // Nothing of that commit is left over; the next one is whole.
        assert!(t.take_files().unwrap().is_empty());
        t.push("c", 4, 5);
        let files = t.take_files().unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(read(&files[0]), vec![(4, 5)]);
    }
}
