//! Private images stay private: upstream-checked access, repository links,
//! scoped client identities, the admin token, and TLS to internal registries.

use crate::support::fake::{Acl, Auth, FakeRegistry, Host};
use crate::support::tls::{https_front, TestCa};
use crate::support::*;
use std::time::Duration;

pub(crate) fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn acl(bearer: bool) -> Acl {
    let s = |v: &[&str]| v.iter().map(|r| r.to_string()).collect::<Vec<_>>();
    Acl {
        bearer,
        users: vec![
            (
                "ferry".into(),
                "ferry-pw".into(),
                s(&["team/app", "team/other", "library/pub"]),
            ),
            (
                "alice".into(),
                "alice-pw".into(),
                s(&["team/app", "team/other"]),
            ),
            ("bob".into(), "bob-pw".into(), s(&["bob/own"])),
        ],
        public: s(&["library/pub"]),
    }
}

/// Ferry with its own credentials for the fake and checked access on.
async fn checked(up: &FakeRegistry, extra: &str) -> Proxied {
    let toml = format!(
        "[[upstream]]\nname = \"corp\"\nurl = \"{}\"\nusername = \"ferry\"\npassword = \"ferry-pw\"\n\
         [upstream.access]\nttl = \"5m\"\nnegative_ttl = \"30s\"\nstale = \"1h\"\n{extra}",
        up.url()
    );
    Proxied::with_toml(up, &toml).await
}

async fn get_as(p: &Proxied, path: &str, auth: Option<&str>) -> reqwest::Response {
    match auth {
        Some(a) => p.get_with(path, &[("authorization", a)]).await,
        None => p.get(path).await,
    }
}

fn probes(up: &FakeRegistry, repo: &str) -> usize {
    up.count("GET", |r| r.path == format!("/v2/{repo}/tags/list"))
}

#[tokio::test]
async fn on_a_basic_registry_only_credentials_it_accepts_read_even_cached_content() {
    let up = FakeRegistry::start().await;
    up.set_auth(Auth::Acl(acl(false)));
    let (manifest, layers) = up.add_image("team/app", "1.0", &[b"private layer"]);
    let p = checked(&up, "").await;
    let alice = basic("alice", "alice-pw");

    let r = get_as(&p, "/v2/team/app/manifests/1.0", Some(&alice)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "docker-content-digest"), Some(manifest.as_str()));
    let r = get_as(
        &p,
        &format!("/v2/team/app/blobs/{}", layers[0]),
        Some(&alice),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"private layer");
    assert_eq!(up.count("GET", |r| r.is_blob()), 1);

    // Everything is cached now; none of these may read it.
    let blob = format!("/v2/team/app/blobs/{}", layers[0]);
    for path in ["/v2/team/app/manifests/1.0", blob.as_str()] {
        let r = get_as(&p, path, None).await;
        assert_eq!(r.status(), 401, "{path} without credentials");
        assert_eq!(
            header(&r, "www-authenticate"),
            Some("Basic realm=\"ferry\"")
        );
        let r = get_as(&p, path, Some(&basic("alice", "wrong"))).await;
        assert_eq!(r.status(), 401, "{path} with a wrong password");
        let r = get_as(&p, path, Some(&basic("bob", "bob-pw"))).await;
        assert_eq!(
            r.status(),
            403,
            "{path} as a user without rights on team/app"
        );
        assert_eq!(error_code(r).await, "DENIED");
    }
    // One upstream question per distinct client, reused for the second path.
    assert_eq!(probes(&up, "team/app"), 4);
    assert_eq!(up.count("GET", |r| r.is_blob()), 1, "nothing fetched again");
    assert_eq!(
        p.metric("ferry_access_decisions_total{upstream=\"corp\",source=\"upstream\",result=\"forbidden\"}"),
        1
    );
    assert_eq!(
        p.metric(
            "ferry_access_decisions_total{upstream=\"corp\",source=\"cached\",result=\"allowed\"}"
        ),
        1
    );
    let metrics = p.proxy.metrics_text();
    for secret in ["alice-pw", "bob-pw", "ferry-pw", "wrong", &alice[6..]] {
        assert!(!metrics.contains(secret), "{secret} in /metrics");
    }
}

