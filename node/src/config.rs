//! The node's configuration: a TOML file, overridden field by field by flags.
//!
//! ```toml
//! data = "./hubmesh-data"
//! http = "127.0.0.1:8080"
//! admin = "admin"
//!
//! [p2p]
//! listen = ["/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1"]
//! bootstrap = []
//! seed = ["alice/*"]
//! mdns = false
//! blobs = true              # LFS chunks over iroh (ADR 0005); false: over libp2p only
//!
//! [gateway]
//! list_page_size = 100
//! git_max_processes = 64    # git clone/fetch/push processes at once; more: 503
//! git_max_per_client = 8    # of them for one client address; more: 429
//! git_idle_timeout_secs = 60  # a git request moving no byte this long is ended
//! header_read_timeout_secs = 30  # a request head must arrive within this; else closed
//! idle_timeout_secs = 120   # a client sending (or reading) nothing this long is closed
//! webhooks_allow_local = false  # webhook receivers on loopback/private networks (tests)
//! webhooks_ca_file = "/etc/site-ca.pem"  # CAs trusted for https receivers besides Mozilla's
//! max_connections = 4096    # HTTP connections at once (fewer if the open-file limit is low)
//!
//! [store]
//! reserved_mib = 256        # free disk space uploads leave untouched; past it they get 507
//! reverify_after_secs = 60  # a chunk verified on read this recently is served unhashed (0: never)
//!
//! [inference]
//! memory_budget_mib = 8192  # default: half the machine's RAM
//! load_wait_secs = 120
//! mode = "local"            # local | mesh (also run peers' jobs) | off (always route)
//! advert_period_secs = 5    # capacity adverts; they expire after twice this
//! max_running = 64          # sequences decoded together per model
//! max_waiting = 256         # queued per model; more is 429 (or routed to a peer)
//! allow_peers = []          # peers whose jobs a `mesh` node runs; empty: every peer
//! cache_entries = 256       # response cache of deterministic requests (0: off)
//! threads = 2               # workers of the engine pool all models decode on; default: one per core
//! shard_step_timeout_secs = 30  # a sharded model's worker must answer a step within this
//!
//! [[inference.placement]]   # models this node places over several nodes once they advertise
//! model = "meta-llama/Llama-3.2-1B"
//! tensor_parallel = 2       # ranks per stage (this node is rank 0)
//! pipeline_parallel = 1     # stages
//! sync = "f32"              # f32 | q8 (8-bit all-reduce)
//!
//! [spaces]
//! mode = "local"            # local: run this gateway's Space apps | mesh: also peers' | off: place all on peers
//! slots = 16                # Spaces building or running at once (advertised; beyond: placed on peers)
//! env_dir = "…/spaces/envs" # built environments by content hash (shareable between nodes)
//! python = "python3"        # the interpreter environments are built with
//! memory_mib = 4096         # address space of each Space process
//! max_processes = 256       # processes and threads of one Space
//! scratch_mib = 256         # the Space's /tmp
//! start_timeout_secs = 120  # an app must listen within this after it starts
//! build_timeout_secs = 1800
//! sleep_secs = 172800       # idle time before a Space sleeps when its owner set none (0: never)
//! drain_idle_secs = 30      # a replaced instance stops once idle this long...
//! drain_max_secs = 120      # ...or after this long (a new commit's swap; 0: at once)
//! domains = ["localhost"]   # NS-NAME.<domain> is a Space's host name
//!
//! [mirror]
//! upstream = "https://huggingface.co"  # pull repos this node lacks from there (hub-mirror)
//! upstream_token = "hf_…"   # the site's token for the upstream (gated/private repos)
//! upstream_ca_file = "/etc/site-ca.pem"  # CAs trusted for an https upstream besides the system's
//! offline = false           # never contact the upstream: serve what is cached
//! allow = []                # mirror only these (`*`, `ns/*`, `ns/name`, `re:REGEX`); empty: all
//! deny = []                 # never mirror these
//! pin = []                  # pulled once, moved only by `hubmesh mirror refresh`; `ns/name@REV`: at that commit/tag
//! refresh_secs = 0          # refresh the other mirrored repos this often (0: on request only)
//! negative_ttl_secs = 30    # a name the upstream lacks is answered 404 without asking for this long
//! quota = "20GiB"           # pulled LFS content kept at most (bytes or "500MB"/"20GiB"); LRU of what is not pinned goes first
//! ```

