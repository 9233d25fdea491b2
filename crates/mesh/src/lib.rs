//! hubmesh's replication: what moves between nodes on top of the transport (`hub-net`).
//!
//! Place in the graph: `… ← {repo, store} ← core ← mesh ← gateway ← node`, with `net ← mesh`.
//! It owns git-metadata replication (signed ref updates and namespace documents on gossip,
//! judged by the [`RefStore`]; DHT provider records per repo; packs of the difference over
//! `/hubmesh/git-pack/1` or as blobs), LFS content fetched and served chunk by chunk, verified
//! (module `lfs`, scheduled over several peers by `schedule`), the seeding policy (`seeds`),
//! namespace claims (ADR 0006), and what it counts and knows per peer and repo (`stats`, read
//! through [`Mesh::counters`], [`Mesh::peer_traffic`], [`Mesh::repo_state`]).
//!
//! [`spawn_replicating`] binds the swarm (`hub_net::bind`), registers replication's
//! protocols on it before it runs (inbound gossip and requests, the blob source), spawns it
//! and the replication task, and returns [`Mesh`]: the handle the gateway uses (seeding,
//! on-demand fetches, announcing local writes, namespace hosts and claims), which implements
//! `hub-core`'s `MeshPort`. The transport is reached only through `hub-net`'s public API; no
//! state of it is written from here. Module dependencies point one way: `error` (the typed
//! errors replication hands between its modules; no `Result<_, String>`) ← `stats`, `state`,
//! `seeds`, `schedule` ← `lfs` ← `replicate` ← `port` (`scripts/module-cycles` checks it).
//!
//! Must not depend on the gateway, axum, `hub-auth` (local account names come in as
//! [`LocalNames`]) or the inference crates; it sees the Hub's rules only through `hub-core`
//! (a repo's LFS objects).

mod error;
mod lfs;
mod port;
mod replicate;
mod schedule;
mod seeds;
mod state;
mod stats;

pub use hub_core::EnsureError;
/// The virtual-time harness of the replication service (`hub-netsim` drives it at scale).
#[cfg(feature = "sim")]
pub use replicate::sim;
pub use replicate::{Mesh, OnReplicated, Replication, ReplicationError, spawn_replicating};
pub use seeds::{SEEDS_FILE, SeedEntry, SeedError, SeedSource};
pub use state::{Claim, LocalNames, RefStore, RefStoreError};
pub use stats::{MeshCounters, PeerTraffic, RepoState};
