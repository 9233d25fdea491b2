//! Commit planning: the files a commit adds become git blobs or LFS pointers.
//!
//! A surface parses its own request format (the Hub's NDJSON commit body today) into
//! [`Pending`] operations; [`plan`] turns them into `hub-repo` operations by the branch's
//! `.gitattributes` LFS rules, importing and adopting LFS content as it goes
//! (see [`crate::lfs_objects`]), and [`Hub::commit`] applies them all or nothing.

use crate::{Error, Hub, blocking, lfs_objects};
use hub_protocol::repo::{PathError, RepoId, validate_repo_path};
use hub_repo::{
    CommitInfo, CommitRequest, FileContent, LfsPointer, LfsRules, Operation, RepoError, Repos,
};
use hub_store::{FileInfo, Sha256, Store};
use std::io::Read;

/// The Hub's text for a commit whose `parentCommit` is no longer the branch's head (412).
pub const PARENT_MOVED: &str = "A commit has happened since. Please refresh and try again.";

/// How many leading bytes of a file the LFS rules look at (git's binary sniffing: 8000).
const SNIFF: u64 = 8000;

/// An operation before its content is placed.
#[derive(Debug)]
pub enum Pending {
    /// A file sent inline (small).
    Inline { path: String, bytes: Vec<u8> },
    /// A large inline file already streamed into the store.
    Stored { path: String, info: FileInfo },
    /// An LFS object uploaded before (`lfsFile`); `size` when the caller stated one.
    Lfs {
        path: String,
        sha256: Sha256,
        size: Option<u64>,
    },
    /// Deletes, copies: nothing to place.
    Other(Operation),
}

/// Why a commit was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError {
    #[error("invalid path {path:?}: {source}")]
    InvalidPath {
        path: String,
        #[source]
        source: PathError,
    },
    #[error("LFS object {sha256} for {path:?} has not been uploaded to this repository")]
    NotUploaded { path: String, sha256: Sha256 },
    #[error("LFS object {sha256} for {path:?} is {stored} bytes, not {declared}")]
    SizeMismatch {
        path: String,
        sha256: Sha256,
        stored: u64,
        declared: u64,
    },
    /// Applying the operations failed (a conflict, a missing file, storage).
    #[error(transparent)]
    Repo(#[from] hub_repo::RepoError),
    #[error(transparent)]
    Storage(#[from] Error),
}

impl From<hub_store::StoreError> for CommitError {
    fn from(e: hub_store::StoreError) -> Self {
        CommitError::Storage(e.into())
    }
}

impl From<std::io::Error> for CommitError {
    fn from(e: std::io::Error) -> Self {
        CommitError::Storage(e.into())
    }
}

impl From<tokio::task::JoinError> for CommitError {
    fn from(e: tokio::task::JoinError) -> Self {
        CommitError::Storage(e.into())
    }
}

fn checked(path: &str) -> Result<(), CommitError> {
    validate_repo_path(path).map_err(|source| CommitError::InvalidPath {
        path: path.to_owned(),
        source,
    })
}

fn lfs_add(path: String, sha256: &Sha256, size: u64) -> Operation {
    // A `Sha256` always formats as 64 hex digits, which is all `LfsPointer::new` checks.
    let pointer =
        LfsPointer::new(&sha256.to_string(), size).expect("a Sha256 formats as a valid LFS oid");
    Operation::Add {
        path,
        content: FileContent::Lfs(pointer),
    }
}

/// The LFS rules of revision `rev` of `id`: its `.gitattributes`, or the defaults when it has
/// none (blocking).
pub fn lfs_rules(repos: &Repos, id: &RepoId, rev: &str) -> Result<LfsRules, RepoError> {
    match repos.file(id, rev, ".gitattributes") {
        Ok((_, bytes)) => Ok(LfsRules::parse(&String::from_utf8_lossy(&bytes))),
        Err(RepoError::EntryNotFound { .. }) => Ok(LfsRules::default()),
        Err(e) => Err(e),
    }
}

/// A commit message from the Hub's `summary` and `description`: a blank summary is `Update`;
/// a description that is not blank follows it after an empty line.
pub fn message(summary: Option<String>, description: Option<String>) -> String {
    let summary = summary
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "Update".to_owned());
    match description.filter(|d| !d.trim().is_empty()) {
        Some(d) => format!("{summary}\n\n{d}"),
        None => summary,
    }
}

