use super::*;
use bytes::Bytes;
use std::io::Read;

fn store(dir: &Path) -> Store {
    Store::open(StoreOptions::new(dir)).unwrap()
}

fn put_blob(store: &Store, bytes: &[u8]) -> Digest {
    let digest = Digest::sha256_of(bytes);
    let mut w = store.begin_blob(&digest).unwrap();
    w.write(bytes).unwrap();
    w.commit(Some(bytes.len() as u64)).unwrap();
    digest
}

fn read_all(store: &Store, digest: &Digest) -> Vec<u8> {
    let b = store.open_blob(digest).unwrap().expect("blob present");
    let mut out = Vec::new();
    (&*b.file).read_to_end(&mut out).unwrap();
    out
}

fn tmp_entries(dir: &Path) -> usize {
    fs::read_dir(dir.join("tmp")).unwrap().count()
}

#[test]
fn committed_blob_reads_back_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let d = put_blob(&s, b"layer bytes");
    assert_eq!(read_all(&s, &d), b"layer bytes");
    assert_eq!(s.total_bytes(), 11);
    assert_eq!(s.blob_count(), 1);
    drop(s);
    let s = store(dir.path());
    assert_eq!(s.blob_size(&d).unwrap(), Some(11));
    assert_eq!(s.total_bytes(), 11);
    assert_eq!(read_all(&s, &d), b"layer bytes");
}

#[test]
fn wrong_bytes_are_never_committed() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let digest = Digest::sha256_of(b"right");
    let mut w = s.begin_blob(&digest).unwrap();
    w.write(b"wrong").unwrap();
    assert!(matches!(
        w.commit(None),
        Err(CommitError::DigestMismatch { .. })
    ));
    assert!(s.open_blob(&digest).unwrap().is_none());
    assert_eq!(tmp_entries(dir.path()), 0, "temp file removed");
    assert!(!blob_path(&dir.path().join("blobs"), &digest).exists());
}

#[test]
fn size_mismatch_is_refused_even_when_the_hash_matches() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let digest = Digest::sha256_of(b"abc");
    let mut w = s.begin_blob(&digest).unwrap();
    w.write(b"abc").unwrap();
    assert!(matches!(
        w.commit(Some(4)),
        Err(CommitError::SizeMismatch { .. })
    ));
    assert!(s.open_blob(&digest).unwrap().is_none());
}

#[test]
fn abandoned_writer_leaves_nothing_and_open_sweeps_crash_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let digest = Digest::sha256_of(b"x");
    let w = s.begin_blob(&digest).unwrap();
    assert_eq!(tmp_entries(dir.path()), 1);
    drop(w);
    assert_eq!(tmp_entries(dir.path()), 0);
    drop(s);
    fs::write(dir.path().join("tmp/leftover"), b"partial").unwrap();
    let _s = store(dir.path());
    assert_eq!(tmp_entries(dir.path()), 0);
}

#[test]
fn injected_write_failures_fail_the_write_and_commit_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    s.faults().fail_writes.store(true, Ordering::Relaxed);
    let digest = Digest::sha256_of(b"x");
    let mut w = s.begin_blob(&digest).unwrap();
    assert!(w.write(b"x").is_err());
    drop(w);
    s.faults().fail_writes.store(false, Ordering::Relaxed);
    s.faults().fail_commits.store(true, Ordering::Relaxed);
    let mut w = s.begin_blob(&digest).unwrap();
    w.write(b"x").unwrap();
    assert!(w.commit(None).is_err());
    assert!(s.open_blob(&digest).unwrap().is_none());
    assert_eq!(tmp_entries(dir.path()), 0);
}

#[test]
fn manifests_must_verify() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let body = br#"{"schemaVersion":2}"#;
    let d = Digest::sha256_of(body);
    assert!(s.put_manifest(&d, "application/x", b"other").is_err());
    assert!(s.manifest(&d).unwrap().is_none());
    s.put_manifest(&d, "application/x", body).unwrap();
    let m = s.manifest(&d).unwrap().unwrap();
    assert_eq!(&m.body[..], body);
    assert_eq!(m.media_type, "application/x");
}

