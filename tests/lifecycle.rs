//! Issue 11's lifecycle: readiness while the store opens, SIGTERM within the
//! grace period, configuration and certificate reloads without a restart,
//! JSON logs, prefetch progress.

use crate::support::*;
use ferry::config::{Config, Overrides, RawConfig};
use std::time::{Duration, Instant};

fn config(up: &FakeRegistry, dir: &std::path::Path, toml: &str) -> Config {
    let raw = RawConfig::from_toml(toml).unwrap();
    Config::from_raw(
        raw,
        Overrides {
            listen: Some("127.0.0.1:0".into()),
            data_dir: Some(dir.into()),
            upstream: Some(up.url()),
            ..Overrides::default()
        },
    )
    .unwrap()
}

/// A Ferry run by `ferry::run` on bound listeners, stopped by sending on `stop`.
struct Running {
    addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    running: tokio::task::JoinHandle<Result<(), ferry::StartError>>,
}

async fn run(config: Config) -> Running {
    let listeners = ferry::Listeners::bind(&config).await.unwrap();
    let addr = listeners.client.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (_reload_tx, reloads) = tokio::sync::mpsc::channel(1);
    let running = tokio::spawn(async move {
        // Held for the run: a dropped sender would end the reload loop.
        let _reload_tx = _reload_tx;
        ferry::run(
            config,
            listeners,
            async {
                let _ = stopped.await;
            },
            reloads,
        )
        .await
    });
    Running {
        addr,
        stop,
        running,
    }
}

