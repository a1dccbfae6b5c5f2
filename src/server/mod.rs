//! The HTTP edge: hyper connections, dispatch of a parsed route to the proxy,
//! response headers, and `/metrics`.
//!
//! Every error leaves here as OCI error JSON with its status; every manifest and
//! blob answer carries `Docker-Content-Digest`, `Content-Length` and
//! `Content-Type`, on `HEAD` too (without them containerd falls back to `GET`).

pub mod admin;

use crate::metrics::StoreGauges;
use crate::oci::media::OCI_INDEX;
use crate::oci::{route, Digest, OciError, PullRequest, RangeRequest, Reference, Route};
use crate::proxy::{ByteStream, Proxy};
use bytes::Bytes;
use futures_util::TryStreamExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use std::convert::Infallible;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

pub type Body = UnsyncBoxBody<Bytes, io::Error>;

const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
const REGISTRY_2: HeaderValue = HeaderValue::from_static("registry/2.0");
const CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
const OCI_NAMESPACE: HeaderName = HeaderName::from_static("oci-namespace");
const OCI_FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");
const OCTET_STREAM: HeaderValue = HeaderValue::from_static("application/octet-stream");
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Everything a request handler needs.
pub struct App {
    pub proxy: Arc<Proxy>,
    pub access_log: bool,
    /// When set, the pull API answers only authenticated clients.
    pub client_auth: Option<crate::config::ClientAuth>,
}

/// Handles one request; never fails (errors become OCI error responses).
pub async fn handle(app: Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let method = req.method().clone();
    let (route_label, mut resp) = dispatch(&app, &req).await;
    resp.headers_mut().insert(API_VERSION, REGISTRY_2);
    let status = resp.status().as_u16();
    app.proxy
        .metrics
        .request(route_label, method_label(&method), status);
    if app.access_log {
        tracing::info!(
            target: "ferry::access",
            "{} {} {} {}ms",
            method,
            req.uri().path_and_query().map_or("", |p| p.as_str()),
            status,
            started.elapsed().as_millis()
        );
    }
    Ok(resp)
}

async fn dispatch(app: &App, req: &Request<Incoming>) -> (&'static str, Response<Body>) {
    let path = req.uri().path();
    if path == "/v2" || path.starts_with("/v2/") {
        let parsed = match PullRequest::parse(req.method(), path, req.uri().query()) {
            Ok(p) => p,
            Err(e) => return ("invalid", error_response(&e, req.method() == Method::HEAD)),
        };
        let label = route_label(&parsed.route);
        if let Some(auth) = &app.client_auth {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            if !auth.allows(given) {
                return (label, unauthorized(parsed.head));
            }
        }
        let resp = match pull(app, req.headers(), &parsed).await {
            Ok(r) => r,
            Err(e) => error_response(&e, parsed.head),
        };
        return (label, resp);
    }
    match (req.method(), path) {
        (&Method::GET, "/metrics") => ("metrics", metrics_response(&app.proxy)),
        (&Method::GET | &Method::HEAD, "/healthz") => ("health", text(StatusCode::OK, "ok\n")),
        _ => (
            "other",
            error_response(&route::not_found(), req.method() == Method::HEAD),
        ),
    }
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

async fn pull(
    app: &App,
    headers: &HeaderMap,
    req: &PullRequest,
) -> Result<Response<Body>, OciError> {
    let proxy = &app.proxy;
    let name = match &req.route {
        Route::Base => {
            let body = if req.head {
                empty()
            } else {
                full(Bytes::from_static(b"{}"))
            };
            let mut resp = Response::new(body);
            resp.headers_mut().insert(header::CONTENT_TYPE, JSON);
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
            return Ok(resp);
        }
        Route::Manifest { name, .. }
        | Route::Blob { name, .. }
        | Route::TagsList { name, .. }
        | Route::Referrers { name, .. } => name,
    };
    let (up, repo) = proxy.router.route(req.ns.as_deref(), name)?;
    let mut resp = match &req.route {
        Route::Base => unreachable!("answered above"),
        Route::Manifest { reference, .. } => {
            let (digest, media_type, size, body) = match reference {
                Reference::Tag(tag) => {
                    let meta = proxy.resolve_tag(&up, &repo, tag, !req.head).await?;
                    if req.head {
                        (meta.digest, meta.media_type, meta.size, None)
                    } else {
                        let m = proxy.ensure_manifest(&up, &repo, &meta.digest).await?;
                        (meta.digest, m.media_type, m.body.len() as u64, Some(m.body))
                    }
                }
                Reference::Digest(d) => {
                    let m = proxy.ensure_manifest(&up, &repo, d).await?;
                    (d.clone(), m.media_type, m.body.len() as u64, Some(m.body))
                }
            };
            manifest_response(
                headers,
                &digest,
                &media_type,
                size,
                body.filter(|_| !req.head),
            )
        }
        Route::Blob { digest, .. } => {
            let range =
                RangeRequest::parse(headers.get(header::RANGE).and_then(|v| v.to_str().ok()));
            let answer = proxy.blob(&up, &repo, digest, range, req.head).await?;
            blob_response(proxy, digest, answer.total, answer.range, answer.body)
        }
        Route::TagsList { page, .. } => {
            let (body, link) = proxy
                .tags_list(&up, &repo, name, page, req.ns.as_deref())
                .await?;
            let mut resp = sized(JSON, body, req.head);
            if let Some(link) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
                resp.headers_mut().insert(header::LINK, link);
            }
            resp
        }
        Route::Referrers {
            digest,
            artifact_type,
            ..
        } => {
            let (body, filtered) = proxy
                .referrers(&up, &repo, digest, artifact_type.as_deref())
                .await?;
            let mut resp = sized(HeaderValue::from_static(OCI_INDEX), body, req.head);
            if filtered {
                resp.headers_mut().insert(
                    OCI_FILTERS_APPLIED,
                    HeaderValue::from_static("artifactType"),
                );
            }
            resp
        }
    };
    if let Some(ns) = req
        .ns
        .as_deref()
        .and_then(|ns| HeaderValue::from_str(ns).ok())
    {
        resp.headers_mut().insert(OCI_NAMESPACE, ns);
    }
    Ok(resp)
}

