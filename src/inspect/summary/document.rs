//! The document `sluice check --json` prints and `/admin/config` returns: where a config
//! came from, its [`Summary`] and its warnings.

use serde::Serialize;

use super::Summary;
use crate::config::{Config, ConfigError};

/// What `sluice check --json` prints and `/admin/config` returns: where the config came
/// from, the summary, and the warnings.
#[derive(Debug, Serialize)]
pub struct Document {
    /// The config file (none for the embedded default).
    pub source: Option<String>,
    /// SHA-256 of the config text followed by the keys file's.
    pub sha256: String,
    /// Each file read, with its own SHA-256.
    pub files: Vec<File>,
    /// When it took effect (`/admin/config` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loaded_at: Option<String>,
    /// The same in unix milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loaded_at_unix_ms: Option<u64>,
    /// The compiled policy.
    pub policy: Summary,
    /// What is valid but surely not meant.
    pub warnings: Vec<Problem>,
}

/// A file a config was read from.
#[derive(Debug, Serialize)]
pub struct File {
    /// Its path.
    pub path: String,
    /// SHA-256 of its text.
    pub sha256: String,
}

/// A problem in a config, placed.
#[derive(Debug, Serialize)]
pub struct Problem {
    /// The file.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// The config path and what is wrong.
    pub message: String,
}

impl Document {
    /// The document of `config`.
    pub fn of(config: &Config) -> Self {
        Document {
            source: config.source.as_ref().map(|p| p.display().to_string()),
            sha256: hex::encode(config.sha256),
            files: config
                .inputs
                .iter()
                .map(|f| File {
                    path: f.path.display().to_string(),
                    sha256: hex::encode(f.sha256),
                })
                .collect(),
            loaded_at: None,
            loaded_at_unix_ms: None,
            policy: Summary::of(config),
            warnings: problems(&config.warnings),
        }
    }
}

/// Problems, for JSON.
pub fn problems(problems: &[ConfigError]) -> Vec<Problem> {
    problems
        .iter()
        .map(|p| Problem {
            file: p.file.clone(),
            line: p.line,
            column: p.column,
            message: p.message.clone(),
        })
        .collect()
}
