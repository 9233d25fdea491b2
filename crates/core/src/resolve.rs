//! Resolving a download: which commit a revision names, which tree entry a path is at that
//! commit, and — for an LFS pointer — which object it maps to and whether this repo holds it
//! here (a repo serves only its own objects: a pointer alone proves nothing, issue 14); the
//! entries of a folder at a revision. A path that is not there names the commit it was looked
//! up in, so clients can cache the absence. Also the Hub's rule for what counts as a download.
//!
//! Must not depend on any surface: the HTTP `resolve` endpoint renders a [`ResolvedFile`]
//! (ranges, headers, streaming), and so will the git remote helper and mirroring.

use crate::{Error, Hub, blocking};
use hub_protocol::repo::{RepoId, RepoType};
use hub_repo::{RepoError, TreeEntry};
use hub_store::Sha256;

/// A file at a revision, ready to serve.
#[derive(Debug)]
pub struct ResolvedFile {
    /// The commit the revision resolved to.
    pub commit: String,
    pub entry: TreeEntry,
    /// A small git blob's bytes; `None` for a large one (stream it) or an LFS pointer.
    pub blob: Option<Vec<u8>>,
    /// An LFS object the repo references but this node does not hold for it yet (a replica
    /// still fetching it): serve it from the mesh or wait.
    pub missing: Option<MissingLfs>,
}

/// An LFS object not here yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MissingLfs {
    pub sha256: Sha256,
    pub size: u64,
}

/// Why a file could not be resolved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// No repo, no such revision, or storage.
    #[error(transparent)]
    Repo(RepoError),
    /// The revision exists but has no file at `path`; `commit` lets clients cache that.
    #[error("{path} is not in the tree of {commit}")]
    NotInTree { path: String, commit: String },
    /// The tree holds an LFS pointer whose oid is not a SHA-256.
    #[error("malformed LFS pointer at {path}")]
    MalformedPointer { path: String },
    #[error(transparent)]
    Storage(#[from] Error),
}

impl From<RepoError> for ResolveError {
    fn from(e: RepoError) -> Self {
        ResolveError::Repo(e)
    }
}

impl From<tokio::task::JoinError> for ResolveError {
    fn from(e: tokio::task::JoinError) -> Self {
        ResolveError::Storage(e.into())
    }
}

/// Whether a request for `path` counts as a download of the repo. As on the Hub: every
/// request (HEAD or GET) for a "query file" counts — by default the top-level `config.json`,
/// `config.yaml`, `hyperparams.yaml` and `meta.yaml` — so a model downloaded as many files
/// counts once per fetch of its config, not once per shard. GGUF files count too (the Hub's
/// rule for the gguf library, whose repos have no config.json).
pub fn counts_as_download(kind: RepoType, path: &str) -> bool {
    kind == RepoType::Model
        && (matches!(
            path,
            "config.json" | "config.yaml" | "hyperparams.yaml" | "meta.yaml"
        ) || path.ends_with(".gguf"))
}

impl Hub {
    /// The file at `path` of revision `rev` of `id` (the caller checked read access). A large
    /// git blob is not read here (see [`hub_repo::Repos::file_head`]).
    pub async fn resolve_file(
        &self,
        id: &RepoId,
        rev: &str,
        path: &str,
    ) -> Result<ResolvedFile, ResolveError> {
        let (hub, id, rev, path) = (self.clone(), id.clone(), rev.to_owned(), path.to_owned());
        blocking(move || {
            let commit = hub.repos().resolve(&id, &rev)?;
            let (entry, blob) = match hub.repos().file_head(&id, &commit, &path) {
                Ok(found) => found,
                Err(RepoError::EntryNotFound { path }) => {
                    return Err(ResolveError::NotInTree { path, commit });
                }
                Err(e) => return Err(e.into()),
            };
            let mut missing = None;
            if let Some(lfs) = &entry.lfs {
                let sha256: Sha256 =
                    lfs.sha256
                        .parse()
                        .map_err(|_| ResolveError::MalformedPointer {
                            path: entry.path.clone(),
                        })?;
                // Stored for another repo is not here: a repo serves only its own objects.
                if !hub.owns_lfs(&id, &sha256)? {
                    missing = Some(MissingLfs {
                        sha256,
                        size: lfs.size,
                    });
                }
            }
            Ok(ResolvedFile {
                commit,
                entry,
                blob,
                missing,
            })
        })
        .await
    }

