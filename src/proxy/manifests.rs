//! Manifests by digest: immutable, so once stored they are served without
//! asking upstream. A miss is asked of its owner when another replica owns
//! it, else looked up in the shared bucket, else fetched upstream, once
//! (single-flight); either way it is verified against its
//! digest and kept byte for byte with its upstream media type. A manifest
//! fetched upstream is also put in the bucket (in the background, when an
//! upload slot is free), for the other replicas.

use super::error::{Error, Result};
use super::flight::SingleFlight;
use super::Origin;
use crate::bucket::{Bucket, Object};
use crate::cluster::{Asked, Cluster, PeerError};
use crate::metrics::{Kind, Metrics};
use crate::oci::media::{self, MAX_MANIFEST_BYTES};
use crate::oci::{Digest, Tag};
use crate::upstream::{FetchedManifest, Target, UpstreamError};
use bytes::Bytes;
use ferry_storage::{Store, StoredManifest};
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;

/// What a tag resolves to: enough to answer a `HEAD` without the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestMeta {
    /// The manifest's digest (an index digest for a multi-arch image).
    pub digest: Digest,
    /// Its media type as upstream declared it.
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
}

/// The manifest store and its upstream fetches.
pub(crate) struct Manifests {
    store: Store,
    metrics: Arc<Metrics>,
    /// One upstream `GET` per digest at a time (and apart, the flights that
    /// may ask the owner: a peer's request never waits on one of those).
    flights: SingleFlight<(Digest, bool), Result<StoredManifest>>,
    /// The shared bucket, when configured.
    bucket: Option<Arc<Bucket>>,
    /// The other replicas, when configured.
    cluster: Option<Arc<Cluster>>,
}

impl Manifests {
    pub fn new(
        store: Store,
        metrics: Arc<Metrics>,
        bucket: Option<Arc<Bucket>>,
        cluster: Option<Arc<Cluster>>,
    ) -> Manifests {
        Manifests {
            store,
            metrics,
            flights: SingleFlight::default(),
            bucket,
            cluster,
        }
    }

    /// Whether a shared bucket may hold manifests other replicas fetched.
    pub fn shared(&self) -> bool {
        self.bucket.is_some()
    }

    /// The manifest with this digest, from the store or (once) from upstream.
    pub async fn by_digest(
        self: &Arc<Self>,
        target: &Target,
        digest: &Digest,
        origin: Origin,
    ) -> Result<StoredManifest> {
        if let Some(m) = self.stored(digest) {
            self.metrics.hit(Kind::Manifest);
            return Ok(m);
        }
        self.metrics.miss(Kind::Manifest);
        let forward = Cluster::forwards(
            self.cluster.as_ref(),
            origin.forwards_for(target),
            digest.as_str().as_bytes(),
        );
        let (this, target2, digest2) = (self.clone(), target.clone(), digest.clone());
        let (result, joined) = self
            .flights
            .run((digest.clone(), forward), move || async move {
                if let Some(m) = this.stored(&digest2) {
                    return Ok(m);
                }
                if forward {
                    if let Some(m) = this.ask_owner(&target2, &digest2).await? {
                        return Ok(m);
                    }
                }
                if let Some(m) = this.in_bucket(&digest2).await {
                    return Ok(m);
                }
                let fetched = target2
                    .upstream
                    .get_manifest(&target2.repo, digest2.as_str())
                    .await?;
                if !this.matches(&digest2, &fetched.body) {
                    return Err(Error::Integrity(format!(
                        "upstream sent a manifest that does not match {digest2}"
                    )));
                }
                let kept = this.keep(&digest2, fetched.content_type.as_deref(), fetched.body)?;
                this.share(&digest2, &kept);
                Ok(kept)
            })
            .await;
        if joined {
            self.metrics.coalesced.inc();
        }
        result.unwrap_or_else(|| Err(Error::Internal("manifest fetch ended unexpectedly".into())))
    }

    /// Whether `body` is the manifest `digest` names; a mismatch (from
    /// upstream, a peer or the bucket) is counted as an integrity failure.
    pub fn matches(&self, digest: &Digest, body: &[u8]) -> bool {
        let ok = digest.verifies(body);
        if !ok {
            self.metrics.integrity_failures.inc();
        }
        ok
    }

    /// `GET` by tag: learns the digest and stores the body in one request.
    pub async fn by_tag(&self, target: &Target, tag: &Tag) -> Result<ManifestMeta> {
        let fetched = target
            .upstream
            .get_manifest(&target.repo, tag.as_str())
            .await?;
        let digest = self.digest_of(&fetched)?;
        let stored = self.keep(&digest, fetched.content_type.as_deref(), fetched.body)?;
        self.share(&digest, &stored);
        Ok(ManifestMeta {
            digest,
            size: stored.body.len() as u64,
            media_type: stored.media_type,
        })
    }

