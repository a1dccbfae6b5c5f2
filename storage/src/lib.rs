//! `ferry-storage`: Ferry's content-addressed blob store and its RocksDB index.
//!
//! Layout under the data directory:
//!
//! ```text
//! blobs/sha256/<2 hex>/<64 hex>   committed blobs, named by their verified digest
//! tmp/                            blobs being written; swept at every open
//! index/                          RocksDB: tags, manifests (bodies), blobs (size, last access)
//! ```
//!
//! Invariants this crate keeps, whatever the caller does:
//! - a file under a digest's name holds exactly the bytes of that digest: blobs are
//!   hashed while written, fsynced, and renamed into place only when they verify;
//! - the index never points at a missing or partial file: an index entry is written
//!   after its file is in place and removed (durably) before its file is unlinked;
//! - a blob that is open for reading is never evicted;
//! - the read path writes nothing synchronously: access times are batched in memory
//!   and flushed by [`Store::flush_access_times`].
//!
//! All methods are blocking (file system and RocksDB calls); the small ones are
//! cheap enough for an async task, [`BlobWriter::commit`] and the maintenance
//! calls (eviction, fsck) belong on a blocking thread.

pub mod digest;
mod error;
pub mod format;
mod fsck;
mod index;
mod paths;
mod tag_cache;
mod writer;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use error::StoreError;
pub use fsck::{FsckFinding, FsckReport};
pub use index::{StoredManifest, TagKey, TagRecord};
pub use writer::{BlobWriter, CommitError, VerifiedBlob};

use index::{BlobMeta, Index};
use parking_lot::Mutex;
use paths::{blob_path, remove_if_exists, sweep_dir};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// By default eviction starts above this fraction of the size budget…
pub const DEFAULT_HIGH_WATERMARK: f64 = 0.95;
/// …and stops below this one.
pub const DEFAULT_LOW_WATERMARK: f64 = 0.85;

/// What a store is opened with.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub root: PathBuf,
    /// Size budget for blobs in bytes; `None` means unbounded.
    pub max_size: Option<u64>,
    /// Eviction starts above this fraction of `max_size`…
    pub high_watermark: f64,
    /// …and stops below this one.
    pub low_watermark: f64,
}

impl StoreOptions {
    pub fn new(root: impl Into<PathBuf>) -> StoreOptions {
        StoreOptions {
            root: root.into(),
            max_size: None,
            high_watermark: DEFAULT_HIGH_WATERMARK,
            low_watermark: DEFAULT_LOW_WATERMARK,
        }
    }
}

/// Switches that make the store fail on purpose, so tests can prove that a full
/// or failing disk degrades service instead of corrupting it.
#[derive(Debug, Default)]
pub struct Faults {
    /// Every blob write returns `ENOSPC`.
    pub fail_writes: AtomicBool,
    /// Blob writes wait while this is set (a disk slower than the network).
    pub hold_writes: AtomicBool,
    /// Every commit fails after the file is written, before it is renamed.
    pub fail_commits: AtomicBool,
    /// Verified blobs wait before being made durable while this is set.
    pub hold_persists: AtomicBool,
    /// Every index read (tags, manifests, blob entries) fails.
    pub fail_reads: AtomicBool,
    /// Eviction passes wait right after taking their snapshot while this is set…
    pub hold_eviction: AtomicBool,
    /// …and say so here.
    pub eviction_held: AtomicBool,
}

impl Faults {
    fn check_read(&self) -> Result<(), StoreError> {
        if self.fail_reads.load(Ordering::Relaxed) {
            return Err(StoreError::Io(io::Error::other("injected read failure")));
        }
        Ok(())
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub evictions: AtomicU64,
    pub bytes_evicted: AtomicU64,
}

/// The content-addressed store. Cheap to clone; all clones share one index.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    options: StoreOptions,
    blobs_dir: PathBuf,
    tmp_dir: PathBuf,
    index: Index,
    /// Committed blob bytes and count, kept in step with the index.
    total_bytes: AtomicU64,
    blob_count: AtomicU64,
    /// Readers per blob digest: a pinned blob is never evicted. This lock also
    /// orders "open a blob" against "evict it".
    pins: Mutex<HashMap<Digest, usize>>,
    /// Last access per blob (a [`Inner::stamp`]), not yet written to the index.
    pending_access: Mutex<HashMap<Digest, u64>>,
    /// The newest access stamp handed out: stamps strictly increase, so
    /// least-recently-used order is exact even within one clock tick.
    last_stamp: AtomicU64,
    /// Serialises eviction runs.
    evicting: Mutex<()>,
    faults: Faults,
    stats: StoreStats,
    /// The data directory's format version ([`format`]).
    format: u32,
}

