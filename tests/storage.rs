//! Issue 4 through the proxy: the size budget under pulls, disk failures, purge
//! (admin API and CLI), fsck's exit code, and configuration errors.

use crate::support::*;
use futures_util::FutureExt as _;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

const MIB: usize = 1024 * 1024;

#[tokio::test]
async fn eviction_keeps_the_store_under_budget_while_pulls_run() {
    let up = FakeRegistry::start().await;
    let blobs: Vec<String> = (0..20)
        .map(|i| up.add_blob(bytes_of(MIB, 200 + i)))
        .collect();
    let (m, _) = up.add_image("library/app", "1", &[b"small"]);
    let toml = format!(
        "[cache]\nmax_size = \"5MiB\"\nhigh_watermark = 0.9\nlow_watermark = 0.6\n[[upstream]]\nname = \"up\"\nurl = \"{}\"\n",
        up.url()
    );
    let p = Proxied::with_toml(&up, &toml).await;
    p.get(&format!("/v2/library/app/manifests/{m}")).await;
    for (i, d) in blobs.iter().enumerate() {
        let r = p.get(&format!("/v2/library/app/blobs/{d}")).await;
        assert_eq!(body_digest(r).await.unwrap().0, *d);
        p.settled().await;
        // Eviction runs off the request path; give it a moment to land.
        for _ in 0..100 {
            if p.store().total_bytes() <= 5 * MIB as u64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            p.store().total_bytes() <= 5 * MIB as u64,
            "over budget after pull {i}"
        );
    }
    assert!(p.metric("ferry_evictions_total") >= 15);
    assert!(p.metric("ferry_evicted_bytes_total") >= 15 * MIB as u64);
    assert!(p.metric("ferry_store_blobs") <= 5);
    // The manifest survives eviction of blobs; an evicted blob comes back on demand.
    assert!(p.store().has_manifest(&m.parse().unwrap()).unwrap());
    let before = up.count("GET", |r| r.is_blob());
    let r = p.get(&format!("/v2/library/app/blobs/{}", blobs[0])).await;
    assert_eq!(body_digest(r).await.unwrap().0, blobs[0]);
    assert_eq!(up.count("GET", |r| r.is_blob()), before + 1);
    let text = p.get("/metrics").await.text().await.unwrap();
    assert!(text.contains("ferry_store_max_bytes 5242880"), "{text}");
    p.settled().await;
    assert!(p.store().fsck(true, false).unwrap().clean());
}

