//! Append-only records kept in a repository's own git data, under one ref (the hub's
//! discussions: `refs/hub/discussions`): the ref's tree holds one folder per thread, named by
//! its number, and in it one file per entry, `00000000.json`, `00000001.json`, …; each
//! append is one commit (parent: the previous tip). The records are content-addressed like
//! the rest of the repo and replicate with it: the node's signed ref update names the tip,
//! which pins every entry. One ref for all threads keeps the signed update small whatever the
//! number of threads. What an entry means is `hub-core`'s; here entries are bytes.
//!
//! And merging one branch into another (pull requests): a fast-forward when possible, else a
//! merge commit of the changes on each side, refused when both sides changed the same path.

use crate::repos::{
    Author, CommitInfo, RepoError, Repos, branch_ref, commit_info, commit_tree, git,
};
use gix::ObjectId;
use gix::bstr::ByteSlice;
use gix::objs::tree::EntryKind as GitEntryKind;
use gix::refs::transaction::PreviousValue;
use hub_protocol::repo::RepoId;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::PoisonError;

/// Largest entry read back (a bigger blob is not one of ours: left out).
pub const MAX_LOG_ENTRY: u64 = 1024 * 1024;
/// Most entries in one thread.
pub const MAX_LOG_ENTRIES: usize = 10_000;

/// How a merge went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merged {
    /// The target branch moved to the source's tip.
    FastForward(CommitInfo),
    /// A merge commit with both tips as parents.
    Commit(CommitInfo),
    /// Both sides changed these paths since the base: nothing was written.
    Conflicts(Vec<String>),
}

fn signature_of(author: &Author) -> gix::actor::Signature {
    gix::actor::Signature {
        name: author.name.as_str().into(),
        email: author.email.as_str().into(),
        time: gix::date::Time::now_utc(),
    }
}

fn entry_name(index: usize) -> String {
    format!("{index:08}.json")
}

/// A thread of records: its number and its entries, in order.
pub type RecordThread = (u64, Vec<Vec<u8>>);

impl Repos {
    /// Appends `entry` to thread `thread` of the records at `ref_name`, or with `None` to a new
    /// thread numbered one more than the highest; returns the thread's number and the entry's
    /// index in it. An unknown `thread` is `RevisionNotFound`.
    pub fn append_record(
        &self,
        id: &RepoId,
        ref_name: &str,
        thread: Option<u64>,
        entry: &[u8],
        message: &str,
        author: &Author,
    ) -> Result<(u64, usize), RepoError> {
        gix::refs::FullName::try_from(ref_name).map_err(|_| RepoError::InvalidRefName {
            what: "records",
            name: ref_name.chars().take(200).collect(),
        })?;
        let lock = self.lock(id);
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let repo = self.open_repo(id)?;
        let current = match repo.try_find_reference(ref_name).ok().flatten() {
            Some(mut r) => Some(
                r.peel_to_commit()
                    .map_err(git("read records"))?
                    .id()
                    .detach(),
            ),
            None => None,
        };
        let root = match current {
            Some(c) => commit_tree(&repo, c)?,
            None => ObjectId::empty_tree(repo.object_hash()),
        };
        let threads = thread_dirs(&repo, root)?;
        let (num, index) = match thread {
            None => (threads.keys().max().map_or(1, |n| n + 1), 0),
            Some(num) => {
                let Some(dir) = threads.get(&num) else {
                    return Err(RepoError::RevisionNotFound {
                        revision: format!("{ref_name}:{num}"),
                    });
                };
                let count = repo
                    .find_tree(*dir)
                    .map_err(git("read tree"))?
                    .decode()
                    .map_err(git("read tree"))?
                    .entries
                    .len();
                if count >= MAX_LOG_ENTRIES {
                    return Err(RepoError::BadOperation(format!(
                        "thread {num} has reached {MAX_LOG_ENTRIES} entries"
                    )));
                }
                (num, count)
            }
        };
        let blob = repo.write_blob(entry).map_err(git("write blob"))?;
        let mut editor = repo.edit_tree(root).map_err(git("edit tree"))?;
        editor
            .upsert(
                format!("{num}/{}", entry_name(index)).as_str(),
                GitEntryKind::Blob,
                blob,
            )
            .map_err(git("edit tree"))?;
        let tree = editor.write().map_err(git("write tree"))?.detach();
        let signature = signature_of(author);
        let mut buf = gix::date::parse::TimeBuf::default();
        let sig = signature.to_ref(&mut buf);
        let commit = repo
            .new_commit_as(sig, sig, message, tree, current)
            .map_err(git("write commit"))?
            .id;
        let previous = match current {
            Some(c) => PreviousValue::MustExistAndMatch(gix::refs::Target::Object(c)),
            None => PreviousValue::MustNotExist,
        };
        repo.reference(ref_name, commit, previous, "records: append")
            .map_err(git("move records"))?;
        Ok((num, index))
    }

