//! LFS content over `/hubmesh/blocks/1`: serving manifests and chunks of public repos'
//! objects, and fetching what a seeded repo's tips reference, verified from the first byte.
//!
//! Fetching one object (see [`hub_protocol::blocks`] for the messages and bounds): the
//! manifest comes from the first candidate peer whose answer passes
//! [`check_manifest`] against the signed binding (`RefUpdate.lfs`: sha256 → manifest id) and
//! the pointer's size. Chunks the store already holds (an unchanged tensor of an earlier
//! revision) are read locally; the rest is cut into batches that module `schedule` spreads
//! over several peers at once, pipelined (up to 2 requests in flight per peer, 32 MiB in all),
//! each to the best-scored peer (by rate, failures and bad data). Every chunk is checked against its BLAKE3 id
//! ([`check_chunks`]) before it goes anywhere; a peer that sends a bad chunk (or manifest) is
//! logged, counted against it (`PeerInfo::bad_chunks`) and not asked again for this object,
//! and the batch goes to another peer. Each verified batch is appended at once to the
//! object's spool (below); verified chunks, reordered into file order, stream through a
//! bounded channel into [`Store::import_verified`] on a blocking thread, which packs them into
//! blocks with the manifest's boundaries (no second chunking or BLAKE3 pass) and computes the
//! SHA-256; only when it equals the signed one is the object added to the repo's LFS set and
//! made a GC root. A fetch that stops halfway makes the import fail, so nothing partial is
//! ever visible in the store.
//!
//! Resumption: what a repo misses is recomputed from its tips ([`Repos::lfs_pointers`]) each
//! time the replication task syncs it, at start-up too; stored objects are never fetched
//! again. A partially fetched object (a failed fetch, or a node killed mid-fetch) resumes
//! where it stopped: its verified chunks are kept in a spool, `partial/<sha256>.part` in the
//! store's directory (`Spool`: the manifest id, then `u32 index | chunk bytes` records),
//! outside the store's index, so a crash at any point leaves the store consistent. The next
//! fetch re-checks every record against the manifest, cuts the file at the first short,
//! duplicate or bad one, asks peers only for the chunks neither the store nor the spool
//! holds, and feeds the spooled ones to the import (checked again as they are read back).
//! At most the batches in flight at a kill are fetched again. Disk use: a spool is at most
//! its object's size (plus 4 bytes a chunk), exists only for objects being fetched, and goes
//! once the object is stored (or seen stored, after a crash in between); spools not written
//! to for a week, or of objects the store holds, are removed when the next fetch starts.
//!
//! Serving: only objects in the LFS set of a public repo this node hosts or seeds; anything
//! else is `NotFound`, the same answer as an unknown object. Swarming (ADR 0016): while an
//! object of a public repo is being fetched, the verified chunks already held (spool or
//! store) are served too, each checked against its id again as it is read, and
//! `BlockRequest::Have` says which; a fetch asks its candidates that every
//! [`HAVE_INTERVAL`] and hands the rarest batches out first, preferring partial holders to
//! whole ones (module `schedule`).

use crate::error::{LfsError, ScanError};
use crate::stats::Stats;
use hub_net::{GetError, P2p};
use hub_protocol::blocks::{
    BlockRequest, BlockResponse, MAX_BATCH_BYTES, MAX_MANIFEST_LEN, check_chunks, check_manifest,
};
use hub_protocol::manifest::{ChunkRef, Hash, Manifest, Sha256};
use hub_protocol::repo::{RepoId, RepoType};
use hub_protocol::signed::MAX_LFS;
use hub_repo::Repos;
use hub_store::{Store, VerifiedChunk};
use libp2p::PeerId;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, PoisonError};
use tokio::sync::mpsc;

/// Verified chunks waiting for the import thread (at most 64 × 128 KiB in memory).
const IMPORT_QUEUE: usize = 64;
/// How often a fetch asks its providers that do not hold the whole object which chunks
/// they hold now (`BlockRequest::Have`): swarming.
const HAVE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);
/// How long a fetch waits for its first `Have` answers before it hands out batches: so that
/// the first batches go to the holders the scheduler prefers (partial ones, ADR 0016), not
/// to whichever whole holder answered first.
const FIRST_ROUND_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// With nothing to ask for this long, the fetch asks the DHT for more providers.
const ASK_MORE_AFTER: std::time::Duration = std::time::Duration::from_secs(5);
/// With nothing to ask for and no chunk verified for this long, the fetch gives up (it is
/// retried with the repo's next sync, resuming from its spool).
const STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A seed for a fetch's tie-breaks, different per node and per fetch, so that fetchers that
/// start together ask for different parts first.
fn seed(p2p: &P2p) -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(p2p.peer_id())
}

/// One LFS object a repo's tips reference and the store lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Wanted {
    pub sha256: Sha256,
    pub size: u64,
    pub manifest_id: Hash,
}

/// What a repo still lacks, from its tips and the signed binding.
#[derive(Debug, Default)]
pub(crate) struct Missing {
    pub wanted: Vec<Wanted>,
    /// Pointers the signed update binds to no manifest: they cannot be fetched verified.
    pub unbound: usize,
}

/// Whether the store holds `sha256` as the very manifest a signed update binds it to. This,
/// not the object's presence, is what lets a repo adopt an object stored for another one:
/// the store is shared with private repos, and a peer may publish a pointer to any SHA-256 it
/// heard of, but the manifest id (BLAKE3 over the chunk ids) is known only to whoever had
/// the content.
pub(crate) fn stored_as(store: &Store, sha256: &Sha256, manifest_id: Option<&Hash>) -> bool {
    manifest_id.is_some_and(|m| store.manifest_id(sha256).ok().flatten().as_ref() == Some(m))
}

/// The LFS objects the tips of `repo` reference that the repo does not hold (blocking).
/// Objects already stored but not yet in the repo's LFS set (stored for another repo, or
/// fetched before a crash) are added to it here when the binding proves them
/// ([`stored_as`]); otherwise they are fetched, verified, like any other.
pub(crate) fn missing(
    repos: &Repos,
    store: &Store,
    repo: &RepoId,
    lfs: &BTreeMap<Sha256, Hash>,
) -> Result<Missing, ScanError> {
    let repo_error = |e: hub_repo::RepoError| ScanError::Repo(e.to_string());
    let tips = repos.ref_tips(repo).map_err(repo_error)?;
    let pointers = repos
        .lfs_pointers(repo, &tips, MAX_LFS)
        .map_err(repo_error)?;
    let mut out = Missing::default();
    for (sha, size) in pointers {
        let sha256 = Sha256(sha);
        if store
            .has(&sha256)
            .map_err(|e| ScanError::Store(e.to_string()))?
        {
            // Left behind by a crash between the import's commit and the spool's removal.
            remove_spool(store, &sha256);
            if repos.has_lfs_object(repo, &sha).map_err(repo_error)? {
                continue;
            }
            // Stored for another repo: adopted only on proof (the signed update binds it to
            // the very manifest the store holds); otherwise fetched and verified.
            if stored_as(store, &sha256, lfs.get(&sha256)) {
                hub_core::lfs_objects::adopt(repos, store, repo, &sha256)
                    .map_err(|e| ScanError::Adopt(e.to_string()))?;
                continue;
            }
        }
        match lfs.get(&sha256) {
            Some(&manifest_id) => out.wanted.push(Wanted {
                sha256,
                size,
                manifest_id,
            }),
            None => out.unbound += 1,
        }
    }
    Ok(out)
}

/// Whether some public repo this node has lists `sha256` in its LFS set.
fn servable(repos: &Repos, sha256: &Sha256) -> bool {
    [RepoType::Model, RepoType::Dataset, RepoType::Space]
        .into_iter()
        .flat_map(|kind| repos.list(kind).unwrap_or_default())
        .any(|id| {
            repos.has_lfs_object(&id, &sha256.0).unwrap_or(false)
                && repos.meta(&id).is_ok_and(|m| !m.private)
        })
}

