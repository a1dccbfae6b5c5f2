//! The admin API, on its own listener (`admin_listen`), off unless configured.
//! With `admin_token_file` (or `_env`) every request but `/healthz` needs
//! `Authorization: Bearer <token>`; without one it may only listen on loopback.
//!
//! - `POST /admin/purge?digest=sha256:…` drops a blob or manifest and the tags pointing at it;
//! - `POST /admin/purge?upstream=docker.io&repository=library/alpine[&tag=latest]`
//!   drops one tag, or every tag of a repository (they are resolved afresh next time);
//! - `POST /admin/prefetch?upstream=docker.io&repository=library/alpine&reference=3.20`
//!   caches an image (a tag or a digest; every platform of an index) and answers
//!   when it is all in, with counts of manifests and blobs fetched; with
//!   `Accept: application/x-ndjson` it streams a progress line every half
//!   second (`{"blobs_done","blobs","bytes"}`) and ends with the report;
//! - `GET /admin/fsck[?verify=true]` checks the store (report only; repair runs offline).

use super::errors::{cache_error, route_error, Asked};
use super::responses::{self, Body};
use crate::access::AdminToken;
use crate::oci::{route::query_param, Digest, ErrorCode, OciError, Reference, RepoName};
use crate::proxy::{Origin, Progress, Proxy};
use crate::upstream::Target;
use http::{Method, Request, Response, StatusCode};
use std::sync::Arc;

/// Answers one admin request; with `token`, only requests that carry it.
pub async fn handle<B>(
    proxy: Arc<Proxy>,
    token: Option<&AdminToken>,
    req: Request<B>,
) -> Response<Body> {
    let given = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if req.uri().path() != "/healthz" && token.is_some_and(|t| !t.allows(given)) {
        let e = OciError::new(
            ErrorCode::Unauthorized,
            "the admin API needs its bearer token",
        );
        let mut resp = responses::error(&e, false);
        resp.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer realm=\"ferry-admin\""),
        );
        return resp;
    }
    let query = req.uri().query();
    let resp = match (req.method(), req.uri().path()) {
        (&Method::POST, "/admin/purge") => purge(&proxy, query, Origin::Client).await,
        (&Method::POST, "/admin/prefetch") => {
            let ndjson = req
                .headers()
                .get(http::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("application/x-ndjson"));
            if ndjson {
                prefetch_streaming(proxy.clone(), query)
            } else {
                prefetch(&proxy, query).await
            }
        }
        (&Method::GET, "/admin/fsck") => fsck(&proxy, query).await,
        (&Method::GET, "/healthz") => Ok(responses::text(StatusCode::OK, "ok\n")),
        _ => Err(
            OciError::new(ErrorCode::Unsupported, "unknown admin endpoint")
                .with_status(StatusCode::NOT_FOUND),
        ),
    };
    resp.unwrap_or_else(|e| responses::error(&e, false))
}

fn bad(msg: impl Into<String>) -> OciError {
    OciError::new(ErrorCode::Unsupported, msg).with_status(StatusCode::BAD_REQUEST)
}

/// A purge, from an operator (`Origin::Client`: passed on to the other
/// replicas) or from a peer passing one on (`Origin::Peer`).
pub(crate) async fn purge(
    proxy: &Proxy,
    query: Option<&str>,
    origin: Origin,
) -> Result<Response<Body>, OciError> {
    let removed = if let Some(d) = query_param(query, "digest") {
        let digest: Digest = d
            .parse()
            .map_err(|e| OciError::new(ErrorCode::DigestInvalid, format!("{e}")))?;
        let n = proxy
            .purge_digest(&digest, origin)
            .await
            .map_err(|e| cache_error(&e, Asked::Blob))?;
        tracing::info!(%digest, removed = n, "purged digest");
        n
    } else {
        let target = target(proxy, query)?;
        let tag = query_param(query, "tag");
        let n = proxy
            .purge_tags(&target, tag.as_deref(), origin)
            .await
            .map_err(|e| cache_error(&e, Asked::TagList))?;
        tracing::info!(?target, ?tag, removed = n, "purged tags");
        n
    };
    Ok(responses::json(
        serde_json::json!({ "removed": removed }).to_string(),
    ))
}

