//! `ferry node-config`: writes (or with `--remove` takes back) this node's
//! mirror configuration from Ferry's upstreams; the plan itself is
//! [`ferry::node_config`], this is its command line and file system.

use anyhow::{bail, Context, Result};
use clap::Args;
use ferry::config::Overrides;
use ferry::node_config::{apply, plan, NodeTargets, Step};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct NodeConfigArgs {
    /// Ferry as the nodes reach it, e.g. http://10.96.0.50:5000.
    #[arg(long)]
    ferry_url: Option<String>,
    /// Ferry's configuration: its upstreams are the registries configured.
    #[arg(long)]
    config: Option<PathBuf>,
    /// containerd's registry config_path (one hosts.toml per registry).
    #[arg(long, value_name = "DIR")]
    containerd_dir: Option<PathBuf>,
    /// CRI-O/podman drop-in directory (writes 50-ferry.conf).
    #[arg(long, value_name = "DIR")]
    registries_d: Option<PathBuf>,
    /// Docker's daemon.json (registry-mirrors, Docker Hub only).
    #[arg(long, value_name = "FILE")]
    docker_daemon_json: Option<PathBuf>,
    /// CA bundle (a path on the node) that signed Ferry's TLS certificate.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Authorization header value for Ferry's client authentication…
    #[arg(long, value_name = "VALUE", conflicts_with = "auth_header_file")]
    auth_header: Option<String>,
    /// …or read from this file (a mounted Secret).
    #[arg(long, value_name = "FILE")]
    auth_header_file: Option<PathBuf>,
    /// Print what would change; write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Remove what ferry node-config wrote (daemon.json: needs --ferry-url).
    #[arg(long)]
    remove: bool,
}

/// Prints each step (written, removed, unchanged; with `--dry-run` what would
/// be) and carries the plan out; files that are not Ferry's are reported on
/// stderr and left alone.
pub fn run(args: &NodeConfigArgs) -> Result<ExitCode> {
    let config = super::read_config(args.config.as_deref(), Overrides::default())?;
    let auth_header = match (&args.auth_header, &args.auth_header_file) {
        (Some(h), _) => Some(h.clone()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading {}", f.display()))?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    let targets = NodeTargets {
        ferry_url: args
            .ferry_url
            .as_deref()
            .map(url::Url::parse)
            .transpose()
            .context("--ferry-url")?,
        containerd_dir: args.containerd_dir.clone(),
        registries_d: args.registries_d.clone(),
        docker_daemon_json: args.docker_daemon_json.clone(),
        ca: args.ca.clone(),
        auth_header,
    };
    if targets.containerd_dir.is_none()
        && targets.registries_d.is_none()
        && targets.docker_daemon_json.is_none()
    {
        bail!("nothing to configure: give --containerd-dir, --registries-d and/or --docker-daemon-json");
    }
    let steps = plan(&config, &targets, args.remove, |p| {
        std::fs::read_to_string(p).ok()
    })
    .map_err(anyhow::Error::msg)?;
    for s in &steps {
        match s {
            Step::Write { path, content } if args.dry_run => {
                println!("would write {}:\n{content}", path.display())
            }
            Step::Write { path, .. } => println!("wrote {}", path.display()),
            Step::Remove { path } if args.dry_run => println!("would remove {}", path.display()),
            Step::Remove { path } => println!("removed {}", path.display()),
            Step::Unchanged { path } => println!("unchanged {}", path.display()),
            Step::Skip { path, why } => eprintln!("ferry: left {} alone: {why}", path.display()),
        }
    }
    if !args.dry_run {
        apply(&steps).context("writing the node's configuration")?;
    }
    Ok(ExitCode::SUCCESS)
}
