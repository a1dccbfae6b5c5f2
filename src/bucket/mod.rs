//! The shared bucket (`[bucket]`): an S3-compatible object store every
//! replica reads and writes, as a second tier behind the local store. A thin
//! wrapper over `object_store`'s S3 client (or any `ObjectStore`: tests use
//! the in-memory one).
//!
//! Keys are content-addressed, so any replica may write one, and writing it
//! twice writes the same bytes:
//! - `<prefix>blobs/sha256/<hex>`;
//! - `<prefix>manifests/sha256/<hex>`, with the upstream media type as its
//!   `Content-Type`.
//!
//! Nothing else goes in the bucket: no tag records, no state, no locks.
//! Ferry never trusts what it reads here: the cache hashes every object it
//! reads before keeping it, and deletes one that fails ([`Bucket::remove`]).
//! It writes only what has verified (see `proxy::blobs::upload`).
//!
//! An outage costs nothing but coverage ([`health`]): after an error the
//! bucket is left alone for a back-off window (reads go upstream, uploads are
//! skipped), and readiness never depends on it.

mod health;

use crate::clock::Clock;
use crate::config::{defaults, BucketConfig};
use crate::metrics::Metrics;
use crate::oci::Digest;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use health::Health;
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path;
use object_store::{
    Attribute, AttributeValue, Attributes, ClientOptions, GetOptions, GetRange, MultipartUpload,
    ObjectStore, ObjectStoreExt, PutOptions, PutPayload, RetryConfig,
};
use parking_lot::Mutex;
use std::collections::{HashSet, VecDeque};
use std::io;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What a key holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Object {
    /// A blob (layer, config).
    Blob,
    /// A manifest or index.
    Manifest,
}

impl Object {
    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Object::Blob => "blob",
            Object::Manifest => "manifest",
        }
    }

    fn folder(self) -> &'static str {
        match self {
            Object::Blob => "blobs",
            Object::Manifest => "manifests",
        }
    }
}

/// A blob's bytes from the bucket: its size and a stream from the offset asked.
pub struct BlobRead {
    /// The object's whole size.
    pub total: u64,
    /// The bytes from the offset to the end.
    pub body: BoxStream<'static, io::Result<Bytes>>,
}

/// The bucket, its health and its upload slots.
pub struct Bucket {
    /// Requests with a short time limit (heads, puts, parts, manifests).
    store: Arc<dyn ObjectStore>,
    /// Blob reads, which stream as long as the blob takes.
    streams: Arc<dyn ObjectStore>,
    /// `""` or ending in `/`.
    prefix: String,
    part_size: usize,
    /// One permit per upload at once (`max_uploads`).
    uploads: Arc<Semaphore>,
    /// Uploads skipped, to be made later from the local disk.
    backlog: Mutex<Backlog>,
    health: Health,
    metrics: Arc<Metrics>,
}

/// Objects whose upload was skipped, in order, each once; bounded by
/// [`defaults::BUCKET_BACKLOG`].
#[derive(Default)]
struct Backlog {
    queue: VecDeque<(Object, Digest)>,
    queued: HashSet<(Object, Digest)>,
}

