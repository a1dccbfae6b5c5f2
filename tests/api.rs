//! The pull API against a fake upstream: discovery, manifests, errors, tags,
//! referrers and routing (PROTOCOL.md D, M, E, T, F and N cases).

use crate::support::*;

const DH: &str = "docker-content-digest";

#[tokio::test]
async fn d1_base_endpoint() {
    let up = FakeRegistry::start().await;
    let p = Proxied::start(&up).await;
    for path in ["/v2/", "/v2"] {
        let r = p.get(path).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            header(&r, "docker-distribution-api-version"),
            Some("registry/2.0")
        );
        assert_eq!(r.text().await.unwrap(), "{}");
    }
    let r = p.head("/v2/").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), 0);
    assert_eq!(up.total(), 0, "the base endpoint never asks upstream");
}

#[tokio::test]
async fn d2_tls_hello_on_the_plain_port_is_refused_promptly() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = FakeRegistry::start().await;
    let p = Proxied::start(&up).await;
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    // The first bytes of a TLS 1.2 ClientHello.
    s.write_all(&[
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ])
    .await
    .unwrap();
    let mut buf = Vec::new();
    let read =
        tokio::time::timeout(std::time::Duration::from_secs(1), s.read_to_end(&mut buf)).await;
    let answered = read.is_ok();
    assert!(answered, "connection neither answered nor closed within 1s");
    // hyper cannot parse the bytes as an HTTP/1 request line: a 400, and the
    // connection closed. dockerd, trying HTTPS first, then falls back at once.
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
}

#[tokio::test]
async fn d3_catalog_and_root_are_404_json() {
    let up = FakeRegistry::start().await;
    let p = Proxied::start(&up).await;
    for path in ["/v2/_catalog", "/"] {
        let r = p.get(path).await;
        assert_eq!(r.status(), 404);
        assert_eq!(header(&r, "content-type"), Some("application/json"));
        assert_eq!(error_code(r).await, "UNSUPPORTED");
    }
}

#[tokio::test]
async fn m1_m2_m3_manifest_by_tag_and_digest() {
    let up = FakeRegistry::start().await;
    let (digest, _) = up.add_image("library/alpine", "latest", &[b"layer"]);
    let p = Proxied::start(&up).await;
    let path = "/v2/library/alpine/manifests/latest";

    let head = p.head_with(path, &[("accept", CONTAINERD_ACCEPT)]).await;
    assert_eq!(head.status(), 200);
    assert_eq!(header(&head, "content-type"), Some(OCI_MANIFEST));
    assert_eq!(header(&head, DH), Some(digest.as_str()));
    let len: usize = header(&head, "content-length").unwrap().parse().unwrap();
    assert!(len > 0);
    assert_eq!(head.bytes().await.unwrap().len(), 0);

    let get = p.get(path).await;
    assert_eq!(get.status(), 200);
    assert_eq!(header(&get, "etag"), Some(format!("\"{digest}\"").as_str()));
    let body = get.bytes().await.unwrap();
    assert_eq!(body.len(), len);
    assert_eq!(sha256(&body), digest);

    let by_digest = format!("/v2/library/alpine/manifests/{digest}");
    let get = p.get(&by_digest).await;
    assert_eq!(header(&get, DH), Some(digest.as_str()));
    assert_eq!(sha256(&get.bytes().await.unwrap()), digest);
    let head = p.head(&by_digest).await;
    assert_eq!(head.status(), 200);
    assert_eq!(header(&head, DH), Some(digest.as_str()));
    assert_eq!(header(&head, "content-type"), Some(OCI_MANIFEST));
    assert_eq!(
        header(&head, "content-length"),
        Some(len.to_string().as_str())
    );

    // Cold HEAD asked upstream with HEAD only; the body came with one GET by digest.
    assert_eq!(up.count("HEAD", |r| r.is_manifest()), 1);
    assert_eq!(up.count("GET", |r| r.is_manifest()), 1);
    assert_eq!(
        up.count("GET", |r| r.path.ends_with("/latest")),
        0,
        "never GET a tag just to learn its digest"
    );
}

#[tokio::test]
async fn m4_if_none_match_gets_304() {
    let up = FakeRegistry::start().await;
    let (digest, _) = up.add_image("library/alpine", "latest", &[b"layer"]);
    let p = Proxied::start(&up).await;
    let r = p
        .get_with(
            &format!("/v2/library/alpine/manifests/{digest}"),
            &[("if-none-match", &format!("\"{digest}\""))],
        )
        .await;
    assert_eq!(r.status(), 304);
    assert_eq!(header(&r, DH), Some(digest.as_str()));
}

