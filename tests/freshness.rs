//! Issue 3: tag freshness, single-flight, stale-if-error, 429s, negative answers.
//! Time is a manual clock moved by the test; nothing sleeps to wait.

use crate::support::*;
use std::sync::Arc;
use std::time::Duration;

const TAG: &str = "/v2/library/app/manifests/latest";

/// An HTTP/2 client: a thousand concurrent requests over one connection.
fn h2() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
}

async fn heads(p: &Proxied, n: usize, path: &str) -> Vec<(u16, Option<String>)> {
    let client = h2();
    let reqs = (0..n).map(|_| {
        let req = client.head(p.url(path)).send();
        async move {
            let r = req.await.unwrap();
            (
                r.status().as_u16(),
                header(&r, "docker-content-digest").map(str::to_owned),
            )
        }
    });
    futures_util::future::join_all(reqs).await
}

#[tokio::test]
async fn a_thousand_warm_heads_inside_the_ttl_cost_nothing_upstream() {
    let up = FakeRegistry::start().await;
    let (d, _) = up.add_image("library/app", "latest", &[b"l"]);
    let p = Proxied::start(&up).await;
    p.head(TAG).await;
    let before = up.total();
    p.advance(Duration::from_secs(29));
    for (status, digest) in heads(&p, 1000, TAG).await {
        assert_eq!((status, digest.as_deref()), (200, Some(d.as_str())));
    }
    assert_eq!(up.total() - before, 0);
    assert_eq!(p.metric("ferry_cache_hits_total{kind=\"tag\"}"), 1000);
}

#[tokio::test]
async fn a_thousand_heads_of_a_stale_tag_cost_one_upstream_head() {
    let up = FakeRegistry::start().await;
    let (d, _) = up.add_image("library/app", "latest", &[b"l"]);
    let p = Proxied::start(&up).await;
    p.head(TAG).await;
    up.clear_requests();
    p.advance(Duration::from_secs(31));
    // A slow upstream answer, so the thousand requests really overlap the revalidation.
    up.faults(|f| f.delay = Some(Duration::from_millis(300)));
    for (status, digest) in heads(&p, 1000, TAG).await {
        assert_eq!((status, digest.as_deref()), (200, Some(d.as_str())));
    }
    assert_eq!(up.count("HEAD", |r| r.is_manifest()), 1);
    assert_eq!(up.total(), 1, "no GET: the digest did not change");
    assert!(
        p.metric("ferry_coalesced_requests_total") > 0,
        "requests joined the revalidation in flight"
    );
}

#[tokio::test]
async fn tag_ttl_is_configurable_per_repository_and_tag() {
    let up = FakeRegistry::start().await;
    up.add_image("library/app", "latest", &[b"l"]);
    up.add_image("library/app", "1.2.3", &[b"m"]);
    up.add_image("library/other", "latest", &[b"n"]);
    let toml = format!(
        r#"
        [freshness]
        tag_ttl = "10s"
        immutable_tags = ['v?\d+\.\d+\.\d+']
        [[upstream]]
        name = "up"
        url = "{}"
        [[upstream.rule]]
        repository = "library/other"
        tag_ttl = "1h"
        "#,
        up.url()
    );
    let p = Proxied::with_toml(&up, &toml).await;
    for path in [
        TAG,
        "/v2/library/app/manifests/1.2.3",
        "/v2/library/other/manifests/latest",
    ] {
        assert_eq!(p.head(path).await.status(), 200);
    }
    up.clear_requests();
    p.advance(Duration::from_secs(11));
    for path in [
        TAG,
        "/v2/library/app/manifests/1.2.3",
        "/v2/library/other/manifests/latest",
    ] {
        assert_eq!(p.head(path).await.status(), 200);
    }
    let revalidated: Vec<String> = up.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        revalidated,
        ["/v2/library/app/manifests/latest"],
        "only the 10s tag; semver is immutable, other has 1h"
    );
    p.advance(Duration::from_secs(3600 * 24 * 365));
    p.head("/v2/library/app/manifests/1.2.3").await;
    assert_eq!(
        up.count("HEAD", |r| r.path.ends_with("1.2.3")),
        0,
        "immutable: never revalidated"
    );
}

