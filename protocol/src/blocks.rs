//! The `/hubmesh/blocks/1` request-response protocol: LFS content, verified from the first
//! byte.
//!
//! A signed ref update binds every LFS object reachable from its ref tips to a manifest id
//! (`lfs: sha256 → manifest id`, see [`crate::signed::RefUpdate`]). A seeder that lacks an
//! object asks a peer for its manifest ([`BlockRequest::Manifest`]) and accepts it only if
//! [`check_manifest`] passes: its BLAKE3 is the signed manifest id and it describes the signed
//! SHA-256 and the pointer's size. It then asks for the chunks in order, a batch at a time
//! ([`BlockRequest::Chunks`]: manifest chunk index and count), and [`check_chunks`] compares
//! every chunk with the BLAKE3 id the manifest lists before a byte of it is stored. A bad
//! chunk is caught within one chunk (at most [`MAX_CHUNK_LEN`] bytes), and the batch is asked
//! of another peer.
//!
//! The chunks themselves normally travel over the blob data plane instead (iroh QUIC with
//! iroh-blobs' verified streaming, see `hub-net`'s `blobs` module): a peer learns where
//! another's iroh endpoint listens with [`BlockRequest::Blobs`]. [`BlockRequest::Chunks`]
//! stays for peers that run without it.
//!
//! Limits: at most [`MAX_CHUNKS_PER_REQUEST`] chunks per request; a responder stops adding
//! chunks once a batch holds [`MAX_BATCH_BYTES`] (always at least one chunk), so the requester
//! asks again from where the batch ended; a manifest is at most [`MAX_MANIFEST_LEN`] bytes
//! (about 466 000 chunks, some 28 GiB at the 64 KiB average chunk). Every message is read
//! with a hard bound ([`MAX_BLOCK_REQUEST_LEN`], [`MAX_BLOCK_RESPONSE_LEN`]) before it is
//! decoded. Encodings follow [`crate::signed`]: version byte, kind byte, little-endian
//! lengths checked before allocating, no trailing bytes.
//!
//! ```
//! use hub_protocol::blocks::{BlockRequest, BlockResponse, check_chunks};
//! use hub_protocol::manifest::{ChunkRef, Hash, Manifest, Sha256};
//!
//! let request = BlockRequest::Chunks { sha256: Sha256([1; 32]), first: 0, count: 2 };
//! assert_eq!(BlockRequest::decode(&request.encode()).unwrap(), request);
//!
//! let manifest = Manifest {
//!     size: 3,
//!     sha256: Sha256([9; 32]),
//!     blake3: Hash::of(b"abc"),
//!     chunks: vec![ChunkRef { id: Hash::of(b"abc"), len: 3 }],
//! };
//! assert!(check_chunks(&manifest, 0, &[b"abc".to_vec()]).is_ok());
//! assert!(check_chunks(&manifest, 0, &[b"abd".to_vec()]).is_err());
//! ```

use crate::manifest::{Hash, MAX_CHUNK_LEN, Manifest, ManifestError, Sha256};
use crate::signed::codec::{Reader, Writer};
use crate::signed::{DecodeError, FORMAT_VERSION, kind};

/// The request-response protocol that carries manifests and chunks.
pub const BLOCKS_PROTOCOL: &str = "/hubmesh/blocks/1";
/// Most chunks one request asks for.
pub const MAX_CHUNKS_PER_REQUEST: u32 = 64;
/// A responder stops adding chunks to a batch once it holds this many bytes.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Largest manifest encoding a responder sends or a requester reads.
pub const MAX_MANIFEST_LEN: usize = 16 * 1024 * 1024;
/// Largest encoded request.
pub const MAX_BLOCK_REQUEST_LEN: usize = 2 + 1 + 32 + 4 + 4;
/// Most addresses a [`BlockResponse::Blobs`] lists.
pub const MAX_BLOB_ADDRS: usize = 8;
/// Largest encoded response (a full batch of maximal chunks, or a maximal manifest).
pub const MAX_BLOCK_RESPONSE_LEN: usize = {
    let chunks = 4 + MAX_CHUNKS_PER_REQUEST as usize * (4 + MAX_CHUNK_LEN as usize);
    let manifest = 8 + MAX_MANIFEST_LEN;
    2 + 1 + if chunks > manifest { chunks } else { manifest }
};

