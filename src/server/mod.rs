//! The HTTP edge: dispatch of a parsed route to the cache, client
//! authentication, responses and their errors, `/metrics`, the admin API, and
//! the accept loops that serve the listeners the caller bound.
//!
//! - [`responses`]: response headers and bodies; [`errors`]: the one mapping of
//!   a cache failure to a status and an OCI code;
//! - [`admin`]: purge, prefetch, fsck on the admin listener;
//! - [`events`]: the push-event receiver (`POST /events/<upstream>`);
//! - [`resolve`]: `GET /resolve?image=…`, a tag's digest through the cache;
//! - [`accept`]: connections, TLS, graceful shutdown.
//!
//! [`App::handle`] answers one request and needs no socket (the accept loops
//! hand it each request; `Ferry::app` gives it to embedders).
//!
//! The per-request concerns (metrics, the access log, limits, timeouts) are
//! not tower layers: hyper 1 serves a `hyper::service::Service`, the limits
//! and header timeout are hyper's own settings ([`accept`]), upstream timeouts
//! are reqwest's, and metrics plus the access log are ten lines of
//! [`App::handle`]. A tower stack would add an adapter without removing code,
//! so `tower` is not a direct dependency (reqwest still uses it inside).

pub mod accept;
pub mod admin;
pub mod errors;
pub mod events;
mod gate;
pub mod resolve;
pub mod responses;

pub use responses::Body;

use crate::cluster::{PeerAuth, AGE_HEADER};
use crate::config::Config;
use crate::oci::media::OCI_INDEX;
use crate::oci::{route, PullRequest, RangeRequest, Reference, Route};
use crate::proxy::maintenance::PEER_PURGE;
use crate::proxy::{Origin, Proxy};
use bytes::Bytes;
use errors::Asked;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
const REGISTRY_2: HeaderValue = HeaderValue::from_static("registry/2.0");
const OCI_NAMESPACE: HeaderName = HeaderName::from_static("oci-namespace");
const OCI_FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");

/// The client-port service: everything a request handler needs.
pub struct App {
    proxy: Arc<Proxy>,
    access_log: bool,
    /// Who may read what.
    gate: gate::Gate,
    /// Shutdown has begun: `/readyz` answers 503 so load balancers move on.
    draining: AtomicBool,
}

impl App {
    /// The service for `proxy` as `config` sets it up.
    pub fn new(proxy: Arc<Proxy>, config: &Config) -> App {
        App {
            gate: gate::Gate::new(config),
            proxy,
            access_log: config.access_log,
            draining: AtomicBool::new(false),
        }
    }

