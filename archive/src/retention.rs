//! Retention: whole partitions older than a cutoff are taken out of the archive by a
//! retention record (signed like every record when the archive is signed) that names each
//! file it removes, the policy and the legal holds it checked; only then are the bytes
//! deleted. A legal hold (given to the command, or a marker object under `_legal_hold/`)
//! keeps every partition it covers. Old proofs and consistency still verify: the log only
//! grows, and the records that committed the files stay.

use std::collections::BTreeMap;

use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use crate::archive::{Archive, CommitContents};
use crate::error::ArchiveError;
use crate::layout::{DAY_MICROS, QUARANTINE_DIR, Table, partition_span, partition_value};
use crate::manifest::{ManifestRecord, RemovedFile, RetentionInfo};

use auditlake_schema::timestamp::{format_rfc3339_micros, parse_rfc3339_micros};

/// Prefix under the archive root holding legal hold markers (`<name>.json`).
pub const LEGAL_HOLD_DIR: &str = "_legal_hold";

/// A legal hold: what it covers must not be removed, whatever the policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegalHold {
    /// Its name (a case, a ticket).
    pub name: String,
    /// The cluster it covers; every cluster when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// First day it covers (YYYY-MM-DD, UTC); from the beginning when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Day after the last it covers (YYYY-MM-DD, exclusive); to the end when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Why.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

fn day_micros(date: &str) -> Option<i64> {
    parse_rfc3339_micros(&format!("{date}T00:00:00Z"))
}

impl LegalHold {
    /// Parses `name[:cluster=C][,from=YYYY-MM-DD][,to=YYYY-MM-DD]` as given on the
    /// command line (`case-42:cluster=prod,from=2026-01-01`).
    pub fn parse_spec(spec: &str) -> Result<Self, String> {
        let (name, rest) = spec.split_once(':').unwrap_or((spec, ""));
        if name.is_empty() {
            return Err(format!("legal hold {spec:?}: a hold needs a name"));
        }
        let mut hold = LegalHold {
            name: name.to_string(),
            cluster: None,
            from: None,
            to: None,
            reason: String::new(),
        };
        for part in rest.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("legal hold {spec:?}: {part:?} is not key=value"))?;
            match k {
                "cluster" => hold.cluster = Some(v.to_string()),
                "from" => hold.from = Some(v.to_string()),
                "to" => hold.to = Some(v.to_string()),
                other => {
                    return Err(format!(
                        "legal hold {spec:?}: unknown key {other:?} (cluster, from, to)"
                    ));
                }
            }
        }
        hold.check()?;
        Ok(hold)
    }

    fn check(&self) -> Result<(), String> {
        for d in [&self.from, &self.to].into_iter().flatten() {
            if day_micros(d).is_none() {
                return Err(format!("legal hold {}: {d:?} is not YYYY-MM-DD", self.name));
            }
        }
        Ok(())
    }

    /// Whether it covers data of `cluster` in `[start, end)` (µs).
    pub fn covers(&self, cluster: &str, start: i64, end: i64) -> bool {
        let from = self
            .from
            .as_deref()
            .and_then(day_micros)
            .unwrap_or(i64::MIN);
        let to = self.to.as_deref().and_then(day_micros).unwrap_or(i64::MAX);
        self.cluster.as_deref().is_none_or(|c| c == cluster) && start < to && end > from
    }
}

/// The holds kept as marker objects under `_legal_hold/`. A marker that cannot be read is
/// an error: retention must not run past a hold it cannot understand.
pub async fn hold_markers(archive: &Archive) -> Result<Vec<LegalHold>, ArchiveError> {
    let mut holds = Vec::new();
    for (rel, bytes) in archive.read_all_under(LEGAL_HOLD_DIR).await? {
        let hold: LegalHold =
            serde_json::from_slice(&bytes).map_err(|e| ArchiveError::Manifest {
                path: rel.clone(),
                message: format!("legal hold marker: {e}"),
            })?;
        hold.check().map_err(|message| ArchiveError::Manifest {
            path: rel.clone(),
            message,
        })?;
        holds.push(hold);
    }
    Ok(holds)
}

/// One live file and the time span its partition covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partitioned {
    /// Path relative to the archive root.
    pub path: String,
    /// Its table, or `None` for a quarantine file.
    pub table: Option<Table>,
    /// The partition directory (`events/cluster=c/date=d/hour=h`).
    pub partition: String,
    /// Cluster.
    pub cluster: String,
    /// The partition's span, µs: `[start, end)`.
    pub span: (i64, i64),
    /// SHA-256 as committed.
    pub sha256: String,
    /// Size.
    pub bytes: u64,
}

