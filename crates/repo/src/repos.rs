//! The repository collection: layout on disk, commits, refs, trees.
//!
//! Layout: `ROOT/{models,datasets,spaces}/{namespace}/{name}.git`, each a bare repository.
//! A new repository is built in `ROOT/.tmp/` (init, `.gitattributes`, first commit, `HEAD`)
//! and renamed into place, so a crash never leaves a half-made repository visible.

mod blob_info;
mod trees;

use crate::attributes::DEFAULT_GITATTRIBUTES;
use crate::lfs::LfsPointer;
use crate::meta::{MetaDb, RepoMeta};
use crate::reach::{Reach, foreign_lfs};
use gix::ObjectId;
use gix::bstr::ByteSlice;
use gix::objs::tree::EntryKind as GitEntryKind;
use gix::refs::transaction::PreviousValue;
use hub_protocol::repo::{PathError, RepoId, RepoType, validate_repo_path};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Largest blob [`Repos::file_head`] reads whole; a larger one is left for a streaming read.
pub const INLINE_BLOB_MAX: u64 = 1024 * 1024;

/// Who made a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Author {
    pub name: String,
    pub email: String,
}

impl Author {
    pub fn new(name: impl Into<String>, email: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            email: email.into(),
        }
    }
}

/// The content of a file added by a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileContent {
    /// Stored in git as is.
    Regular(Vec<u8>),
    /// Stored in git as a pointer; the content lives in the chunk store.
    Lfs(LfsPointer),
}

/// One change of a commit, as the Hub's commit API names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    Add {
        path: String,
        content: FileContent,
    },
    Delete {
        path: String,
    },
    DeleteFolder {
        path: String,
    },
    Copy {
        src: String,
        /// Revision to copy from; the branch head when `None`.
        src_revision: Option<String>,
        dest: String,
    },
}

/// A commit to make.
#[derive(Debug, Clone)]
pub struct CommitRequest {
    /// Branch name (without `refs/heads/`); it must exist.
    pub branch: String,
    pub message: String,
    pub author: Author,
    /// When given, the commit fails unless the branch head is this commit (full or prefix).
    pub parent: Option<String>,
    pub operations: Vec<Operation>,
}

/// A commit as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    /// 40 lowercase hex digits.
    pub id: String,
    /// The first line of the message.
    pub title: String,
    pub message: String,
    pub author: String,
    /// Seconds since the Unix epoch.
    pub timestamp: i64,
    pub parents: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Directory,
}

/// A file or directory in a tree listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeEntry {
    pub path: String,
    pub kind: EntryKind,
    /// The git object id (blob or tree), 40 hex digits.
    pub oid: String,
    /// Size of the git blob (for LFS files: of the pointer); 0 for directories.
    pub size: u64,
    pub lfs: Option<LfsPointer>,
}

/// A branch or tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefInfo {
    pub name: String,
    pub full_ref: String,
    /// The commit it points to.
    pub target: String,
}

