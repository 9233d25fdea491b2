//! hubmesh's network simulator, two halves behind one command
//! (`hub-netsim run netsim/scenarios/NAME.toml [--json]`):
//!
//! - [`sim`]: the replication service (`hub-mesh`'s sans-IO `Service`, through its
//!   virtual-time harness [`hub_mesh::sim`]) with 1 000 to 10 000 nodes, a seeded generator
//!   and simulated links: gossip convergence, messages per node, catch-up after a
//!   partition, forged and replayed updates.
//! - [`lab`]: real `hubmesh up` processes, each in its own network namespace behind a
//!   shaped veth link to one bridge: fan-out of a large file, churn, partition and heal,
//!   forgery.
//!
//! Where it sits: a leaf of the workspace. It depends on `hub-mesh` (with the `sim`
//! feature) and `hub-protocol`; the lab runs the `hubmesh` binary and speaks to it over
//! HTTP only. Scenario files are [`scenario::Scenario`]s.
//!
//! ```no_run
//! let scenario = hub_netsim::scenario::Scenario::parse("kind = \"sim\"\n[sim]\nsizes = [100]\n")?;
//! let reports = hub_netsim::sim::run(&scenario.sim, scenario.seed, &std::env::temp_dir())?;
//! assert_eq!(reports[0].forgery.nodes_accepting, 0);
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod lab;
pub mod report;
pub mod scenario;
pub mod sim;
