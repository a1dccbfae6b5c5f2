//! Configuration: a TOML file and command-line flags, validated in two phases.
//!
//! Phase one deserialises [`RawConfig`] (unknown keys are errors); phase two,
//! [`Config::from_raw`], turns it into typed values (socket addresses, URLs,
//! durations, compiled regexes) or a message saying what is wrong. Nothing
//! binds a socket until a `Config` exists.
//!
//! - [`defaults`]: every default, shared with `--help` and the store;
//! - [`raw`]: the file as written; [`overrides`]: the flags that beat it;
//! - [`upstream`]: one upstream registry; [`freshness`]: its freshness policy;
//! - `units`: durations and sizes; [`tls`]: the client port's certificate;
//! - [`limits`]: what clients may cost; [`webhook`]: the admission webhook;
//! - [`bucket`]: the shared S3 bucket behind the local store;
//! - [`cluster`]: replicas acting as one cache (members, peer secret).

pub mod access;
pub mod bucket;
pub mod cluster;
pub mod defaults;
pub mod freshness;
pub mod limits;
pub mod overrides;
mod parse;
pub mod raw;
pub mod tls;
pub mod units;
pub mod upstream;
pub mod webhook;

pub use access::{AccessPolicy, UpstreamTls};
pub use bucket::BucketConfig;
pub use cluster::ClusterConfig;
pub use freshness::{Freshness, FreshnessPolicy, Rule};
pub use limits::Limits;
pub use overrides::Overrides;
pub use parse::ConfigError;
use parse::{compile, compile_all, err, parse_addr, secret, secret_from};
pub use raw::RawConfig;
pub use units::parse_size;
pub use upstream::{authority, Credentials, UpstreamConfig};

use crate::access::clients::Client;
use crate::access::{AdminToken, ClientAuth};
use raw::RawClient;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use units::{duration_or, RawDuration};

/// Validated configuration: everything [`crate::Ferry::open`] needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Client-facing address (the caller binds it).
    pub listen: SocketAddr,
    /// The admin API's address, when it is on (the caller binds it).
    pub admin_listen: Option<SocketAddr>,
    /// The token the admin API demands; `None` only on loopback.
    pub admin_token: Option<AdminToken>,
    /// Where blobs, the index and temp files live.
    pub data_dir: PathBuf,
    /// The upstream registries, each under a unique name.
    pub upstreams: Vec<UpstreamConfig>,
    /// Name of the upstream for requests that name none.
    pub default_upstream: String,
    /// The blob store's size budget.
    pub cache: CacheConfig,
    /// Upstream timeouts.
    pub timeouts: Timeouts,
    /// Log one line per request (target `ferry::access`).
    pub access_log: bool,
    /// How logs are written.
    pub log_format: LogFormat,
    /// How long SIGTERM waits for in-flight responses and blob fetches.
    pub shutdown_grace: Duration,
    /// Who may pull; `None`: anyone who can reach the listener.
    pub client_auth: Option<ClientAuth>,
    /// TLS for the client port; plain HTTP when `None`.
    pub tls: Option<tls::Tls>,
    /// The admission webhook, when configured.
    pub webhook: Option<webhook::WebhookConfig>,
    /// What clients may cost.
    pub limits: Limits,
    /// The shared bucket, when configured.
    pub bucket: Option<BucketConfig>,
    /// Replicas acting as one cache, when configured.
    pub cluster: Option<ClusterConfig>,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Lines for people (colours only on a terminal).
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, message, fields.
    Json,
}

impl LogFormat {
    /// `text` or `json`.
    pub fn parse(s: &str) -> Result<LogFormat, ConfigError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => err(format!(
                "log_format: {other:?} is neither \"text\" nor \"json\""
            )),
        }
    }
}

/// `[cache]`, validated.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Bytes of blobs kept at most; `None`: unbounded.
    pub max_size: Option<u64>,
    /// Eviction starts above `max_size` × this…
    pub high_watermark: f64,
    /// …and stops below `max_size` × this.
    pub low_watermark: f64,
}

