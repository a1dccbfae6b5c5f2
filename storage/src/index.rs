//! The RocksDB index: tag records, manifest bodies and blob metadata.
//!
//! Column families:
//! - `tags`: `upstream \0 repository \0 tag` → [`TagRecord`] (JSON; small, rarely written);
//! - `manifests`: digest → media type length (u16 LE), media type, body;
//! - `answers`: a cached upstream answer that is not content-addressed (a tag
//!   list page, a referrers index), by the cache's own key → fetched-at (u64 LE),
//!   then the answer's bytes;
//! - `blobs`: digest → size (u64 LE), last access stamp (u64 LE): unix
//!   nanoseconds made strictly increasing by the store, so two accesses never
//!   tie (records from older versions hold unix seconds, and so sort as older).

use crate::tag_cache::{Change, TagCache};
use crate::{Digest, StoreError};
use rocksdb::{ColumnFamily, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

const CF_TAGS: &str = "tags";
const CF_MANIFESTS: &str = "manifests";
const CF_BLOBS: &str = "blobs";
const CF_ANSWERS: &str = "answers";

/// Identifies a tag on one upstream: the same `repo:tag` on two upstreams are
/// different records.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TagKey(Vec<u8>);

impl TagKey {
    pub fn new(upstream: &str, repo: &str, tag: &str) -> TagKey {
        let mut k = Vec::with_capacity(upstream.len() + repo.len() + tag.len() + 2);
        k.extend_from_slice(upstream.as_bytes());
        k.push(0);
        k.extend_from_slice(repo.as_bytes());
        k.push(0);
        k.extend_from_slice(tag.as_bytes());
        TagKey(k)
    }

    fn repo_prefix(upstream: &str, repo: &str) -> Vec<u8> {
        // `upstream \0 repo \0`: the key of an empty tag is exactly the prefix.
        TagKey::new(upstream, repo, "").0
    }

    /// The key's bytes (`upstream \0 repository \0 tag`).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// `(upstream, repository, tag)`.
    pub fn parts(&self) -> (String, String, String) {
        let mut it = self
            .0
            .split(|&b| b == 0)
            .map(|p| String::from_utf8_lossy(p).into_owned());
        (
            it.next().unwrap_or_default(),
            it.next().unwrap_or_default(),
            it.next().unwrap_or_default(),
        )
    }
}

/// What a tag resolved to when it was last checked upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagRecord {
    /// The manifest the tag points at.
    pub digest: Digest,
    /// Its media type; empty when not known yet (a push event that did not
    /// say): the manifest is then read by digest before a `HEAD` is answered.
    pub media_type: String,
    /// Its size (0 with an unknown media type).
    pub size: u64,
    /// When upstream last confirmed this digest (unix milliseconds).
    pub checked_at_ms: u64,
    /// Upstream said the tag moved without saying where (a push event without
    /// a digest): not fresh, whatever its age, but still a stale answer.
    pub expired: bool,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct TagRecordJson<'a> {
    digest: &'a str,
    media_type: &'a str,
    size: u64,
    checked_at_ms: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    expired: bool,
}

impl TagRecord {
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&TagRecordJson {
            digest: self.digest.as_str(),
            media_type: &self.media_type,
            size: self.size,
            checked_at_ms: self.checked_at_ms,
            expired: self.expired,
        })
        .expect("a tag record always serialises")
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<TagRecord> {
        let j: TagRecordJson = serde_json::from_slice(bytes).ok()?;
        Some(TagRecord {
            digest: j.digest.parse().ok()?,
            media_type: j.media_type.to_owned(),
            size: j.size,
            checked_at_ms: j.checked_at_ms,
            expired: j.expired,
        })
    }
}

/// A manifest as upstream sent it: exact bytes and media type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredManifest {
    pub media_type: String,
    pub body: bytes::Bytes,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlobMeta {
    pub size: u64,
    pub last_access: u64,
}

impl BlobMeta {
    fn encode(self) -> [u8; 16] {
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&self.size.to_le_bytes());
        v[8..].copy_from_slice(&self.last_access.to_le_bytes());
        v
    }

    fn decode(bytes: &[u8]) -> Option<BlobMeta> {
        let size = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
        let last_access = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
        Some(BlobMeta { size, last_access })
    }
}

