//! Hostile or broken upstreams: every case gets a clear error to the client in
//! bounded time, and nothing is cached. The upstream is a scripted raw-TCP
//! server ([`Hostile`]) that records every request it receives.

use crate::support::*;
use std::time::{Duration, Instant};

const BLOB_BYTES: usize = 1000;

fn blob() -> (Vec<u8>, String) {
    let body = bytes_of(BLOB_BYTES, 7);
    let digest = sha256(&body);
    (body, digest)
}

/// Whether a blob response failed: an error status, or a body that broke off
/// or came out short.
async fn failed(r: reqwest::Response, expected_len: usize) -> bool {
    if !r.status().is_success() {
        return true;
    }
    match r.bytes().await {
        Ok(b) => b.len() != expected_len,
        Err(_) => true,
    }
}

#[tokio::test]
async fn a_redirect_loop_ends_after_ten_hops_with_nothing_cached() {
    let (_, digest) = blob();
    let up = Hostile::start(|_, path| Answer::redirect(path)).await;
    let p = Proxied::for_url(&up.url(), "").await;
    let r = p.get(&format!("/v2/r/blobs/{digest}")).await;
    assert_eq!(r.status(), 502);
    let body = r.text().await.unwrap();
    assert!(body.contains("too many redirects"), "{body}");
    assert_eq!(
        up.requests().len(),
        11,
        "the first request and ten redirects"
    );
    assert_eq!(p.stored_size(&digest), None);
}

#[tokio::test]
async fn redirects_to_other_schemes_or_link_local_addresses_are_not_followed() {
    let (_, digest) = blob();
    let up = Hostile::start(|_, path| {
        if path.contains("/file/") {
            Answer::redirect("file:///etc/passwd")
        } else if path.contains("/gopher/") {
            Answer::redirect("gopher://cdn.example.com/blob")
        } else {
            Answer::redirect("http://169.254.169.254/latest/meta-data/")
        }
    })
    .await;
    let p = Proxied::for_url(&up.url(), "").await;
    for (repo, why) in [
        ("file", "\\\"file\\\" URL"),
        ("gopher", "\\\"gopher\\\" URL"),
        ("meta", "169.254.169.254"),
    ] {
        let r = p.get(&format!("/v2/{repo}/blobs/{digest}")).await;
        assert_eq!(r.status(), 502, "{repo}");
        let body = r.text().await.unwrap();
        assert!(
            body.contains("refused") && body.contains(why),
            "{repo}: {body}"
        );
    }
    assert_eq!(
        up.requests().len(),
        3,
        "one request each, no redirect followed"
    );
    assert_eq!(p.stored_size(&digest), None);
}

#[tokio::test]
async fn a_token_realm_on_a_link_local_address_is_not_asked() {
    let (_, digest) = blob();
    let up = Hostile::start(|_, _| {
        Answer::full(
            "401 Unauthorized",
            &[(
                "WWW-Authenticate",
                "Bearer realm=\"http://169.254.169.254/token\",service=\"evil\"",
            )],
            b"",
        )
    })
    .await;
    let p = Proxied::for_url(&up.url(), "").await;
    let r = p.get(&format!("/v2/r/manifests/{digest}")).await;
    assert_eq!(r.status(), 502);
    let body = r.text().await.unwrap();
    assert!(body.contains("token realm refused"), "{body}");
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn a_body_that_drips_is_abandoned_after_its_resumes() {
    let (_, digest) = blob();
    let up = Hostile::start(|_, _| Answer::Drip {
        head: format!("HTTP/1.1 200 OK\r\nContent-Length: {BLOB_BYTES}\r\n\r\n"),
        every: Duration::from_secs(3),
    })
    .await;
    let p = Proxied::for_url(&up.url(), "[timeouts]\nidle = \"1s\"\n").await;
    let started = Instant::now();
    let r = p.get(&format!("/v2/r/blobs/{digest}")).await;
    assert!(failed(r, BLOB_BYTES).await, "a dripping body is no blob");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "bounded by idle × (1 + resumes), took {:?}",
        started.elapsed()
    );
    assert_eq!(
        up.requests().len(),
        4,
        "the first GET and three resumes: {:?}",
        up.requests()
    );
    assert_eq!(p.stored_size(&digest), None);
}

#[tokio::test]
async fn manifests_and_tag_lists_that_never_end_are_cut_at_their_cap() {
    let chunked = |ct: &str| Answer::Endless {
        head: format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nTransfer-Encoding: chunked\r\n\r\n"
        ),
        chunk: {
            let mut c = b"1000\r\n".to_vec();
            c.extend(std::iter::repeat_n(b' ', 4096));
            c.extend_from_slice(b"\r\n");
            c
        },
    };
    let up = Hostile::start(move |_, path| {
        if path.contains("/tags/list") {
            chunked("application/json")
        } else if path.contains("/huge/") {
            Answer::Raw(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: 99999999999\r\n\r\n{"
                    .to_vec(),
            )
        } else {
            chunked("application/vnd.oci.image.manifest.v1+json")
        }
    })
    .await;
    let p = Proxied::for_url(&up.url(), "").await;
    let digest = sha256(b"never");
    for path in [
        format!("/v2/r/manifests/{digest}"),
        format!("/v2/huge/manifests/{digest}"),
        "/v2/r/tags/list".to_string(),
    ] {
        let started = Instant::now();
        let r = p.get(&path).await;
        assert_eq!(r.status(), 502, "{path}");
        let body = r.text().await.unwrap();
        assert!(body.contains("larger than 4194304 bytes"), "{path}: {body}");
        assert!(started.elapsed() < Duration::from_secs(10), "{path}");
    }
    // Nothing was kept: asking again asks upstream again.
    let before = up.requests().len();
    assert_eq!(
        p.get(&format!("/v2/r/manifests/{digest}")).await.status(),
        502
    );
    assert_eq!(up.requests().len(), before + 1);
}

#[tokio::test]
async fn a_content_length_that_lies_either_way_caches_nothing() {
    let (body, digest) = blob();
    let up = Hostile::start(move |_, path| {
        // Says more than it sends, then closes; or says less than it sends.
        let said = if path.contains("/long/") {
            BLOB_BYTES * 2
        } else {
            BLOB_BYTES / 2
        };
        let mut raw =
            format!("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: {said}\r\n\r\n")
                .into_bytes();
        raw.extend_from_slice(&body);
        Answer::Raw(raw)
    })
    .await;
    let p = Proxied::for_url(&up.url(), "").await;
    for repo in ["long", "short"] {
        let r = p.get(&format!("/v2/{repo}/blobs/{digest}")).await;
        assert!(failed(r, BLOB_BYTES).await, "{repo}");
    }
    p.settled().await;
    assert_eq!(p.stored_size(&digest), None);
    assert_eq!(
        p.metric("ferry_integrity_failures_total"),
        1,
        "the short one"
    );
}

#[tokio::test]
async fn a_content_encoding_not_asked_for_is_refused() {
    let (body, digest) = blob();
    let up =
        Hostile::start(move |_, _| Answer::full("200 OK", &[("Content-Encoding", "gzip")], &body))
            .await;
    let p = Proxied::for_url(&up.url(), "").await;
    let r = p.get(&format!("/v2/r/blobs/{digest}")).await;
    assert_eq!(r.status(), 502);
    let text = r.text().await.unwrap();
    assert!(text.contains("Content-Encoding \\\"gzip\\\""), "{text}");
    assert_eq!(p.stored_size(&digest), None);
    assert_eq!(up.requests().len(), 1);
}
