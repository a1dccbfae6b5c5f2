//! The `ferry` command: parse flags and dispatch to a subcommand in [`cli`];
//! every configuration is validated before any socket is bound, and an error
//! exits 2.

mod cli;

use clap::{Parser, Subcommand};
use cli::fsck::FsckArgs;
use cli::node_config::NodeConfigArgs;
use cli::prefetch::PrefetchArgs;
use cli::probe::ProbeArgs;
use cli::purge::PurgeArgs;
use cli::ServeArgs;
use ferry::config::LogFormat;
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
    Fsck(FsckArgs),
    /// Remove a digest, a tag or a repository's tags from the cache.
    Purge(PurgeArgs),
    /// Cache an image (every platform, every layer) through a running Ferry.
    Prefetch(PrefetchArgs),
    /// Write this node's mirror configuration for containerd, CRI-O/podman and
    /// Docker from Ferry's upstreams (idempotent; --remove takes it back).
    NodeConfig(NodeConfigArgs),
    /// Exit 0 if URL answers 2xx within 5 s, else 1 (health checks in images
    /// without curl).
    Probe(ProbeArgs),
}

#[derive(Subcommand)]
enum ConfigCommand {
    Check(ServeArgs),
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

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match &command {
        // `serve` logs in the configured format, known once the configuration is.
        Command::Serve(_) => {}
        _ => cli::init_tracing(LogFormat::Text),
    }
    match command {
        Command::Serve(args) => {
            let config = cli::load_config(&args)?;
            cli::init_tracing(config.log_format);
            cli::serve::run(config, args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Check(args),
        } => cli::config_check::run(&args),
        Command::Fsck(args) => cli::fsck::run(args),
        Command::Purge(args) => cli::purge::run(&args),
        Command::Prefetch(args) => cli::prefetch::run(&args),
        Command::NodeConfig(args) => cli::node_config::run(&args),
        Command::Probe(args) => cli::probe::run(&args),
    }
}
