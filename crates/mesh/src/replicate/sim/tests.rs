//! The scenarios of the virtual-time harness (see the parent module).

use super::*;
use crate::replicate::{MAX_PENDING, RETRY_PERIOD};
use hub_protocol::replication::PackRequest;
use hub_protocol::signed::{NamespaceDoc, RefUpdate, Visibility};

#[test]
fn line_topology_replicates_through_the_middle_node() {
    let mut net = Net::new(1);
    let a = net.add(1, &[]);
    let b = net.add(2, &["alice/*"]);
    let c = net.add(3, &["alice/*"]);
    net.link(a, b);
    net.link(b, c);
    net.run_for(Duration::from_secs(1));
    let repo = model("alice/tiny");
    net.write(a, &repo, "config.json", 0);
    let sha = net.write(a, &repo, "model.bin", 300_000).unwrap();
    net.run_for(Duration::from_secs(30));

    let published = net.refs(a, &repo);
    assert!(published.is_some());
    assert_eq!(net.refs(b, &repo), published);
    assert_eq!(
        net.refs(c, &repo),
        published,
        "C hears of A's update only through B"
    );
    assert!(net.holds(b, &repo, &sha));
    assert!(net.holds(c, &repo, &sha));
    // C asked the publisher first (it is not connected), then the forwarder, which served.
    let c_asked: Vec<_> = net.packs.iter().filter(|p| p.by == c).collect();
    assert!(c_asked.iter().any(|p| p.of == b && p.served));
    assert!(c_asked.iter().all(|p| p.of != a || !p.served));
    assert!(
        net.nodes[c]
            .synced
            .iter()
            .any(|(r, ok, _)| r == &repo && ok.is_ok())
    );
    // Both seeders provide the repo once they hold it whole.
    let providers = &net.providers[&repo];
    for n in [a, b, c] {
        assert!(providers.contains(&net.nodes[n].peer));
    }
}

#[test]
fn a_late_joiner_catches_up_through_a_seeder_after_the_publisher_left() {
    let mut net = Net::new(2);
    let a = net.add(1, &[]);
    let b = net.add(2, &["alice/*"]);
    net.link(a, b);
    let repo = model("alice/tiny");
    net.run_for(Duration::from_secs(1));
    let sha = net.write(a, &repo, "model.bin", 100_000).unwrap();
    net.run_for(Duration::from_secs(10));
    assert!(net.holds(b, &repo, &sha));
    // The publisher goes; a node that joins later hears of the repo only from the catch-up
    // B gossips when it subscribes, and fetches it from B.
    net.kill(a);
    let d = net.add(4, &["alice/*"]);
    net.link(b, d);
    net.run_for(Duration::from_secs(10));
    assert_eq!(net.refs(d, &repo), net.refs(a, &repo));
    assert!(net.holds(d, &repo, &sha));
    assert!(
        net.judged
            .iter()
            .any(|&(n, c, j)| n == d && c == Channel::Namespaces && j == Judgement::Accept)
    );
    assert_eq!(accepted(&net, d, &repo), accepted(&net, b, &repo));
}

#[test]
fn a_corrupt_provider_is_avoided_and_nothing_corrupt_is_kept() {
    let mut net = Net::new(3);
    let a = net.add(1, &[]);
    let b = net.add(2, &["alice/*"]);
    net.link(a, b);
    let repo = model("alice/big");
    net.run_for(Duration::from_secs(1));
    let sha = net.write(a, &repo, "model.bin", 1 << 20).unwrap();
    net.run_for(Duration::from_secs(5));
    assert!(net.holds(b, &repo, &sha));

    // B turns bad. C, linked to B only, gets the refs from it but never the object: every
    // batch B sends fails verification, nothing is stored, and the sync fails.
    net.nodes[b].corrupt = true;
    let c = net.add(3, &["alice/*"]);
    net.link(b, c);
    net.run_for(Duration::from_secs(3));
    assert_eq!(net.refs(c, &repo), net.refs(a, &repo));
    assert!(net.bad.contains(&(c, b)));
    assert!(!net.nodes[c].chunks.has(&sha).unwrap());
    let last = net.nodes[c].synced.last();
    assert!(
        matches!(last, Some((r, Err(SyncError::Lfs { left: 1, .. }), _)) if r == &repo),
        "{last:?}"
    );

    // With the publisher linked too, the retry asks B first (it forwarded the update), drops
    // it at its first bad batch, and gets the whole object from A.
    net.link(a, c);
    let bad_before = net.bad.len();
    net.run_for(Duration::from_secs(10));
    assert!(net.holds(c, &repo, &sha));
    assert!(
        net.bad[bad_before..].contains(&(c, b)),
        "asked again and caught"
    );
    assert!(!net.bad.iter().any(|&(_, p)| p == a));
    let read = |n: usize| {
        let mut out = Vec::new();
        let mut file = net.nodes[n].chunks.open_file(&sha).unwrap();
        std::io::Read::read_to_end(&mut file, &mut out).unwrap();
        out
    };
    assert!(read(c) == read(a), "the stored object is the published one");
}

