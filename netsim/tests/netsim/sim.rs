//! The replication service at a small scale, through `hub_netsim::sim`.

use hub_netsim::scenario::SimConfig;
use hub_netsim::sim::run_size;

/// A scratch directory on tmpfs where there is one: every accepted update is a ref-store
/// commit, and fsyncs on a disk would dominate.
fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap()
}

fn config() -> SimConfig {
    SimConfig {
        sizes: vec![],
        degree: 6,
        updates: 2,
    }
}

#[test]
fn gossip_converges_heals_after_a_partition_and_no_forgery_spreads() {
    let dir = scratch();
    let n = 100;
    let r = run_size(n, &config(), 7, dir.path()).unwrap();
    assert_eq!(r.nodes, n);
    assert_eq!(r.links, n * 3, "a ring plus chords up to degree 6");
    for u in &r.updates {
        assert_eq!(u.reached, n, "update {} reached every node", u.seq);
        assert!(
            u.convergence_s.max > 0.0 && u.convergence_s.max < 5.0,
            "{u:?}"
        );
        assert!(u.convergence_s.p50 <= u.convergence_s.p99);
        // Flooding over degree-6 links: each node sends each message about once per link
        // but the one it came from, plus the namespace document with the first update.
        assert!(
            u.messages_per_node >= 4.0 && u.messages_per_node <= 14.0,
            "{u:?}"
        );
    }
    let p = &r.partition;
    assert!(p.cut_links > 0);
    assert_eq!(p.nodes_missing_a_commit, 0, "{p:?}");
    assert!(p.heal_convergence_s > 0.0, "{p:?}");
    let f = &r.forgery;
    assert_eq!(f.nodes_accepting, 0, "{f:?}");
    // The forged update is rejected by each of the liar's neighbours, the two replays are
    // ignored, and nobody forwards any of them.
    assert_eq!(f.rejected, f.liar_links as u64, "{f:?}");
    assert_eq!(f.ignored, 2 * f.liar_links as u64, "{f:?}");
    assert_eq!(f.deliveries, 3 * f.liar_links as u64, "{f:?}");
}

#[test]
fn the_same_seed_gives_the_same_figures() {
    let dir = scratch();
    let figures = |seed| {
        let r = run_size(40, &config(), seed, dir.path()).unwrap();
        let u = &r.updates[0];
        (
            u.convergence_s,
            u.messages_per_node,
            r.partition.heal_convergence_s,
        )
    };
    assert_eq!(figures(3), figures(3));
}
