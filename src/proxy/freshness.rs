//! The freshness arithmetic, in one home. Given when upstream last confirmed an
//! answer and the policy that applies to it, an answer is
//! - **fresh**: inside `tag_ttl` (or immutable): served with no upstream request;
//! - **stale**: past it: revalidated upstream, but while upstream fails it may
//!   still be served until `tag_ttl + stale_if_error` (stale-if-error);
//! - and an upstream "not found" is remembered for `negative_ttl`.
//!
//! Times are unix milliseconds from the proxy's [`crate::clock::Clock`].

use crate::config::Freshness;

/// Whether an answer confirmed at `confirmed_ms` is served without asking upstream.
pub fn is_fresh(confirmed_ms: u64, policy: &Freshness, now_ms: u64) -> bool {
    policy.immutable || now_ms < confirmed_ms.saturating_add(ms(policy.tag_ttl))
}

/// Whether a stale answer may stand in while upstream fails.
pub fn servable_on_error(confirmed_ms: u64, policy: &Freshness, now_ms: u64) -> bool {
    now_ms
        < confirmed_ms
            .saturating_add(ms(policy.tag_ttl))
            .saturating_add(ms(policy.stale_if_error))
}

/// Until when an answer confirmed at `confirmed_ms` can be served at all
/// (fresh, or stale while upstream fails); `u64::MAX` for immutable ones.
pub fn useful_until(confirmed_ms: u64, policy: &Freshness) -> u64 {
    if policy.immutable {
        return u64::MAX;
    }
    confirmed_ms
        .saturating_add(ms(policy.tag_ttl))
        .saturating_add(ms(policy.stale_if_error))
}

/// Until when an upstream "not found" learnt now is believed.
pub fn negative_until(policy: &Freshness, now_ms: u64) -> u64 {
    now_ms.saturating_add(ms(policy.negative_ttl))
}

fn ms(d: std::time::Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn policy(immutable: bool) -> Freshness {
        Freshness {
            tag_ttl: Duration::from_secs(30),
            stale_if_error: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(15),
            immutable,
        }
    }

    #[test]
    fn fresh_then_stale_then_expired() {
        let p = policy(false);
        assert!(is_fresh(1_000, &p, 30_999));
        assert!(!is_fresh(1_000, &p, 31_000));
        assert!(servable_on_error(1_000, &p, 90_999));
        assert!(!servable_on_error(1_000, &p, 91_000));
        assert!(is_fresh(1_000, &policy(true), u64::MAX), "immutable");
        assert_eq!(negative_until(&p, 5), 15_005);
    }

    #[test]
    fn huge_windows_do_not_overflow() {
        let p = Freshness {
            tag_ttl: Duration::MAX,
            stale_if_error: Duration::MAX,
            ..policy(false)
        };
        assert!(is_fresh(u64::MAX - 1, &p, u64::MAX - 1));
        assert!(servable_on_error(5, &p, u64::MAX - 1));
    }
}
