//! Where an inference request goes: a pure function of the request, this node's state, the
//! live adverts, RTTs and the clock.
//!
//! Candidates come in tiers, best first; the gateway tries them in order and moves to the next
//! when one fails before the first token:
//!
//! 1. **local, warm**: this node has the model loaded and queue room (and its mode is not
//!    `off`). It beats any peer: no network hop, no dependence on a peer staying up, and the
//!    operator chose to run models here. An operator who wants a GPU peer to serve instead sets
//!    the gateway's mode to `off`.
//! 2. **peers, warm**: the model loaded (same repo; same commit when the request pins one) and
//!    queue room; fastest measured decode first, then shorter queue, then lower RTT.
//! 3. **local, can load**: the model is not loaded here but fits, and there is queue room.
//! 4. **peers, can load**: free memory of at least `load_bytes`; CUDA before CPU, then
//!    shorter queue, lower RTT, more free memory. They fetch the weights from the mesh.
//! 5. **peers, warm, queue full** by their last advert, as a last resort: adverts are up to
//!    two periods old, so a queue that was full may have drained; a peer that is still full
//!    answers 429 at once and the next candidate is tried. Same order as tier 2.
//! 6. **local, fallback**: this node if it is not listed yet (warm with a full queue, or unable
//!    to load the model) and its mode is not `off`, so the request fails here with the
//!    engine's own error (queue full, out of memory) rather than "no node".
//!
//! Within a tier the node key breaks remaining ties, so the order is deterministic. A peer is
//! a candidate only if its advert is live, it is in mode `mesh` with `accepts_remote` set, and
//! it is not this node (our own advert comes back through gossip). An empty decision means
//! nobody can serve the request (mode `off` and no capable peer): the gateway answers 503.

use hub_protocol::capacity::{CapacityAdvert, DeviceKind, Mode};
use hub_protocol::repo::RepoId;
use hub_protocol::signed::{GitOid, PublicKey};
use std::cmp::Ordering;
use std::collections::HashMap;
use std::time::Duration;

/// What is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRequest {
    pub model: RepoId,
    /// The commit the request resolved to, when it must be exactly that one; `None` accepts
    /// any loaded commit of the repo.
    pub commit: Option<GitOid>,
    /// Memory a node needs to load the model: weights plus a minimal KV cache. 0 when
    /// unknown, which treats every peer as able to load it.
    pub load_bytes: u64,
}

/// This node's own state for the request at hand.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalState {
    /// This node's key, so its own advert is not counted as a peer.
    pub node: PublicKey,
    pub mode: Mode,
    /// The requested model (at the pinned commit, if any) is loaded here.
    pub warm: bool,
    pub queue_depth: u32,
    pub queue_limit: u32,
    /// The model is not loaded but this node has the memory to load it.
    pub can_load: bool,
    /// Measured decode speed of the loaded model, for the reason string.
    pub decode_tokens_per_s: Option<f32>,
}

impl LocalState {
    /// A node with nothing loaded, nothing queued and no memory to load anything.
    pub fn idle(node: PublicKey, mode: Mode) -> Self {
        Self {
            node,
            mode,
            warm: false,
            queue_depth: 0,
            queue_limit: 0,
            can_load: false,
            decode_tokens_per_s: None,
        }
    }

    fn has_room(&self) -> bool {
        self.queue_depth < self.queue_limit
    }
}

/// Who runs the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    Local,
    Remote(PublicKey),
}

/// One place to try, with why it was chosen ("warm, queue 1/8, 41 tok/s, rtt 0.3 ms").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub target: Target,
    pub reason: String,
}

/// The candidates, best first (see the module docs for the order).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    pub candidates: Vec<Candidate>,
    /// Whether [`Target::Local`] is among the candidates.
    pub includes_local: bool,
}

impl Decision {
    pub fn first(&self) -> Option<&Candidate> {
        self.candidates.first()
    }

    fn push(&mut self, target: Target, reason: String) {
        self.includes_local |= target == Target::Local;
        self.candidates.push(Candidate { target, reason });
    }
}

