//! Blobs: from the store when committed, else from one shared upstream fetch.
//!
//! The path of a `GET`, top to bottom:
//! 1. [`stored`]: a committed blob is streamed from its file (ranges too);
//! 2. [`inflight`]: otherwise the fetch of that digest in flight is joined, or
//!    one is registered;
//! 3. [`leader`]: the registered fetch's task downloads (from the shared
//!    bucket if it has the blob, else upstream) into a temp file, hashing as
//!    it writes, and commits only what verifies; [`upload`] puts a blob
//!    fetched upstream in the bucket, completed only once it verified;
//! 4. [`follower`]: each response streams from that fetch as the bytes land;
//! 5. [`relay`]: while the disk is failing, blobs stream from upstream uncached.
//!
//! [`progress`] is what a leader publishes and followers read; [`pread`] holds
//! the positional reads the store and followers share; [`body`], the stream
//! type every response body is.
//! A cold `HEAD` costs one upstream `HEAD` however many ask, at once or in
//! waves over [`defaults::BLOB_HEAD_MEMORY`] (its answer, the size, is
//! remembered that long), or none when a fetch of the blob is in flight.

mod body;
mod follower;
mod inflight;
mod leader;
mod pread;
mod progress;
mod relay;
mod stored;
mod upload;

pub use body::ByteStream;

use super::error::{Error, Result};
use super::flight::SingleFlight;
use super::store_health::StoreHealth;
use super::Origin;
use crate::bounded::ExpiringMap;
use crate::bucket::Bucket;
use crate::clock::Clock;
use crate::cluster::{Asked, Cluster};
use crate::config::defaults;
use crate::metrics::{Kind, Metrics};
use crate::oci::{Digest, RangeAnswer, RangeRequest};
use crate::upstream::Target;
use ferry_storage::Store;
use follower::Fallback;
use inflight::{InFlight, Joined};
use parking_lot::Mutex;
use progress::FetchFailure;
use std::sync::Arc;
use std::time::Duration;

/// A blob response: full size, the range served, and the body (none for `HEAD`).
pub struct BlobAnswer {
    /// The blob's size, when known (a chunked upstream may not say).
    pub total: Option<u64>,
    /// `Some((start, end))` (inclusive) for a 206.
    pub range: Option<(u64, u64)>,
    /// The bytes; `None` for a `HEAD` or an empty blob.
    pub body: Option<ByteStream>,
}

/// A blob in one upstream repository: what a cold `HEAD` asks about.
type HeadKey = (String, String, Digest);

/// A cold `HEAD`'s flight: the blob, and whether it may ask the owner (a
/// peer's `HEAD` never joins a forwarded one: that could wait on itself).
type HeadFlight = (HeadKey, bool);

/// The blob store, its fetches in flight and its cold `HEAD`s.
pub(crate) struct Blobs {
    cx: leader::Context,
    inflight: Arc<InFlight>,
    /// One upstream `HEAD` per cold blob at a time…
    heads: SingleFlight<HeadFlight, Result<Option<u64>>>,
    /// …and its answer (the size) for a short while after, so the later
    /// waves of a rollout's herd do not ask again.
    sizes: Arc<Mutex<ExpiringMap<HeadKey, u64>>>,
    clock: Clock,
}

impl Blobs {
    pub fn new(
        store: Store,
        metrics: Arc<Metrics>,
        health: Arc<StoreHealth>,
        clock: Clock,
        max_fetches: usize,
        bucket: Option<Arc<Bucket>>,
        cluster: Option<Arc<Cluster>>,
    ) -> Blobs {
        Blobs {
            cx: leader::Context {
                store,
                metrics,
                health,
                slots: Arc::new(tokio::sync::Semaphore::new(max_fetches)),
                bucket,
                cluster,
            },
            inflight: Arc::default(),
            heads: SingleFlight::default(),
            sizes: Arc::new(Mutex::new(ExpiringMap::new(defaults::BLOB_HEADS))),
            clock,
        }
    }

