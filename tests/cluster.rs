//! Replicas that act as one cache (`[cluster]`, issue 23): three replicas in
//! one process (static members, one peer secret, real sockets) in front of
//! the counting fake upstream. Owners are computed with the same formula
//! Ferry uses (`ferry::cluster::ring`), so each test knows who must fetch.

use crate::support::hostile::{Answer, Hostile};
use crate::support::*;
use ferry::clock::Clock;
use ferry::cluster::ring;
use std::sync::Arc;
use std::time::Duration;

const MIB: usize = 1024 * 1024;
const TEN_S: Duration = Duration::from_secs(10);

fn members(rs: &[Proxied]) -> Vec<String> {
    rs.iter().map(|p| p.addr.to_string()).collect()
}

/// The index of `key`'s owner among the replicas.
fn owner_of(rs: &[Proxied], key: &[u8]) -> usize {
    let m = members(rs);
    let o = ring::owner(&m, key).unwrap();
    m.iter().position(|x| x == o).unwrap()
}

fn tag_key(upstream: &str, repo: &str, tag: &str) -> Vec<u8> {
    format!("{upstream}\0{repo}\0{tag}").into_bytes()
}

/// The name Ferry gives the fake when it is the `--upstream` URL.
fn upstream_name(up: &FakeRegistry) -> String {
    up.authority()
}

#[tokio::test]
async fn thirty_concurrent_gets_over_three_replicas_cost_one_upstream_get() {
    let up = FakeRegistry::start().await;
    let d = up.add_blob(bytes_of(3 * MIB, 1));
    // Slow enough that every request arrives while the blob is in flight.
    up.faults(|f| f.throttle = Some((256 * 1024, Duration::from_millis(15))));
    let rs = Arc::new(Proxied::cluster(&up, 3, None, "", Clock::manual()).await);
    let path = format!("/v2/library/app/blobs/{d}");
    let pulls: Vec<_> = (0..30)
        .map(|i| {
            let (rs, path) = (rs.clone(), path.clone());
            tokio::spawn(async move { body_digest(rs[i % 3].get(&path).await).await.unwrap().0 })
        })
        .collect();
    for p in pulls {
        assert_eq!(p.await.unwrap(), d);
    }
    assert_eq!(
        up.count("GET", |r| r.is_blob()),
        1,
        "one upstream GET, cluster-wide"
    );
    let owner = owner_of(&rs, d.as_bytes());
    for (i, r) in rs.iter().enumerate() {
        let forwarded = r.metric("ferry_cluster_requests_total{role=\"forwarded\",kind=\"blob\"}");
        if i == owner {
            assert_eq!(forwarded, 0, "the owner asks nobody");
            assert_eq!(
                r.metric("ferry_cluster_requests_total{role=\"owner\",kind=\"blob\"}"),
                2,
                "the owner answered each other replica once"
            );
        } else {
            assert_eq!(forwarded, 1, "one fetch per non-owner, from the owner");
        }
    }
    // Warm everywhere now: nothing more upstream, nothing between replicas.
    for r in rs.iter() {
        assert_eq!(body_digest(r.get(&path).await).await.unwrap().0, d);
    }
    assert_eq!(up.count("GET", |r| r.is_blob()), 1);
}

#[tokio::test]
async fn an_image_pulled_through_one_replica_costs_the_others_nothing_upstream() {
    let up = FakeRegistry::start().await;
    let (manifest, layers) = up.add_image("library/app", "1.0", &[&bytes_of(500_000, 2), b"small"]);
    let rs = Proxied::cluster(&up, 3, None, "", Clock::manual()).await;
    let r = rs[0].get("/v2/library/app/manifests/1.0").await;
    assert_eq!(sha256(&r.bytes().await.unwrap()), manifest);
    for l in &layers {
        assert_eq!(
            body_digest(rs[0].get(&format!("/v2/library/app/blobs/{l}")).await)
                .await
                .unwrap()
                .0,
            *l
        );
    }
    let before = up.total();
    for r in &rs[1..] {
        let m = r.get("/v2/library/app/manifests/1.0").await;
        assert_eq!(m.status(), 200);
        assert_eq!(sha256(&m.bytes().await.unwrap()), manifest);
        for l in &layers {
            let h = r.head(&format!("/v2/library/app/blobs/{l}")).await;
            assert_eq!(h.status(), 200);
            assert_eq!(
                body_digest(r.get(&format!("/v2/library/app/blobs/{l}")).await)
                    .await
                    .unwrap()
                    .0,
                *l
            );
        }
    }
    assert_eq!(up.total(), before, "B and C cost upstream nothing");
}

