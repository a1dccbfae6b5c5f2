//! Why a store call failed.

use crate::Digest;
use std::io;

/// Errors from the store. I/O and index failures are distinct so callers can
/// decide whether to degrade (stream without caching) or refuse.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("index error: {0}")]
    Index(#[from] rocksdb::Error),
    #[error("index holds a corrupt record under {0:?}")]
    CorruptRecord(String),
    #[error("bytes do not hash to {0}")]
    DigestMismatch(Digest),
    /// The data directory is in a format this build cannot read (see [`crate::format`]).
    #[error("{0}")]
    Format(String),
}

impl StoreError {
    /// The index is locked by another process (a second Ferry on the same
    /// data directory, or the previous one still stopping).
    pub fn is_locked(&self) -> bool {
        match self {
            StoreError::Index(e) => {
                let m = e.to_string();
                m.contains("LOCK") || m.contains("lock file")
            }
            _ => false,
        }
    }
}
