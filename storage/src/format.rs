//! The data directory's format version, in `<data>/FORMAT` (`ferry-store <n>`).
//!
//! Read before anything else is opened, so a Ferry never writes into a
//! directory it does not understand:
//! - written by a newer Ferry (a version above [`CURRENT`]): refused, the
//!   directory untouched;
//! - no `FORMAT` but an index: a store from before versions were recorded,
//!   which is format 1: the version is recorded (nothing else changes);
//! - an older format this build can no longer migrate (below
//!   [`OLDEST_MIGRATABLE`]): refused, with what fixes it (a cache refills
//!   from upstream: move the directory aside);
//! - an empty directory: a new store, stamped [`CURRENT`].
//!
//! A format change adds its migration step to [`migrate`] and bumps [`CURRENT`].

use crate::paths::sync_dir;
use crate::StoreError;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// The format this build writes.
pub const CURRENT: u32 = 1;
/// The oldest format this build upgrades in place.
pub const OLDEST_MIGRATABLE: u32 = 1;

const FILE: &str = "FORMAT";
const MAGIC: &str = "ferry-store";

/// What a data directory says about its format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// Nothing there yet.
    New,
    /// A store written before versions were recorded (format 1).
    Unrecorded,
    /// A recorded version.
    Version(u32),
}

/// Reads the format of the store under `root` without changing anything.
pub fn read(root: &Path) -> Result<Found, StoreError> {
    match fs::read_to_string(root.join(FILE)) {
        Ok(text) => parse(&text).map(Found::Version).ok_or_else(|| {
            StoreError::Format(format!(
                "{} is not a Ferry store format file (expected `{MAGIC} <version>`, found {:?})",
                root.join(FILE).display(),
                text.trim()
            ))
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(if root.join("index").exists() {
            Found::Unrecorded
        } else {
            Found::New
        }),
        Err(e) => Err(e.into()),
    }
}

fn parse(text: &str) -> Option<u32> {
    let (magic, version) = text.trim().split_once(' ')?;
    (magic == MAGIC).then_some(())?;
    version.trim().parse().ok()
}

/// Refuses a store this build cannot read; otherwise says which version it
/// holds now (before any migration).
pub fn check(root: &Path) -> Result<Found, StoreError> {
    let found = read(root)?;
    let version = match found {
        Found::New => return Ok(found),
        Found::Unrecorded => 1,
        Found::Version(v) => v,
    };
    if version > CURRENT {
        return Err(StoreError::Format(format!(
            "the data directory {} was written by a newer Ferry (store format {version}; this \
             Ferry reads formats {OLDEST_MIGRATABLE} to {CURRENT}). Run that newer Ferry, or point \
             this one at another (empty) data directory: the cache refills from upstream",
            root.display()
        )));
    }
    if version < OLDEST_MIGRATABLE {
        return Err(StoreError::Format(format!(
            "the data directory {} holds store format {version}, too old for this Ferry to \
             upgrade (it reads formats {OLDEST_MIGRATABLE} to {CURRENT}). Move it aside \
             (`mv {dir} {dir}.old`) and start again: the cache refills from upstream",
            root.display(),
            dir = root.display()
        )));
    }
    Ok(found)
}

/// Brings a checked store up to [`CURRENT`] and records it. Called once the
/// index is open (so no other Ferry holds the directory).
pub fn migrate(root: &Path, found: Found) -> Result<u32, StoreError> {
    let from = match found {
        Found::New => CURRENT,
        Found::Unrecorded => 1,
        Found::Version(v) => v,
    };
    // Each format change adds its step here: `if from < 2 { … }`.
    if found != Found::Version(CURRENT) {
        record(root, CURRENT)?;
        if found != Found::New {
            tracing::info!(
                from,
                to = CURRENT,
                dir = %root.display(),
                "store format recorded"
            );
        }
    }
    Ok(CURRENT)
}

/// Writes `FORMAT` durably (temp file, fsync, rename, directory fsync).
fn record(root: &Path, version: u32) -> Result<(), StoreError> {
    let tmp = root.join(format!("{FILE}.tmp"));
    let mut f = fs::File::create(&tmp)?;
    writeln!(f, "{MAGIC} {version}")?;
    f.sync_all()?;
    fs::rename(&tmp, root.join(FILE))?;
    sync_dir(root)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_nonsense_is_refused() {
        assert_eq!(parse("ferry-store 1\n"), Some(1));
        assert_eq!(parse("ferry-store 12"), Some(12));
        assert_eq!(parse("ferry-store"), None);
        assert_eq!(parse("other 1"), None);
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE), "hello").unwrap();
        assert!(matches!(read(dir.path()), Err(StoreError::Format(_))));
    }

    #[test]
    fn a_new_directory_is_stamped_current() {
        let dir = tempfile::tempdir().unwrap();
        let found = check(dir.path()).unwrap();
        assert_eq!(found, Found::New);
        assert_eq!(migrate(dir.path(), found).unwrap(), CURRENT);
        assert_eq!(read(dir.path()).unwrap(), Found::Version(CURRENT));
    }
}
