//! Configuration: a TOML file and command-line flags, validated in two phases.
//!
//! Phase one deserialises [`RawConfig`] (every default explicit, unknown keys an
//! error); phase two, [`Config::from_raw`], turns it into typed values (socket
//! addresses, URLs, durations, compiled regexes) or a message saying what is wrong.
//! Nothing binds a socket until a `Config` exists.

use regex::Regex;
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// Docker Hub's API endpoint: its canonical name is `docker.io`.
pub const DOCKER_HUB_URL: &str = "https://registry-1.docker.io";
const DOCKER_HUB_ALIASES: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];

/// A configuration error, worded for the person who wrote the file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// A password given inline or through an environment variable (not both).
fn secret(
    ctx: &str,
    password: &Option<String>,
    password_env: &Option<String>,
) -> Result<Option<String>, ConfigError> {
    match (password, password_env) {
        (Some(_), Some(_)) => err(format!("{ctx}: set password or password_env, not both")),
        (Some(p), None) => Ok(Some(p.clone())),
        (None, Some(var)) => std::env::var(var).map(Some).or_else(|_| {
            err(format!(
                "{ctx}: password_env names {var:?}, which is not set"
            ))
        }),
        (None, None) => Ok(None),
    }
}

/// The TLS server configuration from PEM files: both or neither. HTTP/2 and
/// HTTP/1.1 are offered by ALPN.
fn tls_config(
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Option<Arc<rustls::ServerConfig>>, ConfigError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        _ => return err("tls_cert and tls_key go together"),
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .or_else(|e| err(format!("tls_cert {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return err(format!("tls_cert {}: no certificate in it", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .or_else(|e| err(format!("tls_key {}: {e}", key.display())))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
    .or_else(|e| err(format!("tls_cert/tls_key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

fn client_auth(clients: &[RawClient]) -> Result<Option<ClientAuth>, ConfigError> {
    if clients.is_empty() {
        return Ok(None);
    }
    let mut users = Vec::with_capacity(clients.len());
    for (i, c) in clients.iter().enumerate() {
        let ctx = format!("client[{i}] ({:?})", c.username);
        if c.username.is_empty() || c.username.contains(':') {
            return err(format!("{ctx}: username must be non-empty and without ':'"));
        }
        if users.iter().any(|(u, _)| *u == c.username) {
            return err(format!("{ctx}: username given twice"));
        }
        let Some(password) = secret(&ctx, &c.password, &c.password_env)? else {
            return err(format!("{ctx}: set password or password_env"));
        };
        if password.is_empty() {
            return err(format!("{ctx}: empty password"));
        }
        users.push((c.username.clone(), password_digest(&password)));
    }
    Ok(Some(ClientAuth { users }))
}

// ---------------------------------------------------------------- phase one

/// The file as written. Every field has its default here, in one place.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Client-facing address, default `127.0.0.1:5000`.
    pub listen: Option<String>,
    /// Address of the admin API (purge); off when absent.
    pub admin_listen: Option<String>,
    /// Where blobs and the index live, default `./ferry-data`.
    pub data_dir: Option<PathBuf>,
    /// Name of the upstream used when a request names none.
    pub default_upstream: Option<String>,
    /// Log one line per request.
    #[serde(default)]
    pub access_log: bool,
    /// Serve the client port over TLS with this PEM certificate chain…
    pub tls_cert: Option<PathBuf>,
    /// …and this PEM private key.
    pub tls_key: Option<PathBuf>,
    #[serde(default)]
    pub cache: RawCache,
    #[serde(default)]
    pub freshness: RawFreshness,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<RawUpstream>,
    /// When any is set, clients must authenticate (HTTP Basic) as one of them.
    #[serde(default, rename = "client")]
    pub clients: Vec<RawClient>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    pub username: String,
    pub password: Option<String>,
    /// Read the password from this environment variable instead.
    pub password_env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// Size budget for blobs, e.g. `"10GiB"`; unbounded when absent.
    pub max_size: Option<String>,
    pub high_watermark: Option<f64>,
    pub low_watermark: Option<f64>,
}

/// Freshness settings; at the top level they are the defaults, inside an
/// upstream or a rule they override them.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFreshness {
    pub tag_ttl: Option<RawDuration>,
    pub stale_if_error: Option<RawDuration>,
    pub negative_ttl: Option<RawDuration>,
    /// Regexes (whole-tag match) of tags that never move once cached.
    pub immutable_tags: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<RawDuration>,
    /// Until upstream's response headers arrive.
    pub response: Option<RawDuration>,
    /// Longest silence inside a body before the transfer is abandoned (and resumed).
    pub idle: Option<RawDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Read the password from this environment variable instead.
    pub password_env: Option<String>,
    /// Map single-component names to `library/<name>` (default: on for Docker Hub).
    pub library_prefix: Option<bool>,
    #[serde(default)]
    pub freshness: RawFreshness,
    #[serde(default, rename = "rule")]
    pub rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Regex matched against the whole upstream repository name.
    pub repository: Option<String>,
    /// Regex matched against the whole tag.
    pub tag: Option<String>,
    pub tag_ttl: Option<RawDuration>,
    pub stale_if_error: Option<RawDuration>,
    pub negative_ttl: Option<RawDuration>,
    /// Cached answers for matching tags are never revalidated.
    pub immutable: Option<bool>,
}

/// A duration written as seconds (`30`) or with units (`"30s"`, `"5m"`, `"1h 30m"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawDuration {
    Seconds(u64),
    Text(String),
}

impl RawDuration {
    fn parse(&self, what: &str) -> Result<Duration, ConfigError> {
        match self {
            RawDuration::Seconds(s) => Ok(Duration::from_secs(*s)),
            RawDuration::Text(t) => humantime::parse_duration(t)
                .or_else(|_| t.trim().parse::<u64>().map(Duration::from_secs))
                .or_else(|_| {
                    err(format!(
                        "{what}: {t:?} is not a duration (e.g. \"30s\", \"5m\")"
                    ))
                }),
        }
    }
}

impl RawConfig {
    pub fn from_toml(text: &str) -> Result<RawConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError(e.to_string()))
    }
}

// ---------------------------------------------------------------- phase two

/// Validated configuration: everything [`crate::serve`] needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub upstreams: Vec<UpstreamConfig>,
    /// Index into `upstreams`.
    pub default_upstream: usize,
    pub cache: CacheConfig,
    pub timeouts: Timeouts,
    /// Log one line per request (target `ferry::access`).
    pub access_log: bool,
    /// Who may pull; `None`: anyone who can reach the listener.
    pub client_auth: Option<ClientAuth>,
    /// TLS for the client port; plain HTTP when `None`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Client credentials for the pull API (HTTP Basic). Only SHA-256 digests of
/// the passwords are kept, and they are compared in constant time.
#[derive(Clone)]
pub struct ClientAuth {
    users: Vec<(String, [u8; 32])>,
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.users.iter().map(|(u, _)| u.as_str()).collect();
        write!(f, "ClientAuth({names:?}, <redacted>)")
    }
}

impl ClientAuth {
    /// Whether an `Authorization` header value names a configured user with
    /// the right password.
    pub fn allows(&self, authorization: Option<&str>) -> bool {
        use base64::Engine as _;
        let Some((scheme, b64)) = authorization.and_then(|v| v.trim().split_once(' ')) else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case("basic") {
            return false;
        }
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
            return false;
        };
        let Some((user, password)) = std::str::from_utf8(&decoded)
            .ok()
            .and_then(|s| s.split_once(':'))
        else {
            return false;
        };
        let given = password_digest(password);
        self.users
            .iter()
            .any(|(u, want)| u == user && constant_time_eq(&given, want))
    }
}

