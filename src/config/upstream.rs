//! One upstream registry as configured: its URL, the names that route to it,
//! Ferry's credentials for it, Docker Hub's `library/` rule, and its freshness policy.

use super::access::{AccessPolicy, UpstreamTls};
use super::defaults;
use super::freshness::{Freshness, FreshnessPolicy, Rule};
use super::parse::{compile, compile_all, err, secret, ConfigError};
use super::raw::{RawFreshness, RawUpstream};
use super::units::{duration_or, parse_opt};
use crate::oci::RepoName;
use regex::Regex;
use std::fmt;
use url::Url;

/// Every name Docker Hub answers to.
const DOCKER_HUB_ALIASES: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];

/// One upstream registry.
#[derive(Clone)]
pub struct UpstreamConfig {
    /// The name used in metrics, purge and `default_upstream`.
    pub name: String,
    /// The registry's base URL.
    pub url: Url,
    /// Every `host[:port]` (and name) that routes to this upstream, lower-case:
    /// the URL's own authority, the name, and the configured aliases.
    pub aliases: Vec<String>,
    /// Ferry's own credentials for it.
    pub credentials: Option<Credentials>,
    /// Single-component names get `library/` (Docker Hub).
    pub library_prefix: bool,
    /// How long its tags stay fresh.
    pub policy: FreshnessPolicy,
    /// Push events it sends, when configured.
    pub events: Option<EventsConfig>,
    /// Upstream-checked access, when on: each client's rights are asked of it.
    pub access: Option<AccessPolicy>,
    /// The CAs and client certificate Ferry uses to reach it.
    pub tls: UpstreamTls,
}

/// `[upstream.events]`, validated.
#[derive(Clone)]
pub struct EventsConfig {
    /// The shared secret (bearer token or HMAC key). `Debug` hides it.
    pub secret: Vec<u8>,
    /// Pushed images in matching repositories are fetched at once.
    pub prewarm: Vec<Regex>,
}

impl fmt::Debug for EventsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventsConfig")
            .field("secret", &"<redacted>")
            .field("prewarm", &self.prewarm)
            .finish()
    }
}

impl fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("name", &self.name)
            .field("url", &self.url.as_str())
            .field("aliases", &self.aliases)
            .field("credentials", &self.credentials)
            .field("library_prefix", &self.library_prefix)
            .field("events", &self.events)
            .field("access", &self.access)
            .field("tls", &self.tls)
            .finish()
    }
}

impl UpstreamConfig {
    /// The repository name to ask this upstream for: Docker Hub's rule puts a
    /// single-component name under `library/`. The one home of that rule.
    pub fn repository(&self, name: RepoName) -> RepoName {
        if self.library_prefix {
            name.with_library_prefix()
        } else {
            name
        }
    }

    /// Whether `name` (a name or `host[:port]`, any case) routes here.
    pub fn answers_to(&self, name: &str) -> bool {
        self.name == name || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    }
}

/// Upstream credentials. `Debug` never shows the password.
#[derive(Clone)]
pub struct Credentials {
    /// The username.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({:?}, <redacted>)", self.username)
    }
}

/// Phase two of one `[[upstream]]`. `cli_ttl`: `--tag-ttl` beats the file everywhere.
pub(crate) fn from_raw(
    u: &RawUpstream,
    global: Freshness,
    global_immutable: &[Regex],
    cli_ttl: Option<u64>,
) -> Result<UpstreamConfig, ConfigError> {
    let ctx = format!("upstream {:?}", u.name);
    if u.name.trim().is_empty() {
        return err("every [[upstream]] needs a name");
    }
    let url = parse_url(&ctx, &u.url)?;
    let mut policy = policy(
        &ctx,
        &u.freshness,
        &u.rules,
        global,
        global_immutable,
        cli_ttl,
    )?;
    let events = match &u.events {
        None => None,
        Some(e) => {
            let ectx = format!("{ctx}: events");
            let Some(secret) = secret(&ectx, "secret", &e.secret, &e.secret_env)? else {
                return err(format!("{ectx}: set secret or secret_env"));
            };
            if secret.len() < defaults::MIN_SECRET_LEN {
                return err(format!(
                    "{ectx}: the secret must be at least {} characters",
                    defaults::MIN_SECRET_LEN
                ));
            }
            if cli_ttl.is_none() {
                policy.defaults.tag_ttl = duration_or(
                    &e.tag_ttl,
                    &format!("{ectx}: tag_ttl"),
                    defaults::EVENTS_TAG_TTL,
                )?;
            }
            Some(EventsConfig {
                secret: secret.into_bytes(),
                prewarm: compile_all(&e.prewarm, &format!("{ectx}: prewarm"))?,
            })
        }
    };
    let password = secret(&ctx, "password", &u.password, &u.password_env)?;
    let credentials = match (&u.username, password) {
        (Some(username), Some(password)) => Some(Credentials {
            username: username.clone(),
            password,
        }),
        (None, None) => None,
        _ => return err(format!("{ctx}: username and password go together")),
    };
    let mut aliases = vec![authority(&url), u.name.to_ascii_lowercase()];
    aliases.extend(u.aliases.iter().map(|a| a.trim().to_ascii_lowercase()));
    let is_hub = aliases
        .iter()
        .any(|a| DOCKER_HUB_ALIASES.contains(&a.as_str()));
    if is_hub {
        aliases.extend(DOCKER_HUB_ALIASES.iter().map(|a| a.to_string()));
    }
    dedup(&mut aliases);
    Ok(UpstreamConfig {
        name: u.name.clone(),
        url,
        aliases,
        credentials,
        library_prefix: u.library_prefix.unwrap_or(is_hub),
        policy,
        events,
        access: u
            .access
            .as_ref()
            .map(|a| AccessPolicy::from_raw(&ctx, a))
            .transpose()?,
        tls: UpstreamTls::from_raw(&ctx, u)?,
    })
}

