//! The push-event receiver: `POST /events/<upstream>` on the client port.
//!
//! The path names the upstream whose `[upstream.events]` secret the post must
//! prove (see `events::signature`). Outside `/v2/`, so client authentication
//! does not apply: the secret is this endpoint's own. Answers:
//! - `200` with counts of what was applied and ignored, for every well-formed
//!   post (unknown kinds included: a picky receiver backs up the sender's queue);
//! - `503` with the same counts when the store could not record an event:
//!   those events are not remembered as seen, so the sender's retry (every
//!   registry retries until a 2xx) applies them;
//! - `401` without the secret or with a wrong signature, `400` for a body in
//!   no known format, `404` for an upstream without events, `413` over 1 MiB.
//!
//! Nothing changes unless the post is authenticated and readable.

use super::responses::{self, Body};
use crate::cluster::PeerAuth;
use crate::events;
use crate::oci::{ErrorCode, OciError};
use crate::proxy::tag_events::Outcome;
use crate::proxy::Proxy;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;

/// Largest event post read.
const MAX_BODY: usize = 1024 * 1024;

/// Handles `POST /events/<upstream>`.
pub async fn receive<B>(proxy: &Proxy, upstream: &str, req: Request<B>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let metrics = proxy.metrics().clone();
    let reject = |status: StatusCode, code: ErrorCode, why: &str| {
        metrics.event(upstream, "unknown", "rejected", 1);
        tracing::info!(upstream, %status, "event post rejected: {why}");
        responses::error(&OciError::new(code, why).with_status(status), false)
    };
    let Some(secret) = proxy.events_secret(upstream) else {
        return reject(
            StatusCode::NOT_FOUND,
            ErrorCode::NameUnknown,
            "no upstream by that name receives events",
        );
    };
    let token = crate::oci::route::query_param(req.uri().query(), "token");
    let (parts, body) = req.into_parts();
    let body = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return reject(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::SizeInvalid,
                "event post over 1 MiB, or unreadable",
            )
        }
    };
    if !events::signature::verify(&secret, &parts.headers, token.as_deref(), &body) {
        return reject(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "missing or wrong event secret",
        );
    }
    let parsed = match events::parse(&parts.headers, &body) {
        Ok(p) => p,
        Err(e) => {
            return reject(
                StatusCode::BAD_REQUEST,
                ErrorCode::Unsupported,
                &e.to_string(),
            )
        }
    };
    match proxy.apply_events(upstream, &parsed) {
        Ok(report) => {
            // Every replica keeps its own tag records: pass the post on, as it
            // came (its signature with it), unless a peer passed it on to us.
            if let Some(c) = proxy.cluster() {
                if c.auth(&parts.headers) == PeerAuth::Client && report.applied > 0 {
                    let path = parts
                        .uri
                        .path_and_query()
                        .map_or_else(|| parts.uri.path().to_string(), |p| p.to_string());
                    let mut headers = parts.headers.clone();
                    for h in [
                        http::header::HOST,
                        http::header::CONTENT_LENGTH,
                        http::header::CONNECTION,
                        http::header::TRANSFER_ENCODING,
                    ] {
                        headers.remove(h);
                    }
                    c.broadcast(path, headers, body.clone(), "event");
                }
            }
            for outcome in Outcome::ALL {
                let n = report.of(outcome);
                if n > 0 {
                    metrics.event(upstream, report.format, outcome.label(), n as u64);
                }
            }
            if report.ignored > 0 {
                metrics.event(upstream, report.format, "ignored", report.ignored as u64);
            }
            let body = serde_json::to_string(&report).unwrap_or_default();
            if report.failed > 0 {
                // Not remembered as seen: the sender's retry applies them.
                let mut resp = responses::json(body);
                *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                resp.headers_mut().insert(
                    http::header::RETRY_AFTER,
                    http::HeaderValue::from_static("1"),
                );
                return resp;
            }
            responses::json(body)
        }
        Err(e) => reject(
            StatusCode::NOT_FOUND,
            ErrorCode::NameUnknown,
            &e.to_string(),
        ),
    }
}
