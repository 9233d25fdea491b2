//! Whole-tree questions answered from trees alone, with no blob read: how many files a
//! revision holds (the repo page), and which files differ between two commits (the commit
//! page), skipping every subtree that is the same object on both sides.

use super::{RepoError, Repos, TreeIndex, commit_tree, git, resolve_in, tree_index};
use gix::ObjectId;
use hub_protocol::repo::RepoId;
use std::collections::{BTreeSet, HashMap};

impl Repos {
    /// The number of files (blobs) in the whole tree of `revision`. Reads each tree once and
    /// no blob, unlike [`Repos::list_tree`], which reads every file's header.
    pub fn file_count(&self, id: &RepoId, revision: &str) -> Result<u64, RepoError> {
        let repo = self.open_repo(id)?;
        let commit = resolve_in(&repo, revision)?;
        let mut stack: Vec<ObjectId> = vec![commit_tree(&repo, commit)?];
        let mut files = 0u64;
        while let Some(tree) = stack.pop() {
            let tree = repo.find_tree(tree).map_err(git("read tree"))?;
            let decoded = tree.decode().map_err(git("read tree"))?;
            for entry in &decoded.entries {
                if entry.mode.is_tree() {
                    stack.push(entry.oid.to_owned());
                } else if entry.mode.is_blob() {
                    files += 1;
                }
            }
        }
        Ok(files)
    }

    /// The names of the files in folder `dir` (`""`: the root) of `revision`, from its tree
    /// alone (no blob is read); empty when `dir` is not a folder there.
    pub fn file_names(
        &self,
        id: &RepoId,
        revision: &str,
        dir: &str,
    ) -> Result<Vec<String>, RepoError> {
        let repo = self.open_repo(id)?;
        let mut tree = commit_tree(&repo, resolve_in(&repo, revision)?)?;
        let mut trees: HashMap<ObjectId, TreeIndex> = HashMap::new();
        for part in dir.split('/').filter(|p| !p.is_empty()) {
            match tree_index(&repo, &mut trees, tree)?.get(part.as_bytes()) {
                Some(&(mode, oid)) if mode.is_tree() => tree = oid,
                _ => return Ok(Vec::new()),
            }
        }
        let mut names: Vec<String> = tree_index(&repo, &mut trees, tree)?
            .iter()
            .filter(|(_, (mode, _))| mode.is_blob())
            .map(|(name, _)| String::from_utf8_lossy(name).into_owned())
            .collect();
        names.sort();
        Ok(names)
    }

    /// The paths of the files that differ between `old` (`None`: nothing, as for a root
    /// commit) and `new`: added, deleted or changed, sorted. Subtrees that are the same object
    /// on both sides are not read. Stops after `limit` paths; the flag says whether it did.
    pub fn changed_files(
        &self,
        id: &RepoId,
        old: Option<&str>,
        new: &str,
        limit: usize,
    ) -> Result<(Vec<String>, bool), RepoError> {
        let repo = self.open_repo(id)?;
        let new_root = commit_tree(&repo, resolve_in(&repo, new)?)?;
        let old_root = match old {
            Some(old) => Some(commit_tree(&repo, resolve_in(&repo, old)?)?),
            None => None,
        };
        let mut trees: HashMap<ObjectId, TreeIndex> = HashMap::new();
        let mut out = BTreeSet::new();
        let mut stack = vec![(String::new(), old_root, Some(new_root))];
        while let Some((prefix, old, new)) = stack.pop() {
            if old == new {
                continue;
            }
            let index = |tree: Option<ObjectId>, trees: &mut HashMap<ObjectId, TreeIndex>| {
                tree.map(|t| tree_index(&repo, trees, t).cloned())
                    .transpose()
                    .map(Option::unwrap_or_default)
            };
            let a = index(old, &mut trees)?;
            let b = index(new, &mut trees)?;
            trees.clear();
            let names: BTreeSet<&Vec<u8>> = a.keys().chain(b.keys()).collect();
            for name in names {
                let (ea, eb) = (a.get(name), b.get(name));
                if ea == eb {
                    continue;
                }
                let path = format!("{prefix}{}", String::from_utf8_lossy(name));
                let sub = |e: Option<&(gix::objs::tree::EntryMode, ObjectId)>| {
                    e.filter(|(m, _)| m.is_tree()).map(|(_, oid)| *oid)
                };
                let file = |e: Option<&(gix::objs::tree::EntryMode, ObjectId)>| {
                    e.is_some_and(|(m, _)| m.is_blob())
                };
                if file(ea) || file(eb) {
                    out.insert(path.clone());
                    if out.len() >= limit {
                        return Ok((out.into_iter().collect(), true));
                    }
                }
                if sub(ea).is_some() || sub(eb).is_some() {
                    stack.push((format!("{path}/"), sub(ea), sub(eb)));
                }
            }
        }
        Ok((out.into_iter().collect(), false))
    }
}
