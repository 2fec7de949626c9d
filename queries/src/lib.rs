//! DataFusion SQL over the auditlake Parquet archive.
//!
//! [`ArchiveSession`] registers the `events` table (Hive partitions `cluster=/date=/hour=`,
//! so filters on them prune files) and the JSON functions (`json_get_str(request_object,
//! 'roleRef', 'name')`), and [`OutputFormat`] renders results as table, CSV, JSON or NDJSON.

mod backtest;
mod csr;
pub mod evidence_html;
pub mod evidence_markdown;
pub mod evidence_report;
pub mod evidence_tables;
mod findings_query;
mod k8s_functions;
mod output;
mod session;

pub use backtest::Backtest;
pub use findings_query::{FindingsFilter, SEVERITIES};
pub use k8s_functions::{k8s_functions, register_functions};
pub use output::{MaxRows, OutputFormat, Printed, print_stream, write_batches};
pub use session::{ArchiveSession, QueryError, analyst_config, sql_context};
