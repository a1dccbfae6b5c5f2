//! The cache logic between the HTTP edge and upstream: tag resolution under the
//! freshness policy, manifests by digest, blobs with single-flight fan-out,
//! stale-if-error, negative caching, tag lists and referrers.
//!
//! Upstream traffic rules kept here:
//! - a tag inside its TTL (or immutable) costs no upstream request;
//! - past the TTL one `HEAD` revalidates it, shared by everyone asking meanwhile;
//! - a manifest is `GET` upstream only when its digest is not stored, and a tag
//!   is `GET` only when nothing is known about it and the client wants the body;
//! - manifests and blobs by digest never talk to upstream once stored;
//! - at most one upstream transfer per blob digest is in flight.

mod answers;
mod blob;
mod flight;
mod prefetch;

pub use flight::SingleFlight;

use crate::clock::Clock;
use crate::metrics::{Kind, Metrics};
use crate::oci::media::{self, MAX_MANIFEST_BYTES};
use crate::oci::{Digest, ErrorCode, OciError, RangeAnswer, RangeRequest, RepoName, Tag, TagsPage};
use crate::upstream::{Router, Upstream, UpstreamError};
use answers::Answers;
use blob::{BlobFetch, FetchFailure};
use bytes::Bytes;
use ferry_storage::{Store, StoredManifest, TagKey, TagRecord};
use futures_util::Stream;
use http::StatusCode;
pub use prefetch::PrefetchReport;
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A response body produced by the proxy.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send + 'static>>;

/// How long the store is bypassed after a disk failure before caching is retried.
const STORE_RETRY_MS: u64 = 30_000;
/// Negative-cache entries kept before expired ones are swept.
const NEGATIVE_CACHE_SWEEP: usize = 10_000;

/// What a tag resolves to: enough to answer a `HEAD` without the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestMeta {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// Tag lists by (upstream, repository, `n`, `last`): body and `Link` header.
type TagLists = Answers<(String, String, Option<usize>, Option<String>), (Bytes, Option<String>)>;

/// Referrers indexes by (upstream, repository, subject, `artifactType`): body
/// and whether the filter was applied.
type Referrers = Answers<(String, String, Digest, Option<String>), (Bytes, bool)>;

/// A blob response: full size, the range served, and the body (none for `HEAD`).
pub struct BlobAnswer {
    pub total: Option<u64>,
    /// `Some((start, end))` (inclusive) for a 206.
    pub range: Option<(u64, u64)>,
    pub body: Option<ByteStream>,
}

/// The cache. One per process, shared by every connection.
pub struct Proxy {
    pub store: Store,
    pub router: Router,
    pub metrics: Arc<Metrics>,
    pub clock: Clock,
    tag_flights: SingleFlight<TagKey, Result<ManifestMeta, OciError>>,
    manifest_flights: SingleFlight<Digest, Result<StoredManifest, OciError>>,
    tag_lists: Arc<TagLists>,
    referrers: Arc<Referrers>,
    blob_fetches: Mutex<HashMap<Digest, Arc<BlobFetch>>>,
    /// Tags upstream said do not exist, until (unix ms).
    negative: Mutex<HashMap<TagKey, u64>>,
    /// While the disk is failing (until unix ms), blobs stream uncached.
    store_degraded_until: AtomicU64,
}

impl Proxy {
    pub fn new(store: Store, router: Router, metrics: Arc<Metrics>, clock: Clock) -> Proxy {
        Proxy {
            store,
            router,
            metrics,
            clock,
            tag_flights: SingleFlight::default(),
            manifest_flights: SingleFlight::default(),
            tag_lists: Arc::new(Answers::new(Kind::TagList, ErrorCode::NameUnknown)),
            referrers: Arc::new(Answers::new(Kind::Referrers, ErrorCode::ManifestUnknown)),
            blob_fetches: Mutex::new(HashMap::new()),
            negative: Mutex::new(HashMap::new()),
            store_degraded_until: AtomicU64::new(0),
        }
    }

    // ------------------------------------------------------------- tags