#[test]
fn tags_are_per_upstream_and_purgeable_by_repo() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let rec = |d: &Digest| TagRecord {
        digest: d.clone(),
        media_type: "m".into(),
        size: 1,
        checked_at_ms: 5,
        expired: false,
    };
    let d1 = Digest::sha256_of(b"1");
    let d2 = Digest::sha256_of(b"2");
    s.put_tag(&TagKey::new("docker.io", "x/y", "1"), &rec(&d1))
        .unwrap();
    s.put_tag(&TagKey::new("ghcr.io", "x/y", "1"), &rec(&d2))
        .unwrap();
    s.put_tag(&TagKey::new("docker.io", "x/y", "2"), &rec(&d2))
        .unwrap();
    s.put_tag(&TagKey::new("docker.io", "x/yz", "1"), &rec(&d2))
        .unwrap();
    assert_eq!(
        s.tag(&TagKey::new("docker.io", "x/y", "1")).unwrap(),
        Some(rec(&d1))
    );
    assert_eq!(
        s.tag(&TagKey::new("ghcr.io", "x/y", "1")).unwrap(),
        Some(rec(&d2))
    );
    assert_eq!(s.purge_tags("docker.io", "x/y", None).unwrap(), 2);
    assert!(s
        .tag(&TagKey::new("docker.io", "x/y", "2"))
        .unwrap()
        .is_none());
    assert!(s
        .tag(&TagKey::new("docker.io", "x/yz", "1"))
        .unwrap()
        .is_some());
    assert!(s
        .tag(&TagKey::new("ghcr.io", "x/y", "1"))
        .unwrap()
        .is_some());
}

#[test]
fn eviction_is_lru_and_skips_pinned_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = StoreOptions::new(dir.path());
    opts.max_size = Some(1000);
    opts.high_watermark = 0.9;
    opts.low_watermark = 0.6;
    let s = Store::open(opts).unwrap();
    let blobs: Vec<Digest> = (0..4u8).map(|i| put_blob(&s, &[i; 300])).collect();
    assert_eq!(s.total_bytes(), 1200);
    // Order of last access: 2 (oldest), 0, 3, 1 (newest); 2 is pinned.
    for (i, d) in blobs.iter().enumerate() {
        s.inner
            .index
            .put_blob(
                d,
                BlobMeta {
                    size: 300,
                    last_access: [20, 40, 10, 30][i],
                },
            )
            .unwrap();
    }
    let pinned = s.open_blob(&blobs[2]).unwrap().unwrap();
    s.inner.pending_access.lock().clear();
    assert!(s.over_budget());
    let (n, bytes) = s.evict_if_over_budget().unwrap();
    assert_eq!((n, bytes), (3 - 1, 600), "evicts 0 and 3, skips pinned 2");
    assert!(s.blob_size(&blobs[0]).unwrap().is_none());
    assert!(s.blob_size(&blobs[3]).unwrap().is_none());
    assert!(s.blob_size(&blobs[1]).unwrap().is_some());
    assert!(s.blob_size(&blobs[2]).unwrap().is_some());
    assert_eq!(s.total_bytes(), 600);
    drop(pinned);
    assert_eq!(s.stats().evictions.load(Ordering::Relaxed), 2);
    assert!(s.fsck(true, false).unwrap().clean());
}

#[test]
fn access_times_are_batched_until_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let d = put_blob(&s, b"abc");
    s.inner
        .index
        .put_blob(
            &d,
            BlobMeta {
                size: 3,
                last_access: 1,
            },
        )
        .unwrap();
    drop(s.open_blob(&d).unwrap());
    assert_eq!(
        s.inner.index.blob(&d).unwrap().unwrap().last_access,
        1,
        "no write on read"
    );
    assert_eq!(s.flush_access_times().unwrap(), 1);
    assert!(s.inner.index.blob(&d).unwrap().unwrap().last_access > 1);
}

#[test]
fn a_missing_file_is_forgotten_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let d = put_blob(&s, b"abc");
    fs::remove_file(blob_path(&dir.path().join("blobs"), &d)).unwrap();
    assert!(s.open_blob(&d).unwrap().is_none());
    assert!(s.blob_size(&d).unwrap().is_none());
    assert_eq!(s.total_bytes(), 0);
}

