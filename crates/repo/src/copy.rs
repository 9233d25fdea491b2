//! Copying a repository (the Hub's duplicate) and measuring what one takes on disk.

use crate::meta::RepoMeta;
use crate::repos::{RepoError, Repos, io, meta_err};
use hub_protocol::repo::RepoId;
use std::path::Path;
use std::sync::PoisonError;

impl Repos {
    /// Copies `from` (its git objects and refs) to a new repository `to`, private or public,
    /// with `from`'s LFS set, created now. The copy is built under `.tmp/` and renamed into
    /// place, so it appears whole or not at all. Fails with `AlreadyExists` when `to` exists.
    pub fn duplicate(
        &self,
        from: &RepoId,
        to: &RepoId,
        private: bool,
        created_at: i64,
    ) -> Result<(), RepoError> {
        let src = self.git_dir(from);
        let dst = self.git_dir(to);
        if !self.exists(from) {
            return Err(RepoError::NotFound { repo: from.clone() });
        }
        if dst.exists() {
            return Err(RepoError::AlreadyExists { repo: to.clone() });
        }
        let tmp = self.new_tmp();
        {
            // Writers to `from` hold its lock while they move refs: the copy sees one state.
            let lock = self.lock(from);
            let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
            if let Err(e) = copy_dir(&src, &tmp) {
                std::fs::remove_dir_all(&tmp).ok();
                return Err(e);
            }
        }
        let lock = self.lock(to);
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let placed = (|| {
            if dst.exists() {
                return Err(RepoError::AlreadyExists { repo: to.clone() });
            }
            self.meta_db()
                .put(
                    to,
                    RepoMeta {
                        private,
                        created_at,
                    },
                )
                .map_err(meta_err)?;
            self.meta_db().copy_lfs(from, to).map_err(meta_err)?;
            let parent = dst.parent().unwrap_or(self.root());
            std::fs::create_dir_all(parent).map_err(io("create", parent))?;
            std::fs::rename(&tmp, &dst).map_err(io("move repository into", &dst))
        })();
        if let Err(e) = placed {
            std::fs::remove_dir_all(&tmp).ok();
            return Err(e);
        }
        tracing::info!(from = %from, to = %to, "duplicated repository");
        Ok(())
    }

    /// Forgets LFS objects of `id` ([`Repos::add_lfs_objects`]): the repo may no longer
    /// reference or serve them (a permanent LFS file deletion).
    pub fn remove_lfs_objects(&self, id: &RepoId, objects: &[[u8; 32]]) -> Result<(), RepoError> {
        self.meta_db().remove_lfs(id, objects).map_err(meta_err)
    }

    /// Bytes the repository's git directory takes (objects, refs, config), LFS content not
    /// included (that lives in the store).
    pub fn git_size(&self, id: &RepoId) -> Result<u64, RepoError> {
        if !self.exists(id) {
            return Err(RepoError::NotFound { repo: id.clone() });
        }
        let mut total = 0;
        let mut dirs = vec![self.git_dir(id)];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).map_err(io("read", &dir))? {
                let entry = entry.map_err(io("read", &dir))?;
                let meta = entry.metadata().map_err(io("read", &entry.path()))?;
                if meta.is_dir() {
                    dirs.push(entry.path());
                } else {
                    total += meta.len();
                }
            }
        }
        Ok(total)
    }
}

/// Copies a directory tree of plain files (a bare git repository); links are not followed.
fn copy_dir(src: &Path, dst: &Path) -> Result<(), RepoError> {
    std::fs::create_dir_all(dst).map_err(io("create", dst))?;
    for entry in std::fs::read_dir(src).map_err(io("read", src))? {
        let entry = entry.map_err(io("read", src))?;
        let kind = entry.file_type().map_err(io("read", &entry.path()))?;
        let target = dst.join(entry.file_name());
        if kind.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else if kind.is_file() {
            // Lock files of a crashed writer are not state worth copying.
            if entry.file_name().as_encoded_bytes().ends_with(b".lock") {
                continue;
            }
            std::fs::copy(entry.path(), &target).map_err(io("copy", &target))?;
        }
    }
    Ok(())
}
