//! The capacity table: the verified, live adverts of the mesh, one per node.
//!
//! [`CapacityTable::insert`] runs the cheap checks first and the signature last, and changes
//! nothing until everything passed, so a forged or replayed advert costs one map lookup (and
//! at most one signature check) and can never displace a genuine one:
//!
//! 1. expired (`expires_at <= now`) or issued more than `max_clock_skew_secs` in the future;
//! 2. `seq` not above the last accepted one of that node (a replay, or out-of-order gossip);
//! 3. the node's last advert was accepted less than `min_interval_secs` ago (rate limit);
//! 4. a new node while the table holds `max_nodes` live nodes;
//! 5. the signature, by the node key inside the advert.
//!
//! An entry leaves the table when it expires ([`CapacityTable::prune`]) or is replaced. The
//! last `seq` leaves with it: an advert older than the expired one expired no later, so it
//! cannot come back (lifetimes are bounded by `MAX_ADVERT_LIFETIME_SECS`). A full table
//! refuses new nodes instead of evicting live ones, so a flood of fresh keys cannot push out
//! the nodes already known; who may gossip at all is the swarm's business.

use hub_protocol::capacity::{CapacityAdvert, DeviceKind, Mode, SignedCapacityAdvert, SpaceSlots};
use hub_protocol::signed::{DecodeError, PublicKey};
use serde::Serialize;
use std::collections::BTreeMap;

/// Limits of a [`CapacityTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableConfig {
    /// Most nodes held at once.
    pub max_nodes: usize,
    /// At most one advert per node is accepted in this many seconds.
    pub min_interval_secs: u64,
    /// How far in the future `issued_at` may be.
    pub max_clock_skew_secs: u64,
}

impl Default for TableConfig {
    /// 1024 nodes, one advert per node per 2 s (the period is 10 s), 30 s of clock skew.
    fn default() -> Self {
        Self {
            max_nodes: 1024,
            min_interval_secs: 2,
            max_clock_skew_secs: 30,
        }
    }
}

/// An accepted advert: the first of its node, or a newer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    New,
    Updated,
}

/// Why an advert was not accepted. The table is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejected {
    #[error("malformed advert")]
    Decode(#[source] DecodeError),
    #[error("signature of node {node} does not verify")]
    Forged { node: PublicKey },
    #[error("expired at {expires_at} (now {now})")]
    Expired { expires_at: u64, now: u64 },
    #[error("issued at {issued_at}, in the future (now {now})")]
    FromTheFuture { issued_at: u64, now: u64 },
    #[error("seq {seq} is not above the last accepted {last}")]
    Replayed { seq: u64, last: u64 },
    #[error("rate limited: the last advert was accepted {elapsed_secs} s ago")]
    RateLimited { elapsed_secs: u64 },
    #[error("table full ({max} nodes)")]
    Full { max: usize },
}

impl Rejected {
    /// Whether the sender misbehaved (gossipsub `Reject`, which lowers its score) rather than
    /// the message being merely late, duplicated or unwelcome (`Ignore`).
    pub fn penalise(&self) -> bool {
        matches!(self, Rejected::Decode(_) | Rejected::Forged { .. })
    }
}

#[derive(Debug, Clone)]
struct Entry {
    advert: CapacityAdvert,
    accepted_at: u64,
}

/// Verified adverts by node key. See the module docs for what is checked.
#[derive(Debug, Clone, Default)]
pub struct CapacityTable {
    config: TableConfig,
    entries: BTreeMap<PublicKey, Entry>,
}

impl CapacityTable {
    pub fn new(config: TableConfig) -> Self {
        Self {
            config,
            entries: BTreeMap::new(),
        }
    }

    /// Decodes a gossip message and [`inserts`](Self::insert) it.
    pub fn insert_bytes(&mut self, bytes: &[u8], now: u64) -> Result<Accepted, Rejected> {
        let signed = SignedCapacityAdvert::decode(bytes).map_err(Rejected::Decode)?;
        self.insert(signed, now)
    }

    /// Checks a decoded advert and stores it (see the module docs for the order of checks).
    pub fn insert(&mut self, signed: SignedCapacityAdvert, now: u64) -> Result<Accepted, Rejected> {
        let advert = &signed.advert;
        if !advert.is_live(now) {
            return Err(Rejected::Expired {
                expires_at: advert.expires_at,
                now,
            });
        }
        if advert.issued_at > now.saturating_add(self.config.max_clock_skew_secs) {
            return Err(Rejected::FromTheFuture {
                issued_at: advert.issued_at,
                now,
            });
        }
        let previous = (self.entries.get(&advert.node))
            .filter(|e| e.advert.is_live(now))
            .map(|e| (e.advert.seq, e.accepted_at));
        if let Some((last, accepted_at)) = previous {
            if advert.seq <= last {
                return Err(Rejected::Replayed {
                    seq: advert.seq,
                    last,
                });
            }
            let elapsed_secs = now.saturating_sub(accepted_at);
            if elapsed_secs < self.config.min_interval_secs {
                return Err(Rejected::RateLimited { elapsed_secs });
            }
        } else if self.entries.len() >= self.config.max_nodes {
            self.prune(now);
            if self.entries.len() >= self.config.max_nodes {
                return Err(Rejected::Full {
                    max: self.config.max_nodes,
                });
            }
        }
        if signed.verify_signature().is_err() {
            return Err(Rejected::Forged { node: advert.node });
        }
        let accepted = if previous.is_some() {
            Accepted::Updated
        } else {
            Accepted::New
        };
        let node = advert.node;
        self.entries.insert(
            node,
            Entry {
                advert: signed.advert,
                accepted_at: now,
            },
        );
        Ok(accepted)
    }

