//! Blob fetches: one upstream transfer per digest, streamed to every client as
//! the bytes land, committed to the store only once they verify.
//!
//! The leader task downloads into a temp file (hashing as it writes) and
//! publishes its progress on a `watch` channel. Every client response, the
//! first included, is a [`follow`] stream reading that file with positional
//! reads up to the published length, so N clients cost one upstream transfer,
//! memory stays at one chunk per client, and a client that goes away cancels
//! nothing. The last byte of every response is held back until the digest is
//! checked: a corrupt transfer reaches clients as an aborted body (short of
//! `Content-Length`), never as a clean 200 with wrong bytes.

use super::{map_upstream_error, ByteStream, Proxy};
use crate::metrics::Metrics;
use crate::oci::{Digest, ErrorCode, OciError, RepoName};
use crate::upstream::{Upstream, UpstreamError};
use bytes::{Bytes, BytesMut};
use ferry_storage::{BlobWriter, CommitError};
use futures_util::StreamExt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::watch;

/// Bytes gathered from upstream before each write to the temp file.
const WRITE_BATCH: usize = 256 * 1024;
/// Largest chunk a client response reads at once.
pub(crate) const READ_CHUNK: usize = 256 * 1024;
/// How many times a dropped upstream transfer is resumed with `Range`.
const MAX_RESUMES: u32 = 3;

/// Why a fetch ended without verified bytes.
#[derive(Clone, Debug)]
pub(crate) enum FetchFailure {
    /// Upstream refused before any byte (404, 429, outage): a proper error response.
    Upstream(OciError),
    /// The transfer broke or the bytes were wrong: responses already started abort.
    Broken(String),
    /// The local disk failed: clients that have not started are served uncached.
    StoreUnavailable,
}

#[derive(Clone, Debug)]
pub(crate) enum Phase {
    /// Waiting for upstream's response headers.
    Starting,
    Streaming,
    /// Every byte is written and hashes to the digest.
    Verified,
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
    pub file: Option<Arc<File>>,
}

/// A fetch in flight; followers subscribe to its progress.
pub(crate) struct BlobFetch {
    pub state: watch::Receiver<FetchState>,
}

impl BlobFetch {
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

/// Starts the leader task for `digest`. The caller has made sure no other fetch
/// of it is in flight (see `Proxy::blob_fetch`).
pub(crate) fn start(
    proxy: Arc<Proxy>,
    upstream: Arc<Upstream>,
    repo: RepoName,
    digest: Digest,
) -> BlobFetch {
    let (tx, rx) = watch::channel(FetchState {
        phase: Phase::Starting,
        total: None,
        written: 0,
        file: None,
    });
    tokio::spawn(async move {
        proxy
            .metrics
            .inflight_fetches
            .fetch_add(1, Ordering::Relaxed);
        let outcome = download(&proxy, &upstream, &repo, &digest, &tx).await;
        let phase = match outcome {
            Ok(()) => Phase::Verified,
            Err(f) => {
                if let FetchFailure::Broken(why) = &f {
                    tracing::warn!(%digest, upstream = upstream.name(), "blob fetch failed: {why}");
                }
                Phase::Failed(f)
            }
        };
        tx.send_modify(|s| s.phase = phase);
        proxy.finish_fetch(&digest);
        proxy
            .metrics
            .inflight_fetches
            .fetch_sub(1, Ordering::Relaxed);
    });
    BlobFetch { state: rx }
}

async fn download(
    proxy: &Arc<Proxy>,
    upstream: &Upstream,
    repo: &RepoName,
    digest: &Digest,
    tx: &watch::Sender<FetchState>,
) -> Result<(), FetchFailure> {
    let mut resp = upstream
        .get_blob(repo, digest, 0)
        .await
        .map_err(|e| FetchFailure::Upstream(map_upstream_error(e, ErrorCode::BlobUnknown)))?;
    let total = resp.total;
    let store = proxy.store.clone();
    let d = digest.clone();
    let writer = match tokio::task::spawn_blocking(move || store.begin_blob(&d)).await {
        Ok(Ok(w)) => w,
        Ok(Err(e)) => {
            proxy.store_failed(&e.to_string());
            return Err(FetchFailure::StoreUnavailable);
        }
        Err(_) => return Err(FetchFailure::StoreUnavailable),
    };
    tx.send_modify(|s| {
        s.phase = Phase::Streaming;
        s.total = total;
        s.file = Some(writer.reader());
    });

    let mut sink = Sink {
        writer: Some(writer),
        pending: BytesMut::with_capacity(WRITE_BATCH),
        written: 0,
        proxy,
        tx,
    };
    let mut resumes = 0;
    loop {
        let received = sink.written + sink.pending.len() as u64;
        let step = upstream.next_chunk(&mut resp.response).await;
        let dropped = match step {
            Ok(Some(chunk)) => {
                proxy
                    .metrics
                    .bytes_fetched
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                if total.is_some_and(|t| received + chunk.len() as u64 > t) {
                    proxy
                        .metrics
                        .integrity_failures
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(FetchFailure::Broken(
                        "upstream sent more bytes than its Content-Length".into(),
                    ));
                }
                sink.pending.extend_from_slice(&chunk);
                if sink.pending.len() >= WRITE_BATCH {
                    sink.flush().await?;
                }
                continue;
            }
            Ok(None) if total.is_none_or(|t| received == t) => break,
            Ok(None) => "upstream closed the body early".to_string(),
            Err(e) => e.to_string(),
        };
        sink.flush().await?;
        if resumes == MAX_RESUMES {
            return Err(FetchFailure::Broken(format!(
                "{dropped}; gave up after {MAX_RESUMES} resumes"
            )));
        }
        resumes += 1;
        proxy.metrics.fetch_resumes.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%digest, offset = sink.written, "resuming blob transfer: {dropped}");
        resp = upstream
            .get_blob(repo, digest, sink.written)
            .await
            .map_err(|e| FetchFailure::Broken(format!("resume failed: {e}")))?;
        if resp.total.is_some() && total.is_some() && resp.total != total {
            return Err(FetchFailure::Broken(
                "resume answered a different size".into(),
            ));
        }
    }
    sink.flush().await?;
    sink.commit(total, digest).await
}

