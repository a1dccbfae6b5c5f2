//! Push events applied to the tag cache, exactly as a revalidation would
//! update it (same record, under the same per-tag write lock), so every reader
//! of a tag (pulls, the resolve API, admission) sees one truth:
//!
//! - a push with a digest sets the tag as freshly confirmed at the event's time,
//!   with no upstream request; a manifest named by an event is still fetched
//!   by digest and verified before it is served;
//! - a delete drops the tag; a digest-less push (Docker Hub, Quay) expires it
//!   so the next request revalidates;
//! - an event older than the record's last confirmation changes nothing (events
//!   arrive late and out of order), and an event id already applied is skipped;
//! - push and delete events forget the repository's tag lists;
//! - pushes to repositories matching `prewarm` are fetched at once.

use super::blobs::Blobs;
use super::manifests::Manifests;
use super::tag_lists::TagLists;
use super::tags::{Applied, TagChange, Tags};
use crate::bounded::ExpiringMap;
use crate::config::defaults;
use crate::events::{Change, Event, Parsed};
use crate::oci::{Digest, Reference, RepoName};
use crate::upstream::{Target, Upstream};
use parking_lot::Mutex;
use std::sync::Arc;

/// What became of one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The tag record was set, dropped or expired.
    Applied,
    /// Already applied (same event id).
    Duplicate,
    /// Older than what the cache already knows about the tag.
    Outdated,
    /// For a registry host that is not this upstream's.
    Foreign,
    /// The repository name is not valid for the pull API.
    Invalid,
    /// The store could not record it: not remembered as seen, and the post is
    /// answered `503` so the sender retries it.
    Failed,
}

impl Outcome {
    /// Every outcome, in the order reports and metrics list them.
    pub const ALL: [Outcome; 6] = [
        Outcome::Applied,
        Outcome::Duplicate,
        Outcome::Outdated,
        Outcome::Foreign,
        Outcome::Invalid,
        Outcome::Failed,
    ];

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Outdated => "outdated",
            Outcome::Foreign => "foreign",
            Outcome::Invalid => "invalid",
            Outcome::Failed => "failed",
        }
    }
}

/// Ids of events already applied (senders retry until answered), each
/// remembered for [`defaults::EVENT_ID_MEMORY`], at most
/// [`defaults::EVENT_IDS`] of them, oldest dropped first.
pub(crate) struct SeenIds {
    ids: Mutex<ExpiringMap<String, ()>>,
}

impl Default for SeenIds {
    fn default() -> SeenIds {
        SeenIds {
            ids: Mutex::new(ExpiringMap::new(defaults::EVENT_IDS)),
        }
    }
}

impl SeenIds {
    /// Whether `id` was applied already.
    fn seen(&self, id: &str, now_ms: u64) -> bool {
        self.ids.lock().contains(id, now_ms)
    }

    /// Records `id` as applied.
    fn record(&self, id: &str, now_ms: u64) {
        let until = now_ms.saturating_add(defaults::EVENT_ID_MEMORY.as_millis() as u64);
        self.ids.lock().insert(id.to_string(), (), until, now_ms);
    }
}

/// What became of a post's events, by outcome.
#[derive(Debug, Default, serde::Serialize, PartialEq, Eq)]
pub struct EventReport {
    /// The sender's format.
    pub format: &'static str,
    /// Events that set, dropped or expired a tag.
    pub applied: usize,
    /// Entries of no interest (pulls, blob pushes, unknown kinds).
    pub ignored: usize,
    /// Events already applied.
    pub duplicate: usize,
    /// Events older than what the cache knows.
    pub outdated: usize,
    /// Events for another registry host.
    pub foreign: usize,
    /// Events naming an invalid repository.
    pub invalid: usize,
    /// Events the store could not record (the sender should retry the post).
    pub failed: usize,
}

impl EventReport {
    fn count(&mut self, o: Outcome) {
        *self.slot(o) += 1;
    }

    fn slot(&mut self, o: Outcome) -> &mut usize {
        match o {
            Outcome::Applied => &mut self.applied,
            Outcome::Duplicate => &mut self.duplicate,
            Outcome::Outdated => &mut self.outdated,
            Outcome::Foreign => &mut self.foreign,
            Outcome::Invalid => &mut self.invalid,
            Outcome::Failed => &mut self.failed,
        }
    }

    /// Events with outcome `o`.
    pub fn of(&self, o: Outcome) -> usize {
        match o {
            Outcome::Applied => self.applied,
            Outcome::Duplicate => self.duplicate,
            Outcome::Outdated => self.outdated,
            Outcome::Foreign => self.foreign,
            Outcome::Invalid => self.invalid,
            Outcome::Failed => self.failed,
        }
    }
}

/// Work an applied event leaves for the background.
#[derive(Default)]
struct FollowUp {
    /// Pushed images to fetch at once (`prewarm` repositories).
    prewarm: Vec<(Target, Digest)>,
    /// Pushed tags whose manifest must be read to learn its media type.
    manifests: Vec<(Target, crate::oci::Tag, Digest)>,
    /// Repositories whose tag lists are out of date.
    changed: Vec<Target>,
}

