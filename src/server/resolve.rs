//! The resolve API: `GET /resolve?image=nginx:1.27` answers which digest a tag
//! points at, through exactly the same cache as a manifest `HEAD` (TTL,
//! immutable tags, single-flight, stale-if-error), so it never costs upstream
//! more than a pull would. The admission webhook is its other client.
//!
//! ```json
//! {"image": "docker.io/library/nginx:1.27", "digest": "sha256:…",
//!  "mediaType": "application/vnd.oci.image.index.v1+json", "size": 10229,
//!  "source": "cache", "age_seconds": 12,
//!  "pinned": "docker.io/library/nginx:1.27@sha256:…"}
//! ```
//!
//! `source` is `cache`, `upstream`, `stale_if_error`, or `reference` (the
//! reference carried a digest: answered without upstream). A registry Ferry
//! does not proxy is a `400 NAME_UNKNOWN`.

use super::errors::{cache_error, Asked};
use super::responses::{self, Body};
use crate::oci::{route::query_param, ErrorCode, ImageRef, OciError, Tag};
use crate::proxy::{Proxy, Resolved};
use crate::upstream::Target;
use http::Response;

/// What the resolve API answers about one image.
#[derive(Debug, serde::Serialize)]
pub struct Resolution {
    /// The normalised reference asked about.
    pub image: String,
    /// The digest the tag points at (an index digest for a multi-arch image).
    pub digest: String,
    /// Its media type, when known (not for a reference that carried the digest).
    #[serde(rename = "mediaType", skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Its size, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// `cache`, `upstream`, `stale_if_error` or `reference`.
    pub source: &'static str,
    /// Seconds since upstream last confirmed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_seconds: Option<u64>,
    /// The reference pinned: `registry/repo:tag@digest`.
    pub pinned: String,
}

/// An image reference, parsed and routed.
pub enum Routed {
    /// It carried a digest: the answer needs no upstream.
    Digest(Resolution),
    /// A tag to resolve in `target`.
    Tag {
        /// The normalised reference.
        image: ImageRef,
        /// Its upstream repository.
        target: Target,
        /// The tag.
        tag: Tag,
    },
}

/// Parses `image` and routes it to its upstream.
pub fn route_image(proxy: &Proxy, image: &str) -> Result<Routed, OciError> {
    let r =
        ImageRef::parse(image).map_err(|e| OciError::new(ErrorCode::NameInvalid, e.to_string()))?;
    if let Some(d) = &r.digest {
        return Ok(Routed::Digest(Resolution {
            image: r.to_string(),
            digest: d.to_string(),
            media_type: None,
            size: None,
            source: "reference",
            age_seconds: None,
            pinned: r.pinned(d),
        }));
    }
    let target = proxy
        .target(&r.registry, r.repository.clone())
        .map_err(|_| {
            OciError::new(
                ErrorCode::NameUnknown,
                format!("registry {} is not proxied by this Ferry", r.registry),
            )
            .with_status(http::StatusCode::BAD_REQUEST)
        })?;
    let tag = r
        .tag
        .clone()
        .expect("a reference without a digest has a tag");
    Ok(Routed::Tag {
        image: r,
        target,
        tag,
    })
}

/// Resolves a routed reference through the tag cache.
pub async fn resolve(proxy: &Proxy, routed: Routed) -> Result<Resolution, OciError> {
    let (r, target, tag) = match routed {
        Routed::Digest(resolution) => return Ok(resolution),
        Routed::Tag { image, target, tag } => (image, target, tag),
    };
    let Resolved {
        meta,
        source,
        confirmed_ms,
    } = proxy
        .resolve_tag(&target, &tag)
        .await
        .map_err(|e| cache_error(&e, Asked::Manifest))?;
    Ok(Resolution {
        image: r.to_string(),
        pinned: r.pinned(&meta.digest),
        digest: meta.digest.to_string(),
        media_type: Some(meta.media_type),
        size: Some(meta.size),
        source: match source {
            crate::proxy::Source::Peer => "peer",
            crate::proxy::Source::Cache => "cache",
            crate::proxy::Source::Upstream => "upstream",
            crate::proxy::Source::StaleIfError => "stale_if_error",
        },
        age_seconds: Some(proxy.now_ms().saturating_sub(confirmed_ms) / 1000),
    })
}

/// Resolves one image reference (see the module docs).
pub async fn image(proxy: &Proxy, image: &str) -> Result<Resolution, OciError> {
    resolve(proxy, route_image(proxy, image)?).await
}

/// `GET /resolve?image=…`: the query, parsed and routed (the caller admits
/// the client to the target before [`answer`]).
pub fn route(proxy: &Proxy, query: Option<&str>) -> Result<Routed, OciError> {
    let Some(image_ref) = query_param(query, "image") else {
        return Err(
            OciError::new(ErrorCode::NameInvalid, "give ?image=<reference>")
                .with_status(http::StatusCode::BAD_REQUEST),
        );
    };
    route_image(proxy, &image_ref)
}

/// The answer to `GET /resolve` for a routed, admitted reference.
pub async fn answer(proxy: &Proxy, routed: Routed, head: bool) -> Response<Body> {
    match resolve(proxy, routed).await {
        Ok(r) => responses::json(serde_json::to_string(&r).unwrap_or_default()),
        Err(e) => responses::error(&e, head),
    }
}
