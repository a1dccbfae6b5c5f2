//! Client authentication with Ferry's own identities (`[[client]]`): with any
//! configured, every pull-API request needs HTTP Basic credentials of one of
//! them, and an identity limited to repositories (`repositories =
//! ["ghcr.io/team-a/.*"]`) may pull only those. Only SHA-256 digests of the
//! passwords are kept, compared in constant time.

use regex::Regex;
use sha2::Digest as _;
use std::fmt;
use subtle::ConstantTimeEq;

/// The configured client identities.
#[derive(Clone)]
pub struct ClientAuth {
    users: Vec<Client>,
}

/// One identity.
#[derive(Clone)]
pub struct Client {
    name: String,
    /// SHA-256 of the password.
    password: [u8; 32],
    /// (upstream name, whole-name repository regex) it may pull; `None`: all.
    repositories: Option<Vec<(String, Regex)>>,
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.users.iter().map(|c| c.name.as_str()).collect();
        write!(f, "ClientAuth({names:?}, <redacted>)")
    }
}

impl Client {
    /// An identity; `repositories` limits what it may pull.
    pub fn new(name: &str, password: &str, repositories: Option<Vec<(String, Regex)>>) -> Client {
        Client {
            name: name.to_string(),
            password: password_digest(password),
            repositories,
        }
    }

    /// Its username.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it may pull `repo` from the upstream named `upstream`.
    pub fn may_pull(&self, upstream: &str, repo: &str) -> bool {
        self.repositories.as_ref().is_none_or(|allowed| {
            allowed
                .iter()
                .any(|(u, re)| u == upstream && re.is_match(repo))
        })
    }
}

impl ClientAuth {
    /// From (username, password) pairs, each allowed everything.
    pub fn new<'a>(users: impl IntoIterator<Item = (&'a str, &'a str)>) -> ClientAuth {
        ClientAuth::from_clients(
            users
                .into_iter()
                .map(|(u, p)| Client::new(u, p, None))
                .collect(),
        )
    }

    /// From identities the configuration has validated.
    pub fn from_clients(users: Vec<Client>) -> ClientAuth {
        ClientAuth { users }
    }

    /// The identity an `Authorization` header value proves, if any.
    pub fn authenticate(&self, authorization: Option<&str>) -> Option<&Client> {
        let (user, password) = authorization.and_then(parse_basic)?;
        let given = password_digest(&password);
        self.users
            .iter()
            .find(|c| c.name == user && bool::from(given.ct_eq(&c.password)))
    }

    /// Whether an `Authorization` header value names a configured user with
    /// the right password.
    pub fn allows(&self, authorization: Option<&str>) -> bool {
        self.authenticate(authorization).is_some()
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

/// What identifies a client's credentials in Ferry's memory: the SHA-256 of
/// `user:password` (the credentials themselves are never kept).
pub fn credentials_id(username: &str, password: &str) -> [u8; 32] {
    sha2::Sha256::digest(format!("{username}:{password}").as_bytes()).into()
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

    #[test]
    fn a_scoped_identity_pulls_only_its_repositories() {
        let team = Client::new(
            "team-a",
            "pw",
            Some(vec![(
                "ghcr.io".into(),
                Regex::new("^(?:team-a/.*)$").unwrap(),
            )]),
        );
        let auth = ClientAuth::from_clients(vec![team, Client::new("all", "pw2", None)]);
        let c = auth.authenticate(Some(&basic("team-a:pw"))).unwrap();
        assert!(c.may_pull("ghcr.io", "team-a/app"));
        assert!(!c.may_pull("ghcr.io", "team-b/app"));
        assert!(!c.may_pull("docker.io", "team-a/app"), "another upstream");
        assert!(!c.may_pull("ghcr.io", "xteam-a/app"), "whole-name match");
        let all = auth.authenticate(Some(&basic("all:pw2"))).unwrap();
        assert!(all.may_pull("docker.io", "library/alpine"));
    }
}
