//! hubmesh's HTTP gateway: the axum router every node serves.
//!
//! Place in the graph: the last library before `node` (`… ← core ← {net, mesh, models} ←
//! gateway ← node`). The node binds the listener and serves [`router`]; everything the
//! router needs lives in [`AppState`].
//!
//! Owns HTTP only: extractors for the caller, one module per surface (`hub/`, `git/`, `lfs/`,
//! `inference/`, `compute`, `admin`, `mesh`), and the rendering of errors per API family.
//! The Hub's rules (access, commits, LFS ownership, refs, resolve) are `hub-core`'s, model
//! lifecycle is `hub-models'`, replication is `hub-mesh`'s: a rule another surface (git, a
//! remote helper, mirroring, Spaces) needs must not live here. Nothing depends on this crate
//! but the node.
//!
//! Routes today:
//! - `GET /health`: `{"status":"ok","version":…,"peer_id":…}`;
//! - `GET /metrics`: Prometheus metrics (OpenMetrics text): process and HTTP request metrics;
//! - `GET /api/whoami-v2`: the caller behind a `Bearer` token, in the Hub's shape;
//! - the Hub API for repositories and `resolve` downloads (see the `hub` module);
//! - inference: OpenAI `/v1/*`, TGI `/generate*`, HF `/models/{ns}/{name}` (the `inference`
//!   module), once the node calls [`AppState::enable_inference`];
//! - Spaces: the runtime API under `/api/spaces/{ns}/{name}/…` and the apps at
//!   `/spaces/{ns}/{name}/app/` (the `spaces` module), once the node calls
//!   [`AppState::enable_spaces`].
//!
//! Hub, git and LFS errors leave through one boundary, [`error::AppError`], rendered once per
//! family (the Hub's `X-Error-Code`/`X-Error-Message` headers and JSON `{"error": …}` body,
//! git-lfs JSON, git's plain text); the inference families (OpenAI, TGI, HF, SSE events) are
//! rendered in `inference/error.rs`.
//!
//! ```no_run
//! # async fn serve(state: hub_gateway::AppState) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! axum::serve(listener, hub_gateway::router(state)).await
//! # }
//! ```

mod access;
mod admin;
#[cfg(test)]
mod api_tests;
mod compute;
pub mod error;
mod extract;
mod git;
mod hub;
mod import;
mod inference;
mod lfs;
mod listing;
mod mesh;
pub mod metrics;
mod mirror;
pub use mirror::BundleSite;
mod pages;
mod placements;
mod routes;
mod spaces;
#[cfg(test)]
mod testing;
mod util;
mod viewer;
mod xet;

pub use compute::forwarded_jobs;
pub use error::AppError;
pub use git::{
    DEFAULT_GIT_IDLE_TIMEOUT, DEFAULT_MAX_GIT_PER_CLIENT, DEFAULT_MAX_GIT_PROCESSES, GitLimits,
};
/// How long inference requests wait for a model to load by default (`hub-models`').
pub use hub::webhooks_tls_config;
pub use routes::router;
pub use spaces::space_tunnels;

use hub_auth::AuthStore;
use hub_core::{Hub, HubParts, MeshPort};
use hub_repo::Repos;
use hub_search::SearchIndex;
use hub_store::Store;
use metrics::Metrics;
use std::sync::Arc;

/// What the gateway serves from. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

/// Settings of the gateway itself.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Items per page of the list endpoints (`/api/models`, …); more pages follow by `Link`.
    pub list_page_size: usize,
    /// Bounds on the git processes of `git clone`/`fetch`/`push` (see [`GitLimits`]).
    pub git: GitLimits,
    /// Whether webhook receivers may be on loopback or private networks (the SSRF filter,
    /// `hub_core::webhooks::target_allowed`); off by default.
    pub webhooks_allow_local: bool,
    /// A PEM file of CAs that webhook receivers' `https://` certificates may chain to, besides
    /// Mozilla's roots (`[gateway] webhooks_ca_file`).
    pub webhooks_ca_file: Option<std::path::PathBuf>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            list_page_size: 100,
            git: GitLimits::default(),
            webhooks_allow_local: false,
            webhooks_ca_file: None,
        }
    }
}