/// Errors of repository operations. The variants the API distinguishes (not found, conflict,
/// bad input) are separate; everything from git itself is [`RepoError::Git`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepoError {
    #[error("repository {repo} not found")]
    NotFound { repo: RepoId },
    #[error("repository {repo} already exists")]
    AlreadyExists { repo: RepoId },
    #[error("revision {revision:?} not found")]
    RevisionNotFound { revision: String },
    #[error("{path:?} not found")]
    EntryNotFound { path: String },
    #[error("reference {name:?} already exists")]
    RefExists { name: String },
    #[error("parent commit {expected} is not the head of the branch ({actual})")]
    ParentMismatch { expected: String, actual: String },
    #[error("invalid path {path:?}")]
    InvalidPath {
        path: String,
        #[source]
        source: PathError,
    },
    #[error("invalid {what} name {name:?}")]
    InvalidRefName { what: &'static str, name: String },
    #[error("{0}")]
    BadOperation(String),
    #[error("git ({context})")]
    Git {
        context: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("repository metadata")]
    Meta(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("{context} {path}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn git(context: &'static str) -> impl FnOnce(gix::Error) -> RepoError {
    move |e| RepoError::Git {
        context,
        source: Box::new(e),
    }
}

pub(crate) fn meta_err(e: impl std::error::Error + Send + Sync + 'static) -> RepoError {
    RepoError::Meta(Box::new(e))
}

pub(crate) fn io(context: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RepoError {
    let path = path.to_owned();
    move |source| RepoError::Io {
        context,
        path,
        source,
    }
}

/// All repositories of a node.
#[derive(Debug)]
pub struct Repos {
    root: PathBuf,
    meta: MetaDb,
    locks: Mutex<HashMap<RepoId, Arc<Mutex<()>>>>,
    tmp_counter: AtomicU64,
}

impl Repos {
    /// Opens (creating if needed) the repository root, clearing what a crash left behind: the
    /// half-made repositories in `.tmp/` and the ref lock files (`refs/**/*.lock`,
    /// `packed-refs.lock`, `HEAD.lock`) of every repository.
    ///
    /// The caller must be the only process using `root` (the node holds its data directory's
    /// lock while it runs), so any lock file found here is stale: left by a writer that died
    /// between taking a ref's lock and committing it. Left in place, it would make every later
    /// write to that ref fail.
    pub fn open(root: impl AsRef<Path>) -> Result<Self, RepoError> {
        let root = root.as_ref().to_owned();
        let tmp = root.join(".tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io("clear", &tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io("create", &tmp))?;
        let meta = MetaDb::open(&root.join("meta.redb")).map_err(meta_err)?;
        meta.init().map_err(meta_err)?;
        let repos = Self {
            meta,
            root,
            locks: Mutex::new(HashMap::new()),
            tmp_counter: AtomicU64::new(0),
        };
        for kind in RepoType::ALL {
            for id in repos.list(kind)? {
                remove_stale_ref_locks(&repos.git_dir(&id))?;
            }
        }
        Ok(repos)
    }

    /// The bare git directory of a repository (whether or not it exists).
    pub fn git_dir(&self, id: &RepoId) -> PathBuf {
        self.root
            .join(id.kind().plural())
            .join(id.namespace())
            .join(format!("{}.git", id.name()))
    }

    /// The stored repository whose id equals `id` ignoring ASCII case (the Hub's ids are
    /// case-insensitive: `Org/Model` and `org/model` are one repo), when `id` itself is not
    /// stored. Costs two directory reads, and is only asked when the exact id is missing.
    pub fn find_ignoring_case(&self, id: &RepoId) -> Option<RepoId> {
        if self.exists(id) {
            return None;
        }
        let same =
            |a: &std::ffi::OsStr, b: &str| a.to_str().is_some_and(|a| a.eq_ignore_ascii_case(b));
        let base = self.root.join(id.kind().plural());
        let want = format!("{}.git", id.name());
        for ns in std::fs::read_dir(&base).ok()?.flatten() {
            if !same(&ns.file_name(), id.namespace()) {
                continue;
            }
            for repo in std::fs::read_dir(ns.path()).ok()?.flatten() {
                if !same(&repo.file_name(), &want) {
                    continue;
                }
                let (Some(ns), Some(name)) = (
                    ns.file_name().to_str().map(str::to_owned),
                    repo.file_name()
                        .to_str()
                        .and_then(|n| n.strip_suffix(".git"))
                        .map(str::to_owned),
                ) else {
                    continue;
                };
                if let Ok(found) = RepoId::new(id.kind(), &ns, &name)
                    && self.exists(&found)
                {
                    return Some(found);
                }
            }
        }
        None
    }

    /// The per-repo lock that serialises writers in this process.
    pub(crate) fn lock(&self, id: &RepoId) -> Arc<Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id.clone())
            .or_default()
            .clone()
    }

    pub fn exists(&self, id: &RepoId) -> bool {
        self.git_dir(id).join("HEAD").is_file()
    }

    pub(crate) fn open_repo(&self, id: &RepoId) -> Result<gix::Repository, RepoError> {
        let path = self.git_dir(id);
        if !path.join("HEAD").is_file() {
            return Err(RepoError::NotFound { repo: id.clone() });
        }
        gix::open_opts(&path, gix::open::Options::isolated()).map_err(|e| RepoError::Git {
            context: "open repository",
            source: Box::new(e),
        })
    }

    /// Every repository of one type, as ids. Directories that are not valid repos are skipped.
    pub fn list(&self, kind: RepoType) -> Result<Vec<RepoId>, RepoError> {
        let base = self.root.join(kind.plural());
        let mut out = Vec::new();
        let Ok(namespaces) = std::fs::read_dir(&base) else {
            return Ok(out);
        };
        for ns in namespaces.flatten() {
            let Ok(repos) = std::fs::read_dir(ns.path()) else {
                continue;
            };
            for repo in repos.flatten() {
                let name = repo.file_name();
                let (Some(ns), Some(name)) = (
                    ns.file_name().to_str().map(str::to_owned),
                    name.to_str()
                        .and_then(|n| n.strip_suffix(".git"))
                        .map(str::to_owned),
                ) else {
                    continue;
                };
                if let Ok(id) = RepoId::new(kind, &ns, &name)
                    && self.exists(&id)
                {
                    out.push(id);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Creates a public repository with a first commit holding the default `.gitattributes` on
    /// `main`.
    pub fn create(&self, id: &RepoId, author: &Author) -> Result<CommitInfo, RepoError> {
        self.create_with(id, author, false)
    }

    /// Creates a repository, private or public. The metadata record is written before the
    /// repository appears, so a private repo is never visible as public, even after a crash.
    pub fn create_with(
        &self,
        id: &RepoId,
        author: &Author,
        private: bool,
    ) -> Result<CommitInfo, RepoError> {
        let lock = self.lock(id);
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let path = self.git_dir(id);
        if path.exists() {
            return Err(RepoError::AlreadyExists { repo: id.clone() });
        }
        let tmp = self.root.join(".tmp").join(format!(
            "{}-{}",
            std::process::id(),
            self.tmp_counter.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            let repo = gix::init_bare(&tmp).map_err(|e| RepoError::Git {
                context: "init repository",
                source: Box::new(e),
            })?;
            std::fs::write(tmp.join("HEAD"), "ref: refs/heads/main\n")
                .map_err(io("write", &tmp.join("HEAD")))?;
            let blob = repo
                .write_blob(DEFAULT_GITATTRIBUTES)
                .map_err(git("write blob"))?;
            let mut editor = repo
                .edit_tree(ObjectId::empty_tree(repo.object_hash()))
                .map_err(git("edit tree"))?;
            editor
                .upsert(".gitattributes", GitEntryKind::Blob, blob)
                .map_err(git("edit tree"))?;
            let tree = editor.write().map_err(git("write tree"))?;
            let commit = write_commit(
                &repo,
                "refs/heads/main",
                "initial commit",
                author,
                tree.detach(),
                None,
            )?;
            commit_info(&repo, commit)
        })();
        let info = match result {
            Ok(info) => info,
            Err(e) => {
                std::fs::remove_dir_all(&tmp).ok();
                return Err(e);
            }
        };
        self.meta
            .put(
                id,
                RepoMeta {
                    private,
                    created_at: info.timestamp,
                },
            )
            .map_err(meta_err)?;
        let parent = path.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(parent).map_err(io("create", parent))?;
        std::fs::rename(&tmp, &path).map_err(io("move repository into", &path))?;
        tracing::info!(repo = %id, commit = %info.id, "created repository");
        Ok(info)
    }

    /// The root directory all repositories live under (its `.tmp/` holds work in progress;
    /// node-local Hub data such as collections and webhooks keeps its own sub-folder here).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A fresh path under `.tmp/` for a repository being built, invisible until renamed.
    pub(crate) fn new_tmp(&self) -> PathBuf {
        self.root.join(".tmp").join(format!(
            "{}-{}",
            std::process::id(),
            self.tmp_counter.fetch_add(1, Ordering::Relaxed)
        ))
    }

    pub(crate) fn meta_db(&self) -> &MetaDb {
        &self.meta
    }

    /// Creates the public replica of a peer's repo with its first refs: `pack` is indexed and
    /// `refs` set (the checks of [`Repos::apply_replica`]) in a repository built under
    /// `.tmp/`, which then moves into place in one rename. Readers never see the replica
    /// half made (no refs yet), and a refused pack leaves nothing. `created_at` comes from
    /// the signed update that announced it. Later updates go through
    /// [`Repos::apply_replica`].
    pub fn create_replica(
        &self,
        id: &RepoId,
        created_at: i64,
        pack: &[u8],
        refs: &BTreeMap<String, [u8; 20]>,
    ) -> Result<crate::ReplicaOutcome, crate::ReplicaError> {
        let path = self.git_dir(id);
        if path.exists() {
            return Err(RepoError::AlreadyExists { repo: id.clone() }.into());
        }
        let tmp = self.root.join(".tmp").join(format!(
            "{}-{}",
            std::process::id(),
            self.tmp_counter.fetch_add(1, Ordering::Relaxed)
        ));
        let built = (|| {
            gix::init_bare(&tmp).map_err(|e| RepoError::Git {
                context: "init repository",
                source: Box::new(e),
            })?;
            std::fs::write(tmp.join("HEAD"), "ref: refs/heads/main\n")
                .map_err(io("write", &tmp.join("HEAD")))?;
            // Not under `id`'s lock: nobody else sees this directory; moving the refs takes
            // the lock for a moment.
            self.apply_replica_at(id, tmp.clone(), &BTreeMap::new(), pack, refs)
        })();
        let outcome = match built {
            Ok(outcome) => outcome,
            Err(e) => {
                std::fs::remove_dir_all(&tmp).ok();
                return Err(e);
            }
        };
        let lock = self.lock(id);
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let placed = (|| {
            if path.exists() {
                return Err(RepoError::AlreadyExists { repo: id.clone() });
            }
            self.meta
                .put(
                    id,
                    RepoMeta {
                        private: false,
                        created_at,
                    },
                )
                .map_err(meta_err)?;
            let parent = path.parent().unwrap_or(&self.root);
            std::fs::create_dir_all(parent).map_err(io("create", parent))?;
            std::fs::rename(&tmp, &path).map_err(io("move repository into", &path))
        })();
        if let Err(e) = placed {
            std::fs::remove_dir_all(&tmp).ok();
            return Err(e.into());
        }
        tracing::info!(repo = %id, "created replica repository");
        Ok(outcome)
    }

    /// Deletes a repository and everything in it.
    pub fn delete(&self, id: &RepoId) -> Result<(), RepoError> {
        let lock = self.lock(id);
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let path = self.git_dir(id);
        if !path.exists() {
            return Err(RepoError::NotFound { repo: id.clone() });
        }
        // Move out of sight first, so a crash mid-delete leaves no half-deleted repo visible.
        let trash = self.root.join(".tmp").join(format!(
            "deleted-{}-{}",
            std::process::id(),
            self.tmp_counter.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::rename(&path, &trash).map_err(io("move away", &path))?;
        std::fs::remove_dir_all(&trash).map_err(io("remove", &trash))?;
        self.meta.remove(id).map_err(meta_err)?;
        Ok(())
    }

    /// Renames (moves) a repository, possibly to another namespace or type, keeping its
    /// history, refs, visibility and download count. Fails if the target exists.
    pub fn rename(&self, from: &RepoId, to: &RepoId) -> Result<(), RepoError> {
        // Lock both in a fixed order so two opposite renames cannot deadlock.
        let (first, second) = if from <= to { (from, to) } else { (to, from) };
        let (a, b) = (self.lock(first), self.lock(second));
        let _ga = a.lock().unwrap_or_else(PoisonError::into_inner);
        let _gb = (first != second).then(|| b.lock().unwrap_or_else(PoisonError::into_inner));
        let src = self.git_dir(from);
        let dst = self.git_dir(to);
        if !src.join("HEAD").is_file() {
            return Err(RepoError::NotFound { repo: from.clone() });
        }
        if dst.exists() {
            return Err(RepoError::AlreadyExists { repo: to.clone() });
        }
        let meta = self.meta.get(from).map_err(meta_err)?.unwrap_or(RepoMeta {
            private: true,
            created_at: 0,
        });
        let downloads = self.meta.downloads(from).map_err(meta_err)?;
        // The target's record first (so it is never public by accident), then the move.
        self.meta.put(to, meta).map_err(meta_err)?;
        self.meta.copy_lfs(from, to).map_err(meta_err)?;
        self.meta.copy_daily(from, to).map_err(meta_err)?;
        let parent = dst.parent().unwrap_or(&self.root);
        std::fs::create_dir_all(parent).map_err(io("create", parent))?;
        std::fs::rename(&src, &dst).map_err(io("move repository to", &dst))?;
        self.meta.remove(from).map_err(meta_err)?;
        self.meta.add_downloads(to, downloads).map_err(meta_err)?;
        tracing::info!(from = %from, to = %to, "renamed repository");
        Ok(())
    }

    /// Visibility and creation time. A repository with no record (made by an older version,
    /// or mid-creation) is private: the safe default.
    pub fn meta(&self, id: &RepoId) -> Result<RepoMeta, RepoError> {
        if !self.exists(id) {
            return Err(RepoError::NotFound { repo: id.clone() });
        }
        Ok(self.meta.get(id).map_err(meta_err)?.unwrap_or(RepoMeta {
            private: true,
            created_at: 0,
        }))
    }

    /// Makes a repository private or public.
    pub fn set_private(&self, id: &RepoId, private: bool) -> Result<(), RepoError> {
        let lock = self.lock(id);
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let meta = self.meta(id)?;
        self.meta
            .put(id, RepoMeta { private, ..meta })
            .map_err(meta_err)
    }

    /// Records that `id` may reference these LFS objects (by SHA-256): the caller proved it has
    /// their content — it uploaded them to this repository, or sent them inline. The store is
    /// shared by all repositories, so possession, not mere presence in the store, is what lets
    /// a commit or a push point at an object: knowing a private file's hash is not enough to
    /// publish it through another repository.
    pub fn add_lfs_objects(&self, id: &RepoId, objects: &[[u8; 32]]) -> Result<(), RepoError> {
        self.meta.add_lfs(id, objects).map_err(meta_err)
    }

    /// Whether `id` may reference the LFS object `sha256` (see [`Repos::add_lfs_objects`]).
    pub fn has_lfs_object(&self, id: &RepoId, sha256: &[u8; 32]) -> Result<bool, RepoError> {
        self.meta.has_lfs(id, sha256).map_err(meta_err)
    }

    /// The LFS objects recorded for `id` ([`Repos::add_lfs_objects`]).
    pub fn lfs_objects(&self, id: &RepoId) -> Result<Vec<[u8; 32]>, RepoError> {
        self.meta.lfs_of_repo(id).map_err(meta_err)
    }

    /// Every LFS object (SHA-256) some repository references: those recorded for it
    /// ([`Repos::add_lfs_objects`]: uploaded to it, possibly not committed yet) and the
    /// pointers in the trees its branches and tags point at. What a store gc must keep.
    pub fn referenced_lfs_objects(&self) -> Result<BTreeSet<[u8; 32]>, RepoError> {
        let mut out: BTreeSet<[u8; 32]> =
            self.meta.all_lfs().map_err(meta_err)?.into_iter().collect();
        for kind in RepoType::ALL {
            for id in self.list(kind)? {
                let (branches, tags) = self.refs(&id)?;
                let tips: Vec<[u8; 20]> = branches
                    .iter()
                    .chain(&tags)
                    .filter_map(|r| ObjectId::from_hex(r.target.as_bytes()).ok())
                    .filter_map(|oid| oid.as_bytes().try_into().ok())
                    .collect();
                out.extend(self.lfs_pointers(&id, &tips, usize::MAX)?.into_keys());
            }
        }
        Ok(out)
    }

    /// Counts one download (in memory until [`Repos::flush_downloads`]).
    pub fn count_download(&self, id: &RepoId) {
        self.meta.count_download(id);
    }

    /// Downloads counted so far, flushed or not.
    pub fn downloads(&self, id: &RepoId) -> Result<u64, RepoError> {
        self.meta.downloads(id).map_err(meta_err)
    }

    /// Persists the download counts gathered in memory; returns how many repos changed.
    pub fn flush_downloads(&self) -> Result<usize, RepoError> {
        self.flush_downloads_on(today())
    }

    /// [`Repos::flush_downloads`], counting the downloads as `day`'s (UTC days since the
    /// epoch; the node passes today, tests other days).
    pub fn flush_downloads_on(&self, day: u32) -> Result<usize, RepoError> {
        self.meta.flush(day).map_err(meta_err)
    }

    /// Trending scores of `ids`, in order: recent downloads (the last
    /// [`crate::TRENDING_DAYS`] days), each day's count halved per day of age.
    pub fn trending_scores(&self, ids: &[RepoId]) -> Result<Vec<f64>, RepoError> {
        self.trending_scores_on(ids, today())
    }

    /// [`Repos::trending_scores`] as of `day`.
    pub fn trending_scores_on(&self, ids: &[RepoId], day: u32) -> Result<Vec<f64>, RepoError> {
        self.meta.trending_scores(ids, day).map_err(meta_err)
    }

    /// The commit a revision names: a branch, a tag, `refs/pr/N`, or a full or short commit id.
    pub fn resolve(&self, id: &RepoId, revision: &str) -> Result<String, RepoError> {
        let repo = self.open_repo(id)?;
        resolve_in(&repo, revision).map(|oid| oid.to_string())
    }

    /// Makes one commit of `request.operations` on `request.branch`: all of them or none.
    pub fn commit(&self, id: &RepoId, request: CommitRequest) -> Result<CommitInfo, RepoError> {
        let lock = self.lock(id);
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let repo = self.open_repo(id)?;
        let ref_name = branch_ref(&request.branch)?;
        let head = repo
            .try_find_reference(ref_name.as_str())
            .ok()
            .flatten()
            .ok_or_else(|| RepoError::RevisionNotFound {
                revision: request.branch.clone(),
            })?
            .peel_to_commit()
            .map_err(git("read branch head"))?;
        let head_id = head.id().detach();
        if let Some(parent) = &request.parent {
            let full = head_id.to_string();
            let parent_lc = parent.to_ascii_lowercase();
            if parent_lc.len() < 5 || !full.starts_with(&parent_lc) {
                return Err(RepoError::ParentMismatch {
                    expected: parent.clone(),
                    actual: full,
                });
            }
        }
        let head_tree = head.tree_id().map_err(git("read tree"))?.detach();
        let mut editor = repo.edit_tree(head_tree).map_err(git("edit tree"))?;
        for op in &request.operations {
            apply(&repo, &mut editor, op, head_id)?;
        }
        let tree = editor.write().map_err(git("write tree"))?.detach();
        let commit = write_commit(
            &repo,
            &ref_name,
            &request.message,
            &request.author,
            tree,
            Some(head_id),
        )?;
        let info = commit_info(&repo, commit)?;
        tracing::info!(repo = %id, branch = %request.branch, commit = %info.id, ops = request.operations.len(), "committed");
        Ok(info)
    }

    /// The entries under `path` ("" for the root) at `commit`; all descendants if `recursive`.
    pub fn list_tree(
        &self,
        id: &RepoId,
        commit: &str,
        path: &str,
        recursive: bool,
    ) -> Result<Vec<TreeEntry>, RepoError> {
        let repo = self.open_repo(id)?;
        let commit_id = resolve_in(&repo, commit)?;
        let mut tree_id = commit_tree(&repo, commit_id)?;
        let prefix = path.trim_matches('/');
        if !prefix.is_empty() {
            check_path(prefix)?;
            let root = repo.find_tree(tree_id).map_err(git("read tree"))?;
            let entry = root
                .lookup_entry_by_path(prefix)
                .map_err(git("read tree"))?
                .filter(|e| e.mode().is_tree())
                .ok_or_else(|| RepoError::EntryNotFound {
                    path: prefix.to_owned(),
                })?;
            tree_id = entry.object_id();
        }
        let mut out = Vec::new();
        walk(&repo, tree_id, prefix, recursive, &mut out)?;
        Ok(out)
    }

    /// The entries (files or folders) at `paths` of `commit`, in the order given; paths that
    /// are not in the tree (or not valid repo paths) are left out. The repository is opened
    /// and the commit resolved once, whatever the number of paths (`paths-info`).
    pub fn entries_at(
        &self,
        id: &RepoId,
        commit: &str,
        paths: &[String],
    ) -> Result<Vec<TreeEntry>, RepoError> {
        let repo = self.open_repo(id)?;
        let commit_id = resolve_in(&repo, commit)?;
        let root = commit_tree(&repo, commit_id)?;
        // Paths share their parent trees: each tree is read and indexed by name once, so
        // 10 000 paths in one big folder cost one decode of it, not 10 000.
        let mut trees: HashMap<ObjectId, TreeIndex> = HashMap::new();
        let mut out = Vec::with_capacity(paths.len());
        'paths: for path in paths {
            if check_path(path).is_err() {
                continue;
            }
            let mut tree = root;
            let mut parts = path.split('/').peekable();
            let (mode, oid) = loop {
                let Some(part) = parts.next() else {
                    continue 'paths;
                };
                let Some(&(mode, oid)) = tree_index(&repo, &mut trees, tree)?.get(part.as_bytes())
                else {
                    continue 'paths;
                };
                if parts.peek().is_none() {
                    break (mode, oid);
                }
                if !mode.is_tree() {
                    continue 'paths;
                }
                tree = oid;
            };
            if mode.is_tree() {
                out.push(TreeEntry {
                    path: path.clone(),
                    kind: EntryKind::Directory,
                    oid: oid.to_string(),
                    size: 0,
                    lfs: None,
                });
            } else if mode.is_blob() {
                let (size, lfs) = blob_info::blob_info(&repo, oid)?;
                out.push(TreeEntry {
                    path: path.clone(),
                    kind: EntryKind::File,
                    oid: oid.to_string(),
                    size,
                    lfs,
                });
            }
        }
        Ok(out)
    }

    /// One file at `commit`: its entry and its git blob (for an LFS file, the pointer).
    pub fn file(
        &self,
        id: &RepoId,
        commit: &str,
        path: &str,
    ) -> Result<(TreeEntry, Vec<u8>), RepoError> {
        let (repo, oid) = self.blob_at(id, commit, path)?;
        let blob = repo.find_blob(oid).map_err(git("read blob"))?.take_data();
        let lfs = LfsPointer::parse(&blob);
        Ok((
            TreeEntry {
                path: path.to_owned(),
                kind: EntryKind::File,
                oid: oid.to_string(),
                size: blob.len() as u64,
                lfs,
            },
            blob,
        ))
    }

    /// The repository opened, and the blob id of the file at `path` of `commit`.
    fn blob_at(
        &self,
        id: &RepoId,
        commit: &str,
        path: &str,
    ) -> Result<(gix::Repository, ObjectId), RepoError> {
        check_path(path)?;
        let repo = self.open_repo(id)?;
        let commit_id = resolve_in(&repo, commit)?;
        let tree = repo
            .find_tree(commit_tree(&repo, commit_id)?)
            .map_err(git("read tree"))?;
        let oid = tree
            .lookup_entry_by_path(path)
            .map_err(git("read tree"))?
            .filter(|e| e.mode().is_blob())
            .ok_or_else(|| RepoError::EntryNotFound {
                path: path.to_owned(),
            })?
            .object_id();
        drop(tree);
        Ok((repo, oid))
    }

    /// One file at `commit`: its entry, and its git blob when that is at most
    /// [`INLINE_BLOB_MAX`] bytes (an LFS pointer always is). A larger blob is not read, so a
    /// caller can stream it (e.g. `git cat-file blob <oid>`) instead of holding it whole; its
    /// size comes from the object's header.
    pub fn file_head(
        &self,
        id: &RepoId,
        commit: &str,
        path: &str,
    ) -> Result<(TreeEntry, Option<Vec<u8>>), RepoError> {
        let (repo, oid) = self.blob_at(id, commit, path)?;
        let size = repo
            .find_header(oid)
            .map_err(|e| RepoError::Git {
                context: "read blob header",
                source: Box::new(e),
            })?
            .size();
        let blob = if size <= INLINE_BLOB_MAX {
            Some(repo.find_blob(oid).map_err(git("read blob"))?.take_data())
        } else {
            None
        };
        let lfs = blob.as_deref().and_then(LfsPointer::parse);
        Ok((
            TreeEntry {
                path: path.to_owned(),
                kind: EntryKind::File,
                oid: oid.to_string(),
                size,
                lfs,
            },
            blob,
        ))
    }

    /// Branches and tags, sorted by name.
    pub fn refs(&self, id: &RepoId) -> Result<(Vec<RefInfo>, Vec<RefInfo>), RepoError> {
        let repo = self.open_repo(id)?;
        let list = |prefix: &str| -> Result<Vec<RefInfo>, RepoError> {
            let platform = repo.references().map_err(git("list references"))?;
            let iter = platform.prefixed(prefix).map_err(git("list references"))?;
            let mut out = Vec::new();
            for r in iter {
                let mut r = r.map_err(|e| RepoError::Git {
                    context: "read reference",
                    source: Box::new(e),
                })?;
                let full_ref = r.name().as_bstr().to_string();
                let target = r
                    .peel_to_commit()
                    .map_err(git("peel reference"))?
                    .id()
                    .to_string();
                out.push(RefInfo {
                    name: full_ref
                        .strip_prefix(prefix)
                        .unwrap_or(&full_ref)
                        .to_owned(),
                    full_ref,
                    target,
                });
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        };
        Ok((list("refs/heads/")?, list("refs/tags/")?))
    }

    /// Commits reachable from `revision`, newest first, at most `limit`.
    pub fn history(
        &self,
        id: &RepoId,
        revision: &str,
        limit: usize,
    ) -> Result<Vec<CommitInfo>, RepoError> {
        let repo = self.open_repo(id)?;
        let start = resolve_in(&repo, revision)?;
        let walk = repo
            .rev_walk([start])
            .sorting(gix::revision::walk::Sorting::ByCommitTime(
                Default::default(),
            ))
            .all()
            .map_err(|e| RepoError::Git {
                context: "walk history",
                source: Box::new(e),
            })?;
        let mut out = Vec::new();
        for info in walk.take(limit) {
            let info = info.map_err(|e| RepoError::Git {
                context: "walk history",
                source: Box::new(e),
            })?;
            out.push(commit_info(&repo, info.id)?);
        }
        Ok(out)
    }

    /// Creates branch `name` at `revision` (the default branch head when `None`).
    pub fn create_branch(
        &self,
        id: &RepoId,
        name: &str,
        revision: Option<&str>,
    ) -> Result<(), RepoError> {
        let full = branch_ref(name)?;
        self.create_ref(id, &full, revision.unwrap_or("main"), "branch")
    }

    /// Creates tag `name` at `revision` (a lightweight tag).
    pub fn create_tag(&self, id: &RepoId, name: &str, revision: &str) -> Result<(), RepoError> {
        let full = format!("refs/tags/{name}");
        validate_ref(&full, "tag", name)?;
        self.create_ref(id, &full, revision, "tag")
    }

    fn create_ref(
        &self,
        id: &RepoId,
        full: &str,
        revision: &str,
        what: &'static str,
    ) -> Result<(), RepoError> {
        let lock = self.lock(id);
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let repo = self.open_repo(id)?;
        let target = resolve_in(&repo, revision)?;
        if repo.try_find_reference(full).ok().flatten().is_some() {
            return Err(RepoError::RefExists {
                name: full.to_owned(),
            });
        }
        // The same rule as a push: a new ref may only expose LFS objects of this repository.
        let owned = &mut |sha: &[u8; 32]| self.meta.has_lfs(id, sha).unwrap_or(false);
        if let Some((path, sha)) = foreign_lfs(&repo, target, owned).map_err(git("read tree"))? {
            return Err(RepoError::BadOperation(format!(
                "{path:?} at {target} points to LFS object {sha}, which was not uploaded to this repository"
            )));
        }
        repo.reference(
            full,
            target,
            PreviousValue::MustNotExist,
            format!("{what}: created"),
        )
        .map_err(git("create reference"))?;
        Ok(())
    }

    pub fn delete_branch(&self, id: &RepoId, name: &str) -> Result<(), RepoError> {
        let full = branch_ref(name)?;
        if name == "main" {
            return Err(RepoError::BadOperation(
                "the default branch cannot be deleted".into(),
            ));
        }
        self.delete_ref(id, &full)
    }

    pub fn delete_tag(&self, id: &RepoId, name: &str) -> Result<(), RepoError> {
        let full = format!("refs/tags/{name}");
        validate_ref(&full, "tag", name)?;
        self.delete_ref(id, &full)
    }

    fn delete_ref(&self, id: &RepoId, full: &str) -> Result<(), RepoError> {
        let lock = self.lock(id);
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let repo = self.open_repo(id)?;
        let r = repo
            .try_find_reference(full)
            .ok()
            .flatten()
            .ok_or_else(|| RepoError::RevisionNotFound {
                revision: full.to_owned(),
            })?;
        r.delete().map_err(git("delete reference"))
    }
}

/// Removes the lock files of refs that a crashed writer left in the bare repository `git_dir`.
fn remove_stale_ref_locks(git_dir: &Path) -> Result<(), RepoError> {
    let mut stale = Vec::new();
    for top in ["HEAD.lock", "packed-refs.lock"] {
        let path = git_dir.join(top);
        if path.is_file() {
            stale.push(path);
        }
    }
    let mut dirs = vec![git_dir.join("refs")];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io("read", &dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io("read", &dir))?;
            let file_type = entry.file_type().map_err(io("read", &entry.path()))?;
            if file_type.is_dir() {
                dirs.push(entry.path());
            } else if entry.file_name().as_encoded_bytes().ends_with(b".lock") {
                stale.push(entry.path());
            }
        }
    }
    for path in stale {
        std::fs::remove_file(&path).map_err(io("remove stale lock", &path))?;
        tracing::warn!(lock = %path.display(), "removed a stale ref lock left by a crash");
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), RepoError> {
    validate_repo_path(path).map_err(|source| RepoError::InvalidPath {
        path: path.chars().take(200).collect(),
        source,
    })
}

fn validate_ref(full: &str, what: &'static str, name: &str) -> Result<(), RepoError> {
    let bad = || RepoError::InvalidRefName {
        what,
        name: name.chars().take(200).collect(),
    };
    if name.is_empty() || name.len() > 255 {
        return Err(bad());
    }
    gix::refs::FullName::try_from(full).map_err(|_| bad())?;
    Ok(())
}

pub(crate) fn branch_ref(name: &str) -> Result<String, RepoError> {
    // `refs/pr/N` are branches in the Hub's sense (pull-request heads).
    let full = if name.starts_with("refs/pr/") {
        name.to_owned()
    } else {
        format!("refs/heads/{name}")
    };
    validate_ref(&full, "branch", name)?;
    Ok(full)
}

pub(crate) fn resolve_in(repo: &gix::Repository, revision: &str) -> Result<ObjectId, RepoError> {
    let not_found = || RepoError::RevisionNotFound {
        revision: revision.chars().take(200).collect(),
    };
    if revision.is_empty() || revision.len() > 255 {
        return Err(not_found());
    }
    let candidates: Vec<String> = if revision.starts_with("refs/") {
        if ["refs/heads/", "refs/tags/", "refs/pr/"]
            .iter()
            .any(|p| revision.starts_with(p))
        {
            vec![revision.to_owned()]
        } else {
            Vec::new()
        }
    } else {
        vec![
            format!("refs/heads/{revision}"),
            format!("refs/tags/{revision}"),
        ]
    };
    for name in candidates {
        if gix::refs::FullName::try_from(name.as_str()).is_err() {
            continue;
        }
        if let Ok(Some(mut r)) = repo.try_find_reference(name.as_str()) {
            let commit = r.peel_to_commit().map_err(git("peel reference"))?;
            return Ok(commit.id().detach());
        }
    }
    // Only plain hex goes to rev-parse: its full syntax (`HEAD~2`, `@{…}`, `:/text`) is not
    // for users of an HTTP API.
    if (4..=40).contains(&revision.len()) && revision.bytes().all(|b| b.is_ascii_hexdigit()) {
        let spec = revision.to_ascii_lowercase();
        let oid = if spec.len() == 40 {
            ObjectId::from_hex(spec.as_bytes()).ok()
        } else {
            gix::hash::Prefix::from_hex(&spec)
                .ok()
                .and_then(|prefix| repo.objects.lookup_prefix(prefix, None).ok().flatten())
                // `Err(())` is an ambiguous prefix: not found, as for git.
                .and_then(Result::ok)
        };
        // Only a commit the refs reach is content of the repository (crate::reach).
        if let Some(oid) = oid
            && repo.find_commit(oid).is_ok()
            && Reach::new(repo)
                .map_err(git("list references"))?
                .reaches(oid)
        {
            return Ok(oid);
        }
    }
    Err(not_found())
}

pub(crate) fn commit_tree(repo: &gix::Repository, commit: ObjectId) -> Result<ObjectId, RepoError> {
    Ok(repo
        .find_commit(commit)
        .map_err(git("read commit"))?
        .tree_id()
        .map_err(git("read commit"))?
        .detach())
}

/// What `path` is in the tree being edited, earlier operations of the commit included.
///
/// The editor only sees the trees it has loaded (`Editor::get` answers `None` below an
/// unloaded one, whether or not the entry exists), so first every tree along `path` is
/// loaded: removing a child named `\0`, a name no git tree can hold, walks the path and
/// changes nothing.
fn entry_at(
    editor: &mut gix::object::tree::Editor<'_>,
    path: &str,
) -> Result<Option<gix::object::tree::EntryMode>, RepoError> {
    editor
        .remove(format!("{path}/\0").as_str())
        .map_err(git("read tree"))?;
    Ok(editor.get(path).map(|e| e.mode()))
}

/// Refuses a file at `path` when a folder of that name exists, or when a parent of `path` is
/// a file: git would silently replace the other entry (`clash` and `clash/inner` in one commit
/// would keep only `clash/inner`).
fn check_file_slot(
    editor: &mut gix::object::tree::Editor<'_>,
    path: &str,
    what: &str,
) -> Result<(), RepoError> {
    if entry_at(editor, path)?.is_some_and(|m| m.is_tree()) {
        return Err(RepoError::BadOperation(format!(
            "cannot {what} {path:?}: a folder of that name exists"
        )));
    }
    // `entry_at` loaded every tree along `path`, so the parents are visible to `get`.
    for (i, _) in path.match_indices('/') {
        let parent = &path[..i];
        if editor.get(parent).is_some_and(|e| !e.mode().is_tree()) {
            return Err(RepoError::BadOperation(format!(
                "cannot {what} {path:?}: {parent:?} is a file"
            )));
        }
    }
    Ok(())
}

fn apply(
    repo: &gix::Repository,
    editor: &mut gix::object::tree::Editor<'_>,
    op: &Operation,
    head: ObjectId,
) -> Result<(), RepoError> {
    match op {
        Operation::Add { path, content } => {
            check_path(path)?;
            check_file_slot(editor, path, "add file")?;
            let bytes = match content {
                FileContent::Regular(bytes) => bytes.as_slice(),
                FileContent::Lfs(pointer) => &pointer.encode().into_bytes(),
            };
            let blob = repo.write_blob(bytes).map_err(git("write blob"))?;
            editor
                .upsert(path.as_str(), GitEntryKind::Blob, blob)
                .map_err(|e| RepoError::BadOperation(format!("cannot add file {path:?}: {e}")))?;
        }
        Operation::Delete { path } => {
            check_path(path)?;
            let is_file = entry_at(editor, path)?.is_some_and(|m| !m.is_tree());
            if !is_file {
                return Err(RepoError::EntryNotFound { path: path.clone() });
            }
            editor.remove(path.as_str()).map_err(git("edit tree"))?;
        }
        Operation::DeleteFolder { path } => {
            let path = path.trim_end_matches('/');
            check_path(path)?;
            let is_folder = entry_at(editor, path)?.is_some_and(|m| m.is_tree());
            if !is_folder {
                return Err(RepoError::EntryNotFound {
                    path: path.to_owned(),
                });
            }
            editor.remove(path).map_err(git("edit tree"))?;
        }
        Operation::Copy {
            src,
            src_revision,
            dest,
        } => {
            check_path(src)?;
            check_path(dest)?;
            let from = match src_revision {
                Some(rev) => resolve_in(repo, rev)?,
                None => head,
            };
            let tree = repo
                .find_tree(commit_tree(repo, from)?)
                .map_err(git("read tree"))?;
            let entry = tree
                .lookup_entry_by_path(src.as_str())
                .map_err(git("read tree"))?
                .filter(|e| e.mode().is_blob())
                .ok_or_else(|| RepoError::EntryNotFound { path: src.clone() })?;
            check_file_slot(editor, dest, "copy to")?;
            editor
                .upsert(dest.as_str(), entry.mode().kind(), entry.object_id())
                .map_err(|e| RepoError::BadOperation(format!("cannot copy to {dest:?}: {e}")))?;
        }
    }
    Ok(())
}

fn write_commit(
    repo: &gix::Repository,
    ref_name: &str,
    message: &str,
    author: &Author,
    tree: ObjectId,
    parent: Option<ObjectId>,
) -> Result<ObjectId, RepoError> {
    let signature = gix::actor::Signature {
        name: author.name.as_str().into(),
        email: author.email.as_str().into(),
        time: gix::date::Time::now_utc(),
    };
    let mut buf = gix::date::parse::TimeBuf::default();
    let sig = signature.to_ref(&mut buf);
    // `commit_as` moves the ref only if it still points at `parent` (or, for the first commit,
    // does not exist): a compare-and-swap that also guards against other processes.
    let id = repo
        .commit_as(sig, sig, ref_name, message, tree, parent)
        .map_err(git("write commit"))?;
    Ok(id.detach())
}

pub(crate) fn commit_info(repo: &gix::Repository, id: ObjectId) -> Result<CommitInfo, RepoError> {
    let commit = repo.find_commit(id).map_err(git("read commit"))?;
    let message = commit.message_raw_sloppy().to_str_lossy().into_owned();
    let author = commit.author().map_err(git("read commit"))?;
    let timestamp = author.seconds();
    Ok(CommitInfo {
        id: id.to_string(),
        title: message.lines().next().unwrap_or_default().to_owned(),
        author: author.name.to_str_lossy().into_owned(),
        message,
        timestamp,
        parents: commit.parent_ids().map(|p| p.to_string()).collect(),
    })
}

/// A tree's entries by name: mode and object id.
pub(crate) type TreeIndex = HashMap<Vec<u8>, (gix::objs::tree::EntryMode, ObjectId)>;

/// The index of `tree`, read and decoded once per call site's `cache`.
pub(crate) fn tree_index<'c>(
    repo: &gix::Repository,
    cache: &'c mut HashMap<ObjectId, TreeIndex>,
    tree: ObjectId,
) -> Result<&'c TreeIndex, RepoError> {
    if let std::collections::hash_map::Entry::Vacant(slot) = cache.entry(tree) {
        let found = repo.find_tree(tree).map_err(git("read tree"))?;
        let decoded = found.decode().map_err(git("read tree"))?;
        slot.insert(
            decoded
                .entries
                .iter()
                .map(|e| (e.filename.to_vec(), (e.mode, e.oid.to_owned())))
                .collect(),
        );
    }
    Ok(&cache[&tree])
}

fn walk(
    repo: &gix::Repository,
    tree: ObjectId,
    prefix: &str,
    recursive: bool,
    out: &mut Vec<TreeEntry>,
) -> Result<(), RepoError> {
    let tree = repo.find_tree(tree).map_err(git("read tree"))?;
    let decoded = tree.decode().map_err(git("read tree"))?;
    for entry in &decoded.entries {
        let name = entry.filename.to_str_lossy();
        let path = if prefix.is_empty() {
            name.into_owned()
        } else {
            format!("{prefix}/{name}")
        };
        let oid = entry.oid.to_owned();
        if entry.mode.is_tree() {
            out.push(TreeEntry {
                path: path.clone(),
                kind: EntryKind::Directory,
                oid: oid.to_string(),
                size: 0,
                lfs: None,
            });
            if recursive {
                walk(repo, oid, &path, true, out)?;
            }
        } else if entry.mode.is_blob() {
            let (size, lfs) = blob_info::blob_info(repo, oid)?;
            out.push(TreeEntry {
                path,
                kind: EntryKind::File,
                oid: oid.to_string(),
                size,
                lfs,
            });
        }
        // Submodules (commits) and other modes are not files of a Hub repo; they are skipped.
    }
    Ok(())
}

/// The git blob id (SHA-1 of `blob <len>\0` and the bytes) of `data`, 40 lowercase hex digits:
/// what `huggingface_hub` compares to decide that a regular file did not change.
pub fn git_blob_id(data: &[u8]) -> Result<String, RepoError> {
    gix::objs::compute_hash(gix::hash::Kind::Sha1, gix::objs::Kind::Blob, data)
        .map(|oid| oid.to_string())
        .map_err(|e| RepoError::Git {
            context: "hash blob",
            source: Box::new(e),
        })
}

/// Today as UTC days since the Unix epoch.
fn today() -> u32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    u32::try_from(secs / 86_400).unwrap_or(u32::MAX)
}