    /// Resolves `repo:tag` to a manifest digest under the freshness policy.
    /// `want_body`: the client will `GET` the manifest, so a tag never seen
    /// before is fetched with one `GET` instead of `HEAD` + `GET`.
    pub async fn resolve_tag(
        self: &Arc<Self>,
        up: &Arc<Upstream>,
        repo: &RepoName,
        tag: &Tag,
        want_body: bool,
    ) -> Result<ManifestMeta, OciError> {
        let key = TagKey::new(up.name(), repo.as_str(), tag.as_str());
        let policy = up.config.policy.for_tag(repo.as_str(), tag.as_str());
        let now = self.clock.now_ms();
        let record = self.store.tag(&key).map_err(store_error)?;
        if let Some(r) = &record {
            if policy.immutable
                || now
                    < r.checked_at_ms
                        .saturating_add(policy.tag_ttl.as_millis() as u64)
            {
                self.metrics.hit(Kind::Tag);
                return Ok(meta_of(r));
            }
        }
        if self.negative_hit(&key, now) {
            self.metrics.negative_hits.fetch_add(1, Ordering::Relaxed);
            return Err(tag_unknown(repo, tag));
        }
        self.metrics.miss(Kind::Tag);
        let this = self.clone();
        let (up2, repo2, tag2, key2) = (up.clone(), repo.clone(), tag.clone(), key.clone());
        let (result, joined) = self
            .tag_flights
            .run(key, move || async move {
                this.revalidate_tag(&up2, &repo2, &tag2, &key2, record, want_body)
                    .await
            })
            .await;
        if joined {
            self.metrics.coalesced.fetch_add(1, Ordering::Relaxed);
        }
        result.unwrap_or_else(|| Err(internal("tag revalidation ended unexpectedly")))
    }

    /// Asks upstream about a tag whose record is missing or stale. Runs once per
    /// tag at a time (single-flight); its answer is shared by every waiter.
    async fn revalidate_tag(
        self: &Arc<Self>,
        up: &Arc<Upstream>,
        repo: &RepoName,
        tag: &Tag,
        key: &TagKey,
        record: Option<TagRecord>,
        want_body: bool,
    ) -> Result<ManifestMeta, OciError> {
        let policy = up.config.policy.for_tag(repo.as_str(), tag.as_str());
        let fresh = if record.is_none() && want_body {
            self.fetch_manifest_by_tag(up, repo, tag).await
        } else {
            self.head_tag(up, repo, tag, record.as_ref()).await
        };
        let now = self.clock.now_ms();
        match fresh {
            Ok(meta) => {
                let new = TagRecord {
                    digest: meta.digest.clone(),
                    media_type: meta.media_type.clone(),
                    size: meta.size,
                    checked_at_ms: now,
                };
                self.store.put_tag(key, &new).map_err(store_error)?;
                lock(&self.negative).remove(key);
                Ok(meta)
            }
            Err(e) if e.is_outage() => match record {
                Some(r) if now < stale_deadline(&r, &policy) => {
                    self.metrics.stale_answers.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(upstream = up.name(), %repo, %tag, error = %e, "serving stale tag");
                    Ok(meta_of(&r))
                }
                _ => Err(map_upstream_error(e, ErrorCode::ManifestUnknown)),
            },
            Err(e @ (UpstreamError::NotFound | UpstreamError::Unauthorized)) => {
                // Upstream's word is final: forget the tag, and remember briefly
                // that it is missing so a crash-looping pod cannot hammer upstream.
                self.store.delete_tag(key).map_err(store_error)?;
                let mut neg = lock(&self.negative);
                if neg.len() >= NEGATIVE_CACHE_SWEEP {
                    neg.retain(|_, until| *until > now);
                }
                neg.insert(key.clone(), now + policy.negative_ttl.as_millis() as u64);
                Err(match e {
                    UpstreamError::NotFound => tag_unknown(repo, tag),
                    e => map_upstream_error(e, ErrorCode::ManifestUnknown),
                })
            }
            Err(e) => Err(map_upstream_error(e, ErrorCode::ManifestUnknown)),
        }
    }

