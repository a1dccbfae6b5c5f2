//! Artifactory's docker webhook: `{"domain": "docker", "event_type": "pushed" |
//! "deleted", "data": {"image_name", "tag", "sha256" (bare hex), "size", …}}`.
//! It carries no event id and no time (the arrival time stands in).

use super::fields::{digest, tag, text};
use super::{Change, Event, FormatError, Parsed};
use serde_json::Value;

pub(super) fn parse(v: &Value) -> Result<Parsed, FormatError> {
    let mut parsed = Parsed {
        format: "artifactory",
        ..Parsed::default()
    };
    let data = &v["data"];
    let (Some("docker"), Some(repository), Some(tag)) = (
        text(v, "domain"),
        text(data, "image_name"),
        tag(text(data, "tag")),
    ) else {
        parsed.ignored = 1;
        return Ok(parsed);
    };
    let change = match (text(v, "event_type"), digest(text(data, "sha256"))) {
        (Some("pushed"), Some(digest)) => Change::Pushed {
            tag,
            digest,
            media_type: None,
            size: None,
        },
        (Some("deleted"), _) => Change::Deleted { tag },
        _ => {
            parsed.ignored = 1;
            return Ok(parsed);
        }
    };
    parsed.events.push(Event {
        id: None,
        at_ms: None,
        repository: repository.to_string(),
        host: None,
        change,
    });
    Ok(parsed)
}
