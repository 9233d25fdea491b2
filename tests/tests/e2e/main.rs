//! End-to-end tests against real `hubmesh` processes. One binary for the crate (links dominate
//! test build time); one module per area.

mod accounts;
mod cli;
mod node;
mod store;
