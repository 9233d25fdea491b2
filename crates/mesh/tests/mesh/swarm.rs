//! Swarming (ADR 0016) between in-process nodes on loopback: nodes that hold only verified
//! parts of an object serve them while they fetch the rest, and a fetch completes from
//! several such partial holders; a corrupt partial holder is rejected and penalised.
//!
//! A node "holds part of an object" the way a node killed mid-fetch does: its spool
//! (`partial/<sha256>.part` in its store, the format `hub_mesh`'s `lfs` module documents)
//! holds some of the object's chunks when it starts, and its fetch resumes from it.

use super::{DEADLINE, loopback, wait_for};
use hub_mesh::Replication;
use hub_net::{CancellationToken, Keypair, P2p, P2pConfig};
use hub_protocol::blocks::{BlockRequest, BlockResponse};
use hub_protocol::manifest::{Hash, Manifest, Sha256};
use hub_protocol::replication::SeedPattern;
use hub_protocol::repo::{RepoId, RepoType};
use hub_repo::{Author, CommitRequest, FileContent, LfsPointer, Operation, Repos};
use hub_store::Store;
use std::ops::Range;
use std::sync::Arc;

struct Node {
    mesh: hub_mesh::Mesh,
    p2p: P2p,
    repos: Arc<Repos>,
    store: Store,
    _dir: tempfile::TempDir,
}

/// A file of `len` pseudo-random bytes: its bytes, manifest id and manifest, from a scratch
/// store (the chunking every node's store does).
fn object(len: usize) -> (Vec<u8>, Hash, Manifest) {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let info = store.import_reader(&data[..]).unwrap();
    let (id, manifest) = store.manifest(&info.sha256).unwrap();
    (data, id, manifest)
}

/// Leaves in `store` the spool of an interrupted fetch that verified chunks `held`.
fn spool(store: &Store, data: &[u8], id: &Hash, manifest: &Manifest, held: Range<usize>) {
    spool_runs(store, data, id, manifest, &[held]);
}

/// Leaves in `store` the spool of an interrupted fetch that verified the chunks in `held`.
fn spool_runs(store: &Store, data: &[u8], id: &Hash, manifest: &Manifest, held: &[Range<usize>]) {
    let mut bytes = b"HMSPOOL1".to_vec();
    bytes.extend_from_slice(&id.0);
    let mut at = 0usize;
    for (i, chunk) in manifest.chunks.iter().enumerate() {
        let len = chunk.len as usize;
        if held.iter().any(|r| r.contains(&i)) {
            bytes.extend_from_slice(&(i as u32).to_le_bytes());
            bytes.extend_from_slice(&data[at..at + len]);
        }
        at += len;
    }
    let dir = store.root().join("partial");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{}.part", manifest.sha256)), bytes).unwrap();
}

async fn node(
    secret: [u8; 32],
    seeds: &[&str],
    bootstrap: &[&P2p],
    corrupt: bool,
    prepare: impl FnOnce(&Store),
    cancel: &CancellationToken,
) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let repos = Arc::new(Repos::open(dir.path().join("repos")).unwrap());
    let store = Store::open(dir.path().join("store")).unwrap();
    prepare(&store);
    let config = P2pConfig {
        bootstrap: bootstrap
            .iter()
            .map(|b| hub_net::with_peer_id(&b.listen_addrs()[0], b.peer_id()))
            .collect(),
        ..loopback()
    };
    let (mesh, _task) = hub_mesh::spawn_replicating(
        Keypair::ed25519_from_bytes(secret).unwrap(),
        config,
        Replication {
            repos: repos.clone(),
            ref_store: dir.path().join("refs.redb"),
            secret,
            seeds: seeds
                .iter()
                .map(|s| SeedPattern::parse(s).unwrap())
                .collect(),
            on_replicated: Arc::new(|_| {}),
            store: store.clone(),
            local_names: Arc::new(|_| false),
            corrupt_chunks_for_tests: corrupt,
        },
        cancel.clone(),
    )
    .await
    .unwrap();
    Node {
        p2p: mesh.p2p().clone(),
        mesh,
        repos,
        store,
        _dir: dir,
    }
}

