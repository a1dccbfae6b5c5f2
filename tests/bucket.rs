//! The shared bucket (`[bucket]`, issue 22): verified uploads, misses read
//! from the bucket before upstream, and outages that cost only coverage. The
//! bucket is `object_store`'s in-memory one (with fault switches); upstream is
//! the counting fake. The real-S3 version is the e2e case `bucket` (Garage).

use crate::support::*;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

const MIB: usize = 1024 * 1024;

/// Waits until `metric` reaches `n` (uploads finish after their clients do).
async fn metric_reaches(p: &Proxied, metric: &str, n: u64) {
    eventually(
        &format!("{metric} stayed below {n}"),
        Duration::from_secs(20),
        || async { p.metric(metric) >= n },
    )
    .await;
    assert_eq!(p.metric(metric), n, "{metric}");
}

const BLOB_UPLOADED: &str = "ferry_bucket_uploads_total{object=\"blob\",result=\"completed\"}";
const BLOB_ABORTED: &str = "ferry_bucket_uploads_total{object=\"blob\",result=\"aborted\"}";

#[tokio::test]
async fn verified_blobs_are_uploaded_whole_as_one_put_or_in_parts() {
    let up = FakeRegistry::start().await;
    let small = up.add_blob(bytes_of(100_000, 1));
    // 12 MiB + 5 bytes with 5 MiB parts: two full parts while it downloads,
    // the last (holding the last byte) only after verification.
    let large = up.add_blob(bytes_of(12 * MIB + 5, 2));
    let bucket = TestBucket::new();
    let p = Proxied::on_bucket(&up, bucket.clone(), "part_size = \"5MiB\"").await;
    for d in [&small, &large] {
        let r = p.get(&format!("/v2/library/app/blobs/{d}")).await;
        assert_eq!(body_digest(r).await.unwrap().0, *d);
    }
    metric_reaches(&p, BLOB_UPLOADED, 2).await;
    for d in [&small, &large] {
        let object = bucket
            .object(&TestBucket::blob_key(d))
            .await
            .expect("uploaded");
        assert_eq!(sha256(&object), *d);
    }
    assert_eq!(
        p.metric("ferry_bucket_bytes_written_total"),
        (100_000 + 12 * MIB + 5) as u64
    );
    bucket.assert_content_addressed().await;
}

#[tokio::test]
async fn corrupt_upstream_bytes_leave_no_object_under_the_key() {
    let up = FakeRegistry::start().await;
    let small = up.add_blob(bytes_of(200_000, 3));
    let large = up.add_blob(bytes_of(11 * MIB, 4));
    up.faults(|f| f.wrong_bytes = true);
    let bucket = TestBucket::new();
    let p = Proxied::on_bucket(&up, bucket.clone(), "part_size = \"5MiB\"").await;
    for d in [&small, &large] {
        let r = p.get(&format!("/v2/library/app/blobs/{d}")).await;
        assert_eq!(r.status(), 200);
        assert!(body_digest(r).await.is_err(), "the body is cut short");
    }
    metric_reaches(&p, BLOB_ABORTED, 2).await;
    assert_eq!(
        bucket.keys().await,
        Vec::<String>::new(),
        "nothing in the bucket"
    );
    assert_eq!(p.metric(BLOB_UPLOADED), 0);
}

#[tokio::test]
async fn a_fetch_that_breaks_for_good_leaves_no_object() {
    let up = FakeRegistry::start().await;
    let d = up.add_blob(bytes_of(7 * MIB, 5));
    // More drops than Ferry resumes: the fetch fails half way.
    up.faults(|f| f.drop_after = Some((10, MIB)));
    let bucket = TestBucket::new();
    let p = Proxied::on_bucket(&up, bucket.clone(), "part_size = \"5MiB\"").await;
    let r = p.get(&format!("/v2/library/app/blobs/{d}")).await;
    assert!(body_digest(r).await.is_err());
    metric_reaches(&p, BLOB_ABORTED, 1).await;
    assert_eq!(bucket.keys().await, Vec::<String>::new());
}

