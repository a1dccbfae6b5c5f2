//! The answer cache: upstream answers that are not content-addressed (tag
//! lists, referrers indexes), kept in memory under the same freshness policy as
//! tags: fresh inside `tag_ttl`, asked again once (single-flight) past it, and
//! served stale for up to `stale_if_error` while upstream fails.
//!
//! Bounded by count and by bytes; the oldest answers go first, and one answer
//! over a quarter of the byte budget is served but not kept.

use super::error::{Error, Result};
use super::flight::SingleFlight;
use super::freshness;
use crate::clock::Clock;
use crate::config::Freshness;
use crate::metrics::{Kind, Metrics};
use crate::upstream::UpstreamError;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

/// The memory an answer holds, for the byte budget.
pub(crate) trait Weigh {
    fn weight(&self) -> usize;
}

/// Bounds of one answer cache.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Budget {
    /// Answers kept at most.
    pub count: usize,
    /// Bytes of answers kept at most.
    pub bytes: usize,
}

impl Budget {
    /// Kept per answer cache unless configured: 1,024 answers, 32 MiB.
    pub const DEFAULT: Budget = Budget {
        count: 1024,
        bytes: 32 * 1024 * 1024,
    };
}

/// Answers by key, with their upstream fetches.
pub(crate) struct Answers<K, V> {
    kind: Kind,
    budget: Budget,
    clock: Clock,
    metrics: Arc<Metrics>,
    entries: Mutex<Entries<K, V>>,
    /// One upstream fetch per key at a time.
    flights: SingleFlight<K, Result<Kept<V>>>,
}

/// The kept answers and the bytes they hold.
struct Entries<K, V> {
    map: HashMap<K, Kept<V>>,
    bytes: usize,
}

#[derive(Clone)]
struct Kept<V> {
    value: V,
    fetched_at_ms: u64,
}

impl<K, V> Answers<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Weigh + Clone + Send + Sync + 'static,
{
    pub fn new(kind: Kind, budget: Budget, clock: Clock, metrics: Arc<Metrics>) -> Answers<K, V> {
        Answers {
            kind,
            budget,
            clock,
            metrics,
            entries: Mutex::new(Entries {
                map: HashMap::new(),
                bytes: 0,
            }),
            flights: SingleFlight::default(),
        }
    }

    /// The answer for `key`: kept if fresh, else `fetch`ed (once, however many
    /// ask), else the kept one while upstream has an outage and it is not too old.
    pub async fn get<F>(
        self: &Arc<Self>,
        key: K,
        policy: Freshness,
        fetch: impl FnOnce() -> F,
    ) -> Result<V>
    where
        F: Future<Output = std::result::Result<V, UpstreamError>> + Send + 'static,
    {
        let kept = self.entries.lock().map.get(&key).cloned();
        if let Some(k) = kept.as_ref() {
            if freshness::is_fresh(k.fetched_at_ms, &policy, self.clock.now_ms()) {
                self.metrics.hit(self.kind);
                return Ok(k.value.clone());
            }
        }
        self.metrics.miss(self.kind);
        let fetch = fetch();
        let (this, key2) = (self.clone(), key.clone());
        let (result, joined) = self
            .flights
            .run(key, move || async move {
                let fresh = fetch.await.map_err(Error::from);
                let now = this.clock.now_ms();
                match fresh {
                    Ok(value) => {
                        let k = Kept {
                            value,
                            fetched_at_ms: now,
                        };
                        this.keep(key2, k.clone());
                        Ok(k)
                    }
                    Err(e) if e.allows_stale() => match kept {
                        Some(k) if freshness::servable_on_error(k.fetched_at_ms, &policy, now) => {
                            this.metrics.stale_answers.inc();
                            tracing::info!(kind = ?this.kind, error = %e, "serving a stale answer");
                            Ok(k)
                        }
                        _ => Err(e),
                    },
                    Err(e) => {
                        this.remove(&key2);
                        Err(e)
                    }
                }
            })
            .await;
        if joined {
            self.metrics.coalesced.inc();
        }
        result
            .unwrap_or_else(|| Err(Error::Internal("upstream fetch ended unexpectedly".into())))
            .map(|k| k.value)
    }

