//! The DataFusion session over an archive.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use auditlake_schema::events_file_schema;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::{SessionConfig, SessionContext};
use object_store::ObjectStore;
use url::Url;

/// What can go wrong preparing or running a query.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// DataFusion rejected or failed the query (its message names the position and cause).
    #[error("{0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// The archive URL cannot back a table.
    #[error("archive {url}: {message}")]
    Archive {
        /// Archive URL.
        url: String,
        /// Why.
        message: String,
    },
}

/// A SQL session with the archive's tables registered.
pub struct ArchiveSession {
    ctx: SessionContext,
}

/// The session settings every SQL surface of auditlake shares (queries, backtests, rules).
///
/// The parser speaks PostgreSQL rather than DataFusion's generic dialect: the generic one
/// accepts trailing commas in a select list and so reads `SELECT time, cluster` as
/// `SELECT time,` followed by a `CLUSTER BY` clause, which breaks on our `cluster` column.
pub fn analyst_config() -> SessionConfig {
    let mut config = SessionConfig::new();
    config.options_mut().sql_parser.dialect = datafusion::config::Dialect::PostgreSQL;
    config
}

impl ArchiveSession {
    /// Opens a session over the archive rooted at `archive_url`, read through `store`
    /// (for `file://` archives DataFusion's own local filesystem is used).
    pub async fn open(store: Arc<dyn ObjectStore>, archive_url: &Url) -> Result<Self, QueryError> {
        let config = analyst_config()
            .with_information_schema(true)
            .with_target_partitions(std::thread::available_parallelism().map_or(2, |n| n.get()));
        let mut ctx = SessionContext::new_with_config(config);
        if archive_url.scheme() != "file" {
            let base = Url::parse(&format!(
                "{}://{}",
                archive_url.scheme(),
                archive_url.authority()
            ))
            .map_err(|e| QueryError::Archive {
                url: archive_url.to_string(),
                message: e.to_string(),
            })?;
            ctx.register_object_store(&base, store);
        }
        datafusion_functions_json::register_all(&mut ctx)?;
        let events_url = archive_url
            .join("events/")
            .map_err(|e| QueryError::Archive {
                url: archive_url.to_string(),
                message: e.to_string(),
            })?;
        let table_url = ListingTableUrl::parse(events_url.as_str())?;
        let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
            .with_file_extension(".parquet")
            .with_table_partition_cols(vec![
                ("cluster".to_string(), DataType::Utf8),
                ("date".to_string(), DataType::Utf8),
                ("hour".to_string(), DataType::Utf8),
            ]);
        let table_config = ListingTableConfig::new(table_url)
            .with_listing_options(options)
            .with_schema(events_file_schema());
        ctx.register_table("events", Arc::new(ListingTable::try_new(table_config)?))?;
        Ok(Self { ctx })
    }

    /// The underlying DataFusion context, for registering more tables or functions.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Runs one or more `;`-separated statements and returns the last one's result.
    pub async fn sql(&self, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
        let statements = split_statements(sql);
        let mut last = None;
        for stmt in statements {
            let df = self.ctx.sql(&stmt).await?;
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            let batches = df.collect().await?;
            last = Some((schema, batches));
        }
        last.ok_or_else(|| QueryError::Archive {
            url: String::new(),
            message: "no SQL statement given".into(),
        })
    }
}

/// Splits SQL text on `;` outside quotes and comments, dropping empty statements.
fn split_statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = sql.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                cur.push(c);
                if c == q {
                    quote = None;
                }
            }
            None => match c {
                '\'' | '"' => {
                    quote = Some(c);
                    cur.push(c);
                }
                '-' if chars.peek() == Some(&'-') => {
                    for c in chars.by_ref() {
                        if c == '\n' {
                            cur.push('\n');
                            break;
                        }
                    }
                }
                ';' => out.push(std::mem::take(&mut cur)),
                _ => cur.push(c),
            },
        }
    }
    out.push(cur);
    out.into_iter().filter(|s| !s.trim().is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::split_statements;

    #[test]
    fn splits_on_semicolons_outside_quotes_and_comments() {
        let s = split_statements("SELECT 'a;b'; -- note; here\nSELECT 2;\n\n");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].trim(), "SELECT 'a;b'");
        assert_eq!(s[1].trim(), "SELECT 2");
    }
}
