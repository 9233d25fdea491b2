//! A repository's LFS objects.
//!
//! The chunk store is shared by every repository of the node, so "the store has it" says
//! nothing about a repo: an object **belongs** to a repo only when it is in the repo's LFS
//! set (`meta.redb`, written when the object was uploaded to, committed to, pushed to or
//! replicated into that repo) *and* in the store. Knowing a hash is no proof of having the
//! content; every surface that lets a caller name an object (commits, pushes, the LFS batch
//! API, downloads, peers) asks here. **Adopting** an object makes it part of a repo: it joins
//! the store's GC roots and the repo's LFS set. An object **uploaded** (LFS PUT) but not
//! committed yet only joins the LFS set: a commit may follow and reference it, but if its repo
//! goes away first, `hubmesh store gc` reclaims it.
//!
//! These functions block (redb, file reads): call them from a blocking task.

use crate::{Error, Hub};
use hub_protocol::repo::RepoId;
use hub_repo::Repos;
use hub_store::{Sha256, Store, StoreError};

/// The size of `sha256` as it belongs to `repo`; `None` when it does not belong to it.
pub fn size_in(
    repos: &Repos,
    store: &Store,
    repo: &RepoId,
    sha256: &Sha256,
) -> Result<Option<u64>, Error> {
    if !repos.has_lfs_object(repo, &sha256.0)? {
        return Ok(None);
    }
    match store.open_file(sha256) {
        Ok(reader) => Ok(Some(reader.len())),
        Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether `sha256` belongs to `repo` (see the module docs). Cheaper than [`size_in`]: it
/// does not open the file.
pub fn belongs(
    repos: &Repos,
    store: &Store,
    repo: &RepoId,
    sha256: &Sha256,
) -> Result<bool, Error> {
    Ok(repos.has_lfs_object(repo, &sha256.0)? && store.has(sha256)?)
}

/// Makes the stored object `sha256` part of `repo`: a GC root and a member of its LFS set.
pub fn adopt(repos: &Repos, store: &Store, repo: &RepoId, sha256: &Sha256) -> Result<(), Error> {
    store.add_root(sha256)?;
    repos.add_lfs_objects(repo, &[sha256.0])?;
    Ok(())
}

/// Records an object uploaded to `repo` (LFS PUT) and not committed yet: it joins the repo's
/// LFS set, not the GC roots (see the module docs).
pub fn record_upload(repos: &Repos, repo: &RepoId, sha256: &Sha256) -> Result<(), Error> {
    repos.add_lfs_objects(repo, &[sha256.0])?;
    Ok(())
}

/// Before `repo` is deleted (or withdrawn from this node): its objects stop being GC roots on
/// its account. `hubmesh store gc` then keeps only what some remaining repository still
/// references (its LFS set or the trees of its branches and tags) and reclaims the rest.
pub fn release(repos: &Repos, store: &Store, repo: &RepoId) -> Result<(), Error> {
    for sha in repos.lfs_objects(repo)? {
        store.remove_root(&Sha256(sha))?;
    }
    Ok(())
}

/// The largest LFS object a repository accepts (the Hub's per-file limit).
pub const MAX_OBJECT_SIZE: u64 = 50 * 1024 * 1024 * 1024;

/// The direction of an LFS transfer a client asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    Upload,
    Download,
}

/// What to do about one object a client names (an LFS batch request, a mirror's want list).
/// An object counts as held only when it belongs to the repo with the size the client gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferPlan {
    /// The oid is not 64 hex digits (a SHA-256).
    InvalidOid,
    /// Over [`MAX_OBJECT_SIZE`].
    TooLarge,
    /// An upload of an object the repo holds already: nothing to send.
    Present(Sha256),
    /// An upload to accept.
    Upload(Sha256),
    /// A download of an object the repo holds.
    Download(Sha256),
    /// A download of an object the repo does not hold (here, or at that size).
    Missing(Sha256),
}

