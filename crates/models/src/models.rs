//! [`Models`]: the models this node serves — resolving a request's model to a commit, loading
//! it in the background (one load per model, shared by every waiter, not tied to any request),
//! keeping it within the memory budget, and reporting the load ([`Models::snapshot`]).
//!
//! Who spawns whom: [`Models::open`] starts a load on a blocking thread of its own and waits on
//! a `watch` channel for its outcome; the thread materializes the files
//! ([`crate::files::materialize`]) and hands the model to hub-infer's [`Registry`], which keeps
//! generation models and embedders in one memory budget (LRU of idle models evicted; a model
//! larger than the budget refused). Generation engines are threads the registry starts. Access
//! checks are the caller's (the gateway asks hub-core first): this service assumes the
//! caller may read the repo.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hub_infer::bert::Embedder;
use hub_infer::serve::{
    Loadable, LoadedModel, ModelKey, Registry, RegistryConfig, RegistryError, ServeObserver, Served,
};
use hub_protocol::repo::RepoId;
use hub_repo::Repos;
use hub_store::Store;
use tokio::sync::watch;

use crate::error::{LoadError, LoadFailure, ModelError, Wait};
use crate::files::materialize;
use crate::snapshot::{LoadCounters, LoadSnapshot, SpeedMeter};

/// How long a request waits for a model that is loading before it gives up (the gateway's
/// OpenAI and TGI routes; the HF route waits only [`HF_LOAD_GRACE`] unless asked to wait).
pub const DEFAULT_LOAD_WAIT: Duration = Duration::from_secs(120);

/// The estimate of a load's duration for a loading answer's `estimated_time`: a fixed guess
/// (loading SmolLM2-135M from a local GGUF takes a few seconds on a 2-core machine).
pub const LOAD_ESTIMATE: Duration = Duration::from_secs(20);

/// How long a request that does not ask to wait ([`Wait::Grace`]) still waits for its model
/// to load: `huggingface_hub`'s task helpers do not retry a 503, and a small model loads in
/// well under it.
pub const HF_LOAD_GRACE: Duration = Duration::from_secs(3);

/// Settings of the models service.
#[derive(Debug, Clone)]
pub struct ModelsConfig {
    /// Where model files are materialized (see [`crate::files`]).
    pub cache_dir: PathBuf,
    /// The memory budget (generation models and embedders) and each engine's limits.
    pub registry: RegistryConfig,
    /// How long a request waits for its model to load (see [`DEFAULT_LOAD_WAIT`]).
    pub load_wait: Duration,
}

impl ModelsConfig {
    /// Default limits (a memory budget of half the machine's RAM, hub-infer's default engine),
    /// files under `cache_dir`.
    pub fn new(cache_dir: PathBuf) -> Self {
        Self {
            cache_dir,
            registry: RegistryConfig::default(),
            load_wait: DEFAULT_LOAD_WAIT,
        }
    }
}

/// The outcome of a background load, shared by every request waiting for it. A loaded model
/// is then taken from the registry: the channel holds no handle, so a model is idle as soon
/// as the requests that use it are done.
type LoadResult = Result<(), Arc<LoadError>>;

/// A load in progress: its start and where its outcome will appear.
#[derive(Debug, Clone)]
struct Loading {
    started: Instant,
    outcome: watch::Receiver<Option<LoadResult>>,
}

/// A model opened for a request.
#[derive(Debug, Clone)]
pub struct Opened {
    pub served: Served,
    /// The commit the revision resolved to.
    pub commit: String,
    /// The model card's `pipeline_tag`, else `feature-extraction` for an embedding model and
    /// `text-generation` for the rest.
    pub pipeline_tag: String,
}

/// Tests: runs on the loading thread before a model loads (to hold a load open).
#[cfg(any(test, feature = "test-support"))]
pub type LoadHook = Arc<dyn Fn(&ModelKey) + Send + Sync>;

/// The models this node serves (see the module docs). Share it as `Arc<Models>`.
pub struct Models {
    repos: Arc<Repos>,
    store: Store,
    cache_dir: PathBuf,
    registry: Arc<Registry>,
    /// Loads in progress, by model.
    loads: Mutex<HashMap<ModelKey, Loading>>,
    load_wait: Duration,
    counters: Arc<LoadCounters>,
    speed: SpeedMeter,
    #[cfg(any(test, feature = "test-support"))]
    load_hook: std::sync::OnceLock<LoadHook>,
}

