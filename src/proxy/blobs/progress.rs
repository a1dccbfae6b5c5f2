//! A fetch's progress as its leader publishes it and its followers read it:
//! the phase, the bytes received and written so far, the temp file, and the
//! newest bytes still in memory.

use crate::proxy::error::Error;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::fs::File;
use std::sync::Arc;
use tokio::sync::watch;

/// Bytes a fetch keeps in memory, behind the newest, for followers that keep
/// up (besides those not yet written, which are always kept).
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
    /// Bytes received so far, in order: followers may send them (all but the
    /// last byte) before they reach the disk.
    pub received: u64,
    /// Bytes in the temp file so far (never more than `received`). It is
    /// updated without waking followers: they follow `received`.
    pub written: u64,
    /// A read handle on the temp file.
    pub file: Option<Arc<File>>,
    /// The bytes received but not yet written, and the newest
    /// [`RECENT_BYTES`] of those written: a follower keeping up with the
    /// transfer takes them from here instead of reading the file.
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

/// The newest received chunks with their offsets, oldest first: every chunk
/// not yet written, and about [`RECENT_BYTES`] behind the newest. Shared by the
/// leader (which appends) and its followers (which slice), so publishing a
/// chunk copies nothing.
#[derive(Debug, Default)]
pub(crate) struct RecentBytes(Mutex<VecDeque<(u64, Bytes)>>);

impl RecentBytes {
    /// Up to `len` bytes at `pos`, if that offset is still held.
    pub fn slice(&self, pos: u64, len: usize) -> Option<Bytes> {
        let chunks = self.0.lock();
        let i = chunks.partition_point(|(off, b)| off + b.len() as u64 <= pos);
        let (off, bytes) = chunks.get(i).filter(|(off, _)| *off <= pos)?;
        let from = (pos - off) as usize;
        Some(bytes.slice(from..bytes.len().min(from + len)))
    }

    /// Appends `batch` (received at `offset`), then forgets the chunks that
    /// are both written (below `written`) and more than [`RECENT_BYTES`]
    /// behind the newest byte.
    pub fn push(&self, mut offset: u64, batch: &[Bytes], written: u64) {
        let mut chunks = self.0.lock();
        for b in batch.iter().filter(|b| !b.is_empty()) {
            chunks.push_back((offset, b.clone()));
            offset += b.len() as u64;
        }
        let keep_from = written.min(offset.saturating_sub(RECENT_BYTES));
        while chunks
            .front()
            .is_some_and(|(off, b)| off + b.len() as u64 <= keep_from)
        {
            chunks.pop_front();
        }
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
            received: 0,
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
    fn recent_bytes_serve_held_offsets_and_forget_old_written_ones() {
        let chunk = |n: usize, v: u8| Bytes::from(vec![v; n]);
        let r = RecentBytes::default();
        r.push(0, &[chunk(10, 1), Bytes::new(), chunk(5, 2)], 0);
        assert_eq!(&r.slice(0, 100).unwrap()[..], &[1; 10]);
        assert_eq!(&r.slice(8, 100).unwrap()[..], &[1, 1]);
        assert_eq!(&r.slice(10, 3).unwrap()[..], &[2, 2, 2]);
        assert!(r.slice(15, 1).is_none(), "not received yet");
        // A big chunk pushes the first ones out, but only once they are written.
        let big = RECENT_BYTES as usize;
        r.push(15, &[chunk(big, 3)], 0);
        assert_eq!(&r.slice(0, 1).unwrap()[..], &[1], "unwritten bytes stay");
        r.push(15 + big as u64, &[chunk(1, 4)], 15);
        assert!(r.slice(0, 1).is_none(), "written and old: forgotten");
        assert_eq!(r.slice(15, 4).unwrap()[..], [3; 4]);
        assert_eq!(r.slice(15 + big as u64 - 1, 9).unwrap().len(), 1);
    }
}
