//! Ferry: a pull-through caching proxy for OCI/Docker registries.
//!
//! Nodes point at Ferry as a registry mirror; Ferry answers the pull API from a
//! verified, content-addressed store and asks upstream registries only when the
//! freshness policy says so. Layout:
//!
//! - [`config`]: TOML + flags → validated [`Config`];
//! - [`oci`]: protocol types with no I/O (routes, names, digests, ranges, errors);
//! - [`server`]: the HTTP edge (dispatch, responses, errors, admin API, accept loops);
//! - [`access`]: who may pull (client authentication);
//! - [`admission`]: the Kubernetes webhook that pins images to digests;
//! - [`events`]: registry push events, parsed from every sender's format;
//! - [`node_config`]: each node's client mirror configuration, from Ferry's upstreams;
//! - [`upstream`]: one client per upstream registry (auth, redirects, 429) and the router;
//! - [`proxy`]: the cache (freshness, single-flight, blobs, stale-if-error);
//! - [`bucket`]: the shared S3 bucket behind the local store (`[bucket]`);
//! - [`metrics`]: the Prometheus families;
//! - storage lives in the `ferry-storage` crate.
//!
//! [`Ferry::open`] builds everything from a `Config`; [`Ferry::serve`] runs it
//! on listeners the caller bound until a shutdown future resolves. Tests bind
//! `127.0.0.1:0` and start real proxies this way.

#![warn(missing_docs)]

pub mod access;
pub mod admission;
pub mod bounded;
pub mod bucket;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod events;
mod listeners;
pub mod metrics;
pub mod node_config;
pub mod oci;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod upstream;

#[cfg(test)]
mod fuzz;

pub use config::Config;

use bucket::Bucket;
use clock::Clock;
use cluster::Cluster;
use ferry_storage::{Store, StoreOptions};
use listeners::{serve_admin, serve_client, serve_webhook, AcceptLoops, Gates};
use metrics::Metrics;
use proxy::Proxy;
use server::App;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use upstream::{Router, Upstream};

/// How often batched blob access times are written and the size budget checked.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(30);

/// Why Ferry could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened (permissions, a second Ferry on it, corruption).
    #[error("cannot open the store in {path}: {source}")]
    Store {
        /// The data directory.
        path: String,
        /// Why.
        source: ferry_storage::StoreError,
    },
    /// The shared bucket's client could not be built.
    #[error("cannot set up the bucket client: {0}")]
    Bucket(#[source] object_store::Error),
    /// An upstream's HTTP client could not be built (TLS setup).
    #[error("cannot build the HTTP client for upstream {name}: {source}")]
    Client {
        /// The upstream.
        name: String,
        /// Why.
        source: reqwest::Error,
    },
}

/// The sockets Ferry serves, bound by the caller (so tests can bind port 0).
pub struct Listeners {
    /// The pull API, `/metrics`, `/healthz`.
    pub client: TcpListener,
    /// The admin API, when configured.
    pub admin: Option<TcpListener>,
    /// The admission webhook (HTTPS), when configured.
    pub webhook: Option<TcpListener>,
}

impl Listeners {
    /// Binds every address `config` names.
    pub async fn bind(config: &Config) -> std::io::Result<Listeners> {
        let client = bind(config.listen).await?;
        let admin = match config.admin_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let webhook = match &config.webhook {
            Some(w) => Some(bind(w.listen).await?),
            None => None,
        };
        Ok(Listeners {
            client,
            admin,
            webhook,
        })
    }
}

async fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// A ready-to-serve Ferry: store opened, upstream clients built.
pub struct Ferry {
    proxy: Arc<Proxy>,
    config: Config,
}

impl Ferry {
    /// Opens the store and builds the upstream clients.
    pub fn open(config: Config) -> Result<Ferry, StartError> {
        Ferry::open_with_clock(config, Clock::System)
    }

    /// Like [`open`](Self::open), with a clock tests can move.
    pub fn open_with_clock(config: Config, clock: Clock) -> Result<Ferry, StartError> {
        Ferry::open_parts(config, clock, None)
    }

    /// Like [`open_with_clock`](Self::open_with_clock), with `store` as the
    /// `[bucket]` the configuration names (tests: an in-memory object store).
    pub fn open_with_bucket(
        config: Config,
        clock: Clock,
        store: Arc<dyn object_store::ObjectStore>,
    ) -> Result<Ferry, StartError> {
        Ferry::open_parts(config, clock, Some(store))
    }

