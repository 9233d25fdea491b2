//! hubmesh's content-addressed store for large files (model weights, datasets).
//!
//! Files are cut into content-defined chunks ([`chunker`], with forced cuts at safetensors and
//! GGUF tensor boundaries), new chunks are packed into immutable block files ([`block`], the
//! unit of replication), and a redb index (`index.redb`: chunk → block location, block
//! liveness, manifests, sha256 → manifest, gc roots) maps chunks to blocks and SHA-256s to
//! manifests ([`hub_protocol::manifest`]). Identical chunks are stored once, across files.
//!
//! On disk, in the directory given to [`Store::open`]: `index.redb`, `blocks/ab/<block id>`,
//! `tmp/` (blocks being written) and `quarantine/` (blocks `fsck` found corrupt).
//!
//! Place in the dependency graph: `protocol ← store ← repo ← …`. The store knows nothing of
//! git, HTTP or peers; the node opens it at `DATA/store/` and the gateway and p2p layers read
//! and write through [`Store`] (blocking) or [`AsyncStore`] (the same, on tokio's blocking
//! pool).
//!
//! Guarantees: an import is visible only once it returns, and then survives `kill -9` and
//! power loss (blocks are fsynced and renamed before the redb commit that references them);
//! every byte read back is checked against its chunk's BLAKE3; bytes from disk never cause a
//! panic; memory stays bounded whatever the file size.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::io::Read;
//! let dir = tempfile::tempdir()?;
//! let store = hub_store::Store::open(dir.path())?;
//! let info = store.import_reader(&b"some weights"[..])?;
//! assert!(store.has(&info.sha256)?);
//! let mut back = String::new();
//! store.open_file(&info.sha256)?.read_to_string(&mut back)?;
//! assert_eq!(back, "some weights");
//! assert!(store.fsck(|_| {})?.is_clean());
//! # Ok(()) }
//! ```

pub mod block;
pub mod chunker;
mod compose;
mod error;
mod import;
mod index;
mod lease;
mod maintenance;
mod read;
pub mod recent;

pub use compose::Slice;
pub use error::StoreError;
pub use hub_protocol::manifest::{ChunkRef, Hash, Manifest, Sha256};
pub use lease::Lease;
pub use maintenance::{CorruptBlock, FsckReport, GcReport, Progress, Stats};
pub use read::FileReader;

use index::{BLOCKS, CHUNKS, FILES, MANIFESTS, ROOTS};
use redb::{Database, ReadableDatabase};
use serde::Serialize;
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// What an import returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct FileInfo {
    pub sha256: Sha256,
    pub blake3: Hash,
    pub size: u64,
    pub manifest_id: Hash,
    pub chunks: usize,
    /// Bytes of chunks this import stored for the first time (the rest deduplicated).
    pub new_bytes: u64,
    /// Whether a safetensors or GGUF header placed tensor-aligned cuts.
    pub tensor_aware: bool,
}

/// How a store behaves; [`Default`] is what a node uses.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreConfig {
    /// Place forced cuts at safetensors / GGUF tensor boundaries (on by default; off gives
    /// plain CDC, for comparison).
    pub format_aware_chunking: bool,
    /// Free disk space (bytes) that imports leave untouched: an import fails fast with
    /// [`StoreError::StorageFull`] rather than fill the disk, so the index (and whatever else
    /// shares the disk) can still write. Checked before an import with a known size and before
    /// each new block.
    pub reserved_bytes: u64,
    /// A chunk a reader verified less than this long ago, from the same block, is returned
    /// without hashing it again ([`recent`]; ADR 0001, "Serving"). Zero verifies every read.
    pub reverify_after: Duration,
}

/// How long a verified chunk is served without hashing it again, by default: 60 s.
pub const DEFAULT_REVERIFY_AFTER: Duration = Duration::from_secs(60);

/// The headroom a node keeps by default: 256 MiB.
pub const DEFAULT_RESERVED_BYTES: u64 = 256 << 20;

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            format_aware_chunking: true,
            reserved_bytes: DEFAULT_RESERVED_BYTES,
            reverify_after: DEFAULT_REVERIFY_AFTER,
        }
    }
}

/// One chunk handed to [`Store::import_verified`], in the manifest's order.
#[derive(Debug)]
pub enum VerifiedChunk {
    /// The chunk's bytes, which the caller has checked against the manifest entry's BLAKE3
    /// id (on arrival: bao verification, or a hash of the chunk). The store does not hash
    /// them again.
    Bytes(Vec<u8>),
    /// A chunk this store holds already: read back, checked against its id, for the SHA-256.
    Stored,
}

