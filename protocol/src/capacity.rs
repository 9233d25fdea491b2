//! Capacity adverts: what a node offers the compute mesh, signed by its node key.
//!
//! Every node that runs models gossips a [`SignedCapacityAdvert`] every
//! [`ADVERT_PERIOD_SECS`]: its device, the memory left for weights and KV cache, the models it
//! has loaded (with measured decode speed), its queue and whether it takes jobs from peers.
//! Gateways collect them (hub-compute's `CapacityTable`) and route inference requests with
//! them. The design follows Petals' `ServerInfo` and Mesh-LLM's `PeerInfo`, with two
//! differences: adverts are signed, so a peer cannot advertise for another node, and they
//! carry a per-node `seq`, so an old advert cannot be replayed over a newer one.
//!
//! An advert expires at `expires_at` ([`ADVERT_TTL_SECS`] after it is issued, twice the
//! period, so one lost gossip message does not drop a node). A receiver drops it after that,
//! so a node that leaves disappears within one TTL. Clocks must roughly agree (a few seconds);
//! a lifetime over [`MAX_ADVERT_LIFETIME_SECS`] is invalid, so no advert lives for long.
//!
//! `seq` must increase with every advert a node issues, also across restarts: the
//! advertiser uses the issue time in milliseconds (or anything else that only grows).
//!
//! # Encoding
//!
//! As in [`crate::signed`]: little-endian, a version and a kind byte first, lengths checked
//! before allocating, canonical (models sorted by repo and commit without duplicates, booleans
//! 0 or 1, no trailing bytes), so `decode(b).encode() == b` for every accepted `b`.
//!
//! ```text
//! CapacityAdvert        u8 version | u8 kind=10 | [32] node key | u64 seq
//!                       | u64 issued_at | u64 expires_at | u8 mode (0 off, 1 local, 2 mesh)
//!                       | u8 accepts_remote | u8 device kind (0 cpu, 1 cuda) | str8 device name
//!                       | u64 memory total | u64 memory free | u32 queue depth | u32 queue limit
//!                       | u32 running | u32 free KV blocks | u32 tokens per KV block
//!                       | SpaceSlots
//!                       | u8 m | m × (repo | [20] commit | f32 decode tok/s | u32 running)
//! SpaceSlots            u8 spaces mode (as mode) | u32 cpus | u64 memory total | u64 memory free
//!                       | u64 memory per slot | u16 slots total | u16 slots free | str8 hardware
//! SignedCapacityAdvert  u8 version | u8 kind=11 | u16 len | CapacityAdvert (len bytes)
//!                       | [64] signature by the node key over SIGNING_CONTEXT || CapacityAdvert
//! ```
//!
//! The signer is the advert's own `node` field, so a valid signature binds the advert to the
//! node it describes.
//!
//! ```
//! use hub_protocol::capacity::{CapacityAdvert, LoadedModel, Mode, SignedCapacityAdvert};
//! use hub_protocol::repo::{RepoId, RepoType};
//! use hub_protocol::signed::SigningKey;
//!
//! let key = SigningKey::from_bytes(&[7; 32]);
//! let mut advert = CapacityAdvert::new(key.public(), 1, 1_700_000_000);
//! advert.mode = Mode::Mesh;
//! advert.accepts_remote = true;
//! advert.models.push(LoadedModel {
//!     repo: RepoId::parse(RepoType::Model, "org/tiny").unwrap(),
//!     commit: [0xab; 20],
//!     decode_tokens_per_s: 41.0,
//!     running: 1,
//! });
//! let wire = advert.sign(&key).unwrap().encode();
//! let back = SignedCapacityAdvert::decode(&wire).unwrap();
//! assert!(back.verify_signature().is_ok());
//! assert_eq!(back.advert, advert);
//! ```

use crate::repo::{RepoId, RepoType};
use crate::signed::codec::{Reader, Writer};
use crate::signed::{
    BadSignature, DecodeError, FORMAT_VERSION, GitOid, PublicKey, Signature, SigningKey, kind,
    verify_payload,
};
use std::fmt;
use std::str::FromStr;

