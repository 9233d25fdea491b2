//! Wire formats of git-metadata replication: gossip topics, the `/hubmesh/git-pack/1`
//! request and response, and seeding patterns.
//!
//! A node that hosts a namespace signs a [`crate::signed::RefUpdate`] after every write to a
//! public repo and gossips it on [`TOPIC_REFS`]; the namespace documents it signs go on
//! [`TOPIC_NAMESPACES`]. A seeding node that accepts an update asks the publisher for the
//! objects it lacks with a [`PackRequest`] (the oids the update names, plus the ref tips it
//! already has) and gets a [`PackResponse`]: a git pack of the difference, bounded by
//! [`MAX_PACK_LEN`] — or, when the requester can fetch blobs, the BLAKE3 hash and size of
//! the pack ([`PackResponse::Blob`], up to [`MAX_BLOB_PACK_LEN`]), held for it on the
//! responder's blob endpoint and fetched with verified streaming. Encodings follow the rules of [`crate::signed`]: version byte, kind
//! byte, little-endian lengths checked before allocating, no trailing bytes.
//!
//! ```
//! use hub_protocol::replication::{PackRequest, SeedPattern};
//! use hub_protocol::repo::{RepoId, RepoType};
//!
//! let repo = RepoId::parse(RepoType::Model, "alice/tiny").unwrap();
//! let request = PackRequest { repo: repo.clone(), want: vec![[1; 20]], have: vec![], blob: true };
//! assert_eq!(PackRequest::decode(&request.encode()).unwrap(), request);
//! assert!(SeedPattern::parse("alice/*").unwrap().matches(&repo));
//! ```

use crate::repo::RepoId;
use crate::signed::codec::{Reader, Writer};
use crate::signed::{DecodeError, FORMAT_VERSION, GitOid, MAX_REFS, kind};

/// Gossip topic of [`crate::signed::SignedRefUpdate`]s.
pub const TOPIC_REFS: &str = "hubmesh/refs/1";
/// The gossipsub topic of signed capacity adverts (the compute mesh).
pub const TOPIC_CAPACITY: &str = "hubmesh/capacity/1";
/// Gossip topic of [`crate::signed::SignedNamespaceDoc`]s.
pub const TOPIC_NAMESPACES: &str = "hubmesh/namespaces/1";
/// Largest gossip message (both topics). A signed update at the limits of
/// [`crate::signed::MAX_REFS`] and [`crate::signed::MAX_LFS`] stays under it.
pub const MAX_GOSSIP_MESSAGE: usize = 4 * 1024 * 1024;
/// The request-response protocol that carries packs.
pub const GIT_PACK_PROTOCOL: &str = "/hubmesh/git-pack/1";
/// Largest pack one response carries; a larger difference is refused with
/// [`PackResponse::TooLarge`].
pub const MAX_PACK_LEN: usize = 64 * 1024 * 1024;
/// Largest pack offered as a blob ([`PackResponse::Blob`]): it streams over the blob data
/// plane instead of travelling in one message.
pub const MAX_BLOB_PACK_LEN: u64 = 256 * 1024 * 1024;
/// Most oids in either list of a request.
pub const MAX_OIDS: usize = MAX_REFS;
/// Largest encoded request.
pub const MAX_REQUEST_LEN: usize = 2 + 1 + 2 * 256 + 2 * (4 + 20 * MAX_OIDS) + 1;
/// Largest encoded response.
pub const MAX_RESPONSE_LEN: usize = 2 + 1 + 8 + MAX_PACK_LEN;

/// Asks a peer for the objects reachable from `want` and not from `have`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackRequest {
    pub repo: RepoId,
    /// Objects the requester needs (the targets of an accepted update's refs).
    pub want: Vec<GitOid>,
    /// Ref tips the requester already has; the pack leaves out what they reach.
    pub have: Vec<GitOid>,
    /// The requester can fetch the pack as a blob ([`PackResponse::Blob`]).
    pub blob: bool,
}

/// The answer to a [`PackRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackResponse {
    /// A git pack (possibly empty of objects) with everything asked for.
    Pack(Vec<u8>),
    /// The peer has no public repo by that name, or lacks a wanted object.
    NotFound,
    /// The difference is larger than the responder's limit.
    TooLarge { limit: u64 },
    /// The responder failed; try another peer or later.
    Failed,
    /// The pack, `size` bytes with BLAKE3 `hash`, is held for the requester on the
    /// responder's blob endpoint for a short while (at most [`MAX_BLOB_PACK_LEN`]).
    Blob { hash: [u8; 32], size: u64 },
}

