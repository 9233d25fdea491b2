//! Import, read back, ranges, dedup and tensor-aware chunking through the public API.

use crate::util::{gguf, noise, safetensors, sha256};
use hub_store::{AsyncStore, Hash, Manifest, Sha256, Store, StoreError};
use proptest::prelude::*;
use std::io::{Read, Seek, SeekFrom};

fn read_all(store: &Store, sha: &Sha256) -> Vec<u8> {
    let mut out = Vec::new();
    store.open_file(sha).unwrap().read_to_end(&mut out).unwrap();
    out
}

#[test]
fn import_read_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for (seed, len) in [
        (1, 0),
        (2, 1),
        (3, 8191),
        (4, (1 << 20) + 123),
        (5, 5 << 20),
    ] {
        let data = noise(seed, len);
        let info = store.import_reader(&data[..]).unwrap();
        assert_eq!(info.size, len as u64);
        assert_eq!(info.sha256, sha256(&data));
        assert!(store.has(&info.sha256).unwrap());
        let (mid, manifest) = store.manifest(&info.sha256).unwrap();
        // The BLAKE3 field is derived from the chunk list, not a second pass over the bytes.
        assert_eq!(info.blake3, Manifest::chunk_list_hash(&manifest.chunks));
        assert_eq!(mid, info.manifest_id);
        assert_eq!(manifest.chunks.len(), info.chunks);
        assert_eq!(store.manifest_by_id(&mid).unwrap(), Some(manifest));
        assert_eq!(read_all(&store, &info.sha256), data);
    }
    assert!(!store.has(&Sha256([0; 32])).unwrap());
    assert_eq!(store.manifest_by_id(&Hash([0; 32])).unwrap(), None);
    assert!(matches!(
        store.open_file(&Sha256([0; 32])),
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(store.files().unwrap().len(), 5);
}

#[test]
fn seek_and_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let data = noise(9, 3 << 20);
    let info = store.import_reader(&data[..]).unwrap();
    let mut r = store.open_file(&info.sha256).unwrap();
    assert_eq!(r.len(), data.len() as u64);
    let mut x = 12345u64;
    for _ in 0..200 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let off = (x >> 20) as usize % data.len();
        let len = (x >> 7) as usize % 300_000;
        let got = r.read_range(off as u64, len).unwrap();
        assert_eq!(got, &data[off..(off + len).min(data.len())]);
    }
    assert_eq!(r.seek(SeekFrom::End(-10)).unwrap(), data.len() as u64 - 10);
    let mut tail = Vec::new();
    r.read_to_end(&mut tail).unwrap();
    assert_eq!(tail, &data[data.len() - 10..]);
    assert!(r.seek(SeekFrom::Current(-(data.len() as i64) - 1)).is_err());
    // Past the end reads nothing.
    r.seek(SeekFrom::Start(data.len() as u64 + 5)).unwrap();
    assert_eq!(r.read(&mut [0u8; 10]).unwrap(), 0);
    // Small reads walk chunk by chunk through the cache.
    r.seek(SeekFrom::Start(0)).unwrap();
    let mut small = vec![0u8; 1000];
    r.read_exact(&mut small).unwrap();
    assert_eq!(small, &data[..1000]);
}

#[test]
fn dedup_and_export() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let a = noise(11, 4 << 20);
    let first = store.import_reader(&a[..]).unwrap();
    assert_eq!(first.new_bytes, a.len() as u64);
    // The same file again stores nothing new.
    let again = store.import_reader(&a[..]).unwrap();
    assert_eq!(again.new_bytes, 0);
    assert_eq!(again.manifest_id, first.manifest_id);
    // A prefix edit stores only the chunks around the edit.
    let mut b = b"a small edit at the front".to_vec();
    b.extend_from_slice(&a[1000..]);
    let edited = store.import_reader(&b[..]).unwrap();
    assert!(edited.new_bytes < 400 * 1024, "{}", edited.new_bytes);
    let stats = store.stats().unwrap();
    assert_eq!(stats.files, 2);
    assert!(stats.dedup_ratio > 1.8, "{stats:?}");

    let path = dir.path().join("out.bin");
    assert_eq!(store.export(&edited.sha256, &path).unwrap(), b.len() as u64);
    assert_eq!(std::fs::read(&path).unwrap(), b);
    let via_path = store.import_path(&path).unwrap();
    assert_eq!(via_path.sha256, edited.sha256);
}

#[test]
fn reopen_keeps_files_and_drops_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let data = noise(21, 300_000);
    let sha = {
        let store = Store::open(dir.path()).unwrap();
        store.import_reader(&data[..]).unwrap().sha256
    };
    let orphan = dir.path().join("blocks/ab").join("ab".repeat(32));
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, b"junk").unwrap();
    std::fs::write(dir.path().join("tmp/1-1.blk"), b"junk").unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert!(!orphan.exists());
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0
    );
    assert_eq!(read_all(&store, &sha), data);
    assert!(store.fsck(|_| {}).unwrap().is_clean());
}

