//! `hub-netsim run SCENARIO.toml [--json]`: runs a scenario, prints a human table on stderr
//! and, with `--json`, one JSON object on stdout.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use hub_netsim::lab::{self, LabOptions};
use hub_netsim::scenario::{Kind, Scenario};
use std::path::PathBuf;
use std::process::ExitCode;

/// hubmesh's network simulator: the replication service at scale in virtual time, and real
/// nodes in network namespaces with shaped links.
#[derive(Debug, Parser)]
#[command(name = "hub-netsim", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a scenario file (netsim/scenarios/*.toml).
    Run {
        /// The scenario file.
        scenario: PathBuf,
        /// Print the figures as one JSON object on stdout.
        #[arg(long)]
        json: bool,
        /// The `hubmesh` binary the lab runs [default: `hubmesh` next to this binary].
        #[arg(long, value_name = "PATH")]
        hubmesh: Option<PathBuf>,
        /// Where the simulation's ref stores and the lab's data directories go
        /// [default: /dev/shm when it exists, else the temporary directory].
        #[arg(long, value_name = "DIR")]
        work: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hub-netsim: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let Command::Run {
        scenario: path,
        json,
        hubmesh,
        work,
    } = Cli::parse().command;
    let scenario = Scenario::load(&path)?;
    let work = work.unwrap_or_else(|| {
        let shm = PathBuf::from("/dev/shm");
        if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        }
    });
    let value = if scenario.kind == Kind::Sim {
        let sizes = hub_netsim::sim::run(&scenario.sim, scenario.seed, &work)?;
        serde_json::json!({ "scenario": "sim", "seed": scenario.seed, "sizes": sizes })
    } else {
        // The lab runs in a private user + network + mount namespace: this process starts
        // its copy there and passes on how it ended.
        if let Some(status) = lab::reexec_in_namespace()? {
            if status.success() {
                return Ok(());
            }
            anyhow::bail!("the lab ended with {status}");
        }
        let hubmesh = match hubmesh {
            Some(path) => path,
            None => std::env::current_exe()
                .context("find this binary")?
                .with_file_name("hubmesh"),
        };
        let options = LabOptions { hubmesh, work };
        lab::run(&scenario, &options)?
    };
    if json {
        println!("{}", serde_json::to_string(&value)?);
    }
    Ok(())
}