/// What a requester asks for. Objects are named by their SHA-256 (the LFS oid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockRequest {
    /// The manifest of the object.
    Manifest { sha256: Sha256 },
    /// Chunks `first..first + count` of the object's manifest, in order.
    Chunks {
        sha256: Sha256,
        first: u32,
        count: u32,
    },
    /// Where the peer's blob endpoint (iroh) listens.
    Blobs,
    /// Which chunks of the object the responder holds, verified: all of them when it stores
    /// the object, some while it is fetching it (swarming: a fetcher serves what it has).
    Have { sha256: Sha256 },
}

/// The answer to a [`BlockRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockResponse {
    /// The canonical manifest encoding ([`Manifest::encode`]).
    Manifest(Vec<u8>),
    /// Chunks from the requested index on, in order: as many as asked for, or fewer when the
    /// batch reached [`MAX_BATCH_BYTES`] or the manifest ended.
    Chunks(Vec<Vec<u8>>),
    /// The responder serves no public repo with this object.
    NotFound,
    /// The socket addresses of the responder's blob endpoint (at most [`MAX_BLOB_ADDRS`];
    /// empty when it runs without one). Its endpoint id is the responder's node key.
    Blobs(Vec<std::net::SocketAddr>),
    /// The responder failed; try another peer or later.
    Failed,
    /// The chunks the responder holds: bit `i % 8` of byte `i / 8` is chunk `i` of the
    /// manifest (at most [`MAX_HAVE_LEN`] bytes; bits past the manifest's end are zero).
    Have(Vec<u8>),
    /// The answer to `Have` of a responder that is fetching the object: `held` as in
    /// [`BlockResponse::Have`], and `coming`, the chunks it has asked a peer for and not
    /// received yet (same layout and bound). Requesters use `coming` to leave those chunks to
    /// it rather than ask the origin for them a second time (ADR 0016); it is a hint, never a
    /// promise: only `held` chunks are requested from the responder.
    Fetching { held: Vec<u8>, coming: Vec<u8> },
}

/// Largest bitmap a [`BlockResponse::Have`] carries: one bit per chunk of the largest
/// manifest (each chunk takes more than 32 bytes of a manifest's encoding).
pub const MAX_HAVE_LEN: usize = MAX_MANIFEST_LEN / 32 / 8;

impl BlockRequest {
    /// The object asked about (`None` for [`BlockRequest::Blobs`]).
    pub fn sha256(&self) -> Option<&Sha256> {
        match self {
            Self::Manifest { sha256 } | Self::Chunks { sha256, .. } | Self::Have { sha256 } => {
                Some(sha256)
            }
            Self::Blobs => None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(MAX_BLOCK_REQUEST_LEN);
        w.u8(FORMAT_VERSION);
        w.u8(kind::BLOCK_REQUEST);
        match self {
            Self::Manifest { sha256 } => {
                w.u8(0);
                w.bytes(&sha256.0);
            }
            Self::Chunks {
                sha256,
                first,
                count,
            } => {
                w.u8(1);
                w.bytes(&sha256.0);
                w.u32(*first);
                w.u32(*count);
            }
            Self::Blobs => w.u8(2),
            Self::Have { sha256 } => {
                w.u8(3);
                w.bytes(&sha256.0);
            }
        }
        w.finish()
    }

    /// Decodes a request; anything malformed (a count of 0 or over
    /// [`MAX_CHUNKS_PER_REQUEST`] included) is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_BLOCK_REQUEST_LEN {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: MAX_BLOCK_REQUEST_LEN,
            });
        }
        let mut r = Reader::new(bytes);
        r.header(kind::BLOCK_REQUEST)?;
        let request = match r.u8()? {
            0 => Self::Manifest {
                sha256: Sha256(r.array()?),
            },
            1 => {
                let sha256 = Sha256(r.array()?);
                let first = r.u32()?;
                let count = r.u32()?;
                if count == 0 || count > MAX_CHUNKS_PER_REQUEST {
                    return Err(DecodeError::NotCanonical("chunk count"));
                }
                Self::Chunks {
                    sha256,
                    first,
                    count,
                }
            }
            2 => Self::Blobs,
            3 => Self::Have {
                sha256: Sha256(r.array()?),
            },
            _ => return Err(DecodeError::NotCanonical("unknown block request")),
        };
        r.end()?;
        Ok(request)
    }
}

