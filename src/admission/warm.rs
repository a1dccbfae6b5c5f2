//! Warm on admission: once a pod's image is pinned, its blobs are fetched in
//! the background (the prefetch path: every platform, through the shared
//! single-flight fetch), a few images at a time, so the pull that follows
//! seconds later finds them cached. An image warmed in the last ten minutes is
//! not warmed again (a Deployment's replicas are admitted one by one).

use crate::oci::{Digest, Reference};
use crate::proxy::{Progress, Proxy};
use crate::upstream::Target;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// How long a warmed digest is not warmed again.
const REWARM_AFTER: Duration = Duration::from_secs(600);
/// Digests remembered at most.
const REMEMBERED: usize = 4096;

/// Background prefetches of pinned images.
pub struct Warmer {
    proxy: Arc<Proxy>,
    /// Prefetches running at once.
    slots: Arc<Semaphore>,
    /// Digest → when it was last warmed.
    recent: Mutex<HashMap<Digest, Instant>>,
}

impl Warmer {
    /// A warmer running at most `concurrency` prefetches at once.
    pub fn new(proxy: Arc<Proxy>, concurrency: usize) -> Warmer {
        Warmer {
            proxy,
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            recent: Mutex::new(HashMap::new()),
        }
    }

    /// Starts warming `digest` in `target`, unless it was warmed recently.
    pub fn warm(&self, target: Target, digest: Digest) {
        {
            let mut recent = self.recent.lock();
            let now = Instant::now();
            if recent
                .get(&digest)
                .is_some_and(|t| now.duration_since(*t) < REWARM_AFTER)
            {
                return;
            }
            if recent.len() >= REMEMBERED {
                recent.retain(|_, t| now.duration_since(*t) < REWARM_AFTER);
            }
            // Still full of recent digests: forget the oldest, so the map stays
            // bounded however many distinct images are admitted.
            if recent.len() >= REMEMBERED {
                if let Some(oldest) = recent
                    .iter()
                    .min_by_key(|(_, t)| **t)
                    .map(|(d, _)| d.clone())
                {
                    recent.remove(&oldest);
                }
            }
            recent.insert(digest.clone(), now);
        }
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