fn password_digest(password: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(password.as_bytes()).into()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub max_size: Option<u64>,
    pub high_watermark: f64,
    pub low_watermark: f64,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub response: Duration,
    pub idle: Duration,
}

/// One upstream registry.
#[derive(Clone)]
pub struct UpstreamConfig {
    /// The name used in metrics, purge and `default_upstream`.
    pub name: String,
    pub url: Url,
    /// Every `host[:port]` (and name) that routes to this upstream, lower-case:
    /// the URL's own authority, the name, and the configured aliases.
    pub aliases: Vec<String>,
    pub credentials: Option<Credentials>,
    pub library_prefix: bool,
    pub policy: FreshnessPolicy,
}

impl fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("name", &self.name)
            .field("url", &self.url.as_str())
            .field("aliases", &self.aliases)
            .field("credentials", &self.credentials)
            .field("library_prefix", &self.library_prefix)
            .finish()
    }
}

/// Upstream credentials. `Debug` never shows the password.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({:?}, <redacted>)", self.username)
    }
}

/// How long answers about one tag stay good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// Inside it a tag is answered from the cache with no upstream request.
    pub tag_ttl: Duration,
    /// Past the TTL, how much longer a cached answer may be served while upstream fails.
    pub stale_if_error: Duration,
    /// How long an upstream "no such tag" is remembered.
    pub negative_ttl: Duration,
    /// Never revalidated once cached.
    pub immutable: bool,
}

