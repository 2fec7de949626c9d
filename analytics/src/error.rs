//! Errors of rule loading, compilation and scenario runs.

use std::path::PathBuf;

/// Why rules could not be loaded or compiled, or a scenario could not be run.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// A rule or scenario file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file is not valid YAML of the expected shape.
    #[error("{origin}: {message}")]
    Parse {
        /// File name (or `built-in:<name>`).
        origin: String,
        /// serde_yaml's message, with line and column.
        message: String,
    },
    /// A rule is invalid: bad field, unknown list, or a condition DataFusion rejects.
    #[error("rule {rule} ({origin}): {message}")]
    Rule {
        /// The rule id.
        rule: String,
        /// The file it came from.
        origin: String,
        /// What is wrong, with DataFusion's message and position when it gave one.
        message: String,
    },
    /// Evaluating a compiled rule on a batch failed.
    #[error("evaluating rule {rule}: {message}")]
    Evaluate {
        /// The rule id.
        rule: String,
        /// DataFusion's or Arrow's message.
        message: String,
    },
    /// A scenario file is inconsistent.
    #[error("scenario {scenario}: {message}")]
    Scenario {
        /// The scenario's file.
        scenario: String,
        /// What is wrong.
        message: String,
    },
}
