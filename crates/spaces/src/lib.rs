//! hub-spaces: Space apps built from their repositories, run sandboxed, supervised through
//! the Hub's stages.
//!
//! Place in the graph: above `core` (`… ← core ← spaces ← gateway ← node`); it reads repos
//! through `hub-repo` and knows no HTTP (duplicating a Space is `hub-core`'s repo
//! duplication; the gateway then sets the copy's secrets and variables here). The gateway renders what [`Spaces`] answers (`gateway/src/spaces.rs`); the node
//! builds it (`--spaces off|local`).
//!
//! Who spawns whom: [`Spaces`] keeps one [`Space`] per Space repo that was asked about, each
//! with a supervisor task (`space.rs`) that owns its app process and reads a bounded command
//! channel; a start (build, then app) runs as a task of its own under the supervisor.
//! Environments (`env.rs`) are shared by content hash across Spaces; every process runs in
//! the sandbox of `sandbox.rs`.
//!
//! ```no_run
//! # async fn demo(spaces: hub_spaces::Spaces, id: hub_protocol::repo::RepoId) {
//! // `Some(session_hash)` keeps a gradio session on the instance it started on.
//! match spaces.serve(&id, None, std::time::Duration::from_secs(60)).await {
//!     Ok(served) => match served.target {
//!         // Proxy to 127.0.0.1:port, holding `served.in_flight` until the answer ends.
//!         hub_spaces::Target::App { port, .. } => {}
//!         hub_spaces::Target::Static { commit, .. } => { /* serve the commit's files */ }
//!     },
//!     Err(unavailable) => { /* 503 naming unavailable.stage */ }
//! }
//! # }
//! ```

pub mod config;
pub mod env;
pub mod host;
pub mod log;
pub mod route;
pub mod sandbox;
pub mod settings;
mod space;
pub mod stage;

pub use config::{ConfigError, Sdk, SpaceConfig};
pub use log::{Log, LogLine};
pub use route::InFlight;
pub use sandbox::SandboxConfig;
pub use settings::{Entry, SettingError, Settings};
pub use space::{Space, Status};
pub use stage::Stage;

use env::{Envs, Python};
use hub_core::{Hub, RepoOpError};
use hub_protocol::repo::{RepoId, RepoType};
use space::Cmd;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where requests to a serving Space go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An app listening on this loopback port. `keep_prefix`: the app serves under its root
    /// path itself (streamlit's `baseUrlPath`); else the prefix is stripped (gradio's
    /// `root_path` only shapes the URLs it writes).
    App { port: u16, keep_prefix: bool },
    /// A static Space: the files of `commit`, `index` for the root.
    Static { commit: String, index: String },
}

/// Settings of the Spaces runtime on this node.
#[derive(Debug, Clone)]
pub struct SpacesConfig {
    /// Checkouts and settings (`DATA/spaces`).
    pub dir: PathBuf,
    /// Built environments, by content hash (default `DATA/spaces/envs`; nodes on one machine
    /// may share one).
    pub env_dir: PathBuf,
    /// The Python that environments are built with.
    pub python: PathBuf,
    pub sandbox: SandboxConfig,
    /// How long an app may take to listen after it starts.
    pub start_timeout: Duration,
    /// How long an environment build may take.
    pub build_timeout: Duration,
    /// Idle time before a Space sleeps when its owner set none (`None`: never).
    pub default_sleep: Option<Duration>,
    /// At most this many Spaces known at once (each has a supervisor task).
    pub max_spaces: usize,
    /// A replaced instance stops once nothing is in flight on it and its sessions have been
    /// quiet this long...
    pub drain_idle: Duration,
    /// ...or when it has drained this long, whichever comes first.
    pub drain_max: Duration,
    /// Host names under which `NS-NAME.<domain>` names a Space (`host.rs`).
    pub domains: Vec<String>,
}

