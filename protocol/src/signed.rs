//! Signed documents: namespace identity documents and signed ref updates.
//!
//! Nothing unsigned or mis-bound ever moves a ref (DESIGN.md, "Identities and trust"). This
//! module holds the three pieces that promise rests on, all free of I/O:
//!
//! - **Namespace documents** ([`NamespaceDoc`]): `{name, delegates, threshold, visibility}`.
//!   A document's id ([`DocId`]) is the BLAKE3 of its canonical encoding. A
//!   [`SignedNamespaceDoc`] carries the document, the id of the `previous` document (none for
//!   the first one, the *genesis*) and delegate signatures; the documents of one namespace
//!   form a hash chain from its genesis.
//! - **Signed ref updates** ([`RefUpdate`], [`SignedRefUpdate`]): a repo's published state,
//!   `{repo, namespace_doc, refs: name → git oid, lfs: sha256 → manifest id, seq, time}`,
//!   signed by one delegate.
//! - **The acceptance state machine** ([`RefState`], in [`state`]): fed the known documents,
//!   the last accepted update per repo and an incoming message, it answers accept or reject
//!   with a reason. It is pure and takes the clock as an argument, so it is tested without
//!   sockets or sleeps.
//!
//! # What is signed
//!
//! A signature covers [`SIGNING_CONTEXT`] followed by the canonical encoding of the signed
//! value, never a re-serialisation chosen by the sender:
//!
//! - for a ref update, the whole [`RefUpdate`] encoding: repo id (type, namespace, name), the
//!   namespace document id, every ref and LFS binding, `seq` and `time`. Binding the repo and
//!   the document id stops *grafting* (replaying a valid update of one repo onto another, or
//!   under a namespace document the signer was never a delegate of); `seq` stops rollback.
//! - for a namespace document, the `previous` document id (or its absence) followed by the
//!   document's encoding, so a signature approves one step of one chain and cannot be moved
//!   to another fork.
//!
//! The context string (`"hubmesh signed v1\0"`) separates these signatures from everything else
//! the same key signs: a node's ed25519 key is also its libp2p identity, and libp2p signs its
//! own payloads (noise handshakes, signed envelopes) with it under different prefixes. Each
//! encoding also starts with a *kind* byte, so a ref update can never be read as a namespace
//! document or the reverse.
//!
//! # Why a version byte, and why canonical
//!
//! Every encoding opens with [`FORMAT_VERSION`]. Signed bytes live for years in other nodes'
//! databases and in gossip; a later format gets a new version byte, and a node can tell an
//! old message from a new one instead of misparsing it. Decoders accept only the canonical
//! form (sorted, duplicate-free keys and maps, no trailing bytes, every length within its
//! bound), so one value has exactly one encoding: ids are stable, `decode(b).encode() == b`
//! holds for every accepted `b`, and a signature checked against a re-encoding is a signature
//! over the bytes that were received. Decoders never panic and never allocate more than the
//! input justifies; property tests feed them arbitrary and mutated bytes.
//!
//! # Why `seq` must be persisted
//!
//! A node accepts an update only if its `seq` is higher than that of the last update it
//! accepted for the repo. If it forgot that number on restart, anyone who once saw an older,
//! validly signed update could replay it and roll the repo back to a state its owners have
//! since replaced (say, before a leaked file was removed). The node therefore persists the
//! last accepted update per repo and the namespace chains (hub-mesh's `RefStore`, on redb) and
//! reloads them into [`RefState`] before it handles a message.
//!
//! ```
//! use hub_protocol::repo::{RepoId, RepoType};
//! use hub_protocol::signed::{NamespaceDoc, RefState, RefUpdate, SigningKey, Visibility};
//!
//! let alice = SigningKey::from_bytes(&[7; 32]);
//! let doc = NamespaceDoc::new("alice", vec![alice.public()], 1, Visibility::Public).unwrap();
//! let genesis = doc.sign_genesis(&[&alice]);
//!
//! let mut state = RefState::new();
//! state.apply_namespace_doc(genesis).unwrap();
//!
//! let repo = RepoId::parse(RepoType::Model, "alice/tiny").unwrap();
//! let mut update = RefUpdate::new(repo.clone(), doc.id(), 1, 1_700_000_000);
//! update.refs.insert("refs/heads/main".into(), [0xab; 20]);
//! let signed = update.sign(&alice).unwrap();
//!
//! let wire = signed.encode();
//! assert!(state.apply_ref_update_bytes(&repo, &wire, 1_700_000_000).is_ok());
//! // A replay of the same update is refused.
//! assert!(state.apply_ref_update_bytes(&repo, &wire, 1_700_000_000).is_err());
//! ```

pub(crate) mod codec;
mod doc;
mod refs;
pub mod state;

pub use doc::{
    MAX_ALLOWED_PEERS, MAX_DELEGATES, MAX_DOC_SIGNATURES, NamespaceDoc, SignedNamespaceDoc,
    Visibility,
};
pub use refs::{GitOid, MAX_LFS, MAX_REF_NAME_LEN, MAX_REFS, RefUpdate, SignedRefUpdate};
pub use state::{DocAccepted, DocReject, MAX_CLOCK_SKEW_SECS, RefReject, RefState, RestoreError};

use crate::name::NameError;
use std::fmt;

/// Version byte at the start of every encoding this module writes and reads.
pub const FORMAT_VERSION: u8 = 1;