/// Default tag TTL: short enough that a moved tag is seen within a minute,
/// long enough that a burst of `Always` pulls across a cluster costs one `HEAD`.
pub const DEFAULT_TAG_TTL: Duration = Duration::from_secs(30);
/// Default stale-if-error window: a day of upstream outage is survivable.
pub const DEFAULT_STALE_IF_ERROR: Duration = Duration::from_secs(24 * 3600);
/// Default memory of an upstream 404 for a tag.
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(15);

/// Per-upstream freshness: defaults, then the first matching rule's overrides.
#[derive(Debug, Clone)]
pub struct FreshnessPolicy {
    pub defaults: Freshness,
    pub immutable_tags: Vec<Regex>,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub repository: Option<Regex>,
    pub tag: Option<Regex>,
    pub tag_ttl: Option<Duration>,
    pub stale_if_error: Option<Duration>,
    pub negative_ttl: Option<Duration>,
    pub immutable: Option<bool>,
}

impl FreshnessPolicy {
    /// The freshness for `repo:tag`: the first rule matching both wins.
    pub fn for_tag(&self, repo: &str, tag: &str) -> Freshness {
        let mut f = self.defaults;
        f.immutable = self.immutable_tags.iter().any(|r| r.is_match(tag));
        let rule = self.rules.iter().find(|r| {
            r.repository.as_ref().is_none_or(|re| re.is_match(repo))
                && r.tag.as_ref().is_none_or(|re| re.is_match(tag))
        });
        if let Some(r) = rule {
            f.tag_ttl = r.tag_ttl.unwrap_or(f.tag_ttl);
            f.stale_if_error = r.stale_if_error.unwrap_or(f.stale_if_error);
            f.negative_ttl = r.negative_ttl.unwrap_or(f.negative_ttl);
            f.immutable = r.immutable.unwrap_or(f.immutable);
        }
        f
    }
}