/// Answers a block request (blocking). `corrupt_for_tests` flips a bit of the first chunk
/// of every batch: a misbehaving provider, for end-to-end tests only.
pub(crate) fn serve(
    repos: &Repos,
    store: &Store,
    arrivals: &Arrivals,
    request: &BlockRequest,
    corrupt_for_tests: bool,
) -> BlockResponse {
    let Some(sha256) = request.sha256() else {
        // Answered by the replication task, which knows the blob endpoint.
        return BlockResponse::NotFound;
    };
    if !servable(repos, sha256) {
        // Swarming: what a fetch of a public repo's object has verified so far.
        return match arrivals.shared(sha256) {
            Some(arriving) => serve_partial(store, &arriving, request, corrupt_for_tests),
            None => BlockResponse::NotFound,
        };
    }
    let manifest = match cached_manifest(store, sha256) {
        Ok(Some(manifest)) => manifest,
        Ok(None) => return BlockResponse::NotFound,
        Err(error) => {
            tracing::warn!(sha256 = %sha256, %error, "cannot load a manifest to serve");
            return BlockResponse::NotFound;
        }
    };
    match *request {
        BlockRequest::Manifest { .. } => {
            let bytes = manifest.encode();
            if bytes.len() > MAX_MANIFEST_LEN {
                tracing::warn!(sha256 = %sha256, "manifest too large to serve");
                return BlockResponse::Failed;
            }
            BlockResponse::Manifest(bytes)
        }
        BlockRequest::Blobs => BlockResponse::NotFound,
        BlockRequest::Have { .. } => {
            BlockResponse::Have(bitmap(&vec![true; manifest.chunks.len()]))
        }
        BlockRequest::Chunks { first, count, .. } => {
            match read_chunks(store, &manifest, first as usize, count as usize) {
                Ok(mut chunks) if !chunks.is_empty() => {
                    if corrupt_for_tests {
                        chunks[0][0] ^= 1;
                    }
                    BlockResponse::Chunks(chunks)
                }
                Ok(_) => BlockResponse::NotFound,
                Err(error) => {
                    tracing::warn!(sha256 = %sha256, %error, "cannot read chunks to serve");
                    BlockResponse::Failed
                }
            }
        }
    }
}

/// A `Have` bitmap: bit `i % 8` of byte `i / 8` is `held[i]`.
fn bitmap(held: &[bool]) -> Vec<u8> {
    let mut bits = vec![0u8; held.len().div_ceil(8)];
    for (i, _) in held.iter().enumerate().filter(|(_, h)| **h) {
        bits[i / 8] |= 1 << (i % 8);
    }
    bits
}

/// Answers a block request from an object still being fetched (blocking): its manifest
/// (verified against the signed binding when the fetch took it), which chunks are held, and
/// the held run of a requested batch, each chunk read back and checked against its id
/// before it is sent. Nothing else is ever served from a partial object.
fn serve_partial(
    store: &Store,
    arriving: &Arriving,
    request: &BlockRequest,
    corrupt_for_tests: bool,
) -> BlockResponse {
    let manifest = &arriving.manifest;
    match *request {
        BlockRequest::Manifest { .. } => {
            let bytes = manifest.encode();
            if bytes.len() > MAX_MANIFEST_LEN {
                return BlockResponse::Failed;
            }
            BlockResponse::Manifest(bytes)
        }
        BlockRequest::Have { .. } => BlockResponse::Fetching {
            held: bitmap(&arriving.held()),
            coming: bitmap(&arriving.coming()),
        },
        BlockRequest::Blobs => BlockResponse::NotFound,
        BlockRequest::Chunks { first, count, .. } => {
            let mut chunks = Vec::new();
            let mut bytes = 0usize;
            for i in (first as usize..).take(count as usize) {
                if bytes >= MAX_BATCH_BYTES {
                    break;
                }
                let Some(chunk) = arriving.read(store, i) else {
                    break;
                };
                bytes += chunk.len();
                chunks.push(chunk);
            }
            if chunks.is_empty() {
                return BlockResponse::NotFound;
            }
            if corrupt_for_tests {
                chunks[0][0] ^= 1;
            }
            BlockResponse::Chunks(chunks)
        }
    }
}

/// The chunk ids of files recently served over the blob endpoint, by manifest id, most
/// recently used last (a request's ids are checked against them).
#[derive(Debug, Default)]
pub(crate) struct ChunkSets(Vec<(Hash, Arc<HashSet<Hash>>)>);

impl ChunkSets {
    fn of(&mut self, id: Hash, manifest: &Manifest) -> Arc<HashSet<Hash>> {
        if let Some(i) = self.0.iter().position(|(k, _)| *k == id) {
            let entry = self.0.remove(i);
            let set = entry.1.clone();
            self.0.push(entry);
            return set;
        }
        let set: Arc<HashSet<Hash>> = Arc::new(manifest.chunks.iter().map(|c| c.id).collect());
        if self.0.len() == CACHED_MANIFESTS {
            self.0.remove(0);
        }
        self.0.push((id, set.clone()));
        set
    }
}

/// Reads chunks for a request over the blob endpoint (blocking): `ids` must all be chunks
/// of the file whose manifest is `manifest_id`, and that file must be in a public repo held
/// here. The chunks are not hashed here: the blob endpoint checks each against its id when
/// it computes the chunk's bao tree (whose root is the chunk's BLAKE3) to serve it.
pub(crate) fn serve_blobs(
    repos: &Repos,
    store: &Store,
    arrivals: &Arrivals,
    sets: &Mutex<ChunkSets>,
    manifest_id: &Hash,
    ids: &[Hash],
) -> Result<Vec<Vec<u8>>, ServeError> {
    // The manifest cache is shared by every node of the process (tests run several): a
    // manifest found there is the store's only if the store holds its file with that id.
    let stored = match cached_manifest_by_id(store, manifest_id)? {
        Some(manifest) if store.manifest_id(&manifest.sha256)? == Some(*manifest_id) => {
            Some(manifest)
        }
        Some(manifest) if arrivals.shared_by_manifest(manifest_id).is_none() => {
            return Err(ServeError::OtherManifest {
                sha256: manifest.sha256,
                manifest_id: *manifest_id,
            });
        }
        _ => None,
    };
    let Some(manifest) = stored else {
        // Swarming: the chunks a fetch of a public repo's object has verified so far.
        let arriving = arrivals
            .shared_by_manifest(manifest_id)
            .ok_or(ServeError::NoManifest(*manifest_id))?;
        let chunks = &arriving.manifest.chunks;
        return ids
            .iter()
            .map(|id| {
                let mut at = (chunks.iter().enumerate())
                    .filter(|(_, c)| c.id == *id)
                    .peekable();
                if at.peek().is_none() {
                    let sha256 = arriving.manifest.sha256;
                    return Err(ServeError::Stranger { id: *id, sha256 });
                }
                at.find_map(|(i, _)| arriving.read(store, i))
                    .ok_or(ServeError::NotHeld(*id))
            })
            .collect();
    };
    let sha256 = manifest.sha256;
    if !servable(repos, &sha256) {
        return Err(ServeError::NotPublic(sha256));
    }
    let set = sets
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .of(*manifest_id, &manifest);
    if let Some(stranger) = ids.iter().find(|id| !set.contains(id)) {
        return Err(ServeError::Stranger {
            id: *stranger,
            sha256,
        });
    }
    let read = store.read_chunks_unchecked(ids)?;
    read.into_iter()
        .zip(ids)
        .map(|(data, id)| data.ok_or(ServeError::Gone(*id)))
        .collect()
}

/// Why a request over the blob endpoint is not served (the blob endpoint answers it with an
/// error; the text goes to the log).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ServeError {
    #[error("no manifest {0} here")]
    NoManifest(Hash),
    #[error("{sha256} is not stored with manifest {manifest_id}")]
    OtherManifest { sha256: Sha256, manifest_id: Hash },
    #[error("{0} is in no public repo held here")]
    NotPublic(Sha256),
    #[error("{id} is not a chunk of {sha256}")]
    Stranger { id: Hash, sha256: Sha256 },
    #[error("chunk {0} is gone")]
    Gone(Hash),
    #[error("chunk {0} has not arrived here yet")]
    NotHeld(Hash),
    #[error(transparent)]
    Store(#[from] hub_store::StoreError),
}

/// Manifests decoded for serving, most recently used last, keyed by manifest id (a hash of
/// the manifest, so an entry is never stale). A fetch asks for one batch of the same object
/// after another; decoding its manifest (about 36 bytes per chunk) for each would make
/// serving a file quadratic in its size.
static MANIFESTS: Mutex<Vec<(Hash, Arc<Manifest>)>> = Mutex::new(Vec::new());
/// Manifests kept in [`MANIFESTS`] (each at most [`MAX_MANIFEST_LEN`] encoded).
const CACHED_MANIFESTS: usize = 4;

