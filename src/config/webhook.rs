//! `[webhook]`: the admission webhook's listener, certificate and policy.

use super::parse::{compile_all, err, parse_addr, ConfigError};
use super::raw::RawWebhook;
use super::tls::{self, Tls};
use regex::Regex;
use std::net::SocketAddr;

/// What to do with an image that cannot be resolved in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
    /// Admit the object unchanged, with a warning (the default: a registry
    /// outage never blocks a cluster).
    Allow,
    /// Refuse the object.
    Deny,
}

/// The admission webhook, validated.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// Its HTTPS address (the caller binds it).
    pub listen: SocketAddr,
    /// Its certificate (SAN `<service>.<namespace>.svc`) and, with
    /// `client_ca`, the API server's client-certificate check.
    pub tls: Tls,
    /// Also pin the pod templates of Deployments, StatefulSets, DaemonSets,
    /// ReplicaSets, Jobs and CronJobs.
    pub workloads: bool,
    /// An image that cannot be resolved: admit unchanged or refuse.
    pub on_error: OnError,
    /// Whole-reference regexes (as written, or normalised) never pinned.
    pub exclude: Vec<Regex>,
    /// Fetch a pinned image's blobs at once.
    pub warm: bool,
    /// Images warmed at once.
    pub warm_concurrency: usize,
}

pub(crate) fn from_raw(w: &RawWebhook) -> Result<WebhookConfig, ConfigError> {
    let listen = parse_addr(
        "webhook.listen",
        w.listen.as_deref().unwrap_or("0.0.0.0:8443"),
    )?;
    let (Some(cert), Some(key)) = (&w.tls_cert, &w.tls_key) else {
        return err("webhook: tls_cert and tls_key are required (the API server calls only HTTPS)");
    };
    let tls = tls::webhook_config(cert, key, w.client_ca.as_deref())?;
    let on_error = match w.on_error.as_deref().unwrap_or("allow") {
        "allow" => OnError::Allow,
        "deny" => OnError::Deny,
        other => {
            return err(format!(
                "webhook.on_error: {other:?} is neither \"allow\" nor \"deny\""
            ))
        }
    };
    let concurrency = w.warm_concurrency.unwrap_or(2);
    if concurrency == 0 {
        return err("webhook.warm_concurrency must be at least 1");
    }
    Ok(WebhookConfig {
        listen,
        tls,
        workloads: w.workloads.unwrap_or(true),
        on_error,
        exclude: compile_all(&w.exclude, "webhook.exclude")?,
        warm: w.warm.unwrap_or(true),
        warm_concurrency: concurrency,
    })
}
