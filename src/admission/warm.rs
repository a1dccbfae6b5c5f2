//! Warm on admission: once a pod's image is pinned, its blobs are fetched in
//! the background (the prefetch path: every platform, through the shared
//! single-flight fetch), a few images at a time, so the pull that follows
//! seconds later finds them cached. An image warmed in the last
//! [`defaults::REWARM_AFTER`] is not warmed again (a Deployment's replicas are
//! admitted one by one); at most [`defaults::WARMED_IMAGES`] are remembered.

use crate::bounded::ExpiringMap;
use crate::config::defaults;
use crate::oci::{Digest, Reference};
use crate::proxy::{Progress, Proxy};
use crate::upstream::Target;
use parking_lot::Mutex;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Background prefetches of pinned images.
pub struct Warmer {
    proxy: Arc<Proxy>,
    /// Prefetches running at once.
    slots: Arc<Semaphore>,
    /// Digests warmed recently, each until it may be warmed again.
    recent: Mutex<ExpiringMap<Digest, ()>>,
}

impl Warmer {
    /// A warmer running at most `concurrency` prefetches at once.
    pub fn new(proxy: Arc<Proxy>, concurrency: usize) -> Warmer {
        Warmer {
            proxy,
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            recent: Mutex::new(ExpiringMap::new(defaults::WARMED_IMAGES)),
        }
    }

    /// Starts warming `digest` in `target`, unless it was warmed recently.
    pub fn warm(&self, target: Target, digest: Digest) {
        let metrics = self.proxy.metrics();
        {
            let now = self.proxy.now_ms();
            let mut recent = self.recent.lock();
            if recent.contains(&digest, now) {
                metrics.warms_skipped.inc();
                return;
            }
            let until = now.saturating_add(defaults::REWARM_AFTER.as_millis() as u64);
            recent.insert(digest.clone(), (), until, now);
        }
        metrics.warms_started.inc();
        let (proxy, slots) = (self.proxy.clone(), self.slots.clone());
        tokio::spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else {
                return;
            };
            match proxy
                .prefetch(&target, &Reference::Digest(digest), &Progress::default())
                .await
            {
                Ok(report) => {
                    tracing::info!(?target, ?report, "warmed an image pinned at admission")
                }
                Err(e) => {
                    tracing::warn!(?target, error = %e, "could not warm an image pinned at admission")
                }
            }
        });
    }
}