/// Everything the gateway serves from.
#[derive(Debug)]
pub struct Parts {
    pub auth: Arc<AuthStore>,
    pub repos: Arc<Repos>,
    pub store: Store,
    pub search: Arc<SearchIndex>,
    pub p2p: hub_net::P2p,
    /// The replication running on `p2p` (seeding, on-demand fetches, announcements); `None`:
    /// this node replicates nothing (the Hub's rules then see [`hub_core::NoMesh`]).
    pub replication: Option<hub_mesh::Mesh>,
    pub config: GatewayConfig,
}

#[derive(Debug)]
struct Inner {
    hub: Hub,
    p2p: hub_net::P2p,
    replication: Option<hub_mesh::Mesh>,
    config: GatewayConfig,
    metrics: Metrics,
    git: git::Limiter,
    /// Set once by [`AppState::enable_inference`]; the inference routes answer 503 until then.
    inference: std::sync::OnceLock<Arc<hub_models::Models>>,
    /// Set once by [`AppState::enable_compute`]; every inference request runs here until then.
    compute: std::sync::OnceLock<Arc<hub_models::Compute>>,
    /// Set once by [`AppState::enable_shards`]: sharded models' placements (`placements`).
    shards: std::sync::OnceLock<Arc<hub_models::Shards>>,
    /// Set once by [`AppState::enable_spaces`]; the Spaces routes answer 503 until then.
    spaces: std::sync::OnceLock<hub_spaces::Spaces>,
    /// Where the Spaces this node does not run were placed (`spaces::remote`).
    space_placements: hub_spaces::mesh::Placements,
    /// The Xet index (`xet.redb` in the store's directory), opened on first use.
    xet: std::sync::OnceLock<Arc<hub_xet::XetIndex>>,
    xet_open: std::sync::Mutex<()>,
    /// Set once by [`AppState::enable_mirror`]: the pull-through mirror's admin API.
    mirror: std::sync::OnceLock<hub_mirror::Mirror>,
    /// Set once by [`AppState::enable_audit`]: every granted repo access is recorded.
    audit: std::sync::OnceLock<Arc<hub_mirror::AuditLog>>,
    /// Set once by [`AppState::enable_bundles`]: air-gap bundles into and out of this node.
    bundles: std::sync::OnceLock<mirror::BundleSite>,
}

impl AppState {
    pub fn new(parts: Parts) -> Self {
        let mesh: Arc<dyn MeshPort> = match &parts.replication {
            Some(replication) => Arc::new(replication.clone()),
            None => Arc::new(hub_core::NoMesh),
        };
        Self::with_mesh(parts, mesh)
    }

