//! Replicas that act as one cache (`[cluster]`): every cold key (a blob
//! digest, a manifest digest, a tag) has one owner among the live members,
//! chosen by rendezvous hashing ([`ring`]) over the member view
//! ([`members`]). A replica that misses asks the owner over the ordinary pull
//! API with the `Ferry-Peer` secret; the owner reads its disk, then the
//! bucket, then upstream, and its single-flight merges every replica's
//! request into one transfer. So N replicas cost upstream what one costs.
//!
//! Rules that keep it safe without a lock service:
//! - a request from a peer is served by its receiver, never forwarded again,
//!   so no view, however split, makes a loop ([`Loop`] breaks the one cycle
//!   two in-flight fetches could make);
//! - every replica verifies what it stores: a peer is never trusted;
//! - a peer that fails a call is quarantined: its keys go to the next member
//!   (possibly this one) until it answers again.
//!
//! [`Loop`]: PeerError::Loop

pub mod members;
pub mod ring;

use crate::clock::Clock;
use crate::config::{defaults, ClusterConfig, Timeouts};
use crate::metrics::Metrics;
use crate::oci::{Digest, Tag};
use crate::upstream::Target;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use members::Members;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// The header a peer request carries: the shared secret.
pub const PEER_HEADER: HeaderName = HeaderName::from_static("ferry-peer");
/// On a peer's answer about a tag: how old (ms) its confirmation upstream is,
/// so every replica's freshness window ends with the owner's (no clock trust).
pub const AGE_HEADER: HeaderName = HeaderName::from_static("ferry-age-ms");
/// The status a replica answers when a peer's request would wait on a fetch
/// that is itself waiting on a peer: the asker fetches for itself.
pub const LOOP_STATUS: StatusCode = StatusCode::LOOP_DETECTED;

/// Who should answer a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// This replica owns it.
    Here,
    /// That member does.
    Peer(String),
}

/// Why a peer could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// The owner says the content does not exist (upstream said so to it).
    #[error("not found (the owner asked upstream)")]
    NotFound,
    /// The owner's fetch waits on a peer: fetch for yourself.
    #[error("the owner's fetch waits on a peer")]
    Loop,
    /// The peer failed (unreachable, timed out, an error answer): it is
    /// quarantined and the key goes to the next member.
    #[error("peer failed: {0}")]
    Failed(String),
    /// The peer answered, rightly, but not in a form this call can use (the
    /// whole blob for a resume's range): fetch for yourself, the peer stays in.
    #[error("peer answer unusable: {0}")]
    Unusable(String),
}

/// What asking a key's owner came to.
pub enum Asked<T> {
    /// The owner (named) answered.
    Answered(String, T),
    /// The owner says the content does not exist (upstream said so to it).
    NotFound,
    /// This replica owns the key, or no owner could answer: answer here.
    Here,
}

/// Owners asked in turn before a replica answers a key itself (each failure
/// quarantines the one asked, so the next is another member, or this one).
const MAX_OWNERS_TRIED: usize = 3;
/// How long a replica waits before asking again an owner whose own fetch was
/// waiting on a peer (that owner is usually taking over from a dead one).
const LOOP_PAUSE: Duration = Duration::from_millis(200);

/// What a request carried about its origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerAuth {
    /// No peer header: a client.
    Client,
    /// A peer, with the right secret.
    Peer,
    /// A peer header with a wrong secret: `401`.
    Refused,
}

/// A blob answer from a peer, its body not yet read.
pub struct PeerBlob {
    /// The blob's whole size, when the peer said.
    pub total: Option<u64>,
    /// The response.
    pub response: reqwest::Response,
}

/// What the owner of a tag answered.
pub struct PeerTag {
    /// The digest the tag points at.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its size.
    pub size: u64,
    /// How old the owner's upstream confirmation is.
    pub age_ms: u64,
    /// The manifest, when asked for.
    pub body: Option<Bytes>,
}