    /// The entries of thread `num` at `ref_name`, in order; `RevisionNotFound` when there is
    /// no such thread.
    pub fn read_records(
        &self,
        id: &RepoId,
        ref_name: &str,
        num: u64,
    ) -> Result<Vec<Vec<u8>>, RepoError> {
        let repo = self.open_repo(id)?;
        let not_found = || RepoError::RevisionNotFound {
            revision: format!("{ref_name}:{num}"),
        };
        let Some(mut r) = repo.try_find_reference(ref_name).ok().flatten() else {
            return Err(not_found());
        };
        let tip = r
            .peel_to_commit()
            .map_err(git("read records"))?
            .id()
            .detach();
        let threads = thread_dirs(&repo, commit_tree(&repo, tip)?)?;
        let dir = *threads.get(&num).ok_or_else(not_found)?;
        entries_of(&repo, dir)
    }

    /// Every thread of the records at `ref_name` with its entries, in order, read with one
    /// open of the repository (none when the ref does not exist).
    pub fn read_all_records(
        &self,
        id: &RepoId,
        ref_name: &str,
    ) -> Result<Vec<RecordThread>, RepoError> {
        let repo = self.open_repo(id)?;
        let Some(mut r) = repo.try_find_reference(ref_name).ok().flatten() else {
            return Ok(Vec::new());
        };
        let tip = r
            .peel_to_commit()
            .map_err(git("read records"))?
            .id()
            .detach();
        let mut out = Vec::new();
        for (num, dir) in thread_dirs(&repo, commit_tree(&repo, tip)?)? {
            out.push((num, entries_of(&repo, dir)?));
        }
        Ok(out)
    }
}

/// The entries (blobs, by name) of one thread's folder, each at most `MAX_LOG_ENTRY` bytes.
fn entries_of(repo: &gix::Repository, dir: ObjectId) -> Result<Vec<Vec<u8>>, RepoError> {
    let tree = repo.find_tree(dir).map_err(git("read tree"))?;
    let decoded = tree.decode().map_err(git("read tree"))?;
    let mut files: Vec<(String, ObjectId)> = decoded
        .entries
        .iter()
        .filter(|e| e.mode.is_blob())
        .map(|e| (e.filename.to_str_lossy().into_owned(), e.oid.to_owned()))
        .collect();
    files.sort();
    let mut out = Vec::with_capacity(files.len());
    for (_, oid) in files.into_iter().take(MAX_LOG_ENTRIES) {
        let size = repo
            .find_header(oid)
            .map_err(git("read blob header"))?
            .size();
        if size <= MAX_LOG_ENTRY {
            out.push(repo.find_blob(oid).map_err(git("read blob"))?.take_data());
        }
    }
    Ok(out)
}

impl Repos {
    /// The thread numbers of the records at `ref_name` (none when the ref does not exist).
    pub fn record_threads(&self, id: &RepoId, ref_name: &str) -> Result<Vec<u64>, RepoError> {
        let repo = self.open_repo(id)?;
        let Some(mut r) = repo.try_find_reference(ref_name).ok().flatten() else {
            return Ok(Vec::new());
        };
        let tip = r
            .peel_to_commit()
            .map_err(git("read records"))?
            .id()
            .detach();
        Ok(thread_dirs(&repo, commit_tree(&repo, tip)?)?
            .into_keys()
            .collect())
    }

    /// The refs under `prefix` (e.g. `refs/pr/`), full name → target, sorted.
    pub fn refs_under(
        &self,
        id: &RepoId,
        prefix: &str,
    ) -> Result<BTreeMap<String, String>, RepoError> {
        let repo = self.open_repo(id)?;
        let platform = repo.references().map_err(git("list references"))?;
        let mut out = BTreeMap::new();
        for r in platform.prefixed(prefix).map_err(git("list references"))? {
            let r = r.map_err(|e| RepoError::Git {
                context: "read reference",
                source: Box::new(e),
            })?;
            if let Some(target) = r.target().try_id() {
                out.insert(r.name().as_bstr().to_string(), target.to_string());
            }
        }
        Ok(out)
    }

