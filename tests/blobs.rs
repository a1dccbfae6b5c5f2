//! Blobs: cold and warm GET/HEAD, integrity, redirects, ranges (PROTOCOL.md B and R cases).

use crate::support::*;
use http::StatusCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn b1_b2_cold_then_warm_blob() {
    let up = FakeRegistry::start().await;
    let data = bytes_of(300_000, 1);
    let d = up.add_blob(data.clone());
    let p = Proxied::start(&up).await;
    let path = format!("/v2/library/alpine/blobs/{d}");

    let head = p.head(&path).await;
    assert_eq!(head.status(), 200);
    assert_eq!(header(&head, "content-length"), Some("300000"));
    assert_eq!(header(&head, "docker-content-digest"), Some(d.as_str()));
    assert_eq!(head.bytes().await.unwrap().len(), 0);

    for round in 0..2 {
        let r = p.get(&path).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "content-length"), Some("300000"));
        assert_eq!(header(&r, "docker-content-digest"), Some(d.as_str()));
        assert_eq!(header(&r, "content-type"), Some("application/octet-stream"));
        assert_eq!(
            body_digest(r).await.unwrap(),
            (d.clone(), 300_000),
            "round {round}"
        );
    }
    let head = p.head(&path).await;
    assert_eq!(header(&head, "content-length"), Some("300000"));
    assert_eq!(
        up.count("GET", |r| r.is_blob()),
        1,
        "the warm GET never reached upstream"
    );
    assert_eq!(
        up.count("HEAD", |r| r.is_blob()),
        1,
        "only the cold HEAD did"
    );
}

#[tokio::test]
async fn b3_missing_blob_is_blob_unknown() {
    let up = FakeRegistry::start().await;
    let p = Proxied::start(&up).await;
    let path = "/v2/library/alpine/blobs/sha256:b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9";
    let r = p.get(path).await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");
    assert_eq!(p.head(path).await.status(), 404);
}

#[tokio::test]
async fn b4_concurrent_cold_gets_share_one_upstream_get() {
    let up = FakeRegistry::start().await;
    let data = bytes_of(2_000_000, 2);
    let d = up.add_blob(data);
    up.faults(|f| f.throttle = Some((64 * 1024, std::time::Duration::from_millis(5))));
    let p = Proxied::start(&up).await;
    let path = format!("/v2/library/alpine/blobs/{d}");
    let gets = (0..10).map(|_| {
        let req = p.client.get(p.url(&path)).send();
        async move { body_digest(req.await.unwrap()).await.unwrap() }
    });
    for (digest, len) in futures_util::future::join_all(gets).await {
        assert_eq!((digest.as_str(), len), (d.as_str(), 2_000_000));
    }
    assert_eq!(up.count("GET", |r| r.is_blob()), 1);
}

/// A cold blob GET whose fetch fails: a client that joins while the transfer
/// runs gets a 200 whose body is cut short (never completed); one that joins
/// after the fetch failed gets 502 `UNKNOWN`. Nothing else is right.
async fn aborted_or_502(r: reqwest::Response) {
    match r.status().as_u16() {
        200 => assert!(
            body_digest(r).await.is_err(),
            "a complete 200 from a failed fetch"
        ),
        502 => assert_eq!(error_code(r).await, "UNKNOWN"),
        s => panic!("{s}: neither a 200 cut short nor a 502"),
    }
}

#[tokio::test]
async fn b5_corrupt_bytes_abort_the_response_and_cache_nothing() {
    let up = FakeRegistry::start().await;
    let data = bytes_of(1_000_000, 3);
    let d = up.add_blob(data);
    up.faults(|f| f.wrong_bytes = true);
    let p = Proxied::start(&up).await;
    let path = format!("/v2/library/alpine/blobs/{d}");
    aborted_or_502(p.get(&path).await).await;
    assert!(p.stored_size(&d).is_none());
    up.faults(|f| f.wrong_bytes = false);
    let r = p.get(&path).await;
    assert_eq!(r.status(), 200);
    assert_eq!(body_digest(r).await.unwrap().0, d);
    assert_eq!(up.count("GET", |r| r.is_blob()), 2);
}

