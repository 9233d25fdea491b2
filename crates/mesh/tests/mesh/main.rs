//! Replication between in-process nodes on loopback: a hosting node publishes signed refs, a
//! seeding node replicates the repo with packs of the difference, and a crafted update signed
//! by a stranger is rejected and changes nothing.

use hub_mesh::Replication;
use hub_net::{CancellationToken, Keypair, P2p, P2pConfig, Topic};
use hub_protocol::replication::SeedPattern;
use hub_protocol::repo::{RepoId, RepoType};
use hub_protocol::signed::{DocId, RefUpdate, SignedRefUpdate, SigningKey};
use hub_repo::{Author, CommitRequest, FileContent, Operation, Repos};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

mod swarm;

pub(crate) const DEADLINE: Duration = Duration::from_secs(60);

fn loopback() -> P2pConfig {
    P2pConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        ..P2pConfig::default()
    }
}

fn commit(repos: &Repos, id: &RepoId, path: &str, bytes: &[u8]) {
    repos
        .commit(
            id,
            CommitRequest {
                branch: "main".into(),
                message: format!("add {path}"),
                author: Author::new("alice", "alice@hubmesh.test"),
                parent: None,
                operations: vec![Operation::Add {
                    path: path.into(),
                    content: FileContent::Regular(bytes.to_vec()),
                }],
            },
        )
        .unwrap();
}

/// Logs to the test's output when `RUST_LOG` is set (e.g. `RUST_LOG=hub_mesh=debug`), to see
/// what each node asks whom; silent otherwise.
pub(crate) fn logs() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Node {
    mesh: hub_mesh::Mesh,
    p2p: P2p,
    repos: Arc<Repos>,
    replicated: Arc<AtomicU64>,
    _dir: tempfile::TempDir,
}

async fn node(
    secret: [u8; 32],
    seeds: &[&str],
    bootstrap: Option<&P2p>,
    cancel: &CancellationToken,
) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let repos = Arc::new(Repos::open(dir.path().join("repos")).unwrap());
    let replicated = Arc::new(AtomicU64::new(0));
    let counter = replicated.clone();
    let config = P2pConfig {
        bootstrap: bootstrap
            .map(|b| vec![hub_net::with_peer_id(&b.listen_addrs()[0], b.peer_id())])
            .unwrap_or_default(),
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
            on_replicated: Arc::new(move |_| {
                counter.fetch_add(1, Ordering::Relaxed);
            }),
            store: hub_store::Store::open(dir.path().join("store")).unwrap(),
            local_names: Arc::new(|_| false),
            corrupt_chunks_for_tests: false,
        },
        cancel.clone(),
    )
    .await
    .unwrap();
    Node {
        p2p: mesh.p2p().clone(),
        mesh,
        repos,
        replicated,
        _dir: dir,
    }
}

