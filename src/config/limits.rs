//! `[limits]`: what one client, or many, may cost Ferry. Each limit says what
//! happens at it; none of them fails a request that is already being served.

use super::defaults::{
    H2_MAX_PENDING_RESETS, H2_MAX_STREAMS, HEADER_TIMEOUT, MAX_CONNECTIONS, MAX_FETCHES,
    MAX_HEADER_BYTES,
};
use super::parse::{err, ConfigError};
use super::raw::RawLimits;
use super::units::{duration_or, parse_size};
use std::time::Duration;

/// hyper's smallest read buffer: a header limit below it cannot be honoured.
const MIN_HEADER_BYTES: usize = 8192;

/// `[limits]`, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once on each listener; past it Ferry stops
    /// accepting (the kernel queues new ones) until one closes.
    pub max_connections: usize,
    /// See [`HEADER_TIMEOUT`]: also the keep-alive idle timeout.
    pub header_timeout: Duration,
    /// A bigger request head is answered `431` and the connection closed.
    pub max_header_bytes: usize,
    /// See [`H2_MAX_STREAMS`].
    pub h2_max_streams: u32,
    /// See [`H2_MAX_PENDING_RESETS`].
    pub h2_max_pending_resets: usize,
    /// See [`MAX_FETCHES`].
    pub max_fetches: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: MAX_CONNECTIONS,
            header_timeout: HEADER_TIMEOUT,
            max_header_bytes: MAX_HEADER_BYTES,
            h2_max_streams: H2_MAX_STREAMS,
            h2_max_pending_resets: H2_MAX_PENDING_RESETS,
            max_fetches: MAX_FETCHES,
        }
    }
}

pub(crate) fn from_raw(l: &RawLimits) -> Result<Limits, ConfigError> {
    let d = Limits::default();
    let at_least = |v: Option<usize>, name: &str, min: usize, default: usize| match v {
        Some(v) if v < min => err(format!("limits.{name} must be at least {min}")),
        Some(v) => Ok(v),
        None => Ok(default),
    };
    let max_header_bytes = match &l.max_header_bytes {
        Some(s) => {
            let n =
                parse_size(s).map_err(|e| ConfigError(format!("limits.max_header_bytes: {e}")))?;
            if n < MIN_HEADER_BYTES as u64 || n > 16 << 20 {
                return err("limits.max_header_bytes must be between 8KiB and 16MiB");
            }
            n as usize
        }
        None => d.max_header_bytes,
    };
    let header_timeout = duration_or(&l.header_timeout, "limits.header_timeout", d.header_timeout)?;
    if header_timeout.is_zero() {
        return err("limits.header_timeout must be more than 0");
    }
    let h2_max_streams = at_least(
        l.h2_max_streams.map(|v| v as usize),
        "h2_max_streams",
        1,
        d.h2_max_streams as usize,
    )?;
    Ok(Limits {
        max_connections: at_least(l.max_connections, "max_connections", 1, d.max_connections)?,
        header_timeout,
        max_header_bytes,
        h2_max_streams: u32::try_from(h2_max_streams)
            .or_else(|_| err("limits.h2_max_streams is too large"))?,
        h2_max_pending_resets: at_least(
            l.h2_max_pending_resets,
            "h2_max_pending_resets",
            1,
            d.h2_max_pending_resets,
        )?,
        max_fetches: at_least(l.max_fetches, "max_fetches", 1, d.max_fetches)?,
    })
}
