//! `hubmesh up`: open the data directory, start every part, serve, shut down cleanly.
//!
//! Start-up order: raise the open-file limit → lock the data directory → node key → accounts (first start: admin and its
//! token) → bind HTTP → start the p2p swarm (binds and reports its addresses) → the gateway's
//! state → the models service and the compute mesh (built here, handed to the gateway; the
//! compute tasks started with the gateway's job handler) → the Spaces runtime → serve →
//! write `node.json`. Nothing is announced as ready before everything is bound.
//!
//! Shutdown (SIGINT/SIGTERM): remove `node.json`, stop accepting, let in-flight requests
//! finish for up to [`DRAIN_TIMEOUT`], stop the swarm, close the databases, release the lock.

use crate::config::Config;
use crate::datadir::{self, DataDir};
use anyhow::Context;
use hub_auth::AuthStore;
use hub_gateway::{AppState, GatewayConfig, Parts};
use hub_models::{Compute, ComputeConfig, Models, ModelsConfig};
use hub_net::{CancellationToken, P2pConfig};
use hub_protocol::node_info::{NODE_INFO_FILE, NodeInfo};
use std::sync::Arc;
use std::time::Duration;

/// Test-only: with this set to `1`, the node serves every LFS chunk batch with one bit
/// flipped, so end-to-end tests can check that seeders reject a misbehaving provider. Never
/// set it on a real node.
const CORRUPT_CHUNKS_ENV: &str = "HUBMESH_TEST_CORRUPT_CHUNKS";

/// How often download counts go from memory to disk.
const FLUSH_PERIOD: Duration = Duration::from_secs(5);

/// Where models served for inference are materialized (by repo and commit), in the data dir.
const MODEL_CACHE_DIR: &str = "model-cache";

/// Space checkouts, settings and (by default) environments, in the data dir.
const SPACES_DIR: &str = "spaces";

