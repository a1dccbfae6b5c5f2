//! Where things live under the data directory, and the file-system steps
//! every writer shares.

use crate::Digest;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

pub(crate) fn blob_path(blobs_dir: &Path, digest: &Digest) -> PathBuf {
    let hex = digest.hex();
    blobs_dir
        .join(digest.algorithm().as_str())
        .join(&hex[..2])
        .join(hex)
}

pub(crate) fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Deletes every entry of a directory (the temp area after a crash).
pub(crate) fn sweep_dir(dir: &Path) -> io::Result<usize> {
    let mut n = 0;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            fs::remove_dir_all(&path)?;
        } else {
            remove_if_exists(&path)?;
        }
        n += 1;
    }
    if n > 0 {
        tracing::info!(files = n, "swept temp files left by an earlier run");
    }
    Ok(n)
}

/// fsyncs a directory so a rename or unlink in it survives power loss.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
