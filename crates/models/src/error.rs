//! The errors of the models service: one domain type, [`ModelError`], that the gateway renders
//! in each API's shape (OpenAI, TGI, the HF Inference API) in one place. Nothing here knows
//! HTTP: status codes are the gateway's choice.

use std::sync::Arc;
use std::time::Duration;

use hub_infer::serve::RegistryError;

/// Why a model's files could not be turned into a loaded model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadFailure {
    /// A weights file is not in this node's store (or not the repo's own object): the mesh
    /// has not delivered it yet. Names the file's path in the repo.
    #[error("weights not in the local store: {0}")]
    NotLocal(String),
    /// The files are not a model this node can serve (unsupported architecture, bad files).
    #[error(transparent)]
    Model(Box<dyn std::error::Error + Send + Sync>),
    #[error("write model files")]
    Io(#[from] std::io::Error),
}

/// A failed load: the model's files, the memory budget (too large: the gateway's 422; busy:
/// its 503), or the engine. Shared by every request that waited for the load.
pub type LoadError = RegistryError<LoadFailure>;

/// How long a request waits for its model to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// A short grace ([`crate::HF_LOAD_GRACE`]), then [`ModelError::Loading`] (the HF
    /// Inference API's default: 503 with `estimated_time`).
    Grace,
    /// Up to the configured load wait, then [`ModelError::Loading`].
    Bounded,
}

/// Opening a model for a request failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The revision does not resolve in a repository this node holds.
    #[error("no such model revision")]
    NotFound,
    /// The model is still loading after the request waited as `wait` says (`waited` at
    /// most); `estimated` is what is likely left.
    #[error("the model is still loading")]
    Loading {
        wait: Wait,
        waited: Duration,
        estimated: Duration,
    },
    /// The load failed.
    #[error(transparent)]
    Load(Arc<LoadError>),
    /// The model was loaded, then unloaded to make room for others before this request could
    /// use it, again and again.
    #[error("the model was unloaded to make room for others; retry")]
    Evicted,
    /// The loading thread stopped without an outcome (it panicked).
    #[error("the loader stopped")]
    LoaderStopped,
    /// A blocking task of the service failed.
    #[error("blocking task failed")]
    Task(#[source] Arc<tokio::task::JoinError>),
}

/// A cold start from the mesh failed: the git data or a weights file did not arrive.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    #[error(transparent)]
    Repo(#[from] hub_core::EnsureError),
    #[error(transparent)]
    Lfs(#[from] hub_core::LfsFetchError),
}

/// `e` and its sources, joined with `": "` (for a log line).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
