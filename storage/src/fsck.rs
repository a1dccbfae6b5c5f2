//! `ferry fsck`: the index checked against the files, and optionally repaired.

use crate::paths::{blob_path, remove_if_exists};
use crate::{Digest, Hasher, Store, StoreError};
use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// One problem found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsckFinding {
    /// The index lists a blob whose file is missing.
    MissingFile { digest: String },
    /// The file's length differs from the indexed size.
    WrongSize {
        digest: String,
        indexed: u64,
        on_disk: u64,
    },
    /// `--verify`: the file's bytes do not hash to its name.
    CorruptBlob { digest: String },
    /// A file under `blobs/` with no index entry (a crash between the rename and
    /// the index write). `intact`: its bytes hash to its name, so repair adopts it.
    OrphanFile { path: PathBuf, intact: bool },
    /// An index entry that cannot be decoded.
    BadIndexEntry { key: String },
    /// A stored manifest whose bytes do not hash to its digest, or cannot be decoded.
    CorruptManifest { digest: String },
    /// A leftover temp file.
    TempFile { path: PathBuf },
}

/// What fsck found, and whether it repaired it.
#[derive(Clone, Debug, Default)]
pub struct FsckReport {
    /// The store's format version.
    pub format: u32,
    pub blobs_checked: u64,
    pub manifests_checked: u64,
    pub tags_checked: u64,
    pub findings: Vec<FsckFinding>,
    pub repaired: bool,
}

impl FsckReport {
    pub fn clean(&self) -> bool {
        self.findings.is_empty()
    }
}

impl std::fmt::Display for FsckFinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsckFinding::MissingFile { digest } => {
                write!(f, "blob {digest}: indexed but its file is missing")
            }
            FsckFinding::WrongSize {
                digest,
                indexed,
                on_disk,
            } => {
                write!(
                    f,
                    "blob {digest}: indexed as {indexed} bytes, file has {on_disk}"
                )
            }
            FsckFinding::CorruptBlob { digest } => {
                write!(f, "blob {digest}: bytes do not hash to its digest")
            }
            FsckFinding::OrphanFile { path, intact: true } => {
                write!(f, "{}: intact blob missing from the index", path.display())
            }
            FsckFinding::OrphanFile {
                path,
                intact: false,
            } => {
                write!(
                    f,
                    "{}: file not in the index, bytes do not match its name",
                    path.display()
                )
            }
            FsckFinding::BadIndexEntry { key } => {
                write!(f, "index entry {key:?} cannot be decoded")
            }
            FsckFinding::CorruptManifest { digest } => {
                write!(f, "manifest {digest}: bytes do not hash to its digest")
            }
            FsckFinding::TempFile { path } => write!(f, "{}: leftover temp file", path.display()),
        }
    }
}

