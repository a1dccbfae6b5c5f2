//! Serving a listener the caller bound: accepting connections (HTTP/1.1 and
//! HTTP/2, optionally over TLS), handing each request to a service, and
//! stopping gracefully: no new connections, open requests finish (bounded).
//!
//! What one client may cost is bounded here ([`Limits`]):
//! - at `max_connections` open, Ferry stops accepting until one closes: the
//!   kernel's backlog holds newcomers, and the connections it has keep being served;
//! - a connection with no request in flight is closed once it has been idle for
//!   `header_timeout`: it must finish its TLS handshake and send a whole request
//!   head within that long of opening, and again after each response. So a
//!   client that never sends, or sends a byte a second (slowloris), costs one
//!   socket for at most that long; this is also the keep-alive idle timeout;
//! - request heads over `max_header_bytes` get `431`; HTTP/2 connections get
//!   `h2_max_streams` concurrent streams and are closed after
//!   `h2_max_pending_resets` streams reset before being handled ("rapid reset").

use super::responses::Body;
use crate::config::Limits;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use parking_lot::Mutex;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

/// How a listener is served.
#[derive(Clone)]
pub struct Serving {
    /// TLS, or plain HTTP when `None`.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// How long open connections may take to finish once stopping.
    pub grace: Duration,
    /// Connections, request heads, HTTP/2.
    pub limits: Limits,
}

/// Accepts connections on `listener` until `stop` turns true, then waits up to
/// `grace` for open connections to finish their requests, and says how many
/// it had to cut short.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    serving: Serving,
    mut stop: watch::Receiver<bool>,
    handler: F,
) where
    F: Fn(http::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = http::Response<Body>> + Send + 'static,
{
    let Serving { tls, grace, limits } = serving;
    let graceful = GracefulShutdown::new();
    let builder = builder(&limits);
    let open = Arc::new(AtomicUsize::new(0));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut at_limit_since: Option<Instant> = None;
    // Every connection's task, so the ones still busy at the deadline can be ended.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        if slots.available_permits() == 0 && at_limit_since.is_none() {
            tracing::warn!(
                max_connections = limits.max_connections,
                "connection limit reached: not accepting until a connection closes"
            );
            at_limit_since = Some(Instant::now());
        }
        let slot = tokio::select! {
            () = stopped(&mut stop) => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        if let Some(since) = at_limit_since.take() {
            tracing::info!(
                waited_ms = since.elapsed().as_millis() as u64,
                "accepting connections again"
            );
        }
        let (stream, _) = tokio::select! {
            () = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (handler, builder, tls) = (handler.clone(), builder.clone(), tls.clone());
        let watcher = graceful.watcher();
        let counted = Open::new(&open);
        let idle_limit = limits.header_timeout;
        while connections.try_join_next().is_some() {}
        connections.spawn(async move {
            let _held = (counted, slot);
            let activity = Arc::new(Activity::new());
            let service = {
                let activity = activity.clone();
                service_fn(move |req| {
                    let busy = activity.begin();
                    let fut = handler(req);
                    async move {
                        Ok::<_, Infallible>(fut.await.map(|b| Tracked {
                            body: b,
                            _busy: busy,
                        }))
                    }
                })
            };
            let serve = async {
                match tls {
                    None => {
                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                        watcher.watch(conn.into_owned()).await
                    }
                    Some(acceptor) => {
                        let stream = match acceptor.accept(stream).await {
                            Ok(s) => s,
                            Err(e) => {
                                tracing::debug!(error = %e, "TLS handshake failed");
                                return Ok(());
                            }
                        };
                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                        watcher.watch(conn.into_owned()).await
                    }
                }
            };
            let result = tokio::select! {
                r = serve => r,
                () = activity.idle_for(idle_limit) => {
                    tracing::debug!("closing a connection idle for header_timeout");
                    Ok(())
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(
                connections = open.load(Ordering::Relaxed),
                "connections still busy at the end of shutdown_grace ({}s); closing them",
                grace.as_secs()
            );
        }
    }
    connections.abort_all();
}

/// The HTTP/1 and HTTP/2 settings every connection shares.
fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_streams)
        .max_pending_accept_reset_streams(limits.h2_max_pending_resets)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    b
}

/// Whether a connection has a request in flight, and since when it has not.
struct Activity {
    in_flight: AtomicUsize,
    /// When the connection last became idle (opened, or its last response ended).
    idle_since: Mutex<Instant>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            in_flight: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        }
    }

    /// A request started; it ends when the returned guard (held by its
    /// response body) is dropped.
    fn begin(self: &Arc<Activity>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// Resolves once the connection has had no request in flight for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let deadline = if self.in_flight.load(Ordering::Acquire) == 0 {
                *self.idle_since.lock() + limit
            } else {
                Instant::now() + limit
            };
            if deadline <= Instant::now() && self.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A request in flight on its connection.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.idle_since.lock() = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that marks its request finished when hyper is done with it.
struct Tracked {
    body: Body,
    _busy: Busy,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Counts a connection while it is open.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(n: &Arc<AtomicUsize>) -> Open {
        n.fetch_add(1, Ordering::Relaxed);
        Open(n.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
