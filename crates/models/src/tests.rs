//! The models service on real (tiny, generated) models committed to a repository: one memory
//! budget for generation models and embedders, refusals, shared loads, and the snapshot that
//! feeds the capacity advert.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hub_compute::Mode;
use hub_infer::serve::{ModelKey, RegistryConfig, RegistryError, ServeConfig, Served};
use hub_protocol::repo::{RepoId, RepoType};
use hub_repo::{Author, CommitRequest, FileContent, Operation, Repos};
use hub_store::Store;

use crate::compute::{Compute, ComputeConfig, unix_now};
use crate::error::{ModelError, Wait};
use crate::models::{Models, ModelsConfig};
use crate::snapshot::LoadSnapshot;

struct Setup {
    _dir: tempfile::TempDir,
    repos: Arc<Repos>,
    store: Store,
    cache: std::path::PathBuf,
}

/// A data directory with `alice/tiny` (a random Llama) and `alice/bert` (a random BERT
/// embedder), every file committed to git as is.
fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let repos = Arc::new(Repos::open(dir.path().join("repos")).unwrap());
    let store = Store::open(dir.path().join("store")).unwrap();
    let author = Author::new("alice", "alice@hubmesh.test");
    let models = [
        ("alice/tiny", hub_infer::serve::fixture::files(4096)),
        ("alice/bert", hub_infer::bert::fixture::files()),
    ];
    for (name, files) in models {
        let id = id(name);
        repos.create(&id, &author).unwrap();
        let operations = files
            .into_iter()
            .map(|(path, bytes)| Operation::Add {
                path: path.to_owned(),
                content: FileContent::Regular(bytes),
            })
            .collect();
        repos
            .commit(
                &id,
                CommitRequest {
                    branch: "main".into(),
                    message: "model".into(),
                    author: author.clone(),
                    parent: None,
                    operations,
                },
            )
            .unwrap();
    }
    let cache = dir.path().join("model-cache");
    Setup {
        repos,
        store,
        cache,
        _dir: dir,
    }
}

fn id(name: &str) -> RepoId {
    RepoId::parse(RepoType::Model, name).unwrap()
}

fn models(s: &Setup, budget: u64) -> Arc<Models> {
    let config = ModelsConfig {
        cache_dir: s.cache.clone(),
        registry: RegistryConfig {
            memory_budget: budget,
            serve: ServeConfig::default(),
        },
        load_wait: Duration::from_secs(60),
    };
    Arc::new(Models::new(config, s.repos.clone(), s.store.clone(), None))
}

async fn open(models: &Arc<Models>, name: &str) -> Result<Served, ModelError> {
    models
        .open(&id(name), "main", Wait::Bounded)
        .await
        .map(|o| o.served)
}

fn repos_of(snapshot: &LoadSnapshot) -> Vec<&str> {
    snapshot.loaded.iter().map(|k| k.repo.as_str()).collect()
}

