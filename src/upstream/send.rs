//! One logical request to an upstream: authenticated, redirects followed by
//! hand (each target checked, `Authorization` never carried across hosts), a
//! 401 answered once per host, the final status classified, a 429 turned into
//! a shared back-off, and bodies read within the idle timeout and a size limit.

use super::authorize::Auth;
use super::{auth, Result, Upstream, UpstreamError};
use crate::config::authority;
use crate::oci::RepoName;
use auth::Challenge;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use url::Url;

/// Longest a 429 without `Retry-After` holds requests back.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);
/// Longest `Retry-After` honoured, so a bogus value cannot stop a cache for hours.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);
const MAX_REDIRECTS: usize = 10;

impl Upstream {
    /// Reads a whole (small) body, refusing more than `limit` bytes.
    pub(super) async fn read_limited(
        &self,
        mut resp: reqwest::Response,
        limit: usize,
    ) -> Result<Bytes> {
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
    pub(super) async fn send(
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

    pub(super) async fn send_once(
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
    pub(super) async fn exchange(
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

    pub(super) fn classify(&self, resp: reqwest::Response) -> Result<reqwest::Response> {
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

    pub(super) fn check_backoff(&self) -> Result<()> {
        let until = self.blocked_until_ms.load(Ordering::Relaxed);
        let now = self.clock.now_ms();
        if now < until {
            return Err(UpstreamError::RateLimited {
                retry_after: Duration::from_millis(until - now),
            });
        }
        Ok(())
    }

    pub(super) fn url_for(&self, path: &str) -> Result<Url> {
        let config = self.config();
        let base = config.url.as_str().trim_end_matches('/');
        Url::parse(&format!("{base}{path}"))
            .map_err(|e| UpstreamError::Invalid(format!("cannot build upstream URL: {e}")))
    }
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::HEAD => "HEAD",
        Method::GET => "GET",
        _ => "OTHER",
    }
}

pub(super) fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
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
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
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
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("30", 0), Some(Duration::from_secs(30)));
        let now = 1_700_000_000_000;
        let date =
            httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_millis(now + 10_000));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(10)));
        assert_eq!(parse_retry_after("soon", 0), None);
    }
}
