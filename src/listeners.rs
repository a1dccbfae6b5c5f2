//! The listeners Ferry serves, each on its own accept loop from the moment it
//! is bound. Until the cache is open every listener answers as
//! [`starting`] (`/healthz` 200, everything else 503); [`Gates::open`] then
//! hands each its service.
//!
//! - [`serve_client`]: the pull API, `/metrics`, `/healthz`, `/readyz`, over
//!   TLS when configured;
//! - [`serve_admin`]: purge, prefetch, fsck;
//! - [`serve_webhook`]: the admission webhook, always over TLS.
//!
//! Each loop stops accepting when `stop` turns true and lets its open requests
//! finish within `shutdown_grace`; [`AcceptLoops::join`] waits for them all.

use crate::admission::Admission;
use crate::config::tls::CertFiles;
use crate::config::webhook::WebhookConfig;
use crate::config::Config;
use crate::proxy::Proxy;
use crate::server::Body;
use crate::server::{accept, admin, starting, App};
use futures_util::future::{ready, Either, Ready};
use http::{Request, Response};
use hyper::body::Incoming;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often the TLS certificate files are checked for a rotation.
const CERT_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// One listener's service, set once when the cache is open; until then its
/// requests are answered as [`starting`]. Read per request with one atomic
/// load.
struct Gate<T>(Arc<OnceLock<Arc<T>>>);

impl<T> Gate<T> {
    fn closed() -> Gate<T> {
        Gate(Arc::new(OnceLock::new()))
    }

    fn open(&self, service: Arc<T>) {
        let _ = self.0.set(service);
    }

    /// A handler for `accept::serve`: `handle` with the service once the
    /// gate is open, [`starting`] before.
    fn handler<F, Fut>(
        &self,
        handle: F,
    ) -> impl Fn(Request<Incoming>) -> Either<Fut, Ready<Response<Body>>> + Clone + Send + Sync + 'static
    where
        T: Send + Sync + 'static,
        F: Fn(Arc<T>, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let gate = self.0.clone();
        move |req| match gate.get() {
            Some(service) => Either::Left(handle(service.clone(), req)),
            None => Either::Right(ready(starting(&req))),
        }
    }
}

/// What each listener serves once the cache is open, so the sockets answer
/// (503, `/healthz` 200) while the store is still locked.
pub(crate) struct Gates {
    /// The client port's service.
    client: Gate<App>,
    /// The cache the admin API acts on.
    admin: Gate<Proxy>,
    /// The admission webhook.
    webhook: Gate<Admission>,
}

impl Gates {
    /// Every listener answering as [`starting`].
    pub(crate) fn closed() -> Gates {
        Gates {
            client: Gate::closed(),
            admin: Gate::closed(),
            webhook: Gate::closed(),
        }
    }

    /// Hands each listener its service. The client port comes last, so
    /// `/readyz` says ready only once the admin API and the webhook answer too.
    pub(crate) fn open(&self, app: Arc<App>, proxy: Arc<Proxy>, admission: Option<Arc<Admission>>) {
        self.admin.open(proxy);
        if let Some(admission) = admission {
            self.webhook.open(admission);
        }
        self.client.open(app);
    }
}

/// The accept loops serving the listeners, to be joined at shutdown.
pub(crate) struct AcceptLoops {
    /// The client port's.
    pub(crate) client: JoinHandle<()>,
    /// The admin API's, when it listens.
    pub(crate) admin: Option<JoinHandle<()>>,
    /// The admission webhook's, when it listens.
    pub(crate) webhook: Option<JoinHandle<()>>,
}

impl AcceptLoops {
    /// Waits until every loop has stopped (each finishes its open requests
    /// within `shutdown_grace` once `stop` turns true).
    pub(crate) async fn join(self) {
        let _ = self.client.await;
        if let Some(admin) = self.admin {
            let _ = admin.await;
        }
        if let Some(webhook) = self.webhook {
            let _ = webhook.await;
        }
    }
}

/// Serves the pull API on `listener` (TLS when `config.tls` is set, its
/// certificate reloaded when the files change).
pub(crate) fn serve_client(
    listener: TcpListener,
    config: &Config,
    stop: &watch::Receiver<bool>,
    gates: &Gates,
) -> JoinHandle<()> {
    let tls = config.tls.as_ref().map(|t| {
        tokio::spawn(watch_certificate(t.certs.clone()));
        tokio_rustls::TlsAcceptor::from(t.server.clone())
    });
    tokio::spawn(accept::serve(
        listener,
        accept::Serving {
            tls,
            ..plain(config)
        },
        stop.clone(),
        gates
            .client
            .handler(|app, req| async move { app.handle(req).await }),
    ))
}

/// Serves the admin API on `listener`, plain HTTP, behind the admin token when
/// one is configured (without one, anyone on the host may purge: logged).
pub(crate) fn serve_admin(
    listener: TcpListener,
    config: &Config,
    stop: &watch::Receiver<bool>,
    gates: &Gates,
) -> JoinHandle<()> {
    let token = config.admin_token.clone().map(Arc::new);
    if let Ok(addr) = listener.local_addr() {
        match &token {
            Some(_) => tracing::info!(%addr, "admin API listening (bearer token required)"),
            None => tracing::warn!(
                %addr,
                "admin API listening without authentication: anyone on this host can purge the cache (set admin_token_file)"
            ),
        }
    }
    tokio::spawn(accept::serve(
        listener,
        plain(config),
        stop.clone(),
        gates.admin.handler(move |proxy, req| {
            let token = token.clone();
            async move { admin::handle(proxy, token.as_deref(), req).await }
        }),
    ))
}

/// Serves the admission webhook on `listener` over TLS (its certificate
/// reloaded when the files change).
pub(crate) fn serve_webhook(
    listener: TcpListener,
    webhook: &WebhookConfig,
    config: &Config,
    stop: &watch::Receiver<bool>,
    gates: &Gates,
) -> JoinHandle<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admission webhook listening");
    }
    tokio::spawn(watch_certificate(webhook.tls.certs.clone()));
    let tls = tokio_rustls::TlsAcceptor::from(webhook.tls.server.clone());
    tokio::spawn(accept::serve(
        listener,
        accept::Serving {
            tls: Some(tls),
            ..plain(config)
        },
        stop.clone(),
        gates
            .webhook
            .handler(|admission, req| async move { admission.handle(req).await }),
    ))
}

/// Plain HTTP with the configured limits and shutdown grace.
fn plain(config: &Config) -> accept::Serving {
    accept::Serving {
        tls: None,
        grace: config.shutdown_grace,
        limits: config.limits,
    }
}

/// Reloads a listener's certificate when its files change (cert-manager
/// rotates them in place); new connections get the new one.
async fn watch_certificate(certs: Arc<CertFiles>) {
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
