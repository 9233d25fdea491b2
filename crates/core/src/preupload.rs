//! Preupload: for each file a client is about to commit, how to send it (`regular` inline or
//! `lfs` through the LFS batch API), whether the repo's `.gitignore` excludes it
//! (`shouldIgnore`), and the `oid` of what the revision already holds at that path, so the
//! client skips files that did not change (it compares the oid with its own: the git blob id
//! of the content for `regular`, the SHA-256 for `lfs`).
//!
//! The `.gitignore` is the one the client sends (when its commit adds one), else the
//! revision's. A file stored in LFS that a client would send `regular` gets its git blob id
//! computed from the store when its size matches and it is at most [`REHASH_MAX`] bytes;
//! larger ones get no oid (the client uploads them again, and the commit changes nothing).

use crate::{CommitError, Hub, blocking};
use hub_protocol::repo::RepoId;
use hub_repo::{IgnoreRules, Repos, TreeEntry};
use hub_store::{Sha256, Store};
use std::collections::HashMap;
use std::io::Read;

/// Largest LFS file whose git blob id preupload computes for a `regular` answer.
pub const REHASH_MAX: u64 = 10 * 1024 * 1024;

/// One file a client announces.
#[derive(Debug, Clone)]
pub struct Announced {
    pub path: String,
    pub size: u64,
    /// Its first bytes (up to 512), for the binary test of the LFS rules.
    pub sample: Vec<u8>,
}

/// How a client should upload one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadPlan {
    pub path: String,
    /// Send through the LFS batch API (`lfs`) rather than inline (`regular`).
    pub lfs: bool,
    pub should_ignore: bool,
    /// The revision's version of the file, in the form the client compares.
    pub oid: Option<String>,
}

/// Plans the upload of `files` to revision `rev` of `id` (blocking). `lfs_batch`: whether the
/// client uploads `lfs` files through the LFS batch API (else everything is `regular`).
pub fn plan_upload(
    repos: &Repos,
    store: &Store,
    id: &RepoId,
    rev: &str,
    files: &[Announced],
    gitignore: Option<&str>,
    lfs_batch: bool,
) -> Result<Vec<UploadPlan>, CommitError> {
    let commit = repos.resolve(id, rev)?;
    let rules = crate::commit::lfs_rules(repos, id, &commit)?;
    let ignore = match gitignore {
        Some(text) => IgnoreRules::parse(text),
        None => match repos.file(id, &commit, ".gitignore") {
            Ok((entry, bytes)) if entry.lfs.is_none() => {
                IgnoreRules::parse(&String::from_utf8_lossy(&bytes))
            }
            Ok(_) | Err(hub_repo::RepoError::EntryNotFound { .. }) => IgnoreRules::default(),
            Err(e) => return Err(e.into()),
        },
    };
    let paths: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
    let existing: HashMap<String, TreeEntry> = repos
        .entries_at(id, &commit, &paths)?
        .into_iter()
        .filter(|e| e.kind == hub_repo::EntryKind::File)
        .map(|e| (e.path.clone(), e))
        .collect();
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let lfs = lfs_batch && f.size > 0 && rules.wants_lfs(&f.path, f.size, &f.sample);
        let oid = match existing.get(&f.path) {
            Some(entry) => remote_oid(repos, store, id, entry, f.size, lfs)?,
            None => None,
        };
        out.push(UploadPlan {
            path: f.path.clone(),
            lfs,
            // `.gitignore` itself is never ignored: it is what says what to ignore.
            should_ignore: f.path != ".gitignore" && ignore.is_ignored(&f.path),
            oid,
        });
    }
    Ok(out)
}

/// The oid a client compares with its own for `entry`, when it can be had cheaply.
fn remote_oid(
    repos: &Repos,
    store: &Store,
    id: &RepoId,
    entry: &TreeEntry,
    size: u64,
    lfs: bool,
) -> Result<Option<String>, CommitError> {
    Ok(match (&entry.lfs, lfs) {
        (Some(pointer), true) => Some(pointer.sha256.clone()),
        // The client hashes regular files as git blobs: a git blob here is its own id.
        (None, false) => Some(entry.oid.clone()),
        (Some(pointer), false) if pointer.size == size && size <= REHASH_MAX => {
            let Ok(sha) = pointer.sha256.parse::<Sha256>() else {
                return Ok(None);
            };
            if !crate::lfs_objects::belongs(repos, store, id, &sha)? {
                return Ok(None);
            }
            let mut bytes = Vec::with_capacity(size as usize);
            store.open_file(&sha)?.read_to_end(&mut bytes)?;
            Some(hub_repo::git_blob_id(&bytes)?)
        }
        // A git blob the client would send as LFS: it hashes SHA-256, we hold git ids.
        _ => None,
    })
}

