//! Durations and sizes as people write them in a configuration file.

use super::parse::{err, ConfigError};
use serde::Deserialize;
use std::time::Duration;

/// A duration written as seconds (`30`) or with units (`"30s"`, `"5m"`, `"1h 30m"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawDuration {
    /// A bare number of seconds.
    Seconds(u64),
    /// Text with units.
    Text(String),
}

impl RawDuration {
    pub(crate) fn parse(&self, what: &str) -> Result<Duration, ConfigError> {
        match self {
            RawDuration::Seconds(s) => Ok(Duration::from_secs(*s)),
            RawDuration::Text(t) => humantime::parse_duration(t)
                .or_else(|_| t.trim().parse::<u64>().map(Duration::from_secs))
                .or_else(|_| {
                    err(format!(
                        "{what}: {t:?} is not a duration (e.g. \"30s\", \"5m\")"
                    ))
                }),
        }
    }
}

/// An optional duration, or its default.
pub(crate) fn duration_or(
    d: &Option<RawDuration>,
    what: &str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    Ok(parse_opt(d, what)?.unwrap_or(default))
}

pub(crate) fn parse_opt(
    d: &Option<RawDuration>,
    what: &str,
) -> Result<Option<Duration>, ConfigError> {
    d.as_ref().map(|d| d.parse(what)).transpose()
}

/// Parses `"10GiB"`, `"500MB"`, `"1T"`, `"1048576"`: binary for `KiB`/`MiB`/…,
/// decimal for `KB`/`MB`/…, and the bare `K`/`M`/`G`/`T` as binary.
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .or_else(|_| err(format!("{s:?} is not a size like \"10GiB\"")))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => return err(format!("{s:?}: unknown size unit {other:?}")),
    };
    let bytes = num * mult as f64;
    if !(1.0..1.8e19).contains(&bytes) {
        return err(format!("{s:?} is not a usable size"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10GiB").unwrap(), 10 << 30);
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("1.5KiB").unwrap(), 1536);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("0").is_err());
        assert!(parse_size("x").is_err());
    }

    #[test]
    fn durations() {
        let d = |s: &str| RawDuration::Text(s.into()).parse("x");
        assert_eq!(d("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(d("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(d("45").unwrap(), Duration::from_secs(45));
        assert!(d("soon").unwrap_err().to_string().contains("x:"));
    }
}
