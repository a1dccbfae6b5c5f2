//! GitHub `package` (and the older `registry_package`) events for ghcr.io,
//! signed with `X-Hub-Signature-256` (checked by the receiver before this runs):
//! `{"action": "published", "package": {"namespace", "name", "package_type":
//! "CONTAINER", "package_version": {"container_metadata": {"tag": {"name",
//! "digest"}, "manifest": {"media_type", "size"}}}}}`.
//!
//! Untagged versions (the platform manifests of a multi-arch push) carry an
//! empty tag: ignored. The delivery id (`X-GitHub-Delivery`) is the event id.

use super::fields::{digest, tag, text};
use super::{Change, Event, FormatError, Parsed};
use serde_json::Value;

pub(super) fn parse(
    event: Option<&str>,
    delivery: Option<&str>,
    v: &Value,
) -> Result<Parsed, FormatError> {
    let mut parsed = Parsed {
        format: "github",
        ..Parsed::default()
    };
    let package = v.get("package").or_else(|| v.get("registry_package"));
    let (Some("package" | "registry_package"), Some(package)) = (event, package) else {
        parsed.ignored = 1;
        return Ok(parsed);
    };
    let is_container =
        text(package, "package_type").is_some_and(|t| t.eq_ignore_ascii_case("container"));
    let version = package.get("package_version");
    let meta = version.and_then(|pv| pv.get("container_metadata"));
    let tag_info = meta.and_then(|m| m.get("tag"));
    let (true, Some("published" | "updated"), Some(tag), Some(digest), Some(ns), Some(name)) = (
        is_container,
        text(v, "action"),
        tag(tag_info.and_then(|t| text(t, "name"))),
        digest(tag_info.and_then(|t| text(t, "digest"))),
        text(package, "namespace"),
        text(package, "name"),
    ) else {
        parsed.ignored = 1;
        return Ok(parsed);
    };
    let manifest = meta.and_then(|m| m.get("manifest"));
    let media_type = manifest
        .and_then(|m| text(m, "media_type"))
        .filter(|mt| crate::oci::media::is_manifest_type(mt))
        .map(str::to_owned);
    let size = manifest.and_then(|m| m.get("size")).and_then(Value::as_u64);
    let host = version
        .and_then(|pv| text(pv, "package_url"))
        .and_then(|u| u.split('/').next())
        .map(str::to_owned);
    parsed.events.push(Event {
        id: delivery.map(str::to_owned),
        at_ms: None,
        repository: format!("{ns}/{name}").to_ascii_lowercase(),
        host,
        change: Change::Pushed {
            tag,
            digest,
            size: size.filter(|_| media_type.is_some()),
            media_type,
        },
    });
    Ok(parsed)
}