#[test]
fn hostile_header_falls_back_to_plain_cdc() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for header_len in [1u64 << 63, u64::MAX, 200_000_000, 5_000_000] {
        let mut data = header_len.to_le_bytes().to_vec();
        data.push(b'{');
        data.extend_from_slice(&noise(header_len, 500_000));
        let info = store.import_reader(&data[..]).unwrap();
        assert!(!info.tensor_aware);
        assert_eq!(read_all(&store, &info.sha256), data);
    }
}

#[test]
fn gguf_tensors_dedup_across_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let t: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| {
            (
                format!("blk.{i}.ffn_up.weight"),
                noise(100 + i, 200_000 + i as usize * 999),
            )
        })
        .collect();
    let a = store.import_reader(&gguf(&t)[..]).unwrap();
    assert!(a.tensor_aware);
    // Renamed tensors and one changed: only the header and the changed tensor are new.
    let mut t2: Vec<(String, Vec<u8>)> = t
        .iter()
        .map(|(n, d)| (format!("model.{n}"), d.clone()))
        .collect();
    t2[2].1 = noise(999, t2[2].1.len());
    let file = gguf(&t2);
    let b = store.import_reader(&file[..]).unwrap();
    assert!(b.tensor_aware);
    assert!(
        b.new_bytes <= t2[2].1.len() as u64 + 4096,
        "{}",
        b.new_bytes
    );
    assert_eq!(read_all(&store, &b.sha256), file);
}

/// A reader that fails after `left` bytes.
struct Failing {
    data: Vec<u8>,
    left: usize,
}

impl Read for Failing {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::other("disk on fire"));
        }
        let n = buf.len().min(self.left);
        let start = self.data.len() - self.left;
        buf[..n].copy_from_slice(&self.data[start..start + n]);
        self.left -= n;
        Ok(n)
    }
}

#[test]
fn failed_import_leaves_nothing_visible() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // Large enough to seal a full 64 MiB block before the failure.
    let data = noise(41, 70 << 20);
    let err = store
        .import_reader(Failing {
            data: data.clone(),
            left: 69 << 20,
        })
        .unwrap_err();
    assert!(matches!(err, StoreError::Source(_)), "{err:?}");
    assert!(store.files().unwrap().is_empty());
    assert_eq!(store.stats().unwrap().blocks, 0);
    assert!(store.fsck(|_| {}).unwrap().is_clean());
    // The same data imports fine afterwards.
    let info = store.import_reader(&data[..]).unwrap();
    assert_eq!(info.sha256, sha256(&data));
    assert!(store.fsck(|_| {}).unwrap().is_clean());
}

#[tokio::test]
async fn async_facade() {
    let dir = tempfile::tempdir().unwrap();
    let store = AsyncStore::new(Store::open(dir.path()).unwrap());
    let data = noise(31, 1 << 20);
    let info = store
        .import_reader(std::io::Cursor::new(data.clone()))
        .await
        .unwrap();
    assert!(store.has(info.sha256).await.unwrap());
    let range = store.read_range(info.sha256, 1000, 5000).await.unwrap();
    assert_eq!(range, &data[1000..6000]);
    assert!(store.fsck().await.unwrap().is_clean());
    assert_eq!(store.stats().await.unwrap().files, 1);
    assert_eq!(store.gc(vec![]).await.unwrap().files_removed, 1);
}

/// Offsets where each chunk of a stored file starts, and the chunk ids.
fn layout(store: &Store, sha: &Sha256) -> Vec<(u64, Hash)> {
    let (_, m) = store.manifest(sha).unwrap();
    let mut pos = 0;
    m.chunks
        .iter()
        .map(|c| {
            let start = pos;
            pos += u64::from(c.len);
            (start, c.id)
        })
        .collect()
}

