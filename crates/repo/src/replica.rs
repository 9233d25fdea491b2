//! Replication of git metadata between nodes: building the pack a peer asks for, and
//! applying a pack received from a peer.
//!
//! Applying reuses the push machinery of [`crate::receive`]: the pack goes into a quarantine
//! through `git index-pack`, every new object is checked (paths, modes, connectivity), the
//! objects no ref of the signed update reaches as well as the others (a peer's pack is as
//! untrusted as a push's; see [`crate::receive`]), and all refs move in one compare-and-swap
//! transaction. What a push checks on top (write
//! rights, fast-forward for non-force pushes) does not apply: a replica follows the refs of a
//! signed update that hub-mesh already accepted, so authority comes from the signature, and a
//! force-push upstream is followed as it is.
//!
//! LFS: applying a pack moves refs only. The check that a push's pointers name content the
//! repo possesses is skipped for replicas: hub-mesh fetches the content afterwards (verified
//! against the manifest ids of the signed update), and until it has, a download of such a file
//! from the replica answers 404. [`Repos::lfs_pointers`] lists what the tips reference, both
//! for the publisher (what it signs) and the seeder (what it still has to fetch).

use crate::lfs::decode_hex32;
use crate::receive::{Quarantine, ReceiveError, RefCommand, Rejection, ZERO_ID};
use crate::repos::{RepoError, Repos};
use gix::ObjectId;
use hub_protocol::repo::RepoId;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Why a pack could not be built or applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Receive(#[from] ReceiveError),
    #[error("object {id} is not in the repository")]
    MissingObject { id: String },
    #[error("pack exceeds the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("git pack-objects failed: {message}")]
    PackObjects { message: String },
    #[error("run git pack-objects")]
    Spawn(#[source] std::io::Error),
    #[error("ref {name} refused: {reason}")]
    Rejected {
        name: String,
        #[source]
        reason: Rejection,
    },
}

/// What [`Repos::apply_replica`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaOutcome {
    /// The refs already had the wanted values; nothing was written.
    UpToDate,
    /// This many refs were created, moved or deleted.
    Updated { refs: usize },
}

fn hex(oid: &[u8; 20]) -> String {
    ObjectId::from_bytes_or_panic(oid).to_string()
}

