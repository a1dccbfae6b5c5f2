//! Criterion benchmarks of Ferry's hot paths: route parsing, hashing while
//! streaming, tag-record lookup, manifest lookup, blob open-and-read, and
//! opening a store that holds 100,000 blobs (start-up cost).
//!
//! `cargo bench --bench hot_paths`; CI only compiles them.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ferry::oci::PullRequest;
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

criterion_group!(benches, route_parsing, hashing, store_lookups, startup);
criterion_main!(benches);