#[tokio::test]
async fn cold_get_by_tag_costs_one_upstream_request() {
    let up = FakeRegistry::start().await;
    let (digest, _) = up.add_image("library/alpine", "3", &[b"l"]);
    let p = Proxied::start(&up).await;
    let r = p.get("/v2/library/alpine/manifests/3").await;
    assert_eq!(sha256(&r.bytes().await.unwrap()), digest);
    assert_eq!(up.total(), 1, "one GET by tag, no HEAD first");
    // The body is now stored: by digest and by tag, no upstream request.
    p.get(&format!("/v2/library/alpine/manifests/{digest}"))
        .await;
    p.head("/v2/library/alpine/manifests/3").await;
    assert_eq!(up.total(), 1);
}

#[tokio::test]
async fn m6_index_served_byte_exact_with_its_type() {
    let up = FakeRegistry::start().await;
    let (m1, _) = up.add_image("library/multi", "amd64", &[b"a"]);
    let (m2, _) = up.add_image("library/multi", "arm64", &[b"b"]);
    // Odd spacing: any re-serialisation would change the digest.
    let index = format!(
        "{{ \"schemaVersion\": 2,\n \"mediaType\": \"{OCI_INDEX}\", \"manifests\": [{{\"mediaType\":\"{OCI_MANIFEST}\",\"digest\":\"{m1}\",\"size\":1,\"platform\":{{\"architecture\":\"amd64\",\"os\":\"linux\"}}}},{{\"mediaType\":\"{OCI_MANIFEST}\",\"digest\":\"{m2}\",\"size\":1,\"platform\":{{\"architecture\":\"arm64\",\"os\":\"linux\"}}}}]}}  "
    );
    let d = up.add_manifest("library/multi", Some("1.0"), OCI_INDEX, index.clone());
    let p = Proxied::start(&up).await;
    let r = p
        .get_with(
            "/v2/library/multi/manifests/1.0",
            &[("accept", &format!("{OCI_INDEX}, {OCI_MANIFEST}"))],
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), Some(OCI_INDEX));
    assert_eq!(header(&r, DH), Some(d.as_str()));
    assert_eq!(r.bytes().await.unwrap(), index.as_bytes());
}

#[tokio::test]
async fn m5_m7_accept_in_several_lines_or_with_a_wildcard() {
    let up = FakeRegistry::start().await;
    let (m1, _) = up.add_image("library/multi", "amd64", &[b"a"]);
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{m1}","size":1,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#
    );
    let d = up.add_manifest("library/multi", Some("1.0"), OCI_INDEX, index);
    let p = Proxied::start(&up).await;
    // M5: one Accept header per type, the index type not first.
    let r = p
        .client
        .get(p.url("/v2/library/multi/manifests/1.0"))
        .header("accept", OCI_MANIFEST)
        .header(
            "accept",
            "application/vnd.docker.distribution.manifest.list.v2+json",
        )
        .header("accept", OCI_INDEX)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), Some(OCI_INDEX));
    assert_eq!(sha256(&r.bytes().await.unwrap()), d);
    // M7: containerd fetching a platform manifest by digest.
    let r = p
        .get_with(
            &format!("/v2/library/multi/manifests/{m1}"),
            &[("accept", &format!("{OCI_MANIFEST}, */*"))],
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), Some(OCI_MANIFEST));
    assert_eq!(sha256(&r.bytes().await.unwrap()), m1);
    // Upstream was asked with the full list both times, never the client's.
    assert!(up.requests().iter().filter(|r| r.is_manifest()).all(|r| r
        .headers
        .get_all("accept")
        .iter()
        .count()
        == 1
        && r.headers["accept"].to_str().unwrap().contains(OCI_INDEX)
        && !r.headers["accept"].to_str().unwrap().contains("*/*")));
}

#[tokio::test]
async fn m8_missing_tag_is_manifest_unknown() {
    let up = FakeRegistry::start().await;
    up.add_image("library/alpine", "latest", &[b"l"]);
    let p = Proxied::start(&up).await;
    let r = p.get("/v2/library/alpine/manifests/missing-abc").await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    let r = p.head("/v2/library/alpine/manifests/missing-abc2").await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.bytes().await.unwrap().len(), 0);
}

