//! Signed ref updates: a repo's published state, signed by a namespace delegate.
//!
//! Encodings (little-endian; `str8`/`str16` carry a `u8`/`u16` length and UTF-8 bytes):
//!
//! ```text
//! RefUpdate        u8 version | u8 kind=2 | u8 repo type (0 model, 1 dataset, 2 space)
//!                  | str8 namespace | str8 name | [32] namespace doc id | u64 seq | u64 time
//!                  | u32 r | r × (str16 ref name | [20] git oid)
//!                  | u32 l | l × ([32] sha256 | [32] manifest id)
//! SignedRefUpdate  u8 version | u8 kind=5 | u32 len | RefUpdate (len bytes)
//!                  | [32] signer | [64] signature over SIGNING_CONTEXT || RefUpdate
//! ```
//!
//! Refs and LFS bindings are sorted ascending by key (ref names bytewise) without
//! duplicates, which a `BTreeMap` gives for free on the encoding side; decoders reject any
//! other order.

use super::codec::{Reader, Writer};
use super::{
    BadSignature, DecodeError, DocId, InvalidError, PublicKey, Signature, SigningKey, kind,
    verify_payload,
};
use crate::manifest::{Hash, Sha256};
use crate::repo::RepoId;
use std::collections::BTreeMap;

/// A git object id (SHA-1).
pub type GitOid = [u8; 20];

/// Most refs one update may carry.
pub const MAX_REFS: usize = 1024;
/// Most LFS bindings one update may carry.
pub const MAX_LFS: usize = 16 * 1024;
/// Longest ref name, in bytes.
pub const MAX_REF_NAME_LEN: usize = 1024;

const MAX_UPDATE_LEN: usize = 2
    + 1
    + 2 * (1 + crate::name::MAX_NAME_LEN)
    + 32
    + 16
    + 4
    + MAX_REFS * (2 + MAX_REF_NAME_LEN + 20)
    + 4
    + MAX_LFS * 64;
const MAX_SIGNED_UPDATE_LEN: usize = 2 + 4 + MAX_UPDATE_LEN + 32 + 64;

/// A repo's state as its namespace's delegate publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefUpdate {
    /// The repo this state belongs to; a receiver checks it is the repo it asked about.
    pub repo: RepoId,
    /// The id of the namespace document under which the signer is a delegate.
    pub namespace_doc: DocId,
    /// Full ref names (`refs/heads/main`) to git object ids.
    pub refs: BTreeMap<String, GitOid>,
    /// LFS objects (by SHA-256) to the ids of their chunk manifests.
    pub lfs: BTreeMap<Sha256, Hash>,
    /// Strictly increasing per repo; a node never accepts a `seq` at or below the last one.
    pub seq: u64,
    /// Seconds since the Unix epoch when it was signed (informational; `seq` orders).
    pub time: u64,
}

impl RefUpdate {
    /// An update with no refs and no LFS bindings.
    pub fn new(repo: RepoId, namespace_doc: DocId, seq: u64, time: u64) -> Self {
        Self {
            repo,
            namespace_doc,
            refs: BTreeMap::new(),
            lfs: BTreeMap::new(),
            seq,
            time,
        }
    }

    /// Checks the limits and ref names.
    pub fn validate(&self) -> Result<(), InvalidError> {
        if self.refs.len() > MAX_REFS {
            return Err(InvalidError::TooMany {
                what: "refs",
                count: self.refs.len(),
                max: MAX_REFS,
            });
        }
        if self.lfs.len() > MAX_LFS {
            return Err(InvalidError::TooMany {
                what: "lfs objects",
                count: self.lfs.len(),
                max: MAX_LFS,
            });
        }
        for name in self.refs.keys() {
            if !is_valid_ref_name(name) {
                return Err(InvalidError::RefName {
                    name: name.chars().take(64).collect(),
                });
            }
        }
        Ok(())
    }