    /// Drops expired adverts; returns how many.
    pub fn prune(&mut self, now: u64) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, e| e.advert.is_live(now));
        before - self.entries.len()
    }

    /// Forgets a node (say, when the swarm bans it).
    pub fn remove(&mut self, node: &PublicKey) -> Option<CapacityAdvert> {
        self.entries.remove(node).map(|e| e.advert)
    }

    /// The node's advert if it is live at `now`.
    pub fn get(&self, node: &PublicKey, now: u64) -> Option<&CapacityAdvert> {
        self.entries
            .get(node)
            .map(|e| &e.advert)
            .filter(|a| a.is_live(now))
    }

    /// The live adverts, by node key.
    pub fn live(&self, now: u64) -> impl Iterator<Item = &CapacityAdvert> + Clone {
        self.entries
            .values()
            .map(|e| &e.advert)
            .filter(move |a| a.is_live(now))
    }

    /// Entries held, expired ones not yet pruned included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The live adverts as `GET /api/mesh/compute` shows them.
    pub fn view(&self, now: u64) -> TableView {
        TableView {
            now,
            nodes: self.live(now).map(NodeView::from).collect(),
        }
    }
}

/// The JSON shape of the table (`GET /api/mesh/compute`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TableView {
    /// The unix time the view was taken at.
    pub now: u64,
    pub nodes: Vec<NodeView>,
}

/// One advert, for JSON: keys and commits in hex, repos as `namespace/name`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeView {
    pub node: String,
    pub seq: u64,
    pub issued_at: u64,
    pub expires_at: u64,
    pub mode: Mode,
    pub accepts_remote: bool,
    pub device: DeviceKind,
    pub device_name: String,
    pub memory_total_bytes: u64,
    pub memory_free_bytes: u64,
    pub queue_depth: u32,
    pub queue_limit: u32,
    pub running: u32,
    pub free_kv_blocks: u32,
    pub kv_block_tokens: u32,
    pub models: Vec<ModelView>,
    pub spaces: SpaceSlots,
}

/// One loaded model of a [`NodeView`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelView {
    pub repo: String,
    pub commit: String,
    pub decode_tokens_per_s: f32,
    pub running: u32,
}

