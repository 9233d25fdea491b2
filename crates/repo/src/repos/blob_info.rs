//! A blob's size and LFS pointer, as a tree listing shows them, kept in a bounded process-wide
//! cache by object id. Reading them costs a loose-object open and inflate or two per file
//! (the header, then small blobs whole to spot pointers), which dominated the listing of a
//! large folder; a blob's id names its content, so the answer never goes stale and holds for
//! every repo (a listing has checked access before it gets here).

use super::{RepoError, git};
use crate::lfs::{LfsPointer, MAX_POINTER_SIZE};
use gix::ObjectId;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};

/// Entries kept; past this the cache starts over (about 100 bytes each).
const MAX_ENTRIES: usize = 200_000;

type Cache = Mutex<HashMap<ObjectId, (u64, Option<LfsPointer>)>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The size of blob `oid` and, when it is an LFS pointer, the pointer.
pub(crate) fn blob_info(
    repo: &gix::Repository,
    oid: ObjectId,
) -> Result<(u64, Option<LfsPointer>), RepoError> {
    if let Some(found) = cache()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&oid)
    {
        return Ok(found.clone());
    }
    let size = repo
        .find_header(oid)
        .map_err(git("read blob header"))?
        .size();
    let lfs = if size as usize <= MAX_POINTER_SIZE {
        LfsPointer::parse(&repo.find_blob(oid).map_err(git("read blob"))?.data)
    } else {
        None
    };
    let mut cache = cache().lock().unwrap_or_else(PoisonError::into_inner);
    if cache.len() >= MAX_ENTRIES {
        cache.clear();
    }
    cache.insert(oid, (size, lfs.clone()));
    Ok((size, lfs))
}
