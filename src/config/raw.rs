//! Phase one: the configuration file as written. Unknown keys are errors;
//! absent keys stay `None` here and take their default from
//! [`super::defaults`] in phase two.

use super::parse::ConfigError;
use super::units::RawDuration;
use serde::Deserialize;
use std::path::PathBuf;

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Client-facing address.
    pub listen: Option<String>,
    /// Address of the admin API (purge, prefetch, fsck); off when absent.
    pub admin_listen: Option<String>,
    /// Where blobs and the index live.
    pub data_dir: Option<PathBuf>,
    /// Name of the upstream used when a request names none.
    pub default_upstream: Option<String>,
    /// Log one line per request.
    #[serde(default)]
    pub access_log: bool,
    /// `text` (for people) or `json` (one object per line, for log pipelines).
    pub log_format: Option<String>,
    /// How long SIGTERM waits for in-flight responses and blob fetches.
    pub shutdown_grace: Option<RawDuration>,
    /// Serve the client port over TLS with this PEM certificate chain…
    pub tls_cert: Option<PathBuf>,
    /// …and this PEM private key.
    pub tls_key: Option<PathBuf>,
    /// The blob store's size budget.
    #[serde(default)]
    pub cache: RawCache,
    /// Freshness defaults for every upstream.
    #[serde(default)]
    pub freshness: RawFreshness,
    /// Upstream timeouts.
    #[serde(default)]
    pub timeouts: RawTimeouts,
    /// The upstream registries.
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<RawUpstream>,
    /// When any is set, clients must authenticate (HTTP Basic) as one of them.
    #[serde(default, rename = "client")]
    pub clients: Vec<RawClient>,
    /// The admin API's bearer token, from this file…
    pub admin_token_file: Option<PathBuf>,
    /// …or this environment variable.
    pub admin_token_env: Option<String>,
    /// The admission webhook that pins images to digests; off when absent.
    pub webhook: Option<RawWebhook>,
    /// What clients may cost: connections, request heads, HTTP/2, fetches.
    #[serde(default)]
    pub limits: RawLimits,
    /// A shared S3 bucket behind the local store; off when absent.
    pub bucket: Option<RawBucket>,
    /// Replicas acting as one cache; off when absent.
    pub cluster: Option<RawCluster>,
}

/// `[cluster]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// How the other replicas reach this one (`host:port`; `$VAR` expanded).
    #[serde(rename = "self")]
    pub self_addr: String,
    /// The members, as `host:port`…
    pub peers: Option<Vec<String>>,
    /// …or a DNS name and port (a headless Service).
    pub peers_dns: Option<String>,
    /// How often `peers_dns` is resolved.
    pub refresh: Option<RawDuration>,
    /// How long a peer that failed a call is left out.
    pub quarantine: Option<RawDuration>,
    /// The shared peer secret, from this file…
    pub secret_file: Option<PathBuf>,
    /// …or this environment variable.
    pub secret_env: Option<String>,
}

/// `[bucket]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBucket {
    /// The S3 endpoint URL.
    pub endpoint: String,
    /// The bucket's name.
    pub bucket: String,
    /// The signing region.
    pub region: Option<String>,
    /// A key prefix (several Ferry clusters in one bucket).
    pub prefix: Option<String>,
    /// Path-style URLs (default) or virtual-hosted ones.
    pub path_style: Option<bool>,
    /// The access key id from this environment variable…
    pub access_key_env: Option<String>,
    /// …or this file.
    pub access_key_file: Option<PathBuf>,
    /// The secret key from this environment variable…
    pub secret_key_env: Option<String>,
    /// …or this file.
    pub secret_key_file: Option<PathBuf>,
    /// Multipart part size, e.g. `"8MiB"`.
    pub part_size: Option<String>,
    /// Uploads at once.
    pub max_uploads: Option<usize>,
    /// How long the bucket is left alone after an error.
    pub backoff: Option<RawDuration>,
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Concurrent connections per listener.
    pub max_connections: Option<usize>,
    /// Time to send a whole request head (also the keep-alive idle timeout).
    pub header_timeout: Option<RawDuration>,
    /// Largest request head, e.g. `"64KiB"`.
    pub max_header_bytes: Option<String>,
    /// Concurrent streams per HTTP/2 connection.
    pub h2_max_streams: Option<u64>,
    /// HTTP/2 streams reset before being handled, before the connection closes.
    pub h2_max_pending_resets: Option<usize>,
    /// Concurrent upstream blob transfers.
    pub max_fetches: Option<usize>,
}

/// `[webhook]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    /// HTTPS address, default `0.0.0.0:8443`.
    pub listen: Option<String>,
    /// PEM certificate chain (SAN `<service>.<namespace>.svc`)…
    pub tls_cert: Option<PathBuf>,
    /// …and its key.
    pub tls_key: Option<PathBuf>,
    /// When set, only clients (the API server) with a certificate this CA signed.
    pub client_ca: Option<PathBuf>,
    /// Pin workloads' pod templates too (default true).
    pub workloads: Option<bool>,
    /// `allow` (default) or `deny` an object whose image cannot be resolved.
    pub on_error: Option<String>,
    /// Image regexes (whole reference) never pinned.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Fetch pinned images at once (default true).
    pub warm: Option<bool>,
    /// Images warmed at once (default 2).
    pub warm_concurrency: Option<usize>,
}