#[tokio::test]
async fn m9_invalid_tag_is_404_without_upstream() {
    let up = FakeRegistry::start().await;
    let p = Proxied::start(&up).await;
    assert_eq!(
        p.get("/v2/x/manifests/.INVALID_MANIFEST_NAME")
            .await
            .status(),
        404
    );
    assert_eq!(
        p.head("/v2/x/manifests/.INVALID_MANIFEST_NAME")
            .await
            .status(),
        404
    );
    assert_eq!(up.total(), 0);
}

#[tokio::test]
async fn m10_wrong_manifest_bytes_are_refused_and_not_cached() {
    let up = FakeRegistry::start().await;
    let (digest, _) = up.add_image("library/alpine", "latest", &[b"l"]);
    up.faults(|f| f.wrong_manifest_bytes = true);
    let p = Proxied::start(&up).await;
    let path = format!("/v2/library/alpine/manifests/{digest}");
    let r = p.get(&path).await;
    assert_eq!(r.status(), 502);
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");
    // By tag: the body no longer matches upstream's digest header either.
    let r = p.get("/v2/library/alpine/manifests/latest").await;
    assert_eq!(r.status(), 502);
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");
    assert!(!p.store().has_manifest(&digest.parse().unwrap()).unwrap());
    up.faults(|f| f.wrong_manifest_bytes = false);
    let before = up.count("GET", |r| r.is_manifest());
    let r = p.get(&path).await;
    assert_eq!(r.status(), 200);
    assert_eq!(sha256(&r.bytes().await.unwrap()), digest);
    assert_eq!(
        up.count("GET", |r| r.is_manifest()),
        before + 1,
        "fetched again once fixed"
    );
}

#[tokio::test]
async fn m11_oversized_manifest_is_refused() {
    let up = FakeRegistry::start().await;
    let big = format!(
        "{{\"schemaVersion\":2,\"pad\":\"{}\"}}",
        "x".repeat(4 * 1024 * 1024 + 10)
    );
    let d = up.add_manifest("library/big", Some("1"), OCI_MANIFEST, big);
    let p = Proxied::start(&up).await;
    let r = p.get(&format!("/v2/library/big/manifests/{d}")).await;
    assert_eq!(r.status(), 502, "an oversized manifest is upstream's fault");
    assert_eq!(error_code(r).await, "UNKNOWN");
    assert!(!p.store().has_manifest(&d.parse().unwrap()).unwrap());
}

#[tokio::test]
async fn m12_upstream_always_gets_the_full_accept_list() {
    let up = FakeRegistry::start().await;
    let (digest, _) = up.add_image("library/alpine", "latest", &[b"l"]);
    let p = Proxied::start(&up).await;
    p.head_with(
        "/v2/library/alpine/manifests/latest",
        &[("accept", OCI_MANIFEST)],
    )
    .await;
    p.get(&format!("/v2/library/alpine/manifests/{digest}"))
        .await;
    let manifest_requests: Vec<_> = up
        .requests()
        .into_iter()
        .filter(|r| r.is_manifest())
        .collect();
    assert_eq!(manifest_requests.len(), 2);
    for r in manifest_requests {
        let accept = r
            .headers
            .get("accept")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        for t in [
            OCI_INDEX,
            OCI_MANIFEST,
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
        ] {
            assert!(accept.contains(t), "{} lacks {t}: {accept}", r.path);
        }
    }
}

#[tokio::test]
async fn schema1_is_never_cached() {
    let up = FakeRegistry::start().await;
    let d = up.add_manifest(
        "library/old",
        Some("1"),
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        r#"{"schemaVersion":1,"name":"library/old"}"#,
    );
    let p = Proxied::start(&up).await;
    let r = p.get("/v2/library/old/manifests/1").await;
    assert_eq!(r.status(), 502, "schema1 is refused as unusable");
    assert_eq!(error_code(r).await, "UNKNOWN");
    assert!(!p.store().has_manifest(&d.parse().unwrap()).unwrap());
}

#[tokio::test]
async fn e1_bad_digest_is_400_digest_invalid() {
    let up = FakeRegistry::start().await;
    let p = Proxied::start(&up).await;
    let r = p
        .get("/v2/library/alpine/manifests/sha256:totallywrong")
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(header(&r, "content-type"), Some("application/json"));
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    assert_eq!(up.total(), 0);
}

