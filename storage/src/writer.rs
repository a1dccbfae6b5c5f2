//! Writing a blob: a temp file hashed as it grows, committed only if it verifies.

use crate::paths::{blob_path, sync_dir};
use crate::{Digest, Hasher, Store, StoreError};
use bytes::Bytes;
use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Batches queued for a background hash thread.
const HASH_QUEUE: usize = 8;

/// Buffers per `writev`; Linux takes at most 1024.
const MAX_IOVECS: usize = 512;

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
    hashing: Hashing,
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
            hashing: Hashing::Inline(Hasher::new(digest.algorithm())),
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

    /// Hashes on a thread of its own from here on, so the hash of one batch
    /// overlaps the write of the next: a blob streamed from the network is then
    /// limited by the slower of the two, not their sum. Only before any write.
    pub fn hash_in_background(&mut self) -> io::Result<()> {
        if self.written > 0 {
            return Err(io::Error::other("hash_in_background after a write"));
        }
        let mut hasher = Hasher::new(self.digest.algorithm());
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Bytes>>(HASH_QUEUE);
        let thread = std::thread::Builder::new()
            .name("ferry-hash".into())
            .spawn(move || {
                for batch in rx {
                    for b in &batch {
                        hasher.update(b);
                    }
                }
                hasher
            })?;
        self.hashing = Hashing::Thread { tx, thread };
        Ok(())
    }

    /// Appends bytes, hashing them.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.check_injected_failure()?;
        self.file.write_all(bytes)?;
        self.hashing.update_slice(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Appends several buffers with as few system calls as the kernel allows,
    /// hashing them in order; saves gathering them into one buffer first.
    pub fn write_all(&mut self, bufs: &[Bytes]) -> io::Result<()> {
        self.check_injected_failure()?;
        // Skip past what earlier writev calls took: `first` whole buffers and
        // `offset` bytes of the next one.
        let (mut first, mut offset) = (0, 0);
        loop {
            while first < bufs.len() && bufs[first].len() == offset {
                first += 1;
                offset = 0;
            }
            if first == bufs.len() {
                break;
            }
            let slices: Vec<IoSlice<'_>> = std::iter::once(&bufs[first][offset..])
                .chain(bufs[first + 1..].iter().map(AsRef::as_ref))
                .take(MAX_IOVECS)
                .map(IoSlice::new)
                .collect();
            let mut n = match self.file.write_vectored(&slices) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            while n > 0 {
                let left = bufs[first].len() - offset;
                let took = n.min(left);
                offset += took;
                n -= took;
                if offset == bufs[first].len() {
                    first += 1;
                    offset = 0;
                }
            }
        }
        self.hashing.update(bufs);
        self.written += bufs.iter().map(|b| b.len() as u64).sum::<u64>();
        Ok(())
    }

    /// Waits while tests hold writes, then `ENOSPC` if they have switched
    /// write failures on.
    fn check_injected_failure(&self) -> io::Result<()> {
        while self.store.inner.faults.hold_writes.load(Ordering::Relaxed) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        if self.store.inner.faults.fail_writes.load(Ordering::Relaxed) {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "injected write failure",
            ));
        }
        Ok(())
    }

    /// Verifies the digest (and `expected_size` if known), fsyncs, renames the file
    /// under its digest's name and records it in the index.
    pub fn commit(self, expected_size: Option<u64>) -> Result<u64, CommitError> {
        Ok(self.verify(expected_size)?.persist()?)
    }

    /// Checks the bytes written against the digest (and `expected_size` if known)
    /// without touching the disk. The bytes are known good from here on, so they
    /// may be released to clients while [`VerifiedBlob::persist`] makes them durable.
    pub fn verify(mut self, expected_size: Option<u64>) -> Result<VerifiedBlob, CommitError> {
        let actual = std::mem::replace(&mut self.hashing, Hashing::Done)
            .finish()
            .map_err(StoreError::Io)?;
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
        Ok(VerifiedBlob(self))
    }
}

/// A temp file whose bytes hash to its digest, not yet durable or indexed.
/// Dropping it without [`persist`](Self::persist) deletes the temp file.
pub struct VerifiedBlob(BlobWriter);

impl VerifiedBlob {
    pub fn size(&self) -> u64 {
        self.0.written
    }

    /// Fsyncs the file, renames it under its digest's name, syncs the directory
    /// and records the blob in the index, in that order: the index never names a
    /// file that a crash could leave partial.
    pub fn persist(mut self) -> Result<u64, StoreError> {
        let w = &mut self.0;
        while w.store.inner.faults.hold_persists.load(Ordering::Relaxed) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        if w.store.inner.faults.fail_commits.load(Ordering::Relaxed) {
            return Err(StoreError::Io(io::Error::other("injected commit failure")));
        }
        w.file.sync_all()?;
        let dest = blob_path(&w.store.inner.blobs_dir, &w.digest);
        let parent = dest.parent().expect("blob paths have a parent");
        fs::create_dir_all(parent)?;
        fs::rename(&w.temp, &dest)?;
        w.done = true;
        sync_dir(parent)?;
        w.store.index_committed_blob(&w.digest, w.written)?;
        Ok(w.written)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// Where a writer's bytes are hashed.
enum Hashing {
    Inline(Hasher),
    /// A thread fed batches in write order; joined for the digest.
    Thread {
        tx: std::sync::mpsc::SyncSender<Vec<Bytes>>,
        thread: std::thread::JoinHandle<Hasher>,
    },
    /// Finished: the digest was taken.
    Done,
}

impl Hashing {
    fn update(&mut self, bufs: &[Bytes]) {
        match self {
            Hashing::Inline(h) => bufs.iter().for_each(|b| h.update(b)),
            // A send fails only if the thread died; `finish` reports that.
            Hashing::Thread { tx, .. } => drop(tx.send(bufs.to_vec())),
            Hashing::Done => {}
        }
    }

    fn update_slice(&mut self, bytes: &[u8]) {
        match self {
            Hashing::Inline(h) => h.update(bytes),
            _ => self.update(&[Bytes::copy_from_slice(bytes)]),
        }
    }

    fn finish(self) -> io::Result<Digest> {
        match self {
            Hashing::Inline(h) => Ok(h.finish()),
            Hashing::Thread { tx, thread } => {
                drop(tx);
                thread
                    .join()
                    .map(Hasher::finish)
                    .map_err(|_| io::Error::other("hash thread panicked"))
            }
            Hashing::Done => Err(io::Error::other("digest already taken")),
        }
    }
}
