//! Disk-failure episodes. When a blob write or commit fails (disk full, I/O
//! error), blobs are streamed from upstream without caching for a while
//! (still verified), then the disk is tried again. An episode is logged once
//! when it starts and once when it ends, not per request.

use crate::clock::Clock;
use crate::metrics::Metrics;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long the store is bypassed after a disk failure before caching is retried.
pub const RETRY_AFTER: Duration = Duration::from_secs(30);

/// Whether blob writes should be attempted now.
pub(crate) struct StoreHealth {
    clock: Clock,
    metrics: Arc<Metrics>,
    /// While the disk is failing (until unix ms), blobs stream uncached.
    degraded_until_ms: AtomicU64,
}

impl StoreHealth {
    pub fn new(clock: Clock, metrics: Arc<Metrics>) -> StoreHealth {
        StoreHealth {
            clock,
            metrics,
            degraded_until_ms: AtomicU64::new(0),
        }
    }

    /// Records a disk failure: blobs stream uncached until [`RETRY_AFTER`] has passed.
    pub fn failed(&self, why: &str) {
        self.metrics.store_write_errors.inc();
        let now = self.clock.now_ms();
        let until = now + RETRY_AFTER.as_millis() as u64;
        let previous = self.degraded_until_ms.swap(until, Ordering::Relaxed);
        if previous < now {
            tracing::error!(
                "blob store write failed ({why}); serving blobs from upstream without caching for {}s",
                RETRY_AFTER.as_secs()
            );
        }
    }

    /// A write succeeded: the episode, if any, is over.
    pub fn recovered(&self) {
        if self.degraded_until_ms.swap(0, Ordering::Relaxed) > 0 {
            tracing::info!("blob store writable again; caching resumed");
        }
    }

    /// Whether blobs should bypass the store now.
    pub fn degraded(&self) -> bool {
        self.clock.now_ms() < self.degraded_until_ms.load(Ordering::Relaxed)
    }
}