fn write_oids(w: &mut Writer, oids: &[GitOid]) {
    w.u32(oids.len() as u32);
    for oid in oids {
        w.bytes(oid);
    }
}

fn read_oids(r: &mut Reader<'_>) -> Result<Vec<GitOid>, DecodeError> {
    let n = r.u32()? as usize;
    if n > MAX_OIDS {
        return Err(DecodeError::TooLarge {
            len: n,
            max: MAX_OIDS,
        });
    }
    r.expect_entries(n, 20)?;
    (0..n).map(|_| r.array()).collect()
}

impl PackRequest {
    /// The encoding; lists longer than [`MAX_OIDS`] are cut to it.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(64 + 20 * (self.want.len() + self.have.len()));
        w.u8(FORMAT_VERSION);
        w.u8(kind::PACK_REQUEST);
        w.repo(&self.repo);
        write_oids(&mut w, &self.want[..self.want.len().min(MAX_OIDS)]);
        write_oids(&mut w, &self.have[..self.have.len().min(MAX_OIDS)]);
        w.u8(u8::from(self.blob));
        w.finish()
    }

    /// Decodes a request; anything malformed is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_REQUEST_LEN {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: MAX_REQUEST_LEN,
            });
        }
        let mut r = Reader::new(bytes);
        r.header(kind::PACK_REQUEST)?;
        let repo = r.repo()?;
        let want = read_oids(&mut r)?;
        let have = read_oids(&mut r)?;
        let blob = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(DecodeError::NotCanonical("blob flag")),
        };
        r.end()?;
        Ok(Self {
            repo,
            want,
            have,
            blob,
        })
    }
}

impl PackResponse {
    pub fn encode(&self) -> Vec<u8> {
        let pack_len = match self {
            Self::Pack(p) => p.len(),
            _ => 0,
        };
        let mut w = Writer::with_capacity(16 + pack_len);
        w.u8(FORMAT_VERSION);
        w.u8(kind::PACK_RESPONSE);
        match self {
            Self::Pack(pack) => {
                w.u8(0);
                w.u64(pack.len() as u64);
                w.bytes(pack);
            }
            Self::NotFound => w.u8(1),
            Self::TooLarge { limit } => {
                w.u8(2);
                w.u64(*limit);
            }
            Self::Failed => w.u8(3),
            Self::Blob { hash, size } => {
                w.u8(4);
                w.bytes(hash);
                w.u64(*size);
            }
        }
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_RESPONSE_LEN {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: MAX_RESPONSE_LEN,
            });
        }
        let mut r = Reader::new(bytes);
        r.header(kind::PACK_RESPONSE)?;
        let response = match r.u8()? {
            0 => {
                let len = r.u64()?;
                let len = usize::try_from(len)
                    .ok()
                    .filter(|l| *l <= MAX_PACK_LEN)
                    .ok_or(DecodeError::NotCanonical("pack length"))?;
                Self::Pack(r.take(len)?.to_vec())
            }
            1 => Self::NotFound,
            2 => Self::TooLarge { limit: r.u64()? },
            3 => Self::Failed,
            4 => {
                let hash = r.array()?;
                let size = r.u64()?;
                if size > MAX_BLOB_PACK_LEN {
                    return Err(DecodeError::NotCanonical("blob pack size"));
                }
                Self::Blob { hash, size }
            }
            _ => return Err(DecodeError::NotCanonical("unknown response status")),
        };
        r.end()?;
        Ok(response)
    }
}

/// Which repos a node seeds: `*` (everything), `alice/*` (a namespace), `alice/model` (one
/// repo). A pattern names repos of every type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeedPattern {
    All,
    Namespace(String),
    Repo { namespace: String, name: String },
}

/// A seeding pattern that is not `*`, `ns/*` or `ns/name`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid seed pattern {pattern:?} (expected *, namespace/* or namespace/name)")]
pub struct SeedPatternError {
    pub pattern: String,
}

