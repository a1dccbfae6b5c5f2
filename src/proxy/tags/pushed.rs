//! Push events applied to tag records, as a revalidation at the event's instant
//! would have; parsing and dispatch live in [`tag_events`](crate::proxy::tag_events).

use super::Tags;
use crate::oci::Tag;
use crate::proxy::error::Result;
use crate::upstream::Target;
use ferry_storage::{TagKey, TagRecord};
use std::sync::Arc;

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
