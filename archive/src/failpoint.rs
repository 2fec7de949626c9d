//! Failpoints for crash tests: `AUDITLAKE_FAILPOINT=<name>` makes the process abort at the
//! named point, as a SIGKILL would hit it there. Points: `before-manifest-record` (a
//! commit's files are put, its record is not written), `before-source-durable` (the record
//! is written, the source is not yet told: Kafka offsets not committed, the log not
//! trimmed). Unset in production; checking costs one load of a cached value.

use std::sync::OnceLock;

/// Aborts the process if `AUDITLAKE_FAILPOINT` names `point`.
pub fn failpoint(point: &str) {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var("AUDITLAKE_FAILPOINT").ok());
    if armed.as_deref() == Some(point) {
        eprintln!("auditlake: failpoint {point} reached: aborting (AUDITLAKE_FAILPOINT)");
        std::process::abort();
    }
}
