use super::*;
use crate::hash::{chunk_hash, file_hash, xorb_hash};
use crate::shard::tests::shard_of;
use crate::shard::{Segment, ShardFile};
use sha2::Digest;
use std::io::Read;

fn xorb_of(chunks: &[Vec<u8>]) -> (Vec<u8>, XetHash) {
    let mut bytes = Vec::new();
    let mut hashes = Vec::new();
    for c in chunks {
        xorb::write_uncompressed_chunk(&mut bytes, c);
        hashes.push((chunk_hash(c), c.len() as u64));
    }
    (bytes, xorb_hash(&hashes))
}

fn chunks(seed: u8, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| vec![seed.wrapping_add(i as u8); 1000 + i * 10])
        .collect()
}

fn setup() -> (tempfile::TempDir, XetIndex) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let index = XetIndex::open(dir.path().join("xet.redb"), store).unwrap();
    (dir, index)
}

/// A file of chunks 1..3 of `a` then all of `b`, and its shard entry.
fn file_over(a: &[Vec<u8>], ah: XetHash, b: &[Vec<u8>], bh: XetHash) -> (Vec<u8>, ShardFile) {
    let parts: Vec<&Vec<u8>> = a[1..3].iter().chain(b.iter()).collect();
    let content: Vec<u8> = parts.iter().flat_map(|c| c.iter().copied()).collect();
    let hashes: Vec<(XetHash, u64)> = parts
        .iter()
        .map(|c| (chunk_hash(c), c.len() as u64))
        .collect();
    let seg = |xorb, cs: &[Vec<u8>], start, end| Segment {
        xorb,
        unpacked_bytes: cs[start as usize..end as usize]
            .iter()
            .map(|c| c.len() as u32)
            .sum(),
        start,
        end,
    };
    let f = ShardFile {
        file_hash: file_hash(&hashes),
        segments: vec![seg(ah, a, 1, 3), seg(bh, b, 0, b.len() as u32)],
        sha256: Some(sha2::Sha256::digest(&content).into()),
    };
    (content, f)
}

#[test]
fn a_shard_over_uploaded_xorbs_becomes_a_store_file_and_reconstructs() {
    let (_dir, index) = setup();
    let (a, b) = (chunks(1, 4), chunks(50, 3));
    let ((ax, ah), (bx, bh)) = (xorb_of(&a), xorb_of(&b));
    assert!(index.put_xorb(&ax, &ah).unwrap());
    assert!(!index.put_xorb(&ax, &ah).unwrap());
    assert!(index.put_xorb(&bx, &bh).unwrap());
    let (content, f) = file_over(&a, ah, &b, bh);
    let records = index
        .put_shard(&shard_of(std::slice::from_ref(&f)))
        .unwrap();
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.size, content.len() as u64);
    let mut back = Vec::new();
    index
        .store()
        .open_file(&r.sha256)
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert_eq!(back, content);
    assert_eq!(index.xet_hash_of(&r.sha256).unwrap(), Some(f.file_hash));

    // The whole file: two terms; the served ranges hold exactly those chunks.
    let (_, rec) = index.reconstruction(&f.file_hash, None).unwrap().unwrap();
    assert_eq!(rec.terms.len(), 2);
    let mut rebuilt = Vec::new();
    for t in &rec.terms {
        let bytes = index
            .read_xorb_range(&t.xorb, t.bytes.0, t.bytes.1, 1 << 30)
            .unwrap()
            .unwrap();
        let expected = if t.xorb == ah { ah } else { bh };
        let mut at = 0;
        while at < bytes.len() {
            let len = u32::from_le_bytes([bytes[at + 1], bytes[at + 2], bytes[at + 3], 0]) as usize;
            rebuilt.extend_from_slice(&bytes[at + 8..at + 8 + len]);
            at += 8 + len;
        }
        assert_eq!(t.xorb, expected);
    }
    assert_eq!(rebuilt, content);

    // A range inside the second term starts there, at an offset into its first chunk.
    let start = (a[1].len() + a[2].len() + b[0].len() + 5) as u64;
    let (_, rec) = index
        .reconstruction(&f.file_hash, Some((start, start + 10)))
        .unwrap()
        .unwrap();
    assert_eq!(rec.terms.len(), 1);
    assert_eq!(rec.terms[0].start, 1);
    assert_eq!(rec.offset_into_first_range, 5);
    assert!(index.store().fsck(|_| {}).unwrap().is_clean());
}