#[tokio::test]
async fn a_tag_costs_at_most_one_upstream_head_per_ttl_cluster_wide() {
    let up = FakeRegistry::start().await;
    let (first, _) = up.add_image("library/app", "1.0", &[b"v1"]);
    let clock = Clock::manual();
    let rs = Arc::new(Proxied::cluster(&up, 3, None, "", clock.clone()).await);
    let owner = owner_of(&rs, &tag_key(&upstream_name(&up), "library/app", "1.0"));
    let mut moved = String::new();
    for round in 0..3 {
        if round == 2 {
            moved = up.add_image("library/app", "1.0", &[b"v2"]).0;
        }
        let heads: Vec<_> = (0..150)
            .map(|i| {
                let rs = rs.clone();
                tokio::spawn(async move {
                    let r = rs[i % 3].head("/v2/library/app/manifests/1.0").await;
                    assert_eq!(r.status(), 200);
                    // What containerd needs to trust a HEAD, from every replica.
                    assert_eq!(header(&r, "content-type"), Some(OCI_MANIFEST));
                    let len: usize = header(&r, "content-length").unwrap().parse().unwrap();
                    assert!(
                        len > 100,
                        "a HEAD's Content-Length is the manifest's: {len}"
                    );
                    header(&r, "docker-content-digest").unwrap().to_string()
                })
            })
            .collect();
        let want = if round == 2 { &moved } else { &first };
        for h in heads {
            assert_eq!(&h.await.unwrap(), want, "round {round}");
        }
        clock.advance(Duration::from_secs(31));
    }
    let upstream_heads = up.count("HEAD", |r| r.is_manifest());
    let upstream_gets = up.count("GET", |r| r.is_manifest());
    assert_eq!(
        upstream_heads, 3,
        "one HEAD per TTL, cluster-wide ({upstream_gets} GETs)"
    );
    for (i, r) in rs.iter().enumerate() {
        if i != owner {
            assert_eq!(
                r.metric("ferry_cluster_requests_total{role=\"forwarded\",kind=\"tag\"}"),
                3,
                "replica {i} asked the owner once per TTL"
            );
        }
    }
}

