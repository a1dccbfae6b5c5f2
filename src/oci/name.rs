//! Repository names, tags and references, validated against the distribution grammar.

use super::digest::{Digest, DigestError};
use std::fmt;

/// Longest repository name accepted (distribution requires `< 256`).
const MAX_NAME_LEN: usize = 255;
/// Longest tag accepted by the spec's `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
const MAX_TAG_LEN: usize = 128;

/// A repository path such as `library/alpine`, as it is named upstream.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(Box<str>);

impl RepoName {
    /// Validates `s` against
    /// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
    pub fn parse(s: &str) -> Option<RepoName> {
        if s.is_empty() || s.len() > MAX_NAME_LEN {
            return None;
        }
        s.split('/')
            .all(valid_path_component)
            .then(|| RepoName(s.into()))
    }

    /// Like [`parse`](Self::parse), but the first component may also be a
    /// registry `host:port` (`/v2/127.0.0.1:5001/library/x/...`, the prefix form a
    /// CRI-O/podman mirror produces for a registry with a port). The router
    /// accepts such a name only when the prefix names a configured upstream.
    pub fn parse_prefixed(s: &str) -> Option<RepoName> {
        if let Some(n) = RepoName::parse(s) {
            return Some(n);
        }
        let (first, rest) = s.split_once('/')?;
        let (host, port) = first.split_once(':')?;
        let host_ok = valid_path_component(host);
        let port_ok =
            !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
        (host_ok && port_ok && RepoName::parse(rest).is_some() && s.len() <= MAX_NAME_LEN)
            .then(|| RepoName(s.into()))
    }

    /// Whether the first component is a `host:port` (see [`parse_prefixed`](Self::parse_prefixed)).
    pub fn has_port_prefix(&self) -> bool {
        self.components().next().is_some_and(|c| c.contains(':'))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The components separated by `/`.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// This name with its first component removed, if it has more than one.
    pub fn strip_first(&self) -> Option<RepoName> {
        self.0
            .split_once('/')
            .map(|(_, rest)| RepoName(rest.into()))
    }

    /// Docker Hub's rule: a single-component name lives under `library/`.
    pub fn with_library_prefix(&self) -> RepoName {
        if self.0.contains('/') {
            self.clone()
        } else {
            RepoName(format!("library/{}", self.0).into())
        }
    }
}

/// One path component: alphanumeric runs joined by `.`, `_`, `__` or any number of `-`.
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// A tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(Box<str>);

impl Tag {
    /// A tag, if `s` is one (`[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`).
    pub fn parse(s: &str) -> Option<Tag> {
        let b = s.as_bytes();
        let first_ok = b
            .first()
            .is_some_and(|&x| x.is_ascii_alphanumeric() || x == b'_');
        let rest_ok = b[1.min(b.len())..]
            .iter()
            .all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'));
        (first_ok && rest_ok && b.len() <= MAX_TAG_LEN).then(|| Tag(s.into()))
    }

    /// The tag as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// What follows `/manifests/`: a tag or a digest, nothing else.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reference {
    /// A tag.
    Tag(Tag),
    /// A digest.
    Digest(Digest),
}

/// Why a reference is rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReferenceError {
    /// Not a tag and has no `:`; the spec wants a plain 404 for these.
    InvalidTag,
    /// Looks like a digest (has `:`) but is malformed.
    InvalidDigest(DigestError),
}

impl Reference {
    /// A digest if `s` has a `:`, else a tag.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        if s.contains(':') {
            s.parse()
                .map(Reference::Digest)
                .map_err(ReferenceError::InvalidDigest)
        } else {
            Tag::parse(s)
                .map(Reference::Tag)
                .ok_or(ReferenceError::InvalidTag)
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_grammar() {
        for ok in [
            "alpine",
            "library/alpine",
            "a/b/c/d",
            "my-app",
            "my--app",
            "my_app",
            "my__app",
            "my.app",
            "x0/y1",
            "127.0.0.1/nope".trim_start_matches("127.0.0.1/"),
        ] {
            assert!(RepoName::parse(ok).is_some(), "{ok}");
        }
        for bad in [
            "",
            "Library/alpine",
            "alpine/",
            "/alpine",
            "a//b",
            "-a",
            "a-",
            "a___b",
            "a.-b",
            "a..b",
            "a:b",
            &"a".repeat(256),
        ] {
            assert!(RepoName::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn library_prefix_only_for_single_components() {
        let n = RepoName::parse("alpine").unwrap();
        assert_eq!(n.with_library_prefix().as_str(), "library/alpine");
        let n = RepoName::parse("user/app").unwrap();
        assert_eq!(n.with_library_prefix().as_str(), "user/app");
        assert_eq!(n.strip_first().unwrap().as_str(), "app");
    }

    #[test]
    fn port_prefixed_names() {
        let n = RepoName::parse_prefixed("127.0.0.1:5001/library/test").unwrap();
        assert!(n.has_port_prefix());
        assert_eq!(n.strip_first().unwrap().as_str(), "library/test");
        assert!(RepoName::parse_prefixed("127.0.0.1:5001").is_none());
        assert!(RepoName::parse_prefixed("host:port/x").is_none());
        assert!(RepoName::parse_prefixed("a/127.0.0.1:5001/x").is_none());
        assert!(!RepoName::parse("a/b").unwrap().has_port_prefix());
    }

    #[test]
    fn tag_grammar() {
        assert!(Tag::parse("latest").is_some());
        assert!(Tag::parse("_x").is_some());
        assert!(Tag::parse("v1.2.3-rc.1_b").is_some());
        assert!(Tag::parse(&"a".repeat(128)).is_some());
        assert!(Tag::parse(&"a".repeat(129)).is_none());
        assert!(Tag::parse(".INVALID_MANIFEST_NAME").is_none());
        assert!(Tag::parse("-x").is_none());
        assert!(Tag::parse("").is_none());
    }

    #[test]
    fn references() {
        assert!(matches!(Reference::parse("1.0"), Ok(Reference::Tag(_))));
        assert_eq!(Reference::parse(".bad"), Err(ReferenceError::InvalidTag));
        assert!(matches!(
            Reference::parse("sha256:totallywrong"),
            Err(ReferenceError::InvalidDigest(_))
        ));
    }
}