/// The cluster: the member view, the peer client and the secret.
pub struct Cluster {
    members: Arc<Members>,
    client: reqwest::Client,
    secret: String,
    /// The secret as every peer request sends it.
    secret_header: HeaderValue,
    refresh: Duration,
    /// Until a peer's response headers, and the longest silence inside its
    /// body (`[timeouts]`, as for upstreams).
    response_timeout: Duration,
    idle_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Cluster {
    /// The cluster `config` describes; peer calls share one pooled client.
    pub fn new(
        config: &ClusterConfig,
        timeouts: Timeouts,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> Result<Cluster, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(defaults::PEER_CONNECT_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()?;
        Ok(Cluster {
            members: Arc::new(Members::new(
                config.self_addr.clone(),
                config.members.clone(),
                config.quarantine,
                clock,
            )),
            client,
            secret: config.secret.clone(),
            // The configuration allows only visible ASCII in the secret.
            secret_header: HeaderValue::from_str(&config.secret).expect("validated secret"),
            refresh: config.refresh,
            response_timeout: timeouts.response,
            idle_timeout: timeouts.idle,
            metrics,
        })
    }

    /// This replica's address, as its peers know it.
    pub fn me(&self) -> &str {
        self.members.me()
    }

    /// Keeps the member view fresh (DNS members); runs until dropped.
    pub async fn keep_fresh(self: Arc<Self>) {
        let metrics = self.metrics.clone();
        self.members
            .clone()
            .keep_fresh(self.refresh, move |n| {
                metrics.cluster_members.set(n as i64);
            })
            .await
    }

    /// Who owns `key` among the live members.
    pub fn route(&self, key: &[u8]) -> Route {
        let live = self.members.live();
        match ring::owner(&live, key) {
            Some(owner) if owner != self.me() => Route::Peer(owner.to_string()),
            _ => Route::Here,
        }
    }

    /// Whether a request from `origin` for `key` would be asked of another
    /// replica now (a peer's never is). Flights are kept apart by this, so a
    /// peer's request never waits on one that waits on a peer, and the owner's
    /// own clients share its peers' flight.
    pub fn forwards(cluster: Option<&Arc<Cluster>>, forwarding_origin: bool, key: &[u8]) -> bool {
        forwarding_origin && cluster.is_some_and(|c| c.route(key) != Route::Here)
    }

    /// Asks `key`'s owner with `call`, and the next owner when one fails
    /// ([`PeerError::Failed`], at any point of the call: it is quarantined
    /// here), at most
    /// [`MAX_OWNERS_TRIED`]; an owner answering [`PeerError::Loop`] is asked
    /// once more after [`LOOP_PAUSE`]. Counts the cold lookup of `kind` as
    /// `forwarded` or `local`.
    pub async fn ask_owner<T, F, Fut>(
        &self,
        key: &[u8],
        kind: &'static str,
        mut call: F,
    ) -> Asked<T>
    where
        F: FnMut(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, PeerError>>,
    {
        let mut waited = false;
        for _ in 0..MAX_OWNERS_TRIED {
            let Route::Peer(owner) = self.route(key) else {
                break;
            };
            match call(owner.clone()).await {
                Ok(answer) => {
                    self.metrics.cluster_role("forwarded", kind);
                    return Asked::Answered(owner, answer);
                }
                Err(PeerError::NotFound) => {
                    self.metrics.cluster_role("forwarded", kind);
                    return Asked::NotFound;
                }
                Err(PeerError::Loop) if !waited => {
                    waited = true;
                    tokio::time::sleep(LOOP_PAUSE).await;
                }
                Err(PeerError::Loop | PeerError::Unusable(_)) => break,
                Err(PeerError::Failed(why)) => self.failed(&owner, &why),
            }
        }
        self.metrics.cluster_role("local", kind);
        Asked::Here
    }

    /// A peer failed a call: its keys go elsewhere for a while.
    pub fn failed(&self, peer: &str, why: &str) {
        if self.members.quarantine(peer) {
            self.metrics.peer_quarantine(peer);
            tracing::warn!(peer, "peer quarantined: {why}");
        }
    }

    /// Whether `headers` come from a peer that knows the secret.
    pub fn auth(&self, headers: &HeaderMap) -> PeerAuth {
        match headers.get(PEER_HEADER) {
            None => PeerAuth::Client,
            Some(v) if bool::from(v.as_bytes().ct_eq(self.secret.as_bytes())) => PeerAuth::Peer,
            Some(_) => PeerAuth::Refused,
        }
    }

    /// Every other known member (events and purges go to all of them).
    pub fn others(&self) -> Vec<String> {
        self.members.others()
    }

    fn url(peer: &str, target: &Target, what: &str) -> String {
        format!(
            "http://{peer}/v2/{}/{what}?ns={}",
            target.repo,
            url::form_urlencoded::byte_serialize(target.upstream.name().as_bytes())
                .collect::<String>()
        )
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, url)
            .header(PEER_HEADER, self.secret_header.clone())
    }

    /// Sends a peer request and classifies its answer (counted by `op`).
    async fn send(
        &self,
        peer: &str,
        op: &'static str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, PeerError> {
        let sent = tokio::time::timeout(self.response_timeout, req.send()).await;
        let result = match sent {
            Err(_) => Err(PeerError::Failed("no answer in time".into())),
            Ok(Err(e)) => Err(PeerError::Failed(e.to_string())),
            Ok(Ok(r)) if r.status().is_success() => Ok(r),
            Ok(Ok(r)) if r.status() == StatusCode::NOT_FOUND => Err(PeerError::NotFound),
            Ok(Ok(r)) if r.status() == LOOP_STATUS => Err(PeerError::Loop),
            Ok(Ok(r)) => Err(PeerError::Failed(format!("answered {}", r.status()))),
        };
        self.metrics.peer_request(
            peer,
            op,
            match &result {
                Ok(_) => "ok",
                Err(PeerError::NotFound) => "not_found",
                Err(PeerError::Loop) => "loop",
                Err(PeerError::Failed(_)) => "failed",
                Err(PeerError::Unusable(_)) => "unusable",
            },
        );
        result
    }

    /// The blob from `offset`, streamed from the owner as its bytes land.
    pub async fn get_blob(
        &self,
        peer: &str,
        target: &Target,
        digest: &Digest,
        offset: u64,
    ) -> Result<PeerBlob, PeerError> {
        let mut req = self.request(
            reqwest::Method::GET,
            &Self::url(peer, target, &format!("blobs/{digest}")),
        );
        if offset > 0 {
            req = req.header(http::header::RANGE, format!("bytes={offset}-"));
        }
        let response = self.send(peer, "blob", req).await?;
        let total = match (offset, response.status()) {
            (0, StatusCode::OK) => response.content_length(),
            (_, StatusCode::PARTIAL_CONTENT) => content_range_total(response.headers(), offset)
                .ok_or_else(|| PeerError::Failed("a 206 without the right Content-Range".into()))?,
            // An owner that does not know the size streams the whole blob.
            (_, StatusCode::OK) => {
                return Err(PeerError::Unusable(
                    "the whole blob, not the range asked".into(),
                ))
            }
            _ => return Err(PeerError::Failed("did not answer the range asked".into())),
        };
        Ok(PeerBlob { total, response })
    }

    /// Reads the next chunk of a peer's body (idle-timed).
    pub async fn next_chunk(
        &self,
        peer: &str,
        r: &mut reqwest::Response,
    ) -> Result<Option<Bytes>, String> {
        match tokio::time::timeout(self.idle_timeout, r.chunk()).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => {
                self.failed(peer, &e.to_string());
                Err(format!("peer {peer}: {e}"))
            }
            Err(_) => {
                self.failed(peer, "body stalled");
                Err(format!("peer {peer}: body stalled"))
            }
        }
    }

    /// The blob's size as the owner knows it (disk, bucket or upstream).
    pub async fn head_blob(
        &self,
        peer: &str,
        target: &Target,
        digest: &Digest,
    ) -> Result<Option<u64>, PeerError> {
        let req = self.request(
            reqwest::Method::HEAD,
            &Self::url(peer, target, &format!("blobs/{digest}")),
        );
        let r = self.send(peer, "blob_head", req).await?;
        Ok(r.headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()))
    }

