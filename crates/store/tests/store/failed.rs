//! Imports that fail — content other than announced, a reader error, a full disk — leave
//! nothing behind: no index rows, no block files, no temporary files.

use crate::util::{noise, sha256};
use hub_store::{Expected, Store, StoreConfig, StoreError};
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

#[test]
fn the_reserved_headroom_refuses_writes_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::default();
    config.reserved_bytes = u64::MAX / 4;
    let store = Store::open_with_config(dir.path(), config).unwrap();
    let data = noise(4, 1 << 20);
    let err = store.import_reader(&data[..]).unwrap_err();
    assert!(err.is_storage_full(), "{err:?}");
    assert_eq!(footprint(&store), (0, 0, 0, vec![], vec![]));
    // The same rule, asked before any bytes arrive (a Xet write token, a xorb's length).
    assert!(store.ensure_room(0).unwrap_err().is_storage_full());
    // With the default headroom, an announced size larger than the disk is refused before
    // a byte is read.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let err = store
        .import_expecting(
            &data[..],
            Expected {
                sha256: sha256(&data),
                size: u64::MAX / 2,
            },
        )
        .unwrap_err();
    assert!(err.is_storage_full(), "{err:?}");
    store.ensure_room(1 << 20).unwrap();
    assert!(
        store
            .ensure_room(u64::MAX / 2)
            .unwrap_err()
            .is_storage_full()
    );
}

/// A real `ENOSPC`: the store on an 8 MiB tmpfs (needs root and a kernel that lets this
/// process mount; skipped, saying so, elsewhere).
#[test]
fn a_full_disk_is_storage_full_and_the_space_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
        .arg(dir.path())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(dir.path());
    let mut config = StoreConfig::default();
    config.reserved_bytes = 0;
    let store = Store::open_with_config(dir.path().join("store"), config).unwrap();
    let before = footprint(&store);
    let data = noise(5, 12 << 20);
    let err = store.import_reader(&data[..]).unwrap_err();
    assert!(err.is_storage_full(), "{err:?}");
    assert_eq!(footprint(&store), before, "a failed upload left data");
    // The space is free again: a file that fits imports and reads back.
    let small = noise(6, 3 << 20);
    let info = store.import_reader(&small[..]).unwrap();
    let mut back = Vec::new();
    store
        .open_file(&info.sha256)
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert_eq!(back, small);
    drop(store);
}
