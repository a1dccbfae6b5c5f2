//! The `ferry` command: parse flags, validate configuration before binding any
//! socket, then hand over to the library.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use ferry::config::{defaults, Config, Overrides, RawConfig};
use ferry::oci::RepoName;
use ferry_storage::{Digest, Store, StoreOptions};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "A pull-through caching proxy for OCI registries"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve(ServeArgs),
    /// Validate a configuration and print what it means, then exit.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Check the store's index against its files (Ferry must not be running;
    /// use the admin API's /admin/fsck for a live store).
    Fsck {
        #[arg(long, default_value = ferry::config::defaults::DATA_DIR)]
        data_dir: PathBuf,
        /// Also re-hash every blob.
        #[arg(long)]
        verify: bool,
        /// Drop what is broken (bad entries are fetched again on demand).
        #[arg(long)]
        repair: bool,
    },
    /// Remove a digest, a tag or a repository's tags from the cache.
    Purge(PurgeArgs),
    /// Cache an image (every platform, every layer) through a running Ferry.
    Prefetch(PrefetchArgs),
}

#[derive(Subcommand)]
enum ConfigCommand {
    Check(ServeArgs),
}

#[derive(Args, Clone)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
}

#[derive(Args)]
struct PrefetchArgs {
    /// A running Ferry's admin API, e.g. http://127.0.0.1:5001.
    #[arg(long)]
    admin: String,
    /// Upstream name or alias (e.g. docker.io).
    #[arg(long)]
    upstream: String,
    /// Repository as named upstream (e.g. library/alpine).
    #[arg(long)]
    repository: String,
    /// A tag or a digest.
    #[arg(long, default_value = "latest")]
    reference: String,
}

#[derive(Args)]
struct PurgeArgs {
    /// A running Ferry's admin API, e.g. http://127.0.0.1:5001.
    #[arg(long, conflicts_with = "data_dir")]
    admin: Option<String>,
    /// The store of a stopped Ferry.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Configuration (to resolve upstream aliases when purging offline).
    #[arg(long)]
    config: Option<PathBuf>,
    /// A blob or manifest digest.
    #[arg(long, conflicts_with_all = ["upstream", "repository", "tag"])]
    digest: Option<String>,
    /// Upstream name or alias (e.g. docker.io).
    #[arg(long, requires = "repository")]
    upstream: Option<String>,
    /// Repository as named upstream (e.g. library/alpine).
    #[arg(long, requires = "upstream")]
    repository: Option<String>,
    /// One tag; without it every tag of the repository is forgotten.
    #[arg(long, requires = "repository")]
    tag: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferry: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into files or container logs.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Serve(args) => {
            let config = load_config(&args)?;
            serve(config)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Check(args),
        } => {
            let config = load_config(&args)?;
            println!("listen        {}", config.listen);
            println!("data_dir      {}", config.data_dir.display());
            if let Some(a) = config.admin_listen {
                println!("admin_listen  {a}");
            }
            for u in &config.upstreams {
                let default = if u.name == config.default_upstream {
                    " (default)"
                } else {
                    ""
                };
                let f = &u.policy.defaults;
                println!(
                    "upstream      {}{default}: {} aliases={:?} tag_ttl={} stale_if_error={} negative_ttl={}",
                    u.name,
                    u.url,
                    u.aliases,
                    defaults::show(f.tag_ttl),
                    defaults::show(f.stale_if_error),
                    defaults::show(f.negative_ttl),
                );
            }
            println!("configuration OK");
            Ok(ExitCode::SUCCESS)
        }
        Command::Fsck {
            data_dir,
            verify,
            repair,
        } => fsck(data_dir, verify, repair),
        Command::Purge(args) => purge(args),
        Command::Prefetch(args) => prefetch(args),
    }
}

fn load_config(args: &ServeArgs) -> Result<Config> {
    let raw = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            RawConfig::from_toml(&text).with_context(|| format!("in {}", path.display()))?
        }
        None => RawConfig::default(),
    };
    let context = args.config.as_ref().map_or_else(
        || "invalid configuration".to_string(),
        |p| format!("invalid configuration in {}", p.display()),
    );
    Config::from_raw(raw, args.overrides.clone()).context(context)
}

