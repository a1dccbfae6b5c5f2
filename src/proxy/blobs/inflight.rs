//! The fetches in flight, by digest: at most one upstream transfer per blob.
//!
//! A fetch is registered before its leader task starts and deregistered by a
//! drop guard ([`Registration`]) when that task ends, however it ends (a
//! panic included), so a digest can never stay "in flight" forever. A fetch
//! stays registered until its blob is persisted: a request arriving between
//! verification and the index write joins it instead of fetching again.

use super::progress::{BlobFetch, FetchState};
use crate::oci::Digest;
use ferry_storage::Store;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// The registry of fetches in flight.
#[derive(Default)]
pub(crate) struct InFlight {
    /// Digest → its fetch; one entry per blob being fetched.
    fetches: Mutex<HashMap<Digest, Arc<BlobFetch>>>,
    /// Woken whenever a fetch deregisters.
    landed: Notify,
}

/// Owned by a fetch's leader task; removes the fetch from the registry when dropped.
pub(crate) struct Registration {
    inflight: Arc<InFlight>,
    digest: Digest,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.inflight.fetches.lock().remove(&self.digest);
        self.inflight.landed.notify_waiters();
    }
}

/// What [`InFlight::join_or_start`] found.
pub(crate) enum Joined {
    /// A fetch was already in flight.
    Existing(Arc<BlobFetch>),
    /// This call started it.
    Started(Arc<BlobFetch>),
    /// The blob landed in the store after the caller looked: no fetch needed.
    Stored,
}

impl InFlight {
    /// The fetch of `digest` in flight, if any.
    pub fn get(&self, digest: &Digest) -> Option<Arc<BlobFetch>> {
        self.fetches.lock().get(digest).cloned()
    }

    /// Joins the fetch of `digest`, or registers a new one and calls `start`
    /// (outside the lock) with its registration, which must move into the
    /// leader task, and the sender its progress is published on.
    pub fn join_or_start(
        self: &Arc<Self>,
        digest: &Digest,
        store: &Store,
        start: impl FnOnce(Registration, watch::Sender<FetchState>),
    ) -> Joined {
        let (tx, fetch) = BlobFetch::channel();
        let fetch = Arc::new(fetch);
        {
            let mut fetches = self.fetches.lock();
            if let Some(f) = fetches.get(digest) {
                return Joined::Existing(f.clone());
            }
            // A fetch deregisters only after its blob is indexed, so under this
            // lock "no fetch and not indexed" means nobody is fetching it.
            if matches!(store.blob_size(digest), Ok(Some(_))) {
                return Joined::Stored;
            }
            fetches.insert(digest.clone(), fetch.clone());
        }
        let registration = Registration {
            inflight: self.clone(),
            digest: digest.clone(),
        };
        start(registration, tx);
        Joined::Started(fetch)
    }

    /// Fetches in flight now.
    pub fn len(&self) -> usize {
        self.fetches.lock().len()
    }

    /// Waits until no fetch of `digest` is in flight, so what it commits can be
    /// purged. Fetches end on their own (upstream transfers have idle timeouts).
    pub async fn settled(&self, digest: &Digest) {
        self.wait_until(|f| !f.contains_key(digest)).await;
    }

    /// Waits, at most `within`, until no fetch is in flight; whether they all landed.
    pub async fn landed(&self, within: Duration) -> bool {
        tokio::time::timeout(within, self.wait_until(HashMap::is_empty))
            .await
            .is_ok()
    }

    async fn wait_until(&self, done: impl Fn(&HashMap<Digest, Arc<BlobFetch>>) -> bool) {
        loop {
            let notified = self.landed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if done(&self.fetches.lock()) {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_storage::StoreOptions;

    #[tokio::test]
    async fn a_leader_that_panics_still_deregisters_its_fetch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreOptions::new(dir.path())).unwrap();
        let inflight = Arc::new(InFlight::default());
        let digest = Digest::sha256_of(b"x");
        let task = std::sync::Mutex::new(None);
        let joined = inflight.join_or_start(&digest, &store, |registration, tx| {
            *task.lock().unwrap() = Some(tokio::spawn(async move {
                let _registration = registration;
                let _tx = tx;
                panic!("leader bug");
            }));
        });
        assert!(matches!(joined, Joined::Started(_)));
        let task = task.lock().unwrap().take().unwrap();
        assert!(task.await.unwrap_err().is_panic());
        assert!(inflight.landed(Duration::from_secs(1)).await);
        assert_eq!(inflight.len(), 0, "the digest is free for a new fetch");
        let again = inflight.join_or_start(&digest, &store, |_, _| {});
        assert!(matches!(again, Joined::Started(_)));
    }

    #[tokio::test]
    async fn a_second_caller_joins_the_fetch_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreOptions::new(dir.path())).unwrap();
        let inflight = Arc::new(InFlight::default());
        let digest = Digest::sha256_of(b"y");
        let kept = std::sync::Mutex::new(None);
        let first = inflight.join_or_start(&digest, &store, |registration, _| {
            *kept.lock().unwrap() = Some(registration);
        });
        assert!(matches!(first, Joined::Started(_)));
        let second = inflight.join_or_start(&digest, &store, |_, _| panic!("not started twice"));
        assert!(matches!(second, Joined::Existing(_)));
        drop(kept.lock().unwrap().take());
        assert!(inflight.landed(Duration::from_secs(1)).await);
    }
}