/// How long in-flight HTTP requests may run after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run(config: Config) -> anyhow::Result<()> {
    // Listen for signals first, so a signal during start-up also shuts down cleanly.
    let mut signals = Signals::new()?;
    // Before anything opens files: connections and files share this limit.
    let nofile = crate::serve::raise_nofile_limit();
    let data = DataDir::open(&config.data)?;
    let key = data.load_or_create_key()?;

    let auth_path = data.join(datadir::AUTH_DB);
    let auth = Arc::new(AuthStore::open(&auth_path).context("open the account database")?);
    let token_path = data.join(datadir::ADMIN_TOKEN_FILE);
    let admin = config.admin_name()?;
    let created = auth
        .bootstrap_admin(&admin, |secret| {
            datadir::write_atomic(
                &token_path,
                format!("{}\n", secret.expose()).as_bytes(),
                0o600,
            )
        })
        .with_context(|| format!("create the admin account {admin:?}"))?;
    match created {
        Some(token) => tracing::info!(
            user = %token.user,
            token_id = %token.id,
            "created the admin account; its write token is in {}",
            token_path.display()
        ),
        None if token_path.exists() => {
            tracing::info!("admin token is in {}", token_path.display());
        }
        None => {}
    }

    let repos = Arc::new(
        hub_repo::Repos::open(data.join(datadir::REPOS_DIR)).context("open the repositories")?,
    );
    let store = {
        let mut store_config = hub_store::StoreConfig::default();
        store_config.reserved_bytes = config.store.reserved_mib.saturating_mul(1 << 20);
        store_config.reverify_after = Duration::from_secs(config.store.reverify_after_secs);
        hub_store::Store::open_with_config(data.join(datadir::STORE_DIR), store_config)
            .context("open the chunk store")?
    };
    let search = open_search(&data, &repos).await?;

    let listener = tokio::net::TcpListener::bind(config.http)
        .await
        .with_context(|| format!("bind the HTTP gateway to {}", config.http))?;
    let http_addr = listener.local_addr().context("read the HTTP address")?;

    let cancel = CancellationToken::new();
    let p2p_config = P2pConfig {
        listen: config.listen_addrs()?,
        bootstrap: config.bootstrap_addrs()?,
        mdns: config.p2p.mdns,
        blobs: config.p2p.blobs,
        ..P2pConfig::default()
    };
    let secret: [u8; 32] = key
        .clone()
        .try_into_ed25519()
        .context("the node key is ed25519")?
        .secret()
        .as_ref()
        .try_into()
        .context("an ed25519 secret is 32 bytes")?;
    let replicated_hub: Arc<std::sync::OnceLock<hub_core::Hub>> = Arc::default();
    let replication = hub_mesh::Replication {
        repos: repos.clone(),
        ref_store: data.join(datadir::REFS_DB),
        secret,
        store: store.clone(),
        seeds: config.seed_patterns()?,
        local_names: local_names(&auth),
        corrupt_chunks_for_tests: std::env::var_os(CORRUPT_CHUNKS_ENV).is_some_and(|v| v == "1"),
        on_replicated: {
            let (repos, search, hub) = (repos.clone(), search.clone(), replicated_hub.clone());
            Arc::new(move |id| {
                hub_core::listing::reindex(&repos, &search, id);
                // This node's webhooks see replicated changes too (set once the Hub exists).
                if let Some(hub) = hub.get() {
                    hub.replicated(id);
                }
            })
        },
    };
    let (mesh, swarm_task) =
        hub_mesh::spawn_replicating(key, p2p_config, replication, cancel.child_token())
            .await
            .context("start the p2p swarm")?;
    let p2p = mesh.p2p().clone();
    claim_local_namespaces(&auth, &mesh).await;

    let audit =
        Arc::new(hub_mirror::AuditLog::open(data.join(AUDIT_FILE)).context("open the audit log")?);
    let mirror = open_mirror(&config, &data, &repos, &store, &search, &audit)?;
    let port: Arc<dyn hub_core::MeshPort> = match &mirror {
        Some(mirror) => Arc::new(hub_mirror::MirrorPort::new(
            Arc::new(mesh.clone()),
            mirror.clone(),
        )),
        None => Arc::new(mesh.clone()),
    };
    // A webhooks CA file that cannot be used stops the start, rather than every https delivery.
    if let Some(ca) = &config.gateway.webhooks_ca_file {
        hub_gateway::webhooks_tls_config(Some(ca)).map_err(|e| anyhow::anyhow!(e))?;
    }
    let parts = Parts {
        auth: auth.clone(),
        repos: repos.clone(),
        store,
        search,
        p2p: p2p.clone(),
        replication: Some(mesh),
        config: GatewayConfig {
            list_page_size: config.gateway.list_page_size,
            git: config.gateway.git_limits(),
            webhooks_allow_local: config.gateway.webhooks_allow_local,
            webhooks_ca_file: config.gateway.webhooks_ca_file.clone(),
        },
    };
    let state = AppState::with_mesh(parts, port);
    state.enable_audit(audit);
    state.enable_bundles(hub_gateway::BundleSite {
        spool_dir: data.join("mirror").join("spool"),
        secret,
    });
    if let Some(mirror) = mirror {
        mirror.spawn_refresher(cancel.child_token());
        state.enable_mirror(mirror);
    }
    let _ = replicated_hub.set(state.hub().clone());
    // Models and the compute mesh: built here, handed to the gateway, and the compute tasks
    // (advertiser, advert collector, stream server running peers' jobs through the gateway's
    // inference routes) started once the gateway can take jobs.
    let mut inference = ModelsConfig::new(data.join(MODEL_CACHE_DIR));
    if let Some(mib) = config.inference.memory_budget_mib {
        inference.registry.memory_budget = mib.saturating_mul(1 << 20);
    }
    inference.load_wait = Duration::from_secs(config.inference.load_wait_secs);
    inference.registry.serve.threads = config.engine_threads();
    let engine = &mut inference.registry.serve.engine;
    engine.max_running = config.inference.max_running;
    engine.max_waiting = config.inference.max_waiting;
    let models = Arc::new(Models::new(
        inference,
        state.repos().clone(),
        state.store().clone(),
        Some(state.metrics().inference_observer()),
    ));
    state.enable_inference(models.clone());
    let compute = Arc::new(Compute::new(ComputeConfig {
        mode: config.inference_mode()?,
        secret,
        advert_period: Duration::from_secs(config.inference.advert_period_secs),
        allow_peers: config.allow_peers()?,
        cache_entries: config.inference.cache_entries,
    }));
    state.enable_compute(compute.clone());
    compute.start(
        p2p.clone(),
        Some(models.clone()),
        hub_gateway::forwarded_jobs(&state),
    );
    if compute.mode() != hub_compute::Mode::Off {
        crate::shards::start(&config, &state, models, compute.clone(), &p2p, &cancel);
    }
    if config.spaces_enabled()? {
        start_spaces(&config, &data, &state, &compute, &p2p).await?;
    }
    let app = hub_gateway::router(state);
    let flusher = tokio::spawn(flush_downloads_every(
        repos.clone(),
        FLUSH_PERIOD,
        cancel.child_token(),
    ));
    let http_stop = cancel.child_token();
    let http_limits = config.gateway.http_limits(nofile);
    let mut server =
        tokio::spawn(
            async move { crate::serve::serve(listener, app, http_limits, http_stop).await },
        );

    let info = NodeInfo {
        http: http_addr.to_string(),
        peer_id: p2p.peer_id().to_string(),
        p2p: p2p
            .listen_addrs()
            .iter()
            .map(|a| hub_net::with_peer_id(a, p2p.peer_id()).to_string())
            .collect(),
        version: hub_protocol::VERSION.to_owned(),
    };
    let info_path = data.join(NODE_INFO_FILE);
    let json = serde_json::to_vec_pretty(&info).context("encode node.json")?;
    datadir::write_atomic(&info_path, &json, 0o644)
        .with_context(|| format!("write {}", info_path.display()))?;
    tracing::info!(http = %info.http, peer_id = %info.peer_id, p2p = ?info.p2p, data = %data.path().display(), "hubmesh node ready");

    let outcome = tokio::select! {
        signal = signals.recv() => {
            tracing::info!(signal, "shutting down");
            Ok(())
        }
        result = &mut server => {
            // The server stopped on its own: that is a failure, reported after cleanup.
            Err(match result {
                Ok(Ok(())) => anyhow::anyhow!("the HTTP server stopped unexpectedly"),
                Ok(Err(e)) => anyhow::Error::new(e).context("serve HTTP"),
                Err(e) => anyhow::Error::new(e).context("the HTTP server task failed"),
            })
        }
    };

    if let Err(e) = std::fs::remove_file(&info_path) {
        tracing::warn!(error = %e, "cannot remove {}", info_path.display());
    }
    cancel.cancel();
    if !server.is_finished() {
        match tokio::time::timeout(DRAIN_TIMEOUT, &mut server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server stopped with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server task failed"),
            Err(_) => {
                tracing::warn!("requests still running after {DRAIN_TIMEOUT:?}; aborting them");
                server.abort();
            }
        }
    }
    if let Err(e) = swarm_task.await {
        tracing::warn!(error = %e, "p2p task failed");
    }
    flusher.await.ok();
    if let Err(e) = repos.flush_downloads() {
        tracing::warn!(error = %e, "cannot save download counts");
    }
    drop(auth);
    drop(data);
    tracing::info!("stopped");
    outcome
}