/// The writing side of a fetch: batches upstream chunks into the temp file and
/// publishes how far it got.
struct Sink<'a> {
    writer: Option<BlobWriter>,
    pending: BytesMut,
    written: u64,
    proxy: &'a Arc<Proxy>,
    tx: &'a watch::Sender<FetchState>,
}

impl Sink<'_> {
    async fn flush(&mut self) -> Result<(), FetchFailure> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let Some(mut writer) = self.writer.take() else {
            return Err(FetchFailure::StoreUnavailable);
        };
        let batch = self.pending.split().freeze();
        let n = batch.len() as u64;
        let (writer, result) = tokio::task::spawn_blocking(move || {
            let r = writer.write(&batch);
            (writer, r)
        })
        .await
        .map_err(|_| FetchFailure::StoreUnavailable)?;
        if let Err(e) = result {
            self.proxy.store_failed(&e.to_string());
            return Err(FetchFailure::StoreUnavailable);
        }
        self.writer = Some(writer);
        self.written += n;
        let written = self.written;
        self.tx.send_modify(|s| s.written = written);
        Ok(())
    }

    async fn commit(mut self, total: Option<u64>, digest: &Digest) -> Result<(), FetchFailure> {
        let writer = self.writer.take().ok_or(FetchFailure::StoreUnavailable)?;
        let outcome = tokio::task::spawn_blocking(move || writer.commit(total))
            .await
            .map_err(|_| FetchFailure::StoreUnavailable)?;
        match outcome {
            Ok(_) => {
                self.proxy.store_recovered();
                self.proxy.after_commit();
                Ok(())
            }
            Err(e @ (CommitError::DigestMismatch { .. } | CommitError::SizeMismatch { .. })) => {
                self.proxy
                    .metrics
                    .integrity_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%digest, "upstream blob rejected: {e}");
                Err(FetchFailure::Broken(e.to_string()))
            }
            // The bytes verified (commit checks before it touches the disk):
            // serve them, uncached.
            Err(CommitError::Store(e)) => {
                self.proxy.store_failed(&e.to_string());
                Ok(())
            }
        }
    }
}

/// Counts a response streaming from a fetch, for `/metrics`.
struct WaiterGauge(Arc<Metrics>);

impl WaiterGauge {
    fn new(m: Arc<Metrics>) -> WaiterGauge {
        m.inflight_waiters.fetch_add(1, Ordering::Relaxed);
        WaiterGauge(m)
    }
}