/// Prefix of every message signed under this format (domain separation; see module docs).
pub const SIGNING_CONTEXT: &[u8] = b"hubmesh signed v1\0";

/// Kind bytes: the second byte of every encoding.
pub(crate) mod kind {
    pub const NAMESPACE_DOC: u8 = 1;
    pub const REF_UPDATE: u8 = 2;
    /// The payload delegates sign for a namespace document: `previous` + document.
    pub const DOC_CHANGE: u8 = 3;
    pub const SIGNED_NAMESPACE_DOC: u8 = 4;
    pub const SIGNED_REF_UPDATE: u8 = 5;
    /// `/hubmesh/git-pack/1` request and response (see [`crate::replication`]).
    pub const PACK_REQUEST: u8 = 6;
    pub const PACK_RESPONSE: u8 = 7;
    /// `/hubmesh/blocks/1` request and response (see [`crate::blocks`]).
    pub const BLOCK_REQUEST: u8 = 8;
    pub const BLOCK_RESPONSE: u8 = 9;
    /// Compute capacity adverts (see [`crate::capacity`]): the signed payload and the wire message.
    pub const CAPACITY_ADVERT: u8 = 10;
    pub const SIGNED_CAPACITY_ADVERT: u8 = 11;
    /// Sharded-model placements (see [`crate::placement`]).
    pub const PLACEMENT: u8 = 12;
    pub const SIGNED_PLACEMENT: u8 = 13;
}

fn write_hex(bytes: &[u8], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

/// An ed25519 public key: a namespace delegate, or a peer a private namespace allows.
///
/// It holds the 32 bytes as received; whether they are a valid curve point is checked when a
/// signature is verified, so a document naming a garbage key is well-formed but that key can
/// never sign anything.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Checks `signature` over `message` with strict verification (no small-order keys or
    /// points, canonical scalars), so one message has one valid signature per key.
    pub(crate) fn verify(&self, message: &[u8], signature: &Signature) -> Result<(), BadSignature> {
        let key = ed25519_dalek::VerifyingKey::from_bytes(&self.0).map_err(|_| BadSignature)?;
        let sig = ed25519_dalek::Signature::from_bytes(&signature.0);
        key.verify_strict(message, &sig).map_err(|_| BadSignature)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(&self.0, f)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// An ed25519 signature (64 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Signature(")?;
        write_hex(&self.0, f)?;
        f.write_str(")")
    }
}

/// The id of a namespace document: the BLAKE3 of its canonical encoding.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DocId(pub [u8; 32]);

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(&self.0, f)
    }
}

impl fmt::Debug for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DocId({self})")
    }
}

/// An ed25519 signing key.
///
/// [`SigningKey::from_bytes`] takes the 32-byte secret that `DATA/node.key` holds; it yields
/// the same public key as libp2p's `Keypair::ed25519_from_bytes` on the same bytes (both are
/// RFC 8032 keys on `ed25519-dalek`; hub-mesh tests the equivalence), so a node signs refs with
/// its network identity. The secret is wiped on drop and never printed.
pub struct SigningKey(ed25519_dalek::SigningKey);

impl SigningKey {
    /// The key whose RFC 8032 secret is `secret`.
    pub fn from_bytes(secret: &[u8; 32]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(secret))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// Signs `SIGNING_CONTEXT || payload`. Private to the crate so that the key signs only
    /// this module's encodings, never bytes a caller picked.
    pub(crate) fn sign_payload(&self, payload: &[u8]) -> Signature {
        use ed25519_dalek::Signer;
        let mut message = Vec::with_capacity(SIGNING_CONTEXT.len() + payload.len());
        message.extend_from_slice(SIGNING_CONTEXT);
        message.extend_from_slice(payload);
        Signature(self.0.sign(&message).to_bytes())
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(public: {})", self.public())
    }
}

/// Checks a signature made by [`SigningKey::sign_payload`].
pub(crate) fn verify_payload(
    key: &PublicKey,
    payload: &[u8],
    signature: &Signature,
) -> Result<(), BadSignature> {
    let mut message = Vec::with_capacity(SIGNING_CONTEXT.len() + payload.len());
    message.extend_from_slice(SIGNING_CONTEXT);
    message.extend_from_slice(payload);
    key.verify(&message, signature)
}

/// A signature that does not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("signature does not verify")]
pub struct BadSignature;

/// Why a value is not a valid document or update (checked by constructors and decoders).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidError {
    #[error("invalid namespace name")]
    Name(#[source] NameError),
    #[error("a namespace document needs at least one delegate")]
    NoDelegates,
    #[error("{count} {what}, the limit is {max}")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("threshold {threshold} is not between 1 and the {delegates} delegates")]
    Threshold { threshold: u8, delegates: usize },
    #[error("invalid ref name {name:?}")]
    RefName { name: String },
}

/// Why bytes do not decode. Decoders return it instead of panicking, whatever the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("input ends early")]
    Truncated,
    #[error("unsupported format version {0}")]
    Version(u8),
    #[error("expected message kind {expected}, found {found}")]
    Kind { expected: u8, found: u8 },
    #[error("{0} bytes after the end of the message")]
    TrailingBytes(usize),
    #[error("string is not UTF-8")]
    Utf8,
    #[error("input is {len} bytes, the limit is {max}")]
    TooLarge { len: usize, max: usize },
    #[error("not in canonical form: {0}")]
    NotCanonical(&'static str),
    #[error("invalid content")]
    Invalid(#[from] InvalidError),
}