/// Bytes of each fixture model as the budget counts them: (generation, embedder).
async fn sizes(s: &Setup) -> (u64, u64) {
    let m = models(s, u64::MAX);
    let tiny = open(&m, "alice/tiny").await.unwrap().memory_bytes();
    let bert = open(&m, "alice/bert").await.unwrap().memory_bytes();
    assert!(tiny > 0 && bert > 0);
    assert_eq!(m.snapshot().memory_used, tiny + bert);
    (tiny, bert)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedder_counts_against_the_budget_and_is_evicted_like_a_generation_model() {
    let s = setup();
    let (tiny, bert) = sizes(&s).await;
    // Room for either model, not both.
    let m = models(&s, tiny.max(bert) + tiny.min(bert) / 2);
    let e = open(&m, "alice/bert").await.unwrap();
    assert!(matches!(e, Served::Embed(_)));
    let snapshot = m.snapshot();
    assert_eq!(repos_of(&snapshot), ["alice/bert"]);
    assert_eq!(snapshot.memory_used, bert);
    // While a request holds the embedder it is busy: the generation model cannot evict it.
    let busy = open(&m, "alice/tiny").await;
    assert!(
        matches!(&busy, Err(ModelError::Load(e)) if matches!(**e, RegistryError::Busy { .. })),
        "{busy:?}"
    );
    drop(e);
    // Idle now: loading the generation model evicts it.
    let g = open(&m, "alice/tiny").await.unwrap();
    assert!(matches!(g, Served::Generate(_)));
    let snapshot = m.snapshot();
    assert_eq!(repos_of(&snapshot), ["alice/tiny"]);
    assert_eq!(snapshot.memory_used, tiny);
    drop(g);
    // And the other way round.
    open(&m, "alice/bert").await.unwrap();
    assert_eq!(repos_of(&m.snapshot()), ["alice/bert"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_larger_than_the_budget_is_refused_whatever_its_kind() {
    let s = setup();
    let m = models(&s, 1024);
    for name in ["alice/tiny", "alice/bert"] {
        let refused = open(&m, name).await;
        assert!(
            matches!(&refused, Err(ModelError::Load(e)) if matches!(**e, RegistryError::TooLarge { budget: 1024, .. })),
            "{name}: {refused:?}"
        );
    }
    assert!(m.snapshot().loaded.is_empty());
    assert_eq!(m.snapshot().memory_used, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_share_one_load_that_outlives_them() {
    let s = setup();
    let m = models(&s, u64::MAX);
    let (release, released) = std::sync::mpsc::channel::<()>();
    let released = Mutex::new(released);
    let loads = Arc::new(AtomicUsize::new(0));
    let count = loads.clone();
    assert!(m.set_load_hook(Arc::new(move |_: &ModelKey| {
        count.fetch_add(1, Ordering::SeqCst);
        let _ = released.lock().unwrap().recv();
    })));
    // A request that gives up leaves the load running.
    let gave_up = tokio::time::timeout(Duration::from_millis(50), open(&m, "alice/tiny")).await;
    assert!(gave_up.is_err());
    // Two more requests while it is held open: they wait on the same load.
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let m = m.clone();
            tokio::spawn(async move { open(&m, "alice/tiny").await })
        })
        .collect();
    assert_eq!(m.loads_in_progress(), 1);
    release.send(()).unwrap();
    let mut handles = Vec::new();
    for w in waiters {
        match w.await.unwrap().unwrap() {
            Served::Generate(h) => handles.push(h),
            Served::Embed(_) => panic!("a generation model"),
        }
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert_eq!(m.snapshot().loaded.len(), 1);
    // A later request finds it loaded, without a load.
    open(&m, "alice/tiny").await.unwrap();
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert_eq!(m.loads_in_progress(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_still_loading_is_reported_with_an_estimate() {
    let s = setup();
    let config = ModelsConfig {
        load_wait: Duration::ZERO,
        ..ModelsConfig::new(s.cache.clone())
    };
    let impatient = Arc::new(Models::new(config, s.repos.clone(), s.store.clone(), None));
    // Held open until the end of the test.
    let (release, released) = std::sync::mpsc::channel::<()>();
    let released = Mutex::new(released);
    assert!(impatient.set_load_hook(Arc::new(move |_: &ModelKey| {
        let _ = released.lock().unwrap().recv();
    })));
    match impatient
        .open(&id("alice/tiny"), "main", Wait::Bounded)
        .await
    {
        Err(ModelError::Loading {
            wait: Wait::Bounded,
            waited,
            estimated,
        }) => {
            assert_eq!(waited, Duration::ZERO);
            assert!(estimated >= Duration::from_secs(1));
        }
        other => panic!("{other:?}"),
    }
    // An unknown revision is not found, loading nothing.
    let m = models(&s, u64::MAX);
    assert!(matches!(
        m.open(&id("alice/tiny"), "no-such-branch", Wait::Bounded)
            .await,
        Err(ModelError::NotFound)
    ));
    drop(release);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_feeds_the_capacity_advert() {
    let s = setup();
    let budget = 1 << 30;
    let m = models(&s, budget);
    let compute = |mode| {
        Compute::new(ComputeConfig {
            mode,
            secret: [7; 32],
            advert_period: Duration::from_secs(5),
            allow_peers: Vec::new(),
            cache_entries: 0,
        })
    };
    let _g = open(&m, "alice/tiny").await.unwrap();
    let _e = open(&m, "alice/bert").await.unwrap();
    let snapshot = m.snapshot();
    let advert = compute(Mode::Mesh).advert(Some(&snapshot), unix_now());
    assert_eq!(advert.memory_total_bytes, budget);
    // Both kinds take their share of the one budget.
    assert_eq!(advert.memory_free_bytes, budget - snapshot.memory_used);
    assert_eq!(snapshot.memory_used, m.registry().memory_used());
    let commits: Vec<_> = advert
        .models
        .iter()
        .map(|l| (l.repo.hub_id(), hex::encode(l.commit)))
        .collect();
    for name in ["alice/tiny", "alice/bert"] {
        let commit = s.repos.resolve(&id(name), "main").unwrap();
        assert!(commits.contains(&(name.to_owned(), commit)), "{commits:?}");
    }
    let engine = &snapshot.engine;
    assert_eq!(
        advert.queue_limit as usize,
        (engine.max_running + engine.max_waiting) * 2
    );
    assert_eq!(advert.queue_depth, 0);
    assert_eq!(advert.kv_block_tokens as usize, engine.block_size);
    // A node with inference off advertises no models.
    let off = compute(Mode::Off).advert(Some(&snapshot), unix_now());
    assert!(off.models.is_empty());
    assert_eq!(off.memory_total_bytes, 0);
}

#[test]
fn the_advert_and_the_router_read_the_load_from_the_snapshot() {
    let engine = hub_infer::engine::EngineConfig::default();
    let key = ModelKey {
        repo: "alice/tiny".into(),
        commit: "ab".repeat(20),
    };
    let snapshot = LoadSnapshot {
        loaded: vec![key.clone(), key],
        waiting: 3,
        running: 2,
        kv_blocks_used: 5,
        memory_budget: 1000,
        memory_used: 400,
        decode_tokens_per_s: 12.5,
        engine: engine.clone(),
    };
    let compute = Compute::new(ComputeConfig {
        mode: Mode::Mesh,
        secret: [7; 32],
        advert_period: Duration::from_secs(5),
        allow_peers: Vec::new(),
        cache_entries: 0,
    });
    let advert = compute.advert(Some(&snapshot), unix_now());
    assert_eq!(advert.memory_free_bytes, 600);
    assert_eq!(advert.queue_depth, 5);
    assert_eq!(advert.running, 2);
    assert_eq!(advert.free_kv_blocks as usize, engine.num_blocks * 2 - 5);
    // One entry per repo, with the measured speed.
    assert_eq!(advert.models.len(), 1);
    assert_eq!(advert.models[0].decode_tokens_per_s, 12.5);
    let local = snapshot.local_state(advert.node, Mode::Mesh, &id("alice/tiny"), true);
    assert!(local.warm && local.can_load);
    assert_eq!(local.queue_depth, 5);
    let cold = snapshot.local_state(advert.node, Mode::Mesh, &id("alice/other"), false);
    assert!(!cold.warm && !cold.can_load);
}
