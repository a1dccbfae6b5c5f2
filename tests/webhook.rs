//! Digest pinning at admission (issue 14): AdmissionReview fixtures posted over
//! HTTPS with SNI `ferry.ferry-system.svc` by a client trusting only the test
//! CA, acting as the API server; the returned JSON Patch is applied and the
//! images checked. Upstream traffic is counted exactly.

use crate::support::*;
use base64::Engine as _;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const SVC: &str = "ferry.ferry-system.svc";

struct Setup {
    hub: FakeRegistry,
    local: FakeRegistry,
    p: Proxied,
    ca: TestCa,
    _certs: tempfile::TempDir,
    nginx: String,
    busybox: String,
    app: String,
    app_layers: Vec<String>,
}

async fn setup(webhook_extra: &str) -> Setup {
    let hub = FakeRegistry::start().await;
    let (nginx, _) = hub.add_image("library/nginx", "1.27", &[b"nginx layer"]);
    let (busybox, _) = hub.add_image("library/busybox", "1.36", &[b"busybox layer"]);
    let local = FakeRegistry::start().await;
    let (app, app_layers) = local.add_image("team/app", "1.0", &[&bytes_of(200_000, 60), b"app"]);
    local.add_image("pause", "3.9", &[b"pause"]);
    let ca = TestCa::new();
    let certs = tempfile::tempdir().unwrap();
    let (_ca, cert, key) = ca.write_server(certs.path(), &[SVC]);
    let toml = format!(
        r#"default_upstream = "docker.io"
[[upstream]]
name = "docker.io"
url = "{}"
aliases = ["docker.io"]
[[upstream]]
name = "local"
url = "{}"
aliases = ["127.0.0.1:5001", "registry.k8s.io"]
[webhook]
listen = "127.0.0.1:0"
tls_cert = {cert:?}
tls_key = {key:?}
exclude = ['registry\.k8s\.io/pause:.*']
{webhook_extra}
"#,
        hub.url(),
        local.url()
    );
    let p = Proxied::with_toml(&hub, &toml).await;
    Setup {
        hub,
        local,
        p,
        ca,
        _certs: certs,
        nginx,
        busybox,
        app,
        app_layers,
    }
}

impl Setup {
    fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca.pem().as_bytes()).unwrap())
            .tls_built_in_root_certs(false)
            .resolve(SVC, self.p.webhook_addr.unwrap())
            .build()
            .unwrap()
    }

    fn url(&self, timeout: &str) -> String {
        format!(
            "https://{SVC}:{}/mutate?timeout={timeout}",
            self.p.webhook_addr.unwrap().port()
        )
    }

    /// Posts a fixture as the API server would; returns (review response, patched object).
    async fn admit(&self, review: &Value, timeout: &str) -> (Value, Value) {
        let r = self
            .client()
            .post(self.url(timeout))
            .header("content-type", "application/json")
            .body(review.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let answer: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        let response = answer["response"].clone();
        assert_eq!(response["uid"], review["request"]["uid"], "uid echoed");
        let mut object = review["request"]["object"].clone();
        if let Some(patch) = response["patch"].as_str() {
            assert_eq!(response["patchType"], "JSONPatch");
            let ops: Value = serde_json::from_slice(
                &base64::engine::general_purpose::STANDARD
                    .decode(patch)
                    .unwrap(),
            )
            .unwrap();
            apply(&mut object, &ops);
        } else {
            assert!(
                response.get("patchType").is_none(),
                "patchType only with a patch"
            );
        }
        (response, object)
    }

    fn upstream_requests(&self) -> usize {
        self.hub.total() + self.local.total()
    }
}

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/admission/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Applies RFC 6902 `replace` operations (all the webhook sends).
fn apply(doc: &mut Value, ops: &Value) {
    for op in ops.as_array().unwrap() {
        assert_eq!(op["op"], "replace", "{op}");
        let target = doc
            .pointer_mut(op["path"].as_str().unwrap())
            .expect("the path exists");
        assert!(target.is_string(), "replaces an image string");
        *target = op["value"].clone();
    }
}

