//! Bucket outages: after an error the bucket is left alone for a back-off
//! window (by the proxy's clock), so a dead endpoint costs one failed request
//! per window, not one per client request. Logged once per episode.

use crate::clock::Clock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Whether the bucket may be asked now.
pub(super) struct Health {
    backoff: Duration,
    clock: Clock,
    /// Unix ms before which the bucket is not asked; 0: healthy.
    until_ms: AtomicU64,
    /// An episode is under way (its first error was logged).
    failing: AtomicBool,
}

impl Health {
    pub fn new(backoff: Duration, clock: Clock) -> Health {
        Health {
            backoff,
            clock,
            until_ms: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        }
    }

    /// Not inside a back-off window.
    pub fn usable(&self) -> bool {
        self.clock.now_ms() >= self.until_ms.load(Ordering::Relaxed)
    }

    /// A request failed: back off from now.
    pub fn failed(&self, why: &str) {
        let until = self
            .clock
            .now_ms()
            .saturating_add(self.backoff.as_millis() as u64);
        self.until_ms.store(until, Ordering::Relaxed);
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                backoff_s = self.backoff.as_secs(),
                "shared bucket failed ({why}); reads go upstream and uploads are skipped until it answers again"
            );
        }
    }

    /// A request succeeded: an episode, if any, is over.
    pub fn succeeded(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!("shared bucket answers again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_backs_off_for_the_window_then_the_bucket_is_tried_again() {
        let clock = Clock::manual();
        let h = Health::new(Duration::from_secs(30), clock.clone());
        assert!(h.usable());
        h.failed("boom");
        assert!(!h.usable());
        clock.advance(Duration::from_secs(29));
        assert!(!h.usable());
        clock.advance(Duration::from_secs(1));
        assert!(h.usable());
        h.succeeded();
        assert!(!h.failing.load(Ordering::Relaxed));
    }
}
