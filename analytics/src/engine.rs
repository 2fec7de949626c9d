//! The detector engine: rule conditions compiled once into DataFusion physical expressions
//! and evaluated vectorised on every events batch, plus the stateful detectors, with repeats
//! folded.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch, UInt32Array};
use arrow::compute::{and, or, take_record_batch};
use arrow::datatypes::DataType;
use auditlake_schema::events_schema;
use auditlake_schema::timestamp::format_rfc3339_micros;
use datafusion::common::DFSchema;
use datafusion::common::tree_node::TreeNode;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{Expr, ExprSchemable};
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;

use crate::burst::ForbiddenBurst;
use crate::coalesce::direct_coalesce;
use crate::error::RuleError;
use crate::event_columns::EventColumns;
use crate::finding::{Finding, Folder, Outcome, fold_key_prefix};
use crate::findings_table::FindingsTable;
use crate::rbac_drift::RbacDrift;
use crate::rbac_state::RbacBaseline;
use crate::rule::{FoldBy, LoadedRule, RuleSet, Scope};
use auditlake_archive::FinishedFile;

/// Columns whose values are whole JSON documents: conditions on them run only on the rows
/// the rule's other conjuncts kept.
const BODY_COLUMNS: &[&str] = &[
    "request_object",
    "response_object",
    "annotations",
    "user_extra",
    "impersonated_extra",
    "response_details",
    "unmapped",
    "envelope",
];

/// A completed request that was carried out: 2xx at ResponseComplete, or the 101 of an
/// exec/attach/port-forward upgrade at ResponseStarted (the session's ResponseComplete comes
/// when it ends, maybe hours later).
/// Upgrades (exec, attach, port-forward answered 101) count at ResponseStarted and, when the
/// audit policy omits that stage, at ResponseComplete; [`Detector`] keeps one per request.
/// A completed request without a response code (a stripped or hand-made event) counts as
/// done: an unknown outcome must not silence a rule.
pub const DONE_SQL: &str = "(stage = 'ResponseComplete' AND (response_code BETWEEN 200 AND 299 \
     OR response_code = 101 OR response_code IS NULL)) \
     OR (stage = 'ResponseStarted' AND response_code = 101)";
/// A completed request that was refused.
pub const DENIED_SQL: &str = "stage = 'ResponseComplete' AND response_code IN (401, 403)";

/// Settings of the engine.
#[derive(Debug, Clone)]
pub struct DetectorOptions {
    /// Findings with the same rule, outcome, principal and object within this many seconds
    /// of event time are folded into one with a count (0 = never fold).
    pub fold_window_seconds: u64,
    /// 403 responses from one principal within `burst_window_seconds` that make a burst
    /// (0 disables the detector).
    pub burst_threshold: usize,
    /// Window of the 403 burst detector.
    pub burst_window_seconds: u64,
    /// The RBAC objects that should exist (drift is reported against it); without one the
    /// RBAC state is still rebuilt and recorded.
    pub rbac_baseline: Option<RbacBaseline>,
    /// Keep the `findings` and `rbac_history` tables for the archive under this run id (file
    /// names); `None` keeps no tables (scenario runs, benchmarks).
    pub archive_run_id: Option<String>,
}

impl Default for DetectorOptions {
    fn default() -> Self {
        Self {
            fold_window_seconds: 300,
            burst_threshold: 20,
            burst_window_seconds: 60,
            rbac_baseline: None,
            archive_run_id: None,
        }
    }
}

/// One rule, compiled.
pub struct CompiledRule {
    /// The rule as loaded.
    pub loaded: LoadedRule,
    /// Conjuncts without functions or body columns (indices into the detector's
    /// [`ConjunctPool`]): shared by the rules that have them (see [`ConjunctPool::rows`]).
    prefilter: Vec<usize>,
    /// The other conjuncts: evaluated only on rows the prefilter kept.
    rest: Option<ProjectedExpr>,
    details: Option<ProjectedExpr>,
}