/// How often a node issues an advert.
pub const ADVERT_PERIOD_SECS: u64 = 10;
/// How long an advert stays valid by default: twice the period.
pub const ADVERT_TTL_SECS: u64 = 2 * ADVERT_PERIOD_SECS;
/// The longest `expires_at - issued_at` a valid advert may have.
pub const MAX_ADVERT_LIFETIME_SECS: u64 = 600;
/// Most loaded models one advert lists.
pub const MAX_MODELS: usize = 64;
/// Longest device name, in bytes.
pub const MAX_DEVICE_NAME_LEN: usize = 128;
/// Longest Space hardware name (`cpu-basic`, `t4-small`), in bytes.
pub const MAX_HARDWARE_LEN: usize = 32;
/// Encoded size of [`SpaceSlots`] with the longest hardware name.
const MAX_SPACE_SLOTS_LEN: usize = 1 + 4 + 3 * 8 + 2 * 2 + 1 + MAX_HARDWARE_LEN;
/// Largest encoded [`CapacityAdvert`].
pub const MAX_ADVERT_LEN: usize = 2
    + 32
    + 3 * 8
    + 3
    + 1
    + MAX_DEVICE_NAME_LEN
    + 2 * 8
    + 5 * 4
    + MAX_SPACE_SLOTS_LEN
    + 1
    + MAX_MODELS * (1 + 2 * (1 + crate::name::MAX_NAME_LEN) + 20 + 4 + 4);
/// Largest encoded [`SignedCapacityAdvert`]; a receiver refuses anything longer unread.
pub const MAX_SIGNED_ADVERT_LEN: usize = 2 + 2 + MAX_ADVERT_LEN + 64;
const _: () = assert!(MAX_SIGNED_ADVERT_LEN <= 16 * 1024);

/// What a node does with inference requests.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Never run models here; route every request to a peer.
    Off,
    /// Serve this gateway's own users; take no jobs from peers (the default).
    #[default]
    Local,
    /// Serve this gateway's users and accept jobs from peers.
    Mesh,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Local => "local",
            Mode::Mesh => "mesh",
        }
    }

    fn to_byte(self) -> u8 {
        match self {
            Mode::Off => 0,
            Mode::Local => 1,
            Mode::Mesh => 2,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A mode name other than `local`, `mesh` or `off`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown compute mode {0:?} (expected local, mesh or off)")]
pub struct UnknownMode(pub String);

impl FromStr for Mode {
    type Err = UnknownMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(Mode::Off),
            "local" => Ok(Mode::Local),
            "mesh" => Ok(Mode::Mesh),
            _ => Err(UnknownMode(s.chars().take(32).collect())),
        }
    }
}

/// The kind of device a node runs models on.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    #[default]
    Cpu,
    Cuda,
}

/// A model a node holds in memory, ready to decode.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedModel {
    /// A model repo (type model).
    pub repo: RepoId,
    /// The commit its weights come from.
    pub commit: GitOid,
    /// Measured single-sequence decode speed, tokens per second (finite, not negative).
    pub decode_tokens_per_s: f32,
    /// Sequences of this model running now.
    pub running: u32,
}

/// What a node offers for running Space apps (hub-spaces), in its capacity advert.
///
/// A gateway that will not or cannot run a Space itself places it on a node whose `mode` is
/// [`Mode::Mesh`] with a free slot and at least `memory_per_slot_bytes` free (hub-compute's
/// `place_space`). A node with Spaces off advertises [`SpaceSlots::default`] (mode off, no
/// slots).
/// Serialized as is in the capacity table's view (`/api/mesh/compute`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SpaceSlots {
    /// `off`: runs no Space apps; `local`: only its own gateway's; `mesh`: also peers'.
    pub mode: Mode,
    /// CPU threads of the node.
    pub cpus: u32,
    /// The node's memory, and how much of it is available now (0 when unknown).
    pub memory_total_bytes: u64,
    pub memory_free_bytes: u64,
    /// The memory limit of one Space app (its sandbox's address-space limit).
    pub memory_per_slot_bytes: u64,
    /// Space apps the node runs at once, and how many more it would start now.
    pub slots_total: u16,
    pub slots_free: u16,
    /// The hardware flavour its Spaces run on, as the Hub names it (`cpu-basic`); at most
    /// [`MAX_HARDWARE_LEN`] bytes.
    pub hardware: String,
}

impl Default for SpaceSlots {
    /// Spaces off: no slots, nothing known of the machine.
    fn default() -> Self {
        Self {
            mode: Mode::Off,
            cpus: 0,
            memory_total_bytes: 0,
            memory_free_bytes: 0,
            memory_per_slot_bytes: 0,
            slots_total: 0,
            slots_free: 0,
            hardware: String::new(),
        }
    }
}

