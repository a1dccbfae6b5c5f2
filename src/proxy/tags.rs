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

use super::error::{Error, Result};
use super::flight::SingleFlight;
use super::freshness;
use super::manifests::{ManifestMeta, Manifests};
use super::negative::NegativeCache;
use crate::clock::Clock;
use crate::metrics::{Kind, Metrics};
use crate::oci::{media, Tag};
use crate::upstream::{Target, UpstreamError};
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
    /// One revalidation per tag at a time.
    flights: SingleFlight<TagKey, Result<Resolved>>,
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
    ) -> Tags {
        Tags {
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
    ) -> Result<Resolved> {
        let key = TagKey::new(target.upstream.name(), target.repo.as_str(), tag.as_str());
        let policy = target
            .upstream
            .config()
            .policy
            .for_tag(target.repo.as_str(), tag.as_str());
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
                if let Some(r) = self.with_meta(target, &key, r).await {
                    self.metrics.hit(Kind::Tag);
                    return Ok(resolved(&r, Source::Cache));
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
        let (result, joined) = self
            .flights
            .run(key, move || async move {
                this.revalidate(&target2, &tag2, &key2, record, want_body)
                    .await
            })
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
        let m = self.manifests.by_digest(target, &r.digest).await.ok()?;
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

    /// Asks upstream about a tag whose record is missing or stale. Runs once per
    /// tag at a time (single-flight); its answer is shared by every waiter.
    async fn revalidate(
        &self,
        target: &Target,
        tag: &Tag,
        key: &TagKey,
        record: Option<TagRecord>,
        want_body: bool,
    ) -> Result<Resolved> {
        let repo = &target.repo;
        let policy = target
            .upstream
            .config()
            .policy
            .for_tag(repo.as_str(), tag.as_str());
        let asked_at = self.clock.now_ms();
        let fresh = if record.is_none() && want_body {
            self.manifests.by_tag(target, tag).await
        } else {
            self.head(target, tag, record.as_ref()).await
        };
        let now = self.clock.now_ms();
        match fresh {
            Ok(meta) => {
                let new = TagRecord {
                    digest: meta.digest.clone(),
                    media_type: meta.media_type.clone(),
                    size: meta.size,
                    checked_at_ms: now,
                    expired: false,
                };
                let _w = self.write_lock(key);
                if let Ok(Some(current)) = self.store.tag(key) {
                    // A push event confirmed the tag after this request was
                    // sent: it is newer than this answer and stays.
                    if current.checked_at_ms > asked_at && !current.expired {
                        return Ok(resolved(&current, Source::Upstream));
                    }
                    // A push event named a manifest upstream does not serve
                    // yet (replication lag): answer with what upstream says
                    // now, keep the event's digest for when it does.
                    if current.media_type.is_empty()
                        && current.digest != meta.digest
                        && !current.expired
                    {
                        return Ok(resolved(&new, Source::Upstream));
                    }
                }
                if let Err(e) = self.store.put_tag(key, &new) {
                    tracing::warn!(?target, %tag, error = %e, "could not store tag record");
                }
                self.negative.remove(key);
                Ok(resolved(&new, Source::Upstream))
            }
            Err(e) if e.allows_stale() => match record.and_then(|r| self.complete_from_store(r)) {
                Some(r) if freshness::servable_on_error(r.checked_at_ms, &policy, now) => {
                    self.metrics.stale_answers.inc();
                    tracing::info!(?target, %tag, error = %e, "serving stale tag");
                    Ok(resolved(&r, Source::StaleIfError))
                }
                _ => Err(e),
            },
            Err(e) if e.is_absent() => {
                // Upstream's word is final: forget the tag, and remember briefly
                // that it is missing so a crash-looping pod cannot hammer upstream.
                let _w = self.write_lock(key);
                if let Err(err) = self.store.delete_tag(key) {
                    tracing::warn!(?target, %tag, error = %err, "could not drop tag record");
                }
                self.negative
                    .insert(key.clone(), freshness::negative_until(&policy, now), now);
                Err(match e {
                    Error::NotFound(_) => unknown(target, tag),
                    e => e,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// One upstream `HEAD`. Falls back to `GET` only when upstream's `HEAD`
    /// lacks the digest, and fetches the body only when type or size is missing.
    async fn head(
        &self,
        target: &Target,
        tag: &Tag,
        old: Option<&TagRecord>,
    ) -> Result<ManifestMeta> {
        let head = target
            .upstream
            .head_manifest(&target.repo, tag.as_str())
            .await?;
        let Some(digest) = head.digest else {
            tracing::debug!(?target, %tag, "HEAD without Docker-Content-Digest; using GET");
            return self.manifests.by_tag(target, tag).await;
        };
        if let Some(old) = old.filter(|o| o.digest == digest && !o.media_type.is_empty()) {
            return Ok(meta_of(old));
        }
        let media_type = head
            .media_type
            .as_deref()
            .and_then(|ct| media::manifest_media_type(Some(ct), b""));
        match (media_type, head.size) {
            (Some(mt), _) if media::is_schema1(&mt) => Err(Error::Upstream(
                UpstreamError::Invalid("schema1 manifests are not supported".into()),
            )),
            (Some(media_type), Some(size)) => Ok(ManifestMeta {
                digest,
                media_type,
                size,
            }),
            _ => {
                let m = self.manifests.by_digest(target, &digest).await?;
                Ok(ManifestMeta {
                    digest,
                    media_type: m.media_type,
                    size: m.body.len() as u64,
                })
            }
        }
    }
}

/// What applying a push event did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Applied {
    /// The record changed.
    Done,
    /// The record now names a manifest whose media type is not known yet.
    NeedsManifest,
    /// There was nothing to expire or drop.
    Nothing,
    /// The record was confirmed after the event happened: unchanged.
    Outdated,
}

/// What a push event says about a tag (see `proxy::tag_events`).
pub(crate) enum TagChange {
    /// Points at this digest now (media type and size when the sender says).
    Pushed {
        /// The manifest.
        digest: crate::oci::Digest,
        /// Its media type, if known.
        media_type: Option<String>,
        /// Its size, if known.
        size: Option<u64>,
    },
    /// Moved somewhere unknown: revalidate on next use.
    Moved,
    /// Gone.
    Deleted,
}

impl Tags {
    /// A push event set `tag` to `digest` without its media type: reads the
    /// manifest by digest (verified), retrying with back-off while upstream
    /// does not serve it yet, and completes the record, so `HEAD`s are then
    /// answered from the cache.
    pub async fn complete_pushed(
        self: &Arc<Self>,
        target: &Target,
        tag: &Tag,
        digest: &crate::oci::Digest,
    ) {
        let key = TagKey::new(target.upstream.name(), target.repo.as_str(), tag.as_str());
        let mut wait = std::time::Duration::from_millis(250);
        for attempt in 1..=6 {
            let pending = match self.store.tag(&key) {
                Ok(Some(r)) if r.digest == *digest && r.media_type.is_empty() => r,
                _ => return, // moved on, or already complete
            };
            match self.with_meta(target, &key, &pending).await {
                Some(_) => return,
                None if attempt < 6 => {
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                None => {
                    tracing::warn!(?target, %tag, %digest, "pushed manifest still not readable upstream")
                }
            }
        }
    }

    /// Applies an upstream push event that happened at `at_ms`, as a
    /// revalidation at that instant would have. Whether it changed anything:
    /// `false` when the record was confirmed after the event (it arrived late).
    pub fn apply(
        &self,
        target: &Target,
        tag: &Tag,
        change: TagChange,
        at_ms: u64,
    ) -> Result<Applied> {
        let key = TagKey::new(target.upstream.name(), target.repo.as_str(), tag.as_str());
        let _w = self.write_lock(&key);
        let current = self.store.tag(&key)?;
        if current.as_ref().is_some_and(|r| r.checked_at_ms > at_ms) {
            return Ok(Applied::Outdated);
        }
        match change {
            TagChange::Pushed {
                digest,
                media_type,
                size,
            } => {
                // The sender may not say the media type: keep what is known.
                let known = current
                    .as_ref()
                    .filter(|r| r.digest == digest && !r.media_type.is_empty());
                let (media_type, size) = match (media_type, size, known) {
                    (Some(mt), Some(size), _) => (mt, size),
                    (_, _, Some(r)) => (r.media_type.clone(), r.size),
                    _ => match self.store.manifest(&digest).ok().flatten() {
                        Some(m) => (m.media_type, m.body.len() as u64),
                        None => (String::new(), 0),
                    },
                };
                let pending = media_type.is_empty();
                self.store.put_tag(
                    &key,
                    &TagRecord {
                        digest,
                        media_type,
                        size,
                        checked_at_ms: at_ms,
                        expired: false,
                    },
                )?;
                self.negative.remove(&key);
                if pending {
                    return Ok(Applied::NeedsManifest);
                }
            }
            TagChange::Moved => match current {
                Some(r) if !r.expired => self
                    .store
                    .put_tag(&key, &TagRecord { expired: true, ..r })?,
                _ => return Ok(Applied::Nothing),
            },
            TagChange::Deleted => match current {
                Some(_) => self.store.delete_tag(&key)?,
                None => return Ok(Applied::Nothing),
            },
        }
        Ok(Applied::Done)
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