/// Plans `transfer` of each `(oid, size)` for `repo` (see [`TransferPlan`]). Another repo's
/// copy in the shared store does not count: the answer reveals nothing about other repos.
pub fn plan_transfers(
    repos: &Repos,
    store: &Store,
    repo: &RepoId,
    transfer: Transfer,
    objects: &[(String, u64)],
) -> Result<Vec<TransferPlan>, Error> {
    objects
        .iter()
        .map(|(oid, size)| {
            let Ok(sha) = oid.parse::<Sha256>() else {
                return Ok(TransferPlan::InvalidOid);
            };
            if *size > MAX_OBJECT_SIZE {
                return Ok(TransferPlan::TooLarge);
            }
            let held = size_in(repos, store, repo, &sha)? == Some(*size);
            Ok(match (transfer, held) {
                (Transfer::Upload, true) => TransferPlan::Present(sha),
                (Transfer::Upload, false) => TransferPlan::Upload(sha),
                (Transfer::Download, true) => TransferPlan::Download(sha),
                (Transfer::Download, false) => TransferPlan::Missing(sha),
            })
        })
        .collect()
}

impl Hub {
    /// [`size_in`] on this hub's repositories and store.
    pub fn lfs_size(&self, repo: &RepoId, sha256: &Sha256) -> Result<Option<u64>, Error> {
        size_in(self.repos(), self.store(), repo, sha256)
    }

    /// [`belongs`] on this hub's repositories and store.
    pub fn owns_lfs(&self, repo: &RepoId, sha256: &Sha256) -> Result<bool, Error> {
        belongs(self.repos(), self.store(), repo, sha256)
    }

    /// [`record_upload`] on this hub's repositories.
    pub fn record_upload(&self, repo: &RepoId, sha256: &Sha256) -> Result<(), Error> {
        record_upload(self.repos(), repo, sha256)
    }

    /// [`release`] on this hub's repositories and store.
    pub fn release_lfs(&self, repo: &RepoId) -> Result<(), Error> {
        release(self.repos(), self.store(), repo)
    }

    /// [`plan_transfers`] on this hub's repositories and store.
    pub fn plan_transfers(
        &self,
        repo: &RepoId,
        transfer: Transfer,
        objects: &[(String, u64)],
    ) -> Result<Vec<TransferPlan>, Error> {
        plan_transfers(self.repos(), self.store(), repo, transfer, objects)
    }

    /// Plans downloads of `objects` from `repo` like [`plan_transfers`], but first fetches
    /// from the mesh, until `deadline`, the objects the repo does not hold here yet when its
    /// namespace is hosted by another node: a repo
    /// replicated (or fetched on demand) from a peer gets its LFS content in the background,
    /// and a client asking for it now should not be told it is missing. Each fetch is one
    /// `MeshPort::ensure_lfs` (verified against the signed refs' binding, so only content the
    /// repo's publisher signed arrives); the fetches run at once. What has not arrived by the
    /// deadline stays [`TransferPlan::Missing`].
    pub async fn plan_downloads(
        &self,
        repo: &RepoId,
        objects: Vec<(String, u64)>,
        deadline: tokio::time::Instant,
    ) -> Result<Vec<TransferPlan>, Error> {
        let plan = |objects: Vec<(String, u64)>| {
            let (hub, repo) = (self.clone(), repo.clone());
            crate::blocking(move || hub.plan_transfers(&repo, Transfer::Download, &objects))
        };
        let mut plans = plan(objects.clone()).await?;
        let missing: Vec<(usize, Sha256, u64)> = plans
            .iter()
            .zip(&objects)
            .enumerate()
            .filter_map(|(i, (p, (_, size)))| match p {
                TransferPlan::Missing(sha) => Some((i, *sha, *size)),
                _ => None,
            })
            .collect();
        // Only a repo whose namespace another node hosts gets content from peers: objects
        // of a namespace hosted here can only come from its own writers.
        if missing.is_empty()
            || self
                .mesh()
                .namespace_hosts(repo.namespace())
                .await
                .is_none()
        {
            return Ok(plans);
        }
        let mut fetches = tokio::task::JoinSet::new();
        for &(_, sha, size) in &missing {
            let (mesh, repo) = (self.mesh().clone(), repo.clone());
            fetches.spawn(async move {
                let result = mesh.ensure_lfs(&repo, sha, size, deadline).await;
                (sha, result)
            });
        }
        while let Some(done) = fetches.join_next().await {
            let (sha, result) = done?;
            if let Err(error) = result {
                tracing::debug!(repo = %repo, %sha, %error, "LFS object not fetched for a batch download");
            }
        }
        let again: Vec<(String, u64)> = missing
            .iter()
            .map(|&(i, _, _)| objects[i].clone())
            .collect();
        for ((i, _, _), p) in missing.iter().zip(plan(again).await?) {
            plans[*i] = p;
        }
        Ok(plans)
    }

