//! Air-gap bundles: one file that carries a repo across a gap with no network — its commits
//! (a git bundle, v2: prerequisites, refs, pack), the manifests of the LFS files its branches
//! and tags point at, the chunks of those files the receiver lacks, and an ed25519 signature
//! of the exporting node over all of it.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! "HUBMESH-BUNDLE/1\n"
//! u64 header length, header (JSON: repo, refs, prerequisites, files with their chunk lists,
//!     the ids of the carried chunks in order, the git section's length, the signer's key)
//! the git section: a git bundle v2 ("# v2 git bundle", "-<prerequisite>", "<oid> <ref>",
//!     blank line, pack)
//! for each carried chunk: u32 length, bytes
//! 64-byte signature: ed25519 over "hubmesh-bundle-v1\0" ‖ SHA-256(everything before it)
//! ```
//!
//! An incremental bundle (`since` a commit, or a previous bundle) lists the earlier refs as
//! prerequisites (its pack is thin against them) and leaves out every chunk of the files the
//! receiver got then: after a fine-tune it carries about the changed tensors only.
//!
//! Import is all-or-nothing and verifies before anything is visible: the whole file's
//! signature (and, when given, that the signer is the trusted key), every carried chunk against
//! its BLAKE3 id, every file against its SHA-256 as it is rebuilt into the store, the
//! prerequisites present, and the pack through `hub-repo`'s replica checks; the refs then move
//! in one compare-and-swap. A file rebuilt into the store before a later check fails is
//! referenced by no repo and goes at the next `hubmesh store gc`.

use hub_protocol::repo::RepoId;
use hub_repo::Repos;
use hub_store::{ChunkRef, Hash, Sha256, Store, VerifiedChunk};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8] = b"HUBMESH-BUNDLE/1\n";
const CONTEXT: &[u8] = b"hubmesh-bundle-v1\0";
const MAX_HEADER: u64 = 256 << 20;
const MAX_GIT: u64 = 4 << 30;
const MAX_CHUNK: u32 = 64 << 20;
const MAX_FILES: usize = 16_384;

/// Why a bundle could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("not a hubmesh bundle, or damaged: {0}")]
    Malformed(String),
    #[error("the bundle's signature does not verify: it was changed after it was signed")]
    BadSignature,
    #[error("the bundle is signed by {signer}, not by the trusted key {trusted}")]
    Untrusted { signer: String, trusted: String },
    #[error("chunk {0} does not match its id")]
    BadChunk(String),
    #[error("the bundle needs commit {0}, which this node lacks: import the earlier bundle first")]
    MissingPrerequisite(String),
    #[error("chunk {chunk} of {file} is neither in the bundle nor on this node")]
    MissingChunk { file: String, chunk: String },
    #[error("{0}")]
    Repo(String),
    #[error("{0}")]
    Store(String),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> BundleError {
    let context = context.into();
    move |source| BundleError::Io { context, source }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Result<[u8; N], BundleError> {
    let bad = || {
        BundleError::Malformed(format!(
            "bad hex {:?}",
            s.chars().take(80).collect::<String>()
        ))
    };
    if s.len() != 2 * N {
        return Err(bad());
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// One LFS file of a bundle: its digests and chunk list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileEntry {
    pub sha256: String,
    pub size: u64,
    /// `(BLAKE3 id, length)` in order.
    pub chunks: Vec<(String, u32)>,
}

/// The header of a bundle.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    /// `type/ns/name`.
    pub repo: String,
    pub created_at: u64,
    pub refs: BTreeMap<String, String>,
    pub prerequisites: Vec<String>,
    pub files: Vec<FileEntry>,
    /// The chunks whose bytes follow the git section, in order.
    pub carried: Vec<String>,
    pub git_len: u64,
    /// The exporting node's ed25519 public key (hex).
    pub signer: String,
}

/// What an incremental bundle starts from.
#[derive(Debug, Clone)]
pub enum Since {
    Nothing,
    /// A commit the receiver has; its tree's LFS files are known to the receiver.
    Commit(String),
    /// A bundle the receiver imported.
    Bundle(PathBuf),
}

/// What an export or import did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub repo: String,
    pub refs: usize,
    pub files: usize,
    pub chunks: usize,
    pub chunk_bytes: u64,
    pub git_bytes: u64,
    pub bundle_bytes: u64,
    pub signer: String,
}

/// Reads only the header of the bundle at `path` (no verification).
pub fn read_header(path: &Path) -> Result<Header, BundleError> {
    let mut r =
        BufReader::new(File::open(path).map_err(io_err(format!("open {}", path.display())))?);
    read_header_from(&mut r)
}