#[tokio::test]
async fn a_digest_known_from_one_repository_is_refused_under_another() {
    let up = FakeRegistry::start().await;
    up.set_auth(Auth::Acl(acl(false)));
    let (_, app_layers) = up.add_image("team/app", "1.0", &[b"app layer"]);
    let (_, other_layers) = up.add_image("team/other", "1.0", &[b"other layer"]);
    let p = checked(&up, "").await;
    let alice = basic("alice", "alice-pw");
    let app_blob = &app_layers[0];

    let r = get_as(&p, "/v2/team/app/manifests/1.0", Some(&alice)).await;
    assert_eq!(r.status(), 200);
    let r = get_as(&p, &format!("/v2/team/app/blobs/{app_blob}"), Some(&alice)).await;
    assert_eq!(r.status(), 200);
    let heads_before = up.count("HEAD", |r| r.is_blob());
    assert_eq!(
        heads_before, 0,
        "the manifest linked its layers: no confirmation needed"
    );

    // Cached, and alice may read team/other too, but it is not in team/other.
    let r = get_as(
        &p,
        &format!("/v2/team/other/blobs/{app_blob}"),
        Some(&alice),
    )
    .await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");
    assert_eq!(
        up.count("HEAD", |r| r.path
            == format!("/v2/team/other/blobs/{app_blob}")),
        1,
        "upstream was asked in team/other"
    );
    // A blob that is in team/other (never seen through a manifest) is confirmed once.
    let other_blob = &other_layers[0];
    for _ in 0..3 {
        let r = get_as(
            &p,
            &format!("/v2/team/other/blobs/{other_blob}"),
            Some(&alice),
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        up.count("HEAD", |r| r.path
            == format!("/v2/team/other/blobs/{other_blob}")),
        1
    );
}

/// The confirmation that a digest is in a repository is shared like any
/// upstream request: a herd of clients asking for a blob never seen through a
/// manifest (a cold `HEAD`, then a `GET`, each) costs one upstream `HEAD` and
/// one `GET`, with the `HEAD` of the blob itself answered by the confirmation.
#[tokio::test]
async fn a_herd_asking_for_an_unconfirmed_digest_costs_one_upstream_head_and_one_get() {
    let up = FakeRegistry::start().await;
    up.set_auth(Auth::Acl(acl(false)));
    up.add_image("team/app", "1.0", &[b"app layer"]);
    // A blob no manifest Ferry has seen references (a layer pushed alone).
    let blob = up.add_blob_in("team/app", bytes_of(300_000, 7));
    let p = std::sync::Arc::new(checked(&up, "").await);
    let alice = basic("alice", "alice-pw");
    // Ferry learns the upstream's challenge (and alice is admitted) first.
    let r = get_as(&p, "/v2/team/app/manifests/1.0", Some(&alice)).await;
    assert_eq!(r.status(), 200);
    up.clear_requests();
    let path = format!("/v2/team/app/blobs/{blob}");
    let pulls: Vec<_> = (0..40u64)
        .map(|i| {
            let (p, path, alice) = (p.clone(), path.clone(), alice.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i * 5)).await;
                let auth = [("authorization", alice.as_str())];
                let head = p.head_with(&path, &auth).await;
                assert_eq!(head.status(), 200);
                assert_eq!(header(&head, "content-length"), Some("300000"));
                body_digest(p.get_with(&path, &auth).await).await.unwrap().0
            })
        })
        .collect();
    for pull in pulls {
        assert_eq!(pull.await.unwrap(), blob);
    }
    assert_eq!(up.count("HEAD", |r| r.is_blob()), 1, "one confirmation");
    assert_eq!(up.count("GET", |r| r.is_blob()), 1, "one transfer");
    assert_eq!(up.total(), 2, "and nothing else: alice's decision stands");
}

#[tokio::test]
async fn on_a_bearer_registry_tokens_decide_and_public_repositories_need_nothing() {
    let up = FakeRegistry::start().await;
    up.set_auth(Auth::Acl(acl(true)));
    up.add_image("team/app", "1.0", &[b"team layer"]);
    up.add_image("library/pub", "1.0", &[b"public layer"]);
    let p = checked(&up, "").await;
    let alice = basic("alice", "alice-pw");

    let r = get_as(&p, "/v2/library/pub/manifests/1.0", None).await;
    assert_eq!(
        r.status(),
        200,
        "anonymously readable upstream: no credentials needed"
    );
    let r = get_as(&p, "/v2/team/app/manifests/1.0", None).await;
    assert_eq!(r.status(), 401);
    let r = get_as(
        &p,
        "/v2/team/app/manifests/1.0",
        Some(&basic("bob", "bob-pw")),
    )
    .await;
    assert_eq!(r.status(), 403, "a token without pull on team/app");
    let r = get_as(
        &p,
        "/v2/team/app/manifests/1.0",
        Some(&basic("alice", "nope")),
    )
    .await;
    assert_eq!(r.status(), 401, "the token realm refused the password");

    let tokens_for_alice = |up: &FakeRegistry| {
        up.requests()
            .iter()
            .filter(|r| {
                r.host == Host::Auth
                    && r.headers.get("authorization").and_then(|v| v.to_str().ok())
                        == Some(alice.as_str())
            })
            .count()
    };
    for _ in 0..1000 {
        let r = p
            .head_with("/v2/team/app/manifests/1.0", &[("authorization", &alice)])
            .await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        tokens_for_alice(&up),
        1,
        "1,000 pulls inside the TTL: one upstream check"
    );
    // Past the TTL, asked again.
    p.advance(Duration::from_secs(301));
    let r = p
        .head_with("/v2/team/app/manifests/1.0", &[("authorization", &alice)])
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(tokens_for_alice(&up), 2);
    // The client's credentials went only to the token realm, never the registry.
    assert!(up.requests().iter().all(|r| r.host == Host::Auth
        || r.headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(alice.as_str())));
}

