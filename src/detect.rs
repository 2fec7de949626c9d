//! Wires the detectors (`auditlake-analytics`) into a source as its batch observer, with the
//! findings sinks the flags name.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use arrow::array::RecordBatch;
use auditlake_analytics::{Detector, DetectorOptions, FindingSinks, RuleSet, SinkTarget};
use auditlake_ingest::BatchObserver;

/// The rule pack compiled, feeding its findings to the sinks.
pub struct Detection {
    detector: Detector,
    sinks: FindingSinks,
}

impl BatchObserver for Detection {
    fn observe(&mut self, batch: &RecordBatch) -> u64 {
        match self.detector.evaluate(batch) {
            Ok(findings) => self.emit(findings),
            Err(e) => {
                // A rule that fails at run time must not stop archiving; say so loudly.
                tracing::error!(error = %e, rows = batch.num_rows(), "detectors failed on a batch");
                0
            }
        }
    }

    fn finish(&mut self) -> u64 {
        let pending = self.detector.flush();
        self.emit(pending)
    }
}

impl Detection {
    fn emit(&mut self, findings: Vec<auditlake_analytics::Finding>) -> u64 {
        let n = findings.len() as u64;
        for f in findings {
            self.sinks.send(f);
        }
        n
    }
}

/// Loads the built-in pack plus `rules`, compiles it, and opens the `findings` targets;
/// `None` when the targets say `none` (detection off).
pub fn detection(
    rules: &[PathBuf],
    findings: &[String],
    fold_window_seconds: u64,
) -> Result<Option<Box<dyn BatchObserver>>> {
    if findings.iter().any(|f| f == "none") {
        if findings.len() > 1 {
            bail!("--findings none cannot be combined with other targets");
        }
        return Ok(None);
    }
    let targets: Vec<SinkTarget> = findings
        .iter()
        .map(|f| f.parse().map_err(anyhow::Error::msg))
        .collect::<Result<_>>()
        .context("--findings")?;
    let set = RuleSet::load(rules).context("loading rules")?;
    let options = DetectorOptions {
        fold_window_seconds,
        ..DetectorOptions::default()
    };
    let detector = Detector::compile(&set, &options).context("compiling rules")?;
    tracing::info!(
        rules = detector.rules().count(),
        targets = ?findings,
        "detectors ready"
    );
    let sinks = FindingSinks::start(&targets).context("opening findings targets")?;
    Ok(Some(Box::new(Detection { detector, sinks })))
}
