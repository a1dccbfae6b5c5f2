//! The one place a cache failure becomes an HTTP status and an OCI error code.
//! Everything below the edge returns typed errors; what the client sees is
//! decided here, and failures a person must look at are logged here, once.

use crate::oci::{ErrorCode, OciError};
use crate::proxy::{Error, Refusal};
use crate::upstream::{RouteError, UpstreamError};
use http::StatusCode;

/// What a request asked for: it decides the code of a "not found".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asked {
    /// A manifest, by tag or digest.
    Manifest,
    /// A blob.
    Blob,
    /// A tag list (the repository itself).
    TagList,
    /// A referrers index.
    Referrers,
}

impl Asked {
    fn not_found(self) -> ErrorCode {
        match self {
            Asked::Manifest | Asked::Referrers => ErrorCode::ManifestUnknown,
            Asked::Blob => ErrorCode::BlobUnknown,
            Asked::TagList => ErrorCode::NameUnknown,
        }
    }
}

/// A cache failure as the client sees it. Upstream challenges never pass
/// through: "denied" becomes `NAME_UNKNOWN`, as Docker Hub means it.
pub fn cache_error(e: &Error, asked: Asked) -> OciError {
    match e {
        Error::NotFound(what) => OciError::new(asked.not_found(), what.clone()),
        Error::Upstream(u) => upstream_error(u, asked),
        Error::Store(cause) => {
            tracing::error!(error = %cause, "local store failed; answering 500");
            OciError::new(ErrorCode::Unknown, "local store error")
        }
        Error::Integrity(why) => {
            let code = match asked {
                Asked::Manifest => ErrorCode::ManifestInvalid,
                _ => ErrorCode::Unknown,
            };
            OciError::new(code, why.clone()).with_status(StatusCode::BAD_GATEWAY)
        }
        Error::Range { size } => {
            let mut e = OciError::new(
                ErrorCode::RangeInvalid,
                format!("range not satisfiable for a blob of {size} bytes"),
            );
            e.unsatisfied_size = Some(*size);
            e
        }
        Error::Loop => OciError::new(ErrorCode::Unavailable, e.to_string())
            .with_status(crate::cluster::LOOP_STATUS),
        Error::Internal(why) => {
            tracing::error!(error = %why, "internal error; answering 500");
            OciError::new(ErrorCode::Unknown, "internal error")
        }
    }
}

fn upstream_error(e: &UpstreamError, asked: Asked) -> OciError {
    match e {
        UpstreamError::NotFound => OciError::new(asked.not_found(), "not found upstream"),
        UpstreamError::Unauthorized => OciError::new(
            ErrorCode::NameUnknown,
            "repository not found upstream, or it requires authorization",
        ),
        UpstreamError::RateLimited { retry_after } => {
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            OciError::new(ErrorCode::TooManyRequests, "upstream rate limit reached")
                .with_retry_after(Some(secs.max(1)))
        }
        UpstreamError::Timeout => OciError::new(ErrorCode::Unavailable, "upstream timed out")
            .with_status(StatusCode::GATEWAY_TIMEOUT),
        UpstreamError::Transport(cause) => {
            // The client hears only "unreachable"; the operator needs the cause
            // (refused, DNS, a certificate not trusted without ca_file, ...).
            tracing::warn!(error = %cause, "upstream unreachable; answering 503");
            OciError::new(ErrorCode::Unavailable, "upstream unreachable")
                .with_status(StatusCode::SERVICE_UNAVAILABLE)
        }
        UpstreamError::Status(s) => {
            OciError::new(ErrorCode::Unavailable, format!("upstream answered {s}"))
                .with_status(StatusCode::BAD_GATEWAY)
        }
        UpstreamError::Invalid(why) => OciError::new(
            ErrorCode::Unknown,
            format!("upstream sent an invalid response: {why}"),
        )
        .with_status(StatusCode::BAD_GATEWAY),
    }
}

