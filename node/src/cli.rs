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
    /// Manage user accounts of a running node (needs a site admin's write token).
    #[command(subcommand)]
    User(UserCommand),
    /// Manage organisations and their members on a running node.
    #[command(subcommand)]
    Org(OrgCommand),
    /// Create, list and revoke access tokens on a running node.
    #[command(subcommand)]
    Token(TokenCommand),
    /// List the peers a running node is connected to, with its replication counters.
    ///
    /// Reads `GET /api/mesh/peers` of the node found through --data (node.json) or --node.
    Peers(ClientFlags),
    /// Change which repos a running node replicates, while it runs.
    ///
    /// Patterns: `*`, `alice/*` or `alice/model`. Added patterns are saved in the data
    /// directory (they survive restarts) and merged with --seed / `[p2p] seed` (listed with
    /// source "config"; change those in the configuration). Repos users fetched through the
    /// node's gateway are listed with source "fetched".
    #[command(subcommand)]
    Seed(SeedCommand),
    /// Show the compute mesh as a running node sees it: its own capacity and the live,
    /// verified capacity adverts of its peers (mode, queue, memory, models loaded, speed).
    ///
    /// Reads `GET /api/mesh/compute` of the node found through --data (node.json) or --node.
    Compute(ClientFlags),
    /// Check and inspect the chunk store of a stopped node.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Change and inspect a running node's pull-through mirror policy (`[mirror]`).
    ///
    /// Rules: `allow`, `deny` or `pin` a pattern (`*`, `ns/*`, `ns/name`,
    /// `datasets/ns/name`, `re:REGEX` over `models/ns/name`). Added rules are saved in the data
    /// directory and merged with the configuration's.
    #[command(subcommand)]
    Mirror(MirrorCommand),
    /// Print a running node's audit log (JSON lines: who read, wrote, mirrored, imported).
    Audit(ClientFlags),
    /// Carry repos across an air gap: signed bundles of commits and LFS chunks.
    #[command(subcommand)]
    Bundle(BundleCommand),
}

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Write a signed bundle of one repo (git bundle + the LFS chunks the receiver lacks)
    /// from a stopped node's data directory, or from the node running on it.
    Export {
        /// The repo, `ns/name`.
        #[arg(long)]
        repo: String,
        /// model, dataset or space.
        #[arg(long = "type", default_value = "model")]
        kind: String,
        /// Only what is new since this commit, or since this earlier bundle file.
        #[arg(long, value_name = "BUNDLE|COMMIT")]
        since: Option<String>,
        /// The bundle file to write.
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// The data directory [default: ./hubmesh-data].
        #[arg(long, default_value = "./hubmesh-data")]
        data: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Verify and import a bundle into a stopped node's data directory, or into the node
    /// running on it (served at once), all or nothing.
    Import {
        file: PathBuf,
        /// Accept only bundles signed by this node key (hex public key, as exports print).
        #[arg(long, value_name = "HEX")]
        trust: Option<String>,
        #[arg(long, default_value = "./hubmesh-data")]
        data: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum MirrorCommand {
    /// Add a rule.
    Add {
        /// `*`, `ns/*`, `ns/name` or `re:REGEX`; a pin may be `ns/name@REV` (a commit sha,
        /// tag or branch: that revision is served as `main`).
        pattern: String,
        /// What the rule does.
        #[arg(long, value_parser = ["allow", "deny", "pin"], default_value = "allow")]
        rule: String,
        #[command(flatten)]
        client: ClientFlags,
    },
    /// Remove the run-time rules with PATTERN.
    Rm {
        pattern: String,
        #[command(flatten)]
        client: ClientFlags,
    },
    /// List the upstream, the rules and the mirrored repos.
    List(ClientFlags),
    /// Evict pulled content that is not pinned, least recently used first, down to the
    /// quota (`[mirror] quota`, or QUOTA: bytes or e.g. "500MB", "20GiB").
    Evict {
        quota: Option<String>,
        #[command(flatten)]
        client: ClientFlags,
    },
    /// Bring mirrored repos (pinned ones included) up to the upstream now.
    Refresh {
        /// One repo (`ns/name`, `datasets/ns/name`, `spaces/ns/name`); default: all.
        repo: Option<String>,
        #[command(flatten)]
        client: ClientFlags,
    },
}

#[derive(Debug, Subcommand)]
pub enum SeedCommand {
    /// Seed repos matching PATTERN: matching repos the node heard of start syncing now.
    Add {
        /// `*`, `namespace/*` or `namespace/name`.
        pattern: String,
        #[command(flatten)]
        client: ClientFlags,
    },
    /// Stop seeding PATTERN (a run-time pattern, or a fetched repo `namespace/name`); what
    /// was replicated stays.
    Rm {
        /// The pattern as `seed list` shows it.
        pattern: String,
        #[command(flatten)]
        client: ClientFlags,
    },
    /// List the seeding policy with each entry's source.
    List(ClientFlags),
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Re-verify every block, chunk and manifest; quarantine what is corrupt.
    ///
    /// Works on a stopped node's data directory. Progress goes to stderr, the report to
    /// stdout. Exits with status 1 when corruption was found.
    Fsck(StoreArgs),
    /// Files, logical bytes, stored bytes, blocks, chunks and the dedup ratio.
    Stats(StoreArgs),
    /// Delete the files no repository references (e.g. rejected or abandoned uploads) and the
    /// blocks only they used.
    ///
    /// Works on a stopped node's data directory. Kept: every LFS object a repository's
    /// branches or tags point at, every object uploaded to a repository (committed or not),
    /// and the store's own roots.
    Gc(StoreArgs),
}

#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Data directory of the (stopped) node.
    #[arg(long, value_name = "DIR", default_value = "./hubmesh-data")]
    pub data: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
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
    /// p2p listen address (repeatable); port 0 picks a free port [default: /ip4/0.0.0.0/tcp/0 and
    /// /ip4/0.0.0.0/udp/0/quic-v1].
    #[arg(long = "p2p-listen", value_name = "MULTIADDR")]
    pub p2p_listen: Vec<String>,
    /// Peer to join at start-up, e.g. /ip4/10.0.0.2/tcp/4001/p2p/12D3… (repeatable).
    #[arg(long, value_name = "MULTIADDR")]
    pub bootstrap: Vec<String>,
    /// Replicate repos matching this pattern from peers: `*`, `alice/*` or `alice/model`
    /// (repeatable).
    #[arg(long, value_name = "PATTERN")]
    pub seed: Vec<String>,
    /// Name of the admin account created on first start [default: admin].
    #[arg(long, value_name = "NAME")]
    pub admin: Option<String>,
    /// Find peers on the local network with mDNS (announces this node on the link).
    #[arg(long)]
    pub mdns: bool,
    /// Move LFS chunks over the libp2p swarm only, without the iroh blob endpoint: less CPU
    /// and faster for nodes on one host or a fast LAN, where QUIC's per-packet work, not the
    /// link, sets the rate (measured in ADR 0005).
    #[arg(long)]
    pub no_blobs: bool,
    /// What this node does with inference requests: `local` serves its own gateway's users
    /// (routing to peers when they are better placed), `mesh` also runs peers' jobs, `off`
    /// never runs models and always routes [default: local].
    #[arg(long, value_name = "MODE")]
    pub inference: Option<String>,
    /// Whether this node runs Space apps: `local` builds and runs its own gateway's here,
    /// sandboxed (needs bubblewrap), `mesh` also runs those peers place here, `off` never
    /// runs any (each Space is placed on a peer that advertises a free slot) [default: local].
    #[arg(long, value_name = "MODE")]
    pub spaces: Option<String>,
    /// Where Space environments are built and cached by content hash [default:
    /// DATA/spaces/envs]; nodes on one machine may share it.
    #[arg(long, value_name = "DIR")]
    pub spaces_env_dir: Option<PathBuf>,
    /// Pull repos this node lacks from this Hub (`[mirror] upstream`), e.g.
    /// https://huggingface.co or another node's http://HOST:PORT.
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,
    /// Never contact the mirror's upstream: serve only what is cached (`[mirror] offline`).
    #[arg(long)]
    pub offline: bool,
}

/// How account commands reach a running node: its `node.json` and `admin.token` in the data
/// directory, or an explicit URL and token.
#[derive(Debug, Clone, Default, Args)]
pub struct ClientFlags {
    /// Data directory of the running node; its node.json gives the address and its
    /// admin.token the token [default: ./hubmesh-data].
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// URL of the node's HTTP gateway, e.g. http://127.0.0.1:8080 (instead of node.json).
    #[arg(long, value_name = "URL")]
    pub node: Option<String>,
    /// A site admin's write token (instead of DATA/admin.token).
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Print the node's JSON answer instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user account.
    Add {
        /// The user name (letters, digits, '-', '_', '.'; shared with organisation names).
        name: String,
        /// The user's full name [default: the user name].
        #[arg(long, value_name = "TEXT")]
        fullname: Option<String>,
        #[command(flatten)]
        client: ClientFlags,
    },
}

#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    /// Create an organisation (a namespace owned by its members).
    Add {
        /// The organisation name (shared with user names).
        name: String,
        /// The organisation's full name [default: the name].
        #[arg(long, value_name = "TEXT")]
        fullname: Option<String>,
        #[command(flatten)]
        client: ClientFlags,
    },
    /// Manage the members of an organisation.
    #[command(subcommand)]
    Member(MemberCommand),
}

