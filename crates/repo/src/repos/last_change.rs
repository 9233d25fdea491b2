//! The last commit that changed each entry of a folder (the file browser's "last commit"
//! column), found along the first-parent chain with one tree read per commit: an entry's
//! last change is the newest commit after which its object id differs from its parent's. A
//! commit whose folder tree is the same object as its parent's changes nothing there and is
//! skipped without reading it.

use super::{CommitInfo, RepoError, Repos, check_path, commit_info, git, resolve_in};
use gix::ObjectId;
use gix::bstr::ByteSlice;
use hub_protocol::repo::RepoId;
use std::collections::HashMap;

impl Repos {
    /// For each entry name of folder `dir` (`""`: the root) at `revision`, the last commit
    /// that changed it, looking at most `limit` commits back; names whose change is older
    /// than that are absent.
    pub fn last_changes(
        &self,
        id: &RepoId,
        revision: &str,
        dir: &str,
        limit: usize,
    ) -> Result<HashMap<String, CommitInfo>, RepoError> {
        let repo = self.open_repo(id)?;
        let mut commit = resolve_in(&repo, revision)?;
        let dir = dir.trim_matches('/');
        if !dir.is_empty() {
            check_path(dir)?;
        }
        let Some(mut tree) = dir_tree(&repo, commit, dir)? else {
            return Ok(HashMap::new());
        };
        let mut pending = entries(&repo, tree)?;
        let mut found: HashMap<String, ObjectId> = HashMap::new();
        for _ in 0..limit {
            if pending.is_empty() {
                break;
            }
            let parent = repo
                .find_commit(commit)
                .map_err(git("read commit"))?
                .parent_ids()
                .next()
                .map(|p| p.detach());
            let parent_tree = match parent {
                Some(p) => dir_tree(&repo, p, dir)?,
                None => None,
            };
            if parent_tree != Some(tree) {
                let before = match parent_tree {
                    Some(t) => entries(&repo, t)?,
                    None => HashMap::new(),
                };
                pending.retain(|name, oid| {
                    if before.get(name) == Some(oid) {
                        true
                    } else {
                        found.insert(name.clone(), commit);
                        false
                    }
                });
            }
            match (parent, parent_tree) {
                (Some(p), Some(t)) => {
                    commit = p;
                    tree = t;
                }
                _ => break,
            }
        }
        let mut infos: HashMap<ObjectId, CommitInfo> = HashMap::new();
        let mut out = HashMap::with_capacity(found.len());
        for (name, c) in found {
            if let std::collections::hash_map::Entry::Vacant(slot) = infos.entry(c) {
                slot.insert(commit_info(&repo, c)?);
            }
            out.insert(name, infos[&c].clone());
        }
        Ok(out)
    }
}

/// The tree of folder `dir` at `commit`, when it is a folder there.
fn dir_tree(
    repo: &gix::Repository,
    commit: ObjectId,
    dir: &str,
) -> Result<Option<ObjectId>, RepoError> {
    let root = super::commit_tree(repo, commit)?;
    if dir.is_empty() {
        return Ok(Some(root));
    }
    let tree = repo.find_tree(root).map_err(git("read tree"))?;
    Ok(tree
        .lookup_entry_by_path(dir)
        .map_err(git("read tree"))?
        .filter(|e| e.mode().is_tree())
        .map(|e| e.object_id()))
}

fn entries(repo: &gix::Repository, tree: ObjectId) -> Result<HashMap<String, ObjectId>, RepoError> {
    let tree = repo.find_tree(tree).map_err(git("read tree"))?;
    let decoded = tree.decode().map_err(git("read tree"))?;
    Ok(decoded
        .entries
        .iter()
        .map(|e| (e.filename.to_str_lossy().into_owned(), e.oid.to_owned()))
        .collect())
}
