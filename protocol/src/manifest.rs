//! File manifests and the content ids they are made of.
//!
//! A large file is stored as an ordered list of content-defined chunks. Its [`Manifest`] lists
//! `(chunk id, length)` pairs plus the file's SHA-256 (the git-lfs / Hub name), a BLAKE3 and
//! its size. The BLAKE3 field is derived from the chunk list ([`Manifest::chunk_list_hash`]):
//! hashing the whole file with BLAKE3 a second time, beside its chunks, bought nothing no
//! reader used (ADR 0001, "Hashing"). Manifests written before that rule carry the BLAKE3 of
//! the whole file there; both decode alike, and the field is bound by the manifest id.
//! The manifest id is the BLAKE3 of its canonical encoding, so signed refs can bind
//! `sha256 → manifest id` and a downloader can verify every chunk from the first byte.
//!
//! The encoding is fixed-width and little-endian, with a leading version byte:
//!
//! ```text
//! u8 version (= 1) | u64 size | [32] sha256 | [32] blake3 | u32 n | n × ([32] chunk id | u32 len)
//! ```
//!
//! It is canonical by construction (no optional fields, no maps), so equal manifests encode to
//! equal bytes. [`Manifest::decode`] never panics and never allocates more than the input
//! justifies: the chunk count is checked against the remaining length before anything is
//! allocated, and lengths must be non-zero, at most [`MAX_CHUNK_LEN`] and sum to the size.
//!
//! ```
//! use hub_protocol::manifest::{ChunkRef, Hash, Manifest, Sha256};
//!
//! let chunk = b"hello";
//! let m = Manifest {
//!     size: 5,
//!     sha256: Sha256([0; 32]),
//!     blake3: Hash::of(chunk),
//!     chunks: vec![ChunkRef { id: Hash::of(chunk), len: 5 }],
//! };
//! let bytes = m.encode();
//! assert_eq!(Manifest::decode(&bytes).unwrap(), m);
//! assert_eq!(m.id(), Hash::of(&bytes));
//! ```

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Version byte of the manifest encoding this crate writes and reads.
pub const MANIFEST_VERSION: u8 = 1;

/// Largest chunk a manifest may reference (the chunker's upper bound).
pub const MAX_CHUNK_LEN: u32 = 128 * 1024;

const HEADER_LEN: usize = 1 + 8 + 32 + 32 + 4;
const ENTRY_LEN: usize = 32 + 4;

/// A BLAKE3 hash: the id of a chunk, a block, a manifest, or a whole file's BLAKE3.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash(pub [u8; 32]);

/// A SHA-256 digest: how git-lfs and the Hub name a large file.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256(pub [u8; 32]);

impl Hash {
    /// The BLAKE3 hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(*blake3::hash(bytes).as_bytes())
    }
}

/// Error parsing a hex digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid hex digest: expected 64 hex digits")]
pub struct ParseHashError;

fn write_hex(bytes: &[u8; 32], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

fn parse_hex(s: &str) -> Result<[u8; 32], ParseHashError> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return Err(ParseHashError);
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(ParseHashError),
    };
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nibble(s[2 * i])? << 4) | nibble(s[2 * i + 1])?;
    }
    Ok(out)
}

macro_rules! digest_impls {
    ($t:ident) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex(&self.0, f)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($t), "("))?;
                write_hex(&self.0, f)?;
                write!(f, ")")
            }
        }
        impl FromStr for $t {
            type Err = ParseHashError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_hex(s).map(Self)
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
digest_impls!(Hash);
digest_impls!(Sha256);

/// One chunk of a file: its BLAKE3 id and length in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef {
    pub id: Hash,
    pub len: u32,
}

/// A stored file: its chunks in order, plus its whole-file digests and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub size: u64,
    pub sha256: Sha256,
    /// [`Manifest::chunk_list_hash`] of `chunks` (the BLAKE3 of the whole file in manifests
    /// written before that rule).
    pub blake3: Hash,
    pub chunks: Vec<ChunkRef>,
}

/// Why bytes are not a valid manifest encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    #[error("manifest is {len} bytes, shorter than its {HEADER_LEN}-byte header")]
    Truncated { len: usize },
    #[error("unsupported manifest version {version}")]
    Version { version: u8 },
    #[error("manifest declares {count} chunks but carries {body} bytes of entries")]
    Length { count: u32, body: usize },
    #[error("chunk {index} has invalid length {len}")]
    ChunkLen { index: usize, len: u32 },
    #[error("chunk lengths sum to {sum}, not the declared size {size}")]
    Size { sum: u64, size: u64 },
}

impl Manifest {
    /// What a new manifest carries in its `blake3` field: the BLAKE3 of the chunk list, each
    /// entry encoded as in the manifest (`[32] id | u32 len`). Costs 36 bytes of hashing per
    /// chunk, where a whole-file BLAKE3 cost a pass over every byte.
    pub fn chunk_list_hash(chunks: &[ChunkRef]) -> Hash {
        let mut h = blake3::Hasher::new();
        for c in chunks {
            h.update(&c.id.0);
            h.update(&c.len.to_le_bytes());
        }
        Hash(*h.finalize().as_bytes())
    }