#[tokio::test]
async fn e3_push_and_delete_are_405_unsupported() {
    let up = FakeRegistry::start().await;
    let p = Proxied::start(&up).await;
    let d = sha256(b"x");
    let cases = [
        (reqwest::Method::PUT, "/v2/x/manifests/1".to_string()),
        (reqwest::Method::POST, "/v2/x/blobs/uploads/".to_string()),
        (
            reqwest::Method::PATCH,
            "/v2/x/blobs/uploads/123".to_string(),
        ),
        (
            reqwest::Method::PUT,
            "/v2/x/blobs/uploads/123?digest=sha256:0".to_string(),
        ),
        (reqwest::Method::DELETE, format!("/v2/x/blobs/{d}")),
        (reqwest::Method::DELETE, "/v2/x/manifests/1".to_string()),
    ];
    for (m, path) in cases {
        let r = p
            .client
            .request(m.clone(), p.url(&path))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{m} {path}");
        assert_eq!(error_code(r).await, "UNSUPPORTED");
    }
    assert_eq!(up.total(), 0);
}

#[tokio::test]
async fn e5_upstream_401_after_token_is_name_unknown_without_challenge() {
    let up = FakeRegistry::start().await;
    up.set_auth(Auth::bearer(Some(300)));
    up.faults(|f| f.always_401 = true);
    let p = Proxied::start(&up).await;
    let r = p.get("/v2/library/private/manifests/latest").await;
    assert_eq!(r.status(), 404);
    assert!(r.headers().get("www-authenticate").is_none());
    let auth_host = up.auth_addr.to_string();
    for (name, value) in r.headers() {
        assert!(
            !value.to_str().unwrap_or("").contains(&auth_host),
            "{name} leaks the realm"
        );
    }
    assert_eq!(error_code(r).await, "NAME_UNKNOWN");
}

#[tokio::test]
async fn e6_upper_case_name_is_refused_without_upstream() {
    let up = FakeRegistry::start().await;
    let p = Proxied::start(&up).await;
    let r = p.get("/v2/Library/Alpine/manifests/latest").await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "NAME_INVALID");
    assert_eq!(up.total(), 0);
}

#[tokio::test]
async fn e7_unreachable_upstream_is_a_json_5xx() {
    let up = FakeRegistry::start().await;
    up.set_down(true);
    let p = Proxied::start(&up).await;
    let r = p.get("/v2/library/alpine/manifests/latest").await;
    assert_eq!(r.status(), 503);
    assert_eq!(error_code(r).await, "UNAVAILABLE");
}

#[tokio::test]
async fn t1_t2_t3_t4_t5_tags_list() {
    let up = FakeRegistry::start().await;
    let (d, _) = up.add_image("library/alpine", "a", &[b"l"]);
    up.add_tag_names("library/alpine", &["b", "c", "d", "e"], &d);
    let p = Proxied::hub(&up).await;

    let r = p.get("/v2/alpine/tags/list").await;
    assert_eq!(r.status(), 200);
    let v = json(r).await;
    assert_eq!(v["tags"], serde_json::json!(["a", "b", "c", "d", "e"]));
    assert_eq!(v["name"], "alpine", "the client-facing name");

    // Follow every Link: each tag exactly once, links on the client's path.
    let mut seen = Vec::new();
    let mut next = Some("/v2/alpine/tags/list?n=2".to_string());
    while let Some(path) = next.take() {
        let r = p.get(&path).await;
        assert_eq!(r.status(), 200);
        if let Some(link) = header(&r, "link") {
            assert!(link.starts_with("</v2/alpine/tags/list?"), "{link}");
            assert!(link.ends_with("rel=\"next\""));
            next = Some(link[1..link.find('>').unwrap()].to_string());
        }
        let v = json(r).await;
        let page: Vec<String> = serde_json::from_value(v["tags"].clone()).unwrap();
        assert!(page.len() <= 2);
        seen.extend(page);
    }
    assert_eq!(seen, ["a", "b", "c", "d", "e"]);

    let r = p.get("/v2/alpine/tags/list?n=0").await;
    assert!(r.headers().get("link").is_none());
    let v = json(r).await;
    assert_eq!(v["tags"], serde_json::json!([]));

    let v = json(p.get("/v2/alpine/tags/list?last=c").await).await;
    assert_eq!(v["tags"], serde_json::json!(["d", "e"]));

    let r = p.get("/v2/nope/tags/list").await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "NAME_UNKNOWN");
    let r = p.get("/v2/alpine/tags/list?n=abc").await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "PAGINATION_NUMBER_INVALID");
}