use crate::cli::NodeFlags;
use anyhow::{Context, bail};
use hub_net::Multiaddr;
use hub_protocol::name::Name;
use hub_protocol::replication::SeedPattern;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Data directory: keys, databases, repositories, `node.json`.
    pub data: PathBuf,
    /// HTTP gateway address.
    pub http: SocketAddr,
    /// Name of the admin account created on first start.
    pub admin: String,
    pub p2p: P2pSection,
    pub gateway: GatewaySection,
    pub store: StoreSection,
    pub inference: InferenceSection,
    pub spaces: SpacesSection,
    pub mirror: MirrorSection,
}

/// `[mirror]`: pull-through mirroring of an upstream Hub (`hub-mirror`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MirrorSection {
    pub upstream: Option<String>,
    pub upstream_token: Option<String>,
    /// PEM CAs trusted for an `https://` upstream, besides the system's roots.
    pub upstream_ca_file: Option<PathBuf>,
    pub offline: bool,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub pin: Vec<String>,
    pub refresh_secs: u64,
    /// How long a name the upstream lacks is answered "not found" without asking it again
    /// (0: always ask).
    pub negative_ttl_secs: u64,
    /// Bytes of pulled LFS content kept at most: a number, or a string with a unit
    /// (`"500MB"`, `"20GiB"`). Unset: no limit.
    pub quota: Option<QuotaSize>,
}

/// `[mirror] quota`: bytes, or a size with a unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum QuotaSize {
    Bytes(u64),
    Text(String),
}

impl QuotaSize {
    pub fn bytes(&self) -> anyhow::Result<u64> {
        match self {
            Self::Bytes(n) => Ok(*n),
            Self::Text(t) => {
                hub_mirror::quota::parse_size(t).map_err(|e| anyhow::anyhow!("mirror.quota: {e}"))
            }
        }
    }
}

impl Default for MirrorSection {
    fn default() -> Self {
        Self {
            upstream: None,
            upstream_token: None,
            upstream_ca_file: None,
            offline: false,
            allow: Vec::new(),
            deny: Vec::new(),
            pin: Vec::new(),
            refresh_secs: 0,
            negative_ttl_secs: hub_mirror::DEFAULT_NEGATIVE_TTL.as_secs(),
            quota: None,
        }
    }
}

