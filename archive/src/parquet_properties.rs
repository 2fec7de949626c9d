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

use crate::hashed_buffer::HashedBuffer;
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

/// The events columns that hold whole JSON documents.
const JSON_DOCUMENTS: [&str; 5] = [
    col::REQUEST_OBJECT,
    col::RESPONSE_OBJECT,
    col::UNMAPPED,
    col::ENVELOPE,
    col::RESPONSE_DETAILS,
];

/// Writer properties for a file of `table`.
pub(crate) fn writer_properties(table: Table, settings: ParquetSettings) -> WriterProperties {
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
                .set_column_bloom_filter_fpp(ColumnPath::from(c), 0.01)
                // Sized for a row group's rows (the most distinct values it can hold), not
                // parquet's default of a million: each filter was a 2 MiB array zeroed, faulted
                // in and scattered over per row group, then folded down to ~64 KiB anyway.
                .set_column_bloom_filter_max_ndv(
                    ColumnPath::from(c),
                    u64::try_from(settings.row_group_rows).unwrap_or(u64::MAX),
                );
        }
        // Nearly all distinct: a dictionary would only be built, overflow its page limit and
        // be dropped, leaving dictionary-coded and plain pages that compress worse than plain
        // alone (audit_id took 4.4 MB that way against 3.0 MB plain on 490k events).
        for c in JSON_DOCUMENTS
            .into_iter()
            .chain([col::AUDIT_ID, col::SOURCE_REF])
        {
            props = props.set_column_dictionary_enabled(ColumnPath::from(c), false);
        }
        // A min/max of whole documents prunes nothing, and finding it compared every value
        // with the page's extremes over their long common prefix (`{"kind":"...`), ~2% of an
        // ingest's CPU. Their null counts go with it.
        for c in JSON_DOCUMENTS {
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

/// A Parquet file of `table` encoded batch by batch as rows arrive, so the work is spread
/// over a run instead of all falling on the commit that takes the file; hashed as written.
/// Every file of the archive's tables is made through it.
pub struct TableFileEncoder {
    writer: ArrowWriter<HashedBuffer>,
}

impl TableFileEncoder {
    /// An empty file of `table` with `schema`.
    pub fn new(
        table: Table,
        schema: &SchemaRef,
        settings: ParquetSettings,
    ) -> Result<Self, parquet::errors::ParquetError> {
        let props = writer_properties(table, settings);
        Ok(Self {
            writer: ArrowWriter::try_new(
                HashedBuffer::with_capacity(64 << 10),
                Arc::clone(schema),
                Some(props),
            )?,
        })
    }

    /// Encodes `batch` into the file.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), parquet::errors::ParquetError> {
        self.writer.write(batch)
    }

    /// Bytes the file will take if closed now (row groups written and the one in progress).
    pub fn encoded_bytes(&self) -> usize {
        self.writer.bytes_written() + self.writer.in_progress_size()
    }

    /// Adds a key-value pair to the footer.
    pub fn append_key_value_metadata(&mut self, kv: KeyValue) {
        self.writer.append_key_value_metadata(kv);
    }

    /// Closes the file (its last row group and footer) and returns its bytes and their
    /// SHA-256.
    pub fn finish(self) -> Result<(Vec<u8>, [u8; 32]), parquet::errors::ParquetError> {
        Ok(self.writer.into_inner()?.finish())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use auditlake_schema::{DecoderOptions, EventDecoder, SourcePos, events_schema};
    use bytes::Bytes;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    use super::*;

    #[test]
    fn bloom_filters_are_sized_for_a_row_group_not_for_a_million_values() {
        let settings = ParquetSettings {
            row_group_rows: 4096,
            ..ParquetSettings::default()
        };
        let props = writer_properties(Table::Events, settings);
        for c in [col::AUDIT_ID, col::USER_USERNAME] {
            let bloom = props
                .bloom_filter_properties(&ColumnPath::from(c))
                .unwrap_or_else(|| panic!("{c} has no bloom filter"));
            assert_eq!(bloom.ndv(), 4096, "{c}");
            assert_eq!(bloom.fpp(), 0.01, "{c}");
        }
        let none = props.bloom_filter_properties(&ColumnPath::from(col::VERB));
        assert!(none.is_none(), "only the two lookup columns carry one");
    }

    #[test]
    fn json_document_columns_carry_no_statistics_and_the_others_do() {
        let text = std::fs::read(auditlake_fixtures::data_dir().join("samples/handwritten.ndjson"))
            .unwrap();
        let mut decoder = EventDecoder::new(DecoderOptions::default());
        let pos = SourcePos {
            cluster: "c",
            source: "handwritten.ndjson",
            line: Some(1),
            byte_offset: 0,
        };
        decoder.decode_ndjson(&text, pos, &mut Vec::new());
        let batch = decoder.finish_batch().unwrap();
        let request_objects = batch.column_by_name(col::REQUEST_OBJECT).unwrap();
        assert!(
            request_objects.null_count() < batch.num_rows(),
            "bodies to index"
        );
        let mut file =
            TableFileEncoder::new(Table::Events, &events_schema(), ParquetSettings::default())
                .unwrap();
        file.write(&batch).unwrap();
        let (bytes, _) = file.finish().unwrap();
        let reader = SerializedFileReader::new(Bytes::from(bytes)).unwrap();
        let group = reader.metadata().row_group(0);
        let stats = |name: &str| {
            let i = (0..group.num_columns())
                .find(|&i| group.column(i).column_path().string() == name)
                .unwrap();
            group.column(i).statistics().cloned()
        };
        for c in JSON_DOCUMENTS {
            assert!(stats(c).is_none(), "{c} has statistics");
        }
        for c in [
            col::VERB,
            col::USER_USERNAME,
            col::REQUEST_URI,
            col::STAGE_AT,
        ] {
            let s = stats(c).unwrap_or_else(|| panic!("{c} has no statistics"));
            assert!(
                s.min_bytes_opt().is_some() && s.max_bytes_opt().is_some(),
                "{c}"
            );
        }
    }
}