#[test]
fn fsck_finds_and_repairs_every_kind_of_damage() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let blobs = dir.path().join("blobs");
    let good = put_blob(&s, b"good");
    let missing = put_blob(&s, b"missing");
    let corrupt = put_blob(&s, b"corrupt");
    let resized = put_blob(&s, b"resized");
    fs::remove_file(blob_path(&blobs, &missing)).unwrap();
    fs::write(blob_path(&blobs, &corrupt), b"CORRUPT").unwrap();
    fs::write(blob_path(&blobs, &resized), b"longer than before").unwrap();
    let orphan = Digest::sha256_of(b"orphan");
    let orphan_path = blob_path(&blobs, &orphan);
    fs::create_dir_all(orphan_path.parent().unwrap()).unwrap();
    fs::write(&orphan_path, b"orphan").unwrap();
    let bad_manifest = Digest::sha256_of(b"manifest");
    s.inner
        .index
        .put_manifest(&bad_manifest, "m", b"not the manifest")
        .unwrap();

    let quick = s.fsck(false, false).unwrap();
    assert_eq!(quick.findings.len(), 4, "{:?}", quick.findings);
    assert!(quick.findings.contains(&FsckFinding::OrphanFile {
        path: orphan_path.clone(),
        intact: true
    }));
    let full = s.fsck(true, false).unwrap();
    assert_eq!(full.findings.len(), 5, "{:?}", full.findings);
    assert!(full.findings.contains(&FsckFinding::CorruptBlob {
        digest: corrupt.to_string()
    }));

    let repaired = s.fsck(true, true).unwrap();
    assert_eq!(repaired.findings.len(), 5);
    assert!(s.manifest(&bad_manifest).unwrap().is_none());
    assert!(s.fsck(true, false).unwrap().clean());
    assert_eq!(read_all(&s, &good), b"good");
    assert!(s.open_blob(&corrupt).unwrap().is_none());
    // The orphan's bytes match its name: it is adopted, not thrown away.
    assert_eq!(read_all(&s, &orphan), b"orphan");
    assert_eq!(s.total_bytes(), 4 + 6);
    let junk = blobs.join("sha256/00/not-a-digest");
    fs::create_dir_all(junk.parent().unwrap()).unwrap();
    fs::write(&junk, b"junk").unwrap();
    assert_eq!(s.fsck(false, true).unwrap().findings.len(), 1);
    assert!(!junk.exists());
}

#[test]
fn purge_digest_removes_blob_manifest_and_tags() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let d = put_blob(&s, b"bad layer");
    assert!(s.purge_digest(&d).unwrap());
    assert!(s.open_blob(&d).unwrap().is_none());
    assert!(!s.purge_digest(&d).unwrap());
    let body = b"{}";
    let m = Digest::sha256_of(body);
    s.put_manifest(&m, "t", body).unwrap();
    let key = TagKey::new("u", "r", "t");
    s.put_tag(
        &key,
        &TagRecord {
            digest: m.clone(),
            media_type: "t".into(),
            size: 2,
            checked_at_ms: 0,
            expired: false,
        },
    )
    .unwrap();
    assert!(s.purge_digest(&m).unwrap());
    assert!(s.manifest(&m).unwrap().is_none());
    assert!(s.tag(&key).unwrap().is_none());
    assert!(s.fsck(true, false).unwrap().clean());
}

#[test]
fn vectored_writes_keep_order_across_empty_and_many_buffers() {
    // More buffers than one writev takes, with empty ones at the edges and between.
    let mut bufs: Vec<Bytes> = vec![Bytes::new()];
    for i in 0..1500u32 {
        bufs.push(i.to_be_bytes().repeat((i % 7) as usize).into());
        if i % 100 == 0 {
            bufs.push(Bytes::new());
        }
    }
    bufs.push(Bytes::new());
    let whole: Vec<u8> = bufs.concat();
    let digest = Digest::sha256_of(&whole);
    for background in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let mut w = s.begin_blob(&digest).unwrap();
        if background {
            w.hash_in_background().unwrap();
        }
        w.write_all(&bufs[..700]).unwrap();
        w.write(b"").unwrap();
        w.write_all(&bufs[700..]).unwrap();
        assert_eq!(w.written(), whole.len() as u64);
        w.commit(Some(whole.len() as u64)).unwrap();
        assert_eq!(read_all(&s, &digest), whole);
    }
}

#[test]
fn background_hashing_rejects_wrong_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let digest = Digest::sha256_of(b"right");
    let mut w = s.begin_blob(&digest).unwrap();
    w.hash_in_background().unwrap();
    w.write_all(&[Bytes::from_static(b"wro"), Bytes::from_static(b"ng")])
        .unwrap();
    assert!(
        w.hash_in_background().is_err(),
        "only before the first write"
    );
    assert!(matches!(
        w.commit(None),
        Err(CommitError::DigestMismatch { .. })
    ));
    assert_eq!(s.blob_size(&digest).unwrap(), None);
    assert_eq!(tmp_entries(dir.path()), 0);
}

