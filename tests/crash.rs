//! Issue 4: crash safety. A real `ferry` process is killed with SIGKILL at
//! arbitrary moments while clients pull cold blobs (and eviction runs, the budget
//! being smaller than the content); after every kill the store must check clean,
//! and in the end every pull through a restarted Ferry must verify.

use crate::support::*;
use ferry_storage::{FsckFinding, Store, StoreOptions};
use std::time::Duration;

const KILLS: u64 = 30;
const MIB: usize = 1024 * 1024;

async fn start_ferry(config: &std::path::Path) -> FerryProcess {
    // Ferry logs the address it bound at info; nothing else is wanted here.
    let ferry = FerryProcess::start(&["--config", config.to_str().unwrap()], "error,ferry=info");
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client.get(ferry.url("/v2/")).send().await.is_ok() {
            return ferry;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("ferry did not answer");
}

/// Everything a crash may leave: intact orphans (renamed, not yet indexed, or
/// unlinked after their entry was removed). Anything else is a broken store.
fn assert_store_sound(data: &std::path::Path, round: u64) -> u64 {
    let store = Store::open(StoreOptions::new(data)).unwrap();
    let report = store.fsck(true, false).unwrap();
    for f in &report.findings {
        assert!(
            matches!(f, FsckFinding::OrphanFile { intact: true, .. }),
            "after kill {round}: {f}"
        );
    }
    assert_eq!(
        std::fs::read_dir(data.join("tmp")).unwrap().count(),
        0,
        "temp files swept at open"
    );
    report.blobs_checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_cold_pulls_and_eviction_leaves_a_clean_store() {
    let up = FakeRegistry::start().await;
    let blobs: Vec<(String, usize)> = (0..12)
        .map(|i| {
            let len = MIB + (i as usize) * 300_000;
            (up.add_blob(bytes_of(len, 100 + i)), len)
        })
        .collect();
    up.faults(|f| f.throttle = Some((128 * 1024, Duration::from_millis(2))));
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("ferry.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[cache]\nmax_size = \"8MiB\"\nhigh_watermark = 0.9\nlow_watermark = 0.5\n[[upstream]]\nname = \"up\"\nurl = \"{}\"\n",
            data.display(),
            up.url()
        ),
    )
    .unwrap();

    let mut seed = 0x5eed_u64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut max_indexed = 0;
    for round in 0..KILLS {
        let mut ferry = start_ferry(&config).await;
        let client = reqwest::Client::new();
        for _ in 0..6 {
            let (d, _) = &blobs[next(blobs.len() as u64) as usize];
            let url = ferry.url(&format!("/v2/library/app/blobs/{d}"));
            let c = client.clone();
            tokio::spawn(async move {
                if let Ok(r) = c.get(url).send().await {
                    let _ = body_digest(r).await;
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(30 + next(250))).await;
        ferry.kill();
        max_indexed = max_indexed.max(assert_store_sound(&data, round));
    }
    assert!(max_indexed > 0, "some pulls completed between kills");

    // After all that, every blob pulls correctly through a restarted Ferry.
    up.faults(|f| f.throttle = None);
    let mut ferry = start_ferry(&config).await;
    let client = reqwest::Client::new();
    for (d, len) in &blobs {
        let url = ferry.url(&format!("/v2/library/app/blobs/{d}"));
        let r = client.get(url).send().await.unwrap();
        assert_eq!(body_digest(r).await.unwrap(), (d.clone(), *len));
    }
    ferry.kill();
    assert_store_sound(&data, KILLS);
}
