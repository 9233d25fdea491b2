//! LFS content over `/hubmesh/blocks/1`: serving manifests and chunks of public repos'
//! objects, and fetching what a seeded repo's tips reference, verified from the first byte.
//!
//! Fetching one object (see [`hub_protocol::blocks`] for the messages and bounds): the
//! manifest comes from the first candidate peer whose answer passes
//! [`check_manifest`] against the signed binding (`RefUpdate.lfs`: sha256 → manifest id) and
//! the pointer's size. Chunks the store already holds (an unchanged tensor of an earlier
//! revision) are read locally; the rest is cut into batches that module `schedule` spreads
//! over several peers at once, up to three in flight, each to the best-scored idle peer (by
//! rate, failures and bad data). Every chunk is checked against its BLAKE3 id
//! ([`check_chunks`]) before it goes anywhere; a peer that sends a bad chunk (or manifest) is
//! logged, counted against it (`PeerInfo::bad_chunks`) and not asked again for this object,
//! and the batch goes to another peer. Verified chunks, reordered into file order,
//! //! stream through a bounded channel into [`Store::import_reader`] on a blocking thread, which
//! recomputes the SHA-256; only when it equals the signed one is the object added to the
//! repo's LFS set and made a GC root. A fetch that stops halfway makes the import fail, so
//! nothing partial is ever visible.
//!
//! Resumption: what a repo misses is recomputed from its tips ([`Repos::lfs_pointers`]) each
//! time the replication task syncs it, at start-up too; stored objects are never fetched
//! again (chunks of a partially fetched object are fetched again, except those an earlier
//! revision left in the store).
//!
//! Serving: only objects in the LFS set of a public repo this node hosts or seeds; anything
//! else is `NotFound`, the same answer as an unknown object.

use crate::swarm::P2p;
use futures::StreamExt;
use hub_protocol::blocks::{
    BlockRequest, BlockResponse, MAX_BATCH_BYTES, MAX_MANIFEST_LEN, check_chunks, check_manifest,
};
use hub_protocol::manifest::{Hash, Manifest, Sha256};
use hub_protocol::repo::{RepoId, RepoType};
use hub_protocol::signed::MAX_LFS;
use hub_repo::Repos;
use hub_store::Store;
use libp2p::PeerId;
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;

/// Verified chunks waiting for the import thread (at most 64 × 128 KiB in memory).
const IMPORT_QUEUE: usize = 64;

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

/// The LFS objects the tips of `repo` reference that the store lacks (blocking). Objects
/// already stored but not yet in the repo's LFS set (stored for another repo, or fetched
/// before a crash) are added to it here: their content is named by the same SHA-256.
pub(crate) fn missing(
    repos: &Repos,
    store: &Store,
    repo: &RepoId,
    lfs: &BTreeMap<Sha256, Hash>,
) -> Result<Missing, String> {
    let tips = repos.ref_tips(repo).map_err(|e| e.to_string())?;
    let pointers = repos
        .lfs_pointers(repo, &tips, MAX_LFS)
        .map_err(|e| e.to_string())?;
    let mut out = Missing::default();
    for (sha, size) in pointers {
        let sha256 = Sha256(sha);
        if store.has(&sha256).map_err(|e| e.to_string())? {
            if !repos
                .has_lfs_object(repo, &sha)
                .map_err(|e| e.to_string())?
            {
                store.add_root(&sha256).map_err(|e| e.to_string())?;
                repos
                    .add_lfs_objects(repo, &[sha])
                    .map_err(|e| e.to_string())?;
            }
            continue;
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
    request: &BlockRequest,
    corrupt_for_tests: bool,
) -> BlockResponse {
    let sha256 = request.sha256();
    if !servable(repos, sha256) {
        return BlockResponse::NotFound;
    }
    let manifest = match store.manifest(sha256) {
        Ok((_, manifest)) => manifest,
        Err(_) => return BlockResponse::NotFound,
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

/// Chunks `first..first + count` of a stored file, stopping once the batch reaches
/// [`MAX_BATCH_BYTES`]; every byte is verified by the store's reader.
fn read_chunks(
    store: &Store,
    manifest: &Manifest,
    first: usize,
    count: usize,
) -> io::Result<Vec<Vec<u8>>> {
    let Some(chunks) = manifest.chunks.get(first..) else {
        return Ok(Vec::new());
    };
    let mut offset: u64 = manifest.chunks[..first]
        .iter()
        .map(|c| u64::from(c.len))
        .sum();
    let mut reader = store
        .open_file(&manifest.sha256)
        .map_err(io::Error::other)?;
    let (mut out, mut bytes) = (Vec::new(), 0usize);
    for chunk in chunks.iter().take(count) {
        if bytes >= MAX_BATCH_BYTES {
            break;
        }
        let data = reader.read_range(offset, chunk.len as usize)?;
        if data.len() != chunk.len as usize {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short chunk"));
        }
        offset += u64::from(chunk.len);
        bytes += data.len();
        out.push(data);
    }
    Ok(out)
}

/// What the fetch passes to the import thread, in file order.
enum Piece {
    /// A chunk received from a peer and verified.
    Data(Vec<u8>),
    /// A chunk the store already holds (an unchanged tensor of an earlier revision): read
    /// here, on the import thread, and checked against its id by the store.
    Local(Hash),
}

/// Reads the pieces the fetch sends, in order, as one file stream. The stream ends with an
/// error, not EOF, if the sender stops before `size` bytes or a local chunk is gone.
struct ChunkStream {
    rx: mpsc::Receiver<Piece>,
    store: Store,
    buf: Vec<u8>,
    pos: usize,
    remaining: u64,
}

impl Read for ChunkStream {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.remaining == 0 {
                return Ok(0);
            }
            self.buf = match self.rx.blocking_recv() {
                Some(Piece::Data(chunk)) => chunk,
                Some(Piece::Local(id)) => self
                    .store
                    .read_chunk(&id)
                    .map_err(io::Error::other)?
                    .ok_or_else(|| io::Error::other(format!("local chunk {id} is gone")))?,
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "fetch stopped before the end of the file",
                    ));
                }
            };
            self.pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        self.remaining = self.remaining.saturating_sub(n as u64);
        Ok(n)
    }
}

