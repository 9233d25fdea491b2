//! `Store::import_verified`: the seeder's import of chunks already checked against a
//! manifest, with the manifest's boundaries and no second chunking or BLAKE3 pass.

use crate::util::{noise, sha256};
use hub_store::{Manifest, Sha256, Store, StoreError, VerifiedChunk};
use std::io::{self, Read};

/// A file imported into a fresh "source" store: its bytes, manifest and chunks.
fn published(dir: &std::path::Path, seed: u64, len: usize) -> (Vec<u8>, Manifest, Vec<Vec<u8>>) {
    let data = noise(seed, len);
    let source = Store::open(dir.join("source")).unwrap();
    let info = source.import_reader(&data[..]).unwrap();
    let (_, manifest) = source.manifest(&info.sha256).unwrap();
    let mut chunks = Vec::new();
    let mut at = 0;
    for c in &manifest.chunks {
        chunks.push(data[at..at + c.len as usize].to_vec());
        at += c.len as usize;
    }
    (data, manifest, chunks)
}

fn bytes(chunks: &[Vec<u8>]) -> impl Iterator<Item = io::Result<VerifiedChunk>> + '_ {
    chunks.iter().map(|c| Ok(VerifiedChunk::Bytes(c.clone())))
}

fn no_blocks(store: &Store) -> bool {
    let blocks = store.root().join("blocks");
    walk(&blocks) == 0
}

fn walk(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        walk(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn verified_chunks_are_stored_with_the_manifests_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let (data, manifest, chunks) = published(dir.path(), 1, (3 << 20) + 77);
    let store = Store::open(dir.path().join("seeder")).unwrap();
    let info = store.import_verified(&manifest, bytes(&chunks)).unwrap();
    assert_eq!(info.sha256, sha256(&data));
    assert_eq!(
        info.manifest_id,
        manifest.id(),
        "the manifest is kept as it is"
    );
    assert_eq!(info.new_bytes, data.len() as u64);
    let (_, stored) = store.manifest(&info.sha256).unwrap();
    assert_eq!(stored, manifest);
    let mut back = Vec::new();
    store
        .open_file(&info.sha256)
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert_eq!(back, data);
    assert!(store.fsck(|_| {}).unwrap().is_clean());

    // A second file sharing chunks: those the store holds are read back, not sent again.
    let mut edited = data.clone();
    edited.extend_from_slice(&noise(2, 1 << 20));
    let source = Store::open(dir.path().join("source2")).unwrap();
    let info2 = source.import_reader(&edited[..]).unwrap();
    let (_, m2) = source.manifest(&info2.sha256).unwrap();
    let have = store
        .has_chunks(&m2.chunks.iter().map(|c| c.id).collect::<Vec<_>>())
        .unwrap();
    assert!(have.iter().filter(|h| **h).count() >= 2, "{have:?}");
    let mut at = 0usize;
    let feed: Vec<io::Result<VerifiedChunk>> = m2
        .chunks
        .iter()
        .zip(&have)
        .map(|(c, &held)| {
            let piece = if held {
                VerifiedChunk::Stored
            } else {
                VerifiedChunk::Bytes(edited[at..at + c.len as usize].to_vec())
            };
            at += c.len as usize;
            Ok(piece)
        })
        .collect();
    let got = store.import_verified(&m2, feed.into_iter()).unwrap();
    assert_eq!(got.manifest_id, m2.id());
    assert!(got.new_bytes < (edited.len() - data.len()) as u64 + (256 << 10));
    assert!(store.fsck(|_| {}).unwrap().is_clean());
}

#[test]
fn a_wrong_sha256_short_feed_or_wrong_length_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_, manifest, chunks) = published(dir.path(), 3, 2 << 20);
    let store = Store::open(dir.path().join("seeder")).unwrap();

    // A chunk of the right length but other bytes (what a lying peer would send, were it
    // not checked on arrival): the SHA-256 catches it end to end.
    let mut bad = chunks.clone();
    bad[1][5] ^= 1;
    let err = store.import_verified(&manifest, bytes(&bad)).unwrap_err();
    assert!(matches!(err, StoreError::Mismatch { .. }), "{err:?}");

    // The feed stops early (a fetch that failed half way).
    let err = store
        .import_verified(&manifest, bytes(&chunks[..chunks.len() - 1]))
        .unwrap_err();
    assert!(matches!(err, StoreError::Source(_)), "{err:?}");

    // A chunk of another length than its manifest entry.
    let mut short = chunks.clone();
    short[2].pop();
    let err = store.import_verified(&manifest, bytes(&short)).unwrap_err();
    assert!(
        matches!(err, StoreError::ChunkLen { index: 2, .. }),
        "{err:?}"
    );

    // A chunk claimed to be stored that is not.
    let mut feed: Vec<io::Result<VerifiedChunk>> = bytes(&chunks).collect();
    feed[0] = Ok(VerifiedChunk::Stored);
    let err = store
        .import_verified(&manifest, feed.into_iter())
        .unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");

    assert!(!store.has(&manifest.sha256).unwrap());
    assert!(store.files().unwrap().is_empty());
    assert!(no_blocks(&store), "failed imports leave no block files");
    assert!(store.fsck(|_| {}).unwrap().is_clean());
    assert!(!store.has(&Sha256([0; 32])).unwrap());
}

#[test]
fn a_stored_chunk_corrupted_on_disk_is_caught_when_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let (data, manifest, chunks) = published(dir.path(), 4, 2 << 20);
    let store = Store::open(dir.path().join("seeder")).unwrap();
    // The store holds the first half of the file (imported as a file of its own).
    let half = chunks.len() / 2;
    let first: Vec<u8> = chunks[..half].concat();
    store.import_reader(&first[..]).unwrap();
    let held = store
        .has_chunks(&manifest.chunks.iter().map(|c| c.id).collect::<Vec<_>>())
        .unwrap();
    let i = held.iter().position(|h| *h).expect("a shared chunk");
    // Flip a byte of that chunk in its block file.
    let block = std::fs::read_dir(store.root().join("blocks"))
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
        .next()
        .unwrap()
        .path();
    let offset: usize = manifest.chunks[..i].iter().map(|c| c.len as usize).sum();
    let mut bytes = std::fs::read(&block).unwrap();
    assert_eq!(&bytes[offset..offset + 16], &data[offset..offset + 16]);
    bytes[offset + 3] ^= 0x10;
    std::fs::write(&block, &bytes).unwrap();

    let feed: Vec<io::Result<VerifiedChunk>> = manifest
        .chunks
        .iter()
        .zip(&chunks)
        .zip(&held)
        .map(|((_, c), &h)| {
            Ok(if h {
                VerifiedChunk::Stored
            } else {
                VerifiedChunk::Bytes(c.clone())
            })
        })
        .collect();
    let err = store
        .import_verified(&manifest, feed.into_iter())
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Corrupt {
                what: "corrupt chunk",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!store.has(&manifest.sha256).unwrap());
}
