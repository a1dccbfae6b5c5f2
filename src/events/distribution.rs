//! distribution (docker-registry) notifications, `…events.v1+json` (2.x) and
//! `…events.v2+json` (3.x): `{"events": [{id, timestamp, action, target, request}]}`.
//!
//! - `push` of a manifest by tag: `target.{repository, tag, digest, mediaType, size}`;
//! - `push` of a blob, or of a manifest by digest only: no tag, nothing to do;
//! - `delete` by digest sends two events: `target.digest` alone, then
//!   `target.tag` (one per tag that pointed at it); the tag one drops the tag;
//! - `pull` (sent for `HEAD` and `GET`), `mount` and unknown actions are ignored.
//!
//! 3.x sends empty strings and zero sizes where 2.x omits a field.

use super::fields::{digest, rfc3339_ms, tag, text};
use super::{Change, Event, FormatError, Parsed};
use crate::oci::media;
use serde_json::Value;

pub(super) fn parse(v: &Value) -> Result<Parsed, FormatError> {
    let mut parsed = Parsed {
        format: "distribution",
        ..Parsed::default()
    };
    let events = v["events"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    for e in events {
        match event(e) {
            Some(ev) => parsed.events.push(ev),
            None => parsed.ignored += 1,
        }
    }
    Ok(parsed)
}

fn event(e: &Value) -> Option<Event> {
    let target = e.get("target")?;
    let repository = text(target, "repository")?.to_string();
    let tag = tag(text(target, "tag"))?;
    let change = match text(e, "action")? {
        "push" => {
            let media_type = text(target, "mediaType")
                .filter(|mt| media::is_manifest_type(mt))
                .map(str::to_owned);
            // A push by tag is a manifest push; a blob never carries a tag.
            let digest = digest(text(target, "digest"))?;
            let size = target
                .get("size")
                .or_else(|| target.get("length"))
                .and_then(Value::as_u64)
                .filter(|&s| s > 0);
            Change::Pushed {
                tag,
                digest,
                size: size.filter(|_| media_type.is_some()),
                media_type,
            }
        }
        "delete" => Change::Deleted { tag },
        _ => return None,
    };
    Some(Event {
        id: text(e, "id").map(str::to_owned),
        at_ms: text(e, "timestamp").and_then(rfc3339_ms),
        repository,
        host: e
            .get("request")
            .and_then(|r| text(r, "host"))
            .map(str::to_owned),
        change,
    })
}