impl BlockResponse {
    pub fn encode(&self) -> Vec<u8> {
        let len = match self {
            Self::Manifest(m) => 8 + m.len(),
            Self::Chunks(c) => 4 + c.iter().map(|c| 4 + c.len()).sum::<usize>(),
            Self::Blobs(addrs) => 1 + addrs.len() * 19,
            Self::Have(bits) => 4 + bits.len(),
            Self::Fetching { held, coming } => 8 + held.len() + coming.len(),
            _ => 0,
        };
        let mut w = Writer::with_capacity(3 + len);
        w.u8(FORMAT_VERSION);
        w.u8(kind::BLOCK_RESPONSE);
        match self {
            Self::Manifest(manifest) => {
                w.u8(0);
                w.u64(manifest.len() as u64);
                w.bytes(manifest);
            }
            Self::Chunks(chunks) => {
                w.u8(1);
                w.u32(chunks.len() as u32);
                for chunk in chunks {
                    w.u32(chunk.len() as u32);
                    w.bytes(chunk);
                }
            }
            Self::NotFound => w.u8(2),
            Self::Failed => w.u8(3),
            Self::Blobs(addrs) => {
                w.u8(4);
                let addrs = &addrs[..addrs.len().min(MAX_BLOB_ADDRS)];
                w.u8(addrs.len() as u8);
                for addr in addrs {
                    match addr.ip() {
                        std::net::IpAddr::V4(ip) => {
                            w.u8(4);
                            w.bytes(&ip.octets());
                        }
                        std::net::IpAddr::V6(ip) => {
                            w.u8(6);
                            w.bytes(&ip.octets());
                        }
                    }
                    w.u16(addr.port());
                }
            }
            Self::Have(bits) => {
                w.u8(5);
                w.u32(bits.len() as u32);
                w.bytes(bits);
            }
            Self::Fetching { held, coming } => {
                w.u8(6);
                for bits in [held, coming] {
                    w.u32(bits.len() as u32);
                    w.bytes(bits);
                }
            }
        }
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_BLOCK_RESPONSE_LEN {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: MAX_BLOCK_RESPONSE_LEN,
            });
        }
        let mut r = Reader::new(bytes);
        r.header(kind::BLOCK_RESPONSE)?;
        let response = match r.u8()? {
            0 => {
                let len = usize::try_from(r.u64()?)
                    .ok()
                    .filter(|l| *l <= MAX_MANIFEST_LEN)
                    .ok_or(DecodeError::NotCanonical("manifest length"))?;
                Self::Manifest(r.take(len)?.to_vec())
            }
            1 => {
                let n = r.u32()?;
                if n == 0 || n > MAX_CHUNKS_PER_REQUEST {
                    return Err(DecodeError::NotCanonical("chunk count"));
                }
                r.expect_entries(n as usize, 5)?;
                let mut chunks = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let len = r.u32()?;
                    if len == 0 || len > MAX_CHUNK_LEN {
                        return Err(DecodeError::NotCanonical("chunk length"));
                    }
                    chunks.push(r.take(len as usize)?.to_vec());
                }
                Self::Chunks(chunks)
            }
            2 => Self::NotFound,
            3 => Self::Failed,
            4 => {
                let n = usize::from(r.u8()?);
                if n > MAX_BLOB_ADDRS {
                    return Err(DecodeError::NotCanonical("address count"));
                }
                let mut addrs = Vec::with_capacity(n);
                for _ in 0..n {
                    let ip = match r.u8()? {
                        4 => std::net::IpAddr::from(r.array::<4>()?),
                        6 => std::net::IpAddr::from(r.array::<16>()?),
                        _ => return Err(DecodeError::NotCanonical("address family")),
                    };
                    addrs.push(std::net::SocketAddr::new(ip, r.u16()?));
                }
                Self::Blobs(addrs)
            }
            5 => Self::Have(have_bitmap(&mut r)?),
            6 => {
                let held = have_bitmap(&mut r)?;
                let coming = have_bitmap(&mut r)?;
                Self::Fetching { held, coming }
            }
            _ => return Err(DecodeError::NotCanonical("unknown block response")),
        };
        r.end()?;
        Ok(response)
    }
}

/// A length-prefixed `Have` bitmap of at most [`MAX_HAVE_LEN`] bytes.
fn have_bitmap(r: &mut Reader<'_>) -> Result<Vec<u8>, DecodeError> {
    let len = r.u32()? as usize;
    if len > MAX_HAVE_LEN {
        return Err(DecodeError::NotCanonical("have bitmap length"));
    }
    Ok(r.take(len)?.to_vec())
}