impl Bucket {
    /// The S3 client for `config`. Builds no connection: nothing is asked of
    /// the bucket until the first miss, so a bucket that is down does not
    /// keep Ferry from starting.
    pub fn connect(
        config: &BucketConfig,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> Result<Bucket, object_store::Error> {
        let requests = s3(config, defaults::BUCKET_TIMEOUT)?;
        // A blob's GET streams for as long as the blob takes: its timeout is
        // not a request's (object_store's covers the whole body); a stalled
        // stream is caught by the fetch's idle timeout instead.
        let streams = s3(config, defaults::BUCKET_STREAM_TIMEOUT)?;
        let mut bucket = Bucket::over(Arc::new(requests), config, metrics, clock);
        bucket.streams = Arc::new(streams);
        Ok(bucket)
    }

    /// A bucket over any object store (tests use `object_store`'s in-memory one).
    pub fn over(
        store: Arc<dyn ObjectStore>,
        config: &BucketConfig,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> Bucket {
        Bucket {
            streams: store.clone(),
            store,
            prefix: config.prefix.clone(),
            part_size: config.part_size,
            uploads: Arc::new(Semaphore::new(config.max_uploads)),
            backlog: Mutex::default(),
            health: Health::new(config.backoff, clock),
            metrics,
        }
    }
    /// The key of `digest` as `object`.
    pub fn key(&self, object: Object, digest: &Digest) -> Path {
        Path::from(format!(
            "{}{}/{}/{}",
            self.prefix,
            object.folder(),
            digest.algorithm().as_str(),
            digest.hex()
        ))
    }

    /// Multipart part size.
    pub fn part_size(&self) -> usize {
        self.part_size
    }

    /// Whether the bucket may be asked now (not backing off after an error);
    /// counts a skip of `op` when not.
    fn usable(&self, op: &'static str) -> bool {
        let ok = self.health.usable();
        if !ok {
            self.metrics.bucket_skip(op);
        }
        ok
    }

    /// An error: counted, logged, and the bucket backs off.
    fn failed(&self, op: &'static str, what: &str, e: &object_store::Error) {
        self.metrics.bucket_error(op);
        self.health.failed(&format!("{what}: {e}"));
    }

    /// The size of the blob if the bucket has it; `None` when it does not,
    /// or cannot be asked (the miss goes upstream).
    pub async fn blob_size(&self, digest: &Digest) -> Option<u64> {
        if !self.usable("read") {
            return None;
        }
        let found = match self.store.head(&self.key(Object::Blob, digest)).await {
            Ok(meta) => Some(meta.size),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => {
                self.failed("read", "HEAD of a blob", &e);
                return None;
            }
        };
        self.metrics.bucket_read("blob", found.is_some());
        self.health.succeeded();
        found
    }

    /// The blob's bytes from `offset`, if the bucket has it.
    pub async fn read_blob(&self, digest: &Digest, offset: u64) -> Option<BlobRead> {
        if !self.usable("read") {
            return None;
        }
        let options = GetOptions {
            range: (offset > 0).then_some(GetRange::Offset(offset)),
            ..GetOptions::default()
        };
        let got = match self
            .store
            .get_opts(&self.key(Object::Blob, digest), options)
            .await
        {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => {
                self.metrics.bucket_read("blob", false);
                return None;
            }
            Err(e) => {
                self.failed("read", "GET of a blob", &e);
                return None;
            }
        };
        self.metrics.bucket_read("blob", true);
        self.health.succeeded();
        let total = got.meta.size;
        let metrics = self.metrics.clone();
        let body = got
            .into_stream()
            .map_ok(move |b| {
                metrics.bucket_bytes_read.inc_by(b.len() as u64);
                b
            })
            .map_err(io::Error::other)
            .boxed();
        Some(BlobRead { total, body })
    }

    /// A manifest's bytes and media type, if the bucket has it. An object
    /// over [`MAX_MANIFEST_BYTES`] is no manifest Ferry put there: it is
    /// deleted unread (memory stays bounded) and counted as an integrity
    /// failure.
    ///
    /// [`MAX_MANIFEST_BYTES`]: crate::oci::media::MAX_MANIFEST_BYTES
    pub async fn read_manifest(&self, digest: &Digest) -> Option<(Option<String>, Bytes)> {
        if !self.usable("read") {
            return None;
        }
        let key = self.key(Object::Manifest, digest);
        let read = async {
            let got = self.store.get(&key).await?;
            if got.meta.size > crate::oci::media::MAX_MANIFEST_BYTES as u64 {
                return Ok(Err(got.meta.size));
            }
            let media_type = got
                .attributes
                .get(&Attribute::ContentType)
                .map(|v| v.to_string());
            Ok::<_, object_store::Error>(Ok((media_type, got.bytes().await?)))
        };
        match read.await {
            Ok(Ok((media_type, body))) => {
                self.metrics.bucket_read("manifest", true);
                self.metrics.bucket_bytes_read.inc_by(body.len() as u64);
                self.health.succeeded();
                Some((media_type, body))
            }
            Ok(Err(size)) => {
                self.metrics.bucket_read("manifest", false);
                self.metrics.integrity_failures.inc();
                self.health.succeeded();
                tracing::warn!(%digest, size, "bucket manifest object too large to be one");
                self.remove(Object::Manifest, digest).await;
                None
            }
            Err(object_store::Error::NotFound { .. }) => {
                self.metrics.bucket_read("manifest", false);
                None
            }
            Err(e) => {
                self.failed("read", "GET of a manifest", &e);
                None
            }
        }
    }

    /// An upload slot for `digest`, if one is free and the bucket is usable;
    /// otherwise the upload is skipped now (counted, never waited for) and
    /// remembered, to be made later from the local disk
    /// ([`Bucket::next_deferred`]).
    pub fn upload_slot(&self, object: Object, digest: &Digest) -> Option<OwnedSemaphorePermit> {
        let slot = match self.usable("write") {
            true => self.uploads.clone().try_acquire_owned().ok(),
            false => None,
        };
        if slot.is_none() {
            self.metrics.bucket_upload(object.label(), "skipped");
            self.defer(object, digest);
        }
        slot
    }

    /// Remembers an upload to make later (once; forgotten past
    /// [`defaults::BUCKET_BACKLOG`]).
    pub fn defer(&self, object: Object, digest: &Digest) {
        let mut b = self.backlog.lock();
        let entry = (object, digest.clone());
        if b.queue.len() < defaults::BUCKET_BACKLOG && b.queued.insert(entry.clone()) {
            b.queue.push_back(entry);
        }
    }

    /// How many uploads are remembered.
    pub fn deferred(&self) -> usize {
        self.backlog.lock().queue.len()
    }

    /// The next remembered upload with a slot to make it in, while the
    /// bucket is usable; `None` when there is none, or no free slot.
    pub fn next_deferred(&self) -> Option<(OwnedSemaphorePermit, Object, Digest)> {
        if !self.health.usable() {
            return None;
        }
        let slot = self.uploads.clone().try_acquire_owned().ok()?;
        let mut b = self.backlog.lock();
        let (object, digest) = b.queue.pop_front()?;
        b.queued.remove(&(object, digest.clone()));
        Some((slot, object, digest))
    }

    /// Whether the bucket holds `digest` as `object`; `None` when it cannot
    /// be asked (an error, counted: the bucket backs off).
    pub async fn holds(&self, object: Object, digest: &Digest) -> Option<bool> {
        let found = match self.store.head(&self.key(object, digest)).await {
            Ok(_) => true,
            Err(object_store::Error::NotFound { .. }) => false,
            Err(e) => {
                self.failed("read", "HEAD of a remembered upload", &e);
                return None;
            }
        };
        self.health.succeeded();
        Some(found)
    }

    /// Writes a whole verified object in one `PUT`; whether it landed.
    pub async fn put(
        &self,
        object: Object,
        digest: &Digest,
        body: Bytes,
        content_type: Option<&str>,
    ) -> bool {
        let mut attributes = Attributes::new();
        if let Some(ct) = content_type {
            attributes.insert(Attribute::ContentType, AttributeValue::from(ct.to_string()));
        }
        let options = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        let len = body.len() as u64;
        let key = self.key(object, digest);
        match self
            .store
            .put_opts(&key, PutPayload::from(body), options)
            .await
        {
            Ok(_) => {
                self.wrote(object, len);
                true
            }
            Err(e) => {
                self.metrics.bucket_upload(object.label(), "failed");
                self.failed("write", "PUT", &e);
                false
            }
        }
    }

    /// Starts a multipart upload of a blob; `None` if the bucket refused.
    pub async fn begin_upload(&self, digest: &Digest) -> Option<Box<dyn MultipartUpload>> {
        match self
            .store
            .put_multipart(&self.key(Object::Blob, digest))
            .await
        {
            Ok(upload) => Some(upload),
            Err(e) => {
                self.metrics.bucket_upload("blob", "failed");
                self.failed("write", "starting a multipart upload", &e);
                None
            }
        }
    }

    /// A completed upload of `len` bytes.
    pub fn wrote(&self, object: Object, len: u64) {
        self.metrics.bucket_upload(object.label(), "completed");
        self.metrics.bucket_bytes_written.inc_by(len);
        self.health.succeeded();
    }

    /// An upload the bucket refused part way.
    pub fn upload_failed(&self, e: &object_store::Error) {
        self.metrics.bucket_upload("blob", "failed");
        self.failed("write", "multipart upload", e);
    }

    /// An upload given up because its fetch failed (nothing verified).
    pub fn upload_aborted(&self) {
        self.metrics.bucket_upload("blob", "aborted");
    }

    /// Deletes `digest` as a blob and as a manifest (an operator's purge).
    pub async fn purge(&self, digest: &Digest) {
        for object in [Object::Blob, Object::Manifest] {
            let key = self.key(object, digest);
            match self.store.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => self.failed("delete", "DELETE of a purged object", &e),
            }
        }
    }

    /// Deletes an object whose bytes failed their digest: the next miss
    /// fetches it upstream again. With purges, the only deletes Ferry makes.
    pub async fn remove(&self, object: Object, digest: &Digest) {
        let key = self.key(object, digest);
        tracing::warn!(%digest, key = %key, "bucket object is not what its key names; deleting it");
        if let Err(e) = self.store.delete(&key).await {
            self.failed("delete", "DELETE of a corrupt object", &e);
        }
    }
}

/// An S3 client whose requests take at most `timeout` (body included).
fn s3(
    config: &BucketConfig,
    timeout: std::time::Duration,
) -> Result<AmazonS3, object_store::Error> {
    AmazonS3Builder::new()
        .with_endpoint(config.endpoint.as_str().trim_end_matches('/'))
        .with_region(&config.region)
        .with_bucket_name(&config.bucket)
        .with_virtual_hosted_style_request(!config.path_style)
        .with_access_key_id(&config.access_key)
        .with_secret_access_key(&config.secret_key)
        // Keys are content-addressed and always overwritten with the same
        // bytes; a conditional put would be silently ignored by Garage.
        .with_conditional_put(S3ConditionalPut::Disabled)
        // The client options replace the builder's: plain HTTP is allowed here.
        .with_client_options(
            ClientOptions::new()
                .with_allow_http(config.endpoint.scheme() == "http")
                .with_timeout(timeout)
                .with_connect_timeout(defaults::CONNECT_TIMEOUT),
        )
        // One quick retry; past that the back-off window takes over.
        .with_retry(RetryConfig {
            max_retries: 1,
            retry_timeout: defaults::BUCKET_TIMEOUT,
            ..RetryConfig::default()
        })
        .build()
}
