//! Where a Space goes when the gateway asked for it will not or cannot run it: a pure
//! function of the live adverts, the peers' RTTs and the nodes to avoid.
//!
//! A node qualifies when its advert's Space slots say mode `mesh` with a free slot
//! ([`SpaceSlots::takes_peers_spaces`](hub_protocol::capacity::SpaceSlots::takes_peers_spaces))
//! and, when it reports its memory, at least one slot's memory available. Qualified nodes are
//! ordered by free slots (most first: spread Spaces over the mesh), then available memory
//! (most first), then RTT (lowest first; unknown last), then the node key, so the order is
//! total and every gateway with the same view picks the same node. The gateway tries them in
//! order and remembers the one that accepted (`hub-spaces`' placements).

use hub_protocol::capacity::CapacityAdvert;
use hub_protocol::signed::PublicKey;
use std::cmp::Reverse;
use std::collections::HashMap;
use std::time::Duration;

/// The nodes that may run a Space, best first (see the module docs). `me` and the nodes in
/// `avoid` (say, ones that just failed) are left out.
pub fn place_space<'a>(
    me: &PublicKey,
    adverts: impl IntoIterator<Item = &'a CapacityAdvert>,
    rtts: &HashMap<PublicKey, Duration>,
    avoid: &[PublicKey],
    now: u64,
) -> Vec<PublicKey> {
    let mut nodes: Vec<&CapacityAdvert> = adverts
        .into_iter()
        .filter(|a| a.is_live(now) && &a.node != me && !avoid.contains(&a.node))
        .filter(|a| a.spaces.takes_peers_spaces())
        .filter(|a| {
            let s = &a.spaces;
            s.memory_total_bytes == 0 || s.memory_free_bytes >= s.memory_per_slot_bytes
        })
        .collect();
    nodes.sort_by_key(|a| {
        (
            Reverse(a.spaces.slots_free),
            Reverse(a.spaces.memory_free_bytes),
            rtts.get(&a.node).copied().unwrap_or(Duration::MAX),
            a.node,
        )
    });
    nodes.into_iter().map(|a| a.node).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_protocol::capacity::{Mode, SpaceSlots};
    use hub_protocol::signed::SigningKey;

    const NOW: u64 = 1_700_000_000;

    fn node(i: u8) -> PublicKey {
        SigningKey::from_bytes(&[i; 32]).public()
    }

    fn advert(i: u8, mode: Mode, free: u16, mem_free_gib: u64) -> CapacityAdvert {
        let mut a = CapacityAdvert::new(node(i), 1, NOW);
        a.spaces = SpaceSlots {
            mode,
            cpus: 4,
            memory_total_bytes: 64 << 30,
            memory_free_bytes: mem_free_gib << 30,
            memory_per_slot_bytes: 4 << 30,
            slots_total: 4,
            slots_free: free,
            hardware: "cpu-basic".into(),
        };
        a
    }

    #[test]
    fn only_mesh_nodes_with_a_free_slot_and_memory_qualify() {
        let adverts = [
            advert(1, Mode::Mesh, 2, 8),
            advert(2, Mode::Local, 4, 60),
            advert(3, Mode::Mesh, 0, 60),
            advert(4, Mode::Mesh, 3, 2),
            advert(5, Mode::Off, 0, 60),
        ];
        let placed = place_space(&node(9), &adverts, &HashMap::new(), &[], NOW);
        assert_eq!(placed, vec![node(1)]);
    }

    #[test]
    fn most_free_slots_then_memory_then_rtt() {
        let adverts = [
            advert(1, Mode::Mesh, 1, 60),
            advert(2, Mode::Mesh, 3, 10),
            advert(3, Mode::Mesh, 3, 20),
            advert(4, Mode::Mesh, 3, 20),
        ];
        let rtts = HashMap::from([
            (node(3), Duration::from_millis(40)),
            (node(4), Duration::from_millis(5)),
        ]);
        let placed = place_space(&node(9), &adverts, &rtts, &[], NOW);
        assert_eq!(placed, vec![node(4), node(3), node(2), node(1)]);
    }

    #[test]
    fn self_avoided_and_expired_nodes_are_left_out() {
        let mut expired = advert(3, Mode::Mesh, 4, 60);
        expired.expires_at = NOW;
        let adverts = [
            advert(1, Mode::Mesh, 2, 8),
            advert(2, Mode::Mesh, 2, 8),
            expired,
        ];
        assert_eq!(
            place_space(&node(1), &adverts, &HashMap::new(), &[node(2)], NOW),
            Vec::<PublicKey>::new()
        );
        assert_eq!(
            place_space(&node(9), &adverts, &HashMap::new(), &[node(1)], NOW),
            vec![node(2)]
        );
    }
}
