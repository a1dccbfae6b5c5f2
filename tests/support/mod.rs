//! Test harness: a real Ferry on `127.0.0.1:0` in front of a [`FakeRegistry`].

pub mod bucket;
pub mod fake;
pub mod hostile;
pub mod process;
pub mod tls;

pub use bucket::TestBucket;
pub use fake::{sha256, Auth, FakeRegistry};
pub use hostile::{Answer, Hostile};
pub use process::FerryProcess;
pub use tls::TestCa;

use ferry::clock::Clock;
use ferry::config::{Config, Overrides, RawConfig};
use ferry::proxy::Proxy;
use ferry::{Ferry, Listeners};
use ferry_storage::Store;
use futures_util::FutureExt as _;
use sha2::{Digest as _, Sha256};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const CONTAINERD_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";

/// Polls `done` every 10 ms until it holds; fails the test with `what` after
/// `within` (for what lands after a response: uploads, commits, fan-outs).
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + within;
    while !done().await {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A running Ferry.
pub struct Proxied {
    pub addr: SocketAddr,
    /// The admin API's address, when the configuration turned it on.
    pub admin_addr: Option<SocketAddr>,
    /// The admission webhook's address, when configured.
    pub webhook_addr: Option<SocketAddr>,
    pub proxy: Arc<Proxy>,
    pub clock: Clock,
    pub client: reqwest::Client,
    pub dir: Arc<tempfile::TempDir>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl Proxied {
    /// Ferry with `upstream` as its default upstream and default policy.
    pub async fn start(upstream: &FakeRegistry) -> Proxied {
        Self::with_toml(upstream, "").await
    }

    /// Ferry with extra TOML configuration (the fake is added as the default
    /// upstream unless the TOML declares upstreams itself).
    pub async fn with_toml(upstream: &FakeRegistry, toml: &str) -> Proxied {
        Self::for_url(&upstream.url(), toml).await
    }

    /// Ferry with the registry at `url` as its default upstream (unless the
    /// TOML declares upstreams itself) and extra TOML configuration.
    pub async fn for_url(url: &str, toml: &str) -> Proxied {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let raw = RawConfig::from_toml(toml).unwrap();
        let declares_upstreams = !raw.upstreams.is_empty();
        let config = Config::from_raw(
            raw,
            Overrides {
                listen: Some("127.0.0.1:0".into()),
                data_dir: Some(dir.path().to_path_buf()),
                upstream: (!declares_upstreams).then(|| url.to_string()),
                ..Overrides::default()
            },
        )
        .unwrap();
        Self::from_config(config, dir, Clock::manual()).await
    }

    /// Ferry with the fake as a Docker Hub–like upstream (named `docker.io`,
    /// single-component names get `library/`).
    pub async fn hub(upstream: &FakeRegistry) -> Proxied {
        let toml = format!(
            "[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\n",
            upstream.url()
        );
        Self::with_toml(upstream, &toml).await
    }

    /// Ferry with `upstream` as its default upstream and `bucket` as its
    /// `[bucket]` (replicas started on one bucket share it), plus extra
    /// `[bucket]` keys in `bucket_toml`.
    pub async fn on_bucket(
        upstream: &FakeRegistry,
        bucket: Arc<TestBucket>,
        bucket_toml: &str,
    ) -> Proxied {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let toml = format!("{}{bucket_toml}", bucket_section(dir.path()));
        let config = Config::from_raw(
            RawConfig::from_toml(&toml).unwrap(),
            Overrides {
                listen: Some("127.0.0.1:0".into()),
                data_dir: Some(dir.path().join("data")),
                upstream: Some(upstream.url()),
                ..Overrides::default()
            },
        )
        .unwrap();
        Self::start_with(config, dir, Clock::manual(), Some(bucket), None).await
    }

    /// `n` replicas of one cluster (static members, one peer secret) in front
    /// of `upstream`, on one clock, sharing `bucket` when given; `extra` TOML
    /// is added to each configuration.
    pub async fn cluster(
        upstream: &FakeRegistry,
        n: usize,
        bucket: Option<Arc<TestBucket>>,
        extra: &str,
        clock: Clock,
    ) -> Vec<Proxied> {
        Self::cluster_with(upstream, n, bucket, extra, clock, &[]).await
    }

    /// [`Proxied::cluster`], whose member list also names `others` (servers
    /// the test runs itself, posing as replicas).
    pub async fn cluster_with(
        upstream: &FakeRegistry,
        n: usize,
        bucket: Option<Arc<TestBucket>>,
        extra: &str,
        clock: Clock,
        others: &[String],
    ) -> Vec<Proxied> {
        let mut listeners = Vec::new();
        for _ in 0..n {
            listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let mut addrs: Vec<String> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().to_string())
            .collect();
        addrs.extend(others.iter().cloned());
        let mut replicas = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let dir = Arc::new(tempfile::tempdir().unwrap());
            let secret = dir.path().join("peer-secret");
            std::fs::write(&secret, "a-peer-secret-for-tests").unwrap();
            let bucket_toml = match bucket {
                Some(_) => bucket_section(dir.path()),
                None => String::new(),
            };
            let toml = format!(
                "{extra}\n[cluster]\nself = \"{}\"\npeers = {:?}\nsecret_file = {secret:?}\n{bucket_toml}",
                addrs[i], addrs
            );
            let raw = RawConfig::from_toml(&toml).unwrap();
            let declares_upstreams = !raw.upstreams.is_empty();
            let config = Config::from_raw(
                raw,
                Overrides {
                    listen: Some(addrs[i].clone()),
                    data_dir: Some(dir.path().join("data")),
                    upstream: (!declares_upstreams).then(|| upstream.url()),
                    ..Overrides::default()
                },
            )
            .unwrap();
            let b = bucket.clone();
            replicas.push(Self::start_with(config, dir, clock.clone(), b, Some(listener)).await);
        }
        replicas
    }

    pub async fn from_config(config: Config, dir: Arc<tempfile::TempDir>, clock: Clock) -> Proxied {
        Self::start_with(config, dir, clock, None, None).await
    }

    async fn start_with(
        config: Config,
        dir: Arc<tempfile::TempDir>,
        clock: Clock,
        bucket: Option<Arc<TestBucket>>,
        bound: Option<tokio::net::TcpListener>,
    ) -> Proxied {
        // `TEST_LOG=debug cargo test -- --nocapture` shows Ferry's logs.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("TEST_LOG"))
            .with_test_writer()
            .try_init();
        let mut config = config;
        if bound.is_none() {
            config.listen = "127.0.0.1:0".parse().unwrap();
        }
        if config.admin_listen.is_some() {
            config.admin_listen = Some("127.0.0.1:0".parse().unwrap());
        }
        if let Some(w) = config.webhook.as_mut() {
            w.listen = "127.0.0.1:0".parse().unwrap();
        }
        let listeners = match bound {
            Some(client) => Listeners {
                client,
                admin: None,
                webhook: None,
            },
            None => Listeners::bind(&config).await.unwrap(),
        };
        let addr = listeners.client.local_addr().unwrap();
        let admin_addr = listeners.admin.as_ref().map(|l| l.local_addr().unwrap());
        let webhook_addr = listeners.webhook.as_ref().map(|l| l.local_addr().unwrap());
        let ferry = match bucket {
            Some(b) => Ferry::open_with_bucket(config, clock.clone(), b).unwrap(),
            None => Ferry::open_with_clock(config, clock.clone()).unwrap(),
        };
        let proxy = ferry.proxy().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let done = tokio::spawn(async move {
            ferry
                .serve(listeners, async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Proxied {
            addr,
            admin_addr,
            webhook_addr,
            proxy,
            clock,
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
            dir,
            stop: Some(stop),
            done: Some(done),
        }
    }

    /// Stops serving and waits until the store is closed; a panic in Ferry's
    /// task fails the test here.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(d) = self.done.take() {
            if let Err(e) = d.await {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn head(&self, path: &str) -> reqwest::Response {
        self.client.head(self.url(path)).send().await.unwrap()
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut r = self.client.get(self.url(path));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.send().await.unwrap()
    }

    pub async fn head_with(&self, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut r = self.client.head(self.url(path));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.send().await.unwrap()
    }

    /// The size of a blob in Ferry's store, `None` when it is not cached.
    pub fn stored_size(&self, digest: &str) -> Option<u64> {
        self.store().blob_size(&digest.parse().unwrap()).unwrap()
    }

    /// Ferry's store, to inspect it or inject faults.
    pub fn store(&self) -> &Store {
        self.proxy.store_for_tests()
    }

    /// `http://ADMIN_ADDR`; panics unless the admin API is on.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr.expect("admin API on"))
    }

    /// Waits until no blob fetch is in flight: a fetch releases the last byte
    /// to clients once it verifies, then persists, so the store catches up just
    /// after a response ends.
    pub async fn settled(&self) {
        assert!(
            self.proxy.fetches_landed(Duration::from_secs(5)).await,
            "blob fetches still in flight after 5 s"
        );
    }

    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    pub fn metric(&self, name_and_labels: &str) -> u64 {
        let text = self.proxy.metrics_text();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name_and_labels)
                    .and_then(|r| r.trim().parse().ok())
            })
            .unwrap_or(0)
    }
}

impl Drop for Proxied {
    /// Without [`stop`](Self::stop) Ferry keeps running until the test ends;
    /// if its task has ended in a panic already, the test fails here.
    fn drop(&mut self) {
        let Some(done) = self.done.take() else {
            return;
        };
        if done.is_finished() && !std::thread::panicking() {
            if let Some(Err(e)) = done.now_or_never() {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
    }
}

pub fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Reads a whole body, hashing it; `Err` if the transfer aborted.
pub async fn body_digest(mut r: reqwest::Response) -> Result<(String, usize), reqwest::Error> {
    let mut h = Sha256::new();
    let mut n = 0;
    while let Some(c) = r.chunk().await? {
        n += c.len();
        h.update(&c);
    }
    Ok((format!("sha256:{}", hex::encode(h.finalize())), n))
}

/// A `[bucket]` section for a test bucket (the client never reaches the
/// endpoint: the bucket itself is injected), its key file written in `dir`.
fn bucket_section(dir: &std::path::Path) -> String {
    let key = dir.join("s3-key");
    std::fs::write(&key, "test-key").unwrap();
    format!(
        "[bucket]\nendpoint = \"http://127.0.0.1:9\"\nbucket = \"ferry\"\n\
         access_key_file = {key:?}\nsecret_key_file = {key:?}\n"
    )
}

/// Deterministic pseudo-random bytes (a blob's content).
pub fn bytes_of(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The JSON error code of a response body.
pub async fn error_code(r: reqwest::Response) -> String {
    let v: serde_json::Value =
        serde_json::from_slice(&r.bytes().await.unwrap()).expect("error body is JSON");
    v["errors"][0]["code"]
        .as_str()
        .expect("errors[0].code")
        .to_string()
}

pub async fn json(r: reqwest::Response) -> serde_json::Value {
    serde_json::from_slice(&r.bytes().await.unwrap()).expect("a JSON body")
}