impl SpaceSlots {
    /// Whether a peer may place a Space here now.
    pub fn takes_peers_spaces(&self) -> bool {
        self.mode == Mode::Mesh && self.slots_free > 0
    }
}

/// A node's capacity at `issued_at`. Build one with [`CapacityAdvert::new`] and set the fields.
#[derive(Debug, Clone, PartialEq)]
pub struct CapacityAdvert {
    /// The node's ed25519 key (its libp2p identity); the advert must be signed by it.
    pub node: PublicKey,
    /// Strictly increasing per node, across restarts (see the module docs).
    pub seq: u64,
    /// Unix seconds when it was issued.
    pub issued_at: u64,
    /// Unix seconds after which it is void.
    pub expires_at: u64,
    pub mode: Mode,
    /// Whether the node runs jobs for peers (only meaningful with [`Mode::Mesh`]) and fetches
    /// weights it lacks from the mesh.
    pub accepts_remote: bool,
    pub device: DeviceKind,
    /// Device name (`NVIDIA H100 80GB HBM3`, a CPU model), at most [`MAX_DEVICE_NAME_LEN`] bytes.
    pub device_name: String,
    /// Memory the node may use for weights and KV cache (GPU memory on CUDA, its RAM budget on
    /// CPU), and how much of it is free.
    pub memory_total_bytes: u64,
    pub memory_free_bytes: u64,
    /// Requests waiting, and the most that may wait before new ones are refused.
    pub queue_depth: u32,
    pub queue_limit: u32,
    /// Sequences running now, over all models.
    pub running: u32,
    /// Free blocks of the paged KV cache, and tokens per block.
    pub free_kv_blocks: u32,
    pub kv_block_tokens: u32,
    /// Loaded models, sorted by repo then commit, without duplicates ([`CapacityAdvert::sign`]
    /// sorts them); at most [`MAX_MODELS`].
    pub models: Vec<LoadedModel>,
    /// Its Space slots.
    pub spaces: SpaceSlots,
}

/// Why an advert is not valid (checked when signing and decoding).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidAdvert {
    #[error("{0} loaded models, the limit is {MAX_MODELS}")]
    TooManyModels(usize),
    #[error("device name is {0} bytes, the limit is {MAX_DEVICE_NAME_LEN}")]
    DeviceName(usize),
    #[error(
        "lifetime from {issued_at} to {expires_at} is empty or over {MAX_ADVERT_LIFETIME_SECS} s"
    )]
    Lifetime { issued_at: u64, expires_at: u64 },
    #[error("free memory exceeds total memory")]
    Memory,
    #[error("{0} is not a model repo")]
    NotAModel(RepoId),
    #[error("duplicate model {0}")]
    DuplicateModel(RepoId),
    #[error("decode speed of {0} is negative or not finite")]
    Speed(RepoId),
    #[error("the signing key is not the advert's node key")]
    WrongKey,
    #[error(
        "Space slots are inconsistent (free over total, or hardware name over {MAX_HARDWARE_LEN} bytes)"
    )]
    SpaceSlots,
}

impl InvalidAdvert {
    /// A fixed description, for [`DecodeError::NotCanonical`].
    fn what(&self) -> &'static str {
        match self {
            InvalidAdvert::TooManyModels(_) => "too many models",
            InvalidAdvert::DeviceName(_) => "device name too long",
            InvalidAdvert::Lifetime { .. } => "invalid advert lifetime",
            InvalidAdvert::Memory => "free memory exceeds total",
            InvalidAdvert::NotAModel(_) => "loaded repo is not a model",
            InvalidAdvert::DuplicateModel(_) => "models not sorted or duplicated",
            InvalidAdvert::Speed(_) => "invalid decode speed",
            InvalidAdvert::WrongKey => "wrong key",
            InvalidAdvert::SpaceSlots => "invalid Space slots",
        }
    }
}

fn read_mode(r: &mut Reader<'_>) -> Result<Mode, DecodeError> {
    match r.u8()? {
        0 => Ok(Mode::Off),
        1 => Ok(Mode::Local),
        2 => Ok(Mode::Mesh),
        _ => Err(DecodeError::NotCanonical("unknown mode")),
    }
}

