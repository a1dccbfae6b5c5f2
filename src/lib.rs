//! Ferry: a pull-through caching proxy for OCI/Docker registries.
//!
//! Nodes point at Ferry as a registry mirror; Ferry answers the pull API from a
//! verified, content-addressed store and asks upstream registries only when the
//! freshness policy says so. Layout:
//!
//! - [`config`]: TOML + flags → validated [`Config`];
//! - [`oci`]: protocol types with no I/O (routes, names, digests, ranges, errors);
//! - [`server`]: the hyper service and response building; the admin API;
//! - [`upstream`]: one client per upstream registry (auth, redirects, 429) and the router;
//! - [`proxy`]: the cache logic (freshness, single-flight, stale-if-error);
//! - [`metrics`]: the Prometheus counters;
//! - storage lives in the `ferry-storage` crate.
//!
//! [`Ferry::open`] builds everything from a `Config`; [`Ferry::serve`] runs it on a
//! listener until a shutdown future resolves. Tests start real proxies this way.

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
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
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
    #[error("cannot open the store in {path}: {source}")]
    Store {
        path: String,
        source: ferry_storage::StoreError,
    },
    #[error("cannot build the HTTP client for upstream {name}: {source}")]
    Client {
        name: String,
        source: reqwest::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// A ready-to-serve Ferry: store opened, upstream clients built.
pub struct Ferry {
    proxy: Arc<Proxy>,
    config: Config,
}

impl Ferry {
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
        let metrics = Arc::new(Metrics::default());
        let mut upstreams = Vec::new();
        for u in &config.upstreams {
            let client = Upstream::new(u.clone(), config.timeouts, metrics.clone(), clock.clone())
                .map_err(|source| StartError::Client {
                    name: u.name.clone(),
                    source,
                })?;
            upstreams.push(Arc::new(client));
        }
        let router = Router::new(upstreams, config.default_upstream);
        let proxy = Arc::new(Proxy::new(store, router, metrics, clock));
        Ok(Ferry { proxy, config })
    }

    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    /// Serves clients on `listener` (and the admin API, if configured) until
    /// `shutdown` resolves, then lets open requests finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let app = Arc::new(App {
            proxy: self.proxy.clone(),
            access_log: self.config.access_log,
            client_auth: self.config.client_auth.clone(),
        });
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        if let Some(addr) = self.config.admin_listen {
            let admin = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Listen {
                    addr: addr.to_string(),
                    source,
                })?;
            tracing::info!(%addr, "admin API listening");
            let proxy = self.proxy.clone();
            let stop = stop_rx.clone();
            tokio::spawn(accept_loop(admin, None, stop, move |req| {
                admin_service(proxy.clone(), req)
            }));
        }
        let maintenance = tokio::spawn(maintain(self.proxy.clone()));
        let stop = stop_rx.clone();
        let tls = self.config.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        accept_loop(listener, tls, stop, move |req| {
            server::handle(app.clone(), req)
        })
        .await;
        maintenance.abort();
        // A fetch whose clients are served may still be making its blob durable.
        if !self.proxy.fetches_landed(Duration::from_secs(10)).await {
            tracing::warn!("blob fetches still in flight after 10s; stopping anyway");
        }
        let store = self.proxy.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.flush_access_times()).await;
        Ok(())
    }
}

fn admin_service(
    proxy: Arc<Proxy>,
    req: http::Request<hyper::body::Incoming>,
) -> impl Future<Output = Result<http::Response<server::Body>, std::convert::Infallible>> {
    server::admin::handle(proxy, req)
}

/// A client that connects to the TLS port and sends nothing is dropped after this.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until `stop` turns true, then waits (bounded) for open
/// connections to finish their requests.
async fn accept_loop<F, Fut>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    handler: F,
) where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<http::Response<server::Body>, std::convert::Infallible>>
        + Send
        + 'static,
{
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (handler, builder, tls) = (handler.clone(), builder.clone(), tls.clone());
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let service = service_fn(handler);
                    let result = match tls {
                        None => {
                            let conn = builder.serve_connection(TokioIo::new(stream), service);
                            watcher.watch(conn.into_owned()).await
                        }
                        Some(acceptor) => {
                            let handshake =
                                tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                            let stream = match handshake.await {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    tracing::debug!(error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!("TLS handshake timed out");
                                    return;
                                }
                            };
                            let conn = builder.serve_connection(TokioIo::new(stream), service);
                            watcher.watch(conn.into_owned()).await
                        }
                    };
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
        }
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(10)) => {
            tracing::warn!("connections still open after 10s; closing");
        }
    }
}

async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Periodic upkeep: flush batched access times and keep the store in budget.
async fn maintain(proxy: Arc<Proxy>) {
    let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
    tick.tick().await;
    loop {
        tick.tick().await;
        let store = proxy.store.clone();
        let result = tokio::task::spawn_blocking(move || {
            store.flush_access_times()?;
            store.evict_if_over_budget()
        })
        .await;
        match result {
            Ok(Err(e)) => tracing::error!(error = %e, "store maintenance failed"),
            Err(e) => tracing::error!(error = %e, "store maintenance panicked"),
            Ok(Ok(_)) => {}
        }
    }
}

/// Opens the store and upstream clients from `config` and serves on `listener`
/// until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    Ferry::open(config)?.serve(listener, shutdown).await
}
