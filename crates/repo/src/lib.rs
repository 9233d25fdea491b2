//! hubmesh repositories: one bare git repository per repo, managed in-process with gix.
//!
//! Place in the graph: `protocol ← store ← repo ← {auth, search, infer} ← … ← gateway`.
//! Git holds commits, trees, small files and LFS pointers; large-file content lives in
//! `hub-store`, named by the SHA-256 in its pointer. The gateway turns the Hub's commit API
//! into [`Operation`]s and calls [`Repos::commit`]; git smart HTTP and replication share the
//! same repositories and refs.
//!
//! All methods block on disk (gix is synchronous): call them from `spawn_blocking`.
//! Commits to one repository are serialised by a per-repo lock, and each moves its branch with
//! a compare-and-swap on the ref, so a commit is all its operations or none.
//!
//! Owns git data and per-repo metadata; who may write, where a namespace is hosted and which
//! LFS objects a repo may reference are `hub-core`'s rules. Depends on `hub-protocol` only
//! among ours (LFS content is named, never read, here), and must not depend on accounts, the
//! network or HTTP.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! use hub_protocol::repo::{RepoId, RepoType};
//! use hub_repo::{Author, CommitRequest, FileContent, Operation, Repos};
//!
//! let repos = Repos::open(dir.path())?;
//! let id = RepoId::parse(RepoType::Model, "alice/tiny")?;
//! let author = Author::new("alice", "alice@hubmesh.local");
//! repos.create(&id, &author)?;
//! let commit = repos.commit(&id, CommitRequest {
//!     branch: "main".into(),
//!     message: "Add config".into(),
//!     author,
//!     parent: None,
//!     operations: vec![Operation::Add {
//!         path: "config.json".into(),
//!         content: FileContent::Regular(b"{}".to_vec()),
//!     }],
//! })?;
//! assert_eq!(repos.resolve(&id, "main")?, commit.id);
//! # Ok(()) }
//! ```

mod attributes;
mod copy;
mod history;
mod ignore;
mod lfs;
mod log;
mod meta;
mod reach;
mod receive;
mod replica;
mod repos;

pub use attributes::{DEFAULT_GITATTRIBUTES, LfsRules};
pub use history::MAX_LAST_COMMIT_WALK;
pub use ignore::{IgnoreRules, MAX_GITIGNORE};
pub use lfs::{LfsPointer, MAX_POINTER_SIZE};
pub use log::{MAX_LOG_ENTRIES, MAX_LOG_ENTRY, Merged};
pub use meta::{RepoMeta, TRENDING_DAYS};
pub use reach::MAX_REACH_WALK;
pub use receive::{
    Checked, MAX_GIT_FILE, MAX_NEW_COMMITS, Quarantine, REPLICATED_REF_PREFIXES, ReceiveError,
    RefCommand, Rejection, ZERO_ID,
};
pub use replica::{ReplicaError, ReplicaOutcome};
pub use repos::{
    Author, CommitInfo, CommitRequest, EntryKind, FileContent, INLINE_BLOB_MAX, Operation, RefInfo,
    RepoError, Repos, TreeEntry, git_blob_id,
};
