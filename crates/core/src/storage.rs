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

impl Hub {
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
        // Another user's namespace is not the caller's to list.
        assert!(matches!(
            hub.namespace_storage(&admin, Some("nobody")).await,
            Ok(v) if v.is_empty()
        ));
    }
}
