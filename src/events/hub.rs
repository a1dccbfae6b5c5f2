//! Webhooks that carry a tag but no digest, so all Ferry can do is expire the
//! tag and let the next request revalidate it upstream:
//! - Docker Hub: `{"push_data": {"tag", "pushed_at": <unix s>}, "repository":
//!   {"repo_name", …}, "callback_url"}`;
//! - Quay ("Repository Push"): `{"repository": "ns/name", "docker_url":
//!   "quay.io/ns/name", "updated_tags": […]}`.

use super::fields::{tag, text};
use super::{Change, Event, FormatError, Parsed};
use serde_json::Value;

pub(super) fn parse_docker_hub(v: &Value) -> Result<Parsed, FormatError> {
    let mut parsed = Parsed {
        format: "dockerhub",
        ..Parsed::default()
    };
    let push = &v["push_data"];
    let (Some(repository), Some(tag)) = (
        v.get("repository").and_then(|r| text(r, "repo_name")),
        tag(text(push, "tag")),
    ) else {
        parsed.ignored = 1;
        return Ok(parsed);
    };
    parsed.events.push(Event {
        id: None,
        at_ms: push
            .get("pushed_at")
            .and_then(Value::as_u64)
            .map(super::fields::end_of_second),
        repository: repository.to_string(),
        host: Some("docker.io".into()),
        change: Change::Moved { tag },
    });
    Ok(parsed)
}

pub(super) fn parse_quay(v: &Value) -> Result<Parsed, FormatError> {
    let mut parsed = Parsed {
        format: "quay",
        ..Parsed::default()
    };
    let Some(repository) = text(v, "repository") else {
        parsed.ignored = 1;
        return Ok(parsed);
    };
    let host = text(v, "docker_url")
        .and_then(|u| u.split('/').next())
        .map(str::to_owned);
    for t in v["updated_tags"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        match tag(t.as_str()) {
            Some(tag) => parsed.events.push(Event {
                id: None,
                at_ms: None,
                repository: repository.to_string(),
                host: host.clone(),
                change: Change::Moved { tag },
            }),
            None => parsed.ignored += 1,
        }
    }
    Ok(parsed)
}
