//! Talking to upstream registries: one [`Upstream`] client per configured registry,
//! and the [`Router`] that picks one for each request.
//!
//! The client handles what every real registry needs: bearer-token auth (tokens
//! cached per realm and scope until `expires_in`), Basic auth, redirects to CDN
//! hosts (followed by hand so `Authorization` never crosses hosts and a target's
//! own challenge is answered), the full manifest `Accept` list, timeouts, and a
//! shared back-off after a 429 so client retries do not become upstream retries.
//! Upstream challenges and tokens never leave this module.

mod access;
pub mod auth;
mod destinations;
mod router;
mod tokens;

pub use access::Access;

pub use router::{RouteError, Router, Target};

use crate::clock::Clock;
use crate::config::{authority, Timeouts, UpstreamConfig};
use crate::metrics::Metrics;
use crate::oci::media::{MAX_MANIFEST_BYTES, UPSTREAM_MANIFEST_ACCEPT};
use crate::oci::{Digest, RepoName};
use auth::{Challenge, TokenResponse};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use url::Url;

/// Longest a 429 without `Retry-After` holds requests back.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);
/// Longest `Retry-After` honoured, so a bogus value cannot stop a cache for hours.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);
const MAX_REDIRECTS: usize = 10;
/// Hosts whose authentication challenge is remembered (the registry, its CDNs).
const MAX_HOSTS: usize = 64;

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