impl std::fmt::Debug for Models {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Models")
            .field("cache_dir", &self.cache_dir)
            .field("registry", &self.registry)
            .field("load_wait", &self.load_wait)
            .finish_non_exhaustive()
    }
}

impl Models {
    /// Serves models of `repos` (weights from `store`); engines report their load to this
    /// service and on to `observer` (the gateway's metrics).
    pub fn new(
        config: ModelsConfig,
        repos: Arc<Repos>,
        store: Store,
        observer: Option<Arc<dyn ServeObserver>>,
    ) -> Self {
        let counters = Arc::new(LoadCounters::new(observer));
        Self {
            repos,
            store,
            cache_dir: config.cache_dir,
            registry: Arc::new(Registry::new(config.registry).with_observer(counters.clone())),
            loads: Mutex::new(HashMap::new()),
            load_wait: config.load_wait,
            counters,
            speed: SpeedMeter::default(),
            #[cfg(any(test, feature = "test-support"))]
            load_hook: std::sync::OnceLock::new(),
        }
    }

    /// Tests: `hook` runs on the loading thread before every load. `false` when one is set.
    #[cfg(any(test, feature = "test-support"))]
    pub fn set_load_hook(&self, hook: LoadHook) -> bool {
        self.load_hook.set(hook).is_ok()
    }

    /// Tests: loads in progress.
    #[cfg(test)]
    pub(crate) fn loads_in_progress(&self) -> usize {
        self.loads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Blocking: the model directory of `commit` of `id` in the model cache (see
    /// [`materialize`]).
    pub(crate) fn materialize(&self, id: &RepoId, commit: &str) -> Result<PathBuf, LoadFailure> {
        materialize(&self.repos, &self.store, id, commit, &self.cache_dir)
    }

    pub(crate) fn repos(&self) -> &Arc<Repos> {
        &self.repos
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// The registry of loaded models (the memory budget).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// How long requests wait for a model (see [`DEFAULT_LOAD_WAIT`]).
    pub fn load_wait(&self) -> Duration {
        self.load_wait
    }

    /// The loaded models of both kinds, most recently used first.
    pub fn loaded_models(&self) -> Vec<ModelKey> {
        self.registry.loaded()
    }

    /// The load now, for capacity adverts and routing.
    pub fn snapshot(&self) -> LoadSnapshot {
        let (waiting, running, kv_blocks_used, _) = self.counters.load();
        LoadSnapshot {
            loaded: self.registry.loaded(),
            waiting,
            running,
            kv_blocks_used,
            memory_budget: self.registry.config().memory_budget,
            memory_used: self.registry.memory_used(),
            decode_tokens_per_s: self.speed.rate(),
            engine: self.registry.config().serve.engine.clone(),
        }
    }

    /// Measures the decode speed since the last call; call once per advert period.
    pub fn measure_speed(&self) {
        let (_, _, _, generated) = self.counters.load();
        self.speed.measure(generated);
    }

    /// Resolves `revision` of `id` and returns its loaded model, loading it in the background
    /// if needed and waiting as `wait` says. Cancel-safe: dropping it leaves the load running.
    /// The caller has checked read access.
    pub async fn open(
        self: &Arc<Self>,
        id: &RepoId,
        revision: &str,
        wait: Wait,
    ) -> Result<Opened, ModelError> {
        let resolved = {
            let (this, id) = (self.clone(), id.clone());
            let revision = revision.to_owned();
            tokio::task::spawn_blocking(move || {
                let commit = this.repos.resolve(&id, &revision).ok()?;
                let card_tag =
                    this.repos
                        .file(&id, &commit, "README.md")
                        .ok()
                        .and_then(|(_, bytes)| {
                            hub_search::parse_card(&String::from_utf8_lossy(&bytes)).pipeline_tag
                        });
                let key = ModelKey {
                    repo: id.hub_id(),
                    commit: commit.clone(),
                };
                let cached = this.registry.get_served(&key);
                Some((commit, card_tag, key, cached))
            })
            .await
            .map_err(|e| ModelError::Task(Arc::new(e)))?
        };
        let Some((commit, card_tag, key, cached)) = resolved else {
            return Err(ModelError::NotFound);
        };
        let served = match cached {
            Some(served) => served,
            None => self.load_and_wait(id, &key, wait).await?,
        };
        let pipeline_tag = card_tag.unwrap_or_else(|| {
            match served {
                Served::Embed(_) => "feature-extraction",
                Served::Generate(_) => "text-generation",
            }
            .to_owned()
        });
        Ok(Opened {
            served,
            commit,
            pipeline_tag,
        })
    }

    /// Loads `key` (or joins its load in progress) and waits as `wait` says. A model evicted
    /// between its load and this request's turn (other loads needed the room) is loaded
    /// again, a few times at most.
    async fn load_and_wait(
        self: &Arc<Self>,
        id: &RepoId,
        key: &ModelKey,
        wait: Wait,
    ) -> Result<Served, ModelError> {
        for _ in 0..3 {
            let loading = self.load(id.clone(), key.clone());
            await_load(loading, wait, self.load_wait).await?;
            if let Some(served) = self.registry.get_served(key) {
                return Ok(served);
            }
        }
        Err(ModelError::Evicted)
    }

    /// The load of `key`, started on a blocking thread unless one is in progress.
    fn load(self: &Arc<Self>, id: RepoId, key: ModelKey) -> Loading {
        let mut loads = self.loads.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(l) = loads.get(&key) {
            return l.clone();
        }
        let (tx, outcome) = watch::channel(None);
        let loading = Loading {
            started: Instant::now(),
            outcome,
        };
        loads.insert(key.clone(), loading.clone());
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            #[cfg(any(test, feature = "test-support"))]
            if let Some(hook) = this.load_hook.get() {
                hook(&key);
            }
            let result = this.load_blocking(&id, &key).map(drop).map_err(Arc::new);
            // The entry goes before the outcome is published: a request that comes after a
            // failure starts a load of its own instead of taking the failure of one it did not
            // wait for; after a success the registry holds the model already.
            this.loads
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&key);
            let _ = tx.send(Some(result));
        });
        loading
    }

