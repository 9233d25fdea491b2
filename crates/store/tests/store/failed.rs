//! Imports that fail — content other than announced, a reader error — leave
//! nothing behind: no index rows, no block files, no temporary files.

use crate::util::{noise, sha256};
use hub_store::{Expected, Store, StoreError};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Every file under `dir` (recursively).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                dirs.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// What a failed import must not change: the index's counts and the files on disk.
fn footprint(store: &Store) -> (u64, u64, u64, Vec<PathBuf>, Vec<PathBuf>) {
    let s = store.stats().unwrap();
    (
        s.files,
        s.blocks,
        s.chunks,
        files_under(&store.root().join("blocks")),
        files_under(&store.root().join("tmp")),
    )
}

/// Yields `data`, then fails (a client that went away mid-upload).
struct Broken<'a> {
    data: &'a [u8],
}

impl Read for Broken<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.data.is_empty() {
            return Err(std::io::Error::other("connection reset"));
        }
        let n = out.len().min(self.data.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

#[test]
fn rejected_and_broken_imports_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // Some content already stored, part of which the failing imports share.
    let kept = noise(1, 3 << 20);
    let kept_info = store.import_reader(&kept[..]).unwrap();
    let before = footprint(&store);
    assert_eq!(before.0, 1);
    assert!(!before.3.is_empty());

    // An LFS PUT whose bytes are not the announced object: refused, nothing kept.
    let data = noise(2, (2 << 20) + 77);
    let announced = Expected {
        sha256: sha256(b"something else"),
        size: data.len() as u64,
    };
    let err = store.import_expecting(&data[..], announced).unwrap_err();
    assert!(matches!(err, StoreError::Mismatch { .. }), "{err:?}");
    assert!(!store.has(&sha256(&data)).unwrap());
    assert_eq!(footprint(&store), before, "a rejected upload left data");

    // The right hash but another size.
    let err = store
        .import_expecting(
            &data[..],
            Expected {
                sha256: sha256(&data),
                size: 5,
            },
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::Mismatch { .. }), "{err:?}");
    assert_eq!(footprint(&store), before);

    // Half of new content, half shared with the stored file, then the reader fails.
    let mut mixed = noise(3, 2 << 20);
    mixed.extend_from_slice(&kept);
    let err = store.import_reader(Broken { data: &mixed }).unwrap_err();
    assert!(matches!(err, StoreError::Source(_)), "{err:?}");
    assert_eq!(footprint(&store), before, "a broken upload left data");

    // What was stored before is intact, and the same content imports fine afterwards.
    let mut back = Vec::new();
    store
        .open_file(&kept_info.sha256)
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert_eq!(back, kept);
    let ok = store
        .import_expecting(
            &data[..],
            Expected {
                sha256: sha256(&data),
                size: data.len() as u64,
            },
        )
        .unwrap();
    assert_eq!(ok.sha256, sha256(&data));
    assert!(store.fsck(|_| {}).unwrap().is_clean());
    assert_eq!(store.fsck(|_| {}).unwrap().orphans_removed, 0);
}
