//! `ferry serve`: binds every socket, then hands over to [`ferry::run`] until
//! SIGTERM or Ctrl-C; SIGHUP reloads the configuration.

use super::{load_config, ServeArgs};
use anyhow::{Context, Result};
use ferry::config::Config;

/// Serves `config` (already validated, from `args`) until a shutdown signal.
pub fn run(config: Config, args: ServeArgs) -> Result<()> {
    // A data directory this build cannot read is refused before any socket
    // is bound (and before it is touched), like a bad configuration.
    ferry_storage::format::check(&config.data_dir)?;
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

/// Resolves at SIGTERM or Ctrl-C.
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