/// The owner of a cold 4 MiB blob stops once it has 1 MiB of it, while the
/// two other replicas stream it from the owner for five clients each: every
/// client gets the whole, verified blob. Returns the blob's digest and the
/// two replicas left.
async fn the_owner_dies_mid_fetch(
    up: &FakeRegistry,
    bucket: Option<Arc<TestBucket>>,
) -> (String, Vec<Proxied>) {
    let d = up.add_blob(bytes_of(4 * MIB, 3));
    let gate = up.gate(MIB);
    let rs = Proxied::cluster(up, 3, bucket, "shutdown_grace = \"0s\"", Clock::manual()).await;
    let owner = owner_of(&rs, d.as_bytes());
    let mut rs: Vec<Option<Proxied>> = rs.into_iter().map(Some).collect();
    let path = format!("/v2/library/app/blobs/{d}");
    let mut pulls = Vec::new();
    for (i, r) in rs.iter().enumerate() {
        if i == owner {
            continue;
        }
        let r = r.as_ref().unwrap();
        for _ in 0..5 {
            let (c, url) = (r.client.clone(), r.url(&path));
            pulls.push(tokio::spawn(async move {
                body_digest(c.get(url).send().await.unwrap())
                    .await
                    .map(|(d, _)| d)
            }));
        }
    }
    // The owner's upstream transfer is stuck at the gate; stop the owner.
    eventually("the owner never asked upstream", TEN_S, || async {
        up.count("GET", |r| r.is_blob()) > 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let dead = rs[owner].take().unwrap();
    tokio::spawn(dead.stop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    gate.release();
    for p in pulls {
        assert_eq!(p.await.unwrap().expect("a whole, verified body"), d);
    }
    let gets = up.count("GET", |r| r.is_blob());
    assert!(gets <= 2, "{gets} upstream GETs");
    (d, rs.into_iter().flatten().collect())
}

#[tokio::test]
async fn the_owner_dying_mid_fetch_leaves_every_follower_verified() {
    let up = FakeRegistry::start().await;
    the_owner_dies_mid_fetch(&up, None).await;
}

/// The replica that finishes a dead owner's transfer from upstream uploads
/// the blob, so the next miss anywhere costs nothing upstream.
#[tokio::test]
async fn the_replica_that_takes_over_a_dead_owners_fetch_uploads_the_blob() {
    let up = FakeRegistry::start().await;
    let bucket = TestBucket::new();
    let (d, left) = the_owner_dies_mid_fetch(&up, Some(bucket.clone())).await;
    let uploaded = "ferry_bucket_uploads_total{object=\"blob\",result=\"completed\"}";
    eventually("an upload by a replica that took over", TEN_S, || async {
        left.iter().map(|r| r.metric(uploaded)).sum::<u64>() >= 1
    })
    .await;
    let object = bucket.object(&TestBucket::blob_key(&d)).await;
    assert_eq!(object.map(|b| sha256(&b)), Some(d));
    bucket.assert_content_addressed().await;
}

#[tokio::test]
async fn replicas_that_disagree_on_the_members_never_loop() {
    let up = FakeRegistry::start().await;
    let d = up.add_blob(bytes_of(2 * MIB, 4));
    up.faults(|f| f.throttle = Some((256 * 1024, Duration::from_millis(10))));
    let rs = Arc::new(Proxied::cluster(&up, 3, None, "", Clock::manual()).await);
    // A wrong peer secret is refused, and such a request is not served.
    let r = rs[0]
        .get_with(
            &format!("/v2/library/app/blobs/{d}"),
            &[("ferry-peer", "not-the-secret")],
        )
        .await;
    assert_eq!(r.status(), 401);
    // Each replica asked as a peer answers itself: no forwarding, whatever it
    // thinks of ownership (a split view), and the bytes are right.
    let pulls: Vec<_> = (0..6)
        .map(|i| {
            let (rs, d) = (rs.clone(), d.clone());
            tokio::spawn(async move {
                let r = rs[i % 3]
                    .get_with(
                        &format!("/v2/library/app/blobs/{d}"),
                        &[("ferry-peer", "a-peer-secret-for-tests")],
                    )
                    .await;
                body_digest(r).await.unwrap().0
            })
        })
        .collect();
    for p in pulls {
        assert_eq!(p.await.unwrap(), d);
    }
    for r in rs.iter() {
        assert_eq!(
            r.metric("ferry_cluster_requests_total{role=\"forwarded\",kind=\"blob\"}"),
            0,
            "a peer's request is never forwarded"
        );
    }
    assert_eq!(
        up.count("GET", |r| r.is_blob()),
        3,
        "one fetch per replica: each answers a peer's request itself"
    );
}

#[tokio::test]
async fn replicas_share_a_bucket_and_an_owner_at_once() {
    let up = FakeRegistry::start().await;
    let d = up.add_blob(bytes_of(300_000, 5));
    let bucket = TestBucket::new();
    let rs = Proxied::cluster(&up, 3, Some(bucket.clone()), "", Clock::manual()).await;
    for r in &rs {
        assert_eq!(
            body_digest(r.get(&format!("/v2/library/app/blobs/{d}")).await)
                .await
                .unwrap()
                .0,
            d
        );
    }
    assert_eq!(up.count("GET", |r| r.is_blob()), 1);
    let owner = owner_of(&rs, d.as_bytes());
    // Only the owner uploads.
    eventually("never uploaded", TEN_S, || async {
        bucket.object(&TestBucket::blob_key(&d)).await.is_some()
    })
    .await;
    for (i, r) in rs.iter().enumerate() {
        let uploads = r.metric("ferry_bucket_uploads_total{object=\"blob\",result=\"completed\"}");
        assert_eq!(uploads, u64::from(i == owner), "replica {i}");
    }
    bucket.assert_content_addressed().await;
}

#[tokio::test]
async fn a_purge_and_a_push_event_reach_every_replica() {
    let up = FakeRegistry::start().await;
    let (old, layers) = up.add_image("team/app", "1.0", &[b"v1 layer"]);
    let bucket = TestBucket::new();
    let events = format!(
        "[[upstream]]\nname = \"corp\"\nurl = \"{}\"\naliases = [\"{}\"]\n\
         [upstream.events]\nsecret = \"an-events-secret-for-tests\"\n",
        up.url(),
        up.authority()
    );
    let rs = Proxied::cluster(&up, 3, Some(bucket.clone()), &events, Clock::manual()).await;
    let layer = &layers[0];
    for r in &rs {
        let m = r.head("/v2/team/app/manifests/1.0").await;
        assert_eq!(header(&m, "docker-content-digest"), Some(old.as_str()));
        let b = r.get(&format!("/v2/team/app/blobs/{layer}")).await;
        assert_eq!(body_digest(b).await.unwrap().0, *layer);
        r.settled().await;
        assert!(r.stored_size(layer).is_some());
    }
    eventually("never uploaded", TEN_S, || async {
        bucket.object(&TestBucket::blob_key(layer)).await.is_some()
    })
    .await;

    // An operator purges a blob on one replica: every replica and the bucket drop it.
    let layer_digest: ferry_storage::Digest = layer.parse().unwrap();
    rs[1]
        .proxy
        .purge_digest(&layer_digest, ferry::proxy::Origin::Client)
        .await
        .unwrap();
    eventually("a replica kept the purged blob", TEN_S, || async {
        rs.iter().all(|r| r.stored_size(layer).is_none())
    })
    .await;
    assert_eq!(bucket.object(&TestBucket::blob_key(layer)).await, None);

    // The registry posts a push to one replica: every replica moves the tag,
    // with no upstream request.
    let (new, _) = up.add_image("team/app", "1.0", &[b"v2 layer"]);
    let size = up.manifest_size(&new);
    let at = humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + Duration::from_millis(rs[0].clock.now_ms()),
    );
    let body = serde_json::json!({"events": [{
        "id": "push-1", "timestamp": at.to_string(), "action": "push",
        "target": {"mediaType": OCI_MANIFEST, "size": size, "digest": new,
                   "repository": "team/app", "tag": "1.0"},
        "request": {"host": up.authority()}
    }]});
    let r = rs[2]
        .client
        .post(rs[2].url("/events/corp"))
        .header("authorization", "Bearer an-events-secret-for-tests")
        .header(
            "content-type",
            "application/vnd.docker.distribution.events.v1+json",
        )
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    up.clear_requests();
    for r in &rs {
        eventually(&format!("{} never saw the push", r.addr), TEN_S, || async {
            let m = r.head("/v2/team/app/manifests/1.0").await;
            header(&m, "docker-content-digest") == Some(new.as_str())
        })
        .await;
    }
    assert_eq!(
        up.count("HEAD", |r| r.is_manifest()),
        0,
        "the event said it all"
    );
}

/// A checked upstream Ferry has no credentials for is fetched with each
/// client's own (pass-through): no other replica has them, so the replica
/// the client asked fetches it, never its owner (which could only ask
/// anonymously and would answer 404). An anonymous client's request for a
/// public repository is the same for every replica: its owner fetches it.
#[tokio::test]
async fn a_checked_upstream_is_fetched_with_the_clients_credentials_by_the_replica_it_asked() {
    use crate::access::basic;
    use crate::support::fake::{Acl, Auth, Host};
    let up = FakeRegistry::start().await;
    up.set_auth(Auth::Acl(Acl {
        bearer: true,
        users: vec![("alice".into(), "alice-pw".into(), vec!["team/app".into()])],
        public: vec!["library/pub".into()],
    }));
    let (manifest, layers) = up.add_image("team/app", "1.0", &[b"first layer", b"second"]);
    let (public, public_layers) = up.add_image("library/pub", "1.0", &[b"public layer"]);
    let toml = format!(
        "[[upstream]]\nname = \"corp\"\nurl = \"{}\"\n[upstream.access]\n",
        up.url()
    );
    let rs = Proxied::cluster(&up, 3, None, &toml, Clock::manual()).await;
    let alice = basic("alice", "alice-pw");
    let as_alice = [("authorization", alice.as_str())];

    for (i, r) in rs.iter().enumerate() {
        let m = r.get_with("/v2/team/app/manifests/1.0", &as_alice).await;
        assert_eq!(m.status(), 200, "replica {i}: alice's tag");
        assert_eq!(sha256(&m.bytes().await.unwrap()), manifest);
        for l in &layers {
            let b = r
                .get_with(&format!("/v2/team/app/blobs/{l}"), &as_alice)
                .await;
            assert_eq!(b.status(), 200, "replica {i}: alice's layer");
            assert_eq!(sha256(&b.bytes().await.unwrap()), *l);
        }
    }
    let forwarded = |r: &Proxied| {
        ["tag", "manifest", "blob", "blob_head"]
            .iter()
            .map(|k| {
                r.metric(&format!(
                    "ferry_cluster_requests_total{{role=\"forwarded\",kind=\"{k}\"}}"
                ))
            })
            .sum::<u64>()
    };
    for (i, r) in rs.iter().enumerate() {
        assert_eq!(forwarded(r), 0, "replica {i} asked no owner for alice");
    }
    // Every upstream request for the private repository carried a token
    // issued to alice: none was made anonymously by an owner.
    let private: Vec<_> = up
        .requests()
        .into_iter()
        .filter(|r| r.host == Host::Registry && r.path.starts_with("/v2/team/app/"))
        .collect();
    for l in &layers {
        let path = format!("/v2/team/app/blobs/{l}");
        let gets = private
            .iter()
            .filter(|r| r.method == "GET" && r.path == path);
        assert_eq!(gets.count(), 3, "each replica fetched {l} itself");
    }
    for r in &private {
        let token = r
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if let Some(token) = token {
            assert_eq!(
                up.token_user(token),
                Some(Some("alice".to_string())),
                "{} {}",
                r.method,
                r.path
            );
        }
    }

    // Anonymous, public: one upstream fetch cluster-wide, by the owner.
    let path = format!("/v2/library/pub/blobs/{}", public_layers[0]);
    for (i, r) in rs.iter().enumerate() {
        let m = r.get("/v2/library/pub/manifests/1.0").await;
        assert_eq!(m.status(), 200, "replica {i}: the public tag");
        assert_eq!(sha256(&m.bytes().await.unwrap()), public);
        let b = r.get(&path).await;
        assert_eq!(b.status(), 200, "replica {i}: the public layer");
        assert_eq!(sha256(&b.bytes().await.unwrap()), public_layers[0]);
    }
    assert_eq!(
        up.count("GET", |r| r.host == Host::Registry && r.path == path),
        1,
        "the public layer is fetched once, by its owner"
    );
}

/// A member that answers a tag's headers and then never sends its body.
async fn stalling_member() -> Hostile {
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {OCI_MANIFEST}\r\ndocker-content-digest: sha256:{}\r\n\
         ferry-age-ms: 0\r\ncontent-length: 1000\r\n\r\n{{",
        "0".repeat(64)
    );
    Hostile::start(move |_, _| Answer::Drip {
        head: head.clone(),
        every: Duration::from_secs(3600),
    })
    .await
}

/// An owner whose body stalls is quarantined at once: the replica asked
/// fetches the tag itself after one idle timeout, instead of asking the
/// same owner again, and the owner's other keys are not asked of it.
#[tokio::test]
async fn an_owner_whose_body_stalls_is_asked_once_then_left_out() {
    let up = FakeRegistry::start().await;
    let member = stalling_member().await;
    let stalling = member.addr.to_string();
    let rs = Proxied::cluster_with(
        &up,
        1,
        None,
        "[timeouts]\nidle = \"1s\"\n",
        Clock::manual(),
        std::slice::from_ref(&stalling),
    )
    .await;
    let members = vec![rs[0].addr.to_string(), stalling.clone()];
    let name = upstream_name(&up);
    let owned_by_stalling: Vec<String> = (0..100)
        .map(|i| format!("t{i}"))
        .filter(|t| ring::owner(&members, &tag_key(&name, "library/app", t)).unwrap() == stalling)
        .take(2)
        .collect();
    assert_eq!(owned_by_stalling.len(), 2);
    let mut manifests = Vec::new();
    for t in &owned_by_stalling {
        manifests.push(up.add_image("library/app", t, &[t.as_bytes()]).0);
    }

    for (t, manifest) in owned_by_stalling.iter().zip(&manifests) {
        let r = rs[0].get(&format!("/v2/library/app/manifests/{t}")).await;
        assert_eq!(r.status(), 200, "tag {t}");
        assert_eq!(sha256(&r.bytes().await.unwrap()), *manifest);
    }
    assert_eq!(
        member.requests().len(),
        1,
        "the stalled owner was asked once, for the first tag only"
    );
    assert_eq!(
        rs[0].metric(&format!(
            "ferry_peer_quarantines_total{{peer=\"{stalling}\"}}"
        )),
        1
    );
    assert_eq!(
        up.count("GET", |r| r.is_manifest()),
        2,
        "one GET per tag, here"
    );
}
