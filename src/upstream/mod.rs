//! Talking to upstream registries: one [`Upstream`] client per configured registry,
//! and the [`Router`] that picks one for each request.
//!
//! The client handles what every real registry needs: bearer-token auth (tokens
//! cached per realm and scope until `expires_in`), Basic auth, redirects to CDN
//! hosts (followed by hand so `Authorization` never crosses hosts and a target's
//! own challenge is answered), the full manifest `Accept` list, timeouts, and a
//! shared back-off after a 429 so client retries do not become upstream retries.
//! Upstream challenges and tokens never leave this module.
//!
//! Here: the registry calls. [`send`] carries one logical request (redirects,
//! 401s, status, back-off); [`authorize`] decides its `Authorization`.

mod access;
pub mod auth;
mod authorize;
mod destinations;
mod router;
pub(crate) mod send;
mod tokens;

use authorize::{basic, sensitive};
use send::header_str;

pub use access::Access;

pub use router::{RouteError, Router, Target};

use crate::clock::Clock;
use crate::config::{authority, Timeouts, UpstreamConfig};
use crate::metrics::Metrics;
use crate::oci::media::{MAX_MANIFEST_BYTES, UPSTREAM_MANIFEST_ACCEPT};
use crate::oci::{Digest, RepoName};
use auth::Challenge;
use bytes::Bytes;
use http::header;
use http::{Method, StatusCode};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Why an upstream request did not produce what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// 404.
    #[error("not found upstream")]
    NotFound,
    /// 401/403 even after authenticating: Docker Hub's answer for an unknown or
    /// private repository.
    #[error("upstream denied access")]
    Unauthorized,
    /// 429, or held back after one.
    #[error("upstream rate limit (retry after {retry_after:?})")]
    RateLimited {
        /// How long upstream asked to wait.
        retry_after: Duration,
    },
    /// Any other unexpected status.
    #[error("upstream answered {0}")]
    Status(StatusCode),
    /// No response: connection refused, reset, TLS failure.
    #[error("upstream unreachable: {0}")]
    Transport(String),
    /// No response headers within the response timeout, or a body gone silent.
    #[error("upstream timed out")]
    Timeout,
    /// Upstream answered, but with something unusable (oversized, wrong digest…).
    #[error("upstream sent an invalid response: {0}")]
    Invalid(String),
}

impl UpstreamError {
    /// Failures of upstream itself, as opposed to answers about the content:
    /// these allow a stale cached answer to be served.
    pub fn is_outage(&self) -> bool {
        match self {
            UpstreamError::RateLimited { .. }
            | UpstreamError::Transport(_)
            | UpstreamError::Timeout => true,
            UpstreamError::Status(s) => s.is_server_error() || *s == StatusCode::REQUEST_TIMEOUT,
            _ => false,
        }
    }
}

type Result<T> = std::result::Result<T, UpstreamError>;

/// What a manifest `HEAD` tells.
#[derive(Clone, Debug)]
pub struct ManifestHead {
    /// `Docker-Content-Digest`.
    pub digest: Option<Digest>,
    /// `Content-Type`.
    pub media_type: Option<String>,
    /// `Content-Length`.
    pub size: Option<u64>,
}

/// A manifest body as upstream sent it.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    /// The exact bytes.
    pub body: Bytes,
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// `Docker-Content-Digest`.
    pub digest_header: Option<Digest>,
}

/// A blob response, positioned at the offset asked for.
pub struct BlobResponse {
    /// The response, its body not yet read.
    pub response: reqwest::Response,
    /// The blob's full size, when upstream says.
    pub total: Option<u64>,
}

/// A client for one upstream registry.
pub struct Upstream {
    /// Its configured name (fixed for the process's life).
    name: String,
    /// What it was configured with; freshness rules, credentials and events
    /// can be replaced while running (SIGHUP).
    config: RwLock<Arc<UpstreamConfig>>,
    http: reqwest::Client,
    timeouts: Timeouts,
    metrics: Arc<Metrics>,
    clock: Clock,
    /// How each host asked to be authenticated, learned from its 401s, so later
    /// requests for new repositories fetch a token without a 401 round trip.
    challenges: Mutex<HashMap<String, Challenge>>,
    /// Bearer tokens by (realm, scope), bounded.
    tokens: tokens::Tokens,
    /// Where redirects and token realms may send the client.
    destinations: destinations::Destinations,
    /// One token fetch at a time per upstream; the others find it cached.
    token_fetch: tokio::sync::Mutex<()>,
    /// After a 429, no request is sent before this instant (unix ms).
    blocked_until_ms: AtomicU64,
    /// A client's view ([`Upstream::for_client`]): fetched with that client's
    /// own credentials, which no other replica has.
    client_view: bool,
}

