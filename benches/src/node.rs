//! Running `hubmesh up` nodes and measuring what they serve, for the benchmarks that start
//! real nodes (`p2p`, `serve`).

use crate::Noise;
use anyhow::{Context, Result, bail};
use serde_json::Value;
use sha2::Digest;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MIB: f64 = 1024.0 * 1024.0;

/// Writes a safetensors file of one U8 tensor of `body` random bytes; returns its size and
/// SHA-256 (hex).
pub fn write_safetensors(path: &Path, body: u64) -> Result<(u64, String)> {
    let mut header = serde_json::json!({
        "weight": {"dtype": "U8", "shape": [body], "data_offsets": [0, body]}
    })
    .to_string()
    .into_bytes();
    header.resize(header.len().div_ceil(8) * 8, b' ');
    let mut out = BufWriter::new(File::create(path)?);
    let mut hash = sha2::Sha256::new();
    let len = (header.len() as u64).to_le_bytes();
    for part in [&len[..], &header[..]] {
        out.write_all(part)?;
        hash.update(part);
    }
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = body;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        noise.fill(&mut buf[..n]);
        out.write_all(&buf[..n])?;
        hash.update(&buf[..n]);
        left -= n as u64;
    }
    out.into_inner()?.sync_all()?;
    let size = 8 + header.len() as u64 + body;
    Ok((size, hex(&hash.finalize())))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A running `hubmesh up`.
#[derive(Debug)]
pub struct Node {
    pub name: &'static str,
    pub data: PathBuf,
    pub child: Child,
    pub http: String,
    pub p2p: String,
    pub peer_id: String,
}

impl Node {
    pub fn start(bin: &Path, data: PathBuf, name: &'static str, extra: &[&str]) -> Result<Node> {
        std::fs::create_dir_all(&data)?;
        let info_path = data.join("node.json");
        let _ = std::fs::remove_file(&info_path);
        let log = File::create(data.with_extension("log"))?;
        let child = Command::new(bin)
            .args(["up", "--data"])
            .arg(&data)
            .args([
                "--http",
                "127.0.0.1:0",
                "--p2p-listen",
                "/ip4/127.0.0.1/tcp/0",
            ])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let mut node = Node {
            name,
            data,
            child,
            http: String::new(),
            p2p: String::new(),
            peer_id: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(text) = std::fs::read_to_string(&info_path)
                && let Ok(info) = serde_json::from_str::<Value>(&text)
            {
                node.http = info["http"].as_str().unwrap_or_default().to_string();
                node.p2p = info["p2p"][0].as_str().unwrap_or_default().to_string();
                node.peer_id = info["peer_id"].as_str().unwrap_or_default().to_string();
                return Ok(node);
            }
            if let Some(status) = node.child.try_wait()? {
                bail!(
                    "{name} exited with {status}: see {}",
                    node.log_path().display()
                );
            }
            if Instant::now() > deadline {
                bail!("{name}: no node.json within 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.data.with_extension("log")
    }

    pub fn get(&self, path: &str) -> Result<(u16, Value)> {
        let (status, body) = http_get(&self.http, path)?;
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }

    pub fn peers(&self) -> Result<Value> {
        let (status, body) = self.get("/api/mesh/peers")?;
        if status != 200 {
            bail!("{}: /api/mesh/peers answered {status}", self.name);
        }
        Ok(body)
    }

    /// User + system CPU seconds of the process so far.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.child.id())
    }

    /// SIGTERM, then wait (SIGKILL after 30 s).
    pub fn stop(mut self) -> Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                self.child.kill()?;
                self.child.wait()?;
                bail!("{} ignored SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12] // utime, stime: fields 14 and 15
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}

/// A small HTTP/1.1 GET (JSON answers): status and body.
pub fn http_get(addr: &str, path: &str) -> Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of HTTP headers")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status")?;
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body)?;
    }
    Ok((status, body))
}

