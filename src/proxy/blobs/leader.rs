//! The fetching leader: one task per cold blob downloads it into a temp file,
//! hashing as it writes, and publishes its progress on a `watch` channel that
//! every response follows. The bytes are released in full only once they
//! verify; then the blob is made durable and indexed, and the fetch deregisters.
//!
//! The bytes come from the key's owner when another replica owns it (it reads
//! its disk, the bucket or upstream, and streams as its bytes land), else from
//! the shared bucket when it has the blob, else from upstream; either way they are hashed like anything else, and a bucket
//! object that fails its digest is deleted (the next miss fetches upstream).
//! A blob fetched from upstream is uploaded to the bucket by one more follower
//! ([`super::upload`]), which completes only once the digest has checked.
//!
//! The network read is pipelined against a writer thread: chunks reach
//! followers as they arrive, and are gathered into batches appended with
//! `writev` (the store hashes them on a thread of its own), so receiving,
//! sending, writing and hashing overlap; only the last byte waits for the
//! others, until the digest checks out.

use super::inflight::Registration;
use super::progress::{FetchFailure, FetchState, Phase, RecentBytes};
use super::{follower, upload};
use crate::bucket::{Bucket, Object};
use crate::cluster::{Asked, Cluster};
use crate::metrics::Metrics;
use crate::oci::Digest;
use crate::proxy::store_health::StoreHealth;
use crate::upstream::{Target, Upstream};
use bytes::Bytes;
use ferry_storage::{BlobWriter, Store};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use std::io;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// Bytes gathered from upstream before each write to the temp file.
const WRITE_BATCH: usize = 256 * 1024;
/// Bytes gathered from upstream before they are handed to followers: small
/// enough that a client sees its first bytes at once on a slow link, large
/// enough that a fast one does not wake followers per packet.
const PUBLISH_BYTES: usize = 64 * 1024;
/// Batches queued for the writer thread: bounds the memory a fetch holds when the
/// disk is slower than the network.
const PIPELINE_BATCHES: usize = 8;
/// The longest silence inside a bucket object's body before it is resumed.
const IDLE_TIMEOUT: std::time::Duration = crate::config::defaults::IDLE_TIMEOUT;
/// How many times a dropped upstream transfer is resumed with `Range`.
const MAX_RESUMES: u32 = 3;

/// What a leader needs besides its blob.
#[derive(Clone)]
pub(crate) struct Context {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub health: Arc<StoreHealth>,
    /// Upstream transfers at once (`limits.max_fetches`); a fetch waits for a
    /// slot before asking upstream, its clients with it.
    pub slots: Arc<tokio::sync::Semaphore>,
    /// The shared bucket, when configured.
    pub bucket: Option<Arc<Bucket>>,
    /// The other replicas, when configured.
    pub cluster: Option<Arc<Cluster>>,
}

