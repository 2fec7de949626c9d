//! Wires the detectors (`auditlake-analytics`) into a source as its batch observer: findings
//! to the sinks the flags name and, with the events, to the archive's `findings` table; RBAC
//! state restored from the archive's `rbac_history` and compared with the baseline.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use arrow::array::RecordBatch;
use auditlake_analytics::{
    Detector, DetectorOptions, Finding, FindingSinks, RbacBaseline, RuleSet, SinkTarget,
};
use auditlake_archive::FinishedFile;
use auditlake_ingest::{Archive, BatchObserver, ObserverCounter};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The rule pack compiled, feeding its findings to the sinks.
pub struct Detection {
    detector: Detector,
    sinks: FindingSinks,
    /// Batches a rule failed to evaluate on (archiving went on).
    rule_errors: Arc<AtomicU64>,
}

impl BatchObserver for Detection {
    fn observe(&mut self, batch: &RecordBatch) -> u64 {
        match self.detector.evaluate(batch) {
            Ok(findings) => self.emit(findings),
            Err(e) => {
                // A rule that fails at run time must not stop archiving; say so loudly.
                self.rule_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, rows = batch.num_rows(), "detectors failed on a batch");
                0
            }
        }
    }

    fn finish(&mut self) -> u64 {
        let pending = self.detector.flush();
        self.emit(pending)
    }

    fn discard_uncommitted(&mut self) {
        self.detector.discard_pending_files();
    }

    fn counters(&self) -> Vec<ObserverCounter> {
        let c = self.sinks.counters();
        let evicted = self.detector.evictions();
        vec![
            ObserverCounter {
                name: "findings_dropped",
                help: "Findings a target's full queue did not take (the findings table keeps them)",
                value: c.dropped.clone(),
            },
            ObserverCounter {
                name: "findings_delivery_failed",
                help: "Findings a target failed to deliver after its retries",
                value: c.failed.clone(),
            },
            ObserverCounter {
                name: "detector_state_evicted_fold_windows",
                help: "Open finding windows closed early because their cap was reached",
                value: evicted.fold_windows,
            },
            ObserverCounter {
                name: "detector_state_evicted_burst_principals",
                help: "Principals the 403-burst detector forgot because its cap was reached",
                value: evicted.burst_principals,
            },
            ObserverCounter {
                name: "detector_state_evicted_rbac_objects",
                help: "RBAC objects whose state was forgotten because the cap was reached",
                value: evicted.rbac_objects,
            },
            ObserverCounter {
                name: "rule_evaluation_errors",
                help: "Batches a rule failed to evaluate on (archiving went on)",
                value: self.rule_errors.clone(),
            },
        ]
    }

    fn commit_files(&mut self) -> Vec<FinishedFile> {
        match self.detector.take_files() {
            Ok(files) => files,
            Err(e) => {
                // The findings already went to their sinks; only the archive copy is missing.
                tracing::error!(error = %e, "cannot encode the findings/rbac_history tables");
                Vec::new()
            }
        }
    }
}

impl Detection {
    fn emit(&mut self, findings: Vec<Finding>) -> u64 {
        let n = findings.len() as u64;
        self.sinks.send_all(findings);
        n
    }
}

/// What the detection flags (and config keys) say.
pub struct DetectionSettings<'a> {
    /// Rule files or directories on top of the built-in pack.
    pub rules: &'a [PathBuf],
    /// Findings targets; `none` turns detection off.
    pub findings: &'a [String],
    /// Fold window of repeated findings.
    pub fold_window_seconds: u64,
    /// Directory (or file) of RBAC manifests drift is reported against.
    pub rbac_baseline: Option<&'a Path>,
    /// librdkafka properties (TLS, SASL) of `kafka://` findings targets.
    pub kafka_properties: Option<&'a std::collections::BTreeMap<String, String>>,
}

/// Loads the built-in pack plus the rule files, compiles it, loads the RBAC baseline,
/// restores the RBAC state from `archive`, and opens the findings targets; `None` when the
/// targets say `none` (detection off).
pub async fn detection(
    settings: &DetectionSettings<'_>,
    archive: &Archive,
    run_id: &str,
) -> Result<Option<Box<dyn BatchObserver>>> {
    let findings = settings.findings;
    if findings.iter().any(|f| f == "none") {
        if findings.len() > 1 {
            bail!("--findings none cannot be combined with other targets");
        }
        if settings.rbac_baseline.is_some() {
            bail!("--rbac-baseline needs detection on (--findings is none)");
        }
        return Ok(None);
    }
    let mut targets: Vec<SinkTarget> = findings
        .iter()
        .map(|f| f.parse().map_err(anyhow::Error::msg))
        .collect::<Result<_>>()
        .context("--findings")?;
    for t in &mut targets {
        if let (SinkTarget::Kafka { properties, .. }, Some(p)) = (t, settings.kafka_properties) {
            properties.clone_from(p);
        }
    }
    let set = RuleSet::load(settings.rules).context("loading rules")?;
    let baseline = match settings.rbac_baseline {
        Some(dir) => {
            let b = RbacBaseline::load(dir).context("--rbac-baseline")?;
            if b.is_empty() {
                bail!(
                    "--rbac-baseline {}: no Role, ClusterRole, RoleBinding or ClusterRoleBinding \
                     in {} file(s); every RBAC change would be reported as drift",
                    dir.display(),
                    b.files
                );
            }
            tracing::info!(path = %dir.display(), objects = b.len(), files = b.files, other_kinds_skipped = b.skipped, "RBAC baseline loaded");
            Some(b)
        }
        None => None,
    };
    let options = DetectorOptions {
        fold_window_seconds: settings.fold_window_seconds,
        rbac_baseline: baseline,
        archive_run_id: Some(run_id.to_string()),
        ..DetectorOptions::default()
    };
    let mut detector = Detector::compile(&set, &options).context("compiling rules")?;
    let restored = restore_rbac_state(&mut detector, archive).await?;
    tracing::info!(
        rules = detector.rules().count(),
        targets = ?findings,
        rbac_versions_read = restored,
        rbac_objects = detector.rbac_objects_tracked(),
        "detectors ready"
    );
    let sinks = FindingSinks::start(&targets).context("opening findings targets")?;
    Ok(Some(Box::new(Detection {
        detector,
        sinks,
        rule_errors: Arc::default(),
    })))
}

/// The latest committed version of every RBAC object, so a restart neither forgets what it
/// rebuilt nor reports it again.
async fn restore_rbac_state(detector: &mut Detector, archive: &Archive) -> Result<usize> {
    let session = crate::open_session(archive)
        .await
        .context("opening the archive to restore the RBAC state")?;
    let (_, batches) = session
        .sql(auditlake_analytics::LATEST_RBAC_VERSIONS_SQL)
        .await
        .context("reading rbac_history from the archive")?;
    detector
        .restore_rbac_state(&batches)
        .map_err(anyhow::Error::msg)
        .context("restoring the RBAC state")
}
