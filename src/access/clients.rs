//! Client authentication with Ferry's own identities (`[[client]]`): with any
//! configured, every pull-API request needs HTTP Basic credentials of one of
//! them. Only SHA-256 digests of the passwords are kept, compared in constant time.

use sha2::Digest as _;
use std::fmt;
use subtle::ConstantTimeEq;

/// The configured client identities.
#[derive(Clone)]
pub struct ClientAuth {
    /// (username, SHA-256 of the password).
    users: Vec<(String, [u8; 32])>,
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.users.iter().map(|(u, _)| u.as_str()).collect();
        write!(f, "ClientAuth({names:?}, <redacted>)")
    }
}

impl ClientAuth {
    /// From (username, password) pairs the configuration has validated.
    pub fn new<'a>(users: impl IntoIterator<Item = (&'a str, &'a str)>) -> ClientAuth {
        ClientAuth {
            users: users
                .into_iter()
                .map(|(u, p)| (u.to_string(), password_digest(p)))
                .collect(),
        }
    }

    /// Whether an `Authorization` header value names a configured user with
    /// the right password.
    pub fn allows(&self, authorization: Option<&str>) -> bool {
        let Some((user, password)) = authorization.and_then(parse_basic) else {
            return false;
        };
        let given = password_digest(&password);
        self.users
            .iter()
            .any(|(u, want)| *u == user && bool::from(given.ct_eq(want)))
    }
}

/// `Basic <base64(user:password)>` → (user, password).
pub fn parse_basic(authorization: &str) -> Option<(String, String)> {
    use base64::Engine as _;
    let (scheme, b64) = authorization.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

fn password_digest(password: &str) -> [u8; 32] {
    sha2::Sha256::digest(password.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(s: &str) -> String {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
    }

    #[test]
    fn checks_basic_credentials() {
        let auth = ClientAuth::new([("node", "s3:cret"), ("ci", "other")]);
        assert!(
            auth.allows(Some(&basic("node:s3:cret"))),
            "':' in a password"
        );
        assert!(auth.allows(Some(&basic("ci:other"))));
        assert!(auth.allows(Some(&format!("basic  {}", &basic("ci:other")[6..]))));
        assert!(
            !auth.allows(Some(&basic("node:other"))),
            "another user's password"
        );
        assert!(!auth.allows(Some(&basic("node:s3:cre"))));
        assert!(!auth.allows(Some(&basic("nobody:s3:cret"))));
        assert!(!auth.allows(Some("Bearer abc")));
        assert!(!auth.allows(Some("Basic !!!")));
        assert!(!auth.allows(None));
        assert!(!format!("{auth:?}").contains("s3"), "Debug shows no secret");
    }
}
