//! The answer cache: upstream answers that are not content-addressed (tag
//! lists, referrers indexes), kept in memory under the same freshness policy as
//! tags: fresh inside `tag_ttl`, asked again once (single-flight) past it, and
//! served stale for up to `stale_if_error` while upstream fails.
//!
//! Bounded by count and by bytes; the oldest answers go first, and one answer
//! over a quarter of the byte budget is served but not kept.
//!
//! Every answer kept is also written to the store's index, and an answer not
//! in memory is looked up there, so after a restart with upstream down the
//! answers given before are still given (within `stale_if_error`).

use super::error::{Error, Result};
use super::flight::SingleFlight;
use super::freshness;
use crate::clock::Clock;
use crate::config::Freshness;
use crate::metrics::{Kind, Metrics};
use crate::upstream::UpstreamError;
use ferry_storage::Store;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

/// An answer the cache can keep: its weight for the byte budget, and its
/// bytes in the store.
pub(crate) trait Answer: Sized {
    /// The memory it holds.
    fn weight(&self) -> usize;
    /// Its bytes in the index.
    fn encode(&self) -> Vec<u8>;
    /// Back from those bytes (`None`: unreadable, as if absent).
    fn decode(bytes: &[u8]) -> Option<Self>;
}

/// An answer cache's key: where it lives in the index. Keys of one
/// repository share a prefix ([`repo_prefix`]).
pub(crate) trait AnswerKey {
    /// The index key.
    fn index_key(&self) -> Vec<u8>;
}

/// The index-key prefix of every answer of `kind` about one repository.
pub(crate) fn repo_prefix(kind: u8, upstream: &str, repo: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(upstream.len() + repo.len() + 3);
    k.push(kind);
    k.extend_from_slice(upstream.as_bytes());
    k.push(0);
    k.extend_from_slice(repo.as_bytes());
    k.push(0);
    k
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
    /// Where answers are kept across restarts.
    store: Store,
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
    K: AnswerKey + Hash + Eq + Clone + Send + Sync + 'static,
    V: Answer + Clone + Send + Sync + 'static,
{
    pub fn new(
        kind: Kind,
        budget: Budget,
        clock: Clock,
        metrics: Arc<Metrics>,
        store: Store,
    ) -> Answers<K, V> {
        Answers {
            kind,
            budget,
            clock,
            metrics,
            store,
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
        let kept = self.kept(&key);
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

    /// The answer kept for `key`, from memory, else from the index.
    fn kept(&self, key: &K) -> Option<Kept<V>> {
        if let Some(k) = self.entries.lock().map.get(key) {
            return Some(k.clone());
        }
        let (fetched_at_ms, bytes) = match self.store.answer(&key.index_key()) {
            Ok(found) => found?,
            Err(e) => {
                tracing::warn!(kind = ?self.kind, error = %e, "kept answer unreadable");
                return None;
            }
        };
        let kept = Kept {
            value: V::decode(&bytes)?,
            fetched_at_ms,
        };
        self.remember(key.clone(), kept.clone());
        Some(kept)
    }

    /// Drops every kept answer whose key `matches`, in memory and (by the
    /// keys' common `prefix`) in the index.
    pub fn forget(&self, prefix: &[u8], matches: impl Fn(&K) -> bool) {
        if let Err(e) = self.store.forget_answers(prefix, None) {
            tracing::warn!(kind = ?self.kind, error = %e, "could not forget kept answers");
        }
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
        drop(e);
        if let Err(e) = self.store.forget_answers(&key.index_key(), None) {
            tracing::warn!(kind = ?self.kind, error = %e, "could not forget a kept answer");
        }
    }

    /// Keeps a fresh answer, in memory and in the index.
    fn keep(&self, key: K, kept: Kept<V>) {
        let stored =
            self.store
                .put_answer(&key.index_key(), kept.fetched_at_ms, &kept.value.encode());
        if let Err(e) = stored {
            tracing::warn!(kind = ?self.kind, error = %e, "could not keep an answer in the index");
        }
        self.remember(key, kept);
    }

    /// Holds an answer in memory, within the budget.
    fn remember(&self, key: K, kept: Kept<V>) {
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

    impl Answer for Bytes {
        fn weight(&self) -> usize {
            self.len()
        }
        fn encode(&self) -> Vec<u8> {
            self.to_vec()
        }
        fn decode(bytes: &[u8]) -> Option<Self> {
            Some(Bytes::copy_from_slice(bytes))
        }
    }

    impl AnswerKey for u32 {
        fn index_key(&self) -> Vec<u8> {
            let mut k = repo_prefix(9, "up", "repo");
            k.extend_from_slice(&self.to_be_bytes());
            k
        }
    }

    const BUDGET: Budget = Budget {
        count: 8,
        bytes: 4096,
    };

    fn answers() -> (tempfile::TempDir, Arc<Answers<u32, Bytes>>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(ferry_storage::StoreOptions::new(dir.path())).unwrap();
        let a = Answers::new(
            Kind::TagList,
            BUDGET,
            Clock::manual(),
            Arc::default(),
            store,
        );
        (dir, Arc::new(a))
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
        let (_dir, a) = answers();
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
        let (_dir, a) = answers();
        for i in 0..20u32 {
            a.keep(i, kept(1, u64::from(i)));
        }
        let e = a.entries.lock();
        assert_eq!(e.map.len(), BUDGET.count);
        assert!(e.map.contains_key(&19) && !e.map.contains_key(&11));
    }

    #[test]
    fn huge_answers_are_not_kept_and_replacing_one_keeps_the_count_right() {
        let (_dir, a) = answers();
        a.remember(1, kept(BUDGET.bytes / 4 + 1, 0));
        assert!(a.entries.lock().map.is_empty());
        a.keep(1, kept(100, 0));
        a.keep(1, kept(50, 1));
        a.keep(2, kept(7, 2));
        assert_eq!(bytes(&a), 57);
        a.forget(&1u32.index_key(), |k| *k == 1);
        assert_eq!(bytes(&a), 7);
        a.remove(&2);
        assert_eq!(bytes(&a), 0);
    }

    #[test]
    fn kept_answers_are_found_in_the_index_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            let store = Store::open(ferry_storage::StoreOptions::new(dir.path())).unwrap();
            Answers::<u32, Bytes>::new(
                Kind::TagList,
                BUDGET,
                Clock::manual(),
                Arc::default(),
                store,
            )
        };
        {
            let a = open();
            a.keep(7, kept(3, 1234));
            a.keep(8, kept(4, 1235));
            a.remove(&8);
        }
        let a = open();
        let k = a.kept(&7).expect("from the index");
        assert_eq!((k.value.len(), k.fetched_at_ms), (3, 1234));
        assert!(a.kept(&8).is_none(), "a removed answer stays removed");
        a.forget(&repo_prefix(9, "up", "repo"), |_| true);
        assert!(a.kept(&7).is_none());
    }
}