    /// Shutdown has begun: readiness turns off, requests are still answered.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Answers one request; never fails (errors become OCI error responses).
    /// Only an event post's body is read.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let method = req.method().clone();
        let event_upstream = (method == Method::POST)
            .then(|| req.uri().path().strip_prefix("/events/").map(str::to_owned))
            .flatten();
        // An event URL's query may carry its secret: never logged.
        let logged = match event_upstream {
            Some(_) => req.uri().path().to_string(),
            None => req
                .uri()
                .path_and_query()
                .map_or_else(String::new, |p| p.to_string()),
        };
        let (route_label, mut resp) = match event_upstream {
            Some(upstream) => (
                "events",
                Box::pin(events::receive(&self.proxy, &upstream, req)).await,
            ),
            None => self.dispatch(&req).await,
        };
        resp.headers_mut().insert(API_VERSION, REGISTRY_2);
        let status = resp.status().as_u16();
        self.proxy.metrics().request(
            route_label,
            method_label(&method),
            status,
            started.elapsed(),
        );
        if self.access_log {
            tracing::info!(
                target: "ferry::access",
                "{} {} {} {}ms",
                method,
                logged,
                status,
                started.elapsed().as_millis()
            );
        }
        resp
    }

    async fn dispatch<B>(&self, req: &Request<B>) -> (&'static str, Response<Body>) {
        let path = req.uri().path();
        let head = req.method() == Method::HEAD;
        if path == "/v2" || path.starts_with("/v2/") {
            let parsed = match PullRequest::parse(req.method(), path, req.uri().query()) {
                Ok(p) => p,
                Err(e) => return ("invalid", responses::error(&e, head)),
            };
            let label = route_label(&parsed.route);
            return (label, self.pull(req.headers(), &parsed).await);
        }
        if path == "/resolve" && matches!(*req.method(), Method::GET | Method::HEAD) {
            return (
                "resolve",
                Box::pin(self.resolve(req.headers(), req.uri().query(), head)).await,
            );
        }
        match (req.method(), path) {
            (&Method::POST, PEER_PURGE) => ("peer_purge", Box::pin(self.peer_purge(req)).await),
            (&Method::GET, "/metrics") => ("metrics", metrics_response(&self.proxy)),
            (&Method::GET | &Method::HEAD, "/healthz") => {
                ("health", responses::text(StatusCode::OK, "ok\n"))
            }
            (&Method::GET | &Method::HEAD, "/readyz") => {
                if self.draining.load(Ordering::Relaxed) {
                    (
                        "ready",
                        responses::text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
                    )
                } else {
                    ("ready", responses::text(StatusCode::OK, "ready\n"))
                }
            }
            _ => ("other", responses::error(&route::not_found(), head)),
        }
    }

    /// `POST /_ferry/purge?…`: a purge another replica passes on (peer secret
    /// required; anyone else gets the same 404 as any unknown path).
    async fn peer_purge<B>(&self, req: &Request<B>) -> Response<Body> {
        let cluster = self.proxy.cluster();
        if cluster.map(|c| c.auth(req.headers())) != Some(PeerAuth::Peer) {
            return responses::error(&route::not_found(), false);
        }
        admin::purge(&self.proxy, req.uri().query(), Origin::Peer)
            .await
            .unwrap_or_else(|e| responses::error(&e, false))
    }

    /// `GET /resolve?image=…`, admitted as a pull of that repository would be.
    async fn resolve(
        &self,
        headers: &http::HeaderMap,
        query: Option<&str>,
        head: bool,
    ) -> Response<Body> {
        let routed = match resolve::route(&self.proxy, query) {
            Ok(r) => r,
            Err(e) => return responses::error(&e, head),
        };
        let routed = match routed {
            resolve::Routed::Tag { image, target, tag } => {
                match self.gate.admit(&self.proxy, headers, target, head).await {
                    Ok(target) => resolve::Routed::Tag { image, target, tag },
                    Err(refused) => return *refused,
                }
            }
            digest => digest,
        };
        resolve::answer(&self.proxy, routed, head).await
    }

    /// A pull-API request, routed to its upstream and answered by the cache.
    ///
    /// Hyper moves each request's future whole, so everything but the warm
    /// manifest path is boxed: a blob, a tag list or referrers is allocated
    /// when asked for, instead of widening every request's state.
    async fn pull(&self, headers: &http::HeaderMap, req: &PullRequest) -> Response<Body> {
        let proxy = &self.proxy;
        let (name, asked) = match &req.route {
            Route::Base => {
                return match self.gate.base(headers, req.head) {
                    Ok(()) => base(req.head),
                    Err(refused) => *refused,
                }
            }
            Route::Manifest { name, .. } => (name, Asked::Manifest),
            Route::Blob { name, .. } => (name, Asked::Blob),
            Route::TagsList { name, .. } => (name, Asked::TagList),
            Route::Referrers { name, .. } => (name, Asked::Referrers),
        };
        let target = match proxy.route(req.ns.as_deref(), name) {
            Ok(t) => t,
            Err(e) => return responses::error(&errors::route_error(&e), req.head),
        };
        let (target, origin) = match self.gate.admit_pull(proxy, headers, target, req.head).await {
            Ok(admitted) => admitted,
            Err(refused) => return *refused,
        };
        let answer = match &req.route {
            Route::Base => unreachable!("answered above"),
            Route::Manifest { reference, .. } => proxy
                .manifest(&target, reference, req.head, origin)
                .await
                .map(|m| {
                    let mut resp =
                        responses::manifest(headers, &m.digest, &m.media_type, m.size, m.body);
                    if let (Origin::Peer, Some(at)) = (origin, m.confirmed_ms) {
                        let age = proxy.now_ms().saturating_sub(at);
                        resp.headers_mut()
                            .insert(AGE_HEADER, HeaderValue::from(age));
                    }
                    resp
                }),
            Route::Blob { digest, .. } => {
                let range =
                    RangeRequest::parse(headers.get(header::RANGE).and_then(|v| v.to_str().ok()));
                Box::pin(proxy.blob(&target, digest, range, req.head, origin))
                    .await
                    .map(|a| responses::blob(proxy.metrics(), digest, a.total, a.range, a.body))
            }
            Route::TagsList { page, .. } => {
                Box::pin(proxy.tags_list(&target, name, page, req.ns.as_deref()))
                    .await
                    .map(|page| {
                        let mut resp = responses::sized(responses::JSON, page.body, req.head);
                        if let Some(link) = page.link.and_then(|l| HeaderValue::from_str(&l).ok()) {
                            resp.headers_mut().insert(header::LINK, link);
                        }
                        resp
                    })
            }
            Route::Referrers {
                digest,
                artifact_type,
                ..
            } => Box::pin(proxy.referrers(&target, digest, artifact_type.as_deref()))
                .await
                .map(|r| {
                    let content_type = HeaderValue::from_static(OCI_INDEX);
                    let mut resp = responses::sized(content_type, r.body, req.head);
                    if r.filtered {
                        resp.headers_mut().insert(
                            OCI_FILTERS_APPLIED,
                            HeaderValue::from_static("artifactType"),
                        );
                    }
                    resp
                }),
        };
        let mut resp = answer.unwrap_or_else(|e| {
            tracing::debug!(?target, error = %e, "answering with an error");
            responses::error(&errors::cache_error(&e, asked), req.head)
        });
        if let Some(ns) = req
            .ns
            .as_deref()
            .and_then(|ns| HeaderValue::from_str(ns).ok())
        {
            resp.headers_mut().insert(OCI_NAMESPACE, ns);
        }
        resp
    }
}

