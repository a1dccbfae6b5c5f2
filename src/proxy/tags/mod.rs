//! Tags: resolution of `repo:tag` to a digest under the freshness policy.
//!
//! - Inside its TTL (or immutable) a tag is answered from its record, with no
//!   upstream request.
//! - Past it, one upstream `HEAD` revalidates it, shared by every request that
//!   arrives meanwhile (single-flight per tag). A `GET` is sent only when
//!   nothing is known about the tag and the client wants the body, or when
//!   upstream's `HEAD` lacks what a `HEAD` answer needs.
//! - While upstream fails, the stale record is served within `stale_if_error`.
//! - Upstream's "not found" drops the record and is remembered in the
//!   [negative cache](super::negative).
//!
//! In a cluster, a tag has an owner (rendezvous hashing of its key): the
//! other replicas ask it instead of upstream, once per TTL, and keep its
//! answer's age, so every replica's window ends with the owner's.
//!
//! [`revalidate`] holds the upstream side (one `HEAD`, the answer applied to the
//! record, or the owner's answer); [`pushed`] applies what push events say.

mod pushed;
mod revalidate;

pub(crate) use pushed::{Applied, TagChange};

use super::error::{Error, Result};
use super::flight::SingleFlight;
use super::freshness;
use super::manifests::{ManifestMeta, Manifests};
use super::negative::NegativeCache;
use super::Origin;
use crate::clock::Clock;
use crate::cluster::Cluster;
use crate::metrics::{Kind, Metrics};
use crate::oci::Tag;
use crate::upstream::Target;
use ferry_storage::{Store, TagKey, TagRecord};
use parking_lot::Mutex;
use std::sync::Arc;

/// Where a tag's answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The record was fresh: no upstream request.
    Cache,
    /// Upstream was asked (now, or by the request this one joined).
    Upstream,
    /// Upstream failed and the stale record stood in (stale-if-error).
    StaleIfError,
    /// The tag's owner, another replica, answered (from its cache or one
    /// revalidation it shared).
    Peer,
}

/// A resolved tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// What the tag points at.
    pub meta: ManifestMeta,
    /// How the answer was obtained.
    pub source: Source,
    /// When upstream last confirmed it (unix ms).
    pub confirmed_ms: u64,
}

/// Tag records, their revalidation and the negative cache.
pub(crate) struct Tags {
    store: Store,
    clock: Clock,
    metrics: Arc<Metrics>,
    manifests: Arc<Manifests>,
    negative: NegativeCache,
    /// One revalidation per tag at a time (and apart, those that may ask the
    /// owner: a peer's request never waits on one of those).
    flights: SingleFlight<(TagKey, bool), Result<Resolved>>,
    /// The other replicas, when configured.
    cluster: Option<Arc<Cluster>>,
    /// Record writes of one tag (a revalidation landing, a push event) are
    /// serialised by this stripe, so neither undoes a newer confirmation.
    writes: [Mutex<()>; WRITE_STRIPES],
}

/// Locks serialising tag-record writes, by hash of the key.
const WRITE_STRIPES: usize = 64;

impl Tags {
    pub fn new(
        store: Store,
        clock: Clock,
        metrics: Arc<Metrics>,
        manifests: Arc<Manifests>,
        negative_capacity: usize,
        cluster: Option<Arc<Cluster>>,
    ) -> Tags {
        Tags {
            cluster,
            store,
            clock,
            metrics,
            manifests,
            negative: NegativeCache::new(negative_capacity),
            flights: SingleFlight::default(),
            writes: std::array::from_fn(|_| Mutex::new(())),
        }
    }