    /// [`adopt`] on this hub's repositories and store.
    pub fn adopt_lfs(&self, repo: &RepoId, sha256: &Sha256) -> Result<(), Error> {
        adopt(self.repos(), self.store(), repo, sha256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_protocol::repo::RepoType;
    use hub_repo::Author;

    /// Repos `alice/a` and `alice/b` and a store, in a temporary directory (returned first,
    /// dropped last).
    fn two_repos() -> (tempfile::TempDir, Repos, Store, RepoId, RepoId) {
        let dir = tempfile::tempdir().unwrap();
        let repos = Repos::open(dir.path().join("repos")).unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let author = Author::new("alice", "alice@hubmesh.test");
        let (a, b) = (
            RepoId::parse(RepoType::Model, "alice/a").unwrap(),
            RepoId::parse(RepoType::Model, "alice/b").unwrap(),
        );
        repos.create(&a, &author).unwrap();
        repos.create(&b, &author).unwrap();
        (dir, repos, store, a, b)
    }

    #[test]
    fn deleted_repos_release_their_objects_to_gc_unless_another_repo_holds_them() {
        let (_dir, repos, store, a, b) = two_repos();
        let shared = store.import_reader(&b"shared weights"[..]).unwrap().sha256;
        let own = store.import_reader(&b"a's own weights"[..]).unwrap().sha256;
        adopt(&repos, &store, &a, &shared).unwrap();
        adopt(&repos, &store, &a, &own).unwrap();
        adopt(&repos, &store, &b, &shared).unwrap();
        assert_eq!(size_in(&repos, &store, &a, &own).unwrap(), Some(15));
        assert_eq!(size_in(&repos, &store, &b, &own).unwrap(), None);

        let gc = |repos: &Repos| {
            let referenced: Vec<Sha256> = repos
                .referenced_lfs_objects()
                .unwrap()
                .into_iter()
                .map(Sha256)
                .collect();
            store.gc(&referenced).unwrap()
        };
        release(&repos, &store, &a).unwrap();
        repos.delete(&a).unwrap();
        gc(&repos);
        assert!(!store.has(&own).unwrap(), "only a held it: reclaimed");
        assert!(store.has(&shared).unwrap(), "b still holds it");
        release(&repos, &store, &b).unwrap();
        repos.delete(&b).unwrap();
        gc(&repos);
        assert!(!store.has(&shared).unwrap());
    }

    #[test]
    fn transfers_are_planned_by_what_belongs_to_the_repo() {
        let (_dir, repos, store, a, b) = two_repos();
        let held = store.import_reader(&b"held by a"[..]).unwrap().sha256;
        adopt(&repos, &store, &a, &held).unwrap();
        let objects = [
            ("not-a-sha".to_owned(), 1),
            (held.to_string(), MAX_OBJECT_SIZE + 1),
            (held.to_string(), 9),
            (held.to_string(), 10),
        ];
        use TransferPlan as P;
        assert_eq!(
            plan_transfers(&repos, &store, &a, Transfer::Upload, &objects).unwrap(),
            [
                P::InvalidOid,
                P::TooLarge,
                P::Present(held),
                P::Upload(held)
            ]
        );
        assert_eq!(
            plan_transfers(&repos, &store, &a, Transfer::Download, &objects).unwrap(),
            [
                P::InvalidOid,
                P::TooLarge,
                P::Download(held),
                P::Missing(held)
            ]
        );
        // In the store for a, not for b: b neither has it nor learns that a does.
        assert_eq!(
            plan_transfers(&repos, &store, &b, Transfer::Download, &objects[2..3]).unwrap(),
            [P::Missing(held)]
        );
    }
}

#[cfg(test)]
mod plan_downloads_tests {
    use super::*;
    use crate::mesh::{BoxFuture, ClaimError, EnsureError, LfsFetchError, LfsStream, MeshPort};
    use crate::{HubParts, blocking};
    use hub_protocol::repo::RepoType;
    use hub_repo::Author;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::time::{Duration, Instant};

    /// A mesh whose peers have one object: `ensure_lfs` of it stores it and adopts it into
    /// the repo, as the real fetch does; anything else fails. `hosts` is what
    /// `namespace_hosts` answers.
    #[derive(Debug)]
    struct PeersHave {
        repos: Arc<Repos>,
        store: Store,
        content: Vec<u8>,
        hosts: Option<Vec<String>>,
        calls: AtomicUsize,
    }

    impl MeshPort for PeersHave {
        fn ensure_repo<'a>(
            &'a self,
            _repo: &'a RepoId,
            _deadline: Instant,
        ) -> BoxFuture<'a, Result<(), EnsureError>> {
            Box::pin(async { Err(EnsureError::Unknown) })
        }

        fn ensure_lfs<'a>(
            &'a self,
            repo: &'a RepoId,
            sha256: Sha256,
            _size: u64,
            _deadline: Instant,
        ) -> BoxFuture<'a, Result<(), LfsFetchError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let (repos, store, content, repo) = (
                self.repos.clone(),
                self.store.clone(),
                self.content.clone(),
                repo.clone(),
            );
            Box::pin(async move {
                blocking(move || {
                    let stored = store.import_reader(&content[..]).unwrap().sha256;
                    if stored != sha256 {
                        return Ok(Err(LfsFetchError::Failed("no peer has it".into())));
                    }
                    adopt(&repos, &store, &repo, &sha256).unwrap();
                    Ok::<_, Error>(Ok(()))
                })
                .await
                .unwrap()
            })
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

        fn namespace_hosts<'a>(
            &'a self,
            _namespace: &'a str,
        ) -> BoxFuture<'a, Option<Vec<String>>> {
            let hosts = self.hosts.clone();
            Box::pin(async move { hosts })
        }

        fn claim_namespace<'a>(
            &'a self,
            _namespace: &'a str,
        ) -> BoxFuture<'a, Result<(), ClaimError>> {
            Box::pin(async { Ok(()) })
        }

        fn repo_changed(&self, _repo: &RepoId) {}
    }

    async fn plan_with(hosts: Option<Vec<String>>) -> (Vec<TransferPlan>, usize, Sha256) {
        let dir = tempfile::tempdir().unwrap();
        let repos = Arc::new(Repos::open(dir.path().join("repos")).unwrap());
        let store = Store::open(dir.path().join("store")).unwrap();
        let id = RepoId::parse(RepoType::Model, "alice/a").unwrap();
        repos
            .create(&id, &Author::new("alice", "alice@hubmesh.test"))
            .unwrap();
        let content = b"weights a peer holds".to_vec();
        let sha = {
            // The hash only: a scratch store, so this node's store does not hold it.
            let scratch = Store::open(dir.path().join("scratch")).unwrap();
            scratch.import_reader(&content[..]).unwrap().sha256
        };
        let mesh = Arc::new(PeersHave {
            repos: repos.clone(),
            store: store.clone(),
            content: content.clone(),
            hosts,
            calls: AtomicUsize::new(0),
        });
        let hub = crate::Hub::new(HubParts {
            auth: Arc::new(hub_auth::AuthStore::open(dir.path().join("auth.redb")).unwrap()),
            repos,
            store,
            search: Arc::new(hub_search::SearchIndex::open(&dir.path().join("search")).unwrap()),
            mesh: mesh.clone(),
        });
        let unknown = "ab".repeat(32);
        let wanted = vec![(sha.to_string(), content.len() as u64), (unknown, 7)];
        let deadline = Instant::now() + Duration::from_secs(5);
        let plans = hub.plan_downloads(&id, wanted, deadline).await.unwrap();
        (plans, mesh.calls.load(Ordering::SeqCst), sha)
    }

    #[tokio::test]
    async fn downloads_of_a_repo_hosted_elsewhere_fetch_what_is_missing_from_the_mesh() {
        let (plans, calls, sha) = plan_with(Some(vec!["12D3KooWpeer".into()])).await;
        assert_eq!(calls, 2, "both missing objects were asked for");
        assert_eq!(plans[0], TransferPlan::Download(sha));
        assert!(matches!(plans[1], TransferPlan::Missing(_)), "{plans:?}");
    }

    #[tokio::test]
    async fn downloads_of_a_repo_hosted_here_never_ask_the_mesh() {
        let (plans, calls, sha) = plan_with(None).await;
        assert_eq!(calls, 0);
        assert_eq!(plans[0], TransferPlan::Missing(sha));
    }
}