#[test]
fn a_node_killed_mid_sync_resumes_from_what_it_persisted() {
    let mut net = Net::new(4);
    let a = net.add(1, &[]);
    let b = net.add(2, &["alice/*"]);
    net.link(a, b);
    let repo = model("alice/tiny");
    net.run_for(Duration::from_secs(1));
    net.kill_at_lfs = Some(b);
    let sha = net.write(a, &repo, "model.bin", 200_000).unwrap();
    net.run_for(Duration::from_secs(10));
    // Killed after the pack was applied, before the LFS object came.
    assert!(net.nodes[b].service.is_none());
    assert_eq!(net.refs(b, &repo), net.refs(a, &repo));
    assert!(!net.nodes[b].chunks.has(&sha).unwrap());
    let asked_before = net.packs.iter().filter(|p| p.by == b).count();

    // Restarted from its ref store and seeds: the sync resumes at start-up, and goes
    // straight to the LFS content (the refs are current, no pack is asked for again).
    net.start(b);
    net.link(a, b);
    net.run_for(Duration::from_secs(10));
    assert!(net.holds(b, &repo, &sha));
    assert_eq!(net.packs.iter().filter(|p| p.by == b).count(), asked_before);
}

#[test]
fn a_failed_sync_is_retried_after_the_retry_period_in_virtual_time() {
    let mut net = Net::new(5);
    let a = net.add(1, &[]);
    let b = net.add(2, &["alice/*"]);
    net.link(a, b);
    let repo = model("alice/tiny");
    net.run_for(Duration::from_secs(1));
    // A answers no pack request for a while: B's sync fails (no other provider either).
    net.refusing.insert(a);
    net.write(a, &repo, "config.json", 0);
    net.run_for(Duration::from_secs(1));
    assert!(net.refs(b, &repo).is_none());
    let (_, result, failed_at) = net.nodes[b].synced.last().cloned().expect("a sync ended");
    assert!(
        matches!(
            result,
            Err(SyncError::Pack(PackError::Refused {
                answer: PackResponse::Failed,
                ..
            }))
        ),
        "{result:?}"
    );
    let wake = net.nodes[b].service.as_ref().unwrap().next_wake().unwrap();
    assert_eq!(wake - net.t0, failed_at + RETRY_PERIOD);
    net.refusing.clear();
    let asked = net.packs.iter().filter(|p| p.by == b).count();
    // Nothing happens before the retry is due...
    let due = failed_at + RETRY_PERIOD;
    net.run_for(due - net.now - Duration::from_millis(1));
    assert_eq!(net.packs.iter().filter(|p| p.by == b).count(), asked);
    assert!(net.refs(b, &repo).is_none());
    // ...then A is asked again, at the due time, and serves.
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.refs(b, &repo), net.refs(a, &repo));
    let retried = net.packs.iter().find(|p| p.by == b && p.served).unwrap();
    assert_eq!(retried.at, due);
}

#[test]
fn forged_replayed_and_malformed_updates_get_the_right_verdict() {
    let mut net = Net::new(6);
    let a = net.add(1, &[]);
    let b = net.add(2, &["alice/*"]);
    net.link(a, b);
    let repo = model("alice/tiny");
    net.run_for(Duration::from_secs(1));
    net.write(a, &repo, "config.json", 0);
    net.run_for(Duration::from_secs(5));
    let good = net.refs(a, &repo);
    assert_eq!(net.refs(b, &repo), good);

    let via = net.nodes[a].peer;
    let judge = |net: &mut Net, data: Vec<u8>| {
        let input = Input::Gossip {
            channel: Channel::Refs,
            data,
            author: Some(via),
            via,
        };
        net.feed(b, input).unwrap()
    };
    // The accepted update again: a replay, ignored (not forwarded, no blame).
    let last = accepted(&net, b, &repo);
    assert_eq!(judge(&mut net, last.encode()), Judgement::Ignore);
    // A higher seq signed by a stranger: forged, rejected.
    let stranger = SigningKey::from_bytes(&[9; 32]);
    let mut forged = RefUpdate::new(
        repo.clone(),
        last.update.namespace_doc,
        last.update.seq + 1,
        UNIX_ZERO,
    );
    forged.refs.insert("refs/heads/main".into(), [7; 20]);
    let forged = forged.sign(&stranger).unwrap();
    assert_eq!(judge(&mut net, forged.encode()), Judgement::Reject);
    // Bytes that are no update at all.
    assert_eq!(
        judge(&mut net, b"not an update".to_vec()),
        Judgement::Reject
    );
    net.run_for(Duration::from_secs(5));
    assert_eq!(net.refs(b, &repo), good, "nothing forged moved a ref");
}