/// The answer to any request while the store is still opening: alive
/// (`/healthz`), not ready (`/readyz`), and `503` with `Retry-After` for the rest.
pub fn starting<B>(req: &Request<B>) -> Response<Body> {
    match req.uri().path() {
        "/healthz" => responses::text(StatusCode::OK, "ok\n"),
        "/readyz" => responses::text(StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
        _ => {
            let e = crate::oci::OciError::new(
                crate::oci::ErrorCode::Unavailable,
                "Ferry is starting: its store is not open yet",
            )
            .with_retry_after(Some(1));
            responses::error(&e, req.method() == Method::HEAD)
        }
    }
}

/// `/v2/`: the API version check.
fn base(head: bool) -> Response<Body> {
    let mut resp = responses::sized(responses::JSON, Bytes::from_static(b"{}"), head);
    *resp.status_mut() = StatusCode::OK;
    resp
}

fn route_label(route: &Route) -> &'static str {
    match route {
        Route::Base => "base",
        Route::Manifest {
            reference: Reference::Tag(_),
            ..
        } => "manifest_tag",
        Route::Manifest { .. } => "manifest_digest",
        Route::Blob { .. } => "blob",
        Route::TagsList { .. } => "tags_list",
        Route::Referrers { .. } => "referrers",
    }
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

fn metrics_response(proxy: &Proxy) -> Response<Body> {
    responses::sized(
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
        Bytes::from(proxy.metrics_text()),
        false,
    )
}