fn manifest_response(
    req_headers: &HeaderMap,
    digest: &Digest,
    media_type: &str,
    size: u64,
    body: Option<Bytes>,
) -> Response<Body> {
    let etag = format!("\"{digest}\"");
    let not_modified = req_headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == etag || t.trim() == "*");
    let mut resp = if not_modified {
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        Response::new(body.map_or_else(empty, full))
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(media_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if !not_modified {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    }
    insert_digest(h, digest);
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    resp
}

fn blob_response(
    proxy: &Arc<Proxy>,
    digest: &Digest,
    total: Option<u64>,
    range: Option<(u64, u64)>,
    body: Option<ByteStream>,
) -> Response<Body> {
    let metrics = proxy.metrics.clone();
    let body = match body {
        None => empty(),
        Some(stream) => {
            let counted = stream.map_ok(move |b| {
                metrics
                    .bytes_served
                    .fetch_add(b.len() as u64, Ordering::Relaxed);
                Frame::data(b)
            });
            StreamBody::new(counted).boxed_unsync()
        }
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, OCTET_STREAM);
    insert_digest(h, digest);
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=31536000, immutable"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("\"{digest}\"")) {
        h.insert(header::ETAG, v);
    }
    match (range, total) {
        (Some((start, end)), Some(total)) => {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(end + 1 - start));
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{total}")) {
                h.insert(header::CONTENT_RANGE, v);
            }
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        }
        (_, Some(total)) => {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(total));
        }
        _ => {}
    }
    resp
}

fn insert_digest(h: &mut HeaderMap, digest: &Digest) {
    if let Ok(v) = HeaderValue::from_str(digest.as_str()) {
        h.insert(CONTENT_DIGEST, v);
    }
}

/// 401 with a Basic challenge: docker, containerd and podman then send the
/// credentials they were given for this host.
fn unauthorized(head: bool) -> Response<Body> {
    let e = OciError::new(
        crate::oci::ErrorCode::Unauthorized,
        "authentication required",
    );
    let mut resp = error_response(&e, head);
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"ferry\""),
    );
    resp
}

/// An OCI error response (`HEAD` gets the headers without the body).
pub fn error_response(e: &OciError, head: bool) -> Response<Body> {
    let body = Bytes::from(e.body());
    let mut resp = sized(JSON, body, head);
    *resp.status_mut() = e.status;
    let h = resp.headers_mut();
    if let Some(secs) = e.retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if let Some(size) = e.unsatisfied_size {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    if e.status.is_server_error() {
        tracing::debug!(error = %e, "answering with a server error");
    }
    resp
}

/// The Prometheus text of `/metrics`.
pub fn metrics_text(proxy: &Proxy) -> String {
    let stats = proxy.store.stats();
    proxy.metrics.render(&StoreGauges {
        bytes: proxy.store.total_bytes(),
        blobs: proxy.store.blob_count(),
        max_bytes: proxy.store.max_size(),
        evictions: stats.evictions.load(Ordering::Relaxed),
        bytes_evicted: stats.bytes_evicted.load(Ordering::Relaxed),
    })
}

fn metrics_response(proxy: &Proxy) -> Response<Body> {
    let text = metrics_text(proxy);
    sized(
        HeaderValue::from_static("text/plain; version=0.0.4"),
        Bytes::from(text),
        false,
    )
}

pub(crate) fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = sized(
        HeaderValue::from_static("text/plain"),
        Bytes::from_static(body.as_bytes()),
        false,
    );
    *r.status_mut() = status;
    r
}

/// A complete body with `Content-Type` and `Content-Length` (kept on `HEAD`).
pub(crate) fn sized(content_type: HeaderValue, body: Bytes, head: bool) -> Response<Body> {
    let len = body.len();
    let mut resp = Response::new(if head { empty() } else { full(body) });
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed_unsync()
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}
