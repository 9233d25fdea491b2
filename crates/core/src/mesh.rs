//! The mesh as hub-core sees it: the [`MeshPort`] trait.
//!
//! hub-core decides; the mesh crate moves data. The port is the handful of things a Hub rule
//! needs from peers: fetch a public repo (or one LFS object) on demand, stream an object while
//! it arrives, name the nodes hosting a namespace, claim a namespace for a new account (ADR
//! 0006), and hear that a repo changed. `hub-mesh`
//! implements it on its handle; [`FakeMesh`] (feature `test-support`) implements it in memory,
//! so the gateway's router tests cover hosted-elsewhere writes and on-demand fetches without
//! sockets.

use hub_protocol::repo::RepoId;
use hub_store::Sha256;
use std::future::Future;
use std::pin::Pin;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A boxed future, so that [`MeshPort`] can be used as `dyn MeshPort`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An LFS object's bytes while they arrive, in order, each piece verified; an `Err` item ends
/// the stream early (the fetch failed part way: the client sees a short body, never a wrong
/// byte).
pub type LfsStream = mpsc::Receiver<std::io::Result<Vec<u8>>>;

/// Why a repo could not be had from the mesh.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnsureError {
    /// No accepted signed update names the repo: the mesh does not know it (private repos are
    /// never announced), or this node runs no replication.
    #[error("no peer announced this repository")]
    Unknown,
    /// Announced, but its git data had not arrived by the deadline.
    #[error("the repository is still being fetched from peers ({0})")]
    Pending(String),
    /// A pull-through mirror's upstream could not give it now (unreachable, offline mode,
    /// an upstream error); the text names the upstream.
    #[error("{0}")]
    Unavailable(String),
    /// A pull-through mirror's policy refuses the repo; the text says which rule.
    #[error("{0}")]
    Refused(String),
    /// A pull-through mirror's upstream gates the repo and did not let the mirror's token
    /// in (the Hub's `GatedRepo`); the text names the upstream.
    #[error("{0}")]
    Gated(String),
}

/// Why an LFS object could not be had from the mesh by a deadline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LfsFetchError {
    #[error("this node runs no replication")]
    NoReplication,
    #[error("replication stopped")]
    Stopped,
    #[error("still arriving from peers")]
    Timeout,
    /// The fetch ended without the object (no provider, bad data from every provider, …).
    #[error("{0}")]
    Failed(String),
}

/// Why a namespace could not be claimed for an account of this node (ADR 0006).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClaimError {
    /// The mesh already gave the name to other nodes (display forms of their ids).
    #[error("{}", claimed_message(namespace, hosts))]
    ClaimedElsewhere {
        namespace: String,
        hosts: Vec<String>,
    },
    /// The claim could not be made or stored here.
    #[error("claim namespace {namespace:?}: {reason}")]
    Failed { namespace: String, reason: String },
}

fn claimed_message(namespace: &str, hosts: &[String]) -> String {
    match hosts {
        [] => format!("the name {namespace:?} is claimed by other nodes of the mesh"),
        many => format!(
            "the name {namespace:?} is claimed in the mesh by node {}",
            many.join(", ")
        ),
    }
}

/// What hub-core needs from the mesh.
pub trait MeshPort: Send + Sync + std::fmt::Debug {
    /// Makes sure this node holds the git data of `repo`, announced by a peer, fetching it
    /// if needed, waiting until `deadline` at most.
    fn ensure_repo<'a>(
        &'a self,
        repo: &'a RepoId,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<(), EnsureError>>;

    /// Fetches one LFS object of `repo` (named by its pointer) and waits until it is stored,
    /// or until `deadline`.
    fn ensure_lfs<'a>(
        &'a self,
        repo: &'a RepoId,
        sha256: Sha256,
        size: u64,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<(), LfsFetchError>>;