#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// Add a user to an organisation, or change their role.
    ///
    /// Roles: read (sees private repos), contributor (also writes), write (also force-pushes),
    /// admin (also manages the organisation).
    Add {
        /// The organisation.
        org: String,
        /// The user.
        user: String,
        /// The member's role.
        #[arg(long, value_name = "ROLE", value_parser = ["read", "contributor", "write", "admin"])]
        role: String,
        #[command(flatten)]
        client: ClientFlags,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token for a user and print it once on stdout.
    ///
    /// Without --repo or --namespace the token is coarse: it reads (or, with --scope write,
    /// writes) everything the user may. With them it is fine-grained: it reaches private repos
    /// and writes only where one of them covers the repo, with the access given by --scope.
    Create {
        /// The user the token acts for.
        user: String,
        /// What the token may do.
        #[arg(long, value_name = "SCOPE", default_value = "read", value_parser = ["read", "write"])]
        scope: String,
        /// Limit the token to this repo: type/namespace/name or namespace/name (a model);
        /// repeatable.
        #[arg(long = "repo", value_name = "ID")]
        repos: Vec<String>,
        /// Limit the token to the repos of this user or organisation; repeatable.
        #[arg(long = "namespace", value_name = "NS")]
        namespaces: Vec<String>,
        /// A label for the token [default: "created by <admin>"].
        #[arg(long = "name", value_name = "TEXT")]
        display_name: Option<String>,
        #[command(flatten)]
        client: ClientFlags,
    },
    /// List a user's tokens (ids and permissions, never secrets).
    List {
        /// The user.
        user: String,
        #[command(flatten)]
        client: ClientFlags,
    },
    /// Revoke a token by its id; it stops working at once.
    Revoke {
        /// The token id (from `token create` or `token list`).
        id: String,
        #[command(flatten)]
        client: ClientFlags,
    },
}