#[tokio::test]
async fn a_failing_disk_degrades_to_uncached_streaming_and_recovers() {
    let up = FakeRegistry::start().await;
    let a = up.add_blob(bytes_of(MIB, 300));
    let b = up.add_blob(bytes_of(MIB, 301));
    let p = Proxied::start(&up).await;
    p.store().faults().fail_writes.store(true, Ordering::SeqCst);
    // The fetch fails to write: this client is served from upstream, uncached.
    for _ in 0..3 {
        let r = p.get(&format!("/v2/library/app/blobs/{a}")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(body_digest(r).await.unwrap(), (a.clone(), MIB));
    }
    let r = p
        .get_with(
            &format!("/v2/library/app/blobs/{b}"),
            &[("range", "bytes=1000-1999")],
        )
        .await;
    assert_eq!(r.status(), 206);
    assert_eq!(
        &r.bytes().await.unwrap()[..],
        &bytes_of(MIB, 301)[1000..2000]
    );
    assert!(p.stored_size(&a).is_none());
    assert_eq!(
        p.metric("ferry_store_write_errors_total"),
        1,
        "degraded mode stops retrying the disk"
    );
    assert!(p.metric("ferry_uncached_passthrough_total") >= 3);
    assert!(p.store().fsck(true, false).unwrap().clean());
    assert_eq!(
        std::fs::read_dir(p.dir.path().join("tmp")).unwrap().count(),
        0
    );

    // The disk is back: after the retry window, caching resumes.
    p.store()
        .faults()
        .fail_writes
        .store(false, Ordering::SeqCst);
    p.advance(Duration::from_secs(31));
    body_digest(p.get(&format!("/v2/library/app/blobs/{a}")).await)
        .await
        .unwrap();
    p.settled().await;
    assert_eq!(p.stored_size(&a), Some(MIB as u64));
}

#[tokio::test]
async fn a_failing_commit_still_serves_the_verified_bytes() {
    let up = FakeRegistry::start().await;
    let a = up.add_blob(bytes_of(MIB, 302));
    let p = Proxied::start(&up).await;
    p.store()
        .faults()
        .fail_commits
        .store(true, Ordering::SeqCst);
    let r = p.get(&format!("/v2/library/app/blobs/{a}")).await;
    assert_eq!(body_digest(r).await.unwrap(), (a.clone(), MIB));
    p.settled().await;
    assert!(p.stored_size(&a).is_none());
    assert!(p.store().fsck(true, false).unwrap().clean());
}

async fn with_admin(up: &FakeRegistry) -> (Proxied, String) {
    let toml = format!(
        "admin_listen = \"127.0.0.1:0\"\n[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\n",
        up.url()
    );
    let p = Proxied::with_toml(up, &toml).await;
    let admin = p.admin_url("");
    (p, admin)
}

#[tokio::test]
async fn purge_through_the_admin_api_and_the_cli() {
    let up = FakeRegistry::start().await;
    let (m, layers) = up.add_image("library/app", "1", &[&bytes_of(1000, 1)]);
    up.add_image("library/app", "2", &[b"x"]);
    let (p, admin) = with_admin(&up).await;
    p.get("/v2/app/manifests/1").await;
    p.head("/v2/app/manifests/2").await;
    body_digest(p.get(&format!("/v2/app/blobs/{}", layers[0])).await)
        .await
        .unwrap();
    p.settled().await;
    let before = up.total();

    // A bad blob is cleared online: the next pull fetches it again.
    let c = reqwest::Client::new();
    let r = c
        .post(format!("{admin}/admin/purge?digest={}", layers[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(json(r).await["removed"], 1);
    body_digest(p.get(&format!("/v2/app/blobs/{}", layers[0])).await)
        .await
        .unwrap();
    p.settled().await;
    assert_eq!(up.total(), before + 1);

    // One tag: resolved afresh even inside its TTL.
    let r = c
        .post(format!(
            "{admin}/admin/purge?upstream=docker.io&repository=app&tag=1"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(json(r).await["removed"], 1);
    p.head("/v2/app/manifests/1").await;
    p.head("/v2/app/manifests/2").await;
    assert_eq!(
        up.total(),
        before + 2,
        "tag 1 asked upstream again, tag 2 still cached"
    );

    // The whole repository, through the CLI; its cached tag list goes too.
    // Async: the Ferry answering it runs on this test's runtime.
    let tag_lists = || up.count("GET", |r| r.path.ends_with("/tags/list"));
    assert_eq!(p.get("/v2/app/tags/list").await.status(), 200);
    assert_eq!(p.get("/v2/app/tags/list").await.status(), 200);
    assert_eq!(tag_lists(), 1);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "purge",
            "--admin",
            &admin,
            "--upstream",
            "docker.io",
            "--repository",
            "library/app",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"removed\":2"));
    assert_eq!(p.get("/v2/app/tags/list").await.status(), 200);
    assert_eq!(
        tag_lists(),
        2,
        "the purged repository's tag list is asked afresh"
    );
    // A purged manifest by digest goes too.
    let r = c
        .post(format!("{admin}/admin/purge?digest={m}"))
        .send()
        .await
        .unwrap();
    assert_eq!(json(r).await["removed"], 1);
    assert!(!p.store().has_manifest(&m.parse().unwrap()).unwrap());

    let r = c
        .get(format!("{admin}/admin/fsck?verify=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(json(r).await["clean"], true);
    assert_eq!(p.metric("ferry_fsck_findings"), 0);
    let hex = &layers[0]["sha256:".len()..];
    std::fs::write(
        p.dir.path().join("blobs/sha256").join(&hex[..2]).join(hex),
        b"tampered",
    )
    .unwrap();
    let r = c.get(format!("{admin}/admin/fsck")).send().await.unwrap();
    assert_eq!(json(r).await["clean"], false);
    assert_eq!(p.metric("ferry_fsck_findings"), 1);
    // The admin API is not on the client port.
    assert_eq!(
        p.client
            .post(p.url("/admin/purge?digest=x"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test]
async fn fsck_cli_exit_code_says_whether_the_store_is_clean() {
    let up = FakeRegistry::start().await;
    let d = up.add_blob(bytes_of(5000, 9));
    let p = Proxied::start(&up).await;
    body_digest(p.get(&format!("/v2/library/app/blobs/{d}")).await)
        .await
        .unwrap();
    let dir = p.dir.clone();
    p.stop().await;
    let fsck = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["fsck", "--data-dir"])
            .arg(dir.path())
            .args(extra)
            .output()
            .unwrap()
    };
    let out = fsck(&["--verify"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("store format 1\n"),
        "fsck shows the store's format"
    );
    let hex = &d["sha256:".len()..];
    std::fs::write(
        dir.path().join("blobs/sha256").join(&hex[..2]).join(hex),
        vec![0u8; 5000],
    )
    .unwrap();
    assert_eq!(
        fsck(&[]).status.code(),
        Some(0),
        "same size: only --verify sees it"
    );
    let out = fsck(&["--verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("do not hash"));
    assert_eq!(fsck(&["--verify", "--repair"]).status.code(), Some(1));
    assert_eq!(fsck(&["--verify"]).status.code(), Some(0), "repaired");
}

/// A data directory from a newer Ferry (a rollback) is refused before any
/// socket is bound, with the reason, and left as it was.
#[test]
fn a_store_from_a_newer_ferry_is_refused_at_start_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("index")).unwrap();
    std::fs::write(data.join("FORMAT"), "ferry-store 99\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("written by a newer Ferry (store format 99"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(data.join("FORMAT")).unwrap(),
        "ferry-store 99\n",
        "untouched"
    );
    assert!(!data.join("blobs").exists() && !data.join("tmp").exists());
}

#[test]
fn bad_configuration_exits_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        &cfg,
        format!("listen = \"127.0.0.1:{port}\"\n[freshness]\ntag_ttl = \"soonish\"\n"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tag_ttl") && err.contains("bad.toml"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "config",
            "check",
            "--upstream",
            "http://127.0.0.1:5001",
            "--tag-ttl",
            "60",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("127.0.0.1:5001 (default)"));
}

#[tokio::test]
async fn prefetch_caches_every_platform_so_pulls_cost_nothing_upstream() {
    let up = FakeRegistry::start().await;
    let shared: &[u8] = b"base layer both platforms share";
    let (amd, amd_layers) = up.add_image("library/multi", "amd64", &[shared, b"amd64 app"]);
    let (arm, arm_layers) = up.add_image("library/multi", "arm64", &[shared, b"arm64 app"]);
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{amd}","size":1}},{{"mediaType":"{OCI_MANIFEST}","digest":"{arm}","size":1}}]}}"#
    );
    let idx = up.add_manifest("library/multi", Some("1.0"), OCI_INDEX, index);
    let (p, admin) = with_admin(&up).await;
    let prefetch = |reference: &str| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["prefetch", "--admin", &admin, "--upstream", "docker.io"])
            .args(["--repository", "multi", "--reference", reference])
            .output()
    };
    let out = prefetch("1.0").await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // 2 configs + 3 distinct layers.
    assert_eq!(report["digest"], idx);
    assert_eq!(report["manifests"], 3);
    assert_eq!(report["blobs"], 5);
    assert_eq!(report["blobs_fetched"], 5);
    assert_eq!(
        up.count("GET", |r| r.is_blob()),
        5,
        "one GET per distinct blob"
    );
    p.settled().await;

    // Every platform pulls without a single upstream request inside the TTL.
    up.clear_requests();
    assert_eq!(p.head("/v2/multi/manifests/1.0").await.status(), 200);
    for (m, layers) in [(&amd, &amd_layers), (&arm, &arm_layers)] {
        let r = p.get(&format!("/v2/multi/manifests/{m}")).await;
        assert_eq!(r.status(), 200);
        for l in layers {
            let r = p.get(&format!("/v2/multi/blobs/{l}")).await;
            assert_eq!(body_digest(r).await.unwrap().0, *l);
        }
    }
    assert_eq!(up.total(), 0);

    // Again, by digest: everything is there already.
    let out = prefetch(&idx).await.unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["blobs_cached"], 5);
    assert_eq!(report["blobs_fetched"], 0);
    assert_eq!(up.count("GET", |r| r.is_blob()), 0);

    // A tag upstream does not have: the OCI error, and a failing exit code.
    let out = prefetch("nope").await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("MANIFEST_UNKNOWN"));
    let r = reqwest::Client::new()
        .post(format!(
            "{admin}/admin/prefetch?upstream=docker.io&repository=multi&reference=sha256:zz"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn a_digest_purge_waits_for_the_fetch_in_flight_so_it_sticks() {
    let up = FakeRegistry::start().await;
    let d = up.add_blob(bytes_of(200_000, 31));
    let p = Proxied::start(&up).await;
    let hold = &p.store().faults().hold_persists;
    hold.store(true, Ordering::SeqCst);
    let path = format!("/v2/library/app/blobs/{d}");
    // Served in full; the commit is held back, so the fetch is still in flight.
    assert_eq!(body_digest(p.get(&path).await).await.unwrap().0, d);
    assert_eq!(p.metric("ferry_inflight_fetches"), 1);
    // The purge `POST /admin/purge?digest=` runs, polled here so that it has
    // surely started (over HTTP, a request not yet handled looks the same as
    // one that waits): it finds the fetch and waits for it…
    let digest: ferry::oci::Digest = d.parse().unwrap();
    let purge = p.proxy.purge_digest(&digest, ferry::proxy::Origin::Client);
    tokio::pin!(purge);
    assert!(purge.as_mut().now_or_never().is_none(), "purged at once");
    // …as long as the commit is held. (That it never ends by itself cannot be
    // observed; a purge that did not wait would end within milliseconds.)
    tokio::time::timeout(Duration::from_millis(100), purge.as_mut())
        .await
        .expect_err("purged before the fetch landed");
    hold.store(false, Ordering::SeqCst);
    assert_eq!(purge.await.unwrap(), 1);
    assert_eq!(p.stored_size(&d), None);
    body_digest(p.get(&path).await).await.unwrap();
    assert_eq!(up.count("GET", |r| r.is_blob()), 2);
}

#[tokio::test]
async fn wrong_bytes_on_the_uncached_paths_abort_and_cache_nothing() {
    let up = FakeRegistry::start().await;
    let a = up.add_blob(bytes_of(MIB, 310));
    up.faults(|f| f.wrong_bytes = true);
    let p = Proxied::start(&up).await;
    p.store().faults().fail_writes.store(true, Ordering::SeqCst);
    let path = format!("/v2/library/app/blobs/{a}");
    // The first request meets the failing disk inside the fetch and continues
    // from upstream itself; the second finds the store degraded and relays.
    for round in 0..2 {
        let r = p.get(&path).await;
        assert_eq!(r.status(), 200, "round {round}");
        match body_digest(r).await {
            Err(_) => {}
            Ok((digest, len)) => panic!(
                "round {round}: a complete body of {len} bytes ({digest}) from corrupt upstream bytes"
            ),
        }
    }
    p.settled().await;
    assert!(p.stored_size(&a).is_none());
    assert!(p.metric("ferry_integrity_failures_total") >= 2);
    assert!(p.metric("ferry_uncached_passthrough_total") >= 2);
    assert!(p.store().fsck(true, false).unwrap().clean());
}

#[tokio::test]
async fn a_store_that_cannot_be_read_is_a_500_not_an_upstream_error() {
    let up = FakeRegistry::start().await;
    let (m, _) = up.add_image("library/app", "1", &[b"layer"]);
    let p = Proxied::start(&up).await;
    assert_eq!(p.head("/v2/library/app/manifests/1").await.status(), 200);
    p.store().faults().fail_reads.store(true, Ordering::SeqCst);
    // Upstream still answers: the answer is given.
    p.advance(Duration::from_secs(31));
    let r = p.head("/v2/library/app/manifests/1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "docker-content-digest"), Some(m.as_str()));
    let r = p.get(&format!("/v2/library/app/manifests/{m}")).await;
    assert_eq!(sha256(&r.bytes().await.unwrap()), m);
    // Upstream down too: the store's fault is what the client hears about.
    up.set_down(true);
    p.advance(Duration::from_secs(31));
    let r = p.head("/v2/library/app/manifests/1").await;
    assert_eq!(r.status(), 500, "a local fault never blames upstream");
    p.store().faults().fail_reads.store(false, Ordering::SeqCst);
    // The record is readable again: stale-if-error applies.
    assert_eq!(p.head("/v2/library/app/manifests/1").await.status(), 200);
}

/// Clears a held fault when dropped, so a failing assertion does not leave
/// the writer thread waiting forever (and the test hanging instead of failing).
struct Release<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// The next chunk of `r` (`None` at the end), within 10 s.
async fn next_chunk(r: &mut reqwest::Response, why: &str, got: usize) -> Option<bytes::Bytes> {
    tokio::time::timeout(Duration::from_secs(10), r.chunk())
        .await
        .unwrap_or_else(|_| panic!("{why}: stuck at {got} bytes"))
        .unwrap()
}

/// Reads `r` until it has `n` bytes, each chunk within 10 s.
async fn read_at_least(r: &mut reqwest::Response, n: usize, why: &str) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < n {
        let chunk = next_chunk(r, why, got.len())
            .await
            .unwrap_or_else(|| panic!("{why}: body ended at {} bytes", got.len()));
        got.extend_from_slice(&chunk);
    }
    got
}

/// Reads the rest of `r` onto `got`, each chunk within 10 s.
async fn read_to_end(r: &mut reqwest::Response, got: &mut Vec<u8>, why: &str) {
    while let Some(chunk) = next_chunk(r, why, got.len()).await {
        got.extend_from_slice(&chunk);
    }
}

/// The disk is not between upstream and the client: with every write held,
/// a cold blob's bytes still reach the client as they arrive, all but the
/// last, which waits until the file is written and its digest checks out.
#[tokio::test]
async fn a_client_streams_a_cold_blob_before_its_bytes_reach_the_disk() {
    let up = FakeRegistry::start().await;
    let d = up.add_blob(bytes_of(MIB, 320));
    let p = Proxied::start(&up).await;
    let hold = &p.store().faults().hold_writes;
    hold.store(true, Ordering::SeqCst);
    let _release = Release(hold);
    let mut r = p.get(&format!("/v2/library/app/blobs/{d}")).await;
    let mut got = read_at_least(&mut r, MIB - 1, "writes held").await;
    assert_eq!(got.len(), MIB - 1, "the last byte waits for the digest");
    let last = tokio::time::timeout(Duration::from_millis(300), r.chunk()).await;
    assert!(
        last.is_err(),
        "the last byte came before the file was written"
    );
    hold.store(false, Ordering::SeqCst);
    read_to_end(&mut r, &mut got, "writes released").await;
    assert_eq!(sha256(&got), d);
    p.settled().await;
    assert_eq!(p.stored_size(&d), Some(MIB as u64));
    assert_eq!(up.count("GET", |r| r.is_blob()), 1);
}

/// The disk fails after bytes went to the client but before any reached the
/// file: the response goes on from upstream, and the bytes it already sent
/// are hashed from memory, so the whole body is still verified.
#[tokio::test]
async fn a_disk_failing_under_bytes_sent_but_not_written_still_verifies_the_body() {
    let up = FakeRegistry::start().await;
    let d = up.add_blob(bytes_of(MIB, 321));
    let p = Proxied::start(&up).await;
    let faults = p.store().faults();
    faults.hold_writes.store(true, Ordering::SeqCst);
    let _release = Release(&faults.hold_writes);
    let mut r = p.get(&format!("/v2/library/app/blobs/{d}")).await;
    let mut got = read_at_least(&mut r, MIB / 2, "writes held").await;
    faults.fail_writes.store(true, Ordering::SeqCst);
    faults.hold_writes.store(false, Ordering::SeqCst);
    read_to_end(&mut r, &mut got, "disk failed").await;
    assert_eq!(got.len(), MIB);
    assert_eq!(sha256(&got), d);
    let ranged = up.requests();
    let ranged = ranged
        .iter()
        .filter(|r| r.is_blob() && r.headers.contains_key("range"));
    assert_eq!(ranged.count(), 1, "went on from upstream where it was");
    p.settled().await;
    assert!(p.stored_size(&d).is_none());
}
