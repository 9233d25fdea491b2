//! The data directory: its lock, the node key, and the files the node writes for others.
//!
//! ```text
//! DATA/
//!   node.lock     held (flock) while a node runs; holds its pid
//!   node.key      ed25519 secret key (32 bytes, mode 0600), created on first start
//!   auth.redb     accounts and tokens
//!   repos/        bare git repositories: {models,datasets,spaces}/{ns}/{name}.git
//!   store/        the chunk store: blocks, index.redb
//!   search/       the listing index (tantivy), rebuilt from repos/ at every start
//!   refs.redb     accepted namespace documents and signed ref updates (replication)
//!   admin.token   the admin's first token (mode 0600), written on first start
//!   node.json     written once the node serves; removed on clean shutdown
//! ```
//!
//! Files that others read (`node.json`, `admin.token`, `node.key`) are written atomically:
//! a temporary file in the same directory, fsync, rename, fsync of the directory.

use anyhow::{Context, bail};
use hub_net::Keypair;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const LOCK_FILE: &str = "node.lock";
pub const KEY_FILE: &str = "node.key";
pub const AUTH_DB: &str = "auth.redb";
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
pub const REPOS_DIR: &str = "repos";
pub const STORE_DIR: &str = "store";
pub const REFS_DB: &str = "refs.redb";
pub const SEARCH_DIR: &str = "search";

/// An open data directory, locked for this process until dropped.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates the directory if needed and takes its lock, failing at once if another node
    /// holds it.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(path)
            .with_context(|| format!("create data directory {}", path.display()))?;
        // Absolute from here on: child processes (git) run in other working directories, and
        // the default `./hubmesh-data` is relative.
        let absolute = fs::canonicalize(path)
            .with_context(|| format!("resolve data directory {}", path.display()))?;
        let path = absolute.as_path();
        let lock_path = path.join(LOCK_FILE);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .with_context(|| format!("open {}", lock_path.display()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                lock.read_to_string(&mut holder).ok();
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    "another hubmesh process".to_owned()
                } else {
                    format!("another hubmesh process (pid {holder})")
                };
                bail!(
                    "data directory {} is already in use by {who}; stop that node or pass another --data",
                    path.display()
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("lock {}", lock_path.display()));
            }
        }
        lock.set_len(0)
            .and_then(|()| lock.write_all(std::process::id().to_string().as_bytes()))
            .with_context(|| format!("write {}", lock_path.display()))?;
        Ok(Self {
            path: path.to_owned(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The node's ed25519 key, created on first start.
    pub fn load_or_create_key(&self) -> anyhow::Result<Keypair> {
        let path = self.join(KEY_FILE);
        match fs::read(&path) {
            Ok(mut bytes) => {
                if bytes.len() != 32 {
                    bail!(
                        "node key {} is {} bytes, expected 32; restore it from a backup or move it away to create a new identity",
                        path.display(),
                        bytes.len()
                    );
                }
                Keypair::ed25519_from_bytes(&mut bytes)
                    .with_context(|| format!("read node key {}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Keypair::generate_ed25519();
                let secret = key
                    .clone()
                    .try_into_ed25519()
                    .context("a freshly generated key is ed25519")?
                    .secret();
                write_atomic(&path, secret.as_ref(), 0o600)
                    .with_context(|| format!("write node key {}", path.display()))?;
                tracing::info!(path = %path.display(), "created node key");
                Ok(key)
            }
            Err(e) => Err(e).with_context(|| format!("read node key {}", path.display())),
        }
    }
}

/// Writes `bytes` to `path` so that readers see the old file or the whole new one, never a
/// part; the file gets `mode` before any byte is written.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        fs::remove_file(&tmp).ok();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn second_open_fails_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDir::open(dir.path()).unwrap();
        let err = format!("{:#}", DataDir::open(dir.path()).unwrap_err());
        assert!(err.contains("already in use"), "{err}");
        assert!(err.contains(&std::process::id().to_string()), "{err}");
        drop(first);
        DataDir::open(dir.path()).unwrap();
    }

    #[test]
    fn key_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::open(dir.path()).unwrap();
        let a = d.load_or_create_key().unwrap();
        let b = d.load_or_create_key().unwrap();
        assert_eq!(a.public(), b.public());
        let mode = fs::metadata(d.join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn truncated_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::open(dir.path()).unwrap();
        fs::write(d.join(KEY_FILE), [1u8; 7]).unwrap();
        let err = format!("{:#}", d.load_or_create_key().unwrap_err());
        assert!(err.contains("7 bytes, expected 32"), "{err}");
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.json");
        write_atomic(&p, b"old", 0o644).unwrap();
        write_atomic(&p, b"new contents", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new contents");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp files left"
        );
    }
}
