//! Who gets an answer: the edge's part of access. It authenticates Ferry's
//! own `[[client]]` identities (each limited to its repositories) and asks the
//! cache for the upstream's decision where access is upstream-checked
//! ([`Proxy::admit`]); the cache does every upstream call and keeps every
//! record. What a refusal looks like is decided in [`errors::refusal`].

use super::errors;
use super::responses::{self, Body};
use crate::access::ClientAuth;
use crate::cluster::PeerAuth;
use crate::config::Config;
use crate::proxy::{Origin, Proxy, Refusal};
use crate::upstream::Target;
use http::header::{self, HeaderMap};
use http::Response;

/// The edge's checks.
pub(crate) struct Gate {
    /// Ferry's own identities; `None`: anyone may pull from unchecked upstreams.
    client_auth: Option<ClientAuth>,
    /// Some upstream has checked access: `/v2/` asks for credentials.
    any_checked: bool,
}

/// A refusal, as the response to send.
pub(crate) type Refused = Box<Response<Body>>;

impl Gate {
    pub fn new(config: &Config) -> Gate {
        Gate {
            client_auth: config.client_auth.clone(),
            any_checked: config.upstreams.iter().any(|u| u.access.is_some()),
        }
    }

    /// `/v2/` (the version check, no repository): a client that must
    /// authenticate somewhere is challenged here, so docker sends its
    /// credentials with every request that follows. With checked access, any
    /// credentials pass here: they are judged per repository.
    pub fn base(&self, headers: &HeaderMap, head: bool) -> Result<(), Refused> {
        let given = authorization(headers);
        let ok = match (&self.client_auth, self.any_checked) {
            (_, true) => given.is_some(),
            (Some(auth), false) => auth.allows(given),
            (None, false) => true,
        };
        if ok {
            Ok(())
        } else {
            Err(refuse(Refusal::Unauthorized, head))
        }
    }

    /// A pull-API request: a peer replica's (the peer secret; it asks for a
    /// client it already admitted, and is answered here, never forwarded), or
    /// a client's, admitted as [`Gate::admit`] says.
    pub async fn admit_pull(
        &self,
        proxy: &Proxy,
        headers: &HeaderMap,
        target: Target,
        head: bool,
    ) -> Result<(Target, Origin), Refused> {
        match proxy.cluster().map(|c| c.auth(headers)) {
            Some(PeerAuth::Refused) => Err(Box::new(responses::error(
                &errors::wrong_peer_secret(),
                head,
            ))),
            Some(PeerAuth::Peer) => Ok((target, Origin::Peer)),
            _ => Ok((
                self.admit(proxy, headers, target, head).await?,
                Origin::Client,
            )),
        }
    }

    /// Whether the request may read `target` at all; if so, the target to
    /// fetch it with (a checked upstream may be fetched as the client).
    pub async fn admit(
        &self,
        proxy: &Proxy,
        headers: &HeaderMap,
        target: Target,
        head: bool,
    ) -> Result<Target, Refused> {
        let given = authorization(headers);
        if target.upstream.config().access.is_some() {
            // Boxed: checked access is rare, and its state would otherwise
            // make every request's future (moved whole per request) larger.
            Box::pin(proxy.admit(&target, given))
                .await
                .map_err(|r| refuse(r, head))?;
            return Ok(proxy.fetch_as(target, given));
        }
        let Some(auth) = &self.client_auth else {
            return Ok(target);
        };
        match auth.authenticate(given) {
            None => Err(refuse(Refusal::Unauthorized, head)),
            Some(c) if c.may_pull(target.upstream.name(), target.repo.as_str()) => Ok(target),
            Some(_) => Err(refuse(Refusal::Forbidden, head)),
        }
    }
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// `401` carries the Basic challenge; the rest are OCI errors.
fn refuse(r: Refusal, head: bool) -> Refused {
    Box::new(match r {
        Refusal::Unauthorized => responses::unauthorized(head),
        r => responses::error(&errors::refusal(r), head),
    })
}