impl MirrorSection {
    /// The rules, in `hub-mirror`'s terms, checked.
    pub fn rules(&self) -> anyhow::Result<Vec<(hub_mirror::Action, String)>> {
        use hub_mirror::Action;
        let mut rules = Vec::new();
        for (action, patterns) in [
            (Action::Allow, &self.allow),
            (Action::Deny, &self.deny),
            (Action::Pin, &self.pin),
        ] {
            for p in patterns {
                hub_mirror::Pattern::for_rule(action, p)?;
                rules.push((action, p.clone()));
            }
        }
        Ok(rules)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpacesSection {
    /// `local`, `mesh` or `off` (see `hubmesh up --spaces`).
    pub mode: String,
    /// Spaces building, starting or running at once here; further ones are placed on peers.
    pub slots: u16,
    /// Where built environments live; unset: `DATA/spaces/envs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env_dir: Option<PathBuf>,
    /// The Python environments are built with.
    pub python: PathBuf,
    /// Address space of each Space process, MiB.
    pub memory_mib: u64,
    /// Processes and threads of one Space.
    pub max_processes: u64,
    /// Size of a Space's `/tmp`, MiB.
    pub scratch_mib: u64,
    /// Seconds an app has to listen on its port after it starts.
    pub start_timeout_secs: u64,
    /// Seconds an environment build may take.
    pub build_timeout_secs: u64,
    /// Seconds without requests before a Space sleeps when its owner set none; 0: never.
    pub sleep_secs: u64,
    /// After a swap to a new commit, the old instance stops once nothing is in flight on it
    /// and its sessions have been quiet this long...
    pub drain_idle_secs: u64,
    /// ...or when it has drained this long (0: it stops at once).
    pub drain_max_secs: u64,
    /// Host names under which `NS-NAME.<domain>` names a Space.
    pub domains: Vec<String>,
}

impl Default for SpacesSection {
    fn default() -> Self {
        Self {
            mode: "local".into(),
            slots: 16,
            env_dir: None,
            python: "python3".into(),
            memory_mib: 4096,
            max_processes: 256,
            scratch_mib: 256,
            start_timeout_secs: 120,
            build_timeout_secs: 1800,
            sleep_secs: 48 * 3600,
            drain_idle_secs: 30,
            drain_max_secs: 120,
            domains: vec!["localhost".into()],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    /// Free disk space (MiB) that writes to the chunk store leave untouched: an upload that
    /// would eat into it fails at once with 507, so the node's databases can still write.
    pub reserved_mib: u64,
    /// A chunk verified on read from its block less than this many seconds ago is served
    /// without hashing it again (ADR 0001, "Serving"); 0 hashes every read.
    pub reverify_after_secs: u64,
}

impl Default for StoreSection {
    fn default() -> Self {
        Self {
            reserved_mib: hub_store::DEFAULT_RESERVED_BYTES >> 20,
            reverify_after_secs: hub_store::DEFAULT_REVERIFY_AFTER.as_secs(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferenceSection {
    /// Memory the loaded models may take together (weights + KV cache), in MiB; the least
    /// recently used idle models are unloaded to make room. Unset: half the machine's RAM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_budget_mib: Option<u64>,
    /// Seconds the OpenAI and TGI routes wait for a model to load before answering 503.
    pub load_wait_secs: u64,
    /// `local`, `mesh` or `off` (see `hubmesh up --inference`).
    pub mode: String,
    /// Seconds between capacity adverts.
    pub advert_period_secs: u64,
    /// Sequences each model decodes together.
    pub max_running: usize,
    /// Requests each model queues; more are refused (429) or routed to a peer.
    pub max_waiting: usize,
    /// Peer ids whose jobs this node runs in `mesh` mode; empty: every peer of the mesh.
    pub allow_peers: Vec<String>,
    /// Responses of deterministic requests kept (0 turns the cache off).
    pub cache_entries: usize,
    /// Workers of the one pool every loaded model's forward passes share (hub-infer's
    /// `threads`); at most this many cores compute inference at once. Unset: one per core.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Seconds a worker of a sharded model has to answer one step (and one all-reduce).
    pub shard_step_timeout_secs: u64,
    /// Models this node places over several nodes (`POST /api/mesh/placements` at start-up,
    /// retried until enough nodes advertise).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub placement: Vec<PlacementEntry>,
}

/// One `[[inference.placement]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementEntry {
    pub model: String,
    #[serde(default = "one")]
    pub tensor_parallel: usize,
    #[serde(default = "one")]
    pub pipeline_parallel: usize,
    #[serde(default)]
    pub sync: hub_protocol::placement::Sync,
}

fn one() -> usize {
    1
}

impl Default for InferenceSection {
    fn default() -> Self {
        Self {
            memory_budget_mib: None,
            load_wait_secs: hub_models::DEFAULT_LOAD_WAIT.as_secs(),
            mode: "local".into(),
            advert_period_secs: 5,
            max_running: 64,
            max_waiting: 256,
            allow_peers: Vec::new(),
            cache_entries: 256,
            threads: None,
            shard_step_timeout_secs: 30,
            placement: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewaySection {
    /// Items per page of `/api/models`, `/api/datasets`, `/api/spaces`; more follow by `Link`.
    pub list_page_size: usize,
    /// git processes (clone, fetch, push) the node runs at once; more requests get 503.
    pub git_max_processes: usize,
    /// git processes one client address may hold; more requests get 429.
    pub git_max_per_client: usize,
    /// Seconds a git request may move no byte (either way) before it is ended.
    pub git_idle_timeout_secs: u64,
    /// Seconds a client has to send a request's head (from connecting, or from the end of
    /// the previous response on a kept-alive connection); then the connection is closed.
    pub header_read_timeout_secs: u64,
    /// Seconds a client may send nothing of a request body, or read nothing of a response,
    /// before its connection is closed.
    pub idle_timeout_secs: u64,
    /// HTTP connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// Let webhooks deliver to loopback and private-network addresses (off: only public
    /// addresses; link-local and cloud metadata addresses are refused either way).
    pub webhooks_allow_local: bool,
    /// A PEM file of CAs trusted for `https://` webhook receivers besides Mozilla's roots.
    pub webhooks_ca_file: Option<PathBuf>,
}

impl Default for GatewaySection {
    fn default() -> Self {
        Self {
            list_page_size: 100,
            git_max_processes: hub_gateway::DEFAULT_MAX_GIT_PROCESSES,
            git_max_per_client: hub_gateway::DEFAULT_MAX_GIT_PER_CLIENT,
            git_idle_timeout_secs: hub_gateway::DEFAULT_GIT_IDLE_TIMEOUT.as_secs(),
            header_read_timeout_secs: crate::serve::DEFAULT_HEADER_READ_TIMEOUT.as_secs(),
            idle_timeout_secs: crate::serve::DEFAULT_IDLE_TIMEOUT.as_secs(),
            max_connections: crate::serve::DEFAULT_MAX_CONNECTIONS,
            webhooks_allow_local: false,
            webhooks_ca_file: None,
        }
    }
}

impl GatewaySection {
    /// The HTTP server's limits; `nofile` is the open-file limit in force (see
    /// [`crate::serve::connection_cap`]).
    pub fn http_limits(&self, nofile: Option<u64>) -> crate::serve::HttpLimits {
        crate::serve::HttpLimits {
            header_read_timeout: std::time::Duration::from_secs(self.header_read_timeout_secs),
            idle_timeout: std::time::Duration::from_secs(self.idle_timeout_secs),
            max_connections: crate::serve::connection_cap(self.max_connections, nofile),
        }
    }

    pub fn git_limits(&self) -> hub_gateway::GitLimits {
        hub_gateway::GitLimits {
            max_processes: self.git_max_processes,
            max_per_client: self.git_max_per_client,
            idle_timeout: std::time::Duration::from_secs(self.git_idle_timeout_secs),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct P2pSection {
    /// Listen multiaddrs.
    pub listen: Vec<String>,
    /// Peers to dial at start-up.
    pub bootstrap: Vec<String>,
    /// Repos to replicate from peers: `*`, `namespace/*` or `namespace/name`.
    pub seed: Vec<String>,
    /// Discover peers on the local network with mDNS.
    pub mdns: bool,
    /// Move LFS chunks over the blob data plane (iroh, verified streaming; ADR 0005). Off:
    /// over the libp2p swarm only.
    pub blobs: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data: PathBuf::from("./hubmesh-data"),
            http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin: "admin".into(),
            p2p: P2pSection::default(),
            gateway: GatewaySection::default(),
            store: StoreSection::default(),
            inference: InferenceSection::default(),
            spaces: SpacesSection::default(),
            mirror: MirrorSection::default(),
        }
    }
}

impl Default for P2pSection {
    fn default() -> Self {
        Self {
            listen: vec![
                "/ip4/0.0.0.0/tcp/0".into(),
                "/ip4/0.0.0.0/udp/0/quic-v1".into(),
            ],
            bootstrap: Vec::new(),
            seed: Vec::new(),
            mdns: false,
            blobs: true,
        }
    }
}

impl Config {
    /// The config file named by `--config` (or the defaults), then the flags; validated.
    pub fn load(flags: &NodeFlags) -> anyhow::Result<Self> {
        let mut config = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("read config file {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("parse config file {}", path.display()))?
            }
            None => Config::default(),
        };
        if let Some(data) = &flags.data {
            config.data = data.clone();
        }
        if let Some(http) = flags.http {
            config.http = http;
        }
        if let Some(admin) = &flags.admin {
            config.admin = admin.clone();
        }
        if !flags.p2p_listen.is_empty() {
            config.p2p.listen = flags.p2p_listen.clone();
        }
        if !flags.bootstrap.is_empty() {
            config.p2p.bootstrap = flags.bootstrap.clone();
        }
        if !flags.seed.is_empty() {
            config.p2p.seed = flags.seed.clone();
        }
        if flags.no_blobs {
            config.p2p.blobs = false;
        }
        if flags.mdns {
            config.p2p.mdns = true;
        }
        if let Some(mode) = &flags.inference {
            config.inference.mode = mode.clone();
        }
        if let Some(mode) = &flags.spaces {
            config.spaces.mode = mode.clone();
        }
        if let Some(dir) = &flags.spaces_env_dir {
            config.spaces.env_dir = Some(dir.clone());
        }
        if let Some(upstream) = &flags.upstream {
            config.mirror.upstream = Some(upstream.clone());
        }
        if flags.offline {
            config.mirror.offline = true;
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.admin_name()?;
        self.listen_addrs()?;
        self.bootstrap_addrs()?;
        self.seed_patterns()?;
        if !(1..=1000).contains(&self.gateway.list_page_size) {
            bail!("gateway.list_page_size must be between 1 and 1000");
        }
        if self.gateway.git_max_processes == 0
            || self.gateway.git_max_per_client == 0
            || self.gateway.git_idle_timeout_secs == 0
        {
            bail!(
                "gateway.git_max_processes, git_max_per_client and git_idle_timeout_secs must be positive"
            );
        }
        if self.gateway.header_read_timeout_secs == 0
            || self.gateway.idle_timeout_secs == 0
            || self.gateway.max_connections == 0
        {
            bail!(
                "gateway.header_read_timeout_secs, idle_timeout_secs and max_connections must be positive"
            );
        }
        self.inference_mode()?;
        self.spaces_enabled()?;
        if self.spaces.memory_mib == 0
            || self.spaces.slots == 0
            || self.spaces.max_processes == 0
            || self.spaces.scratch_mib == 0
            || self.spaces.start_timeout_secs == 0
            || self.spaces.build_timeout_secs == 0
        {
            bail!(
                "spaces.memory_mib, slots, max_processes, scratch_mib, start_timeout_secs and build_timeout_secs must be positive"
            );
        }
        self.allow_peers()?;
        self.mirror.rules()?;
        if let Some(q) = &self.mirror.quota {
            q.bytes()?;
        }
        if let Some(up) = &self.mirror.upstream
            && !(up.starts_with("http://") || up.starts_with("https://"))
        {
            bail!("mirror.upstream must be an http:// or https:// URL");
        }
        // Adverts live two periods (and a second), at most MAX_ADVERT_LIFETIME_SECS.
        let max_period = (hub_protocol::capacity::MAX_ADVERT_LIFETIME_SECS - 1) / 2;
        if !(1..=max_period).contains(&self.inference.advert_period_secs) {
            bail!("inference.advert_period_secs must be between 1 and {max_period}");
        }
        if self.inference.max_running == 0 {
            bail!("inference.max_running must be positive");
        }
        if self.inference.memory_budget_mib == Some(0) {
            bail!("inference.memory_budget_mib must be positive");
        }
        if self.inference.threads == Some(0) {
            bail!("inference.threads must be positive (leave it unset for one per core)");
        }
        if self.p2p.listen.is_empty() {
            bail!("p2p.listen is empty: give at least one address, e.g. /ip4/0.0.0.0/tcp/0");
        }
        Ok(())
    }

    pub fn admin_name(&self) -> anyhow::Result<Name> {
        Name::new(self.admin.clone())
            .with_context(|| format!("invalid admin name {:?}", self.admin))
    }

    pub fn listen_addrs(&self) -> anyhow::Result<Vec<Multiaddr>> {
        parse_addrs("p2p listen", &self.p2p.listen)
    }

    pub fn bootstrap_addrs(&self) -> anyhow::Result<Vec<Multiaddr>> {
        parse_addrs("bootstrap", &self.p2p.bootstrap)
    }

    pub fn seed_patterns(&self) -> anyhow::Result<Vec<SeedPattern>> {
        self.p2p
            .seed
            .iter()
            .map(|p| SeedPattern::parse(p).context("invalid p2p.seed"))
            .collect()
    }

    /// What this node does with Spaces (`spaces.mode`): `local` runs its own gateway's,
    /// `mesh` also peers', `off` none (every Space is placed on a peer).
    pub fn spaces_mode(&self) -> anyhow::Result<hub_compute::Mode> {
        self.spaces.mode.parse().map_err(|_| {
            anyhow::anyhow!(
                "invalid spaces mode {:?} (expected local, mesh or off)",
                self.spaces.mode
            )
        })
    }

    /// Whether this node runs Space apps (`spaces.mode` `local` or `mesh`).
    pub fn spaces_enabled(&self) -> anyhow::Result<bool> {
        Ok(self.spaces_mode()? != hub_compute::Mode::Off)
    }

    /// Workers of the engine pool: `[inference] threads`, else one per core.
    pub fn engine_threads(&self) -> usize {
        self.inference
            .threads
            .unwrap_or_else(hub_infer::threads::default_threads)
    }

    pub fn inference_mode(&self) -> anyhow::Result<hub_compute::Mode> {
        self.inference.mode.parse().map_err(|_| {
            anyhow::anyhow!(
                "invalid inference mode {:?} (expected local, mesh or off)",
                self.inference.mode
            )
        })
    }

    pub fn allow_peers(&self) -> anyhow::Result<Vec<hub_net::PeerId>> {
        self.inference
            .allow_peers
            .iter()
            .map(|p| {
                p.parse()
                    .with_context(|| format!("invalid peer id {p:?} in inference.allow_peers"))
            })
            .collect()
    }

    pub fn to_toml(&self) -> anyhow::Result<String> {
        toml::to_string(self).context("render the configuration as TOML")
    }
}

fn parse_addrs(what: &str, addrs: &[String]) -> anyhow::Result<Vec<Multiaddr>> {
    addrs
        .iter()
        .map(|a| {
            a.parse::<Multiaddr>()
                .with_context(|| format!("invalid {what} address {a:?} (expected a multiaddr like /ip4/127.0.0.1/tcp/4001)"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn a_mirror_quota_is_bytes_or_a_size_with_a_unit() {
        let load = |text: &str| {
            let f = file(text);
            Config::load(&NodeFlags {
                config: Some(f.path().to_owned()),
                ..NodeFlags::default()
            })
        };
        let c = load("[mirror]\nquota = \"20GiB\"\n").unwrap();
        assert_eq!(c.mirror.quota.unwrap().bytes().unwrap(), 20 << 30);
        let c = load("[mirror]\nquota = 1000000\n").unwrap();
        assert_eq!(c.mirror.quota.unwrap().bytes().unwrap(), 1_000_000);
        let e = load("[mirror]\nquota = \"lots\"\n").unwrap_err();
        assert!(format!("{e:#}").contains("mirror.quota"), "{e:#}");
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::load(&NodeFlags::default()).unwrap();
        assert_eq!(c.data, PathBuf::from("./hubmesh-data"));
        assert_eq!(c.http.to_string(), "127.0.0.1:8080");
        assert_eq!(c.admin, "admin");
        assert_eq!(c.store.reserved_mib, 256);
        assert_eq!(c.inference.threads, None);
        assert_eq!(c.engine_threads(), hub_infer::threads::default_threads());
        assert_eq!(
            c.p2p.listen,
            ["/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1"]
        );
    }

    #[test]
    fn flags_override_the_file_and_print_round_trips() {
        let f = file(
            "data = \"/srv/hub\"\nadmin = \"alice\"\n[p2p]\nbootstrap = [\"/ip4/127.0.0.1/tcp/4001\"]\n[inference]\nmemory_budget_mib = 512\nthreads = 3\n[store]\nreserved_mib = 1024\n",
        );
        let flags = NodeFlags {
            config: Some(f.path().to_owned()),
            http: Some("127.0.0.1:0".parse().unwrap()),
            p2p_listen: vec!["/ip4/127.0.0.1/tcp/0".into()],
            seed: vec!["alice/*".into(), "*".into()],
            ..NodeFlags::default()
        };
        let c = Config::load(&flags).unwrap();
        assert_eq!(c.p2p.seed, ["alice/*", "*"]);
        assert_eq!(c.seed_patterns().unwrap().len(), 2);
        assert_eq!(c.data, PathBuf::from("/srv/hub"));
        assert_eq!(c.admin, "alice");
        assert_eq!(c.http.port(), 0);
        assert_eq!(c.p2p.listen, ["/ip4/127.0.0.1/tcp/0"]);
        assert_eq!(c.p2p.bootstrap, ["/ip4/127.0.0.1/tcp/4001"]);
        assert_eq!(c.inference.memory_budget_mib, Some(512));
        assert_eq!(c.inference.threads, Some(3));
        assert_eq!(c.engine_threads(), 3);
        assert_eq!(c.inference.load_wait_secs, 120);
        assert_eq!(c.store.reserved_mib, 1024);
        assert_eq!(c.store.reverify_after_secs, 60);
        let printed: Config = toml::from_str(&c.to_toml().unwrap()).unwrap();
        assert_eq!(printed, c);
    }

    #[test]
    fn bad_config_is_a_clear_error() {
        for (text, needle) in [
            ("colour = \"red\"\n", "unknown field"),
            ("http = \"not an address\"\n", "invalid socket address"),
            ("admin = \"../root\"\n", "invalid admin name"),
            (
                "[p2p]\nlisten = [\"tcp/1\"]\n",
                "invalid p2p listen address",
            ),
            ("[p2p]\nlisten = []\n", "p2p.listen is empty"),
            ("[p2p]\nseed = [\"alice\"]\n", "invalid seed pattern"),
            (
                "[gateway]\nheader_read_timeout_secs = 0\n",
                "idle_timeout_secs and max_connections must be positive",
            ),
            (
                "[gateway]\ngit_max_processes = 0\n",
                "git_max_per_client and git_idle_timeout_secs must be positive",
            ),
            (
                "[inference]\nmemory_budget_mib = 0\n",
                "memory_budget_mib must be positive",
            ),
            (
                "[inference]\nthreads = 0\n",
                "inference.threads must be positive",
            ),
        ] {
            let f = file(text);
            let flags = NodeFlags {
                config: Some(f.path().to_owned()),
                ..NodeFlags::default()
            };
            let err = format!("{:#}", Config::load(&flags).unwrap_err());
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