fn model_order(a: &LoadedModel, b: &LoadedModel) -> std::cmp::Ordering {
    (&a.repo, &a.commit).cmp(&(&b.repo, &b.commit))
}

impl CapacityAdvert {
    /// An advert of an idle CPU node in [`Mode::Local`] with nothing loaded, valid for
    /// [`ADVERT_TTL_SECS`].
    pub fn new(node: PublicKey, seq: u64, issued_at: u64) -> Self {
        Self {
            node,
            seq,
            issued_at,
            expires_at: issued_at.saturating_add(ADVERT_TTL_SECS),
            mode: Mode::Local,
            accepts_remote: false,
            device: DeviceKind::Cpu,
            device_name: String::new(),
            memory_total_bytes: 0,
            memory_free_bytes: 0,
            queue_depth: 0,
            queue_limit: 0,
            running: 0,
            free_kv_blocks: 0,
            kv_block_tokens: 0,
            models: Vec::new(),
            spaces: SpaceSlots::default(),
        }
    }

    /// Whether a peer may send this node a job: mode mesh and accepting remote work.
    pub fn serves_peers(&self) -> bool {
        self.mode == Mode::Mesh && self.accepts_remote
    }

    /// Whether the advert is still valid at `now` (unix seconds).
    pub fn is_live(&self, now: u64) -> bool {
        now < self.expires_at
    }

    /// The loaded model `repo` at `commit` (any commit when `None`), the fastest if several.
    pub fn model(&self, repo: &RepoId, commit: Option<&GitOid>) -> Option<&LoadedModel> {
        self.models
            .iter()
            .filter(|m| &m.repo == repo && commit.is_none_or(|c| &m.commit == c))
            .max_by(|a, b| a.decode_tokens_per_s.total_cmp(&b.decode_tokens_per_s))
    }

    /// Checks limits and consistency; models must be sorted and unique.
    pub fn validate(&self) -> Result<(), InvalidAdvert> {
        if self.models.len() > MAX_MODELS {
            return Err(InvalidAdvert::TooManyModels(self.models.len()));
        }
        if self.device_name.len() > MAX_DEVICE_NAME_LEN {
            return Err(InvalidAdvert::DeviceName(self.device_name.len()));
        }
        if self.expires_at <= self.issued_at
            || self.expires_at - self.issued_at > MAX_ADVERT_LIFETIME_SECS
        {
            return Err(InvalidAdvert::Lifetime {
                issued_at: self.issued_at,
                expires_at: self.expires_at,
            });
        }
        if self.memory_free_bytes > self.memory_total_bytes {
            return Err(InvalidAdvert::Memory);
        }
        let slots = &self.spaces;
        if slots.slots_free > slots.slots_total
            || slots.hardware.len() > MAX_HARDWARE_LEN
            || slots.memory_free_bytes > slots.memory_total_bytes
        {
            return Err(InvalidAdvert::SpaceSlots);
        }
        for (i, m) in self.models.iter().enumerate() {
            if m.repo.kind() != RepoType::Model {
                return Err(InvalidAdvert::NotAModel(m.repo.clone()));
            }
            if !(m.decode_tokens_per_s.is_finite() && m.decode_tokens_per_s.is_sign_positive()) {
                return Err(InvalidAdvert::Speed(m.repo.clone()));
            }
            if i > 0 && model_order(&self.models[i - 1], m).is_ge() {
                return Err(InvalidAdvert::DuplicateModel(m.repo.clone()));
            }
        }
        Ok(())
    }

