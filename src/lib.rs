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
use metrics::Metrics;
use proxy::Proxy;
use server::App;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
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
                Cluster::new(c, metrics.clone(), clock.clone()).map_err(|source| {
                    StartError::Client {
                        name: "(cluster peers)".into(),
                        source,
                    }
                })?,
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
    shutdown: impl Future<Output = ()> + Send + 'static,
    mut reloads: tokio::sync::mpsc::Receiver<Config>,
    open: F,
) -> Result<(), StartError>
where
    F: FnOnce(tokio::sync::watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = Result<Option<Ferry>, StartError>>,
{
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let (gate_tx, gate) = tokio::sync::watch::channel::<Option<Arc<App>>>(None);
    let (proxy_tx, proxy_gate) = tokio::sync::watch::channel::<Option<Arc<Proxy>>>(None);
    let on_signal = stop_tx.clone();
    tokio::spawn(async move {
        shutdown.await;
        let _ = on_signal.send(true);
    });
    let plain = server::accept::Serving {
        tls: None,
        grace: config.shutdown_grace,
        limits: config.limits,
    };
    let admin_token = config.admin_token.clone().map(Arc::new);
    let admin = listeners.admin.map(|admin| {
        if let Ok(addr) = admin.local_addr() {
            match &admin_token {
                Some(_) => tracing::info!(%addr, "admin API listening (bearer token required)"),
                None => tracing::warn!(
                    %addr,
                    "admin API listening without authentication: anyone on this host can purge the cache (set admin_token_file)"
                ),
            }
        }
        tokio::spawn(server::accept::serve(
            admin,
            plain.clone(),
            stop_rx.clone(),
            move |req| {
                let proxy = proxy_gate.borrow().clone();
                let token = admin_token.clone();
                async move {
                    match proxy {
                        Some(p) => server::admin::handle(p, token.as_deref(), req).await,
                        None => server::starting(&req),
                    }
                }
            },
        ))
    });
    let (admission_tx, admission_gate) =
        tokio::sync::watch::channel::<Option<Arc<admission::Admission>>>(None);
    let webhook = match (listeners.webhook, &config.webhook) {
        (Some(listener), Some(w)) => {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "admission webhook listening");
            }
            tokio::spawn(watch_certificate(w.tls.certs.clone()));
            let acceptor = tokio_rustls::TlsAcceptor::from(w.tls.server.clone());
            let serving = server::accept::Serving {
                tls: Some(acceptor),
                ..plain.clone()
            };
            Some(tokio::spawn(server::accept::serve(
                listener,
                serving,
                stop_rx.clone(),
                move |req| {
                    let admission = admission_gate.borrow().clone();
                    async move {
                        match admission {
                            Some(a) => a.handle(req).await,
                            None => server::starting(&req),
                        }
                    }
                },
            )))
        }
        _ => None,
    };
    let tls = config
        .tls
        .as_ref()
        .map(|t| tokio_rustls::TlsAcceptor::from(t.server.clone()));
    if let Some(t) = &config.tls {
        tokio::spawn(watch_certificate(t.certs.clone()));
    }
    let started = std::time::Instant::now();
    let client = tokio::spawn(server::accept::serve(
        listeners.client,
        server::accept::Serving { tls, ..plain },
        stop_rx.clone(),
        move |req| {
            let app = gate.borrow().clone();
            async move {
                match app {
                    Some(app) => app.handle(req).await,
                    None => server::starting(&req),
                }
            }
        },
    ));
    let ferry = match open(stop_rx.clone()).await {
        Ok(Some(f)) => f,
        other => {
            let _ = stop_tx.send(true);
            let _ = client.await;
            return other.map(drop);
        }
    };
    let app = ferry.app();
    let proxy = ferry.proxy.clone();
    let _ = proxy_tx.send(Some(proxy.clone()));
    if let Some(w) = &config.webhook {
        let _ = admission_tx.send(Some(Arc::new(admission::Admission::new(
            proxy.clone(),
            w.clone(),
        ))));
    }
    let _ = gate_tx.send(Some(app.clone()));
    let (blobs, bytes) = proxy.store_usage();
    tracing::info!(
        after_ms = started.elapsed().as_millis() as u64,
        blobs,
        bytes,
        "ready"
    );
    let maintenance = tokio::spawn(maintain(proxy.clone()));
    let reloading = {
        let (proxy, mut current) = (proxy.clone(), config.clone());
        tokio::spawn(async move {
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
        })
    };
    let mut stop = stop_rx;
    let _ = stop.wait_for(|s| *s).await;
    app.drain();
    let stopping = std::time::Instant::now();
    let _ = client.await;
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    if let Some(webhook) = webhook {
        let _ = webhook.await;
    }
    maintenance.abort();
    reloading.abort();
    // A fetch whose clients are served may still be making its blob durable.
    let left = config.shutdown_grace.saturating_sub(stopping.elapsed());
    if !proxy.shutdown(left).await {
        tracing::warn!(
            in_flight = proxy.fetches_in_flight(),
            "blob fetches cut short at the end of shutdown_grace ({}s); their temp files are swept at the next start",
            config.shutdown_grace.as_secs()
        );
    }
    tracing::info!(took_ms = stopping.elapsed().as_millis() as u64, "stopped");
    Ok(())
}

/// How often the TLS certificate files are checked for a rotation.
const CERT_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// Reloads the client port's certificate when its files change (cert-manager
/// rotates them in place); new connections get the new one.
async fn watch_certificate(certs: Arc<config::tls::CertFiles>) {
    let mut tick = tokio::time::interval(CERT_CHECK_INTERVAL);
    let mut failing = false;
    loop {
        tick.tick().await;
        match certs.reload_if_changed() {
            Ok(true) => {
                let (cert, _) = certs.paths();
                tracing::info!(cert = %cert.display(), "TLS certificate reloaded");
                failing = false;
            }
            Ok(false) => {}
            Err(e) if !failing => {
                tracing::error!(error = %e, "TLS certificate changed but cannot be loaded; still serving the previous one");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

/// Periodic upkeep: flush batched access times and keep the store in budget;
/// in a cluster, keep the member view fresh.
async fn maintain(proxy: Arc<Proxy>) {
    let members = async {
        match proxy.cluster() {
            Some(c) => c.clone().keep_fresh().await,
            None => std::future::pending().await,
        }
    };
    tokio::join!(maintain_store(&proxy), members);
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
