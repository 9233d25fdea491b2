//! The store's error type.

use hub_protocol::manifest::{Hash, Sha256};
use std::path::PathBuf;

/// Errors of store operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("read the file being imported")]
    Source(#[source] std::io::Error),
    #[error("open store index {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("store index")]
    Db(#[source] redb::Error),
    #[error("no file with sha256 {sha256}")]
    NotFound { sha256: Sha256 },
    #[error("store index is inconsistent: {what} {id}")]
    Corrupt { what: &'static str, id: Hash },
    #[error("store task failed")]
    Task(#[source] tokio::task::JoinError),
    #[error("import worker panicked")]
    WorkerPanic,
    #[error("an import stage stopped early")]
    StageStopped,
    /// The disk is full (`ENOSPC`), or its free space is below the store's reserved headroom
    /// ([`StoreConfig::reserved_bytes`](crate::StoreConfig::reserved_bytes)). Nothing of the
    /// failed write is kept.
    #[error("{op} {path}: not enough disk space")]
    StorageFull {
        op: &'static str,
        path: PathBuf,
        /// The `ENOSPC` error; `None` when the reserved headroom refused the write.
        #[source]
        source: Option<std::io::Error>,
    },
    /// A chunk handed to [`Store::import_verified`](crate::Store::import_verified) is not the
    /// length its manifest entry says; nothing was kept.
    #[error("chunk {index} is {len} bytes, the manifest says {expected}")]
    ChunkLen {
        index: usize,
        len: usize,
        expected: u32,
    },
    /// The imported content is not what the caller announced; nothing was kept.
    #[error(
        "content is {size} bytes with sha256 {sha256}, expected {expected_size} bytes with sha256 {expected}"
    )]
    Mismatch {
        sha256: Sha256,
        size: u64,
        expected: Sha256,
        expected_size: u64,
    },
}

impl StoreError {
    pub(crate) fn db(e: impl Into<redb::Error>) -> Self {
        match e.into() {
            redb::Error::Io(source) if is_storage_full(&source) => Self::StorageFull {
                op: "write",
                path: PathBuf::from("index.redb"),
                source: Some(source),
            },
            e => Self::Db(e),
        }
    }

    /// An I/O error of `op` on `path`; `ENOSPC` (and `EDQUOT`) become [`StoreError::StorageFull`].
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| {
            if is_storage_full(&source) {
                Self::StorageFull {
                    op,
                    path,
                    source: Some(source),
                }
            } else {
                Self::Io { op, path, source }
            }
        }
    }

    /// Whether the disk (or the reserved headroom) is what failed: the write may succeed once
    /// space is freed, and an HTTP client should see 507, not 500.
    pub fn is_storage_full(&self) -> bool {
        matches!(self, Self::StorageFull { .. })
    }
}

fn is_storage_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error, ErrorKind};

    #[test]
    fn a_full_disk_is_its_own_error() {
        let full =
            StoreError::io("write block", "/s/tmp/1.blk")(Error::from(ErrorKind::StorageFull));
        assert!(full.is_storage_full(), "{full:?}");
        assert!(full.to_string().contains("not enough disk space"), "{full}");
        let quota =
            StoreError::io("write block", "/s/tmp/1.blk")(Error::from(ErrorKind::QuotaExceeded));
        assert!(quota.is_storage_full());
        let other =
            StoreError::io("write block", "/s/tmp/1.blk")(Error::from(ErrorKind::PermissionDenied));
        assert!(!other.is_storage_full());
        let db = StoreError::db(redb::Error::Io(Error::from_raw_os_error(28)));
        assert!(db.is_storage_full(), "{db:?}");
    }
}
