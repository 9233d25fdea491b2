//! Placements: which nodes hold which shard of a model, signed by the node that computed it.
//!
//! A model too large for one node's memory (or asked for explicitly) is split into
//! `pipeline_parallel` stages of contiguous layers, each held by a group of
//! `tensor_parallel` nodes that split every layer of the stage (hub-infer's `shard` module
//! runs it; hub-compute's `plan_placement` computes it from capacity adverts). The placement
//! names every node, so a node can tell from the document alone which slice it must fetch, and
//! who its peers are. It is signed by the node that made it (`made_by`), so a peer can only
//! claim placements it made, and carries a `seq` so a newer placement of the same model by the
//! same node replaces an older one.
//!
//! # Encoding
//!
//! As in [`crate::signed`] (little-endian, canonical, lengths checked before allocating):
//!
//! ```text
//! Placement        u8 version | u8 kind=12 | [32] made_by | u64 seq | u64 issued_at | repo
//!                  | [20] commit | u8 tensor_parallel | u8 sync (0 f32, 1 q8)
//!                  | u8 stages | stages × (u16 first layer | u16 end layer | tp × [32] node)
//! SignedPlacement  u8 version | u8 kind=13 | u16 len | Placement (len bytes) | [64] signature
//!                  by made_by over SIGNING_CONTEXT || Placement
//! ```
//!
//! Valid: `1 ≤ tensor_parallel ≤ 16`, `1 ≤ stages ≤ 32`, the stages' layer ranges non-empty,
//! contiguous and starting at 0, no node twice in one placement.
//!
//! ```
//! use hub_protocol::placement::{Placement, PlacedStage, SignedPlacement, Sync};
//! use hub_protocol::repo::{RepoId, RepoType};
//! use hub_protocol::signed::SigningKey;
//!
//! let me = SigningKey::from_bytes(&[1; 32]);
//! let other = SigningKey::from_bytes(&[2; 32]).public();
//! let placement = Placement {
//!     made_by: me.public(),
//!     seq: 1,
//!     issued_at: 1_700_000_000,
//!     model: RepoId::parse(RepoType::Model, "org/llama").unwrap(),
//!     commit: [0xab; 20],
//!     tensor_parallel: 2,
//!     sync: Sync::Q8,
//!     stages: vec![PlacedStage { layers: 0..32, nodes: vec![me.public(), other] }],
//! };
//! let wire = placement.sign(&me).unwrap().encode();
//! let back = SignedPlacement::decode(&wire).unwrap();
//! assert!(back.verify_signature().is_ok());
//! assert_eq!(back.placement, placement);
//! ```

use std::ops::Range;

use crate::repo::{RepoId, RepoType};
use crate::signed::codec::{Reader, Writer};
use crate::signed::{
    BadSignature, DecodeError, FORMAT_VERSION, GitOid, PublicKey, Signature, SigningKey, kind,
    verify_payload,
};

/// Most ranks in one tensor-parallel group.
pub const MAX_TENSOR_PARALLEL: usize = 16;
/// Most pipeline stages.
pub const MAX_STAGES: usize = 32;
/// Largest encoded [`SignedPlacement`]; a receiver refuses anything longer unread.
pub const MAX_SIGNED_PLACEMENT_LEN: usize = 2
    + 2
    + (2 + 32 + 16 + 1 + 2 * (1 + crate::name::MAX_NAME_LEN) + 20 + 3)
    + MAX_STAGES * (4 + MAX_TENSOR_PARALLEL * 32)
    + 64;

/// How activations are synchronised between the ranks of a group.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Sync {
    #[default]
    F32,
    /// 8-bit blocks of 32 with an f16 scale (`Q8_0`).
    Q8,
}

/// One pipeline stage: its layers and the nodes of its tensor-parallel group, rank order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedStage {
    pub layers: Range<u16>,
    pub nodes: Vec<PublicKey>,
}

/// See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub made_by: PublicKey,
    pub seq: u64,
    pub issued_at: u64,
    pub model: RepoId,
    pub commit: GitOid,
    pub tensor_parallel: u8,
    pub sync: Sync,
    pub stages: Vec<PlacedStage>,
}

/// Why a placement is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidPlacement {
    #[error("the signing key is not made_by")]
    WrongKey,
    #[error("{0} is not a model repository")]
    NotAModel(RepoId),
    #[error("tensor_parallel {0} outside 1..=16")]
    TensorParallel(usize),
    #[error("{0} stages outside 1..=32")]
    Stages(usize),
    #[error("stage {0}: layers not contiguous from 0, or empty")]
    Layers(usize),
    #[error("stage {0}: node count differs from tensor_parallel")]
    Group(usize),
    #[error("a node appears twice")]
    DuplicateNode,
}

