//! Upstream-checked access, below the edge: for an upstream with
//! `[upstream.access]`, who may read a repository is the upstream's call
//! ([`decisions`]), content is fetched as the client sees it when Ferry has no
//! credentials of its own ([`views`]), and a digest is served under a
//! repository only once it is known to be there ([`links`]).
//!
//! Every upstream question here is shared: one access check per (credentials,
//! repository), one confirmation per (repository, digest) in flight at a time,
//! and a confirmed link is kept in the store, so a herd of requests for a
//! digest costs one upstream `HEAD`. Upstreams without `[upstream.access]`
//! pass straight through.

mod decisions;
mod links;
mod views;

use super::error::{Error, Result};
use super::flight::SingleFlight;
use crate::clock::Clock;
use crate::config::defaults;
use crate::metrics::Metrics;
use crate::oci::Digest;
use crate::upstream::Target;
use decisions::Decisions;
use ferry_storage::Store;
use links::Links;
use std::future::Future;
use std::sync::Arc;
use views::Views;

/// Why a request for a repository is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `401` with a Basic challenge: credentials are missing or refused.
    Unauthorized,
    /// `403`: these credentials may not pull this repository.
    Forbidden,
    /// `404`: the upstream knows no such repository for these credentials.
    Missing,
    /// `503`: the upstream cannot be asked and no recent decision stands.
    Unavailable,
}

/// (upstream, repository, digest): one link confirmation.
type LinkKey = (String, String, Digest);

/// Checked access: decisions, client views, links and their confirmations.
pub(crate) struct Access {
    decisions: Decisions,
    views: Views,
    links: Links,
    /// One upstream confirmation per link at a time.
    confirming: SingleFlight<LinkKey, Result<()>>,
    metrics: Arc<Metrics>,
}

impl Access {
    pub fn new(store: Store, clock: Clock, metrics: Arc<Metrics>) -> Access {
        Access {
            decisions: Decisions::new(defaults::ACCESS_DECISIONS, metrics.clone(), clock.clone()),
            views: Views::new(defaults::CLIENT_VIEWS, clock.clone()),
            links: Links::new(store, clock),
            confirming: SingleFlight::default(),
            metrics,
        }
    }

    /// Whether the client sending `authorization` may read `target`'s
    /// repository, as its upstream decides; `Ok` for unchecked upstreams.
    pub async fn admit(
        &self,
        target: &Target,
        authorization: Option<&str>,
    ) -> std::result::Result<(), Refusal> {
        match target.upstream.config().access {
            Some(policy) => {
                self.decisions
                    .check(&target.upstream, policy, &target.repo, authorization)
                    .await
            }
            None => Ok(()),
        }
    }

    /// The target to fetch `target` with for this client (see [`views`]).
    pub fn fetch_as(&self, target: Target, authorization: Option<&str>) -> Target {
        self.views.fetch_as(target, authorization)
    }

    /// For a checked upstream: `Ok` if `digest` may be served under
    /// `target`'s repository. It may if it was seen there; otherwise upstream
    /// is asked once (`ask`, a `HEAD` in that repository, run only by the
    /// first of the requests that want it) and a yes is remembered.
    pub async fn confirm<F>(
        &self,
        target: &Target,
        digest: &Digest,
        ask: impl FnOnce() -> F,
    ) -> Result<()>
    where
        F: Future<Output = Result<()>> + Send + 'static,
    {
        if target.upstream.config().access.is_none() {
            return Ok(());
        }
        let (upstream, repo) = (target.upstream.name(), target.repo.as_str());
        if self.links.has(upstream, repo, digest)? {
            return Ok(());
        }
        let key: LinkKey = (upstream.to_string(), repo.to_string(), digest.clone());
        let (links, asked) = (self.links.clone(), key.clone());
        let (result, joined) = self
            .confirming
            .run(key, move || {
                let ask = ask();
                async move {
                    let (upstream, repo, digest) = asked;
                    // A confirmation that landed just before this one began.
                    if links.has(&upstream, &repo, &digest)? {
                        return Ok(());
                    }
                    match ask.await {
                        Ok(()) => Ok(links.record(&upstream, &repo, &digest)?),
                        Err(e) if e.is_absent() => Err(Error::NotFound(format!(
                            "{digest} is not known in {repo} upstream"
                        ))),
                        Err(e) => Err(e),
                    }
                }
            })
            .await;
        if joined {
            self.metrics.coalesced.inc();
        }
        result.unwrap_or_else(|| {
            Err(Error::Internal(
                "a link confirmation ended unexpectedly".into(),
            ))
        })
    }

    /// For a checked upstream: a manifest was served in `target`'s repository,
    /// so it and what it references are there.
    pub fn saw_manifest(&self, target: &Target, digest: &Digest, body: Option<&[u8]>) {
        if target.upstream.config().access.is_none() {
            return;
        }
        let (upstream, repo) = (target.upstream.name(), target.repo.as_str());
        if let Err(e) = self.links.record_manifest(upstream, repo, digest, body) {
            tracing::warn!(%digest, repository = repo, error = %e, "could not record the repository's digests");
        }
    }
}