#[tokio::test]
async fn a_replica_with_an_empty_disk_pulls_an_image_from_the_bucket_not_upstream() {
    let up = FakeRegistry::start().await;
    let (manifest, layers) = up.add_image("library/app", "1.0", &[&bytes_of(300_000, 6), b"small"]);
    let bucket = TestBucket::new();
    let a = Proxied::on_bucket(&up, bucket.clone(), "").await;
    let r = a.get("/v2/library/app/manifests/1.0").await;
    assert_eq!(sha256(&r.bytes().await.unwrap()), manifest);
    for l in &layers {
        let r = a.get(&format!("/v2/library/app/blobs/{l}")).await;
        assert_eq!(body_digest(r).await.unwrap().0, *l);
    }
    metric_reaches(&a, BLOB_UPLOADED, 2).await;
    metric_reaches(
        &a,
        "ferry_bucket_uploads_total{object=\"manifest\",result=\"completed\"}",
        1,
    )
    .await;
    let object = bucket.object(&TestBucket::manifest_key(&manifest)).await;
    assert_eq!(sha256(&object.expect("manifest uploaded")), manifest);
    a.stop().await;

    // Another replica (or the same one restarted on a new node): empty disk.
    up.clear_requests();
    let b = Proxied::on_bucket(&up, bucket.clone(), "").await;
    let r = b.get("/v2/library/app/manifests/1.0").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), Some(OCI_MANIFEST));
    assert_eq!(sha256(&r.bytes().await.unwrap()), manifest);
    for l in &layers {
        let r = b.head(&format!("/v2/library/app/blobs/{l}")).await;
        assert_eq!(r.status(), 200);
        let r = b.get(&format!("/v2/library/app/blobs/{l}")).await;
        assert_eq!(body_digest(r).await.unwrap().0, *l);
    }
    assert_eq!(up.count("GET", |r| r.is_blob()), 0, "no upstream blob GET");
    assert_eq!(
        up.count("HEAD", |r| r.is_blob()),
        0,
        "no upstream blob HEAD"
    );
    assert_eq!(
        up.count("GET", |r| r.is_manifest()),
        0,
        "no upstream manifest GET (Docker Hub counts those as pulls)"
    );
    assert_eq!(
        up.count("HEAD", |r| r.is_manifest()),
        1,
        "the tag is still asked upstream"
    );
    assert_eq!(b.metric("ferry_bucket_hits_total{object=\"blob\"}"), 4);
    assert_eq!(b.metric("ferry_bucket_hits_total{object=\"manifest\"}"), 1);
    // Kept locally: warm reads do not go back to the bucket.
    let reads = bucket.reads.load(Ordering::SeqCst);
    let r = b.get(&format!("/v2/library/app/blobs/{}", layers[0])).await;
    assert_eq!(body_digest(r).await.unwrap().0, layers[0]);
    assert_eq!(bucket.reads.load(Ordering::SeqCst), reads);
    bucket.assert_content_addressed().await;
}

#[tokio::test]
async fn a_bucket_object_that_fails_its_digest_is_deleted_and_fetched_again() {
    let up = FakeRegistry::start().await;
    let d = up.add_blob(bytes_of(150_000, 7));
    let bucket = TestBucket::new();
    bucket
        .put_raw(&TestBucket::blob_key(&d), bytes_of(150_000, 8).into())
        .await;
    let p = Proxied::on_bucket(&up, bucket.clone(), "").await;
    let path = format!("/v2/library/app/blobs/{d}");
    let r = p.get(&path).await;
    assert!(
        body_digest(r).await.is_err(),
        "never a clean 200 of wrong bytes"
    );
    assert_eq!(
        bucket.object(&TestBucket::blob_key(&d)).await,
        None,
        "deleted"
    );
    assert_eq!(p.metric("ferry_integrity_failures_total"), 1);
    // The next miss goes upstream, and uploads the right bytes.
    let r = p.get(&path).await;
    assert_eq!(body_digest(r).await.unwrap().0, d);
    assert_eq!(up.count("GET", |r| r.is_blob()), 1);
    metric_reaches(&p, BLOB_UPLOADED, 1).await;
    bucket.assert_content_addressed().await;
}

#[tokio::test]
async fn a_bucket_that_fails_changes_nothing_for_clients_and_is_left_alone_a_while() {
    let up = FakeRegistry::start().await;
    let (manifest, layers) = up.add_image("library/app", "1.0", &[&bytes_of(200_000, 9)]);
    let bucket = TestBucket::new();
    bucket.fail_reads.store(true, Ordering::SeqCst);
    bucket.fail_writes.store(true, Ordering::SeqCst);
    let p = Proxied::on_bucket(&up, bucket.clone(), "backoff = \"30s\"").await;
    let r = p.get("/v2/library/app/manifests/1.0").await;
    assert_eq!(sha256(&r.bytes().await.unwrap()), manifest);
    for l in &layers {
        let r = p.get(&format!("/v2/library/app/blobs/{l}")).await;
        assert_eq!(body_digest(r).await.unwrap().0, *l);
    }
    // The first failure starts a back-off: everything after it skips the
    // bucket (no request), and is counted.
    assert_eq!(
        bucket.reads.load(Ordering::SeqCst) + bucket.writes.load(Ordering::SeqCst),
        1,
        "one bucket request, then the back-off"
    );
    assert_eq!(p.metric("ferry_bucket_errors_total{op=\"read\"}"), 1);
    assert!(p.metric("ferry_bucket_skipped_total{op=\"read\"}") >= 1);
    assert_eq!(
        p.get("/readyz").await.status(),
        200,
        "readiness ignores the bucket"
    );
    // After the window the bucket is tried again.
    bucket.fail_reads.store(false, Ordering::SeqCst);
    bucket.fail_writes.store(false, Ordering::SeqCst);
    p.advance(Duration::from_secs(31));
    let fresh = up.add_blob(bytes_of(50_000, 10));
    let r = p.get(&format!("/v2/library/app/blobs/{fresh}")).await;
    assert_eq!(body_digest(r).await.unwrap().0, fresh);
    metric_reaches(&p, BLOB_UPLOADED, 1).await;
    assert!(bucket.object(&TestBucket::blob_key(&fresh)).await.is_some());
    // What was skipped during the outage is uploaded from the disk now.
    metric_reaches(&p, BLOB_UPLOADED, 2).await;
    eventually("the manifest uploaded", Duration::from_secs(10), || async {
        bucket
            .object(&TestBucket::manifest_key(&manifest))
            .await
            .is_some()
    })
    .await;
    bucket.assert_content_addressed().await;
    assert_eq!(
        up.count("GET", |r| r.path.ends_with(&layers[0])),
        1,
        "the layer was not fetched again"
    );
}