pub(crate) fn run(store: &Store, verify: bool, repair: bool) -> Result<FsckReport, StoreError> {
    let inner = &store.inner;
    let mut report = FsckReport {
        format: store.format(),
        repaired: repair,
        ..FsckReport::default()
    };
    let mut indexed = HashSet::new();

    for (key, meta) in inner.index.raw_blobs()? {
        report.blobs_checked += 1;
        let key_text = String::from_utf8_lossy(&key).into_owned();
        let (Ok(digest), Some(meta)) = (key_text.parse::<Digest>(), meta) else {
            report
                .findings
                .push(FsckFinding::BadIndexEntry { key: key_text });
            if repair {
                inner.index.delete_blob_key(&key)?;
            }
            continue;
        };
        let path = blob_path(&inner.blobs_dir, &digest);
        let problem = match fs::metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Some(FsckFinding::MissingFile {
                digest: key_text.clone(),
            }),
            Err(e) => return Err(e.into()),
            Ok(m) if m.len() != meta.size => Some(FsckFinding::WrongSize {
                digest: key_text.clone(),
                indexed: meta.size,
                on_disk: m.len(),
            }),
            Ok(_) if verify => match file_verifies(&path, &digest)? {
                Some(true) => None,
                Some(false) => Some(FsckFinding::CorruptBlob {
                    digest: key_text.clone(),
                }),
                // Gone since the metadata call: a live store evicted it.
                None => Some(FsckFinding::MissingFile {
                    digest: key_text.clone(),
                }),
            },
            Ok(_) => None,
        };
        indexed.insert(path.clone());
        match problem {
            None => {}
            Some(finding) => {
                report.findings.push(finding);
                if repair {
                    let _pins = inner.pins.lock();
                    inner.index.delete_blob(&digest, true)?;
                    remove_if_exists(&path)?;
                    inner.account_removed(meta.size);
                }
            }
        }
    }

    for path in files_under(&inner.blobs_dir)? {
        if !indexed.contains(&path) {
            let digest = digest_of_path(store, &path);
            let intact = match &digest {
                Some(d) => match file_verifies(&path, d)? {
                    Some(ok) => ok,
                    None => continue, // removed since the listing (live store)
                },
                None => false,
            };
            report.findings.push(FsckFinding::OrphanFile {
                path: path.clone(),
                intact,
            });
            if repair {
                match digest {
                    Some(d) if intact => {
                        store.index_committed_blob(&d, fs::metadata(&path)?.len())?
                    }
                    _ => remove_if_exists(&path)?,
                }
            }
        }
    }

    for (key, manifest) in inner.index.all_manifests()? {
        report.manifests_checked += 1;
        let ok = match (key.parse::<Digest>(), &manifest) {
            (Ok(d), Some(m)) => d.verifies(&m.body),
            _ => false,
        };
        if !ok {
            report.findings.push(FsckFinding::CorruptManifest {
                digest: key.clone(),
            });
            if repair {
                inner.index.delete_manifest_key(&key)?;
            }
        }
    }

    // Tag records may name a manifest that is not stored: a tag resolved by a
    // HEAD alone keeps only the digest. They are counted, not judged.
    report.tags_checked = inner.index.all_tags()?.len() as u64;

    for path in files_under(&inner.tmp_dir)? {
        report
            .findings
            .push(FsckFinding::TempFile { path: path.clone() });
        if repair {
            remove_if_exists(&path)?;
        }
    }
    if !repair {
        // A live store moves while it is checked: a blob committed after the
        // index was read looks orphaned, one evicted after it looks missing, and
        // fetches in flight have temp files. Keep only what still holds, with
        // eviction held off for the recheck.
        let _quiet = inner.evicting.lock();
        report.findings.retain(|f| still_holds(store, f));
    }
    Ok(report)
}

pub(crate) fn still_holds(store: &Store, finding: &FsckFinding) -> bool {
    let inner = &store.inner;
    let indexed = |digest: &str| -> Option<u64> {
        let d = digest.parse::<Digest>().ok()?;
        inner.index.blob(&d).ok().flatten().map(|m| m.size)
    };
    let on_disk = |digest: &str| -> Option<u64> {
        let d = digest.parse::<Digest>().ok()?;
        fs::metadata(blob_path(&inner.blobs_dir, &d))
            .ok()
            .map(|m| m.len())
    };
    match finding {
        FsckFinding::MissingFile { digest } => {
            indexed(digest).is_some() && on_disk(digest).is_none()
        }
        FsckFinding::WrongSize { digest, .. } => {
            matches!((indexed(digest), on_disk(digest)), (Some(i), Some(d)) if i != d)
        }
        FsckFinding::CorruptBlob { digest } => indexed(digest).is_some(),
        FsckFinding::OrphanFile { path, .. } => {
            path.exists()
                && digest_of_path(store, path).is_none_or(|d| indexed(&d.to_string()).is_none())
        }
        FsckFinding::TempFile { path } => path.exists() && !in_flight_here(path),
        FsckFinding::BadIndexEntry { .. } | FsckFinding::CorruptManifest { .. } => true,
    }
}

/// Whether a temp file belongs to a write of this process (`<hex>.<pid>.<seq>`).
fn in_flight_here(path: &Path) -> bool {
    let pid = std::process::id().to_string();
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split('.').nth(1))
        .is_some_and(|p| p == pid)
}

/// The digest a path under `blobs/` names, if it is a well-formed blob path.
fn digest_of_path(store: &Store, path: &Path) -> Option<Digest> {
    let hex = path.file_name()?.to_str()?;
    let algo = path.parent()?.parent()?.file_name()?.to_str()?;
    let d: Digest = format!("{algo}:{hex}").parse().ok()?;
    (blob_path(&store.inner.blobs_dir, &d) == path).then_some(d)
}

/// Whether a file hashes to `digest`; `None` when it no longer exists.
fn file_verifies(path: &Path, digest: &Digest) -> io::Result<Option<bool>> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut hasher = Hasher::new(digest.algorithm());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(Some(hasher.finish() == *digest))
}

/// Every regular file below `dir`, recursively.
fn files_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                stack.push(entry.path());
            } else {
                out.push(entry.path());
            }
        }
    }
    Ok(out)
}