pub fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("bad chunked body")?;
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&data[..line])
                .split(';')
                .next()
                .unwrap_or("")
                .trim(),
            16,
        )?;
        data = &data[line + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(data.get(..size).context("short chunk")?);
        data = &data[size + 2..];
    }
}

/// `curl -o /dev/null` of `url`: (bytes, seconds) as curl reports them.
pub fn curl_to_null(url: &str) -> Result<(u64, f64)> {
    let out = Command::new("curl")
        .args([
            "-sf",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download} %{time_total}",
            url,
        ])
        .output()
        .context("run curl")?;
    if !out.status.success() {
        bail!(
            "curl {url} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout)?;
    let mut it = text.split_whitespace();
    let bytes = it.next().context("curl output")?.parse::<f64>()? as u64;
    let secs = it.next().context("curl output")?.parse::<f64>()?;
    Ok((bytes, secs))
}

/// `curl -o path` of `url`, then fsync of the file: (bytes, seconds) wall-clock.
pub fn curl_to_file(url: &str, path: &Path) -> Result<(u64, f64)> {
    let t = Instant::now();
    let status = Command::new("curl")
        .args(["-sf", "-o"])
        .arg(path)
        .arg(url)
        .status()
        .context("run curl")?;
    if !status.success() {
        bail!("curl {url} failed");
    }
    let file = File::open(path)?;
    file.sync_all()?;
    let secs = t.elapsed().as_secs_f64();
    let bytes = file.metadata()?.len();
    drop(file);
    std::fs::remove_file(path)?;
    Ok((bytes, secs))
}

pub fn machine() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = info
        .lines()
        .find(|l| l.starts_with("model name"))
        .map_or("unknown CPU", |l| l.split(':').nth(1).unwrap_or("").trim())
        .to_string();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let kib: f64 = m.lines().next()?.split_whitespace().nth(1)?.parse().ok()?;
            Some(format!("{:.0} GiB", kib / MIB))
        })
        .unwrap_or_else(|| "? GiB".into());
    format!("{cpu}, {cores} cores, {mem} RAM")
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Creates `repo` on `node` (whose admin token is in its data directory) and uploads `file` as
/// `path_in_repo` with `huggingface_hub`'s `upload_file`, through `python`; returns the
/// seconds it took and the commit.
pub fn upload(
    python: &Path,
    node: &Node,
    hf_home: &Path,
    repo: &str,
    file: &Path,
    path_in_repo: &str,
) -> Result<(f64, String)> {
    let token = std::fs::read_to_string(node.data.join("admin.token"))?
        .trim()
        .to_string();
    let t = Instant::now();
    let script = r#"
import sys
from huggingface_hub import HfApi
api = HfApi(endpoint=sys.argv[1], token=sys.argv[2])
api.create_repo(sys.argv[3])
api.upload_file(path_or_fileobj=sys.argv[4], path_in_repo=sys.argv[5], repo_id=sys.argv[3])
print(api.model_info(sys.argv[3]).sha)
"#;
    let out = Command::new(python)
        .args(["-c", script, &format!("http://{}", node.http), &token, repo])
        .arg(file)
        .arg(path_in_repo)
        .env("HF_HOME", hf_home)
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("run {}", python.display()))?;
    if !out.status.success() {
        bail!("upload failed");
    }
    Ok((
        t.elapsed().as_secs_f64(),
        String::from_utf8(out.stdout)?.trim().to_string(),
    ))
}

/// SHA-256 (hex) of what `url` serves, streamed through curl.
pub fn sha256_url(url: &str) -> Result<String> {
    let mut child = Command::new("curl")
        .args(["-sf", url])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut stdout = child.stdout.take().context("curl stdout")?;
    let mut hash = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = stdout.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    if !child.wait()?.success() {
        bail!("curl {url} failed");
    }
    Ok(hex(&hash.finalize()))
}