/// Where a fetch's bytes come from.
enum Body {
    /// The key's owner, another replica.
    Peer(String, reqwest::Response),
    /// The shared bucket (another replica fetched it before).
    Bucket(BoxStream<'static, io::Result<Bytes>>),
    /// The upstream registry.
    Upstream(reqwest::Response),
}

impl Body {
    async fn next_chunk(
        &mut self,
        cx: &Context,
        upstream: &Upstream,
    ) -> Result<Option<Bytes>, String> {
        match self {
            Body::Peer(peer, r) => match &cx.cluster {
                Some(c) => c.next_chunk(peer, r).await,
                None => Err("no cluster".into()),
            },
            Body::Bucket(s) => match tokio::time::timeout(IDLE_TIMEOUT, s.next()).await {
                Ok(next) => next.transpose().map_err(|e| e.to_string()),
                Err(_) => Err("the bucket's body stalled".into()),
            },
            Body::Upstream(r) => upstream.next_chunk(r).await.map_err(|e| e.to_string()),
        }
    }
}

/// Opens the blob at `offset`: from its owner when `forward` and another
/// replica owns it, else from the bucket if it has it (`try_bucket`), else
/// from upstream. The blob's total size, when known, and its bytes.
async fn open(
    cx: &Context,
    target: &Target,
    digest: &Digest,
    offset: u64,
    forward: bool,
    try_bucket: bool,
    tx: &watch::Sender<FetchState>,
) -> Result<(Option<u64>, Body), crate::proxy::Error> {
    if let Some(cluster) = cx.cluster.as_ref().filter(|_| forward) {
        let asked = cluster
            .ask_owner(digest.as_str().as_bytes(), "blob", |owner| {
                // Said before asking: a peer's request must not wait on this fetch.
                tx.send_modify(|s| s.from_peer = true);
                async move { cluster.get_blob(&owner, target, digest, offset).await }
            })
            .await;
        match asked {
            Asked::Answered(owner, b) => return Ok((b.total, Body::Peer(owner, b.response))),
            Asked::NotFound => {
                return Err(crate::proxy::Error::NotFound(
                    "blob not found upstream".into(),
                ))
            }
            Asked::Here => tx.send_modify(|s| s.from_peer = false),
        }
    }
    if let Some(bucket) = cx.bucket.as_ref().filter(|_| try_bucket) {
        if let Some(read) = bucket.read_blob(digest, offset).await {
            return Ok((Some(read.total), Body::Bucket(read.body)));
        }
    }
    let resp = target
        .upstream
        .get_blob(&target.repo, digest, offset)
        .await?;
    Ok((resp.total, Body::Upstream(resp.response)))
}

/// Starts the leader task for `digest`, publishing on `tx`. The registration
/// is dropped when the task ends, however it ends.
pub(crate) fn start(
    cx: Context,
    target: Target,
    digest: Digest,
    forward: bool,
    registration: Registration,
    tx: watch::Sender<FetchState>,
) {
    tokio::spawn(async move {
        let _registration = registration;
        cx.metrics.inflight_fetches.inc();
        let _gauge = scopeguard(|| {
            cx.metrics.inflight_fetches.dec();
        });
        let phase = match download(&cx, &target, &digest, forward, &tx).await {
            Ok(()) => Phase::Verified,
            Err(f) => {
                if let FetchFailure::Broken(why) = &f {
                    tracing::warn!(%digest, ?target, "blob fetch failed: {why}");
                }
                Phase::Failed(f)
            }
        };
        tx.send_modify(|s| s.phase = phase);
    });
}

/// When each stage of a fetch ended, in milliseconds since it got its slot:
/// logged at debug level (`RUST_LOG=ferry::fetch=debug`) to see which stage a
/// slow fetch waited on.
struct Stages {
    start: std::time::Instant,
    opened: f64,
    first_byte: f64,
    received: f64,
    written: f64,
    verified: f64,
    persisted: f64,
}

impl Stages {
    fn new() -> Stages {
        Stages {
            start: std::time::Instant::now(),
            opened: 0.0,
            first_byte: 0.0,
            received: 0.0,
            written: 0.0,
            verified: 0.0,
            persisted: 0.0,
        }
    }

    fn since(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1000.0
    }
}

impl Body {
    fn name(&self) -> &'static str {
        match self {
            Body::Peer(..) => "peer",
            Body::Bucket(_) => "bucket",
            Body::Upstream(_) => "upstream",
        }
    }
}

/// Runs `f` when dropped.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