impl SpacesConfig {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            env_dir: dir.join("envs"),
            dir,
            python: "python3".into(),
            sandbox: SandboxConfig::default(),
            start_timeout: Duration::from_secs(120),
            build_timeout: Duration::from_secs(1800),
            default_sleep: Some(Duration::from_secs(48 * 3600)),
            max_spaces: 256,
            drain_idle: Duration::from_secs(30),
            drain_max: Duration::from_secs(120),
            domains: vec!["localhost".into()],
        }
    }
}

/// Where one request goes.
#[derive(Debug)]
pub struct Served {
    pub target: Target,
    /// Held until the answer ends (its body, its websocket), so the instance is not retired
    /// under it; `None` when the instance was retired in between.
    pub in_flight: Option<InFlight>,
}

/// Why a Space cannot serve a request now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Unavailable {
    pub stage: Stage,
    pub message: String,
}

/// Why a Spaces call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpacesError {
    #[error("{0} is not a Space")]
    NotASpace(String),
    #[error("this node runs at most {0} Spaces")]
    TooMany(usize),
    #[error(transparent)]
    Setting(#[from] SettingError),
    #[error(transparent)]
    Repo(#[from] RepoOpError),
    #[error("save the Space's settings: {0}")]
    Io(#[from] std::io::Error),
    #[error("the Space's supervisor stopped")]
    Stopped,
    #[error("{0}")]
    Internal(String),
}

/// What every Space shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: SpacesConfig,
    pub(crate) repos: Arc<hub_repo::Repos>,
    pub(crate) envs: Envs,
    root: bool,
}

impl Shared {
    /// The uid of the Space in `slot` when the node can switch uids.
    pub(crate) fn app_uid(&self, slot: u32) -> Option<u32> {
        self.root
            .then(|| self.config.sandbox.uid_base.saturating_add(slot))
    }
}

/// The Spaces of this node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Spaces {
    shared: Arc<Shared>,
    spaces: Arc<Mutex<HashMap<RepoId, Arc<Space>>>>,
}

impl Spaces {
    /// Starts the Spaces runtime: probes the Python that builds environments.
    pub async fn new(mut config: SpacesConfig, hub: Hub) -> std::io::Result<Self> {
        let python = Python::probe(&config.python).await?;
        std::fs::create_dir_all(&config.dir)?;
        std::fs::create_dir_all(&config.env_dir)?;
        // Sandboxes bind these at their own (absolute) paths.
        config.dir = std::fs::canonicalize(&config.dir)?;
        config.env_dir = std::fs::canonicalize(&config.env_dir)?;
        let root = sandbox::is_root();
        let build_uid = root.then(|| config.sandbox.uid_base.saturating_sub(1));
        let envs = Envs::new(
            config.env_dir.clone(),
            python,
            config.sandbox.clone(),
            build_uid,
            config.build_timeout,
        );
        tracing::info!(python = %envs.python().executable.display(), version = %envs.python().version, root, "Spaces runtime ready");
        Ok(Self {
            shared: Arc::new(Shared {
                repos: hub.repos().clone(),
                config,
                envs,
                root,
            }),
            spaces: Arc::default(),
        })
    }

    /// The host names under which `NS-NAME.<domain>` names a Space.
    pub fn domains(&self) -> &[String] {
        &self.shared.config.domains
    }

    /// The default sleep time in seconds (`None`: Spaces never sleep unless told to).
    pub fn default_sleep_secs(&self) -> Option<u64> {
        self.shared.config.default_sleep.map(|d| d.as_secs())
    }

    /// The Space a request's `Host` names (`NS-NAME.<domain>`), if it exists. Blocking (it
    /// may look repos up on disk).
    pub fn space_for_host(&self, host: &str) -> Option<RepoId> {
        let label = host::space_label(host, &self.shared.config.domains)?;
        let known = self
            .spaces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .find(|id| host::matches(label, id))
            .cloned();
        known.or_else(|| {
            let lower = label.to_ascii_lowercase();
            host::candidates(&lower).find(|id| self.shared.repos.exists(id))
        })
    }

