//! Prefetch: warm the cache with an image before nodes ask for it (a rollout
//! about to start, a site about to go offline). It walks the image the way a
//! client would, through the same paths: the tag under its freshness policy,
//! manifests once each, blobs through the shared single-flight fetch, so a
//! prefetch racing real pulls still costs one upstream transfer per blob.

use super::blobs::Blobs;
use super::error::{Error, Result};
use super::manifests::Manifests;
use super::tags::Tags;
use super::Origin;
use crate::oci::{media, Digest, RangeRequest, Reference};
use crate::upstream::{Target, UpstreamError};
use futures_util::{stream, StreamExt};
use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Blobs fetched at once by one prefetch.
const PARALLEL_BLOBS: usize = 4;
/// Manifests one prefetch visits at most (an index and its platforms).
const MAX_MANIFESTS: usize = 256;

/// What a prefetch did.
#[derive(Debug, Default, serde::Serialize)]
pub struct PrefetchReport {
    /// The digest the reference resolved to.
    pub digest: String,
    /// Manifests visited (the root and, for an index, its platforms).
    pub manifests: usize,
    /// Distinct blobs (configs and layers) those manifests use.
    pub blobs: usize,
    /// Blobs that were in the store already.
    pub blobs_cached: usize,
    /// Blobs fetched from upstream (or joined in flight) by this prefetch.
    pub blobs_fetched: usize,
    /// Bytes of the blobs fetched.
    pub bytes_fetched: u64,
}

/// How far a prefetch has got, readable while it runs (for a progress display).
#[derive(Debug, Default)]
pub struct Progress {
    /// Blobs the image uses (known once its manifests are read).
    pub blobs: AtomicU64,
    /// Blobs done (cached already, or fetched).
    pub blobs_done: AtomicU64,
    /// Bytes fetched so far, counted as they arrive.
    pub bytes: AtomicU64,
}

impl Progress {
    /// `(blobs done, blobs, bytes)` now.
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.blobs_done.load(Ordering::Relaxed),
            self.blobs.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }
}

/// Caches `target:reference` (a tag or a digest) with every manifest an index
/// lists and every blob those manifests use, counting into `progress`.
pub(crate) async fn run(
    tags: &Arc<Tags>,
    manifests: &Arc<Manifests>,
    blobs: &Blobs,
    target: &Target,
    reference: &Reference,
    progress: &Progress,
) -> Result<PrefetchReport> {
    let root = match reference {
        Reference::Digest(d) => d.clone(),
        Reference::Tag(t) => {
            tags.resolve(target, t, true, Origin::Client)
                .await?
                .meta
                .digest
        }
    };
    let mut report = PrefetchReport {
        digest: root.to_string(),
        ..PrefetchReport::default()
    };
    let mut seen = BTreeSet::from([root.clone()]);
    let mut queue = VecDeque::from([root]);
    let mut wanted = BTreeSet::new();
    while let Some(digest) = queue.pop_front() {
        let manifest = manifests.by_digest(target, &digest, Origin::Client).await?;
        report.manifests += 1;
        let refs = media::references(&manifest.body);
        for child in refs.manifests {
            if seen.len() < MAX_MANIFESTS && seen.insert(child.clone()) {
                queue.push_back(child);
            }
        }
        wanted.extend(refs.blobs);
    }
    report.blobs = wanted.len();
    progress.blobs.store(wanted.len() as u64, Ordering::Relaxed);
    let results: Vec<Result<Option<u64>>> = stream::iter(wanted)
        .map(|d| async move {
            let r = blob(blobs, target, d, progress).await;
            progress.blobs_done.fetch_add(1, Ordering::Relaxed);
            r
        })
        .buffer_unordered(PARALLEL_BLOBS)
        .collect()
        .await;
    for r in results {
        match r? {
            None => report.blobs_cached += 1,
            Some(bytes) => {
                report.blobs_fetched += 1;
                report.bytes_fetched += bytes;
            }
        }
    }
    Ok(report)
}

/// Like [`run`], for an image upstream may not serve yet (a push event can
/// arrive before the manifest is readable): retried with back-off while
/// upstream answers "not found" or fails, five times over about 15 s.
pub(crate) async fn with_retries(
    tags: &Arc<Tags>,
    manifests: &Arc<Manifests>,
    blobs: &Blobs,
    target: &Target,
    reference: &Reference,
) {
    let mut wait = std::time::Duration::from_millis(500);
    for attempt in 1..=5 {
        match run(
            tags,
            manifests,
            blobs,
            target,
            reference,
            &Progress::default(),
        )
        .await
        {
            Ok(report) => {
                tracing::info!(?target, ?report, "pre-warmed a pushed image");
                return;
            }
            Err(e) if attempt < 5 && (e.is_absent() || e.allows_stale()) => {
                tracing::debug!(?target, error = %e, attempt, "pushed image not readable yet; retrying");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            Err(e) => {
                tracing::warn!(?target, error = %e, "could not pre-warm a pushed image");
                return;
            }
        }
    }
}

/// `None` when the blob was cached; else the bytes fetched, verified and
/// committed by the shared fetch this joined.
async fn blob(
    blobs: &Blobs,
    target: &Target,
    digest: Digest,
    progress: &Progress,
) -> Result<Option<u64>> {
    if blobs.size(&digest).is_some() {
        return Ok(None);
    }
    let answer = blobs
        .get(target, &digest, RangeRequest::Whole, false, Origin::Client)
        .await?;
    let mut bytes = 0;
    if let Some(mut body) = answer.body {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                Error::Upstream(UpstreamError::Invalid(format!(
                    "transfer of {digest} failed: {e}"
                )))
            })?;
            bytes += chunk.len() as u64;
            progress
                .bytes
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
        }
    }
    Ok(Some(bytes))
}
