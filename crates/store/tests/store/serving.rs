//! The serving read path: `FileReader::read_owned`, and the one case where a read skips the
//! BLAKE3 check (a chunk verified from the same block less than `reverify_after` ago; ADR
//! 0001, "Serving"), with the places where rot is still caught: the window's end, a restart,
//! `fsck`, and every read when the window is zero.

use crate::util::noise;
use hub_store::{FileInfo, Store, StoreConfig};
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

fn open(dir: &Path, window: Duration) -> Store {
    let mut config = StoreConfig::default();
    config.reverify_after = window;
    Store::open_with_config(dir, config).unwrap()
}

/// Everything from `from` on through `read_owned(max)`, until it returns nothing.
fn read_owned_all(
    store: &Store,
    info: &FileInfo,
    from: u64,
    max: usize,
) -> std::io::Result<Vec<u8>> {
    let mut r = store.open_file(&info.sha256).unwrap();
    r.seek(SeekFrom::Start(from))?;
    let mut out = Vec::new();
    loop {
        let piece = r.read_owned(max)?;
        if piece.is_empty() {
            return Ok(out);
        }
        assert!(piece.len() <= max);
        out.extend_from_slice(&piece);
    }
}

/// Flips one byte in the data of the only block file under `dir`, at `at`.
fn rot(dir: &Path, at: usize) {
    let mut blocks = Vec::new();
    for sub in std::fs::read_dir(dir.join("blocks")).unwrap() {
        for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            blocks.push(f.unwrap().path());
        }
    }
    assert_eq!(blocks.len(), 1);
    let mut bytes = std::fs::read(&blocks[0]).unwrap();
    bytes[at] ^= 0x40;
    std::fs::write(&blocks[0], &bytes).unwrap();
}

fn read_all(store: &Store, info: &FileInfo) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    store
        .open_file(&info.sha256)
        .map_err(std::io::Error::other)?
        .read_to_end(&mut out)?;
    Ok(out)
}

#[test]
fn read_owned_returns_the_file_in_runs_of_whole_chunks_from_any_offset() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), Duration::ZERO);
    let data = noise(41, (3 << 20) + 12_345);
    let info = store.import_reader(&data[..]).unwrap();
    for max in [1 << 20, 200_000, 4096, 777] {
        assert_eq!(
            read_owned_all(&store, &info, 0, max).unwrap(),
            data,
            "max {max}"
        );
    }
    // From inside a chunk (a Range request), and from the last byte.
    for from in [1, 70_001, data.len() as u64 - 1] {
        let got = read_owned_all(&store, &info, from, 1 << 20).unwrap();
        assert_eq!(got, data[from as usize..], "from {from}");
    }
    // A flipped byte is an error through read_owned too.
    rot(dir.path(), 100);
    let err = read_owned_all(&store, &info, 0, 1 << 20).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidData);
}

#[test]
fn rot_after_a_verified_read_is_served_only_inside_the_window_then_caught() {
    let dir = tempfile::tempdir().unwrap();
    let window = Duration::from_secs(2);
    let store = open(dir.path(), window);
    let data = noise(42, 1 << 20);
    let info = store.import_reader(&data[..]).unwrap();
    let verified_at = Instant::now();
    assert_eq!(read_all(&store, &info).unwrap(), data);
    rot(dir.path(), 10);

    // Inside the window the chunk is not hashed again: the rotten byte goes out. This is the
    // trade ADR 0001 records; a peer would still catch it (it checks every 16 KiB group).
    let served = read_owned_all(&store, &info, 0, 1 << 20);
    if verified_at.elapsed() < window {
        let served = served.expect("inside the window the chunk is not re-hashed");
        assert_ne!(served, data);
        assert_eq!(served[11..], data[11..]);
    }

    // Once the window has passed, the next read hashes the chunk again and fails.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match read_all(&store, &info) {
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::InvalidData);
                break;
            }
            Ok(_) => assert!(Instant::now() < deadline, "rot never caught"),
        }
        std::thread::yield_now();
    }
    assert!(verified_at.elapsed() >= window);

    // fsck never consults the window.
    let report = store.fsck(|_| {}).unwrap();
    assert_eq!(report.damaged_files, vec![info.sha256]);
}

#[test]
fn rot_is_caught_at_once_after_a_restart_by_fsck_and_with_a_zero_window() {
    let dir = tempfile::tempdir().unwrap();
    let data = noise(43, 1 << 20);
    let info = {
        let store = open(dir.path(), Duration::from_secs(3600));
        let info = store.import_reader(&data[..]).unwrap();
        assert_eq!(read_all(&store, &info).unwrap(), data);
        rot(dir.path(), 20);
        // fsck never consults the window, even right after a verified read.
        let other = dir.path().join("other");
        let store2 = open(&other, Duration::from_secs(3600));
        let info2 = store2.import_reader(&data[..]).unwrap();
        assert_eq!(read_all(&store2, &info2).unwrap(), data);
        rot(&other, 30);
        let report = store2.fsck(|_| {}).unwrap();
        assert_eq!(report.damaged_files, vec![info2.sha256]);
        info
    };
    // The window lives in memory: a restarted store hashes every chunk again.
    let store = open(dir.path(), Duration::from_secs(3600));
    let err = read_all(&store, &info).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidData);

    // With a zero window every read hashes.
    let zero = dir.path().join("zero");
    let store = open(&zero, Duration::ZERO);
    let info = store.import_reader(&data[..]).unwrap();
    assert_eq!(read_all(&store, &info).unwrap(), data);
    rot(&zero, 40);
    let err = read_all(&store, &info).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidData);
}