/// Applies one event to the tag cache, noting in `follow` what is left to do.
/// Its id is remembered only once the store has recorded it, so a sender's
/// retry of an event that failed is applied, not skipped as a duplicate.
fn apply(
    tags: &Tags,
    seen: &SeenIds,
    upstream: &Arc<Upstream>,
    event: &Event,
    now_ms: u64,
    follow: &mut FollowUp,
) -> Outcome {
    if event.id.as_deref().is_some_and(|id| seen.seen(id, now_ms)) {
        return Outcome::Duplicate;
    }
    let outcome = apply_new(tags, upstream, event, now_ms, follow);
    if outcome != Outcome::Failed {
        if let Some(id) = event.id.as_deref() {
            seen.record(id, now_ms);
        }
    }
    outcome
}

fn apply_new(
    tags: &Tags,
    upstream: &Arc<Upstream>,
    event: &Event,
    now_ms: u64,
    follow: &mut FollowUp,
) -> Outcome {
    if event
        .host
        .as_deref()
        .is_some_and(|h| !upstream.config().answers_to(h))
    {
        return Outcome::Foreign;
    }
    let Some(name) = RepoName::parse(&event.repository.to_ascii_lowercase()) else {
        return Outcome::Invalid;
    };
    let target = Target {
        upstream: upstream.clone(),
        repo: upstream.config().repository(name),
    };
    // A time in the future (clock skew) counts as now.
    let at = event.at_ms.map_or(now_ms, |t| t.min(now_ms));
    let (tag, change) = match &event.change {
        Change::Pushed {
            tag,
            digest,
            media_type,
            size,
        } => (
            tag,
            TagChange::Pushed {
                digest: digest.clone(),
                media_type: media_type.clone(),
                size: *size,
            },
        ),
        Change::Moved { tag } => (tag, TagChange::Moved),
        Change::Deleted { tag } => (tag, TagChange::Deleted),
    };
    match tags.apply(&target, tag, change, at) {
        Ok(applied @ (Applied::Done | Applied::NeedsManifest | Applied::Nothing)) => {
            if let Change::Pushed { digest, .. } = &event.change {
                let wanted =
                    upstream.config().events.as_ref().is_some_and(|e| {
                        e.prewarm.iter().any(|re| re.is_match(target.repo.as_str()))
                    });
                if wanted {
                    follow.prewarm.push((target.clone(), digest.clone()));
                }
                if applied == Applied::NeedsManifest {
                    follow
                        .manifests
                        .push((target.clone(), tag.clone(), digest.clone()));
                }
            }
            tracing::info!(?target, %tag, change = ?event.change, "push event applied");
            follow.changed.push(target);
            Outcome::Applied
        }
        Ok(Applied::Outdated) => Outcome::Outdated,
        Err(e) => {
            tracing::error!(?target, %tag, error = %e, "push event not applied: the store failed; the sender is asked to retry");
            Outcome::Failed
        }
    }
}

/// What applying a post needs of the cache.
pub(crate) struct Cache<'a> {
    pub tags: &'a Arc<Tags>,
    pub manifests: &'a Arc<Manifests>,
    pub blobs: &'a Arc<Blobs>,
    pub tag_lists: &'a TagLists,
    pub seen: &'a SeenIds,
}

/// Applies every event of a post: tags set, dropped or expired as a
/// revalidation would, tag lists forgotten, and in the background, manifests
/// of pushed tags read and pushed images in `prewarm` repositories fetched.
pub(crate) fn apply_post(
    cache: Cache<'_>,
    upstream: &Arc<Upstream>,
    parsed: &Parsed,
    now_ms: u64,
) -> EventReport {
    let mut report = EventReport {
        format: parsed.format,
        ignored: parsed.ignored,
        ..EventReport::default()
    };
    let mut follow = FollowUp::default();
    for event in &parsed.events {
        report.count(apply(
            cache.tags,
            cache.seen,
            upstream,
            event,
            now_ms,
            &mut follow,
        ));
    }
    for t in &follow.changed {
        cache.tag_lists.forget(t.upstream.name(), t.repo.as_str());
    }
    for (target, tag, digest) in follow.manifests {
        let tags = cache.tags.clone();
        tokio::spawn(async move { tags.complete_pushed(&target, &tag, &digest).await });
    }
    for (target, digest) in follow.prewarm {
        let (tags, manifests, blobs) = (
            cache.tags.clone(),
            cache.manifests.clone(),
            cache.blobs.clone(),
        );
        tokio::spawn(async move {
            super::prefetch::with_retries(
                &tags,
                &manifests,
                &blobs,
                &target,
                &Reference::Digest(digest),
            )
            .await
        });
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_remembered_for_a_while_and_bounded() {
        let s = SeenIds::default();
        s.record("a", 0);
        assert!(s.seen("a", 1));
        let day = defaults::EVENT_ID_MEMORY.as_millis() as u64;
        assert!(!s.seen("a", day), "forgotten after a day");
        s.record("a", 10);
        for i in 0..defaults::EVENT_IDS {
            s.record(&i.to_string(), 20);
        }
        assert!(!s.seen("a", 30), "the oldest was forgotten");
        assert_eq!(s.ids.lock().len(), defaults::EVENT_IDS);
    }
}