/// What the caller of [`Store::import_expecting`] announced: the import fails, keeping
/// nothing, when the content is anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    pub sha256: Sha256,
    pub size: u64,
}

/// A store in one directory. Cheap to clone; all methods block on disk I/O and hashing, so
/// call them from a blocking thread or use [`AsyncStore`].
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) root: PathBuf,
    pub(crate) db: Database,
    /// Imports hold it shared, `fsck` and `gc` exclusively (see [`maintenance`]).
    pub(crate) gc_lock: RwLock<()>,
    pub(crate) tmp_counter: AtomicU64,
    pub(crate) config: StoreConfig,
    /// Blocks that imports in flight have renamed into `blocks/` but not yet committed, with
    /// how many imports placed each (two imports of the same bytes make the same block). A
    /// failed import deletes a block file only when no other import placed it and the index
    /// does not list it.
    pub(crate) placed: Mutex<HashMap<Hash, u32>>,
    /// Chunks verified on read a moment ago ([`recent`]).
    pub(crate) recent: recent::Recent,
    /// Files readers hold ([`lease`]): `gc` keeps them.
    pub(crate) leases: lease::Leases,
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("sync directory", dir))
}

impl Store {
    /// Opens the store in `dir`, creating it if needed. Deletes what an interrupted import
    /// left behind (temporary files, block files no committed import references).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with_config(dir, StoreConfig::default())
    }

    /// [`Store::open`] with a non-default configuration.
    pub fn open_with_config(
        dir: impl AsRef<Path>,
        config: StoreConfig,
    ) -> Result<Self, StoreError> {
        let root = dir.as_ref().to_path_buf();
        for sub in ["blocks", "tmp", "quarantine"] {
            let p = root.join(sub);
            std::fs::create_dir_all(&p).map_err(StoreError::io("create", &p))?;
        }
        let db_path = root.join("index.redb");
        let db = Database::create(&db_path).map_err(|source| StoreError::Open {
            path: db_path.clone(),
            source,
        })?;
        let txn = db.begin_write().map_err(StoreError::db)?;
        txn.open_table(CHUNKS).map_err(StoreError::db)?;
        txn.open_table(BLOCKS).map_err(StoreError::db)?;
        txn.open_table(MANIFESTS).map_err(StoreError::db)?;
        txn.open_table(FILES).map_err(StoreError::db)?;
        txn.open_table(ROOTS).map_err(StoreError::db)?;
        txn.commit().map_err(StoreError::db)?;
        let inner = Inner {
            root,
            db,
            gc_lock: RwLock::new(()),
            tmp_counter: AtomicU64::new(0),
            recent: recent::Recent::new(config.reverify_after),
            config,
            placed: Mutex::new(HashMap::new()),
            leases: lease::Leases::default(),
        };
        inner.remove_orphans()?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Imports everything `reader` yields, in one streaming pass. The file is durable and
    /// visible when this returns, and not visible before.
    pub fn import_reader(&self, mut reader: impl Read) -> Result<FileInfo, StoreError> {
        import::import(&self.inner, &mut reader, None, None)
    }

    /// Imports `reader`, which must yield exactly `expected` (an LFS upload announces the
    /// SHA-256 and size of what it sends). Anything else fails with [`StoreError::Mismatch`]
    /// before the index records it, and the blocks written for it are deleted: a rejected
    /// upload leaves nothing behind. The announced size is checked against the free space
    /// first.
    pub fn import_expecting(
        &self,
        mut reader: impl Read,
        expected: Expected,
    ) -> Result<FileInfo, StoreError> {
        import::import(
            &self.inner,
            &mut reader,
            Some(expected.size),
            Some(expected),
        )
    }

    /// Stores the concatenation of `slices` (byte ranges of stored files) as a file, without
    /// re-chunking it: its manifest references the chunks the ranges cover, and only the
    /// pieces of chunks a range's ends cut are written. The bytes are read once for the
    /// file's hashes; with `expected`, anything else fails with [`StoreError::Mismatch`]
    /// before anything is written.
    pub fn compose(
        &self,
        slices: &[Slice],
        expected: Option<Expected>,
    ) -> Result<FileInfo, StoreError> {
        compose::compose(self, slices, expected)
    }

    /// Imports the file of `manifest` from chunks already verified against its chunk ids,
    /// keeping the manifest as it is (its boundaries, so its id): the seeder's path, with no
    /// chunker pass and no second BLAKE3 of the data. `chunks` yields one item per manifest
    /// entry, in order. Each chunk must have its entry's length, and the SHA-256 of all the
    /// bytes must be the manifest's, else the import fails ([`StoreError::ChunkLen`],
    /// [`StoreError::Mismatch`]) and keeps nothing. Durability and visibility as
    /// [`Store::import_reader`].
    pub fn import_verified(
        &self,
        manifest: &Manifest,
        mut chunks: impl Iterator<Item = std::io::Result<VerifiedChunk>>,
    ) -> Result<FileInfo, StoreError> {
        import::import_verified(&self.inner, manifest, &mut chunks)
    }

    /// Imports a file from `chunks` whose boundaries and BLAKE3 ids (`refs`) the caller has
    /// computed while verifying them another way (a Xet xorb: each chunk decoded and hashed
    /// once, for both hashes): no chunker pass and no second BLAKE3, and the SHA-256 is
    /// computed here (nothing announced it). `chunks` yields one item per entry of `refs`, in
    /// order, each of its entry's length (else [`StoreError::ChunkLen`], keeping nothing);
    /// every length must be 1 ..= 128 KiB. Durability and visibility as
    /// [`Store::import_reader`].
    pub fn import_chunks(
        &self,
        refs: Vec<ChunkRef>,
        mut chunks: impl Iterator<Item = std::io::Result<VerifiedChunk>>,
    ) -> Result<FileInfo, StoreError> {
        import::import_chunks(&self.inner, refs, &mut chunks)
    }

    /// Imports the file at `path` (its size helps reject hostile headers early).
    pub fn import_path(&self, path: impl AsRef<Path>) -> Result<FileInfo, StoreError> {
        let path = path.as_ref();
        let mut file = File::open(path).map_err(StoreError::io("open", path))?;
        let size = file.metadata().map_err(StoreError::io("stat", path))?.len();
        import::import(&self.inner, &mut file, Some(size), None)
    }

    /// Fails with [`StoreError::StorageFull`] unless the disk has `need` bytes free beyond
    /// the reserved headroom ([`StoreConfig::reserved_bytes`]): the check every import makes
    /// first, for a caller that wants to refuse a write before its bytes arrive.
    pub fn ensure_room(&self, need: u64) -> Result<(), StoreError> {
        self.inner.check_headroom(need)
    }

    /// Whether a file with this SHA-256 is stored.
    pub fn has(&self, sha256: &Sha256) -> Result<bool, StoreError> {
        let txn = self.inner.db.begin_read().map_err(StoreError::db)?;
        let files = txn.open_table(FILES).map_err(StoreError::db)?;
        Ok(redb::ReadableTable::get(&files, &sha256.0)
            .map_err(StoreError::db)?
            .is_some())
    }

    /// The SHA-256 of every stored file, in ascending order.
    pub fn files(&self) -> Result<Vec<Sha256>, StoreError> {
        let txn = self.inner.db.begin_read().map_err(StoreError::db)?;
        let files = txn.open_table(FILES).map_err(StoreError::db)?;
        let mut out = Vec::new();
        for row in redb::ReadableTable::iter(&files).map_err(StoreError::db)? {
            out.push(Sha256(*row.map_err(StoreError::db)?.0.value()));
        }
        Ok(out)
    }

    /// The manifest of a stored file and its id.
    pub fn manifest(&self, sha256: &Sha256) -> Result<(Hash, Manifest), StoreError> {
        read::load_manifest(&self.inner, sha256)
    }

    /// A manifest by its id (`None` when the store holds none by that id). Whether the
    /// file it describes is stored is [`Store::manifest_id`] of its `sha256`.
    pub fn manifest_by_id(&self, id: &Hash) -> Result<Option<Manifest>, StoreError> {
        read::load_manifest_by_id(&self.inner, id)
    }

    /// Opens a stored file for reading, with seek and byte ranges. The reader holds a
    /// [`Lease`] on the file: `gc` and [`Store::remove_files`] keep it until the reader is
    /// dropped.
    pub fn open_file(&self, sha256: &Sha256) -> Result<FileReader, StoreError> {
        let lease = lease::lease(&self.inner, sha256);
        let mut reader = FileReader::open(self.inner.clone(), sha256)?;
        reader.lease = Some(lease);
        Ok(reader)
    }

    /// Writes a stored file to `dest` (via a temporary file and rename, fsynced). Returns the
    /// bytes written.
    pub fn export(&self, sha256: &Sha256, dest: impl AsRef<Path>) -> Result<u64, StoreError> {
        let dest = dest.as_ref();
        let mut reader = self.open_file(sha256)?;
        let name = dest
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("export");
        let tmp = dest.with_file_name(format!(".{name}.hubmesh-tmp"));
        let result = (|| {
            let mut out = File::create(&tmp).map_err(StoreError::io("create", &tmp))?;
            let n =
                std::io::copy(&mut reader, &mut out).map_err(StoreError::io("export to", &tmp))?;
            out.sync_all().map_err(StoreError::io("sync", &tmp))?;
            std::fs::rename(&tmp, dest).map_err(StoreError::io("rename", dest))?;
            Ok(n)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Which of `ids` the store holds as chunks, in order. A fetch asks peers only for the
    /// chunks a file lacks: an unchanged tensor of a new revision is already here.
    pub fn has_chunks(&self, ids: &[Hash]) -> Result<Vec<bool>, StoreError> {
        let txn = self.inner.db.begin_read().map_err(StoreError::db)?;
        let chunks = txn.open_table(CHUNKS).map_err(StoreError::db)?;
        ids.iter()
            .map(|id| {
                redb::ReadableTable::get(&chunks, &id.0)
                    .map(|v| v.is_some())
                    .map_err(StoreError::db)
            })
            .collect()
    }

    /// Reads one stored chunk by id, checked against its BLAKE3 id; `None` when the store does
    /// not hold it (any more: a `gc` may have removed it since [`Store::has_chunks`]).
    pub fn read_chunk(&self, id: &Hash) -> Result<Option<Vec<u8>>, StoreError> {
        let loc = {
            let txn = self.inner.db.begin_read().map_err(StoreError::db)?;
            let chunks = txn.open_table(CHUNKS).map_err(StoreError::db)?;
            let Some(loc) = redb::ReadableTable::get(&chunks, &id.0)
                .map_err(StoreError::db)?
                .and_then(|g| index::ChunkLoc::decode(g.value()))
            else {
                return Ok(None);
            };
            loc
        };
        let path = block::block_path(&self.inner.root, &loc.block);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io("open", &path)(e)),
        };
        let mut buf = vec![0u8; loc.len as usize];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, loc.offset)
            .map_err(StoreError::io("read", &path))?;
        if Hash::of(&buf) != *id {
            return Err(StoreError::Corrupt {
                what: "corrupt chunk",
                id: *id,
            });
        }
        Ok(Some(buf))
    }

    /// The id of a stored file's manifest (`None` when the file is not stored), without
    /// loading the manifest: a cache of decoded manifests can be keyed by it.
    pub fn manifest_id(&self, sha256: &Sha256) -> Result<Option<Hash>, StoreError> {
        let txn = self.inner.db.begin_read().map_err(StoreError::db)?;
        let files = txn.open_table(FILES).map_err(StoreError::db)?;
        Ok(redb::ReadableTable::get(&files, &sha256.0)
            .map_err(StoreError::db)?
            .map(|g| Hash(*g.value())))
    }

    /// Reads stored chunks by id, in order, each checked against its BLAKE3 id, with one
    /// index lookup for all of them (unlike [`Store::open_file`], which resolves every chunk
    /// of the file). `None` for a chunk the store does not hold (any more); a corrupt one is an
    /// error, as with [`Store::read_chunk`]. Memory: the chunks returned.
    pub fn read_chunks(&self, ids: &[Hash]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.read_chunks_inner(ids, true)
    }

    /// [`Store::read_chunks`] without the BLAKE3 check, for a caller that hashes every chunk
    /// anyway and compares the result with its id before using a byte of it (the blob
    /// endpoint computes each chunk's bao tree, whose root is that hash, to serve it).
    pub fn read_chunks_unchecked(&self, ids: &[Hash]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.read_chunks_inner(ids, false)
    }

    fn read_chunks_inner(
        &self,
        ids: &[Hash],
        verify: bool,
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let locs = {
            let txn = self.inner.db.begin_read().map_err(StoreError::db)?;
            let chunks = txn.open_table(CHUNKS).map_err(StoreError::db)?;
            ids.iter()
                .map(|id| {
                    redb::ReadableTable::get(&chunks, &id.0)
                        .map(|g| g.and_then(|g| index::ChunkLoc::decode(g.value())))
                        .map_err(StoreError::db)
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        let mut open: Option<(Hash, Option<File>)> = None;
        let mut out = Vec::with_capacity(ids.len());
        for (id, loc) in ids.iter().zip(locs) {
            let Some(loc) = loc else {
                out.push(None);
                continue;
            };
            let path = block::block_path(&self.inner.root, &loc.block);
            if open.as_ref().is_none_or(|(b, _)| *b != loc.block) {
                let file = match File::open(&path) {
                    Ok(file) => Some(file),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => return Err(StoreError::io("open", &path)(e)),
                };
                open = Some((loc.block, file));
            }
            let Some((_, Some(file))) = &open else {
                out.push(None);
                continue;
            };
            let buf = read_at(file, loc.offset, loc.len as usize)
                .map_err(StoreError::io("read", &path))?;
            if verify && Hash::of(&buf) != *id {
                return Err(StoreError::Corrupt {
                    what: "corrupt chunk",
                    id: *id,
                });
            }
            out.push(Some(buf));
        }
        Ok(out)
    }

    /// Marks a file as a persistent GC root: `gc` keeps it even when the caller omits it.
    pub fn add_root(&self, sha256: &Sha256) -> Result<(), StoreError> {
        let txn = self.inner.db.begin_write().map_err(StoreError::db)?;
        txn.open_table(ROOTS)
            .map_err(StoreError::db)?
            .insert(&sha256.0, ())
            .map_err(StoreError::db)?;
        txn.commit().map_err(StoreError::db)
    }

    /// Removes a persistent GC root (the file stays until the next `gc`).
    pub fn remove_root(&self, sha256: &Sha256) -> Result<(), StoreError> {
        let txn = self.inner.db.begin_write().map_err(StoreError::db)?;
        txn.open_table(ROOTS)
            .map_err(StoreError::db)?
            .remove(&sha256.0)
            .map_err(StoreError::db)?;
        txn.commit().map_err(StoreError::db)
    }
}

/// The async facade: each call runs the blocking [`Store`] method on tokio's blocking pool.
/// Calls are not cancel-safe in the sense that dropping the future does not stop the work;
/// an import that was started completes (or fails) on its own.
#[derive(Debug, Clone)]
pub struct AsyncStore {
    store: Store,
}

impl AsyncStore {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// The blocking store underneath (for `FileReader`s, on a blocking thread).
    pub fn blocking(&self) -> &Store {
        &self.store
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store))
            .await
            .map_err(StoreError::Task)?
    }

    pub async fn import_path(&self, path: PathBuf) -> Result<FileInfo, StoreError> {
        self.run(move |s| s.import_path(path)).await
    }

    pub async fn import_reader(
        &self,
        reader: impl Read + Send + 'static,
    ) -> Result<FileInfo, StoreError> {
        self.run(move |s| s.import_reader(reader)).await
    }

    pub async fn has(&self, sha256: Sha256) -> Result<bool, StoreError> {
        self.run(move |s| s.has(&sha256)).await
    }

    /// Reads `len` bytes at `offset` (clamped to the file's end), verified.
    pub async fn read_range(
        &self,
        sha256: Sha256,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, StoreError> {
        self.run(move |s| {
            s.open_file(&sha256)?
                .read_range(offset, len)
                .map_err(StoreError::io("read", s.root().join("blocks")))
        })
        .await
    }

    pub async fn export(&self, sha256: Sha256, dest: PathBuf) -> Result<u64, StoreError> {
        self.run(move |s| s.export(&sha256, dest)).await
    }

    pub async fn fsck(&self) -> Result<FsckReport, StoreError> {
        self.run(|s| s.fsck(|_| {})).await
    }

    pub async fn gc(&self, roots: Vec<Sha256>) -> Result<GcReport, StoreError> {
        self.run(move |s| s.gc(&roots)).await
    }

    pub async fn stats(&self) -> Result<Stats, StoreError> {
        self.run(|s| s.stats()).await
    }
}

/// `len` bytes of `file` from `offset` into a fresh buffer, read into its spare capacity
/// without zero-filling it first (`Take<&File>::read_to_end`; the blob endpoint reads every
/// chunk it serves this way, issue 17). Fails with `UnexpectedEof` if the file is shorter.
fn read_at(mut file: &File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    use std::io::{Seek, SeekFrom};
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(len);
    file.take(len as u64).read_to_end(&mut buf)?;
    if buf.len() != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "block file shorter than its index says",
        ));
    }
    Ok(buf)
}