#[test]
fn verified_blob_is_invisible_until_persisted_and_gone_if_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let digest = Digest::sha256_of(b"abc");
    let mut w = s.begin_blob(&digest).unwrap();
    w.write(b"abc").unwrap();
    let v = w.verify(Some(3)).unwrap();
    assert_eq!(v.size(), 3);
    assert_eq!(s.blob_size(&digest).unwrap(), None);
    drop(v);
    assert_eq!(tmp_entries(dir.path()), 0);
    assert_eq!(s.blob_size(&digest).unwrap(), None);

    let mut w = s.begin_blob(&digest).unwrap();
    w.write(b"abc").unwrap();
    w.verify(None).unwrap().persist().unwrap();
    assert_eq!(read_all(&s, &digest), b"abc");
    assert_eq!(tmp_entries(dir.path()), 0);
}

#[test]
fn a_live_fsck_reports_only_what_still_holds() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    // A commit caught between its rename and its index write looks orphaned…
    let d = Digest::sha256_of(b"landing");
    let path = blob_path(&s.inner.blobs_dir, &d);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, b"landing").unwrap();
    let orphan = FsckFinding::OrphanFile {
        path: path.clone(),
        intact: true,
    };
    assert!(fsck::still_holds(&s, &orphan));
    // …and once indexed it is no finding.
    s.index_committed_blob(&d, 7).unwrap();
    assert!(!fsck::still_holds(&s, &orphan));
    // An entry evicted after the index was read looked missing; now it is gone from both.
    let missing = FsckFinding::MissingFile {
        digest: d.to_string(),
    };
    assert!(!fsck::still_holds(&s, &missing), "file present");
    assert!(s.purge_digest(&d).unwrap());
    assert!(!fsck::still_holds(&s, &missing), "not indexed any more");
    // A write in flight in this process has a temp file; a dead process's does not count as ours.
    let w = s.begin_blob(&Digest::sha256_of(b"in flight")).unwrap();
    let stale = dir
        .path()
        .join("tmp")
        .join(format!("{}.1.0", "a".repeat(64)));
    fs::write(&stale, b"left by a crash").unwrap();
    let report = s.fsck(false, false).unwrap();
    assert_eq!(
        report.findings,
        vec![FsckFinding::TempFile { path: stale }],
        "only the dead process's temp file"
    );
    drop(w);
}

#[test]
fn a_burst_of_commits_keeps_the_newest_blobs() {
    // Ten blobs committed back to back (well within one second) under a
    // budget that holds two: eviction after each commit, as Ferry runs it,
    // must keep the two most recent ones, however their digests sort.
    let dir = tempfile::tempdir().unwrap();
    let mut opts = StoreOptions::new(dir.path());
    opts.max_size = Some(2500);
    let s = Store::open(opts).unwrap();
    let mut blobs = Vec::new();
    for i in 0..10u8 {
        blobs.push(put_blob(&s, &[i; 1000]));
        s.evict_if_over_budget().unwrap();
    }
    for (i, d) in blobs.iter().enumerate() {
        let kept = s.blob_size(d).unwrap().is_some();
        assert_eq!(kept, i >= 8, "blob {i} of 10 kept: {kept}");
    }
}

#[test]
fn a_blob_served_or_committed_during_an_eviction_pass_is_not_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = StoreOptions::new(dir.path());
    opts.max_size = Some(2500);
    let s = Store::open(opts).unwrap();
    let old = put_blob(&s, &[1; 1000]);
    let middle = put_blob(&s, &[2; 1000]);
    let newest = put_blob(&s, &[3; 1000]);
    assert!(s.over_budget());
    // The pass stops right after taking its snapshot of access times…
    s.faults().hold_eviction.store(true, Ordering::SeqCst);
    let evicting = {
        let s = s.clone();
        std::thread::spawn(move || s.evict_if_over_budget().unwrap())
    };
    while !s.faults().eviction_held.load(Ordering::SeqCst) {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    // …and meanwhile the oldest blob is served and another is committed.
    drop(s.open_blob(&old).unwrap().unwrap());
    let during = put_blob(&s, &[4; 1000]);
    s.faults().hold_eviction.store(false, Ordering::SeqCst);
    let (evicted, _) = evicting.join().unwrap();
    assert!(
        s.blob_size(&old).unwrap().is_some(),
        "served during the pass"
    );
    assert!(
        s.blob_size(&during).unwrap().is_some(),
        "committed during the pass"
    );
    assert!(
        s.blob_size(&middle).unwrap().is_none(),
        "the least recently used goes"
    );
    assert!(evicted >= 1);
    let _ = newest;
}

