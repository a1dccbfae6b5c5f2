//! Pass-through credentials: a checked upstream Ferry has no credentials for
//! is fetched as each client sees it, with the client's own (already admitted
//! by the upstream). One view per (upstream, credentials), kept while used:
//! at most [`defaults::CLIENT_VIEWS`], each dropped after
//! [`defaults::CLIENT_VIEW_IDLE`] unused, the least recently used first at the
//! bound (rebuilding one costs a token request).

use crate::access::clients::{credentials_id, parse_basic};
use crate::bounded::ExpiringMap;
use crate::clock::Clock;
use crate::config::{defaults, Credentials};
use crate::upstream::{Target, Upstream};
use parking_lot::Mutex;
use std::sync::Arc;

/// (upstream name, SHA-256 of `user:password`).
type ViewKey = (String, [u8; 32]);

/// The clients' views of checked upstreams.
pub(crate) struct Views {
    views: Mutex<ExpiringMap<ViewKey, Arc<Upstream>>>,
    clock: Clock,
}

impl Views {
    pub fn new(capacity: usize, clock: Clock) -> Views {
        Views {
            views: Mutex::new(ExpiringMap::new(capacity)),
            clock,
        }
    }

    /// The target to fetch with: for a checked upstream Ferry has no
    /// credentials for, the upstream as the client sending `authorization`
    /// sees it; otherwise `target` itself.
    pub fn fetch_as(&self, target: Target, authorization: Option<&str>) -> Target {
        let config = target.upstream.config();
        if config.access.is_none() || config.credentials.is_some() {
            return target;
        }
        let Some((username, password)) = authorization.and_then(parse_basic) else {
            return target;
        };
        let key = (
            target.upstream.name().to_string(),
            credentials_id(&username, &password),
        );
        let now = self.clock.now_ms();
        let idle = now.saturating_add(defaults::CLIENT_VIEW_IDLE.as_millis() as u64);
        let mut views = self.views.lock();
        let view = match views.get(&key, now) {
            Some(v) => v.clone(),
            None => Arc::new(
                target
                    .upstream
                    .for_client(Credentials { username, password }),
            ),
        };
        // Used now: its idle deadline moves on.
        views.insert(key, view.clone(), idle, now);
        Target {
            upstream: view,
            repo: target.repo,
        }
    }
}