fn serve(config: Config) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listeners = ferry::Listeners::bind(&config).await?;
        let ferry = ferry::Ferry::open(config.clone())?;
        let (blobs, bytes) = ferry.proxy().store_usage();
        let admin = listeners.admin.as_ref().and_then(|l| l.local_addr().ok());
        tracing::info!(
            listen = %listeners.client.local_addr()?,
            admin = ?admin,
            data_dir = %config.data_dir.display(),
            default_upstream = %config.default_upstream,
            blobs,
            bytes,
            "ferry serving"
        );
        ferry.serve(listeners, shutdown_signal()).await;
        tracing::info!("ferry stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn fsck(data_dir: PathBuf, verify: bool, repair: bool) -> Result<ExitCode> {
    let store = Store::open(StoreOptions::new(&data_dir)).with_context(|| {
        format!(
            "opening the store in {} (is Ferry still running?)",
            data_dir.display()
        )
    })?;
    let report = store.fsck(verify, repair)?;
    for f in &report.findings {
        println!("{f}");
    }
    println!(
        "checked {} blobs, {} manifests, {} tags: {} problem(s){}",
        report.blobs_checked,
        report.manifests_checked,
        report.tags_checked,
        report.findings.len(),
        if repair && !report.clean() {
            ", repaired"
        } else {
            ""
        }
    );
    Ok(if report.clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn purge(args: PurgeArgs) -> Result<ExitCode> {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    match (&args.digest, &args.upstream, &args.repository) {
        (Some(d), _, _) => {
            query.append_pair("digest", d);
        }
        (None, Some(u), Some(r)) => {
            query
                .append_pair("upstream", u)
                .append_pair("repository", r);
            if let Some(t) = &args.tag {
                query.append_pair("tag", t);
            }
        }
        _ => bail!("give --digest, or --upstream and --repository [--tag]"),
    }
    if let Some(admin) = &args.admin {
        return admin_post(admin, "purge", &query.finish());
    }
    let Some(data_dir) = args.data_dir.clone() else {
        bail!("give --admin URL (Ferry running) or --data-dir DIR (Ferry stopped)");
    };
    let store = Store::open(StoreOptions::new(&data_dir)).with_context(|| {
        format!(
            "opening the store in {} (is Ferry running? use --admin)",
            data_dir.display()
        )
    })?;
    let removed = if let Some(d) = &args.digest {
        let digest: Digest = d
            .parse()
            .with_context(|| format!("{d:?} is not a digest"))?;
        usize::from(store.purge_digest(&digest)?)
    } else {
        let (upstream, repo) = offline_names(&args)?;
        store.purge_tags(&upstream, &repo, args.tag.as_deref())?
    };
    println!("{{\"removed\":{removed}}}");
    Ok(ExitCode::SUCCESS)
}

/// POSTs to a running Ferry's admin API, prints the JSON answer, and exits
/// non-zero unless it succeeded.
fn admin_post(admin: &str, endpoint: &str, query: &str) -> Result<ExitCode> {
    let url = format!("{}/admin/{endpoint}?{query}", admin.trim_end_matches('/'));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, body) = runtime.block_on(async {
        let resp = reqwest::Client::new().post(&url).send().await?;
        let status = resp.status();
        Ok::<_, reqwest::Error>((status, resp.text().await?))
    })?;
    println!("{body}");
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn prefetch(args: PrefetchArgs) -> Result<ExitCode> {
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("upstream", &args.upstream)
        .append_pair("repository", &args.repository)
        .append_pair("reference", &args.reference)
        .finish();
    admin_post(&args.admin, "prefetch", &query)
}

/// The stored upstream name and repository for an offline tag purge: resolved
/// through the configuration when the upstream is known there.
fn offline_names(args: &PurgeArgs) -> Result<(String, String)> {
    let upstream = args.upstream.clone().unwrap_or_default();
    let repo = args.repository.clone().unwrap_or_default();
    let raw = match &args.config {
        Some(p) => RawConfig::from_toml(&std::fs::read_to_string(p)?)?,
        None => RawConfig::default(),
    };
    let config = Config::from_raw(raw, Overrides::default())?;
    Ok(match (config.upstream(&upstream), RepoName::parse(&repo)) {
        (Some(u), Some(name)) => (u.name.clone(), u.repository(name).to_string()),
        (Some(u), None) => (u.name.clone(), repo),
        (None, _) => (upstream, repo),
    })
}
