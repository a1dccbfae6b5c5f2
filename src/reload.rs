//! Configuration reload on SIGHUP, where it is safe: each upstream's freshness
//! rules, credentials and events settings are replaced in place; anything
//! else that changed (addresses, the data directory, the cache budget, the
//! upstream table itself, client authentication, timeouts) needs a restart,
//! and the log says so. The TLS certificate is re-read too (it is also
//! reloaded by itself when its files change).

use crate::config::Config;
use crate::proxy::Proxy;

/// What a reload did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Settings now in force.
    pub applied: Vec<String>,
    /// Changes that were not applied, and why.
    pub need_restart: Vec<String>,
}

/// Applies `new` over `old` where it can be, on the running `proxy`.
pub fn apply(proxy: &Proxy, old: &Config, new: &Config) -> Reloaded {
    let mut r = Reloaded::default();
    let mut restart = |what: &str| {
        r.need_restart
            .push(format!("{what} changed: needs a restart"))
    };
    if new.listen != old.listen {
        restart("listen");
    }
    if new.admin_listen != old.admin_listen {
        restart("admin_listen");
    }
    if new.data_dir != old.data_dir {
        restart("data_dir");
    }
    if format!("{:?}", new.cache) != format!("{:?}", old.cache) {
        restart("[cache]");
    }
    if format!("{:?}", new.timeouts) != format!("{:?}", old.timeouts) {
        restart("[timeouts]");
    }
    if format!("{:?}", new.client_auth) != format!("{:?}", old.client_auth) {
        restart("[[client]]");
    }
    if new.default_upstream != old.default_upstream {
        restart("default_upstream");
    }
    let webhook = |c: &Config| {
        c.webhook.as_ref().map(|w| {
            let exclude: Vec<&str> = w.exclude.iter().map(|r| r.as_str()).collect();
            format!(
                "{} {} {:?} {exclude:?} {} {}",
                w.listen, w.workloads, w.on_error, w.warm, w.warm_concurrency
            )
        })
    };
    if webhook(new) != webhook(old) {
        restart("[webhook]");
    }
    if new.access_log != old.access_log || new.log_format != old.log_format {
        restart("logging");
    }
    let names = |c: &Config| {
        c.upstreams
            .iter()
            .map(|u| u.name.clone())
            .collect::<Vec<_>>()
    };
    if names(new) != names(old) {
        restart("the set of [[upstream]] entries");
    }
    for u in &new.upstreams {
        match proxy.reconfigure_upstream(u) {
            Some(Ok(changes)) => r.applied.extend(changes),
            Some(Err(why)) => r.need_restart.push(why),
            None => {}
        }
    }
    if let Some(t) = &old.tls {
        match t.certs.reload_if_changed() {
            Ok(true) => r.applied.push("TLS certificate".into()),
            Ok(false) => {}
            Err(e) => r
                .need_restart
                .push(format!("TLS certificate not reloaded: {e}")),
        }
    }
    r
}
