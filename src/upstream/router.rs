//! Picking the upstream for a request: `?ns=`, then a path prefix, then the default.
//!
//! `ns` is a key into the configured table, never a host to dial: an `ns` naming
//! no configured upstream is refused and nothing is contacted.

use super::Upstream;
use crate::oci::RepoName;
use std::collections::HashMap;
use std::sync::Arc;

/// The repository a request is for, on the upstream that serves it.
#[derive(Clone)]
pub struct Target {
    /// The upstream registry.
    pub upstream: Arc<Upstream>,
    /// The repository name as that upstream knows it (`library/` applied).
    pub repo: RepoName,
}

impl Target {
    /// The freshness that applies to `tag` of this repository (its upstream's
    /// rules; `None`: the repository's own answers, tag lists and referrers).
    pub fn freshness(&self, tag: Option<&crate::oci::Tag>) -> crate::config::Freshness {
        let policy = &self.upstream.config().policy;
        match tag {
            Some(t) => policy.for_tag(self.repo.as_str(), t.as_str()),
            None => policy.for_repository(self.repo.as_str()),
        }
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.upstream.name(), self.repo)
    }
}

/// Why a request names no configured upstream.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// `?ns=` names a registry this proxy does not serve.
    #[error("ns={0:?} is not an upstream of this proxy")]
    UnknownNamespace(String),
    /// A `host:port/` first component that names no upstream.
    #[error("{0}: the registry prefix names no upstream of this proxy")]
    UnknownPrefix(String),
    /// An admin or resolve request names an upstream that is not configured.
    #[error("no upstream named {0:?}")]
    UnknownUpstream(String),
}

/// The table of upstreams and the rules that pick one for a request.
pub struct Router {
    upstreams: Vec<Arc<Upstream>>,
    default: Arc<Upstream>,
    /// Lower-case alias (`host[:port]`, name) → index into `upstreams`.
    by_alias: HashMap<String, usize>,
}

impl Router {
    /// A router over `upstreams`; `default` names the one for requests that name none.
    /// Panics if `default` is not among them (the configuration guarantees it is).
    pub fn new(upstreams: Vec<Arc<Upstream>>, default: &str) -> Router {
        let mut by_alias = HashMap::new();
        for (i, u) in upstreams.iter().enumerate() {
            for a in &u.config().aliases {
                by_alias.insert(a.clone(), i);
            }
        }
        let default = upstreams
            .iter()
            .find(|u| u.name() == default)
            .cloned()
            .expect("the default upstream is configured");
        Router {
            upstreams,
            default,
            by_alias,
        }
    }

    /// Every configured upstream.
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

    /// `repo` on the upstream named `upstream` (a name or alias), as an admin
    /// or resolve request names it: Docker Hub's `library/` rule applies.
    pub fn named(&self, upstream: &str, repo: RepoName) -> Result<Target, RouteError> {
        let up = self
            .by_name(upstream)
            .ok_or_else(|| RouteError::UnknownUpstream(upstream.to_string()))?;
        Ok(target(up, repo))
    }

    /// The upstream and the repository name to ask it for.
    ///
    /// 1. `ns` → that upstream; a first path component that is one of its own
    ///    aliases is stripped (containerd `override_path` plus `ns`).
    /// 2. a first component naming a configured upstream → it, with the rest.
    /// 3. the default upstream.
    ///
    /// Single-component names get `library/` on upstreams that want it (Hub).
    pub fn route(&self, ns: Option<&str>, name: &RepoName) -> Result<Target, RouteError> {
        let first = name.components().next().unwrap_or("");
        if let Some(ns) = ns {
            let Some(up) = self.lookup(ns) else {
                return Err(RouteError::UnknownNamespace(ns.to_string()));
            };
            let repo = match name.strip_first() {
                Some(rest) if up.config().aliases.iter().any(|a| a == first) => rest,
                _ => name.clone(),
            };
            return Ok(target(up, plain(repo)?));
        }
        if let (Some(up), Some(rest)) = (self.lookup(first), name.strip_first()) {
            return Ok(target(up, plain(rest)?));
        }
        Ok(target(&self.default, plain(name.clone())?))
    }
}

fn target(up: &Arc<Upstream>, repo: RepoName) -> Target {
    Target {
        upstream: up.clone(),
        repo: up.config().repository(repo),
    }
}

/// A `host:port` first component is only meaningful as a routing prefix.
fn plain(repo: RepoName) -> Result<RepoName, RouteError> {
    if repo.has_port_prefix() {
        return Err(RouteError::UnknownPrefix(repo.to_string()));
    }
    Ok(repo)
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
        Router::new(ups, &config.default_upstream)
    }

    fn route(ns: Option<&str>, name: &str) -> Result<(String, String), RouteError> {
        let t = router().route(ns, &RepoName::parse_prefixed(name).unwrap())?;
        Ok((t.upstream.name().to_string(), t.repo.to_string()))
    }

    fn ok(up: &str, repo: &str) -> Result<(String, String), RouteError> {
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
        assert_eq!(e, RouteError::UnknownNamespace("evil.example".into()));
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
        assert_eq!(
            route(None, "10.0.0.1:5001/library/test"),
            Err(RouteError::UnknownPrefix(
                "10.0.0.1:5001/library/test".into()
            ))
        );
    }

    #[test]
    fn admin_names_an_upstream_by_name_or_alias_with_the_library_rule() {
        let r = router();
        let t = r.named("hub", RepoName::parse("alpine").unwrap()).unwrap();
        assert_eq!(
            (t.upstream.name(), t.repo.as_str()),
            ("hub", "library/alpine")
        );
        let t = r.named("ghcr.io", RepoName::parse("o/i").unwrap()).unwrap();
        assert_eq!(t.upstream.name(), "ghcr");
        assert_eq!(
            r.named("nope", RepoName::parse("x").unwrap()).unwrap_err(),
            RouteError::UnknownUpstream("nope".into())
        );
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