    /// A manifest by digest from its owner: media type and bytes (unverified:
    /// the caller hashes them).
    pub async fn get_manifest(
        &self,
        peer: &str,
        target: &Target,
        digest: &Digest,
    ) -> Result<(Option<String>, Bytes), PeerError> {
        let req = self
            .request(
                reqwest::Method::GET,
                &Self::url(peer, target, &format!("manifests/{digest}")),
            )
            .header(
                http::header::ACCEPT,
                crate::oci::media::UPSTREAM_MANIFEST_ACCEPT,
            );
        let r = self.send(peer, "manifest", req).await?;
        let media_type = content_type(r.headers());
        let body = read_manifest_body(peer, r, self.idle_timeout).await;
        body.map(|b| (media_type, b)).map_err(PeerError::Failed)
    }

    /// What `tag` points at, from its owner (its cache, or one upstream
    /// revalidation it shares with everyone), with the body when `want_body`.
    pub async fn resolve_tag(
        &self,
        peer: &str,
        target: &Target,
        tag: &Tag,
        want_body: bool,
    ) -> Result<PeerTag, PeerError> {
        let method = if want_body {
            reqwest::Method::GET
        } else {
            reqwest::Method::HEAD
        };
        let req = self
            .request(
                method,
                &Self::url(peer, target, &format!("manifests/{tag}")),
            )
            .header(
                http::header::ACCEPT,
                crate::oci::media::UPSTREAM_MANIFEST_ACCEPT,
            );
        let r = self.send(peer, "tag", req).await?;
        let h = r.headers();
        let digest = h
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        let age_ms = h
            .get(AGE_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        // The header, not the body's length: a HEAD's body is empty.
        let size = h
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let media_type = content_type(h);
        let (Some(digest), Some(age_ms), Some(size), Some(media_type)) =
            (digest, age_ms, size, media_type)
        else {
            return Err(PeerError::Failed(
                "a tag answer without digest, age, length or type".into(),
            ));
        };
        let body = if want_body {
            let b = read_manifest_body(peer, r, self.idle_timeout)
                .await
                .map_err(PeerError::Failed)?;
            Some(b)
        } else {
            None
        };
        Ok(PeerTag {
            digest,
            media_type,
            size,
            age_ms,
            body,
        })
    }

    /// Sends a post (a push event, a purge) to every other member, each once,
    /// in the background; failures are logged, never retried by Ferry (event
    /// senders retry, and a missed purge is repeated by hand).
    pub fn broadcast(
        self: &Arc<Self>,
        path_and_query: String,
        headers: HeaderMap,
        body: Bytes,
        op: &'static str,
    ) {
        for peer in self.others() {
            let (this, path, headers, body) = (
                self.clone(),
                path_and_query.clone(),
                headers.clone(),
                body.clone(),
            );
            tokio::spawn(async move {
                let url = format!("http://{peer}{path}");
                let mut req = this.request(reqwest::Method::POST, &url).body(body);
                for (k, v) in headers.iter() {
                    if k != PEER_HEADER {
                        req = req.header(k, v);
                    }
                }
                if let Err(e) = this.send(&peer, op, req).await {
                    tracing::warn!(peer, op, error = %e, "could not pass it on to a peer");
                    if let PeerError::Failed(why) = e {
                        this.failed(&peer, &why);
                    }
                }
            });
        }
    }
}

fn content_type(h: &HeaderMap) -> Option<String> {
    h.get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The total of a `Content-Range: bytes <offset>-<end>/<total>` starting at
/// `offset` (`Some(None)`: the total is `*`).
fn content_range_total(h: &HeaderMap, offset: u64) -> Option<Option<u64>> {
    let v = h.get(http::header::CONTENT_RANGE)?.to_str().ok()?;
    match crate::upstream::parse_content_range(v)? {
        (start, total) if start == offset => Some(total),
        _ => None,
    }
}

/// A manifest-sized body from `peer` (at most [`MAX_MANIFEST_BYTES`]),
/// idle-timed.
///
/// [`MAX_MANIFEST_BYTES`]: crate::oci::media::MAX_MANIFEST_BYTES
async fn read_manifest_body(
    peer: &str,
    mut r: reqwest::Response,
    idle: Duration,
) -> Result<Bytes, String> {
    let cap = crate::oci::media::MAX_MANIFEST_BYTES;
    let mut buf = Vec::new();
    loop {
        match tokio::time::timeout(idle, r.chunk()).await {
            Ok(Ok(Some(c))) => {
                if buf.len() + c.len() > cap {
                    return Err(format!("peer {peer}: answer over {cap} bytes"));
                }
                buf.extend_from_slice(&c);
            }
            Ok(Ok(None)) => return Ok(Bytes::from(buf)),
            Ok(Err(e)) => return Err(format!("peer {peer}: {e}")),
            Err(_) => return Err(format!("peer {peer}: body stalled")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::cluster::Members as ConfiguredMembers;

    fn two_replicas() -> Cluster {
        let config = ClusterConfig {
            self_addr: "a:1".into(),
            members: ConfiguredMembers::Static(vec!["a:1".into(), "b:1".into()]),
            refresh: Duration::from_secs(5),
            quarantine: Duration::from_secs(10),
            secret: "a-peer-secret-for-tests".into(),
        };
        let timeouts = Timeouts {
            connect: Duration::from_secs(1),
            response: Duration::from_secs(1),
            idle: Duration::from_secs(1),
        };
        Cluster::new(&config, timeouts, Arc::new(Metrics::new()), Clock::manual()).unwrap()
    }

    /// A key `b:1` owns.
    fn owned_by_b(c: &Cluster) -> Vec<u8> {
        (0..1000u32)
            .map(|i| i.to_string().into_bytes())
            .find(|k| c.route(k) == Route::Peer("b:1".into()))
            .unwrap()
    }

    /// Asks `b:1` for a key it owns, once per call answering `error`: what
    /// it came to, how many times `b:1` was asked, and the key's route after.
    async fn ask_b_answering(error: PeerError) -> (Asked<()>, usize, Route) {
        let c = two_replicas();
        let key = owned_by_b(&c);
        let mut asked = 0;
        let got = c
            .ask_owner(&key, "blob", |_| {
                asked += 1;
                let e = error.clone();
                async { Err::<(), _>(e) }
            })
            .await;
        (got, asked, c.route(&key))
    }

    #[tokio::test]
    async fn an_unusable_answer_is_fetched_here_and_leaves_the_owner_in() {
        let (got, asked, route) = ask_b_answering(PeerError::Unusable("whole blob".into())).await;
        assert!(matches!(got, Asked::Here));
        assert_eq!(asked, 1, "not asked again");
        assert_eq!(route, Route::Peer("b:1".into()), "not quarantined");
    }

    #[tokio::test]
    async fn a_failed_owner_is_quarantined_and_its_keys_come_here() {
        let (got, asked, route) = ask_b_answering(PeerError::Failed("body stalled".into())).await;
        assert!(matches!(got, Asked::Here));
        assert_eq!(asked, 1, "quarantined after one failure");
        assert_eq!(route, Route::Here);
    }
}
