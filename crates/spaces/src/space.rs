//! One Space on this node: its supervisor task and the handle the gateway talks to.
//!
//! The supervisor is a task that owns the Space's running instance (at most one serving, and
//! at most one being built or started next to it) and reads a bounded command channel:
//! `Ensure` (a request or a runtime query arrived: start it if it should run and does not,
//! or build the new commit if `main` moved), `Pause`, `Restart` (optionally a factory
//! rebuild) and `Reconfigure` (secrets or variables changed: restart). Every second it checks
//! the idle time against the sleep time. It publishes the Space's [`Status`] on a `watch`
//! channel, which requests wait on.
//!
//! A start runs as its own task (so a pause can abort it) through the stages BUILDING →
//! APP_STARTING → RUNNING: read the README at the commit, check out the commit's files,
//! ensure the environment, start the app sandboxed on a free loopback port, and wait until
//! the port accepts connections, the app exits (RUNTIME_ERROR) or the start timeout passes.
//! While a new commit builds and starts, the old instance keeps serving (RUNNING_BUILDING,
//! RUNNING_APP_STARTING). Once the new one serves, new visitors go to it and the old one
//! *drains* (`route.rs`): it keeps its requests in flight and its sessions until they are
//! done and quiet for [`crate::SpacesConfig::drain_idle`], at most
//! [`crate::SpacesConfig::drain_max`]; then it stops. No gap, and no session cut in two.

use crate::config::{ConfigError, Sdk, SpaceConfig};
use crate::env::{EnvSpec, pump};
use crate::log::Log;
use crate::route::{Route, Routes};
use crate::sandbox::Jail;
use crate::settings::Settings;
use crate::stage::Stage;
use crate::{Shared, Target};
use hub_protocol::repo::RepoId;
use hub_repo::{EntryKind, RepoError};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// What the gateway sees of a Space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub stage: Stage,
    /// The commit serving (or being built when nothing serves).
    pub commit: Option<String>,
    /// Where requests go while it serves.
    pub target: Option<Target>,
    /// Why it is in an error stage.
    pub error: Option<String>,
    pub sdk: Option<Sdk>,
    pub suggested_hardware: Option<String>,
    /// The route of the instance serving (`route.rs`).
    pub(crate) instance: Option<u64>,
}

impl Status {
    fn new(stage: Stage) -> Self {
        Self {
            stage,
            commit: None,
            target: None,
            error: None,
            sdk: None,
            suggested_hardware: None,
            instance: None,
        }
    }
}

#[derive(Debug)]
pub(crate) enum Cmd {
    /// Start if it should run; `wake`: also from SLEEPING (a request to the app).
    Ensure {
        wake: bool,
    },
    Pause,
    Restart {
        factory: bool,
    },
    Reconfigure,
}

/// The handle of one Space.
#[derive(Debug)]
pub struct Space {
    pub(crate) tx: mpsc::Sender<(Cmd, Option<oneshot::Sender<()>>)>,
    pub(crate) status: watch::Receiver<Status>,
    pub(crate) build_log: Arc<Log>,
    pub(crate) run_log: Arc<Log>,
    pub(crate) settings: Arc<Mutex<Settings>>,
    pub(crate) settings_path: PathBuf,
    pub(crate) last_request: Arc<Mutex<Instant>>,
    /// When a serving request last asked the supervisor to look for a new commit.
    pub(crate) last_check: Mutex<Option<Instant>>,
    /// Its instances (current and draining) and their sessions.
    pub(crate) routes: Arc<Mutex<Routes>>,
}