/// Upstream timeouts.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP and TLS connect.
    pub connect: Duration,
    /// Until the response headers.
    pub response: Duration,
    /// Longest silence inside a body.
    pub idle: Duration,
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
            .unwrap_or_else(|| defaults::LISTEN.into());
        let listen = parse_addr("listen", &listen)?;
        let admin_listen = o
            .admin_listen
            .or(raw.admin_listen)
            .map(|a| parse_addr("admin_listen", &a))
            .transpose()?;
        let data_dir = o
            .data_dir
            .or(raw.data_dir)
            .unwrap_or_else(|| PathBuf::from(defaults::DATA_DIR));

        let f = &raw.freshness;
        let global = Freshness {
            tag_ttl: duration_or(&f.tag_ttl, "freshness.tag_ttl", defaults::TAG_TTL)?,
            stale_if_error: duration_or(
                &f.stale_if_error,
                "freshness.stale_if_error",
                defaults::STALE_IF_ERROR,
            )?,
            negative_ttl: duration_or(
                &f.negative_ttl,
                "freshness.negative_ttl",
                defaults::NEGATIVE_TTL,
            )?,
            immutable: false,
        };
        let global_immutable = compile_all(
            f.immutable_tags.as_deref().unwrap_or(&[]),
            "freshness.immutable_tags",
        )?;

        let mut upstreams = Vec::new();
        for u in &raw.upstreams {
            upstreams.push(upstream::from_raw(u, global, &global_immutable, o.tag_ttl)?);
        }
        let default_upstream =
            match (o.upstream, raw.default_upstream) {
                (Some(url), _) => {
                    let url = upstream::parse_url("--upstream", &url)?;
                    match upstreams.iter().find(|u| u.url == url) {
                        Some(u) => u.name.clone(),
                        None => {
                            let u = upstream::implicit(url, global, &global_immutable)?;
                            let name = u.name.clone();
                            upstreams.push(u);
                            name
                        }
                    }
                }
                (None, Some(name)) if upstreams.iter().any(|u| u.name == name) => name,
                (None, Some(name)) => {
                    return err(format!("default_upstream {name:?} names no [[upstream]]"))
                }
                (None, None) if upstreams.len() == 1 => upstreams[0].name.clone(),
                (None, None) if upstreams.is_empty() => {
                    let hub = upstream::docker_hub(global, &global_immutable)?;
                    let name = hub.name.clone();
                    upstreams.push(hub);
                    name
                }
                (None, None) => return err(
                    "several upstreams are configured: set default_upstream to one of their names",
                ),
            };
        upstream::check_unique(&upstreams)?;

        let cache = CacheConfig {
            max_size: raw.cache.max_size.as_deref().map(parse_size).transpose()?,
            high_watermark: raw.cache.high_watermark.unwrap_or(defaults::HIGH_WATERMARK),
            low_watermark: raw.cache.low_watermark.unwrap_or(defaults::LOW_WATERMARK),
        };
        let wm_ok = |w: f64| w > 0.0 && w <= 1.0;
        if !wm_ok(cache.high_watermark)
            || !wm_ok(cache.low_watermark)
            || cache.low_watermark > cache.high_watermark
        {
            return err("cache watermarks must satisfy 0 < low_watermark <= high_watermark <= 1");
        }
        let t = &raw.timeouts;
        let timeouts = Timeouts {
            connect: duration_or(&t.connect, "timeouts.connect", defaults::CONNECT_TIMEOUT)?,
            response: duration_or(&t.response, "timeouts.response", defaults::RESPONSE_TIMEOUT)?,
            idle: duration_or(&t.idle, "timeouts.idle", defaults::IDLE_TIMEOUT)?,
        };
        let client_auth = client_auth(&raw.clients, &upstreams)?;
        if raw.cluster.is_some() && (o.tls_cert.is_some() || raw.tls_cert.is_some()) {
            return err(
                "[cluster] with tls_cert is not supported yet: replicas reach each other over \
                 plain HTTP on the client port (keep it inside the cluster network, with the \
                 NetworkPolicy of docker/kubernetes/cluster)",
            );
        }
        Ok(Config {
            listen,
            admin_token: admin_token(admin_listen, &raw.admin_token_file, &raw.admin_token_env)?,
            admin_listen,
            data_dir,
            upstreams,
            default_upstream,
            cache,
            timeouts,
            access_log: raw.access_log || o.access_log,
            log_format: o
                .log_format
                .or(raw.log_format)
                .map(|f| LogFormat::parse(&f))
                .transpose()?
                .unwrap_or_default(),
            shutdown_grace: duration_or(
                &raw.shutdown_grace,
                "shutdown_grace",
                defaults::SHUTDOWN_GRACE,
            )?,
            client_auth,
            webhook: raw.webhook.as_ref().map(webhook::from_raw).transpose()?,
            limits: limits::from_raw(&raw.limits)?,
            bucket: raw.bucket.as_ref().map(bucket::from_raw).transpose()?,
            cluster: raw.cluster.as_ref().map(cluster::from_raw).transpose()?,
            tls: tls::server_config(
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

    /// The upstream with this name or alias.
    pub fn upstream(&self, name: &str) -> Option<&UpstreamConfig> {
        self.upstreams
            .iter()
            .find(|u| u.name == name)
            .or_else(|| self.upstreams.iter().find(|u| u.answers_to(name)))
    }
}

/// The admin API's token. The admin API can purge the cache and make Ferry
/// fetch anything: off loopback it needs a token.
fn admin_token(
    listen: Option<SocketAddr>,
    file: &Option<PathBuf>,
    env: &Option<String>,
) -> Result<Option<AdminToken>, ConfigError> {
    let token = match secret_from("admin_token", file, env)? {
        Some(t) if !t.bytes().all(|b| b.is_ascii_graphic()) => {
            return err("the admin token must be printable ASCII without spaces (clients send it in a header)");
        }
        Some(t) if t.len() < AdminToken::MIN_LEN => {
            return err(format!(
                "the admin token must be at least {} characters",
                AdminToken::MIN_LEN
            ));
        }
        Some(t) => Some(AdminToken::new(&t)),
        None => None,
    };
    match listen {
        Some(addr) if token.is_none() && !addr.ip().is_loopback() => err(format!(
            "admin_listen {addr} is not a loopback address: set admin_token_file or admin_token_env (the admin API can purge the cache)"
        )),
        _ => Ok(token),
    }
}

fn client_auth(
    clients: &[RawClient],
    upstreams: &[UpstreamConfig],
) -> Result<Option<ClientAuth>, ConfigError> {
    if clients.is_empty() {
        return Ok(None);
    }
    let mut users: Vec<Client> = Vec::with_capacity(clients.len());
    for (i, c) in clients.iter().enumerate() {
        let ctx = format!("client[{i}] ({:?})", c.username);
        if c.username.is_empty() || c.username.contains(':') {
            return err(format!("{ctx}: username must be non-empty and without ':'"));
        }
        if users.iter().any(|u| u.name() == c.username) {
            return err(format!("{ctx}: username given twice"));
        }
        let Some(password) = secret(&ctx, "password", &c.password, &c.password_env)? else {
            return err(format!("{ctx}: set password or password_env"));
        };
        if password.is_empty() {
            return err(format!("{ctx}: empty password"));
        }
        let repositories = match &c.repositories {
            None => None,
            Some(entries) => {
                let mut scopes = Vec::with_capacity(entries.len());
                for entry in entries {
                    let Some((upstream, pattern)) = entry.split_once('/') else {
                        return err(format!(
                            "{ctx}: repositories entry {entry:?} is not <upstream>/<repository regex>"
                        ));
                    };
                    let Some(u) = upstreams.iter().find(|u| u.answers_to(upstream)) else {
                        return err(format!(
                            "{ctx}: repositories entry {entry:?} names no configured upstream"
                        ));
                    };
                    let what = format!("{ctx}: repositories entry {entry:?}");
                    scopes.push((u.name.clone(), compile(pattern, &what)?));
                }
                Some(scopes)
            }
        };
        users.push(Client::new(&c.username, &password, repositories));
    }
    Ok(Some(ClientAuth::from_clients(users)))
}

#[cfg(test)]
mod tests;