/// Records a bad answer from `peer`.
fn penalise(p2p: &P2p, peer: PeerId, sha256: &Sha256, what: &dyn std::fmt::Display) {
    tracing::warn!(%peer, %sha256, reason = %what, "peer sent data that failed verification; asking another peer");
    p2p.counters.chunks_rejected.fetch_add(1, Ordering::Relaxed);
    p2p.peers.update(peer, |p| p.bad_chunks += 1);
}

/// Fetches one object from `peers` (in order of preference), verified, into `store`: the
/// chunks the store lacks, in batches spread over several peers at once (module `schedule`).
/// `more` is asked once for further candidates when those run out. Returns the bytes of
/// chunks received for it.
pub(crate) async fn fetch_object<F, Fut>(
    p2p: &P2p,
    store: &Store,
    wanted: Wanted,
    peers: &[PeerId],
    more: F,
) -> Result<u64, String>
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
                        penalise(p2p, peer, &sha256, &error);
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
    let manifest = manifest.ok_or_else(|| format!("no peer served the manifest of {sha256}"))?;

    let ids: Vec<Hash> = manifest.chunks.iter().map(|c| c.id).collect();
    let lens: Vec<u32> = manifest.chunks.iter().map(|c| c.len).collect();
    let checker = store.clone();
    let local = tokio::task::spawn_blocking(move || checker.has_chunks(&ids))
        .await
        .map_err(|e| format!("chunk lookup task: {e}"))?
        .map_err(|e| format!("look up chunks of {sha256}: {e}"))?;
    let batches = crate::schedule::plan(&lens, &local);
    let mut scheduler = crate::schedule::Scheduler::new(&batches, &candidates);

    let (tx, rx) = mpsc::channel(IMPORT_QUEUE);
    let stream = ChunkStream {
        rx,
        store: store.clone(),
        buf: Vec::new(),
        pos: 0,
        remaining: manifest.size,
    };
    let importer = store.clone();
    let import = tokio::task::spawn_blocking(move || importer.import_reader(stream));
    let total = manifest.chunks.len() as u32;
    let mut frontier = 0u32;
    let mut received = 0u64;
    // Verified batches that arrived ahead of the frontier.
    let mut ready: BTreeMap<u32, Vec<Vec<u8>>> = BTreeMap::new();
    let mut flying = futures::stream::FuturesUnordered::new();
    let mut failure = None;
    'fetch: loop {
        // Pass on, in order, everything up to the first chunk still to come.
        while frontier < total {
            let piece = if local[frontier as usize] {
                frontier += 1;
                vec![Piece::Local(manifest.chunks[frontier as usize - 1].id)]
            } else if let Some(chunks) = ready.remove(&frontier) {
                frontier += chunks.len() as u32;
                chunks.into_iter().map(Piece::Data).collect()
            } else {
                break;
            };
            for piece in piece {
                if tx.send(piece).await.is_err() {
                    // The import stopped early; its error says why.
                    break 'fetch;
                }
            }
        }
        if frontier == total {
            break;
        }
        while let Some(a) = scheduler.next(std::time::Instant::now(), frontier) {
            let request = BlockRequest::Chunks {
                sha256,
                first: a.batch.first,
                count: a.batch.count,
            };
            let p2p = p2p.clone();
            flying.push(async move { (a, p2p.fetch_blocks(a.peer, request).await) });
        }
        if scheduler.in_flight() == 0 {
            if scheduler.is_stuck()
                && let Some(more) = more.take()
            {
                for peer in more().await {
                    scheduler.add_provider(peer);
                }
                continue;
            }
            failure = Some(format!(
                "no peer served chunks {frontier}.. of {sha256} that verified"
            ));
            break;
        }
        let Some((a, result)) = flying.next().await else {
            continue;
        };
        let now = std::time::Instant::now();
        let peer = a.peer;
        let outcome = match result {
            Ok(BlockResponse::Chunks(mut chunks)) if !chunks.is_empty() => {
                chunks.truncate(a.batch.count as usize);
                let bytes: u64 = chunks.iter().map(|c| c.len() as u64).sum();
                received += bytes;
                p2p.counters
                    .chunk_bytes_received
                    .fetch_add(bytes, Ordering::Relaxed);
                p2p.peers.update(peer, |p| p.chunk_bytes_received += bytes);
                match check_chunks(&manifest, u64::from(a.batch.first), &chunks) {
                    Ok(()) => {
                        let n = chunks.len() as u32;
                        ready.insert(a.batch.first, chunks);
                        crate::schedule::Outcome::Served { chunks: n, bytes }
                    }
                    Err(error) => {
                        penalise(p2p, peer, &sha256, &error);
                        crate::schedule::Outcome::Bad
                    }
                }
            }
            Ok(other) => {
                tracing::debug!(%peer, %sha256, ?other, "no chunks from peer");
                crate::schedule::Outcome::Failed
            }
            Err(error) => {
                tracing::debug!(%peer, %sha256, %error, "chunk request failed");
                crate::schedule::Outcome::Failed
            }
        };
        scheduler.finish(a.id, now, outcome);
    }
    drop(tx);
    let imported = import.await.map_err(|e| format!("import task: {e}"))?;
    if let Some(failure) = failure {
        return Err(failure);
    }
    let info = imported.map_err(|e| format!("import {sha256}: {e}"))?;
    if info.sha256 != sha256 {
        // Unreachable unless the publisher signed a manifest whose chunks are not the file
        // it names; the import is unreferenced and goes at the next gc.
        return Err(format!(
            "content of {sha256} hashes to {}, refused",
            info.sha256
        ));
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
            serve(&repos, &store, &manifest_req, false),
            BlockResponse::NotFound
        );
        repos.create(&public, &author).unwrap();
        repos.add_lfs_objects(&public, &[sha.0]).unwrap();
        let BlockResponse::Manifest(bytes) = serve(&repos, &store, &manifest_req, false) else {
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
            let BlockResponse::Chunks(chunks) = serve(&repos, &store, &request, false) else {
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
        let BlockResponse::Chunks(bad) = serve(&repos, &store, &request, true) else {
            panic!("chunks expected");
        };
        assert!(check_chunks(&manifest, 0, &bad).is_err());
        // Past the end, and unknown objects.
        let past = BlockRequest::Chunks {
            sha256: sha,
            first: manifest.chunks.len() as u32,
            count: 1,
        };
        assert_eq!(serve(&repos, &store, &past, false), BlockResponse::NotFound);
        let unknown = BlockRequest::Manifest {
            sha256: Sha256([1; 32]),
        };
        assert_eq!(
            serve(&repos, &store, &unknown, false),
            BlockResponse::NotFound
        );
    }

    #[test]
    fn missing_lists_unstored_pointers_and_adopts_stored_ones() {
        let dir = tempfile::tempdir().unwrap();
        let repos = Repos::open(dir.path().join("repos")).unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let stored = store.import_reader(&b"already here"[..]).unwrap();
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
    }
}