    /// Starts fetching one LFS object of `repo` and streams it while it arrives. `None`: it is
    /// stored already, or nothing verified had arrived by `deadline`.
    fn stream_lfs<'a>(
        &'a self,
        repo: &'a RepoId,
        sha256: Sha256,
        size: u64,
        deadline: Instant,
    ) -> BoxFuture<'a, Option<LfsStream>>;

    /// The nodes hosting `namespace` (display forms of their ids) when this node is not one
    /// of them: writes belong there. `None`: this node hosts it, or nobody announced it.
    fn namespace_hosts<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Option<Vec<String>>>;

    /// Claims `namespace` for this node before an account of that name is created here: the
    /// node becomes its delegate mesh-wide (a genesis document, gossiped), unless an accepted
    /// document already names other nodes ([`ClaimError::ClaimedElsewhere`]). `Ok` also when
    /// this node holds it already.
    fn claim_namespace<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Result<(), ClaimError>>;

    /// A repo changed here (after a write); never blocks.
    fn repo_changed(&self, repo: &RepoId);

    /// Whether a GET of the missing LFS object `sha256` of `repo` will stream it from a
    /// source that does not need it announced first (a pull-through mirror's upstream);
    /// when so, its fetch is started now (in the background, once), so a HEAD can answer
    /// from the pointer alone. The mesh's peers never qualify: `false` by default.
    fn prefetch_lfs(&self, _repo: &RepoId, _sha256: Sha256, _size: u64) -> bool {
        false
    }

    /// Like [`MeshPort::stream_lfs`], for bytes `start..end` of the object (a ranged GET of
    /// content not here yet): streamed while the fetch passes them. `None` (the default):
    /// the range waits for the whole object ([`MeshPort::ensure_lfs`]).
    fn stream_lfs_range<'a>(
        &'a self,
        _repo: &'a RepoId,
        _sha256: Sha256,
        _size: u64,
        _range: std::ops::Range<u64>,
        _deadline: Instant,
    ) -> BoxFuture<'a, Option<LfsStream>> {
        Box::pin(async { None })
    }

    /// The LFS object `sha256` of `repo` is being served from this node's store (a GET of
    /// its content): a cache with a quota records the use for its LRU order. Must not block.
    /// Nothing by default.
    fn lfs_served(&self, _repo: &RepoId, _sha256: Sha256) {}
}

/// The mesh of a node that replicates nothing: no peer announced anything, so nothing can be
/// fetched, and every namespace is this node's own.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoMesh;

impl MeshPort for NoMesh {
    fn ensure_repo<'a>(
        &'a self,
        _repo: &'a RepoId,
        _deadline: Instant,
    ) -> BoxFuture<'a, Result<(), EnsureError>> {
        Box::pin(async { Err(EnsureError::Unknown) })
    }

    fn ensure_lfs<'a>(
        &'a self,
        _repo: &'a RepoId,
        _sha256: Sha256,
        _size: u64,
        _deadline: Instant,
    ) -> BoxFuture<'a, Result<(), LfsFetchError>> {
        Box::pin(async { Err(LfsFetchError::NoReplication) })
    }

    fn stream_lfs<'a>(
        &'a self,
        _repo: &'a RepoId,
        _sha256: Sha256,
        _size: u64,
        _deadline: Instant,
    ) -> BoxFuture<'a, Option<LfsStream>> {
        Box::pin(async { None })
    }

    fn namespace_hosts<'a>(&'a self, _namespace: &'a str) -> BoxFuture<'a, Option<Vec<String>>> {
        Box::pin(async { None })
    }

    /// No mesh, no one to claim against: every name is this node's.
    fn claim_namespace<'a>(&'a self, _namespace: &'a str) -> BoxFuture<'a, Result<(), ClaimError>> {
        Box::pin(async { Ok(()) })
    }

    fn repo_changed(&self, _repo: &RepoId) {}
}

#[cfg(feature = "test-support")]
pub use fake::FakeMesh;

