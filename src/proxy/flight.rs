//! Single-flight: at most one piece of upstream work per key, its result shared
//! by every caller that asked while it ran.
//!
//! The work runs in its own task, so the caller that started it can go away
//! (a client disconnecting) without cancelling it for the others. If the task
//! dies, every waiter gets `None` and the key is free for a fresh attempt.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use tokio::sync::watch;

type Flights<K, V> = Arc<Mutex<HashMap<K, watch::Receiver<Option<V>>>>>;

/// Flights in the air by key. Bounded by the callers: one per distinct key
/// being fetched, and a flight's key is freed when its task ends.
pub struct SingleFlight<K, V> {
    /// Key → the channel its result will be published on.
    inflight: Flights<K, V>,
}

impl<K, V> Clone for SingleFlight<K, V> {
    /// Another handle on the same flights.
    fn clone(&self) -> Self {
        SingleFlight {
            inflight: self.inflight.clone(),
        }
    }
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight {
            inflight: Arc::default(),
        }
    }
}

/// Removes a flight's key when its task ends, however it ends.
struct Landing<K: Hash + Eq, V> {
    inflight: Flights<K, V>,
    key: Option<K>,
}

impl<K: Hash + Eq, V> Drop for Landing<K, V> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.inflight.lock().remove(&key);
        }
    }
}

impl<K, V> SingleFlight<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Runs the future `start` makes, unless a flight for `key` is already in the
    /// air, and returns its result: `(result, joined)` where `joined` says this
    /// caller shared someone else's flight. `start` is only called by the leader.
    pub async fn run<F>(&self, key: K, start: impl FnOnce() -> F) -> (Option<V>, bool)
    where
        F: Future<Output = V> + Send + 'static,
    {
        let (mut rx, joined) = {
            let mut map = self.inflight.lock();
            match map.get(&key) {
                Some(rx) => (rx.clone(), true),
                None => {
                    let (tx, rx) = watch::channel(None);
                    map.insert(key.clone(), rx.clone());
                    let work = start();
                    let landing = Landing {
                        inflight: self.inflight.clone(),
                        key: Some(key),
                    };
                    tokio::spawn(async move {
                        let value = work.await;
                        // Publish first, then free the key: a caller arriving in
                        // between still gets this (fresh) result.
                        let _ = tx.send(Some(value));
                        drop(landing);
                    });
                    (rx, false)
                }
            }
        };
        let value = rx
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|v| v.clone());
        (value, joined)
    }

    /// Flights in the air now.
    pub fn len(&self) -> usize {
        self.inflight.lock().len()
    }

    /// No flight in the air.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_run() {
        let sf = Arc::new(SingleFlight::<&str, u32>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (sf, runs) = (sf.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                sf.run("k", || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    7
                })
                .await
            }));
        }
        let mut joined = 0;
        for t in tasks {
            let (v, j) = t.await.unwrap();
            assert_eq!(v, Some(7));
            joined += usize::from(j);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(joined, 49);
        assert!(sf.is_empty(), "key freed after landing");
    }

    #[tokio::test(start_paused = true)]
    async fn leader_leaving_does_not_cancel_the_work() {
        let sf = Arc::new(SingleFlight::<&str, u32>::default());
        let leader = {
            let sf = sf.clone();
            tokio::spawn(async move {
                sf.run("k", || async {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    1
                })
                .await
            })
        };
        tokio::task::yield_now().await;
        leader.abort();
        let (v, joined) = sf.run("k", || async { 2 }).await;
        assert_eq!((v, joined), (Some(1), true));
    }

    #[tokio::test]
    async fn a_panicking_flight_frees_its_key() {
        let sf = SingleFlight::<&str, u32>::default();
        let (v, _) = sf.run("k", || async { panic!("boom") }).await;
        assert_eq!(v, None);
        let (v, joined) = sf.run("k", || async { 3 }).await;
        assert_eq!((v, joined), (Some(3), false));
    }
}
