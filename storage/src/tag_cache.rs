//! Decoded tag records kept in memory, so a warm tag `HEAD` (the request a
//! kubelet sends at every container start) neither reads RocksDB nor parses
//! JSON. RocksDB stays the truth: a single record's change goes through
//! [`TagCache::write`], which changes the cache in the same critical section,
//! a change of many is followed by [`TagCache::forget_all`], and a reader fills
//! the cache only if no change happened since it read the database, so the
//! cache never holds an older record than RocksDB.

use crate::index::{TagKey, TagRecord};
use parking_lot::RwLock;
use std::collections::HashMap;

/// Records held at most. Past it the cache starts over (a record is about
/// 200 bytes, so this bounds it near 13 MiB); a miss only costs a read.
const CAPACITY: usize = 65_536;

#[derive(Default)]
pub(crate) struct TagCache {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    records: HashMap<TagKey, TagRecord>,
    /// Bumped by every write: a fill that read before it is dropped.
    generation: u64,
}

/// What a reader saw before it read the database: see [`TagCache::fill`].
#[derive(Clone, Copy)]
pub(crate) struct Generation(u64);

/// How a write changes the cache once the database has it.
pub(crate) enum Change<'a> {
    Put(&'a TagKey, &'a TagRecord),
    Remove(&'a TagKey),
}

impl TagCache {
    /// The cached record, or the generation to [`fill`](Self::fill) with.
    pub fn get(&self, key: &TagKey) -> Result<TagRecord, Generation> {
        let inner = self.inner.read();
        match inner.records.get(key) {
            Some(r) => Ok(r.clone()),
            None => Err(Generation(inner.generation)),
        }
    }

    /// Caches `record`, read from the database after `seen`, unless a write
    /// happened since (the record may be older than the write).
    pub fn fill(&self, seen: Generation, key: &TagKey, record: &TagRecord) {
        let mut inner = self.inner.write();
        if inner.generation != seen.0 {
            return;
        }
        if inner.records.len() >= CAPACITY {
            inner.records.clear();
        }
        inner.records.insert(key.clone(), record.clone());
    }

    /// Runs `write` (the database change) and applies `change` if it
    /// succeeded, with readers held off; on failure the cache forgets the
    /// keys, since the database may or may not have changed.
    pub fn write<T, E>(
        &self,
        change: Change<'_>,
        write: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let mut inner = self.inner.write();
        inner.generation += 1;
        let result = write();
        match (change, result.is_ok()) {
            (Change::Put(key, record), true) => {
                if inner.records.len() >= CAPACITY {
                    inner.records.clear();
                }
                inner.records.insert(key.clone(), record.clone());
            }
            (Change::Put(key, _) | Change::Remove(key), _) => {
                inner.records.remove(key);
            }
        }
        result
    }

    /// Forgets every record, after a write of several at once (a repository's
    /// tags, every tag naming a digest) reached the database. That write is
    /// done outside the lock, so warm readers do not wait on its scan and
    /// sync: a reader that read the database before it cannot fill the cache
    /// afterwards (the generation moved), and one that reads after it sees it.
    pub fn forget_all(&self) {
        let mut inner = self.inner.write();
        inner.generation += 1;
        inner.records.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Digest;

    fn record(n: u64) -> TagRecord {
        TagRecord {
            digest: Digest::sha256_of(&n.to_le_bytes()),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            size: n,
            checked_at_ms: n,
            expired: false,
        }
    }

    #[test]
    fn a_fill_that_read_before_a_write_is_dropped() {
        let cache = TagCache::default();
        let key = TagKey::new("up", "repo", "tag");
        let seen = cache.get(&key).unwrap_err();
        // A write lands between the reader's database read and its fill.
        cache
            .write(Change::Put(&key, &record(2)), || Ok::<_, ()>(()))
            .unwrap();
        cache.fill(seen, &key, &record(1));
        assert_eq!(cache.get(&key).ok(), Some(record(2)));
    }

    #[test]
    fn a_failed_write_forgets_the_key_and_forget_all_forgets_all() {
        let cache = TagCache::default();
        let (a, b) = (TagKey::new("up", "r", "a"), TagKey::new("up", "r", "b"));
        for (k, n) in [(&a, 1), (&b, 2)] {
            let seen = cache.get(k).unwrap_err();
            cache.fill(seen, k, &record(n));
        }
        assert!(cache
            .write(Change::Put(&a, &record(3)), || Err::<(), _>("disk"))
            .is_err());
        assert!(cache.get(&a).is_err(), "unknown after a failed write");
        assert_eq!(cache.get(&b).ok(), Some(record(2)));
        cache.forget_all();
        assert!(cache.get(&b).is_err());
    }
}