/// The manifest of a stored file, from [`MANIFESTS`] when it is there; `None` when the file
/// is not stored.
fn cached_manifest(
    store: &Store,
    sha256: &Sha256,
) -> Result<Option<Arc<Manifest>>, hub_store::StoreError> {
    let Some(id) = store.manifest_id(sha256)? else {
        return Ok(None);
    };
    if let Some(manifest) = cache_get(&id) {
        return Ok(Some(manifest));
    }
    let (id, manifest) = match store.manifest(sha256) {
        Ok(found) => found,
        // Removed (gc) since the lookup above.
        Err(hub_store::StoreError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(Some(cache_put(id, manifest)))
}

/// A manifest by its id, from [`MANIFESTS`] when it is there; `None` when the store has none
/// by that id.
fn cached_manifest_by_id(
    store: &Store,
    id: &Hash,
) -> Result<Option<Arc<Manifest>>, hub_store::StoreError> {
    if let Some(manifest) = cache_get(id) {
        return Ok(Some(manifest));
    }
    let manifest = store.manifest_by_id(id)?;
    Ok(manifest.map(|m| cache_put(*id, m)))
}

fn cache_get(id: &Hash) -> Option<Arc<Manifest>> {
    let mut cache = MANIFESTS.lock().unwrap_or_else(PoisonError::into_inner);
    let i = cache.iter().position(|(k, _)| k == id)?;
    let entry = cache.remove(i);
    let manifest = entry.1.clone();
    cache.push(entry);
    Some(manifest)
}

fn cache_put(id: Hash, manifest: Manifest) -> Arc<Manifest> {
    let manifest = Arc::new(manifest);
    let mut cache = MANIFESTS.lock().unwrap_or_else(PoisonError::into_inner);
    if !cache.iter().any(|(k, _)| *k == id) {
        if cache.len() == CACHED_MANIFESTS {
            cache.remove(0);
        }
        cache.push((id, manifest.clone()));
    }
    manifest
}

/// Chunks `first..first + count` of a stored file, stopping once the batch reaches
/// [`MAX_BATCH_BYTES`]: read by id (one index lookup per chunk of the batch, not of the
/// file), every byte verified against its chunk's BLAKE3 by the store.
fn read_chunks(
    store: &Store,
    manifest: &Manifest,
    first: usize,
    count: usize,
) -> io::Result<Vec<Vec<u8>>> {
    let Some(chunks) = manifest.chunks.get(first..) else {
        return Ok(Vec::new());
    };
    let mut bytes = 0usize;
    let ids: Vec<Hash> = chunks
        .iter()
        .take(count)
        .take_while(|c| {
            let more = bytes < MAX_BATCH_BYTES;
            bytes += c.len as usize;
            more
        })
        .map(|c| c.id)
        .collect();
    let read = store.read_chunks(&ids).map_err(io::Error::other)?;
    read.into_iter()
        .zip(chunks)
        .map(|(data, chunk)| match data {
            Some(data) if data.len() == chunk.len as usize => Ok(data),
            Some(_) => Err(io::Error::new(io::ErrorKind::InvalidData, "chunk length")),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("chunk {} is gone", chunk.id),
            )),
        })
        .collect()
}

/// What the fetch passes to the import thread, in file order.
enum Piece {
    /// A chunk received from a peer and verified.
    Data(Vec<u8>),
    /// A chunk the store already holds (an unchanged tensor of an earlier revision): read
    /// here, on the import thread, and checked against its id by the store.
    Local,
    /// A run of chunks a spool kept from an earlier, interrupted fetch: (offset in the spool,
    /// id, length) each, read on the import thread and checked against the id again.
    Spooled(Vec<(u64, Hash, u32)>),
}

/// The pieces the fetch sends, in order, as the chunks [`Store::import_verified`] takes. Ends
/// with an error if the sender stops before the last chunk.
struct ChunkFeed {
    rx: mpsc::Receiver<Piece>,
    /// The spool that [`Piece::Spooled`] chunks are read from.
    spool: Option<Arc<File>>,
    /// Spooled chunks still to read, in order.
    spooled: VecDeque<(u64, Hash, u32)>,
}

impl ChunkFeed {
    fn new(rx: mpsc::Receiver<Piece>, spool: Option<Arc<File>>) -> Self {
        Self {
            rx,
            spool,
            spooled: VecDeque::new(),
        }
    }

    /// One chunk read back from the spool, checked against its id (the disk may have changed
    /// it since it was verified on arrival).
    fn read_spooled(&self, at: u64, id: Hash, len: u32) -> io::Result<Vec<u8>> {
        let file = self
            .spool
            .as_ref()
            .ok_or_else(|| io::Error::other("spooled chunk without a spool"))?;
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, at)?;
        if Hash::of(&buf) != id {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("spooled chunk {id} changed on disk"),
            ));
        }
        Ok(buf)
    }
}

impl Iterator for ChunkFeed {
    type Item = io::Result<VerifiedChunk>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((at, id, len)) = self.spooled.pop_front() {
                return Some(self.read_spooled(at, id, len).map(VerifiedChunk::Bytes));
            }
            return Some(match self.rx.blocking_recv() {
                // Checked against its id on arrival (`fetch_batch`, `check_chunks`).
                Some(Piece::Data(chunk)) => Ok(VerifiedChunk::Bytes(chunk)),
                Some(Piece::Spooled(run)) => {
                    self.spooled.extend(run);
                    continue;
                }
                Some(Piece::Local) => Ok(VerifiedChunk::Stored),
                None => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "fetch stopped before the end of the file",
                )),
            });
        }
    }
}

/// Spools of partially fetched objects live in `partial/` of the store's directory (the
/// store itself never looks there).
const SPOOL_DIR: &str = "partial";
/// First bytes of a spool, followed by the manifest id it was written against.
const SPOOL_MAGIC: &[u8; 8] = b"HMSPOOL1";
const SPOOL_HEADER: u64 = 8 + 32;
/// A spool not written to for this long belongs to an object no longer fetched: removed.
const SPOOL_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);
/// `Spool::at` of a chunk the spool does not hold.
const NOT_SPOOLED: u64 = u64::MAX;

fn spool_path(store: &Store, sha256: &Sha256) -> PathBuf {
    store.root().join(SPOOL_DIR).join(format!("{sha256}.part"))
}

