//! Push events (issue 15): a moved tag is seen from the upstream's own
//! notification, with no upstream request, under a long TTL. The payloads are
//! the fixtures in tests/fixtures/events (real distribution 2.8.2 bodies, and
//! Harbor, Artifactory, GitHub, Docker Hub and Quay payloads checked against
//! their sources).

use crate::support::*;
use std::time::{Duration, UNIX_EPOCH};

const NEW: &str = "sha256:9700d8b9edbfe3b3fa8a8ad0cfa2d1fc5c220267f2eb4dab8dae70faef121f98";
const TAG: &str = "/v2/team/app/manifests/1.0";
const SECRET: &str = "ferry-test-secret";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/events/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// A fixture with its event times moved to `at_ms` (the fixtures were
/// recorded in the past; a cached tag is newer than that).
fn at(name: &str, at_ms: u64) -> Vec<u8> {
    let text = String::from_utf8(fixture(name)).unwrap();
    let rfc =
        humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_millis(at_ms)).to_string();
    let secs = (at_ms / 1000).to_string();
    let text = regex::Regex::new(r#""(timestamp|time)": ?"[^"]*""#)
        .unwrap()
        .replace_all(&text, |c: &regex::Captures| {
            format!("\"{}\": \"{rfc}\"", &c[1])
        });
    let text = regex::Regex::new(r#""(occur_at|pushed_at)": ?\d+"#)
        .unwrap()
        .replace_all(&text, |c: &regex::Captures| {
            format!("\"{}\": {secs}", &c[1])
        });
    text.into_owned().into_bytes()
}

/// The fake as an upstream that sends events, answering to every registry
/// host the fixtures name, with the fixtures' manifests: `team/app:1.0` at
/// the old one; the new one stored by digest.
async fn start(extra: &str) -> (FakeRegistry, Proxied, String) {
    let up = FakeRegistry::start().await;
    let old = up.add_manifest(
        "team/app",
        Some("1.0"),
        OCI_MANIFEST,
        fixture("manifest-app-1.0-old.json"),
    );
    let toml = format!(
        r#"[[upstream]]
name = "corp"
url = "{}"
aliases = ["127.0.0.1:5001", "harbor.example.com", "ghcr.io", "quay.io", "docker.io"]
library_prefix = false
[upstream.events]
secret = "{SECRET}"
{extra}"#,
        up.url()
    );
    let p = Proxied::with_toml(&up, &toml).await;
    (up, p, old)
}

/// Moves the tag upstream (as the push did) and stores the new manifest.
fn push_upstream(up: &FakeRegistry) {
    let d = up.add_manifest(
        "team/app",
        Some("1.0"),
        OCI_MANIFEST,
        fixture("manifest-app-1.0.json"),
    );
    assert_eq!(d, NEW);
}

async fn post(p: &Proxied, body: Vec<u8>, headers: &[(&str, &str)]) -> reqwest::Response {
    post_to(p, "/events/corp", body, headers).await
}

async fn post_to(
    p: &Proxied,
    path: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut r = p.client.post(p.url(path)).body(body);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.unwrap()
}

const BEARER: (&str, &str) = ("authorization", "Bearer ferry-test-secret");

async fn digest_of_tag(p: &Proxied) -> String {
    let r = p.head(TAG).await;
    assert_eq!(r.status(), 200);
    header(&r, "docker-content-digest").unwrap().to_string()
}

#[tokio::test]
async fn a_distribution_push_moves_the_tag_with_no_upstream_request() {
    let (up, p, old) = start("").await;
    assert_eq!(digest_of_tag(&p).await, old);
    push_upstream(&up);
    up.clear_requests();
    let r = post(
        &p,
        at("distribution-v1-push.json", p.clock.now_ms()),
        &[BEARER],
    )
    .await;
    assert_eq!(r.status(), 200);
    let report = json(r).await;
    assert_eq!(
        (report["format"].as_str(), report["applied"].as_u64()),
        (Some("distribution"), Some(1))
    );
    let r = p.head(TAG).await;
    assert_eq!(header(&r, "docker-content-digest"), Some(NEW));
    assert_eq!(header(&r, "content-type"), Some(OCI_MANIFEST));
    assert_eq!(header(&r, "content-length"), Some("477"));
    assert_eq!(up.total(), 0, "the event says it all: no upstream request");
    // Within the events TTL (1 h) the tag costs upstream nothing.
    p.advance(Duration::from_secs(50 * 60));
    assert_eq!(digest_of_tag(&p).await, NEW);
    assert_eq!(up.total(), 0);
    // The body is fetched by digest, once, and verified.
    let r = p.get(TAG).await;
    assert_eq!(sha256(&r.bytes().await.unwrap()), NEW);
    assert_eq!(up.count("GET", |r| r.path.ends_with(NEW)), 1);
    assert_eq!(
        p.metric(
            "ferry_events_total{upstream=\"corp\",format=\"distribution\",outcome=\"applied\"}"
        ),
        1
    );

    // Deleting the manifest (two events: the digest, then the tag) drops the tag.
    up.clear_requests();
    let r = post(
        &p,
        at("distribution-v1-delete.json", p.clock.now_ms()),
        &[BEARER],
    )
    .await;
    assert_eq!(json(r).await["applied"], 1);
    up.retag("team/app", "1.0", &old);
    assert_eq!(digest_of_tag(&p).await, old, "asked upstream again");
    assert_eq!(up.count("HEAD", |r| r.is_manifest()), 1);
}

#[tokio::test]
async fn posts_without_the_secret_or_malformed_change_nothing() {
    let (up, p, old) = start("").await;
    assert_eq!(digest_of_tag(&p).await, old);
    push_upstream(&up);
    let body = || at("distribution-v1-push.json", p.clock.now_ms());
    for (headers, status) in [
        (vec![], 401),
        (vec![("authorization", "Bearer wrong-secret-value")], 401),
        (vec![("authorization", "Basic ZmVycnk6dGVzdA==")], 401),
    ] {
        let r = post(&p, body(), &headers).await;
        assert_eq!(r.status(), status, "{headers:?}");
        assert_eq!(error_code(r).await, "UNAUTHORIZED");
    }
    let r = post(&p, fixture("malformed.json"), &[BEARER]).await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "UNSUPPORTED");
    // A GitHub post with a signature that does not match is refused.
    let github = fixture("github-package-published.json");
    let r = post(
        &p,
        github.clone(),
        &[
            ("x-github-event", "package"),
            ("x-hub-signature-256", "sha256=00ff"),
        ],
    )
    .await;
    assert_eq!(r.status(), 401);
    // An upstream that does not receive events.
    let r = p
        .client
        .post(p.url("/events/nope"))
        .body(body())
        .header(BEARER.0, BEARER.1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    p.advance(Duration::from_secs(1));
    assert_eq!(digest_of_tag(&p).await, old, "nothing changed");
    assert_eq!(
        p.metric("ferry_events_total{upstream=\"corp\",format=\"unknown\",outcome=\"rejected\"}"),
        5
    );

    // Signed right, the same GitHub post applies.
    let sig = "sha256=da18c046b046f0571256a734a05192fd9f3827436f16dec815044992178b0e88";
    let r = post(
        &p,
        github,
        &[("x-github-event", "package"), ("x-hub-signature-256", sig)],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(json(r).await["applied"], 1);
    assert_eq!(digest_of_tag(&p).await, NEW);
}

#[tokio::test]
async fn replayed_and_out_of_order_events_are_applied_once_in_order() {
    let (up, p, old) = start("").await;
    assert_eq!(digest_of_tag(&p).await, old);
    push_upstream(&up);
    p.advance(Duration::from_secs(1));
    let now = p.clock.now_ms();
    // The newer push (10 ms ago) arrives first…
    let r = post(&p, at("distribution-v1-push.json", now - 10), &[BEARER]).await;
    let report = json(r).await;
    assert_eq!(report["applied"], 1, "{report}");
    // …then the same event again (a retry): applied once.
    let r = post(&p, at("distribution-v1-push.json", now - 10), &[BEARER]).await;
    assert_eq!(json(r).await["duplicate"], 1);
    // An older push (20 ms ago, another id) arriving late does not roll it back.
    let older = String::from_utf8(at("distribution-v1-push.json", now - 20))
        .unwrap()
        .replace("c4ede200-8d53-4a0a-843c-d0013750aed9", "0ld-event-id")
        .replace(NEW, &old);
    let r = post(&p, older.into_bytes(), &[BEARER]).await;
    assert_eq!(json(r).await["outdated"], 1);
    assert_eq!(digest_of_tag(&p).await, NEW);
}

#[tokio::test]
async fn an_event_before_the_manifest_is_readable_completes_once_it_is() {
    let (up, p, old) = start("").await;
    assert_eq!(digest_of_tag(&p).await, old);
    // Harbor says 1.0 is NEW, without a media type; upstream does not serve NEW yet.
    let r = post(&p, at("harbor-push.json", p.clock.now_ms()), &[BEARER]).await;
    assert_eq!(json(r).await["applied"], 1);
    // Meanwhile a HEAD gets what upstream says now.
    assert_eq!(digest_of_tag(&p).await, old);
    // Upstream catches up; Ferry's retries read the manifest and complete the tag.
    push_upstream(&up);
    let mut moved = false;
    for _ in 0..100 {
        up.clear_requests();
        if digest_of_tag(&p).await == NEW {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(moved, "the pushed digest is served once upstream has it");
    let r = p.head(TAG).await;
    assert_eq!(
        header(&r, "content-type"),
        Some(OCI_MANIFEST),
        "media type learnt from the manifest"
    );
    up.clear_requests();
    assert_eq!(digest_of_tag(&p).await, NEW);
    assert_eq!(up.total(), 0);
}

#[tokio::test]
async fn every_format_reaches_the_tag() {
    // Pushes with a digest set the tag; Docker Hub and Quay can only expire it.
    for (file, headers) in [
        (
            "harbor-cloudevents-push.json",
            vec![BEARER, ("content-type", "application/cloudevents+json")],
        ),
        (
            "artifactory-docker-pushed.json",
            vec![("x-ferry-secret", SECRET)],
        ),
        ("distribution-v2-push.json", vec![BEARER]),
    ] {
        let (up, p, old) = start("").await;
        assert_eq!(digest_of_tag(&p).await, old);
        push_upstream(&up);
        let r = post(&p, at(file, p.clock.now_ms()), &headers).await;
        assert_eq!(json(r).await["applied"], 1, "{file}");
        assert_eq!(digest_of_tag(&p).await, NEW, "{file}");
    }
    for file in ["dockerhub-push.json", "quay-push.json"] {
        let (up, p, old) = start("").await;
        assert_eq!(digest_of_tag(&p).await, old);
        push_upstream(&up);
        up.clear_requests();
        // They cannot send headers: the secret is in the URL.
        let path = format!("/events/corp?token={SECRET}");
        let body = at(file, p.clock.now_ms());
        let r = post_to(&p, &path, body, &[]).await;
        let report = json(r).await;
        assert_eq!(report["applied"], 1, "{file}: {report}");
        assert_eq!(digest_of_tag(&p).await, NEW, "{file}: revalidated at once");
        assert_eq!(up.count("HEAD", |r| r.is_manifest()), 1, "{file}");
    }
    // Pulls, blob pushes and unknown kinds are accepted and ignored.
    let (_up, p, _old) = start("").await;
    for file in [
        "distribution-v1-pull.json",
        "distribution-v1-blob-push.json",
        "unknown-kind.json",
    ] {
        let r = post(&p, fixture(file), &[BEARER]).await;
        assert_eq!(r.status(), 200, "{file}");
        let report = json(r).await;
        assert_eq!(
            (report["applied"].as_u64(), report["ignored"].as_u64()),
            (Some(0), Some(1)),
            "{file}"
        );
    }
}

#[tokio::test]
async fn a_push_forgets_the_tag_list_and_prewarm_fetches_the_image() {
    let (up, p, _old) = start("prewarm = [\"team/.*\"]").await;
    up.add_tag_names("team/app", &["1.0"], NEW);
    let list = || async { p.get("/v2/team/app/tags/list").await.status() };
    assert_eq!(list().await, 200);
    assert_eq!(list().await, 200);
    assert_eq!(up.count("GET", |r| r.path.ends_with("/tags/list")), 1);
    push_upstream(&up);
    for blob in ["config-app-1.0.json", "layer-app-1.0.tar.gz"] {
        up.add_blob(fixture(blob));
    }
    let r = post(
        &p,
        at("distribution-v1-push.json", p.clock.now_ms()),
        &[BEARER],
    )
    .await;
    assert_eq!(json(r).await["applied"], 1);
    assert_eq!(list().await, 200);
    assert_eq!(
        up.count("GET", |r| r.path.ends_with("/tags/list")),
        2,
        "asked again after the push"
    );
    // Pre-warm: the pushed image's blobs land without a client asking.
    let layer = sha256(&fixture("layer-app-1.0.tar.gz"));
    for _ in 0..100 {
        if p.stored_size(&layer).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(p.stored_size(&layer), Some(130));
}

#[tokio::test]
async fn tag_lists_and_referrers_survive_a_restart_with_upstream_down() {
    let up = FakeRegistry::start().await;
    let (m, _) = up.add_image("library/app", "1", &[b"l"]);
    up.add_tag_names("library/app", &["1", "2"], &m);
    up.add_referrers(
        &m,
        serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
            .to_string(),
    );
    let p = Proxied::start(&up).await;
    let list = p
        .get("/v2/library/app/tags/list")
        .await
        .text()
        .await
        .unwrap();
    let refs = p
        .get(&format!("/v2/library/app/referrers/{m}"))
        .await
        .text()
        .await
        .unwrap();
    let (dir, clock) = (p.dir.clone(), p.clock.clone());
    p.stop().await;
    up.set_down(true);
    let config = ferry::config::Config::for_upstream(&up.url(), dir.path()).unwrap();
    let p = Proxied::from_config(config, dir, clock).await;
    p.advance(Duration::from_secs(600));
    let r = p.get("/v2/library/app/tags/list").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), list);
    let r = p.get(&format!("/v2/library/app/referrers/{m}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), refs);
    assert_eq!(p.metric("ferry_stale_answers_total"), 2);
}

/// A store that fails while an event is applied must not lose the event: the
/// post is answered 503 (every sender retries until a 2xx), the id is not
/// remembered, and the retry applies it.
#[tokio::test]
async fn an_event_the_store_could_not_record_is_applied_when_the_sender_retries() {
    let (up, p, old) = start("").await;
    assert_eq!(digest_of_tag(&p).await, old);
    push_upstream(&up);
    p.advance(Duration::from_secs(1));
    let event = at("distribution-v1-push.json", p.clock.now_ms() - 10);
    p.store()
        .faults()
        .fail_reads
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let r = post(&p, event.clone(), &[BEARER]).await;
    assert_eq!(r.status(), 503);
    assert_eq!(header(&r, "retry-after"), Some("1"));
    let report = json(r).await;
    assert_eq!(
        (report["failed"].as_u64(), report["applied"].as_u64()),
        (Some(1), Some(0)),
        "{report}"
    );
    assert_eq!(
        p.metric(
            "ferry_events_total{upstream=\"corp\",format=\"distribution\",outcome=\"failed\"}"
        ),
        1
    );
    p.store()
        .faults()
        .fail_reads
        .store(false, std::sync::atomic::Ordering::SeqCst);
    // The retry: applied, not skipped as a duplicate.
    let r = post(&p, event.clone(), &[BEARER]).await;
    assert_eq!(r.status(), 200);
    let report = json(r).await;
    assert_eq!(
        (report["applied"].as_u64(), report["duplicate"].as_u64()),
        (Some(1), Some(0)),
        "{report}"
    );
    up.clear_requests();
    assert_eq!(digest_of_tag(&p).await, NEW);
    assert_eq!(up.total(), 0);
    // And once applied, a further retry is a duplicate.
    let r = post(&p, event, &[BEARER]).await;
    assert_eq!(json(r).await["duplicate"], 1);
}