#[tokio::test]
async fn an_outage_keeps_recent_decisions_and_answers_503_for_the_rest() {
    let up = FakeRegistry::start().await;
    up.set_auth(Auth::Acl(acl(false)));
    up.add_image("team/app", "1.0", &[b"layer"]);
    let p = checked(&up, "").await;
    let alice = basic("alice", "alice-pw");
    let bob = basic("bob", "bob-pw");
    assert_eq!(
        get_as(&p, "/v2/team/app/manifests/1.0", Some(&alice))
            .await
            .status(),
        200
    );
    assert_eq!(
        get_as(&p, "/v2/team/app/manifests/1.0", Some(&bob))
            .await
            .status(),
        403
    );

    up.set_down(true);
    p.advance(Duration::from_secs(600)); // past both TTLs, inside `stale`
    let r = get_as(&p, "/v2/team/app/manifests/1.0", Some(&alice)).await;
    assert_eq!(
        r.status(),
        200,
        "a recent yes stands while upstream is down"
    );
    let r = get_as(&p, "/v2/team/app/manifests/1.0", Some(&bob)).await;
    assert_eq!(r.status(), 403, "and so does a recent no");
    let r = get_as(
        &p,
        "/v2/team/app/manifests/1.0",
        Some(&basic("ferry", "ferry-pw")),
    )
    .await;
    assert_eq!(
        r.status(),
        503,
        "no decision to fall back on: never an open door"
    );
    assert_eq!(error_code(r).await, "UNAVAILABLE");

    p.advance(Duration::from_secs(3600));
    let r = get_as(&p, "/v2/team/app/manifests/1.0", Some(&alice)).await;
    assert_eq!(r.status(), 503, "past `stale` the old decision is gone");
}

#[tokio::test]
async fn scoped_client_identities_pull_only_their_repositories() {
    let up = FakeRegistry::start().await;
    up.add_image("team-a/app", "1", &[b"a"]);
    up.add_image("team-b/app", "1", &[b"b"]);
    let toml = format!(
        "[[upstream]]\nname = \"corp\"\nurl = \"{}\"\n\
         [[client]]\nusername = \"a\"\npassword = \"a-pw\"\nrepositories = [\"corp/team-a/.*\"]\n\
         [[client]]\nusername = \"ops\"\npassword = \"ops-pw\"\n",
        up.url()
    );
    let p = Proxied::with_toml(&up, &toml).await;
    let a = basic("a", "a-pw");
    assert_eq!(
        get_as(&p, "/v2/team-a/app/manifests/1", Some(&a))
            .await
            .status(),
        200
    );
    let r = get_as(&p, "/v2/team-b/app/manifests/1", Some(&a)).await;
    assert_eq!(r.status(), 403);
    assert_eq!(error_code(r).await, "DENIED");
    let r = get_as(
        &p,
        "/v2/team-b/app/manifests/1",
        Some(&basic("ops", "ops-pw")),
    )
    .await;
    assert_eq!(
        r.status(),
        200,
        "an identity without repositories may pull everything"
    );
    assert_eq!(
        get_as(&p, "/v2/team-b/app/manifests/1", None)
            .await
            .status(),
        401
    );
    let image = format!("/resolve?image={}/team-b/app:1", up.authority());
    let r = p.get_with(&image, &[("authorization", &a)]).await;
    assert_eq!(r.status(), 403, "the resolve API is admitted like a pull");
}

