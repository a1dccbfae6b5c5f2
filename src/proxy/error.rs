//! Why the cache could not answer. One typed error says where a failure came
//! from and keeps its cause; the HTTP edge (`server::errors`) is the only place
//! that turns it into a status and an OCI error code.

use crate::upstream::UpstreamError;
use ferry_storage::StoreError;
use std::sync::Arc;

/// A failure of the cache, by origin.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// Upstream failed or refused: outage, rate limit, denial, a broken answer.
    #[error(transparent)]
    Upstream(UpstreamError),
    /// The content does not exist: upstream said 404, now or recently
    /// (the negative cache). The text says what was looked for.
    #[error("{0}")]
    NotFound(String),
    /// The local store failed (disk, index) and no answer could be given without it.
    #[error("local store failed: {0}")]
    Store(#[source] Arc<StoreError>),
    /// Upstream sent bytes that do not match their digest or size.
    #[error("upstream content failed verification: {0}")]
    Integrity(String),
    /// The requested range lies outside a blob of this size.
    #[error("range not satisfiable for a blob of {size} bytes")]
    Range {
        /// The blob's size, for `Content-Range: bytes */<size>`.
        size: u64,
    },
    /// A peer's request would wait on a fetch that itself waits on a peer
    /// (split membership views): the peer fetches for itself (`508`).
    #[error("this replica's fetch waits on a peer; fetch it yourself")]
    Loop,
    /// A task died or an invariant broke: a bug.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A cache result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<UpstreamError> for Error {
    fn from(e: UpstreamError) -> Error {
        match e {
            UpstreamError::NotFound => Error::NotFound("not found upstream".into()),
            e => Error::Upstream(e),
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        Error::Store(Arc::new(e))
    }
}

impl Error {
    /// Failures of a source rather than answers about the content: upstream
    /// outages and local store faults. A stale cached answer may stand in.
    pub fn allows_stale(&self) -> bool {
        match self {
            Error::Upstream(e) => e.is_outage(),
            Error::Store(_) => true,
            _ => false,
        }
    }

    /// Upstream's final word that the content is not there (404, or a denial
    /// after authenticating, Docker Hub's answer for a missing repository).
    pub fn is_absent(&self) -> bool {
        matches!(
            self,
            Error::NotFound(_) | Error::Upstream(UpstreamError::Unauthorized)
        )
    }
}