    /// The canonical encoding; [`RefUpdate::validate`] must pass (signing checks it).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(
            128 + self.refs.keys().map(|k| k.len() + 22).sum::<usize>() + 64 * self.lfs.len(),
        );
        w.u8(super::FORMAT_VERSION);
        w.u8(kind::REF_UPDATE);
        w.repo(&self.repo);
        w.bytes(&self.namespace_doc.0);
        w.u64(self.seq);
        w.u64(self.time);
        w.u32(self.refs.len() as u32);
        for (name, oid) in &self.refs {
            w.str16(name);
            w.bytes(oid);
        }
        w.u32(self.lfs.len() as u32);
        for (sha, manifest) in &self.lfs {
            w.bytes(&sha.0);
            w.bytes(&manifest.0);
        }
        w.finish()
    }

    /// Decodes a canonical encoding; anything else is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_UPDATE_LEN {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: MAX_UPDATE_LEN,
            });
        }
        let mut r = Reader::new(bytes);
        r.header(kind::REF_UPDATE)?;
        let repo = r.repo()?;
        let namespace_doc = DocId(r.array()?);
        let seq = r.u64()?;
        let time = r.u64()?;

        let n = r.u32()? as usize;
        if n > MAX_REFS {
            return Err(InvalidError::TooMany {
                what: "refs",
                count: n,
                max: MAX_REFS,
            }
            .into());
        }
        r.expect_entries(n, 2 + 20)?;
        let mut refs = BTreeMap::new();
        let mut last: Option<&str> = None;
        for _ in 0..n {
            let name = r.str16()?;
            if last.is_some_and(|l| l >= name) {
                return Err(DecodeError::NotCanonical("refs not sorted or duplicated"));
            }
            last = Some(name);
            refs.insert(name.to_owned(), r.array()?);
        }

        let l = r.u32()? as usize;
        if l > MAX_LFS {
            return Err(InvalidError::TooMany {
                what: "lfs objects",
                count: l,
                max: MAX_LFS,
            }
            .into());
        }
        r.expect_entries(l, 64)?;
        let mut lfs = BTreeMap::new();
        let mut last: Option<Sha256> = None;
        for _ in 0..l {
            let sha = Sha256(r.array()?);
            if last.is_some_and(|prev| prev >= sha) {
                return Err(DecodeError::NotCanonical("lfs not sorted or duplicated"));
            }
            last = Some(sha);
            lfs.insert(sha, Hash(r.array()?));
        }
        r.end()?;

        let update = Self {
            repo,
            namespace_doc,
            refs,
            lfs,
            seq,
            time,
        };
        update.validate()?;
        Ok(update)
    }

    /// Signs this update with `key`.
    pub fn sign(&self, key: &SigningKey) -> Result<SignedRefUpdate, InvalidError> {
        self.validate()?;
        Ok(SignedRefUpdate {
            update: self.clone(),
            signer: key.public(),
            signature: key.sign_payload(&self.encode()),
        })
    }
}

/// A conservative subset of `git check-ref-format`: `refs/…`, no empty, `.`-led or `.lock`
/// components, no `..`, `@{`, control characters, spaces or `~^:?*[\`.
fn is_valid_ref_name(name: &str) -> bool {
    name.len() <= MAX_REF_NAME_LEN
        && name.starts_with("refs/")
        && !name.contains("..")
        && !name.contains("@{")
        && !name
            .chars()
            .any(|c| c.is_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\'))
        && name
            .split('/')
            .all(|c| !c.is_empty() && !c.starts_with('.') && !c.ends_with(".lock"))
        && !name.ends_with('.')
}

/// A [`RefUpdate`] with its signer and signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRefUpdate {
    pub update: RefUpdate,
    pub signer: PublicKey,
    pub signature: Signature,
}

impl SignedRefUpdate {
    /// Checks the signature against `signer` only; whether `signer` may sign for the repo is
    /// [`super::RefState`]'s question.
    pub fn verify_signature(&self) -> Result<(), BadSignature> {
        // An invalid update has no canonical encoding, so nothing can have signed it.
        self.update.validate().map_err(|_| BadSignature)?;
        verify_payload(&self.signer, &self.update.encode(), &self.signature)
    }

    /// The canonical wire encoding.
    pub fn encode(&self) -> Vec<u8> {
        let update = self.update.encode();
        let mut w = Writer::with_capacity(6 + update.len() + 96);
        w.u8(super::FORMAT_VERSION);
        w.u8(kind::SIGNED_REF_UPDATE);
        w.u32(update.len() as u32);
        w.bytes(&update);
        w.bytes(&self.signer.0);
        w.bytes(&self.signature.0);
        w.finish()
    }