    /// The canonical encoding (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + ENTRY_LEN * self.chunks.len());
        out.push(MANIFEST_VERSION);
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.sha256.0);
        out.extend_from_slice(&self.blake3.0);
        // A manifest never holds 2^32 chunks: that would be >= 32 TiB of 8 KiB chunks.
        out.extend_from_slice(&(self.chunks.len() as u32).to_le_bytes());
        for c in &self.chunks {
            out.extend_from_slice(&c.id.0);
            out.extend_from_slice(&c.len.to_le_bytes());
        }
        out
    }

    /// The manifest id: BLAKE3 of [`Manifest::encode`].
    pub fn id(&self) -> Hash {
        Hash::of(&self.encode())
    }

    /// Decodes and validates a canonical encoding. Never panics on any input.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        let Some((header, body)) = bytes.split_first_chunk::<HEADER_LEN>() else {
            return Err(ManifestError::Truncated { len: bytes.len() });
        };
        let version = header[0];
        if version != MANIFEST_VERSION {
            return Err(ManifestError::Version { version });
        }
        let size = u64::from_le_bytes(array(&header[1..9]));
        let sha256 = Sha256(array(&header[9..41]));
        let blake3 = Hash(array(&header[41..73]));
        let count = u32::from_le_bytes(array(&header[73..77]));
        if body.len() % ENTRY_LEN != 0 || body.len() / ENTRY_LEN != count as usize {
            return Err(ManifestError::Length {
                count,
                body: body.len(),
            });
        }
        let mut chunks = Vec::with_capacity(count as usize);
        let mut sum = 0u64;
        for (index, entry) in body.chunks_exact(ENTRY_LEN).enumerate() {
            let id = Hash(array(&entry[..32]));
            let len = u32::from_le_bytes(array(&entry[32..]));
            if len == 0 || len > MAX_CHUNK_LEN {
                return Err(ManifestError::ChunkLen { index, len });
            }
            sum += u64::from(len);
            chunks.push(ChunkRef { id, len });
        }
        if sum != size {
            return Err(ManifestError::Size { sum, size });
        }
        Ok(Self {
            size,
            sha256,
            blake3,
            chunks,
        })
    }
}

/// Copies a slice whose length the caller has already fixed into an array.
fn array<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(s);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn manifest(lens: &[u32]) -> Manifest {
        Manifest {
            size: lens.iter().map(|&l| u64::from(l)).sum(),
            sha256: Sha256([7; 32]),
            blake3: Hash([9; 32]),
            chunks: lens
                .iter()
                .enumerate()
                .map(|(i, &len)| ChunkRef {
                    id: Hash([i as u8; 32]),
                    len,
                })
                .collect(),
        }
    }

    #[test]
    fn round_trip_and_id() {
        let m = manifest(&[1, MAX_CHUNK_LEN, 300]);
        let bytes = m.encode();
        assert_eq!(bytes[0], MANIFEST_VERSION);
        assert_eq!(bytes.len(), HEADER_LEN + 3 * ENTRY_LEN);
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        assert_eq!(m.id(), Hash::of(&bytes));
    }

    /// A count the body does not back is refused before anything is allocated for it.
    #[test]
    fn a_huge_declared_count_is_refused() {
        let mut v = manifest(&[10]).encode();
        v[73..77].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Manifest::decode(&v),
            Err(ManifestError::Length {
                count: u32::MAX,
                ..
            })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any declared count and size over any body: an error or a manifest that re-encodes
        /// to the same bytes.
        #[test]
        fn declared_counts_and_sizes(
            count in prop_oneof![0u32..4, Just(u32::MAX), any::<u32>()],
            size in prop_oneof![0u64..100, Just(u64::MAX), any::<u64>()],
            body in proptest::collection::vec(any::<u8>(), 0..(3 * ENTRY_LEN)),
        ) {
            let mut v = manifest(&[]).encode();
            v[1..9].copy_from_slice(&size.to_le_bytes());
            v[73..77].copy_from_slice(&count.to_le_bytes());
            v.extend(body);
            if let Ok(m) = Manifest::decode(&v) {
                prop_assert_eq!(m.encode(), v);
            }
        }
    }

    #[test]
    fn empty_file_is_valid() {
        let m = manifest(&[]);
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn rejects_bad_inputs() {
        let good = manifest(&[10, 20]).encode();
        let mut v = good.clone();
        v[0] = 2;
        assert!(matches!(
            Manifest::decode(&v),
            Err(ManifestError::Version { version: 2 })
        ));
        assert!(Manifest::decode(&good[..good.len() - 1]).is_err());
        let mut huge = good.clone();
        huge[73..77].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Manifest::decode(&huge),
            Err(ManifestError::Length { .. })
        ));
        let mut size = good.clone();
        size[1..9].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            Manifest::decode(&size),
            Err(ManifestError::Size { .. })
        ));
        assert!(matches!(
            Manifest::decode(&manifest(&[0]).encode()),
            Err(ManifestError::ChunkLen { .. })
        ));
        assert!(Manifest::decode(&manifest(&[MAX_CHUNK_LEN + 1]).encode()).is_err());
    }

    #[test]
    fn hex_round_trip() {
        let h = Hash::of(b"x");
        let s = h.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s.parse::<Hash>().unwrap(), h);
        assert_eq!(serde_json::to_string(&h).unwrap(), format!("\"{s}\""));
        assert!("zz".parse::<Sha256>().is_err());
        assert!("é".repeat(32).parse::<Sha256>().is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Fuzz-style: arbitrary bytes never panic the decoder.
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Manifest::decode(&bytes);
        }

        /// Mutating a valid encoding never panics, and what decodes re-encodes identically.
        #[test]
        fn mutated_manifests(
            lens in proptest::collection::vec(1..=MAX_CHUNK_LEN, 0..8),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            cut in any::<usize>(),
        ) {
            let mut bytes = manifest(&lens).encode();
            for (pos, val) in flips {
                let n = bytes.len();
                bytes[pos % n] = val;
            }
            bytes.truncate(cut % (bytes.len() + 1) + bytes.len() / 2);
            if let Ok(m) = Manifest::decode(&bytes) {
                prop_assert_eq!(m.encode(), bytes);
            }
        }
    }
}
