//! Test harness: start real `hubmesh up` processes and talk to them.
//!
//! [`Node::start`] runs the binary on free loopback ports in a temporary data directory, waits
//! for `node.json`, and hands back a [`Node`]. Dropping a `Node` kills the process and waits
//! for it, so a failing test leaves nothing running. The binary is `$HUBMESH_BIN`, or the
//! `hubmesh` next to the test executable's directory (`target/debug/hubmesh`); `scripts/test`
//! builds it first.
//!
//! The pytest suite has the same harness in `tests/py/conftest.py`.

use anyhow::{Context, bail};
use hub_protocol::node_info::{NODE_INFO_FILE, NodeInfo};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a node may take to write `node.json`.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The `hubmesh` binary under test.
pub fn hubmesh_bin() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("HUBMESH_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let exe = std::env::current_exe().context("locate the test executable")?;
    // target/<profile>/deps/e2e-… → target/<profile>/hubmesh
    let candidate = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("hubmesh"))
        .context("test executable has no grandparent directory")?;
    if candidate.is_file() {
        Ok(candidate)
    } else {
        bail!(
            "no hubmesh binary at {}: run `cargo build --bin hubmesh` first or set HUBMESH_BIN",
            candidate.display()
        )
    }
}

/// A `hubmesh` command with the given arguments, stdin closed.
pub fn hubmesh(args: &[&str]) -> anyhow::Result<Command> {
    let mut cmd = Command::new(hubmesh_bin()?);
    cmd.args(args).stdin(Stdio::null());
    Ok(cmd)
}

/// Options for starting a node.
#[derive(Debug, Default)]
pub struct NodeOptions {
    /// Use this data directory instead of a fresh temporary one (to restart a node).
    pub data: Option<PathBuf>,
    /// Extra arguments after the defaults.
    pub args: Vec<String>,
}

/// A running `hubmesh up` process.
#[derive(Debug)]
pub struct Node {
    child: Option<Child>,
    data: PathBuf,
    log: PathBuf,
    /// Keeps a temporary data directory alive as long as the node.
    _tmp: Option<tempfile::TempDir>,
    pub info: NodeInfo,
}

impl Node {
    /// Starts a node on free loopback ports in a fresh temporary data directory.
    pub fn start() -> anyhow::Result<Self> {
        Self::start_with(NodeOptions::default())
    }

    pub fn start_with(opts: NodeOptions) -> anyhow::Result<Self> {
        let (tmp, data) = match opts.data {
            Some(d) => (None, d),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("hubmesh-node-")
                    .tempdir()
                    .context("create a temporary data directory")?;
                let d = t.path().to_owned();
                (Some(t), d)
            }
        };
        let log = data.with_extension("log");
        let log_file =
            fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let info_path = data.join(NODE_INFO_FILE);
        // A node.json left by a killed node must not be mistaken for this one's.
        fs::remove_file(&info_path).ok();
        let data_arg = data.to_string_lossy().into_owned();
        let mut args = vec![
            "up",
            "--data",
            &data_arg,
            "--http",
            "127.0.0.1:0",
            "--p2p-listen",
            "/ip4/127.0.0.1/tcp/0",
        ];
        args.extend(opts.args.iter().map(String::as_str));
        let child = hubmesh(&args)?
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .spawn()
            .context("spawn hubmesh up")?;
        let mut node = Node {
            child: Some(child),
            data,
            log,
            _tmp: tmp,
            info: NodeInfo {
                http: String::new(),
                peer_id: String::new(),
                p2p: Vec::new(),
                version: String::new(),
            },
        };
        node.info = node.wait_ready(&info_path)?;
        Ok(node)
    }

    fn wait_ready(&mut self, info_path: &Path) -> anyhow::Result<NodeInfo> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(bytes) = fs::read(info_path) {
                return serde_json::from_slice(&bytes)
                    .with_context(|| format!("parse {}", info_path.display()));
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "hubmesh up exited with {status} before it was ready:\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "hubmesh up wrote no node.json within {START_TIMEOUT:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// `http://IP:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.info.http)
    }

    /// The admin token the node wrote on first start.
    pub fn admin_token(&self) -> anyhow::Result<String> {
        let path = self.data.join("admin.token");
        Ok(fs::read_to_string(&path)
            .with_context(|| format!("read {}", path.display()))?
            .trim()
            .to_owned())
    }

    /// Everything the node printed so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM and waits for the exit, failing past [`STOP_TIMEOUT`].
    pub fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("node already stopped");
        };
        let pid = rustix::process::Pid::from_raw(i32::try_from(child.id())?)
            .context("child has no valid pid")?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .context("send SIGTERM")?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                child.kill().ok();
                child.wait().ok();
                bail!(
                    "node did not exit within {STOP_TIMEOUT:?} of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

/// An HTTP client that returns 4xx/5xx responses instead of errors.
pub fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// Polls `check` until it returns `Some`, failing after `timeout` with `what`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}
