//! A small deterministic generator of nodes, adverts and meshes for the unit tests.

use hub_protocol::capacity::{CapacityAdvert, DeviceKind, LoadedModel, Mode, SignedCapacityAdvert};
use hub_protocol::repo::{RepoId, RepoType};
use hub_protocol::signed::{PublicKey, SigningKey};
use std::collections::HashMap;
use std::time::Duration;

/// The clock of the tests.
pub const NOW: u64 = 1_700_000_000;

const MODELS: [&str; 3] = ["org/target", "org/other", "lab/big"];

/// SplitMix64 over a seed.
#[derive(Debug)]
pub struct Gen {
    seed: u64,
    state: u64,
}

impl Gen {
    pub fn new(seed: u64) -> Self {
        Self { seed, state: seed }
    }

    pub fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn model(&mut self) -> RepoId {
        RepoId::parse(RepoType::Model, MODELS[self.below(3) as usize]).unwrap()
    }

    /// The key of the node under test (never one of [`Gen::node`]'s).
    pub fn local_key() -> SigningKey {
        SigningKey::from_bytes(&[0xee; 32])
    }

    /// Node `i`: its key and a live advert of an idle-ish CUDA node in mesh mode, issued at
    /// [`NOW`]. The same `(seed, i)` gives the same node.
    pub fn node(&self, i: u8) -> (SigningKey, CapacityAdvert) {
        let key = SigningKey::from_bytes(&[i.wrapping_add(1); 32]);
        let mut g = Gen::new(self.seed.wrapping_mul(1000).wrapping_add(u64::from(i)));
        let mut a = CapacityAdvert::new(key.public(), 100 + g.below(100), NOW);
        a.mode = Mode::Mesh;
        a.accepts_remote = true;
        a.device = DeviceKind::Cuda;
        a.device_name = "NVIDIA H100 80GB HBM3".into();
        a.memory_total_bytes = 80 << 30;
        a.memory_free_bytes = g.below(80) << 30;
        (a.queue_depth, a.queue_limit) = (1, 8);
        a.running = 2;
        a.free_kv_blocks = g.below(4096) as u32;
        a.kv_block_tokens = 16;
        a.models = vec![LoadedModel {
            repo: RepoId::parse(RepoType::Model, "org/other").unwrap(),
            commit: [g.below(3) as u8; 20],
            decode_tokens_per_s: (1 + g.below(100)) as f32,
            running: 1,
        }];
        (key, a)
    }

    pub fn sign(&self, key: &SigningKey, advert: &CapacityAdvert) -> SignedCapacityAdvert {
        advert.sign(key).unwrap()
    }

    /// `n` varied adverts (mode, queue, memory, models, some expiring within 30 s of [`NOW`])
    /// and RTTs for some of them.
    pub fn mesh(&mut self, n: u8) -> (Vec<CapacityAdvert>, HashMap<PublicKey, Duration>) {
        let mut adverts = Vec::new();
        let mut rtts = HashMap::new();
        for i in 0..n {
            let (_, mut a) = self.node(i);
            a.mode = [Mode::Off, Mode::Local, Mode::Mesh, Mode::Mesh][self.below(4) as usize];
            a.accepts_remote = self.below(4) != 0;
            a.device = [DeviceKind::Cpu, DeviceKind::Cuda][self.below(2) as usize];
            a.queue_limit = self.below(9) as u32;
            a.queue_depth = self.below(u64::from(a.queue_limit) + 2) as u32;
            a.issued_at = NOW - self.below(20);
            a.expires_at = a.issued_at + 20 + self.below(10);
            a.models.clear();
            for repo in MODELS {
                if self.below(2) == 0 {
                    a.models.push(LoadedModel {
                        repo: RepoId::parse(RepoType::Model, repo).unwrap(),
                        commit: [self.below(3) as u8; 20],
                        decode_tokens_per_s: self.below(60) as f32,
                        running: self.below(4) as u32,
                    });
                }
            }
            if self.below(3) != 0 {
                rtts.insert(a.node, Duration::from_micros(self.below(100_000)));
            }
            adverts.push(a);
        }
        (adverts, rtts)
    }
}
