//! One `hubmesh up` process in its namespace, and the HTTP calls the lab makes to it.

use super::netns::{LabNet, addr};
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// How long a node may take to write its `node.json`.
const START_TIMEOUT: Duration = Duration::from_secs(60);
pub const HTTP_PORT: u16 = 8080;
const P2P_PORT: u16 = 4001;

/// An HTTP client for the lab: no proxy from the environment, statuses as values.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .proxy(None)
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into()
}

/// A running node (killed when dropped).
#[derive(Debug)]
pub struct Node {
    pub index: usize,
    pub data: PathBuf,
    pub url: String,
    /// Its p2p address with its peer id (`/ip4/…/tcp/4001/p2p/…`), to bootstrap from.
    pub p2p: String,
    pub peer_id: String,
    child: Option<Child>,
}

impl Node {
    /// Starts `hubmesh up` in namespace `i` with `args` (and env `env`), its data in
    /// `root/node{i}`, its log in `root/node{i}.log`; waits for its `node.json`.
    pub fn start(
        net: &LabNet,
        i: usize,
        hubmesh: &Path,
        root: &Path,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let data = root.join(format!("node{i}"));
        std::fs::create_dir_all(&data).with_context(|| format!("create {}", data.display()))?;
        let info_path = data.join("node.json");
        let _ = std::fs::remove_file(&info_path);
        let log_path = root.join(format!("node{i}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("create {}", log_path.display()))?;
        let ip = addr(i);
        let mut command = net.command(i, hubmesh);
        command
            .arg("up")
            .arg("--data")
            .arg(&data)
            .arg("--http")
            .arg(format!("{ip}:{HTTP_PORT}"))
            .arg("--p2p-listen")
            .arg(format!("/ip4/{ip}/tcp/{P2P_PORT}"))
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("clone log file")?)
            .stderr(log);
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().context("start hubmesh up")?;
        let mut node = Self {
            index: i,
            data,
            url: format!("http://{ip}:{HTTP_PORT}"),
            p2p: String::new(),
            peer_id: String::new(),
            child: Some(child),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(text) = std::fs::read_to_string(&info_path)
                && let Ok(info) = serde_json::from_str::<Value>(&text)
            {
                node.peer_id = info["peer_id"].as_str().unwrap_or_default().to_owned();
                node.p2p = info["p2p"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .find(|a| a.contains(&ip.to_string()) && a.contains("/tcp/"))
                    .unwrap_or_default()
                    .to_owned();
                if node.p2p.is_empty() {
                    bail!("node {i} announced no p2p address on {ip}: {text}");
                }
                return Ok(node);
            }
            if let Some(child) = node.child.as_mut()
                && let Some(status) = child.try_wait().context("poll hubmesh up")?
            {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail = &log[log.len().saturating_sub(3000)..];
                bail!("node {i} exited with {status} before it was ready:\n{tail}");
            }
            if Instant::now() > deadline {
                bail!("node {i} wrote no node.json within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The admin token the node wrote on first start.
    pub fn admin_token(&self) -> Result<String> {
        let path = self.data.join("admin.token");
        let token =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        Ok(token.trim().to_owned())
    }

    /// SIGKILLs the node (no shutdown of any kind).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// GET a JSON document of the node's API.
    pub fn get(&self, agent: &ureq::Agent, path: &str) -> Result<(u16, Value)> {
        let url = format!("{}{path}", self.url);
        let mut response = agent
            .get(&url)
            .call()
            .with_context(|| format!("GET {url}"))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .with_context(|| format!("read GET {url}"))?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// The replication counters (`GET /api/mesh/peers` → `counters`).
    pub fn counters(&self, agent: &ureq::Agent) -> Result<Value> {
        let (status, body) = self.get(agent, "/api/mesh/peers")?;
        if status != 200 {
            bail!("node {}: /api/mesh/peers answered {status}", self.index);
        }
        Ok(body["counters"].clone())
    }

    /// One counter, 0 when absent.
    pub fn counter(&self, agent: &ureq::Agent, name: &str) -> Result<u64> {
        Ok(self.counters(agent)?[name].as_u64().unwrap_or(0))
    }

    /// The commit sha of `repo` (a model) on this node, if it serves it.
    pub fn repo_sha(&self, agent: &ureq::Agent, repo: &str) -> Result<Option<String>> {
        let (status, body) = self.get(agent, &format!("/api/models/{repo}"))?;
        if status != 200 {
            return Ok(None);
        }
        Ok(body["sha"].as_str().map(str::to_owned))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}
