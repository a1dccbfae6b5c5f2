//! Which digests were seen in which repository upstream, for upstreams with
//! checked access: a blob or manifest is served under a repository only if
//! upstream served it (or a manifest referencing it) there, or confirms it
//! there when asked. Without this, a client allowed one repository could read
//! any other's cached content by digest.
//!
//! Kept in the index's answer space [`Space::Links`] (empty values under
//! `upstream \0 repository \0 digest`), so they survive restarts; a link not
//! written again for as long as answers are kept is pruned with them, and
//! confirmed again by one upstream `HEAD` when next asked.

use crate::clock::Clock;
use crate::oci::media::references;
use crate::oci::Digest;
use crate::proxy::answers::{repo_prefix, Space};
use ferry_storage::{Store, StoreError};

/// The repository → digest links.
#[derive(Clone)]
pub(crate) struct Links {
    store: Store,
    clock: Clock,
}

impl Links {
    /// Links kept in `store`.
    pub fn new(store: Store, clock: Clock) -> Links {
        Links { store, clock }
    }

    fn key(upstream: &str, repo: &str, digest: &Digest) -> Vec<u8> {
        let mut k = repo_prefix(Space::Links, upstream, repo);
        k.extend_from_slice(digest.to_string().as_bytes());
        k
    }

    /// Whether `digest` was seen in `repo` of `upstream`.
    pub fn has(&self, upstream: &str, repo: &str, digest: &Digest) -> Result<bool, StoreError> {
        Ok(self
            .store
            .answer(&Self::key(upstream, repo, digest))?
            .is_some())
    }

    /// Records that `digest` is in `repo`.
    pub fn record(&self, upstream: &str, repo: &str, digest: &Digest) -> Result<(), StoreError> {
        self.store
            .put_answer(&Self::key(upstream, repo, digest), self.clock.now_ms(), &[])
    }

    /// Records a manifest served in `repo` and everything it references (an
    /// index's manifests, an image's config and layers): upstream only accepts
    /// a manifest whose references are in the same repository.
    pub fn record_manifest(
        &self,
        upstream: &str,
        repo: &str,
        digest: &Digest,
        body: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        self.record(upstream, repo, digest)?;
        if let Some(body) = body {
            let refs = references(body);
            for d in refs.manifests.iter().chain(&refs.blobs) {
                self.record(upstream, repo, d)?;
            }
        }
        Ok(())
    }
}
