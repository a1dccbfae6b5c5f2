//! Upstream authentication (PROTOCOL.md A1–A5).

use crate::support::*;
use std::time::Duration;

fn token_requests(up: &FakeRegistry) -> Vec<fake::Recorded> {
    up.requests()
        .into_iter()
        .filter(|r| r.host == fake::Host::Auth)
        .collect()
}

#[tokio::test]
async fn a1_anonymous_token_is_fetched_once_and_reused() {
    let up = FakeRegistry::start().await;
    up.set_auth(Auth::bearer(Some(300)));
    let (m, layers) = up.add_image("library/alpine", "latest", &[b"one", b"two"]);
    let p = Proxied::hub(&up).await;
    assert_eq!(p.head("/v2/alpine/manifests/latest").await.status(), 200);
    assert_eq!(
        p.get(&format!("/v2/alpine/manifests/{m}")).await.status(),
        200
    );
    for l in &layers {
        assert_eq!(
            body_digest(p.get(&format!("/v2/alpine/blobs/{l}")).await)
                .await
                .unwrap()
                .0,
            *l
        );
    }
    let tokens = token_requests(&up);
    assert_eq!(tokens.len(), 1, "one token for the scope");
    let q = tokens[0].query.clone().unwrap();
    assert!(q.contains("service=fake-registry"), "{q}");
    assert!(
        q.contains("scope=repository%3Alibrary%2Falpine%3Apull"),
        "{q}"
    );
    assert!(
        !tokens[0].headers.contains_key("authorization"),
        "anonymous"
    );
    // Only the very first request met a 401.
    assert_eq!(
        up.requests()
            .iter()
            .filter(|r| r.host == fake::Host::Registry)
            .count(),
        4 + 1
    );
}

#[tokio::test]
async fn a1_a_new_repository_gets_its_token_without_another_401() {
    let up = FakeRegistry::start().await;
    up.set_auth(Auth::bearer(Some(300)));
    up.add_image("library/a", "1", &[b"a"]);
    up.add_image("library/b", "1", &[b"b"]);
    let p = Proxied::hub(&up).await;
    p.head("/v2/a/manifests/1").await;
    p.head("/v2/b/manifests/1").await;
    assert_eq!(token_requests(&up).len(), 2);
    assert_eq!(
        up.count("HEAD", |_| true),
        3,
        "401 + retry for a, then one HEAD for b"
    );
}

#[tokio::test]
async fn a2_expired_token_is_renewed_and_missing_expiry_means_60s() {
    let up = FakeRegistry::start().await;
    up.set_auth(Auth::Bearer {
        expires_in: None,
        basic: None,
        access_token_only: true,
        quay_style: false,
    });
    let (_, layers) = up.add_image("library/alpine", "latest", &[b"one", b"two", b"three"]);
    let p = Proxied::hub(&up).await;
    body_digest(p.get(&format!("/v2/alpine/blobs/{}", layers[0])).await)
        .await
        .unwrap();
    p.advance(Duration::from_secs(30));
    body_digest(p.get(&format!("/v2/alpine/blobs/{}", layers[1])).await)
        .await
        .unwrap();
    assert_eq!(up.tokens_issued(), 1, "still valid at 30s");
    p.advance(Duration::from_secs(31));
    body_digest(p.get(&format!("/v2/alpine/blobs/{}", layers[2])).await)
        .await
        .unwrap();
    assert_eq!(up.tokens_issued(), 2, "renewed after 60s");
}

