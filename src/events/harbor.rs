//! Harbor webhooks, in both payload formats:
//! - default: `{"type": "PUSH_ARTIFACT" | "DELETE_ARTIFACT", "occur_at": <unix s>,
//!   "event_data": {"resources": [{digest, tag, resource_url}], "repository": {…}}}`;
//! - CloudEvents (structured mode): `{"specversion": "1.0", "id", "time",
//!   "type": "harbor.artifact.pushed" | "harbor.artifact.deleted", "data": {…same…}}`.
//!
//! A push names the tag and its digest; a delete names the artifact's first
//! tag (or, for an untagged artifact, its digest in place of a tag: ignored).
//! The repository is `repo_full_name`, or `namespace/name`.

use super::fields::{digest, rfc3339_ms, tag, text};
use super::{Change, Event, FormatError, Parsed};
use serde_json::Value;

pub(super) fn parse(v: &Value) -> Result<Parsed, FormatError> {
    let (kind, data, id, at_ms) = if v.get("specversion").is_some() {
        let kind = match text(v, "type") {
            Some("harbor.artifact.pushed") => Some(Kind::Push),
            Some("harbor.artifact.deleted") => Some(Kind::Delete),
            _ => None,
        };
        (
            kind,
            v.get("data"),
            text(v, "id").map(str::to_owned),
            text(v, "time").and_then(rfc3339_ms),
        )
    } else {
        let kind = match text(v, "type") {
            Some("PUSH_ARTIFACT") => Some(Kind::Push),
            Some("DELETE_ARTIFACT") => Some(Kind::Delete),
            _ => None,
        };
        let at = v
            .get("occur_at")
            .and_then(Value::as_u64)
            .map(super::fields::end_of_second);
        (kind, v.get("event_data"), None, at)
    };
    let mut parsed = Parsed {
        format: "harbor",
        ..Parsed::default()
    };
    let (Some(kind), Some(data)) = (kind, data) else {
        parsed.ignored = 1;
        return Ok(parsed);
    };
    let repo = data.get("repository");
    let repository = repo
        .and_then(|r| text(r, "repo_full_name").map(str::to_owned))
        .or_else(|| {
            let r = repo?;
            Some(format!("{}/{}", text(r, "namespace")?, text(r, "name")?))
        })
        .ok_or_else(|| FormatError::Unreadable("Harbor event without a repository".into()))?;
    let resources = data["resources"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    for (i, r) in resources.iter().enumerate() {
        let change = match (kind, tag(text(r, "tag")), digest(text(r, "digest"))) {
            (Kind::Push, Some(tag), Some(digest)) => Change::Pushed {
                tag,
                digest,
                media_type: None,
                size: None,
            },
            (Kind::Delete, Some(tag), _) => Change::Deleted { tag },
            _ => {
                parsed.ignored += 1;
                continue;
            }
        };
        parsed.events.push(Event {
            id: id.as_ref().map(|id| format!("{id}/{i}")),
            at_ms,
            repository: repository.clone(),
            host: text(r, "resource_url")
                .and_then(|u| u.split('/').next())
                .map(str::to_owned),
            change,
        });
    }
    Ok(parsed)
}

#[derive(Clone, Copy)]
enum Kind {
    Push,
    Delete,
}
