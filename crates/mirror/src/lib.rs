//! hub-mirror: a node as a pull-through mirror of an upstream Hub (huggingface.co or another
//! hubmesh node), with the policies, offline mode and audit log an enterprise site needs.
//!
//! Place in the graph: above `hub-core` (whose [`MeshPort`] it implements by wrapping the
//! node's mesh, [`MirrorPort`]) and `hub-repo`/`hub-store` (where what it pulls lands), below
//! the gateway (admin API, audit hooks) and the node (configuration, wiring). It speaks to the
//! upstream over HTTP only ([`upstream`]), with what huggingface.co itself offers.
//!
//! How a read becomes a pull: the Hub's access check finds no repo and asks the mesh to
//! fetch it on demand ([`MeshPort::ensure_repo`]); [`MirrorPort`] asks the node's mesh first
//! (another site's public repos replicate over the p2p mesh) and then, when the policy allows
//! it ([`policy`]), pulls the repo's git data from the upstream with smart HTTP: one
//! `upload-pack` exchange whose pack goes through `hub-repo`'s replica checks
//! ([`hub_repo::Repos::create_replica`]), so the mirror's commits are the upstream's, same
//! shas. The repo's LFS files are then missing content, which the gateway's resolve asks the
//! port to stream ([`MeshPort::stream_lfs`]): one [`flight::Flight`] per object fetches it
//! through the upstream's LFS batch API, serves every concurrent reader while it arrives and
//! stores it into the chunk store, SHA-256 verified. Every response is then the node's own
//! (same commit, ETag, linked etag and size as the upstream, no Xet hints: the content did
//! not arrive through Xet), so nothing points a client at another host.
//!
//! Who spawns what: the node builds [`Mirror`] and wraps its mesh in [`MirrorPort`]; pulls and
//! flights run on blocking threads spawned by the first request that needs them and are not
//! tied to it (a client that goes away does not cancel the fetch others wait for); the
//! periodic refresh is one task ([`Mirror::spawn_refresher`]) ended by the node's
//! cancellation token.
//!
//! ```no_run
//! # fn demo(repos: std::sync::Arc<hub_repo::Repos>, store: hub_store::Store) -> Result<(), hub_mirror::MirrorError> {
//! let config = hub_mirror::MirrorConfig::new("DATA/mirror", Some("https://huggingface.co".into()));
//! let audit = std::sync::Arc::new(hub_mirror::AuditLog::open("DATA/audit.jsonl").unwrap());
//! let mirror = hub_mirror::Mirror::open(config, repos, store, audit, std::sync::Arc::new(|_| {}))?;
//! let port = hub_mirror::MirrorPort::new(std::sync::Arc::new(hub_core::NoMesh), mirror);
//! # let _ = port; Ok(()) }
//! ```

pub mod audit;
pub mod bundle;
mod evict;
pub mod flight;
pub mod negative;
pub mod policy;
pub mod quota;
pub mod upstream;

pub use audit::AuditLog;
pub use evict::{Eviction, ObjectRow, UsageReport};
pub use policy::{Action, Pattern, Policy, Rule, Verdict};
pub use upstream::{Timeouts, Upstream, UpstreamError};

use flight::Flight;
use hub_core::{BoxFuture, ClaimError, EnsureError, LfsFetchError, LfsStream, MeshPort};
use hub_protocol::repo::RepoId;
use hub_repo::Repos;
use hub_store::{Sha256, Store};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const POLICY_FILE: &str = "policy.json";
const REPOS_FILE: &str = "repos.json";
const OBJECTS_FILE: &str = "objects.json";
const SPOOL_DIR: &str = "spool";
/// How long a name the upstream lacks is remembered by default.
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(30);