    /// The canonical encoding; [`CapacityAdvert::validate`] must pass (signing checks it).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(256 + self.models.len() * 96);
        w.u8(FORMAT_VERSION);
        w.u8(kind::CAPACITY_ADVERT);
        w.bytes(&self.node.0);
        w.u64(self.seq);
        w.u64(self.issued_at);
        w.u64(self.expires_at);
        w.u8(self.mode.to_byte());
        w.u8(self.accepts_remote.into());
        w.u8(match self.device {
            DeviceKind::Cpu => 0,
            DeviceKind::Cuda => 1,
        });
        w.str8(&self.device_name);
        w.u64(self.memory_total_bytes);
        w.u64(self.memory_free_bytes);
        w.u32(self.queue_depth);
        w.u32(self.queue_limit);
        w.u32(self.running);
        w.u32(self.free_kv_blocks);
        w.u32(self.kv_block_tokens);
        let slots = &self.spaces;
        w.u8(slots.mode.to_byte());
        w.u32(slots.cpus);
        w.u64(slots.memory_total_bytes);
        w.u64(slots.memory_free_bytes);
        w.u64(slots.memory_per_slot_bytes);
        w.u16(slots.slots_total);
        w.u16(slots.slots_free);
        w.str8(&slots.hardware);
        w.u8(self.models.len() as u8);
        for m in &self.models {
            w.repo(&m.repo);
            w.bytes(&m.commit);
            w.u32(m.decode_tokens_per_s.to_bits());
            w.u32(m.running);
        }
        w.finish()
    }

    /// Decodes a canonical, valid encoding; anything else is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_ADVERT_LEN {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: MAX_ADVERT_LEN,
            });
        }
        let mut r = Reader::new(bytes);
        r.header(kind::CAPACITY_ADVERT)?;
        let node = PublicKey(r.array()?);
        let seq = r.u64()?;
        let issued_at = r.u64()?;
        let expires_at = r.u64()?;
        let mode = read_mode(&mut r)?;
        let accepts_remote = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err(DecodeError::NotCanonical("boolean not 0 or 1")),
        };
        let device = match r.u8()? {
            0 => DeviceKind::Cpu,
            1 => DeviceKind::Cuda,
            _ => return Err(DecodeError::NotCanonical("unknown device kind")),
        };
        let device_name = r.str8()?.to_owned();
        let memory_total_bytes = r.u64()?;
        let memory_free_bytes = r.u64()?;
        let queue_depth = r.u32()?;
        let queue_limit = r.u32()?;
        let running = r.u32()?;
        let free_kv_blocks = r.u32()?;
        let kv_block_tokens = r.u32()?;
        let spaces = SpaceSlots {
            mode: read_mode(&mut r)?,
            cpus: r.u32()?,
            memory_total_bytes: r.u64()?,
            memory_free_bytes: r.u64()?,
            memory_per_slot_bytes: r.u64()?,
            slots_total: r.u16()?,
            slots_free: r.u16()?,
            hardware: r.str8()?.to_owned(),
        };
        let n = r.u8()? as usize;
        if n > MAX_MODELS {
            return Err(DecodeError::NotCanonical("too many models"));
        }
        // Smallest entry: type byte, two one-byte names with their lengths, commit, two u32.
        r.expect_entries(n, 1 + 2 * 2 + 20 + 8)?;
        let mut models = Vec::with_capacity(n);
        for _ in 0..n {
            models.push(LoadedModel {
                repo: r.repo()?,
                commit: r.array()?,
                decode_tokens_per_s: f32::from_bits(r.u32()?),
                running: r.u32()?,
            });
        }
        r.end()?;
        let advert = Self {
            node,
            seq,
            issued_at,
            expires_at,
            mode,
            accepts_remote,
            device,
            device_name,
            memory_total_bytes,
            memory_free_bytes,
            queue_depth,
            queue_limit,
            running,
            free_kv_blocks,
            kv_block_tokens,
            models,
            spaces,
        };
        advert
            .validate()
            .map_err(|e| DecodeError::NotCanonical(e.what()))?;
        Ok(advert)
    }

    /// Signs the advert with the node key `key` (which must be `self.node`), after sorting the
    /// models into canonical order.
    pub fn sign(&self, key: &SigningKey) -> Result<SignedCapacityAdvert, InvalidAdvert> {
        if key.public() != self.node {
            return Err(InvalidAdvert::WrongKey);
        }
        let mut advert = self.clone();
        advert.models.sort_by(model_order);
        advert.validate()?;
        let signature = key.sign_payload(&advert.encode());
        Ok(SignedCapacityAdvert { advert, signature })
    }
}

/// A [`CapacityAdvert`] with the node key's signature.
#[derive(Debug, Clone, PartialEq)]
pub struct SignedCapacityAdvert {
    pub advert: CapacityAdvert,
    pub signature: Signature,
}

impl SignedCapacityAdvert {
    /// Checks the signature against the advert's own node key.
    pub fn verify_signature(&self) -> Result<(), BadSignature> {
        // An invalid advert has no canonical encoding, so nothing can have signed it.
        self.advert.validate().map_err(|_| BadSignature)?;
        verify_payload(&self.advert.node, &self.advert.encode(), &self.signature)
    }