async fn until_ready(client: &reqwest::Client, addr: std::net::SocketAddr) {
    while status(client, format!("http://{addr}/readyz")).await != 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn status(client: &reqwest::Client, url: String) -> u16 {
    client.get(url).send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn readyz_is_503_until_the_store_opens_then_200() {
    let up = FakeRegistry::start().await;
    up.add_image("library/app", "1", &[b"l"]);
    let dir = tempfile::tempdir().unwrap();
    // Another process holds the store (a previous Ferry still stopping).
    let held = ferry_storage::Store::open(ferry_storage::StoreOptions::new(dir.path())).unwrap();
    let config = config(&up, dir.path(), "");
    let Running {
        addr,
        stop,
        running,
    } = run(config).await;
    let c = reqwest::Client::new();
    let url = |p: &str| format!("http://{addr}{p}");
    assert_eq!(status(&c, url("/readyz")).await, 503);
    assert_eq!(
        status(&c, url("/healthz")).await,
        200,
        "alive while starting"
    );
    let r = c
        .get(url("/v2/library/app/manifests/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(header(&r, "retry-after"), Some("1"));
    assert_eq!(error_code(r).await, "UNAVAILABLE");
    assert_eq!(
        up.total(),
        0,
        "nothing is asked upstream before the store is open"
    );
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&c, url("/readyz")).await != 200 {
        assert!(Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status(&c, url("/v2/library/app/manifests/1")).await, 200);
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}

/// A Ferry asked to stop while a pull's response is under way.
struct Stopping {
    addr: std::net::SocketAddr,
    /// The pull of the blob: headers received, body not read yet.
    pull: reqwest::Response,
    running: tokio::task::JoinHandle<Result<(), ferry::StartError>>,
    /// When the stop was asked.
    asked: Instant,
}

/// Runs a Ferry with `shutdown_grace = grace` in front of `up`, starts a pull
/// of blob `d` through it, and asks it to stop once the response has begun.
async fn pull_then_stop(
    up: &FakeRegistry,
    dir: &std::path::Path,
    grace: &str,
    d: &str,
) -> Stopping {
    let config = config(up, dir, &format!("shutdown_grace = \"{grace}\""));
    let Running {
        addr,
        stop,
        running,
    } = run(config).await;
    let c = reqwest::Client::new();
    until_ready(&c, addr).await;
    let pull = c
        .get(format!("http://{addr}/v2/library/app/blobs/{d}"))
        .send()
        .await
        .unwrap();
    let _ = stop.send(());
    Stopping {
        addr,
        pull,
        running,
        asked: Instant::now(),
    }
}

#[tokio::test]
async fn a_stop_lets_a_running_pull_finish_and_its_blob_land() {
    let up = FakeRegistry::start().await;
    let d = up.add_blob(bytes_of(2 * 1024 * 1024, 50));
    up.faults(|f| f.throttle = Some((64 * 1024, Duration::from_millis(20))));
    let dir = tempfile::tempdir().unwrap();
    let Stopping {
        addr,
        pull,
        running,
        asked,
    } = pull_then_stop(&up, dir.path(), "20s", &d).await;
    // The response already started is finished…
    assert_eq!(body_digest(pull).await.unwrap().0, d);
    running.await.unwrap().unwrap();
    assert!(asked.elapsed() < Duration::from_secs(20));
    // …new connections are refused…
    assert!(reqwest::Client::new()
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .is_err());
    // …and the blob landed in the store before Ferry stopped.
    let store = ferry_storage::Store::open(ferry_storage::StoreOptions::new(dir.path())).unwrap();
    assert_eq!(
        store.blob_size(&d.parse().unwrap()).unwrap(),
        Some(2 * 1024 * 1024)
    );
}

#[tokio::test]
async fn a_stop_gives_up_at_the_end_of_the_grace_period() {
    let up = FakeRegistry::start().await;
    let d = up.add_blob(bytes_of(1024 * 1024, 51));
    let gate = up.gate(1000);
    let dir = tempfile::tempdir().unwrap();
    // A pull stuck upstream (the gate never opens).
    let Stopping {
        pull,
        running,
        asked,
        ..
    } = pull_then_stop(&up, dir.path(), "1s", &d).await;
    running.await.unwrap().unwrap();
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "stopped after {took:?}, not within the 1 s grace"
    );
    assert!(
        body_digest(pull).await.is_err(),
        "the stuck response was cut short"
    );
    drop(gate);
}

#[tokio::test]
async fn sighup_reloads_freshness_and_says_what_needs_a_restart() {
    let up = FakeRegistry::start().await;
    up.add_image("library/app", "1", &[b"l"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ferry.toml");
    let write = |ttl: &str, extra: &str| {
        std::fs::write(
            &file,
            format!(
                "data_dir = \"{}\"\n{extra}\n[[upstream]]\nname = \"up\"\nurl = \"{}\"\n[upstream.freshness]\ntag_ttl = \"{ttl}\"\n",
                dir.path().join("data").display(),
                up.url()
            ),
        )
        .unwrap()
    };
    write("1h", "");
    let ferry = FerryProcess::start(&["--config", file.to_str().unwrap()], "info");
    let c = reqwest::Client::new();
    let head = || c.head(ferry.url("/v2/library/app/manifests/1")).send();
    assert_eq!(head().await.unwrap().status(), 200);
    assert_eq!(head().await.unwrap().status(), 200);
    assert_eq!(
        up.count("HEAD", |r| r.is_manifest()),
        1,
        "fresh for an hour"
    );
    // The TTL is now 1 s, and logging changed (not reloadable).
    write("1s", "access_log = true");
    ferry.signal("HUP");
    // What needs a restart is logged last, after what was applied.
    assert!(
        ferry.wait_for_log("logging changed: needs a restart", Duration::from_secs(5)),
        "{}",
        ferry.log()
    );
    assert!(
        ferry
            .log()
            .contains("configuration reloaded: upstream \"up\": freshness policy"),
        "{}",
        ferry.log()
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(head().await.unwrap().status(), 200);
    assert_eq!(
        up.count("HEAD", |r| r.is_manifest()),
        2,
        "revalidated under the new TTL"
    );
    // A file that does not validate changes nothing.
    std::fs::write(&file, "bogus = 1").unwrap();
    ferry.signal("HUP");
    assert!(ferry.wait_for_log("configuration not reloaded", Duration::from_secs(5)));
    assert_eq!(head().await.unwrap().status(), 200, "still serving");
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (TestCa::new(), TestCa::new());
    let (ca1, cert, key) = first.write_server(dir.path(), &["127.0.0.1"]);
    let ferry = FerryProcess::start(
        &[
            "--upstream",
            &up.url(),
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        "info",
    );
    let https = format!("https://{}/v2/", ferry.addr);
    let trusting = |pem: &str| {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
            .build()
            .unwrap()
    };
    let ca1 = std::fs::read_to_string(ca1).unwrap();
    assert_eq!(
        trusting(&ca1).get(&https).send().await.unwrap().status(),
        200
    );
    // cert-manager replaces the files in place…
    let leaf = second.server(&["127.0.0.1"]);
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    // …and the next check (SIGHUP forces one) picks them up.
    ferry.signal("HUP");
    assert!(
        ferry.wait_for_log("TLS certificate", Duration::from_secs(5)),
        "{}",
        ferry.log()
    );
    assert_eq!(
        trusting(&second.pem())
            .get(&https)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(
        trusting(&ca1).get(&https).send().await.is_err(),
        "the old certificate is gone"
    );
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ferry = FerryProcess::start(
        &[
            "--upstream",
            &up.url(),
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--log-format",
            "json",
            "--access-log",
        ],
        "info",
    );
    reqwest::get(ferry.url("/v2/")).await.unwrap();
    assert!(ferry.wait_for_log("/v2/", Duration::from_secs(5)));
    let log = ferry.log();
    let mut lines = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        for key in ["timestamp", "level", "target", "message"] {
            assert!(v.get(key).is_some(), "{key} in {line}");
        }
        lines += 1;
    }
    assert!(lines >= 3, "{log}");
    assert!(!log.contains('\u{1b}'), "no colour codes");
}

#[tokio::test]
async fn text_logs_into_a_pipe_carry_no_colour_codes() {
    let up = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ferry = FerryProcess::start(
        &[
            "--upstream",
            &up.url(),
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        "info",
    );
    assert!(ferry.log().contains("INFO"));
    assert!(!ferry.log().contains('\u{1b}'), "{}", ferry.log());
}

#[tokio::test]
async fn prefetch_streams_progress_as_ndjson() {
    let up = FakeRegistry::start().await;
    let contents = [bytes_of(3 * 1024 * 1024, 52), b"small".to_vec()];
    let (_, layers) = up.add_image("library/app", "1", &[&contents[0], &contents[1]]);
    up.faults(|f| f.throttle = Some((128 * 1024, Duration::from_millis(30))));
    let toml = format!(
        "admin_listen = \"127.0.0.1:0\"\n[[upstream]]\nname = \"up\"\nurl = \"{}\"\n",
        up.url()
    );
    let p = Proxied::with_toml(&up, &toml).await;
    let r = p
        .client
        .post(p.admin_url("/admin/prefetch?upstream=up&repository=library/app&reference=1"))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "content-type"), Some("application/x-ndjson"));
    let text = r.text().await.unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 2, "progress, then the report: {text}");
    assert!(lines[..lines.len() - 1]
        .iter()
        .all(|v| v.get("blobs_done").is_some()));
    let last = lines.last().unwrap();
    assert_eq!(last["done"], true, "{last}");
    assert_eq!(last["blobs_fetched"], 3, "config and two layers");
    p.settled().await;
    for (l, content) in layers.iter().zip(&contents) {
        assert_eq!(p.stored_size(l), Some(content.len() as u64));
    }
}
