//! History operations beyond a plain commit: the last commit that touched each path (tree
//! listings with `expand=true`) and squashing a branch into one commit (`super_squash`).

use crate::repos::{
    Author, CommitInfo, RepoError, Repos, TreeIndex, branch_ref, commit_info, commit_tree, git,
    resolve_in, tree_index,
};
use gix::ObjectId;
use gix::refs::transaction::PreviousValue;
use hub_protocol::repo::RepoId;
use std::collections::HashMap;
use std::sync::PoisonError;

/// Most commits [`Repos::last_commits`] walks back; paths unchanged over a longer stretch get
/// no answer (the listing then leaves their `lastCommit` out) instead of an unbounded walk.
pub const MAX_LAST_COMMIT_WALK: usize = 2000;

/// Decoded trees kept during one walk; past this the cache starts over (trees are then read
/// again), so memory stays bounded whatever the repo's shape.
const MAX_CACHED_TREES: usize = 512;

/// The paths of one folder that are still looking for their last commit: name → the object
/// the path holds at the start.
struct Folder<'p> {
    parts: Vec<&'p str>,
    names: HashMap<&'p str, (&'p String, ObjectId)>,
}

impl Repos {
    /// For each of `paths` (files or folders) at `commit`, the newest commit reachable from it
    /// that changed what the path holds (along first parents, newest first). Paths not in the
    /// tree, or unchanged over [`MAX_LAST_COMMIT_WALK`] commits, are left out.
    ///
    /// One walk serves all paths: they are grouped by folder, and at each commit a folder
    /// whose tree is the same object in the parent is skipped without reading it, so a step
    /// costs a few tree lookups plus one read of each folder that changed, whatever the
    /// number of paths (the file browser and `expand=true` listings ask for a whole folder).
    pub fn last_commits(
        &self,
        id: &RepoId,
        commit: &str,
        paths: &[String],
    ) -> Result<HashMap<String, CommitInfo>, RepoError> {
        let repo = self.open_repo(id)?;
        let mut current = resolve_in(&repo, commit)?;
        let mut trees: HashMap<ObjectId, TreeIndex> = HashMap::new();
        let mut root = commit_tree(&repo, current)?;
        // Group the paths by folder, with what each holds at the start; paths not in the tree
        // have no last commit.
        let mut folders: HashMap<&str, Folder<'_>> = HashMap::new();
        for path in paths {
            let (dir, name) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
            if name.is_empty() {
                continue;
            }
            let parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
            let Some(tree) = folder_tree(&repo, &mut trees, root, &parts)? else {
                continue;
            };
            let Some(&(_, oid)) = tree_index(&repo, &mut trees, tree)?.get(name.as_bytes()) else {
                continue;
            };
            folders
                .entry(dir)
                .or_insert_with(|| Folder {
                    parts,
                    names: HashMap::new(),
                })
                .names
                .insert(name, (path, oid));
        }
        let mut found: HashMap<String, ObjectId> = HashMap::new();
        for _ in 0..MAX_LAST_COMMIT_WALK {
            if folders.is_empty() {
                break;
            }
            let parent = repo
                .find_commit(current)
                .map_err(git("read commit"))?
                .parent_ids()
                .next()
                .map(|p| p.detach());
            let parent_root = match parent {
                Some(p) => Some(commit_tree(&repo, p)?),
                None => None,
            };
            if trees.len() > MAX_CACHED_TREES {
                trees.clear();
            }
            if parent_root != Some(root) {
                for folder in folders.values_mut() {
                    let here = folder_tree(&repo, &mut trees, root, &folder.parts)?;
                    let before = match parent_root {
                        Some(r) => folder_tree(&repo, &mut trees, r, &folder.parts)?,
                        None => None,
                    };
                    if here.is_some() && here == before {
                        continue;
                    }
                    let before = match before {
                        Some(t) => Some(tree_index(&repo, &mut trees, t)?),
                        None => None,
                    };
                    // A path still here holds its starting object at `current`; it changed
                    // in `current` if the parent holds anything else there.
                    folder.names.retain(|name, (path, oid)| {
                        let kept = before
                            .and_then(|b| b.get(name.as_bytes()))
                            .is_some_and(|&(_, b)| b == *oid);
                        if !kept {
                            found.insert((**path).clone(), current);
                        }
                        kept
                    });
                }
                folders.retain(|_, f| !f.names.is_empty());
            }
            match (parent, parent_root) {
                (Some(p), Some(r)) => {
                    current = p;
                    root = r;
                }
                _ => break,
            }
        }
        let mut infos: HashMap<ObjectId, CommitInfo> = HashMap::new();
        let mut out = HashMap::with_capacity(found.len());
        for (path, c) in found {
            if let std::collections::hash_map::Entry::Vacant(slot) = infos.entry(c) {
                slot.insert(commit_info(&repo, c)?);
            }
            out.insert(path, infos[&c].clone());
        }
        Ok(out)
    }

    /// Replaces the history of `branch` by one commit holding its current tree, with no
    /// parent (the Hub's super-squash). Tags and other branches keep the old commits. Fails
    /// with `RevisionNotFound` for an unknown branch; the ref moves only if it still points
    /// where it did when read.
    pub fn super_squash(
        &self,
        id: &RepoId,
        branch: &str,
        message: &str,
        author: &Author,
    ) -> Result<CommitInfo, RepoError> {
        let lock = self.lock(id);
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let repo = self.open_repo(id)?;
        let ref_name = branch_ref(branch)?;
        let head = repo
            .try_find_reference(ref_name.as_str())
            .ok()
            .flatten()
            .ok_or_else(|| RepoError::RevisionNotFound {
                revision: branch.chars().take(200).collect(),
            })?
            .peel_to_commit()
            .map_err(git("read branch head"))?
            .id()
            .detach();
        let tree = commit_tree(&repo, head)?;
        let signature = gix::actor::Signature {
            name: author.name.as_str().into(),
            email: author.email.as_str().into(),
            time: gix::date::Time::now_utc(),
        };
        let mut buf = gix::date::parse::TimeBuf::default();
        let sig = signature.to_ref(&mut buf);
        let commit = repo
            .new_commit_as(sig, sig, message, tree, Vec::<ObjectId>::new())
            .map_err(git("write commit"))?
            .id;
        repo.reference(
            ref_name.as_str(),
            commit,
            PreviousValue::MustExistAndMatch(gix::refs::Target::Object(head)),
            "super-squash",
        )
        .map_err(git("move branch"))?;
        let info = commit_info(&repo, commit)?;
        tracing::info!(repo = %id, branch, commit = %info.id, "super-squashed");
        Ok(info)
    }
}

/// The tree of the folder at `parts` under `root`, when it is a folder there.
fn folder_tree(
    repo: &gix::Repository,
    trees: &mut HashMap<ObjectId, TreeIndex>,
    root: ObjectId,
    parts: &[&str],
) -> Result<Option<ObjectId>, RepoError> {
    let mut tree = root;
    for part in parts {
        match tree_index(repo, trees, tree)?.get(part.as_bytes()) {
            Some(&(mode, oid)) if mode.is_tree() => tree = oid,
            _ => return Ok(None),
        }
    }
    Ok(Some(tree))
}