    /// Merges branch `source` (a branch name or `refs/pr/N`) into branch `target`, `base`
    /// being the commit `source` started from: a fast-forward when `target` has not moved
    /// past it, else a merge commit (parents: `target`'s tip, `source`'s tip) whose tree is
    /// `target`'s with the paths `source` changed since `base`; when `target` changed one
    /// of them too (differently), nothing is written and the paths are returned. The target
    /// ref moves by compare-and-swap under the repo lock.
    pub fn merge_branch(
        &self,
        id: &RepoId,
        target: &str,
        source: &str,
        base: &str,
        message: &str,
        author: &Author,
    ) -> Result<Merged, RepoError> {
        let target_ref = branch_ref(target)?;
        let source_ref = branch_ref(source)?;
        let lock = self.lock(id);
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let repo = self.open_repo(id)?;
        let tip = |name: &str| -> Result<ObjectId, RepoError> {
            Ok(repo
                .try_find_reference(name)
                .ok()
                .flatten()
                .ok_or_else(|| RepoError::RevisionNotFound {
                    revision: name.to_owned(),
                })?
                .peel_to_commit()
                .map_err(git("read branch head"))?
                .id()
                .detach())
        };
        let head = tip(&target_ref)?;
        let src = tip(&source_ref)?;
        let base = ObjectId::from_hex(base.as_bytes())
            .map_err(|_| RepoError::BadOperation(format!("invalid base commit {base:?}")))?;
        let previous = PreviousValue::MustExistAndMatch(gix::refs::Target::Object(head));
        if head == base || self.is_ancestor(&repo, head, src)? {
            repo.reference(target_ref.as_str(), src, previous, "merge: fast-forward")
                .map_err(git("move branch"))?;
            return Ok(Merged::FastForward(commit_info(&repo, src)?));
        }
        let flat =
            |commit: ObjectId| -> Result<BTreeMap<String, (GitEntryKind, ObjectId)>, RepoError> {
                let mut out = BTreeMap::new();
                flatten(&repo, commit_tree(&repo, commit)?, "", &mut out)?;
                Ok(out)
            };
        let (at_base, at_src, at_head) = (flat(base)?, flat(src)?, flat(head)?);
        let paths: BTreeSet<&String> = at_base.keys().chain(at_src.keys()).collect();
        let mut changes = Vec::new();
        let mut conflicts = Vec::new();
        for path in paths {
            let (b, s, h) = (at_base.get(path), at_src.get(path), at_head.get(path));
            if s == b || s == h {
                continue;
            }
            if h == b {
                changes.push((path.clone(), s.copied()));
            } else {
                conflicts.push(path.clone());
            }
        }
        if !conflicts.is_empty() {
            return Ok(Merged::Conflicts(conflicts));
        }
        let mut editor = repo
            .edit_tree(commit_tree(&repo, head)?)
            .map_err(git("edit tree"))?;
        for (path, entry) in changes {
            match entry {
                Some((kind, oid)) => editor.upsert(path.as_str(), kind, oid),
                None => editor.remove(path.as_str()),
            }
            .map_err(git("edit tree"))?;
        }
        let tree = editor.write().map_err(git("write tree"))?.detach();
        let signature = signature_of(author);
        let mut buf = gix::date::parse::TimeBuf::default();
        let sig = signature.to_ref(&mut buf);
        let commit = repo
            .new_commit_as(sig, sig, message, tree, [head, src])
            .map_err(git("write commit"))?
            .id;
        repo.reference(target_ref.as_str(), commit, previous, "merge")
            .map_err(git("move branch"))?;
        Ok(Merged::Commit(commit_info(&repo, commit)?))
    }

    /// Whether `ancestor` is reachable from `descendant` (bounded walk).
    fn is_ancestor(
        &self,
        repo: &gix::Repository,
        ancestor: ObjectId,
        descendant: ObjectId,
    ) -> Result<bool, RepoError> {
        let walk = repo
            .rev_walk([descendant])
            .all()
            .map_err(|e| RepoError::Git {
                context: "walk history",
                source: Box::new(e),
            })?;
        for info in walk.take(crate::MAX_REACH_WALK) {
            let info = info.map_err(|e| RepoError::Git {
                context: "walk history",
                source: Box::new(e),
            })?;
            if info.id == ancestor {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Every blob (and link) under `tree`, by path.
fn flatten(
    repo: &gix::Repository,
    tree: ObjectId,
    prefix: &str,
    out: &mut BTreeMap<String, (GitEntryKind, ObjectId)>,
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
        if entry.mode.is_tree() {
            flatten(repo, entry.oid.to_owned(), &path, out)?;
        } else {
            out.insert(path, (entry.mode.kind(), entry.oid.to_owned()));
        }
    }
    Ok(())
}

/// The numbered folders of a records tree: number → tree id.
fn thread_dirs(
    repo: &gix::Repository,
    root: ObjectId,
) -> Result<BTreeMap<u64, ObjectId>, RepoError> {
    let tree = repo.find_tree(root).map_err(git("read tree"))?;
    let decoded = tree.decode().map_err(git("read tree"))?;
    Ok(decoded
        .entries
        .iter()
        .filter(|e| e.mode.is_tree())
        .filter_map(|e| Some((e.filename.to_str().ok()?.parse().ok()?, e.oid.to_owned())))
        .collect())
}