/// Commits `data` as `repo`'s LFS file `model.bin` on `origin` and announces it.
fn publish(origin: &Node, repo: &RepoId, data: &[u8]) -> Sha256 {
    let author = Author::new("alice", "alice@hubmesh.test");
    origin.repos.create(repo, &author).unwrap();
    let info = origin.store.import_reader(data).unwrap();
    hub_core::lfs_objects::adopt(&origin.repos, &origin.store, repo, &info.sha256).unwrap();
    let pointer = LfsPointer::new(&info.sha256.to_string(), info.size).unwrap();
    origin
        .repos
        .commit(
            repo,
            CommitRequest {
                branch: "main".into(),
                message: "weights".into(),
                author,
                parent: None,
                operations: vec![Operation::Add {
                    path: "model.bin".into(),
                    content: FileContent::Lfs(pointer),
                }],
            },
        )
        .unwrap();
    origin.mesh.repo_changed(repo);
    info.sha256
}

/// Whether `node` stores `sha` for `repo` (imported whole, its SHA-256 checked).
fn holds(node: &Node, repo: &RepoId, sha: &Sha256) -> bool {
    node.store.has(sha).unwrap_or(false) && node.repos.has_lfs_object(repo, &sha.0).unwrap_or(false)
}

/// The bytes `node` stores as `sha`.
fn content(node: &Node, sha: &Sha256) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::copy(&mut node.store.open_file(sha).unwrap(), &mut out).unwrap();
    out
}

fn received_from(node: &Node, peer: &Node) -> u64 {
    node.mesh
        .peer_traffic(&peer.p2p.peer_id())
        .map_or(0, |t| t.chunk_bytes_received)
}

