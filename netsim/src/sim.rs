//! The replication service at scale: [`hub_mesh::sim::Net`] (the virtual-time harness the
//! mesh's own tests use, with the real `Service`, ref stores and signatures) with 1 000 to
//! 10 000 nodes.
//!
//! Topology: a ring (so the graph is connected) plus random chords up to the configured
//! average degree, drawn from the scenario's seed; every link delivers in order after 1 to
//! 50 ms (the harness's latency). A node that accepts an update forwards it to all its other
//! links, which is gossipsub's flooding inside its mesh (degree D = 6 by default); lazy
//! `IHAVE` gossip is not modelled. Node 0 (the origin, namespace of `alice/shared`) and node
//! N/2 (namespace of `bob/side`) hold repos and publish; every other node is a relay with its
//! own ref store that judges, stores and forwards.
//!
//! Phases, each measured in virtual time and in messages, plus the wall-clock time it took:
//! 1. **updates**: the origin publishes `updates` signed updates one after the other; for
//!    each, every node's time to accept it (p50/p99/max) and the messages per node.
//! 2. **partition and heal**: the links between the halves are cut; the origin publishes
//!    again on one side and `bob` twice on the other; the links come back and the halves
//!    catch up by the re-gossip a new subscriber gets. Reported: the time from the heal until
//!    the last node holds both latest seqs, the messages that took, and the nodes that ended
//!    without the latest seq of either repo (commits lost; must be 0).
//! 3. **forgery and replay**: one relay gossips an update for `alice/shared` signed by its
//!    own key with a higher seq, a replay of the first (older) update, and a replay of the
//!    current one. Reported: the nodes that accepted any of them (must be 0), the rejections
//!    (the liar is blamed by its neighbours), and how far they spread (only to the liar's
//!    neighbours: nobody forwards what it did not accept).

use crate::report::{Spread, round3, table};
use crate::scenario::SimConfig;
use anyhow::{Result, ensure};
use hub_mesh::sim::{Net, NodeStats, UNIX_ZERO, model};
use hub_protocol::repo::RepoId;
use hub_protocol::signed::{RefUpdate, SignedRefUpdate, SigningKey};
use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

/// Virtual time each phase is given to settle (the queue drains long before).
const SETTLE: Duration = Duration::from_secs(60);

/// What one network size gave.
#[derive(Debug, Clone, Serialize)]
pub struct SizeReport {
    pub nodes: usize,
    pub links: usize,
    pub mean_degree: f64,
    /// Wall-clock seconds to build the network (ref stores on disk, services started).
    pub setup_wall_s: f64,
    pub updates: Vec<UpdateReport>,
    pub partition: PartitionReport,
    pub forgery: ForgeryReport,
    /// Wall-clock seconds of the whole size, setup included.
    pub wall_s: f64,
}