    /// Blocking: materializes the model and loads it into the registry (or finds it there): a
    /// BERT directory (`model_type: "bert"`) as an [`Embedder`], anything else as a
    /// generation engine.
    fn load_blocking(&self, id: &RepoId, key: &ModelKey) -> Result<Served, LoadError> {
        let dir = materialize(&self.repos, &self.store, id, &key.commit, &self.cache_dir)
            .map_err(RegistryError::Load)?;
        self.registry.get_or_load_served(key, || {
            if hub_infer::bert::is_bert_dir(&dir) {
                Embedder::from_dir(&dir)
                    .map(|e| Loadable::Embed(Box::new(e)))
                    .map_err(|e| LoadFailure::Model(e.into()))
            } else {
                LoadedModel::from_dir(&dir)
                    .map(|m| Loadable::Generate(Box::new(m)))
                    .map_err(|e| LoadFailure::Model(e.into()))
            }
        })
    }
}

/// The outcome of `loading`, waiting as `wait` says (at most `bound`). Cancel-safe.
async fn await_load(mut loading: Loading, wait: Wait, bound: Duration) -> Result<(), ModelError> {
    let bound = match wait {
        Wait::Grace => bound.min(HF_LOAD_GRACE),
        Wait::Bounded => bound,
    };
    let outcome = match tokio::time::timeout(bound, loading.outcome.wait_for(Option::is_some)).await
    {
        Ok(Ok(outcome)) => outcome.clone(),
        // The loading thread panicked.
        Ok(Err(_)) => return Err(ModelError::LoaderStopped),
        Err(_) => None,
    };
    match outcome {
        Some(Ok(())) => Ok(()),
        Some(Err(e)) => Err(ModelError::Load(e)),
        None => Err(ModelError::Loading {
            wait,
            waited: bound,
            estimated: LOAD_ESTIMATE
                .saturating_sub(loading.started.elapsed())
                .max(Duration::from_secs(1)),
        }),
    }
}
