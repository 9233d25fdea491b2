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

    /// [`adopt`] on this hub's repositories and store.
    pub fn adopt_lfs(&self, repo: &RepoId, sha256: &Sha256) -> Result<(), Error> {
        adopt(self.repos(), self.store(), repo, sha256)
    }
}
