//! Who gets an answer: the checks between a routed request and the cache.
//!
//! For an upstream with checked access the upstream decides (see
//! [`decisions`]) and a digest is served under a repository only once it is
//! known to be there ([`links`]). For the others, Ferry's own `[[client]]`
//! identities apply, each limited to its repositories.

mod decisions;
mod links;

pub(crate) use decisions::Verdict;

use super::errors::{cache_error, Asked};
use super::responses::{self, Body};
use crate::access::clients::parse_basic;
use crate::access::ClientAuth;
use crate::config::{defaults, Config, Credentials};
use crate::oci::{Digest, ErrorCode, OciError};
use crate::proxy::{Error, Proxy};
use crate::upstream::{Target, Upstream, UpstreamError};
use decisions::Decisions;
use http::header::{self, HeaderMap};
use http::{Response, StatusCode};
use links::Links;
use parking_lot::Mutex;
use sha2::Digest as _;
use std::collections::HashMap;
use std::sync::Arc;

/// The checks, and what they remember.
pub(crate) struct Gate {
    /// Ferry's own identities; `None`: anyone may pull from unchecked upstreams.
    client_auth: Option<ClientAuth>,
    /// Some upstream has checked access: `/v2/` asks for credentials.
    any_checked: bool,
    decisions: Decisions,
    links: Links,
    /// Pass-through: each client's own view of a checked upstream that Ferry
    /// has no credentials for, by (upstream, SHA-256 of the credentials).
    views: Mutex<HashMap<ViewKey, Arc<Upstream>>>,
}

/// Client views of upstreams kept at most (then all are dropped and rebuilt
/// as clients come back: each costs one token request).
const MAX_VIEWS: usize = 4096;

type Refusal = Box<Response<Body>>;

/// (upstream name, SHA-256 of `user:password`).
type ViewKey = (String, [u8; 32]);

impl Gate {
    pub fn new(proxy: &Proxy, config: &Config) -> Gate {
        Gate {
            client_auth: config.client_auth.clone(),
            any_checked: config.upstreams.iter().any(|u| u.access.is_some()),
            decisions: Decisions::new(
                defaults::ACCESS_DECISIONS,
                proxy.metrics().clone(),
                proxy.clock().clone(),
            ),
            links: Links::new(proxy.store().clone(), proxy.clock().clone()),
            views: Mutex::new(HashMap::new()),
        }
    }

    /// `/v2/` (the version check, no repository): a client that must
    /// authenticate somewhere is challenged here, so docker sends its
    /// credentials with every request that follows. With checked access, any
    /// credentials pass here: they are judged per repository.
    pub fn base(&self, headers: &HeaderMap, head: bool) -> Result<(), Refusal> {
        let given = authorization(headers);
        let ok = match (&self.client_auth, self.any_checked) {
            (_, true) => given.is_some(),
            (Some(auth), false) => auth.allows(given),
            (None, false) => true,
        };
        if ok {
            Ok(())
        } else {
            Err(Box::new(responses::unauthorized(head)))
        }
    }

    /// Whether the request may read `target` at all.
    pub async fn admit(
        &self,
        headers: &HeaderMap,
        target: &Target,
        head: bool,
    ) -> Result<(), Refusal> {
        let given = authorization(headers);
        if let Some(policy) = target.upstream.config().access {
            let verdict = self
                .decisions
                .check(&target.upstream, policy, &target.repo, given)
                .await;
            return refuse(verdict, head);
        }
        let Some(auth) = &self.client_auth else {
            return Ok(());
        };
        match auth.authenticate(given) {
            None => refuse(Verdict::Unauthorized, head),
            Some(c) if c.may_pull(target.upstream.name(), target.repo.as_str()) => Ok(()),
            Some(_) => refuse(Verdict::Forbidden, head),
        }
    }

    /// The target to fetch with. For a checked upstream Ferry has no
    /// credentials for, that is the upstream as the client sees it: fetched
    /// with the client's own credentials (already admitted by the upstream).
    pub fn fetch_as(&self, headers: &HeaderMap, target: Target) -> Target {
        let config = target.upstream.config();
        if config.access.is_none() || config.credentials.is_some() {
            return target;
        }
        let Some((username, password)) = authorization(headers).and_then(parse_basic) else {
            return target;
        };
        let id: [u8; 32] = sha2::Sha256::digest(format!("{username}:{password}").as_bytes()).into();
        let key = (target.upstream.name().to_string(), id);
        let mut views = self.views.lock();
        if views.len() >= MAX_VIEWS && !views.contains_key(&key) {
            views.clear();
        }
        let view = views
            .entry(key)
            .or_insert_with(|| {
                Arc::new(
                    target
                        .upstream
                        .for_client(Credentials { username, password }),
                )
            })
            .clone();
        Target {
            upstream: view,
            repo: target.repo,
        }
    }

    /// For a checked upstream: whether `digest` may be served under
    /// `target`'s repository. It may if it was seen there; otherwise upstream
    /// is asked (a `HEAD` in that repository) and a yes is remembered.
    pub async fn seen_here(
        &self,
        target: &Target,
        digest: &Digest,
        asked: Asked,
        head: bool,
    ) -> Result<(), Refusal> {
        if target.upstream.config().access.is_none() {
            return Ok(());
        }
        let (upstream, repo) = (target.upstream.name(), target.repo.as_str());
        let fail = |e: Error| Err(Box::new(responses::error(&cache_error(&e, asked), head)));
        match self.links.has(upstream, repo, digest) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => return fail(Error::from(e)),
        }
        let confirmed = match asked {
            Asked::Manifest => target
                .upstream
                .head_manifest(&target.repo, &digest.to_string())
                .await
                .map(drop),
            _ => target
                .upstream
                .head_blob(&target.repo, digest)
                .await
                .map(drop),
        };
        match confirmed {
            Ok(()) => match self.links.record(upstream, repo, digest) {
                Ok(()) => Ok(()),
                Err(e) => fail(Error::from(e)),
            },
            Err(UpstreamError::NotFound | UpstreamError::Unauthorized) => fail(Error::NotFound(
                format!("{digest} is not known in {repo} upstream"),
            )),
            Err(e) => fail(Error::Upstream(e)),
        }
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

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

fn refuse(v: Verdict, head: bool) -> Result<(), Refusal> {
    match v {
        Verdict::Allowed => Ok(()),
        Verdict::Unauthorized => Err(Box::new(responses::unauthorized(head))),
        v => Err(Box::new(responses::error(&access_error(v), head))),
    }
}

/// An upstream-checked access refusal (`Unauthorized` also needs the
/// challenge header: see `responses::unauthorized`).
fn access_error(v: Verdict) -> OciError {
    match v {
        Verdict::Allowed => OciError::new(ErrorCode::Unknown, "allowed"),
        Verdict::Unauthorized => OciError::new(
            ErrorCode::Unauthorized,
            "the upstream did not accept these credentials for this repository",
        ),
        Verdict::Forbidden => OciError::new(
            ErrorCode::Denied,
            "the upstream does not let these credentials pull this repository",
        ),
        Verdict::Missing => OciError::new(
            ErrorCode::NameUnknown,
            "repository not found upstream for these credentials",
        ),
        Verdict::Unavailable => OciError::new(
            ErrorCode::Unavailable,
            "the upstream cannot be asked whether these credentials may pull this repository",
        )
        .with_status(StatusCode::SERVICE_UNAVAILABLE)
        .with_retry_after(Some(5)),
    }
}
