//! Detectors of auditlake: rules as SQL over Arrow batches, the built-in rule pack, stateful
//! detectors, findings and their folding, and scenario tests.
//!
//! - [`RuleSet`]: rule files (YAML) with overrides by id and named lists.
//! - [`Detector`]: the rules compiled into DataFusion physical expressions, run per batch.
//! - [`Finding`]: the one shape every sink gets.
//! - [`register_functions`]: the `k8s_*` and JSON SQL functions, also for backtests.

mod archive_table;
mod backtest_rule;
mod bounded_state;
mod burst;
mod coalesce;
mod engine;
mod error;
mod event_columns;
mod falco;
mod finding;
mod findings_table;
mod learn;
mod null_check;
mod rbac_drift;
mod rbac_state;
mod rule;
mod scenario;
mod sink;
mod stateful_rules;

pub use auditlake_queries::{k8s_functions, register_functions};
pub use backtest_rule::{LATEST_RBAC_VERSIONS_SQL, RuleBacktest};
pub use bounded_state::{
    EvictionCounters, MAX_BURST_PRINCIPALS, MAX_FOLD_WINDOWS, MAX_RBAC_OBJECTS,
};
pub use burst::BURST_RULE_ID;
pub use engine::{DENIED_SQL, DONE_SQL, Detector, DetectorOptions, fail_closed};
pub use error::RuleError;
pub use falco::{FalcoCase, FalcoOutcome, FalcoReport, run_falco};
pub use finding::{Finding, Folder, MAX_EVIDENCE, ObjectRef, Outcome};
pub use learn::{LEARNED_LISTS, LearnedList, Seen, learn_query, proposal};
pub use null_check::{NullCheck, NullWarning};
pub use rbac_drift::{
    Change, DRIFT_ADDED_RULE_ID, DRIFT_CHANGED_RULE_ID, DRIFT_REMOVED_RULE_ID, RbacVersion,
};
pub use rbac_state::{BaselineError, RbacBaseline, RbacContent, RbacKey, RbacKind};
pub use rule::{BUILTIN_RULE_FILES, FoldBy, LoadedRule, Rule, RuleSet, Scope, Severity};
pub use scenario::{
    Expect, Label, Report, Scenario, ScenarioResult, complete_event, run_scenarios, scenario_files,
};
pub use sink::{FindingSinks, SinkCounters, SinkError, SinkStats, SinkTarget};
pub use stateful_rules::{STATEFUL_RULES, StatefulRule};
