//! The DataFusion session over an archive.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use auditlake_archive::{Archive, ArchiveError, AttestedFiles, Table};
use auditlake_schema::{events_file_schema, findings_file_schema, rbac_history_file_schema};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion_datasource_parquet::transform_schema_to_view;
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use url::Url;

/// What can go wrong preparing or running a query.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// DataFusion rejected or failed the query (its message names the position and cause).
    #[error("{0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// A rule's expression could not be parsed as one SQL expression.
    #[error("rule {0}")]
    Rule(String),
    /// A result could not be written out.
    #[error("writing results: {0}")]
    Output(#[from] arrow::error::ArrowError),
    /// The archive's manifest could not be read.
    #[error(transparent)]
    Manifest(#[from] ArchiveError),
    /// The archive URL cannot back a table.
    #[error("archive {url}: {message}")]
    Archive {
        /// Archive URL.
        url: String,
        /// Why.
        message: String,
    },
    /// A `DATAFUSION_*` environment variable holds a value its setting cannot take.
    #[error("environment variable {variable}: {message}")]
    Setting {
        /// The variable.
        variable: String,
        /// Why.
        message: String,
    },
}

/// A SQL session with the archive's tables registered. Read-only: statements that define
/// tables or views (which could read any local file), write (`INSERT`, `COPY`) or change the
/// session are refused, unless external tables were explicitly allowed.
pub struct ArchiveSession {
    ctx: SessionContext,
    options: SQLOptions,
    unattested: Vec<String>,
    records: u64,
}

/// What a session's users may run: queries only.
fn read_only() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// The session settings every SQL surface of auditlake shares (queries, backtests, rules).
///
/// The parser speaks PostgreSQL rather than DataFusion's generic dialect: the generic one
/// accepts trailing commas in a select list and so reads `SELECT time, cluster` as
/// `SELECT time,` followed by a `CLUSTER BY` clause, which breaks on our `cluster` column.
///
/// Parquet filters are evaluated while scanning (late materialisation): a forensic query
/// keeps a handful of rows, and decoding every projected column of every row before
/// filtering (the default) cost up to 2x against DuckDB on `benches/query.sh`. They are
/// evaluated in the order written: letting DataFusion reorder them by its cost guess made
/// "RBAC changes in a day" slower (1.5x DuckDB's time against 2.0x, same run).
///
/// The page index is not read. Event files carry one, but no column except time is clustered
/// inside a file, so it selects every row; and DataFusion 55 turns off its TopK row-group
/// pruning whenever the page index produced a row selection, even one selecting all rows
/// (apache/datafusion#24355). With it read, "one user's first actions" decoded every row
/// group of an hour's file instead of the first (`benches/query.sh`: 2.9-3.3x DuckDB's time
/// against 1.3-1.4x, release builds).
///
/// As in `datafusion-cli`, any DataFusion setting can be overridden by its environment
/// variable (`datafusion.execution.batch_size` is `DATAFUSION_EXECUTION_BATCH_SIZE`); an
/// unreadable value is an error naming the variable.
pub fn analyst_config() -> Result<SessionConfig, QueryError> {
    let mut config = SessionConfig::new();
    let options = config.options_mut();
    options.sql_parser.dialect = datafusion::config::Dialect::PostgreSQL;
    options.execution.parquet.pushdown_filters = true;
    options.execution.parquet.enable_page_index = false;
    apply_env(&mut config, |name| std::env::var(name).ok())?;
    Ok(config)
}

/// Sets every DataFusion option whose `DATAFUSION_*` variable `lookup` finds.
fn apply_env(
    config: &mut SessionConfig,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<(), QueryError> {
    let keys: Vec<String> = config
        .options()
        .entries()
        .into_iter()
        .map(|e| e.key)
        .collect();
    for key in keys {
        let name = key.to_uppercase().replace('.', "_");
        if let Some(value) = lookup(&name) {
            config
                .options_mut()
                .set(&key, &value)
                .map_err(|e| QueryError::Setting {
                    variable: name,
                    message: e.to_string(),
                })?;
        }
    }
    Ok(())
}

/// The one place a SQL context of auditlake is built (queries, `findings`, backtests, the
/// detectors' rules, the RBAC restore): the PostgreSQL dialect of [`analyst_config`], the JSON
/// functions (`json_get_str`, ...) and the `k8s_*` functions, on top of `config`.
pub fn sql_context(mut config: SessionConfig) -> Result<SessionContext, QueryError> {
    config.options_mut().sql_parser.dialect = datafusion::config::Dialect::PostgreSQL;
    let mut ctx = SessionContext::new_with_config(config);
    crate::register_functions(&mut ctx)?;
    Ok(ctx)
}

/// The `rbac_state` view over `rbac_history`.
const RBAC_STATE_VIEW: &str = "CREATE VIEW rbac_state AS \
    SELECT cluster, kind, namespace, name, change, content_known, role_ref, subjects, rules, \
    matches_baseline, principal, verb, audit_id, changed_at AS valid_from, \
    lead(changed_at) OVER (PARTITION BY cluster, kind, namespace, name ORDER BY changed_at, audit_id) \
    AS valid_until FROM rbac_history";

/// Registers `table`'s Parquet files under `<archive>/<table>/`, Hive-partitioned. The
/// listing comes from the manifest (see [`ArchiveSession::open`]); a table with no files
/// yet is simply empty.
fn register_listing(
    ctx: &SessionContext,
    archive_url: &Url,
    table: Table,
    schema: SchemaRef,
) -> Result<(), QueryError> {
    let dir = table.name();
    let partitions = table.partition_columns();
    // The events table's strings are read as string views: the Parquet reader then points
    // at short values instead of copying each into a new buffer, and grouping and comparing
    // them is cheaper (`benches/query.sh`, 3.9M events: group by verb went from 2.0x
    // DuckDB's time to 1.1-1.3x). Lists stay as they are.
    let schema = if table == Table::Events {
        Arc::new(transform_schema_to_view(&schema))
    } else {
        schema
    };
    let url = archive_url
        .join(&format!("{dir}/"))
        .map_err(|e| QueryError::Archive {
            url: archive_url.to_string(),
            message: e.to_string(),
        })?;
    // The session's Parquet settings (as `CREATE EXTERNAL TABLE` takes them), not the
    // format's defaults, which would ignore `analyst_config` and the
    // `DATAFUSION_EXECUTION_PARQUET_*` variables.
    let parquet = ctx.state().default_table_options().parquet;
    let options = ListingOptions::new(Arc::new(ParquetFormat::default().with_options(parquet)))
        .with_file_extension(".parquet")
        .with_table_partition_cols(
            partitions
                .iter()
                .map(|p| (p.to_string(), DataType::Utf8))
                .collect(),
        );
    let config = ListingTableConfig::new(ListingTableUrl::parse(url.as_str())?)
        .with_listing_options(options)
        .with_schema(schema);
    ctx.register_table(dir, Arc::new(ListingTable::try_new(config)?))?;
    Ok(())
}

impl ArchiveSession {
    /// Opens a session over `archive`. Its tables hold exactly the files the committed
    /// manifest records name (and no later record removed): a Parquet file under a table's
    /// directory that no record names is not read (see [`ArchiveSession::unattested`]).
    pub async fn open(archive: &Archive) -> Result<Self, QueryError> {
        let archive_url = &archive.location().url;
        let attested = AttestedFiles::load(archive).await?;
        let unattested = attested.unattested(archive).await?;
        let config = analyst_config()?
            .with_information_schema(true)
            .with_target_partitions(std::thread::available_parallelism().map_or(2, |n| n.get()));
        let ctx = sql_context(config)?;
        let base = Url::parse(&format!(
            "{}://{}",
            archive_url.scheme(),
            archive_url.authority()
        ))
        .map_err(|e| QueryError::Archive {
            url: archive_url.to_string(),
            message: e.to_string(),
        })?;
        // DataFusion reads `file://` through a store rooted at `/`; other schemes through the
        // archive's store, rooted at the bucket. Either way the archive root inside it is the
        // URL's path, and the view lists the tables from the manifest.
        let inner: Arc<dyn ObjectStore> = if archive_url.scheme() == "file" {
            Arc::new(LocalFileSystem::new())
        } else {
            archive.store()
        };
        let root = archive.location().root_in_url_store();
        ctx.register_object_store(&base, Arc::new(attested.store_view(inner, &root)));
        register_listing(&ctx, archive_url, Table::Events, events_file_schema())?;
        register_listing(&ctx, archive_url, Table::Findings, findings_file_schema())?;
        register_listing(
            &ctx,
            archive_url,
            Table::RbacHistory,
            rbac_history_file_schema(),
        )?;
        // Each version of an RBAC object with the time the next one replaced it, so "who was
        // bound to what at T" is `valid_from <= T AND (valid_until IS NULL OR valid_until > T)`.
        ctx.sql(RBAC_STATE_VIEW).await?;
        Ok(Self {
            ctx,
            options: read_only(),
            unattested,
            records: attested.records(),
        })
    }

    /// Parquet files under the tables' directories that no manifest record names: left by a
    /// crash mid-commit, or put there by someone. They are not queried.
    pub fn unattested(&self) -> &[String] {
        &self.unattested
    }

    /// Manifest records the session's tables were built from.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Lets `CREATE EXTERNAL TABLE` and `CREATE VIEW` run (to join the archive with a file
    /// of your own): they can read any file this process can. Writing stays refused.
    pub fn allow_external_tables(&mut self) {
        self.options = read_only().with_allow_ddl(true);
    }

    /// The underlying DataFusion context, for registering more tables or functions.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Runs every `;`-separated statement of `sql` in order and prints each one's result to
    /// `out` as its rows stream in (see [`crate::print_stream`]); `after` is told what each
    /// printed. Stops at the first statement that fails.
    pub async fn run_printing<W: std::io::Write>(
        &self,
        sql: &str,
        format: crate::OutputFormat,
        maxrows: crate::MaxRows,
        out: &mut W,
        mut after: impl FnMut(&str, crate::Printed),
    ) -> Result<(), QueryError> {
        let statements = split_statements(sql);
        if statements.is_empty() {
            return Err(QueryError::Archive {
                url: String::new(),
                message: "no SQL statement given".into(),
            });
        }
        for stmt in statements {
            let df = self.ctx.sql_with_options(&stmt, self.options).await?;
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            let stream = df.execute_stream().await?;
            let printed = crate::print_stream(format, maxrows, &schema, stream, out).await?;
            after(&stmt, printed);
        }
        Ok(())
    }

    /// Runs one or more `;`-separated statements and returns the last one's result.
    pub async fn sql(&self, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
        let statements = split_statements(sql);
        let mut last = None;
        for stmt in statements {
            let df = self.ctx.sql_with_options(&stmt, self.options).await?;
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
    use super::*;
    use crate::Backtest;

    #[test]
    fn splits_on_semicolons_outside_quotes_and_comments() {
        let s = split_statements("SELECT 'a;b'; -- note; here\nSELECT 2;\n\n");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].trim(), "SELECT 'a;b'");
        assert_eq!(s[1].trim(), "SELECT 2");
    }

    async fn empty_session() -> (tempfile::TempDir, ArchiveSession) {
        let dir = tempfile::tempdir().unwrap();
        let location =
            auditlake_archive::ArchiveLocation::parse(dir.path().to_str().unwrap()).unwrap();
        let archive = Archive::open(location).unwrap();
        let s = ArchiveSession::open(&archive).await.unwrap();
        (dir, s)
    }

    #[tokio::test]
    async fn statements_that_define_write_or_read_files_are_refused() {
        let (dir, s) = empty_session().await;
        let out = dir.path().join("copied.csv");
        for sql in [
            "CREATE EXTERNAL TABLE p STORED AS CSV LOCATION '/etc/passwd'".to_string(),
            format!("COPY (SELECT 1) TO '{}' STORED AS CSV", out.display()),
            "INSERT INTO events SELECT * FROM events".to_string(),
            "CREATE VIEW v AS SELECT 1".to_string(),
            "SET datafusion.execution.batch_size = 1".to_string(),
            "SELECT * FROM '/etc/passwd'".to_string(),
        ] {
            let e = s.sql(&sql).await.err();
            assert!(e.is_some(), "{sql} ran");
        }
        assert!(!out.exists(), "COPY wrote a file");
        assert!(s.sql("SELECT count(*) FROM events").await.is_ok());
    }

    #[tokio::test]
    async fn a_rule_condition_is_one_expression_never_a_second_statement() {
        let (dir, s) = empty_session().await;
        let out = dir.path().join("smuggled.csv");
        let smuggled = format!("TRUE; COPY (SELECT 1) TO '{}' STORED AS CSV", out.display());
        let b = Backtest {
            condition: &smuggled,
            details: None,
            scope: "TRUE",
            outcome: "'observed'",
            since_micros: 0,
        };
        let e = s
            .backtest(&b)
            .await
            .expect_err("a smuggled statement must not parse");
        assert!(e.to_string().contains("condition"), "{e}");
        assert!(!out.exists());
        let ok = Backtest {
            condition: "verb = 'create'",
            ..b
        };
        let (schema, batches) = s.backtest(&ok).await.unwrap();
        assert_eq!(schema.field(2).name(), "outcome");
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 0);
    }

    #[test]
    fn datafusion_settings_come_from_their_environment_variables() {
        let env = |name: &str| match name {
            "DATAFUSION_EXECUTION_BATCH_SIZE" => Some("1234".to_string()),
            "DATAFUSION_EXECUTION_PARQUET_PUSHDOWN_FILTERS" => Some("false".to_string()),
            _ => None,
        };
        let mut config = analyst_config().unwrap();
        assert!(config.options().execution.parquet.pushdown_filters);
        apply_env(&mut config, env).unwrap();
        assert_eq!(config.batch_size(), 1234);
        assert!(!config.options().execution.parquet.pushdown_filters);
        let bad =
            |name: &str| (name == "DATAFUSION_EXECUTION_BATCH_SIZE").then(|| "many".to_string());
        let err = apply_env(&mut config, bad).unwrap_err().to_string();
        assert!(
            err.starts_with("environment variable DATAFUSION_EXECUTION_BATCH_SIZE:"),
            "{err}"
        );
    }
}
