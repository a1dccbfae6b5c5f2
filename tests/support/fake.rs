//! An in-process fake upstream registry that counts every request it receives.
//!
//! Three listeners share one state: the registry itself, a token server (its
//! realm, on another port like `auth.docker.io`), and a CDN host that blob (and
//! optionally manifest) requests are redirected to. Fault switches make it
//! misbehave the ways real registries do.

use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Which listener saw a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host {
    Registry,
    Auth,
    Cdn,
}

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub host: Host,
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
}

impl Recorded {
    pub fn is_blob(&self) -> bool {
        self.path.contains("/blobs/")
    }
    pub fn is_manifest(&self) -> bool {
        self.path.contains("/manifests/")
    }
}

/// A gate that holds blob bodies at a byte offset until released.
#[derive(Clone)]
pub struct Gate {
    pub offset: usize,
    open: watch::Sender<bool>,
}

impl Gate {
    pub fn release(&self) {
        self.open.send_replace(true);
    }
}

/// Fault switches. Change them with [`FakeRegistry::faults`].
#[derive(Clone, Default)]
pub struct Faults {
    /// Blob bodies have their first byte flipped (same length).
    pub wrong_bytes: bool,
    /// Manifest bodies have a byte appended (so they no longer match their digest).
    pub wrong_manifest_bytes: bool,
    /// Every `/v2/...` request gets this status (with `Retry-After` if set).
    pub status: Option<(u16, Option<u64>)>,
    /// 401 on every registry request, even with a valid token (Hub: unknown repo).
    pub always_401: bool,
    /// The next N blob GETs drop the connection after this many bytes.
    pub drop_after: Option<(usize, usize)>,
    /// Blob GETs ignore `Range` and answer 200 from byte 0.
    pub ignore_range: bool,
    /// Blob bodies are sent in chunks of this size with this pause between.
    pub throttle: Option<(usize, Duration)>,
    /// Blob bodies pause at the gate's offset until it is released.
    pub gate: Option<Gate>,
    /// Manifest `HEAD`s carry no `Docker-Content-Digest`.
    pub head_without_digest: bool,
    /// `/referrers/` answers 404 (no referrers API).
    pub no_referrers_api: bool,
    /// Blob `GET`s are sent with chunked encoding and blob `HEAD`s carry no
    /// `Content-Length`.
    pub chunked_blobs: bool,
    /// Every registry answer waits this long first (so concurrent requests overlap).
    pub delay: Option<Duration>,
}

/// How the registry authenticates clients.
#[derive(Clone, Debug, Default)]
pub enum Auth {
    #[default]
    None,
    /// Bearer tokens from the auth listener; tokens live `expires_in` seconds
    /// (`None`: the field is left out). `basic`: the token server requires these.
    Bearer {
        expires_in: Option<u64>,
        basic: Option<(String, String)>,
        /// Answer with `access_token` only, no `token`.
        access_token_only: bool,
        /// Challenge in Quay's form: `Basic realm=…, Bearer realm=…` in one header.
        quay_style: bool,
    },
    /// Basic auth on the registry itself.
    Basic(String, String),
    /// A private registry with per-repository rights (see [`Acl`]); content
    /// is served only in the repository it was added to.
    Acl(Acl),
}

impl Auth {
    /// Docker Hub's kind: anonymous Bearer tokens from the auth listener that
    /// live `expires_in` seconds (`None`: the token answer leaves it out).
    pub fn bearer(expires_in: Option<u64>) -> Auth {
        Auth::Bearer {
            expires_in,
            basic: None,
            access_token_only: false,
            quay_style: false,
        }
    }
}

/// Who may pull what: as a Bearer registry (Docker Hub-like: the token server
/// issues a token to any valid credentials, holding only the rights they
/// have) or a Basic one (the registry itself answers 401 to bad credentials
/// and 403 to a repository the user may not pull).
#[derive(Clone, Debug, Default)]
pub struct Acl {
    pub bearer: bool,
    /// (user, password, repositories it may pull).
    pub users: Vec<(String, String, Vec<String>)>,
    /// Repositories anyone may pull, without credentials.
    pub public: Vec<String>,
}