impl From<&CapacityAdvert> for NodeView {
    fn from(a: &CapacityAdvert) -> Self {
        Self {
            node: a.node.to_string(),
            seq: a.seq,
            issued_at: a.issued_at,
            expires_at: a.expires_at,
            mode: a.mode,
            accepts_remote: a.accepts_remote,
            device: a.device,
            device_name: a.device_name.clone(),
            memory_total_bytes: a.memory_total_bytes,
            memory_free_bytes: a.memory_free_bytes,
            queue_depth: a.queue_depth,
            queue_limit: a.queue_limit,
            running: a.running,
            free_kv_blocks: a.free_kv_blocks,
            kv_block_tokens: a.kv_block_tokens,
            models: a
                .models
                .iter()
                .map(|m| ModelView {
                    repo: m.repo.hub_id(),
                    commit: hex::encode(m.commit),
                    decode_tokens_per_s: m.decode_tokens_per_s,
                    running: m.running,
                })
                .collect(),
            spaces: a.spaces.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testgen::{Gen, NOW};

    fn table() -> CapacityTable {
        CapacityTable::new(TableConfig {
            max_nodes: 4,
            min_interval_secs: 2,
            max_clock_skew_secs: 30,
        })
    }

    #[test]
    fn accepts_new_then_newer() {
        let g = Gen::new(1);
        let mut t = table();
        let (key, a) = g.node(0);
        assert_eq!(t.insert(g.sign(&key, &a), NOW), Ok(Accepted::New));
        let mut b = a.clone();
        b.seq += 1;
        b.queue_depth = 3;
        assert_eq!(t.insert(g.sign(&key, &b), NOW + 2), Ok(Accepted::Updated));
        assert_eq!(t.get(&a.node, NOW + 2).unwrap().queue_depth, 3);
        assert_eq!(t.live(NOW + 2).count(), 1);
    }

    #[test]
    fn forged_adverts_are_rejected_and_change_nothing() {
        let g = Gen::new(2);
        let mut t = table();
        let (key, a) = g.node(0);
        t.insert(g.sign(&key, &a), NOW).unwrap();
        // A peer claims a better state for the node, with a newer seq, under a stale signature.
        let mut forged = g.sign(&key, &a);
        forged.advert.seq += 10;
        forged.advert.queue_depth = 0;
        forged.advert.queue_limit = 1000;
        let err = t.insert(forged.clone(), NOW + 5).unwrap_err();
        assert_eq!(err, Rejected::Forged { node: a.node });
        assert!(err.penalise());
        assert_eq!(t.get(&a.node, NOW + 5), Some(&a));
        // Signed by a different key than the node it names.
        let (other, _) = g.node(1);
        let mut b = a.clone();
        b.seq += 1;
        let mut signed = g.sign(&key, &b);
        signed.advert.node = other.public();
        assert!(matches!(
            t.insert(signed, NOW + 5),
            Err(Rejected::Forged { .. })
        ));
        // Garbage bytes.
        assert!(
            t.insert_bytes(b"not an advert", NOW)
                .unwrap_err()
                .penalise()
        );
    }

    #[test]
    fn stale_and_future_adverts_are_dropped() {
        let g = Gen::new(3);
        let mut t = table();
        let (key, a) = g.node(0);
        let err = t.insert(g.sign(&key, &a), a.expires_at).unwrap_err();
        assert!(matches!(err, Rejected::Expired { .. }));
        assert!(!err.penalise());
        let mut future = a.clone();
        future.issued_at = NOW + 31;
        future.expires_at = NOW + 51;
        assert!(matches!(
            t.insert(g.sign(&key, &future), NOW),
            Err(Rejected::FromTheFuture { .. })
        ));
        t.insert(g.sign(&key, &a), NOW).unwrap();
        assert_eq!(t.live(a.expires_at - 1).count(), 1);
        assert_eq!(t.live(a.expires_at).count(), 0);
        assert!(t.get(&a.node, a.expires_at).is_none());
        assert_eq!(t.prune(a.expires_at), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn replays_are_ignored() {
        let g = Gen::new(4);
        let mut t = table();
        let (key, a) = g.node(0);
        let first = g.sign(&key, &a);
        t.insert(first.clone(), NOW).unwrap();
        assert_eq!(
            t.insert(first.clone(), NOW + 5),
            Err(Rejected::Replayed {
                seq: a.seq,
                last: a.seq
            })
        );
        let mut b = a.clone();
        b.seq += 1;
        t.insert(g.sign(&key, &b), NOW + 5).unwrap();
        // The older advert, still within its lifetime, does not roll the entry back.
        assert!(matches!(
            t.insert(first, NOW + 10),
            Err(Rejected::Replayed { .. })
        ));
        assert_eq!(t.get(&a.node, NOW + 10).unwrap().seq, b.seq);
    }

    #[test]
    fn rate_limit_per_node() {
        let g = Gen::new(5);
        let mut t = table();
        let (key, mut a) = g.node(0);
        t.insert(g.sign(&key, &a), NOW).unwrap();
        a.seq += 1;
        assert_eq!(
            t.insert(g.sign(&key, &a), NOW + 1),
            Err(Rejected::RateLimited { elapsed_secs: 1 })
        );
        // Another node is not affected.
        let (key2, b) = g.node(1);
        assert_eq!(t.insert(g.sign(&key2, &b), NOW + 1), Ok(Accepted::New));
        assert_eq!(t.insert(g.sign(&key, &a), NOW + 2), Ok(Accepted::Updated));
    }

    #[test]
    fn node_cap_refuses_newcomers_until_entries_expire() {
        let g = Gen::new(6);
        let mut t = table();
        for i in 0..4 {
            let (key, a) = g.node(i);
            t.insert(g.sign(&key, &a), NOW).unwrap();
        }
        let (key, a) = g.node(4);
        assert_eq!(
            t.insert(g.sign(&key, &a), NOW),
            Err(Rejected::Full { max: 4 })
        );
        // Known nodes still update.
        let (key0, mut a0) = g.node(0);
        a0.seq += 1;
        assert!(t.insert(g.sign(&key0, &a0), NOW + 2).is_ok());
        // Once the others expire there is room again.
        let mut late = a.clone();
        late.issued_at = a.expires_at;
        late.expires_at = a.expires_at + 20;
        assert_eq!(
            t.insert(g.sign(&key, &late), a.expires_at),
            Ok(Accepted::New)
        );
        assert!(t.len() <= 2);
    }

    #[test]
    fn view_serialises() {
        let g = Gen::new(7);
        let mut t = table();
        let (key, a) = g.node(0);
        t.insert(g.sign(&key, &a), NOW).unwrap();
        let json = serde_json::to_value(t.view(NOW)).unwrap();
        let node = &json["nodes"][0];
        assert_eq!(json["now"], NOW);
        assert_eq!(node["node"], a.node.to_string());
        assert_eq!(node["mode"], "mesh");
        assert_eq!(node["device"], "cuda");
        assert_eq!(node["models"][0]["repo"], a.models[0].repo.hub_id());
        assert_eq!(node["models"][0]["commit"], hex::encode(a.models[0].commit));
        assert!(t.view(a.expires_at).nodes.is_empty());
    }
}
