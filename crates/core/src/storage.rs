//! What a namespace's repositories take on disk (`/api/settings/repositories`, `hf repos ls`)
//! and a repository's LFS files (`GET /api/{type}s/{ns}/{name}/lfs-files`).
//!
//! A repo's storage is its git directory plus the content of the LFS objects that belong to it
//! ([`crate::lfs_objects`]); an object shared by several repos counts for each, as on the Hub.

use crate::{AccessError, Error, Granted, Hub, blocking};
use hub_auth::{NamespaceKind, Principal};
use hub_protocol::repo::{RepoId, RepoType};
use hub_repo::{EntryKind, Repos};
use hub_store::{Sha256, Store};
use std::collections::BTreeMap;

/// One repository of a namespace, with its storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoStorage {
    pub id: RepoId,
    pub private: bool,
    /// Seconds since the Unix epoch: the newest commit on `main`.
    pub updated_at: i64,
    /// Bytes: the git directory and the LFS objects that belong to the repo.
    pub storage: u64,
}

/// One LFS object of a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LfsFile {
    pub sha256: String,
    pub size: u64,
    /// A path some branch or tag holds it at (`""` when none does: uploaded, not committed,
    /// or no longer in the tips).
    pub filename: String,
    /// The ref of that path, when there is one.
    pub reference: Option<String>,
    /// Seconds since the Unix epoch: when the commit that put it at `filename` was made, else
    /// when the repo was created.
    pub pushed_at: i64,
}

/// Storage of each repository of `namespace` (blocking).
pub fn namespace_storage(
    repos: &Repos,
    store: &Store,
    namespace: &str,
) -> Result<Vec<RepoStorage>, Error> {
    let mut out = Vec::new();
    for kind in RepoType::ALL {
        for id in repos.list(kind)? {
            if id.namespace() != namespace {
                continue;
            }
            let meta = repos.meta(&id)?;
            let updated_at = repos
                .history(&id, "main", 1)
                .ok()
                .and_then(|h| h.first().map(|c| c.timestamp))
                .unwrap_or(meta.created_at);
            let mut storage = repos.git_size(&id)?;
            for sha in repos.lfs_objects(&id)? {
                if let Some(size) = crate::lfs_objects::size_in(repos, store, &id, &Sha256(sha))? {
                    storage += size;
                }
            }
            out.push(RepoStorage {
                id,
                private: meta.private,
                updated_at,
                storage,
            });
        }
    }
    Ok(out)
}

/// The LFS objects that belong to `id`, each with a path a branch or tag holds it at (blocking).
pub fn lfs_files(repos: &Repos, store: &Store, id: &RepoId) -> Result<Vec<LfsFile>, Error> {
    let created_at = repos.meta(id)?.created_at;
    let (branches, tags) = repos.refs(id)?;
    // sha256 → (path, ref, commit): the first ref (branches by name, then tags) holding it.
    let mut seen: BTreeMap<String, (String, String, String)> = BTreeMap::new();
    for r in branches.iter().chain(&tags) {
        for entry in repos.list_tree(id, &r.target, "", true)? {
            if entry.kind != EntryKind::File {
                continue;
            }
            if let Some(pointer) = entry.lfs {
                seen.entry(pointer.sha256).or_insert((
                    entry.path,
                    r.full_ref.clone(),
                    r.target.clone(),
                ));
            }
        }
    }
    // When each path got its object: one history walk per ref, for the paths found there.
    let mut by_ref: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (path, reference, commit) in seen.values() {
        by_ref
            .entry((reference.clone(), commit.clone()))
            .or_default()
            .push(path.clone());
    }
    let mut when: BTreeMap<(String, String), i64> = BTreeMap::new();
    for ((reference, commit), paths) in by_ref {
        for (path, info) in repos.last_commits(id, &commit, &paths)? {
            when.insert((reference.clone(), path), info.timestamp);
        }
    }
    let mut out = Vec::new();
    for sha in repos.lfs_objects(id)? {
        let sha = Sha256(sha);
        let Some(size) = crate::lfs_objects::size_in(repos, store, id, &sha)? else {
            continue;
        };
        let hex = sha.to_string();
        let file = match seen.get(&hex) {
            Some((path, reference, _)) => LfsFile {
                pushed_at: when
                    .get(&(reference.clone(), path.clone()))
                    .copied()
                    .unwrap_or(created_at),
                sha256: hex,
                size,
                filename: path.clone(),
                reference: Some(reference.clone()),
            },
            None => LfsFile {
                sha256: hex,
                size,
                filename: String::new(),
                reference: None,
                pushed_at: created_at,
            },
        };
        out.push(file);
    }
    Ok(out)
}

