//! Command-line flags that override the configuration file. The `ferry serve`
//! and `ferry config check` commands flatten this type, so a flag is declared
//! once and its `--help` shows the default from [`super::defaults`].

use super::defaults::{self, help};
use std::path::PathBuf;

/// Values from the command line; each beats the file's.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// Client-facing address.
    #[arg(long, value_name = "ADDR", help = help("Client-facing address", defaults::LISTEN))]
    pub listen: Option<String>,
    /// Address of the admin API.
    #[arg(long, value_name = "ADDR", help = help("Address for the admin API (purge, prefetch, fsck)", "off"))]
    pub admin_listen: Option<String>,
    /// Where blobs and the index live.
    #[arg(long, value_name = "DIR", help = help("Where blobs and the index live", defaults::DATA_DIR))]
    pub data_dir: Option<PathBuf>,
    /// Adds an upstream at this URL (named by its `host[:port]`) and makes it the default.
    #[arg(long, value_name = "URL", help = help("The default upstream registry URL", defaults::DOCKER_HUB_URL))]
    pub upstream: Option<String>,
    /// Seconds a tag→digest answer is served without asking upstream, everywhere.
    #[arg(long, value_name = "SECONDS", help = help(
        "Seconds a tag→digest answer is served without asking upstream",
        defaults::TAG_TTL.as_secs()))]
    pub tag_ttl: Option<u64>,
    /// Size budget for cached blobs.
    #[arg(long, value_name = "SIZE", help = help("Size budget for cached blobs, e.g. 10GiB", "unbounded"))]
    pub max_cache_size: Option<String>,
    /// Log one line per request.
    #[arg(long)]
    pub access_log: bool,
    /// Log format: text or json.
    #[arg(long, value_name = "FORMAT", help = help("Log format: text or json (one object per line)", "text"))]
    pub log_format: Option<String>,
    /// Serve the client port over TLS: PEM certificate chain (with --tls-key).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}
