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
//! - [`upstream`]: one client per upstream registry (auth, redirects, 429) and the router;
//! - [`proxy`]: the cache (freshness, single-flight, blobs, stale-if-error);
//! - [`metrics`]: the Prometheus families;
//! - storage lives in the `ferry-storage` crate.
//!
//! [`Ferry::open`] builds everything from a `Config`; [`Ferry::serve`] runs it
//! on listeners the caller bound until a shutdown future resolves. Tests bind
//! `127.0.0.1:0` and start real proxies this way.

#![warn(missing_docs)]

pub mod access;
pub mod clock;
pub mod config;
pub mod metrics;
pub mod oci;
pub mod proxy;
pub mod server;
pub mod upstream;

pub use config::Config;

use clock::Clock;
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
/// How long blob fetches in flight may take to land at shutdown.
const LANDING_TIMEOUT: Duration = Duration::from_secs(10);

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
}

impl Listeners {
    /// Binds every address `config` names.
    pub async fn bind(config: &Config) -> std::io::Result<Listeners> {
        let client = bind(config.listen).await?;
        let admin = match config.admin_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        Ok(Listeners { client, admin })
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
        let proxy = Arc::new(Proxy::new(store, router, metrics, clock));
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
    /// finish and blob fetches in flight land (both bounded).
    pub async fn serve(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        let app = self.app();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        if let Some(admin) = listeners.admin {
            if let Ok(addr) = admin.local_addr() {
                tracing::info!(%addr, "admin API listening");
            }
            let proxy = self.proxy.clone();
            tokio::spawn(server::accept::serve(
                admin,
                None,
                stop_rx.clone(),
                move |req| server::admin::handle(proxy.clone(), req),
            ));
        }
        let maintenance = tokio::spawn(maintain(self.proxy.clone()));
        let tls = self.config.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        server::accept::serve(listeners.client, tls, stop_rx, move |req| {
            let app = app.clone();
            async move { app.handle(req).await }
        })
        .await;
        maintenance.abort();
        // A fetch whose clients are served may still be making its blob durable.
        if !self.proxy.shutdown(LANDING_TIMEOUT).await {
            tracing::warn!(
                in_flight = self.proxy.fetches_in_flight(),
                "blob fetches still in flight after {}s; stopping anyway",
                LANDING_TIMEOUT.as_secs()
            );
        }
    }
}

/// Periodic upkeep: flush batched access times and keep the store in budget.
async fn maintain(proxy: Arc<Proxy>) {
    let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = proxy.maintain().await {
            tracing::error!(error = %e, "store maintenance failed");
        }
    }
}