/// A mirror's configuration (the node builds it from `[mirror]` and flags).
#[derive(Clone)]
pub struct MirrorConfig {
    /// Where the mirror keeps its state (`DATA/mirror`).
    pub dir: PathBuf,
    /// The upstream Hub's base URL; `None`: nothing is pulled (bundles and the audit log
    /// still work).
    pub upstream: Option<String>,
    /// The site's token for the upstream (gated and private repos fetched once for the site).
    pub token: Option<String>,
    /// Never contact the upstream: serve what is here.
    pub offline: bool,
    /// Rules from the configuration.
    pub rules: Vec<(Action, String)>,
    /// Refresh mirrored repos that are not pinned this often; `None`: only on request.
    pub refresh: Option<Duration>,
    pub timeouts: Timeouts,
    /// CAs (PEM) trusted for an `https://` upstream besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// How long a name the upstream lacks is answered "not found" without asking again.
    pub negative_ttl: Duration,
    /// Bytes of pulled LFS content the site keeps at most; a pull that would exceed it
    /// evicts the least recently used content that is not pinned first ([`quota`]).
    pub quota: Option<u64>,
}

impl std::fmt::Debug for MirrorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorConfig")
            .field("dir", &self.dir)
            .field("upstream", &self.upstream)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("offline", &self.offline)
            .field("rules", &self.rules)
            .field("refresh", &self.refresh)
            .field("ca_file", &self.ca_file)
            .field("negative_ttl", &self.negative_ttl)
            .field("quota", &self.quota)
            .finish()
    }
}

impl MirrorConfig {
    pub fn new(dir: impl Into<PathBuf>, upstream: Option<String>) -> Self {
        Self {
            dir: dir.into(),
            upstream,
            token: None,
            offline: false,
            rules: Vec::new(),
            refresh: None,
            timeouts: Timeouts::default(),
            ca_file: None,
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            quota: None,
        }
    }
}

/// Why the mirror could not be opened or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MirrorError {
    #[error(transparent)]
    Pattern(#[from] policy::PatternError),
    #[error("{context} {path}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The upstream's TLS roots could not be loaded.
    #[error("{0}")]
    Tls(String),
    #[error("{path} is not a mirror state file")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Why a pull did not give the repo.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PullError {
    /// The policy refuses it.
    #[error("{0}")]
    Refused(String),
    /// The upstream does not have it (or not for this mirror's token).
    #[error("{0}")]
    NotFound(String),
    /// The upstream gates the repo and did not let this mirror's token in.
    #[error("{0}")]
    Gated(String),
    /// The upstream could not be asked (unreachable, offline mode, a bad answer).
    #[error("{0}")]
    Unavailable(String),
    /// The pulled data was refused or could not be stored.
    #[error("{0}")]
    Failed(String),
    /// No upstream is configured.
    #[error("this node mirrors no upstream")]
    NoUpstream,
}

/// A repo this node pulled from the upstream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MirroredRepo {
    /// Unix seconds of the last successful sync.
    pub synced_at: u64,
    /// `refs/heads/main` at the last sync, when the repo has one.
    pub main: Option<String>,
}

/// What a pull did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PullOutcome {
    /// The repo was created here by this pull.
    pub created: bool,
    /// Refs created, moved or deleted.
    pub refs: usize,
    pub main: Option<String>,
}

