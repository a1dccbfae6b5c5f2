//! The negative cache: tags upstream said do not exist, remembered for
//! `negative_ttl` so a crash-looping pod with a typo costs one upstream request
//! per window, not one per restart.
//!
//! Bounded: at capacity, expired entries are swept first, then the entry that
//! would expire soonest makes room. Losing an entry costs one upstream request.

use ferry_storage::TagKey;
use parking_lot::Mutex;
use std::collections::HashMap;

/// Tag keys known missing, each until a unix-ms instant.
pub(crate) struct NegativeCache {
    capacity: usize,
    /// Tag → believed missing until (unix ms).
    until: Mutex<HashMap<TagKey, u64>>,
}

impl NegativeCache {
    pub fn new(capacity: usize) -> NegativeCache {
        NegativeCache {
            capacity: capacity.max(1),
            until: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `key` is known missing at `now`.
    pub fn contains(&self, key: &TagKey, now: u64) -> bool {
        let mut map = self.until.lock();
        match map.get(key) {
            Some(&until) if now < until => true,
            Some(_) => {
                map.remove(key);
                false
            }
            None => false,
        }
    }

    /// Remembers `key` as missing until `until`.
    pub fn insert(&self, key: TagKey, until: u64, now: u64) {
        let mut map = self.until.lock();
        if map.len() >= self.capacity && !map.contains_key(&key) {
            map.retain(|_, u| *u > now);
            if map.len() >= self.capacity {
                let soonest = map.iter().min_by_key(|(_, u)| **u).map(|(k, _)| k.clone());
                if let Some(k) = soonest {
                    map.remove(&k);
                }
            }
        }
        map.insert(key, until);
    }

    /// Forgets `key` (upstream has it now).
    pub fn remove(&self, key: &TagKey) {
        self.until.lock().remove(key);
    }

    /// Entries held now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.until.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> TagKey {
        TagKey::new("up", "repo", &format!("t{i}"))
    }

    #[test]
    fn entries_expire() {
        let n = NegativeCache::new(10);
        n.insert(key(1), 100, 0);
        assert!(n.contains(&key(1), 99));
        assert!(!n.contains(&key(1), 100));
        assert_eq!(n.len(), 0, "an expired entry is dropped when seen");
    }

    #[test]
    fn the_bound_holds_sweeping_expired_then_the_soonest() {
        let n = NegativeCache::new(3);
        n.insert(key(1), 10, 0);
        n.insert(key(2), 500, 0);
        n.insert(key(3), 400, 0);
        n.insert(key(4), 600, 20); // key 1 has expired: swept
        assert_eq!(n.len(), 3);
        assert!(!n.contains(&key(1), 20));
        n.insert(key(5), 700, 30); // none expired: key 3 (soonest) goes
        assert_eq!(n.len(), 3);
        assert!(!n.contains(&key(3), 30));
        assert!(n.contains(&key(2), 30) && n.contains(&key(4), 30) && n.contains(&key(5), 30));
        n.remove(&key(5));
        assert_eq!(n.len(), 2);
    }
}