/// An upload with no free slot is skipped, never waited for, and made later
/// from the local disk (not upstream) once a slot is free.
#[tokio::test]
async fn uploads_past_max_uploads_are_skipped_then_made_from_the_disk() {
    let up = FakeRegistry::start().await;
    let blobs: Vec<String> = (0..4)
        .map(|i| up.add_blob(bytes_of(2 * MIB, 20 + i)))
        .collect();
    // Slow transfers, so the four fetches overlap.
    up.faults(|f| f.throttle = Some((256 * 1024, Duration::from_millis(20))));
    let bucket = TestBucket::new();
    let p = Arc::new(Proxied::on_bucket(&up, bucket.clone(), "max_uploads = 1").await);
    let pulls: Vec<_> = blobs
        .iter()
        .map(|d| {
            let (p, d) = (p.clone(), d.clone());
            tokio::spawn(async move {
                let r = p.get(&format!("/v2/library/app/blobs/{d}")).await;
                body_digest(r).await.unwrap().0 == d
            })
        })
        .collect();
    for pull in pulls {
        assert!(pull.await.unwrap());
    }
    metric_reaches(&p, BLOB_UPLOADED, 1).await;
    assert_eq!(
        p.metric("ferry_bucket_uploads_total{object=\"blob\",result=\"skipped\"}"),
        3
    );
    metric_reaches(&p, BLOB_UPLOADED, 4).await;
    let mut keys = bucket.keys().await;
    keys.sort();
    let mut want: Vec<String> = blobs
        .iter()
        .map(|d| TestBucket::blob_key(d).to_string())
        .collect();
    want.sort();
    assert_eq!(keys, want);
    bucket.assert_content_addressed().await;
    assert_eq!(up.count("GET", |r| r.is_blob()), 4, "made from the disk");
}

#[tokio::test]
async fn a_bucket_manifest_object_over_the_manifest_limit_is_deleted_unread() {
    let up = FakeRegistry::start().await;
    let (manifest, _) = up.add_image("library/app", "1.0", &[b"layer"]);
    let bucket = TestBucket::new();
    let key = TestBucket::manifest_key(&manifest);
    bucket
        .put_raw(&key, bytes_of(5 * 1024 * 1024, 9).into())
        .await;
    let p = Proxied::on_bucket(&up, bucket.clone(), "").await;
    let r = p
        .get(&format!("/v2/library/app/manifests/{manifest}"))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(sha256(&r.bytes().await.unwrap()), manifest);
    assert_eq!(
        p.metric("ferry_bucket_bytes_read_total"),
        0,
        "the oversized object was not read"
    );
    assert_eq!(p.metric("ferry_integrity_failures_total"), 1);
    assert_eq!(up.count("GET", |r| r.is_manifest()), 1);
    // Deleted, and replaced by the right bytes once they are uploaded.
    eventually("the manifest uploaded", Duration::from_secs(10), || async {
        bucket
            .object(&key)
            .await
            .is_some_and(|b| sha256(&b) == manifest)
    })
    .await;
}

/// An upload the bucket refused is made again, from the local disk, once the
/// bucket's back-off is over.
#[tokio::test]
async fn an_upload_the_bucket_refused_is_made_again_once_it_is_back() {
    let up = FakeRegistry::start().await;
    let d = up.add_blob(bytes_of(100_000, 30));
    let bucket = TestBucket::new();
    bucket.fail_writes.store(true, Ordering::SeqCst);
    let p = Proxied::on_bucket(&up, bucket.clone(), "backoff = \"30s\"").await;
    let r = p.get(&format!("/v2/library/app/blobs/{d}")).await;
    assert_eq!(body_digest(r).await.unwrap().0, d);
    metric_reaches(
        &p,
        "ferry_bucket_uploads_total{object=\"blob\",result=\"failed\"}",
        1,
    )
    .await;
    bucket.fail_writes.store(false, Ordering::SeqCst);
    p.advance(Duration::from_secs(31));
    metric_reaches(&p, BLOB_UPLOADED, 1).await;
    let object = bucket.object(&TestBucket::blob_key(&d)).await;
    assert_eq!(object.map(|b| sha256(&b)), Some(d));
    assert_eq!(up.count("GET", |r| r.is_blob()), 1, "made from the disk");
}
