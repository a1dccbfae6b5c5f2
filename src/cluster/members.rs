//! Who is in the cluster now: the configured members (a static list, or the
//! DNS answers of a headless Service, refreshed every `refresh`) plus this
//! replica, less those quarantined after a failed call. No consensus, no
//! gossip: two replicas with different views cost at most one extra fetch per
//! view and key, never a wrong byte (every replica verifies what it stores).

use crate::bounded::ExpiringMap;
use crate::clock::Clock;
use crate::config::cluster::Members as Source;
use parking_lot::{Mutex, RwLock};
use std::sync::Arc;
use std::time::Duration;

/// Peers quarantined at once, at most (a bound, not a limit anyone reaches).
const QUARANTINED: usize = 1024;

/// The member view.
pub(super) struct Members {
    me: String,
    source: Source,
    /// The last resolved members, this replica included, sorted.
    known: RwLock<Arc<Vec<String>>>,
    /// Peers left out until their deadline.
    quarantined: Mutex<ExpiringMap<String, ()>>,
    quarantine: Duration,
    clock: Clock,
}

impl Members {
    pub fn new(me: String, source: Source, quarantine: Duration, clock: Clock) -> Members {
        let initial = match &source {
            Source::Static(list) => with_me(&me, list.clone()),
            Source::Dns { .. } => with_me(&me, Vec::new()),
        };
        Members {
            me,
            source,
            known: RwLock::new(Arc::new(initial)),
            quarantined: Mutex::new(ExpiringMap::new(QUARANTINED)),
            quarantine,
            clock,
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// The members now, quarantined peers left out (this replica never is).
    pub fn live(&self) -> Vec<String> {
        let known = self.known.read().clone();
        let now = self.clock.now_ms();
        let mut q = self.quarantined.lock();
        known
            .iter()
            .filter(|m| **m == self.me || !q.contains(m.as_str(), now))
            .cloned()
            .collect()
    }

    /// Every other known member, quarantined or not (events and purges go to all).
    pub fn others(&self) -> Vec<String> {
        let known = self.known.read().clone();
        known.iter().filter(|m| **m != self.me).cloned().collect()
    }

    /// Leaves `peer` out for the quarantine; whether it was in.
    pub fn quarantine(&self, peer: &str) -> bool {
        if peer == self.me {
            return false;
        }
        let now = self.clock.now_ms();
        let until = now.saturating_add(self.quarantine.as_millis() as u64);
        let mut q = self.quarantined.lock();
        let was_in = !q.contains(peer, now);
        q.insert(peer.to_string(), (), until, now);
        was_in
    }

    /// Resolves DNS members once (static ones never change); `None` when
    /// DNS failed (the last view is kept).
    pub async fn refresh(&self) -> Option<usize> {
        let Source::Dns { name, port } = &self.source else {
            return Some(self.known.read().len());
        };
        match tokio::net::lookup_host((name.as_str(), *port)).await {
            Ok(addrs) => {
                let found: Vec<String> = addrs.map(|a| a.to_string()).collect();
                let view = with_me(&self.me, found);
                let n = view.len();
                let mut known = self.known.write();
                if **known != view {
                    tracing::info!(members = ?view, "cluster members changed");
                    *known = Arc::new(view);
                }
                Some(n)
            }
            Err(e) => {
                tracing::warn!(name, error = %e, "cannot resolve the cluster's members; keeping the last view");
                None
            }
        }
    }

    /// Resolves DNS members every `every`, for ever.
    pub async fn keep_fresh(self: Arc<Self>, every: Duration, on_change: impl Fn(usize)) {
        if matches!(self.source, Source::Static(_)) {
            on_change(self.known.read().len());
            return;
        }
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if let Some(n) = self.refresh().await {
                on_change(n);
            }
        }
    }
}

fn with_me(me: &str, mut members: Vec<String>) -> Vec<String> {
    members.push(me.to_string());
    members.sort();
    members.dedup();
    members
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quarantined_peer_leaves_the_view_for_a_while_but_never_this_replica() {
        let clock = Clock::manual();
        let m = Members::new(
            "a:1".into(),
            Source::Static(vec!["b:1".into(), "c:1".into(), "a:1".into()]),
            Duration::from_secs(10),
            clock.clone(),
        );
        assert_eq!(m.live(), ["a:1", "b:1", "c:1"]);
        assert!(m.quarantine("b:1"));
        assert!(!m.quarantine("b:1"), "already out");
        assert!(!m.quarantine("a:1"), "never itself");
        assert_eq!(m.live(), ["a:1", "c:1"]);
        assert_eq!(m.others(), ["b:1", "c:1"]);
        clock.advance(Duration::from_secs(10));
        assert_eq!(m.live(), ["a:1", "b:1", "c:1"]);
    }

    #[tokio::test]
    async fn dns_members_are_the_names_answers_with_the_port_plus_this_replica() {
        let m = Members::new(
            "10.9.9.9:5000".into(),
            Source::Dns {
                name: "localhost".into(),
                port: 5000,
            },
            Duration::from_secs(10),
            Clock::manual(),
        );
        assert_eq!(
            m.live(),
            ["10.9.9.9:5000"],
            "only itself before the first answer"
        );
        let n = m.refresh().await.expect("localhost resolves");
        let live = m.live();
        assert_eq!(live.len(), n);
        assert!(live.contains(&"127.0.0.1:5000".to_string()), "{live:?}");
        assert!(live.contains(&"10.9.9.9:5000".to_string()), "{live:?}");
    }
}
