//! fsck, gc, stats and persistent roots.

use crate::util::noise;
use hub_store::Store;
use std::io::Read;
use std::path::PathBuf;

fn block_files(root: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in std::fs::read_dir(root.join("blocks")).unwrap() {
        for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out.sort();
    out
}

#[test]
fn fsck_quarantines_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = store.import_reader(&noise(1, 2 << 20)[..]).unwrap();
    let blocks_a = block_files(dir.path());
    let b_data = noise(2, 1 << 20);
    let b = store.import_reader(&b_data[..]).unwrap();
    assert_eq!(blocks_a.len(), 1);
    let report = store.fsck(|_| {}).unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.blocks_checked, 2);
    assert_eq!(report.files_checked, 2);

    // Flip one byte in the middle of a's block.
    let path = &blocks_a[0];
    let mut bytes = std::fs::read(path).unwrap();
    bytes[1 << 20] ^= 1;
    std::fs::write(path, &bytes).unwrap();

    // Reading the damaged file fails loudly instead of returning wrong bytes.
    let mut sink = Vec::new();
    let err = store
        .open_file(&a.sha256)
        .unwrap()
        .read_to_end(&mut sink)
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);

    let mut calls = 0;
    let report = store.fsck(|_| calls += 1).unwrap();
    assert!(calls >= 4);
    assert!(!report.is_clean());
    assert_eq!(report.corrupt_blocks.len(), 1);
    assert_eq!(report.damaged_files, vec![a.sha256]);
    assert_eq!(report.bad_chunk_entries, 0);
    assert!(!store.has(&a.sha256).unwrap());
    assert!(
        dir.path()
            .join("quarantine")
            .join(report.corrupt_blocks[0].id.to_string())
            .exists()
    );
    // The other file is untouched, and the store is clean again.
    let mut back = Vec::new();
    store
        .open_file(&b.sha256)
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert_eq!(back, b_data);
    assert!(store.fsck(|_| {}).unwrap().is_clean());
    // Importing the file again repairs it.
    store.import_reader(&noise(1, 2 << 20)[..]).unwrap();
    assert!(store.has(&a.sha256).unwrap());
    assert!(store.fsck(|_| {}).unwrap().is_clean());
}

#[test]
fn fsck_reports_missing_and_truncated_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.import_reader(&noise(3, 500_000)[..]).unwrap();
    store.import_reader(&noise(4, 500_000)[..]).unwrap();
    let blocks = block_files(dir.path());
    std::fs::remove_file(&blocks[0]).unwrap();
    let len = std::fs::metadata(&blocks[1]).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&blocks[1])
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let report = store.fsck(|_| {}).unwrap();
    assert_eq!(report.corrupt_blocks.len(), 2);
    assert_eq!(report.damaged_files.len(), 2);
    assert_eq!(store.stats().unwrap().files, 0);
    assert!(store.fsck(|_| {}).unwrap().is_clean());
}

#[test]
fn gc_keeps_roots_and_shared_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let base = noise(5, 3 << 20);
    let mut extended = base.clone();
    extended.extend_from_slice(&noise(6, 1 << 20));
    let a = store.import_reader(&base[..]).unwrap();
    let b = store.import_reader(&extended[..]).unwrap();
    let lone = store.import_reader(&noise(7, 1 << 20)[..]).unwrap();
    assert_eq!(block_files(dir.path()).len(), 3);

    // Keeping b keeps a's block (b shares its chunks) but drops a itself and `lone`.
    let report = store.gc(&[b.sha256]).unwrap();
    assert_eq!(report.files_kept, 1);
    assert_eq!(report.files_removed, 2);
    assert_eq!(report.blocks_removed, 1);
    assert!(!store.has(&a.sha256).unwrap());
    assert!(!store.has(&lone.sha256).unwrap());
    let mut back = Vec::new();
    store
        .open_file(&b.sha256)
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert_eq!(back, extended);
    assert_eq!(block_files(dir.path()).len(), 2);
    assert!(store.fsck(|_| {}).unwrap().is_clean());

    // Persistent roots survive a gc with no caller roots.
    store.add_root(&b.sha256).unwrap();
    assert_eq!(store.gc(&[]).unwrap().files_removed, 0);
    assert!(store.has(&b.sha256).unwrap());
    store.remove_root(&b.sha256).unwrap();
    let report = store.gc(&[]).unwrap();
    assert_eq!(report.files_removed, 1);
    assert_eq!(report.blocks_removed, 2);
    let stats = store.stats().unwrap();
    assert_eq!(
        (stats.files, stats.blocks, stats.chunks, stats.stored_bytes),
        (0, 0, 0, 0)
    );
    assert!(block_files(dir.path()).is_empty());
    assert!(store.fsck(|_| {}).unwrap().is_clean());
}

#[test]
fn stats_serialize() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let data = noise(8, 1 << 20);
    store.import_reader(&data[..]).unwrap();
    store.import_reader(&data[..]).unwrap();
    let mut copy = b"x".to_vec();
    copy.extend_from_slice(&data);
    store.import_reader(&copy[..]).unwrap();
    let stats = store.stats().unwrap();
    assert_eq!(stats.files, 2);
    assert_eq!(stats.logical_bytes, 2 * data.len() as u64 + 1);
    assert!(stats.stored_bytes > data.len() as u64);
    assert!(stats.dedup_ratio > 1.5);
    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(json["files"], 2);
    let report = serde_json::to_value(store.fsck(|_| {}).unwrap()).unwrap();
    assert_eq!(report["corrupt_blocks"], serde_json::json!([]));
}
