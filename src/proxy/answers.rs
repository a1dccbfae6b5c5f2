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

/// Answers kept per cache at most; the oldest goes first.
const MAX_ANSWERS: usize = 1024;

pub(crate) struct Answers<K, V> {
    kind: Kind,
    /// The error code an upstream 404 becomes.
    not_found: ErrorCode,
    entries: Mutex<HashMap<K, Kept<V>>>,
    flights: SingleFlight<K, Result<Kept<V>, OciError>>,
}

#[derive(Clone)]
struct Kept<V> {
    value: V,
    fetched_at_ms: u64,
}

impl<K, V> Answers<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
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
        let kept = lock(&self.entries).get(&key).cloned();
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
                        lock(&this.entries).remove(&key2);
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
        lock(&self.entries).retain(|k, _| !matches(k));
    }

    fn keep(&self, key: K, kept: Kept<V>) {
        let mut entries = lock(&self.entries);
        if entries.len() >= MAX_ANSWERS && !entries.contains_key(&key) {
            let oldest = entries
                .iter()
                .min_by_key(|(_, k)| k.fetched_at_ms)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                entries.remove(&k);
            }
        }
        entries.insert(key, kept);
    }
}