/// What to send as `Authorization` to one host.
enum Auth {
    None,
    /// The header, and the bearer token in it (to recognise it if refused).
    Header(HeaderValue, Option<String>),
    /// The host wants a bearer token we do not hold for this scope yet.
    NeedToken(Challenge),
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
        }
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

    /// Reads a whole (small) body, refusing more than `limit` bytes.
    async fn read_limited(&self, mut resp: reqwest::Response, limit: usize) -> Result<Bytes> {
        if resp.content_length().is_some_and(|l| l > limit as u64) {
            return Err(UpstreamError::Invalid(format!(
                "body larger than {limit} bytes"
            )));
        }
        let mut buf = BytesMut::new();
        while let Some(chunk) = self.next_chunk(&mut resp).await? {
            if buf.len() + chunk.len() > limit {
                return Err(UpstreamError::Invalid(format!(
                    "body larger than {limit} bytes"
                )));
            }
            buf.extend_from_slice(&chunk);
        }
        self.metrics.bytes_fetched.inc_by(buf.len() as u64);
        Ok(buf.freeze())
    }

    /// The next body chunk, or `None` at the end; bounded by the idle timeout.
    pub async fn next_chunk(&self, resp: &mut reqwest::Response) -> Result<Option<Bytes>> {
        match tokio::time::timeout(self.timeouts.idle, resp.chunk()).await {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(Err(e)) => Err(UpstreamError::Transport(error_chain(&e))),
            Ok(Ok(c)) => Ok(c),
        }
    }

    /// Sends one logical request: authenticates, follows redirects, and
    /// classifies the final status. Only 2xx answers are returned as `Ok`.
    async fn send(
        &self,
        method: Method,
        path: &str,
        repo: &RepoName,
        accept: Option<&str>,
        range_from: Option<u64>,
    ) -> Result<reqwest::Response> {
        self.check_backoff()?;
        let scope = format!("repository:{repo}:pull");
        let mut url = self.url_for(path)?;
        let upstream_host = authority(&self.config().url);
        let mut reauthenticated = Vec::<String>::new();
        let mut redirects = 0;
        loop {
            let host = authority(&url);
            let (auth, sent_token) = match self.authorization(&host, &scope, &upstream_host) {
                Auth::Header(value, token) => (Some(value), token),
                Auth::NeedToken(challenge) => {
                    self.fetch_token(&challenge, &scope, host == upstream_host, None)
                        .await?;
                    match self.authorization(&host, &scope, &upstream_host) {
                        Auth::Header(value, token) => (Some(value), token),
                        _ => (None, None),
                    }
                }
                Auth::None => (None, None),
            };
            let resp = self
                .send_once(&method, &url, accept, range_from, auth)
                .await?;
            let status = resp.status();
            if status.is_redirection() {
                let Some(location) = header_str(resp.headers(), header::LOCATION.as_str()) else {
                    return Err(UpstreamError::Invalid(format!("{status} without Location")));
                };
                redirects += 1;
                if redirects > MAX_REDIRECTS {
                    return Err(UpstreamError::Invalid("too many redirects".into()));
                }
                url = url
                    .join(location)
                    .map_err(|_| UpstreamError::Invalid("unparseable redirect Location".into()))?;
                self.destinations
                    .check(&url)
                    .map_err(|why| UpstreamError::Invalid(format!("redirect {why}")))?;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED && !reauthenticated.contains(&host) {
                let values = resp.headers().get_all(header::WWW_AUTHENTICATE);
                let challenges =
                    auth::parse_challenges(values.iter().filter_map(|v| v.to_str().ok()));
                match auth::preferred(&challenges).cloned() {
                    Some(challenge @ Challenge::Bearer { .. }) => {
                        reauthenticated.push(host.clone());
                        self.remember_challenge(&host, challenge.clone());
                        self.fetch_token(&challenge, &scope, host == upstream_host, sent_token)
                            .await?;
                        continue;
                    }
                    Some(Challenge::Basic)
                        if self.config().credentials.is_some() && host == upstream_host =>
                    {
                        reauthenticated.push(host.clone());
                        self.remember_challenge(&host, Challenge::Basic);
                        continue;
                    }
                    _ => return Err(UpstreamError::Unauthorized),
                }
            }
            return self.classify(resp);
        }
    }

    async fn send_once(
        &self,
        method: &Method,
        url: &Url,
        accept: Option<&str>,
        range_from: Option<u64>,
        authorization: Option<HeaderValue>,
    ) -> Result<reqwest::Response> {
        let mut req = self.http.request(method.clone(), url.clone());
        if let Some(a) = accept {
            req = req.header(header::ACCEPT, a);
        }
        if let Some(from) = range_from {
            req = req.header(header::RANGE, format!("bytes={from}-"));
        }
        if let Some(auth) = authorization {
            req = req.header(header::AUTHORIZATION, auth);
        }
        self.exchange(req, method_label(method)).await
    }

    /// Sends one HTTP request with the response timeout, counting it (with its
    /// latency) in the upstream metrics under `method`.
    async fn exchange(
        &self,
        req: reqwest::RequestBuilder,
        method: &'static str,
    ) -> Result<reqwest::Response> {
        let started = Instant::now();
        let sent = tokio::time::timeout(self.timeouts.response, req.send()).await;
        let status = match &sent {
            Ok(Ok(resp)) => Some(resp.status().as_u16()),
            _ => None,
        };
        self.metrics
            .upstream_request(self.name(), method, status, started.elapsed());
        match sent {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(Err(e)) => {
                tracing::debug!(upstream = self.name(), error = %error_chain(&e), "upstream request failed");
                Err(UpstreamError::Transport(error_chain(&e)))
            }
            Ok(Ok(resp)) => {
                if let Some(rem) = header_str(resp.headers(), "ratelimit-remaining")
                    .and_then(|v| v.split(';').next())
                    .and_then(|v| v.trim().parse().ok())
                {
                    self.metrics.ratelimit_remaining(self.name(), rem);
                }
                Ok(resp)
            }
        }
    }

    fn classify(&self, resp: reqwest::Response) -> Result<reqwest::Response> {
        let status = resp.status();
        match status {
            s if s.is_success() => match header_str(resp.headers(), "content-encoding") {
                // Ferry asks for no encoding: bytes it did not ask to be
                // transformed cannot be verified against their digest.
                Some(enc) if !enc.trim().eq_ignore_ascii_case("identity") => {
                    Err(UpstreamError::Invalid(format!(
                        "upstream sent Content-Encoding {enc:?}, which was not asked for"
                    )))
                }
                _ => Ok(resp),
            },
            StatusCode::NOT_FOUND => Err(UpstreamError::NotFound),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(UpstreamError::Unauthorized),
            StatusCode::TOO_MANY_REQUESTS => {
                let retry_after = header_str(resp.headers(), header::RETRY_AFTER.as_str())
                    .and_then(|v| parse_retry_after(v, self.clock.now_ms()))
                    .unwrap_or(DEFAULT_RETRY_AFTER)
                    .min(MAX_RETRY_AFTER);
                let until = self.clock.now_ms() + retry_after.as_millis() as u64;
                self.blocked_until_ms.fetch_max(until, Ordering::Relaxed);
                tracing::warn!(
                    upstream = self.name(),
                    ?retry_after,
                    "upstream rate limit; holding requests back"
                );
                Err(UpstreamError::RateLimited { retry_after })
            }
            s => Err(UpstreamError::Status(s)),
        }
    }

    fn check_backoff(&self) -> Result<()> {
        let until = self.blocked_until_ms.load(Ordering::Relaxed);
        let now = self.clock.now_ms();
        if now < until {
            return Err(UpstreamError::RateLimited {
                retry_after: Duration::from_millis(until - now),
            });
        }
        Ok(())
    }

    fn url_for(&self, path: &str) -> Result<Url> {
        let config = self.config();
        let base = config.url.as_str().trim_end_matches('/');
        Url::parse(&format!("{base}{path}"))
            .map_err(|e| UpstreamError::Invalid(format!("cannot build upstream URL: {e}")))
    }

    /// Remembers how `host` asked to be authenticated. Bounded: past
    /// [`MAX_HOSTS`] the others are forgotten (each costs one more 401 round trip).
    fn remember_challenge(&self, host: &str, challenge: Challenge) {
        let mut map = self.challenges.lock();
        if map.len() >= MAX_HOSTS && !map.contains_key(host) {
            map.clear();
        }
        map.insert(host.to_string(), challenge);
    }

    /// The `Authorization` to send to `host`: a cached bearer token if the host
    /// asked for one, Basic credentials if the upstream's own host asked for
    /// them, else nothing (so nothing crosses to a redirect target uninvited).
    fn authorization(&self, host: &str, scope: &str, upstream_host: &str) -> Auth {
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
    async fn fetch_token(
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
}

impl Upstream {
    /// The token endpoint `realm` for `scope`, if the realm may be asked at all
    /// (see [`destinations`]).
    fn token_url(&self, realm: &str, service: Option<&str>, scope: &str) -> Result<Url> {
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

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::HEAD => "HEAD",
        Method::GET => "GET",
        _ => "OTHER",
    }
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn sensitive(s: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(s).ok()?;
    v.set_sensitive(true);
    Some(v)
}

fn basic(user: &str, password: &str) -> Option<HeaderValue> {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    sensitive(&format!("Basic {encoded}"))
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

/// `Retry-After` as seconds or an HTTP date.
pub(crate) fn parse_retry_after(v: &str, now_ms: u64) -> Option<Duration> {
    if let Ok(secs) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v.trim()).ok()?;
    let when_ms = when.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as u64;
    Some(Duration::from_millis(when_ms.saturating_sub(now_ms)))
}

/// An error with its causes, for logs (reqwest's top-level message hides the cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
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
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("30", 0), Some(Duration::from_secs(30)));
        let now = 1_700_000_000_000;
        let date =
            httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_millis(now + 10_000));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(10)));
        assert_eq!(parse_retry_after("soon", 0), None);
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