#[tokio::test]
async fn a3_credentials_go_to_the_token_server_as_basic() {
    let up = FakeRegistry::start().await;
    up.set_auth(Auth::Bearer {
        expires_in: Some(300),
        basic: Some(("user".into(), "s3cret".into())),
        access_token_only: false,
        quay_style: false,
    });
    let (d, _) = up.add_image("team/app", "1", &[b"l"]);
    let toml = format!(
        "[[upstream]]\nname = \"private\"\nurl = \"{}\"\nusername = \"user\"\npassword = \"s3cret\"\n",
        up.url()
    );
    let p = Proxied::with_toml(&up, &toml).await;
    let r = p.head("/v2/team/app/manifests/1").await;
    assert_eq!(header(&r, "docker-content-digest"), Some(d.as_str()));
    let t = &token_requests(&up)[0];
    assert!(t.headers["authorization"]
        .to_str()
        .unwrap()
        .starts_with("Basic "));
    // Nothing secret comes back to the client.
    let text = p.get("/metrics").await.text().await.unwrap();
    assert!(!text.contains("s3cret") && !text.contains("tok-"));
}

#[tokio::test]
async fn a3_basic_only_upstream_gets_basic_credentials() {
    let up = FakeRegistry::start().await;
    up.set_auth(Auth::Basic("user".into(), "pw".into()));
    let (d, _) = up.add_image("team/app", "1", &[b"l"]);
    let toml = format!(
        "[[upstream]]\nname = \"basic\"\nurl = \"{}\"\nusername = \"user\"\npassword = \"pw\"\n",
        up.url()
    );
    let p = Proxied::with_toml(&up, &toml).await;
    let r = p.head("/v2/team/app/manifests/1").await;
    assert_eq!(header(&r, "docker-content-digest"), Some(d.as_str()));
    assert_eq!(up.tokens_issued(), 0);
}

#[tokio::test]
async fn a4_quay_style_combined_challenge_picks_bearer() {
    let up = FakeRegistry::start().await;
    up.set_auth(Auth::Bearer {
        expires_in: Some(300),
        basic: None,
        access_token_only: false,
        quay_style: true,
    });
    let (d, _) = up.add_image("org/img", "1", &[b"l"]);
    let p = Proxied::start(&up).await;
    let r = p.head("/v2/org/img/manifests/1").await;
    assert_eq!(header(&r, "docker-content-digest"), Some(d.as_str()));
    assert_eq!(token_requests(&up).len(), 1);
}

#[tokio::test]
async fn a6_ferry_itself_never_answers_401() {
    let up = FakeRegistry::start().await;
    up.set_auth(Auth::bearer(Some(300)));
    up.faults(|f| f.always_401 = true);
    let p = Proxied::start(&up).await;
    for path in [
        "/v2/",
        "/v2/x/manifests/1",
        &format!("/v2/x/blobs/{}", sha256(b"x")),
        "/v2/x/tags/list",
    ] {
        let r = p.get(path).await;
        assert_ne!(r.status(), 401, "{path}");
        assert!(r.headers().get("www-authenticate").is_none());
    }
}

