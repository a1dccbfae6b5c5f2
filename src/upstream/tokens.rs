//! Bearer tokens an upstream issued, by (realm, scope), until they expire.
//!
//! Bounded ([`defaults::TOKENS_PER_UPSTREAM`]): one entry per repository
//! pulled would otherwise grow without end. At the bound, expired tokens are
//! dropped first, then the one that would expire soonest; losing one costs a
//! token request.

use crate::bounded::ExpiringMap;
use crate::config::defaults;
use parking_lot::Mutex;

/// The token cache of one upstream.
pub(crate) struct Tokens {
    /// (realm, scope) → token, until it expires.
    map: Mutex<ExpiringMap<(String, String), String>>,
}

impl Default for Tokens {
    fn default() -> Tokens {
        Tokens::with_capacity(defaults::TOKENS_PER_UPSTREAM)
    }
}

impl Tokens {
    pub fn with_capacity(capacity: usize) -> Tokens {
        Tokens {
            map: Mutex::new(ExpiringMap::new(capacity)),
        }
    }

    /// The token for `(realm, scope)` if it is still valid at `now_ms`.
    pub fn get(&self, realm: &str, scope: &str, now_ms: u64) -> Option<String> {
        self.map
            .lock()
            .get(&(realm.to_string(), scope.to_string()), now_ms)
            .cloned()
    }

    /// Keeps `token` for `(realm, scope)` until `expires_ms`.
    pub fn insert(&self, realm: &str, scope: &str, token: String, expires_ms: u64, now_ms: u64) {
        let key = (realm.to_string(), scope.to_string());
        self.map.lock().insert(key, token, expires_ms, now_ms);
    }

    /// Forgets every token (the credentials they were issued to changed).
    pub fn clear(&self) {
        self.map.lock().clear();
    }

    /// Tokens held now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_expired_first_then_soonest_to_expire() {
        let t = Tokens::with_capacity(3);
        t.insert("r", "a", "ta".into(), 100, 0);
        t.insert("r", "b", "tb".into(), 300, 0);
        t.insert("r", "c", "tc".into(), 200, 0);
        t.insert("r", "d", "td".into(), 400, 0);
        assert_eq!(t.len(), 3);
        assert_eq!(t.get("r", "a", 0), None, "the soonest to expire made room");
        assert_eq!(t.get("r", "d", 0).as_deref(), Some("td"));
        // At 250, c has expired: it goes first, b stays.
        t.insert("r", "e", "te".into(), 500, 250);
        assert_eq!(t.get("r", "b", 250).as_deref(), Some("tb"));
        assert_eq!(t.get("r", "c", 0), None);
        assert_eq!(t.len(), 3);
        // Ten thousand repositories later, still bounded.
        for i in 0..10_000 {
            t.insert("r", &format!("repo{i}"), "x".into(), 1_000 + i, 300);
        }
        assert_eq!(t.len(), 3);
    }
}
