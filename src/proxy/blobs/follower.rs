//! Followers: every response to a blob in flight (the first included) is a
//! stream that follows the leader's published progress, taking bytes from the
//! in-memory window while it keeps up and from the temp file otherwise. So N
//! clients cost one upstream transfer, memory stays at one chunk per client,
//! and a client that goes away cancels nothing.
//!
//! The last byte of every response is held back until the digest is checked:
//! a corrupt transfer reaches clients as an aborted body (short of
//! `Content-Length`), never as a clean 200 with wrong bytes.

use super::body::{ByteStream, READ_CHUNK};
use super::pread;
use super::progress::{FetchFailure, FetchState, Phase};
use super::relay;
use crate::metrics::Metrics;
use crate::oci::Digest;
use crate::upstream::Target;
use bytes::Bytes;
use futures_util::StreamExt;
use std::io;
use std::sync::Arc;
use tokio::sync::watch;

/// Counts a response streaming from a fetch, for `/metrics`.
struct WaiterGauge(Arc<Metrics>);

impl WaiterGauge {
    fn new(m: Arc<Metrics>) -> WaiterGauge {
        m.inflight_waiters.inc();
        WaiterGauge(m)
    }
}

impl Drop for WaiterGauge {
    fn drop(&mut self) {
        self.0.inflight_waiters.dec();
    }
}

/// What a follower needs to continue from upstream by itself when the local
/// disk fails under the fetch.
pub(crate) struct Fallback {
    pub target: Target,
    pub digest: Digest,
    pub metrics: Arc<Metrics>,
}

struct Follower {
    rx: watch::Receiver<FetchState>,
    /// Where this stream began.
    start: u64,
    /// The next byte it sends.
    pos: u64,
    /// Exclusive end of the bytes this response carries, when known.
    end: Option<u64>,
    /// How to go on if the disk fails under the fetch; `None`: fail instead.
    fallback: Option<Fallback>,
    /// Set once the response continues straight from upstream.
    relay: Option<ByteStream>,
    /// Ended (an error was yielded).
    done: bool,
    /// Client responses only.
    _gauge: Option<WaiterGauge>,
}

/// A response body streaming bytes `[start, end)` of an in-flight fetch.
pub(crate) fn follow(
    rx: watch::Receiver<FetchState>,
    start: u64,
    end: Option<u64>,
    fallback: Fallback,
) -> ByteStream {
    let gauge = WaiterGauge::new(fallback.metrics.clone());
    stream(Follower {
        rx,
        start,
        pos: start,
        end,
        fallback: Some(fallback),
        relay: None,
        done: false,
        _gauge: Some(gauge),
    })
}

/// The whole blob of an in-flight fetch, for the bucket upload: like a
/// response (the last byte held until the digest checks), but it never turns
/// to upstream by itself and is not counted as a client.
pub(crate) fn follow_for_upload(rx: watch::Receiver<FetchState>, total: Option<u64>) -> ByteStream {
    stream(Follower {
        rx,
        start: 0,
        pos: 0,
        end: total,
        fallback: None,
        relay: None,
        done: false,
        _gauge: None,
    })
}

fn stream(f: Follower) -> ByteStream {
    Box::pin(futures_util::stream::unfold(f, |mut f| async move {
        if f.done {
            return None;
        }
        let next = match f.relay.as_mut() {
            Some(relay) => relay.next().await.transpose(),
            None => f.next().await,
        };
        match next {
            Ok(Some(bytes)) => Some((Ok(bytes), f)),
            Ok(None) => None,
            Err(e) => {
                f.done = true;
                Some((Err(e), f))
            }
        }
    }))
}

impl Follower {
    async fn next(&mut self) -> io::Result<Option<Bytes>> {
        let mut sender_gone = false;
        loop {
            let s = self.rx.borrow_and_update().clone();
            let verified = match &s.phase {
                Phase::Failed(FetchFailure::Broken(why)) => {
                    return Err(io::Error::other(why.clone()))
                }
                Phase::Failed(FetchFailure::StoreUnavailable) => {
                    return self.continue_from_upstream(&s).await
                }
                Phase::Failed(_) => return Err(io::Error::other("blob fetch failed")),
                Phase::Starting | Phase::Streaming => false,
                Phase::Verified => true,
            };
            // Everything up to `avail` may be sent now. Until the digest is
            // verified the final byte of the response stays back.
            let avail = match (verified, self.end) {
                (true, Some(end)) => end.min(s.written),
                (true, None) => s.written,
                (false, Some(end)) => s.received.min(end.saturating_sub(1)),
                (false, None) => s.received,
            };
            if self.pos < avail {
                let len = (avail - self.pos).min(READ_CHUNK as u64) as usize;
                let bytes = match s.recent.slice(self.pos, len) {
                    Some(bytes) => bytes,
                    None => {
                        // Only written bytes leave memory; `written` may have
                        // grown since `s` was taken.
                        let written = self.rx.borrow().written;
                        let (Some(file), true) = (s.file.as_ref(), self.pos < written) else {
                            return Err(io::Error::other("fetch bytes neither held nor written"));
                        };
                        let len = len.min((written - self.pos) as usize);
                        pread::read_at(file, self.pos, len).await?
                    }
                };
                self.pos += bytes.len() as u64;
                return Ok(Some(bytes));
            }
            if verified {
                return if self.end.is_some_and(|e| self.pos < e) {
                    Err(io::Error::other("blob is shorter than the range asked for"))
                } else {
                    Ok(None)
                };
            }
            if sender_gone {
                return Err(io::Error::other("blob fetch ended without a result"));
            }
            if self.rx.changed().await.is_err() {
                sender_gone = true;
            }
        }
    }

    /// The disk failed under the fetch: this response goes on straight from
    /// upstream at its own position. A whole-body response stays verified: the
    /// bytes already sent are re-hashed from the temp file (still open here).
    async fn continue_from_upstream(&mut self, s: &FetchState) -> io::Result<Option<Bytes>> {
        let Some(f) = &self.fallback else {
            return Err(io::Error::other("the local disk failed under the fetch"));
        };
        let prefix = match (&s.file, self.start) {
            (Some(file), 0) => {
                let (file, upto, algorithm) = (file.clone(), self.pos, f.digest.algorithm());
                // Bytes sent but never written are still held in memory.
                let (recent, written) = (s.recent.clone(), s.written);
                let hasher = tokio::task::spawn_blocking(move || {
                    let mut h = ferry_storage::Hasher::new(algorithm);
                    let mut at = 0;
                    while at < upto {
                        let n = (upto - at).min(READ_CHUNK as u64) as usize;
                        let chunk = if at < written {
                            pread::read_exact_at(&file, at, n.min((written - at) as usize))?
                        } else {
                            recent.slice(at, n).ok_or_else(|| {
                                io::Error::other("bytes sent before the disk failed are gone")
                            })?
                        };
                        h.update(&chunk);
                        at += chunk.len() as u64;
                    }
                    Ok::<_, io::Error>(h)
                })
                .await
                .map_err(io::Error::other)??;
                Some(hasher)
            }
            _ => None,
        };
        let (_, mut relay) = relay::passthrough(
            &f.target,
            &f.digest,
            self.pos,
            self.end,
            prefix,
            f.metrics.clone(),
        )
        .await
        .map_err(io::Error::other)?;
        let first = relay.next().await.transpose();
        self.relay = Some(relay);
        first
    }
}
