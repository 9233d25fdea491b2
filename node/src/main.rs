//! `hubmesh`: the one binary a node operator runs.
//!
//! `hubmesh up` starts a node; `hubmesh config print` shows the effective configuration;
//! `hubmesh user|org|token …` manage the accounts of a running node over HTTP (`client`).
//! This crate is the only place with a CLI, a config file, environment variables and process
//! concerns (signals, the data-directory lock); the libraries below it take typed config.

mod bundle_cmd;
mod cli;
mod client;
mod config;
mod datadir;
mod serve;
mod shards;
mod store_cmd;
mod up;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: cli::Cli) -> anyhow::Result<()> {
    match cli.command {
        cli::Command::Up(flags) => {
            let config = config::Config::load(&flags)?;
            init_logging();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("hubmesh")
                .build()
                .map_err(|e| anyhow::anyhow!(e).context("start the async runtime"))?;
            runtime.block_on(up::run(config))
        }
        cli::Command::Config(cli::ConfigCommand::Print(flags)) => {
            let config = config::Config::load(&flags)?;
            print!("{}", config.to_toml()?);
            Ok(())
        }
        cli::Command::User(command) => client::user(command),
        cli::Command::Org(command) => client::org(command),
        cli::Command::Token(command) => client::token(command),
        cli::Command::Store(command) => store_cmd::run(command),
        cli::Command::Peers(flags) => client::peers(flags),
        cli::Command::Compute(flags) => client::compute(flags),
        cli::Command::Seed(command) => client::seed(command),
        cli::Command::Mirror(command) => client::mirror(command),
        cli::Command::Audit(flags) => client::audit(flags),
        cli::Command::Bundle(command) => bundle_cmd::run(command),
    }
}

/// Logs go to stderr; `RUST_LOG` picks the level (default `info`).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