#[tokio::test]
async fn the_admin_api_needs_its_token_when_it_has_one() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-admin-token-0123\n").unwrap();
    let toml = format!(
        "admin_listen = \"127.0.0.1:0\"\nadmin_token_file = \"{}\"\n",
        token_file.display()
    );
    let p = Proxied::with_toml(&up, &toml).await;
    let purge = p.admin_url("/admin/purge?digest=sha256:0000000000000000000000000000000000000000000000000000000000000000");
    let r = p.client.post(&purge).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = p
        .client
        .post(&purge)
        .bearer_auth("wrong-token-wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = p
        .client
        .post(&purge)
        .bearer_auth("s3cret-admin-token-0123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = p.client.get(p.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the probe needs no token");
}

#[tokio::test]
async fn an_internal_registry_on_https_with_a_private_ca_and_mutual_tls() {
    let up = FakeRegistry::start().await;
    up.add_image("team/app", "1.0", &[b"over tls"]);
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    };
    let ca_file = write("ca.pem", &ca.pem());
    let server = ca.server(&["127.0.0.1"]);
    let client = ca.client("ferry");
    let (cert, key) = (
        write("client.pem", &client.cert_pem),
        write("client.key", &client.key_pem),
    );

    // A private CA: trusted only when configured.
    let front = https_front(up.addr, &server, None).await;
    let base = format!("[[upstream]]\nname = \"corp\"\nurl = \"https://{front}\"\n");
    let p = Proxied::for_url("", &base).await;
    let r = p.get("/v2/team/app/manifests/1.0").await;
    assert_eq!(r.status(), 503, "an unknown CA fails the connection");
    let p = Proxied::for_url("", &format!("{base}ca_file = \"{ca_file}\"\n")).await;
    assert_eq!(p.get("/v2/team/app/manifests/1.0").await.status(), 200);

    // Mutual TLS: the registry demands a client certificate.
    let front = https_front(up.addr, &server, Some(&ca.pem())).await;
    let base = format!(
        "[[upstream]]\nname = \"corp\"\nurl = \"https://{front}\"\nca_file = \"{ca_file}\"\n"
    );
    let p = Proxied::for_url("", &base).await;
    assert_eq!(
        p.get("/v2/team/app/manifests/1.0").await.status(),
        503,
        "no client certificate"
    );
    let p = Proxied::for_url(
        "",
        &format!("{base}client_cert = \"{cert}\"\nclient_key = \"{key}\"\n"),
    )
    .await;
    assert_eq!(p.get("/v2/team/app/manifests/1.0").await.status(), 200);
}

#[tokio::test]
async fn without_credentials_of_its_own_ferry_fetches_with_each_clients_and_never_shares_tokens() {
    let up = FakeRegistry::start().await;
    let mut rights = acl(true);
    rights
        .users
        .push(("dave".into(), "dave-pw".into(), vec!["team/app".into()]));
    up.set_auth(Auth::Acl(rights));
    let (_, layers) = up.add_image("team/app", "1.0", &[b"first layer", b"second layer"]);
    // No username/password for the upstream: pass-through.
    let toml = format!(
        "[[upstream]]\nname = \"corp\"\nurl = \"{}\"\n[upstream.access]\n",
        up.url()
    );
    let p = Proxied::with_toml(&up, &toml).await;
    let alice = basic("alice", "alice-pw");
    let dave = basic("dave", "dave-pw");
    let blob = |d: &str| format!("/v2/team/app/blobs/{d}");

    let r = get_as(&p, "/v2/team/app/manifests/1.0", Some(&alice)).await;
    assert_eq!(r.status(), 200, "fetched with alice's own credentials");
    let r = get_as(&p, &blob(&layers[0]), Some(&alice)).await;
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"first layer");
    let r = get_as(&p, &blob(&layers[0]), Some(&dave)).await;
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        b"first layer",
        "cached, dave admitted"
    );
    let r = get_as(&p, &blob(&layers[1]), Some(&dave)).await;
    assert_eq!(
        r.bytes().await.unwrap().as_ref(),
        b"second layer",
        "fetched as dave"
    );
    assert_eq!(
        get_as(&p, &blob(&layers[1]), Some(&basic("bob", "bob-pw")))
            .await
            .status(),
        403
    );

    // Every registry request was made with a token of the client it served.
    let user_of = |path: &str| -> Vec<Option<String>> {
        up.requests()
            .iter()
            .filter(|r| r.host == Host::Registry && r.method == "GET" && r.path == path)
            .filter_map(|r| {
                let token = r
                    .headers
                    .get("authorization")?
                    .to_str()
                    .ok()?
                    .strip_prefix("Bearer ")?;
                up.token_user(token)
            })
            .collect()
    };
    assert_eq!(user_of(&blob(&layers[0])), vec![Some("alice".to_string())]);
    assert_eq!(user_of(&blob(&layers[1])), vec![Some("dave".to_string())]);
}
