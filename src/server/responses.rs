//! Building responses: the headers every manifest and blob answer carries
//! (`Docker-Content-Digest`, `Content-Length`, `Content-Type`, on `HEAD` too;
//! without them containerd falls back to a `GET`), and OCI error bodies.

use crate::metrics::Metrics;
use crate::oci::{Digest, OciError};
use crate::proxy::ByteStream;
use bytes::Bytes;
use futures_util::TryStreamExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use std::io;
use std::sync::Arc;

/// Every response body Ferry sends.
pub type Body = UnsyncBoxBody<Bytes, io::Error>;

pub(crate) const CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
pub(crate) const JSON: HeaderValue = HeaderValue::from_static("application/json");
const OCTET_STREAM: HeaderValue = HeaderValue::from_static("application/octet-stream");

/// A manifest answer: a `304` when `If-None-Match` names its digest.
pub(crate) fn manifest(
    req_headers: &HeaderMap,
    digest: &Digest,
    media_type: &str,
    size: u64,
    body: Option<Bytes>,
) -> Response<Body> {
    let not_modified = req_headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || names_digest(t, digest));
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
    // The digest is lower-case hex after `algorithm:`: always a valid value.
    let mut etag = Vec::with_capacity(digest.as_str().len() + 2);
    etag.push(b'"');
    etag.extend_from_slice(digest.as_str().as_bytes());
    etag.push(b'"');
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(etag)) {
        h.insert(header::ETAG, v);
    }
    resp
}

/// Whether an entity tag is this digest's (`"sha256:…"`), without building one.
fn names_digest(tag: &str, digest: &Digest) -> bool {
    tag.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .is_some_and(|t| t == digest.as_str())
}

/// A blob answer (206 with `Content-Range` for a range); the bytes sent are
/// counted in `ferry_bytes_served_total`.
pub(crate) fn blob(
    metrics: &Arc<Metrics>,
    digest: &Digest,
    total: Option<u64>,
    range: Option<(u64, u64)>,
    body: Option<ByteStream>,
) -> Response<Body> {
    let metrics = metrics.clone();
    let body = match body {
        None => empty(),
        Some(stream) => {
            let counted = stream.map_ok(move |b| {
                metrics.bytes_served.inc_by(b.len() as u64);
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
pub(crate) fn unauthorized(head: bool) -> Response<Body> {
    let e = OciError::new(
        crate::oci::ErrorCode::Unauthorized,
        "authentication required",
    );
    let mut resp = error(&e, head);
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"ferry\""),
    );
    resp
}

/// An OCI error response (`HEAD` gets the headers without the body).
pub fn error(e: &OciError, head: bool) -> Response<Body> {
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
    resp
}

/// A plain-text answer.
pub(crate) fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = sized(
        HeaderValue::from_static("text/plain"),
        Bytes::from_static(body.as_bytes()),
        false,
    );
    *r.status_mut() = status;
    r
}

/// A JSON answer.
pub(crate) fn json(body: String) -> Response<Body> {
    sized(JSON, Bytes::from(body), false)
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
