//! A rule run over the archived events (`auditlake rules backtest`): its condition, details,
//! scope and outcome as the streaming detector evaluates them, lists expanded, handed to
//! the archive's SQL session as expressions (never pasted into statement text).

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use auditlake_queries::{ArchiveSession, Backtest, QueryError};

use crate::engine::{DENIED_SQL, DONE_SQL};
use crate::rule::{RuleSet, Scope};

/// The expressions of one rule, ready to run over history.
#[derive(Debug, Clone)]
pub struct RuleBacktest {
    /// The rule's title.
    pub title: String,
    condition: String,
    details: Option<String>,
    scope: String,
    outcome: String,
}

impl RuleSet {
    /// The backtest of rule `id`: `Err` names an unknown rule or a list the rule uses that
    /// is not defined.
    pub fn backtest(&self, id: &str) -> Result<RuleBacktest, String> {
        let loaded = self
            .rules
            .get(id)
            .ok_or_else(|| format!("no rule {id:?}; `auditlake rules list` shows them"))?;
        let rule = &loaded.rule;
        let condition = self
            .expand_lists(&rule.condition)
            .map_err(|e| format!("rule {id}: {e}"))?;
        let details = match &rule.details {
            Some(d) => Some(
                self.expand_lists(d)
                    .map_err(|e| format!("rule {id}: {e}"))?,
            ),
            None => None,
        };
        let (outcome, scope) = match rule.scope {
            Scope::Outcome => (
                format!("CASE WHEN {DONE_SQL} THEN 'done' ELSE 'denied' END"),
                format!("(({DONE_SQL}) OR ({DENIED_SQL}))"),
            ),
            Scope::Any => ("'observed'".into(), "TRUE".into()),
        };
        Ok(RuleBacktest {
            title: rule.title.clone(),
            condition,
            details,
            scope,
            outcome,
        })
    }
}

impl RuleBacktest {
    /// The events the rule matches since `since_micros`, oldest first (see
    /// [`ArchiveSession::backtest`] for the columns).
    pub async fn run(
        &self,
        session: &ArchiveSession,
        since_micros: i64,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
        session
            .backtest(&Backtest {
                condition: &self.condition,
                details: self.details.as_deref(),
                scope: &self.scope,
                outcome: &self.outcome,
                since_micros,
            })
            .await
    }
}

/// The newest version of every RBAC object in the archive's `rbac_history`: what the drift
/// detector restores at start, so a restart neither forgets what it rebuilt nor reports it
/// again.
pub const LATEST_RBAC_VERSIONS_SQL: &str = "SELECT * FROM (SELECT *, row_number() OVER \
    (PARTITION BY cluster, kind, namespace, name ORDER BY changed_at DESC, audit_id DESC) \
    AS latest FROM rbac_history) WHERE latest = 1";