    /// One upstream `HEAD`. Falls back to `GET` only when upstream's `HEAD`
    /// lacks the digest, and fetches the body only when type or size is missing.
    async fn head_tag(
        self: &Arc<Self>,
        up: &Arc<Upstream>,
        repo: &RepoName,
        tag: &Tag,
        old: Option<&TagRecord>,
    ) -> Result<ManifestMeta, UpstreamError> {
        let head = up.head_manifest(repo, tag.as_str()).await?;
        let Some(digest) = head.digest else {
            tracing::debug!(upstream = up.name(), %repo, %tag, "HEAD without Docker-Content-Digest; using GET");
            return self.fetch_manifest_by_tag(up, repo, tag).await;
        };
        if let Some(old) = old.filter(|o| o.digest == digest) {
            return Ok(meta_of(old));
        }
        let media_type = head
            .media_type
            .as_deref()
            .and_then(|ct| media::manifest_media_type(Some(ct), b""));
        match (media_type, head.size) {
            (Some(mt), Some(size)) => {
                if media::is_schema1(&mt) {
                    return Err(UpstreamError::Invalid(
                        "schema1 manifests are not supported".into(),
                    ));
                }
                Ok(ManifestMeta {
                    digest,
                    media_type: mt,
                    size,
                })
            }
            _ => {
                let m = self
                    .ensure_manifest(up, repo, &digest)
                    .await
                    .map_err(oci_to_upstream)?;
                Ok(ManifestMeta {
                    digest,
                    media_type: m.media_type,
                    size: m.body.len() as u64,
                })
            }
        }
    }

