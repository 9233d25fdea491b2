//! The command line, with clap derive: doc comments are the help text.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// hubmesh: a peer-to-peer, content-addressed model hub.
///
/// Every node serves the Hugging Face Hub API, git and git-lfs, and inference; nodes replicate
/// repositories and model weights from each other with no central server.
#[derive(Debug, Parser)]
#[command(name = "hubmesh", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a node and serve until SIGINT or SIGTERM.
    ///
    /// Once every listener is bound it writes DATA/node.json (HTTP address, peer id, p2p
    /// addresses). On first start it creates the admin account and writes its token to
    /// DATA/admin.token.
    Up(NodeFlags),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration (file, then flags) as TOML.
    Print(NodeFlags),
}

/// Settings of a node. Each flag overrides the same field of the config file.
#[derive(Debug, Clone, Default, Args)]
pub struct NodeFlags {
    /// TOML config file; flags given here override its fields.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory [default: ./hubmesh-data].
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// HTTP gateway address; port 0 picks a free port [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// p2p listen address (repeatable); port 0 picks a free port [default: /ip4/0.0.0.0/tcp/0].
    #[arg(long = "p2p-listen", value_name = "MULTIADDR")]
    pub p2p_listen: Vec<String>,
    /// Peer to join at start-up, e.g. /ip4/10.0.0.2/tcp/4001/p2p/12D3… (repeatable).
    #[arg(long, value_name = "MULTIADDR")]
    pub bootstrap: Vec<String>,
    /// Name of the admin account created on first start [default: admin].
    #[arg(long, value_name = "NAME")]
    pub admin: Option<String>,
}