impl Hub {
    /// [`plan_upload`] on a blocking thread.
    pub async fn plan_upload(
        &self,
        id: &RepoId,
        rev: &str,
        files: Vec<Announced>,
        gitignore: Option<String>,
        lfs_batch: bool,
    ) -> Result<Vec<UploadPlan>, CommitError> {
        let (repos, store, id, rev) = (
            self.repos().clone(),
            self.store().clone(),
            id.clone(),
            rev.to_owned(),
        );
        blocking(move || {
            plan_upload(
                &repos,
                &store,
                &id,
                &rev,
                &files,
                gitignore.as_deref(),
                lfs_batch,
            )
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Pending;
    use crate::testing::hub;
    use hub_protocol::repo::RepoType;
    use hub_repo::CommitRequest;

    fn announced(path: &str, bytes: &[u8]) -> Announced {
        Announced {
            path: path.into(),
            size: bytes.len() as u64,
            sample: bytes[..bytes.len().min(512)].to_vec(),
        }
    }

    #[tokio::test]
    async fn unchanged_files_get_their_oid_and_gitignore_is_honoured() {
        let (_dir, hub, admin) = hub();
        let id = RepoId::parse(RepoType::Model, "admin/pre").unwrap();
        let grant = hub.access_create(&admin, &id).await.unwrap();
        hub.create_repo(grant, false).await.unwrap();
        let weights = vec![7u8; 4096];
        let request = CommitRequest {
            branch: "main".into(),
            message: "add".into(),
            author: crate::author_of(&admin),
            parent: None,
            operations: Vec::new(),
        };
        let pending = vec![
            Pending::Inline {
                path: "a.txt".into(),
                bytes: b"hello\n".to_vec(),
            },
            Pending::Inline {
                path: "w.bin".into(),
                bytes: weights.clone(),
            },
            Pending::Inline {
                path: ".gitignore".into(),
                bytes: b"*.log\n".to_vec(),
            },
        ];
        hub.commit(&id, request, pending).await.unwrap();
        let files = vec![
            announced("a.txt", b"hello\n"),
            announced("w.bin", &weights),
            announced("new.txt", b"x"),
            announced("run.log", b"log"),
        ];
        // A client sending everything inline: git blob ids, the LFS file's computed.
        let plans = hub
            .plan_upload(&id, "main", files.clone(), None, false)
            .await
            .unwrap();
        let by: HashMap<_, _> = plans.iter().map(|p| (p.path.as_str(), p)).collect();
        assert_eq!(
            by["a.txt"].oid.as_deref(),
            Some(hub_repo::git_blob_id(b"hello\n").unwrap().as_str())
        );
        assert_eq!(
            by["w.bin"].oid.as_deref(),
            Some(hub_repo::git_blob_id(&weights).unwrap().as_str())
        );
        assert!(!by["w.bin"].lfs);
        assert_eq!(by["new.txt"].oid, None);
        assert!(by["run.log"].should_ignore && !by["a.txt"].should_ignore);
        // A client using the LFS batch API: the LFS file's SHA-256.
        let plans = hub
            .plan_upload(&id, "main", files.clone(), Some("*.txt\n".into()), true)
            .await
            .unwrap();
        let by: HashMap<_, _> = plans.iter().map(|p| (p.path.as_str(), p)).collect();
        assert!(by["w.bin"].lfs);
        let (entry, _) = hub.repos().file(&id, "main", "w.bin").unwrap();
        let sha = entry.lfs.expect("w.bin is in LFS").sha256;
        assert_eq!(by["w.bin"].oid.as_deref(), Some(sha.as_str()));
        // The client's .gitignore replaces the repo's.
        assert!(by["a.txt"].should_ignore && !by["run.log"].should_ignore);
    }
}