#[tokio::test]
async fn a_moved_tag_is_seen_on_the_first_request_after_the_ttl() {
    let up = FakeRegistry::start().await;
    let (old, _) = up.add_image("library/app", "latest", &[b"old"]);
    let (new, _) = up.add_image("library/app", "next", &[b"new"]);
    let p = Proxied::start(&up).await;
    let r = p.get(TAG).await;
    assert_eq!(header(&r, "docker-content-digest"), Some(old.as_str()));
    up.retag("library/app", "latest", &new);
    up.clear_requests();
    p.advance(Duration::from_secs(29));
    assert_eq!(
        header(&p.head(TAG).await, "docker-content-digest"),
        Some(old.as_str())
    );
    assert_eq!(up.total(), 0);
    p.advance(Duration::from_secs(2));
    assert_eq!(
        header(&p.head(TAG).await, "docker-content-digest"),
        Some(new.as_str())
    );
    let r = p.get(TAG).await;
    assert_eq!(sha256(&r.bytes().await.unwrap()), new);
    assert_eq!(up.count("HEAD", |r| r.is_manifest()), 1);
    assert_eq!(
        up.count("GET", |r| r.is_manifest()),
        1,
        "the new body, by digest, once"
    );
    assert!(up
        .requests()
        .iter()
        .all(|r| r.method != "GET" || r.path.ends_with(&new)));
}

#[tokio::test]
async fn stale_if_error_serves_the_last_answer_then_gives_up() {
    let up = FakeRegistry::start().await;
    let (d, _) = up.add_image("library/app", "latest", &[b"l"]);
    let toml = format!(
        "[freshness]\ntag_ttl = \"30s\"\nstale_if_error = \"1h\"\n[[upstream]]\nname = \"up\"\nurl = \"{}\"\n",
        up.url()
    );
    let p = Proxied::with_toml(&up, &toml).await;
    p.get(TAG).await;
    for (n, fault) in [(500, None), (503, None), (429, Some(1))]
        .into_iter()
        .enumerate()
    {
        up.faults(|f| f.status = Some((fault.0, fault.1)));
        p.advance(Duration::from_secs(31));
        let r = p.get(TAG).await;
        assert_eq!(r.status(), 200, "upstream {}", fault.0);
        assert_eq!(sha256(&r.bytes().await.unwrap()), d);
        assert_eq!(p.metric("ferry_stale_answers_total"), n as u64 + 1);
    }
    up.faults(|f| f.status = None);
    up.set_down(true);
    p.advance(Duration::from_secs(31));
    assert_eq!(
        p.head(TAG).await.status(),
        200,
        "connection refused is an outage too"
    );
    p.advance(Duration::from_secs(3600));
    let r = p.head(TAG).await;
    assert_eq!(r.status(), 503, "past stale_if_error, the outage shows");
}

#[tokio::test]
async fn upstream_404_is_final_and_remembered_briefly() {
    let up = FakeRegistry::start().await;
    up.add_image("library/app", "latest", &[b"l"]);
    let p = Proxied::start(&up).await;
    let typo = "/v2/library/app/manifests/latset";
    for _ in 0..20 {
        assert_eq!(p.head(typo).await.status(), 404);
    }
    assert_eq!(
        up.total(),
        1,
        "a crash-looping typo costs one upstream request"
    );
    assert_eq!(p.metric("ferry_negative_hits_total"), 19);
    p.advance(Duration::from_secs(16));
    assert_eq!(p.head(typo).await.status(), 404);
    assert_eq!(up.total(), 2, "asked again after negative_ttl");

    // A tag deleted upstream stops resolving once revalidated.
    p.head(TAG).await;
    up.retag(
        "library/app",
        "latest",
        "sha256:0000000000000000000000000000000000000000000000000000000000000000",
    );
    p.advance(Duration::from_secs(31));
    assert_eq!(p.head(TAG).await.status(), 404);
}

