//! Manifest media types and the `Accept` list Ferry always sends upstream.

use super::Digest;

/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (multi-arch).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index (multi-arch).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 1, signed (refused).
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// Docker schema 1 (refused).
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";

/// Sent on every upstream manifest request, whatever the client asked for: a
/// narrowed or empty list makes registries down-convert (Docker Hub to schema1).
pub const UPSTREAM_MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Whether a media type names a manifest or an index Ferry serves.
pub fn is_manifest_type(media_type: &str) -> bool {
    matches!(
        media_type,
        DOCKER_MANIFEST_V2 | DOCKER_MANIFEST_LIST | OCI_MANIFEST | OCI_INDEX
    )
}

/// Largest manifest Ferry fetches or caches (containerd, containers/image and
/// distribution all cap manifests at about 4 MiB).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// A manifest's media type: the upstream `Content-Type` without parameters when
/// it names a manifest type, else the body's own `mediaType` field.
pub fn manifest_media_type(content_type: Option<&str>, body: &[u8]) -> Option<String> {
    let declared = content_type
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|ct| !ct.is_empty() && ct != "application/json" && ct != "text/plain");
    if declared.is_some() {
        return declared;
    }
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        #[serde(rename = "schemaVersion")]
        schema_version: Option<u32>,
    }
    let probe: Probe = serde_json::from_slice(body).ok()?;
    match (probe.media_type, probe.schema_version) {
        (Some(mt), _) => Some(mt),
        // An OCI manifest may omit mediaType; schemaVersion 2 with a config says so.
        (None, Some(2)) => Some(OCI_MANIFEST.to_string()),
        (None, Some(1)) => Some(DOCKER_SCHEMA1_SIGNED.to_string()),
        _ => None,
    }
}

/// What a manifest points at, for prefetching: the child manifests of an index
/// (or Docker list), and the config and layers of an image manifest. Layers
/// with `urls` (non-distributable, e.g. Windows base layers) are left out: the
/// registry does not serve them. Unparseable bodies reference nothing.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct References {
    /// Child manifests of an index.
    pub manifests: Vec<Digest>,
    /// The config and layers of an image manifest.
    pub blobs: Vec<Digest>,
}

/// What a manifest body references.
pub fn references(body: &[u8]) -> References {
    #[derive(serde::Deserialize)]
    struct Descriptor {
        digest: String,
        #[serde(default)]
        urls: Vec<String>,
    }
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(default)]
        manifests: Vec<Descriptor>,
        config: Option<Descriptor>,
        #[serde(default)]
        layers: Vec<Descriptor>,
    }
    let Ok(probe) = serde_json::from_slice::<Probe>(body) else {
        return References::default();
    };
    let digests = |ds: Vec<Descriptor>| -> Vec<Digest> {
        ds.into_iter()
            .filter(|d| d.urls.is_empty())
            .filter_map(|d| d.digest.parse().ok())
            .collect()
    };
    References {
        manifests: digests(probe.manifests),
        blobs: digests(probe.config.into_iter().chain(probe.layers).collect()),
    }
}

/// Schema1 manifests are refused: their digest covers a JWS payload, not the
/// body, and containerd 2.x no longer accepts them.
pub fn is_schema1(media_type: &str) -> bool {
    media_type == DOCKER_SCHEMA1 || media_type == DOCKER_SCHEMA1_SIGNED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_type_wins_and_loses_parameters() {
        assert_eq!(
            manifest_media_type(
                Some("application/vnd.oci.image.index.v1+json; charset=utf-8"),
                b"{}"
            ),
            Some(OCI_INDEX.to_string())
        );
    }

    #[test]
    fn generic_types_fall_back_to_the_body() {
        let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#;
        assert_eq!(
            manifest_media_type(Some("application/json"), body),
            Some(DOCKER_MANIFEST_V2.to_string())
        );
        assert_eq!(
            manifest_media_type(None, br#"{"schemaVersion":2,"config":{}}"#),
            Some(OCI_MANIFEST.to_string())
        );
        assert_eq!(manifest_media_type(None, b"not json"), None);
    }

    #[test]
    fn index_children_and_image_blobs_without_foreign_layers() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let c = format!("sha256:{}", "c".repeat(64));
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"{a}","size":1}},{{"digest":"not-a-digest"}}]}}"#
        );
        let r = references(index.as_bytes());
        assert_eq!(r.manifests, vec![a.parse().unwrap()]);
        assert!(r.blobs.is_empty());
        let image = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{a}"}},"layers":[{{"digest":"{b}"}},{{"digest":"{c}","urls":["https://x"]}}]}}"#
        );
        let r = references(image.as_bytes());
        assert!(r.manifests.is_empty());
        assert_eq!(r.blobs, vec![a.parse().unwrap(), b.parse().unwrap()]);
        assert_eq!(references(b"not json"), References::default());
    }
}