/// A committed blob opened for reading. While it lives the blob cannot be evicted.
pub struct BlobFile {
    /// The open file, shareable with blocking reads.
    pub file: Arc<File>,
    pub size: u64,
    _pin: Pin,
}

struct Pin {
    store: Arc<Inner>,
    digest: Digest,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut pins = self.store.pins.lock();
        if let Some(n) = pins.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&self.digest);
            }
        }
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos().min(u64::MAX as u128) as u64)
}

impl Store {
    /// Opens (creating if needed) the store under `options.root`, sweeping any
    /// temp files a crash left behind. Does not read the blob files.
    pub fn open(options: StoreOptions) -> Result<Store, StoreError> {
        // Before anything is created or swept: never write into a directory
        // this build does not understand.
        let found = format::check(&options.root)?;
        let blobs_dir = options.root.join("blobs");
        let tmp_dir = options.root.join("tmp");
        fs::create_dir_all(&blobs_dir)?;
        fs::create_dir_all(&tmp_dir)?;
        sweep_dir(&tmp_dir)?;
        let index = Index::open(&options.root.join("index"))?;
        let format = format::migrate(&options.root, found)?;
        let (total, count, newest) = index.blob_totals()?;
        Ok(Store {
            inner: Arc::new(Inner {
                options,
                blobs_dir,
                tmp_dir,
                index,
                total_bytes: AtomicU64::new(total),
                blob_count: AtomicU64::new(count),
                pins: Mutex::new(HashMap::new()),
                pending_access: Mutex::new(HashMap::new()),
                last_stamp: AtomicU64::new(newest),
                evicting: Mutex::new(()),
                faults: Faults::default(),
                stats: StoreStats::default(),
                format,
            }),
        })
    }

    pub fn root(&self) -> &Path {
        &self.inner.options.root
    }

    /// The data directory's format version ([`format`]).
    pub fn format(&self) -> u32 {
        self.inner.format
    }

    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    pub fn stats(&self) -> &StoreStats {
        &self.inner.stats
    }

    /// Writes to the index so far (tests pin that the read path writes nothing).
    pub fn index_writes(&self) -> u64 {
        self.inner.index.writes()
    }

    /// Bytes of committed blobs.
    pub fn total_bytes(&self) -> u64 {
        self.inner.total_bytes.load(Ordering::Relaxed)
    }

    pub fn blob_count(&self) -> u64 {
        self.inner.blob_count.load(Ordering::Relaxed)
    }

    pub fn max_size(&self) -> Option<u64> {
        self.inner.options.max_size
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        blob_path(&self.inner.blobs_dir, digest)
    }

    /// The size of a committed blob, without opening it.
    pub fn blob_size(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        self.inner.faults.check_read()?;
        Ok(self.inner.index.blob(digest)?.map(|m| m.size))
    }