/// Orders the candidates for `request`; pure, see the module docs.
pub fn route<'a>(
    request: &RouteRequest,
    local: &LocalState,
    adverts: impl IntoIterator<Item = &'a CapacityAdvert>,
    rtts: &HashMap<PublicKey, Duration>,
    now: u64,
) -> Decision {
    let commit = request.commit.as_ref();
    let mut warm = Vec::new();
    let mut warm_full = Vec::new();
    let mut cold = Vec::new();
    for a in adverts {
        if !a.is_live(now) || !a.serves_peers() || a.node == local.node {
            continue;
        }
        let rtt = rtts.get(&a.node).copied();
        let full = a.queue_depth >= a.queue_limit;
        if let Some(m) = a.model(&request.model, commit) {
            let tier = if full { &mut warm_full } else { &mut warm };
            tier.push((a, m.decode_tokens_per_s, rtt));
        } else if !full && a.memory_free_bytes >= request.load_bytes {
            cold.push((a, rtt));
        }
    }
    let by_speed =
        |(a, tps_a, rtt_a): &(&CapacityAdvert, f32, Option<Duration>),
         (b, tps_b, rtt_b): &(&CapacityAdvert, f32, Option<Duration>)| {
            tps_b
                .total_cmp(tps_a)
                .then(a.queue_depth.cmp(&b.queue_depth))
                .then(rtt_order(*rtt_a, *rtt_b))
                .then(a.node.cmp(&b.node))
        };
    warm.sort_by(by_speed);
    warm_full.sort_by(by_speed);
    cold.sort_by(|(a, rtt_a), (b, rtt_b)| {
        (b.device == DeviceKind::Cuda)
            .cmp(&(a.device == DeviceKind::Cuda))
            .then(a.queue_depth.cmp(&b.queue_depth))
            .then(rtt_order(*rtt_a, *rtt_b))
            .then(b.memory_free_bytes.cmp(&a.memory_free_bytes))
            .then(a.node.cmp(&b.node))
    });

    let mut decision = Decision::default();
    let runs_local = local.mode != Mode::Off;
    let queue = format!("queue {}/{}", local.queue_depth, local.queue_limit);
    if runs_local && local.warm && local.has_room() {
        let speed = local
            .decode_tokens_per_s
            .map(|t| format!(", {t:.0} tok/s"))
            .unwrap_or_default();
        decision.push(Target::Local, format!("local, warm, {queue}{speed}"));
    }
    let warm_reason = |prefix: &str, a: &CapacityAdvert, tps: f32, rtt, full: &str| {
        format!(
            "{prefix}warm, queue {}/{}{full}, {tps:.0} tok/s, {}",
            a.queue_depth,
            a.queue_limit,
            show_rtt(rtt)
        )
    };
    for (a, tps, rtt) in warm {
        let reason = warm_reason("", a, tps, rtt, "");
        decision.push(Target::Remote(a.node), reason);
    }
    if runs_local && !local.warm && local.can_load && local.has_room() {
        decision.push(Target::Local, format!("local, can load, {queue}"));
    }
    for (a, rtt) in cold {
        let device = match a.device {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
        };
        let reason = format!(
            "can load ({:.1} GiB free, {device}), queue {}/{}, {}",
            a.memory_free_bytes as f64 / (1u64 << 30) as f64,
            a.queue_depth,
            a.queue_limit,
            show_rtt(rtt)
        );
        decision.push(Target::Remote(a.node), reason);
    }
    for (a, tps, rtt) in warm_full {
        let reason = warm_reason("last resort: ", a, tps, rtt, " full by its last advert");
        decision.push(Target::Remote(a.node), reason);
    }
    if runs_local && !decision.includes_local {
        let why = if !local.has_room() {
            format!("{queue} full")
        } else {
            "cannot load the model".to_owned()
        };
        decision.push(Target::Local, format!("local fallback, {why}"));
    }
    decision
}