fn read_header_from(r: &mut impl Read) -> Result<Header, BundleError> {
    let mut magic = vec![0u8; MAGIC.len()];
    r.read_exact(&mut magic)
        .map_err(|_| BundleError::Malformed("too short".into()))?;
    if magic != MAGIC {
        return Err(BundleError::Malformed("no bundle magic".into()));
    }
    let mut len = [0u8; 8];
    r.read_exact(&mut len)
        .map_err(|_| BundleError::Malformed("truncated header".into()))?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER {
        return Err(BundleError::Malformed("header too large".into()));
    }
    let mut header = vec![0u8; len as usize];
    r.read_exact(&mut header)
        .map_err(|_| BundleError::Malformed("truncated header".into()))?;
    let header: Header = serde_json::from_slice(&header)
        .map_err(|e| BundleError::Malformed(format!("header: {e}")))?;
    if header.files.len() > MAX_FILES || header.git_len > MAX_GIT {
        return Err(BundleError::Malformed("header out of bounds".into()));
    }
    Ok(header)
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hash: sha2::Sha256,
    written: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn message(digest: &[u8]) -> Vec<u8> {
    [CONTEXT, digest].concat()
}

/// Writes the bundle of `id` to `out` (a new file), signed with the node key `secret`.
pub fn export(
    repos: &Repos,
    store: &Store,
    id: &RepoId,
    since: &Since,
    secret: &[u8; 32],
    out: &Path,
) -> Result<Report, BundleError> {
    let repo_err = |e: hub_repo::RepoError| BundleError::Repo(e.to_string());
    let refs = repos.public_refs(id).map_err(repo_err)?;
    let (prerequisites, known): (Vec<[u8; 20]>, BTreeSet<String>) = match since {
        Since::Nothing => (Vec::new(), BTreeSet::new()),
        Since::Commit(commit) => {
            let oid = unhex::<20>(commit)?;
            let files = repos
                .lfs_pointers(id, &[oid], MAX_FILES)
                .map_err(repo_err)?;
            let mut known = BTreeSet::new();
            for sha in files.keys() {
                if let Ok((_, manifest)) = store.manifest(&Sha256(*sha)) {
                    known.extend(manifest.chunks.iter().map(|c| hex(&c.id.0)));
                }
            }
            (vec![oid], known)
        }
        Since::Bundle(path) => {
            let old = read_header(path)?;
            let prereq = old
                .refs
                .values()
                .map(|h| unhex::<20>(h))
                .collect::<Result<Vec<_>, _>>()?;
            let known = old
                .files
                .iter()
                .flat_map(|f| f.chunks.iter().map(|(c, _)| c.clone()))
                .collect();
            (prereq, known)
        }
    };
    let tips: Vec<[u8; 20]> = refs.values().copied().collect();
    let pack = repos
        .build_pack(id, &tips, &prerequisites, MAX_GIT)
        .map_err(|e| BundleError::Repo(e.to_string()))?;
    let mut git = b"# v2 git bundle\n".to_vec();
    for p in &prerequisites {
        git.extend_from_slice(format!("-{}\n", hex(p)).as_bytes());
    }
    for (name, oid) in &refs {
        git.extend_from_slice(format!("{} {name}\n", hex(oid)).as_bytes());
    }
    git.push(b'\n');
    git.extend_from_slice(&pack);

    let pointers = repos.lfs_pointers(id, &tips, MAX_FILES).map_err(repo_err)?;
    let mut files = Vec::new();
    let mut carried = Vec::new();
    let mut seen = BTreeSet::new();
    for (sha, size) in pointers {
        let sha = Sha256(sha);
        let (_, manifest) = store.manifest(&sha).map_err(|e| {
            BundleError::Store(format!(
                "LFS file {sha} of {} is not stored here: {e}",
                id.hub_id()
            ))
        })?;
        let chunks: Vec<(String, u32)> = manifest
            .chunks
            .iter()
            .map(|c| (hex(&c.id.0), c.len))
            .collect();
        for (c, _) in &chunks {
            if !known.contains(c) && seen.insert(c.clone()) {
                carried.push(c.clone());
            }
        }
        files.push(FileEntry {
            sha256: sha.to_string(),
            size,
            chunks,
        });
    }
    let signing = ed25519_dalek::SigningKey::from_bytes(secret);
    let header = Header {
        repo: id.to_string(),
        created_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        refs: refs.iter().map(|(k, v)| (k.clone(), hex(v))).collect(),
        prerequisites: prerequisites.iter().map(|p| hex(p)).collect(),
        files,
        carried: carried.clone(),
        git_len: git.len() as u64,
        signer: hex(&signing.verifying_key().to_bytes()),
    };
    let header_bytes =
        serde_json::to_vec(&header).map_err(|e| BundleError::Malformed(e.to_string()))?;

    let tmp = out.with_extension("partial");
    let file = File::create(&tmp).map_err(io_err(format!("create {}", tmp.display())))?;
    let mut w = Hashing {
        inner: BufWriter::with_capacity(1 << 20, file),
        hash: sha2::Sha256::new(),
        written: 0,
    };
    let write_err = io_err(format!("write {}", tmp.display()));
    let mut chunk_bytes = 0u64;
    let written = (|| -> Result<(), BundleError> {
        let e = |e: io::Error| BundleError::Io {
            context: format!("write {}", tmp.display()),
            source: e,
        };
        w.write_all(MAGIC).map_err(e)?;
        w.write_all(&(header_bytes.len() as u64).to_le_bytes())
            .map_err(e)?;
        w.write_all(&header_bytes).map_err(e)?;
        w.write_all(&git).map_err(e)?;
        for c in &carried {
            let id = Hash(unhex::<32>(c)?);
            let data = store
                .read_chunk(&id)
                .map_err(|e| BundleError::Store(e.to_string()))?
                .ok_or_else(|| BundleError::Store(format!("chunk {c} is not stored here")))?;
            w.write_all(&(data.len() as u32).to_le_bytes()).map_err(e)?;
            w.write_all(&data).map_err(e)?;
            chunk_bytes += data.len() as u64;
        }
        let digest = w.hash.clone().finalize();
        let signature = ed25519_dalek::Signer::sign(&signing, &message(&digest));
        w.inner.write_all(&signature.to_bytes()).map_err(e)?;
        w.inner.flush().map_err(e)?;
        w.inner.get_ref().sync_all().map_err(e)?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let total = w.written + 64;
    drop(w);
    std::fs::rename(&tmp, out).map_err(write_err)?;
    Ok(Report {
        repo: header.repo,
        refs: header.refs.len(),
        files: header.files.len(),
        chunks: carried.len(),
        chunk_bytes,
        git_bytes: header.git_len,
        bundle_bytes: total,
        signer: header.signer,
    })
}

/// Checks the signature of the bundle at `path`; its header and signer.
fn verify_signature(file: &mut File, trusted: Option<&[u8; 32]>) -> Result<Header, BundleError> {
    let len = file.metadata().map_err(io_err("stat the bundle"))?.len();
    if len < (MAGIC.len() + 8 + 64) as u64 {
        return Err(BundleError::Malformed("too short".into()));
    }
    file.seek(SeekFrom::Start(0))
        .map_err(io_err("read the bundle"))?;
    let header = read_header_from(&mut BufReader::new(&mut *file))?;
    let signer = unhex::<32>(&header.signer)?;
    if let Some(trusted) = trusted
        && trusted != &signer
    {
        return Err(BundleError::Untrusted {
            signer: header.signer.clone(),
            trusted: hex(trusted),
        });
    }
    file.seek(SeekFrom::Start(0))
        .map_err(io_err("read the bundle"))?;
    let mut hash = sha2::Sha256::new();
    let mut body = (&mut *file).take(len - 64);
    io::copy(&mut body, &mut HashSink(&mut hash)).map_err(io_err("read the bundle"))?;
    let mut signature = [0u8; 64];
    file.read_exact(&mut signature)
        .map_err(io_err("read the bundle"))?;
    let key =
        ed25519_dalek::VerifyingKey::from_bytes(&signer).map_err(|_| BundleError::BadSignature)?;
    let signature = ed25519_dalek::Signature::from_bytes(&signature);
    key.verify_strict(&message(&hash.finalize()), &signature)
        .map_err(|_| BundleError::BadSignature)?;
    Ok(header)
}

struct HashSink<'a>(&'a mut sha2::Sha256);

impl Write for HashSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Imports the bundle at `path` into `repos` and `store` (see the module docs for what is
/// checked, in which order). `spool_dir` holds the carried chunks while files are rebuilt.
pub fn import(
    repos: &Repos,
    store: &Store,
    path: &Path,
    trusted: Option<&[u8; 32]>,
    spool_dir: &Path,
) -> Result<Report, BundleError> {
    let mut file = File::open(path).map_err(io_err(format!("open {}", path.display())))?;
    let header = verify_signature(&mut file, trusted)?;
    let (kind, rest) = header
        .repo
        .split_once('/')
        .ok_or_else(|| BundleError::Malformed("repo id".into()))?;
    let id = RepoId::parse(
        kind.parse()
            .map_err(|_| BundleError::Malformed("repo type".into()))?,
        rest,
    )
    .map_err(|_| BundleError::Malformed("repo id".into()))?;

    // The git section, then the carried chunks into an unnamed spool, each checked.
    file.seek(SeekFrom::Start(0))
        .map_err(io_err("read the bundle"))?;
    let mut r = BufReader::with_capacity(1 << 20, &mut file);
    read_header_from(&mut r)?;
    let mut git = vec![0u8; header.git_len as usize];
    r.read_exact(&mut git)
        .map_err(|_| BundleError::Malformed("truncated git section".into()))?;
    std::fs::create_dir_all(spool_dir).map_err(io_err("create the spool directory"))?;
    let spool = tempfile::tempfile_in(spool_dir).map_err(io_err("create a spool file"))?;
    let mut at: HashMap<String, (u64, u32)> = HashMap::new();
    let mut offset = 0u64;
    for c in &header.carried {
        let mut len = [0u8; 4];
        r.read_exact(&mut len)
            .map_err(|_| BundleError::Malformed("truncated chunk".into()))?;
        let len = u32::from_le_bytes(len);
        if len > MAX_CHUNK {
            return Err(BundleError::Malformed("chunk too large".into()));
        }
        let mut data = vec![0u8; len as usize];
        r.read_exact(&mut data)
            .map_err(|_| BundleError::Malformed("truncated chunk".into()))?;
        if hex(blake3::hash(&data).as_bytes()) != *c {
            return Err(BundleError::BadChunk(c.clone()));
        }
        spool
            .write_all_at(&data, offset)
            .map_err(io_err("write the spool"))?;
        at.insert(c.clone(), (offset, len));
        offset += u64::from(len);
    }
    drop(r);

    // The git bundle: prerequisites here, refs as announced.
    let (refs, pack) = parse_git_bundle(&git)?;
    let declared: BTreeMap<String, String> =
        refs.iter().map(|(k, v)| (k.clone(), hex(v))).collect();
    if declared != header.refs {
        return Err(BundleError::Malformed(
            "the git section's refs differ from the header's".into(),
        ));
    }
    let exists = repos.exists(&id);
    for p in &header.prerequisites {
        let oid = unhex::<20>(p)?;
        let have = exists && repos.resolve(&id, p).is_ok_and(|c| c == hex(&oid));
        if !have {
            return Err(BundleError::MissingPrerequisite(p.clone()));
        }
    }

    // Every file rebuilt into the store from the bundle's chunks and the store's own, its
    // SHA-256 and size checked by the import.
    let mut chunk_bytes = 0u64;
    for f in &header.files {
        let sha: Sha256 = f
            .sha256
            .parse()
            .map_err(|_| BundleError::Malformed("file sha256".into()))?;
        if store
            .has(&sha)
            .map_err(|e| BundleError::Store(e.to_string()))?
        {
            continue;
        }
        // The file keeps the sender's chunk boundaries (its manifest, as the header lists
        // it): a later incremental bundle names chunks by the sender's ids, which this store
        // then holds whatever cut the sender used (CDC, or a Xet upload's own chunks).
        let mut refs = Vec::with_capacity(f.chunks.len());
        let mut pieces = Vec::with_capacity(f.chunks.len());
        for (c, len) in &f.chunks {
            let chunk = Hash(unhex::<32>(c)?);
            refs.push(ChunkRef {
                id: chunk,
                len: *len,
            });
            pieces.push(match at.get(c) {
                Some(&(off, l)) if l == *len => Piece::Spool(off, l),
                _ => Piece::Store,
            });
            chunk_bytes += u64::from(*len);
        }
        let manifest = hub_store::Manifest {
            size: f.size,
            sha256: sha,
            blake3: hub_store::Manifest::chunk_list_hash(&refs),
            chunks: refs,
        };
        // A chunk neither carried nor held is named before anything is written (one index
        // lookup for all of them; the import reads and checks the held ones).
        let held: Vec<Hash> = manifest
            .chunks
            .iter()
            .zip(&pieces)
            .filter(|(_, p)| matches!(p, Piece::Store))
            .map(|(c, _)| c.id)
            .collect();
        let present = store
            .has_chunks(&held)
            .map_err(|e| BundleError::Store(e.to_string()))?;
        if let Some((id, _)) = held.iter().zip(&present).find(|(_, here)| !**here) {
            return Err(BundleError::MissingChunk {
                file: f.sha256.clone(),
                chunk: hex(&id.0),
            });
        }
        if manifest.size
            != manifest
                .chunks
                .iter()
                .map(|c| u64::from(c.len))
                .sum::<u64>()
        {
            return Err(BundleError::Malformed(format!(
                "file {}: its chunks do not add up to its size",
                f.sha256
            )));
        }
        // Carried chunks were checked against their BLAKE3 ids as they were spooled; the
        // store reads back and checks the ones it holds; the SHA-256 of the whole is checked
        // by the import, which keeps nothing when any of it is wrong.
        let chunks = pieces.into_iter().map(|piece| match piece {
            Piece::Spool(off, len) => {
                let mut data = vec![0u8; len as usize];
                spool.read_exact_at(&mut data, off)?;
                Ok(VerifiedChunk::Bytes(data))
            }
            Piece::Store => Ok(VerifiedChunk::Stored),
        });
        store
            .import_verified(&manifest, chunks)
            .map_err(|e| BundleError::Store(format!("rebuild {}: {e}", f.sha256)))?;
    }

    // Visible now: the refs in one compare-and-swap, the files owned by the repo.
    let shas: Vec<Sha256> = header
        .files
        .iter()
        .filter_map(|f| f.sha256.parse().ok())
        .collect();
    let adopt = || -> Result<(), BundleError> {
        for sha in &shas {
            hub_core::lfs_objects::adopt(repos, store, &id, sha)
                .map_err(|e| BundleError::Store(e.to_string()))?;
        }
        Ok(())
    };
    let replica = |e: hub_repo::ReplicaError| BundleError::Repo(e.to_string());
    if exists {
        adopt()?;
        repos.apply_replica(&id, pack, &refs).map_err(replica)?;
    } else {
        let created_at = i64::try_from(header.created_at).unwrap_or(0);
        repos
            .create_replica(&id, created_at, pack, &refs)
            .map_err(replica)?;
        adopt()?;
    }
    let bundle_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    Ok(Report {
        repo: header.repo,
        refs: refs.len(),
        files: header.files.len(),
        chunks: header.carried.len(),
        chunk_bytes,
        git_bytes: header.git_len,
        bundle_bytes,
        signer: header.signer,
    })
}

/// Where a file's chunk comes from: the bundle's spool (offset, length) or this store.
enum Piece {
    Spool(u64, u32),
    Store,
}

/// Ref names and their commits.
type Refs = BTreeMap<String, [u8; 20]>;

/// Refs and pack of a git bundle v2.
fn parse_git_bundle(git: &[u8]) -> Result<(Refs, &[u8]), BundleError> {
    let bad = |why: &str| BundleError::Malformed(format!("git section: {why}"));
    let rest = git
        .strip_prefix(b"# v2 git bundle\n")
        .ok_or_else(|| bad("not a v2 git bundle"))?;
    let end = rest
        .windows(2)
        .position(|w| w == b"\n\n")
        .ok_or_else(|| bad("no end of header"))?;
    let text = std::str::from_utf8(&rest[..end]).map_err(|_| bad("header not UTF-8"))?;
    let pack = &rest[end + 2..];
    let mut refs = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('-') {
            continue;
        }
        let (oid, name) = line.split_once(' ').ok_or_else(|| bad("ref line"))?;
        refs.insert(name.to_owned(), unhex::<20>(oid)?);
    }
    if !pack.is_empty() && !pack.starts_with(b"PACK") {
        return Err(bad("no pack"));
    }
    Ok((refs, pack))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_sections_parse() {
        let mut git = b"# v2 git bundle\n-".to_vec();
        git.extend_from_slice(
            format!(
                "{}\n{} refs/heads/main\n\nPACKxyz",
                "a".repeat(40),
                "b".repeat(40)
            )
            .as_bytes(),
        );
        let (refs, pack) = parse_git_bundle(&git).unwrap();
        assert_eq!(refs["refs/heads/main"], [0xbb; 20]);
        assert_eq!(pack, b"PACKxyz");
        for bad in [
            &b"# v3"[..],
            b"# v2 git bundle\nzz refs/x\n\nPACK",
            b"# v2 git bundle\n",
        ] {
            assert!(parse_git_bundle(bad).is_err());
        }
    }

    #[test]
    fn headers_are_bounded() {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            read_header_from(&mut &bytes[..]),
            Err(BundleError::Malformed(_))
        ));
        assert!(read_header_from(&mut &b"HUBMESH"[..]).is_err());
    }
}
