//! Configuration: one YAML file, parsed into raw serde structs (`raw`) and
//! validated into the model the rest of the program trusts (`model`); the
//! certificate, key and CA files it names are loaded and checked by
//! `certificates`.
//!
//! Validation collects every problem it can find, each with the YAML path it
//! concerns (`deployments[2].allowed_origins[0]: not an origin`), the way
//! `nginx -t` does, instead of stopping at the first.

pub mod certificates;
pub mod model;
pub mod raw;
pub mod schema;
mod validate;
mod warnings;

use std::fmt;
use std::path::{Path, PathBuf};

pub use model::*;
pub use validate::{is_deployment_id, normalize_header_name, parse_origin, TOP_LEVEL_KEYS};
pub use warnings::warnings;

/// One problem in a configuration file, located by its YAML path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one file. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// Whether some error sits at exactly this path with this message; for tests
    /// and for callers that react to one specific problem.
    pub fn contains(&self, path: &str, message_part: &str) -> bool {
        self.0
            .iter()
            .any(|e| e.path == path && e.message.contains(message_part))
    }
}

/// Where secrets come from. The real environment in production; a map in tests.
pub trait Environment {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<F: Fn(&str) -> Option<String>> Environment for F {
    fn var(&self, name: &str) -> Option<String> {
        self(name)
    }
}

/// Reads and validates the file at `path`; relative `{file: ...}` secrets and
/// TLS paths are taken relative to the file's folder.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            path: String::new(),
            message: format!("cannot read {}: {e}", path.display()),
        }])
    })?;
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    parse(&text, &base, &ProcessEnv)
}

/// Parses and validates configuration text.
pub fn parse(text: &str, base_dir: &Path, env: &dyn Environment) -> Result<Config, ConfigErrors> {
    validate::validate(text, base_dir, env)
}

#[cfg(test)]
mod tests;