/// Builds the Spaces runtime and hands it to the gateway. A node that cannot run Spaces
/// (no Python) still serves everything else: the Spaces routes then answer 503.
async fn start_spaces(
    config: &Config,
    data: &DataDir,
    state: &AppState,
    compute: &Arc<Compute>,
    p2p: &hub_net::P2p,
) -> anyhow::Result<()> {
    let section = &config.spaces;
    let mut spaces = hub_spaces::SpacesConfig::new(data.join(SPACES_DIR));
    if let Some(dir) = &section.env_dir {
        spaces.env_dir = dir.clone();
    }
    spaces.python = section.python.clone();
    spaces.sandbox.memory_bytes = section.memory_mib.saturating_mul(1 << 20);
    spaces.sandbox.max_processes = section.max_processes;
    spaces.sandbox.scratch_bytes = section.scratch_mib.saturating_mul(1 << 20);
    spaces.start_timeout = Duration::from_secs(section.start_timeout_secs);
    spaces.build_timeout = Duration::from_secs(section.build_timeout_secs);
    spaces.default_sleep =
        (section.sleep_secs > 0).then(|| Duration::from_secs(section.sleep_secs));
    spaces.drain_idle = Duration::from_secs(section.drain_idle_secs);
    spaces.drain_max = Duration::from_secs(section.drain_max_secs);
    spaces.domains = section.domains.clone();
    spaces.mode = config.spaces_mode()?;
    spaces.slots = section.slots;
    match hub_spaces::Spaces::new(spaces, state.hub().clone()).await {
        Ok(spaces) => {
            // Its slots go out in this node's capacity adverts; in mode `mesh` peers place
            // Spaces here through `/hubmesh/space/1` tunnels.
            let slots = spaces.clone();
            compute.set_space_slots(Arc::new(move || slots.slots()));
            let allow = compute.clone();
            hub_spaces::mesh::spawn_tunnel_server(
                p2p.clone(),
                spaces.clone(),
                Arc::new(move |peer| allow.allowed(peer)),
                hub_gateway::space_tunnels(state),
            );
            state.enable_spaces(spaces);
        }
        Err(error) => {
            tracing::warn!(%error, "Spaces are off: the Spaces runtime did not start");
        }
    }
    Ok(())
}

