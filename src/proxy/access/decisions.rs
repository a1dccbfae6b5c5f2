//! Upstream-checked access (`[upstream.access]`): whether a client may pull a
//! repository is the upstream's call, asked with the client's own credentials
//! ([`Upstream::check_access`]), so a private image cached with Ferry's
//! credentials reaches only clients the upstream would give it to.
//!
//! Decisions are kept per (credential digest, upstream, repository): a
//! "may pull" for `ttl`, a "may not" for the shorter `negative_ttl`. One
//! question per key is in flight at a time. While the upstream cannot be
//! asked, a decision up to `stale` old keeps its answer; with none, the answer
//! is `503`, never an open door. Only a SHA-256 of the credentials is kept.
//! Bounded ([`crate::config::defaults::ACCESS_DECISIONS`]): a decision is
//! dropped once even a stale answer could not use it, and at the bound the
//! oldest goes first.

use super::Refusal;
use crate::access::clients::{credentials_id, parse_basic};
use crate::bounded::ExpiringMap;
use crate::clock::Clock;
use crate::config::AccessPolicy;
use crate::metrics::Metrics;
use crate::oci::RepoName;
use crate::proxy::flight::SingleFlight;
use crate::proxy::Error;
use crate::upstream::{Access, Upstream};
use parking_lot::Mutex;
use std::sync::Arc;

/// Whose question about which repository.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    /// SHA-256 of `user:password`, or zeros for no credentials.
    credentials: [u8; 32],
    upstream: String,
    repo: String,
}

#[derive(Clone, Copy)]
struct Decision {
    access: Access,
    decided_ms: u64,
}

/// The decisions, with their upstream questions.
pub(crate) struct Decisions {
    /// Decisions by key, each kept while it could still answer (fresh or stale).
    decided: Mutex<ExpiringMap<Key, Decision>>,
    /// The upstream question per key in flight; an error means it could not be asked.
    asking: SingleFlight<Key, Result<Access, Error>>,
    metrics: Arc<Metrics>,
    clock: Clock,
}

impl Decisions {
    /// An empty cache holding at most `capacity` decisions.
    pub fn new(capacity: usize, metrics: Arc<Metrics>, clock: Clock) -> Decisions {
        Decisions {
            decided: Mutex::new(ExpiringMap::new(capacity)),
            asking: SingleFlight::default(),
            metrics,
            clock,
        }
    }

    /// Whether the client sending `authorization` may pull `repo` from `upstream`.
    /// Credentials other than Basic cannot be checked: they count as none.
    pub async fn check(
        &self,
        upstream: &Arc<Upstream>,
        policy: AccessPolicy,
        repo: &RepoName,
        authorization: Option<&str>,
    ) -> Result<(), Refusal> {
        let credentials = authorization.and_then(parse_basic);
        let key = Key {
            credentials: credentials
                .as_ref()
                .map_or([0; 32], |(u, p)| credentials_id(u, p)),
            upstream: upstream.name().to_string(),
            repo: repo.as_str().to_string(),
        };
        let name = upstream.name();
        let now = self.clock.now_ms();
        let kept = self.decided.lock().get(&key, now).copied();
        if let Some(d) = kept {
            let ttl = match d.access {
                Access::Allowed => policy.ttl,
                _ => policy.negative_ttl,
            };
            if now.saturating_sub(d.decided_ms) < ttl.as_millis() as u64 {
                self.metrics
                    .access_decision(name, "cached", d.access.label());
                return verdict(d.access);
            }
        }
        let (up, repo) = (upstream.clone(), repo.clone());
        let (asked, _) = self
            .asking
            .run(key.clone(), move || async move {
                up.check_access(&repo, credentials.as_ref())
                    .await
                    .map_err(Error::from)
            })
            .await;
        let failed = match asked {
            Some(Ok(access)) => {
                self.metrics
                    .access_decision(name, "upstream", access.label());
                self.keep(key, access, now, policy);
                return verdict(access);
            }
            Some(Err(e)) => e.to_string(),
            None => "the check was cut short".into(),
        };
        let stale_ms = policy.stale.as_millis() as u64;
        match kept.filter(|d| now.saturating_sub(d.decided_ms) < stale_ms) {
            Some(d) => {
                tracing::warn!(upstream = name, repository = %key.repo, "access check failed, keeping the last decision: {failed}");
                self.metrics
                    .access_decision(name, "stale", d.access.label());
                verdict(d.access)
            }
            None => {
                tracing::warn!(upstream = name, repository = %key.repo, "access check failed: {failed}");
                self.metrics
                    .access_decision(name, "upstream", "unavailable");
                Err(Refusal::Unavailable)
            }
        }
    }

    /// Keeps a fresh decision for as long as it could answer, fresh or stale.
    fn keep(&self, key: Key, access: Access, now: u64, policy: AccessPolicy) {
        let useful = policy.ttl.max(policy.negative_ttl).max(policy.stale);
        let deadline = now.saturating_add(useful.as_millis() as u64);
        let decision = Decision {
            access,
            decided_ms: now,
        };
        self.decided.lock().insert(key, decision, deadline, now);
    }
}

/// What an upstream's answer means for the request.
fn verdict(a: Access) -> Result<(), Refusal> {
    match a {
        Access::Allowed => Ok(()),
        Access::Unauthenticated => Err(Refusal::Unauthorized),
        Access::Forbidden => Err(Refusal::Forbidden),
        Access::Missing => Err(Refusal::Missing),
    }
}