/// Why a peer's manifest or chunks were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BlockMismatch {
    #[error("manifest id {actual} is not the signed {expected}")]
    ManifestId { expected: Hash, actual: Hash },
    #[error("malformed manifest")]
    Manifest(#[from] ManifestError),
    #[error("manifest describes sha256 {actual}, not the signed {expected}")]
    Sha256 { expected: Sha256, actual: Sha256 },
    #[error("manifest describes {actual} bytes, the pointer {expected}")]
    Size { expected: u64, actual: u64 },
    #[error("chunk {index} does not match its BLAKE3 id")]
    Chunk { index: u64 },
    #[error("chunks past the end of the manifest (from index {index})")]
    TooMany { index: u64 },
}

/// Accepts `bytes` as the manifest of the object `sha256` of `size` bytes only if its
/// BLAKE3 is the signed `manifest_id`, it decodes, and it describes that SHA-256 and size.
pub fn check_manifest(
    bytes: &[u8],
    manifest_id: &Hash,
    sha256: &Sha256,
    size: u64,
) -> Result<Manifest, BlockMismatch> {
    let actual = Hash::of(bytes);
    if actual != *manifest_id {
        return Err(BlockMismatch::ManifestId {
            expected: *manifest_id,
            actual,
        });
    }
    let manifest = Manifest::decode(bytes)?;
    if manifest.sha256 != *sha256 {
        return Err(BlockMismatch::Sha256 {
            expected: *sha256,
            actual: manifest.sha256,
        });
    }
    if manifest.size != size {
        return Err(BlockMismatch::Size {
            expected: size,
            actual: manifest.size,
        });
    }
    Ok(manifest)
}