/// The last update node `i` accepted for `repo`.
fn accepted(net: &Net, i: usize, repo: &RepoId) -> SignedRefUpdate {
    let service = net.nodes[i].service.as_ref().unwrap();
    service.last_accepted(repo).expect("an accepted update")
}

#[test]
fn updates_wait_for_their_namespace_document_bounded() {
    let mut net = Net::new(7);
    let b = net.add(2, &["alice/*", "bob/*"]);
    let a = net.add(1, &[]);
    let key = SigningKey::from_bytes(&[1; 32]);
    let via = net.nodes[a].peer;
    let gossip = |net: &mut Net, channel, data: Vec<u8>| {
        let input = Input::Gossip {
            channel,
            data,
            author: Some(via),
            via,
        };
        net.feed(b, input).unwrap()
    };
    // An update whose document B has not heard waits (ignored, not rejected).
    let doc = NamespaceDoc::new("alice", vec![key.public()], 1, Visibility::Public).unwrap();
    let genesis = doc.sign_genesis(&[&key]);
    let repo = model("alice/tiny");
    let mut update = RefUpdate::new(repo.clone(), doc.id(), 1, UNIX_ZERO);
    update.refs.insert("refs/heads/main".into(), [1; 20]);
    let update = update.sign(&key).unwrap();
    assert_eq!(
        gossip(&mut net, Channel::Refs, update.encode()),
        Judgement::Ignore
    );
    assert_eq!(net.nodes[b].service.as_ref().unwrap().pending(), 1);
    // Its document arrives: the update is accepted and B starts syncing it.
    assert_eq!(
        gossip(&mut net, Channel::Namespaces, genesis.encode()),
        Judgement::Accept
    );
    assert_eq!(net.nodes[b].service.as_ref().unwrap().pending(), 0);
    assert_eq!(accepted(&net, b, &repo), update);

    // Many updates for documents never heard: at most MAX_PENDING wait.
    let bob = SigningKey::from_bytes(&[3; 32]);
    let unknown = NamespaceDoc::new("bob", vec![bob.public()], 1, Visibility::Public).unwrap();
    for n in 0..MAX_PENDING + 10 {
        let mut update = RefUpdate::new(model(&format!("bob/m{n}")), unknown.id(), 1, UNIX_ZERO);
        update.refs.insert("refs/heads/main".into(), [2; 20]);
        let data = update.sign(&bob).unwrap().encode();
        assert_eq!(gossip(&mut net, Channel::Refs, data), Judgement::Ignore);
    }
    assert_eq!(
        net.nodes[b].service.as_ref().unwrap().pending(),
        MAX_PENDING
    );
}

#[test]
fn a_download_gets_its_object_ahead_of_any_sync_and_is_answered() {
    let mut net = Net::new(8);
    let a = net.add(1, &[]);
    // E seeds nothing: it accepts the update but syncs nothing by itself.
    let e = net.add(5, &[]);
    net.link(a, e);
    let repo = model("alice/tiny");
    net.run_for(Duration::from_secs(1));
    let sha = net.write(a, &repo, "model.bin", 150_000).unwrap();
    net.run_for(Duration::from_secs(5));
    assert!(net.nodes[e].synced.is_empty());
    assert!(!net.nodes[e].chunks.has(&sha).unwrap());
    // Its git part arrives (as an on-demand read brings it), not its LFS content.
    let refs = net.refs(a, &repo).unwrap();
    let request = PackRequest {
        repo: repo.clone(),
        want: refs.values().copied().collect(),
        have: Vec::new(),
        blob: false,
    };
    let pack = build_pack(&net.nodes[a].repos, &request, MAX_PACK_LEN as u64).unwrap();
    apply_pack(&net.nodes[e].repos, &repo, &pack, &refs, 0).unwrap();
    // A download asks for the object: it is fetched from the connected peers, verified
    // against the accepted binding, and the waiting download is answered.
    let want = |ticket, sha256| Input::WantLfs {
        ticket,
        repo: repo.clone(),
        sha256,
        size: 150_000,
    };
    net.feed(e, want(7, sha));
    net.run_for(Duration::from_secs(1));
    assert!(net.nodes[e].answers.contains(&(7, Ok(()))));
    assert!(net.nodes[e].chunks.has(&sha).unwrap());
    // An object no accepted update binds is refused at once, never fetched.
    net.feed(e, want(8, Sha256([9; 32])));
    let answer = net.nodes[e].answers.iter().find(|(t, _)| *t == 8);
    assert_eq!(answer, Some(&(8, Err(LfsError::Unbound))));
}

