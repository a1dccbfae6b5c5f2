//! Upstream answers that are not content-addressed (tag lists, referrers
//! indexes) kept in memory under the same freshness policy as tags: fresh
//! inside `tag_ttl`, asked again once (single-flight) past it, and served
//! stale for up to `stale_if_error` while upstream fails.

use super::flight::SingleFlight;
use super::{internal, lock, map_upstream_error};
use crate::clock::Clock;
use crate::config::Freshness;
use crate::metrics::{Kind, Metrics};
use crate::oci::{ErrorCode, OciError};
use crate::upstream::UpstreamError;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// Answers kept per cache at most, by count and by bytes; the oldest go first.
const MAX_ANSWERS: usize = 1024;
const MAX_BYTES: usize = 32 * 1024 * 1024;

/// The memory an answer holds, for the byte budget.
pub(crate) trait Weigh {
    fn weight(&self) -> usize;
}

impl Weigh for (bytes::Bytes, Option<String>) {
    fn weight(&self) -> usize {
        self.0.len() + self.1.as_ref().map_or(0, String::len)
    }
}

impl Weigh for (bytes::Bytes, bool) {
    fn weight(&self) -> usize {
        self.0.len()
    }
}

pub(crate) struct Answers<K, V> {
    kind: Kind,
    /// The error code an upstream 404 becomes.
    not_found: ErrorCode,
    entries: Mutex<Entries<K, V>>,
    flights: SingleFlight<K, Result<Kept<V>, OciError>>,
}

/// The kept answers and the bytes they hold.
struct Entries<K, V> {
    map: HashMap<K, Kept<V>>,
    bytes: usize,
}

impl<K, V> Default for Entries<K, V> {
    fn default() -> Self {
        Entries {
            map: HashMap::new(),
            bytes: 0,
        }
    }
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
    pub fn new(kind: Kind, not_found: ErrorCode) -> Answers<K, V> {
        Answers {
            kind,
            not_found,
            entries: Mutex::default(),
            flights: SingleFlight::default(),
        }
    }

    /// The answer for `key`: kept if fresh, else `fetch`ed (once, however many
    /// ask), else the kept one while upstream has an outage and it is not too old.
    pub async fn get<F>(
        self: &Arc<Self>,
        key: K,
        policy: Freshness,
        clock: &Clock,
        metrics: &Arc<Metrics>,
        fetch: impl FnOnce() -> F,
    ) -> Result<V, OciError>
    where
        F: Future<Output = Result<V, UpstreamError>> + Send + 'static,
    {
        let ttl = policy.tag_ttl.as_millis() as u64;
        let kept = lock(&self.entries).map.get(&key).cloned();
        if let Some(k) = kept.as_ref() {
            if clock.now_ms() < k.fetched_at_ms.saturating_add(ttl) {
                metrics.hit(self.kind);
                return Ok(k.value.clone());
            }
        }
        metrics.miss(self.kind);
        let fetch = fetch();
        let (this, clock2, metrics2, key2) =
            (self.clone(), clock.clone(), metrics.clone(), key.clone());
        let (result, joined) = self
            .flights
            .run(key, move || async move {
                let fresh = fetch.await;
                let now = clock2.now_ms();
                match fresh {
                    Ok(value) => {
                        let k = Kept {
                            value,
                            fetched_at_ms: now,
                        };
                        this.keep(key2, k.clone());
                        Ok(k)
                    }
                    Err(e) if e.is_outage() => match kept {
                        Some(k)
                            if now
                                < k.fetched_at_ms
                                    .saturating_add(ttl)
                                    .saturating_add(policy.stale_if_error.as_millis() as u64) =>
                        {
                            metrics2.stale_answers.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(kind = ?this.kind, error = %e, "serving a stale answer");
                            Ok(k)
                        }
                        _ => Err(map_upstream_error(e, this.not_found)),
                    },
                    Err(e) => {
                        this.remove(&key2);
                        Err(map_upstream_error(e, this.not_found))
                    }
                }
            })
            .await;
        if joined {
            metrics.coalesced.fetch_add(1, Ordering::Relaxed);
        }
        result
            .unwrap_or_else(|| Err(internal("upstream fetch ended unexpectedly")))
            .map(|k| k.value)
    }

    /// Drops every kept answer whose key `matches`.
    pub fn forget(&self, matches: impl Fn(&K) -> bool) {
        let mut e = lock(&self.entries);
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
        let mut e = lock(&self.entries);
        if let Some(old) = e.map.remove(key) {
            e.bytes -= old.value.weight();
        }
    }

    fn keep(&self, key: K, kept: Kept<V>) {
        let weight = kept.value.weight();
        if weight > MAX_BYTES / 4 {
            return; // one huge answer would push out everything else
        }
        let mut e = lock(&self.entries);
        if let Some(old) = e.map.remove(&key) {
            e.bytes -= old.value.weight();
        }
        while !e.map.is_empty() && (e.map.len() >= MAX_ANSWERS || e.bytes + weight > MAX_BYTES) {
            let oldest = e
                .map
                .iter()
                .min_by_key(|(_, k)| k.fetched_at_ms)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                if let Some(old) = e.map.remove(&k) {
                    e.bytes -= old.value.weight();
                }
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

    fn answers() -> Arc<Answers<u32, (Bytes, bool)>> {
        Arc::new(Answers::new(Kind::TagList, ErrorCode::NameUnknown))
    }

    fn kept(n: usize, at: u64) -> Kept<(Bytes, bool)> {
        Kept {
            value: (Bytes::from(vec![0u8; n]), false),
            fetched_at_ms: at,
        }
    }

    #[test]
    fn the_byte_budget_pushes_out_the_oldest_answers() {
        let a = answers();
        let quarter = MAX_BYTES / 4;
        for i in 0..4u32 {
            a.keep(i, kept(quarter, u64::from(i)));
        }
        assert_eq!(lock(&a.entries).bytes, MAX_BYTES);
        a.keep(4, kept(10, 4));
        let e = lock(&a.entries);
        assert!(!e.map.contains_key(&0), "the oldest went");
        assert!(e.map.contains_key(&4));
        assert_eq!(e.bytes, 3 * quarter + 10);
    }

    #[test]
    fn huge_answers_are_not_kept_and_replacing_one_keeps_the_count_right() {
        let a = answers();
        a.keep(1, kept(MAX_BYTES / 4 + 1, 0));
        assert!(lock(&a.entries).map.is_empty());
        a.keep(1, kept(100, 0));
        a.keep(1, kept(50, 1));
        a.keep(2, kept(7, 2));
        assert_eq!(lock(&a.entries).bytes, 57);
        a.forget(|k| *k == 1);
        assert_eq!(lock(&a.entries).bytes, 7);
        a.remove(&2);
        assert_eq!(lock(&a.entries).bytes, 0);
    }
}
