//! The `findings` table of the archive: every finding the detectors emitted, as Parquet
//! committed with the events it was found in.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Int32Array, ListBuilder, RecordBatch, StringArray, StringBuilder,
    TimestampMicrosecondArray, UInt64Array,
};
use arrow::datatypes::SchemaRef;

use auditlake_archive::Table;
use auditlake_schema::findings_file_schema;
use auditlake_schema::timestamp::parse_rfc3339_micros;

use crate::archive_table::TableBuffer;
use crate::finding::Finding;
use auditlake_archive::FinishedFile;

/// Findings waiting for the next archive commit.
pub(crate) struct FindingsTable {
    buffer: TableBuffer<Finding>,
}

impl FindingsTable {
    /// An empty table buffer; `run_id` goes into file names.
    pub(crate) fn new(run_id: &str) -> Self {
        Self {
            buffer: TableBuffer::new(
                Table::Findings,
                findings_file_schema(),
                run_id,
                findings_batch,
            ),
        }
    }

    /// Keeps `finding` for the next commit.
    pub(crate) fn push(&mut self, finding: &Finding) {
        self.buffer
            .push(&finding.cluster, finding.time_micros, finding.clone());
    }

    /// Drops the waiting findings (see `TableBuffer::discard`).
    pub(crate) fn discard(&mut self) {
        self.buffer.discard();
    }

    /// The waiting findings as Parquet files (one per cluster and day).
    pub(crate) fn take_files(&mut self) -> Result<Vec<FinishedFile>, String> {
        self.buffer.take_files()
    }
}

fn strings<'a>(rows: &'a [(i64, Finding)], f: impl Fn(&'a Finding) -> Option<&'a str>) -> ArrayRef {
    Arc::new(rows.iter().map(|r| f(&r.1)).collect::<StringArray>())
}

fn string_lists<'a>(
    rows: &'a [(i64, Finding)],
    f: impl Fn(&'a Finding) -> &'a [String],
) -> ArrayRef {
    let mut b = ListBuilder::new(StringBuilder::new());
    for r in rows {
        for s in f(&r.1) {
            b.values().append_value(s);
        }
        b.append(true);
    }
    Arc::new(b.finish())
}

fn findings_batch(schema: &SchemaRef, rows: &[(i64, Finding)]) -> Result<RecordBatch, String> {
    let times = |last: bool| -> ArrayRef {
        Arc::new(
            rows.iter()
                .map(|(t, f)| {
                    Some(if last {
                        parse_rfc3339_micros(&f.last_time).unwrap_or(*t)
                    } else {
                        *t
                    })
                })
                .collect::<TimestampMicrosecondArray>()
                .with_timezone("UTC"),
        )
    };
    let columns: Vec<ArrayRef> = vec![
        strings(rows, |f| Some(&f.rule_id)),
        strings(rows, |f| Some(f.severity.as_str())),
        strings(rows, |f| Some(&f.title)),
        strings(rows, |f| Some(f.outcome.as_str())),
        times(false),
        times(true),
        strings(rows, |f| f.principal.as_deref()),
        strings(rows, |f| f.impersonated.as_deref()),
        strings(rows, |f| f.source_ip.as_deref()),
        strings(rows, |f| f.verb.as_deref()),
        strings(rows, |f| f.object.api_group.as_deref()),
        strings(rows, |f| f.object.resource.as_deref()),
        strings(rows, |f| f.object.subresource.as_deref()),
        strings(rows, |f| f.object.namespace.as_deref()),
        strings(rows, |f| f.object.name.as_deref()),
        strings(rows, |f| f.details.as_deref()),
        Arc::new(
            rows.iter()
                .map(|r| r.1.response_code)
                .collect::<Int32Array>(),
        ),
        string_lists(rows, |f| &f.evidence),
        Arc::new(rows.iter().map(|r| r.1.count).collect::<UInt64Array>()),
        string_lists(rows, |f| &f.mitre),
        strings(rows, |f| Some(&f.remediation)),
        string_lists(rows, |f| &f.objects),
    ];
    RecordBatch::try_new(Arc::clone(schema), columns).map_err(|e| e.to_string())
}