    fn open_parts(
        config: Config,
        clock: Clock,
        bucket_store: Option<Arc<dyn object_store::ObjectStore>>,
    ) -> Result<Ferry, StartError> {
        let mut options = StoreOptions::new(&config.data_dir);
        options.max_size = config.cache.max_size;
        options.high_watermark = config.cache.high_watermark;
        options.low_watermark = config.cache.low_watermark;
        let store = Store::open(options).map_err(|source| StartError::Store {
            path: config.data_dir.display().to_string(),
            source,
        })?;
        let metrics = Arc::new(Metrics::new());
        let mut upstreams = Vec::new();
        for u in &config.upstreams {
            let client = Upstream::new(u.clone(), config.timeouts, metrics.clone(), clock.clone())
                .map_err(|source| StartError::Client {
                    name: u.name.clone(),
                    source,
                })?;
            upstreams.push(Arc::new(client));
        }
        let router = Router::new(upstreams, &config.default_upstream);
        let bucket = match (&config.bucket, bucket_store) {
            (Some(b), Some(over)) => Some(Bucket::over(over, b, metrics.clone(), clock.clone())),
            (Some(b), None) => Some(
                Bucket::connect(b, metrics.clone(), clock.clone()).map_err(StartError::Bucket)?,
            ),
            (None, _) => None,
        };
        let cluster = match &config.cluster {
            Some(c) => Some(Arc::new(
                Cluster::new(c, config.timeouts, metrics.clone(), clock.clone()).map_err(
                    |source| StartError::Client {
                        name: "(cluster peers)".into(),
                        source,
                    },
                )?,
            )),
            None => None,
        };
        let proxy = Arc::new(Proxy::new(
            store,
            bucket.map(Arc::new),
            cluster,
            router,
            metrics,
            clock,
            config.limits.max_fetches,
        ));
        Ok(Ferry { proxy, config })
    }

    /// The cache, for embedding and tests.
    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    /// The client-port service, to drive without a socket.
    pub fn app(&self) -> Arc<App> {
        Arc::new(App::new(self.proxy.clone(), &self.config))
    }

    /// Serves `listeners` until `shutdown` resolves, then lets open requests
    /// finish and blob fetches in flight land, within `shutdown_grace`.
    pub async fn serve(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        let config = self.config.clone();
        let (_keep, reloads) = tokio::sync::mpsc::channel(1);
        let _ = serve_gated(config, listeners, shutdown, reloads, |_| async move {
            Ok(Some(self))
        })
        .await;
    }
}

/// Runs Ferry on `listeners` from the first moment: while the store opens (a
/// previous Ferry may still hold its lock during a rolling update), `/healthz`
/// answers (alive) and `/readyz` and the pull API answer `503`. Then it serves
/// until `shutdown` resolves, and stops within `shutdown_grace`.
///
/// Each configuration received on `reloads` (SIGHUP) is applied where that is
/// safe (see [`reload`]), and what was applied or refused is logged.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
    reloads: tokio::sync::mpsc::Receiver<Config>,
) -> Result<(), StartError> {
    let cfg = config.clone();
    serve_gated(config, listeners, shutdown, reloads, move |mut stop| async move {
        let mut logged = false;
        loop {
            match Ferry::open(cfg.clone()) {
                Ok(f) => return Ok(Some(f)),
                Err(StartError::Store { source, .. }) if source.is_locked() => {
                    if !logged {
                        tracing::warn!(error = %source, "the store is locked (another Ferry still running?); not ready until it is free");
                        logged = true;
                    }
                }
                Err(e) => return Err(e),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.wait_for(|s| *s) => return Ok(None),
            }
        }
    })
    .await
}

