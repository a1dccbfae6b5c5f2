//! The answer cache: upstream answers that are not content-addressed (tag
//! lists, referrers indexes), kept in memory under the same freshness policy as
//! tags: fresh inside `tag_ttl`, asked again once (single-flight) past it, and
//! served stale for up to `stale_if_error` while upstream fails.
//!
//! Bounded by count and by bytes ([`defaults::ANSWERS`],
//! [`defaults::ANSWER_BYTES`]): an answer is dropped once it could no longer
//! be served even stale, and at the bound the one that would become useless
//! soonest goes first; one answer over a quarter of the byte budget is served
//! but not kept in memory.
//!
//! Every answer kept is also written to the store's index, and an answer not
//! in memory is looked up there, so after a restart with upstream down the
//! answers given before are still given (within `stale_if_error`).

use super::error::{Error, Result};
use super::flight::SingleFlight;
use super::freshness;
use crate::bounded::ExpiringMap;
use crate::clock::Clock;
use crate::config::{defaults, Freshness};
use crate::metrics::{Kind, Metrics};
use crate::upstream::UpstreamError;
use ferry_storage::Store;
use parking_lot::Mutex;
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

/// The index's answer key spaces: what a key's first byte says it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Space {
    /// Tag-list pages ([`super::tag_lists`]).
    TagLists = 1,
    /// Referrers indexes ([`super::referrers`]).
    Referrers = 2,
    /// Repository → digest links of checked upstreams ([`super::access`]).
    Links = 3,
}

impl Space {
    /// Every space, for whole-index passes (pruning).
    pub const ALL: [Space; 3] = [Space::TagLists, Space::Referrers, Space::Links];
}