impl Space {
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    pub fn settings(&self) -> Settings {
        self.settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether a serving request should ask for a new-commit check now (at most once a
    /// second, so busy apps do not flood the supervisor).
    pub(crate) fn check_due(&self) -> bool {
        let mut last = self.last_check.lock().unwrap_or_else(|e| e.into_inner());
        let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if due {
            *last = Some(Instant::now());
        }
        due
    }

    pub(crate) fn touch(&self) {
        *self.last_request.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }
}

/// Starts the supervisor of `id` and returns its handle.
pub(crate) fn spawn(shared: Arc<Shared>, id: RepoId, slot: u32) -> Arc<Space> {
    let settings_path = shared
        .config
        .dir
        .join("settings")
        .join(id.namespace())
        .join(format!("{}.json", id.name()));
    let settings = Settings::load(&settings_path);
    let initial = if settings.paused {
        Stage::Paused
    } else {
        Stage::Stopped
    };
    let (status_tx, status_rx) = watch::channel(Status::new(initial));
    let (tx, rx) = mpsc::channel(16);
    let space = Arc::new(Space {
        tx,
        status: status_rx,
        build_log: Arc::new(Log::new()),
        run_log: Arc::new(Log::new()),
        settings: Arc::new(Mutex::new(settings)),
        settings_path,
        last_request: Arc::new(Mutex::new(Instant::now())),
        last_check: Mutex::new(None),
        routes: Arc::default(),
    });
    let supervisor = Supervisor {
        shared,
        id,
        slot,
        status: Arc::new(status_tx),
        build_log: space.build_log.clone(),
        run_log: space.run_log.clone(),
        settings: space.settings.clone(),
        last_request: space.last_request.clone(),
        routes: space.routes.clone(),
        current: None,
        draining: Vec::new(),
        pending: None,
        failed_commit: None,
    };
    tokio::spawn(supervisor.run(rx));
    space
}

/// A started app (or a static Space, which has no process).
#[derive(Debug)]
struct Instance {
    commit: String,
    target: Target,
    child: Option<Child>,
    sdk: Sdk,
    suggested_hardware: Option<String>,
    /// Set when the supervisor registers it.
    route: Option<Arc<Route>>,
}

impl Instance {
    fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }

    fn route_id(&self) -> Option<u64> {
        self.route.as_ref().map(|r| r.id)
    }
}

/// An instance a newer one replaced, finishing what it serves.
struct Draining {
    instance: Instance,
    since: Instant,
}

/// Why a start failed: the stage it leaves the Space in, and why.
#[derive(Debug)]
struct Failure {
    stage: Stage,
    commit: String,
    message: String,
}

/// What woke the supervisor.
enum Event {
    Command(Option<(Cmd, Option<oneshot::Sender<()>>)>),
    Started(Box<Result<Result<Instance, Failure>, tokio::task::JoinError>>),
    Exited(std::io::Result<std::process::ExitStatus>),
    Tick,
}

struct Pending {
    commit: String,
    task: JoinHandle<Result<Instance, Failure>>,
}

struct Supervisor {
    shared: Arc<Shared>,
    id: RepoId,
    slot: u32,
    status: Arc<watch::Sender<Status>>,
    build_log: Arc<Log>,
    run_log: Arc<Log>,
    settings: Arc<Mutex<Settings>>,
    last_request: Arc<Mutex<Instant>>,
    routes: Arc<Mutex<Routes>>,
    current: Option<Instance>,
    draining: Vec<Draining>,
    pending: Option<Pending>,
    /// The commit whose last start failed: not retried until a restart or a new commit.
    failed_commit: Option<String>,
}

impl Supervisor {
    async fn run(mut self, mut rx: mpsc::Receiver<(Cmd, Option<oneshot::Sender<()>>)>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let event = {
                let pending = self.pending.as_mut().map(|p| &mut p.task);
                let child = self.current.as_mut().and_then(|c| c.child.as_mut());
                let (has_pending, has_child) = (pending.is_some(), child.is_some());
                tokio::select! {
                    cmd = rx.recv() => Event::Command(cmd),
                    done = async { pending.expect("guarded").await }, if has_pending => {
                        Event::Started(Box::new(done))
                    }
                    exit = async { child.expect("guarded").wait().await }, if has_child => {
                        Event::Exited(exit)
                    }
                    _ = tick.tick() => Event::Tick,
                }
            };
            match event {
                Event::Command(None) => break,
                Event::Command(Some((cmd, done))) => {
                    self.command(cmd).await;
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                }
                Event::Started(done) => {
                    self.pending = None;
                    match *done {
                        Ok(Ok(instance)) => self.started(instance),
                        Ok(Err(failure)) => self.failed(failure),
                        Err(e) if e.is_cancelled() => {}
                        Err(e) => {
                            tracing::error!(space = %self.id.hub_id(), error = %e, "Space start task failed");
                        }
                    }
                }
                Event::Exited(exit) => {
                    let status = exit.map_or_else(|e| e.to_string(), |s| s.to_string());
                    self.run_log.push(&format!("the app exited ({status})"));
                    let gone = self.current.take();
                    if let Some(id) = gone.as_ref().and_then(Instance::route_id) {
                        self.routes().remove(id);
                    }
                    let commit = gone.map(|c| c.commit);
                    tracing::warn!(space = %self.id.hub_id(), %status, "Space app exited");
                    if self.pending.is_none() {
                        self.failed_commit = commit.clone();
                        self.publish(Status {
                            commit,
                            error: Some(format!("the app exited ({status}); see the run log")),
                            ..Status::new(Stage::RuntimeError)
                        });
                    }
                }
                Event::Tick => {
                    self.check_drains();
                    self.check_idle();
                }
            }
        }
        self.stop_all();
    }