    /// A blob (or a range of it), from the store or from a shared upstream fetch.
    pub async fn get(
        &self,
        target: &Target,
        digest: &Digest,
        range: RangeRequest,
        head: bool,
        origin: Origin,
    ) -> Result<BlobAnswer> {
        if let Some(answer) = self.stored(digest, range, head) {
            return answer;
        }
        self.cx.metrics.miss(Kind::Blob);
        if head {
            return self.head_cold(target, digest, origin).await;
        }
        if self.cx.health.degraded() {
            return self.uncached(target, digest, range).await;
        }
        if origin == Origin::Peer {
            // A fetch here that waits on a peer may be waiting on the very
            // replica asking: that one fetches for itself.
            if let Some(f) = self.inflight.get(digest) {
                if f.state.borrow().from_peer {
                    return Err(Error::Loop);
                }
            }
        }
        let fetch = match self
            .inflight
            .join_or_start(digest, &self.cx.store, |registration, tx| {
                leader::start(
                    self.cx.clone(),
                    target.clone(),
                    digest.clone(),
                    origin.forwards_for(target),
                    registration,
                    tx,
                )
            }) {
            Joined::Existing(f) => {
                self.cx.metrics.coalesced.inc();
                f
            }
            Joined::Started(f) => f,
            // A fetch landed between the store lookup and now.
            Joined::Stored => {
                return match self.stored(digest, range, head) {
                    Some(answer) => answer,
                    None => self.uncached(target, digest, range).await,
                }
            }
        };
        let (rx, state) = match fetch.started().await {
            Ok(s) => s,
            Err(FetchFailure::Upstream(e)) => return Err(e),
            Err(FetchFailure::StoreUnavailable) => {
                return self.uncached(target, digest, range).await
            }
            Err(FetchFailure::Broken(why)) => {
                return Err(Error::Upstream(crate::upstream::UpstreamError::Invalid(
                    why,
                )))
            }
        };
        let fallback = Fallback {
            target: target.clone(),
            digest: digest.clone(),
            metrics: self.cx.metrics.clone(),
        };
        let Some(total) = state.size() else {
            // Upstream sent no length: stream the whole body, chunked.
            return Ok(BlobAnswer {
                total: None,
                range: None,
                body: Some(follower::follow(rx, 0, None, fallback)),
            });
        };
        let (start, end) = resolve(range, total)?;
        Ok(BlobAnswer {
            total: Some(total),
            range: partial(range, start, end, total),
            body: (total > 0).then(|| follower::follow(rx, start, Some(end + 1), fallback)),
        })
    }

    /// Whether a fetch of `digest` is in flight here.
    pub(crate) fn fetching(&self, digest: &Digest) -> bool {
        self.inflight.get(digest).is_some()
    }

    /// Uploads a committed blob whose upload was skipped, from the local
    /// disk (not upstream), in the background; nothing if it is no longer
    /// stored.
    pub(crate) fn upload_deferred(
        &self,
        bucket: Arc<Bucket>,
        slot: tokio::sync::OwnedSemaphorePermit,
        digest: &Digest,
    ) {
        if let Ok(Some(file)) = self.cx.store.open_blob(digest) {
            let size = file.size;
            upload::start(bucket, slot, digest.clone(), stored::stream(file, 0, size));
        }
    }

    /// A blob answered from the store, or `None` when it is not there. A store
    /// that cannot be read is a miss: upstream still answers.
    fn stored(
        &self,
        digest: &Digest,
        range: RangeRequest,
        head: bool,
    ) -> Option<Result<BlobAnswer>> {
        match self.cx.store.open_blob(digest) {
            Ok(Some(file)) => {
                self.cx.metrics.hit(Kind::Blob);
                let size = file.size;
                Some(resolve(range, size).map(|(start, end)| BlobAnswer {
                    total: Some(size),
                    range: partial(range, start, end, size),
                    body: (!head && size > 0).then(|| stored::stream(file, start, end + 1)),
                }))
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(%digest, error = %e, "store read failed; fetching from upstream");
                None
            }
        }
    }

    /// A cold `HEAD`: the size from a fetch in flight, else from one upstream
    /// `HEAD` shared by everyone asking; if upstream's `HEAD` does not say
    /// (chunked), the blob is fetched, since a `GET` follows a `HEAD`.
    async fn head_cold(
        &self,
        target: &Target,
        digest: &Digest,
        origin: Origin,
    ) -> Result<BlobAnswer> {
        let size = |total| BlobAnswer {
            total,
            range: None,
            body: None,
        };
        if let Some(total) = self.size_in_flight(digest).await {
            return Ok(size(Some(total)));
        }
        match self.head_upstream(target, digest, origin).await? {
            Some(total) => Ok(size(Some(total))),
            None => {
                // Boxed: `get` is what called this.
                let answer =
                    Box::pin(self.get(target, digest, RangeRequest::Whole, false, origin)).await?;
                let total = match answer.total {
                    Some(t) => Some(t),
                    None => self
                        .size_in_flight(digest)
                        .await
                        .or_else(|| self.size(digest)),
                };
                Ok(size(total))
            }
        }
    }