/// Known RTTs first, shorter first.
fn rtt_order(a: Option<Duration>, b: Option<Duration>) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => a.cmp(&b),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

fn show_rtt(rtt: Option<Duration>) -> String {
    match rtt {
        Some(d) => format!("rtt {:.1} ms", d.as_secs_f64() * 1e3),
        None => "rtt unknown".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testgen::{Gen, NOW};
    use hub_protocol::capacity::LoadedModel;
    use hub_protocol::repo::RepoType;

    fn model() -> RepoId {
        RepoId::parse(RepoType::Model, "org/target").unwrap()
    }

    fn request() -> RouteRequest {
        RouteRequest {
            model: model(),
            commit: None,
            load_bytes: 4 << 30,
        }
    }

    fn local(mode: Mode) -> LocalState {
        let mut l = LocalState::idle(Gen::local_key().public(), mode);
        l.queue_limit = 4;
        l
    }

    /// A mesh node with `tps` for the target model (none when `None`) and queue `depth`/8.
    fn peer(g: &mut Gen, i: u8, tps: Option<f32>, depth: u32) -> CapacityAdvert {
        let (_, mut a) = g.node(i);
        a.models.retain(|m| m.repo != model());
        if let Some(tps) = tps {
            a.models.push(LoadedModel {
                repo: model(),
                commit: [1; 20],
                decode_tokens_per_s: tps,
                running: 1,
            });
        }
        (a.queue_depth, a.queue_limit) = (depth, 8);
        a
    }

    fn targets(d: &Decision) -> Vec<Target> {
        d.candidates.iter().map(|c| c.target).collect()
    }

    fn remote(a: &CapacityAdvert) -> Target {
        Target::Remote(a.node)
    }

    #[test]
    fn warm_beats_cold() {
        let mut g = Gen::new(1);
        let cold = peer(&mut g, 0, None, 0);
        let warm = peer(&mut g, 1, Some(5.0), 7);
        let d = route(
            &request(),
            &local(Mode::Off),
            [&cold, &warm],
            &HashMap::new(),
            NOW,
        );
        assert_eq!(targets(&d), [remote(&warm), remote(&cold)]);
        assert!(
            d.candidates[0]
                .reason
                .starts_with("warm, queue 7/8, 5 tok/s")
        );
        assert!(d.candidates[1].reason.starts_with("can load ("), "{d:?}");
        assert!(!d.includes_local);
    }

    #[test]
    fn queue_limits_and_memory_are_respected() {
        let mut g = Gen::new(2);
        let full = peer(&mut g, 0, Some(90.0), 8);
        let mut small = peer(&mut g, 1, None, 0);
        small.memory_free_bytes = (4 << 30) - 1;
        let mut cold_full = peer(&mut g, 2, None, 8);
        cold_full.memory_free_bytes = 64 << 30;
        let d = route(
            &request(),
            &local(Mode::Off),
            [&full, &small, &cold_full],
            &HashMap::new(),
            NOW,
        );
        // Only the warm peer, as a last resort (its advert may be stale); a full cold one
        // and one without the memory are not candidates.
        assert_eq!(d.candidates.len(), 1, "{d:?}");
        assert_eq!(d.candidates[0].target, Target::Remote(full.node));
        assert!(d.candidates[0].reason.starts_with("last resort"), "{d:?}");
    }

    #[test]
    fn commit_pin_makes_other_commits_cold() {
        let mut g = Gen::new(3);
        let a = peer(&mut g, 0, Some(50.0), 0);
        let mut req = request();
        req.commit = Some([2; 20]);
        let d = route(&req, &local(Mode::Off), [&a], &HashMap::new(), NOW);
        assert!(d.candidates[0].reason.starts_with("can load"));
        req.commit = Some([1; 20]);
        let d = route(&req, &local(Mode::Off), [&a], &HashMap::new(), NOW);
        assert!(d.candidates[0].reason.starts_with("warm"));
    }

    #[test]
    fn stale_local_mode_and_non_serving_peers_are_skipped() {
        let mut g = Gen::new(4);
        let stale = peer(&mut g, 0, Some(50.0), 0);
        let mut local_only = peer(&mut g, 1, Some(50.0), 0);
        local_only.mode = Mode::Local;
        let mut refusing = peer(&mut g, 2, Some(50.0), 0);
        refusing.accepts_remote = false;
        let mut me = peer(&mut g, 3, Some(50.0), 0);
        me.node = Gen::local_key().public();
        let d = route(
            &request(),
            &local(Mode::Off),
            [&stale, &local_only, &refusing, &me],
            &HashMap::new(),
            stale.expires_at,
        );
        assert!(d.candidates.is_empty(), "{d:?}");
    }

    #[test]
    fn local_competes_by_tier() {
        let mut g = Gen::new(5);
        let warm = peer(&mut g, 0, Some(80.0), 0);
        let cold = peer(&mut g, 1, None, 0);
        let ads = [&warm, &cold];
        let rtts = HashMap::new();

        // Local warm with room wins over a faster warm peer.
        let mut l = local(Mode::Local);
        (l.warm, l.decode_tokens_per_s) = (true, Some(12.0));
        let d = route(&request(), &l, ads, &rtts, NOW);
        assert_eq!(targets(&d), [Target::Local, remote(&warm), remote(&cold)]);
        assert_eq!(d.candidates[0].reason, "local, warm, queue 0/4, 12 tok/s");
        assert!(d.includes_local);

        // Local warm with a full queue falls back to last place.
        l.queue_depth = 4;
        let d = route(&request(), &l, ads, &rtts, NOW);
        assert_eq!(targets(&d), [remote(&warm), remote(&cold), Target::Local]);
        assert_eq!(d.candidates[2].reason, "local fallback, queue 4/4 full");

        // Local able to load: after warm peers, before cold ones.
        let mut l = local(Mode::Mesh);
        l.can_load = true;
        let d = route(&request(), &l, ads, &rtts, NOW);
        assert_eq!(targets(&d), [remote(&warm), Target::Local, remote(&cold)]);

        // Unable to load: last resort.
        l.can_load = false;
        let d = route(&request(), &l, ads, &rtts, NOW);
        assert_eq!(targets(&d), [remote(&warm), remote(&cold), Target::Local]);
        assert_eq!(
            d.candidates[2].reason,
            "local fallback, cannot load the model"
        );

        // With nobody else, the local node is the only candidate.
        let d = route(&request(), &l, [], &rtts, NOW);
        assert_eq!(targets(&d), [Target::Local]);
    }

    #[test]
    fn off_mode_never_runs_locally() {
        let mut l = local(Mode::Off);
        (l.warm, l.can_load) = (true, true);
        let d = route(&request(), &l, [], &HashMap::new(), NOW);
        assert_eq!(d, Decision::default());
    }

    #[test]
    fn ties_break_on_speed_then_queue_then_rtt() {
        let mut g = Gen::new(6);
        let fast = peer(&mut g, 0, Some(40.0), 3);
        let short_queue = peer(&mut g, 1, Some(30.0), 0);
        let near = peer(&mut g, 2, Some(30.0), 1);
        let far = peer(&mut g, 3, Some(30.0), 1);
        let unknown = peer(&mut g, 4, Some(30.0), 1);
        let rtts = HashMap::from([
            (near.node, Duration::from_micros(300)),
            (far.node, Duration::from_millis(80)),
        ]);
        let d = route(
            &request(),
            &local(Mode::Off),
            [&unknown, &far, &near, &short_queue, &fast],
            &rtts,
            NOW,
        );
        assert_eq!(
            targets(&d),
            [
                remote(&fast),
                remote(&short_queue),
                remote(&near),
                remote(&far),
                remote(&unknown)
            ]
        );
        assert_eq!(
            d.candidates[2].reason,
            "warm, queue 1/8, 30 tok/s, rtt 0.3 ms"
        );
        assert_eq!(
            d.candidates[4].reason,
            "warm, queue 1/8, 30 tok/s, rtt unknown"
        );
    }

    #[test]
    fn cold_peers_prefer_cuda() {
        let mut g = Gen::new(7);
        let mut cpu = peer(&mut g, 0, None, 0);
        cpu.device = DeviceKind::Cpu;
        let mut gpu = peer(&mut g, 1, None, 2);
        gpu.device = DeviceKind::Cuda;
        let rtts = HashMap::from([(cpu.node, Duration::from_micros(100))]);
        let d = route(&request(), &local(Mode::Off), [&cpu, &gpu], &rtts, NOW);
        assert_eq!(targets(&d), [remote(&gpu), remote(&cpu)]);
    }

    /// Invariants over many generated tables and local states.
    #[test]
    fn generated_tables() {
        let (mut warm_seen, mut cold_seen) = (0, 0);
        for seed in 0..300 {
            let mut g = Gen::new(seed);
            let (adverts, rtts) = g.mesh(12);
            let now = NOW + g.below(30);
            let mut l = local([Mode::Off, Mode::Local, Mode::Mesh][g.below(3) as usize]);
            (l.warm, l.can_load) = (g.below(2) == 0, g.below(2) == 0);
            l.queue_depth = g.below(6) as u32;
            let mut req = request();
            req.model = g.model();
            req.load_bytes = g.below(40) << 30;
            if g.below(3) == 0 {
                req.commit = Some([g.below(3) as u8; 20]);
            }
            let d = route(&req, &l, &adverts, &rtts, now);

            let locals = d.candidates.iter().filter(|c| c.target == Target::Local);
            assert_eq!(locals.count(), usize::from(d.includes_local));
            assert_eq!(d.includes_local, l.mode != Mode::Off, "seed {seed}");
            if l.mode != Mode::Off && l.warm && l.queue_depth < l.queue_limit {
                assert_eq!(d.first().unwrap().target, Target::Local, "seed {seed}");
            }
            let mut seen_cold = false;
            let mut seen_full = false;
            let mut last_warm_tps = f32::INFINITY;
            for c in &d.candidates {
                let Target::Remote(node) = c.target else {
                    continue;
                };
                let a = adverts.iter().find(|a| a.node == node).unwrap();
                assert!(a.is_live(now) && a.serves_peers(), "seed {seed}: {a:?}");
                if a.queue_depth >= a.queue_limit {
                    // Full peers come last, warm ones only.
                    assert!(
                        a.model(&req.model, req.commit.as_ref()).is_some(),
                        "seed {seed}"
                    );
                    assert!(c.reason.starts_with("last resort"), "seed {seed}");
                    seen_full = true;
                    continue;
                }
                assert!(!seen_full, "seed {seed}: a peer with room after a full one");
                match a.model(&req.model, req.commit.as_ref()) {
                    Some(m) => {
                        assert!(!seen_cold, "seed {seed}: warm after cold");
                        assert!(m.decode_tokens_per_s <= last_warm_tps, "seed {seed}");
                        last_warm_tps = m.decode_tokens_per_s;
                        warm_seen += 1;
                    }
                    None => {
                        seen_cold = true;
                        cold_seen += 1;
                        assert!(a.memory_free_bytes >= req.load_bytes, "seed {seed}");
                    }
                }
            }
            // Every capable peer is listed exactly once: warm ones (with room or, last, full)
            // and cold ones with room and memory.
            let capable = adverts
                .iter()
                .filter(|a| a.is_live(now) && a.serves_peers())
                .filter(|a| {
                    a.model(&req.model, req.commit.as_ref()).is_some()
                        || (a.queue_depth < a.queue_limit && a.memory_free_bytes >= req.load_bytes)
                })
                .count();
            assert_eq!(
                d.candidates.len(),
                capable + usize::from(d.includes_local),
                "seed {seed}"
            );
        }
        // The generator exercises both tiers.
        assert!(
            warm_seen > 100 && cold_seen > 100,
            "{warm_seen} warm, {cold_seen} cold"
        );
    }
}