#[tokio::test]
async fn rate_limits_are_honoured_and_coalesced() {
    let up = FakeRegistry::start().await;
    let (d, _) = up.add_image("library/app", "latest", &[b"l"]);
    let p = Proxied::start(&up).await;
    p.head(TAG).await;
    up.faults(|f| f.status = Some((429, Some(60))));
    up.clear_requests();
    // Uncached: 429 with Retry-After, and client retries do not reach upstream.
    let uncached = "/v2/library/app/manifests/other";
    let r = p.get(uncached).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = header(&r, "retry-after").unwrap().parse().unwrap();
    assert!((59..=60).contains(&retry), "{retry}");
    assert_eq!(error_code(r).await, "TOOMANYREQUESTS");
    for _ in 0..5 {
        assert_eq!(p.get(uncached).await.status(), 429);
    }
    assert_eq!(
        up.total(),
        1,
        "5 client retries, no further upstream request"
    );
    // Cached and past its TTL: served stale meanwhile, upstream left alone.
    p.advance(Duration::from_secs(31));
    let r = p.head(TAG).await;
    assert_eq!(
        (r.status().as_u16(), header(&r, "docker-content-digest")),
        (200, Some(d.as_str()))
    );
    assert_eq!(up.total(), 1);
    // After Retry-After, upstream is asked again.
    up.faults(|f| f.status = None);
    p.advance(Duration::from_secs(30));
    assert_eq!(p.get(uncached).await.status(), 404);
    assert_eq!(p.metric("ferry_stale_answers_total"), 1);
    assert_eq!(up.total(), 2);
}

#[tokio::test]
async fn head_without_digest_falls_back_to_get() {
    let up = FakeRegistry::start().await;
    let (d, _) = up.add_image("library/app", "latest", &[b"l"]);
    up.faults(|f| f.head_without_digest = true);
    let p = Proxied::start(&up).await;
    let r = p.head(TAG).await;
    assert_eq!(header(&r, "docker-content-digest"), Some(d.as_str()));
    assert_eq!(up.count("GET", |r| r.is_manifest()), 1);
}

#[tokio::test]
async fn cached_content_is_served_when_upstream_dies_and_after_a_restart() {
    let up = FakeRegistry::start().await;
    let (m, layers) = up.add_image("library/app", "latest", &[&bytes_of(100_000, 1)]);
    let (_, uncached_layers) = up.add_image("library/app", "other", &[&bytes_of(1000, 2)]);
    let p = Proxied::start(&up).await;
    p.get(TAG).await;
    body_digest(p.get(&format!("/v2/library/app/blobs/{}", layers[0])).await)
        .await
        .unwrap();
    let dir = p.dir.clone();
    let clock = p.clock.clone();
    p.stop().await;

    up.set_down(true);
    let config = ferry::config::Config::for_upstream(&up.url(), dir.path()).unwrap();
    let p = Proxied::from_config(config, dir, clock).await;
    p.advance(Duration::from_secs(600));
    let r = p.get(TAG).await;
    assert_eq!(r.status(), 200);
    assert_eq!(sha256(&r.bytes().await.unwrap()), m);
    let r = p.get(&format!("/v2/library/app/blobs/{}", layers[0])).await;
    assert_eq!(body_digest(r).await.unwrap().0, layers[0]);
    let r = p
        .get(&format!("/v2/library/app/blobs/{}", uncached_layers[0]))
        .await;
    assert_eq!(r.status(), 503);
    assert_eq!(error_code(r).await, "UNAVAILABLE");
    let r = p.get("/v2/library/app/manifests/other").await;
    assert_eq!(r.status(), 503);
    assert_eq!(error_code(r).await, "UNAVAILABLE");
}