impl SeedPattern {
    pub fn parse(pattern: &str) -> Result<Self, SeedPatternError> {
        let err = || SeedPatternError {
            pattern: pattern.to_owned(),
        };
        if pattern == "*" {
            return Ok(Self::All);
        }
        let (ns, name) = pattern.split_once('/').ok_or_else(err)?;
        crate::name::validate_name_part(ns).map_err(|_| err())?;
        if name == "*" {
            return Ok(Self::Namespace(ns.to_owned()));
        }
        crate::name::validate_name_part(name).map_err(|_| err())?;
        Ok(Self::Repo {
            namespace: ns.to_owned(),
            name: name.to_owned(),
        })
    }

    pub fn matches(&self, repo: &RepoId) -> bool {
        match self {
            Self::All => true,
            Self::Namespace(ns) => repo.namespace() == ns,
            Self::Repo { namespace, name } => repo.namespace() == namespace && repo.name() == name,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::RepoType;
    use proptest::prelude::*;

    fn repo(s: &str) -> RepoId {
        RepoId::parse(RepoType::Model, s).unwrap()
    }

    #[test]
    fn requests_and_responses_round_trip() {
        let request = PackRequest {
            repo: RepoId::parse(RepoType::Dataset, "org/data").unwrap(),
            want: vec![[1; 20], [2; 20]],
            have: vec![[3; 20]],
            blob: false,
        };
        assert_eq!(PackRequest::decode(&request.encode()).unwrap(), request);
        let blob = PackRequest {
            blob: true,
            ..request
        };
        assert_eq!(PackRequest::decode(&blob.encode()).unwrap(), blob);
        for response in [
            PackResponse::Pack(b"PACK\0\0\0\x02".to_vec()),
            PackResponse::Pack(Vec::new()),
            PackResponse::NotFound,
            PackResponse::TooLarge { limit: 7 },
            PackResponse::Failed,
            PackResponse::Blob {
                hash: [5; 32],
                size: MAX_BLOB_PACK_LEN,
            },
        ] {
            assert_eq!(PackResponse::decode(&response.encode()).unwrap(), response);
        }
    }

    #[test]
    fn hostile_lengths_are_errors() {
        let mut bytes = PackRequest {
            repo: repo("a/b"),
            want: vec![],
            have: vec![],
            blob: false,
        }
        .encode();
        // The `want` count claims a billion entries.
        let at = bytes.len() - 9;
        bytes[at..at + 4].copy_from_slice(&1_000_000_000u32.to_le_bytes());
        assert!(PackRequest::decode(&bytes).is_err());
        let mut response = PackResponse::Pack(vec![0; 4]).encode();
        response[3..11].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(PackResponse::decode(&response).is_err());
        let mut blob = PackResponse::Blob {
            hash: [1; 32],
            size: 1,
        }
        .encode();
        let at = blob.len() - 8;
        blob[at..].copy_from_slice(&(MAX_BLOB_PACK_LEN + 1).to_le_bytes());
        assert!(PackResponse::decode(&blob).is_err());
        // A refs message is not a pack request.
        assert!(matches!(
            PackRequest::decode(&PackResponse::NotFound.encode()),
            Err(DecodeError::Kind { .. })
        ));
    }

    #[test]
    fn seed_patterns() {
        let all = SeedPattern::parse("*").unwrap();
        let ns = SeedPattern::parse("alice/*").unwrap();
        let one = SeedPattern::parse("alice/model").unwrap();
        assert!(all.matches(&repo("bob/x")));
        assert!(ns.matches(&repo("alice/x")) && !ns.matches(&repo("alicea/x")));
        assert!(!ns.matches(&repo("bob/alice")));
        assert!(one.matches(&repo("alice/model")) && !one.matches(&repo("alice/model2")));
        assert!(one.matches(&RepoId::parse(RepoType::Dataset, "alice/model").unwrap()));
        for bad in [
            "",
            "alice",
            "alice/",
            "*/model",
            "alice/*/x",
            "../x",
            "alice/mo*",
        ] {
            assert!(SeedPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = PackRequest::decode(&bytes);
            let _ = PackResponse::decode(&bytes);
        }

        #[test]
        fn mutated_requests_never_panic(flip in 0usize..200, value: u8) {
            let mut bytes = PackRequest {
                repo: repo("alice/tiny"),
                want: vec![[9; 20]; 3],
                have: vec![[8; 20]; 2],
                blob: true,
            }.encode();
            let at = flip % bytes.len();
            bytes[at] = value;
            if let Ok(decoded) = PackRequest::decode(&bytes) {
                prop_assert_eq!(decoded.encode(), bytes);
            }
        }
    }
}
