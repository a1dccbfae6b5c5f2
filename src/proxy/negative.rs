//! The negative cache: tags upstream said do not exist, remembered for
//! `negative_ttl` so a crash-looping pod with a typo costs one upstream request
//! per window, not one per restart.
//!
//! Bounded ([`crate::config::defaults::NEGATIVE_TAGS`]): at capacity, expired
//! entries are swept first, then the entry that would expire soonest makes
//! room. Losing an entry costs one upstream request.

use crate::bounded::ExpiringMap;
use ferry_storage::TagKey;
use parking_lot::Mutex;

/// Tag keys known missing, each until a unix-ms instant.
pub(crate) struct NegativeCache {
    /// Tag → believed missing until its deadline.
    until: Mutex<ExpiringMap<TagKey, ()>>,
}

impl NegativeCache {
    pub fn new(capacity: usize) -> NegativeCache {
        NegativeCache {
            until: Mutex::new(ExpiringMap::new(capacity)),
        }
    }

    /// Whether `key` is known missing at `now`.
    pub fn contains(&self, key: &TagKey, now: u64) -> bool {
        self.until.lock().contains(key, now)
    }

    /// Remembers `key` as missing until `until`.
    pub fn insert(&self, key: TagKey, until: u64, now: u64) {
        self.until.lock().insert(key, (), until, now);
    }

    /// Forgets `key` (upstream has it now).
    pub fn remove(&self, key: &TagKey) {
        self.until.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> TagKey {
        TagKey::new("up", "repo", &format!("t{i}"))
    }

    #[test]
    fn entries_expire_and_can_be_forgotten() {
        let n = NegativeCache::new(10);
        n.insert(key(1), 100, 0);
        n.insert(key(2), 100, 0);
        assert!(n.contains(&key(1), 99));
        assert!(!n.contains(&key(1), 100));
        n.remove(&key(2));
        assert!(!n.contains(&key(2), 0));
        assert_eq!(n.until.lock().len(), 0);
    }
}