    /// Decodes the wire encoding; the signature is not checked here.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_SIGNED_UPDATE_LEN {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: MAX_SIGNED_UPDATE_LEN,
            });
        }
        let mut r = Reader::new(bytes);
        r.header(kind::SIGNED_REF_UPDATE)?;
        let len = r.u32()? as usize;
        let update = RefUpdate::decode(r.take(len)?)?;
        let signer = PublicKey(r.array()?);
        let signature = Signature(r.array()?);
        r.end()?;
        Ok(Self {
            update,
            signer,
            signature,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::RepoType;
    use proptest::prelude::*;

    fn repo() -> RepoId {
        RepoId::parse(RepoType::Model, "alice/tiny").unwrap()
    }

    #[test]
    fn ref_names() {
        for ok in [
            "refs/heads/main",
            "refs/tags/v1.0",
            "refs/heads/feature/x-y_z",
        ] {
            assert!(is_valid_ref_name(ok), "{ok}");
        }
        for bad in [
            "HEAD",
            "refs/",
            "refs/heads/",
            "refs//x",
            "refs/heads/a..b",
            "refs/heads/.hidden",
            "refs/heads/x.lock",
            "refs/heads/x.",
            "refs/heads/a b",
            "refs/heads/a@{1}",
            "refs/heads/a\0b",
            "refs/heads/a:b",
        ] {
            assert!(!is_valid_ref_name(bad), "{bad:?}");
        }
        let mut u = RefUpdate::new(repo(), DocId([0; 32]), 1, 0);
        u.refs.insert("HEAD".into(), [0; 20]);
        assert!(matches!(
            u.sign(&SigningKey::from_bytes(&[1; 32])),
            Err(InvalidError::RefName { .. })
        ));
    }

    #[test]
    fn golden_encoding() {
        let mut u = RefUpdate::new(repo(), DocId([3; 32]), 5, 6);
        u.refs.insert("refs/heads/main".into(), [0xaa; 20]);
        u.lfs.insert(Sha256([0x11; 32]), Hash([0x22; 32]));
        let mut expected = vec![1, 2, 0, 5];
        expected.extend(b"alice");
        expected.push(4);
        expected.extend(b"tiny");
        expected.extend([3; 32]);
        expected.extend(5u64.to_le_bytes());
        expected.extend(6u64.to_le_bytes());
        expected.extend(1u32.to_le_bytes());
        expected.extend(15u16.to_le_bytes());
        expected.extend(b"refs/heads/main");
        expected.extend([0xaa; 20]);
        expected.extend(1u32.to_le_bytes());
        expected.extend([0x11; 32]);
        expected.extend([0x22; 32]);
        assert_eq!(u.encode(), expected);
    }

    #[test]
    fn hostile_counts_fail_without_allocating() {
        let u = RefUpdate::new(repo(), DocId([3; 32]), 5, 6).encode();
        // Overwrite the ref count (just before the final u32 lfs count) with a huge value.
        let at = u.len() - 8;
        let mut hostile = u.clone();
        hostile[at..at + 4].copy_from_slice(&(MAX_REFS as u32).to_le_bytes());
        assert_eq!(RefUpdate::decode(&hostile), Err(DecodeError::Truncated));
        hostile[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            RefUpdate::decode(&hostile),
            Err(DecodeError::Invalid(InvalidError::TooMany { .. }))
        ));
        let signed_header = [1, kind::SIGNED_REF_UPDATE, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            SignedRefUpdate::decode(&signed_header),
            Err(DecodeError::Truncated)
        );
        assert!(matches!(
            SignedRefUpdate::decode(&vec![0; MAX_SIGNED_UPDATE_LEN + 1]),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    fn arb_update() -> impl Strategy<Value = RefUpdate> {
        (
            proptest::collection::btree_map(
                "refs/(heads|tags)/[a-z0-9_-]{1,12}",
                any::<[u8; 20]>(),
                0..5,
            ),
            proptest::collection::btree_map(any::<[u8; 32]>(), any::<[u8; 32]>(), 0..4),
            any::<u64>(),
            any::<u64>(),
            0..3u8,
        )
            .prop_map(|(refs, lfs, seq, time, t)| {
                let kind = RepoType::ALL[t as usize];
                RefUpdate {
                    repo: RepoId::new(kind, "org", "model-1").unwrap(),
                    namespace_doc: DocId([7; 32]),
                    refs,
                    lfs: lfs.into_iter().map(|(k, v)| (Sha256(k), Hash(v))).collect(),
                    seq,
                    time,
                }
            })
    }

    proptest! {
        // Signing and verifying dominate these in debug builds; 64 cases keep them under a
        // second.
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn signed_update_round_trips_and_verifies(u in arb_update()) {
            let signed = u.sign(&SigningKey::from_bytes(&[1; 32])).unwrap();
            let bytes = signed.encode();
            let back = SignedRefUpdate::decode(&bytes).unwrap();
            prop_assert!(back.verify_signature().is_ok());
            prop_assert_eq!(back, signed);
        }

        /// Any single-byte change to a signed update is caught: it no longer decodes, or its
        /// signature no longer verifies.
        #[test]
        fn any_byte_flip_is_caught(u in arb_update(), pos in any::<usize>(), flip in 1..=255u8) {
            let bytes = u.sign(&SigningKey::from_bytes(&[1; 32])).unwrap().encode();
            let mut mutated = bytes.clone();
            let i = pos % mutated.len();
            mutated[i] ^= flip;
            if let Ok(back) = SignedRefUpdate::decode(&mutated) {
                prop_assert!(back.verify_signature().is_err(), "byte {} accepted", i);
            }
        }

        #[test]
        fn decode_arbitrary_bytes(tail in proptest::collection::vec(any::<u8>(), 0..400), header in 0..3usize) {
            let mut bytes = match header {
                0 => vec![],
                1 => vec![1, kind::REF_UPDATE],
                _ => vec![1, kind::SIGNED_REF_UPDATE],
            };
            bytes.extend(tail);
            if let Ok(u) = RefUpdate::decode(&bytes) {
                prop_assert_eq!(u.encode(), bytes.clone());
            }
            if let Ok(s) = SignedRefUpdate::decode(&bytes) {
                prop_assert_eq!(s.encode(), bytes);
            }
        }

        #[test]
        fn truncations_fail(u in arb_update(), cut in any::<usize>()) {
            let bytes = u.sign(&SigningKey::from_bytes(&[1; 32])).unwrap().encode();
            let cut = cut % bytes.len();
            prop_assert!(SignedRefUpdate::decode(&bytes[..cut]).is_err());
        }
    }
}
