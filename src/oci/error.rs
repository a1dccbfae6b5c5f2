//! OCI distribution error codes and the JSON body every error response carries.

use http::StatusCode;

/// The error codes Ferry answers with, each with the HTTP status distribution maps it to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// `BLOB_UNKNOWN`: 404.
    BlobUnknown,
    /// `DIGEST_INVALID`: 400.
    DigestInvalid,
    /// `MANIFEST_INVALID`: 400.
    ManifestInvalid,
    /// `MANIFEST_UNKNOWN`: 404.
    ManifestUnknown,
    /// `NAME_INVALID`: 400.
    NameInvalid,
    /// `NAME_UNKNOWN`: 404.
    NameUnknown,
    /// `PAGINATION_NUMBER_INVALID`: 400.
    PaginationNumberInvalid,
    /// `RANGE_INVALID`: 416.
    RangeInvalid,
    /// `SIZE_INVALID`: 400.
    SizeInvalid,
    /// `TAG_INVALID`: 400.
    TagInvalid,
    /// `UNSUPPORTED`: 405.
    Unsupported,
    /// `DENIED`: 403.
    Denied,
    /// `UNAUTHORIZED`: 401.
    Unauthorized,
    /// `TOOMANYREQUESTS`: 429.
    TooManyRequests,
    /// `UNAVAILABLE`: 503.
    Unavailable,
    /// `UNKNOWN`: 500.
    Unknown,
}

impl ErrorCode {
    /// The code as the JSON body spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::PaginationNumberInvalid => "PAGINATION_NUMBER_INVALID",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::TagInvalid => "TAG_INVALID",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Unknown => "UNKNOWN",
        }
    }

    /// The status distribution answers with.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::BlobUnknown | ErrorCode::ManifestUnknown | ErrorCode::NameUnknown => {
                StatusCode::NOT_FOUND
            }
            ErrorCode::DigestInvalid
            | ErrorCode::ManifestInvalid
            | ErrorCode::NameInvalid
            | ErrorCode::PaginationNumberInvalid
            | ErrorCode::SizeInvalid
            | ErrorCode::TagInvalid => StatusCode::BAD_REQUEST,
            ErrorCode::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Denied => StatusCode::FORBIDDEN,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error as the client sees it: a code, a human message, and optionally a
/// status other than the code's default (e.g. 502 for a broken upstream).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OciError {
    /// The code.
    pub code: ErrorCode,
    /// A message for people.
    pub message: String,
    /// The HTTP status.
    pub status: StatusCode,
    /// Seconds the client should wait, sent as `Retry-After` (429/503).
    pub retry_after: Option<u64>,
    /// For a 416: the blob's size, sent as `Content-Range: bytes */<size>`.
    pub unsatisfied_size: Option<u64>,
}

impl OciError {
    /// An error with the code's default status.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> OciError {
        OciError {
            code,
            message: message.into(),
            status: code.status(),
            retry_after: None,
            unsatisfied_size: None,
        }
    }

    /// The same error with another status.
    pub fn with_status(mut self, status: StatusCode) -> OciError {
        self.status = status;
        self
    }

    /// The same error with a `Retry-After`.
    pub fn with_retry_after(mut self, seconds: Option<u64>) -> OciError {
        self.retry_after = seconds;
        self
    }

    /// `{"errors":[{"code":…,"message":…}]}`.
    pub fn body(&self) -> String {
        serde_json::json!({
            "errors": [{ "code": self.code.as_str(), "message": self.message, "detail": null }]
        })
        .to_string()
    }
}

impl std::fmt::Display for OciError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.code.as_str(),
            self.status,
            self.message
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_spec_shaped() {
        let e = OciError::new(ErrorCode::ManifestUnknown, "no such tag");
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        let v: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
        assert_eq!(v["errors"][0]["code"], "MANIFEST_UNKNOWN");
        assert_eq!(v["errors"][0]["message"], "no such tag");
    }

    #[test]
    fn statuses_follow_distribution() {
        assert_eq!(
            ErrorCode::Unsupported.status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(ErrorCode::DigestInvalid.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            ErrorCode::TooManyRequests.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            ErrorCode::RangeInvalid.status(),
            StatusCode::RANGE_NOT_SATISFIABLE
        );
    }
}
