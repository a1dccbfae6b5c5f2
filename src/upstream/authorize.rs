//! The `Authorization` each upstream request carries: a bearer token cached
//! per (realm, scope), fetched once when missing, Basic credentials for the
//! upstream's own host, or nothing (a redirect target gets nothing uninvited).

use super::auth::{Challenge, TokenResponse};
use super::{Result, Upstream, UpstreamError};
use http::header::HeaderValue;
use http::StatusCode;
use url::Url;

/// Hosts whose authentication challenge is remembered (the registry, its CDNs).
const MAX_HOSTS: usize = 64;

/// What to send as `Authorization` to one host.
pub(super) enum Auth {
    None,
    /// The header, and the bearer token in it (to recognise it if refused).
    Header(HeaderValue, Option<String>),
    /// The host wants a bearer token we do not hold for this scope yet.
    NeedToken(Challenge),
}

impl Upstream {
    /// Remembers how `host` asked to be authenticated. Bounded: past
    /// [`MAX_HOSTS`] the others are forgotten (each costs one more 401 round trip).
    pub(super) fn remember_challenge(&self, host: &str, challenge: Challenge) {
        let mut map = self.challenges.lock();
        if map.len() >= MAX_HOSTS && !map.contains_key(host) {
            map.clear();
        }
        map.insert(host.to_string(), challenge);
    }

    /// The `Authorization` to send to `host`: a cached bearer token if the host
    /// asked for one, Basic credentials if the upstream's own host asked for
    /// them, else nothing (so nothing crosses to a redirect target uninvited).
    pub(super) fn authorization(&self, host: &str, scope: &str, upstream_host: &str) -> Auth {
        let Some(challenge) = self.challenges.lock().get(host).cloned() else {
            return Auth::None;
        };
        match &challenge {
            Challenge::Bearer { realm, .. } => {
                match self.tokens.get(realm, scope, self.clock.now_ms()) {
                    Some(token) => match sensitive(&format!("Bearer {token}")) {
                        Some(v) => Auth::Header(v, Some(token)),
                        None => Auth::None,
                    },
                    None => Auth::NeedToken(challenge),
                }
            }
            Challenge::Basic if host == upstream_host => {
                match self
                    .config()
                    .credentials
                    .as_ref()
                    .and_then(|c| basic(&c.username, &c.password))
                {
                    Some(v) => Auth::Header(v, None),
                    None => Auth::None,
                }
            }
            Challenge::Basic => Auth::None,
        }
    }

    /// Fetches a token for `scope` from the challenge's realm, unless another
    /// request already did while this one waited. `refused` is a token upstream
    /// just answered 401 to: a cached token equal to it is not reused.
    pub(super) async fn fetch_token(
        &self,
        challenge: &Challenge,
        scope: &str,
        send_credentials: bool,
        refused: Option<String>,
    ) -> Result<()> {
        let Challenge::Bearer { realm, service, .. } = challenge else {
            return Ok(());
        };
        let _one_at_a_time = self.token_fetch.lock().await;
        let usable = self
            .tokens
            .get(realm, scope, self.clock.now_ms())
            .is_some_and(|t| refused.as_deref() != Some(t.as_str()));
        if usable {
            return Ok(());
        }
        let url = self.token_url(realm, service.as_deref(), scope)?;
        let mut req = self.http.get(url);
        if let (true, Some(c)) = (send_credentials, &self.config().credentials) {
            req = req.basic_auth(&c.username, Some(&c.password));
        }
        let resp = self.exchange(req, "TOKEN").await?;
        let status = resp.status();
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return Err(UpstreamError::Status(status));
        }
        if !status.is_success() {
            return Err(UpstreamError::Unauthorized);
        }
        let body = self.read_limited(resp, 1 << 20).await?;
        let (token, expires_in) = serde_json::from_slice::<TokenResponse>(&body)
            .ok()
            .and_then(TokenResponse::into_token)
            .ok_or_else(|| UpstreamError::Invalid("token endpoint sent no token".into()))?;
        // Renew a little early so a token never expires in flight.
        let lifetime_ms = expires_in * 1000;
        let expires_ms = self.clock.now_ms() + lifetime_ms - (lifetime_ms / 10).min(10_000);
        self.tokens
            .insert(realm, scope, token, expires_ms, self.clock.now_ms());
        Ok(())
    }
    /// The token endpoint `realm` for `scope`, if the realm may be asked at all
    /// (see [`destinations`]).
    pub(super) fn token_url(&self, realm: &str, service: Option<&str>, scope: &str) -> Result<Url> {
        let mut url = Url::parse(realm)
            .map_err(|_| UpstreamError::Invalid(format!("bad token realm {realm:?}")))?;
        self.destinations
            .check(&url)
            .map_err(|why| UpstreamError::Invalid(format!("token realm {why}")))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        Ok(url)
    }
}

pub(super) fn sensitive(s: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(s).ok()?;
    v.set_sensitive(true);
    Some(v)
}

pub(super) fn basic(user: &str, password: &str) -> Option<HeaderValue> {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    sensitive(&format!("Basic {encoded}"))
}
