//! Which part of a rule's condition is NULL on an event, and so keeps the rule from firing.
//!
//! A condition is a conjunction; on an event where every other conjunct holds and one is
//! NULL (a field the event does not carry, a body that was not logged), the rule stays
//! silent because of a value nobody knows. The built-in exclusions fail closed (see
//! [`crate::fail_closed`]), so what remains is positive evidence that is missing; a rule file
//! of your own may have more. `auditlake rules test` names each such conjunct and event.

use std::sync::Arc;

use arrow::array::{Array, BooleanArray, RecordBatch};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::physical_expr::PhysicalExpr;

use crate::engine::{DENIED_SQL, DONE_SQL, compile_expr, context, fail_closed, parse_condition};
use crate::error::RuleError;
use crate::rule::{RuleSet, Scope};

/// A conjunct that was NULL where the rest of its rule held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NullWarning {
    /// The rule.
    pub rule: String,
    /// The conjunct, as DataFusion prints it.
    pub conjunct: String,
    /// The row of the batch (the event's position).
    pub row: usize,
}

/// Columns that say what kind of request an event is: NULL there means another kind of
/// request (a non-resource URL has no resource), not a missing field, so it is not warned.
const REQUEST_SHAPE: &[&str] = &[
    "resource",
    "subresource",
    "verb",
    "namespace",
    "name",
    "stage",
    "request_uri",
];

struct RuleConjuncts {
    id: String,
    scope: Scope,
    /// The text, the compiled conjunct, and whether a NULL there is worth a warning.
    conjuncts: Vec<(String, Arc<dyn PhysicalExpr>, bool)>,
}

/// Every enabled rule's conjuncts, compiled one by one.
pub struct NullCheck {
    rules: Vec<RuleConjuncts>,
    done: Arc<dyn PhysicalExpr>,
    denied: Arc<dyn PhysicalExpr>,
}

fn mask(e: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Result<BooleanArray, String> {
    let v = e
        .evaluate(batch)
        .and_then(|v| v.into_array(batch.num_rows()))
        .map_err(|e| e.to_string())?;
    v.as_any()
        .downcast_ref::<BooleanArray>()
        .cloned()
        .ok_or_else(|| "not a boolean".to_string())
}

impl NullCheck {
    /// Compiles the conjuncts of every enabled rule of `set` (its lists expanded).
    pub fn compile(set: &RuleSet) -> Result<Self, RuleError> {
        let internal = |message: String| RuleError::Evaluate {
            rule: "(null check)".into(),
            message,
        };
        let (ctx, schema) = context().map_err(internal)?;
        let outcome = |sql: &str| {
            parse_condition(&ctx, &schema, sql)
                .and_then(|e| compile_expr(&ctx, &schema, e))
                .map_err(internal)
        };
        let (done, denied) = (outcome(DONE_SQL)?, outcome(DENIED_SQL)?);
        let mut rules = Vec::new();
        for loaded in set.enabled() {
            let err = |m: String| RuleError::Rule {
                rule: loaded.rule.id.clone(),
                origin: loaded.origin.clone(),
                message: m,
            };
            let text = set.expand_lists(&loaded.rule.condition).map_err(err)?;
            let expr = parse_condition(&ctx, &schema, &text)
                .map(fail_closed)
                .map_err(err)?;
            let conjuncts = split_conjunction(&expr)
                .into_iter()
                .map(|c| {
                    let shape_only = c
                        .column_refs()
                        .iter()
                        .all(|col| REQUEST_SHAPE.contains(&col.name.as_str()));
                    compile_expr(&ctx, &schema, c.clone())
                        .map(|p| (c.to_string(), p, !shape_only))
                        .map_err(err)
                })
                .collect::<Result<_, _>>()?;
            rules.push(RuleConjuncts {
                id: loaded.rule.id.clone(),
                scope: loaded.rule.scope,
                conjuncts,
            });
        }
        Ok(Self {
            rules,
            done,
            denied,
        })
    }

    /// The conjuncts NULL on a row of `batch` (events schema) where every other conjunct of
    /// the same rule is true or NULL, on the rows the rule judges.
    pub fn check(&self, batch: &RecordBatch) -> Result<Vec<NullWarning>, RuleError> {
        let eval = |rule: &str, e: &Arc<dyn PhysicalExpr>| {
            mask(e, batch).map_err(|message| RuleError::Evaluate {
                rule: rule.to_string(),
                message,
            })
        };
        let done = eval("(done)", &self.done)?;
        let denied = eval("(denied)", &self.denied)?;
        let mut out = Vec::new();
        for rule in &self.rules {
            let values: Vec<BooleanArray> = rule
                .conjuncts
                .iter()
                .map(|(_, e, _)| eval(&rule.id, e))
                .collect::<Result<_, _>>()?;
            for row in 0..batch.num_rows() {
                let judged = match rule.scope {
                    Scope::Any => true,
                    Scope::Outcome => {
                        (done.is_valid(row) && done.value(row))
                            || (denied.is_valid(row) && denied.value(row))
                    }
                };
                let any_false = values.iter().any(|v| v.is_valid(row) && !v.value(row));
                if !judged || any_false {
                    continue;
                }
                for ((text, _, reportable), v) in rule.conjuncts.iter().zip(&values) {
                    if *reportable && v.is_null(row) {
                        out.push(NullWarning {
                            rule: rule.id.clone(),
                            conjunct: text.clone(),
                            row,
                        });
                    }
                }
            }
        }
        Ok(out)
    }
}