/// The mirror. Cheap to clone.
#[derive(Clone)]
pub struct Mirror {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Called after a pull changed a repo (the node re-derives its listing document).
pub type OnPulled = Arc<dyn Fn(&RepoId) + Send + Sync>;

struct Inner {
    config: MirrorConfig,
    upstream: Option<Upstream>,
    repos: Arc<Repos>,
    store: Store,
    policy: Mutex<Policy>,
    mirrored: Mutex<BTreeMap<String, MirroredRepo>>,
    pulls: Mutex<HashMap<RepoId, Arc<tokio::sync::Mutex<()>>>>,
    flights: Mutex<HashMap<Sha256, Arc<Flight>>>,
    /// Repos the upstream said it lacks, for a short time.
    missing: negative::NegativeCache<RepoId>,
    /// The LFS objects pulled, for the quota (saved as `objects.json`).
    usage: Mutex<quota::Usage>,
    /// One eviction at a time (a pull making room, or the admin's).
    evicting: Mutex<()>,
    audit: Arc<AuditLog>,
    on_pulled: OnPulled,
}

/// `type/ns/name` (a [`RepoId`]'s `Display`) back to the id.
fn parse_full_id(text: &str) -> Option<RepoId> {
    let (kind, rest) = text.split_once('/')?;
    RepoId::parse(kind.parse().ok()?, rest).ok()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hex20(oid: &[u8; 20]) -> String {
    oid.iter().map(|b| format!("{b:02x}")).collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename).
fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<(), MirrorError> {
    use std::io::Write;
    let io = |context, source| MirrorError::Io {
        context,
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io("create directory for", e))?;
    let mut tmp =
        tempfile::NamedTempFile::new_in(dir).map_err(|e| io("create temp file for", e))?;
    tmp.write_all(bytes).map_err(|e| io("write", e))?;
    tmp.as_file().sync_all().map_err(|e| io("sync", e))?;
    tmp.persist(path).map_err(|e| io("replace", e.error))?;
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned + Default>(
    path: &std::path::Path,
) -> Result<T, MirrorError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| MirrorError::Corrupt {
            path: path.to_owned(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(source) => Err(MirrorError::Io {
            context: "read",
            path: path.to_owned(),
            source,
        }),
    }
}

impl Mirror {
    /// Opens the mirror's state under `config.dir` (run-time rules, the repos it pulled).
    pub fn open(
        config: MirrorConfig,
        repos: Arc<Repos>,
        store: Store,
        audit: Arc<AuditLog>,
        on_pulled: OnPulled,
    ) -> Result<Self, MirrorError> {
        let mut rules = Vec::new();
        for (action, text) in &config.rules {
            rules.push(Rule {
                action: *action,
                pattern: Pattern::for_rule(*action, text)?,
                source: "config",
            });
        }
        let mut policy = Policy::new(rules);
        let stored: Vec<policy::StoredRule> = read_json(&config.dir.join(POLICY_FILE))?;
        for rule in stored {
            policy.add(rule.action, Pattern::for_rule(rule.action, &rule.pattern)?);
        }
        let mirrored = read_json(&config.dir.join(REPOS_FILE))?;
        let usage = read_json(&config.dir.join(OBJECTS_FILE))?;
        let upstream = config
            .upstream
            .as_deref()
            .map(|base| {
                Upstream::new(
                    base,
                    config.token.clone(),
                    config.timeouts,
                    config.ca_file.as_deref(),
                )
            })
            .transpose()
            .map_err(MirrorError::Tls)?;
        let missing = negative::NegativeCache::new(config.negative_ttl, negative::CAPACITY);
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                upstream,
                repos,
                store,
                policy: Mutex::new(policy),
                mirrored: Mutex::new(mirrored),
                pulls: Mutex::new(HashMap::new()),
                flights: Mutex::new(HashMap::new()),
                missing,
                usage: Mutex::new(usage),
                evicting: Mutex::new(()),
                audit,
                on_pulled,
            }),
        })
    }

    pub fn audit(&self) -> &Arc<AuditLog> {
        &self.inner.audit
    }

    /// The upstream's base URL, when there is one.
    pub fn upstream(&self) -> Option<&str> {
        self.inner.upstream.as_ref().map(Upstream::base)
    }

    pub fn offline(&self) -> bool {
        self.inner.config.offline
    }

    /// The rules in force, configuration first.
    pub fn rules(&self) -> Vec<Rule> {
        lock(&self.inner.policy).rules().to_vec()
    }

    /// The repos pulled from the upstream, by `type/ns/name`.
    pub fn mirrored(&self) -> BTreeMap<String, MirroredRepo> {
        lock(&self.inner.mirrored).clone()
    }

    pub fn verdict(&self, id: &RepoId) -> Verdict {
        lock(&self.inner.policy).verdict(id)
    }

    /// Whether `id` was pulled from the upstream (its content comes from there).
    pub fn is_mirrored(&self, id: &RepoId) -> bool {
        lock(&self.inner.mirrored).contains_key(&id.to_string())
    }

    /// Whether a repo of `namespace` was pulled from the upstream.
    pub fn mirrors_namespace(&self, namespace: &str) -> bool {
        lock(&self.inner.mirrored)
            .keys()
            .any(|k| k.split('/').nth(1) == Some(namespace))
    }

    /// Adds a run-time rule (kept across restarts); `false` when it was there already.
    pub fn add_rule(
        &self,
        action: Action,
        pattern: &str,
        actor: &str,
    ) -> Result<bool, MirrorError> {
        let pattern = Pattern::for_rule(action, pattern)?;
        let mut policy = lock(&self.inner.policy);
        let added = policy.add(action, pattern.clone());
        if added {
            self.save_policy(&policy)?;
            self.inner.audit.record(
                actor,
                "policy",
                None,
                json!({"change": "add", "rule": action.as_str(), "pattern": pattern.as_str()}),
            );
        }
        Ok(added)
    }

    /// Removes the run-time rules with this pattern; how many went.
    pub fn remove_rule(&self, pattern: &str, actor: &str) -> Result<usize, MirrorError> {
        let mut policy = lock(&self.inner.policy);
        let removed = policy.remove(pattern);
        if removed > 0 {
            self.save_policy(&policy)?;
            self.inner.audit.record(
                actor,
                "policy",
                None,
                json!({"change": "remove", "pattern": pattern}),
            );
        }
        Ok(removed)
    }

    fn save_policy(&self, policy: &Policy) -> Result<(), MirrorError> {
        let bytes = serde_json::to_vec_pretty(&policy.runtime()).unwrap_or_default();
        write_atomic(&self.inner.config.dir.join(POLICY_FILE), &bytes)
    }

    fn save_mirrored(&self) -> Result<(), MirrorError> {
        let bytes = serde_json::to_vec_pretty(&*lock(&self.inner.mirrored)).unwrap_or_default();
        write_atomic(&self.inner.config.dir.join(REPOS_FILE), &bytes)
    }

    fn upstream_or_offline(&self, id: &RepoId) -> Result<&Upstream, PullError> {
        let upstream = self.inner.upstream.as_ref().ok_or(PullError::NoUpstream)?;
        if self.inner.config.offline {
            return Err(PullError::Unavailable(format!(
                "{} is not cached on this mirror, and the mirror is offline (upstream {} not contacted)",
                id.hub_id(),
                upstream.base()
            )));
        }
        Ok(upstream)
    }

    /// Pulls `id` from the upstream: creates it here, or brings its refs up to the
    /// upstream's. One pull per repo at a time; a pull waiting behind another that created
    /// the repo returns at once unless `again`. Runs on its own task: dropping the returned
    /// future does not stop it.
    pub async fn pull(&self, id: &RepoId, again: bool) -> Result<PullOutcome, PullError> {
        if let Verdict::Refused(why) = self.verdict(id) {
            return Err(PullError::Refused(why));
        }
        let upstream = self.upstream_or_offline(id)?;
        if !again && self.inner.missing.contains(id) {
            return Err(PullError::NotFound(format!(
                "upstream {} has no {} (asked less than {} s ago)",
                upstream.base(),
                id.hub_id(),
                self.inner.config.negative_ttl.as_secs()
            )));
        }
        let gate = lock(&self.inner.pulls)
            .entry(id.clone())
            .or_default()
            .clone();
        let (this, id) = (self.clone(), id.clone());
        tokio::spawn(async move {
            let turn = gate.lock().await;
            let result = if !again && this.inner.repos.exists(&id) {
                Ok(PullOutcome {
                    created: false,
                    refs: 0,
                    main: None,
                })
            } else {
                let (worker, id) = (this.clone(), id.clone());
                tokio::task::spawn_blocking(move || worker.sync_blocking(&id))
                    .await
                    .unwrap_or_else(|e| Err(PullError::Failed(format!("pull task failed: {e}"))))
            };
            drop(turn);
            match &result {
                Err(PullError::NotFound(_)) => this.inner.missing.insert(id.clone()),
                Ok(_) => this.inner.missing.remove(&id),
                Err(_) => {}
            }
            // The gate goes when nobody else waits on it: misses for names that do not exist
            // upstream leave nothing behind.
            let mut pulls = lock(&this.inner.pulls);
            if Arc::strong_count(&gate) <= 2 {
                pulls.remove(&id);
            }
            result
        })
        .await
        .map_err(|e| PullError::Failed(format!("pull task failed: {e}")))?
    }

    /// One sync of `id` with the upstream (blocking).
    fn sync_blocking(&self, id: &RepoId) -> Result<PullOutcome, PullError> {
        let upstream = self.upstream_or_offline(id)?;
        let up_err = |e: UpstreamError| match e {
            e @ UpstreamError::NotFound { .. } => PullError::NotFound(e.to_string()),
            e @ UpstreamError::Gated { .. } => PullError::Gated(e.to_string()),
            e => PullError::Unavailable(e.to_string()),
        };
        let info = upstream.repo_info(id).map_err(up_err)?;
        let (mut refs, peeled) = upstream.advertisement(id).map_err(up_err)?;
        // A gated upstream repo's grants (`refs/hub/gate` of an upstream `hubmesh`) name the
        // upstream's accounts, which mean nothing at this site: the site reads it with its
        // own `upstream_token`, and who may read it here is this site's matter.
        refs.remove(hub_core::gate::GATE_REF);
        // A pin at a revision: `main` is that commit (a pinned tag kept beside it), and no
        // other ref of the upstream is followed (policy module docs).
        let pin = lock(&self.inner.policy).pinned_revision(id);
        if let Some(rev) = &pin {
            let (commit, tag) =
                upstream::resolve_revision(rev, &refs, &peeled).ok_or_else(|| {
                    PullError::NotFound(format!(
                        "upstream {} has no revision {rev} of {} (pinned by this mirror's policy)",
                        upstream.base(),
                        id.hub_id()
                    ))
                })?;
            refs = BTreeMap::from([("refs/heads/main".to_owned(), commit)]);
            refs.extend(tag);
        }
        let repos = &self.inner.repos;
        let exists = repos.exists(id);
        let current = if exists {
            repos
                .public_refs(id)
                .map_err(|e| PullError::Failed(e.to_string()))?
        } else {
            BTreeMap::new()
        };
        let main = refs.get("refs/heads/main").map(hex20);
        let mut wants: Vec<[u8; 20]> = refs
            .iter()
            .filter(|(name, oid)| current.get(*name) != Some(oid))
            .map(|(_, oid)| *oid)
            .collect();
        wants.sort_unstable();
        wants.dedup();
        let outcome = if exists && wants.is_empty() && current.len() == refs.len() {
            PullOutcome {
                created: false,
                refs: 0,
                main: main.clone(),
            }
        } else {
            let haves: Vec<[u8; 20]> = current.values().copied().collect();
            let pack = upstream
                .fetch_pack(id, &wants, &haves, upstream::MAX_PACK)
                .map_err(|e| match (&pin, e) {
                    // A pinned sha the upstream would not send: not one of its commits.
                    (Some(rev), UpstreamError::Protocol { reason, .. }) => {
                        PullError::NotFound(format!(
                            "upstream {} would not send revision {rev} of {}: {reason}",
                            upstream.base(),
                            id.hub_id()
                        ))
                    }
                    (_, e) => up_err(e),
                })?;
            let failed = |e: hub_repo::ReplicaError| {
                PullError::Failed(format!("{} from {}: {e}", id.hub_id(), upstream.base()))
            };
            let applied = if exists {
                repos.apply_replica(id, &pack, &refs).map_err(failed)?
            } else {
                let created_at = i64::try_from(unix_now()).unwrap_or(i64::MAX);
                repos
                    .create_replica(id, created_at, &pack, &refs)
                    .map_err(failed)?
            };
            let refs_changed = match applied {
                hub_repo::ReplicaOutcome::UpToDate => 0,
                hub_repo::ReplicaOutcome::Updated { refs } => refs,
            };
            PullOutcome {
                created: !exists,
                refs: refs_changed,
                main: main.clone(),
            }
        };
        if info.private && !repos.meta(id).is_ok_and(|m| m.private) {
            repos
                .set_private(id, true)
                .map_err(|e| PullError::Failed(e.to_string()))?;
        }
        lock(&self.inner.mirrored).insert(
            id.to_string(),
            MirroredRepo {
                synced_at: unix_now(),
                main: main.clone(),
            },
        );
        if let Err(error) = self.save_mirrored() {
            tracing::warn!(%error, "could not save the mirror's repo list");
        }
        if outcome.created || outcome.refs > 0 {
            self.inner.audit.record(
                "node",
                "mirror",
                Some(&policy::full_id(id)),
                json!({
                    "upstream": upstream.base(),
                    "created": outcome.created,
                    "refs": outcome.refs,
                    "commit": main,
                }),
            );
            (self.inner.on_pulled)(id);
            tracing::info!(repo = %id, upstream = upstream.base(), refs = outcome.refs, "pulled from the upstream");
        }
        Ok(outcome)
    }

    /// Refreshes the mirrored repos (`only`: one of them), pinned ones included: what
    /// `hubmesh mirror refresh` asks for. Each repo's result, by `type/ns/name`.
    pub async fn refresh(
        &self,
        only: Option<&RepoId>,
    ) -> BTreeMap<String, Result<PullOutcome, PullError>> {
        let targets: Vec<RepoId> = match only {
            Some(id) => vec![id.clone()],
            None => self.mirrored_ids(),
        };
        let mut out = BTreeMap::new();
        for id in targets {
            let result = self.pull(&id, true).await;
            out.insert(id.to_string(), result);
        }
        out
    }

    fn mirrored_ids(&self) -> Vec<RepoId> {
        lock(&self.inner.mirrored)
            .keys()
            .filter_map(|k| parse_full_id(k))
            .collect()
    }

    /// Refreshes the mirrored repos that are not pinned every `config.refresh`, until
    /// `cancel`. Nothing when no period is configured, offline, or no upstream.
    pub fn spawn_refresher(
        &self,
        cancel: CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let period = self.inner.config.refresh?;
        if self.inner.upstream.is_none() || self.inner.config.offline {
            return None;
        }
        let this = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                for id in this.mirrored_ids() {
                    if matches!(this.verdict(&id), Verdict::Allowed { pinned: false })
                        && let Err(error) = this.pull(&id, true).await
                    {
                        tracing::debug!(repo = %id, %error, "scheduled refresh failed");
                    }
                }
            }
        }))
    }

    /// The flight fetching `sha256` of `id`, started if none runs.
    fn flight(&self, id: &RepoId, sha256: Sha256, size: u64) -> Result<Arc<Flight>, String> {
        let upstream = self
            .upstream_or_offline(id)
            .map_err(|e| e.to_string())?
            .clone();
        let mut flights = lock(&self.inner.flights);
        if let Some(f) = flights.get(&sha256) {
            return Ok(f.clone());
        }
        let flight = Flight::new(&self.inner.config.dir.join(SPOOL_DIR), sha256, size)
            .map_err(|e| format!("create a spool file: {e}"))?;
        flights.insert(sha256, flight.clone());
        drop(flights);
        let (this, id, f) = (self.clone(), id.clone(), flight.clone());
        tokio::task::spawn_blocking(move || {
            let room = this.make_room(&sha256, size);
            let source = room.clone().and_then(|()| {
                upstream
                    .lfs_download(&id, &sha256, size)
                    .and_then(|d| upstream.open(&d))
                    .map(|r| Box::new(r) as Box<dyn std::io::Read + Send>)
                    .map_err(|e| e.to_string())
            });
            let (repos, store) = (&this.inner.repos, &this.inner.store);
            let result = f.run(store, source, || {
                hub_core::lfs_objects::adopt(repos, store, &id, &sha256).map_err(|e| e.to_string())
            });
            if result.is_ok() {
                this.record_use(&id, &sha256, size);
            }
            if room.is_ok() && this.inner.config.quota.is_some() {
                lock(&this.inner.usage).release(size);
            }
            lock(&this.inner.flights).remove(&sha256);
            match result {
                Ok(()) => this.inner.audit.record(
                    "node",
                    "mirror",
                    Some(&policy::full_id(&id)),
                    json!({"upstream": upstream.base(), "object": sha256.to_string(), "size": size}),
                ),
                Err(error) => {
                    tracing::warn!(repo = %id, %sha256, %error, "LFS pull from the upstream failed");
                }
            }
        });
        Ok(flight)
    }

    /// Makes the stored object `sha256` part of `id` after the upstream confirmed that the
    /// repo has it (a pointer alone proves nothing); `Ok(false)`: not stored here.
    fn adopt_stored(&self, id: &RepoId, sha256: Sha256, size: u64) -> Result<bool, String> {
        let store = &self.inner.store;
        if !store.has(&sha256).map_err(|e| e.to_string())? {
            return Ok(false);
        }
        let upstream = self.upstream_or_offline(id).map_err(|e| e.to_string())?;
        upstream
            .lfs_download(id, &sha256, size)
            .map_err(|e| e.to_string())?;
        hub_core::lfs_objects::adopt(&self.inner.repos, store, id, &sha256)
            .map_err(|e| e.to_string())?;
        if lock(&self.inner.usage).get(&sha256).is_some() {
            self.record_use(id, &sha256, size);
        }
        Ok(true)
    }
}