/// Places every pending operation of a commit to `branch` of `id` (blocking): inline files
/// the LFS rules select are imported into the store and adopted; stored files the rules do
/// not select (small text after all) are read back into git; `lfsFile` objects must belong to
/// the repo already and match a stated size.
pub fn plan(
    repos: &Repos,
    store: &Store,
    id: &RepoId,
    branch: &str,
    pending: Vec<Pending>,
) -> Result<Vec<Operation>, CommitError> {
    let rules = lfs_rules(repos, id, branch)?;
    let mut operations = Vec::with_capacity(pending.len());
    for item in pending {
        operations.push(match item {
            Pending::Inline { path, bytes } => {
                checked(&path)?;
                if rules.wants_lfs(&path, bytes.len() as u64, &bytes) {
                    let info = store.import_reader(bytes.as_slice())?;
                    lfs_objects::adopt(repos, store, id, &info.sha256)?;
                    lfs_add(path, &info.sha256, info.size)
                } else {
                    Operation::Add {
                        path,
                        content: FileContent::Regular(bytes),
                    }
                }
            }
            Pending::Stored { path, info } => {
                checked(&path)?;
                let mut reader = store.open_file(&info.sha256)?;
                let mut head = Vec::with_capacity(SNIFF as usize);
                (&mut reader).take(SNIFF).read_to_end(&mut head)?;
                if rules.wants_lfs(&path, info.size, &head) {
                    lfs_objects::adopt(repos, store, id, &info.sha256)?;
                    lfs_add(path, &info.sha256, info.size)
                } else {
                    // Under the LFS size threshold and text: it belongs in git after all.
                    let mut bytes = head;
                    reader.read_to_end(&mut bytes)?;
                    Operation::Add {
                        path,
                        content: FileContent::Regular(bytes),
                    }
                }
            }
            Pending::Lfs { path, sha256, size } => {
                checked(&path)?;
                let Some(stored) = lfs_objects::size_in(repos, store, id, &sha256)? else {
                    return Err(CommitError::NotUploaded { path, sha256 });
                };
                if let Some(declared) = size.filter(|&s| s != stored) {
                    return Err(CommitError::SizeMismatch {
                        path,
                        sha256,
                        stored,
                        declared,
                    });
                }
                lfs_objects::adopt(repos, store, id, &sha256)?;
                lfs_add(path, &sha256, stored)
            }
            Pending::Other(op) => op,
        });
    }
    Ok(operations)
}

impl Hub {
    /// The LFS rules of revision `rev` of `id` ([`lfs_rules`] at the commit it resolves to):
    /// what a client should upload as LFS, as a commit would decide it.
    pub async fn lfs_rules(&self, id: &RepoId, rev: &str) -> Result<LfsRules, CommitError> {
        let (repos, id, rev) = (self.repos().clone(), id.clone(), rev.to_owned());
        blocking(move || {
            let commit = repos.resolve(&id, &rev)?;
            Ok::<_, CommitError>(lfs_rules(&repos, &id, &commit)?)
        })
        .await
    }

    /// Plans and applies a commit (all or nothing: the branch moves by compare-and-swap under
    /// the repo lock), then runs the after-write hook. `request.operations` is ignored: the
    /// operations come from `pending`.
    pub async fn commit(
        &self,
        id: &RepoId,
        mut request: CommitRequest,
        pending: Vec<Pending>,
    ) -> Result<CommitInfo, CommitError> {
        let (repos, store, repo) = (self.repos().clone(), self.store().clone(), id.clone());
        let info = blocking(move || {
            request.operations = plan(&repos, &store, &repo, &request.branch, pending)?;
            Ok::<_, CommitError>(repos.commit(&repo, request)?)
        })
        .await?;
        self.after_write(id).await;
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_default_to_update_and_append_descriptions() {
        assert_eq!(message(None, None), "Update");
        assert_eq!(message(Some("  ".into()), Some(" ".into())), "Update");
        assert_eq!(message(Some("Add weights".into()), None), "Add weights");
        assert_eq!(
            message(Some("Add weights".into()), Some("fp16".into())),
            "Add weights\n\nfp16"
        );
        assert_eq!(message(None, Some("why".into())), "Update\n\nwhy");
    }
}
