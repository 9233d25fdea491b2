//! hub-core: the Hub's rules without HTTP.
//!
//! Every surface that reads or writes repositories — the HTTP API, git smart HTTP, the LFS
//! batch API, inference, and next mirroring, Spaces and the git remote helper — goes through
//! this crate for the decisions that must not differ between them:
//! - **access** ([`Hub::access`]): authenticate-free (the caller comes resolved), it checks
//!   that a write belongs here (the namespace is hosted by this node) *before* any lookup,
//!   finds the repo (fetching a public one from the mesh on demand for reads), and asks
//!   `hub-auth` for the decision; the answer is a [`Granted`] target or one [`AccessError`];
//! - **a repo's LFS objects** ([`Hub::lfs_size`], [`Hub::adopt_lfs`]): an object belongs to a
//!   repo only when it is in the repo's LFS set *and* in the store (the store is shared; a
//!   hash is no proof of having the content); adopting one roots it against GC and adds it
//!   to the set;
//! - **LFS transfers** ([`Hub::plan_transfers`]): which objects a client may send or fetch,
//!   by what belongs to the repo and the per-object limit;
//! - **commit planning** ([`commit::plan`]): added files become git blobs or LFS pointers by
//!   the branch's `.gitattributes` rules ([`Hub::lfs_rules`]); the commit message rule;
//! - **a repo's lifecycle** ([`repos`]): create, delete and move, access checked first and the
//!   after-write hook run after; the git author of a user's writes ([`author_of`]);
//! - **pushes** ([`push`]): which ref updates of a push may land (history rewrites and
//!   deletes need the right to, a push is atomic), which LFS objects its pointers may name;
//! - **resolving downloads** ([`resolve`]): which commit a revision names, which entry a path
//!   is, which LFS object it maps to and whether the repo holds it here; what counts as a
//!   download;
//! - **the after-write hook** ([`Hub::after_write`]): the listing document is re-derived,
//!   the mesh told, and the events of watching webhooks queued ([`webhooks`]), after every
//!   successful write;
//! - **gated repos** ([`gate`]): the gate and access requests, stored in the repo's refs so
//!   they replicate; files need [`Need::Download`];
//! - **collections** ([`collections`]) and **webhooks** ([`webhooks`]): kept on the node where
//!   they are made;
//! - **cards and files** ([`card_rules`]): metadata validation (`model-index`),
//!   `transformersInfo`, `widgetData`, security statuses;
//! - **repo ids** ([`names`]): case-insensitive, and redirected after a move;
//! - **listing documents** ([`listing`]): what the search index holds for a repo, and who may
//!   see which listed repo.
//!
//! Place in the graph: above the leaves (`protocol`, `store`, `repo`, `auth`, `search`), below
//! the mesh, models and gateway crates. It must not depend on the network crates, axum or
//! candle: it sees the mesh only through the [`MeshPort`] trait, which `hub-mesh` implements
//! and [`FakeMesh`] (feature `test-support`) fakes in memory for other crates' tests.
//!
//! ```no_run
//! # async fn demo(hub: hub_core::Hub, id: hub_protocol::repo::RepoId) -> Result<(), hub_core::AccessError> {
//! use hub_core::Need;
//! let granted = hub.access(None, &id, Need::Read).await?; // anonymous read
//! assert!(!granted.meta.private);
//! # Ok(()) }
//! ```

mod access;
pub mod card_rules;
pub mod collections;
pub mod commit;
pub mod discussions;
pub mod gate;
pub mod lfs_objects;
pub mod lifecycle;
pub mod likes;
pub mod listing;
mod mesh;
pub mod model_facts;
pub mod names;
pub mod preupload;
pub mod push;
pub mod repos;
pub mod resolve;
pub mod storage;
pub mod tags;
#[cfg(test)]
mod testing;
pub mod webhooks;