/// Serves the listeners from the start; the cache answers once `open` yields a
/// Ferry (`Ok(None)`: shutdown came first).
async fn serve_gated<F, Fut>(
    config: Config,
    listeners: Listeners,
    signal: impl Future<Output = ()> + Send + 'static,
    reloads: tokio::sync::mpsc::Receiver<Config>,
    open: F,
) -> Result<(), StartError>
where
    F: FnOnce(watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = Result<Option<Ferry>, StartError>>,
{
    // `stop` turns true when `signal` resolves: every loop watches it.
    let (stop_tx, mut stop) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let on_signal = stop_tx.clone();
    tokio::spawn(async move {
        signal.await;
        let _ = on_signal.send(true);
    });
    let gates = Gates::closed();
    let loops = AcceptLoops {
        admin: listeners
            .admin
            .map(|l| serve_admin(l, &config, &stop, &gates)),
        webhook: listeners
            .webhook
            .zip(config.webhook.as_ref())
            .map(|(l, w)| serve_webhook(l, w, &config, &stop, &gates)),
        client: serve_client(listeners.client, &config, &stop, &gates),
    };
    let started = std::time::Instant::now();
    let ferry = match open(stop.clone()).await {
        Ok(Some(f)) => f,
        other => {
            let _ = stop_tx.send(true);
            // The admin and webhook loops stop on the same signal, unawaited.
            let _ = loops.client.await;
            return other.map(drop);
        }
    };
    let (app, proxy) = (ferry.app(), ferry.proxy.clone());
    let admission = config
        .webhook
        .as_ref()
        .map(|w| Arc::new(admission::Admission::new(proxy.clone(), w.clone())));
    gates.open(app.clone(), proxy.clone(), admission);
    let (blobs, bytes) = proxy.store_usage();
    tracing::info!(
        after_ms = started.elapsed().as_millis() as u64,
        blobs,
        bytes,
        "ready"
    );
    let background = [
        tokio::spawn(maintain(proxy.clone())),
        tokio::spawn(apply_reloads(proxy.clone(), config.clone(), reloads)),
    ];
    let _ = stop.wait_for(|s| *s).await;
    shutdown(&app, loops, background, &proxy, config.shutdown_grace).await;
    Ok(())
}

/// Stops a serving Ferry once `stop` has turned true (on which every accept
/// loop stops accepting), in this order:
/// 1. drain: `/readyz` turns 503 so load balancers move on; requests are
///    still answered;
/// 2. join the accept loops: open requests finish, within `shutdown_grace`;
/// 3. stop the maintenance and reload loops;
/// 4. let blob fetches in flight land within what is left of
///    `shutdown_grace`: a fetch whose clients are served may still be making
///    its blob durable. What is cut short is logged.
async fn shutdown(
    app: &App,
    loops: AcceptLoops,
    background: [JoinHandle<()>; 2],
    proxy: &Proxy,
    grace: Duration,
) {
    app.drain();
    let stopping = std::time::Instant::now();
    loops.join().await;
    for task in background {
        task.abort();
    }
    let left = grace.saturating_sub(stopping.elapsed());
    if !proxy.shutdown(left).await {
        tracing::warn!(
            in_flight = proxy.fetches_in_flight(),
            "blob fetches cut short at the end of shutdown_grace ({}s); their temp files are swept at the next start",
            grace.as_secs()
        );
    }
    tracing::info!(took_ms = stopping.elapsed().as_millis() as u64, "stopped");
}

/// Applies each configuration received on `reloads` where that is safe (see
/// [`reload`]), and logs what was applied or needs a restart.
async fn apply_reloads(
    proxy: Arc<Proxy>,
    mut current: Config,
    mut reloads: tokio::sync::mpsc::Receiver<Config>,
) {
    while let Some(new) = reloads.recv().await {
        let r = reload::apply(&proxy, &current, &new);
        if r.applied.is_empty() && r.need_restart.is_empty() {
            tracing::info!("configuration reloaded: nothing changed");
        }
        for what in &r.applied {
            tracing::info!("configuration reloaded: {what}");
        }
        for why in &r.need_restart {
            tracing::warn!("configuration reload: {why}");
        }
        current = new;
    }
}

/// Periodic upkeep: flush batched access times and keep the store in budget;
/// in a cluster, keep the member view fresh; with a bucket, make the uploads
/// that were skipped.
async fn maintain(proxy: Arc<Proxy>) {
    let members = async {
        match proxy.cluster() {
            Some(c) => c.clone().keep_fresh().await,
            None => std::future::pending().await,
        }
    };
    tokio::join!(
        maintain_store(&proxy),
        members,
        proxy.keep_uploads_caught_up()
    );
}

async fn maintain_store(proxy: &Proxy) {
    let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = proxy.maintain().await {
            tracing::error!(error = %e, "store maintenance failed");
        }
    }
}