/// The index-key prefix of every entry of `space` about one repository.
pub(crate) fn repo_prefix(space: Space, upstream: &str, repo: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(upstream.len() + repo.len() + 3);
    k.push(space as u8);
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
    /// Kept per answer cache: [`defaults::ANSWERS`], [`defaults::ANSWER_BYTES`].
    pub const DEFAULT: Budget = Budget {
        count: defaults::ANSWERS,
        bytes: defaults::ANSWER_BYTES,
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
    /// The answers held in memory, each until it could no longer be served.
    entries: Mutex<ExpiringMap<K, Kept<V>>>,
    /// One upstream fetch per key at a time.
    flights: SingleFlight<K, Result<Kept<V>>>,
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
            entries: Mutex::new(ExpiringMap::weighted(budget.count, budget.bytes)),
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
        let kept = self.kept(&key, &policy);
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
                        this.keep(key2, k.clone(), &policy);
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
    fn kept(&self, key: &K, policy: &Freshness) -> Option<Kept<V>> {
        let now = self.clock.now_ms();
        if let Some(k) = self.entries.lock().get(key, now) {
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
        self.remember(key.clone(), kept.clone(), policy);
        Some(kept)
    }

    /// Drops every kept answer whose key `matches`, in memory and (by the
    /// keys' common `prefix`) in the index.
    pub fn forget(&self, prefix: &[u8], matches: impl Fn(&K) -> bool) {
        if let Err(e) = self.store.forget_answers(prefix, None) {
            tracing::warn!(kind = ?self.kind, error = %e, "could not forget kept answers");
        }
        self.entries.lock().retain(|k, _| !matches(k));
    }

    fn remove(&self, key: &K) {
        self.entries.lock().remove(key);
        if let Err(e) = self.store.forget_answers(&key.index_key(), None) {
            tracing::warn!(kind = ?self.kind, error = %e, "could not forget a kept answer");
        }
    }

    /// Keeps a fresh answer, in memory and in the index.
    fn keep(&self, key: K, kept: Kept<V>, policy: &Freshness) {
        let stored =
            self.store
                .put_answer(&key.index_key(), kept.fetched_at_ms, &kept.value.encode());
        if let Err(e) = stored {
            tracing::warn!(kind = ?self.kind, error = %e, "could not keep an answer in the index");
        }
        self.remember(key, kept, policy);
    }

    /// Holds an answer in memory, within the budget, while it can be served.
    fn remember(&self, key: K, kept: Kept<V>, policy: &Freshness) {
        let weight = kept.value.weight();
        if weight > self.budget.bytes / 4 {
            return; // one huge answer would push out everything else
        }
        let until = freshness::useful_until(kept.fetched_at_ms, policy);
        let now = self.clock.now_ms();
        if until > now {
            self.entries
                .lock()
                .insert_weighted(key, kept, weight, until, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Duration;

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
            let mut k = repo_prefix(Space::TagLists, "up", "repo");
            k.extend_from_slice(&self.to_be_bytes());
            k
        }
    }

    const BUDGET: Budget = Budget {
        count: 8,
        bytes: 4096,
    };

    const POLICY: Freshness = Freshness {
        tag_ttl: Duration::from_secs(30),
        stale_if_error: Duration::from_secs(3600),
        negative_ttl: Duration::from_secs(15),
        immutable: false,
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

    /// An answer of `n` bytes fetched `at` ms after the test clock's start.
    fn kept(a: &Answers<u32, Bytes>, n: usize, at: u64) -> Kept<Bytes> {
        Kept {
            value: Bytes::from(vec![0u8; n]),
            fetched_at_ms: a.clock.now_ms() + at,
        }
    }

    fn bytes(a: &Answers<u32, Bytes>) -> usize {
        a.entries.lock().weight()
    }

    fn held(a: &Answers<u32, Bytes>, k: u32) -> bool {
        let now = a.clock.now_ms();
        a.entries.lock().contains(&k, now)
    }

    #[test]
    fn the_byte_budget_pushes_out_the_oldest_answers() {
        let (_dir, a) = answers();
        let quarter = BUDGET.bytes / 4;
        for i in 0..4u32 {
            a.keep(i, kept(&a, quarter, u64::from(i)), &POLICY);
        }
        assert_eq!(bytes(&a), BUDGET.bytes);
        a.keep(4, kept(&a, 10, 4), &POLICY);
        assert!(!held(&a, 0), "the oldest went");
        assert!(held(&a, 4));
        assert_eq!(bytes(&a), 3 * quarter + 10);
    }

    #[test]
    fn the_count_budget_holds() {
        let (_dir, a) = answers();
        for i in 0..20u32 {
            a.keep(i, kept(&a, 1, u64::from(i)), &POLICY);
        }
        assert_eq!(a.entries.lock().len(), BUDGET.count);
        assert!(held(&a, 19) && !held(&a, 11));
    }

    #[test]
    fn answers_too_old_to_serve_even_stale_leave_memory() {
        let (_dir, a) = answers();
        a.keep(1, kept(&a, 5, 0), &POLICY);
        a.clock.advance(POLICY.tag_ttl + POLICY.stale_if_error);
        assert!(!held(&a, 1));
        let immutable = Freshness {
            immutable: true,
            ..POLICY
        };
        a.keep(2, kept(&a, 5, 0), &immutable);
        a.clock.advance(Duration::from_secs(365 * 24 * 3600));
        assert!(held(&a, 2), "an immutable answer never expires");
    }

    #[test]
    fn huge_answers_are_not_kept_and_replacing_one_keeps_the_count_right() {
        let (_dir, a) = answers();
        a.remember(1, kept(&a, BUDGET.bytes / 4 + 1, 0), &POLICY);
        assert!(a.entries.lock().is_empty());
        a.keep(1, kept(&a, 100, 0), &POLICY);
        a.keep(1, kept(&a, 50, 1), &POLICY);
        a.keep(2, kept(&a, 7, 2), &POLICY);
        assert_eq!(bytes(&a), 57);
        a.forget(&1u32.index_key(), |k| *k == 1);
        assert_eq!(bytes(&a), 7);
        a.remove(&2);
        assert_eq!(bytes(&a), 0);
    }

    #[test]
    fn kept_answers_are_found_in_the_index_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::manual();
        let open = || {
            let store = Store::open(ferry_storage::StoreOptions::new(dir.path())).unwrap();
            Answers::<u32, Bytes>::new(Kind::TagList, BUDGET, clock.clone(), Arc::default(), store)
        };
        let at = clock.now_ms();
        {
            let a = open();
            a.keep(7, kept(&a, 3, 0), &POLICY);
            a.keep(8, kept(&a, 4, 1), &POLICY);
            a.remove(&8);
        }
        let a = open();
        let k = a.kept(&7, &POLICY).expect("from the index");
        assert_eq!((k.value.len(), k.fetched_at_ms), (3, at));
        assert!(
            a.kept(&8, &POLICY).is_none(),
            "a removed answer stays removed"
        );
        a.forget(&repo_prefix(Space::TagLists, "up", "repo"), |_| true);
        assert!(a.kept(&7, &POLICY).is_none());
    }
}
