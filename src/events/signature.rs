//! Who may post events: a per-upstream shared secret, sent the ways senders
//! can send it, or an HMAC of the body where the sender signs.
//!
//! - `Authorization: Bearer <secret>` (distribution's `headers`, Harbor's
//!   "Auth Header" set to `Bearer <secret>`), or `Authorization: <secret>`
//!   (Harbor sends the header value verbatim);
//! - `X-Ferry-Secret: <secret>` (any sender that can add a header);
//! - `?token=<secret>` in the URL (Docker Hub and Quay cannot send headers;
//!   Ferry's access log never shows an event URL's query);
//! - `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>` (GitHub).
//!
//! Comparisons are constant-time; the secret is never logged.

use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Whether `headers` (or the URL's `token`) prove the post comes from a
/// holder of `secret`.
pub fn verify(secret: &[u8], headers: &HeaderMap, token: Option<&str>, body: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(sig) = header("x-hub-signature-256") {
        // A signed post is judged by its signature alone.
        return hmac_matches(secret, sig, body);
    }
    let given = header("x-ferry-secret").or(token).or_else(|| {
        header("authorization").map(|a| {
            let a = a.trim();
            match a.split_once(' ') {
                Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
                _ => a,
            }
        })
    });
    given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(secret)))
}

fn hmac_matches(secret: &[u8], signature: &str, body: &[u8]) -> bool {
    let Some(hex_sig) = signature.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn shared_secret_in_any_accepted_header() {
        let s = b"s3cret";
        assert!(verify(
            s,
            &headers(&[("authorization", "Bearer s3cret")]),
            None,
            b"{}"
        ));
        assert!(verify(
            s,
            &headers(&[("authorization", "bearer  s3cret ")]),
            None,
            b"{}"
        ));
        assert!(verify(
            s,
            &headers(&[("authorization", "s3cret")]),
            None,
            b"{}"
        ));
        assert!(verify(
            s,
            &headers(&[("x-ferry-secret", "s3cret")]),
            None,
            b"{}"
        ));
        assert!(!verify(
            s,
            &headers(&[("authorization", "Bearer s3cre")]),
            None,
            b"{}"
        ));
        assert!(!verify(
            s,
            &headers(&[("authorization", "Basic czNjcmV0")]),
            None,
            b"{}"
        ));
        assert!(!verify(s, &headers(&[]), None, b"{}"));
        assert!(verify(s, &headers(&[]), Some("s3cret"), b"{}"));
        assert!(!verify(s, &headers(&[]), Some("s3cre"), b"{}"));
    }

    #[test]
    fn github_hmac_over_the_exact_body() {
        // From tests/fixtures/events/README.md: HMAC-SHA256 of the fixture with
        // the secret `ferry-test-secret`.
        let body = include_bytes!("../../tests/fixtures/events/github-package-published.json");
        let sig = "sha256=da18c046b046f0571256a734a05192fd9f3827436f16dec815044992178b0e88";
        let h = headers(&[("x-hub-signature-256", sig)]);
        assert!(verify(b"ferry-test-secret", &h, None, body));
        assert!(!verify(b"another-secret", &h, None, body));
        let mut tampered = body.to_vec();
        tampered[10] ^= 1;
        assert!(!verify(b"ferry-test-secret", &h, None, &tampered));
        // A signature header decides alone: a right secret elsewhere does not rescue it.
        let h = headers(&[
            ("x-hub-signature-256", "sha256=00"),
            ("x-ferry-secret", "ferry-test-secret"),
        ]);
        assert!(!verify(b"ferry-test-secret", &h, None, body));
    }
}