#[tokio::test]
async fn f1_f3_f4_referrers() {
    let up = FakeRegistry::start().await;
    let p = Proxied::start(&up).await;
    let random = sha256(b"no referrers here");
    let r = p.get(&format!("/v2/library/x/referrers/{random}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), Some(OCI_INDEX));
    let v = json(r).await;
    assert_eq!(v["schemaVersion"], 2);
    assert_eq!(v["manifests"], serde_json::json!([]));

    // Upstream without the API: the sha256-<hex> fallback tag holds the index.
    up.faults(|f| f.no_referrers_api = true);
    let subject = sha256(b"subject");
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"artifactType":"application/sig"}},{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"artifactType":"application/sbom","annotations":{{"a":"b"}}}}]}}"#,
        sha256(b"1"),
        sha256(b"2")
    );
    let tag = format!("sha256-{}", &subject[7..]);
    up.add_manifest("library/x", Some(&tag), OCI_INDEX, index);
    let v = json(p.get(&format!("/v2/library/x/referrers/{subject}")).await).await;
    assert_eq!(v["manifests"].as_array().unwrap().len(), 2);
    assert_eq!(v["manifests"][1]["annotations"]["a"], "b");

    let r = p
        .get(&format!(
            "/v2/library/x/referrers/{subject}?artifactType=application%2Fsbom&ns={}",
            up.authority()
        ))
        .await;
    assert_eq!(header(&r, "oci-filters-applied"), Some("artifactType"));
    let v = json(r).await;
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(v["manifests"][0]["artifactType"], "application/sbom");

    let r = p.get("/v2/library/x/referrers/sha256:xyz").await;
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn f2_upstream_referrers_pass_through_with_artifact_types() {
    let up = FakeRegistry::start().await;
    let subject = sha256(b"image");
    up.add_referrers(
        &subject,
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":9,"artifactType":"application/vnd.dev.cosign","annotations":{{"k":"v"}}}}]}}"#,
            sha256(b"sig")
        ),
    );
    let p = Proxied::start(&up).await;
    let v = json(p.get(&format!("/v2/library/x/referrers/{subject}")).await).await;
    assert_eq!(
        v["manifests"][0]["artifactType"],
        "application/vnd.dev.cosign"
    );
    assert_eq!(v["manifests"][0]["annotations"]["k"], "v");
    let r = p
        .get(&format!(
            "/v2/library/x/referrers/{subject}?artifactType=other"
        ))
        .await;
    assert_eq!(header(&r, "oci-filters-applied"), Some("artifactType"));
    assert_eq!(json(r).await["manifests"], serde_json::json!([]));
}

// ------------------------------------------------------------------ routing

async fn two_upstreams() -> (FakeRegistry, FakeRegistry, Proxied) {
    let hub = FakeRegistry::start().await;
    let ghcr = FakeRegistry::start().await;
    let toml = format!(
        r#"
        default_upstream = "docker.io"
        [[upstream]]
        name = "docker.io"
        url = "{}"
        aliases = ["docker.io", "index.docker.io", "registry-1.docker.io"]
        [[upstream]]
        name = "ghcr.io"
        url = "{}"
        "#,
        hub.url(),
        ghcr.url()
    );
    let p = Proxied::with_toml(&hub, &toml).await;
    (hub, ghcr, p)
}

#[tokio::test]
async fn n1_n4_n6_ns_and_default_routes_reach_hub_library() {
    let (hub, ghcr, p) = two_upstreams().await;
    let (d, _) = hub.add_image("library/alpine", "latest", &[b"l"]);
    for (path, echo) in [
        (
            "/v2/library/alpine/manifests/latest?ns=docker.io",
            Some("docker.io"),
        ),
        (
            "/v2/alpine/manifests/latest?ns=index.docker.io",
            Some("index.docker.io"),
        ),
        (
            "/v2/alpine/manifests/latest?ns=registry-1.docker.io",
            Some("registry-1.docker.io"),
        ),
        ("/v2/library/alpine/manifests/latest", None),
        ("/v2/alpine/manifests/latest", None),
    ] {
        let r = p.head(path).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(header(&r, DH), Some(d.as_str()), "{path}");
        assert_eq!(header(&r, "oci-namespace"), echo, "{path}");
    }
    assert_eq!(ghcr.total(), 0);
}

