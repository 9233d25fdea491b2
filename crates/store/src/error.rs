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
        Self::Db(e.into())
    }

    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { op, path, source }
    }
}
