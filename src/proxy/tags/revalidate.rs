//! Revalidation: what one upstream answer about a tag does to its record.
//!
//! Runs once per tag at a time (the caller's single-flight). Upstream's new
//! digest is stored unless a push event confirmed the tag meanwhile; an upstream
//! failure serves the stale record within `stale_if_error`; upstream's "not
//! found" drops the record and remembers the miss.

use super::{meta_of, resolved, unknown, Resolved, Source, Tags};
use crate::cluster::{Asked, PeerTag};
use crate::config::Freshness;
use crate::oci::{media, Tag};
use crate::proxy::error::{Error, Result};
use crate::proxy::freshness;
use crate::proxy::manifests::ManifestMeta;
use crate::proxy::Origin;
use crate::upstream::{Target, UpstreamError};
use ferry_storage::{TagKey, TagRecord};

impl Tags {
    /// Asks upstream (or, when `forward`, the tag's owner first) about a tag
    /// whose record is missing or stale. Runs once per tag at a time
    /// (single-flight); its answer is shared by every waiter.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn revalidate(
        &self,
        target: &Target,
        tag: &Tag,
        key: &TagKey,
        policy: Freshness,
        record: Option<TagRecord>,
        want_body: bool,
        forward: bool,
    ) -> Result<Resolved> {
        if forward {
            if let Some(answer) = self.ask_owner(target, tag, key, &policy, want_body).await {
                return answer;
            }
        }
        let asked_at = self.clock.now_ms();
        // A tag never seen, whose body the client wants: one upstream `GET`
        // instead of `HEAD` + `GET`, unless a shared bucket may hold the body
        // (another replica fetched it): then `HEAD`, which Docker Hub does not
        // count as a pull, and the body by digest from the bucket.
        let fresh = if record.is_none() && want_body && !self.manifests.shared() {
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
                self.forget_missing(target, tag, key, &policy);
                Err(match e {
                    Error::NotFound(_) => unknown(target, tag),
                    e => e,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// The owner's answer, when another replica owns the tag: recorded as
    /// confirmed when the owner's was (its age, not its clock). `None`: this
    /// replica owns it, or no owner could answer: ask upstream here.
    async fn ask_owner(
        &self,
        target: &Target,
        tag: &Tag,
        key: &TagKey,
        policy: &Freshness,
        want_body: bool,
    ) -> Option<Result<Resolved>> {
        let cluster = self.cluster.as_ref()?;
        let asked = cluster
            .ask_owner(key.as_bytes(), "tag", |owner| async move {
                cluster.resolve_tag(&owner, target, tag, want_body).await
            })
            .await;
        match asked {
            Asked::Answered(owner, answer) => {
                Some(self.apply_owners(target, tag, key, answer, &owner))
            }
            Asked::NotFound => {
                self.forget_missing(target, tag, key, policy);
                Some(Err(unknown(target, tag)))
            }
            Asked::Here => None,
        }
    }

    /// Upstream's (or the owner's) word that the tag is gone is final: the
    /// record is forgotten, and the absence remembered briefly so a
    /// crash-looping pod cannot hammer upstream.
    fn forget_missing(&self, target: &Target, tag: &Tag, key: &TagKey, policy: &Freshness) {
        let now = self.clock.now_ms();
        let _w = self.write_lock(key);
        if let Err(e) = self.store.delete_tag(key) {
            tracing::warn!(?target, %tag, error = %e, "could not drop tag record");
        }
        self.negative
            .insert(key.clone(), freshness::negative_until(policy, now), now);
    }

    /// Records what the owner answered (unless a newer confirmation is here).
    fn apply_owners(
        &self,
        target: &Target,
        tag: &Tag,
        key: &TagKey,
        answer: PeerTag,
        owner: &str,
    ) -> Result<Resolved> {
        if let Some(body) = answer.body {
            if !self.manifests.matches(&answer.digest, &body) {
                if let Some(c) = &self.cluster {
                    c.failed(owner, "sent a manifest that does not match its digest");
                }
                return Err(Error::Integrity(format!(
                    "peer {owner} sent a manifest that does not match {}",
                    answer.digest
                )));
            }
            self.manifests
                .keep(&answer.digest, Some(&answer.media_type), body)?;
        }
        let now = self.clock.now_ms();
        let new = TagRecord {
            digest: answer.digest,
            media_type: answer.media_type,
            size: answer.size,
            checked_at_ms: now.saturating_sub(answer.age_ms),
            expired: false,
        };
        let _w = self.write_lock(key);
        if let Ok(Some(current)) = self.store.tag(key) {
            if current.checked_at_ms > new.checked_at_ms && !current.expired {
                return Ok(resolved(&current, Source::Peer));
            }
        }
        if let Err(e) = self.store.put_tag(key, &new) {
            tracing::warn!(?target, %tag, error = %e, "could not store tag record");
        }
        self.negative.remove(key);
        Ok(resolved(&new, Source::Peer))
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
                let m = self
                    .manifests
                    .by_digest(target, &digest, Origin::Client)
                    .await?;
                Ok(ManifestMeta {
                    digest,
                    media_type: m.media_type,
                    size: m.body.len() as u64,
                })
            }
        }
    }
}
