//! The one set of Parquet writer settings every table of the archive is written with.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use auditlake_schema::{SCHEMA_VERSION, SCHEMA_VERSION_KEY, col};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::layout::Table;

/// Tunables of the Parquet files (the rest is fixed by [`writer_properties`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParquetSettings {
    /// Rows per row group.
    pub row_group_rows: usize,
    /// ZSTD level (1 is fast and already compresses audit JSON ~8x).
    pub zstd_level: i32,
}

impl Default for ParquetSettings {
    fn default() -> Self {
        Self {
            row_group_rows: 64 * 1024,
            zstd_level: 1,
        }
    }
}

/// Writer properties for a file of `table`.
pub fn writer_properties(table: Table, settings: ParquetSettings) -> WriterProperties {
    let mut props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(settings.zstd_level).unwrap_or_default(),
        ))
        .set_max_row_group_row_count(Some(settings.row_group_rows))
        // Page statistics give readers a column index: a filter on a column that is
        // clustered within a file (times, partition-like values) skips pages, not only row
        // groups.
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_created_by(format!("auditlake {}", env!("CARGO_PKG_VERSION")))
        .set_key_value_metadata(Some(vec![KeyValue::new(
            SCHEMA_VERSION_KEY.to_string(),
            SCHEMA_VERSION.to_string(),
        )]));
    if table == Table::Events {
        // The two values an investigation looks up by: a bloom filter per row group lets a
        // reader skip the row groups that cannot hold them (their min/max say nothing for
        // random ids and for names spread over the alphabet).
        for c in [col::AUDIT_ID, col::USER_USERNAME] {
            props = props
                .set_column_bloom_filter_enabled(ColumnPath::from(c), true)
                .set_column_bloom_filter_fpp(ColumnPath::from(c), 0.01);
        }
        // Nearly all distinct: a dictionary would only be built, overflow its page limit and
        // be dropped, leaving dictionary-coded and plain pages that compress worse than plain
        // alone (audit_id took 4.4 MB that way against 3.0 MB plain on 490k events).
        for c in [
            col::REQUEST_OBJECT,
            col::RESPONSE_OBJECT,
            col::UNMAPPED,
            col::ENVELOPE,
            col::RESPONSE_DETAILS,
            col::AUDIT_ID,
            col::SOURCE_REF,
        ] {
            props = props.set_column_dictionary_enabled(ColumnPath::from(c), false);
        }
        // Whole JSON documents: a min/max of them prunes nothing, and finding it compared
        // every value with the page's extremes over their long common prefix
        // (`{"kind":"...`), 3% of an ingest's CPU. Their null counts go with it.
        for c in [
            col::REQUEST_OBJECT,
            col::RESPONSE_OBJECT,
            col::UNMAPPED,
            col::ENVELOPE,
            col::RESPONSE_DETAILS,
        ] {
            props =
                props.set_column_statistics_enabled(ColumnPath::from(c), EnabledStatistics::None);
        }
        // Event times rise nearly monotonically: deltas bit-pack to a few bits a row, where a
        // dictionary of distinct microseconds overflowed and fell back to plain 8-byte values.
        for c in [col::REQUEST_RECEIVED_AT, col::STAGE_AT] {
            props = props
                .set_column_dictionary_enabled(ColumnPath::from(c), false)
                .set_column_encoding(ColumnPath::from(c), Encoding::DELTA_BINARY_PACKED);
        }
    }
    props.build()
}

/// Encodes one batch as a whole Parquet file of `table`.
pub fn encode_file(
    table: Table,
    schema: &SchemaRef,
    batch: &RecordBatch,
    settings: ParquetSettings,
) -> Result<Vec<u8>, parquet::errors::ParquetError> {
    let props = writer_properties(table, settings);
    let mut writer = ArrowWriter::try_new(Vec::new(), Arc::clone(schema), Some(props))?;
    writer.write(batch)?;
    writer.into_inner()
}