    /// `GET` by tag: learns the digest and stores the body in one request.
    async fn fetch_manifest_by_tag(
        &self,
        up: &Arc<Upstream>,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<ManifestMeta, UpstreamError> {
        let fetched = up.get_manifest(repo, tag.as_str()).await?;
        let digest = match &fetched.digest_header {
            Some(d) if d.verifies(&fetched.body) => d.clone(),
            Some(d) if d.algorithm() != ferry_storage::Algorithm::Sha256 => {
                return Err(UpstreamError::Invalid(format!(
                    "manifest does not match {d}"
                )))
            }
            Some(d) => {
                self.metrics
                    .integrity_failures
                    .fetch_add(1, Ordering::Relaxed);
                return Err(UpstreamError::Invalid(format!(
                    "manifest bytes do not match upstream's Docker-Content-Digest {d}"
                )));
            }
            None => Digest::sha256_of(&fetched.body),
        };
        let stored = self.store_manifest(&digest, fetched.content_type.as_deref(), fetched.body)?;
        Ok(ManifestMeta {
            digest,
            size: stored.body.len() as u64,
            media_type: stored.media_type,
        })
    }

    fn negative_hit(&self, key: &TagKey, now: u64) -> bool {
        let mut neg = lock(&self.negative);
        match neg.get(key) {
            Some(&until) if now < until => true,
            Some(_) => {
                neg.remove(key);
                false
            }
            None => false,
        }
    }

    // -------------------------------------------------------- manifests

    /// The manifest with this digest, from the store or (once) from upstream.
    pub async fn ensure_manifest(
        self: &Arc<Self>,
        up: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<StoredManifest, OciError> {
        if let Some(m) = self.store.manifest(digest).map_err(store_error)? {
            self.metrics.hit(Kind::Manifest);
            return Ok(m);
        }
        self.metrics.miss(Kind::Manifest);
        let this = self.clone();
        let (up2, repo2, digest2) = (up.clone(), repo.clone(), digest.clone());
        let (result, joined) = self
            .manifest_flights
            .run(digest.clone(), move || async move {
                if let Some(m) = this.store.manifest(&digest2).map_err(store_error)? {
                    return Ok(m);
                }
                let fetched = up2
                    .get_manifest(&repo2, digest2.as_str())
                    .await
                    .map_err(|e| map_upstream_error(e, ErrorCode::ManifestUnknown))?;
                if !digest2.verifies(&fetched.body) {
                    this.metrics
                        .integrity_failures
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(OciError::new(
                        ErrorCode::ManifestInvalid,
                        format!("upstream sent a manifest that does not match {digest2}"),
                    )
                    .with_status(StatusCode::BAD_GATEWAY));
                }
                this.store_manifest(&digest2, fetched.content_type.as_deref(), fetched.body)
                    .map_err(|e| map_upstream_error(e, ErrorCode::ManifestUnknown))
            })
            .await;
        if joined {
            self.metrics.coalesced.fetch_add(1, Ordering::Relaxed);
        }
        result.unwrap_or_else(|| Err(internal("manifest fetch ended unexpectedly")))
    }

    /// Checks and stores a verified manifest body.
    fn store_manifest(
        &self,
        digest: &Digest,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<StoredManifest, UpstreamError> {
        if body.len() > MAX_MANIFEST_BYTES {
            return Err(UpstreamError::Invalid("manifest larger than 4 MiB".into()));
        }
        let media_type = media::manifest_media_type(content_type, &body).ok_or_else(|| {
            UpstreamError::Invalid("manifest has no recognisable media type".into())
        })?;
        if media::is_schema1(&media_type) {
            return Err(UpstreamError::Invalid(
                "schema1 manifests are not supported".into(),
            ));
        }
        if let Err(e) = self.store.put_manifest(digest, &media_type, &body) {
            // Serving still works; the next request asks upstream again.
            tracing::warn!(%digest, error = %e, "could not store manifest");
        }
        Ok(StoredManifest { media_type, body })
    }

    // ------------------------------------------------------------ blobs

    /// A blob (or a range of it), from the store or from a shared upstream fetch.
    pub async fn blob(
        self: &Arc<Self>,
        up: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
        range: RangeRequest,
        head: bool,
    ) -> Result<BlobAnswer, OciError> {
        if let Some(answer) = self.stored_blob(digest, range, head) {
            return answer;
        }
        self.metrics.miss(Kind::Blob);
        if head {
            return self.head_cold_blob(up, repo, digest).await;
        }
        if self.store_degraded() {
            return self.passthrough_blob(up, repo, digest, range).await;
        }
        let Some(fetch) = self.blob_fetch(up, repo, digest) else {
            // A fetch landed between the store lookup and now.
            return match self.stored_blob(digest, range, head) {
                Some(answer) => answer,
                None => self.passthrough_blob(up, repo, digest, range).await,
            };
        };
        let (rx, state) = match fetch.started().await {
            Ok(s) => s,
            Err(FetchFailure::Upstream(e)) => return Err(e),
            Err(FetchFailure::StoreUnavailable) => {
                return self.passthrough_blob(up, repo, digest, range).await
            }
            Err(FetchFailure::Broken(why)) => {
                return Err(
                    OciError::new(ErrorCode::Unavailable, why).with_status(StatusCode::BAD_GATEWAY)
                )
            }
        };
        let Some(total) = state.size() else {
            // Upstream sent no length: stream the whole body, chunked.
            let body = blob::follow(rx, 0, None, self.fallback(up, repo, digest));
            return Ok(BlobAnswer {
                total: None,
                range: None,
                body: Some(body),
            });
        };
        let (start, end) = resolve(range, total)?;
        let body = (total > 0)
            .then(|| blob::follow(rx, start, Some(end + 1), self.fallback(up, repo, digest)));
        Ok(BlobAnswer {
            total: Some(total),
            range: partial(range, start, end, total),
            body,
        })
    }

    /// A blob answered from the store, or `None` when it is not there.
    fn stored_blob(
        &self,
        digest: &Digest,
        range: RangeRequest,
        head: bool,
    ) -> Option<Result<BlobAnswer, OciError>> {
        match self.store.open_blob(digest) {
            Ok(Some(file)) => {
                self.metrics.hit(Kind::Blob);
                let size = file.size;
                Some(resolve(range, size).map(|(start, end)| BlobAnswer {
                    total: Some(size),
                    range: partial(range, start, end, size),
                    body: (!head && size > 0).then(|| file_stream(file, start, end + 1)),
                }))
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(%digest, error = %e, "store read failed; fetching from upstream");
                None
            }
        }
    }

    /// Joins the fetch of `digest` in flight, or starts one; `None` when the
    /// blob is in the store after all (a fetch landed after the caller looked).
    fn blob_fetch(
        self: &Arc<Self>,
        up: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
    ) -> Option<Arc<BlobFetch>> {
        let mut fetches = lock(&self.blob_fetches);
        if let Some(f) = fetches.get(digest) {
            self.metrics.coalesced.fetch_add(1, Ordering::Relaxed);
            return Some(f.clone());
        }
        // A fetch removes itself only after its blob is indexed, so under this
        // lock "no fetch and not indexed" means nobody is fetching it.
        if matches!(self.store.blob_size(digest), Ok(Some(_))) {
            return None;
        }
        let f = Arc::new(blob::start(
            self.clone(),
            up.clone(),
            repo.clone(),
            digest.clone(),
        ));
        fetches.insert(digest.clone(), f.clone());
        Some(f)
    }

    fn fallback(&self, up: &Arc<Upstream>, repo: &RepoName, digest: &Digest) -> blob::Fallback {
        blob::Fallback {
            upstream: up.clone(),
            repo: repo.clone(),
            digest: digest.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// Waits until no fetch of `digest` is in flight, so what it commits can be
    /// purged. Fetches end on their own (upstream transfers have idle timeouts).
    pub async fn fetch_settled(&self, digest: &Digest) {
        while lock(&self.blob_fetches).contains_key(digest) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Waits, at most `within`, until no blob fetch is in flight (a fetch ends
    /// only once its blob is persisted); whether they all landed.
    pub async fn fetches_landed(&self, within: std::time::Duration) -> bool {
        let all = async {
            while !lock(&self.blob_fetches).is_empty() {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(within, all).await.is_ok()
    }

    /// Called by a fetch's task when it has landed (verified or failed).
    fn finish_fetch(&self, digest: &Digest) {
        lock(&self.blob_fetches).remove(digest);
    }

    async fn head_cold_blob(
        self: &Arc<Self>,
        up: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<BlobAnswer, OciError> {
        let in_flight = lock(&self.blob_fetches).get(digest).cloned();
        if let Some(f) = in_flight {
            if let Ok((_, state)) = f.started().await {
                if let Some(total) = state.size() {
                    return Ok(BlobAnswer {
                        total: Some(total),
                        range: None,
                        body: None,
                    });
                }
            }
        }
        let size = up
            .head_blob(repo, digest)
            .await
            .map_err(|e| map_upstream_error(e, ErrorCode::BlobUnknown))?;
        Ok(BlobAnswer {
            total: size,
            range: None,
            body: None,
        })
    }

    async fn passthrough_blob(
        self: &Arc<Self>,
        up: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
        range: RangeRequest,
    ) -> Result<BlobAnswer, OciError> {
        // The size is needed to answer a range correctly; without one, serve it all.
        let (start, end) = match range {
            RangeRequest::Whole => (0, None),
            _ => match up.head_blob(repo, digest).await {
                Ok(Some(size)) => {
                    let (s, e) = resolve(range, size)?;
                    (s, Some(e + 1))
                }
                _ => (0, None),
            },
        };
        let hasher = (start == 0).then(|| ferry_storage::Hasher::new(digest.algorithm()));
        let (total, body) = blob::passthrough(
            up.clone(),
            repo,
            digest,
            start,
            end,
            hasher,
            self.metrics.clone(),
        )
        .await?;
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

    /// Records a disk failure: blobs stream uncached for a while. Logged once
    /// per episode, not per request.
    fn store_failed(&self, why: &str) {
        self.metrics
            .store_write_errors
            .fetch_add(1, Ordering::Relaxed);
        let until = self.clock.now_ms() + STORE_RETRY_MS;
        let previous = self.store_degraded_until.swap(until, Ordering::Relaxed);
        if previous < self.clock.now_ms() {
            tracing::error!(
                "blob store write failed ({why}); serving blobs from upstream without caching for {}s",
                STORE_RETRY_MS / 1000
            );
        }
    }

    fn store_recovered(&self) {
        if self.store_degraded_until.swap(0, Ordering::Relaxed) > 0 {
            tracing::info!("blob store writable again; caching resumed");
        }
    }

    fn store_degraded(&self) -> bool {
        self.clock.now_ms() < self.store_degraded_until.load(Ordering::Relaxed)
    }

    /// After a commit: keep the store under its budget, off the request path.
    fn after_commit(&self) {
        if self.store.over_budget() {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = store.evict_if_over_budget() {
                    tracing::error!(error = %e, "eviction failed");
                }
            });
        }
    }

    // ------------------------------------------------- tags list, referrers

    /// A page of tags, with `name` and `Link` rewritten to the client's view.
    pub async fn tags_list(
        &self,
        up: &Arc<Upstream>,
        repo: &RepoName,
        client_name: &RepoName,
        page: &TagsPage,
        ns: Option<&str>,
    ) -> Result<(Bytes, Option<String>), OciError> {
        #[derive(serde::Deserialize)]
        struct TagList {
            tags: Option<Vec<String>>,
        }
        if page.n == Some(0) {
            let body = serde_json::json!({ "name": client_name.as_str(), "tags": [] });
            return Ok((Bytes::from(body.to_string()), None));
        }
        // Repository-wide rules apply; tag patterns have no tag to match here.
        let policy = up.config.policy.for_tag(repo.as_str(), "");
        let key = (
            up.name().to_string(),
            repo.to_string(),
            page.n,
            page.last.clone(),
        );
        let (up2, repo2, page2) = (up.clone(), repo.clone(), page.clone());
        let (body, link) = self
            .tag_lists
            .get(
                key,
                policy,
                &self.clock,
                &self.metrics,
                move || async move { up2.tags_list(&repo2, page2.n, page2.last.as_deref()).await },
            )
            .await?;
        let list: TagList = serde_json::from_slice(&body).map_err(|_| {
            OciError::new(ErrorCode::Unknown, "upstream sent an unreadable tag list")
                .with_status(StatusCode::BAD_GATEWAY)
        })?;
        let mut tags = list.tags.unwrap_or_default();
        let upstream_next = link.as_deref().and_then(link_last);
        let mut next = None;
        if upstream_next.is_none() {
            // Upstream did not paginate: apply `last` and `n` here, so an upstream
            // that ignores them still gives a correct page.
            tags.sort();
            if let Some(last) = &page.last {
                tags.retain(|t| t > last);
            }
            if let Some(n) = page.n.filter(|&n| tags.len() > n) {
                tags.truncate(n);
                next = tags.last().cloned();
            }
        } else {
            next = upstream_next;
        }
        let link = next.map(|last| {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            if let Some(n) = page.n {
                q.append_pair("n", &n.to_string());
            }
            q.append_pair("last", &last);
            if let Some(ns) = ns {
                q.append_pair("ns", ns);
            }
            format!("</v2/{client_name}/tags/list?{}>; rel=\"next\"", q.finish())
        });
        let body = serde_json::json!({ "name": client_name.as_str(), "tags": tags });
        Ok((Bytes::from(body.to_string()), link))
    }

    /// Drops the tag lists and referrers kept for a repository (after a purge).
    pub fn forget_repository_answers(&self, upstream: &str, repo: &str) {
        self.tag_lists
            .forget(|(u, r, ..)| u == upstream && r == repo);
        self.referrers
            .forget(|(u, r, ..)| u == upstream && r == repo);
    }

    /// The referrers index for `digest` (see `fetch_referrers`), kept under
    /// the repository's freshness policy. Returns the body and whether an
    /// `artifactType` filter was applied.
    pub async fn referrers(
        &self,
        up: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<(Bytes, bool), OciError> {
        let policy = up.config.policy.for_tag(repo.as_str(), "");
        let key = (
            up.name().to_string(),
            repo.to_string(),
            digest.clone(),
            artifact_type.map(str::to_owned),
        );
        let (up2, repo2, digest2, t2) = (
            up.clone(),
            repo.clone(),
            digest.clone(),
            artifact_type.map(str::to_owned),
        );
        self.referrers
            .get(key, policy, &self.clock, &self.metrics, move || {
                fetch_referrers(up2, repo2, digest2, t2)
            })
            .await
    }
}

/// The descriptors of an index body (empty when it is not one).
fn descriptors_of(body: &[u8]) -> Vec<serde_json::Value> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("manifests").and_then(|m| m.as_array()).cloned())
        .unwrap_or_default()
}

/// The `last` parameter of a `Link: <...?last=x&n=y>; rel="next"` header.
fn link_last(link: &str) -> Option<String> {
    let target = link.split('<').nth(1)?.split('>').next()?;
    let query = target.split_once('?')?.1;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "last")
        .map(|(_, v)| v.into_owned())
}

fn meta_of(r: &TagRecord) -> ManifestMeta {
    ManifestMeta {
        digest: r.digest.clone(),
        media_type: r.media_type.clone(),
        size: r.size,
    }
}

/// The referrers index for `digest` from upstream: its referrers API, else the
/// `sha256-<hex>` fallback tag, else an empty index. Returns the body and
/// whether an `artifactType` filter was applied.
async fn fetch_referrers(
    up: Arc<Upstream>,
    repo: RepoName,
    digest: Digest,
    artifact_type: Option<String>,
) -> Result<(Bytes, bool), UpstreamError> {
    let artifact_type = artifact_type.as_deref();
    let (descriptors, filtered) = match up.referrers(&repo, &digest, artifact_type).await? {
        Some((body, filtered)) => (descriptors_of(&body), filtered),
        None => {
            let fallback = format!(
                "{}-{}",
                digest.algorithm().as_str(),
                &digest.hex()[..digest.hex().len().min(64)]
            );
            match up.get_manifest(&repo, &fallback).await {
                Ok(m) => (descriptors_of(&m.body), false),
                Err(UpstreamError::NotFound) => (Vec::new(), false),
                Err(e) => return Err(e),
            }
        }
    };
    let descriptors: Vec<serde_json::Value> = match artifact_type {
        Some(t) if !filtered => descriptors
            .into_iter()
            .filter(|d| d.get("artifactType").and_then(|v| v.as_str()) == Some(t))
            .collect(),
        _ => descriptors,
    };
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": descriptors,
    });
    Ok((Bytes::from(body.to_string()), artifact_type.is_some()))
}

fn stale_deadline(r: &TagRecord, policy: &crate::config::Freshness) -> u64 {
    r.checked_at_ms
        .saturating_add(policy.tag_ttl.as_millis() as u64)
        .saturating_add(policy.stale_if_error.as_millis() as u64)
}

/// Resolves a range against a known size: `(start, end)` inclusive, or 416.
fn resolve(range: RangeRequest, size: u64) -> Result<(u64, u64), OciError> {
    match range.resolve(size) {
        RangeAnswer::Full => Ok((0, size.saturating_sub(1))),
        RangeAnswer::Partial { start, end } => Ok((start, end)),
        RangeAnswer::Unsatisfiable => Err(range_not_satisfiable(size)),
    }
}

fn partial(range: RangeRequest, start: u64, end: u64, size: u64) -> Option<(u64, u64)> {
    matches!(range.resolve(size), RangeAnswer::Partial { .. }).then_some((start, end))
}

/// 416, with the size for `Content-Range: bytes */<size>`.
pub fn range_not_satisfiable(size: u64) -> OciError {
    let mut e = OciError::new(
        ErrorCode::RangeInvalid,
        format!("range not satisfiable for a blob of {size} bytes"),
    );
    e.unsatisfied_size = Some(size);
    e
}

/// Streams bytes `[start, end)` of a committed blob in large chunks.
/// Up to `len` bytes at `pos` if the kernel has them cached, without blocking:
/// `preadv2(RWF_NOWAIT)` fails with `EAGAIN` rather than wait for the disk.
fn read_if_cached(file: &std::fs::File, pos: u64, len: u64) -> Option<Bytes> {
    let mut buf = vec![0u8; len as usize];
    let flags = rustix::io::ReadWriteFlags::NOWAIT;
    match rustix::io::preadv2(file, &mut [io::IoSliceMut::new(&mut buf)], pos, flags) {
        Ok(n) if n > 0 => {
            buf.truncate(n);
            Some(Bytes::from(buf))
        }
        _ => None,
    }
}

fn file_stream(file: ferry_storage::BlobFile, start: u64, end: u64) -> ByteStream {
    struct Reader {
        file: Option<ferry_storage::BlobFile>,
        pos: u64,
        end: u64,
    }
    let r = Reader {
        file: Some(file),
        pos: start,
        end,
    };
    Box::pin(futures_util::stream::unfold(r, |mut r| async move {
        if r.pos >= r.end {
            return None;
        }
        let len = (r.end - r.pos).min(blob::READ_CHUNK as u64);
        // Bytes in the page cache are read right here: a hop to the blocking
        // pool costs more than the copy. Anything else goes to the pool.
        if let Some(bytes) = r
            .file
            .as_ref()
            .and_then(|f| read_if_cached(&f.file, r.pos, len))
        {
            r.pos += bytes.len() as u64;
            return Some((Ok(bytes), r));
        }
        let file = r.file.take()?;
        let pos = r.pos;
        let result = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Seek, SeekFrom};
            let mut f = file;
            let mut buf = Vec::with_capacity(len as usize);
            // `read_to_end` on a File fills spare capacity without zeroing it first.
            let read = f
                .file
                .seek(SeekFrom::Start(pos))
                .and_then(|_| (&mut f.file).take(len).read_to_end(&mut buf));
            (f, read.map(|_| buf))
        })
        .await;
        match result {
            Ok((file, Ok(buf))) if buf.len() as u64 == len => {
                r.pos += len;
                r.file = Some(file);
                Some((Ok(Bytes::from(buf)), r))
            }
            Ok((_, Ok(_))) => Some((
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "blob file shorter than indexed",
                )),
                r,
            )),
            Ok((_, Err(e))) => Some((Err(e), r)),
            Err(e) => Some((Err(io::Error::other(e)), r)),
        }
    }))
}

