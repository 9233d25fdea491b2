//! Scenario files (`netsim/scenarios/*.toml`): which half runs and with what sizes.
//!
//! ```toml
//! kind = "fanout"     # fanout | churn | partition-heal | forgery | two-sources | sim
//! nodes = 12          # lab: nodes besides the origin
//! file_mib = 256
//! rate_mbit = 400     # every node's link, each direction (tc tbf)
//! ```
//!
//! Unknown keys are errors, so a typo never silently runs the defaults.

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::path::Path;

/// What a scenario file says.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Which scenario: `fanout`, `churn`, `partition-heal`, `forgery`, `two-sources` (real
    /// nodes) or `sim`.
    pub kind: Kind,
    /// Seeds the simulation's generator (deliveries, topology) and the lab's file bytes.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// The lab's settings (every kind but `sim`), at the top level of the file.
    #[serde(default = "default_nodes")]
    nodes: usize,
    #[serde(default = "default_file_mib")]
    file_mib: u64,
    #[serde(default = "default_rate")]
    rate_mbit: u64,
    #[serde(default = "default_kill_share")]
    kill_share: f64,
    #[serde(default = "default_deadline")]
    deadline_s: u64,
    /// Filled from the fields above by [`Scenario::parse`].
    #[serde(skip)]
    pub lab: LabConfig,
    /// The simulation's settings (`kind = "sim"`, table `[sim]`).
    #[serde(default)]
    pub sim: SimConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Fanout,
    Churn,
    PartitionHeal,
    Forgery,
    TwoSources,
    Sim,
}

/// A lab of real `hubmesh up` processes, each in its own network namespace.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// Nodes besides the origin.
    pub nodes: usize,
    /// Size of the file the origin publishes, in MiB (fan-out, churn).
    pub file_mib: u64,
    /// Every node's link rate, each direction, in Mbit/s (tc tbf); 0 leaves links unshaped.
    pub rate_mbit: u64,
    /// Churn: the share of the non-origin nodes SIGKILLed during the fan-out.
    pub kill_share: f64,
    /// How long the scenario may take before it counts the nodes that did not finish.
    pub deadline_s: u64,
}

impl Default for LabConfig {
    fn default() -> Self {
        Self {
            nodes: default_nodes(),
            file_mib: default_file_mib(),
            rate_mbit: default_rate(),
            kill_share: default_kill_share(),
            deadline_s: default_deadline(),
        }
    }
}

/// The replication service at scale, in virtual time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Network sizes to run, one after the other.
    #[serde(default = "default_sizes")]
    pub sizes: Vec<usize>,
    /// Links per node: a ring plus random chords up to this average degree (gossipsub's
    /// mesh degree D is 6).
    #[serde(default = "default_degree")]
    pub degree: usize,
    /// Signed updates the origin publishes, one after the other.
    #[serde(default = "default_updates")]
    pub updates: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            sizes: default_sizes(),
            degree: default_degree(),
            updates: default_updates(),
        }
    }
}

fn default_seed() -> u64 {
    1
}
fn default_nodes() -> usize {
    12
}
fn default_file_mib() -> u64 {
    256
}
fn default_rate() -> u64 {
    400
}
fn default_kill_share() -> f64 {
    0.25
}
fn default_deadline() -> u64 {
    600
}
fn default_sizes() -> Vec<usize> {
    vec![1000, 10_000]
}
fn default_degree() -> usize {
    6
}
fn default_updates() -> u64 {
    3
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read scenario {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("parse scenario {}", path.display()))
    }

    /// Parses and checks scenario text.
    pub fn parse(text: &str) -> Result<Self> {
        let mut scenario: Self = toml::from_str(text)?;
        scenario.lab = LabConfig {
            nodes: scenario.nodes,
            file_mib: scenario.file_mib,
            rate_mbit: scenario.rate_mbit,
            kill_share: scenario.kill_share,
            deadline_s: scenario.deadline_s,
        };
        scenario.check()?;
        Ok(scenario)
    }

    fn check(&self) -> Result<()> {
        let lab = &self.lab;
        if self.kind == Kind::Sim {
            let sim = &self.sim;
            if sim.sizes.is_empty() || sim.sizes.iter().any(|&n| !(4..=20_000).contains(&n)) {
                bail!("sim sizes must be 4 to 20000 nodes each");
            }
            if !(2..=32).contains(&sim.degree) {
                bail!("sim degree must be 2 to 32");
            }
            if !(1..=100).contains(&sim.updates) {
                bail!("sim updates must be 1 to 100");
            }
        } else {
            if !(2..=64).contains(&lab.nodes) {
                bail!("lab nodes must be 2 to 64 (besides the origin)");
            }
            if !(1..=4096).contains(&lab.file_mib) {
                bail!("file_mib must be 1 to 4096");
            }
            if !(0.0..1.0).contains(&lab.kill_share) {
                bail!("kill_share must be at least 0 and below 1");
            }
            if lab.deadline_s == 0 {
                bail!("deadline_s must be positive");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typo_or_a_bad_size_is_an_error() {
        assert!(Scenario::parse("kind = \"fanout\"\nnodse = 3\n").is_err());
        assert!(Scenario::parse("kind = \"fanout\"\nnodes = 1\n").is_err());
        assert!(Scenario::parse("kind = \"sim\"\n[sim]\nsizes = [2]\n").is_err());
        let s = Scenario::parse("kind = \"partition-heal\"\nnodes = 4\n").unwrap();
        assert_eq!(
            (s.kind, s.lab.nodes, s.lab.file_mib),
            (Kind::PartitionHeal, 4, 256)
        );
    }
}
