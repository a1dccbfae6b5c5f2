//! Reading the fields every sender's payload has in some form: texts, tags,
//! digests and times.

use crate::oci::{Digest, Tag};

/// An RFC 3339 UTC time (`2026-12-01T09:39:50.570249879Z`) as unix ms; other
/// forms are taken as "no time given".
pub(crate) fn rfc3339_ms(s: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339(s).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64)
}

/// A time given in whole seconds, as the last millisecond of that second: a
/// revalidation earlier in the same second did not see the push, so the
/// event must not count as older than it.
pub(crate) fn end_of_second(secs: u64) -> u64 {
    secs.saturating_mul(1000).saturating_add(999)
}

/// A string field, treating `""` as absent (distribution 3.x sends empty strings).
pub(crate) fn text<'a>(v: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    v.get(key)
        .and_then(|x| x.as_str())
        .filter(|s| !s.is_empty())
}

/// A tag if the string is one (an invalid or empty tag is no event).
pub(crate) fn tag(s: Option<&str>) -> Option<Tag> {
    Tag::parse(s?)
}

/// A digest if the string is one; 64 bare hex digits (Artifactory's SHA-256)
/// count as `sha256:`.
pub(crate) fn digest(s: Option<&str>) -> Option<Digest> {
    let s = s?;
    if !s.contains(':') && s.len() == 64 {
        return format!("sha256:{s}").parse().ok();
    }
    s.parse().ok()
}