fn tag_unknown(repo: &RepoName, tag: &Tag) -> OciError {
    OciError::new(
        ErrorCode::ManifestUnknown,
        format!("{repo}:{tag} not found upstream"),
    )
}

fn internal(msg: &str) -> OciError {
    OciError::new(ErrorCode::Unknown, msg)
}

fn store_error(e: ferry_storage::StoreError) -> OciError {
    tracing::error!(error = %e, "store error");
    OciError::new(ErrorCode::Unknown, "local store error")
}

/// Upstream failure → the client's error. `not_found` is the code for a 404
/// (`MANIFEST_UNKNOWN`, `BLOB_UNKNOWN`, …). Upstream challenges never pass through:
/// "denied" becomes `NAME_UNKNOWN`, as Docker Hub means it.
pub fn map_upstream_error(e: UpstreamError, not_found: ErrorCode) -> OciError {
    match e {
        UpstreamError::NotFound => OciError::new(not_found, "not found upstream"),
        UpstreamError::Unauthorized => OciError::new(
            ErrorCode::NameUnknown,
            "repository not found upstream, or it requires authorization",
        ),
        UpstreamError::RateLimited { retry_after } => {
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            OciError::new(ErrorCode::TooManyRequests, "upstream rate limit reached")
                .with_retry_after(Some(secs.max(1)))
        }
        UpstreamError::Timeout => OciError::new(ErrorCode::Unavailable, "upstream timed out")
            .with_status(StatusCode::GATEWAY_TIMEOUT),
        UpstreamError::Transport(_) => {
            OciError::new(ErrorCode::Unavailable, "upstream unreachable")
                .with_status(StatusCode::SERVICE_UNAVAILABLE)
        }
        UpstreamError::Status(s) => {
            OciError::new(ErrorCode::Unavailable, format!("upstream answered {s}"))
                .with_status(StatusCode::BAD_GATEWAY)
        }
        UpstreamError::Invalid(why) => OciError::new(
            ErrorCode::Unknown,
            format!("upstream sent an invalid response: {why}"),
        )
        .with_status(StatusCode::BAD_GATEWAY),
    }
}

