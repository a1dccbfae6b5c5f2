//! The admin API's bearer token (`admin_token_file`, `admin_token_env`). Only
//! its SHA-256 is kept, compared in constant time.

use sha2::Digest as _;
use std::fmt;
use subtle::ConstantTimeEq;

/// The token the admin API demands as `Authorization: Bearer …`.
#[derive(Clone)]
pub struct AdminToken([u8; 32]);

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    /// Shortest token accepted: guessing one must be hopeless.
    pub const MIN_LEN: usize = crate::config::defaults::MIN_SECRET_LEN;

    /// From the configured token (already trimmed and checked for length).
    pub fn new(token: &str) -> AdminToken {
        AdminToken(sha2::Sha256::digest(token.as_bytes()).into())
    }

    /// Whether an `Authorization` header value carries the token.
    pub fn allows(&self, authorization: Option<&str>) -> bool {
        let Some(given) = authorization.and_then(|a| {
            let (scheme, token) = a.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        }) else {
            return false;
        };
        let given: [u8; 32] = sha2::Sha256::digest(given.as_bytes()).into();
        bool::from(given.ct_eq(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_bearer_token_itself_passes() {
        let t = AdminToken::new("0123456789abcdef");
        assert!(t.allows(Some("Bearer 0123456789abcdef")));
        assert!(t.allows(Some("bearer  0123456789abcdef ")));
        assert!(!t.allows(Some("Bearer 0123456789abcdeF")));
        assert!(!t.allows(Some("Basic 0123456789abcdef")));
        assert!(!t.allows(Some("0123456789abcdef")));
        assert!(!t.allows(None));
        assert!(!format!("{t:?}").contains("0123"));
    }
}