/// Command-line values that override the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub upstream: Option<String>,
    pub tag_ttl: Option<u64>,
    pub max_cache_size: Option<String>,
    pub access_log: bool,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl Config {
    /// Validates a raw configuration with command-line overrides applied.
    pub fn from_raw(mut raw: RawConfig, o: Overrides) -> Result<Config, ConfigError> {
        if let Some(ttl) = o.tag_ttl {
            raw.freshness.tag_ttl = Some(RawDuration::Seconds(ttl));
        }
        if let Some(size) = o.max_cache_size {
            raw.cache.max_size = Some(size);
        }
        let listen = o
            .listen
            .or(raw.listen)
            .unwrap_or_else(|| "127.0.0.1:5000".into());
        let listen = parse_addr("listen", &listen)?;
        let admin_listen = o
            .admin_listen
            .or(raw.admin_listen)
            .map(|a| parse_addr("admin_listen", &a))
            .transpose()?;
        let data_dir = o
            .data_dir
            .or(raw.data_dir)
            .unwrap_or_else(|| PathBuf::from("./ferry-data"));

        let global = Freshness {
            tag_ttl: parse_opt(&raw.freshness.tag_ttl, "freshness.tag_ttl")?
                .unwrap_or(DEFAULT_TAG_TTL),
            stale_if_error: parse_opt(&raw.freshness.stale_if_error, "freshness.stale_if_error")?
                .unwrap_or(DEFAULT_STALE_IF_ERROR),
            negative_ttl: parse_opt(&raw.freshness.negative_ttl, "freshness.negative_ttl")?
                .unwrap_or(DEFAULT_NEGATIVE_TTL),
            immutable: false,
        };
        let global_immutable = compile_all(
            raw.freshness.immutable_tags.as_deref().unwrap_or(&[]),
            "freshness.immutable_tags",
        )?;

        let mut upstreams = Vec::new();
        for u in &raw.upstreams {
            upstreams.push(upstream(u, global, &global_immutable, o.tag_ttl)?);
        }
        let default_upstream =
            match (o.upstream, raw.default_upstream) {
                (Some(url), _) => {
                    let url = parse_url("--upstream", &url)?;
                    match upstreams.iter().position(|u| u.url == url) {
                        Some(i) => i,
                        None => {
                            upstreams.push(implicit_upstream(url, global, &global_immutable)?);
                            upstreams.len() - 1
                        }
                    }
                }
                (None, Some(name)) => match upstreams.iter().position(|u| u.name == name) {
                    Some(i) => i,
                    None => return err(format!("default_upstream {name:?} names no [[upstream]]")),
                },
                (None, None) if upstreams.len() == 1 => 0,
                (None, None) if upstreams.is_empty() => {
                    let hub = parse_url("default", DOCKER_HUB_URL)?;
                    upstreams.push(implicit_upstream(hub, global, &global_immutable)?);
                    0
                }
                (None, None) => return err(
                    "several upstreams are configured: set default_upstream to one of their names",
                ),
            };
        check_unique(&upstreams)?;

        let cache = CacheConfig {
            max_size: raw.cache.max_size.as_deref().map(parse_size).transpose()?,
            high_watermark: raw.cache.high_watermark.unwrap_or(0.95),
            low_watermark: raw.cache.low_watermark.unwrap_or(0.85),
        };
        let wm_ok = |w: f64| w > 0.0 && w <= 1.0;
        if !wm_ok(cache.high_watermark)
            || !wm_ok(cache.low_watermark)
            || cache.low_watermark > cache.high_watermark
        {
            return err("cache watermarks must satisfy 0 < low_watermark <= high_watermark <= 1");
        }
        let timeouts = Timeouts {
            connect: parse_opt(&raw.timeouts.connect, "timeouts.connect")?
                .unwrap_or(Duration::from_secs(10)),
            response: parse_opt(&raw.timeouts.response, "timeouts.response")?
                .unwrap_or(Duration::from_secs(30)),
            idle: parse_opt(&raw.timeouts.idle, "timeouts.idle")?
                .unwrap_or(Duration::from_secs(30)),
        };
        Ok(Config {
            listen,
            admin_listen,
            data_dir,
            upstreams,
            default_upstream,
            cache,
            timeouts,
            access_log: raw.access_log || o.access_log,
            client_auth: client_auth(&raw.clients)?,
            tls: tls_config(
                o.tls_cert.or(raw.tls_cert).as_deref(),
                o.tls_key.or(raw.tls_key).as_deref(),
            )?,
        })
    }

    /// A configuration for tests and embedding: one default upstream at `url`.
    pub fn for_upstream(url: &str, data_dir: impl Into<PathBuf>) -> Result<Config, ConfigError> {
        Config::from_raw(
            RawConfig::default(),
            Overrides {
                upstream: Some(url.to_string()),
                data_dir: Some(data_dir.into()),
                listen: Some("127.0.0.1:0".into()),
                ..Overrides::default()
            },
        )
    }
}

fn upstream(
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
    let mut defaults = global;
    // The command line's --tag-ttl beats the file everywhere.
    if cli_ttl.is_none() {
        if let Some(t) = parse_opt(&u.freshness.tag_ttl, &format!("{ctx}: tag_ttl"))? {
            defaults.tag_ttl = t;
        }
    }
    if let Some(t) = parse_opt(
        &u.freshness.stale_if_error,
        &format!("{ctx}: stale_if_error"),
    )? {
        defaults.stale_if_error = t;
    }
    if let Some(t) = parse_opt(&u.freshness.negative_ttl, &format!("{ctx}: negative_ttl"))? {
        defaults.negative_ttl = t;
    }
    let mut immutable_tags = global_immutable.to_vec();
    immutable_tags.extend(compile_all(
        u.freshness.immutable_tags.as_deref().unwrap_or(&[]),
        &format!("{ctx}: immutable_tags"),
    )?);
    let mut rules = Vec::new();
    for (i, r) in u.rules.iter().enumerate() {
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
    let password = secret(&ctx, &u.password, &u.password_env)?;
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
        policy: FreshnessPolicy {
            defaults,
            immutable_tags,
            rules,
        },
    })
}

