//! hubmesh's I/O-free core: names and ids, documents and wire formats.
//!
//! This crate sits at the root of the dependency graph
//! (`protocol ← store ← repo ← … ← gateway ← node`). It must stay free of tokio, libp2p,
//! gix, tantivy and candle, so that clients and tools can depend on it cheaply; CI checks
//! that with `cargo tree -p hub-protocol -e normal -i tokio`.
//!
//! ```
//! use hub_protocol::name::validate_name_part;
//!
//! assert!(validate_name_part("SmolLM2-135M").is_ok());
//! assert!(validate_name_part("..").is_err());
//! ```

pub mod blocks;
pub mod capacity;
pub mod forward;
pub mod manifest;
pub mod name;
pub mod node_info;
pub mod placement;
pub mod replication;
pub mod repo;
pub mod signed;

pub use node_info::NodeInfo;

/// The hubmesh version string, the same in every crate of one build.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
