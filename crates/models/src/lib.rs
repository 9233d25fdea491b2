//! hubmesh's model lifecycle without HTTP — what TGI calls `Infer`, with the server's
//! rendering left to the gateway.
//!
//! - [`Models`] (`models.rs`): resolving a request's model to a commit, background loads shared
//!   by every waiter, the model cache on disk ([`files`]: `.partial` directories renamed when
//!   complete), one memory budget covering generation models *and* embedders (hub-infer's
//!   [`Registry`](hub_infer::serve::Registry): least recently used idle models evicted; a model
//!   larger than the budget refused), and cold starts from the mesh
//!   ([`files::fetch_model`]).
//! - [`LoadSnapshot`] (`snapshot.rs`): the load as a typed value — loaded models, queue depth,
//!   running sequences, KV blocks, free budget, measured speed — fed by the engines' own
//!   reports ([`LoadCounters`]), read by the capacity advert and the router (the gateway's
//!   Prometheus gauges only display the same reports).
//! - [`Compute`] (`compute.rs`): the compute mesh's node side — capacity table, response
//!   cache, counters, the advertiser and advert collector — and (`stream.rs`) the
//!   `/hubmesh/infer/1` stream server, which hands each forwarded job to the [`JobHandler`]
//!   the gateway registers (so a job answers exactly as over HTTP), plus the frames and
//!   [`open_job`] for the forwarding side.
//! - [`ModelError`] (`error.rs`): the one domain error the gateway renders per API family.
//!
//! Place in the graph: `hub-infer`, `hub-core` (LFS ownership, the mesh port), `hub-repo`,
//! `hub-store`, `hub-search` (model cards), `hub-compute`, `hub-protocol` and the transport
//! handle (`hub_net::P2p`, used in `compute.rs` and `stream.rs` only) ← `hub-models` ←
//! `gateway` ← `node`. It must not depend on axum, http or the gateway.
//!
//! Who builds what: the node builds [`Models`] and [`Compute`], gives both to the gateway's
//! state, builds the gateway's job handler and calls [`Compute::start`]; nothing is set up
//! behind a `OnceLock`.
//!
//! ```no_run
//! # async fn run(repos: std::sync::Arc<hub_repo::Repos>, store: hub_store::Store) {
//! use std::sync::Arc;
//! use hub_models::{Models, ModelsConfig, Wait};
//! let models = Arc::new(Models::new(ModelsConfig::new("/data/model-cache".into()), repos, store, None));
//! let id = hub_protocol::repo::RepoId::parse(hub_protocol::repo::RepoType::Model, "alice/tiny").unwrap();
//! let opened = models.open(&id, "main", Wait::Bounded).await;
//! println!("{:?}", models.snapshot().memory_free());
//! # }
//! ```

mod compute;
mod error;
pub mod files;
mod models;
mod shards;
mod snapshot;
mod stream;

pub use compute::{Compute, ComputeConfig, Counters, SpaceSlotsSource, unix_now};
pub use error::{FetchError, LoadError, LoadFailure, ModelError, Wait, error_chain};
#[cfg(any(test, feature = "test-support"))]
pub use models::LoadHook;
pub use models::{DEFAULT_LOAD_WAIT, HF_LOAD_GRACE, LOAD_ESTIMATE, Models, ModelsConfig, Opened};
pub use shards::{PlaceError, Shards, ShardsConfig};
pub use snapshot::{LoadCounters, LoadSnapshot};
pub use stream::{
    BodyError, HOP_HEADERS, JobAnswer, JobError, JobHandler, MAX_REMOTE_JOBS, OPEN_TIMEOUT,
    OpenError, REQUEST_HEADERS, open_job,
};

#[cfg(test)]
mod tests;