/// Removes the spool of `sha256`, if any (the object is stored, or useless).
fn remove_spool(store: &Store, sha256: &Sha256) {
    let path = spool_path(store, sha256);
    match std::fs::remove_file(&path) {
        Ok(()) => tracing::debug!(%sha256, "spool removed"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(path = %path.display(), %error, "cannot remove spool"),
    }
}

/// Removes spools other than `keep`'s that are stale: for an object the store now holds, not
/// written to for [`SPOOL_MAX_AGE`], or not a spool at all (blocking, best effort).
fn prune_spools(store: &Store, keep: &Sha256) {
    let dir = store.root().join(SPOOL_DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let sha = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".part"))
            .and_then(|n| n.parse::<Sha256>().ok());
        let stale = match sha {
            Some(sha) if sha == *keep => false,
            Some(sha) => {
                store.has(&sha).unwrap_or(false)
                    || entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > SPOOL_MAX_AGE)
            }
            None => true,
        };
        if stale {
            tracing::info!(path = %path.display(), "removing stale spool");
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// The verified chunks of one object received so far, kept across restarts:
/// `partial/<sha256>.part` holds a header (magic, manifest id) and then records of
/// `u32 chunk index (LE) | chunk bytes` (the length is the manifest's), in arrival order.
/// Nothing in it is trusted: [`Spool::open`] re-checks every record against the manifest
/// and cuts the file at the first short, duplicate or bad one, and the import re-checks each
/// chunk it reads back. Written without fsync: after a power loss the check drops whatever
/// did not reach the disk.
struct Spool {
    file: Arc<File>,
    /// Where the next record goes.
    end: u64,
    /// Per manifest chunk: offset of its bytes in the file, or [`NOT_SPOOLED`].
    at: Vec<u64>,
    /// A write failed: what is held stays readable, nothing more is written.
    failed: bool,
}

impl Spool {
    /// Opens (or creates) the spool of `manifest`'s object and keeps its good records.
    fn open(store: &Store, manifest_id: &Hash, manifest: &Manifest) -> io::Result<Self> {
        let path = spool_path(store, &manifest.sha256);
        std::fs::create_dir_all(path.parent().unwrap_or(store.root()))?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        // In use again: not stale, whatever its age (see `prune_spools`).
        let _ = file.set_modified(std::time::SystemTime::now());
        let len = file.metadata()?.len();
        let mut header = [0u8; SPOOL_HEADER as usize];
        let same = len >= SPOOL_HEADER
            && file.read_exact_at(&mut header, 0).is_ok()
            && header[..8] == SPOOL_MAGIC[..]
            && header[8..] == manifest_id.0;
        let mut at = vec![NOT_SPOOLED; manifest.chunks.len()];
        let mut end = SPOOL_HEADER;
        if same {
            let mut buf = Vec::new();
            let mut index = [0u8; 4];
            while file.read_exact_at(&mut index, end).is_ok() {
                let i = u32::from_le_bytes(index) as usize;
                let Some(chunk) = manifest.chunks.get(i) else {
                    break;
                };
                if at[i] != NOT_SPOOLED {
                    break;
                }
                buf.resize(chunk.len as usize, 0);
                if file.read_exact_at(&mut buf, end + 4).is_err() || Hash::of(&buf) != chunk.id {
                    break;
                }
                at[i] = end + 4;
                end += 4 + u64::from(chunk.len);
            }
            if end < len {
                tracing::info!(sha256 = %manifest.sha256, kept = end, dropped = len - end, "spool cut at its first bad record");
            }
        } else {
            header[..8].copy_from_slice(SPOOL_MAGIC);
            header[8..].copy_from_slice(&manifest_id.0);
            file.write_all_at(&header, 0)?;
        }
        if end != len {
            file.set_len(end)?;
        }
        Ok(Self {
            file: Arc::new(file),
            end,
            at,
            failed: false,
        })
    }

    /// Chunks held, of all in the manifest.
    fn held(&self) -> usize {
        self.at.iter().filter(|&&a| a != NOT_SPOOLED).count()
    }

    /// Appends the verified chunks `first..` it lacks. On an error the file is cut back to
    /// its last whole record and nothing more is written.
    fn append(&mut self, first: u32, chunks: &[Vec<u8>]) -> io::Result<()> {
        let mut records = Vec::with_capacity(chunks.iter().map(|c| 4 + c.len()).sum::<usize>());
        let mut offsets = Vec::new();
        for (i, chunk) in (first as usize..).zip(chunks) {
            if self.at.get(i) != Some(&NOT_SPOOLED) {
                continue;
            }
            records.extend_from_slice(&(i as u32).to_le_bytes());
            offsets.push((i, self.end + records.len() as u64));
            records.extend_from_slice(chunk);
        }
        if records.is_empty() || self.failed {
            return Ok(());
        }
        if let Err(error) = self.file.write_all_at(&records, self.end) {
            self.failed = true;
            let _ = self.file.set_len(self.end);
            return Err(error);
        }
        for (i, offset) in offsets {
            self.at[i] = offset;
        }
        self.end += records.len() as u64;
        Ok(())
    }
}

/// A fetch in progress as readers see it, so that a download can stream the object while its
/// chunks arrive: chunks below `frontier` are verified and readable, from the store (`local`)
/// or from the spool (`at`). Registered in [`Arrivals`] while [`fetch_object`] runs with a
/// spool; the fetch alone holds the sending side of `frontier`, so when it ends, however it
/// ends, readers waiting for more see it.
#[derive(Clone)]
pub(crate) struct Arriving {
    manifest: Arc<Manifest>,
    /// The signed manifest id the manifest was checked against.
    manifest_id: Hash,
    /// Whether its verified chunks may be served to peers (the object is fetched for a
    /// public repo): swarming.
    share: bool,
    local: Arc<Vec<bool>>,
    /// The spool, open: its records stay readable after the file is removed at the end.
    spool: Arc<File>,
    /// Per chunk, its offset in the spool (or [`NOT_SPOOLED`]), as batches are spooled.
    at: Arc<Mutex<Vec<u64>>>,
    /// Per chunk, whether a request for it is in flight (told to peers with what is held,
    /// so they leave it to this fetch rather than ask the origin for it too).
    coming: Arc<Mutex<Vec<bool>>>,
    /// Chunks verified and readable, in order from the first.
    frontier: tokio::sync::watch::Receiver<u32>,
}

/// The objects being fetched now, by SHA-256 (at most one fetch per object runs at a time).
#[derive(Default)]
pub(crate) struct Arrivals {
    map: Mutex<BTreeMap<Sha256, Arriving>>,
    /// Woken whenever a fetch registers, for downloads waiting for theirs.
    added: tokio::sync::Notify,
}

impl Arriving {
    /// Which chunks are held here, verified: in the store, or in the spool.
    fn held(&self) -> Vec<bool> {
        let at = self.at.lock().unwrap_or_else(PoisonError::into_inner);
        (self.local.iter().zip(at.iter()))
            .map(|(&local, &at)| local || at != NOT_SPOOLED)
            .collect()
    }

    /// Which chunks a request is in flight for.
    fn coming(&self) -> Vec<bool> {
        self.coming
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Marks chunks `range` as asked for (`true`) or no longer (`false`).
    fn set_coming(&self, range: std::ops::Range<usize>, on: bool) {
        let mut coming = self.coming.lock().unwrap_or_else(PoisonError::into_inner);
        let end = range.end.min(coming.len());
        if let Some(flags) = coming.get_mut(range.start.min(end)..end) {
            flags.fill(on);
        }
    }

    /// Chunk `i`, if held, read back and checked against its id (blocking).
    fn read(&self, store: &Store, i: usize) -> Option<Vec<u8>> {
        let chunk = self.manifest.chunks.get(i)?;
        if self.local[i] {
            return store.read_chunks(&[chunk.id]).ok()?.pop().flatten();
        }
        let at = self.at.lock().unwrap_or_else(PoisonError::into_inner)[i];
        let mut buf = vec![0u8; chunk.len as usize];
        (at != NOT_SPOOLED
            && self.spool.read_exact_at(&mut buf, at).is_ok()
            && Hash::of(&buf) == chunk.id)
            .then_some(buf)
    }

    /// Waits until the first chunk is verified and readable (`true`), or the fetch ended
    /// without it, or `deadline` passed (`false`): a download commits to streaming only once
    /// something good has arrived, so a fetch that cannot start is still a clean 503.
    pub(crate) async fn started(&self, deadline: tokio::time::Instant) -> bool {
        let mut frontier = self.frontier.clone();
        tokio::time::timeout_at(deadline, frontier.wait_for(|&n| n > 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

impl Arrivals {
    pub(crate) fn get(&self, sha256: &Sha256) -> Option<Arriving> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(sha256).cloned()
    }

    /// The fetch of `sha256`, if one runs and may share what it holds.
    fn shared(&self, sha256: &Sha256) -> Option<Arriving> {
        self.get(sha256).filter(|a| a.share)
    }

    /// The fetch of the object whose signed manifest id is `id`, if one runs and may share.
    fn shared_by_manifest(&self, id: &Hash) -> Option<Arriving> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.values()
            .find(|a| a.share && a.manifest_id == *id)
            .cloned()
    }

    /// The fetch of `sha256` once it registers; `None` when `done` resolves first without
    /// one (the fetch ended: stored already, or it ran without a spool) or at `deadline`.
    pub(crate) async fn wait_for(
        &self,
        sha256: &Sha256,
        done: impl std::future::Future,
        deadline: tokio::time::Instant,
    ) -> Option<Arriving> {
        let mut done = std::pin::pin!(done);
        loop {
            // Armed before the check, so a registration in between is not missed.
            let mut added = std::pin::pin!(self.added.notified());
            added.as_mut().enable();
            if let Some(arriving) = self.get(sha256) {
                return Some(arriving);
            }
            tokio::select! {
                () = &mut added => {}
                _ = &mut done => return self.get(sha256),
                () = tokio::time::sleep_until(deadline) => return None,
            }
        }
    }

    fn register(&self, sha256: Sha256, arriving: Arriving) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.insert(sha256, arriving);
        drop(map);
        self.added.notify_waiters();
    }
}

impl std::fmt::Debug for Arrivals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Arrivals")
    }
}

/// Takes an object out of [`Arrivals`] when its fetch ends, however it ends.
struct Registered<'a> {
    arrivals: &'a Arrivals,
    sha256: Sha256,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let mut map = self
            .arrivals
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.remove(&self.sha256);
    }
}

/// Streams an object that is still arriving, in order, from its first byte: each chunk as
/// soon as it is verified and readable (from the store, or the spool, where its BLAKE3 is
/// checked again). Runs on a blocking thread; ends with an error when the fetch fails or a
/// chunk cannot be read, so the client sees a short body, never a wrong byte.
pub(crate) fn stream_arriving(
    arriving: Arriving,
    store: Store,
) -> mpsc::Receiver<io::Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(8);
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut frontier = arriving.frontier.clone();
        let total = arriving.manifest.chunks.len() as u32;
        for i in 0..total {
            while *frontier.borrow_and_update() <= i {
                if runtime.block_on(frontier.changed()).is_err() {
                    let _ = tx.blocking_send(Err(io::Error::other(
                        "the fetch from peers stopped before the object was complete",
                    )));
                    return;
                }
            }
            let chunk = &arriving.manifest.chunks[i as usize];
            let bytes = if arriving.local[i as usize] {
                match store.read_chunks(&[chunk.id]) {
                    Ok(mut found) => found.pop().flatten(),
                    Err(_) => None,
                }
            } else {
                let at = arriving.at.lock().unwrap_or_else(PoisonError::into_inner)[i as usize];
                let mut buf = vec![0u8; chunk.len as usize];
                (at != NOT_SPOOLED
                    && arriving.spool.read_exact_at(&mut buf, at).is_ok()
                    && Hash::of(&buf) == chunk.id)
                    .then_some(buf)
            };
            let item = bytes.ok_or_else(|| io::Error::other(format!("chunk {i} unreadable")));
            let failed = item.is_err();
            if tx.blocking_send(item).is_err() || failed {
                return;
            }
        }
    });
    rx
}

