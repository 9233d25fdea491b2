//! hubmesh's compute mesh, without sockets: who can run what, where a request goes, and which
//! answers may be reused.
//!
//! It sits above `hub-protocol` (which defines the signed [`CapacityAdvert`] wire type) and
//! below the p2p driver and the gateway, which feed it and act on its answers:
//!
//! - [`CapacityTable`] holds the verified, live adverts of the mesh. The swarm task hands it
//!   every gossip message of `hubmesh/capacity/1` ([`CapacityTable::insert_bytes`]); it checks
//!   signature, expiry, `seq`, a per-node rate limit and a node cap, and says why it refused
//!   ([`Rejected::penalise`] tells gossipsub whether to punish the sender).
//! - [`route`] is a pure function of the request, this node's own state ([`LocalState`]), the
//!   live adverts, measured RTTs and the clock. It returns an ordered list of candidates
//!   ([`Decision`]); the gateway tries them in order and moves on when one fails before the
//!   first token.
//! - [`plan_placement`] splits a model too large for one node over `tensor_parallel ×
//!   pipeline_parallel` nodes from the same adverts and RTTs (hub-protocol's signed
//!   `Placement` is its answer; hub-infer's `shard` module runs it).
//! - [`place_space`] orders the nodes that may run a Space for a gateway that will not run
//!   it itself, from their adverts' Space slots and RTTs (`space.rs`).
//! - [`ResponseCache`] is a bounded LRU of full response bodies for deterministic requests
//!   ([`is_deterministic`]), keyed by model, resolved commit and canonical request JSON
//!   ([`CacheKey`]).
//!
//! Time is unix seconds passed in by the caller, so tests and netsim drive it without a clock.
//! None of these types lock; the owner wraps them (a `Mutex` in the gateway state, or the
//! swarm task's own state).
//!
//! Owns the routing decision and its tables, not the sockets or the engines: `hub-models`
//! runs the advertiser and the stream server, the gateway forwards. Depends on `hub-protocol`
//! only among ours, and must not depend on tokio, the network crates or HTTP.
//!
//! ```
//! use hub_compute::{CapacityTable, LocalState, Mode, RouteRequest, TableConfig, Target, route};
//! use hub_protocol::capacity::{CapacityAdvert, LoadedModel};
//! use hub_protocol::repo::{RepoId, RepoType};
//! use hub_protocol::signed::SigningKey;
//! use std::collections::HashMap;
//!
//! let now = 1_700_000_000;
//! let model = RepoId::parse(RepoType::Model, "org/tiny").unwrap();
//! let peer = SigningKey::from_bytes(&[1; 32]);
//! let mut advert = CapacityAdvert::new(peer.public(), 1, now);
//! (advert.mode, advert.accepts_remote, advert.queue_limit) = (Mode::Mesh, true, 8);
//! advert.models.push(LoadedModel {
//!     repo: model.clone(),
//!     commit: [0xab; 20],
//!     decode_tokens_per_s: 41.0,
//!     running: 0,
//! });
//!
//! let mut table = CapacityTable::new(TableConfig::default());
//! table.insert_bytes(&advert.sign(&peer).unwrap().encode(), now).unwrap();
//!
//! let me = SigningKey::from_bytes(&[2; 32]).public();
//! let local = LocalState::idle(me, Mode::Off);
//! let request = RouteRequest { model, commit: None, load_bytes: 0 };
//! let decision = route(&request, &local, table.live(now), &HashMap::new(), now);
//! assert_eq!(decision.candidates[0].target, Target::Remote(peer.public()));
//! assert!(!decision.includes_local);
//! ```

mod cache;
mod placement;
mod route;
mod space;
mod table;
#[cfg(test)]
mod testgen;

pub use cache::{CacheKey, CachedResponse, ResponseCache, is_deterministic};
pub use hub_protocol::capacity::{
    CapacityAdvert, DeviceKind, LoadedModel, Mode, SignedCapacityAdvert, SpaceSlots, UnknownMode,
};
pub use placement::{
    LocalCapacity, PlacementRequest, PlanError, plan_placement, proportional_layers,
};
pub use route::{Candidate, Decision, LocalState, RouteRequest, Target, route};
pub use space::place_space;
pub use table::{Accepted, CapacityTable, ModelView, NodeView, Rejected, TableConfig, TableView};
