//! An upstream's access settings: upstream-checked access (`[upstream.access]`)
//! and the TLS Ferry uses to reach it (`ca_file`, `client_cert`, `client_key`).

use super::defaults;
use super::parse::{err, ConfigError};
use super::raw::{RawAccess, RawUpstream};
use super::units::duration_or;
use std::fmt;
use std::path::Path;
use std::time::Duration;

/// `[upstream.access]`, validated: how long the upstream's answers stand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccessPolicy {
    /// A "may pull" is reused this long.
    pub ttl: Duration,
    /// A "may not pull" is reused this long.
    pub negative_ttl: Duration,
    /// While the upstream cannot be asked, a decision this old still stands.
    pub stale: Duration,
}

impl AccessPolicy {
    pub(crate) fn from_raw(ctx: &str, a: &RawAccess) -> Result<AccessPolicy, ConfigError> {
        let ctx = format!("{ctx}: access");
        let policy = AccessPolicy {
            ttl: duration_or(&a.ttl, &format!("{ctx}: ttl"), defaults::ACCESS_TTL)?,
            negative_ttl: duration_or(
                &a.negative_ttl,
                &format!("{ctx}: negative_ttl"),
                defaults::ACCESS_NEGATIVE_TTL,
            )?,
            stale: duration_or(&a.stale, &format!("{ctx}: stale"), defaults::ACCESS_STALE)?,
        };
        if policy.ttl.is_zero() {
            return err(format!("{ctx}: ttl must be more than 0"));
        }
        if policy.stale < policy.ttl.max(policy.negative_ttl) {
            return err(format!(
                "{ctx}: stale must be at least ttl and negative_ttl (a decision cannot go stale before it expires)"
            ));
        }
        Ok(policy)
    }
}

/// What Ferry trusts and shows when it connects to an upstream over TLS.
#[derive(Clone, Default)]
pub struct UpstreamTls {
    /// PEM CA certificates trusted besides the system's and the built-in roots.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM client certificate chain followed by its key, for mutual TLS.
    pub identity_pem: Option<Vec<u8>>,
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("ca", &self.ca_pem.is_some())
            .field(
                "client_identity",
                &self.identity_pem.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl UpstreamTls {
    /// Reads and checks the files, so a bad one stops Ferry before any socket
    /// is bound.
    pub(crate) fn from_raw(ctx: &str, u: &RawUpstream) -> Result<UpstreamTls, ConfigError> {
        let ca_pem = match &u.ca_file {
            None => None,
            Some(path) => {
                let pem = read(ctx, "ca_file", path)?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| ConfigError(format!("{ctx}: ca_file {}: {e}", path.display())))?;
                if certs.is_empty() {
                    return err(format!(
                        "{ctx}: ca_file {} holds no PEM certificate",
                        path.display()
                    ));
                }
                Some(pem)
            }
        };
        let identity_pem = match (&u.client_cert, &u.client_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let mut pem = read(ctx, "client_cert", cert)?;
                pem.push(b'\n');
                pem.extend(read(ctx, "client_key", key)?);
                reqwest::Identity::from_pem(&pem).map_err(|e| {
                    ConfigError(format!(
                        "{ctx}: client_cert {} / client_key {}: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?;
                Some(pem)
            }
            _ => return err(format!("{ctx}: client_cert and client_key go together")),
        };
        Ok(UpstreamTls {
            ca_pem,
            identity_pem,
        })
    }
}

fn read(ctx: &str, what: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError(format!("{ctx}: {what} {}: {e}", path.display())))
}