#[test]
fn bad_shards_are_refused_and_record_nothing() {
    let (_dir, index) = setup();
    let (a, b) = (chunks(1, 4), chunks(50, 3));
    let ((ax, ah), (_bx, bh)) = (xorb_of(&a), xorb_of(&b));
    index.put_xorb(&ax, &ah).unwrap();
    let (_, f) = file_over(&a, ah, &b, bh);
    // `b` was never uploaded.
    let e = index
        .put_shard(&shard_of(std::slice::from_ref(&f)))
        .unwrap_err();
    assert!(e.to_string().contains("never uploaded"), "{e}");
    assert_eq!(index.file(&f.file_hash).unwrap(), None);

    let (bx, bh) = xorb_of(&b);
    index.put_xorb(&bx, &bh).unwrap();
    let mut wrong_sha = f.clone();
    wrong_sha.sha256 = Some([0; 32]);
    let e = index.put_shard(&shard_of(&[wrong_sha])).unwrap_err();
    assert!(e.is_client_error(), "{e}");
    let mut wrong_hash = f.clone();
    wrong_hash.file_hash = XetHash([5; 32]);
    assert!(matches!(
        index.put_shard(&shard_of(&[wrong_hash])),
        Err(XetError::HashMismatch { .. })
    ));
    let mut out_of_range = f.clone();
    out_of_range.segments[1].end = 9;
    assert!(index.put_shard(&shard_of(&[out_of_range])).is_err());
    assert_eq!(index.file(&f.file_hash).unwrap(), None);
    assert!(index.store().fsck(|_| {}).unwrap().is_clean());
}

/// A verified xorb is stored with its own chunks: the store object's manifest lists exactly
/// the xorb's chunk boundaries with the ids the check computed (no chunker pass, no second
/// hash), its SHA-256 is the bytes', fsck finds every id right, and a file composed of whole
/// chunks of it stores no new chunk. Chunks of the wrong length or out of bounds are refused
/// and keep nothing.
#[test]
fn a_verified_xorb_keeps_its_chunks_and_ids_in_the_store() {
    let (_dir, index) = setup();
    // Sizes around the store chunker's bounds: its CDC would cut these elsewhere.
    let a: Vec<Vec<u8>> = [9000usize, 131_072, 70_000, 1]
        .iter()
        .enumerate()
        .map(|(i, n)| (0..*n).map(|j| (j * 31 + i * 7) as u8).collect())
        .collect();
    let (ax, ah) = xorb_of(&a);
    let v = xorb::verify_xorb(ax.clone(), &ah).unwrap();
    assert_eq!(v.chunks().len(), 4);
    assert!(index.put_verified_xorb(&v).unwrap());
    assert!(!index.put_verified_xorb(&v).unwrap());
    let record = index.xorb(&ah).unwrap().unwrap();
    let (_, manifest) = index.store().manifest(&record.sha256).unwrap();
    let expected: Vec<hub_store::ChunkRef> = a
        .iter()
        .map(|c| hub_store::ChunkRef {
            id: hub_store::Hash::of(c),
            len: c.len() as u32,
        })
        .collect();
    assert_eq!(manifest.chunks, expected);
    let data: Vec<u8> = a.concat();
    assert_eq!(
        record.sha256.0,
        <[u8; 32]>::from(sha2::Sha256::digest(&data))
    );
    assert!(index.store().fsck(|_| {}).unwrap().is_clean());

    // A file of chunks 1..3: composed of whole stored chunks, so no chunk is added.
    let chunks_before = index.store().stats().unwrap().chunks;
    let part = &a[1..3];
    let hashes: Vec<(XetHash, u64)> = part
        .iter()
        .map(|c| (chunk_hash(c), c.len() as u64))
        .collect();
    let f = ShardFile {
        file_hash: file_hash(&hashes),
        segments: vec![Segment {
            xorb: ah,
            unpacked_bytes: part.iter().map(|c| c.len() as u32).sum(),
            start: 1,
            end: 3,
        }],
        sha256: Some(sha2::Sha256::digest(part.concat()).into()),
    };
    index
        .put_shard(&shard_of(std::slice::from_ref(&f)))
        .unwrap();
    assert_eq!(index.store().stats().unwrap().chunks, chunks_before);

    // The store refuses chunk lists it could not keep, and chunks that are not their length.
    let files = index.store().files().unwrap().len();
    let refs = |len| {
        vec![hub_store::ChunkRef {
            id: hub_store::Hash::of(b"x"),
            len,
        }]
    };
    let one = || std::iter::once(Ok(hub_store::VerifiedChunk::Bytes(b"xy".to_vec())));
    for len in [0, 128 * 1024 + 1, 1] {
        assert!(matches!(
            index.store().import_chunks(refs(len), one()),
            Err(StoreError::ChunkLen { .. })
        ));
    }
    assert_eq!(index.store().files().unwrap().len(), files);
    assert!(index.store().fsck(|_| {}).unwrap().is_clean());

    // An empty chunk is malformed.
    let mut empty = Vec::new();
    xorb::write_uncompressed_chunk(&mut empty, b"");
    let eh = xorb_hash(&[(chunk_hash(b""), 0)]);
    assert!(matches!(
        xorb::verify_xorb(empty, &eh),
        Err(XetError::Malformed(_))
    ));
}