/// What a retention run removes and what holds keep.
#[derive(Debug, Default)]
pub struct RetentionPlan {
    /// Files whose partitions end at or before this (µs).
    pub cutoff_micros: i64,
    /// Files to remove.
    pub remove: Vec<Partitioned>,
    /// Files past the cutoff that a hold keeps, with the hold's name.
    pub held: Vec<(Partitioned, String)>,
    /// The holds checked.
    pub holds: Vec<LegalHold>,
}

/// Plans retention: every live file whose partition ends at or before `cutoff_micros`,
/// unless a hold covers it.
pub async fn plan(
    archive: &Archive,
    cutoff_micros: i64,
    mut holds: Vec<LegalHold>,
) -> Result<RetentionPlan, ArchiveError> {
    holds.extend(hold_markers(archive).await?);
    let mut live: BTreeMap<String, Partitioned> = BTreeMap::new();
    for (record, _) in archive.records().await? {
        let committed = parse_rfc3339_micros(&record.committed_at).unwrap_or(i64::MAX);
        for f in &record.files {
            let Some(table) = Table::from_name(&f.table) else {
                continue;
            };
            let Some((partition, cluster, span)) = partition_span(&f.path, table) else {
                continue; // not a partitioned path this version files: never guessed at
            };
            live.insert(
                f.path.clone(),
                Partitioned {
                    path: f.path.clone(),
                    table: Some(table),
                    partition,
                    cluster,
                    span,
                    sha256: f.sha256.clone(),
                    bytes: f.bytes,
                },
            );
        }
        for q in &record.quarantine {
            let cluster = partition_value(&q.path, "cluster")
                .unwrap_or("")
                .to_string();
            // A quarantine file's time is its commit's: the day it was committed.
            let day = committed.div_euclid(DAY_MICROS) * DAY_MICROS;
            live.insert(
                q.path.clone(),
                Partitioned {
                    path: q.path.clone(),
                    table: None,
                    partition: format!("{QUARANTINE_DIR}/cluster={cluster}"),
                    cluster,
                    span: (day, day + DAY_MICROS),
                    sha256: q.sha256.clone(),
                    bytes: q.bytes,
                },
            );
        }
        for r in &record.removed {
            live.remove(&r.path);
        }
    }
    let mut out = RetentionPlan {
        cutoff_micros,
        ..Default::default()
    };
    for (_, file) in live {
        if file.span.1 > cutoff_micros {
            continue;
        }
        match holds
            .iter()
            .find(|h| h.covers(&file.cluster, file.span.0, file.span.1))
        {
            Some(h) => out.held.push((file, h.name.clone())),
            None => out.remove.push(file),
        }
    }
    out.holds = holds;
    Ok(out)
}

/// Writes the retention record for `plan` (`policy` says what was asked, e.g. `keep 400d`),
/// then deletes the files it removes. Returns the record and the files deleted.
pub async fn apply(
    archive: &Archive,
    writer_id: &str,
    policy: &str,
    plan: &RetentionPlan,
) -> Result<(ManifestRecord, u64), ArchiveError> {
    let contents = CommitContents {
        removed: plan
            .remove
            .iter()
            .map(|f| RemovedFile {
                path: f.path.clone(),
                sha256: f.sha256.clone(),
                reason: "retention".into(),
            })
            .collect(),
        retention: Some(RetentionInfo {
            policy: policy.to_string(),
            cutoff: format_rfc3339_micros(plan.cutoff_micros),
            legal_holds: plan.holds.iter().map(|h| h.name.clone()).collect(),
            held_files: plan.held.len() as u64,
        }),
        ..Default::default()
    };
    let outcome = archive.commit(writer_id, &contents, None, false).await?;
    // The record is durable: the files are out of the archive whatever happens next.
    let mut deleted = 0u64;
    for f in &plan.remove {
        match archive.store().delete(&archive.path(&f.path)).await {
            Ok(()) => deleted += 1,
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => {
                tracing::warn!(path = %f.path, error = %e, "could not delete a file the retention record removed; it is no longer part of the archive")
            }
        }
    }
    Ok((outcome.record, deleted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::HOUR_MICROS;

    #[test]
    fn holds_parse_and_cover_by_cluster_and_days() {
        let h =
            LegalHold::parse_spec("case-42:cluster=prod,from=2026-01-01,to=2026-02-01").unwrap();
        let jan = day_micros("2026-01-15").unwrap();
        assert!(h.covers("prod", jan, jan + HOUR_MICROS));
        assert!(!h.covers("dev", jan, jan + HOUR_MICROS));
        let feb = day_micros("2026-02-01").unwrap();
        assert!(!h.covers("prod", feb, feb + HOUR_MICROS));
        assert!(LegalHold::parse_spec("all").unwrap().covers("x", 0, 1));
        assert!(LegalHold::parse_spec("x:when=now").is_err());
        assert!(LegalHold::parse_spec("x:from=yesterday").is_err());
    }
}
