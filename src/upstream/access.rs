//! Asking an upstream whether a client's own credentials may pull a
//! repository (upstream-checked access). The question is the one a pull asks
//! first: `GET /v2/<repo>/tags/list?n=1` with the client's credentials — sent
//! as Basic to the upstream's own host, or to the token realm that host names,
//! for a token scoped `repository:<repo>:pull`. A token that is a JWT with an
//! `access` claim (Docker Hub, distribution's token servers) is decided from
//! the claim; any other token is tried on the same request.
//!
//! Nothing here touches Ferry's own credentials or token cache: a client's
//! token is used once and dropped.

use super::auth::{self, Challenge, TokenResponse};
use super::{authority, basic, sensitive, Result, Upstream, UpstreamError};
use crate::oci::RepoName;
use http::header::{self, HeaderValue};
use http::StatusCode;

/// What the upstream says about a client and a repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// It may pull.
    Allowed,
    /// The credentials were refused, or the repository needs some and none were given.
    Unauthenticated,
    /// The credentials are good but not for this repository.
    Forbidden,
    /// No such repository, as far as these credentials can see.
    Missing,
}

impl Access {
    /// A label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            Access::Allowed => "allowed",
            Access::Unauthenticated => "unauthenticated",
            Access::Forbidden => "forbidden",
            Access::Missing => "missing",
        }
    }
}

impl Upstream {
    /// Whether `credentials` (user, password; `None`: anonymous) may pull
    /// `repo`. An error means the upstream could not be asked.
    pub async fn check_access(
        &self,
        repo: &RepoName,
        credentials: Option<&(String, String)>,
    ) -> Result<Access> {
        self.check_backoff()?;
        let url = self.url_for(&format!("/v2/{repo}/tags/list?n=1"))?;
        let host = authority(&self.config().url);
        // A registry known to want bearer tokens is never sent the client's
        // password: it goes to the token realm only.
        let known = self.challenges.lock().get(&host).cloned();
        let challenge = match known {
            Some(c @ Challenge::Bearer { .. }) => c,
            _ => {
                let as_basic = credentials.and_then(|(u, p)| basic(u, p));
                let resp = self.probe(&url, as_basic).await?;
                if resp.status() != StatusCode::UNAUTHORIZED {
                    return self.verdict(resp);
                }
                let challenges = auth::parse_challenges(
                    resp.headers()
                        .get_all(header::WWW_AUTHENTICATE)
                        .iter()
                        .filter_map(|v| v.to_str().ok()),
                );
                match auth::preferred(&challenges) {
                    Some(c @ Challenge::Bearer { .. }) => {
                        self.remember_challenge(&host, c.clone());
                        c.clone()
                    }
                    // Basic (or nothing usable): the credentials sent were refused.
                    _ => return Ok(Access::Unauthenticated),
                }
            }
        };
        let Challenge::Bearer { realm, service, .. } = &challenge else {
            return Ok(Access::Unauthenticated);
        };
        let Some(token) = self
            .client_token(realm, service.as_deref(), repo, credentials)
            .await?
        else {
            return Ok(Access::Unauthenticated);
        };
        let refused = if credentials.is_some() {
            Access::Forbidden
        } else {
            Access::Unauthenticated
        };
        if let Some(granted) = jwt_grants_pull(&token, repo.as_str()) {
            return Ok(if granted { Access::Allowed } else { refused });
        }
        let resp = self
            .probe(&url, sensitive(&format!("Bearer {token}")))
            .await?;
        match resp.status() {
            StatusCode::UNAUTHORIZED => Ok(refused),
            _ => self.verdict(resp),
        }
    }

    async fn probe(
        &self,
        url: &url::Url,
        authorization: Option<HeaderValue>,
    ) -> Result<reqwest::Response> {
        let mut req = self.http.get(url.clone());
        if let Some(a) = authorization {
            req = req.header(header::AUTHORIZATION, a);
        }
        self.exchange(req, "ACCESS").await
    }

    fn verdict(&self, resp: reqwest::Response) -> Result<Access> {
        if resp.status().is_success() {
            return Ok(Access::Allowed);
        }
        match self.classify(resp) {
            Err(UpstreamError::NotFound) => Ok(Access::Missing),
            Err(UpstreamError::Unauthorized) => Ok(Access::Forbidden),
            Err(e) => Err(e),
            Ok(r) => Err(UpstreamError::Status(r.status())),
        }
    }

    /// A token for the client, from the realm the upstream named; `None` when
    /// the realm refuses the credentials.
    async fn client_token(
        &self,
        realm: &str,
        service: Option<&str>,
        repo: &RepoName,
        credentials: Option<&(String, String)>,
    ) -> Result<Option<String>> {
        let url = self.token_url(realm, service, &format!("repository:{repo}:pull"))?;
        let mut req = self.http.get(url);
        if let Some((u, p)) = credentials {
            req = req.basic_auth(u, Some(p));
        }
        let resp = self.exchange(req, "TOKEN").await?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Ok(None);
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            return self.classify(resp).map(|_| None);
        }
        if !status.is_success() {
            return Err(UpstreamError::Status(status));
        }
        let body = self.read_limited(resp, 1 << 20).await?;
        serde_json::from_slice::<TokenResponse>(&body)
            .ok()
            .and_then(TokenResponse::into_token)
            .map(|(t, _)| Some(t))
            .ok_or_else(|| UpstreamError::Invalid("token endpoint sent no token".into()))
    }
}

/// For a JWT carrying an `access` claim: whether it grants `pull` on
/// `repository:<repo>`. `None` for any other token (opaque, or no claim).
pub(crate) fn jwt_grants_pull(token: &str, repo: &str) -> Option<bool> {
    use base64::Engine as _;
    #[derive(serde::Deserialize)]
    struct Grant {
        #[serde(rename = "type")]
        kind: String,
        name: String,
        #[serde(default)]
        actions: Vec<String>,
    }
    #[derive(serde::Deserialize)]
    struct Claims {
        access: Option<Vec<Grant>>,
    }
    let mut parts = token.split('.');
    let (_, payload, _, None) = (parts.next()?, parts.next()?, parts.next()?, parts.next()) else {
        return None;
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let access = serde_json::from_slice::<Claims>(&bytes).ok()?.access?;
    Some(access.iter().any(|g| {
        g.kind == "repository"
            && g.name == repo
            && g.actions.iter().any(|a| a == "pull" || a == "*")
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        use base64::Engine as _;
        let e = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", e(r#"{"alg":"RS256"}"#), e(claims))
    }

    #[test]
    fn a_jwt_access_claim_decides_pull() {
        let granted =
            jwt(r#"{"access":[{"type":"repository","name":"team/app","actions":["pull"]}]}"#);
        assert_eq!(jwt_grants_pull(&granted, "team/app"), Some(true));
        assert_eq!(jwt_grants_pull(&granted, "team/other"), Some(false));
        // Docker Hub's answer for a private repository and no credentials.
        let empty = jwt(r#"{"access":[]}"#);
        assert_eq!(jwt_grants_pull(&empty, "team/app"), Some(false));
        let push_only =
            jwt(r#"{"access":[{"type":"repository","name":"team/app","actions":["push"]}]}"#);
        assert_eq!(jwt_grants_pull(&push_only, "team/app"), Some(false));
        assert_eq!(jwt_grants_pull(&jwt(r#"{"sub":"x"}"#), "team/app"), None);
        assert_eq!(jwt_grants_pull("opaque-token", "team/app"), None);
        assert_eq!(jwt_grants_pull("a.b.c.d", "team/app"), None);
    }
}