/// One `[[client]]`: a username and its password.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    /// The Basic username.
    pub username: String,
    /// The password, inline…
    pub password: Option<String>,
    /// …or read from this environment variable.
    pub password_env: Option<String>,
    /// What it may pull: `<upstream>/<repository regex>` entries; everything
    /// when absent.
    pub repositories: Option<Vec<String>>,
}

/// `[cache]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// Size budget for blobs, e.g. `"10GiB"`; unbounded when absent.
    pub max_size: Option<String>,
    /// Eviction starts above `max_size` × this.
    pub high_watermark: Option<f64>,
    /// Eviction stops below `max_size` × this.
    pub low_watermark: Option<f64>,
}

/// Freshness settings; at the top level they are the defaults, inside an
/// upstream they override them.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFreshness {
    /// How long a tag is answered from the cache.
    pub tag_ttl: Option<RawDuration>,
    /// How long past the TTL a cached answer is served while upstream fails.
    pub stale_if_error: Option<RawDuration>,
    /// How long an upstream 404 for a tag is remembered.
    pub negative_ttl: Option<RawDuration>,
    /// Regexes (whole-tag match) of tags that never move once cached.
    pub immutable_tags: Option<Vec<String>>,
}

/// `[timeouts]` for upstream requests.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    /// TCP and TLS connect.
    pub connect: Option<RawDuration>,
    /// Until upstream's response headers arrive.
    pub response: Option<RawDuration>,
    /// Longest silence inside a body before the transfer is abandoned (and resumed).
    pub idle: Option<RawDuration>,
}

/// One `[[upstream]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// The name metrics, purge and `default_upstream` use.
    pub name: String,
    /// The registry's base URL.
    pub url: String,
    /// Extra names (`host[:port]`) that route to it.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Ferry's own credentials for it.
    pub username: Option<String>,
    /// The password, inline…
    pub password: Option<String>,
    /// …or read from this environment variable.
    pub password_env: Option<String>,
    /// Map single-component names to `library/<name>` (default: on for Docker Hub).
    pub library_prefix: Option<bool>,
    /// Overrides of the freshness defaults.
    #[serde(default)]
    pub freshness: RawFreshness,
    /// Per repository/tag pattern overrides; the first match wins.
    #[serde(default, rename = "rule")]
    pub rules: Vec<RawRule>,
    /// Push events from this upstream (`POST /events/<name>`); off when absent.
    pub events: Option<RawEvents>,
    /// Upstream-checked access: each client's right to pull a repository is
    /// asked of the upstream with the client's own credentials; off when absent.
    pub access: Option<RawAccess>,
    /// A PEM bundle of CAs trusted for this upstream, besides the system's and
    /// the built-in roots.
    pub ca_file: Option<PathBuf>,
    /// A PEM client certificate chain for mutual TLS…
    pub client_cert: Option<PathBuf>,
    /// …and its PEM private key.
    pub client_key: Option<PathBuf>,
}

/// `[upstream.access]`: how long the upstream's answers about a client stand.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccess {
    /// A "may pull" is reused this long.
    pub ttl: Option<RawDuration>,
    /// A "may not pull" is reused this long.
    pub negative_ttl: Option<RawDuration>,
    /// While the upstream cannot be asked, a decision this old still stands.
    pub stale: Option<RawDuration>,
}

/// `[upstream.events]`: the upstream tells Ferry when a tag moves.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvents {
    /// The shared secret senders prove (a bearer token, or the HMAC key)…
    pub secret: Option<String>,
    /// …or read from this environment variable.
    pub secret_env: Option<String>,
    /// The tag TTL while events are on (a safety net for missed events).
    pub tag_ttl: Option<RawDuration>,
    /// Repository regexes whose pushed images are fetched at once (pre-warm).
    #[serde(default)]
    pub prewarm: Vec<String>,
}

/// One `[[upstream.rule]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Regex matched against the whole upstream repository name.
    pub repository: Option<String>,
    /// Regex matched against the whole tag.
    pub tag: Option<String>,
    /// Overrides `tag_ttl`.
    pub tag_ttl: Option<RawDuration>,
    /// Overrides `stale_if_error`.
    pub stale_if_error: Option<RawDuration>,
    /// Overrides `negative_ttl`.
    pub negative_ttl: Option<RawDuration>,
    /// Cached answers for matching tags are never revalidated.
    pub immutable: Option<bool>,
}

impl RawConfig {
    /// Parses the TOML text of a configuration file.
    pub fn from_toml(text: &str) -> Result<RawConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError(e.to_string()))
    }
}
