//! The `ferry` command: parse flags, validate configuration before binding any
//! socket, then hand over to the library.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use ferry::config::{defaults, Config, LogFormat, Overrides, RawConfig};
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
    /// Write this node's mirror configuration for containerd, CRI-O/podman and
    /// Docker from Ferry's upstreams (idempotent; --remove takes it back).
    NodeConfig(NodeConfigArgs),
    /// Exit 0 if URL answers 2xx within 5 s, else 1 (health checks in images
    /// without curl).
    Probe {
        /// e.g. http://127.0.0.1:5000/readyz
        url: String,
    },
}

#[derive(Args)]
struct NodeConfigArgs {
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
    /// A running Ferry's admin API, e.g. http://127.0.0.1:5001 (its token,
    /// if it has one, from FERRY_ADMIN_TOKEN).
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
    /// A running Ferry's admin API, e.g. http://127.0.0.1:5001 (its token,
    /// if it has one, from FERRY_ADMIN_TOKEN).
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

/// A cold blob streams through receive buffers of a few hundred KiB, allocated
/// and freed at network speed. glibc maps each one with `mmap` and unmaps it
/// when freed, so every buffer is fresh pages: page faults, zeroing and cgroup
/// charging were about 7% of a cold pull's CPU (perf, 64 MiB blobs). mimalloc
/// reuses freed pages.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferry: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
fn init_tracing(format: LogFormat) {
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

fn run(command: Command) -> Result<ExitCode> {
    match &command {
        Command::Serve(_) => {}
        _ => init_tracing(LogFormat::Text),
    }
    match command {
        Command::Serve(args) => {
            let config = load_config(&args)?;
            init_tracing(config.log_format);
            serve(config, args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Check(args),
        } => {
            let config = load_config(&args)?;
            println!("listen        {}", config.listen);
            println!("data_dir      {}", config.data_dir.display());
            if let Some(a) = config.admin_listen {
                let token = match config.admin_token {
                    Some(_) => "bearer token",
                    None => "no token: loopback only",
                };
                println!("admin_listen  {a} ({token})");
            }
            for u in &config.upstreams {
                let default = if u.name == config.default_upstream {
                    " (default)"
                } else {
                    ""
                };
                let f = &u.policy.defaults;
                let access = u.access.map_or_else(
                    || "open".to_string(),
                    |a| {
                        format!(
                            "checked(ttl={} negative_ttl={} stale={})",
                            defaults::show(a.ttl),
                            defaults::show(a.negative_ttl),
                            defaults::show(a.stale)
                        )
                    },
                );
                let yes = |b: bool| if b { "yes" } else { "no" };
                println!(
                    "upstream      {}{default}: {} aliases={:?} tag_ttl={} stale_if_error={} negative_ttl={} credentials={} access={access} ca_file={} client_cert={}",
                    u.name,
                    u.url,
                    u.aliases,
                    defaults::show(f.tag_ttl),
                    defaults::show(f.stale_if_error),
                    defaults::show(f.negative_ttl),
                    yes(u.credentials.is_some()),
                    yes(u.tls.ca_pem.is_some()),
                    yes(u.tls.identity_pem.is_some()),
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
        Command::NodeConfig(args) => node_config(args),
        Command::Probe { url } => probe(&url),
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

fn serve(config: Config, args: ServeArgs) -> Result<()> {
    raise_open_files(config.limits.max_connections);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listeners = ferry::Listeners::bind(&config).await?;
        let admin = listeners.admin.as_ref().and_then(|l| l.local_addr().ok());
        tracing::info!(
            listen = %listeners.client.local_addr()?,
            admin = ?admin,
            data_dir = %config.data_dir.display(),
            default_upstream = %config.default_upstream,
            "ferry serving"
        );
        let (reload_tx, reloads) = tokio::sync::mpsc::channel(4);
        tokio::spawn(reload_on_sighup(args, reload_tx));
        ferry::run(config, listeners, shutdown_signal(), reloads).await?;
        Ok(())
    })
}

/// On SIGHUP, reads the configuration again (file and flags) and hands it to
/// the running Ferry; a configuration that does not validate changes nothing.
async fn reload_on_sighup(args: ServeArgs, reloads: tokio::sync::mpsc::Sender<Config>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        match load_config(&args) {
            Ok(config) => {
                if reloads.send(config).await.is_err() {
                    return;
                }
            }
            Err(e) => tracing::error!("configuration not reloaded: {e:#}"),
        }
    }
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

/// The admin API's bearer token, from `FERRY_ADMIN_TOKEN` when set.
fn with_admin_token(req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match std::env::var("FERRY_ADMIN_TOKEN") {
        Ok(t) if !t.trim().is_empty() => req.bearer_auth(t.trim()),
        _ => req,
    }
}

/// POSTs to a running Ferry's admin API, prints the JSON answer, and exits
/// non-zero unless it succeeded.
fn admin_post(admin: &str, endpoint: &str, query: &str) -> Result<ExitCode> {
    let url = format!("{}/admin/{endpoint}?{query}", admin.trim_end_matches('/'));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, body) = runtime.block_on(async {
        let resp = with_admin_token(reqwest::Client::new().post(&url))
            .send()
            .await?;
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
    use std::io::IsTerminal as _;
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("upstream", &args.upstream)
        .append_pair("repository", &args.repository)
        .append_pair("reference", &args.reference)
        .finish();
    if !std::io::stderr().is_terminal() {
        return admin_post(&args.admin, "prefetch", &query);
    }
    // On a terminal: progress on stderr as it goes, the report on stdout.
    let url = format!(
        "{}/admin/prefetch?{query}",
        args.admin.trim_end_matches('/')
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime
        .block_on(async {
            let mut resp = with_admin_token(reqwest::Client::new().post(&url))
                .header("accept", "application/x-ndjson")
                .send()
                .await?;
            let started = std::time::Instant::now();
            let mut pending = Vec::new();
            let mut last = None;
            while let Some(chunk) = resp.chunk().await? {
                pending.extend_from_slice(&chunk);
                while let Some(nl) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=nl).collect();
                    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&line) else {
                        continue;
                    };
                    if v.get("done").is_some() || v.get("error").is_some() {
                        last = Some(v);
                    } else {
                        eprint!("\r{}", progress_line(&v, started.elapsed()));
                    }
                }
            }
            eprintln!();
            let ok = last.as_ref().is_some_and(|v| v.get("done").is_some());
            if let Some(v) = last {
                println!("{v}");
            }
            Ok::<_, reqwest::Error>(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        })
        .map_err(Into::into)
}

/// `prefetch: 3/5 blobs, 120.4 MiB, 45.2 MiB/s`.
fn progress_line(v: &serde_json::Value, elapsed: std::time::Duration) -> String {
    let n = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    let mib = n("bytes") as f64 / (1024.0 * 1024.0);
    let rate = mib / elapsed.as_secs_f64().max(0.001);
    format!(
        "prefetch: {}/{} blobs, {mib:.1} MiB, {rate:.1} MiB/s   ",
        n("blobs_done"),
        n("blobs")
    )
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

fn node_config(args: NodeConfigArgs) -> Result<ExitCode> {
    use ferry::node_config::{apply, plan, NodeTargets, Step};
    let raw = match &args.config {
        Some(p) => RawConfig::from_toml(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("in {}", p.display()))?,
        None => RawConfig::default(),
    };
    let config = Config::from_raw(raw, Overrides::default()).context("invalid configuration")?;
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

fn probe(url: &str) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let ok = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .build()?;
        Ok::<_, reqwest::Error>(client.get(url).send().await?.status().is_success())
    });
    Ok(match ok {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) | Err(_) => ExitCode::from(1),
    })
}

/// Every connection, blob being read and upstream transfer holds a file
/// descriptor: raises the soft open-file limit to the hard one and says what the
/// ceiling is, warning when `max_connections` cannot fit under it.
fn raise_open_files(max_connections: usize) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    let ceiling = match setrlimit(Resource::Nofile, raised) {
        Ok(()) => limit.maximum,
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-file limit");
            limit.current
        }
    };
    let ceiling = ceiling.unwrap_or(u64::MAX);
    tracing::info!(open_files = ceiling, "open-file limit");
    // Each connection needs one descriptor; blob reads, fetches, the index and
    // the listeners need more.
    if (max_connections as u64).saturating_add(1024) > ceiling {
        tracing::warn!(
            max_connections,
            open_files = ceiling,
            "limits.max_connections is close to the open-file limit: accepts will fail with EMFILE before the connection limit is reached"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_shows_blobs_bytes_and_rate() {
        let v = serde_json::json!({"blobs_done": 3, "blobs": 5, "bytes": 10 * 1024 * 1024});
        let line = progress_line(&v, std::time::Duration::from_secs(2));
        assert!(
            line.starts_with("prefetch: 3/5 blobs, 10.0 MiB, 5.0 MiB/s"),
            "{line}"
        );
    }
}
