//! Where an upstream's client may connect. An upstream names other hosts in
//! `Location` (redirects to a CDN) and in its token `realm`; a hostile or
//! compromised registry could use them to make Ferry reach what only Ferry can
//! reach: its own loopback services, or the cloud metadata endpoint at
//! `169.254.169.254`. So:
//! - only `http` and `https` URLs are followed;
//! - loopback, link-local and unspecified addresses are refused, whether
//!   written as an IP or reached by resolving a name, unless the upstream
//!   itself lives in that class of address (a registry on the same machine,
//!   as in tests, may redirect to loopback, never to link-local). Names
//!   are checked at connect time, by the client's resolver, so a name cannot
//!   resolve one way when checked and another when used.

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, SocketAddr};
use url::Url;

/// The destination policy of one upstream.
#[derive(Clone, Debug)]
pub(crate) struct Destinations {
    /// The upstream's own host (lowercase, no port): always reachable.
    own_host: String,
    /// The class of local address the upstream itself is on, if any: its
    /// redirects may go there too.
    local_ok: Option<Local>,
}

/// Addresses only Ferry's own machine or link can reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Local {
    Loopback,
    Link,
    Unspecified,
}

impl Destinations {
    /// The policy for an upstream at `url`.
    pub fn for_upstream(url: &Url) -> Destinations {
        let own_host = url.host_str().unwrap_or("").to_ascii_lowercase();
        let local_ok = match url.host() {
            Some(url::Host::Ipv4(ip)) => local(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => local(IpAddr::V6(ip)),
            Some(url::Host::Domain(d)) => {
                let d = d.to_ascii_lowercase();
                (d == "localhost" || d.ends_with(".localhost")).then_some(Local::Loopback)
            }
            None => None,
        }
        .filter(|l| *l != Local::Unspecified);
        Destinations { own_host, local_ok }
    }

    /// Whether a URL upstream handed Ferry (a redirect, a token realm) may be
    /// followed; names are checked again when they are resolved.
    pub fn check(&self, url: &Url) -> Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "refused to follow a {:?} URL (only http and https)",
                url.scheme()
            ));
        }
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            Some(url::Host::Domain(_)) => return Ok(()),
            None => return Err("refused to follow a URL without a host".into()),
        };
        if !self.allows(ip) {
            return Err(format!(
                "refused to connect to {ip}: a loopback or link-local address, and the upstream is not there"
            ));
        }
        Ok(())
    }

    fn allows(&self, ip: IpAddr) -> bool {
        match local(ip) {
            None => true,
            Some(class) => self.local_ok == Some(class),
        }
    }

    /// The resolver that applies this policy to names.
    pub fn resolver(&self) -> std::sync::Arc<Resolver> {
        std::sync::Arc::new(Resolver(self.clone()))
    }
}

/// Resolves names with the system resolver, then drops local addresses for
/// any host but the upstream's own (unless the upstream is local itself).
pub(crate) struct Resolver(Destinations);

impl Resolve for Resolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_ascii_lowercase();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if host == policy.own_host {
                return Ok(Box::new(found.into_iter()) as Addrs);
            }
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| policy.allows(a.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(format!(
                    "refused to connect to {host}: it resolves only to loopback or link-local addresses"
                )
                .into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// Loopback, link-local (including cloud metadata at 169.254.169.254) or
/// unspecified, IPv4-mapped IPv6 included; `None` for any other address.
pub(crate) fn local(ip: IpAddr) -> Option<Local> {
    match ip {
        IpAddr::V4(v4) if v4.is_loopback() => Some(Local::Loopback),
        IpAddr::V4(v4) if v4.is_link_local() => Some(Local::Link),
        IpAddr::V4(v4) if v4.is_unspecified() => Some(Local::Unspecified),
        IpAddr::V4(_) => None,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => local(IpAddr::V4(v4)),
            None if v6.is_loopback() => Some(Local::Loopback),
            None if v6.is_unspecified() => Some(Local::Unspecified),
            None if (v6.segments()[0] & 0xffc0) == 0xfe80 => Some(Local::Link),
            None => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn a_remote_upstream_cannot_send_ferry_to_local_addresses() {
        let d = Destinations::for_upstream(&url("https://registry.example.com"));
        for bad in [
            "http://127.0.0.1/x",
            "http://127.9.9.9:8080/x",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]/x",
            "http://[fe80::1]/x",
            "http://[::ffff:127.0.0.1]/x",
            "http://0.0.0.0/x",
            "file:///etc/passwd",
            "ftp://cdn.example.com/blob",
            "gopher://cdn.example.com/",
        ] {
            assert!(d.check(&url(bad)).is_err(), "{bad} must be refused");
        }
        for good in [
            "https://cdn.example.com/blob",
            "http://10.1.2.3/blob",
            "https://[2001:db8::1]/x",
        ] {
            assert!(d.check(&url(good)).is_ok(), "{good} must be followed");
        }
    }

    #[test]
    fn a_local_upstream_may_redirect_locally() {
        for base in [
            "http://127.0.0.1:5000",
            "http://localhost:5000",
            "http://[::1]:5000",
        ] {
            let d = Destinations::for_upstream(&url(base));
            assert!(d.check(&url("http://127.0.0.1:9000/cdn")).is_ok(), "{base}");
            assert!(d.check(&url("http://[::1]:9000/cdn")).is_ok(), "{base}");
            assert!(d.check(&url("file:///etc/passwd")).is_err(), "{base}");
            assert!(
                d.check(&url("http://169.254.169.254/latest/meta-data/"))
                    .is_err(),
                "{base}: loopback is not link-local"
            );
            assert!(d.check(&url("http://0.0.0.0:9000/")).is_err(), "{base}");
        }
    }

    #[tokio::test]
    async fn names_resolving_to_loopback_are_refused_at_connect_time() {
        let remote = Destinations::for_upstream(&url("https://registry.example.com"));
        let r = remote.resolver();
        let err = r
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .expect("localhost refused for a remote upstream");
        assert!(err.to_string().contains("loopback"), "{err}");
        // The upstream's own name is always allowed, wherever it points.
        let own = Destinations::for_upstream(&url("http://localhost:5000"));
        let addrs: Vec<_> = own
            .resolver()
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(!addrs.is_empty());
    }
}
