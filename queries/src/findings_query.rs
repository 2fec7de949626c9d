//! The query behind `auditlake findings`: the archived findings matching a filter, newest
//! first.

/// Severities from least to most severe, as the `findings` table spells them.
pub const SEVERITIES: [&str; 5] = ["info", "low", "medium", "high", "critical"];

/// Which findings to list.
#[derive(Debug, Clone)]
pub struct FindingsFilter {
    /// Only findings at or after this time (µs since the epoch).
    pub since_micros: i64,
    /// Only these rules (all when empty).
    pub rules: Vec<String>,
    /// Only findings at least this severe (one of [`SEVERITIES`]).
    pub min_severity: String,
    /// Only this cluster.
    pub cluster: Option<String>,
    /// Every column (for JSON output) rather than the few a table shows.
    pub all_columns: bool,
    /// Most rows.
    pub limit: usize,
}

/// `s` as an SQL string literal.
pub(crate) fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl FindingsFilter {
    /// The SQL text; `Err` names a severity that is not one of [`SEVERITIES`]. Every value
    /// from the user is quoted as a literal.
    pub fn sql(&self) -> Result<String, String> {
        let rank = SEVERITIES
            .iter()
            .position(|s| *s == self.min_severity)
            .ok_or_else(|| {
                format!(
                    "--min-severity {:?}: expected one of {}",
                    self.min_severity,
                    SEVERITIES.join(", ")
                )
            })?;
        let cutoff = auditlake_schema::timestamp::format_rfc3339_micros(self.since_micros);
        let mut filters = vec![
            // The date partition first, so only those days' files are read.
            format!("date >= '{}'", &cutoff[..10]),
            format!("time >= TIMESTAMP '{cutoff}'"),
            format!(
                "severity IN ({})",
                SEVERITIES[rank..]
                    .iter()
                    .map(|s| quoted(s))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ];
        if !self.rules.is_empty() {
            let ids: Vec<String> = self.rules.iter().map(|r| quoted(r)).collect();
            filters.push(format!("rule_id IN ({})", ids.join(", ")));
        }
        if let Some(c) = &self.cluster {
            filters.push(format!("cluster = {}", quoted(c)));
        }
        let columns = if self.all_columns {
            "*"
        } else {
            "time, severity, rule_id, outcome, cluster, principal, verb, \
             concat_ws('/', resource, namespace, name) AS object, count, \
             substr(details, 1, 80) AS details"
        };
        Ok(format!(
            "SELECT {columns} FROM findings WHERE {} ORDER BY time DESC, rule_id LIMIT {}",
            filters.join(" AND "),
            self.limit
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_quoted_and_a_bad_severity_is_an_error() {
        let f = FindingsFilter {
            since_micros: 1_793_491_200_000_000,
            rules: vec!["K8S-RBAC-001".into(), "x' OR '1'='1".into()],
            min_severity: "high".into(),
            cluster: Some("prod".into()),
            all_columns: true,
            limit: 5,
        };
        let sql = f.sql().unwrap();
        assert!(sql.contains("date >= '2026-11-01'"), "{sql}");
        assert!(sql.contains("severity IN ('high', 'critical')"), "{sql}");
        assert!(sql.contains("'x'' OR ''1''=''1'"), "{sql}");
        assert!(sql.ends_with("LIMIT 5"), "{sql}");
        let bad = FindingsFilter {
            min_severity: "severe".into(),
            ..f
        };
        assert!(bad.sql().unwrap_err().contains("expected one of"));
    }
}