    /// Opens a committed blob and pins it; `None` when it is not in the store.
    pub fn open_blob(&self, digest: &Digest) -> Result<Option<BlobFile>, StoreError> {
        let inner = &self.inner;
        inner.faults.check_read()?;
        let mut pins = inner.pins.lock();
        let Some(meta) = inner.index.blob(digest)? else {
            return Ok(None);
        };
        let file = match File::open(self.blob_path(digest)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Removed behind the index's back (by hand, or a lost power-cut
                // delete): forget it so it is fetched again.
                tracing::warn!(%digest, "indexed blob file is missing; dropping the entry");
                inner.index.delete_blob(digest, true)?;
                inner.account_removed(meta.size);
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        *pins.entry(digest.clone()).or_insert(0) += 1;
        drop(pins);
        inner
            .pending_access
            .lock()
            .insert(digest.clone(), inner.stamp());
        Ok(Some(BlobFile {
            file: Arc::new(file),
            size: meta.size,
            _pin: Pin {
                store: inner.clone(),
                digest: digest.clone(),
            },
        }))
    }

    /// Starts writing a blob that must hash to `digest`.
    pub fn begin_blob(&self, digest: &Digest) -> Result<BlobWriter, StoreError> {
        BlobWriter::create(self.clone(), digest.clone())
    }

    /// Records a blob whose file was just renamed into place.
    fn index_committed_blob(&self, digest: &Digest, size: u64) -> Result<(), StoreError> {
        let existed = self.inner.index.blob(digest)?.is_some();
        self.inner.index.put_blob(
            digest,
            BlobMeta {
                size,
                last_access: self.inner.stamp(),
            },
        )?;
        if !existed {
            self.inner.total_bytes.fetch_add(size, Ordering::Relaxed);
            self.inner.blob_count.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Stores a manifest body; refuses bytes that do not hash to `digest`.
    pub fn put_manifest(
        &self,
        digest: &Digest,
        media_type: &str,
        body: &[u8],
    ) -> Result<(), StoreError> {
        if !digest.verifies(body) {
            return Err(StoreError::DigestMismatch(digest.clone()));
        }
        self.inner.index.put_manifest(digest, media_type, body)
    }

    pub fn manifest(&self, digest: &Digest) -> Result<Option<StoredManifest>, StoreError> {
        self.inner.faults.check_read()?;
        self.inner.index.manifest(digest)
    }

    pub fn has_manifest(&self, digest: &Digest) -> Result<bool, StoreError> {
        self.inner.index.has_manifest(digest)
    }

    pub fn tag(&self, key: &TagKey) -> Result<Option<TagRecord>, StoreError> {
        self.inner.faults.check_read()?;
        self.inner.index.tag(key)
    }

    pub fn put_tag(&self, key: &TagKey, record: &TagRecord) -> Result<(), StoreError> {
        self.inner.index.put_tag(key, record)
    }

    pub fn delete_tag(&self, key: &TagKey) -> Result<(), StoreError> {
        self.inner.index.delete_tag(key)
    }

    /// A kept upstream answer (tag list page, referrers index) by the cache's
    /// key: when it was fetched (unix ms) and its bytes.
    pub fn answer(&self, key: &[u8]) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        self.inner.faults.check_read()?;
        self.inner.index.answer(key)
    }

    /// Keeps an upstream answer so it survives a restart.
    pub fn put_answer(
        &self,
        key: &[u8],
        fetched_at_ms: u64,
        value: &[u8],
    ) -> Result<(), StoreError> {
        self.inner.index.put_answer(key, fetched_at_ms, value)
    }

    /// Forgets the answers whose keys start with `prefix` (a repository's),
    /// or with `older_than_ms` only those fetched before it.
    pub fn forget_answers(
        &self,
        prefix: &[u8],
        older_than_ms: Option<u64>,
    ) -> Result<usize, StoreError> {
        self.inner.index.delete_answers(prefix, older_than_ms)
    }

    /// Writes batched access times to the index (call periodically and at shutdown).
    pub fn flush_access_times(&self) -> Result<usize, StoreError> {
        let pending = std::mem::take(&mut *self.inner.pending_access.lock());
        let n = pending.len();
        if n > 0 {
            self.inner.index.touch_blobs(&pending)?;
        }
        Ok(n)
    }

    /// Whether the blobs exceed the high watermark of the size budget.
    pub fn over_budget(&self) -> bool {
        match self.inner.options.max_size {
            Some(max) => self.total_bytes() as f64 > max as f64 * self.inner.options.high_watermark,
            None => false,
        }
    }

    /// Evicts least-recently-used, unpinned blobs until the store is below the low
    /// watermark. Returns (blobs, bytes) evicted. Manifests and tags are kept: a
    /// manifest whose blobs are gone still resolves, and they are fetched again.
    pub fn evict_if_over_budget(&self) -> Result<(u64, u64), StoreError> {
        let Some(max) = self.inner.options.max_size else {
            return Ok((0, 0));
        };
        let _one_at_a_time = self.inner.evicting.lock();
        if !self.over_budget() {
            return Ok((0, 0));
        }
        let target = (max as f64 * self.inner.options.low_watermark) as u64;
        self.flush_access_times()?;
        let mut candidates = self.inner.index.all_blobs()?;
        candidates.sort_by_key(|(_, meta)| meta.last_access);
        let faults = &self.inner.faults;
        while faults.hold_eviction.load(Ordering::Relaxed) {
            faults.eviction_held.store(true, Ordering::Relaxed);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let (mut blobs, mut bytes) = (0u64, 0u64);
        for chunk in candidates.chunks(256) {
            if self.total_bytes() <= target {
                break;
            }
            let mut pins = self.inner.pins.lock();
            let mut victims = Vec::new();
            let mut planned = 0u64;
            let touched = self.inner.pending_access.lock();
            for (digest, meta) in chunk {
                if self.total_bytes().saturating_sub(planned) <= target {
                    break;
                }
                // Being served, or served since this pass flushed access times.
                if pins.contains_key(digest) || touched.contains_key(digest) {
                    continue;
                }
                planned += meta.size;
                victims.push((digest.clone(), meta.size));
            }
            drop(touched);
            // Durably forget them first, then unlink: a crash in between leaves
            // orphan files (reclaimed by fsck), never an entry without its file.
            let digests: Vec<&Digest> = victims.iter().map(|(d, _)| d).collect();
            self.inner.index.delete_blobs(&digests)?;
            for (digest, size) in &victims {
                remove_if_exists(&self.blob_path(digest))?;
                self.inner.account_removed(*size);
                blobs += 1;
                bytes += size;
            }
            pins.retain(|_, n| *n > 0);
        }
        self.inner
            .stats
            .evictions
            .fetch_add(blobs, Ordering::Relaxed);
        self.inner
            .stats
            .bytes_evicted
            .fetch_add(bytes, Ordering::Relaxed);
        if blobs > 0 {
            tracing::info!(blobs, bytes, total = self.total_bytes(), "evicted blobs");
        }
        Ok((blobs, bytes))
    }

    /// Removes one blob or manifest from the cache, and every tag that points at it.
    /// Returns whether anything was removed. An open reader keeps its file handle.
    pub fn purge_digest(&self, digest: &Digest) -> Result<bool, StoreError> {
        let mut removed = self.inner.index.delete_tags_pointing_at(digest)? > 0;
        if self.inner.index.has_manifest(digest)? {
            self.inner.index.delete_manifest(digest)?;
            removed = true;
        }
        let _pins = self.inner.pins.lock();
        if let Some(meta) = self.inner.index.blob(digest)? {
            self.inner.index.delete_blob(digest, true)?;
            remove_if_exists(&self.blob_path(digest))?;
            self.inner.account_removed(meta.size);
            removed = true;
        }
        Ok(removed)
    }

    /// Forgets tag records: one tag, or every tag of a repository (`tag = None`).
    /// Blobs and manifests stay (they are content-addressed and may be shared).
    pub fn purge_tags(
        &self,
        upstream: &str,
        repo: &str,
        tag: Option<&str>,
    ) -> Result<usize, StoreError> {
        match tag {
            Some(tag) => {
                let key = TagKey::new(upstream, repo, tag);
                let existed = self.inner.index.tag(&key)?.is_some();
                self.inner.index.delete_tag(&key)?;
                Ok(usize::from(existed))
            }
            None => self.inner.index.delete_repo_tags(upstream, repo),
        }
    }

    /// Checks the index against the files; see [`FsckReport`].
    pub fn fsck(&self, verify: bool, repair: bool) -> Result<FsckReport, StoreError> {
        fsck::run(self, verify, repair)
    }
}

impl Inner {
    /// A recency stamp newer than every one before it: the wall clock in
    /// nanoseconds, or one more than the last stamp if the clock has not moved
    /// (or went back).
    fn stamp(&self) -> u64 {
        let now = unix_nanos();
        let prev = self
            .last_stamp
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                Some(now.max(last + 1))
            })
            .unwrap_or(now);
        now.max(prev + 1)
    }

    fn account_removed(&self, size: u64) {
        let _ = self
            .total_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some(t.saturating_sub(size))
            });
        let _ = self
            .blob_count
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                Some(c.saturating_sub(1))
            });
    }
}

#[cfg(test)]
mod tests;
