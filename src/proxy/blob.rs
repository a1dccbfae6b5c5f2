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
use bytes::Bytes;
use ferry_storage::BlobWriter;
use futures_util::StreamExt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// Bytes gathered from upstream before each write to the temp file.
const WRITE_BATCH: usize = 256 * 1024;
/// Batches queued for the writer thread: bounds the memory a fetch holds when the
/// disk is slower than the network.
const PIPELINE_BATCHES: usize = 8;
/// Written bytes a fetch keeps in memory for followers that keep up.
const RECENT_BYTES: u64 = 2 * 1024 * 1024;
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
    /// The most recently written bytes, still in memory: a follower keeping up
    /// with the transfer takes them from here instead of reading the file.
    pub recent: Arc<RecentBytes>,
}

/// The newest written chunks with their offsets, oldest first, about
/// [`RECENT_BYTES`] in all.
#[derive(Debug, Default)]
pub(crate) struct RecentBytes(Vec<(u64, Bytes)>);

impl RecentBytes {
    /// Up to `len` bytes at `pos`, if that offset is still held.
    fn slice(&self, pos: u64, len: usize) -> Option<Bytes> {
        let i = self
            .0
            .partition_point(|(off, b)| off + b.len() as u64 <= pos);
        let (off, bytes) = self.0.get(i).filter(|(off, _)| *off <= pos)?;
        let from = (pos - off) as usize;
        Some(bytes.slice(from..bytes.len().min(from + len)))
    }

    /// `self` followed by `batch` (written at `offset`), trimmed to the newest
    /// [`RECENT_BYTES`].
    fn after(&self, mut offset: u64, batch: &[Bytes]) -> RecentBytes {
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
        recent: Arc::default(),
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

    let mut sink = Sink::start(writer, tx.clone());
    let mut received = 0u64;
    let mut resumes = 0;
    loop {
        let step = upstream.next_chunk(&mut resp.response).await;
        let dropped = match step {
            Ok(Some(chunk)) => {
                proxy
                    .metrics
                    .bytes_fetched
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                received += chunk.len() as u64;
                if total.is_some_and(|t| received > t) {
                    proxy
                        .metrics
                        .integrity_failures
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(FetchFailure::Broken(
                        "upstream sent more bytes than its Content-Length".into(),
                    ));
                }
                sink.push(chunk, proxy).await?;
                continue;
            }
            Ok(None) if total.is_none_or(|t| received == t) => break,
            Ok(None) => "upstream closed the body early".to_string(),
            Err(e) => e.to_string(),
        };
        if resumes == MAX_RESUMES {
            return Err(FetchFailure::Broken(format!(
                "{dropped}; gave up after {MAX_RESUMES} resumes"
            )));
        }
        resumes += 1;
        proxy.metrics.fetch_resumes.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%digest, offset = received, "resuming blob transfer: {dropped}");
        resp = upstream
            .get_blob(repo, digest, received)
            .await
            .map_err(|e| FetchFailure::Broken(format!("resume failed: {e}")))?;
        if resp.total.is_some() && total.is_some() && resp.total != total {
            return Err(FetchFailure::Broken(
                "resume answered a different size".into(),
            ));
        }
    }
    let writer = sink.finish(proxy).await?;
    commit(writer, total, digest, proxy, tx).await
}

/// The writing side of a fetch. Upstream chunks are gathered into batches and
/// handed to a blocking thread that appends them to the temp file (hashing as
/// it goes) and publishes how far it got, so the network read of the next batch
/// overlaps the write and hash of the previous one.
struct Sink {
    pending: Vec<Bytes>,
    pending_len: usize,
    batches: mpsc::Sender<Vec<Bytes>>,
    thread: tokio::task::JoinHandle<io::Result<BlobWriter>>,
}