fn refs(repos: &Repos, id: &RepoId) -> Option<std::collections::BTreeMap<String, [u8; 20]>> {
    repos.exists(id).then(|| repos.public_refs(id).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeding_node_replicates_public_repos_and_rejects_forged_updates() {
    let cancel = CancellationToken::new();
    let a = node([1; 32], &[], None, &cancel).await;
    let b = node([2; 32], &["alice/*"], Some(&a.p2p), &cancel).await;
    let tiny = RepoId::parse(RepoType::Model, "alice/tiny").unwrap();
    let secret = RepoId::parse(RepoType::Model, "alice/secret").unwrap();
    let author = Author::new("alice", "alice@hubmesh.test");
    a.repos.create(&tiny, &author).unwrap();
    commit(&a.repos, &tiny, "config.json", b"{}");
    a.repos.create_with(&secret, &author, true).unwrap();
    commit(&a.repos, &secret, "leak.txt", b"private");
    a.mesh.repo_changed(&secret);
    a.mesh.repo_changed(&tiny);

    wait_for("first replication", || {
        refs(&b.repos, &tiny) == refs(&a.repos, &tiny)
    })
    .await;
    assert_eq!(b.repos.file(&tiny, "main", "config.json").unwrap().1, b"{}");
    assert!(!b.repos.meta(&tiny).unwrap().private);
    // The listing hook runs right after the refs moved.
    wait_for("on_replicated hook", || {
        b.replicated.load(Ordering::Relaxed) >= 1
    })
    .await;

    // A second commit converges too, as a pack of the difference.
    commit(&a.repos, &tiny, "README.md", b"# tiny\n");
    a.repos.create_branch(&tiny, "dev", None).unwrap();
    a.mesh.repo_changed(&tiny);
    wait_for("second replication", || {
        refs(&b.repos, &tiny) == refs(&a.repos, &tiny)
    })
    .await;
    assert!(!b.repos.exists(&secret), "a private repo was replicated");

    // The hosting node provides the repo in the DHT.
    let providers = b.p2p.providers(&tiny).await.unwrap();
    assert!(providers.contains(&a.p2p.peer_id()), "{providers:?}");

    // A stranger forges an update of alice/tiny (right repo, right document id, higher seq).
    let rogue_cancel = CancellationToken::new();
    let (rogue, rogue_task) = hub_net::spawn(
        Keypair::generate_ed25519(),
        P2pConfig {
            bootstrap: vec![hub_net::with_peer_id(
                &b.p2p.listen_addrs()[0],
                b.p2p.peer_id(),
            )],
            ..loopback()
        },
        rogue_cancel.clone(),
    )
    .await
    .unwrap();
    let doc = a_doc_id(&a, &tiny);
    let mut forged = RefUpdate::new(tiny.clone(), doc, 1_000, now());
    forged.refs.insert("refs/heads/main".into(), [0xee; 20]);
    let forged: SignedRefUpdate = forged.sign(&SigningKey::from_bytes(&[66; 32])).unwrap();
    let refused_before = b.mesh.counters().gossip_refused;
    let before = refs(&b.repos, &tiny);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    // Publishing fails until the rogue has heard B's subscription.
    while rogue.publish(Topic::Refs, forged.encode()).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "rogue never published"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for("forged update judged", || {
        b.mesh.counters().gossip_refused > refused_before
    })
    .await;
    assert_eq!(refs(&b.repos, &tiny), before);

    // A replay: an update of alice/tiny validly signed by A's own key, with a seq B has
    // passed already (A announced seq 1 and 2).
    let mut old = RefUpdate::new(tiny.clone(), doc, 1, now());
    old.refs.insert("refs/heads/main".into(), [0xdd; 20]);
    let old = old.sign(&SigningKey::from_bytes(&[1; 32])).unwrap();
    // A graft: the rogue's key, delegate of its own namespace document, signing an update
    // of alice/tiny bound to that document instead of alice's.
    let rogue_key = SigningKey::from_bytes(&[66; 32]);
    let rogue_doc = hub_protocol::signed::NamespaceDoc::new(
        "alice",
        vec![rogue_key.public()],
        1,
        hub_protocol::signed::Visibility::Public,
    )
    .unwrap()
    .sign_genesis(&[&rogue_key]);
    let mut grafted = RefUpdate::new(tiny.clone(), rogue_doc.doc.id(), 1_001, now());
    grafted.refs.insert("refs/heads/main".into(), [0xcc; 20]);
    let grafted = grafted.sign(&rogue_key).unwrap();
    for (what, topic, message) in [
        ("replayed update", Topic::Refs, old.encode()),
        (
            "conflicting namespace claim",
            Topic::Namespaces,
            rogue_doc.encode(),
        ),
        ("grafted update", Topic::Refs, grafted.encode()),
    ] {
        let refused = b.mesh.counters().gossip_refused;
        rogue.publish(topic, message).await.unwrap();
        wait_for(what, || b.mesh.counters().gossip_refused > refused).await;
        assert_eq!(refs(&b.repos, &tiny), before, "{what} moved a ref");
    }

    // The forged seq did not count: the owner's next update (seq 3) is still accepted.
    commit(&a.repos, &tiny, "notes.txt", b"third");
    a.mesh.repo_changed(&tiny);
    wait_for("third replication", || {
        refs(&b.repos, &tiny) == refs(&a.repos, &tiny)
    })
    .await;

    rogue_cancel.cancel();
    rogue_task.await.unwrap();
    cancel.cancel();
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The id of the namespace document A made for `alice`: the genesis naming A's key alone.
fn a_doc_id(_a: &Node, repo: &RepoId) -> DocId {
    let key = SigningKey::from_bytes(&[1; 32]);
    hub_protocol::signed::NamespaceDoc::new(
        repo.namespace(),
        vec![key.public()],
        1,
        hub_protocol::signed::Visibility::Public,
    )
    .unwrap()
    .id()
}