    /// Drops every kept answer whose key `matches`.
    pub fn forget(&self, matches: impl Fn(&K) -> bool) {
        let mut e = self.entries.lock();
        let gone: usize = e
            .map
            .iter()
            .filter(|(k, _)| matches(k))
            .map(|(_, v)| v.value.weight())
            .sum();
        e.map.retain(|k, _| !matches(k));
        e.bytes -= gone;
    }

    fn remove(&self, key: &K) {
        let mut e = self.entries.lock();
        if let Some(old) = e.map.remove(key) {
            e.bytes -= old.value.weight();
        }
    }

    fn keep(&self, key: K, kept: Kept<V>) {
        let weight = kept.value.weight();
        if weight > self.budget.bytes / 4 {
            return; // one huge answer would push out everything else
        }
        let mut e = self.entries.lock();
        if let Some(old) = e.map.remove(&key) {
            e.bytes -= old.value.weight();
        }
        while !e.map.is_empty()
            && (e.map.len() >= self.budget.count || e.bytes + weight > self.budget.bytes)
        {
            let oldest = e
                .map
                .iter()
                .min_by_key(|(_, k)| k.fetched_at_ms)
                .map(|(k, _)| k.clone());
            if let Some(old) = oldest.and_then(|k| e.map.remove(&k)) {
                e.bytes -= old.value.weight();
            }
        }
        e.bytes += weight;
        e.map.insert(key, kept);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    impl Weigh for Bytes {
        fn weight(&self) -> usize {
            self.len()
        }
    }

    const BUDGET: Budget = Budget {
        count: 8,
        bytes: 4096,
    };

    fn answers() -> Arc<Answers<u32, Bytes>> {
        Arc::new(Answers::new(
            Kind::TagList,
            BUDGET,
            Clock::manual(),
            Arc::default(),
        ))
    }

    fn kept(n: usize, at: u64) -> Kept<Bytes> {
        Kept {
            value: Bytes::from(vec![0u8; n]),
            fetched_at_ms: at,
        }
    }

    fn bytes(a: &Answers<u32, Bytes>) -> usize {
        a.entries.lock().bytes
    }

    #[test]
    fn the_byte_budget_pushes_out_the_oldest_answers() {
        let a = answers();
        let quarter = BUDGET.bytes / 4;
        for i in 0..4u32 {
            a.keep(i, kept(quarter, u64::from(i)));
        }
        assert_eq!(bytes(&a), BUDGET.bytes);
        a.keep(4, kept(10, 4));
        assert!(!a.entries.lock().map.contains_key(&0), "the oldest went");
        assert!(a.entries.lock().map.contains_key(&4));
        assert_eq!(bytes(&a), 3 * quarter + 10);
    }

    #[test]
    fn the_count_budget_holds() {
        let a = answers();
        for i in 0..20u32 {
            a.keep(i, kept(1, u64::from(i)));
        }
        let e = a.entries.lock();
        assert_eq!(e.map.len(), BUDGET.count);
        assert!(e.map.contains_key(&19) && !e.map.contains_key(&11));
    }

    #[test]
    fn huge_answers_are_not_kept_and_replacing_one_keeps_the_count_right() {
        let a = answers();
        a.keep(1, kept(BUDGET.bytes / 4 + 1, 0));
        assert!(a.entries.lock().map.is_empty());
        a.keep(1, kept(100, 0));
        a.keep(1, kept(50, 1));
        a.keep(2, kept(7, 2));
        assert_eq!(bytes(&a), 57);
        a.forget(|k| *k == 1);
        assert_eq!(bytes(&a), 7);
        a.remove(&2);
        assert_eq!(bytes(&a), 0);
    }
}
