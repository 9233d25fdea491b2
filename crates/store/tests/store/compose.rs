//! `Store::compose`: a file made of byte ranges of stored files references their chunks,
//! stores only the pieces the ranges' ends cut, and keeps nothing when the claim is wrong.

use crate::util::{noise, sha256};
use hub_store::{Expected, Slice, Store, StoreError};
use std::io::Read;

fn read_all(store: &Store, sha: &hub_store::Sha256) -> Vec<u8> {
    let mut out = Vec::new();
    store.open_file(sha).unwrap().read_to_end(&mut out).unwrap();
    out
}

#[test]
fn a_composed_file_references_stored_chunks_and_writes_only_the_cut_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = noise(1, 3 << 20);
    let b = noise(2, 2 << 20);
    let ia = store.import_reader(&a[..]).unwrap();
    let ib = store.import_reader(&b[..]).unwrap();
    let before = store.stats().unwrap();

    // Unaligned ranges: a's middle, all of b, a's head.
    let ranges = [
        (&ia, &a, 100_001u64, 1_500_000u64),
        (&ib, &b, 0, b.len() as u64),
        (&ia, &a, 0, 77),
    ];
    let slices: Vec<Slice> = ranges
        .iter()
        .map(|(i, _, offset, len)| Slice {
            sha256: i.sha256,
            offset: *offset,
            len: *len,
        })
        .collect();
    let mut want = Vec::new();
    for (_, data, offset, len) in &ranges {
        want.extend_from_slice(&data[*offset as usize..(*offset + *len) as usize]);
    }

    // A wrong claim: refused, nothing written.
    let wrong = Expected {
        sha256: sha256(b"something else"),
        size: want.len() as u64,
    };
    let err = store.compose(&slices, Some(wrong)).unwrap_err();
    assert!(matches!(err, StoreError::Mismatch { .. }), "{err:?}");
    let after_refusal = store.stats().unwrap();
    assert_eq!(
        (
            after_refusal.files,
            after_refusal.blocks,
            after_refusal.chunks
        ),
        (before.files, before.blocks, before.chunks)
    );

    let expected = Expected {
        sha256: sha256(&want),
        size: want.len() as u64,
    };
    let info = store.compose(&slices, Some(expected)).unwrap();
    assert_eq!((info.sha256, info.size), (expected.sha256, expected.size));
    assert_eq!(read_all(&store, &info.sha256), want);
    // Only the cut pieces are new: at most two per range, each under a chunk's maximum.
    assert!(info.new_bytes <= 6 * 128 * 1024, "{}", info.new_bytes);
    assert!(info.new_bytes > 0);
    let after = store.stats().unwrap();
    assert!(
        after.stored_bytes - before.stored_bytes <= info.new_bytes + 4096,
        "{after:?}"
    );
    assert!(store.fsck(|_| {}).unwrap().is_clean());
    // The manifest's `blake3` is its chunk-list hash, as for every import.
    let (_, manifest) = store.manifest(&info.sha256).unwrap();
    assert_eq!(
        info.blake3,
        hub_store::Manifest::chunk_list_hash(&manifest.chunks)
    );
}

#[test]
fn a_slice_past_the_end_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = noise(3, 100_000);
    let ia = store.import_reader(&a[..]).unwrap();
    let slice = Slice {
        sha256: ia.sha256,
        offset: 50_000,
        len: 50_001,
    };
    assert!(store.compose(&[slice], None).is_err());
    assert_eq!(store.stats().unwrap().files, 1);
}
