//! The pieces every section's validation shares: the error type worded for
//! the person who wrote the file, addresses, regexes and secrets.

use regex::Regex;
use std::net::SocketAddr;
use std::path::PathBuf;

/// A configuration error, worded for the person who wrote the file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub(crate) String);

pub(crate) fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// A secret given inline (key `what`) or through an environment variable
/// (`what_env`), not both; used as given.
pub(crate) fn secret(
    ctx: &str,
    what: &str,
    inline: &Option<String>,
    env: &Option<String>,
) -> Result<Option<String>, ConfigError> {
    match (inline, env) {
        (Some(_), Some(_)) => err(format!("{ctx}: set {what} or {what}_env, not both")),
        (Some(p), None) => Ok(Some(p.clone())),
        (None, Some(var)) => std::env::var(var)
            .map(Some)
            .or_else(|_| err(format!("{ctx}: {what}_env names {var:?}, which is not set"))),
        (None, None) => Ok(None),
    }
}

/// A secret from a file (key `{key}_file`: a Kubernetes Secret mounted as
/// files) or an environment variable (`{key}_env`), not both; trimmed, never
/// empty. `key` is the key's full path (`cluster.secret`, `admin_token`).
pub(crate) fn secret_from(
    key: &str,
    file: &Option<PathBuf>,
    env: &Option<String>,
) -> Result<Option<String>, ConfigError> {
    let value = match (file, env) {
        (Some(_), Some(_)) => return err(format!("set {key}_file or {key}_env, not both")),
        (Some(path), None) => std::fs::read_to_string(path)
            .or_else(|e| err(format!("{key}_file: cannot read {}: {e}", path.display())))?,
        (None, Some(var)) => std::env::var(var)
            .or_else(|_| err(format!("{key}_env names {var:?}, which is not set")))?,
        (None, None) => return Ok(None),
    };
    match value.trim() {
        "" => match file {
            Some(path) => err(format!("{key}_file: {} is empty", path.display())),
            None => err(format!("{key}_env: the variable is empty")),
        },
        v => Ok(Some(v.to_string())),
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