    /// The canonical wire encoding (the gossip message).
    pub fn encode(&self) -> Vec<u8> {
        let advert = self.advert.encode();
        let mut w = Writer::with_capacity(4 + advert.len() + 64);
        w.u8(FORMAT_VERSION);
        w.u8(kind::SIGNED_CAPACITY_ADVERT);
        w.u16(advert.len() as u16);
        w.bytes(&advert);
        w.bytes(&self.signature.0);
        w.finish()
    }

    /// Decodes the wire encoding; the signature is not checked here.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_SIGNED_ADVERT_LEN {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: MAX_SIGNED_ADVERT_LEN,
            });
        }
        let mut r = Reader::new(bytes);
        r.header(kind::SIGNED_CAPACITY_ADVERT)?;
        let len = r.u16()? as usize;
        let advert = CapacityAdvert::decode(r.take(len)?)?;
        let signature = Signature(r.array()?);
        r.end()?;
        Ok(Self { advert, signature })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[3; 32])
    }

    fn model(name: &str, commit: u8, tps: f32) -> LoadedModel {
        LoadedModel {
            repo: RepoId::parse(RepoType::Model, name).unwrap(),
            commit: [commit; 20],
            decode_tokens_per_s: tps,
            running: 2,
        }
    }

    fn advert() -> CapacityAdvert {
        let mut a = CapacityAdvert::new(key().public(), 9, 1_000);
        a.mode = Mode::Mesh;
        a.accepts_remote = true;
        a.device = DeviceKind::Cuda;
        a.device_name = "NVIDIA H100".into();
        a.memory_total_bytes = 80 << 30;
        a.memory_free_bytes = 40 << 30;
        a.queue_depth = 1;
        a.queue_limit = 8;
        a.running = 3;
        a.free_kv_blocks = 500;
        a.kv_block_tokens = 16;
        a.models = vec![model("org/b", 1, 41.5), model("org/a", 2, 12.0)];
        a.spaces = SpaceSlots {
            mode: Mode::Mesh,
            cpus: 16,
            memory_total_bytes: 64 << 30,
            memory_free_bytes: 30 << 30,
            memory_per_slot_bytes: 4 << 30,
            slots_total: 4,
            slots_free: 3,
            hardware: "cpu-basic".into(),
        };
        a
    }

    #[test]
    fn mode_parses_and_prints() {
        for mode in [Mode::Off, Mode::Local, Mode::Mesh] {
            assert_eq!(mode.to_string().parse::<Mode>(), Ok(mode));
        }
        assert!("Mesh".parse::<Mode>().is_err());
        assert_eq!(serde_json::to_value(Mode::Mesh).unwrap(), "mesh");
    }

    #[test]
    fn sign_sorts_and_round_trips() {
        let signed = advert().sign(&key()).unwrap();
        assert_eq!(signed.advert.models[0].repo.name(), "a");
        let wire = signed.encode();
        assert!(wire.len() < 512);
        let back = SignedCapacityAdvert::decode(&wire).unwrap();
        assert_eq!(back, signed);
        assert!(back.verify_signature().is_ok());
        assert_eq!(back.encode(), wire);
    }

    #[test]
    fn signing_checks_key_and_limits() {
        let other = SigningKey::from_bytes(&[4; 32]);
        assert_eq!(advert().sign(&other), Err(InvalidAdvert::WrongKey));
        let mut a = advert();
        a.memory_free_bytes = a.memory_total_bytes + 1;
        assert_eq!(a.sign(&key()), Err(InvalidAdvert::Memory));
        let mut a = advert();
        a.expires_at = a.issued_at + MAX_ADVERT_LIFETIME_SECS + 1;
        assert!(matches!(
            a.sign(&key()),
            Err(InvalidAdvert::Lifetime { .. })
        ));
        let mut a = advert();
        a.models.push(model("org/a", 2, 1.0));
        assert!(matches!(
            a.sign(&key()),
            Err(InvalidAdvert::DuplicateModel(_))
        ));
        let mut a = advert();
        a.models[0].decode_tokens_per_s = f32::NAN;
        assert!(matches!(a.sign(&key()), Err(InvalidAdvert::Speed(_))));
        let mut a = advert();
        a.models[0].repo = RepoId::parse(RepoType::Dataset, "org/b").unwrap();
        assert!(matches!(a.sign(&key()), Err(InvalidAdvert::NotAModel(_))));
        let mut a = advert();
        a.device_name = "x".repeat(MAX_DEVICE_NAME_LEN + 1);
        assert!(matches!(a.sign(&key()), Err(InvalidAdvert::DeviceName(_))));
    }

    #[test]
    fn largest_advert_fits_the_bound() {
        let mut a = advert();
        a.device_name = "x".repeat(MAX_DEVICE_NAME_LEN);
        a.spaces.hardware = "h".repeat(MAX_HARDWARE_LEN);
        let long = "n".repeat(crate::name::MAX_NAME_LEN);
        a.models = (0..MAX_MODELS)
            .map(|i| LoadedModel {
                repo: RepoId::new(RepoType::Model, &long, &format!("{long:.94}{i:02}")).unwrap(),
                commit: [0xff; 20],
                decode_tokens_per_s: 1.0,
                running: u32::MAX,
            })
            .collect();
        let wire = a.sign(&key()).unwrap().encode();
        assert_eq!(wire.len(), MAX_SIGNED_ADVERT_LEN);
        assert!(SignedCapacityAdvert::decode(&wire).is_ok());
        a.models.push(model("org/zzz", 0, 1.0));
        assert!(matches!(
            a.sign(&key()),
            Err(InvalidAdvert::TooManyModels(_))
        ));
    }

    #[test]
    fn forged_adverts_do_not_verify() {
        let signed = advert().sign(&key()).unwrap();
        // Claim to be another node with the same signature.
        let mut forged = signed.clone();
        forged.advert.node = SigningKey::from_bytes(&[4; 32]).public();
        assert!(forged.verify_signature().is_err());
        // Inflate the capacity after signing.
        let mut forged = signed;
        forged.advert.memory_free_bytes = forged.advert.memory_total_bytes;
        forged.advert.queue_depth = 0;
        assert!(forged.verify_signature().is_err());
    }

    #[test]
    fn space_slots_round_trip_and_are_checked() {
        let a = advert();
        let back = SignedCapacityAdvert::decode(&a.sign(&key()).unwrap().encode()).unwrap();
        assert_eq!(back.advert.spaces, a.spaces);
        assert!(back.advert.spaces.takes_peers_spaces());
        // Inflating the free slots after signing breaks the signature.
        let mut forged = a.sign(&key()).unwrap();
        forged.advert.spaces.slots_free = 4;
        assert!(forged.verify_signature().is_err());
        let mut bad = advert();
        bad.spaces.slots_free = 5;
        assert_eq!(bad.sign(&key()), Err(InvalidAdvert::SpaceSlots));
        bad = advert();
        bad.spaces.hardware = "h".repeat(MAX_HARDWARE_LEN + 1);
        assert_eq!(bad.sign(&key()), Err(InvalidAdvert::SpaceSlots));
        // A full node, or one not in mode mesh, takes no peer's Space.
        let mut full = advert().spaces;
        full.slots_free = 0;
        assert!(!full.takes_peers_spaces());
        let local = SpaceSlots {
            mode: Mode::Local,
            ..advert().spaces
        };
        assert!(!local.takes_peers_spaces());
        // A node without a Spaces runtime advertises mode off and no slots.
        assert_eq!(SpaceSlots::default().mode, Mode::Off);
        assert!(!SpaceSlots::default().takes_peers_spaces());
    }

    #[test]
    fn hostile_lengths_fail_without_allocating() {
        let header = [FORMAT_VERSION, kind::SIGNED_CAPACITY_ADVERT, 0xff, 0xff];
        assert_eq!(
            SignedCapacityAdvert::decode(&header),
            Err(DecodeError::Truncated)
        );
        assert!(matches!(
            SignedCapacityAdvert::decode(&vec![0; MAX_SIGNED_ADVERT_LEN + 1]),
            Err(DecodeError::TooLarge { .. })
        ));
        // The model count is the last byte of an advert without models.
        let mut a = advert();
        a.models.clear();
        let mut bytes = a.encode();
        *bytes.last_mut().unwrap() = MAX_MODELS as u8;
        assert_eq!(CapacityAdvert::decode(&bytes), Err(DecodeError::Truncated));
        *bytes.last_mut().unwrap() = MAX_MODELS as u8 + 1;
        assert!(matches!(
            CapacityAdvert::decode(&bytes),
            Err(DecodeError::NotCanonical(_))
        ));
    }

    fn arb_advert() -> impl Strategy<Value = CapacityAdvert> {
        let models = proptest::collection::btree_map(
            ("[a-z]{1,8}", any::<[u8; 20]>()),
            (0.0f32..1e4, any::<u32>()),
            0..5,
        );
        (
            any::<(u64, u32, bool, u8)>(),
            (any::<u64>(), any::<u64>(), any::<[u32; 5]>()),
            "[ -~]{0,40}",
            models,
        )
            .prop_map(|((seq, life, remote, mode), (a, b, q), name, models)| {
                let mut ad = CapacityAdvert::new(key().public(), seq, u64::from(life));
                ad.expires_at = ad.issued_at + 1 + u64::from(life) % MAX_ADVERT_LIFETIME_SECS;
                ad.mode = [Mode::Off, Mode::Local, Mode::Mesh][mode as usize % 3];
                ad.accepts_remote = remote;
                ad.device = if mode > 127 {
                    DeviceKind::Cuda
                } else {
                    DeviceKind::Cpu
                };
                ad.device_name = name;
                (ad.memory_total_bytes, ad.memory_free_bytes) = (a.max(b), a.min(b));
                [
                    ad.queue_depth,
                    ad.queue_limit,
                    ad.running,
                    ad.free_kv_blocks,
                    ad.kv_block_tokens,
                ] = q;
                ad.models = models
                    .into_iter()
                    .map(|((name, commit), (tps, running))| LoadedModel {
                        repo: RepoId::new(RepoType::Model, "org", &name).unwrap(),
                        commit,
                        decode_tokens_per_s: tps,
                        running,
                    })
                    .collect();
                let slots = q[0] as u16;
                ad.spaces = SpaceSlots {
                    mode: ad.mode,
                    cpus: q[1],
                    memory_total_bytes: a.max(b),
                    memory_free_bytes: a.min(b),
                    memory_per_slot_bytes: b,
                    slots_total: slots,
                    slots_free: slots / 2,
                    hardware: "cpu-basic".into(),
                };
                ad
            })
    }

    proptest! {
        // Signing and verifying dominate in debug builds; 64 cases keep these fast.
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn round_trips_and_verifies(a in arb_advert()) {
            let signed = a.sign(&key()).unwrap();
            let bytes = signed.encode();
            prop_assert!(bytes.len() <= MAX_SIGNED_ADVERT_LEN);
            let back = SignedCapacityAdvert::decode(&bytes).unwrap();
            prop_assert!(back.verify_signature().is_ok());
            prop_assert_eq!(back, signed);
        }

        /// Any single-byte change either fails to decode or fails to verify.
        #[test]
        fn any_byte_flip_is_caught(a in arb_advert(), pos in any::<usize>(), flip in 1..=255u8) {
            let mut bytes = a.sign(&key()).unwrap().encode();
            let i = pos % bytes.len();
            bytes[i] ^= flip;
            if let Ok(back) = SignedCapacityAdvert::decode(&bytes) {
                prop_assert!(back.verify_signature().is_err(), "byte {} accepted", i);
            }
        }

        #[test]
        fn decode_arbitrary_bytes(tail in proptest::collection::vec(any::<u8>(), 0..400), header in 0..3usize) {
            let mut bytes = match header {
                0 => vec![],
                1 => vec![FORMAT_VERSION, kind::CAPACITY_ADVERT],
                _ => vec![FORMAT_VERSION, kind::SIGNED_CAPACITY_ADVERT],
            };
            bytes.extend(tail);
            if let Ok(a) = CapacityAdvert::decode(&bytes) {
                prop_assert_eq!(a.encode(), bytes.clone());
            }
            if let Ok(s) = SignedCapacityAdvert::decode(&bytes) {
                prop_assert_eq!(s.encode(), bytes);
            }
        }

        #[test]
        fn mutations_and_truncations_never_panic(a in arb_advert(), pos in any::<usize>(), value: u8, cut in any::<usize>()) {
            let bytes = a.sign(&key()).unwrap().encode();
            let mut mutated = bytes.clone();
            let i = pos % mutated.len();
            mutated[i] = value;
            if let Ok(back) = SignedCapacityAdvert::decode(&mutated) {
                prop_assert_eq!(back.encode(), mutated);
            }
            prop_assert!(SignedCapacityAdvert::decode(&bytes[..cut % bytes.len()]).is_err());
        }
    }
}