#[test]
fn stamps_strictly_increase() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let mut last = 0;
    for _ in 0..10_000 {
        let now = s.inner.stamp();
        assert!(now > last);
        last = now;
    }
}

#[test]
fn answers_survive_a_reopen_and_are_forgotten_by_prefix_and_age() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = store(dir.path());
        s.put_answer(b"\x01hub\0library/app\0p1", 100, b"one")
            .unwrap();
        s.put_answer(b"\x01hub\0library/app\0p2", 200, b"two")
            .unwrap();
        s.put_answer(b"\x01hub\0library/other\0p1", 300, b"three")
            .unwrap();
    }
    let s = store(dir.path());
    assert_eq!(
        s.answer(b"\x01hub\0library/app\0p1").unwrap(),
        Some((100, b"one".to_vec()))
    );
    assert_eq!(
        s.forget_answers(b"\x01", Some(150)).unwrap(),
        1,
        "only the old one"
    );
    assert!(s.answer(b"\x01hub\0library/app\0p1").unwrap().is_none());
    assert_eq!(
        s.forget_answers(b"\x01hub\0library/app\0", None).unwrap(),
        1
    );
    assert!(s.answer(b"\x01hub\0library/app\0p2").unwrap().is_none());
    assert!(s.answer(b"\x01hub\0library/other\0p1").unwrap().is_some());
}

#[test]
fn tag_records_keep_the_expired_flag_and_read_old_records() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let key = TagKey::new("hub", "library/app", "1");
    let d = Digest::sha256_of(b"m");
    let mut r = TagRecord {
        digest: d.clone(),
        media_type: String::new(),
        size: 0,
        checked_at_ms: 7,
        expired: true,
    };
    s.put_tag(&key, &r).unwrap();
    assert_eq!(s.tag(&key).unwrap(), Some(r.clone()));
    r.expired = false;
    s.put_tag(&key, &r).unwrap();
    assert_eq!(s.tag(&key).unwrap(), Some(r));
    let old = TagRecord::decode(
        format!(r#"{{"digest":"{d}","media_type":"x","size":1,"checked_at_ms":2}}"#).as_bytes(),
    )
    .unwrap();
    assert!(!old.expired, "records written before the flag existed");
}

#[test]
fn a_store_from_a_newer_ferry_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let d = {
        let s = store(dir.path());
        assert_eq!(s.format(), format::CURRENT);
        put_blob(&s, b"kept")
    };
    let newer = format::CURRENT + 1;
    fs::write(dir.path().join("FORMAT"), format!("ferry-store {newer}\n")).unwrap();
    fs::write(dir.path().join("tmp").join("in-flight"), b"a newer Ferry's").unwrap();
    let err = match Store::open(StoreOptions::new(dir.path())) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a newer format was opened"),
    };
    assert!(err.contains("written by a newer Ferry"), "{err}");
    assert!(err.contains(&format!("store format {newer}")), "{err}");
    assert_eq!(tmp_entries(dir.path()), 1, "nothing swept");
    assert_eq!(
        fs::read_to_string(dir.path().join("FORMAT")).unwrap(),
        format!("ferry-store {newer}\n")
    );
    // Back to a version this build reads: everything is still there.
    fs::write(dir.path().join("FORMAT"), "ferry-store 1\n").unwrap();
    assert_eq!(read_all(&store(dir.path()), &d), b"kept");
}

#[test]
fn a_store_from_before_versions_is_upgraded_and_a_too_old_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = put_blob(&store(dir.path()), b"from an older Ferry");
    // Every Ferry before versions were recorded wrote no FORMAT file.
    fs::remove_file(dir.path().join("FORMAT")).unwrap();
    assert_eq!(format::read(dir.path()).unwrap(), format::Found::Unrecorded);
    let s = store(dir.path());
    assert_eq!(s.format(), format::CURRENT);
    assert_eq!(read_all(&s, &d), b"from an older Ferry");
    drop(s);
    assert_eq!(
        fs::read_to_string(dir.path().join("FORMAT")).unwrap(),
        format!("ferry-store {}\n", format::CURRENT)
    );
    fs::write(dir.path().join("FORMAT"), "ferry-store 0\n").unwrap();
    let err = match Store::open(StoreOptions::new(dir.path())) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a format too old was opened"),
    };
    assert!(err.contains("too old for this Ferry to upgrade"), "{err}");
    assert!(
        err.contains(&format!("mv {}", dir.path().display())),
        "{err}"
    );
}