/// An expression compiled against the columns it reads only (indices into the events
/// schema), so that filtering or taking rows for it never copies bodies it does not read.
struct ProjectedExpr {
    expr: Arc<dyn PhysicalExpr>,
    columns: Vec<usize>,
}

impl ProjectedExpr {
    fn compile(ctx: &SessionContext, expr: Expr) -> Result<Self, String> {
        let (columns, schema) = projection(&[&expr])?;
        Ok(Self {
            expr: compile_expr(ctx, &schema, expr)?,
            columns,
        })
    }

    /// Its columns of `batch` (events schema).
    fn input(&self, batch: &RecordBatch, rule: &str) -> Result<RecordBatch, RuleError> {
        batch.project(&self.columns).map_err(|e| eval_err(rule, e))
    }
}

/// The cheap conjuncts of all rules, deduplicated by their text: most rules open with the
/// same few tests on `resource`, `verb` and the principal, so each is evaluated once per
/// batch and shared. Evaluating each on its own columns also keeps DataFusion's
/// short-circuit `AND` from copying the bodies a rule reads later.
#[derive(Default)]
struct ConjunctPool {
    conjuncts: Vec<ProjectedExpr>,
    by_text: HashMap<String, usize>,
}

impl ConjunctPool {
    /// The index of `expr`'s conjunct, compiling it the first time it is seen.
    fn intern(&mut self, ctx: &SessionContext, expr: &Expr) -> Result<usize, String> {
        let text = expr.to_string();
        if let Some(&i) = self.by_text.get(&text) {
            return Ok(i);
        }
        self.conjuncts
            .push(ProjectedExpr::compile(ctx, expr.clone())?);
        self.by_text.insert(text, self.conjuncts.len() - 1);
        Ok(self.conjuncts.len() - 1)
    }

    /// The rows of `batch` (events schema) in `start` (`None`: every row) where every
    /// conjunct of `wanted` holds; empty when none.
    ///
    /// Conjuncts already evaluated for another rule come first (their masks are free), then
    /// the others in the rule's order: on the whole batch (and kept in `cache` for the other
    /// rules) while more than [`SPARSE`] of the rows are left, then only on the rows left,
    /// taken out of the columns the conjunct reads. A rule's first test (`resource = ...`)
    /// usually leaves a few rows, so its other tests cost next to nothing.
    fn rows(
        &self,
        cache: &mut [Option<BooleanArray>],
        wanted: &[usize],
        start: Option<BooleanArray>,
        batch: &RecordBatch,
        rule: &str,
    ) -> Result<Vec<u32>, RuleError> {
        let n = batch.num_rows();
        let mut mask = start;
        let (cached, fresh): (Vec<usize>, Vec<usize>) =
            wanted.iter().partition(|&&c| cache[c].is_some());
        let mut order = cached.into_iter().chain(fresh).peekable();
        while let Some(&c) = order.peek() {
            let left = mask.as_ref().map_or(n, BooleanArray::true_count);
            if left == 0 {
                return Ok(Vec::new());
            }
            if cache[c].is_none() {
                if (left as f64) <= SPARSE * n as f64 {
                    break;
                }
                let conjunct = &self.conjuncts[c];
                let input = conjunct.input(batch, rule)?;
                cache[c] = Some(evaluate_mask(rule, &conjunct.expr, &input)?);
            }
            order.next();
            // Just filled in above when it was missing.
            let Some(m) = &cache[c] else { continue };
            mask = Some(match mask {
                None => m.clone(),
                Some(prev) => and(&prev, m).map_err(|e| eval_err(rule, e))?,
            });
        }
        let mut rows: Vec<u32> = match &mask {
            None => (0..n as u32).collect(),
            Some(m) => (0..n as u32)
                .filter(|&r| m.is_valid(r as usize) && m.value(r as usize))
                .collect(),
        };
        for c in order {
            if rows.is_empty() {
                break;
            }
            rows = keep_where(rule, &self.conjuncts[c], batch, rows)?;
        }
        Ok(rows)
    }
}

/// The share of a batch's rows below which a rule's remaining tests run on the rows left
/// rather than on the whole batch.
const SPARSE: f64 = 0.2;

