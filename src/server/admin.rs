//! The admin API: purge entries from a running Ferry. It listens on its own
//! address (`admin_listen`), off unless configured, and should stay on loopback
//! or a private network: it has no authentication of its own.
//!
//! - `POST /admin/purge?digest=sha256:…` drops a blob or manifest and the tags pointing at it;
//! - `POST /admin/purge?upstream=docker.io&repository=library/alpine[&tag=latest]`
//!   drops one tag, or every tag of a repository (they are resolved afresh next time);
//! - `POST /admin/prefetch?upstream=docker.io&repository=library/alpine&reference=3.20`
//!   caches an image (a tag or a digest; every platform of an index) and answers
//!   when it is all in, with counts of manifests and blobs fetched;
//! - `GET /admin/fsck[?verify=true]` checks the store (report only; repair runs offline).

use super::{error_response, sized, text, Body};
use crate::oci::{route::query_param, Digest, ErrorCode, OciError, Reference, RepoName};
use crate::proxy::Proxy;
use crate::upstream::Upstream;
use bytes::Bytes;
use http::header::HeaderValue;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::sync::Arc;

pub async fn handle(
    proxy: Arc<Proxy>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let query = req.uri().query();
    let resp = match (req.method(), req.uri().path()) {
        (&Method::POST, "/admin/purge") => purge(&proxy, query).await,
        (&Method::POST, "/admin/prefetch") => prefetch(&proxy, query).await,
        (&Method::GET, "/admin/fsck") => fsck(&proxy, query).await,
        (&Method::GET, "/healthz") => Ok(text(StatusCode::OK, "ok\n")),
        _ => Err(
            OciError::new(ErrorCode::Unsupported, "unknown admin endpoint")
                .with_status(StatusCode::NOT_FOUND),
        ),
    };
    Ok(resp.unwrap_or_else(|e| error_response(&e, false)))
}

fn bad(msg: impl Into<String>) -> OciError {
    OciError::new(ErrorCode::Unsupported, msg).with_status(StatusCode::BAD_REQUEST)
}

async fn purge(proxy: &Arc<Proxy>, query: Option<&str>) -> Result<Response<Body>, OciError> {
    let store = proxy.store.clone();
    let removed = if let Some(d) = query_param(query, "digest") {
        let digest: Digest = d
            .parse()
            .map_err(|e| OciError::new(ErrorCode::DigestInvalid, format!("{e}")))?;
        // A fetch in flight would commit the blob right after the purge.
        proxy.fetch_settled(&digest).await;
        let n = blocking(move || store.purge_digest(&digest).map(usize::from)).await?;
        tracing::info!(%d, removed = n, "purged digest");
        n
    } else {
        let (up, repo) = upstream_repository(proxy, query)?;
        let tag = query_param(query, "tag");
        let name = up.name().to_string();
        let (r, t) = (repo.to_string(), tag.clone());
        proxy.forget_repository_answers(&name, &r);
        let n = blocking(move || store.purge_tags(&name, &r, t.as_deref())).await?;
        tracing::info!(upstream = up.name(), %repo, ?tag, removed = n, "purged tags");
        n
    };
    let body = serde_json::json!({ "removed": removed }).to_string();
    Ok(json(body))
}

/// The `upstream=` and `repository=` parameters, resolved as a pull would
/// resolve them (aliases, Docker Hub's `library/`).
fn upstream_repository(
    proxy: &Proxy,
    query: Option<&str>,
) -> Result<(Arc<Upstream>, RepoName), OciError> {
    let upstream = query_param(query, "upstream")
        .ok_or_else(|| bad("upstream= and repository= are required (or digest= to purge)"))?;
    let repo = query_param(query, "repository")
        .ok_or_else(|| bad("repository= is required with upstream="))?;
    let up = proxy
        .router
        .by_name(&upstream)
        .ok_or_else(|| bad(format!("no upstream named {upstream:?}")))?;
    let repo = RepoName::parse(&repo)
        .ok_or_else(|| OciError::new(ErrorCode::NameInvalid, "invalid repository"))?;
    let repo = if up.config.library_prefix {
        repo.with_library_prefix()
    } else {
        repo
    };
    Ok((up.clone(), repo))
}

/// Caches an image and everything it references; answers when it is all in.
async fn prefetch(proxy: &Arc<Proxy>, query: Option<&str>) -> Result<Response<Body>, OciError> {
    let (up, repo) = upstream_repository(proxy, query)?;
    let reference = query_param(query, "reference").unwrap_or_else(|| "latest".into());
    let reference = Reference::parse(&reference).map_err(|_| {
        OciError::new(
            ErrorCode::ManifestInvalid,
            format!("{reference:?} is neither a tag nor a digest"),
        )
    })?;
    let report = proxy.prefetch(&up, &repo, &reference).await?;
    tracing::info!(upstream = up.name(), %repo, ?report, "prefetched");
    let body = serde_json::to_string(&report)
        .map_err(|e| OciError::new(ErrorCode::Unknown, e.to_string()))?;
    Ok(json(body))
}

async fn fsck(proxy: &Arc<Proxy>, query: Option<&str>) -> Result<Response<Body>, OciError> {
    let verify = query_param(query, "verify").is_some_and(|v| v == "true" || v == "1");
    let store = proxy.store.clone();
    let report = blocking(move || store.fsck(verify, false)).await?;
    proxy.metrics.fsck_findings.store(
        report.findings.len() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    let findings: Vec<String> = report.findings.iter().map(|f| f.to_string()).collect();
    let body = serde_json::json!({
        "clean": report.clean(),
        "blobs_checked": report.blobs_checked,
        "manifests_checked": report.manifests_checked,
        "tags_checked": report.tags_checked,
        "findings": findings,
    })
    .to_string();
    Ok(json(body))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ferry_storage::StoreError> + Send + 'static,
) -> Result<T, OciError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(OciError::new(ErrorCode::Unknown, e.to_string())),
        Err(e) => Err(OciError::new(ErrorCode::Unknown, e.to_string())),
    }
}

fn json(body: String) -> Response<Body> {
    sized(
        HeaderValue::from_static("application/json"),
        Bytes::from(body),
        false,
    )
}