    /// The digest of a manifest fetched by tag: upstream's `Docker-Content-Digest`
    /// when the bytes match it, else their SHA-256.
    fn digest_of(&self, fetched: &FetchedManifest) -> Result<Digest> {
        match &fetched.digest_header {
            Some(d) if d.verifies(&fetched.body) => Ok(d.clone()),
            Some(d) if d.algorithm() != ferry_storage::Algorithm::Sha256 => Err(Error::Upstream(
                UpstreamError::Invalid(format!("manifest does not match {d}")),
            )),
            Some(d) => {
                self.metrics.integrity_failures.inc();
                Err(Error::Integrity(format!(
                    "manifest bytes do not match upstream's Docker-Content-Digest {d}"
                )))
            }
            None => Ok(Digest::sha256_of(&fetched.body)),
        }
    }

    /// The manifest from its owner when another replica owns it, verified and
    /// kept locally; `None` when this replica owns it or no owner could answer.
    async fn ask_owner(&self, target: &Target, digest: &Digest) -> Result<Option<StoredManifest>> {
        let Some(cluster) = &self.cluster else {
            return Ok(None);
        };
        let asked = cluster
            .ask_owner(digest.as_str().as_bytes(), "manifest", |owner| async move {
                let (media_type, body) = cluster.get_manifest(&owner, target, digest).await?;
                if !self.matches(digest, &body) {
                    let why = "sent a manifest that does not match its digest";
                    return Err(PeerError::Failed(why.into()));
                }
                Ok((media_type, body))
            })
            .await;
        match asked {
            Asked::Answered(_, (media_type, body)) => {
                self.keep(digest, media_type.as_deref(), body).map(Some)
            }
            Asked::NotFound => Err(Error::NotFound(format!(
                "manifest {digest} not found upstream"
            ))),
            Asked::Here => Ok(None),
        }
    }

    /// The manifest from the shared bucket, verified and kept locally; `None`
    /// when the bucket has none (or a bad one, which is deleted).
    async fn in_bucket(&self, digest: &Digest) -> Option<StoredManifest> {
        let bucket = self.bucket.as_ref()?;
        let (media_type, body) = bucket.read_manifest(digest).await?;
        if !self.matches(digest, &body) {
            bucket.remove(Object::Manifest, digest).await;
            return None;
        }
        match self.keep(digest, media_type.as_deref(), body) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(%digest, error = %e, "bucket manifest not usable; asking upstream");
                None
            }
        }
    }

    /// Puts a manifest fetched upstream in the bucket, in the background.
    fn share(&self, digest: &Digest, m: &StoredManifest) {
        let Some(bucket) = self.bucket.clone() else {
            return;
        };
        let Some(slot) = bucket.upload_slot(Object::Manifest, digest) else {
            return;
        };
        upload(bucket, slot, digest.clone(), m.clone());
    }

    /// Uploads a stored manifest whose upload was skipped, in the background;
    /// nothing if it is no longer stored.
    pub(crate) fn upload_deferred(
        &self,
        bucket: Arc<Bucket>,
        slot: OwnedSemaphorePermit,
        digest: &Digest,
    ) {
        if let Some(m) = self.stored(digest) {
            upload(bucket, slot, digest.clone(), m);
        }
    }

    /// A stored manifest; a store that cannot be read is a miss (upstream still answers).
    fn stored(&self, digest: &Digest) -> Option<StoredManifest> {
        match self.store.manifest(digest) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(%digest, error = %e, "manifest lookup failed; asking upstream");
                None
            }
        }
    }

    /// Checks a verified manifest body and stores it. A store that cannot
    /// write is logged, and the manifest is still served (asked again next time).
    pub(crate) fn keep(
        &self,
        digest: &Digest,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<StoredManifest> {
        let invalid = |why: &str| Error::Upstream(UpstreamError::Invalid(why.into()));
        if body.len() > MAX_MANIFEST_BYTES {
            return Err(invalid("manifest larger than 4 MiB"));
        }
        let media_type = media::manifest_media_type(content_type, &body)
            .ok_or_else(|| invalid("manifest has no recognisable media type"))?;
        if media::is_schema1(&media_type) {
            return Err(invalid("schema1 manifests are not supported"));
        }
        if let Err(e) = self.store.put_manifest(digest, &media_type, &body) {
            tracing::warn!(%digest, error = %e, "could not store manifest");
        }
        Ok(StoredManifest { media_type, body })
    }
}

/// Puts a verified manifest in the bucket, in the background, in `slot`.
fn upload(bucket: Arc<Bucket>, slot: OwnedSemaphorePermit, digest: Digest, m: StoredManifest) {
    tokio::spawn(async move {
        let _slot = slot;
        let put = bucket.put(Object::Manifest, &digest, m.body, Some(&m.media_type));
        if !put.await {
            // Tried again once the bucket is usable.
            bucket.defer(Object::Manifest, &digest);
        }
    });
}