/// The upstream `--upstream URL` creates: named by its `host[:port]`.
fn implicit_upstream(
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
        aliases: Vec::new(),
        username: None,
        password: None,
        password_env: None,
        library_prefix: None,
        freshness: RawFreshness::default(),
        rules: Vec::new(),
    };
    upstream(&raw, global, global_immutable, None)
}

fn check_unique(upstreams: &[UpstreamConfig]) -> Result<(), ConfigError> {
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

fn parse_addr(what: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().or_else(|_| {
        err(format!(
            "{what}: {s:?} is not an address like 127.0.0.1:5000"
        ))
    })
}

fn parse_url(what: &str, s: &str) -> Result<Url, ConfigError> {
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

fn parse_opt(d: &Option<RawDuration>, what: &str) -> Result<Option<Duration>, ConfigError> {
    d.as_ref().map(|d| d.parse(what)).transpose()
}

fn compile(pattern: &str, what: &str) -> Result<Regex, ConfigError> {
    Regex::new(&format!("^(?:{pattern})$"))
        .or_else(|e| err(format!("{what}: bad regex {pattern:?}: {e}")))
}

fn compile_all(patterns: &[String], what: &str) -> Result<Vec<Regex>, ConfigError> {
    patterns.iter().map(|p| compile(p, what)).collect()
}

/// Parses `"10GiB"`, `"500MB"`, `"1T"`, `"1048576"`: binary for `KiB`/`MiB`/…,
/// decimal for `KB`/`MB`/…, and the bare `K`/`M`/`G`/`T` as binary.
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .or_else(|_| err(format!("{s:?} is not a size like \"10GiB\"")))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => return err(format!("{s:?}: unknown size unit {other:?}")),
    };
    let bytes = num * mult as f64;
    if !(1.0..1.8e19).contains(&bytes) {
        return err(format!("{s:?} is not a usable size"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str) -> Result<Config, ConfigError> {
        Config::from_raw(RawConfig::from_toml(toml)?, Overrides::default())
    }

    #[test]
    fn client_auth_checks_basic_credentials() {
        use base64::Engine as _;
        let basic = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        assert!(load("").unwrap().client_auth.is_none());
        let c = load(
            "[[client]]\nusername = \"node\"\npassword = \"s3:cret\"\n[[client]]\nusername = \"ci\"\npassword = \"other\"\n",
        )
        .unwrap();
        let auth = c.client_auth.expect("auth on");
        assert!(
            auth.allows(Some(&basic("node:s3:cret"))),
            "':' in a password"
        );
        assert!(auth.allows(Some(&basic("ci:other"))));
        assert!(auth.allows(Some(&format!("basic  {}", &basic("ci:other")[6..]))));
        assert!(
            !auth.allows(Some(&basic("node:other"))),
            "another user's password"
        );
        assert!(!auth.allows(Some(&basic("node:s3:cre"))));
        assert!(!auth.allows(Some(&basic("nobody:s3:cret"))));
        assert!(!auth.allows(Some("Bearer abc")));
        assert!(!auth.allows(Some("Basic !!!")));
        assert!(!auth.allows(None));
        assert!(!format!("{auth:?}").contains("s3"), "Debug shows no secret");
        for bad in [
            "[[client]]\nusername = \"a:b\"\npassword = \"x\"\n",
            "[[client]]\nusername = \"a\"\n",
            "[[client]]\nusername = \"a\"\npassword = \"\"\n",
            "[[client]]\nusername = \"a\"\npassword = \"x\"\n[[client]]\nusername = \"a\"\npassword = \"y\"\n",
            "[[client]]\nusername = \"a\"\npassword_env = \"FERRY_TEST_UNSET_VAR\"\n",
        ] {
            assert!(load(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_to_docker_hub() {
        let c = load("").unwrap();
        assert_eq!(c.listen, "127.0.0.1:5000".parse().unwrap());
        assert_eq!(c.upstreams.len(), 1);
        let hub = &c.upstreams[0];
        assert_eq!(hub.name, "docker.io");
        assert!(hub.library_prefix);
        for a in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
            assert!(hub.aliases.iter().any(|x| x == a), "{a}");
        }
        assert_eq!(
            hub.policy.for_tag("library/alpine", "latest").tag_ttl,
            DEFAULT_TAG_TTL
        );
    }

    #[test]
    fn cli_upstream_is_known_by_host_and_port() {
        let c = Config::for_upstream("http://127.0.0.1:5001", "/tmp/x").unwrap();
        let u = &c.upstreams[c.default_upstream];
        assert_eq!(u.name, "127.0.0.1:5001");
        assert!(u.aliases.contains(&"127.0.0.1:5001".to_string()));
        assert!(!u.library_prefix);
    }

    #[test]
    fn full_file_with_rules() {
        let c = load(
            r#"
            listen = "0.0.0.0:5000"
            default_upstream = "hub"
            [cache]
            max_size = "10GiB"
            [freshness]
            tag_ttl = "1m"
            immutable_tags = ['v?\d+\.\d+\.\d+']
            [[upstream]]
            name = "hub"
            url = "https://registry-1.docker.io"
            username = "u"
            password = "secret"
            [[upstream.rule]]
            repository = "library/.*"
            tag = "latest"
            tag_ttl = 10
            [[upstream]]
            name = "ghcr"
            url = "https://ghcr.io"
            aliases = ["GHCR.IO"]
            [upstream.freshness]
            tag_ttl = "5m"
            "#,
        )
        .unwrap();
        assert_eq!(c.cache.max_size, Some(10 << 30));
        let hub = &c.upstreams[c.default_upstream];
        assert_eq!(hub.name, "hub");
        assert!(hub.aliases.contains(&"docker.io".to_string()));
        let p = &hub.policy;
        assert_eq!(
            p.for_tag("library/alpine", "latest").tag_ttl,
            Duration::from_secs(10)
        );
        assert_eq!(
            p.for_tag("user/app", "latest").tag_ttl,
            Duration::from_secs(60)
        );
        assert!(p.for_tag("user/app", "1.2.3").immutable);
        assert!(p.for_tag("user/app", "v1.2.3").immutable);
        assert!(!p.for_tag("user/app", "1.2.3-rc1").immutable);
        assert!(!format!("{hub:?}").contains("secret"));
        let ghcr = &c.upstreams[1];
        assert_eq!(
            ghcr.policy.for_tag("o/i", "x").tag_ttl,
            Duration::from_secs(300)
        );
        assert!(ghcr.aliases.contains(&"ghcr.io".to_string()));
    }

    #[test]
    fn cli_tag_ttl_overrides_the_file() {
        let raw = RawConfig::from_toml("[freshness]\ntag_ttl = 99").unwrap();
        let c = Config::from_raw(
            raw,
            Overrides {
                tag_ttl: Some(5),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            c.upstreams[0].policy.defaults.tag_ttl,
            Duration::from_secs(5)
        );
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        let cases = [
            ("listen = \"nope\"", "listen"),
            ("bogus = 1", "unknown field"),
            ("[freshness]\ntag_ttl = \"soon\"", "tag_ttl"),
            ("[cache]\nmax_size = \"10 parsecs\"", "unit"),
            ("[[upstream]]\nname = \"a\"\nurl = \"ftp://x\"", "http"),
            ("[[upstream]]\nname = \"a\"\nurl = \"https://x\"\nusername = \"u\"", "together"),
            (
                "[[upstream]]\nname = \"a\"\nurl = \"https://x\"\n[[upstream]]\nname = \"b\"\nurl = \"https://x\"",
                "default_upstream",
            ),
            (
                "default_upstream = \"a\"\n[[upstream]]\nname = \"a\"\nurl = \"https://x\"\n[[upstream]]\nname = \"b\"\nurl = \"https://x\"",
                "both answer",
            ),
            ("[freshness]\nimmutable_tags = ['(']", "regex"),
        ];
        for (toml, needle) in cases {
            let e = load(toml).unwrap_err().to_string();
            assert!(e.contains(needle), "{toml:?} gave {e:?}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10GiB").unwrap(), 10 << 30);
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("1.5KiB").unwrap(), 1536);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("0").is_err());
        assert!(parse_size("x").is_err());
    }
}