impl Acl {
    /// `None`: the credentials are wrong; else whether they may pull `repo`.
    fn may_pull(&self, authorization: Option<&str>, repo: &str) -> Option<bool> {
        let public = self.public.iter().any(|r| r == repo);
        let Some(given) = authorization else {
            return Some(public);
        };
        let user = self.users.iter().find(|(u, p, _)| given == basic(u, p))?;
        Some(public || user.2.iter().any(|r| r == repo))
    }
}

#[derive(Default)]
struct Content {
    /// (repo, tag) → manifest digest.
    tags: BTreeMap<(String, String), String>,
    /// digest → (media type, body).
    manifests: HashMap<String, (String, Bytes)>,
    /// digest → body.
    blobs: HashMap<String, Bytes>,
    /// subject digest → referrers index body.
    referrers: HashMap<String, Bytes>,
    /// (repository, digest) of everything added in a repository.
    links: std::collections::HashSet<(String, String)>,
}

struct State {
    content: Mutex<Content>,
    requests: Mutex<Vec<Recorded>>,
    faults: Mutex<Faults>,
    auth: Mutex<Auth>,
    tokens_issued: AtomicUsize,
    /// Valid tokens and the scope each was issued for.
    tokens: Mutex<HashMap<String, String>>,
    /// [`Auth::Acl`]: who each token was issued to (`None`: anonymous).
    token_users: Mutex<HashMap<String, Option<String>>>,
    redirect_blobs: AtomicBool,
    redirect_manifests: AtomicBool,
    /// The CDN host demands a Bearer token of its own (service `fake-cdn`).
    cdn_auth: AtomicBool,
    /// Tokens issued for the CDN's service.
    cdn_tokens: Mutex<std::collections::HashSet<String>>,
    /// Blob bodies fully sent (for "first byte before upstream completes").
    blob_bodies_completed: AtomicUsize,
    addrs: Mutex<HashMap<&'static str, SocketAddr>>,
    up: watch::Sender<bool>,
}

/// The fake registry. Dropping it stops its listeners and connections, and
/// fails the test if any of them panicked.
pub struct FakeRegistry {
    state: Arc<State>,
    pub addr: SocketAddr,
    pub auth_addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Tasks,
}

/// Every task the fake runs (its accept loops and each connection they
/// serve), kept rather than detached so that a panic in one is not lost.
type Tasks = Arc<Mutex<JoinSet<()>>>;

pub fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

