//! A rule's condition run over the archived events: the same text the streaming detector
//! compiles, parsed as one expression and applied as a filter, never pasted into statement
//! text (a condition like `TRUE; COPY ... TO '/tmp/x'` is a parse error, not a second
//! statement).

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::prelude::{Expr, col, lit};
use datafusion::scalar::ScalarValue;
use std::sync::Arc;

use crate::session::{ArchiveSession, QueryError};

/// What to run and since when.
#[derive(Debug, Clone)]
pub struct Backtest<'a> {
    /// The rule's condition (lists already expanded).
    pub condition: &'a str,
    /// The rule's `details` expression, if any.
    pub details: Option<&'a str>,
    /// Which events the rule judges (e.g. done-or-denied requests), as an expression.
    pub scope: &'a str,
    /// The outcome column's expression (`'done'`, `'denied'`, `'observed'`).
    pub outcome: &'a str,
    /// Only events whose stage time is at or after this (µs since the epoch).
    pub since_micros: i64,
}

impl ArchiveSession {
    /// The events `b` matches, oldest first: stage time, cluster, outcome, principal, verb,
    /// object, details, audit id.
    pub async fn backtest(
        &self,
        b: &Backtest<'_>,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
        let ctx = self.context();
        let events = ctx.table("events").await?;
        let schema = events.schema().clone();
        let parse = |what: &str, sql: &str| {
            ctx.parse_sql_expr(sql, &schema)
                .map_err(|e| QueryError::Rule(format!("{what}: {e}")))
        };
        let condition = parse("condition", b.condition)?;
        let scope = parse("scope", b.scope)?;
        let outcome = parse("outcome", b.outcome)?.alias("outcome");
        let details = match b.details {
            Some(d) => parse("details", d)?,
            None => lit(ScalarValue::Utf8(None)),
        }
        .alias("details");
        let since = auditlake_schema::timestamp::format_rfc3339_micros(b.since_micros);
        let from_day = lit(since[..10].to_string());
        let from_time = lit(ScalarValue::TimestampMicrosecond(
            Some(b.since_micros),
            Some(Arc::from("UTC")),
        ));
        let filter: Expr = col("date")
            .gt_eq(from_day)
            .and(col("stage_at").gt_eq(from_time))
            .and(scope)
            .and(condition);
        let df = events
            .filter(filter)?
            .select(vec![
                col("stage_at"),
                col("cluster"),
                outcome,
                col("user_username").alias("principal"),
                col("verb"),
                col("resource"),
                col("namespace"),
                col("name"),
                details,
                col("audit_id"),
            ])?
            .sort(vec![col("stage_at").sort(true, false)])?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        Ok((schema, df.collect().await?))
    }
}
