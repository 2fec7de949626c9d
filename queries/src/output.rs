//! Rendering query results: table, CSV, JSON array, NDJSON.

use std::io::Write;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;

/// How `auditlake query` prints results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// Aligned text table for people.
    #[default]
    Table,
    /// CSV with a header row.
    Csv,
    /// One JSON array of objects.
    Json,
    /// One JSON object per line.
    Ndjson,
}

impl std::str::FromStr for OutputFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "table" => Ok(Self::Table),
            "csv" => Ok(Self::Csv),
            "json" => Ok(Self::Json),
            "ndjson" | "jsonl" => Ok(Self::Ndjson),
            other => Err(format!(
                "unknown output format {other:?}: expected table, csv, json or ndjson"
            )),
        }
    }
}

/// Writes `batches` to `out` in `format`. An empty result still prints its header (table,
/// CSV) or `[]` (JSON), so scripts can tell "no rows" from "no output".
pub fn write_batches<W: Write>(
    format: OutputFormat,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    out: &mut W,
) -> Result<(), ArrowError> {
    match format {
        OutputFormat::Table => {
            let table = if batches.iter().all(|b| b.num_rows() == 0) {
                arrow::util::pretty::pretty_format_batches(&[RecordBatch::new_empty(
                    schema.clone(),
                )])?
            } else {
                arrow::util::pretty::pretty_format_batches(batches)?
            };
            writeln!(out, "{table}")?;
        }
        OutputFormat::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(out);
            if batches.is_empty() {
                w.write(&RecordBatch::new_empty(schema.clone()))?;
            }
            for b in batches {
                w.write(b)?;
            }
        }
        OutputFormat::Json => {
            let mut w = arrow::json::ArrayWriter::new(out);
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
            let out = w.into_inner();
            if batches.iter().all(|b| b.num_rows() == 0) {
                out.write_all(b"[]")?;
            }
            writeln!(out)?;
        }
        OutputFormat::Ndjson => {
            let mut w = arrow::json::LineDelimitedWriter::new(out);
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
        }
    }
    Ok(())
}

/// How many rows of each result `auditlake query` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxRows {
    /// At most this many (the rest are counted, not printed).
    Limit(usize),
    /// Every row.
    Unlimited,
}

impl std::str::FromStr for MaxRows {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "inf" | "infinite" | "all" | "unlimited" => Ok(Self::Unlimited),
            n => n
                .parse::<usize>()
                .map(Self::Limit)
                .map_err(|_| format!("--maxrows {s:?}: a number of rows, or inf for all")),
        }
    }
}

impl MaxRows {
    /// The default of `format`: 40 rows in a table (a person reads it), all otherwise (a
    /// program reads it).
    pub fn default_for(format: OutputFormat) -> Self {
        match format {
            OutputFormat::Table => Self::Limit(40),
            _ => Self::Unlimited,
        }
    }

    fn limit(self) -> usize {
        match self {
            Self::Limit(n) => n,
            Self::Unlimited => usize::MAX,
        }
    }
}

/// What printing one statement's result did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Printed {
    /// Rows the statement returned.
    pub rows: u64,
    /// Rows printed (fewer than `rows` when `--maxrows` cut the output).
    pub shown: u64,
}

/// Prints a result as its batches arrive: CSV and NDJSON rows are written as they come, a
/// JSON array is streamed, a table keeps only the rows it will show. Rows past `maxrows`
/// are counted, not kept.
pub async fn print_stream<W: Write>(
    format: OutputFormat,
    maxrows: MaxRows,
    schema: &SchemaRef,
    mut stream: datafusion::physical_plan::SendableRecordBatchStream,
    out: &mut W,
) -> Result<Printed, crate::QueryError> {
    use futures::StreamExt;
    let limit = maxrows.limit();
    let mut printed = Printed { rows: 0, shown: 0 };
    // The part of `batch` still to show, counting every row.
    let take = |batch: &RecordBatch, printed: &mut Printed| {
        let n = batch.num_rows();
        printed.rows += n as u64;
        let room = limit.saturating_sub(printed.shown as usize);
        let k = n.min(room);
        printed.shown += k as u64;
        (k > 0).then(|| batch.slice(0, k))
    };
    match format {
        OutputFormat::Table => {
            let mut kept = Vec::new();
            while let Some(b) = stream.next().await {
                if let Some(part) = take(&b?, &mut printed) {
                    kept.push(part);
                }
            }
            write_batches(format, schema, &kept, out)?;
        }
        OutputFormat::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            let mut wrote = false;
            while let Some(b) = stream.next().await {
                if let Some(part) = take(&b?, &mut printed) {
                    w.write(&part)?;
                    wrote = true;
                }
            }
            if !wrote {
                w.write(&RecordBatch::new_empty(schema.clone()))?;
            }
        }
        OutputFormat::Json => {
            let mut w = arrow::json::ArrayWriter::new(&mut *out);
            while let Some(b) = stream.next().await {
                if let Some(part) = take(&b?, &mut printed) {
                    w.write(&part)?;
                }
            }
            w.finish()?;
            drop(w);
            if printed.shown == 0 {
                out.write_all(b"[]").map_err(ArrowError::from)?;
            }
            writeln!(out).map_err(ArrowError::from)?;
        }
        OutputFormat::Ndjson => {
            let mut w = arrow::json::LineDelimitedWriter::new(&mut *out);
            while let Some(b) = stream.next().await {
                if let Some(part) = take(&b?, &mut printed) {
                    w.write(&part)?;
                }
            }
            w.finish()?;
        }
    }
    out.flush().map_err(ArrowError::from)?;
    Ok(printed)
}