/// What one batch request brought.
enum Batch {
    /// The chunks, and whether they were verified on the way (the blob endpoint checks
    /// every 16 KiB group; `/hubmesh/blocks/1` answers are checked by the caller).
    Chunks(Vec<Vec<u8>>, bool),
    /// The peer sent data that failed verification after `bytes` of good chunk data.
    Bad { bytes: u64, reason: String },
    /// No answer, a refusal or an error.
    Failed(String),
}

/// Asks `peer` for chunks `first..first + wanted.len()` of a file: over the blob endpoint
/// when both sides run one (learning where the peer's listens on first use), else over
/// `/hubmesh/blocks/1`.
async fn fetch_batch(
    p2p: &P2p,
    stats: &Stats,
    peer: PeerId,
    sha256: Sha256,
    manifest_id: Hash,
    first: u32,
    wanted: &[ChunkRef],
) -> Batch {
    if let Some(blobs) = p2p.blobs() {
        let addrs = p2p.blob_addrs_of(blobs, peer).await;
        if !addrs.is_empty() {
            return match blobs.get(peer, &addrs, &manifest_id, wanted).await {
                Ok(chunks) => {
                    let bytes: u64 = chunks.iter().map(|c| c.len() as u64).sum();
                    stats
                        .blob_bytes_received
                        .fetch_add(bytes, Ordering::Relaxed);
                    Batch::Chunks(chunks, true)
                }
                Err(GetError::Bad { bytes, reason }) => Batch::Bad { bytes, reason },
                Err(GetError::Failed(reason)) => Batch::Failed(reason),
            };
        }
    }
    let request = BlockRequest::Chunks {
        sha256,
        first,
        count: wanted.len() as u32,
    };
    match p2p.fetch_blocks(peer, request).await {
        Ok(BlockResponse::Chunks(chunks)) if !chunks.is_empty() => Batch::Chunks(chunks, false),
        Ok(other) => Batch::Failed(format!("{other:?}")),
        Err(error) => Batch::Failed(error.to_string()),
    }
}

/// Records a bad answer from `peer`.
fn penalise(stats: &Stats, peer: PeerId, sha256: &Sha256, what: &dyn std::fmt::Display) {
    tracing::warn!(%peer, %sha256, reason = %what, "peer sent data that failed verification; asking another peer");
    stats.chunks_rejected.fetch_add(1, Ordering::Relaxed);
    stats.peers.update(peer, |p| p.bad_chunks += 1);
}