#[tokio::test]
async fn n2_n5_n8_prefix_routes_and_upstreams_are_never_confused() {
    let (hub, ghcr, p) = two_upstreams().await;
    let (hub_d, _) = hub.add_image("x/y", "1", &[b"hub layer"]);
    let (ghcr_d, ghcr_layers) = ghcr.add_image("x/y", "1", &[b"ghcr layer"]);
    assert_ne!(hub_d, ghcr_d);
    let r = p.head("/v2/x/y/manifests/1?ns=ghcr.io").await;
    assert_eq!(header(&r, DH), Some(ghcr_d.as_str()));
    let r = p.head("/v2/ghcr.io/x/y/manifests/1").await;
    assert_eq!(header(&r, DH), Some(ghcr_d.as_str()));
    let r = p.head("/v2/docker.io/x/y/manifests/1").await;
    assert_eq!(header(&r, DH), Some(hub_d.as_str()));
    let r = p.head("/v2/x/y/manifests/1").await;
    assert_eq!(header(&r, DH), Some(hub_d.as_str()));
    let r = p.head("/v2/docker.io/alpine/manifests/1").await;
    assert_eq!(
        r.status(),
        404,
        "docker.io/alpine is library/alpine, which the fake lacks"
    );
    assert!(hub
        .requests()
        .iter()
        .any(|r| r.path == "/v2/library/alpine/manifests/1"));

    // The same blob through ns and through the prefix: one entry, one fetch.
    let layer = &ghcr_layers[0];
    let a = p.get(&format!("/v2/x/y/blobs/{layer}?ns=ghcr.io")).await;
    assert_eq!(body_digest(a).await.unwrap().0, *layer);
    let b = p.get(&format!("/v2/ghcr.io/x/y/blobs/{layer}")).await;
    assert_eq!(body_digest(b).await.unwrap().0, *layer);
    assert_eq!(ghcr.count("GET", |r| r.is_blob()), 1);
}

#[tokio::test]
async fn n3_unknown_ns_is_refused_and_nothing_is_contacted() {
    let (hub, ghcr, p) = two_upstreams().await;
    let r = p
        .get("/v2/library/alpine/manifests/latest?ns=evil.example")
        .await;
    assert_eq!(r.status(), 403);
    assert_eq!(error_code(r).await, "DENIED");
    let r = p
        .get(&format!(
            "/v2/library/alpine/blobs/{}?ns=169.254.169.254",
            sha256(b"x")
        ))
        .await;
    assert_eq!(r.status(), 403);
    assert_eq!(error_code(r).await, "DENIED");
    assert_eq!(hub.total() + ghcr.total(), 0);
}

#[tokio::test]
async fn n9_ns_with_prefix_is_not_a_nested_repository() {
    let (hub, _ghcr, p) = two_upstreams().await;
    let (d, _) = hub.add_image("library/alpine", "latest", &[b"l"]);
    let r = p
        .head("/v2/docker.io/library/alpine/manifests/latest?ns=docker.io")
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, DH), Some(d.as_str()));
    assert!(hub
        .requests()
        .iter()
        .all(|r| !r.path.contains("docker.io/")));
}