async fn download(
    cx: &Context,
    target: &Target,
    digest: &Digest,
    forward: bool,
    tx: &watch::Sender<FetchState>,
) -> Result<(), FetchFailure> {
    let upstream = &target.upstream;
    let _slot = match cx.slots.try_acquire() {
        Ok(slot) => slot,
        Err(_) => {
            cx.metrics.fetches_queued.inc();
            let slot = cx.slots.acquire().await;
            cx.metrics.fetches_queued.dec();
            slot.map_err(|_| FetchFailure::StoreUnavailable)?
        }
    };
    let mut stages = Stages::new();
    let (total, mut body) = open(cx, target, digest, 0, forward, true, tx)
        .await
        .map_err(FetchFailure::Upstream)?;
    stages.opened = stages.since();
    // Some bytes came from the bucket: a mismatch means its object is bad.
    let used_bucket = matches!(body, Body::Bucket(_));
    // The owner uploads what it fetches; this replica only what it fetched.
    let from_owner = matches!(body, Body::Peer(..));
    let mut reading_bucket = used_bucket;
    let store = cx.store.clone();
    let d = digest.clone();
    let writer = match tokio::task::spawn_blocking(move || store.begin_blob(&d)).await {
        Ok(Ok(w)) => w,
        Ok(Err(e)) => {
            cx.health.failed(&e.to_string());
            return Err(FetchFailure::StoreUnavailable);
        }
        Err(_) => return Err(FetchFailure::StoreUnavailable),
    };
    tx.send_modify(|s| {
        s.phase = Phase::Streaming;
        s.total = total;
        s.file = Some(writer.reader());
    });
    // The replica that reads upstream uploads what it fetches.
    let mut uploading = !used_bucket && !from_owner;
    if uploading {
        start_upload(cx, digest, total, tx);
    }

    let mut sink = Sink::start(writer, tx.clone());
    let mut received = 0u64;
    let mut resumes = 0;
    loop {
        let step = body.next_chunk(cx, upstream).await;
        let dropped = match step {
            Ok(Some(chunk)) => {
                if received == 0 {
                    stages.first_byte = stages.since();
                }
                cx.metrics.bytes_fetched.inc_by(chunk.len() as u64);
                received += chunk.len() as u64;
                if total.is_some_and(|t| received > t) {
                    cx.metrics.integrity_failures.inc();
                    return Err(FetchFailure::Broken(
                        "the source sent more bytes than its Content-Length".into(),
                    ));
                }
                sink.push(chunk, cx).await?;
                continue;
            }
            Ok(None) if total.is_none_or(|t| received == t) => break,
            Ok(None) => "the source closed the body early".to_string(),
            Err(e) => e,
        };
        if resumes == MAX_RESUMES {
            return Err(FetchFailure::Broken(format!(
                "{dropped}; gave up after {MAX_RESUMES} resumes"
            )));
        }
        resumes += 1;
        cx.metrics.fetch_resumes.inc();
        tracing::info!(%digest, offset = received, "resuming blob transfer: {dropped}");
        // A blob read from the bucket goes on from the bucket (or upstream, if
        // the bucket fails now); one read from upstream stays with upstream.
        // A dead owner is quarantined by now: the next owner (or this
        // replica) goes on from `received`.
        let from_peer = matches!(body, Body::Peer(..));
        let (resumed_total, resumed) = open(
            cx,
            target,
            digest,
            received,
            forward && from_peer,
            reading_bucket || from_peer,
            tx,
        )
        .await
        .map_err(|e| FetchFailure::Broken(format!("resume failed: {e}")))?;
        if resumed_total.is_some() && total.is_some() && resumed_total != total {
            return Err(FetchFailure::Broken(
                "resume answered a different size".into(),
            ));
        }
        reading_bucket = matches!(resumed, Body::Bucket(_));
        // The owner died and this replica now reads upstream: it is the one
        // to upload (from byte 0: the temp file has every byte so far).
        if !uploading && from_peer && matches!(resumed, Body::Upstream(_)) {
            uploading = true;
            start_upload(cx, digest, total, tx);
        }
        body = resumed;
    }
    stages.received = stages.since();
    let writer = sink.finish(cx).await?;
    stages.written = stages.since();
    let committed = commit(writer, total, digest, cx, tx, &mut stages).await;
    tracing::debug!(
        target: "ferry::fetch",
        %digest,
        bytes = received,
        source = body.name(),
        opened_ms = stages.opened,
        first_byte_ms = stages.first_byte,
        received_ms = stages.received,
        written_ms = stages.written,
        verified_ms = stages.verified,
        persisted_ms = stages.persisted,
        "fetch stages"
    );
    if let (Err(FetchFailure::Broken(_)), Some(bucket)) = (&committed, &cx.bucket) {
        if used_bucket {
            bucket.remove(Object::Blob, digest).await;
        }
    }
    committed
}

/// Uploads the blob to the bucket beside the download, when there is a bucket
/// and a free upload slot (otherwise the upload is skipped and counted).
fn start_upload(cx: &Context, digest: &Digest, total: Option<u64>, tx: &watch::Sender<FetchState>) {
    let Some(bucket) = &cx.bucket else { return };
    let Some(slot) = bucket.upload_slot(Object::Blob, digest) else {
        return;
    };
    let body = follower::follow_for_upload(tx.subscribe(), total);
    upload::start(bucket.clone(), slot, digest.clone(), body);
}

/// The writing side of a fetch. Received chunks are published to followers
/// about every [`PUBLISH_BYTES`], before they reach the disk, and gathered
/// into batches for a blocking thread that appends them to the temp file
/// (hashing as it goes) and records how far it got. So a client streams at
/// the network's pace while the write and the hash run beside it, and the
/// disk is never between upstream and the client.
struct Sink {
    tx: watch::Sender<FetchState>,
    recent: Arc<RecentBytes>,
    /// The writer's next batch; the chunks from `published` on are not yet
    /// published to followers.
    pending: Vec<Bytes>,
    pending_len: usize,
    published: usize,
    unpublished_len: usize,
    /// Bytes published so far.
    received: u64,
    batches: mpsc::Sender<Vec<Bytes>>,
    thread: tokio::task::JoinHandle<io::Result<BlobWriter>>,
}