/// A blob entry's key and its decoded value (`None` when undecodable).
pub(crate) type RawBlobEntry = (Vec<u8>, Option<BlobMeta>);

pub(crate) struct Index {
    db: DB,
    /// Write calls so far, of any kind.
    writes: AtomicU64,
    /// Decoded tag records; every write to `tags` goes through it.
    tags: TagCache,
}

impl Index {
    pub fn open(path: &Path) -> Result<Index, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_keep_log_file_num(3);
        opts.set_max_log_file_size(4 << 20);
        opts.set_recycle_log_file_num(2);
        let db = DB::open_cf(&opts, path, [CF_TAGS, CF_MANIFESTS, CF_BLOBS, CF_ANSWERS])?;
        Ok(Index {
            db,
            writes: AtomicU64::new(0),
            tags: TagCache::default(),
        })
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are created at open")
    }

    /// Write calls so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    fn wrote(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    fn synced() -> WriteOptions {
        let mut w = WriteOptions::default();
        w.set_sync(true);
        w
    }

    pub fn tag(&self, key: &TagKey) -> Result<Option<TagRecord>, StoreError> {
        let seen = match self.tags.get(key) {
            Ok(record) => return Ok(Some(record)),
            Err(seen) => seen,
        };
        match self.db.get_pinned_cf(self.cf(CF_TAGS), &key.0)? {
            None => Ok(None),
            Some(v) => {
                let record = TagRecord::decode(&v)
                    .ok_or_else(|| StoreError::CorruptRecord(format!("{:?}", key.parts())))?;
                self.tags.fill(seen, key, &record);
                Ok(Some(record))
            }
        }
    }

    pub fn put_tag(&self, key: &TagKey, record: &TagRecord) -> Result<(), StoreError> {
        self.wrote();
        self.tags.write(Change::Put(key, record), || {
            Ok(self.db.put_cf(self.cf(CF_TAGS), &key.0, record.encode())?)
        })
    }

    pub fn delete_tag(&self, key: &TagKey) -> Result<(), StoreError> {
        self.wrote();
        self.tags.write(Change::Remove(key), || {
            Ok(self.db.delete_cf(self.cf(CF_TAGS), &key.0)?)
        })
    }

    pub fn all_tags(&self) -> Result<Vec<(TagKey, Option<TagRecord>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_TAGS), IteratorMode::Start) {
            let (k, v) = item?;
            out.push((TagKey(k.to_vec()), TagRecord::decode(&v)));
        }
        Ok(out)
    }

    /// Deletes a repository's tags in one synced batch. The scan and the sync
    /// happen outside the tag cache's lock (warm readers do not wait on
    /// them); the cache is forgotten once the batch is in.
    pub fn delete_repo_tags(&self, upstream: &str, repo: &str) -> Result<usize, StoreError> {
        self.wrote();
        let prefix = TagKey::repo_prefix(upstream, repo);
        let mut batch = WriteBatch::default();
        let mut n = 0;
        let cf = self.cf(CF_TAGS);
        for item in self.db.prefix_iterator_cf(cf, &prefix) {
            let (k, _) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            batch.delete_cf(cf, &k);
            n += 1;
        }
        self.write_tag_deletions(batch, n)
    }

    /// Deletes every tag naming `digest`, as [`Index::delete_repo_tags`] does.
    pub fn delete_tags_pointing_at(&self, digest: &Digest) -> Result<usize, StoreError> {
        self.wrote();
        let mut batch = WriteBatch::default();
        let mut n = 0;
        for (key, record) in self.all_tags()? {
            if record.is_some_and(|r| r.digest == *digest) {
                batch.delete_cf(self.cf(CF_TAGS), &key.0);
                n += 1;
            }
        }
        self.write_tag_deletions(batch, n)
    }

    /// Writes a batch of `n` tag deletions, synced, then forgets the cached
    /// records (none to forget when nothing was deleted; all of them when the
    /// write failed, as it may have landed before its sync did).
    fn write_tag_deletions(&self, batch: WriteBatch, n: usize) -> Result<usize, StoreError> {
        let written = self.db.write_opt(batch, &Self::synced());
        if n > 0 {
            self.tags.forget_all();
        }
        written?;
        Ok(n)
    }

    pub fn put_manifest(
        &self,
        digest: &Digest,
        media_type: &str,
        body: &[u8],
    ) -> Result<(), StoreError> {
        self.wrote();
        let mt = media_type.as_bytes();
        let mt_len = u16::try_from(mt.len())
            .map_err(|_| StoreError::CorruptRecord("media type too long".into()))?;
        let mut v = Vec::with_capacity(2 + mt.len() + body.len());
        v.extend_from_slice(&mt_len.to_le_bytes());
        v.extend_from_slice(mt);
        v.extend_from_slice(body);
        Ok(self.db.put_cf(self.cf(CF_MANIFESTS), digest.as_str(), v)?)
    }

    pub fn manifest(&self, digest: &Digest) -> Result<Option<StoredManifest>, StoreError> {
        let Some(v) = self
            .db
            .get_pinned_cf(self.cf(CF_MANIFESTS), digest.as_str())?
        else {
            return Ok(None);
        };
        decode_manifest(&v)
            .map(Some)
            .ok_or_else(|| StoreError::CorruptRecord(digest.to_string()))
    }

    pub fn has_manifest(&self, digest: &Digest) -> Result<bool, StoreError> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_MANIFESTS), digest.as_str())?
            .is_some())
    }

    pub fn delete_manifest(&self, digest: &Digest) -> Result<(), StoreError> {
        self.wrote();
        Ok(self
            .db
            .delete_cf_opt(self.cf(CF_MANIFESTS), digest.as_str(), &Self::synced())?)
    }

    /// Every manifest's digest key and decoded body (`None` when undecodable).
    pub fn all_manifests(&self) -> Result<Vec<(String, Option<StoredManifest>)>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_MANIFESTS), IteratorMode::Start)
        {
            let (k, v) = item?;
            out.push((
                String::from_utf8_lossy(&k).into_owned(),
                decode_manifest(&v),
            ));
        }
        Ok(out)
    }

    pub fn delete_manifest_key(&self, key: &str) -> Result<(), StoreError> {
        self.wrote();
        Ok(self
            .db
            .delete_cf_opt(self.cf(CF_MANIFESTS), key, &Self::synced())?)
    }

    pub fn blob(&self, digest: &Digest) -> Result<Option<BlobMeta>, StoreError> {
        match self.db.get_pinned_cf(self.cf(CF_BLOBS), digest.as_str())? {
            None => Ok(None),
            Some(v) => BlobMeta::decode(&v)
                .map(Some)
                .ok_or_else(|| StoreError::CorruptRecord(digest.to_string())),
        }
    }

    pub fn put_blob(&self, digest: &Digest, meta: BlobMeta) -> Result<(), StoreError> {
        self.wrote();
        Ok(self
            .db
            .put_cf(self.cf(CF_BLOBS), digest.as_str(), meta.encode())?)
    }

    /// Removes a blob's entry; `sync` makes the removal durable before returning,
    /// which callers need before they unlink the file.
    pub fn delete_blob(&self, digest: &Digest, sync: bool) -> Result<(), StoreError> {
        self.wrote();
        let opts = if sync {
            Self::synced()
        } else {
            WriteOptions::default()
        };
        Ok(self
            .db
            .delete_cf_opt(self.cf(CF_BLOBS), digest.as_str(), &opts)?)
    }

    pub fn delete_blob_key(&self, key: &[u8]) -> Result<(), StoreError> {
        self.wrote();
        Ok(self
            .db
            .delete_cf_opt(self.cf(CF_BLOBS), key, &Self::synced())?)
    }

    /// Durably removes several blob entries in one write.
    pub fn delete_blobs(&self, digests: &[&Digest]) -> Result<(), StoreError> {
        self.wrote();
        if digests.is_empty() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        for d in digests {
            batch.delete_cf(self.cf(CF_BLOBS), d.as_str());
        }
        Ok(self.db.write_opt(batch, &Self::synced())?)
    }

    /// Writes access times for blobs still in the index (evicted ones are skipped).
    pub fn touch_blobs(&self, access: &HashMap<Digest, u64>) -> Result<(), StoreError> {
        self.wrote();
        let mut batch = WriteBatch::default();
        for (digest, &when) in access {
            if let Some(meta) = self.blob(digest)? {
                let meta = BlobMeta {
                    last_access: when.max(meta.last_access),
                    ..meta
                };
                batch.put_cf(self.cf(CF_BLOBS), digest.as_str(), meta.encode());
            }
        }
        Ok(self.db.write(batch)?)
    }

    /// A kept answer: when it was fetched (unix ms) and its bytes.
    pub fn answer(&self, key: &[u8]) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let Some(v) = self.db.get_pinned_cf(self.cf(CF_ANSWERS), key)? else {
            return Ok(None);
        };
        let at = v
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or_else(|| StoreError::CorruptRecord("answer".into()))?;
        Ok(Some((at, v[8..].to_vec())))
    }

    /// Keeps an answer (not synced: losing one to a power cut costs one
    /// upstream request).
    pub fn put_answer(
        &self,
        key: &[u8],
        fetched_at_ms: u64,
        value: &[u8],
    ) -> Result<(), StoreError> {
        self.wrote();
        let mut v = Vec::with_capacity(8 + value.len());
        v.extend_from_slice(&fetched_at_ms.to_le_bytes());
        v.extend_from_slice(value);
        Ok(self.db.put_cf(self.cf(CF_ANSWERS), key, v)?)
    }

    /// Drops every answer whose key starts with `prefix`, or (with `older_than`)
    /// only those fetched before that instant; how many.
    pub fn delete_answers(
        &self,
        prefix: &[u8],
        older_than_ms: Option<u64>,
    ) -> Result<usize, StoreError> {
        self.wrote();
        let cf = self.cf(CF_ANSWERS);
        let mut batch = WriteBatch::default();
        let mut n = 0;
        for item in self.db.prefix_iterator_cf(cf, prefix) {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            let at = v
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes);
            if older_than_ms.is_none_or(|limit| at.is_none_or(|at| at < limit)) {
                batch.delete_cf(cf, &k);
                n += 1;
            }
        }
        self.db.write(batch)?;
        Ok(n)
    }

    /// Every blob entry whose key is a valid digest.
    pub fn all_blobs(&self) -> Result<Vec<(Digest, BlobMeta)>, StoreError> {
        let mut out = Vec::new();
        for (key, meta) in self.raw_blobs()? {
            if let (Ok(d), Some(m)) = (String::from_utf8_lossy(&key).parse::<Digest>(), meta) {
                out.push((d, m));
            }
        }
        Ok(out)
    }

    /// Every blob entry as stored, decodable or not (for fsck).
    pub fn raw_blobs(&self) -> Result<Vec<RawBlobEntry>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_BLOBS), IteratorMode::Start) {
            let (k, v) = item?;
            out.push((k.to_vec(), BlobMeta::decode(&v)));
        }
        Ok(out)
    }

    /// Total bytes, count and newest access stamp of indexed blobs: one pass
    /// over the index, which is small (24-byte values), never over the blob files.
    pub fn blob_totals(&self) -> Result<(u64, u64, u64), StoreError> {
        let (mut bytes, mut count, mut newest) = (0u64, 0u64, 0u64);
        for item in self.db.iterator_cf(self.cf(CF_BLOBS), IteratorMode::Start) {
            let (_, v) = item?;
            if let Some(m) = BlobMeta::decode(&v) {
                bytes += m.size;
                count += 1;
                newest = newest.max(m.last_access);
            }
        }
        Ok((bytes, count, newest))
    }
}

fn decode_manifest(v: &[u8]) -> Option<StoredManifest> {
    let len = u16::from_le_bytes(v.get(..2)?.try_into().ok()?) as usize;
    let media_type = std::str::from_utf8(v.get(2..2 + len)?).ok()?.to_owned();
    let body = bytes::Bytes::copy_from_slice(v.get(2 + len..)?);
    Some(StoredManifest { media_type, body })
}