    /// The blob's size from the shared bucket, else from an upstream `HEAD`
    /// (`None`: upstream did not say), asked once however many want it:
    /// joined while in flight, remembered for [`defaults::BLOB_HEAD_MEMORY`] after.
    pub async fn head_upstream(
        &self,
        target: &Target,
        digest: &Digest,
        origin: Origin,
    ) -> Result<Option<u64>> {
        let key: HeadKey = (
            target.upstream.name().to_string(),
            target.repo.to_string(),
            digest.clone(),
        );
        if let Some(&size) = self.sizes.lock().get(&key, self.clock.now_ms()) {
            self.cx.metrics.coalesced.inc();
            return Ok(Some(size));
        }
        let (t, sizes, clock, k, bucket) = (
            target.clone(),
            self.sizes.clone(),
            self.clock.clone(),
            key.clone(),
            self.cx.bucket.clone(),
        );
        let forward = Cluster::forwards(
            self.cx.cluster.as_ref(),
            origin.forwards_for(target),
            digest.as_str().as_bytes(),
        );
        let cluster = self.cx.cluster.clone().filter(|_| forward);
        let (result, joined) = self
            .heads
            .run((key, forward), move || async move {
                // An answer that landed just before this flight began.
                if let Some(&size) = sizes.lock().get(&k, clock.now_ms()) {
                    return Ok(Some(size));
                }
                // The owner (another replica), else the bucket, else upstream.
                let mut size = None;
                if let Some(cluster) = &cluster {
                    let asked = cluster
                        .ask_owner(k.2.as_str().as_bytes(), "blob_head", |owner| {
                            let (cluster, t, d) = (cluster, &t, &k.2);
                            async move { cluster.head_blob(&owner, t, d).await }
                        })
                        .await;
                    match asked {
                        Asked::Answered(_, s) => size = s,
                        Asked::NotFound => {
                            return Err(Error::NotFound("blob not found upstream".into()))
                        }
                        Asked::Here => {}
                    }
                }
                if size.is_none() {
                    if let Some(b) = &bucket {
                        size = b.blob_size(&k.2).await;
                    }
                }
                if size.is_none() {
                    size = t.upstream.head_blob(&t.repo, &k.2).await?;
                }
                if let Some(size) = size {
                    let now = clock.now_ms();
                    let until = now.saturating_add(defaults::BLOB_HEAD_MEMORY.as_millis() as u64);
                    sizes.lock().insert(k, size, until, now);
                }
                Ok(size)
            })
            .await;
        if joined {
            self.cx.metrics.coalesced.inc();
        }
        result.unwrap_or_else(|| Err(Error::Internal("blob HEAD ended unexpectedly".into())))
    }

    /// The size of a blob being fetched: upstream's `Content-Length`, or for a
    /// chunked transfer, the verified length once it is all in.
    async fn size_in_flight(&self, digest: &Digest) -> Option<u64> {
        let fetch = self.inflight.get(digest)?;
        let (mut rx, state) = fetch.started().await.ok()?;
        if let Some(total) = state.size() {
            return Some(total);
        }
        let settled = rx
            .wait_for(|s| s.size().is_some() || matches!(s.phase, progress::Phase::Failed(_)))
            .await
            .ok()?
            .size();
        settled
    }

    /// Streams straight from upstream (the disk is failing). The size is needed
    /// to answer a range correctly; without one, the whole blob is served.
    async fn uncached(
        &self,
        target: &Target,
        digest: &Digest,
        range: RangeRequest,
    ) -> Result<BlobAnswer> {
        let (start, end) = match range {
            RangeRequest::Whole => (0, None),
            _ => match target.upstream.head_blob(&target.repo, digest).await {
                Ok(Some(size)) => {
                    let (s, e) = resolve(range, size)?;
                    (s, Some(e + 1))
                }
                _ => (0, None),
            },
        };
        let hasher = (start == 0).then(|| ferry_storage::Hasher::new(digest.algorithm()));
        let (total, body) =
            relay::passthrough(target, digest, start, end, hasher, self.cx.metrics.clone()).await?;
        let range = match (end, total) {
            (Some(e), Some(t)) if start > 0 || e < t => Some((start, e - 1)),
            _ => None,
        };
        Ok(BlobAnswer {
            total,
            range,
            body: Some(body),
        })
    }

    /// The size of a committed blob; `None` when not stored (or unreadable).
    pub fn size(&self, digest: &Digest) -> Option<u64> {
        self.cx.store.blob_size(digest).ok().flatten()
    }

    /// Waits until no fetch of `digest` is in flight.
    pub async fn settled(&self, digest: &Digest) {
        self.inflight.settled(digest).await
    }

    /// Waits, at most `within`, until no fetch is in flight; whether they all landed.
    pub async fn landed(&self, within: Duration) -> bool {
        self.inflight.landed(within).await
    }

    /// Fetches in flight now.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }
}

/// Resolves a range against a known size: `(start, end)` inclusive, or 416.
fn resolve(range: RangeRequest, size: u64) -> Result<(u64, u64)> {
    match range.resolve(size) {
        RangeAnswer::Full => Ok((0, size.saturating_sub(1))),
        RangeAnswer::Partial { start, end } => Ok((start, end)),
        RangeAnswer::Unsatisfiable => Err(Error::Range { size }),
    }
}

fn partial(range: RangeRequest, start: u64, end: u64, size: u64) -> Option<(u64, u64)> {
    matches!(range.resolve(size), RangeAnswer::Partial { .. }).then_some((start, end))
}