/// The `rows` of `batch` (events schema) for which `e` holds.
fn keep_where(
    rule: &str,
    e: &ProjectedExpr,
    batch: &RecordBatch,
    rows: Vec<u32>,
) -> Result<Vec<u32>, RuleError> {
    let take = UInt32Array::from(rows);
    let input = take_record_batch(&e.input(batch, rule)?, &take).map_err(|x| eval_err(rule, x))?;
    let m = evaluate_mask(rule, &e.expr, &input)?;
    Ok(take
        .values()
        .iter()
        .enumerate()
        .filter(|&(i, _)| m.is_valid(i) && m.value(i))
        .map(|(_, &r)| r)
        .collect())
}

/// A rule match before it becomes a finding.
struct Hit {
    rule: usize,
    row: usize,
    outcome: Outcome,
    details: Option<String>,
    key: String,
}

/// The compiled rule pack and the stateful detectors, fed batch by batch.
pub struct Detector {
    rules: Vec<CompiledRule>,
    conjuncts: ConjunctPool,
    done: Arc<dyn PhysicalExpr>,
    denied: Arc<dyn PhysicalExpr>,
    /// Columns `done` and `denied` read.
    outcome_columns: Vec<usize>,
    folder: Folder,
    /// Upgraded requests already counted done at ResponseStarted.
    upgrades: UpgradedRequests,
    burst: Option<ForbiddenBurst>,
    drift: RbacDrift,
    /// Findings for the archive's `findings` table, when tables are kept.
    findings_table: Option<FindingsTable>,
    newest_micros: i64,
}

/// Requests upgraded to a stream (exec, attach, port-forward: 101) that were counted done at
/// ResponseStarted, so their ResponseComplete (logged when the session ends, maybe hours
/// later) is not counted again: one finding per request, whatever stages the policy logs.
#[derive(Default)]
struct UpgradedRequests {
    seen: HashMap<String, i64>,
    evicted: Arc<std::sync::atomic::AtomicU64>,
}

/// Upgraded requests remembered at most (a session longer than it takes to see this many
/// others may be counted twice: an extra finding, never a missing one).
const MAX_UPGRADED_REQUESTS: usize = 100_000;

impl UpgradedRequests {
    /// `done` with the ResponseComplete rows of requests already counted at ResponseStarted
    /// turned off.
    fn once_per_request(&mut self, done: BooleanArray, cols: &EventColumns<'_>) -> BooleanArray {
        let mut off: Vec<usize> = Vec::new();
        let mut key = String::new();
        for row in done.values().set_indices() {
            if !done.is_valid(row) || cols.code(row) != Some(101) {
                continue;
            }
            key.clear();
            key.push_str(&cols.cluster(row));
            key.push('\0');
            key.push_str(cols.audit_id_str(row));
            match cols.stage(row) {
                Some("ResponseStarted") => {
                    self.seen.insert(key.clone(), cols.stage_at(row));
                    crate::bounded_state::evict_oldest(
                        &mut self.seen,
                        MAX_UPGRADED_REQUESTS,
                        &self.evicted,
                        |t| *t,
                    );
                }
                Some("ResponseComplete") if self.seen.remove(&key).is_some() => off.push(row),
                _ => {}
            }
        }
        if off.is_empty() {
            return done;
        }
        let mut values: Vec<Option<bool>> = done.iter().collect();
        for row in off {
            values[row] = Some(false);
        }
        BooleanArray::from(values)
    }
}

fn rule_err(loaded: &LoadedRule, message: impl Into<String>) -> RuleError {
    RuleError::Rule {
        rule: loaded.rule.id.clone(),
        origin: loaded.origin.clone(),
        message: message.into(),
    }
}

fn eval_err(rule: &str, e: impl std::fmt::Display) -> RuleError {
    RuleError::Evaluate {
        rule: rule.to_string(),
        message: e.to_string(),
    }
}