impl FakeRegistry {
    pub async fn start() -> FakeRegistry {
        let (stop, stop_rx) = watch::channel(false);
        let (up, _) = watch::channel(true);
        let state = Arc::new(State {
            content: Mutex::default(),
            requests: Mutex::default(),
            faults: Mutex::default(),
            auth: Mutex::default(),
            tokens_issued: AtomicUsize::new(0),
            tokens: Mutex::default(),
            token_users: Mutex::default(),
            redirect_blobs: AtomicBool::new(false),
            redirect_manifests: AtomicBool::new(false),
            cdn_auth: AtomicBool::new(false),
            cdn_tokens: Mutex::default(),
            blob_bodies_completed: AtomicUsize::new(0),
            addrs: Mutex::default(),
            up,
        });
        let tasks = Tasks::default();
        let mut addrs = Vec::new();
        for (name, host) in [
            ("registry", Host::Registry),
            ("auth", Host::Auth),
            ("cdn", Host::Cdn),
        ] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            state.addrs.lock().unwrap().insert(name, addr);
            addrs.push(addr);
            let serving = serve(
                listener,
                state.clone(),
                host,
                stop_rx.clone(),
                tasks.clone(),
            );
            tasks.lock().unwrap().spawn(serving);
        }
        FakeRegistry {
            state,
            addr: addrs[0],
            auth_addr: addrs[1],
            stop,
            tasks,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `host:port` of the registry, the `ns` containerd would send.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    pub fn add_blob(&self, bytes: impl Into<Bytes>) -> String {
        let bytes = bytes.into();
        let d = sha256(&bytes);
        self.state
            .content
            .lock()
            .unwrap()
            .blobs
            .insert(d.clone(), bytes);
        d
    }

    /// The size of a stored manifest.
    pub fn manifest_size(&self, digest: &str) -> usize {
        self.state.content.lock().unwrap().manifests[digest].1.len()
    }

    /// A blob pushed to `repo` alone, referenced by no manifest there.
    pub fn add_blob_in(&self, repo: &str, bytes: impl Into<Bytes>) -> String {
        let d = self.add_blob(bytes);
        let mut c = self.state.content.lock().unwrap();
        c.links.insert((repo.to_string(), d.clone()));
        d
    }

    /// Stores a manifest by digest (and under `tag`, if given); returns its digest.
    pub fn add_manifest(
        &self,
        repo: &str,
        tag: Option<&str>,
        media_type: &str,
        body: impl Into<Bytes>,
    ) -> String {
        let body = body.into();
        let d = sha256(&body);
        let mut c = self.state.content.lock().unwrap();
        c.manifests
            .insert(d.clone(), (media_type.to_string(), body));
        c.links.insert((repo.to_string(), d.clone()));
        if let Some(t) = tag {
            c.tags.insert((repo.to_string(), t.to_string()), d.clone());
        }
        d
    }

    /// An image: a config and layers as blobs, and an OCI manifest tagged `tag`.
    /// Returns (manifest digest, layer digests).
    pub fn add_image(&self, repo: &str, tag: &str, layers: &[&[u8]]) -> (String, Vec<String>) {
        let config =
            format!(r#"{{"architecture":"amd64","os":"linux","repo":"{repo}","tag":"{tag}"}}"#);
        let config_digest = self.add_blob(config.clone().into_bytes());
        let layer_digests: Vec<String> = layers.iter().map(|l| self.add_blob(l.to_vec())).collect();
        {
            let mut c = self.state.content.lock().unwrap();
            for d in std::iter::once(&config_digest).chain(&layer_digests) {
                c.links.insert((repo.to_string(), d.clone()));
            }
        }
        let layers_json: Vec<String> = layers
            .iter()
            .zip(&layer_digests)
            .map(|(l, d)| format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{}}}"#, l.len()))
            .collect();
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{}]}}"#,
            config.len(),
            layers_json.join(",")
        );
        let d = self.add_manifest(
            repo,
            Some(tag),
            "application/vnd.oci.image.manifest.v1+json",
            manifest.into_bytes(),
        );
        (d, layer_digests)
    }

    /// Points `tag` at another existing manifest digest (a tag moving upstream).
    pub fn retag(&self, repo: &str, tag: &str, digest: &str) {
        self.state
            .content
            .lock()
            .unwrap()
            .tags
            .insert((repo.to_string(), tag.to_string()), digest.to_string());
    }

    pub fn add_tag_names(&self, repo: &str, tags: &[&str], digest: &str) {
        for t in tags {
            self.retag(repo, t, digest);
        }
    }

    pub fn add_referrers(&self, subject: &str, index: impl Into<Bytes>) {
        self.state
            .content
            .lock()
            .unwrap()
            .referrers
            .insert(subject.to_string(), index.into());
    }

    pub fn faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut self.state.faults.lock().unwrap());
    }

    pub fn set_auth(&self, auth: Auth) {
        *self.state.auth.lock().unwrap() = auth;
    }

    pub fn redirect_blobs_to_cdn(&self, on: bool) {
        self.state.redirect_blobs.store(on, Ordering::SeqCst);
    }

    /// The CDN answers 401 with its own Bearer realm until given a CDN token
    /// (registry.k8s.io redirecting to Artifact Registry).
    pub fn require_cdn_auth(&self, on: bool) {
        self.state.cdn_auth.store(on, Ordering::SeqCst);
    }

    pub fn redirect_manifests_to_cdn(&self, on: bool) {
        self.state.redirect_manifests.store(on, Ordering::SeqCst);
    }

    /// Simulates an outage: every connection is refused… well, reset at once.
    pub fn set_down(&self, down: bool) {
        self.state.up.send_replace(!down);
    }

    pub fn gate(&self, offset: usize) -> Gate {
        let (open, _) = watch::channel(false);
        let gate = Gate { offset, open };
        self.faults(|f| f.gate = Some(gate.clone()));
        gate
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn clear_requests(&self) {
        self.state.requests.lock().unwrap().clear();
    }

    /// Requests to the registry host (not token or CDN) matching `method`.
    pub fn count(&self, method: &str, pred: impl Fn(&Recorded) -> bool) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.host == Host::Registry && r.method.as_str() == method && pred(r))
            .count()
    }

    /// Every request to any of the fake's hosts.
    pub fn total(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    /// [`Auth::Acl`]: the user a token was issued to (`Some(None)`: anonymously).
    pub fn token_user(&self, token: &str) -> Option<Option<String>> {
        self.state.token_users.lock().unwrap().get(token).cloned()
    }

    /// Every token the auth listener has handed out.
    pub fn issued_tokens(&self) -> Vec<String> {
        (0..self.tokens_issued())
            .map(|n| format!("tok-{n}-8c1f2e"))
            .collect()
    }

    pub fn tokens_issued(&self) -> usize {
        self.state.tokens_issued.load(Ordering::SeqCst)
    }

    pub fn blob_bodies_completed(&self) -> usize {
        self.state.blob_bodies_completed.load(Ordering::SeqCst)
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        let mut panicked = None;
        while let Some(ended) = tasks.try_join_next() {
            if let Err(e) = ended {
                if e.is_panic() && panicked.is_none() {
                    panicked = Some(e.into_panic());
                }
            }
        }
        drop(tasks); // aborts the connections still open
        if let Some(payload) = panicked {
            if !std::thread::panicking() {
                std::panic::resume_unwind(payload);
            }
        }
    }
}