#[tokio::test]
async fn b5_truncated_transfer_that_cannot_resume_aborts() {
    let up = FakeRegistry::start().await;
    let d = up.add_blob(bytes_of(1_000_000, 4));
    // Every attempt drops; resumes are refused because upstream ignores Range.
    up.faults(|f| {
        f.drop_after = Some((100, 400_000));
        f.ignore_range = true;
    });
    let p = Proxied::start(&up).await;
    aborted_or_502(p.get(&format!("/v2/library/alpine/blobs/{d}")).await).await;
    assert!(p.stored_size(&d).is_none());
    assert_eq!(
        up.count("GET", |r| r.is_blob() && r.headers.contains_key("range")),
        1,
        "a 200 answer to a resume is refused, not spliced in"
    );
}

#[tokio::test]
async fn dropped_transfer_resumes_with_range() {
    let up = FakeRegistry::start().await;
    let d = up.add_blob(bytes_of(1_000_000, 5));
    up.faults(|f| f.drop_after = Some((1, 300_000)));
    let p = Proxied::start(&up).await;
    let r = p.get(&format!("/v2/library/alpine/blobs/{d}")).await;
    assert_eq!(body_digest(r).await.unwrap(), (d.clone(), 1_000_000));
    let resumes: Vec<_> = up
        .requests()
        .into_iter()
        .filter(|r| r.is_blob())
        .filter_map(|r| {
            r.headers
                .get("range")
                .map(|v| v.to_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(resumes.len(), 1);
    let offset: u64 = resumes[0]
        .trim_start_matches("bytes=")
        .trim_end_matches('-')
        .parse()
        .unwrap();
    assert!(offset > 0 && offset <= 300_000, "{resumes:?}");
    assert_eq!(p.metric("ferry_fetch_resumes_total"), 1);
    p.settled().await;
    assert_eq!(p.stored_size(&d), Some(1_000_000));
}

#[tokio::test]
async fn b6_no_content_encoding_whatever_the_client_accepts() {
    let up = FakeRegistry::start().await;
    let d = up.add_blob(bytes_of(100_000, 6));
    let p = Proxied::start(&up).await;
    for _ in 0..2 {
        let r = p
            .get_with(
                &format!("/v2/library/alpine/blobs/{d}"),
                &[("accept-encoding", "zstd, gzip")],
            )
            .await;
        assert!(r.headers().get("content-encoding").is_none());
        assert_eq!(body_digest(r).await.unwrap().0, d);
    }
}

#[tokio::test]
async fn b7_redirects_are_followed_without_authorization_across_hosts() {
    let up = FakeRegistry::start().await;
    up.set_auth(Auth::bearer(Some(300)));
    let (m, layers) = up.add_image("library/alpine", "latest", &[&bytes_of(50_000, 7)]);
    up.redirect_blobs_to_cdn(true);
    up.redirect_manifests_to_cdn(true);
    let p = Proxied::start(&up).await;
    let r = p
        .get(&format!("/v2/library/alpine/blobs/{}", layers[0]))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(body_digest(r).await.unwrap().0, layers[0]);
    let r = p.get(&format!("/v2/library/alpine/manifests/{m}")).await;
    assert_eq!(sha256(&r.bytes().await.unwrap()), m);
    let cdn: Vec<_> = up
        .requests()
        .into_iter()
        .filter(|r| r.host == fake::Host::Cdn)
        .collect();
    assert_eq!(cdn.len(), 2);
    assert!(
        cdn.iter().all(|r| !r.headers.contains_key("authorization")),
        "Authorization crossed hosts"
    );
    assert!(up
        .requests()
        .iter()
        .filter(|r| r.host == fake::Host::Registry && r.method == "GET")
        .any(|r| r.headers.contains_key("authorization")));
}

async fn two_k_blob() -> (FakeRegistry, Proxied, String, Vec<u8>) {
    let up = FakeRegistry::start().await;
    let data = bytes_of(2048, 8);
    let d = up.add_blob(data.clone());
    let p = Proxied::start(&up).await;
    (up, p, d, data)
}

#[tokio::test]
async fn r1_to_r6_ranges_on_a_cached_blob() {
    let (_up, p, d, data) = two_k_blob().await;
    let path = format!("/v2/library/alpine/blobs/{d}");
    body_digest(p.get(&path).await).await.unwrap();
    for (range, start, end) in [
        ("bytes=500-1499", 500, 1499),
        ("bytes=500-", 500, 2047),
        ("bytes=-500", 1548, 2047),
        ("bytes=2000-5000", 2000, 2047),
    ] {
        let r = p.get_with(&path, &[("range", range)]).await;
        assert_eq!(r.status(), 206, "{range}");
        let len = end - start + 1;
        assert_eq!(
            header(&r, "content-length"),
            Some(len.to_string().as_str()),
            "{range}"
        );
        assert_eq!(
            header(&r, "content-range"),
            Some(format!("bytes {start}-{end}/2048").as_str())
        );
        assert_eq!(&r.bytes().await.unwrap()[..], &data[start..=end], "{range}");
    }
    for range in ["bytes=500-0", "bytes=5000-10000"] {
        let r = p.get_with(&path, &[("range", range)]).await;
        assert_eq!(r.status(), 416, "{range}");
        assert_eq!(header(&r, "content-range"), Some("bytes */2048"));
    }
    let r = p.get_with(&path, &[("range", "bytes=0-9,100-109")]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(&r.bytes().await.unwrap()[..], &data[..]);
}

#[tokio::test]
async fn r7_range_on_a_cold_blob_gets_the_right_bytes() {
    let (up, p, d, data) = two_k_blob().await;
    let path = format!("/v2/library/alpine/blobs/{d}");
    let r = p.get_with(&path, &[("range", "bytes=1024-")]).await;
    assert_eq!(r.status(), 206);
    assert_eq!(header(&r, "content-range"), Some("bytes 1024-2047/2048"));
    assert_eq!(&r.bytes().await.unwrap()[..], &data[1024..]);
    let r = p.get_with(&path, &[("range", "bytes=100-199")]).await;
    assert_eq!(&r.bytes().await.unwrap()[..], &data[100..200]);
    assert_eq!(
        up.count("GET", |r| r.is_blob()),
        1,
        "the cold range fetched (and cached) the blob once"
    );
}

#[tokio::test]
async fn cold_unsatisfiable_range_is_416_after_learning_the_size() {
    let (_up, p, d, _) = two_k_blob().await;
    let r = p
        .get_with(
            &format!("/v2/library/alpine/blobs/{d}"),
            &[("range", "bytes=4096-")],
        )
        .await;
    assert_eq!(r.status(), 416);
    assert_eq!(header(&r, "content-range"), Some("bytes */2048"));
}

#[tokio::test]
async fn chunked_upstream_blob_is_streamed_and_verified() {
    let up = FakeRegistry::start().await;
    let d = up.add_blob(bytes_of(500_000, 9));
    up.faults(|f| f.chunked_blobs = true);
    let p = Proxied::start(&up).await;
    let r = p.get(&format!("/v2/library/alpine/blobs/{d}")).await;
    assert_eq!(body_digest(r).await.unwrap(), (d.clone(), 500_000));
    p.settled().await;
    let r = p.get(&format!("/v2/library/alpine/blobs/{d}")).await;
    assert_eq!(
        header(&r, "content-length"),
        Some("500000"),
        "served from the store"
    );
}

#[tokio::test]
async fn verified_bytes_reach_clients_before_the_blob_is_durable() {
    let up = FakeRegistry::start().await;
    let d = up.add_blob(bytes_of(300_000, 15));
    up.faults(|f| f.chunked_blobs = true);
    let p = Proxied::start(&up).await;
    let hold = &p.store().faults().hold_persists;
    hold.store(true, Ordering::SeqCst);
    let path = format!("/v2/library/app/blobs/{d}");
    // The whole body arrives although the blob cannot be persisted yet.
    assert_eq!(body_digest(p.get(&path).await).await.unwrap().0, d);
    assert!(p.stored_size(&d).is_none());
    // A request meanwhile joins the fetch, now with a known length: no second GET.
    let r = p.get(&path).await;
    assert_eq!(header(&r, "content-length"), Some("300000"));
    assert_eq!(body_digest(r).await.unwrap().0, d);
    assert_eq!(up.count("GET", |r| r.is_blob()), 1);
    hold.store(false, Ordering::SeqCst);
    p.settled().await;
    assert_eq!(p.stored_size(&d), Some(300_000));
    body_digest(p.get(&path).await).await.unwrap();
    assert_eq!(up.count("GET", |r| r.is_blob()), 1);
    assert_eq!(p.metric("ferry_cache_hits_total{kind=\"blob\"}"), 1);
}

/// A rollout's nodes `HEAD` a layer before `GET`ting it, arriving over a few
/// hundred milliseconds: the upstream answers at once, so the herd arrives in
/// waves after the first answer; the remembered answer covers them all.
#[tokio::test]
async fn a_herd_of_cold_blob_heads_arriving_over_300ms_costs_one_upstream_request() {
    let up = FakeRegistry::start().await;
    let d = up.add_blob(bytes_of(123_456, 21));
    let p = Arc::new(Proxied::start(&up).await);
    let path = format!("/v2/library/app/blobs/{d}");
    let heads: Vec<_> = (0..100u64)
        .map(|i| {
            let (p, path) = (p.clone(), path.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i * 3)).await;
                let r = p.head(&path).await;
                (r.status(), header(&r, "content-length").map(str::to_owned))
            })
        })
        .collect();
    for h in heads {
        assert_eq!(h.await.unwrap(), (StatusCode::OK, Some("123456".into())));
    }
    assert_eq!(up.count("HEAD", |r| r.is_blob()), 1, "one upstream HEAD");
    assert_eq!(
        up.count("GET", |r| r.is_blob()),
        0,
        "a HEAD fetches nothing"
    );
    assert_eq!(p.metric("ferry_coalesced_requests_total"), 99);
    // The answer is remembered briefly, not for ever: past that, upstream is
    // asked again (the blob may have been deleted there).
    p.advance(Duration::from_secs(11));
    assert_eq!(p.head(&path).await.status(), StatusCode::OK);
    assert_eq!(up.count("HEAD", |r| r.is_blob()), 2);
}

#[tokio::test]
async fn blob_heads_carry_type_and_length_even_when_upstream_sends_none() {
    let up = FakeRegistry::start().await;
    let d = up.add_blob(bytes_of(77_777, 22));
    up.faults(|f| f.chunked_blobs = true);
    let p = Proxied::start(&up).await;
    let path = format!("/v2/library/app/blobs/{d}");
    // Cold: upstream's HEAD has no length, so the blob is fetched to learn it.
    let r = p.head(&path).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-length"), Some("77777"));
    assert_eq!(header(&r, "content-type"), Some("application/octet-stream"));
    assert_eq!(header(&r, "docker-content-digest"), Some(d.as_str()));
    p.settled().await;
    assert_eq!(
        p.stored_size(&d),
        Some(77_777),
        "the GET that followed was cached"
    );
    // Warm.
    let r = p.head(&path).await;
    assert_eq!(header(&r, "content-length"), Some("77777"));
    assert_eq!(header(&r, "content-type"), Some("application/octet-stream"));
    assert_eq!(up.count("GET", |r| r.is_blob()), 1);
}

#[tokio::test]
async fn warm_heads_and_gets_write_nothing_to_the_index() {
    let up = FakeRegistry::start().await;
    let (m, layers) = up.add_image("library/app", "1", &[&bytes_of(50_000, 23)]);
    let p = Proxied::start(&up).await;
    let blob = format!("/v2/library/app/blobs/{}", layers[0]);
    assert_eq!(p.get("/v2/library/app/manifests/1").await.status(), 200);
    body_digest(p.get(&blob).await).await.unwrap();
    p.settled().await;
    let writes = p.store().index_writes();
    for _ in 0..1000 {
        assert_eq!(p.head("/v2/library/app/manifests/1").await.status(), 200);
        assert_eq!(
            p.get(&format!("/v2/library/app/manifests/{m}"))
                .await
                .status(),
            200
        );
        body_digest(p.get(&blob).await).await.unwrap();
    }
    assert_eq!(
        p.store().index_writes(),
        writes,
        "the warm path batches access times in memory"
    );
}