pub use access::{AccessError, ENSURE_REPO_WAIT, Granted, Need};
pub use commit::{CommitError, Pending};
pub use lfs_objects::{Transfer, TransferPlan};
#[cfg(feature = "test-support")]
pub use mesh::FakeMesh;
pub use mesh::{BoxFuture, ClaimError, EnsureError, LfsFetchError, LfsStream, MeshPort, NoMesh};
pub use repos::{Change, CreateGrant, RepoOpError, author_of};
pub use resolve::{MissingLfs, ResolveError, ResolvedFile};

use hub_auth::AuthStore;
use hub_protocol::repo::RepoId;
use hub_repo::Repos;
use hub_search::SearchIndex;
use hub_store::Store;
use std::sync::Arc;

/// A failure of the storage underneath a rule (repositories, the chunk store, accounts).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Repo(#[from] hub_repo::RepoError),
    #[error(transparent)]
    Store(#[from] hub_store::StoreError),
    #[error(transparent)]
    Auth(#[from] hub_auth::AuthError),
    #[error("read stored object")]
    Io(#[from] std::io::Error),
    #[error("blocking task failed")]
    Join(#[from] tokio::task::JoinError),
}

/// The Hub: what every surface serves from. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

/// What a [`Hub`] is made of.
#[derive(Debug)]
pub struct HubParts {
    pub auth: Arc<AuthStore>,
    pub repos: Arc<Repos>,
    pub store: Store,
    pub search: Arc<SearchIndex>,
    pub mesh: Arc<dyn MeshPort>,
}

#[derive(Debug)]
struct Inner {
    auth: Arc<AuthStore>,
    repos: Arc<Repos>,
    store: Store,
    search: Arc<SearchIndex>,
    mesh: Arc<dyn MeshPort>,
    collections: collections::CollectionStore,
    webhooks: webhooks::Webhooks,
    gates: gate::GateCache,
    redirects: names::Redirects,
}

impl Hub {
    pub fn new(parts: HubParts) -> Self {
        let HubParts {
            auth,
            repos,
            store,
            search,
            mesh,
        } = parts;
        let collections = collections::CollectionStore::new(repos.root().join("collections"));
        Self {
            inner: Arc::new(Inner {
                webhooks: webhooks::Webhooks::new(repos.root().join("webhooks")),
                gates: gate::GateCache::default(),
                redirects: names::Redirects::new(repos.root().join("redirects.json")),
                collections,
                auth,
                repos,
                store,
                search,
                mesh,
            }),
        }
    }

    pub fn auth(&self) -> &Arc<AuthStore> {
        &self.inner.auth
    }

    pub fn repos(&self) -> &Arc<Repos> {
        &self.inner.repos
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn search(&self) -> &Arc<SearchIndex> {
        &self.inner.search
    }

    pub fn mesh(&self) -> &Arc<dyn MeshPort> {
        &self.inner.mesh
    }

    /// The one hook after every successful write to a repository (create, commit, settings,
    /// branch or tag, move, delete, git push): re-derives its listing entry before the caller
    /// answers, so a client that lists right after a write sees it, and tells the mesh, which
    /// signs and gossips the new refs of public repos (it never blocks); then queues the
    /// webhook events of the write (never blocks either: a full queue drops).
    pub async fn after_write(&self, id: &RepoId) {
        self.inner.mesh.repo_changed(id);
        self.repo_webhooks(id).await;
        let (repos, search, id) = (self.repos().clone(), self.search().clone(), id.clone());
        if let Err(e) =
            tokio::task::spawn_blocking(move || listing::reindex(&repos, &search, &id)).await
        {
            tracing::warn!(error = %e, "reindex task failed");
        }
    }
}

/// Runs blocking repository, store or account work off the async executor.
pub(crate) async fn blocking<
    T: Send + 'static,
    E: From<tokio::task::JoinError> + Send + 'static,
>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E> {
    tokio::task::spawn_blocking(f).await?
}