    /// As [`AppState::new`], with the Hub's rules seeing `mesh` (tests: a `FakeMesh`).
    pub fn with_mesh(parts: Parts, mesh: Arc<dyn MeshPort>) -> Self {
        let Parts {
            auth,
            repos,
            store,
            search,
            p2p,
            replication,
            config,
        } = parts;
        let metrics = Metrics::new(p2p.clone());
        let git = git::Limiter::new(config.git.clone());
        Self {
            inner: Arc::new(Inner {
                hub: Hub::new(HubParts {
                    auth,
                    repos,
                    store,
                    search,
                    mesh,
                }),
                p2p,
                replication,
                config,
                metrics,
                git,
                inference: std::sync::OnceLock::new(),
                compute: std::sync::OnceLock::new(),
                shards: std::sync::OnceLock::new(),
                spaces: std::sync::OnceLock::new(),
                space_placements: hub_spaces::mesh::Placements::default(),
                xet: std::sync::OnceLock::new(),
                xet_open: std::sync::Mutex::new(()),
                mirror: std::sync::OnceLock::new(),
                audit: std::sync::OnceLock::new(),
                bundles: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The Hub's rules (`hub-core`): access, LFS objects, commits, the after-write hook.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    pub fn search(&self) -> &Arc<SearchIndex> {
        self.inner.hub.search()
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.inner.config
    }

    pub fn repos(&self) -> &Arc<Repos> {
        self.inner.hub.repos()
    }

    pub fn store(&self) -> &Store {
        self.inner.hub.store()
    }

    pub fn auth(&self) -> &Arc<AuthStore> {
        self.inner.hub.auth()
    }

    pub fn p2p(&self) -> &hub_net::P2p {
        &self.inner.p2p
    }

    /// Serves the mirror's admin API from `mirror` (the node wraps its mesh in the mirror's
    /// port; see `hub-mirror`).
    pub fn enable_mirror(&self, mirror: hub_mirror::Mirror) {
        let _ = self.inner.mirror.set(mirror);
    }

    pub fn mirror(&self) -> Option<&hub_mirror::Mirror> {
        self.inner.mirror.get()
    }

    /// Records every granted repo access in `log` (the audit log).
    pub fn enable_audit(&self, log: Arc<hub_mirror::AuditLog>) {
        let _ = self.inner.audit.set(log);
    }

    /// Serves `POST /api/bundles/import` and `GET /api/bundles/export` (see `mirror`).
    pub fn enable_bundles(&self, site: mirror::BundleSite) {
        let _ = self.inner.bundles.set(site);
    }

    pub(crate) fn bundles(&self) -> Option<&mirror::BundleSite> {
        self.inner.bundles.get()
    }

    pub fn audit(&self) -> Option<&Arc<hub_mirror::AuditLog>> {
        self.inner.audit.get()
    }

    /// The replication handle, when this node replicates.
    pub fn replication(&self) -> Option<&hub_mesh::Mesh> {
        self.inner.replication.as_ref()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub(crate) fn git_limiter(&self) -> &git::Limiter {
        &self.inner.git
    }

    /// Serves the inference routes (OpenAI, TGI, HF Inference API) from `models`, which the
    /// node builds (with [`Metrics::inference_observer`] as its engines' observer). Returns
    /// `false` when inference was enabled already (the first stays).
    pub fn enable_inference(&self, models: Arc<hub_models::Models>) -> bool {
        self.inner.inference.set(models).is_ok()
    }

    pub(crate) fn inference(&self) -> Option<&Arc<hub_models::Models>> {
        self.inner.inference.get()
    }

    /// Routes inference requests over the compute mesh (routing, forwarding, response cache;
    /// see the `compute` module). The node builds `compute` and starts its tasks itself
    /// ([`hub_models::Compute::start`], with [`forwarded_jobs`] as the job handler). Without it
    /// every inference request runs here. Returns `false` when it was enabled already.
    pub fn enable_compute(&self, compute: Arc<hub_models::Compute>) -> bool {
        self.inner.compute.set(compute).is_ok()
    }

    pub(crate) fn compute(&self) -> Option<&Arc<hub_models::Compute>> {
        self.inner.compute.get()
    }

    /// Serves `GET/POST /api/mesh/placements` from `shards` (sharded models; the node builds
    /// it and starts its shard server). Returns `false` when it was enabled already.
    pub fn enable_shards(&self, shards: Arc<hub_models::Shards>) -> bool {
        self.inner.shards.set(shards).is_ok()
    }

    pub(crate) fn shards(&self) -> Option<&Arc<hub_models::Shards>> {
        self.inner.shards.get()
    }

    /// Runs Space apps and serves their runtime API (the `spaces` module) from `spaces`, which
    /// the node builds. Returns `false` when Spaces were enabled already.
    pub fn enable_spaces(&self, spaces: hub_spaces::Spaces) -> bool {
        self.inner.spaces.set(spaces).is_ok()
    }

    pub(crate) fn spaces(&self) -> Option<&hub_spaces::Spaces> {
        self.inner.spaces.get()
    }

    pub(crate) fn space_placements(&self) -> &hub_spaces::mesh::Placements {
        &self.inner.space_placements
    }

    /// The Xet index over the store, opened (once) on first use: `xet.redb` in the store's
    /// directory. Blocking (it may open the database): call it on a blocking thread.
    pub(crate) fn xet(&self) -> Result<Arc<hub_xet::XetIndex>, AppError> {
        if let Some(x) = self.inner.xet.get() {
            return Ok(x.clone());
        }
        let _guard = self
            .inner
            .xet_open
            .lock()
            .map_err(|_| AppError::internal("xet index lock poisoned"))?;
        if let Some(x) = self.inner.xet.get() {
            return Ok(x.clone());
        }
        let store = self.store().clone();
        let index = Arc::new(hub_xet::XetIndex::open(
            store.root().join("xet.redb"),
            store,
        )?);
        Ok(self.inner.xet.get_or_init(|| index).clone())
    }
}