    /// The entries under `path` (`""`: the root) of revision `rev` of `id`, recursively or
    /// not; a path that is not in the tree is [`ResolveError::NotInTree`] with the commit.
    pub async fn tree_at(
        &self,
        id: &RepoId,
        rev: &str,
        path: &str,
        recursive: bool,
    ) -> Result<Vec<TreeEntry>, ResolveError> {
        let (repos, id, rev, path) = (
            self.repos().clone(),
            id.clone(),
            rev.to_owned(),
            path.to_owned(),
        );
        blocking(move || {
            let commit = repos.resolve(&id, &rev)?;
            match repos.list_tree(&id, &commit, &path, recursive) {
                Ok(entries) => Ok(entries),
                Err(RepoError::EntryNotFound { path }) => {
                    Err(ResolveError::NotInTree { path, commit })
                }
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    /// Counts a request for `path` of `id` as a download when it is one
    /// ([`counts_as_download`]), and updates the listing's count in the background.
    pub fn count_download(&self, id: &RepoId, path: &str) {
        if !counts_as_download(id.kind(), path) {
            return;
        }
        self.repos().count_download(id);
        let (repos, search, id) = (self.repos().clone(), self.search().clone(), id.clone());
        tokio::task::spawn_blocking(move || {
            if let Err(error) = repos
                .downloads(&id)
                .map_err(|e| e.to_string())
                .and_then(|n| search.set_downloads(&id, n).map_err(|e| e.to_string()))
            {
                tracing::warn!(repo = %id, %error, "download count not indexed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::hub;
    use hub_repo::{Author, CommitRequest, FileContent, LfsPointer, Operation};

    #[test]
    fn query_files_and_gguf_count_as_downloads_of_models() {
        assert!(counts_as_download(RepoType::Model, "config.json"));
        assert!(counts_as_download(RepoType::Model, "meta.yaml"));
        assert!(counts_as_download(RepoType::Model, "q4/model.Q4_K_M.gguf"));
        assert!(!counts_as_download(RepoType::Model, "sub/config.json"));
        assert!(!counts_as_download(RepoType::Model, "model.safetensors"));
        assert!(!counts_as_download(RepoType::Dataset, "config.json"));
    }

    #[tokio::test]
    async fn resolves_commits_entries_and_objects_not_held_for_the_repo() {
        let (_dir, hub, _admin) = hub();
        let author = Author::new("admin", "admin@hubmesh.test");
        let id = RepoId::parse(RepoType::Model, "admin/m").unwrap();
        hub.repos().create(&id, &author).unwrap();
        // In the store, but uploaded for no repo: this repo does not hold it.
        let stored = hub.store().import_reader(&b"weights"[..]).unwrap();
        let pointer = LfsPointer::new(&stored.sha256.to_string(), stored.size).unwrap();
        let commit = hub
            .repos()
            .commit(
                &id,
                CommitRequest {
                    branch: "main".into(),
                    message: "w".into(),
                    author,
                    parent: None,
                    operations: vec![
                        Operation::Add {
                            path: "w.bin".into(),
                            content: FileContent::Lfs(pointer),
                        },
                        Operation::Add {
                            path: "a.txt".into(),
                            content: FileContent::Regular(b"hi".to_vec()),
                        },
                    ],
                },
            )
            .unwrap();
        let text = hub.resolve_file(&id, "main", "a.txt").await.unwrap();
        assert_eq!(text.commit, commit.id);
        assert_eq!(text.blob.as_deref(), Some(&b"hi"[..]));
        assert_eq!(text.missing, None);

        let lfs = hub.resolve_file(&id, "main", "w.bin").await.unwrap();
        let missing = Some(MissingLfs {
            sha256: stored.sha256,
            size: stored.size,
        });
        assert_eq!(lfs.missing, missing);
        hub.adopt_lfs(&id, &stored.sha256).unwrap();
        let lfs = hub.resolve_file(&id, "main", "w.bin").await.unwrap();
        assert_eq!(lfs.missing, None);

        assert!(matches!(
            hub.resolve_file(&id, "main", "nope.txt").await,
            Err(ResolveError::NotInTree { path, commit: c }) if path == "nope.txt" && c == commit.id
        ));
        let root = hub.tree_at(&id, "main", "", false).await.unwrap();
        let paths: Vec<&str> = root.iter().map(|e| e.path.as_str()).collect();
        assert!(
            paths.contains(&"a.txt") && paths.contains(&"w.bin"),
            "{paths:?}"
        );
        assert!(matches!(
            hub.tree_at(&id, "main", "nope", true).await,
            Err(ResolveError::NotInTree { path, commit: c }) if path == "nope" && c == commit.id
        ));
        assert!(matches!(
            hub.resolve_file(&id, "no-such-branch", "a.txt").await,
            Err(ResolveError::Repo(RepoError::RevisionNotFound { .. }))
        ));
    }
}
