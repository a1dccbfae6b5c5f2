//! A fetch's progress as its leader publishes it and its followers read it:
//! the phase, the bytes written so far, the temp file, and the newest bytes
//! still in memory.

use crate::proxy::error::Error;
use bytes::Bytes;
use std::fs::File;
use std::sync::Arc;
use tokio::sync::watch;

/// Written bytes a fetch keeps in memory for followers that keep up.
pub(super) const RECENT_BYTES: u64 = 2 * 1024 * 1024;

/// Why a fetch ended without verified bytes.
#[derive(Clone, Debug)]
pub(crate) enum FetchFailure {
    /// Upstream refused before any byte (404, 429, outage): a proper error response.
    Upstream(Error),
    /// The transfer broke or the bytes were wrong: responses already started abort.
    Broken(String),
    /// The local disk failed: clients that have not started are served uncached.
    StoreUnavailable,
}

/// Where a fetch is.
#[derive(Clone, Debug)]
pub(crate) enum Phase {
    /// Waiting for upstream's response headers.
    Starting,
    /// Bytes are landing in the temp file.
    Streaming,
    /// Every byte is written and hashes to the digest.
    Verified,
    /// It ended without verified bytes.
    Failed(FetchFailure),
}

/// A fetch's progress, published to every follower.
#[derive(Clone, Debug)]
pub(crate) struct FetchState {
    pub phase: Phase,
    /// The blob's size, when upstream said (`Content-Length`).
    pub total: Option<u64>,
    /// Bytes in the temp file so far.
    pub written: u64,
    /// A read handle on the temp file.
    pub file: Option<Arc<File>>,
    /// The most recently written bytes, still in memory: a follower keeping up
    /// with the transfer takes them from here instead of reading the file.
    pub recent: Arc<RecentBytes>,
    /// The bytes come (or are being asked) from a peer, the key's owner: a
    /// peer's request must not wait on this fetch (it may be the one waited on).
    pub from_peer: bool,
}

impl FetchState {
    /// The blob's size: from upstream's `Content-Length`, or once verified,
    /// from the bytes themselves.
    pub fn size(&self) -> Option<u64> {
        match self.phase {
            Phase::Verified => Some(self.written),
            _ => self.total,
        }
    }
}

/// The newest written chunks with their offsets, oldest first, about
/// [`RECENT_BYTES`] in all.
#[derive(Debug, Default)]
pub(crate) struct RecentBytes(Vec<(u64, Bytes)>);

impl RecentBytes {
    /// Up to `len` bytes at `pos`, if that offset is still held.
    pub fn slice(&self, pos: u64, len: usize) -> Option<Bytes> {
        let i = self
            .0
            .partition_point(|(off, b)| off + b.len() as u64 <= pos);
        let (off, bytes) = self.0.get(i).filter(|(off, _)| *off <= pos)?;
        let from = (pos - off) as usize;
        Some(bytes.slice(from..bytes.len().min(from + len)))
    }

    /// `self` followed by `batch` (written at `offset`), trimmed to the newest
    /// [`RECENT_BYTES`].
    pub fn after(&self, mut offset: u64, batch: &[Bytes]) -> RecentBytes {
        let mut chunks = self.0.clone();
        for b in batch.iter().filter(|b| !b.is_empty()) {
            chunks.push((offset, b.clone()));
            offset += b.len() as u64;
        }
        let newest = chunks.last().map_or(0, |(off, b)| off + b.len() as u64);
        chunks.retain(|(off, b)| off + b.len() as u64 + RECENT_BYTES > newest);
        RecentBytes(chunks)
    }
}

/// A fetch in flight; followers subscribe to its progress.
pub(crate) struct BlobFetch {
    pub state: watch::Receiver<FetchState>,
}

impl BlobFetch {
    /// A new fetch's channel: the leader publishes on the sender.
    pub fn channel() -> (watch::Sender<FetchState>, BlobFetch) {
        let (tx, rx) = watch::channel(FetchState {
            phase: Phase::Starting,
            total: None,
            written: 0,
            file: None,
            recent: Arc::default(),
            from_peer: false,
        });
        (tx, BlobFetch { state: rx })
    }

    /// Waits until the fetch has response headers (or failed before them).
    pub async fn started(&self) -> Result<(watch::Receiver<FetchState>, FetchState), FetchFailure> {
        let mut rx = self.state.clone();
        let state = rx
            .wait_for(|s| !matches!(s.phase, Phase::Starting))
            .await
            .map(|s| s.clone())
            .map_err(|_| FetchFailure::Broken("fetch task ended".into()))?;
        match &state.phase {
            Phase::Failed(f) => Err(f.clone()),
            _ => Ok((rx, state)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_bytes_serve_held_offsets_and_forget_old_ones() {
        let chunk = |n: usize, v: u8| Bytes::from(vec![v; n]);
        let r = RecentBytes::default().after(0, &[chunk(10, 1), Bytes::new(), chunk(5, 2)]);
        assert_eq!(&r.slice(0, 100).unwrap()[..], &[1; 10]);
        assert_eq!(&r.slice(8, 100).unwrap()[..], &[1, 1]);
        assert_eq!(&r.slice(10, 3).unwrap()[..], &[2, 2, 2]);
        assert!(r.slice(15, 1).is_none(), "not written yet");
        // A megabyte chunk pushes the first ones out once over RECENT_BYTES.
        let big = RECENT_BYTES as usize;
        let r = r.after(15, &[chunk(big, 3)]);
        assert!(r.slice(0, 1).is_none(), "dropped from memory");
        assert_eq!(r.slice(15, 4).unwrap()[..], [3; 4]);
        assert_eq!(r.slice(15 + big as u64 - 1, 9).unwrap().len(), 1);
    }
}
