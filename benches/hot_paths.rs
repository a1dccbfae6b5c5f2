//! Criterion benchmarks of Ferry's hot paths: route parsing, hashing while
//! streaming, tag-record lookup, manifest lookup, blob open-and-read, and
//! opening a store that holds 100,000 blobs (start-up cost).
//!
//! `cargo bench --bench hot_paths`; CI only compiles them.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ferry::config::{Config, Overrides, RawConfig};
use ferry::oci::PullRequest;
use ferry::Ferry;
use ferry_storage::{Algorithm, Digest, Hasher, Store, StoreOptions, TagKey, TagRecord};
use http::Method;
use std::hint::black_box;
use std::io::Read;

fn route_parsing(c: &mut Criterion) {
    let mut g = c.benchmark_group("route");
    let tag = "/v2/library/alpine/manifests/latest";
    let blob = "/v2/docker.io/library/alpine/blobs/sha256:b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9";
    g.bench_function("manifest_tag", |b| {
        b.iter(|| PullRequest::parse(&Method::HEAD, black_box(tag), Some("ns=docker.io")).unwrap())
    });
    g.bench_function("blob_digest_prefixed", |b| {
        b.iter(|| PullRequest::parse(&Method::GET, black_box(blob), None).unwrap())
    });
    g.finish();
}

fn hashing(c: &mut Criterion) {
    let mut g = c.benchmark_group("hash_streaming");
    let chunk = vec![7u8; 256 * 1024];
    const TOTAL: usize = 16 * 1024 * 1024;
    g.throughput(Throughput::Bytes(TOTAL as u64));
    g.bench_function("sha256_256KiB_chunks", |b| {
        b.iter(|| {
            let mut h = Hasher::new(Algorithm::Sha256);
            for _ in 0..TOTAL / chunk.len() {
                h.update(&chunk);
            }
            h.finish()
        })
    });
    g.finish();
}

fn store_lookups(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(StoreOptions::new(dir.path())).unwrap();
    let digest = Digest::sha256_of(b"manifest");
    for i in 0..10_000 {
        let key = TagKey::new("docker.io", &format!("library/app{i}"), "latest");
        let rec = TagRecord {
            digest: digest.clone(),
            media_type: "application/vnd.oci.image.index.v1+json".into(),
            size: 1234,
            checked_at_ms: 1,
            expired: false,
        };
        store.put_tag(&key, &rec).unwrap();
    }
    let manifest = vec![b'{'; 2000];
    let mdigest = Digest::sha256_of(&manifest);
    store
        .put_manifest(
            &mdigest,
            "application/vnd.oci.image.manifest.v1+json",
            &manifest,
        )
        .unwrap();
    let blob = vec![1u8; 1024 * 1024];
    let bdigest = Digest::sha256_of(&blob);
    let mut w = store.begin_blob(&bdigest).unwrap();
    w.write(&blob).unwrap();
    w.commit(None).unwrap();

    let mut g = c.benchmark_group("store");
    let key = TagKey::new("docker.io", "library/app5000", "latest");
    g.bench_function("tag_record_lookup", |b| {
        b.iter(|| store.tag(black_box(&key)).unwrap().unwrap())
    });
    g.bench_function("manifest_lookup", |b| {
        b.iter(|| store.manifest(black_box(&mdigest)).unwrap().unwrap())
    });
    g.throughput(Throughput::Bytes(blob.len() as u64));
    g.bench_function("blob_open_and_read_1MiB", |b| {
        let mut buf = Vec::with_capacity(blob.len());
        b.iter(|| {
            buf.clear();
            let mut f = store.open_blob(&bdigest).unwrap().unwrap();
            f.file.read_to_end(&mut buf).unwrap();
            buf.len()
        })
    });
    g.finish();
}

/// Manifest serving through the whole server over loopback (HTTP/1.1
/// keep-alive, one client): a tag `HEAD` inside its TTL and a manifest `GET` by
/// digest. The upstream is a closed port: any upstream request would fail.
fn serving(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_raw(
        RawConfig::default(),
        Overrides {
            upstream: Some("http://127.0.0.1:9".into()),
            data_dir: Some(dir.path().into()),
            listen: Some("127.0.0.1:0".into()),
            tag_ttl: Some(86_400),
            ..Overrides::default()
        },
    )
    .unwrap();
    let upstream = config.default_upstream.clone();
    let listeners = rt.block_on(ferry::Listeners::bind(&config)).unwrap();
    let addr = listeners.client.local_addr().unwrap();
    let ferry = Ferry::open(config).unwrap();
    let proxy = ferry.proxy().clone();
    let store = proxy.store_for_tests().clone();
    let media_type = "application/vnd.oci.image.manifest.v1+json";
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{media_type}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{}","size":1}},"layers":[]}}"#,
        "a".repeat(64)
    );
    let digest = Digest::sha256_of(manifest.as_bytes());
    store
        .put_manifest(&digest, media_type, manifest.as_bytes())
        .unwrap();
    store
        .put_tag(
            &TagKey::new(&upstream, "bench/app", "1.0"),
            &TagRecord {
                digest: digest.clone(),
                media_type: media_type.into(),
                size: manifest.len() as u64,
                checked_at_ms: ferry::clock::Clock::System.now_ms(),
                expired: false,
            },
        )
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(ferry.serve(listeners, async {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let head = format!("http://{addr}/v2/bench/app/manifests/1.0");
    let get = format!("http://{addr}/v2/bench/app/manifests/{digest}");
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(
        rt.block_on(client.head(&head).send()).map(status).unwrap(),
        200
    );
    assert_eq!(
        rt.block_on(client.get(&get).send()).map(status).unwrap(),
        200
    );

    let mut g = c.benchmark_group("serve");
    g.bench_function("warm_tag_head", |b| {
        b.iter(|| rt.block_on(client.head(&head).send()).map(status).unwrap())
    });
    g.bench_function("manifest_get_by_digest", |b| {
        b.iter(|| {
            rt.block_on(async { client.get(&get).send().await?.bytes().await })
                .unwrap()
                .len()
        })
    });
    g.finish();
    assert_eq!(
        proxy.metrics().upstream_total(),
        0,
        "warm answers never ask upstream"
    );
    let _ = stop.send(());
    rt.block_on(server).unwrap();
}

/// Start-up with 100,000 cached blobs: the store opens without reading blob
/// files (one pass over the small index for the size total).
fn startup(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    {
        // Files written directly (no per-file fsync, to keep setup quick), then
        // indexed by fsck's adoption of verified orphans.
        let store = Store::open(StoreOptions::new(dir.path())).unwrap();
        for i in 0u32..100_000 {
            let bytes = i.to_le_bytes();
            let d = Digest::sha256_of(&bytes);
            let p = dir.path().join("blobs/sha256").join(&d.hex()[..2]);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join(d.hex()), bytes).unwrap();
        }
        store.fsck(false, true).unwrap();
        assert_eq!(store.blob_count(), 100_000);
    }
    let mut g = c.benchmark_group("startup");
    g.sample_size(10);
    g.bench_function("open_store_100k_blobs", |b| {
        b.iter_batched(
            || (),
            |()| {
                let s = Store::open(StoreOptions::new(dir.path())).unwrap();
                assert_eq!(s.blob_count(), 100_000);
                s
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(
    benches,
    route_parsing,
    hashing,
    store_lookups,
    serving,
    startup
);
criterion_main!(benches);
