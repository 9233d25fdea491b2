//! Where the shards of a model go: a pure function of the model's sizes, the asked-for
//! parallelism, this node's own capacity and the live adverts, RTTs and the clock. It returns
//! an unsigned [`Placement`]; the node that asked signs it with its key.
//!
//! The plan, in the spirit of exo's and Mesh-LLM's memory-weighted partitioning:
//!
//! 1. **Candidates**: this node (when its mode is not `off`) and every live peer in mode
//!    `mesh` with `accepts_remote`, each with its free memory, its RTT from here (0 for this
//!    node) and its best measured decode speed.
//! 2. **Order**: CUDA before CPU, then lower RTT, then more free memory, then faster, then the
//!    node key — so the nodes that end up in one tensor-parallel group (consecutive in this
//!    order) are those closest to this node and to each other, and a tensor-parallel group,
//!    which exchanges activations twice per layer, does not straddle a slow link.
//! 3. **Groups**: the first `tp × pp` candidates, `tp` per stage, in order.
//! 4. **Layers**: each stage gets layers in proportion to the smallest free memory in its
//!    group (each rank holds `1/tp` of its stage's layers), at least one each, largest
//!    remainders first.
//! 5. **Fit**: every rank must hold its share of the stage's layer bytes and KV cache, plus the
//!    embedding on the first stage and the head on the last stage's rank 0; otherwise the plan
//!    fails with the rank that does not fit, and the caller may ask for more parallelism.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::time::Duration;

use hub_protocol::capacity::{CapacityAdvert, DeviceKind, Mode};
use hub_protocol::placement::{MAX_STAGES, MAX_TENSOR_PARALLEL, PlacedStage, Placement, Sync};
use hub_protocol::repo::RepoId;
use hub_protocol::signed::{GitOid, PublicKey};

/// What is to be placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacementRequest {
    pub model: RepoId,
    pub commit: GitOid,
    pub num_layers: usize,
    /// Bytes of all transformer layers together (split over the whole placement).
    pub layers_bytes: u64,
    /// Bytes of the embedding table (first stage, every rank) and of the head (last stage,
    /// rank 0; 0 when tied to the embedding and the model has one stage).
    pub embed_bytes: u64,
    pub head_bytes: u64,
    /// KV cache to reserve, whole model (split like the layers).
    pub kv_bytes: u64,
    pub tensor_parallel: usize,
    pub pipeline_parallel: usize,
    pub sync: Sync,
}

/// This node, as a candidate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalCapacity {
    pub node: PublicKey,
    pub mode: Mode,
    pub device: DeviceKind,
    pub memory_free_bytes: u64,
    pub decode_tokens_per_s: f32,
}

/// Why no placement was made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    #[error(
        "tensor_parallel must be 1..=16 and pipeline_parallel 1..=32 and at most the layer count"
    )]
    Shape,
    #[error("{need} nodes needed, {have} available")]
    NotEnoughNodes { need: usize, have: usize },
    #[error("stage {stage} rank {rank} ({node}) needs {need} bytes, has {free} free")]
    NotEnoughMemory {
        stage: usize,
        rank: usize,
        node: PublicKey,
        need: u64,
        free: u64,
    },
}

#[derive(Debug, Clone, Copy)]
struct Cand {
    node: PublicKey,
    cuda: bool,
    rtt: Duration,
    free: u64,
    speed: f32,
}

fn order(a: &Cand, b: &Cand) -> Ordering {
    b.cuda
        .cmp(&a.cuda)
        .then(a.rtt.cmp(&b.rtt))
        .then(b.free.cmp(&a.free))
        .then(b.speed.partial_cmp(&a.speed).unwrap_or(Ordering::Equal))
        .then(a.node.cmp(&b.node))
}