// ------------------------------------------------------------ blob herds

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_clients_on_one_cold_64mib_blob_share_one_upstream_get() {
    let up = FakeRegistry::start().await;
    let d = up.add_blob(bytes_of(64 * MIB, 42));
    // Upstream stops halfway until every client has its first bytes.
    let gate = up.gate(32 * MIB);
    let p = Proxied::start(&up).await;
    let path = format!("/v2/library/app/blobs/{d}");
    let (first_tx, mut first_rx) = tokio::sync::mpsc::channel::<()>(100);
    // HTTP/1.1, a connection per client, as docker and containerd pull.
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (req, tx) = (client.get(p.url(&path)).send(), first_tx.clone());
        tasks.push(tokio::spawn(async move {
            let mut r = req.await.unwrap();
            assert_eq!(r.status(), 200);
            let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
            let mut n = 0;
            let mut told = false;
            while let Some(c) = r.chunk().await.unwrap() {
                if !told && !c.is_empty() {
                    tx.send(()).await.unwrap();
                    told = true;
                }
                n += c.len();
                sha2::Digest::update(&mut hasher, &c);
            }
            (
                format!("sha256:{}", hex::encode(sha2::Digest::finalize(hasher))),
                n,
            )
        }));
    }
    for _ in 0..100 {
        tokio::time::timeout(Duration::from_secs(60), first_rx.recv())
            .await
            .expect("every client gets bytes while upstream is still mid-transfer");
    }
    assert_eq!(up.blob_bodies_completed(), 0, "upstream has not finished");
    gate.release();
    for t in tasks {
        assert_eq!(t.await.unwrap(), (d.clone(), 64 * MIB));
    }
    assert_eq!(up.count("GET", |r| r.is_blob()), 1);
    // Clients have their last byte once it verifies; the fetch deregisters
    // after the blob is durable (an fsync of 64 MiB), not before.
    p.settled().await;
    assert_eq!(p.metric("ferry_inflight_fetches"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_does_not_cancel_the_fetch_for_the_others() {
    let up = FakeRegistry::start().await;
    let d = up.add_blob(bytes_of(4 * MIB, 7));
    let gate = up.gate(MIB);
    let p = Proxied::start(&up).await;
    let path = format!("/v2/library/app/blobs/{d}");
    let mut leader = p.get(&path).await;
    assert!(!leader.chunk().await.unwrap().unwrap().is_empty());
    let follower = tokio::spawn({
        let req = p.client.get(p.url(&path)).send();
        async move { body_digest(req.await.unwrap()).await.unwrap() }
    });
    drop(leader);
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.release();
    assert_eq!(follower.await.unwrap(), (d.clone(), 4 * MIB));
    assert_eq!(up.count("GET", |r| r.is_blob()), 1);
    p.settled().await;
    assert_eq!(p.stored_size(&d), Some(4 * MIB as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_bytes_under_concurrency_reach_no_client_as_a_clean_200() {
    let up = FakeRegistry::start().await;
    let d = up.add_blob(bytes_of(8 * MIB, 9));
    up.faults(|f| {
        f.wrong_bytes = true;
        f.throttle = Some((256 * 1024, Duration::from_millis(2)));
    });
    let p = Proxied::start(&up).await;
    let path = format!("/v2/library/app/blobs/{d}");
    let client = h2();
    let gets = (0..20).map(|_| {
        let req = client.get(p.url(&path)).send();
        async move {
            match req.await {
                Ok(r) if r.status() == 200 => body_digest(r).await.ok(),
                _ => None,
            }
        }
    });
    let results = futures_util::future::join_all(gets).await;
    assert!(
        results.iter().all(Option::is_none),
        "someone got a complete 200: {results:?}"
    );
    assert!(p.stored_size(&d).is_none());
    assert_eq!(up.count("GET", |r| r.is_blob()), 1);
    up.faults(|f| f.wrong_bytes = false);
    let r = p.get(&path).await;
    assert_eq!(
        body_digest(r).await.unwrap().0,
        d,
        "a fresh fetch once upstream is fixed"
    );
    assert_eq!(up.count("GET", |r| r.is_blob()), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fetch_fails_every_waiter_and_the_next_request_starts_afresh() {
    let up = FakeRegistry::start().await;
    let d = up.add_blob(bytes_of(2 * MIB, 11));
    up.faults(|f| {
        f.drop_after = Some((1000, MIB));
        f.ignore_range = true;
    });
    let p = Arc::new(Proxied::start(&up).await);
    let path = format!("/v2/library/app/blobs/{d}");
    let gets = (0..5).map(|_| {
        let req = p.client.get(p.url(&path)).send();
        async move {
            match req.await {
                Ok(r) if r.status() == 200 => body_digest(r).await.is_ok(),
                _ => false,
            }
        }
    });
    assert!(futures_util::future::join_all(gets)
        .await
        .iter()
        .all(|ok| !ok));
    up.faults(|f| {
        f.drop_after = None;
        f.ignore_range = false;
    });
    let r = p.get(&path).await;
    assert_eq!(body_digest(r).await.unwrap().0, d);
}

#[tokio::test]
async fn blob_metrics_count_hits_misses_bytes_and_waiters() {
    let up = FakeRegistry::start().await;
    let d = up.add_blob(bytes_of(100_000, 12));
    let p = Proxied::start(&up).await;
    let path = format!("/v2/library/app/blobs/{d}");
    body_digest(p.get(&path).await).await.unwrap();
    p.settled().await;
    body_digest(p.get(&path).await).await.unwrap();
    assert_eq!(p.metric("ferry_cache_misses_total{kind=\"blob\"}"), 1);
    assert_eq!(p.metric("ferry_cache_hits_total{kind=\"blob\"}"), 1);
    assert_eq!(p.metric("ferry_bytes_served_total"), 200_000);
    assert!(p.metric("ferry_bytes_fetched_total") >= 100_000);
    assert_eq!(p.metric("ferry_inflight_waiters"), 0);
}

#[tokio::test]
async fn tag_lists_are_cached_for_the_ttl_and_served_stale_in_an_outage() {
    let up = FakeRegistry::start().await;
    let (m, _) = up.add_image("library/app", "1", &[b"x"]);
    up.add_tag_names("library/app", &["2", "3"], &m);
    let p = Proxied::start(&up).await;
    let lists = || up.count("GET", |r| r.path.ends_with("/tags/list"));
    let tags = |path: &'static str| {
        let p = &p;
        async move {
            let r = p.get(path).await;
            assert_eq!(r.status(), 200, "{path}");
            json(r).await["tags"].clone()
        }
    };
    assert_eq!(
        tags("/v2/library/app/tags/list").await,
        serde_json::json!(["1", "2", "3"])
    );
    assert_eq!(
        tags("/v2/library/app/tags/list").await,
        serde_json::json!(["1", "2", "3"])
    );
    assert_eq!(lists(), 1, "inside the TTL");
    assert_eq!(p.metric("ferry_cache_hits_total{kind=\"tag_list\"}"), 1);
    // Another page is another query.
    assert_eq!(
        tags("/v2/library/app/tags/list?n=2").await,
        serde_json::json!(["1", "2"])
    );
    assert_eq!(lists(), 2);

    // A new tag upstream shows once the TTL has passed.
    up.add_tag_names("library/app", &["4"], &m);
    p.advance(Duration::from_secs(31));
    assert_eq!(
        tags("/v2/library/app/tags/list").await,
        serde_json::json!(["1", "2", "3", "4"])
    );
    assert_eq!(lists(), 3);

    // Upstream down: the last answer, counted as stale; nothing cached: an error.
    up.set_down(true);
    p.advance(Duration::from_secs(31));
    let stale_before = p.metric("ferry_stale_answers_total");
    assert_eq!(
        tags("/v2/library/app/tags/list").await,
        serde_json::json!(["1", "2", "3", "4"])
    );
    assert_eq!(p.metric("ferry_stale_answers_total"), stale_before + 1);
    let r = p.get("/v2/library/other/tags/list").await;
    assert_eq!(r.status(), 503);
    assert_eq!(error_code(r).await, "UNAVAILABLE");
    // Past stale_if_error (24 h by default), the outage shows.
    p.advance(Duration::from_secs(25 * 3600));
    assert_eq!(p.get("/v2/library/app/tags/list").await.status(), 503);
}

#[tokio::test]
async fn referrers_are_cached_for_the_ttl_and_served_stale_in_an_outage() {
    let up = FakeRegistry::start().await;
    let subject = sha256(b"image");
    let sig = sha256(b"signature");
    up.add_referrers(
        &subject,
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{sig}","size":9,"artifactType":"application/vnd.dev.cosign"}}]}}"#
        ),
    );
    let p = Proxied::start(&up).await;
    let path = format!("/v2/library/app/referrers/{subject}");
    let asked = || up.count("GET", |r| r.path.contains("/referrers/"));
    let digests = |r: serde_json::Value| {
        r["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["digest"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    // An admission controller verifying signatures on every pod start.
    for _ in 0..5 {
        let r = p.get(&path).await;
        assert_eq!(r.status(), 200);
        assert_eq!(digests(json(r).await), vec![sig.clone()]);
    }
    assert_eq!(asked(), 1);
    assert_eq!(p.metric("ferry_cache_hits_total{kind=\"referrers\"}"), 4);
    // Past the TTL with upstream down: the last answer.
    up.set_down(true);
    p.advance(Duration::from_secs(31));
    let r = p.get(&path).await;
    assert_eq!(r.status(), 200);
    assert_eq!(digests(json(r).await), vec![sig.clone()]);
    assert_eq!(p.metric("ferry_stale_answers_total"), 1);
    // Nothing kept for this subject: the outage shows.
    let other = sha256(b"other");
    let r = p.get(&format!("/v2/library/app/referrers/{other}")).await;
    assert_eq!(r.status(), 503);
    assert_eq!(error_code(r).await, "UNAVAILABLE");
}
