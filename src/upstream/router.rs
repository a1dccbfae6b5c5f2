//! Picking the upstream for a request: `?ns=`, then a path prefix, then the default.
//!
//! `ns` is a key into the configured table, never a host to dial: an `ns` naming
//! no configured upstream is refused and nothing is contacted.

use super::Upstream;
use crate::oci::{ErrorCode, OciError, RepoName};
use std::collections::HashMap;
use std::sync::Arc;

pub struct Router {
    upstreams: Vec<Arc<Upstream>>,
    default: usize,
    /// Lower-case alias (`host[:port]`, name) → index into `upstreams`.
    by_alias: HashMap<String, usize>,
}

impl Router {
    pub fn new(upstreams: Vec<Arc<Upstream>>, default: usize) -> Router {
        let mut by_alias = HashMap::new();
        for (i, u) in upstreams.iter().enumerate() {
            for a in &u.config.aliases {
                by_alias.insert(a.clone(), i);
            }
        }
        Router {
            upstreams,
            default,
            by_alias,
        }
    }

    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    /// The upstream with this name or alias.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams
            .iter()
            .find(|u| u.name() == name)
            .or_else(|| self.lookup(name))
    }

    fn lookup(&self, alias: &str) -> Option<&Arc<Upstream>> {
        self.by_alias
            .get(&alias.to_ascii_lowercase())
            .map(|&i| &self.upstreams[i])
    }

    /// The upstream and the repository name to ask it for.
    ///
    /// 1. `ns` → that upstream; a first path component that is one of its own
    ///    aliases is stripped (containerd `override_path` plus `ns`).
    /// 2. a first component naming a configured upstream → it, with the rest.
    /// 3. the default upstream.
    ///
    /// Single-component names get `library/` on upstreams that want it (Hub).
    pub fn route(
        &self,
        ns: Option<&str>,
        name: &RepoName,
    ) -> Result<(Arc<Upstream>, RepoName), OciError> {
        let first = name.components().next().unwrap_or("");
        if let Some(ns) = ns {
            let Some(up) = self.lookup(ns) else {
                return Err(OciError::new(
                    ErrorCode::Denied,
                    format!("ns={ns:?} is not an upstream of this proxy"),
                ));
            };
            let repo = match name.strip_first() {
                Some(rest) if up.config.aliases.iter().any(|a| a == first) => rest,
                _ => name.clone(),
            };
            return Ok((up.clone(), normalise(up, plain(repo)?)));
        }
        if let (Some(up), Some(rest)) = (self.lookup(first), name.strip_first()) {
            return Ok((up.clone(), normalise(up, plain(rest)?)));
        }
        let up = &self.upstreams[self.default];
        Ok((up.clone(), normalise(up, plain(name.clone())?)))
    }
}

/// A `host:port` first component is only meaningful as a routing prefix.
fn plain(repo: RepoName) -> Result<RepoName, OciError> {
    if repo.has_port_prefix() {
        return Err(OciError::new(
            ErrorCode::NameInvalid,
            format!("{repo}: the registry prefix names no upstream of this proxy"),
        ));
    }
    Ok(repo)
}

fn normalise(up: &Upstream, repo: RepoName) -> RepoName {
    if up.config.library_prefix {
        repo.with_library_prefix()
    } else {
        repo
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::config::{Config, Overrides, RawConfig};

    fn router() -> Router {
        let raw = RawConfig::from_toml(
            r#"
            default_upstream = "hub"
            [[upstream]]
            name = "hub"
            url = "https://registry-1.docker.io"
            [[upstream]]
            name = "ghcr"
            url = "https://ghcr.io"
            [[upstream]]
            name = "local"
            url = "http://127.0.0.1:5001"
            "#,
        )
        .unwrap();
        let config = Config::from_raw(raw, Overrides::default()).unwrap();
        let ups = config
            .upstreams
            .iter()
            .map(|u| {
                Arc::new(
                    Upstream::new(
                        u.clone(),
                        config.timeouts,
                        Default::default(),
                        Clock::System,
                    )
                    .unwrap(),
                )
            })
            .collect();
        Router::new(ups, config.default_upstream)
    }

    fn route(ns: Option<&str>, name: &str) -> Result<(String, String), OciError> {
        let (u, r) = router().route(ns, &RepoName::parse_prefixed(name).unwrap())?;
        Ok((u.name().to_string(), r.to_string()))
    }

    fn ok(up: &str, repo: &str) -> Result<(String, String), OciError> {
        Ok((up.to_string(), repo.to_string()))
    }

    #[test]
    fn ns_selects_a_configured_upstream() {
        assert_eq!(
            route(Some("docker.io"), "library/alpine"),
            ok("hub", "library/alpine")
        );
        assert_eq!(
            route(Some("docker.io"), "alpine"),
            ok("hub", "library/alpine")
        );
        assert_eq!(route(Some("index.docker.io"), "x/y"), ok("hub", "x/y"));
        assert_eq!(route(Some("registry-1.docker.io"), "x/y"), ok("hub", "x/y"));
        assert_eq!(route(Some("ghcr.io"), "owner/img"), ok("ghcr", "owner/img"));
        assert_eq!(
            route(Some("127.0.0.1:5001"), "library/test"),
            ok("local", "library/test")
        );
        assert_eq!(route(Some("127.0.0.1:5001"), "test"), ok("local", "test"));
    }

    #[test]
    fn unknown_ns_is_refused() {
        let e = route(Some("evil.example"), "x").unwrap_err();
        assert!(e.status.is_client_error());
    }

    #[test]
    fn ns_with_prefix_strips_the_prefix() {
        assert_eq!(
            route(Some("docker.io"), "docker.io/library/alpine"),
            ok("hub", "library/alpine")
        );
    }

    #[test]
    fn prefix_form() {
        assert_eq!(
            route(None, "docker.io/library/alpine"),
            ok("hub", "library/alpine")
        );
        assert_eq!(route(None, "docker.io/alpine"), ok("hub", "library/alpine"));
        assert_eq!(route(None, "ghcr.io/owner/img"), ok("ghcr", "owner/img"));
        assert_eq!(
            route(None, "127.0.0.1:5001/library/test"),
            ok("local", "library/test")
        );
        assert!(route(None, "10.0.0.1:5001/library/test").is_err());
    }

    #[test]
    fn default_route_adds_library() {
        assert_eq!(route(None, "alpine"), ok("hub", "library/alpine"));
        assert_eq!(route(None, "library/alpine"), ok("hub", "library/alpine"));
        assert_eq!(route(None, "user/app"), ok("hub", "user/app"));
        // A bare alias as the only component is a repository name, not a prefix.
        assert_eq!(route(None, "ghcr.io"), ok("hub", "library/ghcr.io"));
    }
}