/// Why deleting LFS files was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LfsDeleteError {
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error("invalid LFS oid {oid:?}")]
    InvalidOid { oid: String },
    /// A branch, tag or pull request holds it at its tip: deleting its content would break
    /// the current files (history is not rewritten).
    #[error("LFS file {sha256} is still {path:?} at {reference}; delete or replace it there first")]
    InUse {
        sha256: String,
        path: String,
        reference: String,
    },
    #[error(transparent)]
    Storage(#[from] Error),
}

impl From<tokio::task::JoinError> for LfsDeleteError {
    fn from(e: tokio::task::JoinError) -> Self {
        LfsDeleteError::Storage(e.into())
    }
}

/// Permanently deletes the LFS objects `oids` of `id` (blocking): each leaves the repo's LFS
/// set and the store's GC roots, so the next `hubmesh store gc` reclaims it unless another
/// repo holds it. Objects a branch, tag or pull request holds at its tip are refused (all or
/// nothing); commits further back keep their pointers, and downloading them through those
/// commits fails afterwards, as on the Hub without a history rewrite.
pub fn delete_lfs_files(
    repos: &Repos,
    store: &Store,
    id: &RepoId,
    oids: &[String],
) -> Result<usize, LfsDeleteError> {
    let mut shas = Vec::with_capacity(oids.len());
    for oid in oids {
        let sha = oid
            .parse::<Sha256>()
            .map_err(|_| LfsDeleteError::InvalidOid { oid: oid.clone() })?;
        shas.push(sha);
    }
    let mut tips: Vec<(String, String)> = Vec::new();
    let (branches, tags) = repos.refs(id).map_err(Error::from)?;
    for r in branches.iter().chain(&tags) {
        tips.push((r.full_ref.clone(), r.target.clone()));
    }
    tips.extend(repos.refs_under(id, "refs/pr/").map_err(Error::from)?);
    for (reference, target) in &tips {
        for entry in repos.list_tree(id, target, "", true).map_err(Error::from)? {
            if let Some(pointer) = &entry.lfs
                && shas.iter().any(|s| s.to_string() == pointer.sha256)
            {
                return Err(LfsDeleteError::InUse {
                    sha256: pointer.sha256.clone(),
                    path: entry.path,
                    reference: reference.clone(),
                });
            }
        }
    }
    let mut deleted = 0;
    let raw: Vec<[u8; 32]> = shas.iter().map(|s| s.0).collect();
    for sha in &shas {
        if repos.has_lfs_object(id, &sha.0).map_err(Error::from)? {
            deleted += 1;
            store.remove_root(sha).map_err(Error::from)?;
        }
    }
    repos.remove_lfs_objects(id, &raw).map_err(Error::from)?;
    Ok(deleted)
}

impl Hub {
    /// [`delete_lfs_files`] for a caller granted [`crate::Need::RewriteHistory`] (it destroys
    /// content old commits point to); runs the after-write hook.
    pub async fn delete_lfs_files(
        &self,
        granted: &Granted,
        oids: Vec<String>,
    ) -> Result<usize, LfsDeleteError> {
        if granted.need < crate::Need::RewriteHistory {
            return Err(AccessError::Forbidden {
                repo: granted.id.clone(),
                need: crate::Need::RewriteHistory,
            }
            .into());
        }
        let (repos, store, id) = (
            self.repos().clone(),
            self.store().clone(),
            granted.id.clone(),
        );
        let deleted = blocking(move || delete_lfs_files(&repos, &store, &id, &oids)).await?;
        self.after_write(&granted.id).await;
        Ok(deleted)
    }

