//! Rendezvous (highest-random-weight) hashing: every key has one owner among
//! the live members, the same on every replica that sees the same members,
//! and a member joining or leaving moves only the keys it wins or held.
//!
//! `score(member, key)` is the first 8 bytes, big-endian, of
//! `SHA-256(member ‖ 0x00 ‖ key)`: a stable hash, the same on every build and
//! toolchain (std's `DefaultHasher` may change between Rust releases, which
//! would split a rolling upgrade into two views). The owner has the highest
//! score; the next ones are the fallback order. Ties (never seen in practice)
//! go to the smaller member name, so the order is total.

use sha2::{Digest as _, Sha256};

/// A key's score for `member`.
pub fn score(member: &str, key: &[u8]) -> u64 {
    let mut h = Sha256::new();
    h.update(member.as_bytes());
    h.update([0u8]);
    h.update(key);
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("SHA-256 has 32 bytes"))
}

/// `members` in `key`'s preference order: the owner first.
pub fn ranked<'a>(members: &'a [String], key: &[u8]) -> Vec<&'a str> {
    let mut scored: Vec<(u64, &str)> = members
        .iter()
        .map(|m| (score(m, key), m.as_str()))
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored.into_iter().map(|(_, m)| m).collect()
}

/// `key`'s owner among `members` (`None`: no members).
pub fn owner<'a>(members: &'a [String], key: &[u8]) -> Option<&'a str> {
    members
        .iter()
        .map(|m| (score(m, key), m.as_str()))
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)))
        .map(|(_, m)| m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("10.0.0.{i}:5000")).collect()
    }

    #[test]
    fn the_formula_is_pinned() {
        // The e2e scripts compute owners with the same formula (sha256sum):
        // printf '10.0.0.1:5000\0sha256:abc' | sha256sum → first 16 hex digits.
        assert_eq!(score("10.0.0.1:5000", b"sha256:abc"), 0x3a4b_896a_97dc_17dd);
    }

    #[test]
    fn every_member_order_gives_the_same_owner() {
        let m = members(5);
        let mut reversed = m.clone();
        reversed.reverse();
        for i in 0..200u32 {
            let key = format!("sha256:{i:064x}");
            assert_eq!(owner(&m, key.as_bytes()), owner(&reversed, key.as_bytes()));
            assert_eq!(
                ranked(&m, key.as_bytes())[0],
                owner(&m, key.as_bytes()).unwrap()
            );
        }
        assert_eq!(owner(&[], b"k"), None);
    }

    #[test]
    fn removing_a_member_moves_only_its_keys() {
        let all = members(4);
        let without: Vec<String> = all
            .iter()
            .filter(|m| !m.ends_with(".3:5000"))
            .cloned()
            .collect();
        for i in 0..2000u32 {
            let key = format!("sha256:{i:064x}");
            let before = owner(&all, key.as_bytes()).unwrap();
            let after = owner(&without, key.as_bytes()).unwrap();
            if !before.ends_with(".3:5000") {
                assert_eq!(before, after, "{key} moved though its owner stayed");
            } else {
                // It goes to whoever was second.
                assert_eq!(after, ranked(&all, key.as_bytes())[1]);
            }
        }
    }

    #[test]
    fn three_members_share_keys_evenly() {
        let m = members(3);
        let mut counts = [0usize; 3];
        for i in 0..10_000u32 {
            let key = format!(
                "sha256:{:064x}",
                u64::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            );
            let o = owner(&m, key.as_bytes()).unwrap();
            counts[m.iter().position(|x| x == o).unwrap()] += 1;
        }
        for c in counts {
            assert!((3_000..=3_666).contains(&c), "{counts:?}");
        }
    }
}