/// A conjunct is cheap when it reads no body column and calls no function that parses JSON
/// (`json_*`, `k8s_*`): cheap conjuncts run on the whole batch, the others only on the rows
/// the cheap ones kept (which costs a copy of those rows, so list and string functions such
/// as `array_has` are better run in place).
fn is_cheap(e: &Expr) -> bool {
    let expensive = e.exists(|n| {
        Ok(match n {
            Expr::ScalarFunction(f) => {
                let name = f.func.name();
                name.starts_with("json_") || name.starts_with("k8s_")
            }
            Expr::Column(c) => BODY_COLUMNS.contains(&c.name.as_str()),
            _ => false,
        })
    });
    !expensive.unwrap_or(true)
}

/// A DataFusion context with the JSON and `k8s_*` functions, and the events schema.
pub(crate) fn context() -> Result<(SessionContext, DFSchema), String> {
    // Same dialect as `auditlake query` and backtests, so a condition parses identically
    // in both places.
    let ctx = auditlake_queries::sql_context(datafusion::prelude::SessionConfig::new())
        .map_err(|e| e.to_string())?;
    ctx.register_udf(direct_coalesce());
    let schema = DFSchema::try_from(events_schema().as_ref().clone()).map_err(|e| e.to_string())?;
    Ok((ctx, schema))
}

/// Simplifies (some functions, such as `coalesce`, exist only as a rewrite into `CASE`),
/// type-coerces and plans `expr` into a physical expression.
pub(crate) fn compile_expr(
    ctx: &SessionContext,
    schema: &DFSchema,
    expr: Expr,
) -> Result<Arc<dyn PhysicalExpr>, String> {
    let state = ctx.state();
    let simplifier = ExprSimplifier::new(
        SimplifyContext::builder()
            .with_schema(Arc::new(schema.clone()))
            .with_config_options(Arc::clone(state.config_options()))
            .build(),
    );
    let expr = simplifier
        .coerce(expr, schema)
        .and_then(|e| simplifier.simplify(e))
        .map_err(|e| e.to_string())?;
    ctx.create_physical_expr(expr, schema)
        .map_err(|e| e.to_string())
}

/// Makes every exclusion in a rule condition fail closed: `NOT e`, `x NOT IN (...)`,
/// `x NOT LIKE p` and `x NOT BETWEEN a AND b` become `(...) IS NOT TRUE`, so an unknown
/// (NULL) value can no longer exclude an event. In SQL, `NOT (user IN ($admins) OR
/// array_has_any(user_groups, ...))` is NULL when the event carries no groups, and a NULL
/// condition does not fire: an attacker's event without `user.groups` went unreported. An
/// unknown value now makes a rule fire rather than stay silent.
pub fn fail_closed(expr: Expr) -> Expr {
    use datafusion::common::tree_node::Transformed;
    use datafusion::logical_expr::expr::{InList, Like};
    expr.transform_up(|e| {
        Ok(match e {
            Expr::Not(inner) => Transformed::yes(Expr::IsNotTrue(inner)),
            Expr::InList(InList {
                expr,
                list,
                negated: true,
            }) => Transformed::yes(Expr::IsNotTrue(Box::new(Expr::InList(InList {
                expr,
                list,
                negated: false,
            })))),
            Expr::Like(like) if like.negated => {
                Transformed::yes(Expr::IsNotTrue(Box::new(Expr::Like(Like {
                    negated: false,
                    ..like
                }))))
            }
            Expr::SimilarTo(like) if like.negated => {
                Transformed::yes(Expr::IsNotTrue(Box::new(Expr::SimilarTo(Like {
                    negated: false,
                    ..like
                }))))
            }
            Expr::Between(between) if between.negated => Transformed::yes(Expr::IsNotTrue(
                Box::new(Expr::Between(datafusion::logical_expr::Between {
                    negated: false,
                    ..between
                })),
            )),
            other => Transformed::no(other),
        })
    })
    .map(|t| t.data)
    // Proof: the closure above returns `Ok` on every path.
    .expect("the rewrite closure never fails")
}

