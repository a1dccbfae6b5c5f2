//! The `ferry` subcommands, one file each; `main.rs` parses the command line
//! and dispatches here.
//!
//! - [`serve`]: the proxy itself (signals, open-file limit, reloads on SIGHUP);
//! - [`config_check`]: `ferry config check`, the effective configuration;
//! - [`fsck`], [`purge`]: the store of a stopped Ferry (purge also through the admin API);
//! - [`prefetch`]: an image cached through a running Ferry;
//! - [`node_config`]: this node's mirror configuration for containerd, CRI-O/podman, Docker;
//! - [`probe`]: a health check for images without curl;
//! - [`admin_client`]: the admin-API client purge and prefetch share.
//!
//! Each returns the process's exit code; an `Err` is reported by `main` and
//! exits 2.

pub mod admin_client;
pub mod config_check;
pub mod fsck;
pub mod node_config;
pub mod prefetch;
pub mod probe;
pub mod purge;
pub mod serve;

use anyhow::{Context, Result};
use clap::Args;
use ferry::config::{Config, LogFormat, Overrides, RawConfig};
use std::path::PathBuf;

// The flags `ferry serve` and `ferry config check` share: a file, and flags
// over it. (A doc comment here would become `config check`'s --help text.)
#[derive(Args, Clone)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
}

/// The configuration `args` name: the file (if any) read and validated, the
/// flags applied over it.
pub fn load_config(args: &ServeArgs) -> Result<Config> {
    read_config(args.config.as_deref(), args.overrides.clone())
}

/// The configuration in `path` (none: the defaults), read and validated,
/// with `overrides` applied over it; errors name the file.
pub fn read_config(path: Option<&std::path::Path>, overrides: Overrides) -> Result<Config> {
    let raw = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            RawConfig::from_toml(&text).with_context(|| format!("in {}", path.display()))?
        }
        None => RawConfig::default(),
    };
    let context = path.map_or_else(
        || "invalid configuration".to_string(),
        |p| format!("invalid configuration in {}", p.display()),
    );
    Config::from_raw(raw, overrides).context(context)
}

/// A one-thread runtime for a command that makes a few HTTP requests.
pub fn small_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // One object per line with timestamp, level, target, fields and message:
        // what log pipelines index.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        // Colour codes only for a person at a terminal, never into files or container logs.
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}