impl InvalidPlacement {
    fn what(&self) -> &'static str {
        match self {
            InvalidPlacement::WrongKey => "wrong key",
            InvalidPlacement::NotAModel(_) => "not a model",
            InvalidPlacement::TensorParallel(_) => "tensor_parallel out of range",
            InvalidPlacement::Stages(_) => "stage count out of range",
            InvalidPlacement::Layers(_) => "layer ranges not contiguous",
            InvalidPlacement::Group(_) => "group size differs from tensor_parallel",
            InvalidPlacement::DuplicateNode => "node twice",
        }
    }
}

impl Placement {
    /// Every node of the placement, stage by stage, rank order.
    pub fn nodes(&self) -> impl Iterator<Item = &PublicKey> {
        self.stages.iter().flat_map(|s| s.nodes.iter())
    }

    /// Where `node` sits: `(stage, rank)`.
    pub fn position(&self, node: &PublicKey) -> Option<(usize, usize)> {
        self.stages
            .iter()
            .enumerate()
            .find_map(|(s, st)| st.nodes.iter().position(|n| n == node).map(|r| (s, r)))
    }

    pub fn validate(&self) -> Result<(), InvalidPlacement> {
        if self.model.kind() != RepoType::Model {
            return Err(InvalidPlacement::NotAModel(self.model.clone()));
        }
        let tp = self.tensor_parallel as usize;
        if !(1..=MAX_TENSOR_PARALLEL).contains(&tp) {
            return Err(InvalidPlacement::TensorParallel(tp));
        }
        if !(1..=MAX_STAGES).contains(&self.stages.len()) {
            return Err(InvalidPlacement::Stages(self.stages.len()));
        }
        let mut next = 0;
        for (i, s) in self.stages.iter().enumerate() {
            if s.layers.start != next || s.layers.end <= s.layers.start {
                return Err(InvalidPlacement::Layers(i));
            }
            next = s.layers.end;
            if s.nodes.len() != tp {
                return Err(InvalidPlacement::Group(i));
            }
        }
        let mut all: Vec<_> = self.nodes().collect();
        all.sort();
        if all.windows(2).any(|w| w[0] == w[1]) {
            return Err(InvalidPlacement::DuplicateNode);
        }
        Ok(())
    }

    /// The canonical encoding; [`Placement::validate`] must pass (signing checks it).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(128 + self.stages.len() * (4 + 32 * 4));
        w.u8(FORMAT_VERSION);
        w.u8(kind::PLACEMENT);
        w.bytes(&self.made_by.0);
        w.u64(self.seq);
        w.u64(self.issued_at);
        w.repo(&self.model);
        w.bytes(&self.commit);
        w.u8(self.tensor_parallel);
        w.u8(match self.sync {
            Sync::F32 => 0,
            Sync::Q8 => 1,
        });
        w.u8(self.stages.len() as u8);
        for s in &self.stages {
            w.u16(s.layers.start);
            w.u16(s.layers.end);
            for n in &s.nodes {
                w.bytes(&n.0);
            }
        }
        w.finish()
    }

    /// Decodes a canonical, valid encoding; anything else is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_SIGNED_PLACEMENT_LEN {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: MAX_SIGNED_PLACEMENT_LEN,
            });
        }
        let mut r = Reader::new(bytes);
        r.header(kind::PLACEMENT)?;
        let made_by = PublicKey(r.array()?);
        let seq = r.u64()?;
        let issued_at = r.u64()?;
        let model = r.repo()?;
        let commit = r.array()?;
        let tensor_parallel = r.u8()?;
        let sync = match r.u8()? {
            0 => Sync::F32,
            1 => Sync::Q8,
            _ => return Err(DecodeError::NotCanonical("unknown sync")),
        };
        let n = r.u8()? as usize;
        let tp = tensor_parallel as usize;
        if n > MAX_STAGES || tp > MAX_TENSOR_PARALLEL {
            return Err(DecodeError::NotCanonical("too many stages or ranks"));
        }
        r.expect_entries(n, 4 + 32 * tp)?;
        let mut stages = Vec::with_capacity(n);
        for _ in 0..n {
            let start = r.u16()?;
            let end = r.u16()?;
            let mut nodes = Vec::with_capacity(tp);
            for _ in 0..tp {
                nodes.push(PublicKey(r.array()?));
            }
            stages.push(PlacedStage {
                layers: start..end,
                nodes,
            });
        }
        r.end()?;
        let placement = Self {
            made_by,
            seq,
            issued_at,
            model,
            commit,
            tensor_parallel,
            sync,
            stages,
        };
        placement
            .validate()
            .map_err(|e| DecodeError::NotCanonical(e.what()))?;
        Ok(placement)
    }

    /// Signs with `key`, which must be `made_by`.
    pub fn sign(&self, key: &SigningKey) -> Result<SignedPlacement, InvalidPlacement> {
        if key.public() != self.made_by {
            return Err(InvalidPlacement::WrongKey);
        }
        self.validate()?;
        Ok(SignedPlacement {
            placement: self.clone(),
            signature: key.sign_payload(&self.encode()),
        })
    }
}

