//! Prefetch: warm the cache with an image before nodes ask for it (a rollout
//! about to start, a site about to go offline). It walks the image the way a
//! client would, through the same paths: the tag under its freshness policy,
//! manifests once each, blobs through the shared single-flight fetch, so a
//! prefetch racing real pulls still costs one upstream transfer per blob.

use super::{Proxy, RangeRequest};
use crate::oci::media;
use crate::oci::{Digest, OciError, Reference, RepoName};
use crate::upstream::Upstream;
use futures_util::{stream, StreamExt};
use std::collections::{BTreeSet, VecDeque};
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
    pub manifests: usize,
    pub blobs: usize,
    /// Blobs that were in the store already.
    pub blobs_cached: usize,
    /// Blobs fetched from upstream (or joined in flight) by this prefetch.
    pub blobs_fetched: usize,
    pub bytes_fetched: u64,
}

impl Proxy {
    /// Caches `repo:reference` (a tag or a digest) with every manifest an index
    /// lists and every blob those manifests use.
    pub async fn prefetch(
        self: &Arc<Self>,
        up: &Arc<Upstream>,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<PrefetchReport, OciError> {
        let root = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(t) => self.resolve_tag(up, repo, t, true).await?.digest,
        };
        let mut report = PrefetchReport {
            digest: root.to_string(),
            ..PrefetchReport::default()
        };
        let mut seen = BTreeSet::from([root.clone()]);
        let mut queue = VecDeque::from([root]);
        let mut blobs = BTreeSet::new();
        while let Some(digest) = queue.pop_front() {
            let manifest = self.ensure_manifest(up, repo, &digest).await?;
            report.manifests += 1;
            let refs = media::references(&manifest.body);
            for child in refs.manifests {
                if seen.len() < MAX_MANIFESTS && seen.insert(child.clone()) {
                    queue.push_back(child);
                }
            }
            blobs.extend(refs.blobs);
        }
        report.blobs = blobs.len();
        let results: Vec<Result<Option<u64>, OciError>> = stream::iter(blobs)
            .map(|d| self.prefetch_blob(up, repo, d))
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

    /// `None` when the blob was cached; else the bytes fetched, verified and
    /// committed by the shared fetch this joined.
    async fn prefetch_blob(
        self: &Arc<Self>,
        up: &Arc<Upstream>,
        repo: &RepoName,
        digest: Digest,
    ) -> Result<Option<u64>, OciError> {
        if matches!(self.store.blob_size(&digest), Ok(Some(_))) {
            return Ok(None);
        }
        let answer = self
            .blob(up, repo, &digest, RangeRequest::Whole, false)
            .await?;
        let mut bytes = 0;
        if let Some(mut body) = answer.body {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| {
                    OciError::new(
                        crate::oci::ErrorCode::Unavailable,
                        format!("fetching {digest}: {e}"),
                    )
                    .with_status(http::StatusCode::BAD_GATEWAY)
                })?;
                bytes += chunk.len() as u64;
            }
        }
        Ok(Some(bytes))
    }
}