/// Global dedup: a file's first chunk finds the file, with the owners recorded for it; the
/// answer lists its xorbs with exactly the file's chunks, keyed, and hides the other chunks
/// of those xorbs (zero hash, no length) at their positions.
#[test]
fn global_dedup_reveals_exactly_the_chunks_of_the_files_given() {
    let (_dir, index) = setup();
    let (a, b) = (chunks(1, 4), chunks(50, 3));
    let ((ax, ah), (bx, bh)) = (xorb_of(&a), xorb_of(&b));
    index.put_xorb(&ax, &ah).unwrap();
    index.put_xorb(&bx, &bh).unwrap();
    let (_, f) = file_over(&a, ah, &b, bh);
    index
        .put_shard(&shard_of(std::slice::from_ref(&f)))
        .unwrap();
    let first = chunk_hash(&a[1]);
    assert!(index.dedup_candidates(&first).unwrap()[0].1.is_empty());
    index.add_owner(&[f.file_hash], "model/alice/base").unwrap();
    let found = index.dedup_candidates(&first).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].0.file_hash, f.file_hash);
    assert_eq!(found[0].1, ["model/alice/base"]);
    // Chunks that are neither a file's first nor eligible are not indexed.
    for c in [&a[0], &a[2], &b[1]] {
        let h = chunk_hash(c);
        if !dedup::eligible(&h) {
            assert!(index.dedup_candidates(&h).unwrap().is_empty());
        }
    }

    let key = [7u8; 32];
    let answer = index
        .dedup_answer(&[found[0].0.clone()], &key, 1000, 4600)
        .unwrap()
        .unwrap();
    let read = dedup::parse_answer(&answer).unwrap();
    assert_eq!((read.key, read.expiry), (key, 4600));
    let listed: std::collections::BTreeMap<_, _> = read.xorbs.into_iter().collect();
    let keyed = |c: &Vec<u8>| Some(dedup::keyed(&key, &chunk_hash(c)));
    assert_eq!(listed[&ah], [None, keyed(&a[1]), keyed(&a[2]), None]);
    assert_eq!(listed[&bh], b.iter().map(keyed).collect::<Vec<_>>());
    // No raw chunk hash appears anywhere in the answer.
    for c in a.iter().chain(&b) {
        let raw = chunk_hash(c).0;
        assert!(!answer.windows(32).any(|w| w == raw));
    }
    assert_eq!(index.dedup_answer(&[], &key, 1000, 4600).unwrap(), None);
}

proptest::proptest! {
    /// Bytes from the network never panic a decoder.
    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..4096)) {
        let _ = lz4::decompress_frame(&bytes, 1 << 20);
        let _ = xorb::parse_xorb(&bytes, &XetHash::default());
        let _ = shard::parse_shard(&bytes);
        let mut framed = 0x184D_2204u32.to_le_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        let _ = lz4::decompress_frame(&framed, 1 << 20);
        let mut tagged = shard::tests::shard_of(&[]);
        tagged.truncate(48);
        tagged.extend_from_slice(&bytes);
        let _ = shard::parse_shard(&tagged);
        let _ = dedup::parse_answer(&bytes);
    }
}
