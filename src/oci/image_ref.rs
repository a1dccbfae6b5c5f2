//! Image references as pods and users write them (`nginx`, `nginx:1.27`,
//! `ghcr.io/o/app:v2@sha256:…`, `localhost:5000/x`), normalised the way the
//! container runtimes do (distribution's `ParseNormalizedNamed`): a first
//! component with a `.` or a `:`, or `localhost`, is a registry; otherwise the
//! registry is `docker.io`, and a single-component name lives under `library/`;
//! with neither tag nor digest, the tag is `latest`.

use super::digest::Digest;
use super::name::{RepoName, Tag};
use std::fmt;

/// Docker Hub's name in references.
pub const DOCKER_HUB: &str = "docker.io";

/// A parsed, normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// The registry host (`docker.io`, `ghcr.io`, `127.0.0.1:5001`).
    pub registry: String,
    /// The repository on it (`library/nginx`).
    pub repository: RepoName,
    /// The tag (`latest` when the reference has neither tag nor digest).
    pub tag: Option<Tag>,
    /// The digest, when the reference carries one.
    pub digest: Option<Digest>,
}

/// Why a string is not an image reference.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an image reference")]
pub struct BadImageRef(pub String);

impl ImageRef {
    /// Parses and normalises `s`.
    pub fn parse(s: &str) -> Result<ImageRef, BadImageRef> {
        let bad = || BadImageRef(s.to_string());
        let s = s.trim();
        if s.is_empty() || s.len() > 4096 || s.chars().any(char::is_whitespace) {
            return Err(bad());
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d.parse::<Digest>().map_err(|_| bad())?)),
            None => (s, None),
        };
        // A tag follows the last ':' after the last '/' (a ':' before it is a port).
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[slash..].rfind(':') {
            Some(i) => {
                let (n, t) = rest.split_at(slash + i);
                (n, Some(Tag::parse(&t[1..]).ok_or_else(bad)?))
            }
            None => (rest, None),
        };
        let (registry, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_ascii_lowercase(), path)
            }
            _ => (DOCKER_HUB.to_string(), name),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
            _ => registry,
        };
        let mut repository = RepoName::parse(path).ok_or_else(bad)?;
        if registry == DOCKER_HUB {
            repository = repository.with_library_prefix();
        }
        // As the runtimes do: the 255-character limit is on the normalised name
        // (found by the fuzzer: a 248-character Hub name grows past it).
        if registry.len() + 1 + repository.as_str().len() > 255 {
            return Err(bad());
        }
        let tag = match (tag, &digest) {
            (None, None) => Tag::parse("latest"),
            (t, _) => t,
        };
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The reference pinned to `digest`, keeping the tag:
    /// `docker.io/library/nginx:1.27@sha256:…`.
    pub fn pinned(&self, digest: &Digest) -> String {
        let mut s = format!("{}/{}", self.registry, self.repository);
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t.as_str());
        }
        s.push('@');
        s.push_str(digest.as_str());
        s
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// `image` (as written in a pod) with `@digest` appended, keeping the writer's
/// own spelling and making the tag explicit: `nginx:1.27` →
/// `nginx:1.27@sha256:…`, `nginx` → `nginx:latest@sha256:…`.
pub fn pin_as_written(image: &str, parsed: &ImageRef, digest: &Digest) -> String {
    let image = image.trim();
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    let has_tag = image[slash..].contains(':');
    match (&parsed.tag, has_tag) {
        (Some(t), false) => format!("{image}:{t}@{digest}"),
        _ => format!("{image}@{digest}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9";

    fn norm(s: &str) -> String {
        ImageRef::parse(s).unwrap().to_string()
    }

    #[test]
    fn the_length_limit_is_on_the_normalised_name() {
        // Found by the fuzzer (tests/fixtures/fuzz/image_ref/normalised-too-long).
        let long = "a".repeat(248);
        assert!(
            ImageRef::parse(&long).is_err(),
            "docker.io/library/ + 248 > 255"
        );
        assert!(ImageRef::parse(&"a".repeat(200)).is_ok());
    }

    #[test]
    fn normalises_like_the_runtimes() {
        assert_eq!(norm("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(norm("nginx:1.27"), "docker.io/library/nginx:1.27");
        assert_eq!(norm("library/nginx:1.27"), "docker.io/library/nginx:1.27");
        assert_eq!(norm("bitnami/redis:7"), "docker.io/bitnami/redis:7");
        assert_eq!(norm("docker.io/nginx"), "docker.io/library/nginx:latest");
        assert_eq!(
            norm("index.docker.io/library/nginx"),
            "docker.io/library/nginx:latest"
        );
        assert_eq!(norm("ghcr.io/o/app:v2"), "ghcr.io/o/app:v2");
        assert_eq!(norm("localhost/app"), "localhost/app:latest");
        assert_eq!(
            norm("127.0.0.1:5001/team/app:1.0"),
            "127.0.0.1:5001/team/app:1.0"
        );
        assert_eq!(
            norm("registry.k8s.io/pause:3.9"),
            "registry.k8s.io/pause:3.9"
        );
        let r = ImageRef::parse(&format!("nginx:1.27@{D}")).unwrap();
        assert_eq!(r.digest.as_ref().unwrap().as_str(), D);
        assert_eq!(r.tag.as_ref().unwrap().as_str(), "1.27");
        let r = ImageRef::parse(&format!("nginx@{D}")).unwrap();
        assert!(r.tag.is_none(), "a digest alone gets no implied tag");
    }

    #[test]
    fn bad_references_are_refused() {
        for s in [
            "",
            "Nginx:1",
            "nginx:",
            "nginx:bad tag",
            "nginx@sha256:zz",
            "a//b",
            ":1",
            "x@",
        ] {
            assert!(ImageRef::parse(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn pins_keep_the_tag_and_the_spelling() {
        let d: Digest = D.parse().unwrap();
        let p = |s: &str| pin_as_written(s, &ImageRef::parse(s).unwrap(), &d);
        assert_eq!(p("nginx:1.27"), format!("nginx:1.27@{D}"));
        assert_eq!(p("nginx"), format!("nginx:latest@{D}"));
        assert_eq!(
            p("127.0.0.1:5001/team/app"),
            format!("127.0.0.1:5001/team/app:latest@{D}")
        );
        assert_eq!(
            ImageRef::parse("nginx:1.27").unwrap().pinned(&d),
            format!("docker.io/library/nginx:1.27@{D}")
        );
    }
}