    /// The repositories of `namespace` (the caller's own when `None`) with their storage: the
    /// caller's own namespace, or an organisation they are a member of.
    pub async fn namespace_storage(
        &self,
        principal: &Principal,
        namespace: Option<&str>,
    ) -> Result<Vec<RepoStorage>, AccessError> {
        let namespace = namespace.unwrap_or(&principal.user.name).to_owned();
        let (auth, user) = (self.auth().clone(), principal.user.name.clone());
        let ns = namespace.clone();
        let site_admin = principal.user.site_admin;
        let allowed = blocking(move || {
            if ns == user || site_admin {
                return Ok::<_, AccessError>(true);
            }
            Ok(
                auth.namespace_kind(&ns).map_err(Error::from)? == Some(NamespaceKind::Org)
                    && auth
                        .orgs_of(&user)
                        .map_err(Error::from)?
                        .iter()
                        .any(|(org, _)| *org == ns),
            )
        })
        .await?;
        if !allowed {
            return Err(AccessError::NotFound);
        }
        let (repos, store) = (self.repos().clone(), self.store().clone());
        Ok(blocking(move || namespace_storage(&repos, &store, &namespace)).await?)
    }

    /// [`lfs_files`] of a repo the caller was granted.
    pub async fn lfs_files(&self, granted: &Granted) -> Result<Vec<LfsFile>, Error> {
        let (repos, store, id) = (
            self.repos().clone(),
            self.store().clone(),
            granted.id.clone(),
        );
        blocking(move || lfs_files(&repos, &store, &id)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Pending;
    use crate::testing::hub;
    use hub_repo::CommitRequest;

    #[tokio::test]
    async fn storage_and_lfs_files_of_a_repo() {
        let (_dir, hub, admin) = hub();
        let id = RepoId::parse(RepoType::Model, "admin/st").unwrap();
        let grant = hub.access_create(&admin, &id).await.unwrap();
        hub.create_repo(grant, true).await.unwrap();
        let before = hub.namespace_storage(&admin, None).await.unwrap();
        assert_eq!(before.len(), 1);
        assert!(before[0].private);
        let request = CommitRequest {
            branch: "main".into(),
            message: "weights".into(),
            author: crate::author_of(&admin),
            parent: None,
            operations: Vec::new(),
        };
        let weights = vec![1u8; 100_000];
        let pending = vec![Pending::Inline {
            path: "sub/w.bin".into(),
            bytes: weights.clone(),
        }];
        let info = hub.commit(&id, request, pending).await.unwrap();
        let after = hub.namespace_storage(&admin, None).await.unwrap();
        assert!(after[0].storage >= before[0].storage + weights.len() as u64);
        let granted = hub
            .access(Some(&admin), &id, crate::Need::Read)
            .await
            .unwrap();
        let files = hub.lfs_files(&granted).await.unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].filename, "sub/w.bin");
        assert_eq!(files[0].size, weights.len() as u64);
        assert_eq!(files[0].reference.as_deref(), Some("refs/heads/main"));
        assert_eq!(files[0].pushed_at, info.timestamp);
        // Deleting: refused while main holds it; allowed once only history does.
        let admin_grant = hub
            .access(Some(&admin), &id, crate::Need::Admin)
            .await
            .unwrap();
        let old = files[0].sha256.clone();
        assert!(matches!(
            hub.delete_lfs_files(&granted, vec![old.clone()]).await,
            Err(LfsDeleteError::Access(_))
        ));
        assert!(matches!(
            hub.delete_lfs_files(&admin_grant, vec![old.clone()]).await,
            Err(LfsDeleteError::InUse { path, .. }) if path == "sub/w.bin"
        ));
        assert!(matches!(
            hub.delete_lfs_files(&admin_grant, vec!["zz".into()]).await,
            Err(LfsDeleteError::InvalidOid { .. })
        ));
        let replace = CommitRequest {
            branch: "main".into(),
            message: "new weights".into(),
            author: crate::author_of(&admin),
            parent: None,
            operations: Vec::new(),
        };
        let pending = vec![Pending::Inline {
            path: "sub/w.bin".into(),
            bytes: vec![2u8; 1000],
        }];
        hub.commit(&id, replace, pending).await.unwrap();
        assert_eq!(
            hub.delete_lfs_files(&admin_grant, vec![old.clone()])
                .await
                .unwrap(),
            1
        );
        let left = hub.lfs_files(&granted).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_ne!(left[0].sha256, old);
        // Another user's namespace is not the caller's to list.
        assert!(matches!(
            hub.namespace_storage(&admin, Some("nobody")).await,
            Ok(v) if v.is_empty()
        ));
    }
}