fn policy(
    ctx: &str,
    f: &RawFreshness,
    raw_rules: &[super::raw::RawRule],
    global: Freshness,
    global_immutable: &[Regex],
    cli_ttl: Option<u64>,
) -> Result<FreshnessPolicy, ConfigError> {
    let mut defaults = global;
    if cli_ttl.is_none() {
        if let Some(t) = parse_opt(&f.tag_ttl, &format!("{ctx}: tag_ttl"))? {
            defaults.tag_ttl = t;
        }
    }
    if let Some(t) = parse_opt(&f.stale_if_error, &format!("{ctx}: stale_if_error"))? {
        defaults.stale_if_error = t;
    }
    if let Some(t) = parse_opt(&f.negative_ttl, &format!("{ctx}: negative_ttl"))? {
        defaults.negative_ttl = t;
    }
    let mut immutable_tags = global_immutable.to_vec();
    immutable_tags.extend(compile_all(
        f.immutable_tags.as_deref().unwrap_or(&[]),
        &format!("{ctx}: immutable_tags"),
    )?);
    let mut rules = Vec::new();
    for (i, r) in raw_rules.iter().enumerate() {
        let rctx = format!("{ctx}, rule {}", i + 1);
        rules.push(Rule {
            repository: r
                .repository
                .as_deref()
                .map(|p| compile(p, &rctx))
                .transpose()?,
            tag: r.tag.as_deref().map(|p| compile(p, &rctx)).transpose()?,
            tag_ttl: if cli_ttl.is_some() {
                None
            } else {
                parse_opt(&r.tag_ttl, &rctx)?
            },
            stale_if_error: parse_opt(&r.stale_if_error, &rctx)?,
            negative_ttl: parse_opt(&r.negative_ttl, &rctx)?,
            immutable: r.immutable,
        });
    }
    Ok(FreshnessPolicy {
        defaults,
        immutable_tags,
        rules,
    })
}

/// The upstream `--upstream URL` (or the built-in Docker Hub) creates: named by
/// its `host[:port]`, Docker Hub as `docker.io`.
pub(crate) fn implicit(
    url: Url,
    global: Freshness,
    global_immutable: &[Regex],
) -> Result<UpstreamConfig, ConfigError> {
    let hub = authority(&url) == "registry-1.docker.io";
    let raw = RawUpstream {
        name: if hub {
            "docker.io".into()
        } else {
            authority(&url)
        },
        url: url.to_string(),
        ..RawUpstream::default()
    };
    from_raw(&raw, global, global_immutable, None)
}

/// The built-in default upstream.
pub(crate) fn docker_hub(
    global: Freshness,
    global_immutable: &[Regex],
) -> Result<UpstreamConfig, ConfigError> {
    implicit(
        parse_url("default", defaults::DOCKER_HUB_URL)?,
        global,
        global_immutable,
    )
}

/// No two upstreams share a name or an alias.
pub(crate) fn check_unique(upstreams: &[UpstreamConfig]) -> Result<(), ConfigError> {
    for (i, a) in upstreams.iter().enumerate() {
        for b in &upstreams[i + 1..] {
            if a.name == b.name {
                return err(format!("two upstreams are named {:?}", a.name));
            }
            if let Some(alias) = a.aliases.iter().find(|x| b.aliases.contains(x)) {
                return err(format!(
                    "upstreams {:?} and {:?} both answer to {alias:?}",
                    a.name, b.name
                ));
            }
        }
    }
    Ok(())
}

/// `host[:port]` of a URL, lower-case, the port only when it is explicit.
pub fn authority(url: &Url) -> String {
    let host = url.host_str().unwrap_or("").to_ascii_lowercase();
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host,
    }
}

fn dedup(v: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    v.retain(|x| !x.is_empty() && seen.insert(x.clone()));
}

pub(crate) fn parse_url(what: &str, s: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(s).or_else(|e| err(format!("{what}: {s:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return err(format!(
            "{what}: {s:?} must be an http:// or https:// URL with a host"
        ));
    }
    if url.query().is_some() || !url.username().is_empty() {
        return err(format!(
            "{what}: {s:?} must not carry a query or credentials; use username/password"
        ));
    }
    Ok(url)
}