/// A [`Placement`] with its maker's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPlacement {
    pub placement: Placement,
    pub signature: Signature,
}

impl SignedPlacement {
    /// Checks the signature against `made_by`.
    pub fn verify_signature(&self) -> Result<(), BadSignature> {
        self.placement.validate().map_err(|_| BadSignature)?;
        verify_payload(
            &self.placement.made_by,
            &self.placement.encode(),
            &self.signature,
        )
    }

    pub fn encode(&self) -> Vec<u8> {
        let inner = self.placement.encode();
        let mut w = Writer::with_capacity(4 + inner.len() + 64);
        w.u8(FORMAT_VERSION);
        w.u8(kind::SIGNED_PLACEMENT);
        w.u16(inner.len() as u16);
        w.bytes(&inner);
        w.bytes(&self.signature.0);
        w.finish()
    }

    /// Decodes the wire encoding; the signature is not checked here.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_SIGNED_PLACEMENT_LEN {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: MAX_SIGNED_PLACEMENT_LEN,
            });
        }
        let mut r = Reader::new(bytes);
        r.header(kind::SIGNED_PLACEMENT)?;
        let len = r.u16()? as usize;
        let placement = Placement::decode(r.take(len)?)?;
        let signature = Signature(r.array()?);
        r.end()?;
        Ok(Self {
            placement,
            signature,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(i: u8) -> SigningKey {
        SigningKey::from_bytes(&[i; 32])
    }

    fn sample() -> Placement {
        Placement {
            made_by: key(1).public(),
            seq: 7,
            issued_at: 1_700_000_000,
            model: RepoId::parse(RepoType::Model, "org/llama").unwrap(),
            commit: [3; 20],
            tensor_parallel: 2,
            sync: Sync::F32,
            stages: vec![
                PlacedStage {
                    layers: 0..10,
                    nodes: vec![key(1).public(), key(2).public()],
                },
                PlacedStage {
                    layers: 10..16,
                    nodes: vec![key(3).public(), key(4).public()],
                },
            ],
        }
    }

    #[test]
    fn signed_round_trip_and_tamper_detection() {
        let signed = sample().sign(&key(1)).unwrap();
        let wire = signed.encode();
        let back = SignedPlacement::decode(&wire).unwrap();
        assert_eq!(back, signed);
        back.verify_signature().unwrap();
        assert_eq!(back.placement.position(&key(3).public()), Some((1, 0)));
        let mut forged = back.clone();
        forged.placement.stages[1].nodes[1] = key(9).public();
        assert!(forged.verify_signature().is_err());
        assert_eq!(sample().sign(&key(2)), Err(InvalidPlacement::WrongKey));
    }

    #[test]
    fn invalid_placements_are_refused() {
        let mut p = sample();
        p.stages[1].layers = 11..16;
        assert_eq!(p.validate(), Err(InvalidPlacement::Layers(1)));
        let mut p = sample();
        p.stages[1].nodes[0] = key(1).public();
        assert_eq!(p.validate(), Err(InvalidPlacement::DuplicateNode));
        let mut p = sample();
        p.stages[0].nodes.pop();
        assert_eq!(p.validate(), Err(InvalidPlacement::Group(0)));
        let mut p = sample();
        p.tensor_parallel = 0;
        assert!(p.validate().is_err());
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = SignedPlacement::decode(&bytes);
            let _ = Placement::decode(&bytes);
        }

        #[test]
        fn truncations_of_a_valid_encoding_are_errors(cut in 0usize..300) {
            let wire = sample().sign(&key(1)).unwrap().encode();
            let cut = cut.min(wire.len() - 1);
            prop_assert!(SignedPlacement::decode(&wire[..cut]).is_err());
        }
    }
}