/// Chunk ids covering `[start, end)`, asserting that both ends are chunk boundaries.
fn tensor_chunks(layout: &[(u64, Hash)], size: u64, start: u64, end: u64) -> Vec<Hash> {
    let starts: Vec<u64> = layout.iter().map(|c| c.0).collect();
    assert!(
        start == size || starts.contains(&start),
        "no cut at tensor start {start}"
    );
    assert!(
        end == size || starts.contains(&end),
        "no cut at tensor end {end}"
    );
    layout
        .iter()
        .filter(|c| c.0 >= start && c.0 < end)
        .map(|c| c.1)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6))]

    /// Tensor-aligned cuts: every tensor boundary is a chunk boundary, and a tensor's chunks
    /// are the same whatever its name, its position in the file or its neighbours.
    #[test]
    fn safetensors_tensor_aligned(
        sizes in proptest::collection::vec(0usize..300_000, 1..8),
        seed in any::<u64>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tensors: Vec<(String, Vec<u8>)> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (format!("layer.{i}.weight"), noise(seed ^ i as u64, n)))
            .collect();
        // A variant with every tensor renamed, laid out in reverse, plus one new tensor.
        let mut other: Vec<(String, Vec<u8>)> = tensors
            .iter()
            .rev()
            .map(|(n, d)| (format!("model.{n}.renamed"), d.clone()))
            .collect();
        other.insert(1, ("extra".into(), noise(seed.wrapping_add(99), 77_777)));

        let mut maps = Vec::new();
        for t in [&tensors, &other] {
            let file = safetensors(t);
            let info = store.import_reader(&file[..]).unwrap();
            prop_assert!(info.tensor_aware);
            let mut back = Vec::new();
            store.open_file(&info.sha256).unwrap().read_to_end(&mut back).unwrap();
            prop_assert_eq!(&back, &file);
            let header = u64::from_le_bytes(file[..8].try_into().unwrap()) + 8;
            let lay = layout(&store, &info.sha256);
            let mut map = std::collections::HashMap::new();
            let mut pos = header;
            for (name, data) in t.iter() {
                let end = pos + data.len() as u64;
                let ids = tensor_chunks(&lay, file.len() as u64, pos, end);
                map.insert(name.trim_start_matches("model.").trim_end_matches(".renamed").to_string(), ids);
                pos = end;
            }
            maps.push(map);
        }
        for (name, ids) in &maps[0] {
            prop_assert_eq!(Some(ids), maps[1].get(name), "tensor {} chunked differently", name);
        }
    }

    /// Reassembly is the identity, for any content and size.
    #[test]
    fn reassembly_is_identity(seed in any::<u64>(), len in 0usize..700_000, period in 1usize..5000) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // Mix random and repetitive content (repeats exercise dedup inside one file).
        let mut data = noise(seed, len);
        for i in (0..len).step_by(3) {
            data[i] = (i % period) as u8;
        }
        let info = store.import_reader(&data[..]).unwrap();
        prop_assert_eq!(read_all(&store, &info.sha256), data);
    }
}

#[test]
fn chunks_are_looked_up_and_read_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let data = noise(11, 3 << 20);
    let info = store.import_reader(&data[..]).unwrap();
    let (_, manifest) = store.manifest(&info.sha256).unwrap();
    let mut ids: Vec<Hash> = manifest.chunks.iter().map(|c| c.id).collect();
    ids.push(Hash::of(b"never stored"));
    let held = store.has_chunks(&ids).unwrap();
    assert_eq!(held.len(), ids.len());
    assert!(held[..held.len() - 1].iter().all(|h| *h));
    assert!(!held[held.len() - 1]);
    let mut rebuilt = Vec::new();
    for c in &manifest.chunks {
        let chunk = store.read_chunk(&c.id).unwrap().unwrap();
        assert_eq!(chunk.len(), c.len as usize);
        rebuilt.extend(chunk);
    }
    assert_eq!(rebuilt, data);
    assert_eq!(store.read_chunk(&Hash::of(b"never stored")).unwrap(), None);
}

#[test]
fn chunks_are_read_by_id_in_batches_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let data = noise(12, 3 << 20);
    let info = store.import_reader(&data[..]).unwrap();
    assert_eq!(
        store.manifest_id(&info.sha256).unwrap(),
        Some(info.manifest_id)
    );
    assert_eq!(store.manifest_id(&Sha256([7; 32])).unwrap(), None);
    let (_, manifest) = store.manifest(&info.sha256).unwrap();
    let mut ids: Vec<Hash> = manifest.chunks.iter().map(|c| c.id).collect();
    ids.insert(1, Hash::of(b"never stored"));
    let got = store.read_chunks(&ids).unwrap();
    assert_eq!(got.len(), ids.len());
    assert_eq!(got[1], None);
    let rebuilt: Vec<u8> = got
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .flat_map(|(_, c)| c.clone().unwrap())
        .collect();
    assert_eq!(rebuilt, data);
    assert!(store.read_chunks(&[]).unwrap().is_empty());

    // A flipped byte in the block is an error, never wrong bytes.
    let sub = std::fs::read_dir(dir.path().join("blocks"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let block = std::fs::read_dir(sub.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&block).unwrap();
    bytes[manifest.chunks[0].len as usize / 2] ^= 1;
    std::fs::write(&block, &bytes).unwrap();
    assert!(matches!(
        store.read_chunks(&ids[..1]),
        Err(StoreError::Corrupt { .. })
    ));
}
