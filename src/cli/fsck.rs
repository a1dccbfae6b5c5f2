//! `ferry fsck`: checks a stopped Ferry's store (index against files), and
//! with `--repair` drops what is broken.

use anyhow::{Context, Result};
use clap::Args;
use ferry_storage::{Store, StoreOptions};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct FsckArgs {
    #[arg(long, default_value = ferry::config::defaults::DATA_DIR)]
    data_dir: PathBuf,
    /// Also re-hash every blob.
    #[arg(long)]
    verify: bool,
    /// Drop what is broken (bad entries are fetched again on demand).
    #[arg(long)]
    repair: bool,
}

/// Prints each finding and a summary; exits 1 when the store was not clean
/// (even if it was repaired).
pub fn run(args: FsckArgs) -> Result<ExitCode> {
    let FsckArgs {
        data_dir,
        verify,
        repair,
    } = args;
    let store = Store::open(StoreOptions::new(&data_dir)).with_context(|| {
        format!(
            "opening the store in {} (is Ferry still running?)",
            data_dir.display()
        )
    })?;
    let report = store.fsck(verify, repair)?;
    println!("store format {}", report.format);
    for f in &report.findings {
        println!("{f}");
    }
    println!(
        "checked {} blobs, {} manifests, {} tags: {} problem(s){}",
        report.blobs_checked,
        report.manifests_checked,
        report.tags_checked,
        report.findings.len(),
        if repair && !report.clean() {
            ", repaired"
        } else {
            ""
        }
    );
    Ok(if report.clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