#[test]
fn a_repo_fetched_on_demand_or_newly_seeded_syncs_and_a_withdrawal_drops_it() {
    let mut net = Net::new(9);
    let a = net.add(1, &[]);
    let b = net.add(2, &[]);
    net.link(a, b);
    let (tiny, other) = (model("alice/tiny"), model("alice/other"));
    net.run_for(Duration::from_secs(1));
    net.write(a, &tiny, "config.json", 0);
    net.write(a, &other, "config.json", 0);
    net.run_for(Duration::from_secs(5));
    // B seeds nothing: it heard of both repos and holds neither.
    assert!(net.refs(b, &tiny).is_none() && net.refs(b, &other).is_none());
    assert!(net.nodes[b].synced.is_empty());

    // A read asks B for one: it is fetched (from the connected peers) and seeded from now on.
    net.feed(b, Input::Ensure(tiny.clone()));
    net.run_for(Duration::from_secs(2));
    assert_eq!(net.refs(b, &tiny), net.refs(a, &tiny));
    assert!(net.refs(b, &other).is_none());
    net.write(a, &tiny, "notes.txt", 0);
    net.run_for(Duration::from_secs(2));
    assert_eq!(
        net.refs(b, &tiny),
        net.refs(a, &tiny),
        "an on-demand repo stays seeded"
    );

    // A pattern added at run time (`hubmesh seed add`) covers the other: it syncs at once.
    let policy = net.nodes[b].policy.clone().unwrap();
    assert!(policy.add("alice/*").unwrap());
    net.feed(b, Input::SeedsChanged);
    net.run_for(Duration::from_secs(2));
    assert_eq!(net.refs(b, &other), net.refs(a, &other));

    // A makes `tiny` private: its withdrawal reaches B, which drops its replica and stops
    // providing it.
    net.nodes[a].repos.set_private(&tiny, true).unwrap();
    net.feed(a, Input::LocalChange(tiny.clone()));
    net.run_for(Duration::from_secs(2));
    assert!(!net.nodes[b].repos.exists(&tiny));
    assert!(!net.providers[&tiny].contains(&net.nodes[b].peer));
    assert!(!net.providers[&tiny].contains(&net.nodes[a].peer));
    assert!(net.nodes[b].repos.exists(&other));
}

#[test]
fn a_namespace_document_already_held_is_not_forwarded_again() {
    // A ring of six nodes hears alice's document and update.
    let mut net = Net::new(10);
    let ring: Vec<usize> = (1..=6).map(|k| net.add(k, &[])).collect();
    for k in 0..ring.len() {
        net.link(ring[k], ring[(k + 1) % ring.len()]);
    }
    net.run_for(Duration::from_secs(1));
    let repo = model("alice/tiny");
    net.write(ring[0], &repo, "config.json", 0);
    net.run_for(Duration::from_secs(5));
    for &n in &ring {
        assert!(net.last_accepted(n, &repo).is_some());
    }
    // A newcomer links to node 3: node 3 re-gossips what it holds to its subscribers. Its
    // ring neighbours hold the document already: they ignore it and forward nothing, so the
    // copy goes no further than one hop.
    let judged = net.judged.len();
    let newcomer = net.add(7, &[]);
    net.link(ring[3], newcomer);
    net.run_for(Duration::from_secs(5));
    assert!(net.last_accepted(newcomer, &repo).is_some());
    let docs: Vec<_> = net.judged[judged..]
        .iter()
        .filter(|(_, c, _)| *c == Channel::Namespaces)
        .collect();
    assert!(
        docs.iter()
            .all(|&&(n, _, j)| (n == newcomer) == (j == Judgement::Accept)),
        "only the newcomer accepts the document: {docs:?}"
    );
    let holders = [ring[2], ring[4]];
    assert!(
        docs.iter()
            .all(|&&(n, _, _)| n == newcomer || holders.contains(&n)),
        "the re-gossiped document went beyond node 3's neighbours: {docs:?}"
    );
}
