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
//! Bounded: past `capacity` entries ([`crate::config::defaults::ACCESS_DECISIONS`]), those past `stale`
//! go first, then the oldest tenth.

use crate::access::clients::parse_basic;
use crate::clock::Clock;
use crate::config::AccessPolicy;
use crate::metrics::Metrics;
use crate::oci::RepoName;
use crate::proxy::SingleFlight;
use crate::upstream::{Access, Upstream};
use parking_lot::Mutex;
use sha2::Digest as _;
use std::collections::HashMap;
use std::sync::Arc;

/// What the edge does with a request for a checked upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it.
    Allowed,
    /// `401` with a Basic challenge: credentials are missing or refused.
    Unauthorized,
    /// `403`: these credentials may not pull this repository.
    Forbidden,
    /// `404`: the upstream knows no such repository for these credentials.
    Missing,
    /// `503`: the upstream cannot be asked and no recent decision stands.
    Unavailable,
}

impl From<Access> for Verdict {
    fn from(a: Access) -> Verdict {
        match a {
            Access::Allowed => Verdict::Allowed,
            Access::Unauthenticated => Verdict::Unauthorized,
            Access::Forbidden => Verdict::Forbidden,
            Access::Missing => Verdict::Missing,
        }
    }
}

/// (SHA-256 of `user:password`, or of nothing; upstream; repository).
type Key = ([u8; 32], String, String);

#[derive(Clone, Copy)]
struct Decision {
    access: Access,
    decided_ms: u64,
}

/// The decisions, with their upstream questions.
pub struct Decisions {
    decided: Mutex<HashMap<Key, Decision>>,
    capacity: usize,
    asking: SingleFlight<Key, Result<Access, String>>,
    metrics: Arc<Metrics>,
    clock: Clock,
}

impl Decisions {
    /// An empty cache holding at most `capacity` decisions.
    pub fn new(capacity: usize, metrics: Arc<Metrics>, clock: Clock) -> Decisions {
        Decisions {
            decided: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
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
    ) -> Verdict {
        let credentials = authorization.and_then(parse_basic);
        let id: [u8; 32] = match &credentials {
            Some((u, p)) => sha2::Sha256::digest(format!("{u}:{p}").as_bytes()).into(),
            None => [0; 32],
        };
        let key: Key = (id, upstream.name().to_string(), repo.as_str().to_string());
        let name = upstream.name();
        let now = self.clock.now_ms();
        let kept = self.decided.lock().get(&key).copied();
        if let Some(d) = kept {
            let ttl = match d.access {
                Access::Allowed => policy.ttl,
                _ => policy.negative_ttl,
            };
            if now.saturating_sub(d.decided_ms) < ttl.as_millis() as u64 {
                self.metrics
                    .access_decision(name, "cached", d.access.label());
                return d.access.into();
            }
        }
        let (up, repo) = (upstream.clone(), repo.clone());
        let (asked, _) = self
            .asking
            .run(key.clone(), move || async move {
                up.check_access(&repo, credentials.as_ref())
                    .await
                    .map_err(|e| e.to_string())
            })
            .await;
        match asked {
            Some(Ok(access)) => {
                self.metrics
                    .access_decision(name, "upstream", access.label());
                self.keep(
                    key,
                    Decision {
                        access,
                        decided_ms: now,
                    },
                    policy,
                );
                access.into()
            }
            failed => {
                let why = match failed {
                    Some(Err(e)) => e,
                    _ => "the check was cut short".into(),
                };
                let stale_ms = policy.stale.as_millis() as u64;
                match kept.filter(|d| now.saturating_sub(d.decided_ms) < stale_ms) {
                    Some(d) => {
                        tracing::warn!(
                            upstream = name,
                            repository = repo_label(&key),
                            "access check failed, keeping the last decision: {why}"
                        );
                        self.metrics
                            .access_decision(name, "stale", d.access.label());
                        d.access.into()
                    }
                    None => {
                        tracing::warn!(
                            upstream = name,
                            repository = repo_label(&key),
                            "access check failed: {why}"
                        );
                        self.metrics
                            .access_decision(name, "upstream", "unavailable");
                        Verdict::Unavailable
                    }
                }
            }
        }
    }

    fn keep(&self, key: Key, d: Decision, policy: AccessPolicy) {
        let mut map = self.decided.lock();
        if map.len() >= self.capacity && !map.contains_key(&key) {
            let stale_ms = policy.stale.as_millis() as u64;
            map.retain(|_, v| d.decided_ms.saturating_sub(v.decided_ms) < stale_ms);
            if map.len() >= self.capacity {
                let mut ages: Vec<u64> = map.values().map(|v| v.decided_ms).collect();
                let nth = ages.len() / 10;
                let (_, cut, _) = ages.select_nth_unstable(nth);
                let cut = *cut;
                map.retain(|_, v| v.decided_ms > cut);
            }
        }
        map.insert(key, d);
    }
}

fn repo_label(key: &Key) -> &str {
    &key.2
}