    fn publish(&self, status: Status) {
        self.status.send_replace(status);
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn serving(&self) -> bool {
        self.current.is_some()
    }

    fn settings(&self) -> Settings {
        self.settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Ensure { wake } => self.ensure(wake, false).await,
            Cmd::Pause => {
                self.stop_all();
                self.publish(Status::new(Stage::Paused));
            }
            Cmd::Restart { factory } => {
                self.stop_all();
                self.failed_commit = None;
                self.ensure(true, factory).await;
            }
            Cmd::Reconfigure => {
                if self.serving() || self.pending.is_some() {
                    self.stop_all();
                    self.ensure(true, false).await;
                }
            }
        }
    }

    /// Starts the Space if it should run and does not, or builds `main`'s new commit.
    async fn ensure(&mut self, wake: bool, factory: bool) {
        if self.settings().paused {
            if self.status.borrow().stage != Stage::Paused {
                self.stop_all();
                self.publish(Status::new(Stage::Paused));
            }
            return;
        }
        let head = {
            let (repos, id) = (self.shared.repos.clone(), self.id.clone());
            tokio::task::spawn_blocking(move || repos.resolve(&id, "main")).await
        };
        let head = match head {
            Ok(Ok(head)) => head,
            Ok(Err(error)) => {
                tracing::warn!(space = %self.id.hub_id(), %error, "cannot resolve the Space's main branch");
                return;
            }
            Err(_) => return,
        };
        if let Some(current) = &self.current
            && current.commit == head
        {
            return;
        }
        if let Some(pending) = &self.pending
            && pending.commit == head
        {
            return;
        }
        if self.failed_commit.as_deref() == Some(head.as_str()) && !factory {
            return;
        }
        let stage = self.status.borrow().stage;
        if self.current.is_none() && stage == Stage::Sleeping && !wake {
            return;
        }
        if let Some(p) = self.pending.take() {
            p.task.abort();
        }
        self.failed_commit = None;
        *self.last_request.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        let serving = self.serving();
        let mut status = self.status.borrow().clone();
        status.stage = Stage::building(serving);
        if !serving {
            status = Status {
                commit: Some(head.clone()),
                ..Status::new(Stage::Building)
            };
        }
        self.publish(status);
        let start = Start {
            shared: self.shared.clone(),
            id: self.id.clone(),
            uid: self.shared.app_uid(self.slot),
            commit: head.clone(),
            factory,
            serving,
            status: self.status.clone(),
            build_log: self.build_log.clone(),
            run_log: self.run_log.clone(),
            settings: self.settings(),
        };
        self.pending = Some(Pending {
            commit: head,
            task: tokio::spawn(start.run()),
        });
    }

    fn started(&mut self, mut instance: Instance) {
        let route = self.routes().add(instance.target.clone());
        let id = route.id;
        instance.route = Some(route);
        if let Some(old) = self.current.take() {
            // New visitors go to the new instance from now on; the old one drains.
            self.run_log.push(&format!(
                "commit {} serves; commit {} finishes its requests and sessions",
                instance.commit, old.commit
            ));
            self.draining.push(Draining {
                instance: old,
                since: Instant::now(),
            });
        }
        *self.last_request.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.publish(Status {
            stage: Stage::Running,
            commit: Some(instance.commit.clone()),
            target: Some(instance.target.clone()),
            error: None,
            sdk: Some(instance.sdk),
            suggested_hardware: instance.suggested_hardware.clone(),
            instance: Some(id),
        });
        tracing::info!(space = %self.id.hub_id(), commit = %instance.commit, "Space running");
        self.current = Some(instance);
    }