/// A manifest-fetch error seen from tag revalidation.
fn oci_to_upstream(e: OciError) -> UpstreamError {
    match e.code {
        ErrorCode::ManifestUnknown => UpstreamError::NotFound,
        ErrorCode::NameUnknown => UpstreamError::Unauthorized,
        ErrorCode::TooManyRequests => UpstreamError::RateLimited {
            retry_after: std::time::Duration::from_secs(e.retry_after.unwrap_or(1)),
        },
        ErrorCode::Unavailable => UpstreamError::Status(e.status),
        _ => UpstreamError::Invalid(e.message),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_bytes_are_read_in_place_at_their_offset() {
        use std::io::Write;
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        // Just written, so in the page cache.
        let b = read_if_cached(&f, 1000, 5000).expect("page-cache hit");
        assert_eq!(&b[..], &data[1000..6000]);
        let b = read_if_cached(&f, 299_990, 5000).expect("page-cache hit");
        assert_eq!(&b[..], &data[299_990..], "short read at the end");
        assert!(read_if_cached(&f, 300_000, 10).is_none(), "end of file");
    }

    #[test]
    fn link_parsing() {
        assert_eq!(
            link_last("</v2/x/tags/list?last=b&n=2>; rel=\"next\"").as_deref(),
            Some("b")
        );
        assert_eq!(link_last("garbage"), None);
    }

    #[test]
    fn error_mapping_hides_upstream_auth() {
        let e = map_upstream_error(UpstreamError::Unauthorized, ErrorCode::ManifestUnknown);
        assert_eq!(
            (e.code, e.status),
            (ErrorCode::NameUnknown, StatusCode::NOT_FOUND)
        );
        let e = map_upstream_error(
            UpstreamError::RateLimited {
                retry_after: std::time::Duration::from_millis(29_500),
            },
            ErrorCode::ManifestUnknown,
        );
        assert_eq!(
            (e.status, e.retry_after),
            (StatusCode::TOO_MANY_REQUESTS, Some(30))
        );
    }
}
