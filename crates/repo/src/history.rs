//! History operations beyond a plain commit: the last commit that touched each path (tree
//! listings with `expand=true`) and squashing a branch into one commit (`super_squash`).

use crate::repos::{
    Author, CommitInfo, RepoError, Repos, branch_ref, commit_info, commit_tree, git, resolve_in,
};
use gix::ObjectId;
use gix::refs::transaction::PreviousValue;
use hub_protocol::repo::RepoId;
use std::collections::HashMap;
use std::sync::PoisonError;

/// Most commits [`Repos::last_commits`] walks back; paths unchanged over a longer stretch get
/// no answer (the listing then leaves their `lastCommit` out) instead of an unbounded walk.
pub const MAX_LAST_COMMIT_WALK: usize = 2000;

impl Repos {
    /// For each of `paths` (files or folders) at `commit`, the newest commit reachable from it
    /// that changed what the path holds (along first parents, newest first). Paths not in the
    /// tree, or unchanged over [`MAX_LAST_COMMIT_WALK`] commits, are left out.
    pub fn last_commits(
        &self,
        id: &RepoId,
        commit: &str,
        paths: &[String],
    ) -> Result<HashMap<String, CommitInfo>, RepoError> {
        let repo = self.open_repo(id)?;
        let mut current = resolve_in(&repo, commit)?;
        let mut out = HashMap::new();
        let mut pending: Vec<&String> = paths.iter().collect();
        let lookup = |tree: ObjectId, path: &str| -> Result<Option<ObjectId>, RepoError> {
            let tree = repo.find_tree(tree).map_err(git("read tree"))?;
            Ok(tree
                .lookup_entry_by_path(path)
                .map_err(git("read tree"))?
                .map(|e| e.object_id()))
        };
        let start_tree = commit_tree(&repo, current)?;
        // Paths that are not in the tree at the start have no last commit.
        let mut here: HashMap<&String, ObjectId> = HashMap::new();
        pending.retain(|p| match lookup(start_tree, p) {
            Ok(Some(oid)) => {
                here.insert(*p, oid);
                true
            }
            _ => false,
        });
        for _ in 0..MAX_LAST_COMMIT_WALK {
            if pending.is_empty() {
                break;
            }
            let parent = repo
                .find_commit(current)
                .map_err(git("read commit"))?
                .parent_ids()
                .next()
                .map(|p| p.detach());
            let parent_tree = match parent {
                Some(p) => Some(commit_tree(&repo, p)?),
                None => None,
            };
            let mut info: Option<CommitInfo> = None;
            let mut still = Vec::with_capacity(pending.len());
            for path in pending {
                let before = match parent_tree {
                    Some(t) => lookup(t, path)?,
                    None => None,
                };
                if before == here.get(path).copied() {
                    still.push(path);
                } else {
                    if info.is_none() {
                        info = Some(commit_info(&repo, current)?);
                    }
                    out.insert(path.clone(), info.clone().expect("set above"));
                }
            }
            // A path kept holds the same object in the parent: `here` stays true for it.
            pending = still;
            match parent {
                Some(p) => current = p,
                None => break,
            }
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