    fn failed(&mut self, failure: Failure) {
        tracing::warn!(space = %self.id.hub_id(), stage = %failure.stage, error = %failure.message, "Space did not start");
        self.failed_commit = Some(failure.commit.clone());
        if let Some(current) = &self.current {
            // The old commit keeps serving; the failure is in the logs and the runtime.
            let mut status = self.status.borrow().clone();
            status.stage = Stage::Running;
            status.commit = Some(current.commit.clone());
            status.error = Some(format!(
                "commit {} did not start ({}): {}",
                failure.commit, failure.stage, failure.message
            ));
            self.publish(status);
        } else {
            self.publish(Status {
                stage: failure.stage,
                commit: Some(failure.commit),
                error: Some(failure.message),
                ..Status::new(failure.stage)
            });
        }
    }

    /// Stops the draining instances that are done: nothing in flight and their sessions
    /// quiet for the drain idle time, or the drain window over, or the app gone.
    fn check_drains(&mut self) {
        let (idle, max) = (self.shared.config.drain_idle, self.shared.config.drain_max);
        let mut keep = Vec::with_capacity(self.draining.len());
        for mut d in std::mem::take(&mut self.draining) {
            let exited = d
                .instance
                .child
                .as_mut()
                .is_some_and(|c| !matches!(c.try_wait(), Ok(None)));
            let quiet = d
                .instance
                .route
                .as_ref()
                .is_none_or(|r| r.active() == 0 && r.idle() >= idle);
            if exited || quiet || d.since.elapsed() >= max {
                tracing::info!(space = %self.id.hub_id(), commit = %d.instance.commit, exited, quiet, "drained instance stops");
                d.instance.kill();
                if let Some(id) = d.instance.route_id() {
                    self.routes().remove(id);
                }
            } else {
                keep.push(d);
            }
        }
        self.draining = keep;
    }

    fn check_idle(&mut self) {
        let Some(current) = &self.current else {
            return;
        };
        // A long stream or websocket is use, not idleness.
        if current.route.as_ref().is_some_and(|r| r.active() > 0) {
            self.touch();
            return;
        }
        let sleep = match self.settings().sleep_time {
            Some(s) if s < 0 => return,
            Some(s) => Duration::from_secs(s as u64),
            None => match self.shared.config.default_sleep {
                Some(d) => d,
                None => return,
            },
        };
        let idle = self
            .last_request
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed();
        if idle >= sleep && self.pending.is_none() {
            tracing::info!(space = %self.id.hub_id(), ?idle, "Space idle; going to sleep");
            self.run_log
                .push(&format!("no requests for {}s; sleeping", idle.as_secs()));
            let commit = self.current.as_ref().map(|c| c.commit.clone());
            self.stop_all();
            self.publish(Status {
                commit,
                ..Status::new(Stage::Sleeping)
            });
        }
    }

