//! One bounded map for every in-memory cache Ferry keeps: negative answers,
//! tokens, access decisions, client views, blob `HEAD` answers, warmed
//! images, push-event ids and the answer cache.
//!
//! Each entry has a deadline (unix ms): it is not returned at or past it, and
//! entries past their deadline are swept before anything else is dropped. At
//! the bound (a count, and optionally a total weight in bytes) the entry with
//! the soonest deadline makes room. For maps whose deadline is "written at +
//! a fixed time" that is the oldest entry; for maps that push an entry's
//! deadline on each use it is the least recently used.
//!
//! The map is not synchronised: owners wrap it in the lock they already hold
//! for the rest of their state. Every operation is `O(log n)` (sweeping is
//! `O(log n)` per entry swept); capacities live in
//! [`crate::config::defaults`], so "what bounds memory" has one answer.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// A map bounded by count (and optionally by weight), whose entries expire.
pub struct ExpiringMap<K, V> {
    capacity: usize,
    /// Total weight kept at most; `None`: only the count bounds it.
    max_weight: Option<usize>,
    entries: HashMap<K, Entry<V>>,
    /// `(deadline, insertion number)` → key: the eviction order. Holds exactly
    /// the keys of `entries`, each once.
    order: BTreeMap<(u64, u64), K>,
    /// Insertion counter: ties between equal deadlines go to the older entry.
    seq: u64,
    /// The sum of the weights in `entries`.
    weight: usize,
}

struct Entry<V> {
    value: V,
    deadline: u64,
    seq: u64,
    weight: usize,
}

impl<K: Hash + Eq + Clone, V> ExpiringMap<K, V> {
    /// An empty map holding at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> ExpiringMap<K, V> {
        ExpiringMap {
            capacity: capacity.max(1),
            max_weight: None,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            seq: 0,
            weight: 0,
        }
    }

    /// An empty map bounded by `capacity` entries and `max_weight` in total.
    pub fn weighted(capacity: usize, max_weight: usize) -> ExpiringMap<K, V> {
        ExpiringMap {
            max_weight: Some(max_weight),
            ..ExpiringMap::new(capacity)
        }
    }

    /// The value of `key` if its deadline is after `now`; an expired entry is
    /// dropped when seen.
    pub fn get<Q>(&mut self, key: &Q, now: u64) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let expired = self.entries.get(key)?.deadline <= now;
        if expired {
            self.remove(key);
            return None;
        }
        self.entries.get(key).map(|e| &e.value)
    }

    /// Whether `key` is held and not expired at `now`.
    pub fn contains<Q>(&mut self, key: &Q, now: u64) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key, now).is_some()
    }

    /// Keeps `value` under `key` until `deadline`, with weight 0.
    pub fn insert(&mut self, key: K, value: V, deadline: u64, now: u64) {
        self.insert_weighted(key, value, 0, deadline, now);
    }

    /// Keeps `value` (weighing `weight`) under `key` until `deadline`, making
    /// room first: expired entries go, then those with the soonest deadline.
    pub fn insert_weighted(&mut self, key: K, value: V, weight: usize, deadline: u64, now: u64) {
        self.remove(&key);
        self.sweep(now);
        while !self.entries.is_empty()
            && (self.entries.len() >= self.capacity
                || self
                    .max_weight
                    .is_some_and(|max| self.weight + weight > max))
        {
            self.pop_soonest();
        }
        self.seq += 1;
        self.order.insert((deadline, self.seq), key.clone());
        self.weight += weight;
        self.entries.insert(
            key,
            Entry {
                value,
                deadline,
                seq: self.seq,
                weight,
            },
        );
    }

    /// Drops `key`; its value if it was held (expired or not).
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let e = self.entries.remove(key)?;
        self.order.remove(&(e.deadline, e.seq));
        self.weight -= e.weight;
        Some(e.value)
    }

    /// Keeps only the entries for which `keep` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        let gone: Vec<K> = self
            .entries
            .iter()
            .filter(|(k, e)| !keep(k, &e.value))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            self.remove(&k);
        }
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
        self.weight = 0;
    }

    /// Entries held, expired ones included until they are swept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The total weight held.
    pub fn weight(&self) -> usize {
        self.weight
    }

    /// Drops every entry whose deadline is at or before `now`.
    fn sweep(&mut self, now: u64) {
        while self
            .order
            .first_key_value()
            .is_some_and(|((deadline, _), _)| *deadline <= now)
        {
            self.pop_soonest();
        }
    }

    fn pop_soonest(&mut self) {
        if let Some((_, key)) = self.order.pop_first() {
            if let Some(e) = self.entries.remove(&key) {
                self.weight -= e.weight;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_at_their_deadline() {
        let mut m = ExpiringMap::new(10);
        m.insert("a", 1, 100, 0);
        assert_eq!(m.get("a", 99), Some(&1));
        assert_eq!(m.get("a", 100), None);
        assert_eq!(m.len(), 0, "an expired entry is dropped when seen");
    }

    #[test]
    fn at_the_bound_expired_entries_go_first_then_the_soonest_deadline() {
        let mut m = ExpiringMap::new(3);
        m.insert(1, (), 10, 0);
        m.insert(2, (), 500, 0);
        m.insert(3, (), 400, 0);
        m.insert(4, (), 600, 20); // 1 has expired: swept, nothing else goes
        assert_eq!(m.len(), 3);
        assert!(!m.contains(&1, 20));
        m.insert(5, (), 700, 30); // none expired: 3 (soonest) goes
        assert_eq!(m.len(), 3);
        assert!(!m.contains(&3, 30));
        assert!(m.contains(&2, 30) && m.contains(&4, 30) && m.contains(&5, 30));
    }

    #[test]
    fn equal_deadlines_leave_oldest_first_and_replacing_keeps_one_entry() {
        let mut m = ExpiringMap::new(2);
        m.insert("a", 1, 50, 0);
        m.insert("b", 2, 50, 0);
        m.insert("a", 3, 50, 0); // replaced: now the newest
        assert_eq!(m.len(), 2);
        m.insert("c", 4, 50, 0); // "b" is the oldest
        assert_eq!(m.get("b", 0), None);
        assert_eq!(m.get("a", 0), Some(&3));
        assert_eq!(m.get("c", 0), Some(&4));
    }

    #[test]
    fn the_weight_budget_pushes_out_the_soonest_until_the_new_entry_fits() {
        let mut m = ExpiringMap::weighted(100, 10);
        m.insert_weighted(1, (), 4, 10, 0);
        m.insert_weighted(2, (), 4, 20, 0);
        m.insert_weighted(3, (), 5, 30, 0); // 13 > 10: 1 goes
        assert_eq!((m.len(), m.weight()), (2, 9));
        assert!(!m.contains(&1, 0));
        m.remove(&2);
        assert_eq!(m.weight(), 5);
        m.retain(|k, _| *k != 3);
        assert_eq!((m.len(), m.weight()), (0, 0));
    }

    #[test]
    fn a_deadline_pushed_on_use_makes_it_least_recently_used() {
        let mut m = ExpiringMap::new(2);
        m.insert("a", (), 100, 0);
        m.insert("b", (), 110, 10);
        m.insert("a", (), 120, 20); // "a" used again
        m.insert("c", (), 130, 30);
        assert!(m.contains("a", 30) && m.contains("c", 30) && !m.contains("b", 30));
    }
}