/// Checks chunks `first..first + chunks.len()` of a verified manifest: each chunk's BLAKE3
/// must be the id the manifest lists at its index (which also fixes its length).
pub fn check_chunks(
    manifest: &Manifest,
    first: u64,
    chunks: &[Vec<u8>],
) -> Result<(), BlockMismatch> {
    for (i, chunk) in chunks.iter().enumerate() {
        let index = first + i as u64;
        let expected = usize::try_from(index)
            .ok()
            .and_then(|i| manifest.chunks.get(i))
            .ok_or(BlockMismatch::TooMany { index })?;
        if chunk.len() != expected.len as usize || Hash::of(chunk) != expected.id {
            return Err(BlockMismatch::Chunk { index });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ChunkRef;
    use proptest::prelude::*;

    fn manifest_of(chunks: &[&[u8]]) -> Manifest {
        let all: Vec<u8> = chunks.concat();
        Manifest {
            size: all.len() as u64,
            sha256: Sha256([9; 32]),
            blake3: Hash::of(&all),
            chunks: chunks
                .iter()
                .map(|c| ChunkRef {
                    id: Hash::of(c),
                    len: c.len() as u32,
                })
                .collect(),
        }
    }

    #[test]
    fn requests_and_responses_round_trip() {
        for request in [
            BlockRequest::Manifest {
                sha256: Sha256([3; 32]),
            },
            BlockRequest::Chunks {
                sha256: Sha256([4; 32]),
                first: 7,
                count: MAX_CHUNKS_PER_REQUEST,
            },
            BlockRequest::Blobs,
            BlockRequest::Have {
                sha256: Sha256([5; 32]),
            },
        ] {
            let bytes = request.encode();
            assert!(bytes.len() <= MAX_BLOCK_REQUEST_LEN);
            assert_eq!(BlockRequest::decode(&bytes).unwrap(), request);
        }
        for response in [
            BlockResponse::Manifest(manifest_of(&[b"ab"]).encode()),
            BlockResponse::Chunks(vec![b"ab".to_vec(), vec![0; MAX_CHUNK_LEN as usize]]),
            BlockResponse::NotFound,
            BlockResponse::Failed,
            BlockResponse::Blobs(Vec::new()),
            BlockResponse::Blobs(vec![
                "127.0.0.1:4433".parse().unwrap(),
                "[::1]:9".parse().unwrap(),
            ]),
            BlockResponse::Have(Vec::new()),
            BlockResponse::Have(vec![0b1010_0101; MAX_HAVE_LEN]),
            BlockResponse::Fetching {
                held: Vec::new(),
                coming: Vec::new(),
            },
            BlockResponse::Fetching {
                held: vec![0b0000_1111; 3],
                coming: vec![0b1111_0000; MAX_HAVE_LEN],
            },
        ] {
            assert_eq!(BlockResponse::decode(&response.encode()).unwrap(), response);
        }
        let full = BlockResponse::Chunks(vec![
            vec![1; MAX_CHUNK_LEN as usize];
            MAX_CHUNKS_PER_REQUEST as usize
        ]);
        assert!(full.encode().len() <= MAX_BLOCK_RESPONSE_LEN);
    }

    #[test]
    fn hostile_messages_are_errors() {
        let zero = BlockRequest::Chunks {
            sha256: Sha256([0; 32]),
            first: 0,
            count: 0,
        };
        assert!(BlockRequest::decode(&zero.encode()).is_err());
        let many = BlockRequest::Chunks {
            sha256: Sha256([0; 32]),
            first: 0,
            count: MAX_CHUNKS_PER_REQUEST + 1,
        };
        assert!(BlockRequest::decode(&many.encode()).is_err());
        // A chunk claiming to be larger than any chunk may be.
        let mut bytes = BlockResponse::Chunks(vec![vec![1; 4]]).encode();
        bytes[7..11].copy_from_slice(&(MAX_CHUNK_LEN + 1).to_le_bytes());
        assert!(BlockResponse::decode(&bytes).is_err());
        // A manifest length beyond the bound.
        let mut bytes = BlockResponse::Manifest(vec![0; 4]).encode();
        bytes[3..11].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(BlockResponse::decode(&bytes).is_err());
        // A bitmap longer than any manifest's.
        let mut bytes = BlockResponse::Have(vec![0; 4]).encode();
        bytes[3..7].copy_from_slice(&(MAX_HAVE_LEN as u32 + 1).to_le_bytes());
        assert!(BlockResponse::decode(&bytes).is_err());
        // The same for either bitmap of a fetching responder's answer.
        let fetching = BlockResponse::Fetching {
            held: vec![0; 4],
            coming: vec![0; 4],
        };
        let mut bytes = fetching.encode();
        bytes[11..15].copy_from_slice(&(MAX_HAVE_LEN as u32 + 1).to_le_bytes());
        assert!(BlockResponse::decode(&bytes).is_err());
        let mut bytes = fetching.encode();
        bytes[3..7].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(BlockResponse::decode(&bytes).is_err());
        // Truncated: the second bitmap is missing.
        let bytes = fetching.encode();
        assert!(BlockResponse::decode(&bytes[..11]).is_err());
        // A pack request is not a block request.
        assert!(matches!(
            BlockRequest::decode(&BlockResponse::NotFound.encode()),
            Err(DecodeError::Kind { .. })
        ));
    }

    #[test]
    fn manifests_are_checked_against_the_signed_binding() {
        let m = manifest_of(&[b"hello ", b"world"]);
        let bytes = m.encode();
        let id = m.id();
        assert_eq!(check_manifest(&bytes, &id, &m.sha256, 11).unwrap(), m);
        assert!(matches!(
            check_manifest(&bytes, &Hash([0; 32]), &m.sha256, 11),
            Err(BlockMismatch::ManifestId { .. })
        ));
        assert!(matches!(
            check_manifest(&bytes, &id, &Sha256([0; 32]), 11),
            Err(BlockMismatch::Sha256 { .. })
        ));
        assert!(matches!(
            check_manifest(&bytes, &id, &m.sha256, 12),
            Err(BlockMismatch::Size { .. })
        ));
    }

    #[test]
    fn a_corrupt_chunk_is_caught() {
        let m = manifest_of(&[b"hello ", b"world"]);
        assert!(check_chunks(&m, 0, &[b"hello ".to_vec(), b"world".to_vec()]).is_ok());
        assert!(check_chunks(&m, 1, &[b"world".to_vec()]).is_ok());
        assert_eq!(
            check_chunks(&m, 0, &[b"hello ".to_vec(), b"wOrld".to_vec()]),
            Err(BlockMismatch::Chunk { index: 1 })
        );
        // Same bytes at the wrong index, and chunks past the end.
        assert!(check_chunks(&m, 1, &[b"hello ".to_vec()]).is_err());
        assert_eq!(
            check_chunks(&m, 2, &[b"x".to_vec()]),
            Err(BlockMismatch::TooMany { index: 2 })
        );
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = BlockRequest::decode(&bytes);
            let _ = BlockResponse::decode(&bytes);
        }

        #[test]
        fn mutated_responses_never_panic(flip in 0usize..64, value: u8, blobs: bool) {
            let mut bytes = if blobs {
                BlockResponse::Blobs(vec!["10.1.2.3:7".parse().unwrap(), "[::1]:9".parse().unwrap()])
                    .encode()
            } else {
                BlockResponse::Chunks(vec![vec![5; 9], vec![6; 3]]).encode()
            };
            let at = flip % bytes.len();
            bytes[at] = value;
            if let Ok(decoded) = BlockResponse::decode(&bytes) {
                prop_assert_eq!(decoded.encode(), bytes);
            }
        }
    }
}