impl Sink {
    fn start(mut writer: BlobWriter, tx: watch::Sender<FetchState>) -> Sink {
        let (batches, mut rx) = mpsc::channel::<Vec<Bytes>>(PIPELINE_BATCHES);
        let thread = tokio::task::spawn_blocking(move || {
            writer.hash_in_background()?;
            while let Some(batch) = rx.blocking_recv() {
                let offset = writer.written();
                writer.write_all(&batch)?;
                let written = writer.written();
                tx.send_modify(|s| {
                    s.recent = Arc::new(s.recent.after(offset, &batch));
                    s.written = written;
                });
            }
            Ok(writer)
        });
        Sink {
            pending: Vec::new(),
            pending_len: 0,
            batches,
            thread,
        }
    }

    /// Queues a chunk; a full batch goes to the thread. After an error the
    /// sink is spent (its thread is joined): drop it.
    async fn push(&mut self, chunk: Bytes, proxy: &Proxy) -> Result<(), FetchFailure> {
        self.pending_len += chunk.len();
        self.pending.push(chunk);
        if self.pending_len < WRITE_BATCH {
            return Ok(());
        }
        self.pending_len = 0;
        let batch = std::mem::take(&mut self.pending);
        if self.batches.send(batch).await.is_ok() {
            return Ok(());
        }
        // The thread stopped: it hit a write error. Collect it.
        Err(Sink::join(&mut self.thread, proxy)
            .await
            .err()
            .unwrap_or(FetchFailure::StoreUnavailable))
    }

    /// Writes what is left and returns the writer once every byte is in the file.
    async fn finish(self, proxy: &Proxy) -> Result<BlobWriter, FetchFailure> {
        let Sink {
            pending,
            batches,
            mut thread,
            ..
        } = self;
        if !pending.is_empty() {
            // A failed send means the thread already stopped; its error comes from join.
            let _ = batches.send(pending).await;
        }
        drop(batches);
        Sink::join(&mut thread, proxy).await
    }

    async fn join(
        thread: &mut tokio::task::JoinHandle<io::Result<BlobWriter>>,
        proxy: &Proxy,
    ) -> Result<BlobWriter, FetchFailure> {
        match thread.await {
            Ok(Ok(writer)) => Ok(writer),
            Ok(Err(e)) => {
                proxy.store_failed(&e.to_string());
                Err(FetchFailure::StoreUnavailable)
            }
            Err(_) => Err(FetchFailure::StoreUnavailable),
        }
    }
}

/// Verifies the written bytes, releases them to every follower, then makes them
/// durable. Followers get their last byte as soon as the digest checks out; the
/// fetch stays registered until the blob is persisted, so a request arriving
/// meanwhile joins it instead of fetching again.
async fn commit(
    writer: BlobWriter,
    total: Option<u64>,
    digest: &Digest,
    proxy: &Arc<Proxy>,
    tx: &watch::Sender<FetchState>,
) -> Result<(), FetchFailure> {
    let verified = tokio::task::spawn_blocking(move || writer.verify(total))
        .await
        .map_err(|_| FetchFailure::StoreUnavailable)?;
    let verified = match verified {
        Ok(v) => v,
        Err(e) => {
            proxy
                .metrics
                .integrity_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%digest, "upstream blob rejected: {e}");
            return Err(FetchFailure::Broken(e.to_string()));
        }
    };
    tx.send_modify(|s| s.phase = Phase::Verified);
    match tokio::task::spawn_blocking(move || verified.persist()).await {
        Ok(Ok(_)) => {
            proxy.store_recovered();
            proxy.after_commit();
        }
        // The bytes verified and are already released: they are served, uncached.
        Ok(Err(e)) => proxy.store_failed(&e.to_string()),
        Err(_) => proxy.store_failed("persist task panicked"),
    }
    Ok(())
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
                let len = (avail - self.pos).min(READ_CHUNK as u64) as usize;
                if let Some(bytes) = s.recent.slice(self.pos, len) {
                    self.pos += bytes.len() as u64;
                    return Ok(Some(bytes));
                }
                let Some(file) = s.file.clone() else {
                    return Err(io::Error::other("fetch has no file"));
                };
                let pos = self.pos;
                let bytes = match super::read_if_cached(&file, pos, len as u64) {
                    Some(bytes) => bytes,
                    None => tokio::task::spawn_blocking(move || read_at(&file, pos, len))
                        .await
                        .map_err(io::Error::other)??,
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