    /// The Space `id`, its supervisor started on first use.
    pub fn space(&self, id: &RepoId) -> Result<Arc<Space>, SpacesError> {
        if id.kind() != RepoType::Space {
            return Err(SpacesError::NotASpace(id.hub_id()));
        }
        let mut spaces = self.spaces.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(space) = spaces.get(id) {
            return Ok(space.clone());
        }
        if spaces.len() >= self.shared.config.max_spaces {
            return Err(SpacesError::TooMany(self.shared.config.max_spaces));
        }
        let slot = u32::try_from(spaces.len()).unwrap_or(u32::MAX);
        let space = space::spawn(self.shared.clone(), id.clone(), slot);
        spaces.insert(id.clone(), space.clone());
        Ok(space)
    }

    async fn send(&self, space: &Space, cmd: Cmd) -> Result<(), SpacesError> {
        space
            .tx
            .send((cmd, None))
            .await
            .map_err(|_| SpacesError::Stopped)
    }

    /// The Space's status; starts it when it never ran here (a runtime query, as on the Hub,
    /// does not wake a sleeping Space).
    pub async fn runtime(&self, id: &RepoId) -> Result<(Status, Settings), SpacesError> {
        let space = self.space(id)?;
        let status = self.settled(&space, Cmd::Ensure { wake: false }).await?;
        Ok((status, space.settings()))
    }

    /// Where a request goes: to the instance `session` started on while that one drains,
    /// else to the current instance, waiting until the Space serves (starting or waking it),
    /// up to `wait`. A new session is bound to the instance it reaches.
    pub async fn serve(
        &self,
        id: &RepoId,
        session: Option<&str>,
        wait: Duration,
    ) -> Result<Served, Unavailable> {
        let session = session.filter(|s| route::valid_session(s));
        let space = self.space(id).map_err(|e| Unavailable {
            stage: Stage::Stopped,
            message: e.to_string(),
        })?;
        space.touch();
        if let Some(session) = session {
            let current = space.status.borrow().instance;
            let elsewhere = space
                .routes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .elsewhere(session, current);
            if let Some(in_flight) = elsewhere {
                return Ok(Served {
                    target: in_flight.target().clone(),
                    in_flight: Some(in_flight),
                });
            }
        }
        let served = |(target, instance): (Target, Option<u64>)| {
            let in_flight = instance.and_then(|i| {
                space
                    .routes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .enter(i, session)
            });
            Served { target, in_flight }
        };
        let mut rx = space.status.clone();
        // Fast path: serving and no new commit to build.
        let fast = serving_target(&rx.borrow());
        if let Some(target) = fast {
            // Still tell the supervisor, so a new commit gets built, without waiting.
            if space.check_due() {
                let _ = space.tx.try_send((Cmd::Ensure { wake: true }, None));
            }
            return Ok(served(target));
        }
        if space
            .tx
            .send((Cmd::Ensure { wake: true }, None))
            .await
            .is_err()
        {
            return Err(Unavailable {
                stage: Stage::Stopped,
                message: "the Space's supervisor stopped".into(),
            });
        }
        let waited = tokio::time::timeout(wait, async {
            loop {
                let status = rx.borrow_and_update().clone();
                if let Some(target) = serving_target(&status) {
                    return Ok(served(target));
                }
                let waiting = status.stage.on_the_way()
                    || matches!(status.stage, Stage::Stopped | Stage::Sleeping);
                if !waiting {
                    return Err(unavailable(&status));
                }
                if rx.changed().await.is_err() {
                    return Err(unavailable(&status));
                }
            }
        })
        .await;
        match waited {
            Ok(answer) => answer,
            Err(_) => {
                let status = space.status();
                Err(Unavailable {
                    stage: status.stage,
                    message: format!(
                        "Space {} is {} (waited {}s); retry shortly",
                        id.hub_id(),
                        status.stage,
                        wait.as_secs()
                    ),
                })
            }
        }
    }