    fn touch(&self) {
        *self.last_request.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    fn stop_all(&mut self) {
        if let Some(p) = self.pending.take() {
            p.task.abort();
        }
        if let Some(mut current) = self.current.take() {
            current.kill();
        }
        for mut d in self.draining.drain(..) {
            d.instance.kill();
        }
        self.routes().clear();
    }
}

/// One start of one commit.
struct Start {
    shared: Arc<Shared>,
    id: RepoId,
    uid: Option<u32>,
    commit: String,
    factory: bool,
    serving: bool,
    status: Arc<watch::Sender<Status>>,
    build_log: Arc<Log>,
    run_log: Arc<Log>,
    settings: Settings,
}

impl Start {
    async fn run(self) -> Result<Instance, Failure> {
        let fail = |stage: Stage, message: String| Failure {
            stage,
            commit: self.commit.clone(),
            message,
        };
        self.build_log.clear();
        self.build_log.push(&format!(
            "===== {} at commit {} =====",
            self.id.hub_id(),
            self.commit
        ));
        let config = self
            .read_config()
            .await
            .map_err(|e| fail(Stage::ConfigError, e.to_string()))?;
        let (repos, id, commit) = (
            self.shared.repos.clone(),
            self.id.clone(),
            self.commit.clone(),
        );
        let app_file = config.app_file.clone();
        let has_app = tokio::task::spawn_blocking(move || {
            repos
                .entries_at(&id, &commit, std::slice::from_ref(&app_file))
                .map(|e| e.iter().any(|e| e.kind == EntryKind::File))
        })
        .await
        .map_err(|e| fail(Stage::ConfigError, e.to_string()))?
        .map_err(|e| fail(Stage::ConfigError, e.to_string()))?;
        if !has_app {
            return Err(fail(
                Stage::NoAppFile,
                format!("{} is not in the repository", config.app_file),
            ));
        }
        match config.sdk {
            Sdk::Static => {
                self.build_log
                    .push("static Space: files are served as they are");
                return Ok(Instance {
                    commit: self.commit.clone(),
                    target: Target::Static {
                        commit: self.commit.clone(),
                        index: config.app_file.clone(),
                    },
                    child: None,
                    sdk: config.sdk,
                    suggested_hardware: config.suggested_hardware,
                    route: None,
                });
            }
            Sdk::Docker => {
                return Err(fail(
                    Stage::ConfigError,
                    "the docker SDK needs a container runtime, and this node runs none for Spaces"
                        .into(),
                ));
            }
            Sdk::Gradio | Sdk::Streamlit => {}
        }
        let app_dir = self
            .checkout()
            .await
            .map_err(|e| fail(Stage::BuildError, format!("check out the repository: {e}")))?;
        let envs = &self.shared.envs;
        if let Some(wanted) = &config.python_version
            && !version_matches(wanted, &envs.python().version)
        {
            self.build_log.push(&format!(
                "python_version {wanted} requested; this node builds with Python {}",
                envs.python().version
            ));
        }
        let requirements = std::fs::read(app_dir.join("requirements.txt")).unwrap_or_default();
        let spec = EnvSpec {
            sdk: config.sdk,
            sdk_version: config.sdk_version.clone(),
            python: envs.python().version.clone(),
            requirements,
        };
        if self.factory {
            self.build_log
                .push("factory rebuild: the cached environment is removed");
            if let Err(e) = envs.remove(&spec).await {
                self.build_log.push(&format!("could not remove it: {e}"));
            }
        }
        let env = envs
            .ensure(&spec, &app_dir, &self.build_log)
            .await
            .map_err(|e| fail(Stage::BuildError, e.to_string()))?;
        self.status
            .send_modify(|s| s.stage = Stage::starting(self.serving));
        let port =
            free_port().map_err(|e| fail(Stage::RuntimeError, format!("no free port: {e}")))?;
        let mut child = self
            .spawn_app(&config, &env, &app_dir, port)
            .map_err(|e| fail(Stage::RuntimeError, format!("start the app: {e}")))?;
        self.run_log.push(&format!(
            "===== starting {} ({} on port {port}) =====",
            config.app_file,
            config.sdk.as_str()
        ));
        if let Some(out) = child.stdout.take() {
            let log = self.run_log.clone();
            tokio::spawn(async move { pump(out, &log).await });
        }
        if let Some(err) = child.stderr.take() {
            let log = self.run_log.clone();
            tokio::spawn(async move { pump(err, &log).await });
        }
        let deadline = Instant::now() + self.shared.config.start_timeout;
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(fail(
                    Stage::RuntimeError,
                    format!("the app exited before it listened ({status}); see the run log"),
                ));
            }
            if Instant::now() >= deadline {
                let _ = child.start_kill();
                return Err(fail(
                    Stage::RuntimeError,
                    format!(
                        "the app did not listen on its port within {:?}",
                        self.shared.config.start_timeout
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Instance {
            commit: self.commit.clone(),
            target: Target::App {
                port,
                keep_prefix: config.sdk == Sdk::Streamlit,
            },
            child: Some(child),
            sdk: config.sdk,
            suggested_hardware: config.suggested_hardware,
            route: None,
        })
    }

    async fn read_config(&self) -> Result<SpaceConfig, ConfigError> {
        let (repos, id, commit) = (
            self.shared.repos.clone(),
            self.id.clone(),
            self.commit.clone(),
        );
        let readme =
            tokio::task::spawn_blocking(move || repos.file_head(&id, &commit, "README.md"))
                .await
                .map_err(|_| ConfigError::NoReadme)?;
        match readme {
            Ok((_, Some(bytes))) => SpaceConfig::from_readme(&String::from_utf8_lossy(&bytes)),
            Ok((_, None)) | Err(RepoError::EntryNotFound { .. }) | Err(_) => {
                Err(ConfigError::NoReadme)
            }
        }
    }

    /// The commit's files in `SPACES/checkouts/<ns>/<name>/<commit>` (made once; LFS files
    /// are written as their pointers).
    async fn checkout(&self) -> Result<PathBuf, String> {
        let dir = self
            .shared
            .config
            .dir
            .join("checkouts")
            .join(self.id.namespace())
            .join(self.id.name())
            .join(&self.commit);
        let (repos, id, commit, target) = (
            self.shared.repos.clone(),
            self.id.clone(),
            self.commit.clone(),
            dir.clone(),
        );
        tokio::task::spawn_blocking(move || checkout(&repos, &id, &commit, &target))
            .await
            .map_err(|e| e.to_string())??;
        Ok(dir)
    }

    fn spawn_app(
        &self,
        config: &SpaceConfig,
        env: &Path,
        app_dir: &Path,
        port: u16,
    ) -> std::io::Result<Child> {
        let root_path = format!("/spaces/{}/app", self.id.hub_id());
        let command: Vec<OsString> = match config.sdk {
            Sdk::Streamlit => vec![
                env.join("bin/streamlit").into(),
                "run".into(),
                config.app_file.clone().into(),
                "--server.address=127.0.0.1".into(),
                format!("--server.port={port}").into(),
                format!("--server.baseUrlPath={root_path}").into(),
                "--server.headless=true".into(),
                "--browser.gatherUsageStats=false".into(),
                "--server.fileWatcherType=none".into(),
            ],
            _ => vec![
                env.join("bin/python").into(),
                config.app_file.clone().into(),
            ],
        };
        let jail = Jail {
            app_dir: Some(app_dir.to_owned()),
            env_dir: Some(env.to_owned()),
            env_writable: false,
            read_only: self.shared.envs.python().read_only_dirs(),
            writable: Vec::new(),
            uid: self.uid,
            command,
        };
        let argv = self.shared.config.sandbox.argv(&jail);
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..]).env_clear();
        for (key, entry) in self
            .settings
            .variables
            .iter()
            .chain(self.settings.secrets.iter())
        {
            cmd.env(key, &entry.value);
        }
        cmd.env("PATH", format!("{}/bin:/usr/bin:/bin", env.display()))
            .env("HOME", "/tmp")
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("SYSTEM", "spaces")
            .env("SPACE_ID", self.id.hub_id())
            .env("SPACE_AUTHOR_NAME", self.id.namespace())
            .env("SPACE_REPO_NAME", self.id.name())
            .env("GRADIO_SERVER_NAME", "127.0.0.1")
            .env("GRADIO_SERVER_PORT", port.to_string())
            .env("GRADIO_ROOT_PATH", &root_path)
            .env("GRADIO_ANALYTICS_ENABLED", "False")
            .env("GRADIO_TEMP_DIR", "/tmp/gradio")
            .env("MPLCONFIGDIR", "/tmp/matplotlib")
            .env("HF_HOME", "/tmp/huggingface")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd.spawn()
    }
}

/// `python_version` `3.11` (or `3.11.4`) matches an interpreter `3.11`.
fn version_matches(wanted: &str, have: &str) -> bool {
    wanted == have || wanted.starts_with(&format!("{have}."))
}

/// A port nobody listens on now (the OS's choice).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Writes every file of `commit` under `dir` (blocking). A finished checkout has a marker
/// and is reused; an unfinished one is made again.
fn checkout(repos: &hub_repo::Repos, id: &RepoId, commit: &str, dir: &Path) -> Result<(), String> {
    const DONE: &str = ".hubmesh-checkout";
    if dir.join(DONE).exists() {
        return Ok(());
    }
    let io = |what: &str, e: std::io::Error| format!("{what} {}: {e}", dir.display());
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| io("clear", e))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| io("create", e))?;
    let entries = repos
        .list_tree(id, commit, "", true)
        .map_err(|e| e.to_string())?;
    for entry in entries {
        // Paths come from a checked tree; `validate_repo_path` refuses `..` and absolute paths.
        if hub_protocol::repo::validate_repo_path(&entry.path).is_err() {
            continue;
        }
        let path = dir.join(&entry.path);
        match entry.kind {
            EntryKind::Directory => {
                std::fs::create_dir_all(&path).map_err(|e| io("create", e))?;
            }
            EntryKind::File => {
                let (_, bytes) = repos
                    .file(id, commit, &entry.path)
                    .map_err(|e| e.to_string())?;
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| io("create", e))?;
                }
                std::fs::write(&path, bytes).map_err(|e| io("write", e))?;
            }
        }
    }
    std::fs::write(dir.join(DONE), commit).map_err(|e| io("write", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_versions_match_by_prefix() {
        assert!(version_matches("3.11", "3.11"));
        assert!(version_matches("3.11.4", "3.11"));
        assert!(!version_matches("3.1", "3.11"));
        assert!(!version_matches("3.10", "3.11"));
    }
}
