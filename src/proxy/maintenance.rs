//! Operations on the whole cache: purges (admin API), fsck, the periodic
//! maintenance pass (access times, budget, old answers) and shutdown.

use super::answers::Space;
use super::{Error, Origin, Proxy, Result};
use crate::bucket::Object;
use crate::config::defaults;
use crate::oci::Digest;
use crate::upstream::Target;
use ferry_storage::FsckReport;
use std::time::Duration;

impl Proxy {
    /// Removes a blob or manifest and the tags pointing at it; waits first for
    /// a fetch of it in flight, so the purge is not undone by its commit. Asked
    /// by an operator (`origin` a client), it also goes to every other replica
    /// and deletes the digest's objects in the shared bucket.
    pub async fn purge_digest(&self, digest: &Digest, origin: Origin) -> Result<usize> {
        self.blobs.settled(digest).await;
        let (store, d) = (self.store.clone(), digest.clone());
        let removed = blocking(move || store.purge_digest(&d).map(usize::from)).await?;
        if origin.forwards() {
            if let Some(bucket) = &self.bucket {
                bucket.purge(digest).await;
            }
            self.purge_everywhere(format!("digest={digest}"));
        }
        Ok(removed)
    }

    /// Sends a purge to every other replica (on their client port, as a peer).
    fn purge_everywhere(&self, query: String) {
        if let Some(cluster) = &self.cluster {
            cluster.broadcast(
                format!("{PEER_PURGE}?{query}"),
                http::HeaderMap::new(),
                bytes::Bytes::new(),
                "purge",
            );
        }
    }

    /// Forgets one tag, or every tag of a repository, with its tag lists and
    /// referrers answers; they are resolved afresh next time.
    pub async fn purge_tags(
        &self,
        target: &Target,
        tag: Option<&str>,
        origin: Origin,
    ) -> Result<usize> {
        let (up, repo) = (target.upstream.name().to_string(), target.repo.to_string());
        self.tag_lists.forget(&up, &repo);
        self.referrers.forget(&up, &repo);
        if origin.forwards() {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            q.append_pair("upstream", &up)
                .append_pair("repository", &repo);
            if let Some(t) = tag {
                q.append_pair("tag", t);
            }
            self.purge_everywhere(q.finish());
        }
        let (store, tag) = (self.store.clone(), tag.map(str::to_owned));
        blocking(move || store.purge_tags(&up, &repo, tag.as_deref())).await
    }

    /// Drops what the index's answer spaces keep (tag-list pages, referrers
    /// indexes, checked upstreams' repository links) once older than any
    /// policy could serve, and at least a week old; a pruned link is
    /// confirmed again by one upstream `HEAD` when next asked.
    fn prune_answers(&self) -> Result<()> {
        let oldest = self.router.upstreams().iter().map(|u| {
            let d = u.config().policy.defaults;
            d.tag_ttl.saturating_add(d.stale_if_error)
        });
        let keep = oldest
            .max()
            .unwrap_or_default()
            .max(Duration::from_secs(7 * 24 * 3600));
        let limit = self.clock.now_ms().saturating_sub(keep.as_millis() as u64);
        for space in Space::ALL {
            self.store.forget_answers(&[space as u8], Some(limit))?;
        }
        Ok(())
    }

    /// Checks the store (report only on a live store).
    pub async fn fsck(&self, verify: bool) -> Result<FsckReport> {
        let store = self.store.clone();
        let report = blocking(move || store.fsck(verify, false)).await?;
        self.metrics.fsck_findings.set(report.findings.len() as i64);
        Ok(report)
    }

    /// One maintenance pass: write batched access times, keep the store in
    /// budget, drop answers too old to serve.
    pub async fn maintain(&self) -> Result<()> {
        let store = self.store.clone();
        blocking(move || {
            store.flush_access_times()?;
            store.evict_if_over_budget().map(drop)
        })
        .await?;
        self.prune_answers()
    }

    /// Makes the skipped bucket uploads every [`defaults::BUCKET_CATCH_UP`];
    /// runs until dropped, and never wakes without a bucket.
    pub async fn keep_uploads_caught_up(&self) {
        if self.bucket.is_none() {
            return std::future::pending().await;
        }
        let mut tick = tokio::time::interval(defaults::BUCKET_CATCH_UP);
        loop {
            tick.tick().await;
            self.catch_up_uploads().await;
        }
    }

    /// Makes the bucket uploads that were skipped (no free slot, or the bucket
    /// backing off), from the local disk, while the bucket is usable and
    /// slots are free; an object the bucket already holds (another replica
    /// uploaded it) is not sent again.
    async fn catch_up_uploads(&self) {
        let Some(bucket) = &self.bucket else { return };
        // Each remembered upload at most once a round: one still downloading
        // goes back to the end.
        for _ in 0..bucket.deferred() {
            let Some((slot, object, digest)) = bucket.next_deferred() else {
                return;
            };
            if object == Object::Blob && self.blobs.fetching(&digest) {
                bucket.defer(object, &digest);
                continue;
            }
            match bucket.holds(object, &digest).await {
                Some(true) => continue,
                Some(false) => {}
                None => {
                    // The bucket failed and backs off: try again later.
                    bucket.defer(object, &digest);
                    return;
                }
            }
            match object {
                Object::Blob => self.blobs.upload_deferred(bucket.clone(), slot, &digest),
                Object::Manifest => self
                    .manifests
                    .upload_deferred(bucket.clone(), slot, &digest),
            }
        }
    }

    /// Lets blob fetches in flight land (at most `within`) and writes what is
    /// batched in memory; whether every fetch landed.
    pub async fn shutdown(&self, within: Duration) -> bool {
        let landed = self.blobs.landed(within).await;
        if let Err(e) = self.maintain_flush().await {
            tracing::warn!(error = %e, "could not write access times at shutdown");
        }
        landed
    }

    async fn maintain_flush(&self) -> Result<()> {
        let store = self.store.clone();
        blocking(move || store.flush_access_times().map(drop)).await
    }

    /// Waits, at most `within`, until no blob fetch is in flight.
    pub async fn fetches_landed(&self, within: Duration) -> bool {
        self.blobs.landed(within).await
    }

    /// Blob fetches in flight now.
    pub fn fetches_in_flight(&self) -> usize {
        self.blobs.in_flight()
    }
}

/// The client-port path a replica posts a purge to on its peers (with the
/// peer secret; the query is the admin API's).
pub const PEER_PURGE: &str = "/_ferry/purge";

/// Runs a store call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, ferry_storage::StoreError> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(Error::from),
        Err(e) => Err(Error::Internal(format!("store task failed: {e}"))),
    }
}