#[cfg(feature = "test-support")]
mod fake {
    use super::{BoxFuture, ClaimError, EnsureError, LfsFetchError, LfsStream, MeshPort};
    use hub_protocol::repo::RepoId;
    use hub_store::Sha256;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, PoisonError};
    use tokio::time::Instant;

    /// What a fetched repo does on arrival: the test's stand-in for a peer's pack (e.g. it
    /// creates the repo in the node's `Repos`); its error is what the fetch answers.
    type Arrival = Arc<dyn Fn() -> Result<(), EnsureError> + Send + Sync>;

    /// An in-memory mesh for tests: namespaces hosted elsewhere, repos "announced" by peers
    /// (with what their arrival does), and a log of every call.
    #[derive(Default)]
    pub struct FakeMesh {
        state: Mutex<State>,
    }

    #[derive(Default)]
    struct State {
        hosts: HashMap<String, Vec<String>>,
        announced: HashMap<RepoId, Option<Arrival>>,
        ensured: Vec<RepoId>,
        changed: Vec<RepoId>,
        claimed: Vec<String>,
    }

    impl std::fmt::Debug for FakeMesh {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("FakeMesh").finish_non_exhaustive()
        }
    }

    impl FakeMesh {
        pub fn new() -> Self {
            Self::default()
        }

        fn state(&self) -> std::sync::MutexGuard<'_, State> {
            self.state.lock().unwrap_or_else(PoisonError::into_inner)
        }

        /// `namespace` is hosted by these nodes, not this one.
        pub fn host_elsewhere(&self, namespace: &str, hosts: &[&str]) {
            self.state().hosts.insert(
                namespace.to_owned(),
                hosts.iter().map(|h| (*h).to_owned()).collect(),
            );
        }

        /// A peer announced `repo`; fetching it runs `arrive` (`None`: its data never
        /// arrives, so fetches stay pending).
        pub fn announce(
            &self,
            repo: &RepoId,
            arrive: Option<Arc<dyn Fn() -> Result<(), EnsureError> + Send + Sync>>,
        ) {
            self.state().announced.insert(repo.clone(), arrive);
        }

        /// The repos fetched on demand so far, in order.
        pub fn ensured(&self) -> Vec<RepoId> {
            self.state().ensured.clone()
        }

        /// The namespaces this node claimed so far, in order.
        pub fn claimed(&self) -> Vec<String> {
            self.state().claimed.clone()
        }

        /// The repos reported changed so far, in order.
        pub fn changed(&self) -> Vec<RepoId> {
            self.state().changed.clone()
        }
    }

    impl MeshPort for FakeMesh {
        fn ensure_repo<'a>(
            &'a self,
            repo: &'a RepoId,
            _deadline: Instant,
        ) -> BoxFuture<'a, Result<(), EnsureError>> {
            Box::pin(async move {
                let arrival = {
                    let mut state = self.state();
                    state.ensured.push(repo.clone());
                    match state.announced.get(repo) {
                        None => return Err(EnsureError::Unknown),
                        Some(None) => return Err(EnsureError::Pending("not arrived yet".into())),
                        Some(Some(arrive)) => arrive.clone(),
                    }
                };
                arrival()
            })
        }

        fn ensure_lfs<'a>(
            &'a self,
            _repo: &'a RepoId,
            _sha256: Sha256,
            _size: u64,
            _deadline: Instant,
        ) -> BoxFuture<'a, Result<(), LfsFetchError>> {
            Box::pin(async { Err(LfsFetchError::Failed("no peer has it".into())) })
        }

        fn stream_lfs<'a>(
            &'a self,
            _repo: &'a RepoId,
            _sha256: Sha256,
            _size: u64,
            _deadline: Instant,
        ) -> BoxFuture<'a, Option<LfsStream>> {
            Box::pin(async { None })
        }

        fn namespace_hosts<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Option<Vec<String>>> {
            Box::pin(async move { self.state().hosts.get(namespace).cloned() })
        }

        /// Refused for a namespace hosted elsewhere ([`FakeMesh::host_elsewhere`]), else
        /// recorded (see [`FakeMesh::claimed`]).
        fn claim_namespace<'a>(
            &'a self,
            namespace: &'a str,
        ) -> BoxFuture<'a, Result<(), ClaimError>> {
            Box::pin(async move {
                let mut state = self.state();
                if let Some(hosts) = state.hosts.get(namespace) {
                    return Err(ClaimError::ClaimedElsewhere {
                        namespace: namespace.to_owned(),
                        hosts: hosts.clone(),
                    });
                }
                state.claimed.push(namespace.to_owned());
                Ok(())
            })
        }

        fn repo_changed(&self, repo: &RepoId) {
            self.state().changed.push(repo.clone());
        }
    }
}