fn image(obj: &Value, pointer: &str) -> String {
    obj.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn pins_pods_workloads_and_new_ephemeral_containers() {
    let s = setup("warm = false").await;
    let (r, obj) = s
        .admit(&fixture("pod-init-and-containers.json"), "10s")
        .await;
    assert_eq!(r["allowed"], true);
    assert_eq!(
        image(&obj, "/spec/initContainers/0/image"),
        format!("busybox:1.36@{}", s.busybox)
    );
    assert_eq!(
        image(&obj, "/spec/containers/0/image"),
        format!("nginx:1.27@{}", s.nginx)
    );
    assert_eq!(
        image(&obj, "/spec/containers/1/image"),
        format!("127.0.0.1:5001/team/app:1.0@{}", s.app)
    );
    assert!(
        obj["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .as_str()
            .unwrap()
            .contains("\"nginx:1.27\""),
        "nothing patched outside the images"
    );

    let (_, obj) = s.admit(&fixture("deployment.json"), "10s").await;
    assert_eq!(
        image(&obj, "/spec/template/spec/containers/0/image"),
        format!("nginx:1.27@{}", s.nginx)
    );
    let (_, obj) = s.admit(&fixture("cronjob.json"), "10s").await;
    assert_eq!(
        image(
            &obj,
            "/spec/jobTemplate/spec/template/spec/containers/0/image"
        ),
        format!("127.0.0.1:5001/team/app:1.0@{}", s.app)
    );
    let (r, obj) = s.admit(&fixture("ephemeral-container.json"), "10s").await;
    assert_eq!(
        image(&obj, "/spec/ephemeralContainers/0/image"),
        format!("busybox:1.36@{}", s.busybox)
    );
    assert_eq!(
        image(&obj, "/spec/containers/0/image"),
        "nginx:1.27",
        "running containers untouched"
    );
    let ops: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(r["patch"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(ops.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn leaves_pinned_unknown_and_excluded_images_alone() {
    let s = setup("warm = false").await;
    for f in [
        "already-pinned.json",
        "unknown-registry.json",
        "excluded-image.json",
    ] {
        let before = s.upstream_requests();
        let review = fixture(f);
        let (r, obj) = s.admit(&review, "10s").await;
        assert_eq!(r["allowed"], true, "{f}");
        assert!(r.get("patch").is_none(), "{f}: no patch");
        assert_eq!(obj, review["request"]["object"], "{f}");
        assert_eq!(s.upstream_requests(), before, "{f}: nothing asked upstream");
    }
}

#[tokio::test]
async fn a_dry_run_is_pinned_but_warms_nothing() {
    let s = setup("warm = true").await;
    let (_, obj) = s.admit(&fixture("dry-run.json"), "10s").await;
    assert_eq!(
        image(&obj, "/spec/containers/0/image"),
        format!("127.0.0.1:5001/team/app:1.0@{}", s.app)
    );
    assert_eq!(
        s.p.metric("ferry_admission_warms_total"),
        0,
        "no warm on a dry run"
    );
    assert_eq!(s.p.metric("ferry_admission_warms_skipped_total"), 0);
    assert_eq!(
        s.local.count("GET", |r| r.is_blob()),
        0,
        "no side effects on a dry run"
    );
}

/// A Deployment's replicas are admitted one by one: each image is warmed at
/// most once in ten minutes.
#[tokio::test]
async fn each_image_is_warmed_at_most_once_in_ten_minutes() {
    let s = setup("warm = true").await;
    let review = fixture("cronjob.json");
    for _ in 0..5 {
        s.admit(&review, "10s").await;
    }
    assert_eq!(s.p.metric("ferry_admission_warms_total"), 1);
    assert_eq!(s.p.metric("ferry_admission_warms_skipped_total"), 4);
    s.p.advance(Duration::from_secs(599));
    s.admit(&review, "10s").await;
    assert_eq!(s.p.metric("ferry_admission_warms_total"), 1, "still recent");
    s.p.advance(Duration::from_secs(2));
    s.admit(&review, "10s").await;
    assert_eq!(
        s.p.metric("ferry_admission_warms_total"),
        2,
        "ten minutes on"
    );
}

#[tokio::test]
async fn a_thousand_admissions_of_one_tag_inside_its_ttl_cost_nothing_upstream() {
    let s = setup("warm = false").await;
    let review = fixture("deployment.json");
    s.admit(&review, "10s").await;
    let before = s.upstream_requests();
    for _ in 0..1000 {
        let (_, obj) = s.admit(&review, "10s").await;
        assert_eq!(
            image(&obj, "/spec/template/spec/containers/0/image"),
            format!("nginx:1.27@{}", s.nginx)
        );
    }
    assert_eq!(
        s.upstream_requests(),
        before,
        "1,000 admissions, 0 upstream requests"
    );
    // Past the TTL a moved tag gives the new digest.
    let (moved, _) = s
        .hub
        .add_image("library/nginx", "1.27", &[b"nginx layer v2"]);
    s.p.advance(Duration::from_secs(31));
    let (_, obj) = s.admit(&review, "10s").await;
    assert_eq!(
        image(&obj, "/spec/template/spec/containers/0/image"),
        format!("nginx:1.27@{moved}")
    );
}

#[tokio::test]
async fn with_upstream_down_the_stale_digest_is_used_with_a_warning() {
    let s = setup("warm = false").await;
    let review = fixture("deployment.json");
    s.admit(&review, "10s").await;
    s.hub.set_down(true);
    s.p.advance(Duration::from_secs(31));
    let (r, obj) = s.admit(&review, "10s").await;
    assert_eq!(
        image(&obj, "/spec/template/spec/containers/0/image"),
        format!("nginx:1.27@{}", s.nginx)
    );
    assert_eq!(
        r["warnings"],
        json!(["ferry: nginx:1.27 pinned to a stale digest (upstream unavailable)"]),
        "{r}"
    );
}

#[tokio::test]
async fn a_hanging_upstream_still_gets_an_answer_inside_the_timeout() {
    let s = setup("warm = false").await;
    s.hub.faults(|f| f.delay = Some(Duration::from_secs(10)));
    let started = Instant::now();
    let review = fixture("deployment.json");
    let (r, obj) = s.admit(&review, "2s").await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1900),
        "answered after {took:?}"
    );
    assert_eq!(r["allowed"], true, "never blocks the cluster by default");
    assert_eq!(
        image(&obj, "/spec/template/spec/containers/0/image"),
        "nginx:1.27"
    );
    assert_eq!(
        r["warnings"],
        json!(["ferry: no image pinned: the resolution took too long"]),
        "{r}"
    );
}

#[tokio::test]
async fn on_error_deny_refuses_an_image_that_cannot_be_resolved() {
    let s = setup("warm = false\non_error = \"deny\"").await;
    let mut review = fixture("deployment.json");
    review["request"]["object"]["spec"]["template"]["spec"]["containers"][0]["image"] =
        json!("nginx:9.99");
    let (r, _) = s.admit(&review, "10s").await;
    assert_eq!(r["allowed"], false, "{r}");
    assert!(r["status"]["message"]
        .as_str()
        .unwrap()
        .contains("nginx:9.99"));
}

#[tokio::test]
async fn on_error_deny_refuses_the_object_when_resolution_times_out() {
    let s = setup("warm = false\non_error = \"deny\"").await;
    s.hub.faults(|f| f.delay = Some(Duration::from_secs(10)));
    let (r, obj) = s.admit(&fixture("deployment.json"), "2s").await;
    assert_eq!(r["allowed"], false, "{r}");
    assert_eq!(
        r["status"]["message"],
        "ferry could not pin the images in time: the resolution took too long"
    );
    assert_eq!(r["status"]["code"], 403);
    assert!(r.get("patch").is_none(), "{r}");
    assert_eq!(
        image(&obj, "/spec/template/spec/containers/0/image"),
        "nginx:1.27"
    );
}

#[tokio::test]
async fn warm_on_admission_makes_the_pull_that_follows_cost_nothing_upstream() {
    let s = setup("warm = true").await;
    let (_, obj) = s.admit(&fixture("cronjob.json"), "10s").await;
    let pinned = image(
        &obj,
        "/spec/jobTemplate/spec/template/spec/containers/0/image",
    );
    assert!(pinned.ends_with(&s.app));
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.app_layers.iter().any(|l| s.p.stored_size(l).is_none()) {
        assert!(Instant::now() < deadline, "warming did not land");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.p.settled().await;
    // The node now pulls by digest: manifest and layers from the cache.
    s.local.clear_requests();
    let r =
        s.p.get(&format!("/v2/127.0.0.1:5001/team/app/manifests/{}", s.app))
            .await;
    assert_eq!(sha256(&r.bytes().await.unwrap()), s.app);
    for l in &s.app_layers {
        let r =
            s.p.get(&format!("/v2/127.0.0.1:5001/team/app/blobs/{l}"))
                .await;
        assert_eq!(body_digest(r).await.unwrap().0, *l);
    }
    assert_eq!(
        s.local.total(),
        0,
        "the pull after admission costs upstream nothing"
    );
}

#[tokio::test]
async fn the_resolve_api_answers_through_the_same_cache() {
    let s = setup("warm = false").await;
    let get = |q: &str| {
        let path = format!("/resolve?image={q}");
        let p = &s.p;
        async move { p.get(&path).await }
    };
    let r = get("nginx:1.27").await;
    assert_eq!(r.status(), 200);
    let v = json(r).await;
    assert_eq!(v["image"], "docker.io/library/nginx:1.27");
    assert_eq!(v["digest"], s.nginx.as_str());
    assert_eq!(v["source"], "upstream");
    assert_eq!(
        v["pinned"],
        format!("docker.io/library/nginx:1.27@{}", s.nginx)
    );
    assert_eq!(v["mediaType"], OCI_MANIFEST);
    let before = s.upstream_requests();
    s.p.advance(Duration::from_secs(5));
    let v = json(get("docker.io/library/nginx:1.27").await).await;
    assert_eq!(
        (v["source"].as_str(), v["age_seconds"].as_u64()),
        (Some("cache"), Some(5))
    );
    let v = json(get(&format!("nginx@{}", s.nginx)).await).await;
    assert_eq!(v["source"], "reference");
    assert_eq!(
        s.upstream_requests(),
        before,
        "cache and digest answers ask nothing"
    );
    let r = get("quay.example.org/x/y:2").await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "NAME_UNKNOWN");
    let r = get("Not_An:image:ref").await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "NAME_INVALID");
    s.hub.set_down(true);
    s.p.advance(Duration::from_secs(60));
    let v = json(get("nginx:1.27").await).await;
    assert_eq!(v["source"], "stale_if_error");
}

#[tokio::test]
async fn the_api_server_must_show_a_certificate_when_client_ca_is_set() {
    let api_ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("api-ca.pem");
    std::fs::write(&ca_path, api_ca.pem()).unwrap();
    let s = setup(&format!("warm = false\nclient_ca = {ca_path:?}")).await;
    let review = fixture("already-pinned.json");
    let anonymous = s
        .client()
        .post(s.url("10s"))
        .body(review.to_string())
        .send()
        .await;
    assert!(anonymous.is_err(), "no client certificate, no answer");
    let leaf = api_ca.client("kube-apiserver");
    let identity =
        reqwest::Identity::from_pem(format!("{}{}", leaf.cert_pem, leaf.key_pem).as_bytes())
            .unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(s.ca.pem().as_bytes()).unwrap())
        .identity(identity)
        .resolve(SVC, s.p.webhook_addr.unwrap())
        .build()
        .unwrap();
    let r = client
        .post(s.url("10s"))
        .body(review.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
