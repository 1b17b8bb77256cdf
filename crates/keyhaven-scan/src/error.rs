//! The crate's error type. Messages never carry scanned content or secret values.

use std::path::PathBuf;

/// Everything that can go wrong in a scan.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("i/o on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A rules file is not valid TOML or does not fit the schema.
    #[error("rules file {origin}: {source}")]
    RulesToml {
        /// Where the rules came from.
        origin: String,
        /// The cause.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A rule's regex does not compile.
    #[error("rule {rule}: invalid regex: {source}")]
    RuleRegex {
        /// The rule id.
        rule: String,
        /// The cause.
        #[source]
        source: Box<regex::Error>,
    },
    /// A rule is inconsistent.
    #[error("rule {rule}: {reason}")]
    RuleInvalid {
        /// The rule id.
        rule: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The keyword automaton could not be built.
    #[error("building the keyword prefilter: {0}")]
    Keywords(#[source] Box<aho_corasick::BuildError>),
    /// A gitleaks `[extend]` chain is too deep or circular.
    #[error("gitleaks config {path}: [extend] chain deeper than {max}")]
    ExtendDepth {
        /// The config file.
        path: PathBuf,
        /// The limit.
        max: usize,
    },
    /// A git operation failed.
    #[error("git repository {path}: {what}: {source}")]
    Git {
        /// The repository.
        path: PathBuf,
        /// The operation.
        what: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The baseline file is malformed.
    #[error("baseline {path}: {source}")]
    Baseline {
        /// The baseline file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// An `--exclude` glob is invalid.
    #[error("invalid glob: {0}")]
    Glob(#[source] globset::Error),
    /// Walking a directory failed.
    #[error("walking files: {0}")]
    Walk(#[source] ignore::Error),
    /// Writing a report failed.
    #[error("writing the report: {0}")]
    Output(#[source] std::io::Error),
}