#[tokio::test]
async fn port_prefix_form_routes_to_the_upstream_with_that_authority() {
    let up = FakeRegistry::start().await;
    let (d, _) = up.add_image("library/test", "1.0", &[b"l"]);
    let p = Proxied::start(&up).await;
    let r = p
        .head(&format!(
            "/v2/{}/library/test/manifests/1.0",
            up.authority()
        ))
        .await;
    assert_eq!(header(&r, DH), Some(d.as_str()));
    let r = p
        .head(&format!(
            "/v2/library/test/manifests/1.0?ns={}",
            up.authority()
        ))
        .await;
    assert_eq!(header(&r, DH), Some(d.as_str()));
    let r = p.head("/v2/10.9.9.9:5000/library/test/manifests/1.0").await;
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn metrics_endpoint_reports_requests_and_cache_activity() {
    let up = FakeRegistry::start().await;
    up.add_image("library/alpine", "latest", &[b"l"]);
    let p = Proxied::start(&up).await;
    p.head("/v2/library/alpine/manifests/latest").await;
    p.head("/v2/library/alpine/manifests/latest").await;
    let text = p.get("/metrics").await.text().await.unwrap();
    assert!(
        text.contains(
            "ferry_http_requests_total{route=\"manifest_tag\",method=\"HEAD\",status=\"200\"} 2"
        ),
        "{text}"
    );
    assert!(text.contains("ferry_cache_hits_total{kind=\"tag\"} 1"));
    assert!(text.contains("ferry_cache_misses_total{kind=\"tag\"} 1"));
    assert!(text.contains(&format!(
        "ferry_upstream_requests_total{{upstream=\"{}\",method=\"HEAD\",status=\"200\"}} 1",
        up.authority()
    )));
}

#[tokio::test]
async fn tls_listener_serves_https_over_http2_and_http1() {
    let up = FakeRegistry::start().await;
    let (m, layers) = up.add_image("library/app", "1", &[b"layer over tls"]);
    // A CA and a leaf for 127.0.0.1 signed by it (webpki refuses a CA as the leaf).
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = TestCa::new().write_server(certs.path(), &["127.0.0.1"]);
    let toml = format!("tls_cert = {:?}\ntls_key = {:?}\n", cert, key);
    let p = Proxied::with_toml(&up, &toml).await;
    let root = reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap();
    let https = |path: &str| format!("https://{}{path}", p.addr);
    for http2 in [false, true] {
        let mut b = reqwest::Client::builder().add_root_certificate(root.clone());
        if http2 {
            b = b.http2_prior_knowledge();
        } else {
            b = b.http1_only();
        }
        let c = b.build().unwrap();
        let r = c
            .get(https("/v2/library/app/manifests/1"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let want = if http2 {
            reqwest::Version::HTTP_2
        } else {
            reqwest::Version::HTTP_11
        };
        assert_eq!(r.version(), want);
        assert_eq!(sha256(&r.bytes().await.unwrap()), m);
        let r = c
            .get(https(&format!("/v2/library/app/blobs/{}", layers[0])))
            .send()
            .await
            .unwrap();
        assert_eq!(body_digest(r).await.unwrap().0, layers[0]);
    }
    // Plain HTTP on the TLS port gets no answer.
    assert!(p.client.get(p.url("/v2/")).send().await.is_err());
    // A client that does not trust the certificate cannot connect.
    assert!(reqwest::get(https("/v2/")).await.is_err());

    // Half a TLS configuration is refused before anything starts.
    let half = format!("tls_cert = {cert:?}\n");
    let raw = ferry::config::RawConfig::from_toml(&half).unwrap();
    let e = ferry::config::Config::from_raw(raw, ferry::config::Overrides::default()).unwrap_err();
    assert!(
        e.to_string().contains("tls_cert and tls_key go together"),
        "{e}"
    );
    let bad = format!("tls_cert = {key:?}\ntls_key = {key:?}\n");
    let raw = ferry::config::RawConfig::from_toml(&bad).unwrap();
    assert!(ferry::config::Config::from_raw(raw, ferry::config::Overrides::default()).is_err());
}

/// Every sample name `/metrics` can carry, from its `# TYPE` lines (a family
/// with no sample yet has those too): counters end in `_total`, histograms
/// have `_bucket`, `_sum` and `_count`.
fn exported_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for l in text.lines() {
        let mut w = l.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (w.next(), w.next(), w.next(), w.next())
        {
            match kind {
                "counter" => {
                    names.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
                _ => {
                    names.insert(name.to_string());
                }
            }
        }
    }
    names
}

#[tokio::test]
async fn the_grafana_dashboard_uses_only_exported_metrics() {
    let up = FakeRegistry::start().await;
    up.add_image("library/app", "1", &[b"l"]);
    let p = Proxied::start(&up).await;
    // Traffic, so that every labelled family has a sample.
    p.head("/v2/library/app/manifests/1").await;
    p.get("/v2/library/app/manifests/1").await;
    let exported = exported_names(&p.get("/metrics").await.text().await.unwrap());
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docker/grafana/ferry.json"
    ))
    .unwrap();
    serde_json::from_str::<serde_json::Value>(&dashboard).expect("importable JSON");
    let used: std::collections::BTreeSet<String> = regex::Regex::new(r"ferry_[a-z_]+")
        .unwrap()
        .find_iter(&dashboard)
        .map(|m| m.as_str().to_string())
        .collect();
    assert!(
        used.len() >= 10,
        "the dashboard shows Ferry's metrics: {used:?}"
    );
    for name in &used {
        assert!(
            exported.contains(name),
            "{name} is not exported; exported: {exported:?}"
        );
    }
}