async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    host: Host,
    mut stop: watch::Receiver<bool>,
    tasks: Tasks,
) {
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.changed() => return,
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
        };
        if host == Host::Registry && !*state.up.borrow() {
            drop(stream); // an outage: the connection is closed before any answer
            continue;
        }
        let state = state.clone();
        tasks.lock().unwrap().spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move {
                    // Down: kept-alive connections die too, without an answer.
                    if host == Host::Registry && !*state.up.borrow() {
                        return Err(std::io::Error::other("down"));
                    }
                    Ok::<_, std::io::Error>(handle(state, host, req).await)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn full(status: u16, body: impl Into<Bytes>) -> Response<Body> {
    let body: Bytes = body.into();
    let mut r = Response::new(
        Full::new(body.clone())
            .map_err(|n| match n {})
            .boxed_unsync(),
    );
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut().insert("content-length", body.len().into());
    r
}

fn error(status: u16, code: &str) -> Response<Body> {
    let mut r = full(
        status,
        format!(r#"{{"errors":[{{"code":"{code}","message":"fake"}}]}}"#),
    );
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

async fn handle(state: Arc<State>, host: Host, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_owned);
    state.requests.lock().unwrap().push(Recorded {
        host,
        method: req.method().clone(),
        path: path.clone(),
        query: query.clone(),
        headers: req.headers().clone(),
    });
    if host == Host::Auth {
        return token(&state, &req, query.as_deref());
    }
    let faults = state.faults.lock().unwrap().clone();
    if let Some(d) = faults.delay {
        tokio::time::sleep(d).await;
    }
    if let Some((status, retry_after)) = faults.status {
        let mut r = error(status, "FAKE_FAULT");
        if let Some(s) = retry_after {
            r.headers_mut().insert("retry-after", s.into());
        }
        return r;
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return error(404, "NOT_FOUND");
    };
    if rest.is_empty() {
        return full(200, "{}");
    }
    let (repo, kind, last) = match split(rest) {
        Some(x) => x,
        None => return error(404, "NAME_UNKNOWN"),
    };
    if host == Host::Registry {
        if let Some(resp) = check_auth(&state, &req, &repo) {
            return resp;
        }
        if faults.always_401 {
            return unauthorized_challenge(&state, &repo);
        }
        let redirect = match kind {
            "blobs" => state.redirect_blobs.load(Ordering::SeqCst),
            "manifests" => state.redirect_manifests.load(Ordering::SeqCst),
            _ => false,
        };
        if redirect {
            let cdn = state.addrs.lock().unwrap()["cdn"];
            let mut r = full(307, "");
            r.headers_mut().insert(
                "location",
                format!("http://{cdn}{path}?signed=1").parse().unwrap(),
            );
            return r;
        }
    }
    if host == Host::Cdn && state.cdn_auth.load(Ordering::SeqCst) {
        let token = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !token.is_some_and(|t| state.cdn_tokens.lock().unwrap().contains(t)) {
            let auth_addr = state.addrs.lock().unwrap()["auth"];
            let mut r = error(401, "UNAUTHORIZED");
            r.headers_mut().insert(
                "www-authenticate",
                format!(r#"Bearer realm="http://{auth_addr}/cdn-token",service="fake-cdn",scope="repository:{repo}:pull""#)
                    .parse()
                    .unwrap(),
            );
            return r;
        }
    }
    if matches!(*state.auth.lock().unwrap(), Auth::Acl(_))
        && (kind == "blobs" || (kind == "manifests" && last.contains(':')))
        && !state
            .content
            .lock()
            .unwrap()
            .links
            .contains(&(repo.clone(), last.clone()))
    {
        return error(
            404,
            if kind == "blobs" {
                "BLOB_UNKNOWN"
            } else {
                "MANIFEST_UNKNOWN"
            },
        );
    }
    match kind {
        "manifests" => manifest(&state, &faults, req.method(), &repo, &last),
        "blobs" => blob(&state, &faults, req.method(), req.headers(), &last),
        "tags" => tags(&state, &repo, query.as_deref()),
        "referrers" => {
            if faults.no_referrers_api {
                return error(404, "NOT_FOUND");
            }
            let body = state.content.lock().unwrap().referrers.get(&last).cloned();
            let body = body.unwrap_or_else(|| {
                Bytes::from_static(br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#)
            });
            let mut r = full(200, body);
            r.headers_mut().insert(
                "content-type",
                "application/vnd.oci.image.index.v1+json".parse().unwrap(),
            );
            r
        }
        _ => error(404, "NOT_FOUND"),
    }
}

fn split(rest: &str) -> Option<(String, &'static str, String)> {
    if let Some(repo) = rest.strip_suffix("/tags/list") {
        return Some((repo.to_string(), "tags", String::new()));
    }
    let (head, last) = rest.rsplit_once('/')?;
    let (repo, kind) = head.rsplit_once('/')?;
    let kind = match kind {
        "manifests" => "manifests",
        "blobs" => "blobs",
        "referrers" => "referrers",
        _ => return None,
    };
    Some((repo.to_string(), kind, last.to_string()))
}

fn unauthorized_challenge(state: &State, repo: &str) -> Response<Body> {
    let auth = state.auth.lock().unwrap().clone();
    let auth_addr = state.addrs.lock().unwrap()["auth"];
    let mut r = error(401, "UNAUTHORIZED");
    let challenge = match auth {
        Auth::Basic(..) => r#"Basic realm="fake""#.to_string(),
        Auth::Acl(Acl { bearer: false, .. }) => r#"Basic realm="fake""#.to_string(),
        Auth::Bearer {
            quay_style: true, ..
        } => format!(
            r#"Basic realm="fake", Bearer realm="http://{auth_addr}/token",service="fake-registry",scope="repository:{repo}:pull""#
        ),
        _ => format!(
            r#"Bearer realm="http://{auth_addr}/token",service="fake-registry",scope="repository:{repo}:pull""#
        ),
    };
    r.headers_mut()
        .insert("www-authenticate", challenge.parse().unwrap());
    r
}

/// `Some(401)` when the request lacks valid credentials.
fn check_auth(state: &State, req: &Request<Incoming>, repo: &str) -> Option<Response<Body>> {
    let auth = state.auth.lock().unwrap().clone();
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if let Auth::Acl(acl) = &auth {
        if acl.bearer {
            let scope = given
                .strip_prefix("Bearer ")
                .and_then(|t| state.tokens.lock().unwrap().get(t).cloned());
            let anonymous_ok = given.is_empty() && acl.public.iter().any(|r| r == repo);
            if anonymous_ok || scope.is_some_and(|s| s == format!("repository:{repo}:pull")) {
                return None;
            }
            return Some(unauthorized_challenge(state, repo));
        }
        return match acl.may_pull((!given.is_empty()).then_some(given), repo) {
            Some(true) => None,
            Some(false) if !given.is_empty() => Some(error(403, "DENIED")),
            _ => Some(unauthorized_challenge(state, repo)),
        };
    }
    let ok = match &auth {
        Auth::None | Auth::Acl(_) => true,
        Auth::Basic(u, p) => given == basic(u, p),
        Auth::Bearer { .. } => given
            .strip_prefix("Bearer ")
            .and_then(|t| state.tokens.lock().unwrap().get(t).cloned())
            .is_some_and(|scope| scope == format!("repository:{repo}:pull")),
    };
    (!ok).then(|| unauthorized_challenge(state, repo))
}

fn basic(u: &str, p: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
    )
}

fn token(state: &State, req: &Request<Incoming>, query: Option<&str>) -> Response<Body> {
    if let Auth::Acl(acl) = state.auth.lock().unwrap().clone() {
        let scope = url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .find(|(k, _)| k == "scope")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        let repo = scope
            .strip_prefix("repository:")
            .and_then(|s| s.strip_suffix(":pull"))
            .unwrap_or("");
        let given = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let Some(allowed) = acl.may_pull(given, repo) else {
            return error(401, "UNAUTHORIZED");
        };
        let n = state.tokens_issued.fetch_add(1, Ordering::SeqCst);
        let tok = format!("tok-{n}-8c1f2e");
        // Like Docker Hub: a token for anyone, carrying only the rights they have.
        let granted = if allowed { scope } else { String::new() };
        state.tokens.lock().unwrap().insert(tok.clone(), granted);
        let user = acl
            .users
            .iter()
            .find(|(u, p, _)| given == Some(basic(u, p).as_str()))
            .map(|(u, ..)| u.clone());
        state.token_users.lock().unwrap().insert(tok.clone(), user);
        return full(
            200,
            serde_json::json!({"token": tok, "expires_in": 300}).to_string(),
        );
    }
    let Auth::Bearer {
        expires_in,
        basic: creds,
        access_token_only,
        ..
    } = state.auth.lock().unwrap().clone()
    else {
        return error(404, "NO_TOKEN_SERVER");
    };
    // The CDN's realm is anonymous; the registry's may demand credentials.
    if let Some((u, p)) = creds.filter(|_| req.uri().path() != "/cdn-token") {
        let given = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if given != Some(basic(&u, &p).as_str()) {
            return error(401, "UNAUTHORIZED");
        }
    }
    let scope = url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == "scope")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let n = state.tokens_issued.fetch_add(1, Ordering::SeqCst);
    // Distinctive, so a test can search logs for any token ever issued.
    let tok = format!("tok-{n}-8c1f2e");
    if req.uri().path() == "/cdn-token" {
        state.cdn_tokens.lock().unwrap().insert(tok.clone());
    } else {
        state.tokens.lock().unwrap().insert(tok.clone(), scope);
    }
    let mut body = serde_json::json!({});
    if access_token_only {
        body["access_token"] = tok.into();
    } else {
        body["token"] = tok.into();
    }
    if let Some(e) = expires_in {
        body["expires_in"] = e.into();
    }
    full(200, body.to_string())
}

fn manifest(
    state: &State,
    faults: &Faults,
    method: &Method,
    repo: &str,
    reference: &str,
) -> Response<Body> {
    let c = state.content.lock().unwrap();
    let digest = if reference.contains(':') {
        reference.to_string()
    } else {
        match c.tags.get(&(repo.to_string(), reference.to_string())) {
            Some(d) => d.clone(),
            None => return error(404, "MANIFEST_UNKNOWN"),
        }
    };
    let Some((media_type, body)) = c.manifests.get(&digest).cloned() else {
        return error(404, "MANIFEST_UNKNOWN");
    };
    let body = if faults.wrong_manifest_bytes {
        let mut b = body.to_vec();
        b.push(b' ');
        Bytes::from(b)
    } else {
        body
    };
    let mut r = if method == Method::HEAD {
        let mut r = full(200, "");
        r.headers_mut().insert("content-length", body.len().into());
        r
    } else {
        full(200, body)
    };
    r.headers_mut()
        .insert("content-type", media_type.parse().unwrap());
    // Docker Hub's pull quota header, on every manifest answer.
    r.headers_mut()
        .insert("ratelimit-remaining", "99;w=21600".parse().unwrap());
    if !(method == Method::HEAD && faults.head_without_digest) {
        r.headers_mut()
            .insert("docker-content-digest", digest.parse().unwrap());
    }
    r
}

fn blob(
    state: &Arc<State>,
    faults: &Faults,
    method: &Method,
    headers: &HeaderMap,
    digest: &str,
) -> Response<Body> {
    let Some(bytes) = state.content.lock().unwrap().blobs.get(digest).cloned() else {
        return error(404, "BLOB_UNKNOWN");
    };
    let bytes = if faults.wrong_bytes && !bytes.is_empty() {
        let mut b = bytes.to_vec();
        b[0] ^= 0xff;
        Bytes::from(b)
    } else {
        bytes
    };
    let total = bytes.len();
    let start = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.strip_suffix('-'))
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|_| !faults.ignore_range);
    let from = start.unwrap_or(0).min(total);
    let mut r = if method == Method::HEAD && faults.chunked_blobs {
        // A body of unknown size: hyper then sends no Content-Length at all.
        let empty = futures_util::stream::empty::<Result<Frame<Bytes>, std::io::Error>>();
        Response::new(StreamBody::new(empty).boxed_unsync())
    } else if method == Method::HEAD {
        full(if start.is_some() { 206 } else { 200 }, "")
    } else {
        let drop_after = {
            let mut f = state.faults.lock().unwrap();
            match f.drop_after {
                Some((n, at)) if n > 0 => {
                    f.drop_after = if n > 1 { Some((n - 1, at)) } else { None };
                    Some(at)
                }
                _ => None,
            }
        };
        let body = body_stream(
            state.clone(),
            bytes.slice(from..),
            from,
            faults.clone(),
            drop_after,
        );
        let mut r = Response::new(body);
        if start.is_some() {
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        }
        r
    };
    if !faults.chunked_blobs {
        r.headers_mut()
            .insert("content-length", (total - from).into());
    }
    if start.is_some() {
        r.headers_mut().insert(
            "content-range",
            format!("bytes {from}-{}/{total}", total.saturating_sub(1))
                .parse()
                .unwrap(),
        );
    }
    r.headers_mut()
        .insert("docker-content-digest", digest.parse().unwrap());
    r.headers_mut()
        .insert("content-type", "application/octet-stream".parse().unwrap());
    r
}