fn bad_from(node: &Node, peer: &Node) -> u64 {
    node.mesh
        .peer_traffic(&peer.p2p.peer_id())
        .map_or(0, |t| t.bad_chunks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_completes_from_partial_holders_when_nobody_serves_the_whole_object() {
    // The origin serves nothing good (every chunk it sends is corrupt): two nodes that
    // each hold half of the object, verified, and a third that holds nothing can only end
    // with the object by trading the halves the first two hold.
    super::logs();
    let cancel = CancellationToken::new();
    let (data, id, manifest) = object(6 << 20);
    let n = manifest.chunks.len();
    assert!(n >= 64, "{n} chunks");
    let repo = RepoId::parse(RepoType::Model, "alice/swarm").unwrap();
    let origin = node([31; 32], &[], &[], true, |_| {}, &cancel).await;
    let (d, m) = (&data, &manifest);
    let front = node(
        [32; 32],
        &["alice/*"],
        &[&origin.p2p],
        false,
        |s| spool(s, d, &id, m, 0..n / 2),
        &cancel,
    )
    .await;
    let back = node(
        [33; 32],
        &["alice/*"],
        &[&origin.p2p, &front.p2p],
        false,
        |s| spool(s, d, &id, m, n / 2..n),
        &cancel,
    )
    .await;
    let fresh = node(
        [34; 32],
        &["alice/*"],
        &[&origin.p2p, &front.p2p, &back.p2p],
        false,
        |_| {},
        &cancel,
    )
    .await;
    eprintln!(
        "origin {} front {} back {} fresh {}",
        origin.p2p.peer_id(),
        front.p2p.peer_id(),
        back.p2p.peer_id(),
        fresh.p2p.peer_id()
    );
    let sha = publish(&origin, &repo, &data);
    assert_eq!(sha, manifest.sha256);

    let nodes = [&front, &back, &fresh];
    let deadline = tokio::time::Instant::now() + DEADLINE * 2;
    while !nodes.iter().all(|node| holds(node, &repo, &sha)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every node assembled the object: {:?}",
            nodes.map(|node| (holds(node, &repo, &sha), node.mesh.counters()))
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for node in nodes {
        assert!(content(node, &sha) == data, "a node stored other bytes");
    }
    // Each half holder got the other half from its peers (the other half holder, or the
    // fresh node once it holds some of it); nothing good came from the origin. The fresh
    // node got parts from both.
    let half =
        |r: Range<usize>| -> u64 { manifest.chunks[r].iter().map(|c| u64::from(c.len)).sum() };
    let from_peers =
        |node: &Node, a: &Node, b: &Node| received_from(node, a) + received_from(node, b);
    assert!(received_from(&front, &back) > 0 && received_from(&back, &front) > 0);
    assert!(from_peers(&front, &back, &fresh) >= half(n / 2..n));
    assert!(from_peers(&back, &front, &fresh) >= half(0..n / 2));
    assert!(received_from(&fresh, &front) > 0 && received_from(&fresh, &back) > 0);
    // Whoever asked the origin for chunks rejected them and penalised it.
    for node in nodes {
        let asked = bad_from(node, &origin);
        assert_eq!(node.mesh.counters().chunks_rejected, asked);
    }
    cancel.cancel();
}

/// Chunks of `sha256` that `peer` says it holds, asked through `asker` (`None`: it neither
/// holds nor fetches the object).
async fn have(asker: &Node, peer: &Node, sha256: Sha256) -> Option<usize> {
    match asker
        .p2p
        .fetch_blocks(peer.p2p.peer_id(), BlockRequest::Have { sha256 })
        .await
    {
        Ok(BlockResponse::Have(bits) | BlockResponse::Fetching { held: bits, .. }) => {
            Some(bits.iter().map(|b| b.count_ones() as usize).sum())
        }
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_partial_holder_is_rejected_penalised_and_the_fetch_completes() {
    // Two nodes hold the first half of the object, verified: an honest one and one that
    // serves corrupt chunks. The origin serves only corrupt chunks, so neither can finish
    // its own fetch, and both stay partial holders. A node that holds all but two runs of
    // that first half then joins: its two batches go to the two partial holders (preferred
    // to the whole holder, and spread over both), so the liar must be asked; its chunks are
    // rejected, it is penalised and dropped, and the fetch completes from the honest one.
    super::logs();
    let cancel = CancellationToken::new();
    let (data, id, manifest) = object(6 << 20);
    let n = manifest.chunks.len();
    assert!(n >= 64, "{n} chunks");
    let q = n / 8;
    let repo = RepoId::parse(RepoType::Model, "alice/liar").unwrap();
    let origin = node([41; 32], &[], &[], true, |_| {}, &cancel).await;
    let (d, m) = (&data, &manifest);
    let honest = node(
        [42; 32],
        &["alice/*"],
        &[&origin.p2p],
        false,
        |s| spool(s, d, &id, m, 0..n / 2),
        &cancel,
    )
    .await;
    let liar = node(
        [43; 32],
        &["alice/*"],
        &[&origin.p2p, &honest.p2p],
        true,
        |s| spool(s, d, &id, m, 0..n / 2),
        &cancel,
    )
    .await;
    let sha = publish(&origin, &repo, &data);
    // Both partial holders are fetching (and so serving what they hold) before the fresh
    // node exists.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while have(&origin, &honest, sha).await != Some(n / 2)
        || have(&origin, &liar, sha).await != Some(n / 2)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the partial holders did not start fetching"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let fresh = node(
        [44; 32],
        &["alice/*"],
        &[&origin.p2p, &honest.p2p, &liar.p2p],
        false,
        |s| spool_runs(s, d, &id, m, &[q..2 * q, 3 * q..n]),
        &cancel,
    )
    .await;
    wait_for("the fresh node stores the object", || {
        holds(&fresh, &repo, &sha)
    })
    .await;
    assert!(
        content(&fresh, &sha) == data,
        "the fresh node stored other bytes"
    );
    let bad = bad_from(&fresh, &liar);
    assert!(bad >= 1, "the corrupt partial holder was never caught");
    assert_eq!(
        fresh.mesh.counters().chunks_rejected,
        bad + bad_from(&fresh, &origin)
    );
    assert_eq!(bad_from(&fresh, &honest), 0);
    assert!(received_from(&fresh, &honest) > 0);
    cancel.cancel();
}
