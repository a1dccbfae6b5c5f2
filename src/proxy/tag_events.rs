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

use super::tags::{Applied, TagChange, Tags};
use super::Proxy;
use crate::events::{Change, Event, Parsed};
use crate::oci::{Digest, Reference, RepoName};
use crate::upstream::{RouteError, Target, Upstream};
use parking_lot::Mutex;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

/// Event ids remembered to skip duplicates (senders retry until answered).
const SEEN_IDS: usize = 10_000;

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
}

impl Outcome {
    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Outdated => "outdated",
            Outcome::Foreign => "foreign",
            Outcome::Invalid => "invalid",
        }
    }
}

/// Ids of events already applied, oldest first, bounded.
#[derive(Default)]
pub(crate) struct SeenIds {
    inner: Mutex<(HashSet<String>, VecDeque<String>)>,
}

impl SeenIds {
    /// Records `id`; whether it was new.
    pub fn first_time(&self, id: &str) -> bool {
        let mut g = self.inner.lock();
        let (set, order) = &mut *g;
        if !set.insert(id.to_string()) {
            return false;
        }
        order.push_back(id.to_string());
        while order.len() > SEEN_IDS {
            if let Some(old) = order.pop_front() {
                set.remove(&old);
            }
        }
        true
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
    /// Events naming an invalid repository or failing to apply.
    pub invalid: usize,
}

impl EventReport {
    fn count(&mut self, o: Outcome) {
        match o {
            Outcome::Applied => self.applied += 1,
            Outcome::Duplicate => self.duplicate += 1,
            Outcome::Outdated => self.outdated += 1,
            Outcome::Foreign => self.foreign += 1,
            Outcome::Invalid => self.invalid += 1,
        }
    }
}

/// Work an applied event leaves for the background.
#[derive(Default)]
pub(crate) struct FollowUp {
    /// Pushed images to fetch at once (`prewarm` repositories).
    pub prewarm: Vec<(Target, Digest)>,
    /// Pushed tags whose manifest must be read to learn its media type.
    pub manifests: Vec<(Target, crate::oci::Tag, Digest)>,
    /// Repositories whose tag lists are out of date.
    pub changed: Vec<Target>,
}

/// Applies one event to the tag cache, noting in `follow` what is left to do.
pub(crate) fn apply(
    tags: &Tags,
    seen: &SeenIds,
    upstream: &Arc<Upstream>,
    event: &Event,
    now_ms: u64,
    follow: &mut FollowUp,
) -> Outcome {
    if event.id.as_deref().is_some_and(|id| !seen.first_time(id)) {
        return Outcome::Duplicate;
    }
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
            tracing::warn!(?target, %tag, error = %e, "push event not applied");
            Outcome::Invalid
        }
    }
}

/// Applies every event of a post.
pub(crate) fn apply_all(
    tags: &Tags,
    seen: &SeenIds,
    upstream: &Arc<Upstream>,
    parsed: &Parsed,
    now_ms: u64,
) -> (EventReport, FollowUp) {
    let mut report = EventReport {
        format: parsed.format,
        ignored: parsed.ignored,
        ..EventReport::default()
    };
    let mut follow = FollowUp::default();
    for event in &parsed.events {
        report.count(apply(tags, seen, upstream, event, now_ms, &mut follow));
    }
    (report, follow)
}

impl Proxy {
    /// The events secret of the upstream with this name, if it receives events.
    pub fn events_secret(&self, upstream: &str) -> Option<Vec<u8>> {
        let up = self.router.by_name(upstream)?;
        up.config().events.as_ref().map(|e| e.secret.clone())
    }

    /// Applies the events an upstream posted: tags set, dropped or expired
    /// as a revalidation would, tag lists forgotten, pushed images in
    /// `prewarm` repositories fetched in the background.
    pub fn apply_events(
        &self,
        upstream: &str,
        parsed: &crate::events::Parsed,
    ) -> Result<EventReport, RouteError> {
        let up = self
            .router
            .by_name(upstream)
            .filter(|u| u.config().events.is_some())
            .ok_or_else(|| RouteError::UnknownUpstream(upstream.to_string()))?;
        let (report, follow) = apply_all(
            &self.tags,
            &self.seen_events,
            up,
            parsed,
            self.clock.now_ms(),
        );
        for t in &follow.changed {
            self.tag_lists.forget(t.upstream.name(), t.repo.as_str());
        }
        for (target, tag, digest) in follow.manifests {
            let tags = self.tags.clone();
            tokio::spawn(async move { tags.complete_pushed(&target, &tag, &digest).await });
        }
        for (target, digest) in follow.prewarm {
            let (tags, manifests, blobs) = (
                self.tags.clone(),
                self.manifests.clone(),
                self.blobs.clone(),
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
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_remembered_and_bounded() {
        let s = SeenIds::default();
        assert!(s.first_time("a"));
        assert!(!s.first_time("a"));
        for i in 0..SEEN_IDS {
            s.first_time(&i.to_string());
        }
        assert!(s.first_time("a"), "the oldest was forgotten");
        assert_eq!(s.inner.lock().0.len(), SEEN_IDS);
    }
}