/// Streams `bytes` (which start at `offset` in the blob) with the fault switches applied.
fn body_stream(
    state: Arc<State>,
    bytes: Bytes,
    offset: usize,
    faults: Faults,
    drop_after: Option<usize>,
) -> Body {
    let chunk = faults.throttle.map_or(64 * 1024, |(c, _)| c);
    let pause = faults.throttle.map(|(_, d)| d);
    let stream = futures_util::stream::unfold((0usize, false), move |(pos, done)| {
        let bytes = bytes.clone();
        let gate = faults.gate.clone();
        let state = state.clone();
        async move {
            if done {
                return None;
            }
            if pos >= bytes.len() {
                state.blob_bodies_completed.fetch_add(1, Ordering::SeqCst);
                return None;
            }
            if let Some(at) = drop_after {
                if pos >= at {
                    // Let what was sent reach the socket before the connection dies.
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    return Some((Err(std::io::Error::other("fake drop")), (pos, true)));
                }
            }
            if let Some(g) = &gate {
                if offset + pos >= g.offset {
                    let mut rx = g.open.subscribe();
                    let _ = rx.wait_for(|o| *o).await;
                }
            }
            if let Some(p) = pause {
                tokio::time::sleep(p).await;
            }
            let mut end = (pos + chunk).min(bytes.len());
            if let Some(at) = drop_after {
                end = end.min(at.max(pos + 1));
            }
            if let Some(g) = &gate {
                if offset + pos < g.offset {
                    end = end.min(g.offset - offset);
                }
            }
            Some((Ok(Frame::data(bytes.slice(pos..end))), (end, false)))
        }
    });
    StreamBody::new(stream.boxed()).boxed_unsync()
}

fn tags(state: &State, repo: &str, query: Option<&str>) -> Response<Body> {
    let c = state.content.lock().unwrap();
    let mut tags: Vec<String> = c
        .tags
        .keys()
        .filter(|(r, _)| r == repo)
        .map(|(_, t)| t.clone())
        .collect();
    if tags.is_empty() {
        return error(404, "NAME_UNKNOWN");
    }
    tags.sort();
    let params: HashMap<String, String> =
        url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    if let Some(last) = params.get("last") {
        tags.retain(|t| t > last);
    }
    let mut link = None;
    if let Some(n) = params.get("n").and_then(|n| n.parse::<usize>().ok()) {
        if tags.len() > n {
            tags.truncate(n);
            link = Some(format!(
                "</v2/{repo}/tags/list?last={}&n={n}>; rel=\"next\"",
                tags[n - 1]
            ));
        }
    }
    let mut r = full(
        200,
        serde_json::json!({"name": repo, "tags": tags}).to_string(),
    );
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    if let Some(l) = link {
        r.headers_mut().insert("link", l.parse().unwrap());
    }
    r
}