/// One published update.
#[derive(Debug, Clone, Serialize)]
pub struct UpdateReport {
    pub seq: u64,
    /// Nodes that accepted it.
    pub reached: usize,
    /// Virtual seconds from publishing to each node's accepting it.
    pub convergence_s: Spread,
    /// Gossip messages sent per node (each is received once; the first copy is handled,
    /// the others are duplicates).
    pub messages_per_node: f64,
    pub duplicates_per_node: f64,
    pub wall_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionReport {
    pub cut_links: usize,
    /// Virtual seconds from the heal until the last node holds both repos' latest seqs.
    pub heal_convergence_s: f64,
    pub catch_up_messages_per_node: f64,
    /// Nodes without the latest seq of `alice/shared` or `bob/side` at the end (must be 0).
    pub nodes_missing_a_commit: usize,
    pub wall_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ForgeryReport {
    /// The liar's links: its neighbours are the only nodes that should ever see its lies.
    pub liar_links: usize,
    /// Forged or replayed messages that reached a node, counted per delivery.
    pub deliveries: u64,
    /// Judged `Reject` (forged: the forwarder, the liar, is blamed).
    pub rejected: u64,
    /// Judged `Ignore` (replays: dropped, not forwarded, no blame).
    pub ignored: u64,
    /// Nodes whose accepted update for the repo changed (must be 0).
    pub nodes_accepting: usize,
}

/// splitmix64, for the topology.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A ring plus random chords: `n * degree / 2` distinct links in all.
fn topology(n: usize, degree: usize, seed: u64) -> Vec<(usize, usize)> {
    let mut rng = Rng(seed ^ 0x746f_706f);
    let mut links = std::collections::BTreeSet::new();
    for i in 0..n {
        let j = (i + 1) % n;
        links.insert((i.min(j), i.max(j)));
    }
    let want = (n * degree / 2).min(n * (n - 1) / 2);
    while links.len() < want {
        let (a, b) = (rng.below(n), rng.below(n));
        if a != b {
            links.insert((a.min(b), a.max(b)));
        }
    }
    links.into_iter().collect()
}

fn totals(net: &Net) -> NodeStats {
    let mut sum = NodeStats::default();
    for i in 0..net.len() {
        let s = net.stats(i);
        sum.sent += s.sent;
        sum.received += s.received;
        sum.handled += s.handled;
        sum.accepted += s.accepted;
        sum.rejected += s.rejected;
        sum.ignored += s.ignored;
    }
    sum
}

fn seq_of(net: &Net, i: usize, repo: &RepoId) -> Option<(u64, Duration)> {
    net.stats(i).seqs.get(repo).copied()
}

/// Runs one network size through the three phases.
pub fn run_size(n: usize, config: &SimConfig, seed: u64, dir: &Path) -> Result<SizeReport> {
    let started = Instant::now();
    let mut net = Net::new_in(seed, dir);
    let origin = 0;
    let other = n / 2;
    for i in 0..n {
        if i == origin || i == other {
            net.add_seeder(&[]);
        } else {
            net.add_relay();
        }
    }
    let links = topology(n, config.degree, seed);
    for &(a, b) in &links {
        net.link(a, b);
    }
    net.run_for(Duration::from_secs(1));
    let setup_wall_s = round3(started.elapsed().as_secs_f64());

    let shared = model("alice/shared");
    let side = model("bob/side");
    let mut updates = Vec::new();
    let mut first: Option<SignedRefUpdate> = None;
    for k in 1..=config.updates {
        let wall = Instant::now();
        let before = totals(&net);
        let at = net.now();
        net.write(origin, &shared, &format!("file{k}.txt"), 0);
        net.run_for(SETTLE);
        let after = totals(&net);
        let times: Vec<f64> = (0..n)
            .filter_map(|i| seq_of(&net, i, &shared))
            .filter(|&(seq, _)| seq >= k)
            .map(|(_, t)| (t - at).as_secs_f64())
            .collect();
        if first.is_none() {
            first = net.last_accepted(1, &shared);
        }
        updates.push(UpdateReport {
            seq: k,
            reached: times.len(),
            convergence_s: Spread::of(&times),
            messages_per_node: round3((after.sent - before.sent) as f64 / n as f64),
            duplicates_per_node: round3(
                ((after.received - before.received) - (after.handled - before.handled)) as f64
                    / n as f64,
            ),
            wall_s: round3(wall.elapsed().as_secs_f64()),
        });
    }
    let first = first.ok_or_else(|| anyhow::anyhow!("node 1 never accepted the first update"))?;

    let partition = partition(&mut net, &links, config.updates, &shared, &side)?;
    let forgery = forgery(&mut net, &links, &shared, &first)?;
    Ok(SizeReport {
        nodes: n,
        links: links.len(),
        mean_degree: round3(2.0 * links.len() as f64 / n as f64),
        setup_wall_s,
        updates,
        partition,
        forgery,
        wall_s: round3(started.elapsed().as_secs_f64()),
    })
}

fn partition(
    net: &mut Net,
    links: &[(usize, usize)],
    published: u64,
    shared: &RepoId,
    side: &RepoId,
) -> Result<PartitionReport> {
    let wall = Instant::now();
    let n = net.len();
    let half = |i: usize| i < n / 2;
    let cut: Vec<(usize, usize)> = links
        .iter()
        .copied()
        .filter(|&(a, b)| half(a) != half(b))
        .collect();
    for &(a, b) in &cut {
        net.unlink(a, b);
    }
    net.write(0, shared, "during-partition.txt", 0);
    net.write(n / 2, side, "one.txt", 0);
    net.run_for(Duration::from_secs(1));
    net.write(n / 2, side, "two.txt", 0);
    net.run_for(SETTLE);
    // Each half holds its own side's news only.
    let latest = published + 1;
    for i in 0..n {
        let alice = seq_of(net, i, shared).map(|s| s.0);
        let bob = seq_of(net, i, side).map(|s| s.0);
        let expected = if half(i) {
            (Some(latest), None)
        } else {
            (Some(published), Some(2))
        };
        ensure!(
            (alice, bob) == expected,
            "node {i} saw across the partition: alice {alice:?}, bob {bob:?}"
        );
    }

    let before = totals(net);
    let healed = net.now();
    for &(a, b) in &cut {
        net.link(a, b);
    }
    net.run_for(SETTLE);
    let after = totals(net);
    let mut last = Duration::ZERO;
    let mut missing = 0;
    for i in 0..n {
        match (seq_of(net, i, shared), seq_of(net, i, side)) {
            (Some((a, ta)), Some((b, tb))) if a == latest && b == 2 => {
                last = last.max(ta.max(tb).saturating_sub(healed));
            }
            _ => missing += 1,
        }
    }
    Ok(PartitionReport {
        cut_links: cut.len(),
        heal_convergence_s: round3(last.as_secs_f64()),
        catch_up_messages_per_node: round3((after.sent - before.sent) as f64 / n as f64),
        nodes_missing_a_commit: missing,
        wall_s: round3(wall.elapsed().as_secs_f64()),
    })
}

fn forgery(
    net: &mut Net,
    links: &[(usize, usize)],
    shared: &RepoId,
    first: &SignedRefUpdate,
) -> Result<ForgeryReport> {
    let n = net.len();
    let liar = n / 4;
    let current = net
        .last_accepted(liar, shared)
        .ok_or_else(|| anyhow::anyhow!("the liar never accepted an update"))?;
    let held: Vec<Option<SignedRefUpdate>> = (0..n).map(|i| net.last_accepted(i, shared)).collect();
    // The liar's own key: not a delegate of `alice`.
    let key = SigningKey::from_bytes(&[0x4c; 32]);
    let time = UNIX_ZERO + net.now().as_secs();
    let mut forged = RefUpdate::new(
        shared.clone(),
        current.update.namespace_doc,
        current.update.seq + 1,
        time,
    );
    forged.refs.insert("refs/heads/main".into(), [0x66; 20]);
    let forged = forged.sign(&key)?;
    let before = totals(net);
    net.gossip_update(liar, forged.encode());
    net.gossip_update(liar, first.encode());
    net.gossip_update(liar, current.encode());
    net.run_for(SETTLE);
    let after = totals(net);
    let nodes_accepting = (0..n)
        .filter(|&i| net.last_accepted(i, shared) != held[i])
        .count();
    Ok(ForgeryReport {
        liar_links: links
            .iter()
            .filter(|&&(a, b)| a == liar || b == liar)
            .count(),
        deliveries: after.received - before.received,
        rejected: after.rejected - before.rejected,
        ignored: after.ignored - before.ignored,
        nodes_accepting,
    })
}

/// Runs every size of the scenario; prints a table per size on stderr.
pub fn run(config: &SimConfig, seed: u64, dir: &Path) -> Result<Vec<SizeReport>> {
    let mut reports = Vec::new();
    for &n in &config.sizes {
        eprintln!("sim: {n} nodes ...");
        let report = run_size(n, config, seed, dir)?;
        print_size(&report);
        reports.push(report);
    }
    Ok(reports)
}

fn print_size(r: &SizeReport) {
    let rows: Vec<Vec<String>> = r
        .updates
        .iter()
        .map(|u| {
            vec![
                u.seq.to_string(),
                format!("{}/{}", u.reached, r.nodes),
                format!("{:.3}", u.convergence_s.p50),
                format!("{:.3}", u.convergence_s.p99),
                format!("{:.3}", u.convergence_s.max),
                format!("{:.2}", u.messages_per_node),
                format!("{:.2}", u.duplicates_per_node),
                format!("{:.2}", u.wall_s),
            ]
        })
        .collect();
    table(
        &format!(
            "{} nodes, {} links (mean degree {:.1}); setup {:.1} s wall",
            r.nodes, r.links, r.mean_degree, r.setup_wall_s
        ),
        &[
            "seq",
            "reached",
            "p50 s",
            "p99 s",
            "max s",
            "msgs/node",
            "dups/node",
            "wall s",
        ],
        &rows,
    );
    let p = &r.partition;
    eprintln!(
        "partition: {} links cut; healed in {:.3} s virtual, {:.2} msgs/node, {} nodes missing a commit",
        p.cut_links, p.heal_convergence_s, p.catch_up_messages_per_node, p.nodes_missing_a_commit
    );
    let f = &r.forgery;
    eprintln!(
        "forgery: liar with {} links; {} deliveries, {} rejected, {} ignored, {} nodes accepted",
        f.liar_links, f.deliveries, f.rejected, f.ignored, f.nodes_accepting
    );
}