impl Upstream {
    /// A client for one upstream; builds its HTTP client.
    pub fn new(
        config: UpstreamConfig,
        timeouts: Timeouts,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> std::result::Result<Upstream, reqwest::Error> {
        let destinations = destinations::Destinations::for_upstream(&config.url);
        let mut http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(destinations.resolver())
            .connect_timeout(timeouts.connect)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")));
        // The configuration already parsed these files: they cannot fail here.
        if let Some(pem) = &config.tls.ca_pem {
            for ca in reqwest::Certificate::from_pem_bundle(pem)? {
                http = http.add_root_certificate(ca);
            }
        }
        if let Some(pem) = &config.tls.identity_pem {
            http = http.identity(reqwest::Identity::from_pem(pem)?);
        }
        let http = http.build()?;
        Ok(Upstream {
            name: config.name.clone(),
            config: RwLock::new(Arc::new(config)),
            http,
            timeouts,
            metrics,
            clock,
            challenges: Mutex::new(HashMap::new()),
            tokens: tokens::Tokens::default(),
            destinations,
            token_fetch: tokio::sync::Mutex::new(()),
            blocked_until_ms: AtomicU64::new(0),
            client_view: false,
        })
    }

    /// The same upstream as one client sees it, for pass-through credentials:
    /// it authenticates with `credentials` (the client's) and keeps tokens of
    /// its own, so one client's token is never sent for another. It shares the
    /// HTTP connections and what hosts asked for.
    pub fn for_client(&self, credentials: crate::config::Credentials) -> Upstream {
        let mut config = (*self.config()).clone();
        config.credentials = Some(credentials);
        Upstream {
            name: self.name.clone(),
            config: RwLock::new(Arc::new(config)),
            http: self.http.clone(),
            timeouts: self.timeouts,
            metrics: self.metrics.clone(),
            clock: self.clock.clone(),
            challenges: Mutex::new(self.challenges.lock().clone()),
            tokens: tokens::Tokens::default(),
            destinations: self.destinations.clone(),
            token_fetch: tokio::sync::Mutex::new(()),
            blocked_until_ms: AtomicU64::new(self.blocked_until_ms.load(Ordering::Relaxed)),
            client_view: true,
        }
    }

    /// Whether this is a client's view, fetched with that client's own
    /// credentials: only the replica the client asked can fetch it.
    pub fn is_client_view(&self) -> bool {
        self.client_view
    }

    /// The upstream's configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What it is configured with now.
    pub fn config(&self) -> Arc<UpstreamConfig> {
        self.config.read().clone()
    }

    /// Takes a new configuration for the settings that can change while
    /// running (freshness policy, credentials, events), and says what changed;
    /// changes that need a restart (URL, aliases, `library_prefix`) are
    /// refused with the reason.
    pub fn reconfigure(&self, new: &UpstreamConfig) -> std::result::Result<Vec<String>, String> {
        let old = self.config();
        if new.url != old.url
            || new.aliases != old.aliases
            || new.library_prefix != old.library_prefix
            || new.tls.ca_pem != old.tls.ca_pem
            || new.tls.identity_pem != old.tls.identity_pem
        {
            return Err(format!(
                "upstream {:?}: a changed url, aliases, library_prefix or TLS file needs a restart",
                self.name
            ));
        }
        let mut changed = Vec::new();
        if format!("{:?}", new.policy) != format!("{:?}", old.policy) {
            changed.push(format!("upstream {:?}: freshness policy", self.name));
        }
        let creds = |c: &Option<crate::config::Credentials>| {
            c.as_ref().map(|c| (c.username.clone(), c.password.clone()))
        };
        if creds(&new.credentials) != creds(&old.credentials) {
            changed.push(format!("upstream {:?}: credentials", self.name));
            // Tokens were issued to the old credentials.
            self.tokens.clear();
        }
        let events = |e: &Option<crate::config::upstream::EventsConfig>| {
            e.as_ref()
                .map(|e| (e.secret.clone(), format!("{:?}", e.prewarm)))
        };
        if events(&new.events) != events(&old.events) {
            changed.push(format!("upstream {:?}: events", self.name));
        }
        if new.access != old.access {
            changed.push(format!("upstream {:?}: access", self.name));
        }
        *self.config.write() = Arc::new(new.clone());
        Ok(changed)
    }

    /// Idle timeout for reading a body chunk.
    pub fn idle_timeout(&self) -> Duration {
        self.timeouts.idle
    }

    /// What a tag or digest resolves to, from a `HEAD` (full `Accept` list).
    pub async fn head_manifest(&self, repo: &RepoName, reference: &str) -> Result<ManifestHead> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let resp = self
            .send(
                Method::HEAD,
                &path,
                repo,
                Some(UPSTREAM_MANIFEST_ACCEPT),
                None,
            )
            .await?;
        let h = resp.headers();
        Ok(ManifestHead {
            digest: header_str(h, "docker-content-digest").and_then(|d| d.parse().ok()),
            media_type: header_str(h, header::CONTENT_TYPE.as_str()).map(str::to_owned),
            size: header_str(h, header::CONTENT_LENGTH.as_str()).and_then(|l| l.parse().ok()),
        })
    }

