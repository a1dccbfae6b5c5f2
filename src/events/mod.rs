//! Registry push events, parsed into one shape whatever sent them.
//!
//! Registries an organisation runs itself can say when a tag moves. Each
//! format has its own file; [`parse`] recognises which one a post is from its
//! headers and body and turns it into [`Event`]s:
//!
//! - [`distribution`]: distribution (docker-registry) 2.x and 3.x notifications;
//! - [`harbor`]: Harbor webhooks, default and CloudEvents formats;
//! - [`artifactory`]: Artifactory's docker webhook;
//! - [`github`]: GitHub `package` events (ghcr.io), HMAC-signed;
//! - [`hub`]: Docker Hub and Quay webhooks, which carry no digest.
//!
//! Parsing is pure (no I/O): the receiver (`server::events`) authenticates a
//! post, parses it here, and hands the events to the cache (`proxy::tag_events`).

pub mod artifactory;
pub mod distribution;
mod fields;
pub mod github;
pub mod harbor;
pub mod hub;
pub mod signature;

use crate::oci::{Digest, Tag};
use http::HeaderMap;

/// What an event says about one tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The tag now points at this manifest. `media_type` and `size` are set
    /// when the sender says (distribution does); otherwise the manifest is
    /// fetched by digest when first needed.
    Pushed {
        /// The tag.
        tag: Tag,
        /// The manifest's digest.
        digest: Digest,
        /// Its media type, if the sender says.
        media_type: Option<String>,
        /// Its size, if the sender says.
        size: Option<u64>,
    },
    /// The tag moved, but the sender does not say where (Docker Hub, Quay):
    /// the next request revalidates it upstream.
    Moved {
        /// The tag.
        tag: Tag,
    },
    /// The tag is gone.
    Deleted {
        /// The tag.
        tag: Tag,
    },
}

/// One tag event, as every format is reduced to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The sender's id for it, when it has one (duplicates are applied once).
    pub id: Option<String>,
    /// When it happened upstream (unix ms), when the sender says.
    pub at_ms: Option<u64>,
    /// The repository as the upstream names it (`team/app`).
    pub repository: String,
    /// The registry host the sender names, if any (`request.host`, `docker_url`).
    pub host: Option<String>,
    /// What changed.
    pub change: Change,
}

/// What a post held: events to apply, and how many it carried that are of
/// no interest (pulls, blob pushes, unknown kinds). Those are accepted, never
/// refused: a picky receiver backs up the sender's queue.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// The sender's format, for logs and metrics.
    pub format: &'static str,
    /// Tag changes.
    pub events: Vec<Event>,
    /// Entries accepted and ignored.
    pub ignored: usize,
}

/// Why a post is not a push event Ferry can read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// Not JSON, or JSON in no known shape.
    #[error("not a push event in any format Ferry knows: {0}")]
    Unreadable(String),
}

/// Parses a post in whichever format it is in.
pub fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Parsed, FormatError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| FormatError::Unreadable(e.to_string()))?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header("x-github-event").is_some() {
        return github::parse(
            header("x-github-event"),
            header("x-github-delivery"),
            &value,
        );
    }
    if value.get("events").is_some_and(|e| e.is_array()) {
        return distribution::parse(&value);
    }
    if value.get("specversion").is_some() || value.get("event_data").is_some() {
        return harbor::parse(&value);
    }
    if value.get("domain").is_some() && value.get("event_type").is_some() {
        return artifactory::parse(&value);
    }
    if value.get("push_data").is_some() {
        return hub::parse_docker_hub(&value);
    }
    if value.get("updated_tags").is_some() {
        return hub::parse_quay(&value);
    }
    Err(FormatError::Unreadable(
        "no known event shape (distribution, Harbor, Artifactory, GitHub, Docker Hub, Quay)".into(),
    ))
}

#[cfg(test)]
mod tests;