    pub async fn pause(&self, id: &RepoId) -> Result<Status, SpacesError> {
        let space = self.space(id)?;
        self.update_settings(&space, |s| {
            s.paused = true;
            Ok(())
        })?;
        self.settled(&space, Cmd::Pause).await
    }

    pub async fn restart(&self, id: &RepoId, factory: bool) -> Result<Status, SpacesError> {
        let space = self.space(id)?;
        self.update_settings(&space, |s| {
            s.paused = false;
            Ok(())
        })?;
        self.settled(&space, Cmd::Restart { factory }).await
    }

    pub fn set_sleep_time(&self, id: &RepoId, seconds: i64) -> Result<Status, SpacesError> {
        let space = self.space(id)?;
        self.update_settings(&space, |s| {
            s.sleep_time = Some(seconds);
            Ok(())
        })?;
        Ok(space.status())
    }

    /// Adds or replaces a secret (`secret: true`) or a variable; a running app restarts to
    /// see it.
    pub async fn set_entry(
        &self,
        id: &RepoId,
        secret: bool,
        key: &str,
        value: &str,
        description: Option<String>,
    ) -> Result<Settings, SpacesError> {
        let space = self.space(id)?;
        let settings = self.update_settings(&space, |s| {
            let map = if secret {
                &mut s.secrets
            } else {
                &mut s.variables
            };
            settings::check(key, value, map)?;
            map.insert(
                key.to_owned(),
                Entry {
                    value: value.to_owned(),
                    description,
                    updated: settings::now_secs(),
                },
            );
            Ok(())
        })?;
        self.send(&space, Cmd::Reconfigure).await?;
        Ok(settings)
    }

    /// Removes a secret or variable (absent is fine); a running app restarts.
    pub async fn delete_entry(
        &self,
        id: &RepoId,
        secret: bool,
        key: &str,
    ) -> Result<Settings, SpacesError> {
        let space = self.space(id)?;
        let settings = self.update_settings(&space, |s| {
            if secret {
                s.secrets.remove(key);
            } else {
                s.variables.remove(key);
            }
            Ok(())
        })?;
        self.send(&space, Cmd::Reconfigure).await?;
        Ok(settings)
    }

    pub fn settings(&self, id: &RepoId) -> Result<Settings, SpacesError> {
        Ok(self.space(id)?.settings())
    }

    /// The build log (`build: true`) or the run log of `id`.
    pub fn log(&self, id: &RepoId, build: bool) -> Result<Arc<Log>, SpacesError> {
        let space = self.space(id)?;
        Ok(if build {
            space.build_log.clone()
        } else {
            space.run_log.clone()
        })
    }

    fn update_settings(
        &self,
        space: &Space,
        change: impl FnOnce(&mut Settings) -> Result<(), SettingError>,
    ) -> Result<Settings, SpacesError> {
        let mut settings = space.settings.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = settings.clone();
        change(&mut next)?;
        next.save(&space.settings_path)?;
        *settings = next.clone();
        Ok(next)
    }

    /// The status once the supervisor has handled `cmd`.
    async fn settled(&self, space: &Space, cmd: Cmd) -> Result<Status, SpacesError> {
        let (done, handled) = tokio::sync::oneshot::channel();
        space
            .tx
            .send((cmd, Some(done)))
            .await
            .map_err(|_| SpacesError::Stopped)?;
        handled.await.map_err(|_| SpacesError::Stopped)?;
        Ok(space.status())
    }
}

fn serving_target(status: &Status) -> Option<(Target, Option<u64>)> {
    let target = status.target.clone().filter(|_| status.stage.serving())?;
    Some((target, status.instance))
}

fn unavailable(status: &Status) -> Unavailable {
    let why = status
        .error
        .as_deref()
        .map(|e| format!(": {e}"))
        .unwrap_or_default();
    Unavailable {
        stage: status.stage,
        message: format!("Space is {}{why}", status.stage),
    }
}
