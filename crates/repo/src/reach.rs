//! Which commits a repository's refs reach, and whether a commit's LFS pointers belong to the
//! repository.
//!
//! A repository's object store can hold commits no ref reaches: history a force push or a
//! branch deletion left behind, and objects of pushes that older versions accepted without
//! checking every object (see [`crate::receive`]). Such a commit is not content of the
//! repository: a revision given as a commit id resolves only when a ref (a branch, a tag or
//! `refs/pr/N`) reaches it, so nothing that never passed the checks of the ref updates can be
//! read, served or branched from by naming its id.
//!
//! [`Reach`] answers "does a ref reach this commit?" by walking the history from the ref tips
//! breadth first (newest commits first, where the ids people pass come from) and remembering
//! what it has seen, so several questions about one repository cost one walk. The walk is
//! bounded: after [`MAX_REACH_WALK`] commits it stops and the answer is "not reached", so a
//! request naming an unreachable id costs at most that many commit reads (a fraction of a
//! second in a release build). The price: in a history longer than that, the oldest commits
//! cannot be named by id (their branches and tags still work), which no Hub repository of a
//! realistic size meets.

use crate::lfs::decode_hex32;
use crate::lfs::{LfsPointer, MAX_POINTER_SIZE};
use gix::ObjectId;
use std::collections::{HashSet, VecDeque};

/// Most commits one [`Reach`] reads before answering "not reached".
pub const MAX_REACH_WALK: usize = 100_000;

/// The refs whose history is the repository's content (what [`crate::Repos::resolve`] takes).
const CONTENT_REFS: [&str; 3] = ["refs/heads/", "refs/tags/", "refs/pr/"];

/// An incremental, bounded walk of the history reachable from a repository's refs.
pub(crate) struct Reach<'r> {
    repo: &'r gix::Repository,
    seen: HashSet<ObjectId>,
    queue: VecDeque<ObjectId>,
}

impl<'r> Reach<'r> {
    /// Starts at the commits the content refs point to (annotated tags peeled). A ref that
    /// does not peel to a commit is no start.
    pub(crate) fn new(repo: &'r gix::Repository) -> Result<Self, gix::Error> {
        let mut reach = Self {
            repo,
            seen: HashSet::new(),
            queue: VecDeque::new(),
        };
        let platform = repo.references()?;
        for r in platform.all()? {
            let Ok(mut r) = r else { continue };
            let name = r.name().as_bstr().to_string();
            if !CONTENT_REFS.iter().any(|p| name.starts_with(p)) {
                continue;
            }
            if let Ok(commit) = r.peel_to_commit() {
                let id = commit.id;
                if reach.seen.insert(id) {
                    reach.queue.push_back(id);
                }
            }
        }
        Ok(reach)
    }

    /// Whether a ref reaches commit `target`; false also when the walk reached its bound
    /// first.
    pub(crate) fn reaches(&mut self, target: ObjectId) -> bool {
        if self.seen.contains(&target) {
            return true;
        }
        while let Some(id) = self.queue.pop_front() {
            // A parent that cannot be read (a corrupt or shallow history) ends that line.
            let Ok(commit) = self.repo.find_commit(id) else {
                continue;
            };
            let mut found = false;
            for parent in commit.parent_ids() {
                let parent = parent.detach();
                if self.seen.len() >= MAX_REACH_WALK {
                    self.queue.clear();
                    return found;
                }
                if self.seen.insert(parent) {
                    self.queue.push_back(parent);
                    found |= parent == target;
                }
            }
            if found {
                return true;
            }
        }
        false
    }
}

/// The first LFS pointer in `commit`'s tree that names an object `owned` says no (the
/// object was never uploaded to, or fetched for, this repository), as (path, sha256).
pub(crate) fn foreign_lfs(
    repo: &gix::Repository,
    commit: ObjectId,
    owned: &mut dyn FnMut(&[u8; 32]) -> bool,
) -> Result<Option<(String, String)>, gix::Error> {
    let tree = repo.find_commit(commit)?.tree_id()?.detach();
    let mut stack = vec![(tree, String::new())];
    let mut seen = HashSet::new();
    while let Some((tree, prefix)) = stack.pop() {
        if !seen.insert((tree, prefix.len())) {
            continue;
        }
        let tree = repo.find_tree(tree)?;
        let decoded = tree.decode()?;
        for entry in &decoded.entries {
            let path = format!("{prefix}{}", entry.filename);
            let oid = entry.oid.to_owned();
            if entry.mode.is_tree() {
                stack.push((oid, format!("{path}/")));
                continue;
            }
            if !entry.mode.is_blob() || repo.find_header(oid)?.size() > MAX_POINTER_SIZE as u64 {
                continue;
            }
            let Some(pointer) = LfsPointer::parse(&repo.find_blob(oid)?.data) else {
                continue;
            };
            let mut sha = [0u8; 32];
            let valid = decode_hex32(pointer.sha256.as_bytes(), &mut sha);
            if !valid || !owned(&sha) {
                return Ok(Some((path, pointer.sha256)));
            }
        }
    }
    Ok(None)
}