impl Sink {
    fn start(mut writer: BlobWriter, tx: watch::Sender<FetchState>) -> Sink {
        let (batches, mut rx) = mpsc::channel::<Vec<Bytes>>(PIPELINE_BATCHES);
        let recent = tx.borrow().recent.clone();
        let progress = tx.clone();
        let thread = tokio::task::spawn_blocking(move || {
            writer.hash_in_background()?;
            while let Some(batch) = rx.blocking_recv() {
                writer.write_all(&batch)?;
                let written = writer.written();
                // Followers go by `received`; nobody waits for this.
                progress.send_if_modified(|s| {
                    s.written = written;
                    false
                });
            }
            Ok(writer)
        });
        Sink {
            tx,
            recent,
            pending: Vec::new(),
            pending_len: 0,
            published: 0,
            unpublished_len: 0,
            received: 0,
            batches,
            thread,
        }
    }

    /// Queues a chunk: published once [`PUBLISH_BYTES`] are waiting, written
    /// once a batch is full. After an error the sink is spent (its thread is
    /// joined): drop it.
    async fn push(&mut self, chunk: Bytes, cx: &Context) -> Result<(), FetchFailure> {
        self.pending_len += chunk.len();
        self.unpublished_len += chunk.len();
        self.pending.push(chunk);
        if self.unpublished_len >= PUBLISH_BYTES {
            self.publish();
        }
        if self.pending_len < WRITE_BATCH {
            return Ok(());
        }
        self.publish();
        self.pending_len = 0;
        self.published = 0;
        let batch = std::mem::take(&mut self.pending);
        if self.batches.send(batch).await.is_ok() {
            return Ok(());
        }
        // The thread stopped: it hit a write error. Collect it.
        Err(Sink::join(&mut self.thread, cx)
            .await
            .err()
            .unwrap_or(FetchFailure::StoreUnavailable))
    }

    /// Hands the unpublished chunks to followers, waking them.
    fn publish(&mut self) {
        let fresh = &self.pending[self.published..];
        if fresh.is_empty() {
            return;
        }
        let offset = self.received;
        self.received += self.unpublished_len as u64;
        self.published = self.pending.len();
        self.unpublished_len = 0;
        let (recent, received) = (&self.recent, self.received);
        self.tx.send_modify(|s| {
            recent.push(offset, fresh, s.written);
            s.received = received;
        });
    }

    /// Writes what is left and returns the writer once every byte is in the file.
    async fn finish(mut self, cx: &Context) -> Result<BlobWriter, FetchFailure> {
        self.publish();
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
        Sink::join(&mut thread, cx).await
    }

    async fn join(
        thread: &mut tokio::task::JoinHandle<io::Result<BlobWriter>>,
        cx: &Context,
    ) -> Result<BlobWriter, FetchFailure> {
        match thread.await {
            Ok(Ok(writer)) => Ok(writer),
            Ok(Err(e)) => {
                cx.health.failed(&e.to_string());
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
    cx: &Context,
    tx: &watch::Sender<FetchState>,
    stages: &mut Stages,
) -> Result<(), FetchFailure> {
    let verified = tokio::task::spawn_blocking(move || writer.verify(total))
        .await
        .map_err(|_| FetchFailure::StoreUnavailable)?;
    let verified = match verified {
        Ok(v) => v,
        Err(e) => {
            cx.metrics.integrity_failures.inc();
            tracing::warn!(%digest, "upstream blob rejected: {e}");
            return Err(FetchFailure::Broken(e.to_string()));
        }
    };
    tx.send_modify(|s| s.phase = Phase::Verified);
    stages.verified = stages.since();
    let store = cx.store.clone();
    let persisted = tokio::task::spawn_blocking(move || verified.persist()).await;
    stages.persisted = stages.since();
    match persisted {
        Ok(Ok(_)) => {
            cx.health.recovered();
            if store.over_budget() {
                // Off the request path: clients already have their bytes.
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = store.evict_if_over_budget() {
                        tracing::error!(error = %e, "eviction failed");
                    }
                });
            }
        }
        // The bytes verified and are already released: they are served, uncached.
        Ok(Err(e)) => cx.health.failed(&e.to_string()),
        Err(_) => cx.health.failed("persist task panicked"),
    }
    Ok(())
}