    /// A manifest by tag or digest, read whole (at most 4 MiB).
    pub async fn get_manifest(&self, repo: &RepoName, reference: &str) -> Result<FetchedManifest> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let resp = self
            .send(
                Method::GET,
                &path,
                repo,
                Some(UPSTREAM_MANIFEST_ACCEPT),
                None,
            )
            .await?;
        let h = resp.headers();
        let content_type = header_str(h, header::CONTENT_TYPE.as_str()).map(str::to_owned);
        let digest_header = header_str(h, "docker-content-digest").and_then(|d| d.parse().ok());
        let body = self.read_limited(resp, MAX_MANIFEST_BYTES).await?;
        Ok(FetchedManifest {
            body,
            content_type,
            digest_header,
        })
    }

    /// The size of a blob, from a `HEAD`.
    pub async fn head_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let resp = self.send(Method::HEAD, &path, repo, None, None).await?;
        Ok(
            header_str(resp.headers(), header::CONTENT_LENGTH.as_str())
                .and_then(|l| l.parse().ok()),
        )
    }

    /// `GET`s a blob from `offset`. A non-zero offset is a resume: only a 206 whose
    /// `Content-Range` starts exactly there is accepted, never a 200 from byte 0.
    pub async fn get_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        offset: u64,
    ) -> Result<BlobResponse> {
        let path = format!("/v2/{repo}/blobs/{digest}");
        let resp = self
            .send(
                Method::GET,
                &path,
                repo,
                None,
                (offset > 0).then_some(offset),
            )
            .await?;
        if offset == 0 {
            let total = resp.content_length();
            return Ok(BlobResponse {
                response: resp,
                total,
            });
        }
        if resp.status() != StatusCode::PARTIAL_CONTENT {
            return Err(UpstreamError::Invalid(format!(
                "resume at {offset} answered {} instead of 206",
                resp.status()
            )));
        }
        let range = header_str(resp.headers(), header::CONTENT_RANGE.as_str()).unwrap_or("");
        match parse_content_range(range) {
            Some((start, total)) if start == offset => Ok(BlobResponse {
                response: resp,
                total,
            }),
            _ => Err(UpstreamError::Invalid(format!(
                "resume at {offset} answered Content-Range {range:?}"
            ))),
        }
    }

    /// A page of `tags/list`: the body and upstream's `Link` header.
    pub async fn tags_list(
        &self,
        repo: &RepoName,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<(Bytes, Option<String>)> {
        let q = {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            if let Some(n) = n {
                q.append_pair("n", &n.to_string());
            }
            if let Some(last) = last {
                q.append_pair("last", last);
            }
            q.finish()
        };
        let path = if q.is_empty() {
            format!("/v2/{repo}/tags/list")
        } else {
            format!("/v2/{repo}/tags/list?{q}")
        };
        let resp = self.send(Method::GET, &path, repo, None, None).await?;
        let link = header_str(resp.headers(), header::LINK.as_str()).map(str::to_owned);
        Ok((self.read_limited(resp, MAX_MANIFEST_BYTES).await?, link))
    }

    /// The referrers index for `digest`, or `None` when upstream has no referrers API.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Option<(Bytes, bool)>> {
        let mut path = format!("/v2/{repo}/referrers/{digest}");
        if let Some(t) = artifact_type {
            let q = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("artifactType", t)
                .finish();
            path = format!("{path}?{q}");
        }
        match self.send(Method::GET, &path, repo, None, None).await {
            Ok(resp) => {
                let filtered = resp.headers().contains_key("oci-filters-applied");
                Ok(Some((
                    self.read_limited(resp, MAX_MANIFEST_BYTES).await?,
                    filtered,
                )))
            }
            Err(UpstreamError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// `bytes START-END/TOTAL` → (START, TOTAL if not `*`).
pub(crate) fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start.trim().parse().ok()?, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, Some(200)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("bytes */200"), None);
        assert_eq!(parse_content_range(""), None);
    }

    #[test]
    fn outages_are_the_failures_that_allow_stale_answers() {
        assert!(UpstreamError::Status(StatusCode::BAD_GATEWAY).is_outage());
        assert!(UpstreamError::Timeout.is_outage());
        assert!(UpstreamError::RateLimited {
            retry_after: Duration::ZERO
        }
        .is_outage());
        assert!(!UpstreamError::NotFound.is_outage());
        assert!(!UpstreamError::Unauthorized.is_outage());
    }
}
