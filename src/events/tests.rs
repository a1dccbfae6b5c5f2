use super::*;

const DIGEST: &str = "sha256:9700d8b9edbfe3b3fa8a8ad0cfa2d1fc5c220267f2eb4dab8dae70faef121f98";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/events/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(path).unwrap()
}

fn parse_file(name: &str, headers: &[(&'static str, &str)]) -> Parsed {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.insert(*k, v.parse().unwrap());
    }
    parse(&h, &fixture(name)).unwrap()
}

fn pushed(media_type: Option<&str>, size: Option<u64>) -> Change {
    Change::Pushed {
        tag: Tag::parse("1.0").unwrap(),
        digest: DIGEST.parse().unwrap(),
        media_type: media_type.map(str::to_owned),
        size,
    }
}

fn one(p: &Parsed) -> &Event {
    assert_eq!(p.events.len(), 1, "{p:?}");
    &p.events[0]
}

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";

#[test]
fn distribution_v1_push_carries_everything_a_head_needs() {
    let p = parse_file("distribution-v1-push.json", &[]);
    assert_eq!(p.format, "distribution");
    let e = one(&p);
    assert_eq!(e.repository, "team/app");
    assert_eq!(e.host.as_deref(), Some("127.0.0.1:5001"));
    assert_eq!(
        e.id.as_deref(),
        Some("c4ede200-8d53-4a0a-843c-d0013750aed9")
    );
    assert!(e.at_ms.is_some_and(|t| t > 1_700_000_000_000));
    assert_eq!(e.change, pushed(Some(OCI), Some(477)));
}

#[test]
fn distribution_pulls_and_blob_pushes_are_ignored() {
    for f in [
        "distribution-v1-pull.json",
        "distribution-v1-blob-push.json",
        "unknown-kind.json",
    ] {
        let p = parse_file(f, &[]);
        assert!(p.events.is_empty(), "{f}: {p:?}");
        assert!(p.ignored >= 1, "{f}");
    }
}

#[test]
fn distribution_delete_drops_the_tag_and_ignores_the_digest_event() {
    let p = parse_file("distribution-v1-delete.json", &[]);
    let e = one(&p);
    assert_eq!(
        e.change,
        Change::Deleted {
            tag: Tag::parse("1.0").unwrap()
        }
    );
    assert_eq!(p.ignored, 1, "the digest-only event");
    let p = parse_file("distribution-v2-delete-tag.json", &[]);
    assert_eq!(
        one(&p).change,
        Change::Deleted {
            tag: Tag::parse("1.0").unwrap()
        }
    );
    let p = parse_file("distribution-v2-delete-digest.json", &[]);
    assert!(p.events.is_empty());
}

#[test]
fn distribution_v2_push_and_batches() {
    let p = parse_file("distribution-v2-push.json", &[]);
    assert_eq!(one(&p).change, pushed(Some(OCI), Some(477)));
    let p = parse_file("distribution-v1-batch.json", &[]);
    assert!(p.events.len() >= 2, "{p:?}");
}

#[test]
fn harbor_default_and_cloudevents() {
    let p = parse_file("harbor-push.json", &[]);
    assert_eq!(p.format, "harbor");
    let e = one(&p);
    assert_eq!(e.repository, "team/app");
    assert_eq!(e.host.as_deref(), Some("harbor.example.com"));
    assert_eq!(e.change, pushed(None, None));
    assert!(e.at_ms.is_some());
    let p = parse_file("harbor-cloudevents-push.json", &[]);
    let e = one(&p);
    assert_eq!(e.change, pushed(None, None));
    assert!(e.id.as_deref().unwrap().starts_with("9004288c"));
    let p = parse_file("harbor-delete.json", &[]);
    assert_eq!(
        one(&p).change,
        Change::Deleted {
            tag: Tag::parse("1.0").unwrap()
        }
    );
    assert_eq!(one(&p).repository, "team/app");
}

#[test]
fn artifactory_push_and_delete() {
    let p = parse_file("artifactory-docker-pushed.json", &[]);
    assert_eq!(p.format, "artifactory");
    assert_eq!(one(&p).change, pushed(None, None));
    assert_eq!(one(&p).repository, "team/app");
    let p = parse_file("artifactory-docker-deleted.json", &[]);
    assert_eq!(
        one(&p).change,
        Change::Deleted {
            tag: Tag::parse("1.0").unwrap()
        }
    );
}

#[test]
fn github_package_published() {
    let p = parse_file(
        "github-package-published.json",
        &[("x-github-event", "package"), ("x-github-delivery", "d-1")],
    );
    assert_eq!(p.format, "github");
    let e = one(&p);
    assert_eq!(e.repository, "team/app");
    assert_eq!(e.host.as_deref(), Some("ghcr.io"));
    assert_eq!(e.id.as_deref(), Some("d-1"));
    assert_eq!(e.change, pushed(Some(OCI), Some(477)));
    // Another GitHub event kind is accepted and ignored.
    let p = parse_file(
        "github-package-published.json",
        &[("x-github-event", "push")],
    );
    assert!(p.events.is_empty() && p.ignored == 1);
}

#[test]
fn docker_hub_and_quay_can_only_expire_the_tag() {
    let moved = Change::Moved {
        tag: Tag::parse("1.0").unwrap(),
    };
    let p = parse_file("dockerhub-push.json", &[]);
    assert_eq!(one(&p).change, moved);
    assert_eq!(one(&p).repository, "team/app");
    let p = parse_file("quay-push.json", &[]);
    assert_eq!(one(&p).change, moved);
    assert_eq!(one(&p).host.as_deref(), Some("quay.io"));
}

#[test]
fn malformed_posts_are_errors() {
    let h = HeaderMap::new();
    assert!(parse(&h, &fixture("malformed.json")).is_err());
    assert!(parse(&h, b"{\"hello\": 1}").is_err());
    assert!(parse(&h, b"").is_err());
}