/// A refused request (Ferry's own `[[client]]` identities, or the upstream's
/// decision for checked access). `Unauthorized` also needs the challenge
/// header: see `responses::unauthorized`.
pub fn refusal(r: Refusal) -> OciError {
    match r {
        Refusal::Unauthorized => OciError::new(
            ErrorCode::Unauthorized,
            "the upstream did not accept these credentials for this repository",
        ),
        Refusal::Forbidden => OciError::new(
            ErrorCode::Denied,
            "these credentials may not pull this repository",
        ),
        Refusal::Missing => OciError::new(
            ErrorCode::NameUnknown,
            "repository not found upstream for these credentials",
        ),
        Refusal::Unavailable => OciError::new(
            ErrorCode::Unavailable,
            "the upstream cannot be asked whether these credentials may pull this repository",
        )
        .with_status(StatusCode::SERVICE_UNAVAILABLE)
        .with_retry_after(Some(5)),
    }
}

/// A request with a `Ferry-Peer` header that does not carry the peer secret.
pub fn wrong_peer_secret() -> OciError {
    OciError::new(ErrorCode::Unauthorized, "wrong peer secret")
}

/// A request that names no configured upstream: nothing was contacted.
pub fn route_error(e: &RouteError) -> OciError {
    match e {
        RouteError::UnknownNamespace(_) => OciError::new(ErrorCode::Denied, e.to_string()),
        RouteError::UnknownPrefix(_) => OciError::new(ErrorCode::NameInvalid, e.to_string()),
        RouteError::UnknownUpstream(_) => OciError::new(ErrorCode::NameUnknown, e.to_string())
            .with_status(StatusCode::BAD_REQUEST),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn status_and_code(e: Error, asked: Asked) -> (StatusCode, ErrorCode) {
        let o = cache_error(&e, asked);
        (o.status, o.code)
    }

    #[test]
    fn every_origin_has_its_status() {
        use StatusCode as S;
        let io = || ferry_storage::StoreError::Io(std::io::Error::other("disk on fire"));
        assert_eq!(
            status_and_code(Error::Store(Arc::new(io())), Asked::Manifest),
            (S::INTERNAL_SERVER_ERROR, ErrorCode::Unknown),
            "a local fault never blames upstream"
        );
        assert_eq!(
            status_and_code(Error::NotFound("x".into()), Asked::Blob),
            (S::NOT_FOUND, ErrorCode::BlobUnknown)
        );
        assert_eq!(
            status_and_code(Error::NotFound("x".into()), Asked::TagList),
            (S::NOT_FOUND, ErrorCode::NameUnknown)
        );
        assert_eq!(
            status_and_code(Error::Integrity("bad".into()), Asked::Manifest),
            (S::BAD_GATEWAY, ErrorCode::ManifestInvalid)
        );
        assert_eq!(
            status_and_code(Error::Range { size: 9 }, Asked::Blob),
            (S::RANGE_NOT_SATISFIABLE, ErrorCode::RangeInvalid)
        );
        assert_eq!(
            status_and_code(Error::Upstream(UpstreamError::Timeout), Asked::Blob),
            (S::GATEWAY_TIMEOUT, ErrorCode::Unavailable)
        );
        assert_eq!(
            status_and_code(Error::Internal("bug".into()), Asked::Blob),
            (S::INTERNAL_SERVER_ERROR, ErrorCode::Unknown)
        );
    }

    #[test]
    fn upstream_auth_is_hidden_and_retry_after_rounds_up() {
        let e = cache_error(
            &Error::Upstream(UpstreamError::Unauthorized),
            Asked::Manifest,
        );
        assert_eq!(
            (e.code, e.status),
            (ErrorCode::NameUnknown, StatusCode::NOT_FOUND)
        );
        let e = cache_error(
            &Error::Upstream(UpstreamError::RateLimited {
                retry_after: Duration::from_millis(29_500),
            }),
            Asked::Manifest,
        );
        assert_eq!(
            (e.status, e.retry_after),
            (StatusCode::TOO_MANY_REQUESTS, Some(30))
        );
    }
}