/// Layer counts per stage in proportion to `capacity` (≥ 1 each, largest remainders first).
pub fn proportional_layers(num_layers: usize, capacity: &[u64]) -> Vec<usize> {
    let pp = capacity.len();
    if pp == 0 || pp > num_layers {
        return Vec::new();
    }
    let total: u128 = capacity.iter().map(|&c| u128::from(c.max(1))).sum();
    let spare = (num_layers - pp) as u128;
    let mut counts = Vec::with_capacity(pp);
    let mut rems = Vec::with_capacity(pp);
    for (i, &c) in capacity.iter().enumerate() {
        let share = spare * u128::from(c.max(1));
        counts.push(1 + (share / total) as usize);
        rems.push((share % total, i));
    }
    rems.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut left = num_layers - counts.iter().sum::<usize>();
    for &(_, i) in rems.iter().cycle() {
        if left == 0 {
            break;
        }
        counts[i] += 1;
        left -= 1;
    }
    counts
}

/// See the module docs. `seq` and `now` go into the placement as they are.
pub fn plan_placement<'a>(
    req: &PlacementRequest,
    local: &LocalCapacity,
    adverts: impl IntoIterator<Item = &'a CapacityAdvert>,
    rtts: &HashMap<PublicKey, Duration>,
    seq: u64,
    now: u64,
) -> Result<Placement, PlanError> {
    let (tp, pp) = (req.tensor_parallel, req.pipeline_parallel);
    if !(1..=MAX_TENSOR_PARALLEL).contains(&tp)
        || !(1..=MAX_STAGES).contains(&pp)
        || pp > req.num_layers
        || req.num_layers > usize::from(u16::MAX)
    {
        return Err(PlanError::Shape);
    }
    let mut cands = Vec::new();
    if local.mode != Mode::Off {
        cands.push(Cand {
            node: local.node,
            cuda: local.device == DeviceKind::Cuda,
            rtt: Duration::ZERO,
            free: local.memory_free_bytes,
            speed: local.decode_tokens_per_s,
        });
    }
    for a in adverts {
        if a.node == local.node || a.mode != Mode::Mesh || !a.accepts_remote {
            continue;
        }
        cands.push(Cand {
            node: a.node,
            cuda: a.device == DeviceKind::Cuda,
            // Unmeasured peers go after measured ones.
            rtt: rtts
                .get(&a.node)
                .copied()
                .unwrap_or(Duration::from_secs(3600)),
            free: a.memory_free_bytes,
            speed: a
                .models
                .iter()
                .map(|m| m.decode_tokens_per_s)
                .fold(0.0, f32::max),
        });
    }
    let need = tp * pp;
    if cands.len() < need {
        return Err(PlanError::NotEnoughNodes {
            need,
            have: cands.len(),
        });
    }
    cands.sort_by(order);
    cands.truncate(need);
    let groups: Vec<&[Cand]> = cands.chunks(tp).collect();
    let capacity: Vec<u64> = groups
        .iter()
        .map(|g| g.iter().map(|c| c.free).min().unwrap_or(0))
        .collect();
    let counts = proportional_layers(req.num_layers, &capacity);
    let layers = req.num_layers as u64;
    let mut stages = Vec::with_capacity(pp);
    let mut start = 0usize;
    for (s, (group, &n)) in groups.iter().zip(&counts).enumerate() {
        let share = |total: u64| total / layers * n as u64 / tp as u64;
        for (rank, c) in group.iter().enumerate() {
            let mut need = share(req.layers_bytes) + share(req.kv_bytes);
            if s == 0 {
                need += req.embed_bytes;
            }
            if s + 1 == pp && rank == 0 {
                need += req.head_bytes;
            }
            if need > c.free {
                return Err(PlanError::NotEnoughMemory {
                    stage: s,
                    rank,
                    node: c.node,
                    need,
                    free: c.free,
                });
            }
        }
        stages.push(PlacedStage {
            layers: start as u16..(start + n) as u16,
            nodes: group.iter().map(|c| c.node).collect(),
        });
        start += n;
    }
    Ok(Placement {
        made_by: local.node,
        seq,
        issued_at: now,
        model: req.model.clone(),
        commit: req.commit,
        tensor_parallel: tp as u8,
        sync: req.sync,
        stages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_protocol::repo::RepoType;
    use hub_protocol::signed::SigningKey;

    const GB: u64 = 1 << 30;
    const NOW: u64 = 1_700_000_000;

    fn key(i: u8) -> PublicKey {
        SigningKey::from_bytes(&[i; 32]).public()
    }

    fn peer(i: u8, free: u64) -> CapacityAdvert {
        let mut a = CapacityAdvert::new(key(i), 1, NOW);
        a.mode = Mode::Mesh;
        a.accepts_remote = true;
        a.memory_total_bytes = free;
        a.memory_free_bytes = free;
        a
    }

    fn request(tp: usize, pp: usize) -> PlacementRequest {
        PlacementRequest {
            model: RepoId::parse(RepoType::Model, "org/llama").unwrap(),
            commit: [1; 20],
            num_layers: 32,
            layers_bytes: 14 * GB,
            embed_bytes: GB / 2,
            head_bytes: GB / 2,
            kv_bytes: 2 * GB,
            tensor_parallel: tp,
            pipeline_parallel: pp,
            sync: Sync::Q8,
        }
    }

    fn local(free: u64) -> LocalCapacity {
        LocalCapacity {
            node: key(1),
            mode: Mode::Mesh,
            device: DeviceKind::Cpu,
            memory_free_bytes: free,
            decode_tokens_per_s: 0.0,
        }
    }

    #[test]
    fn groups_follow_rtt_and_layers_follow_memory() {
        let adverts = [
            peer(2, 8 * GB),
            peer(3, 16 * GB),
            peer(4, 16 * GB),
            peer(5, 64 * GB),
        ];
        let rtts: HashMap<_, _> = [
            (key(2), Duration::from_millis(1)),
            (key(3), Duration::from_millis(20)),
            (key(4), Duration::from_millis(21)),
            (key(5), Duration::from_millis(90)),
        ]
        .into();
        let p = plan_placement(&request(2, 2), &local(8 * GB), &adverts, &rtts, 1, NOW).unwrap();
        p.validate().unwrap();
        // Closest pair first; the two 16 GB peers next; the far 64 GB peer unused.
        assert_eq!(p.stages[0].nodes, vec![key(1), key(2)]);
        assert_eq!(p.stages[1].nodes, vec![key(3), key(4)]);
        // 8 GB vs 16 GB groups: a third and two thirds of the layers.
        assert_eq!(p.stages[0].layers, 0..11);
        assert_eq!(p.stages[1].layers, 11..32);
        assert_eq!(p.made_by, key(1));
        p.sign(&SigningKey::from_bytes(&[1; 32])).unwrap();
    }

    #[test]
    fn refusals_name_the_reason() {
        let adverts = [peer(2, 4 * GB)];
        let none = HashMap::new();
        assert_eq!(
            plan_placement(&request(2, 2), &local(4 * GB), &adverts, &none, 1, NOW),
            Err(PlanError::NotEnoughNodes { need: 4, have: 2 })
        );
        // 16 GB of weights and cache over two 4 GB nodes does not fit.
        assert!(matches!(
            plan_placement(&request(2, 1), &local(4 * GB), &adverts, &none, 1, NOW),
            Err(PlanError::NotEnoughMemory { .. })
        ));
        // Peers in local mode, or not accepting remote work, are not candidates.
        let mut off = peer(3, 64 * GB);
        off.accepts_remote = false;
        assert!(matches!(
            plan_placement(&request(2, 1), &local(64 * GB), &[off], &none, 1, NOW),
            Err(PlanError::NotEnoughNodes { .. })
        ));
        assert_eq!(
            plan_placement(&request(0, 1), &local(GB), &adverts, &none, 1, NOW),
            Err(PlanError::Shape)
        );
    }

    #[test]
    fn proportional_layers_keep_one_layer_per_stage() {
        assert_eq!(proportional_layers(10, &[3, 1]), vec![7, 3]);
        assert_eq!(proportional_layers(10, &[1_000_000, 1]), vec![9, 1]);
        assert_eq!(proportional_layers(3, &[1, 1, 1]), vec![1, 1, 1]);
        assert!(proportional_layers(2, &[1, 1, 1]).is_empty());
    }
}
