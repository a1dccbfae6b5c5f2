//! Writing a blob: a temp file hashed as it grows, committed only if it verifies.

use crate::{blob_path, sync_dir, Digest, Hasher, Store, StoreError};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Why a commit did not happen. The temp file is gone in every case.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("blob bytes hash to {actual}, not {expected}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob has {actual} bytes, expected {expected}")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A blob being written to `tmp/`. Dropping it without [`commit`](Self::commit)
/// deletes the temp file.
pub struct BlobWriter {
    store: Store,
    digest: Digest,
    temp: PathBuf,
    file: File,
    /// A second handle on the same file for readers streaming the bytes as they land.
    shared: Arc<File>,
    hasher: Hasher,
    written: u64,
    done: bool,
}

impl BlobWriter {
    pub(crate) fn create(store: Store, digest: Digest) -> Result<BlobWriter, StoreError> {
        let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let temp =
            store
                .inner
                .tmp_dir
                .join(format!("{}.{}.{seq}", digest.hex(), std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&temp)?;
        let shared = Arc::new(file.try_clone()?);
        Ok(BlobWriter {
            hasher: Hasher::new(digest.algorithm()),
            store,
            digest,
            temp,
            file,
            shared,
            written: 0,
            done: false,
        })
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// A read handle on the temp file. Bytes below [`written`](Self::written) may
    /// be read with positional reads; they are not verified until commit.
    pub fn reader(&self) -> Arc<File> {
        self.shared.clone()
    }

    /// Appends bytes, hashing them.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.store.inner.faults.fail_writes.load(Ordering::Relaxed) {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "injected write failure",
            ));
        }
        self.file.write_all(bytes)?;
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Verifies the digest (and `expected_size` if known), fsyncs, renames the file
    /// under its digest's name and records it in the index.
    pub fn commit(mut self, expected_size: Option<u64>) -> Result<u64, CommitError> {
        let actual =
            std::mem::replace(&mut self.hasher, Hasher::new(self.digest.algorithm())).finish();
        if actual != self.digest {
            return Err(CommitError::DigestMismatch {
                expected: self.digest.clone(),
                actual,
            });
        }
        if let Some(expected) = expected_size.filter(|&e| e != self.written) {
            return Err(CommitError::SizeMismatch {
                expected,
                actual: self.written,
            });
        }
        if self.store.inner.faults.fail_commits.load(Ordering::Relaxed) {
            return Err(StoreError::Io(io::Error::other("injected commit failure")).into());
        }
        self.file.sync_all().map_err(StoreError::Io)?;
        let dest = blob_path(&self.store.inner.blobs_dir, &self.digest);
        let parent = dest.parent().expect("blob paths have a parent");
        fs::create_dir_all(parent).map_err(StoreError::Io)?;
        fs::rename(&self.temp, &dest).map_err(StoreError::Io)?;
        self.done = true;
        sync_dir(parent).map_err(StoreError::Io)?;
        self.store
            .index_committed_blob(&self.digest, self.written)?;
        Ok(self.written)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.temp);
        }
    }
}
