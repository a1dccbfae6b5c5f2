//! The pieces every section's validation shares: the error type worded for
//! the person who wrote the file, addresses, regexes and secrets.

use regex::Regex;
use std::net::SocketAddr;

/// A configuration error, worded for the person who wrote the file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub(crate) String);

pub(crate) fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// A password given inline or through an environment variable (not both).
pub(crate) fn secret(
    ctx: &str,
    password: &Option<String>,
    password_env: &Option<String>,
) -> Result<Option<String>, ConfigError> {
    match (password, password_env) {
        (Some(_), Some(_)) => err(format!("{ctx}: set password or password_env, not both")),
        (Some(p), None) => Ok(Some(p.clone())),
        (None, Some(var)) => std::env::var(var).map(Some).or_else(|_| {
            err(format!(
                "{ctx}: password_env names {var:?}, which is not set"
            ))
        }),
        (None, None) => Ok(None),
    }
}

pub(crate) fn parse_addr(what: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().or_else(|_| {
        err(format!(
            "{what}: {s:?} is not an address like 127.0.0.1:5000"
        ))
    })
}

pub(crate) fn compile(pattern: &str, what: &str) -> Result<Regex, ConfigError> {
    Regex::new(&format!("^(?:{pattern})$"))
        .or_else(|e| err(format!("{what}: bad regex {pattern:?}: {e}")))
}

pub(crate) fn compile_all(patterns: &[String], what: &str) -> Result<Vec<Regex>, ConfigError> {
    patterns.iter().map(|p| compile(p, what)).collect()
}
