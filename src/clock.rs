//! Wall-clock time in milliseconds, real in production and hand-driven in tests.
//!
//! Freshness is persisted (a tag record says when upstream last confirmed it), so it
//! needs wall-clock time, which `tokio::time::pause` cannot move. Tests use
//! [`Clock::manual`] and [`Clock::advance`] instead of sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug, Default)]
/// Where time comes from.
pub enum Clock {
    #[default]
    /// The system clock.
    System,
    /// Milliseconds that move only when told to (tests).
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// A clock that only moves when told to, starting at the current wall time.
    pub fn manual() -> Clock {
        Clock::Manual(Arc::new(AtomicU64::new(system_ms())))
    }

    /// Now, in unix milliseconds.
    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::System => system_ms(),
            Clock::Manual(ms) => ms.load(Ordering::Relaxed),
        }
    }

    /// Moves a manual clock forward; a no-op on the system clock.
    pub fn advance(&self, by: Duration) {
        if let Clock::Manual(ms) = self {
            ms.fetch_add(by.as_millis() as u64, Ordering::Relaxed);
        }
    }
}

fn system_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