/// Parses `sql` against the events schema and checks it is boolean.
pub(crate) fn parse_condition(
    ctx: &SessionContext,
    schema: &DFSchema,
    sql: &str,
) -> Result<Expr, String> {
    let expr = ctx.parse_sql_expr(sql, schema).map_err(|e| e.to_string())?;
    let ty = expr.get_type(schema).map_err(|e| e.to_string())?;
    if ty != DataType::Boolean && ty != DataType::Null {
        return Err(format!("the condition is {ty}, not a boolean expression"));
    }
    Ok(expr)
}

/// The columns `exprs` read, as indices into the events schema, and that projection's schema:
/// a rule is evaluated on its projection, so filtering inside DataFusion (and ours) copies
/// only the columns it reads, never the bodies it does not.
fn projection(exprs: &[&Expr]) -> Result<(Vec<usize>, DFSchema), String> {
    let schema = events_schema();
    let mut indices: Vec<usize> = exprs
        .iter()
        .flat_map(|e| e.column_refs())
        .map(|c| schema.index_of(&c.name).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    indices.sort_unstable();
    indices.dedup();
    let projected = schema.project(&indices).map_err(|e| e.to_string())?;
    let df = DFSchema::try_from(projected).map_err(|e| e.to_string())?;
    Ok((indices, df))
}

fn evaluate_mask(
    rule: &str,
    e: &Arc<dyn PhysicalExpr>,
    batch: &RecordBatch,
) -> Result<BooleanArray, RuleError> {
    let value = e.evaluate(batch).map_err(|x| eval_err(rule, x))?;
    let array = value
        .into_array(batch.num_rows())
        .map_err(|x| eval_err(rule, x))?;
    array
        .as_boolean_opt()
        .cloned()
        .ok_or_else(|| eval_err(rule, "the condition did not give booleans"))
}

impl Detector {
    /// Compiles every enabled rule of `set`. A rule that does not compile is an error naming
    /// the rule, its file, and DataFusion's message (with the position, for syntax errors).
    pub fn compile(set: &RuleSet, options: &DetectorOptions) -> Result<Self, RuleError> {
        let internal = |message: String| RuleError::Evaluate {
            rule: "(engine)".into(),
            message,
        };
        let (ctx, schema) = context().map_err(internal)?;
        let mut rules = Vec::new();
        let mut conjuncts = ConjunctPool::default();
        for loaded in set.enabled() {
            rules.push(Self::compile_rule(
                &ctx,
                &schema,
                set,
                loaded,
                &mut conjuncts,
            )?);
        }
        let done = parse_condition(&ctx, &schema, DONE_SQL).map_err(internal)?;
        let denied = parse_condition(&ctx, &schema, DENIED_SQL).map_err(internal)?;
        let (outcome_columns, outcome_schema) = projection(&[&done, &denied]).map_err(internal)?;
        let outcome = |e: Expr| compile_expr(&ctx, &outcome_schema, e).map_err(internal);
        Ok(Self {
            rules,
            conjuncts,
            done: outcome(done)?,
            denied: outcome(denied)?,
            outcome_columns,
            folder: Folder::new(options.fold_window_seconds),
            upgrades: UpgradedRequests::default(),
            burst: (options.burst_threshold > 0).then(|| {
                ForbiddenBurst::new(options.burst_threshold, options.burst_window_seconds)
            }),
            drift: RbacDrift::new(
                options.rbac_baseline.clone(),
                options.archive_run_id.as_deref(),
            ),
            findings_table: options.archive_run_id.as_deref().map(FindingsTable::new),
            newest_micros: i64::MIN,
        })
    }

    fn compile_rule(
        ctx: &SessionContext,
        schema: &DFSchema,
        set: &RuleSet,
        loaded: &LoadedRule,
        pool: &mut ConjunctPool,
    ) -> Result<CompiledRule, RuleError> {
        let condition = set
            .expand_lists(&loaded.rule.condition)
            .map_err(|m| rule_err(loaded, format!("condition: {m}")))?;
        let expr = parse_condition(ctx, schema, &condition)
            .map(fail_closed)
            .map_err(|m| rule_err(loaded, format!("condition: {m}")))?;
        let details = match &loaded.rule.details {
            None => None,
            Some(sql) => {
                let sql = set
                    .expand_lists(sql)
                    .map_err(|m| rule_err(loaded, format!("details: {m}")))?;
                Some(
                    ctx.parse_sql_expr(&sql, schema)
                        .and_then(|e| e.cast_to(&DataType::Utf8, schema))
                        .map_err(|e| rule_err(loaded, format!("details: {e}")))?,
                )
            }
        };
        let (cheap, costly): (Vec<&Expr>, Vec<&Expr>) = split_conjunction(&expr)
            .into_iter()
            .partition(|e| is_cheap(e));
        let rest = conjunction(costly.into_iter().cloned())
            .map(|e| ProjectedExpr::compile(ctx, e))
            .transpose()
            .map_err(|m| rule_err(loaded, format!("condition: {m}")))?;
        let details = details
            .map(|e| ProjectedExpr::compile(ctx, e))
            .transpose()
            .map_err(|m| rule_err(loaded, format!("details: {m}")))?;
        let prefilter = cheap
            .into_iter()
            .map(|e| pool.intern(ctx, e))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| rule_err(loaded, format!("condition: {m}")))?;
        Ok(CompiledRule {
            loaded: loaded.clone(),
            prefilter,
            rest,
            details,
        })
    }

    /// The compiled rules.
    pub fn rules(&self) -> impl Iterator<Item = &LoadedRule> {
        self.rules.iter().map(|r| &r.loaded)
    }

    /// Runs every rule and stateful detector over `batch` (events schema) and returns the
    /// findings to emit now (repeats folded).
    pub fn evaluate(&mut self, batch: &RecordBatch) -> Result<Vec<Finding>, RuleError> {
        if batch.num_rows() == 0 {
            return Ok(Vec::new());
        }
        let cols = EventColumns::new(batch).map_err(|m| eval_err("(engine)", m))?;
        let (hits, repeats) = self.match_rules(batch, &cols)?;
        let mut out = Vec::new();
        for mut hit in hits {
            let f = self.finding(&cols, &hit);
            out.extend(self.folder.open_window(std::mem::take(&mut hit.key), f));
        }
        for mut hit in repeats {
            let (at, id) = (cols.stage_at(hit.row), cols.audit_id_str(hit.row));
            let object = self.folded_object(hit.rule, &cols, hit.row);
            if !self.folder.try_fold(&hit.key, at, id, object.as_deref()) {
                // Beyond the window its first match opened (a batch spanning longer than the
                // fold window): a finding of its own.
                let f = self.finding(&cols, &hit);
                out.extend(self.folder.open_window(std::mem::take(&mut hit.key), f));
            }
        }
        if let Some(burst) = &mut self.burst {
            out.extend(burst.observe(&cols, batch.num_rows()));
        }
        for f in self.drift.observe(&cols, batch.num_rows()) {
            out.extend(self.folder.push(f));
        }
        let newest = (0..batch.num_rows())
            .map(|r| cols.stage_at(r))
            .max()
            .unwrap_or(i64::MIN);
        self.newest_micros = self.newest_micros.max(newest);
        out.extend(self.folder.expire(self.newest_micros));
        self.keep(&out);
        Ok(out)
    }

    /// Closes every folding window: the summaries of folded repeats.
    pub fn flush(&mut self) -> Vec<Finding> {
        let out = self.folder.flush();
        self.keep(&out);
        out
    }

    fn keep(&mut self, findings: &[Finding]) {
        if let Some(t) = &mut self.findings_table {
            for f in findings {
                t.push(f);
            }
        }
    }

    /// The `findings` and `rbac_history` rows gathered since the last call, as Parquet files
    /// to commit with the events they came from (none unless `archive_run_id` was set).
    pub fn take_files(&mut self) -> Result<Vec<FinishedFile>, String> {
        if self.findings_table.is_none() {
            return Ok(Vec::new());
        }
        let mut files = self.drift.take_files()?;
        if let Some(t) = &mut self.findings_table {
            files.extend(t.take_files()?);
        }
        Ok(files)
    }

    /// Drops the `findings` and `rbac_history` rows gathered since the last
    /// [`Detector::take_files`]: the events they came from will be seen again (the archiver
    /// restarts from its last commit), and the tables must hold each row once.
    pub fn discard_pending_files(&mut self) {
        self.drift.discard_pending();
        if let Some(t) = &mut self.findings_table {
            t.discard();
        }
    }

    /// Restores the RBAC state from `rbac_history` rows read back from the archive;
    /// returns how many versions were read.
    pub fn restore_rbac_state(&mut self, batches: &[RecordBatch]) -> Result<usize, String> {
        self.drift.restore(batches)
    }

    /// What the detectors forgot because a cap on their state was reached (shared counters).
    pub fn evictions(&self) -> crate::bounded_state::EvictionCounters {
        crate::bounded_state::EvictionCounters {
            fold_windows: self.folder.evictions(),
            burst_principals: self
                .burst
                .as_ref()
                .map(ForbiddenBurst::evictions)
                .unwrap_or_default(),
            rbac_objects: self.drift.evictions(),
        }
    }

    /// RBAC objects whose state is tracked.
    pub fn rbac_objects_tracked(&self) -> usize {
        self.drift.tracked()
    }

    /// The matches of every rule on `batch` that open a finding; repeats of an open finding
    /// are counted into it here, before their details are computed or a finding is built.
    fn match_rules(
        &mut self,
        batch: &RecordBatch,
        cols: &EventColumns<'_>,
    ) -> Result<(Vec<Hit>, Vec<Hit>), RuleError> {
        let outcome_batch = batch
            .project(&self.outcome_columns)
            .map_err(|e| eval_err("(engine)", e))?;
        let done = evaluate_mask("(done)", &self.done, &outcome_batch)?;
        let done = self.upgrades.once_per_request(done, cols);
        let denied = evaluate_mask("(denied)", &self.denied, &outcome_batch)?;
        let completed = or(&done, &denied).map_err(|e| eval_err("(engine)", e))?;
        let (mut hits, mut repeats) = (Vec::new(), Vec::new());
        let mut cache: Vec<Option<BooleanArray>> = vec![None; self.conjuncts.conjuncts.len()];
        // The folding key of each match is built here, allocated only for new findings.
        let mut key = String::with_capacity(128);
        for (index, rule) in self.rules.iter().enumerate() {
            let id = &rule.loaded.rule.id;
            let start = match rule.loaded.rule.scope {
                Scope::Outcome => Some(completed.clone()),
                Scope::Any => None,
            };
            let mut rows = self
                .conjuncts
                .rows(&mut cache, &rule.prefilter, start, batch, id)?;
            if let Some(rest) = &rule.rest
                && !rows.is_empty()
            {
                rows = keep_where(id, rest, batch, rows)?;
            }
            if rows.is_empty() {
                continue;
            }
            let outcome_of = |row: usize| match rule.loaded.rule.scope {
                Scope::Any => Outcome::Observed,
                Scope::Outcome if done.is_valid(row) && done.value(row) => Outcome::Done,
                Scope::Outcome => Outcome::Denied,
            };
            let mut fresh: Vec<(u32, Outcome, String)> = Vec::new();
            let mut fresh_keys: HashSet<String> = HashSet::new();
            for r in rows {
                let row = r as usize;
                let outcome = outcome_of(row);
                fold_key_prefix(&mut key, id, outcome, cols.principal_str(row));
                if rule.loaded.rule.fold_by == FoldBy::Object {
                    cols.push_object_key(row, &mut key);
                }
                // Most matches repeat an open finding: count them and go on. A repeat of a
                // finding this batch opens is counted once that window is open.
                if fresh_keys.contains(key.as_str()) {
                    repeats.push(Hit {
                        rule: index,
                        row,
                        outcome,
                        details: None,
                        key: key.clone(),
                    });
                } else if !self.folder.try_fold(
                    &key,
                    cols.stage_at(row),
                    cols.audit_id_str(row),
                    (rule.loaded.rule.fold_by == FoldBy::Principal)
                        .then(|| cols.object(row).display())
                        .as_deref(),
                ) {
                    fresh_keys.insert(key.clone());
                    fresh.push((r, outcome, key.clone()));
                }
            }
            if fresh.is_empty() {
                continue;
            }
            let details = match &rule.details {
                Some(d) => {
                    let take: UInt32Array = fresh.iter().map(|f| f.0).collect();
                    let selected = take_record_batch(&d.input(batch, id)?, &take)
                        .map_err(|e| eval_err(id, e))?;
                    let v = d
                        .expr
                        .evaluate(&selected)
                        .and_then(|v| v.into_array(selected.num_rows()))
                        .map_err(|e| eval_err(id, e))?;
                    let texts = v
                        .as_string_opt::<i32>()
                        .ok_or_else(|| eval_err(id, "details did not give text"))?;
                    texts.iter().map(|t| t.map(str::to_string)).collect()
                }
                None => vec![None; fresh.len()],
            };
            for ((row, outcome, key), details) in fresh.into_iter().zip(details) {
                hits.push(Hit {
                    rule: index,
                    row: row as usize,
                    outcome,
                    details,
                    key,
                });
            }
        }
        Ok((hits, repeats))
    }

    /// The object a repeat adds to its finding's list, for rules folded by principal (whose
    /// findings gather several objects); `None` for the others (one object per finding).
    fn folded_object(&self, rule: usize, cols: &EventColumns<'_>, row: usize) -> Option<String> {
        (self.rules[rule].loaded.rule.fold_by == FoldBy::Principal)
            .then(|| cols.object(row).display())
    }

    fn finding(&self, cols: &EventColumns<'_>, hit: &Hit) -> Finding {
        let rule = &self.rules[hit.rule].loaded.rule;
        let severity = match hit.outcome {
            Outcome::Denied => rule.denied_severity.unwrap_or(rule.severity.lowered(2)),
            _ => rule.severity,
        };
        let micros = cols.stage_at(hit.row);
        let time = format_rfc3339_micros(micros);
        Finding {
            rule_id: rule.id.clone(),
            severity,
            title: rule.title.clone(),
            outcome: hit.outcome,
            cluster: cols.cluster(hit.row),
            last_time: time.clone(),
            time,
            principal: cols.principal(hit.row),
            impersonated: cols.impersonated(hit.row),
            source_ip: cols.source_ip(hit.row),
            verb: cols.verb(hit.row),
            objects: vec![cols.object(hit.row).display()],
            object: cols.object(hit.row),
            details: hit.details.clone(),
            response_code: cols.code(hit.row),
            evidence: vec![cols.audit_id(hit.row)],
            count: 1,
            mitre: rule.mitre.clone(),
            remediation: rule.remediation.clone(),
            time_micros: micros,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_builtin_pack_compiles_and_a_bad_condition_names_rule_file_and_position() {
        let set = RuleSet::builtin().unwrap();
        let d = Detector::compile(&set, &DetectorOptions::default()).unwrap();
        assert!(d.rules().count() >= 20);

        let mut bad = set.clone();
        bad.add_text(
            "rules:\n  - id: MY-1\n    title: t\n    severity: low\n    condition: verb = 'get' AND AND resource = 'x'\n",
            "mine.yaml",
        )
        .unwrap();
        let err = Detector::compile(&bad, &DetectorOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.starts_with("rule MY-1 (mine.yaml): condition:"),
            "{err}"
        );
        assert!(err.contains("Line: 1, Column: 22"), "the position: {err}");

        let mut typo = set.clone();
        typo.add_text(
            "rules:\n  - id: MY-2\n    title: t\n    severity: low\n    condition: verbb = 'get'\n",
            "mine.yaml",
        )
        .unwrap();
        let err = Detector::compile(&typo, &DetectorOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("MY-2") && err.contains("verbb"), "{err}");

        let mut not_bool = set;
        not_bool
            .add_text(
                "rules:\n  - id: MY-3\n    title: t\n    severity: low\n    condition: verb\n",
                "mine.yaml",
            )
            .unwrap();
        let err = Detector::compile(&not_bool, &DetectorOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not a boolean expression"), "{err}");
    }
}