/// The listing index is derived from the repositories, so it is rebuilt at every start: a
/// crash between a commit and its reindex, or an index from another version, can never
/// leave the listing wrong.
async fn open_search(
    data: &DataDir,
    repos: &Arc<hub_repo::Repos>,
) -> anyhow::Result<Arc<hub_search::SearchIndex>> {
    let dir = data.join(datadir::SEARCH_DIR);
    let repos = repos.clone();
    tokio::task::spawn_blocking(move || {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clear {}", dir.display()))?;
        }
        let search = hub_search::SearchIndex::open(&dir).context("open the search index")?;
        let started = std::time::Instant::now();
        let n = hub_core::listing::rebuild(&repos, &search)
            .map_err(|e| anyhow::anyhow!(e))
            .context("index the repositories")?;
        tracing::info!(repos = n, elapsed = ?started.elapsed(), "search index rebuilt");
        Ok(Arc::new(search))
    })
    .await
    .context("index task failed")?
}

/// Persists download counts every `period` until `cancel` fires.
async fn flush_downloads_every(
    repos: Arc<hub_repo::Repos>,
    period: Duration,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let repos = repos.clone();
        match tokio::task::spawn_blocking(move || repos.flush_downloads()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot save download counts"),
            Err(e) => tracing::warn!(error = %e, "download count task failed"),
        }
    }
}

/// SIGINT and SIGTERM, the two ways to ask a node to stop.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("listen for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("listen for SIGINT")?,
        })
    }

    /// Waits for either signal and names it.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// The names of this site's accounts, for replication: their namespaces are never taken from
/// other nodes (ADR 0006). A name the account store cannot read counts as local (refusing a
/// foreign document is the safe side).
/// The audit log, in the data directory (`hub-mirror`'s `AuditLog`).
pub const AUDIT_FILE: &str = "audit.jsonl";

/// The pull-through mirror of `[mirror] upstream`, when one is configured.
fn open_mirror(
    config: &Config,
    data: &DataDir,
    repos: &Arc<hub_repo::Repos>,
    store: &hub_store::Store,
    search: &Arc<hub_search::SearchIndex>,
    audit: &Arc<hub_mirror::AuditLog>,
) -> anyhow::Result<Option<hub_mirror::Mirror>> {
    let section = &config.mirror;
    let Some(upstream) = section.upstream.clone() else {
        return Ok(None);
    };
    let mut mirror_config = hub_mirror::MirrorConfig::new(data.join("mirror"), Some(upstream));
    mirror_config.token = section.upstream_token.clone();
    mirror_config.ca_file = section.upstream_ca_file.clone();
    mirror_config.negative_ttl = Duration::from_secs(section.negative_ttl_secs);
    mirror_config.offline = section.offline;
    mirror_config.quota = section
        .quota
        .as_ref()
        .map(crate::config::QuotaSize::bytes)
        .transpose()?;
    mirror_config.rules = section.rules()?;
    mirror_config.refresh =
        (section.refresh_secs > 0).then(|| Duration::from_secs(section.refresh_secs));
    let on_pulled: hub_mirror::OnPulled = {
        let (repos, search) = (repos.clone(), search.clone());
        Arc::new(move |id| hub_core::listing::reindex(&repos, &search, id))
    };
    let mirror = hub_mirror::Mirror::open(
        mirror_config,
        repos.clone(),
        store.clone(),
        audit.clone(),
        on_pulled,
    )
    .context("open the mirror's state")?;
    tracing::info!(
        upstream = mirror.upstream().unwrap_or_default(),
        offline = mirror.offline(),
        "pull-through mirror enabled"
    );
    Ok(Some(mirror))
}

fn local_names(auth: &Arc<AuthStore>) -> hub_mesh::LocalNames {
    let auth = auth.clone();
    Arc::new(move |name: &str| match auth.namespace_kind(name) {
        Ok(kind) => kind.is_some(),
        Err(error) => {
            tracing::warn!(name, %error, "cannot read the account store; name taken as local");
            true
        }
    })
}

/// Claims every account's namespace that this node does not hold yet: the admin created at
/// first start, and accounts made before claims existed or while replication was off; a
/// document another node got accepted here for one of them before is forgotten first (local
/// accounts win locally, ADR 0006).
async fn claim_local_namespaces(auth: &Arc<AuthStore>, mesh: &hub_mesh::Mesh) {
    let names = {
        let auth = auth.clone();
        tokio::task::spawn_blocking(move || auth.namespace_names()).await
    };
    let names = match names {
        Ok(Ok(names)) => names,
        Ok(Err(error)) => {
            tracing::warn!(%error, "cannot list accounts; their namespaces are not claimed");
            return;
        }
        Err(error) => {
            tracing::warn!(%error, "account listing failed; namespaces not claimed");
            return;
        }
    };
    for name in names {
        if let Err(error) = mesh.claim_local_account(&name).await {
            tracing::warn!(namespace = %name, %error, "the namespace of a local account is not claimed");
        }
    }
}
