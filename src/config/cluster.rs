//! `[cluster]`: replicas that act as one cache. Each cold key has one owner
//! among the live members (see `crate::cluster`); the others ask it over the
//! ordinary pull API, authenticated by a shared peer secret.

use super::defaults;
use super::parse::{err, secret_from, ConfigError};
use super::raw::RawCluster;
use super::units::duration_or;
use std::time::Duration;

/// Where the members come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Members {
    /// A fixed list of `host:port` (bare metal, tests).
    Static(Vec<String>),
    /// The `A`/`AAAA` answers for this name (a Kubernetes headless Service
    /// lists only Ready pods), each with this port, resolved every `refresh`.
    Dns {
        /// The name to resolve.
        name: String,
        /// The port every member listens on.
        port: u16,
    },
}

/// `[cluster]`, validated.
#[derive(Clone)]
pub struct ClusterConfig {
    /// How the other replicas reach this one (`host:port`, as the member list
    /// names it): the downward API's `POD_IP` with the port, in Kubernetes.
    pub self_addr: String,
    /// The other members.
    pub members: Members,
    /// How often DNS members are resolved again.
    pub refresh: Duration,
    /// How long a peer that failed a call is left out.
    pub quarantine: Duration,
    /// The shared peer secret (never printed).
    pub secret: String,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("self_addr", &self.self_addr)
            .field("members", &self.members)
            .field("refresh", &self.refresh)
            .field("quarantine", &self.quarantine)
            .field("secret", &"<redacted>")
            .finish()
    }
}

pub(crate) fn from_raw(c: &RawCluster) -> Result<ClusterConfig, ConfigError> {
    let self_addr =
        expand_env(&c.self_addr).map_err(|e| ConfigError(format!("cluster.self: {e}")))?;
    if !is_host_port(&self_addr) {
        return err(format!(
            "cluster.self: {self_addr:?} is not host:port (how the other replicas reach this one)"
        ));
    }
    let members = match (&c.peers, &c.peers_dns) {
        (Some(_), Some(_)) => return err("cluster: set peers or peers_dns, not both"),
        (None, None) => return err("cluster: set peers (a list of host:port) or peers_dns (name:port)"),
        (Some(list), None) => {
            for p in list {
                if !is_host_port(p) {
                    return err(format!("cluster.peers: {p:?} is not host:port"));
                }
            }
            Members::Static(list.clone())
        }
        (None, Some(dns)) => match dns.rsplit_once(':') {
            Some((name, port)) if !name.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
                Members::Dns {
                    name: name.to_string(),
                    port: port.parse().unwrap_or_default(),
                }
            }
            _ => {
                return err(format!(
                    "cluster.peers_dns: {dns:?} is not name:port (e.g. ferry-peers.ferry-system.svc.cluster.local:5000)"
                ))
            }
        },
    };
    let Some(secret) = secret_from("cluster.secret", &c.secret_file, &c.secret_env)? else {
        return err("cluster: a peer secret is required (secret_file or secret_env): replicas trust each other's requests");
    };
    if !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return err("cluster: the peer secret must be printable ASCII without spaces (it is sent in a header)");
    }
    if secret.len() < defaults::MIN_SECRET_LEN {
        return err(format!(
            "cluster: the peer secret must be at least {} characters",
            defaults::MIN_SECRET_LEN
        ));
    }
    Ok(ClusterConfig {
        self_addr,
        members,
        refresh: duration_or(&c.refresh, "cluster.refresh", defaults::CLUSTER_REFRESH)?,
        quarantine: duration_or(
            &c.quarantine,
            "cluster.quarantine",
            defaults::PEER_QUARANTINE,
        )?,
        secret,
    })
}

/// `host:port` with a non-empty host and a port number.
fn is_host_port(s: &str) -> bool {
    s.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok_and(|p| p > 0)
    })
}

/// `$NAME` and `${NAME}` replaced by the environment's values (for
/// `self = "${POD_IP}:5000"` from the downward API).
fn expand_env(s: &str) -> Result<String, String> {
    let re = regex::Regex::new(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
        .expect("a valid regex");
    let mut missing = None;
    let out = re.replace_all(s, |c: &regex::Captures| {
        let name = c.get(1).or_else(|| c.get(2)).map_or("", |m| m.as_str());
        std::env::var(name).unwrap_or_else(|_| {
            missing = Some(name.to_string());
            String::new()
        })
    });
    match missing {
        Some(name) => Err(format!("the environment variable {name} is not set")),
        None => Ok(out.into_owned()),
    }
}