/// The node's mesh with the mirror behind it: what the Hub's rules see on a mirror node.
#[derive(Debug, Clone)]
pub struct MirrorPort {
    mesh: Arc<dyn MeshPort>,
    mirror: Mirror,
}

impl MirrorPort {
    pub fn new(mesh: Arc<dyn MeshPort>, mirror: Mirror) -> Self {
        Self { mesh, mirror }
    }

    async fn adopt_stored(&self, repo: &RepoId, sha256: Sha256, size: u64) -> Result<bool, String> {
        let (mirror, repo) = (self.mirror.clone(), repo.clone());
        tokio::task::spawn_blocking(move || mirror.adopt_stored(&repo, sha256, size))
            .await
            .map_err(|e| e.to_string())?
    }
}

impl MeshPort for MirrorPort {
    fn ensure_repo<'a>(
        &'a self,
        repo: &'a RepoId,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<(), EnsureError>> {
        Box::pin(async move {
            match self.mesh.ensure_repo(repo, deadline).await {
                Err(EnsureError::Unknown) => {}
                other => return other,
            }
            if self.mirror.upstream().is_none() {
                return Err(EnsureError::Unknown);
            }
            match tokio::time::timeout_at(deadline, self.mirror.pull(repo, false)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(PullError::NotFound(_) | PullError::NoUpstream)) => {
                    Err(EnsureError::Unknown)
                }
                Ok(Err(PullError::Refused(why))) => Err(EnsureError::Refused(why)),
                Ok(Err(PullError::Gated(why))) => Err(EnsureError::Gated(why)),
                Ok(Err(e @ (PullError::Unavailable(_) | PullError::Failed(_)))) => {
                    Err(EnsureError::Unavailable(e.to_string()))
                }
                Err(_) => Err(EnsureError::Pending(format!(
                    "still arriving from the upstream {}",
                    self.mirror.upstream().unwrap_or_default()
                ))),
            }
        })
    }

    fn ensure_lfs<'a>(
        &'a self,
        repo: &'a RepoId,
        sha256: Sha256,
        size: u64,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<(), LfsFetchError>> {
        Box::pin(async move {
            if !self.mirror.is_mirrored(repo) {
                return self.mesh.ensure_lfs(repo, sha256, size, deadline).await;
            }
            match self.adopt_stored(repo, sha256, size).await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(LfsFetchError::Failed(e)),
            }
            let flight = self
                .mirror
                .flight(repo, sha256, size)
                .map_err(LfsFetchError::Failed)?;
            match tokio::time::timeout_at(deadline, flight.wait()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(LfsFetchError::Failed(e)),
                Err(_) => Err(LfsFetchError::Timeout),
            }
        })
    }

    fn stream_lfs<'a>(
        &'a self,
        repo: &'a RepoId,
        sha256: Sha256,
        size: u64,
        deadline: Instant,
    ) -> BoxFuture<'a, Option<LfsStream>> {
        Box::pin(async move {
            if !self.mirror.is_mirrored(repo) {
                return self.mesh.stream_lfs(repo, sha256, size, deadline).await;
            }
            // Stored for another repo already: adopted, and served from the store.
            if !matches!(self.adopt_stored(repo, sha256, size).await, Ok(false)) {
                return None;
            }
            let flight = self.mirror.flight(repo, sha256, size).ok()?;
            let started = tokio::time::timeout_at(deadline, flight.started()).await;
            if !matches!(started, Ok(true)) {
                return None;
            }
            Some(flight.reader())
        })
    }

    fn stream_lfs_range<'a>(
        &'a self,
        repo: &'a RepoId,
        sha256: Sha256,
        size: u64,
        range: std::ops::Range<u64>,
        deadline: Instant,
    ) -> BoxFuture<'a, Option<LfsStream>> {
        Box::pin(async move {
            if !self.mirror.is_mirrored(repo) {
                return self
                    .mesh
                    .stream_lfs_range(repo, sha256, size, range, deadline)
                    .await;
            }
            if !matches!(self.adopt_stored(repo, sha256, size).await, Ok(false)) {
                return None;
            }
            let flight = self.mirror.flight(repo, sha256, size).ok()?;
            let started = tokio::time::timeout_at(deadline, flight.started()).await;
            if !matches!(started, Ok(true)) {
                return None;
            }
            Some(flight.range_reader(range.start, range.end))
        })
    }

    /// A namespace the mirror pulled repos of is the upstream's: writes belong there, and
    /// batch downloads fetch what its repos lack ([`hub_core::Hub::plan_downloads`]).
    fn namespace_hosts<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Option<Vec<String>>> {
        Box::pin(async move {
            if let Some(hosts) = self.mesh.namespace_hosts(namespace).await {
                return Some(hosts);
            }
            let upstream = self.mirror.upstream()?;
            self.mirror
                .mirrors_namespace(namespace)
                .then(|| vec![upstream.to_owned()])
        })
    }

    fn claim_namespace<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Result<(), ClaimError>> {
        self.mesh.claim_namespace(namespace)
    }

    fn repo_changed(&self, repo: &RepoId) {
        self.mesh.repo_changed(repo);
    }

    fn lfs_served(&self, repo: &RepoId, sha256: Sha256) {
        if self.mirror.is_mirrored(repo) {
            self.mirror.touch(&sha256);
        } else {
            self.mesh.lfs_served(repo, sha256);
        }
    }

    fn prefetch_lfs(&self, repo: &RepoId, sha256: Sha256, size: u64) -> bool {
        if !self.mirror.is_mirrored(repo) {
            return self.mesh.prefetch_lfs(repo, sha256, size);
        }
        self.mirror.flight(repo, sha256, size).is_ok()
    }
}