/// Fetches one object from `peers` (in order of preference), verified, into `store`: the
/// chunks the store lacks, in batches spread over several peers at once (module `schedule`).
/// `more` is asked once for further candidates when those run out. Returns the bytes of
/// chunks received for it. `share`: whether what has arrived may be served meanwhile (swarming,
/// ADR 0016; only for a public repo).
// The driver's context split into what a fetch uses, plus the object and its candidates.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn fetch_object<F, Fut>(
    p2p: &P2p,
    stats: &Arc<Stats>,
    store: &Store,
    arrivals: &Arrivals,
    wanted: Wanted,
    share: bool,
    peers: &[PeerId],
    more: F,
) -> Result<u64, LfsError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Vec<PeerId>>,
{
    let sha256 = wanted.sha256;
    let mut candidates: Vec<PeerId> = peers.to_vec();
    let mut more = Some(more);
    let mut manifest = None;
    let mut i = 0;
    while manifest.is_none() {
        if i == candidates.len() {
            match more.take() {
                Some(more) => {
                    let extra = more().await;
                    candidates.extend(extra.into_iter().filter(|p| !peers.contains(p)));
                    if i == candidates.len() {
                        break;
                    }
                }
                None => break,
            }
        }
        let peer = candidates[i];
        match p2p
            .fetch_blocks(peer, BlockRequest::Manifest { sha256 })
            .await
        {
            Ok(BlockResponse::Manifest(bytes)) => {
                match check_manifest(&bytes, &wanted.manifest_id, &sha256, wanted.size) {
                    Ok(m) => {
                        // The peer that had the manifest is asked for chunks first.
                        candidates.swap(0, i);
                        manifest = Some(m);
                        continue;
                    }
                    Err(error) => {
                        penalise(stats, peer, &sha256, &error);
                        candidates.remove(i);
                        continue;
                    }
                }
            }
            Ok(other) => tracing::debug!(%peer, %sha256, ?other, "no manifest from peer"),
            Err(error) => tracing::debug!(%peer, %sha256, %error, "manifest request failed"),
        }
        i += 1;
    }
    let manifest = manifest.ok_or(LfsError::NoManifest(sha256))?;

    // Which chunks are here already: in the store, or in the spool of an earlier try.
    let checker = store.clone();
    let manifest_id = wanted.manifest_id;
    let (manifest, local, mut spool) = tokio::task::spawn_blocking(move || {
        let ids: Vec<Hash> = manifest.chunks.iter().map(|c| c.id).collect();
        let local = checker.has_chunks(&ids);
        prune_spools(&checker, &manifest.sha256);
        let spool = Spool::open(&checker, &manifest_id, &manifest)
            .inspect_err(|error| {
                tracing::warn!(sha256 = %manifest.sha256, %error, "cannot open spool; fetching without one");
            })
            .ok();
        (manifest, local, spool)
    })
    .await
    .map_err(|e| LfsError::Task {
        what: "chunk lookup",
        reason: e.to_string(),
    })?;
    let local = local.map_err(|e| LfsError::LookUp {
        sha256,
        reason: e.to_string(),
    })?;
    let spooled = |i: usize| spool.as_ref().is_some_and(|s| s.at[i] != NOT_SPOOLED);
    let have: Vec<bool> = (0..local.len()).map(|i| local[i] || spooled(i)).collect();
    if let Some(s) = spool.as_ref().filter(|s| s.held() > 0) {
        tracing::info!(%sha256, chunks = s.held(), of = local.len(), "resuming from the spool of an earlier fetch");
    }
    // Readers may stream the object while it arrives (chunks in the store or the spool).
    let (frontier_tx, frontier_rx) = tokio::sync::watch::channel(0u32);
    let arriving = spool.as_ref().map(|s| Arriving {
        manifest: Arc::new(manifest.clone()),
        manifest_id,
        share,
        local: Arc::new(local.clone()),
        spool: s.file.clone(),
        at: Arc::new(Mutex::new(s.at.clone())),
        coming: Arc::new(Mutex::new(vec![false; local.len()])),
        frontier: frontier_rx,
    });
    let _registered = arriving.as_ref().map(|a| {
        arrivals.register(sha256, a.clone());
        Registered { arrivals, sha256 }
    });
    let lens: Vec<u32> = manifest.chunks.iter().map(|c| c.len).collect();
    let batches = crate::schedule::plan_swarming(&lens, &have);
    // Swarming (ADR 0016): peers' holdings come from `Have` polls; with a spool, verified
    // batches past the reorder window wait there, so the whole object is the window.
    let window = if spool.is_some() {
        u32::MAX
    } else {
        crate::schedule::WINDOW_CHUNKS
    };
    let mut scheduler =
        crate::schedule::Scheduler::swarming(&batches, &candidates, seed(p2p), window);
    // A poll's answer: `None`, no usable answer; `Some(None)`, it neither holds nor fetches
    // the object; else the chunks it holds and those it has coming.
    type Polled = Option<Option<(Vec<u8>, Vec<u8>)>>;
    let mut polls: tokio::task::JoinSet<(PeerId, Polled)> = tokio::task::JoinSet::new();
    let mut polling: HashSet<PeerId> = HashSet::new();
    let mut next_poll = tokio::time::Instant::now();
    let mut progress_at = tokio::time::Instant::now();
    // Batches are handed out once every first `Have` answer is in (or after
    // `FIRST_ROUND_WAIT`), so the first choice sees who holds what.
    let first_round_until = progress_at + FIRST_ROUND_WAIT;
    let mut first_round = true;
    // Providers whose last `Have` answer was a bitmap: they hold the object or are fetching
    // it. With none of them usable, no poll outstanding and nothing in flight, nothing
    // can come: the fetch fails at once rather than after `STALL_TIMEOUT`.
    let mut answering: HashSet<PeerId> = HashSet::new();

    let (tx, rx) = mpsc::channel(IMPORT_QUEUE);
    let feed = ChunkFeed::new(rx, spool.as_ref().map(|s| s.file.clone()));
    let importer = store.clone();
    let to_import = manifest.clone();
    let import = tokio::task::spawn_blocking(move || {
        let imported = importer.import_verified(&to_import, feed);
        if imported.is_ok() {
            // Stored (or, with a wrong SHA-256, useless): the spool has served its purpose.
            remove_spool(&importer, &sha256);
        }
        imported
    });
    let total = manifest.chunks.len() as u32;
    let mut frontier = 0u32;
    let mut received = 0u64;
    // Verified batches that arrived ahead of the frontier.
    let mut ready: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
    // Each batch runs as its own task, so that a connection's data keeps being read (and its
    // flow-control window reopened) while this loop waits for the spool or the import.
    let mut flying = tokio::task::JoinSet::new();
    let mut failure = None;
    'fetch: loop {
        // Pass on, in order, everything up to the first chunk still to come.
        while frontier < total {
            let piece = if local[frontier as usize] {
                frontier += 1;
                vec![Piece::Local]
            } else if let Some(chunks) = ready.remove(&frontier) {
                frontier += chunks.len() as u32;
                chunks.into_iter().map(Piece::Data).collect()
            } else if let Some(s) = spool
                .as_ref()
                .filter(|s| s.at[frontier as usize] != NOT_SPOOLED)
            {
                // The whole run at once: the import thread reads it at its own pace.
                let mut run = Vec::new();
                while frontier < total
                    && !local[frontier as usize]
                    && s.at[frontier as usize] != NOT_SPOOLED
                    && !ready.contains_key(&frontier)
                {
                    let chunk = &manifest.chunks[frontier as usize];
                    run.push((s.at[frontier as usize], chunk.id, chunk.len));
                    frontier += 1;
                }
                vec![Piece::Spooled(run)]
            } else {
                break;
            };
            for piece in piece {
                if tx.send(piece).await.is_err() {
                    // The import stopped early; its error says why.
                    break 'fetch;
                }
            }
            frontier_tx.send_replace(frontier);
        }
        if frontier == total {
            break;
        }
        let now = tokio::time::Instant::now();
        if now >= next_poll {
            next_poll = now + HAVE_INTERVAL;
            for peer in scheduler.partial_providers() {
                if polling.insert(peer) {
                    let p2p = p2p.clone();
                    polls.spawn(async move {
                        let answer = p2p.fetch_blocks(peer, BlockRequest::Have { sha256 }).await;
                        // `Some(None)`: it neither holds nor fetches the object.
                        let bits = match answer {
                            Ok(BlockResponse::Have(bits)) => Some(Some((bits, Vec::new()))),
                            Ok(BlockResponse::Fetching { held, coming }) => {
                                Some(Some((held, coming)))
                            }
                            Ok(BlockResponse::NotFound) => Some(None),
                            _ => None,
                        };
                        (peer, bits)
                    });
                }
            }
        }
        if first_round && (polls.is_empty() || now >= first_round_until) {
            first_round = false;
        }
        while let Some(a) = (!first_round)
            .then(|| scheduler.next(std::time::Instant::now(), frontier))
            .flatten()
        {
            let (p2p, stats) = (p2p.clone(), stats.clone());
            let range = a.batch.first as usize..(a.batch.first + a.batch.count) as usize;
            let wanted = manifest.chunks[range.clone()].to_vec();
            tracing::trace!(peer = %a.peer, %sha256, first = a.batch.first, count = a.batch.count, "asking for a batch");
            if let Some(arriving) = &arriving {
                arriving.set_coming(range.clone(), true);
            }
            flying.spawn(async move {
                let got = fetch_batch(
                    &p2p,
                    &stats,
                    a.peer,
                    sha256,
                    manifest_id,
                    a.batch.first,
                    &wanted,
                );
                (a, got.await)
            });
        }
        if !first_round && scheduler.in_flight() == 0 {
            // Nothing to ask for now: nobody usable, or nobody holds what is missing yet.
            let stalled = now.duration_since(progress_at);
            // Nobody holds or fetches the object: waiting cannot help.
            let hopeless = polls.is_empty()
                && !scheduler
                    .usable_providers()
                    .any(|peer| answering.contains(&peer));
            if (scheduler.is_stuck() || hopeless || stalled >= ASK_MORE_AFTER)
                && let Some(more) = more.take()
            {
                for peer in more().await {
                    scheduler.add_provider(peer);
                }
                next_poll = tokio::time::Instant::now();
                first_round = true;
                continue;
            }
            if scheduler.is_stuck() || hopeless || stalled >= STALL_TIMEOUT {
                tracing::debug!(%sha256, frontier, hopeless, ?stalled, "nothing more to fetch from");
                failure = Some(LfsError::NoChunks { sha256, frontier });
                break;
            }
        }
        let joined = tokio::select! {
            joined = flying.join_next(), if !flying.is_empty() => joined,
            Some(polled) = polls.join_next(), if !polls.is_empty() => {
                if let Ok((peer, bits)) = polled {
                    polling.remove(&peer);
                    match bits {
                        Some(Some((bits, coming))) => {
                            let holds = crate::schedule::Holds::from_bitmap(&bits, total as usize);
                            tracing::trace!(%peer, %sha256, held = bits.iter().map(|b| b.count_ones()).sum::<u32>(), coming = coming.iter().map(|b| b.count_ones()).sum::<u32>(), "have");
                            scheduler.set_holds(peer, holds);
                            let coming = (0..total as usize)
                                .map(|i| coming.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0))
                                .collect();
                            scheduler.set_coming(peer, coming);
                            answering.insert(peer);
                        }
                        Some(None) => {
                            tracing::trace!(%peer, %sha256, "neither holds nor fetches");
                            answering.remove(&peer);
                            scheduler.set_coming(peer, Vec::new());
                        }
                        None => {
                            // Gone or failing: what it had coming may never come.
                            answering.remove(&peer);
                            scheduler.set_coming(peer, Vec::new());
                        }
                    }
                }
                continue;
            }
            () = tokio::time::sleep_until(next_poll) => continue,
        };
        let (a, result) = match joined {
            Some(Ok(done)) => done,
            Some(Err(error)) => {
                failure = Some(LfsError::Task {
                    what: "chunk batch",
                    reason: error.to_string(),
                });
                break;
            }
            None => continue,
        };
        let now = std::time::Instant::now();
        let peer = a.peer;
        let outcome = match result {
            Batch::Chunks(mut chunks, verified) => {
                chunks.truncate(a.batch.count as usize);
                let bytes: u64 = chunks.iter().map(|c| c.len() as u64).sum();
                received += bytes;
                stats
                    .chunk_bytes_received
                    .fetch_add(bytes, Ordering::Relaxed);
                stats
                    .peers
                    .update(peer, |p| p.chunk_bytes_received += bytes);
                let checked = if verified {
                    Ok(())
                } else {
                    check_chunks(&manifest, u64::from(a.batch.first), &chunks)
                };
                match checked {
                    Ok(()) => {
                        progress_at = tokio::time::Instant::now();
                        let n = chunks.len() as u32;
                        // Kept on disk at once, so that a restart does not fetch them again.
                        let chunks = match spool.take() {
                            Some(mut s) => {
                                let first = a.batch.first;
                                let written = tokio::task::spawn_blocking(move || {
                                    let result = s.append(first, &chunks);
                                    (s, chunks, result)
                                })
                                .await;
                                match written {
                                    Ok((s, chunks, result)) => {
                                        if let Err(error) = result {
                                            tracing::warn!(%sha256, %error, "cannot write spool; a restart fetches these chunks again");
                                        }
                                        if let Some(a) = &arriving {
                                            let mut at =
                                                a.at.lock().unwrap_or_else(PoisonError::into_inner);
                                            let range = first as usize
                                                ..(first as usize + chunks.len()).min(at.len());
                                            at[range.clone()].copy_from_slice(&s.at[range]);
                                        }
                                        spool = Some(s);
                                        chunks
                                    }
                                    Err(error) => {
                                        failure = Some(LfsError::Task {
                                            what: "spool",
                                            reason: error.to_string(),
                                        });
                                        break 'fetch;
                                    }
                                }
                            }
                            None => chunks,
                        };
                        // Far ahead of the frontier, a spooled batch waits on disk only.
                        let near =
                            a.batch.first < frontier.saturating_add(crate::schedule::WINDOW_CHUNKS);
                        let spooled = spool.as_ref().is_some_and(|s| {
                            s.at[a.batch.first as usize..][..chunks.len()]
                                .iter()
                                .all(|&at| at != NOT_SPOOLED)
                        });
                        if near || !spooled {
                            ready.insert(a.batch.first, chunks);
                        }
                        crate::schedule::Outcome::Served { chunks: n, bytes }
                    }
                    Err(error) => {
                        penalise(stats, peer, &sha256, &error);
                        crate::schedule::Outcome::Bad
                    }
                }
            }
            Batch::Bad { bytes, reason } => {
                received += bytes;
                stats
                    .chunk_bytes_received
                    .fetch_add(bytes, Ordering::Relaxed);
                stats
                    .peers
                    .update(peer, |p| p.chunk_bytes_received += bytes);
                penalise(stats, peer, &sha256, &reason);
                crate::schedule::Outcome::Bad
            }
            Batch::Failed(error) => {
                tracing::debug!(%peer, %sha256, %error, "chunk request failed");
                crate::schedule::Outcome::Failed
            }
        };
        if let Some(arriving) = &arriving {
            let range = a.batch.first as usize..(a.batch.first + a.batch.count) as usize;
            arriving.set_coming(range, false);
        }
        scheduler.finish(a.id, now, outcome);
    }
    drop(tx);
    let imported = import.await.map_err(|e| LfsError::Task {
        what: "import",
        reason: e.to_string(),
    })?;
    if let Some(failure) = failure {
        return Err(failure);
    }
    let info = imported.map_err(|e| LfsError::Import {
        sha256,
        reason: e.to_string(),
    })?;
    if info.sha256 != sha256 {
        // Unreachable unless the publisher signed a manifest whose chunks are not the file
        // it names; the import is unreferenced and goes at the next gc.
        return Err(LfsError::Mismatch {
            sha256,
            got: info.sha256,
        });
    }
    if info.manifest_id != wanted.manifest_id {
        tracing::debug!(%sha256, "local chunking differs from the publisher's");
    }
    Ok(received)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_protocol::blocks::MAX_CHUNKS_PER_REQUEST;
    use hub_repo::{Author, CommitRequest, FileContent, LfsPointer, Operation};

    #[test]
    fn serving_is_limited_to_public_repos_and_batches_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let repos = Repos::open(dir.path().join("repos")).unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let info = store.import_reader(&data[..]).unwrap();
        let sha = info.sha256;
        let author = Author::new("alice", "a@hubmesh.test");
        let public = RepoId::parse(RepoType::Model, "alice/pub").unwrap();
        let private = RepoId::parse(RepoType::Model, "alice/priv").unwrap();
        repos.create_with(&private, &author, true).unwrap();
        repos.add_lfs_objects(&private, &[sha.0]).unwrap();

        let manifest_req = BlockRequest::Manifest { sha256: sha };
        // Only a private repo has it: not served.
        assert_eq!(
            serve(&repos, &store, &Arrivals::default(), &manifest_req, false),
            BlockResponse::NotFound
        );
        repos.create(&public, &author).unwrap();
        repos.add_lfs_objects(&public, &[sha.0]).unwrap();
        let BlockResponse::Manifest(bytes) =
            serve(&repos, &store, &Arrivals::default(), &manifest_req, false)
        else {
            panic!("manifest expected");
        };
        let manifest = check_manifest(&bytes, &info.manifest_id, &sha, data.len() as u64).unwrap();

        // All chunks, batch by batch, verify and rebuild the file.
        let mut rebuilt = Vec::new();
        while rebuilt.len() < data.len() {
            let first = manifest
                .chunks
                .iter()
                .scan(0u64, |at, c| {
                    let here = *at;
                    *at += u64::from(c.len);
                    Some(here)
                })
                .position(|at| at == rebuilt.len() as u64)
                .unwrap();
            let request = BlockRequest::Chunks {
                sha256: sha,
                first: first as u32,
                count: MAX_CHUNKS_PER_REQUEST,
            };
            let BlockResponse::Chunks(chunks) =
                serve(&repos, &store, &Arrivals::default(), &request, false)
            else {
                panic!("chunks expected");
            };
            let bytes: usize = chunks.iter().map(Vec::len).sum();
            assert!(bytes < MAX_BATCH_BYTES + 128 * 1024);
            check_chunks(&manifest, first as u64, &chunks).unwrap();
            rebuilt.extend(chunks.concat());
        }
        assert_eq!(rebuilt, data);

        // The test-only corrupting provider is caught by the requester's check.
        let request = BlockRequest::Chunks {
            sha256: sha,
            first: 0,
            count: 1,
        };
        let BlockResponse::Chunks(bad) =
            serve(&repos, &store, &Arrivals::default(), &request, true)
        else {
            panic!("chunks expected");
        };
        assert!(check_chunks(&manifest, 0, &bad).is_err());
        // Past the end, and unknown objects.
        let past = BlockRequest::Chunks {
            sha256: sha,
            first: manifest.chunks.len() as u32,
            count: 1,
        };
        assert_eq!(
            serve(&repos, &store, &Arrivals::default(), &past, false),
            BlockResponse::NotFound
        );
        let unknown = BlockRequest::Manifest {
            sha256: Sha256([1; 32]),
        };
        assert_eq!(
            serve(&repos, &store, &Arrivals::default(), &unknown, false),
            BlockResponse::NotFound
        );
    }

    #[test]
    fn missing_lists_unstored_pointers_and_adopts_stored_ones() {
        let dir = tempfile::tempdir().unwrap();
        let repos = Repos::open(dir.path().join("repos")).unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let stored = store.import_reader(&b"already here"[..]).unwrap();
        // A spool left by a crash after the import's commit goes when the object is seen.
        let spool = spool_path(&store, &stored.sha256);
        std::fs::create_dir_all(spool.parent().unwrap()).unwrap();
        std::fs::write(&spool, b"leftover").unwrap();
        let id = RepoId::parse(RepoType::Model, "alice/tiny").unwrap();
        let author = Author::new("alice", "a@hubmesh.test");
        repos.create(&id, &author).unwrap();
        let absent = Sha256([0xab; 32]);
        let unbound = Sha256([0xcd; 32]);
        let lfs = |path: &str, sha: &Sha256, size| Operation::Add {
            path: path.into(),
            content: FileContent::Lfs(LfsPointer::new(&sha.to_string(), size).unwrap()),
        };
        repos
            .commit(
                &id,
                CommitRequest {
                    branch: "main".into(),
                    message: "lfs".into(),
                    author,
                    parent: None,
                    operations: vec![
                        lfs("a.bin", &stored.sha256, stored.size),
                        lfs("b.bin", &absent, 10),
                        lfs("c.bin", &unbound, 11),
                    ],
                },
            )
            .unwrap();
        let binding =
            BTreeMap::from([(stored.sha256, stored.manifest_id), (absent, Hash([1; 32]))]);
        let out = missing(&repos, &store, &id, &binding).unwrap();
        assert_eq!(
            out.wanted,
            vec![Wanted {
                sha256: absent,
                size: 10,
                manifest_id: Hash([1; 32])
            }]
        );
        assert_eq!(out.unbound, 1);
        assert!(repos.has_lfs_object(&id, &stored.sha256.0).unwrap());
        assert!(!spool.exists());
    }

    #[test]
    fn missing_adopts_an_object_stored_for_another_repo_only_on_proof() {
        // Issue 14, item 1 (replicas): a peer publishes a public repo whose tip points at an
        // object this node stores for a private repo, knowing only its SHA-256. Before, the
        // replica adopted it because the store had it, and its files were then served.
        let dir = tempfile::tempdir().unwrap();
        let repos = Repos::open(dir.path().join("repos")).unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let private = RepoId::parse(RepoType::Model, "alice/private").unwrap();
        let author = Author::new("alice", "a@hubmesh.test");
        repos.create_with(&private, &author, true).unwrap();
        let secret = store.import_reader(&b"alice's secret"[..]).unwrap();
        repos.add_lfs_objects(&private, &[secret.sha256.0]).unwrap();
        let replica = RepoId::parse(RepoType::Model, "mallory/public").unwrap();
        repos.create(&replica, &author).unwrap();
        let pointer = LfsPointer::new(&secret.sha256.to_string(), secret.size).unwrap();
        repos
            .commit(
                &replica,
                CommitRequest {
                    branch: "main".into(),
                    message: "lfs".into(),
                    author,
                    parent: None,
                    operations: vec![Operation::Add {
                        path: "w.bin".into(),
                        content: FileContent::Lfs(pointer),
                    }],
                },
            )
            .unwrap();
        // Unbound, or bound to a made-up manifest: not adopted (a bound one is fetched, and
        // verified, like any other object the repo lacks).
        let out = missing(&repos, &store, &replica, &BTreeMap::new()).unwrap();
        assert_eq!(out.unbound, 1);
        assert!(!repos.has_lfs_object(&replica, &secret.sha256.0).unwrap());
        let made_up = BTreeMap::from([(secret.sha256, Hash([9; 32]))]);
        let out = missing(&repos, &store, &replica, &made_up).unwrap();
        assert_eq!(out.wanted.len(), 1);
        assert!(!repos.has_lfs_object(&replica, &secret.sha256.0).unwrap());
        // The manifest id the store holds proves it: whoever signed it had the content.
        let proof = BTreeMap::from([(secret.sha256, secret.manifest_id)]);
        let out = missing(&repos, &store, &replica, &proof).unwrap();
        assert!(out.wanted.is_empty() && out.unbound == 0);
        assert!(repos.has_lfs_object(&replica, &secret.sha256.0).unwrap());
    }

    /// A file of `len` pseudo-random bytes, stored in a fresh store: its manifest and chunks.
    fn published(dir: &std::path::Path, len: usize) -> (Hash, Manifest, Vec<Vec<u8>>) {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let data: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let source = Store::open(dir.join("source")).unwrap();
        let info = source.import_reader(&data[..]).unwrap();
        let (id, manifest) = source.manifest(&info.sha256).unwrap();
        let mut chunks = Vec::new();
        let mut at = 0;
        for chunk in &manifest.chunks {
            chunks.push(data[at..at + chunk.len as usize].to_vec());
            at += chunk.len as usize;
        }
        assert!(chunks.len() >= 8, "{} chunks", chunks.len());
        (id, manifest, chunks)
    }

    fn held(spool: &Spool) -> Vec<usize> {
        (0..spool.at.len())
            .filter(|&i| spool.at[i] != NOT_SPOOLED)
            .collect()
    }

    /// Feeds `store` the object: spooled chunks from the spool, the rest as received data.
    fn import_with(store: &Store, spool: &Spool, manifest: &Manifest, chunks: &[Vec<u8>]) {
        let (tx, rx) = mpsc::channel(IMPORT_QUEUE);
        let feed = ChunkFeed::new(rx, Some(spool.file.clone()));
        let importer = store.clone();
        let to_import = manifest.clone();
        let import = std::thread::spawn(move || importer.import_verified(&to_import, feed));
        for (i, chunk) in manifest.chunks.iter().enumerate() {
            let piece = match spool.at[i] {
                NOT_SPOOLED => Piece::Data(chunks[i].clone()),
                at => Piece::Spooled(vec![(at, chunk.id, chunk.len)]),
            };
            tx.blocking_send(piece).unwrap();
        }
        drop(tx);
        let info = import.join().unwrap().unwrap();
        assert_eq!(info.sha256, manifest.sha256);
        // Stored with the source's boundaries: the same manifest, so the same (signed) id.
        assert_eq!(info.manifest_id, manifest.id());
    }

    #[test]
    fn a_spool_keeps_verified_chunks_across_restarts_and_feeds_the_import() {
        let dir = tempfile::tempdir().unwrap();
        let (id, manifest, chunks) = published(dir.path(), 1_500_000);
        let store = Store::open(dir.path().join("store")).unwrap();
        let path = spool_path(&store, &manifest.sha256);

        let mut spool = Spool::open(&store, &id, &manifest).unwrap();
        assert_eq!(spool.held(), 0);
        // Batches arrive out of order; a repeated one is not written twice.
        spool.append(2, &chunks[2..5]).unwrap();
        spool.append(0, &chunks[0..1]).unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        spool.append(3, &chunks[3..4]).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
        drop(spool);

        // A restart finds them all, verified, and the import takes them from the spool.
        let spool = Spool::open(&store, &id, &manifest).unwrap();
        assert_eq!(held(&spool), [0, 2, 3, 4]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
        import_with(&store, &spool, &manifest, &chunks);
        assert!(store.has(&manifest.sha256).unwrap());
        assert!(store.fsck(|_| {}).unwrap().is_clean());

        // Once the object is stored, its spool goes, and so do stale ones.
        remove_spool(&store, &manifest.sha256);
        assert!(!path.exists());
        let other = Sha256([7; 32]);
        let (fresh, old, junk) = (
            spool_path(&store, &other),
            spool_path(&store, &Sha256([8; 32])),
            path.with_file_name("junk"),
        );
        for file in [&path, &fresh, &old, &junk] {
            std::fs::write(file, b"x").unwrap();
        }
        File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - SPOOL_MAX_AGE * 2)
            .unwrap();
        prune_spools(&store, &other);
        // The stored object's, the old one and the stray file go; the fresh one stays.
        assert!(fresh.exists());
        assert!(!path.exists() && !old.exists() && !junk.exists());
    }

    #[test]
    fn a_truncated_or_corrupted_spool_keeps_only_its_good_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let (id, manifest, chunks) = published(dir.path(), 1_500_000);
        let store = Store::open(dir.path().join("store")).unwrap();
        let path = spool_path(&store, &manifest.sha256);
        let mut spool = Spool::open(&store, &id, &manifest).unwrap();
        spool.append(0, &chunks[0..6]).unwrap();
        let starts: Vec<u64> = (0..6).map(|i| spool.at[i] - 4).collect();
        drop(spool);

        // A torn last record (kill mid-write): the five whole ones stay, the file is cut.
        let file = File::options().read(true).write(true).open(&path).unwrap();
        file.set_len(starts[5] + 10).unwrap();
        let spool = Spool::open(&store, &id, &manifest).unwrap();
        assert_eq!(held(&spool), [0, 1, 2, 3, 4]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), starts[5]);
        drop(spool);

        // A flipped byte in chunk 2: only chunks 0 and 1 are used, nothing after the damage.
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, starts[2] + 4 + 100).unwrap();
        file.write_all_at(&[byte[0] ^ 1], starts[2] + 4 + 100)
            .unwrap();
        let mut spool = Spool::open(&store, &id, &manifest).unwrap();
        assert_eq!(held(&spool), [0, 1]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), starts[2]);
        // Fetched again, the rest is appended after the good prefix.
        spool.append(2, &chunks[2..]).unwrap();
        drop(spool);
        let spool = Spool::open(&store, &id, &manifest).unwrap();
        assert_eq!(spool.held(), manifest.chunks.len());

        // A chunk that changes on disk after the check is caught when read back.
        let mut feed = ChunkFeed::new(mpsc::channel(1).1, Some(spool.file.clone()));
        let c = &manifest.chunks[1];
        feed.spooled.push_back((spool.at[1], c.id, c.len));
        file.write_all_at(&[0xff, 0xff], spool.at[1]).unwrap();
        let error = feed.next().unwrap().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        drop(spool);

        // A spool of another manifest (or no spool format at all) is started afresh.
        let spool = Spool::open(&store, &Hash([9; 32]), &manifest).unwrap();
        assert_eq!(spool.held(), 0);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), SPOOL_HEADER);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_streams_verified_chunks_in_order_and_stops_short_on_a_failed_fetch() {
        let dir = tempfile::tempdir().unwrap();
        let (id, manifest, chunks) = published(dir.path(), 1_500_000);
        let store = Store::open(dir.path().join("store")).unwrap();
        let mut spool = Spool::open(&store, &id, &manifest).unwrap();
        let n = chunks.len();
        assert!(n >= 4, "{n} chunks");
        let arriving = |spool: &Spool, frontier| Arriving {
            manifest: Arc::new(manifest.clone()),
            manifest_id: id,
            share: false,
            local: Arc::new(vec![false; n]),
            spool: spool.file.clone(),
            at: Arc::new(Mutex::new(spool.at.clone())),
            coming: Arc::new(Mutex::new(vec![false; n])),
            frontier,
        };
        let wait = std::time::Duration::from_secs(10);
        let (frontier, frontier_rx) = tokio::sync::watch::channel(0u32);
        let view = arriving(&spool, frontier_rx);
        let mut rx = stream_arriving(view.clone(), store.clone());
        let publish = |spool: &Spool, upto: u32| {
            view.at.lock().unwrap().copy_from_slice(&spool.at);
            frontier.send_replace(upto);
        };
        // Chunks 2.. arrive first: nothing is passed on before chunk 0 is there.
        spool.append(2, &chunks[2..n]).unwrap();
        publish(&spool, 0);
        let early = tokio::time::timeout(std::time::Duration::from_millis(100), rx.recv()).await;
        assert!(early.is_err(), "nothing before the frontier moves");
        spool.append(0, &chunks[0..2]).unwrap();
        publish(&spool, 2);
        for chunk in &chunks[..2] {
            let got = tokio::time::timeout(wait, rx.recv()).await.unwrap();
            assert_eq!(&got.unwrap().unwrap(), chunk);
        }
        // A spooled chunk changed on disk is caught on the way out, not passed on.
        spool.file.write_all_at(b"!", spool.at[2]).unwrap();
        publish(&spool, 3);
        let got = tokio::time::timeout(wait, rx.recv()).await.unwrap();
        assert!(got.unwrap().is_err());
        assert!(rx.recv().await.is_none());

        // A fetch that ends part way (its sender goes, though readers hold the rest) ends
        // the stream with an error after what had arrived.
        let (frontier, frontier_rx) = tokio::sync::watch::channel(2u32);
        let mut rx = stream_arriving(arriving(&spool, frontier_rx), store.clone());
        for chunk in &chunks[..2] {
            let got = tokio::time::timeout(wait, rx.recv()).await.unwrap();
            assert_eq!(&got.unwrap().unwrap(), chunk);
        }
        drop(frontier);
        let got = tokio::time::timeout(wait, rx.recv()).await.unwrap();
        assert!(got.unwrap().is_err());
    }
}