impl Drop for WaiterGauge {
    fn drop(&mut self) {
        self.0.inflight_waiters.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Follower {
    rx: watch::Receiver<FetchState>,
    start: u64,
    pos: u64,
    /// Exclusive end of the bytes this response carries, when known.
    end: Option<u64>,
    /// Where to continue if the local disk fails mid-transfer.
    fallback: Fallback,
    /// Set once the response continues straight from upstream.
    relay: Option<ByteStream>,
    done: bool,
    _gauge: WaiterGauge,
}

/// What a follower needs to continue from upstream by itself.
pub(crate) struct Fallback {
    pub upstream: Arc<Upstream>,
    pub repo: RepoName,
    pub digest: Digest,
    pub metrics: Arc<Metrics>,
}

/// A response body streaming bytes `[start, end)` of an in-flight fetch.
pub(crate) fn follow(
    rx: watch::Receiver<FetchState>,
    start: u64,
    end: Option<u64>,
    fallback: Fallback,
) -> ByteStream {
    let f = Follower {
        rx,
        start,
        pos: start,
        end,
        _gauge: WaiterGauge::new(fallback.metrics.clone()),
        fallback,
        relay: None,
        done: false,
    };
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
                Phase::Starting => false,
                Phase::Streaming => false,
                Phase::Verified => true,
            };
            // Everything up to `avail` may be sent now. Until the digest is
            // verified the final byte of the response stays back.
            let avail = match (verified, self.end) {
                (true, Some(end)) => end.min(s.written),
                (true, None) => s.written,
                (false, Some(end)) => s.written.min(end.saturating_sub(1)),
                (false, None) => s.written,
            };
            if self.pos < avail {
                let Some(file) = s.file.clone() else {
                    return Err(io::Error::other("fetch has no file"));
                };
                let len = (avail - self.pos).min(READ_CHUNK as u64) as usize;
                let pos = self.pos;
                let bytes = tokio::task::spawn_blocking(move || read_at(&file, pos, len))
                    .await
                    .map_err(io::Error::other)??;
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
}

impl Follower {
    /// The disk failed under the fetch: this response goes on straight from
    /// upstream at its own position. A whole-body response stays verified: the
    /// bytes already sent are re-hashed from the temp file (still open here).
    async fn continue_from_upstream(&mut self, s: &FetchState) -> io::Result<Option<Bytes>> {
        let prefix = match (&s.file, self.start) {
            (Some(file), 0) => {
                let (file, upto, algorithm) =
                    (file.clone(), self.pos, self.fallback.digest.algorithm());
                let hasher = tokio::task::spawn_blocking(move || {
                    let mut h = ferry_storage::Hasher::new(algorithm);
                    let mut at = 0;
                    while at < upto {
                        let chunk =
                            read_at(&file, at, (upto - at).min(READ_CHUNK as u64) as usize)?;
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
        let f = &self.fallback;
        let (_, mut relay) = passthrough(
            f.upstream.clone(),
            &f.repo,
            &f.digest,
            self.pos,
            self.end,
            prefix,
            f.metrics.clone(),
        )
        .await
        .map_err(|e| io::Error::other(e.message))?;
        let first = relay.next().await.transpose();
        self.relay = Some(relay);
        first
    }
}

fn read_at(file: &File, pos: u64, len: usize) -> io::Result<Bytes> {
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        let n = file.read_at(&mut buf[filled..], pos + filled as u64)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "temp file shorter than published",
            ));
        }
        filled += n;
    }
    Ok(Bytes::from(buf))
}

/// Streams a blob straight from upstream without caching, for when the local
/// disk is failing. With a `hasher` (holding bytes `[0, start)`), the body is
/// hashed as it goes and its last chunk held back until the whole blob
/// verifies; without one (a range) it is relayed as upstream sends it.
pub(crate) async fn passthrough(
    upstream: Arc<Upstream>,
    repo: &RepoName,
    digest: &Digest,
    start: u64,
    end: Option<u64>,
    hasher: Option<ferry_storage::Hasher>,
    metrics: Arc<Metrics>,
) -> Result<(Option<u64>, ByteStream), OciError> {
    let resp = upstream
        .get_blob(repo, digest, start)
        .await
        .map_err(|e| map_upstream_error(e, ErrorCode::BlobUnknown))?;
    metrics.uncached_passthrough.fetch_add(1, Ordering::Relaxed);
    let total = resp.total;
    struct Relay {
        upstream: Arc<Upstream>,
        resp: reqwest::Response,
        hasher: Option<ferry_storage::Hasher>,
        digest: Digest,
        held: Option<Bytes>,
        pos: u64,
        end: Option<u64>,
        metrics: Arc<Metrics>,
        done: bool,
    }
    let relay = Relay {
        hasher: hasher.filter(|_| end.is_none_or(|e| Some(e) == total)),
        upstream,
        resp: resp.response,
        digest: digest.clone(),
        held: None,
        pos: start,
        end,
        metrics,
        done: false,
    };
    let stream = futures_util::stream::unfold(relay, |mut r| async move {
        if r.done {
            return None;
        }
        loop {
            let chunk = match r.upstream.next_chunk(&mut r.resp).await {
                Ok(c) => c,
                Err(e) => {
                    r.done = true;
                    return Some((Err(io::Error::other(e.to_string())), r));
                }
            };
            let Some(mut chunk) = chunk else {
                r.done = true;
                let last = r.held.take();
                if let Some(h) = r.hasher.take() {
                    if h.finish() != r.digest {
                        r.metrics.integrity_failures.fetch_add(1, Ordering::Relaxed);
                        return Some((
                            Err(io::Error::other(
                                UpstreamError::Invalid("digest mismatch".into()).to_string(),
                            )),
                            r,
                        ));
                    }
                }
                return last.map(|b| (Ok(b), r));
            };
            if let Some(end) = r.end {
                let room = end.saturating_sub(r.pos) as usize;
                chunk.truncate(room);
            }
            r.pos += chunk.len() as u64;
            r.metrics
                .bytes_fetched
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if let Some(h) = r.hasher.as_mut() {
                h.update(&chunk);
                // Hold the newest chunk back until the end proves the digest.
                if let Some(prev) = r.held.replace(chunk) {
                    return Some((Ok(prev), r));
                }
                continue;
            }
            if chunk.is_empty() && r.end.is_some_and(|e| r.pos >= e) {
                return None;
            }
            return Some((Ok(chunk), r));
        }
    });
    Ok((total, Box::pin(stream)))
}