impl Repos {
    /// The ref tips of a repository, as raw oids (what a requester sends as `have`).
    pub fn ref_tips(&self, id: &RepoId) -> Result<Vec<[u8; 20]>, RepoError> {
        let mut out = Vec::new();
        for (_, target) in self.advertised_refs(id)? {
            if let Ok(oid) = ObjectId::from_hex(target.as_bytes())
                && let Ok(bytes) = <[u8; 20]>::try_from(oid.as_bytes())
            {
                out.push(bytes);
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// The refs a publisher signs, with their raw oids: branches, tags, pull-request heads
    /// (`refs/pr/`) and the hub's records (`refs/hub/`: discussions), so a repo's pull
    /// requests and discussions replicate with it.
    pub fn public_refs(&self, id: &RepoId) -> Result<BTreeMap<String, [u8; 20]>, RepoError> {
        let mut out = BTreeMap::new();
        for (name, target) in self.advertised_refs(id)? {
            if !crate::receive::REPLICATED_REF_PREFIXES
                .iter()
                .any(|p| name.starts_with(p))
            {
                continue;
            }
            if let Ok(oid) = ObjectId::from_hex(target.as_bytes())
                && let Ok(bytes) = <[u8; 20]>::try_from(oid.as_bytes())
            {
                out.insert(name, bytes);
            }
        }
        Ok(out)
    }

    /// The LFS pointers in the trees of the commits `tips` (not their history), sha256 →
    /// size, at most `limit` of them (the smallest sha256s when there are more). Tips that are
    /// not commits (or tags of commits) are skipped.
    pub fn lfs_pointers(
        &self,
        id: &RepoId,
        tips: &[[u8; 20]],
        limit: usize,
    ) -> Result<BTreeMap<[u8; 32], u64>, RepoError> {
        let mut out = BTreeMap::new();
        for tip in tips {
            let entries = match self.list_tree(id, &hex(tip), "", true) {
                Ok(entries) => entries,
                Err(RepoError::NotFound { .. }) => {
                    return Err(RepoError::NotFound { repo: id.clone() });
                }
                Err(error) => {
                    tracing::debug!(repo = %id, tip = %hex(tip), %error, "tip skipped for LFS");
                    continue;
                }
            };
            for pointer in entries.into_iter().filter_map(|e| e.lfs) {
                let mut sha = [0u8; 32];
                if decode_hex32(pointer.sha256.as_bytes(), &mut sha) {
                    out.insert(sha, pointer.size);
                }
            }
        }
        while out.len() > limit {
            out.pop_last();
        }
        Ok(out)
    }

    /// Builds a pack of the objects reachable from `want` and not from `have` (haves the
    /// repository does not know are ignored). Every wanted object must exist. At most `limit`
    /// bytes; a larger pack is [`ReplicaError::TooLarge`].
    pub fn build_pack(
        &self,
        id: &RepoId,
        want: &[[u8; 20]],
        have: &[[u8; 20]],
        limit: u64,
    ) -> Result<Vec<u8>, ReplicaError> {
        let repo = self.open_repo(id)?;
        let mut input = String::new();
        for oid in want {
            let oid = ObjectId::from_bytes_or_panic(oid);
            if !repo.has_object(oid) {
                return Err(ReplicaError::MissingObject {
                    id: oid.to_string(),
                });
            }
            input.push_str(&format!("{oid}\n"));
        }
        for oid in have {
            let oid = ObjectId::from_bytes_or_panic(oid);
            if repo.has_object(oid) {
                input.push_str(&format!("^{oid}\n"));
            }
        }
        let mut child = Command::new("git")
            .args([
                "pack-objects",
                "--stdout",
                "--revs",
                "--delta-base-offset",
                "-q",
            ])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("GIT_DIR", self.git_dir(id))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(ReplicaError::Spawn)?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        // Feed and drain on threads so neither pipe can fill up and block the other.
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
        let err_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = (&mut stderr).take(16 * 1024).read_to_end(&mut buf);
            let _ = std::io::copy(&mut stderr, &mut std::io::sink());
            buf
        });
        let mut pack = Vec::new();
        let read = (&mut stdout).take(limit + 1).read_to_end(&mut pack);
        let too_large = pack.len() as u64 > limit;
        if too_large || read.is_err() {
            let _ = child.kill();
        }
        drop(stdout);
        let status = child.wait().map_err(ReplicaError::Spawn)?;
        writer.join().ok();
        let stderr = err_reader.join().unwrap_or_default();
        if too_large {
            return Err(ReplicaError::TooLarge { limit });
        }
        read.map_err(ReplicaError::Spawn)?;
        if !status.success() {
            return Err(ReplicaError::PackObjects {
                message: String::from_utf8_lossy(&stderr)
                    .trim()
                    .chars()
                    .take(300)
                    .collect(),
            });
        }
        Ok(pack)
    }

    /// Makes the repository's public refs ([`Repos::public_refs`]) exactly `refs`, with the
    /// objects from `pack`: quarantine, `index-pack`, object checks, then one compare-and-swap
    /// transaction (see the module docs for what is not checked). `main` is never deleted.
    pub fn apply_replica(
        &self,
        id: &RepoId,
        pack: &[u8],
        refs: &BTreeMap<String, [u8; 20]>,
    ) -> Result<ReplicaOutcome, ReplicaError> {
        let current = self.public_refs(id)?;
        self.apply_replica_at(id, self.git_dir(id), &current, pack, refs)
    }

    /// [`Repos::apply_replica`] into the repository at `git_dir`, whose public refs are
    /// `current`.
    pub(crate) fn apply_replica_at(
        &self,
        id: &RepoId,
        git_dir: PathBuf,
        current: &BTreeMap<String, [u8; 20]>,
        pack: &[u8],
        refs: &BTreeMap<String, [u8; 20]>,
    ) -> Result<ReplicaOutcome, ReplicaError> {
        let mut commands = Vec::new();
        for (name, oid) in refs {
            if current.get(name) != Some(oid) {
                commands.push(RefCommand {
                    old: current.get(name).map_or_else(|| ZERO_ID.to_owned(), hex),
                    new: hex(oid),
                    name: name.clone(),
                });
            }
        }
        for (name, oid) in current {
            if !refs.contains_key(name) && name != "refs/heads/main" {
                commands.push(RefCommand {
                    old: hex(oid),
                    new: ZERO_ID.to_owned(),
                    name: name.clone(),
                });
            }
        }
        if commands.is_empty() {
            return Ok(ReplicaOutcome::UpToDate);
        }
        let mut quarantine: Quarantine = self.quarantine_at(id, git_dir)?;
        // The signed update carries the repo's pull-request heads and discussion logs too.
        quarantine.accept_hub_refs();
        if !pack.is_empty() {
            quarantine.index_pack(&mut &pack[..], pack.len() as u64)?;
        }
        // LFS content is not replicated in this slice (module docs).
        let checked = quarantine.check(&commands, &mut |_| true)?;
        for (command, verdict) in commands.iter().zip(checked) {
            if let Err(reason) = verdict {
                return Err(ReplicaError::Rejected {
                    name: command.name.clone(),
                    reason,
                });
            }
        }
        if let Err(rejections) = self.apply_push(quarantine, &commands)? {
            let (name, reason) = commands
                .iter()
                .zip(rejections)
                .find_map(|(c, r)| r.map(|r| (c.name.clone(), r)))
                .unwrap_or_else(|| (String::new(), Rejection::Atomic));
            return Err(ReplicaError::Rejected { name, reason });
        }
        Ok(ReplicaOutcome::Updated {
            refs: commands.len(),
        })
    }
}