#[tokio::test]
async fn a6_with_client_auth_on_only_authenticated_clients_pull() {
    let up = FakeRegistry::start().await;
    let (m, layers) = up.add_image("library/app", "1", &[b"layer"]);
    let toml = format!(
        "[[client]]\nusername = \"node\"\npassword = \"s3cret\"\n[[upstream]]\nname = \"up\"\nurl = \"{}\"\n",
        up.url()
    );
    let p = Proxied::with_toml(&up, &toml).await;
    let manifest = "/v2/library/app/manifests/1";
    let blob = format!("/v2/library/app/blobs/{}", layers[0]);
    // No credentials, or wrong ones: 401 with a Basic challenge, nothing asked upstream.
    for path in ["/v2/", manifest, &blob, "/v2/library/app/tags/list"] {
        let r = p.get(path).await;
        assert_eq!(r.status(), 401, "{path}");
        assert_eq!(
            header(&r, "www-authenticate"),
            Some("Basic realm=\"ferry\"")
        );
        assert_eq!(error_code(r).await, "UNAUTHORIZED");
    }
    let r = p.head(manifest).await;
    assert_eq!(r.status(), 401);
    assert!(r.bytes().await.unwrap().is_empty(), "HEAD has no body");
    let wrong = p
        .client
        .get(p.url(manifest))
        .basic_auth("node", Some("guess"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(up.total(), 0);
    // The right ones: the pull API as usual.
    let get = |path: String| {
        p.client
            .get(p.url(&path))
            .basic_auth("node", Some("s3cret"))
            .send()
    };
    assert_eq!(get("/v2/".into()).await.unwrap().status(), 200);
    let r = get(manifest.into()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "docker-content-digest"), Some(m.as_str()));
    let r = get(blob.clone()).await.unwrap();
    assert_eq!(body_digest(r).await.unwrap().0, layers[0]);
    // Operations endpoints stay open for scrapers and probes.
    assert_eq!(p.get("/metrics").await.status(), 200);
    assert_eq!(p.get("/healthz").await.status(), 200);
}

#[tokio::test]
async fn a5_a_redirect_target_with_its_own_realm_gets_its_own_token() {
    let up = FakeRegistry::start().await;
    up.set_auth(Auth::Bearer {
        expires_in: Some(300),
        basic: Some(("user".into(), "secret".into())),
        access_token_only: false,
        quay_style: false,
    });
    let (_, layers) = up.add_image("library/app", "1", &[b"layer one", b"layer two"]);
    up.redirect_blobs_to_cdn(true);
    up.require_cdn_auth(true);
    let toml = format!(
        "[[upstream]]\nname = \"up\"\nurl = \"{}\"\nusername = \"user\"\npassword = \"secret\"\n",
        up.url()
    );
    let p = Proxied::with_toml(&up, &toml).await;
    for d in &layers {
        let r = p.get(&format!("/v2/library/app/blobs/{d}")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(body_digest(r).await.unwrap().0, *d);
    }
    let reqs = up.requests();
    let token_requests: Vec<_> = reqs.iter().filter(|r| r.host == fake::Host::Auth).collect();
    let cdn_token_requests: Vec<_> = token_requests
        .iter()
        .filter(|r| r.path == "/cdn-token")
        .collect();
    assert_eq!(cdn_token_requests.len(), 1, "one CDN token, reused");
    assert!(
        cdn_token_requests[0]
            .query
            .as_deref()
            .unwrap_or("")
            .contains("service=fake-cdn"),
        "{:?}",
        cdn_token_requests[0].query
    );
    assert!(
        !cdn_token_requests[0].headers.contains_key("authorization"),
        "the upstream's credentials went to the CDN's realm"
    );
    assert_eq!(token_requests.len(), 2, "one registry token, one CDN token");
    let cdn: Vec<_> = reqs.iter().filter(|r| r.host == fake::Host::Cdn).collect();
    // The first CDN request goes without credentials and learns the challenge;
    // the second blob's goes straight with the CDN token.
    assert_eq!(
        cdn.len(),
        3,
        "{:?}",
        cdn.iter().map(|r| &r.headers).collect::<Vec<_>>()
    );
    let registry_tokens: Vec<String> = reqs
        .iter()
        .filter(|r| r.host == fake::Host::Registry)
        .filter_map(|r| r.headers.get("authorization"))
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert!(!registry_tokens.is_empty());
    assert!(
        cdn.iter()
            .filter_map(|r| r.headers.get("authorization"))
            .all(|v| !registry_tokens.contains(&v.to_str().unwrap().to_string())),
        "a registry token was sent to the CDN"
    );
}

/// Runs the real binary at `trace` (every target) with `upstream_toml`, pulls an image through it with client credentials, and
/// returns everything it logged.
async fn trace_log_of_a_pull(upstream_toml: &str, repo: &str, tag: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n{upstream_toml}\n[[client]]\nusername = \"node\"\npassword = \"client-pw-77aa\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let ferry = FerryProcess::start(&["--config", config.to_str().unwrap()], "trace");
    let client = reqwest::Client::new();
    let get = |path: String| {
        client
            .get(ferry.url(&path))
            .basic_auth("node", Some("client-pw-77aa"))
            .send()
    };
    let m = get(format!("/v2/{repo}/manifests/{tag}")).await.unwrap();
    assert_eq!(m.status(), 200);
    let body = m.bytes().await.unwrap();
    let layer = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let r = get(format!("/v2/{repo}/blobs/{layer}")).await.unwrap();
    body_digest(r).await.unwrap();
    // "stopped" is the last line Ferry logs: everything before it is in.
    ferry.signal("TERM");
    assert!(
        ferry.wait_for_log(" stopped took_ms=", Duration::from_secs(20)),
        "no \"stopped\" line after SIGTERM:\n{}",
        ferry.log()
    );
    let log = ferry.log();
    assert!(log.contains("TRACE"), "the log is at trace level");
    log
}

fn assert_absent(log: &str, secrets: &[String]) {
    for s in secrets {
        assert!(!log.contains(s.as_str()), "{s:?} appears in the log");
    }
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn no_password_or_token_reaches_the_log_even_at_trace() {
    let up = FakeRegistry::start().await;
    up.set_auth(Auth::Bearer {
        expires_in: Some(300),
        basic: Some(("robot".into(), "upstream-pw-31c9".into())),
        access_token_only: false,
        quay_style: false,
    });
    up.add_image("team/app", "1", &[&bytes_of(10_000, 40)]);
    let toml = format!(
        "[[upstream]]\nname = \"private\"\nurl = \"{}\"\nusername = \"robot\"\npassword = \"upstream-pw-31c9\"\n",
        up.url()
    );
    let log = trace_log_of_a_pull(&toml, "team/app", "1").await;
    let mut secrets = up.issued_tokens();
    assert!(!secrets.is_empty(), "tokens were issued");
    secrets.extend([
        "upstream-pw-31c9".to_string(),
        b64("robot:upstream-pw-31c9"),
        "client-pw-77aa".to_string(),
        b64("node:client-pw-77aa"),
    ]);
    assert_absent(&log, &secrets);
}

#[tokio::test]
async fn no_basic_upstream_password_reaches_the_log_even_at_trace() {
    let up = FakeRegistry::start().await;
    up.set_auth(Auth::Basic("robot".into(), "basic-pw-8e2d".into()));
    up.add_image("team/app", "1", &[&bytes_of(10_000, 41)]);
    let toml = format!(
        "[[upstream]]\nname = \"basic\"\nurl = \"{}\"\nusername = \"robot\"\npassword = \"basic-pw-8e2d\"\n",
        up.url()
    );
    let log = trace_log_of_a_pull(&toml, "team/app", "1").await;
    assert_absent(
        &log,
        &["basic-pw-8e2d".to_string(), b64("robot:basic-pw-8e2d")],
    );
}

#[tokio::test]
async fn with_checked_access_and_pass_through_no_client_password_or_token_reaches_the_log() {
    let up = FakeRegistry::start().await;
    up.set_auth(Auth::Acl(crate::support::fake::Acl {
        bearer: true,
        users: vec![(
            "node".into(),
            "client-pw-77aa".into(),
            vec!["team/app".into()],
        )],
        public: vec![],
    }));
    up.add_image("team/app", "1", &[&bytes_of(10_000, 42)]);
    // No credentials of Ferry's own: the client's are used for the check and the fetch.
    let toml = format!(
        "[[upstream]]\nname = \"private\"\nurl = \"{}\"\n[upstream.access]\n",
        up.url()
    );
    let log = trace_log_of_a_pull(&toml, "team/app", "1").await;
    let mut secrets = up.issued_tokens();
    assert!(secrets.len() >= 2, "tokens for the check and the fetch");
    secrets.extend(["client-pw-77aa".to_string(), b64("node:client-pw-77aa")]);
    assert_absent(&log, &secrets);
}