/// The `upstream=` and `repository=` parameters, resolved as a pull would
/// resolve them (aliases, Docker Hub's `library/`).
fn target(proxy: &Proxy, query: Option<&str>) -> Result<Target, OciError> {
    let upstream = query_param(query, "upstream")
        .ok_or_else(|| bad("upstream= and repository= are required (or digest= to purge)"))?;
    let repo = query_param(query, "repository")
        .ok_or_else(|| bad("repository= is required with upstream="))?;
    let repo = RepoName::parse(&repo)
        .ok_or_else(|| OciError::new(ErrorCode::NameInvalid, "invalid repository"))?;
    proxy.target(&upstream, repo).map_err(|e| route_error(&e))
}

/// The `reference=` parameter (default `latest`).
fn reference(query: Option<&str>) -> Result<Reference, OciError> {
    let reference = query_param(query, "reference").unwrap_or_else(|| "latest".into());
    Reference::parse(&reference).map_err(|_| {
        OciError::new(
            ErrorCode::ManifestInvalid,
            format!("{reference:?} is neither a tag nor a digest"),
        )
    })
}

/// Caches an image and everything it references; answers when it is all in.
async fn prefetch(proxy: &Proxy, query: Option<&str>) -> Result<Response<Body>, OciError> {
    let (target, reference) = (target(proxy, query)?, reference(query)?);
    let report = proxy
        .prefetch(&target, &reference, &Progress::default())
        .await
        .map_err(|e| cache_error(&e, Asked::Manifest))?;
    tracing::info!(?target, ?report, "prefetched");
    let body = serde_json::to_string(&report)
        .map_err(|e| OciError::new(ErrorCode::Unknown, e.to_string()))?;
    Ok(responses::json(body))
}

/// How often a streaming prefetch reports progress.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// The same as [`prefetch`], answered as NDJSON: progress lines while it runs,
/// then the report (`"done": true`), or the error (`"error"`, `"status"`).
fn prefetch_streaming(proxy: Arc<Proxy>, query: Option<&str>) -> Result<Response<Body>, OciError> {
    use http_body_util::BodyExt;
    let (target, reference) = (target(&proxy, query)?, reference(query)?);
    let progress = Arc::new(Progress::default());
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let p = progress.clone();
    tokio::spawn(async move {
        let result = proxy.prefetch(&target, &reference, &p).await;
        if let Ok(report) = &result {
            tracing::info!(?target, ?report, "prefetched");
        }
        let _ = done_tx.send(result);
    });
    let line = |v: serde_json::Value| {
        Ok(hyper::body::Frame::data(bytes::Bytes::from(format!(
            "{v}\n"
        ))))
    };
    let stream = futures_util::stream::unfold(Some(done_rx), move |state| {
        let progress = progress.clone();
        async move {
            let mut done = state?;
            let outcome = tokio::select! {
                r = &mut done => Some(r),
                () = tokio::time::sleep(PROGRESS_EVERY) => None,
            };
            match outcome {
                None => {
                    let (blobs_done, blobs, bytes) = progress.snapshot();
                    let v = serde_json::json!({"blobs_done": blobs_done, "blobs": blobs, "bytes": bytes});
                    Some((line(v), Some(done)))
                }
                Some(Ok(Ok(report))) => {
                    let mut v = serde_json::to_value(&report).unwrap_or_default();
                    v["done"] = true.into();
                    Some((line(v), None))
                }
                Some(Ok(Err(e))) => {
                    let o = cache_error(&e, Asked::Manifest);
                    let v = serde_json::json!({"error": o.message, "code": o.code.as_str(), "status": o.status.as_u16()});
                    Some((line(v), None))
                }
                Some(Err(_)) => {
                    let v = serde_json::json!({"error": "prefetch task ended", "status": 500});
                    Some((line(v), None))
                }
            }
        }
    });
    let body = http_body_util::StreamBody::new(stream).boxed_unsync();
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(resp)
}

async fn fsck(proxy: &Proxy, query: Option<&str>) -> Result<Response<Body>, OciError> {
    let verify = query_param(query, "verify").is_some_and(|v| v == "true" || v == "1");
    let report = proxy
        .fsck(verify)
        .await
        .map_err(|e| cache_error(&e, Asked::Blob))?;
    let findings: Vec<String> = report.findings.iter().map(|f| f.to_string()).collect();
    let body = serde_json::json!({
        "clean": report.clean(),
        "format": report.format,
        "blobs_checked": report.blobs_checked,
        "manifests_checked": report.manifests_checked,
        "tags_checked": report.tags_checked,
        "findings": findings,
    })
    .to_string();
    Ok(responses::json(body))
}