    fn write_lock(&self, key: &TagKey) -> parking_lot::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        self.writes[h.finish() as usize % WRITE_STRIPES].lock()
    }

    /// Resolves `repo:tag`. `want_body`: the client will `GET` the manifest, so
    /// a tag never seen before is fetched with one `GET` instead of `HEAD` + `GET`.
    pub async fn resolve(
        self: &Arc<Self>,
        target: &Target,
        tag: &Tag,
        want_body: bool,
        origin: Origin,
    ) -> Result<Resolved> {
        let key = TagKey::new(target.upstream.name(), target.repo.as_str(), tag.as_str());
        let policy = target.freshness(Some(tag));
        let now = self.clock.now_ms();
        // A record that cannot be read is asked upstream; if upstream fails
        // too, the store's fault is what the client hears about.
        let (record, fault) = match self.store.tag(&key) {
            Ok(r) => (r, None),
            Err(e) => {
                tracing::warn!(?target, %tag, error = %e, "tag record unreadable; asking upstream");
                (None, Some(Error::from(e)))
            }
        };
        if let Some(r) = record.as_ref().filter(|r| !r.expired) {
            if freshness::is_fresh(r.checked_at_ms, &policy, now) {
                // The warm path answers from the record itself, uncopied.
                let answer = match r.media_type.is_empty() {
                    false => Some(resolved(r, Source::Cache)),
                    true => (self.with_meta(target, &key, r).await)
                        .map(|full| resolved(&full, Source::Cache)),
                };
                if let Some(answer) = answer {
                    self.metrics.hit(Kind::Tag);
                    return Ok(answer);
                }
            }
        }
        if self.negative.contains(&key, now) {
            self.metrics.negative_hits.inc();
            return Err(unknown(target, tag));
        }
        self.metrics.miss(Kind::Tag);
        let this = self.clone();
        let (target2, tag2, key2) = (target.clone(), tag.clone(), key.clone());
        let forward = Cluster::forwards(
            self.cluster.as_ref(),
            origin.forwards_for(target),
            key.as_bytes(),
        );
        // Boxed: a revalidation's state (an upstream request) stays off the
        // warm path's future.
        let (result, joined) = Box::pin(self.flights.run((key, forward), move || async move {
            this.revalidate(&target2, &tag2, &key2, policy, record, want_body, forward)
                .await
        }))
        .await;
        if joined {
            self.metrics.coalesced.inc();
        }
        let result = result.unwrap_or_else(|| {
            Err(Error::Internal(
                "tag revalidation ended unexpectedly".into(),
            ))
        });
        match (result, fault) {
            (Err(e), Some(fault)) if e.allows_stale() => Err(fault),
            (r, _) => r,
        }
    }

    /// A fresh record ready to answer a `HEAD`: a push event may have set the
    /// digest without its media type and size, which the manifest (read by
    /// digest, verified) then supplies. `None` when it cannot be read yet
    /// (upstream may not serve it yet): the tag is revalidated instead.
    async fn with_meta(&self, target: &Target, key: &TagKey, r: &TagRecord) -> Option<TagRecord> {
        if !r.media_type.is_empty() {
            return Some(r.clone());
        }
        let m = Box::pin(self.manifests.by_digest(target, &r.digest, Origin::Client))
            .await
            .ok()?;
        let full = TagRecord {
            media_type: m.media_type,
            size: m.body.len() as u64,
            ..r.clone()
        };
        let _w = self.write_lock(key);
        if self.store.tag(key).ok().flatten().as_ref() == Some(r) {
            if let Err(e) = self.store.put_tag(key, &full) {
                tracing::warn!(?target, error = %e, "could not store tag record");
            }
        }
        Some(full)
    }

    /// A record whose media type is known, from the stored manifest if need be.
    fn complete_from_store(&self, r: TagRecord) -> Option<TagRecord> {
        if !r.media_type.is_empty() {
            return Some(r);
        }
        let m = self.store.manifest(&r.digest).ok().flatten()?;
        Some(TagRecord {
            media_type: m.media_type,
            size: m.body.len() as u64,
            ..r
        })
    }
}

fn meta_of(r: &TagRecord) -> ManifestMeta {
    ManifestMeta {
        digest: r.digest.clone(),
        media_type: r.media_type.clone(),
        size: r.size,
    }
}

fn resolved(r: &TagRecord, source: Source) -> Resolved {
    Resolved {
        meta: meta_of(r),
        source,
        confirmed_ms: r.checked_at_ms,
    }
}

fn unknown(target: &Target, tag: &Tag) -> Error {
    Error::NotFound(format!("{}:{tag} not found upstream", target.repo))
}
