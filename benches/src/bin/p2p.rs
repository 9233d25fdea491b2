//! Peer-to-peer replication benchmark: real `hubmesh up` processes on loopback, a generated
//! safetensors model repo, replicated by seeders, against `curl` of the same file from the
//! hosting node's HTTP gateway measured in the same run.
//!
//! ```text
//! cargo build --release -p hub-node --bin hubmesh
//! cargo run --release -p hub-benches --bin p2p -- [--size-mib 1024] [--reps 1]
//!     [--bin PATH] [--python .venv/bin/python] [--data DIR] [--out FILE]
//! ```
//!
//! Cases: (a) `curl -o /dev/null` of `/{ns}/{name}/resolve/main/{file}` from A's gateway;
//! (b) seeder B started with `--bootstrap A --seed 'alice/*'`, timed from its spawn until its
//! `lfs_objects_fetched` counter says the object is stored (imported, SHA-256 checked,
//! fsynced); (c) with A and B both holding it, a fresh seeder C bootstrapping from both vs.
//! a fresh seeder bootstrapping from A alone (B stopped). Generated data and node data
//! directories go to `--data` (default `benches/data/p2p`, gitignored) and are deleted at the
//! end; results go to `--out` (default `benches/results/p2p.md`).

use anyhow::{Context, Result, bail};
use hub_benches::Noise;
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
const REPO: &str = "alice/big";
const FILE: &str = "model.safetensors";
/// How long one replication may take before the run is abandoned.
const REPLICATION_DEADLINE: Duration = Duration::from_secs(1800);
const POLL: Duration = Duration::from_millis(50);

struct Args {
    size_mib: u64,
    reps: usize,
    bin: PathBuf,
    python: PathBuf,
    data: PathBuf,
    out: PathBuf,
}

fn args() -> Result<Args> {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| "target".into(), PathBuf::from);
    let mut a = Args {
        size_mib: 1024,
        reps: 1,
        bin: target.join("release/hubmesh"),
        python: PathBuf::from(".venv/bin/python"),
        data: PathBuf::from("benches/data/p2p"),
        out: PathBuf::from("benches/results/p2p.md"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--size-mib" => a.size_mib = value.parse().context("parse --size-mib")?,
            "--reps" => a.reps = value.parse().context("parse --reps")?,
            "--bin" => a.bin = value.into(),
            "--python" => a.python = value.into(),
            "--data" => a.data = value.into(),
            "--out" => a.out = value.into(),
            _ => bail!("unknown flag {flag}"),
        }
    }
    if a.reps == 0 {
        bail!("--reps must be at least 1");
    }
    Ok(a)
}

/// Writes a safetensors file of one U8 tensor of `body` random bytes; returns its size and
/// SHA-256 (hex).
fn write_safetensors(path: &Path, body: u64) -> Result<(u64, String)> {
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A running `hubmesh up`.
struct Node {
    name: &'static str,
    data: PathBuf,
    child: Child,
    http: String,
    p2p: String,
    peer_id: String,
}

impl Node {
    fn start(bin: &Path, data: PathBuf, name: &'static str, extra: &[&str]) -> Result<Node> {
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

    fn log_path(&self) -> PathBuf {
        self.data.with_extension("log")
    }

    fn get(&self, path: &str) -> Result<(u16, Value)> {
        let (status, body) = http_get(&self.http, path)?;
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }

    fn peers(&self) -> Result<Value> {
        let (status, body) = self.get("/api/mesh/peers")?;
        if status != 200 {
            bail!("{}: /api/mesh/peers answered {status}", self.name);
        }
        Ok(body)
    }

    /// User + system CPU seconds of the process so far.
    fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.child.id())
    }

    /// SIGTERM, then wait (SIGKILL after 30 s).
    fn stop(mut self) -> Result<()> {
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

fn cpu_seconds(pid: u32) -> f64 {
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
fn http_get(addr: &str, path: &str) -> Result<(u16, Vec<u8>)> {
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

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
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
fn curl_to_null(url: &str) -> Result<(u64, f64)> {
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
fn curl_to_file(url: &str, path: &Path) -> Result<(u64, f64)> {
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

/// SHA-256 (hex) of what `url` serves, streamed through curl.
fn sha256_url(url: &str) -> Result<String> {
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

/// One replication onto a fresh seeder, timed from its spawn.
struct Replication {
    label: String,
    /// Spawn → node.json written.
    startup: f64,
    /// Spawn → the repo's commit served by the seeder (git pack applied).
    git: f64,
    /// Spawn → first chunk bytes counted.
    first_byte: f64,
    /// Spawn → the LFS object stored (fetched, imported, SHA-256 checked).
    done: f64,
    /// Chunk bytes received, by source name.
    by_peer: Vec<(&'static str, u64)>,
    total_received: u64,
    /// CPU seconds during the replication, by process name.
    cpu: Vec<(&'static str, f64)>,
}

impl Replication {
    /// Throughput over the whole replication, spawn to stored.
    fn mib_s(&self, size: u64) -> f64 {
        size as f64 / MIB / self.done
    }
    /// Throughput of the LFS phase only, first chunk to stored.
    fn lfs_mib_s(&self, size: u64) -> f64 {
        size as f64 / MIB / (self.done - self.first_byte)
    }
}

/// Starts a seeder bootstrapping from `sources` and waits until it has stored the object.
fn replicate(
    a: &Args,
    name: &'static str,
    label: &str,
    sources: &[&Node],
    sha: &str,
    size: u64,
    flags: &[&'static str],
) -> Result<(Node, Replication)> {
    let mut extra: Vec<&str> = flags.to_vec();
    for s in sources {
        extra.extend(["--bootstrap", s.p2p.as_str()]);
    }
    extra.extend(["--seed", "alice/*"]);
    let cpu0: Vec<f64> = sources.iter().map(|s| s.cpu_seconds()).collect();
    let dir = a.data.join(name.to_lowercase());
    let _ = std::fs::remove_dir_all(&dir);
    let t0 = Instant::now();
    let node = Node::start(&a.bin, dir, name, &extra)?;
    let startup = t0.elapsed().as_secs_f64();
    let (mut git, mut first_byte) = (None, None);
    let done = loop {
        let now = t0.elapsed().as_secs_f64();
        if git.is_none() {
            let (status, info) = node.get(&format!("/api/models/{REPO}"))?;
            if status == 200 && info["sha"].as_str() == Some(sha) {
                git = Some(now);
            }
        }
        let peers = node.peers()?;
        let counters = &peers["counters"];
        if first_byte.is_none() && counters["chunk_bytes_received"].as_u64().unwrap_or(0) > 0 {
            first_byte = Some(now);
        }
        if counters["lfs_objects_fetched"].as_u64().unwrap_or(0) >= 1 {
            break now;
        }
        if t0.elapsed() > REPLICATION_DEADLINE {
            bail!("{name}: not replicated within {REPLICATION_DEADLINE:?}");
        }
        std::thread::sleep(POLL);
    };
    let mut cpu: Vec<(&'static str, f64)> = vec![(name, node.cpu_seconds())];
    for (s, c0) in sources.iter().zip(cpu0) {
        cpu.push((s.name, s.cpu_seconds() - c0));
    }
    let (_, repo) = node.get(&format!("/api/mesh/repos/model/{REPO}"))?;
    if repo["lfs"]["missing"].as_u64() != Some(0) || repo["lfs"]["fetched"].as_u64() < Some(1) {
        bail!("{name}: LFS state after the fetch: {repo}");
    }
    let peers = node.peers()?;
    let mut by_peer = Vec::new();
    for s in sources {
        let got = peers["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["peer_id"].as_str() == Some(s.peer_id.as_str()))
            .and_then(|p| p["chunk_bytes_received"].as_u64())
            .unwrap_or(0);
        by_peer.push((s.name, got));
    }
    let total_received = peers["counters"]["chunk_bytes_received"]
        .as_u64()
        .unwrap_or(0);
    if peers["counters"]["chunks_rejected"].as_u64() != Some(0) {
        bail!("{name}: chunks were rejected: {peers}");
    }
    let rep = Replication {
        label: label.to_string(),
        startup,
        git: git.unwrap_or(done),
        first_byte: first_byte.unwrap_or(done),
        done,
        by_peer,
        total_received,
        cpu,
    };
    eprintln!(
        "{label}: {:.2} s spawn→stored ({:.1} MiB/s), LFS phase {:.2} s ({:.1} MiB/s), from {:?}",
        rep.done,
        rep.mib_s(size),
        rep.done - rep.first_byte,
        rep.lfs_mib_s(size),
        rep.by_peer
    );
    Ok((node, rep))
}

fn machine() -> String {
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let a = args()?;
    if !a.bin.is_file() {
        bail!(
            "no hubmesh binary at {}: run `cargo build --release -p hub-node --bin hubmesh` or pass --bin",
            a.bin.display()
        );
    }
    let _ = std::fs::remove_dir_all(&a.data);
    std::fs::create_dir_all(&a.data)?;
    let result = run(&a);
    let _ = std::fs::remove_dir_all(&a.data);
    let md = result?;
    hub_benches::write_results(&a.out, &md).with_context(|| format!("write {}", a.out.display()))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn run(a: &Args) -> Result<String> {
    let load_start = loadavg();
    let file = a.data.join(FILE);
    let body = a.size_mib * 1024 * 1024 - 128;
    eprintln!("generating {} MiB …", a.size_mib);
    let (size, sha256) = write_safetensors(&file, body)?;

    let node_a = Node::start(&a.bin, a.data.join("a"), "A", &["--admin", "alice"])?;
    let token = std::fs::read_to_string(node_a.data.join("admin.token"))?
        .trim()
        .to_string();
    eprintln!("uploading through huggingface_hub …");
    let t = Instant::now();
    let script = r#"
import sys
from huggingface_hub import HfApi
api = HfApi(endpoint=sys.argv[1], token=sys.argv[2])
api.create_repo(sys.argv[3])
api.upload_file(path_or_fileobj=sys.argv[4], path_in_repo=sys.argv[5], repo_id=sys.argv[3])
print(api.model_info(sys.argv[3]).sha)
"#;
    let out = Command::new(&a.python)
        .args([
            "-c",
            script,
            &format!("http://{}", node_a.http),
            &token,
            REPO,
        ])
        .arg(&file)
        .arg(FILE)
        .env("HF_HOME", a.data.join("hf-home"))
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("run {}", a.python.display()))?;
    if !out.status.success() {
        bail!("upload failed");
    }
    let upload_s = t.elapsed().as_secs_f64();
    let commit = String::from_utf8(out.stdout)?.trim().to_string();
    std::fs::remove_file(&file)?;
    eprintln!("uploaded in {upload_s:.1} s, commit {commit}");

    // (a) HTTP baseline: curl of the file from A's gateway.
    let url = |n: &Node| format!("http://{}/{REPO}/resolve/main/{FILE}", n.http);
    let mut http = Vec::new();
    for i in 0..a.reps.max(2) {
        let cpu0 = node_a.cpu_seconds();
        let (bytes, secs) = curl_to_null(&url(&node_a))?;
        if bytes != size {
            bail!("curl got {bytes} bytes, not {size}");
        }
        let cpu = node_a.cpu_seconds() - cpu0;
        eprintln!(
            "curl #{i}: {secs:.2} s, {:.1} MiB/s",
            size as f64 / MIB / secs
        );
        http.push((secs, cpu));
    }
    let http_best = http.iter().map(|h| h.0).fold(f64::INFINITY, f64::min);
    let mut to_disk = Vec::new();
    for i in 0..a.reps.max(2) {
        let (bytes, secs) = curl_to_file(&url(&node_a), &a.data.join("curl.out"))?;
        if bytes != size {
            bail!("curl got {bytes} bytes, not {size}");
        }
        eprintln!(
            "curl to disk #{i}: {secs:.2} s, {:.1} MiB/s",
            size as f64 / MIB / secs
        );
        to_disk.push(secs);
    }
    let http_mib_s = size as f64 / MIB / http_best;

    // (b) One seeder B from A.
    let (node_b, rep_b) = replicate(a, "B", "B from A", &[&node_a], &commit, size, &[])?;
    let sha_b = sha256_url(&url(&node_b))?;
    if sha_b != sha256 {
        bail!("B serves {sha_b}, not {sha256}");
    }

    // `a.reps` fresh seeders in a row, each stopped before the next; the first one's gateway
    // must serve the uploaded bytes when `check` is set.
    let series = |name: &'static str,
                  label: &str,
                  sources: &[&Node],
                  flags: &[&'static str],
                  check: bool|
     -> Result<Vec<Replication>> {
        let mut reps = Vec::new();
        for i in 0..a.reps {
            let label = format!("{label} (#{})", i + 1);
            let (node, rep) = replicate(a, name, &label, sources, &commit, size, flags)?;
            if check && i == 0 && sha256_url(&url(&node))? != sha256 {
                bail!("{name} serves other bytes");
            }
            node.stop()?;
            reps.push(rep);
        }
        Ok(reps)
    };
    // (c) Fresh seeders from A and B at once, then (B stopped) from A alone.
    let two = series("C", "C from A + B", &[&node_a, &node_b], &[], true)?;
    node_b.stop()?;
    let one = series("D", "D from A alone", &[&node_a], &[], false)?;
    // (d) The other data plane: E from A alone with `--no-blobs` (chunks over libp2p
    // request-response), after the D runs.
    let libp2p = series(
        "E",
        "E from A alone, --no-blobs",
        &[&node_a],
        &["--no-blobs"],
        false,
    )?;
    node_a.stop()?;

    let load_end = loadavg();

    // Report.
    let one_all: Vec<&Replication> = std::iter::once(&rep_b).chain(one.iter()).collect();
    let one_med = median(one_all.iter().map(|r| r.mib_s(size)).collect());
    let one_lfs_med = median(one_all.iter().map(|r| r.lfs_mib_s(size)).collect());
    let two_med = median(two.iter().map(|r| r.mib_s(size)).collect());
    let two_lfs_med = median(two.iter().map(|r| r.lfs_mib_s(size)).collect());
    let rb = rep_b.mib_s(size) / http_mib_s;

    let mut md = String::new();
    writeln!(md, "# Peer-to-peer replication benchmark\n")?;
    writeln!(
        md,
        "Generated by `cargo run --release -p hub-benches --bin p2p -- --size-mib {} --reps {}` \
         (source: `benches/src/bin/p2p.rs`), against the release `hubmesh` binary. All numbers \
         come from one run on one machine, every node a separate `hubmesh up` process on \
         127.0.0.1 with its own data directory on the same disk; the HTTP baseline is measured \
         in the same run.\n",
        a.size_mib, a.reps
    )?;
    writeln!(
        md,
        "Machine: {}. Load average (1, 5, 15 min) at the start: {load_start}; at the end: \
         {load_end} (other work on the machine, if any, shares its cores with the nodes).\n",
        machine()
    )?;
    writeln!(
        md,
        "Repo `{REPO}`: one `{FILE}` of {:.0} MiB ({size} bytes, one U8 tensor of pseudo-random, \
         incompressible bytes), uploaded to A with `huggingface_hub` `upload_file` in {upload_s:.1} s. \
         Node logs at `RUST_LOG=info`.\n",
        size as f64 / MIB
    )?;
    writeln!(md, "## How it is measured\n")?;
    writeln!(
        md,
        "- **HTTP baseline**: `curl -s -o /dev/null` of `/{REPO}/resolve/main/{FILE}` from A's \
         gateway, curl's `time_total`; best of {} runs. The file is in A's chunk store (and \
         the page cache), read verified.\n\
         - **Replication**: the clock starts when the seeder process is spawned \
         (`hubmesh up --bootstrap <source> … --seed 'alice/*'`, fresh data directory) and stops \
         when its `/api/mesh/peers` counter `lfs_objects_fetched` reaches 1, polled every \
         {} ms: the object was fetched over the blob endpoint (iroh) unless the row says \
         `--no-blobs`, every chunk checked against its BLAKE3 id, imported into the store, SHA-256 checked and fsynced. It includes node \
         start-up, connecting, gossip catch-up and the git pack. *LFS phase* is from the first \
         chunk bytes counted (the counter moves when a whole batch of up to 4 MiB has arrived, so \
         this start is one batch late) to stored. After the fetch the seeder's `/api/mesh/repos` shows \
         `missing = 0`, and B's and the first C's gateway serve the file with the uploaded \
         SHA-256 (checked).\n\
         - **Two sources vs. one**: C bootstraps from A and B (both hold the object); D, \
         started after B is stopped, from A alone. \"From one\" medians include B's run.\n\
         - CPU: user + system seconds of each process during the replication \
         (`/proc/PID/stat`), out of {} cores' worth of wall time.\n",
        http.len(),
        POLL.as_millis(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )?;

    writeln!(md, "## Results\n")?;
    writeln!(
        md,
        "| case | seconds | MiB/s | × HTTP |\n|---|---:|---:|---:|"
    )?;
    for (i, (secs, _)) in http.iter().enumerate() {
        writeln!(
            md,
            "| HTTP: curl from A's gateway (#{}) | {secs:.2} | {:.0} | {:.2}× |",
            i + 1,
            size as f64 / MIB / secs,
            http_best / secs
        )?;
    }
    for (i, secs) in to_disk.iter().enumerate() {
        writeln!(
            md,
            "| HTTP to disk: curl -o FILE on the same disk + fsync (#{}) | {secs:.2} | {:.0} | {:.2}× |",
            i + 1,
            size as f64 / MIB / secs,
            http_best / secs
        )?;
    }
    for r in std::iter::once(&rep_b)
        .chain(one.iter())
        .chain(two.iter())
        .chain(libp2p.iter())
    {
        writeln!(
            md,
            "| p2p: {}, spawn → stored | {:.2} | {:.0} | {:.2}× |",
            r.label,
            r.done,
            r.mib_s(size),
            r.mib_s(size) / http_mib_s
        )?;
        writeln!(
            md,
            "| p2p: {}, LFS phase only | {:.2} | {:.0} | {:.2}× |",
            r.label,
            r.done - r.first_byte,
            r.lfs_mib_s(size),
            r.lfs_mib_s(size) / http_mib_s
        )?;
    }
    writeln!(md)?;
    writeln!(md, "## Goals\n")?;
    writeln!(md, "| goal | measured | met |\n|---|---:|---|")?;
    writeln!(
        md,
        "| one peer ≥ 0.8× HTTP (B from A, spawn → stored ÷ curl) | {rb:.2}× | {} |",
        if rb >= 0.8 { "yes" } else { "**no**" }
    )?;
    writeln!(
        md,
        "| (same, LFS phase only) | {:.2}× | {} |",
        rep_b.lfs_mib_s(size) / http_mib_s,
        if rep_b.lfs_mib_s(size) / http_mib_s >= 0.8 {
            "yes"
        } else {
            "**no**"
        }
    )?;
    writeln!(
        md,
        "| two peers ÷ one peer (median, spawn → stored) | {:.2}× | report only |",
        two_med / one_med
    )?;
    writeln!(
        md,
        "| two peers ÷ one peer (median, LFS phase only) | {:.2}× | report only |\n",
        two_lfs_med / one_lfs_med
    )?;

    writeln!(md, "## Phases, bytes per source and CPU\n")?;
    writeln!(
        md,
        "Seconds from the seeder's spawn. Bytes are the seeder's per-peer `chunk_bytes_received`.\n"
    )?;
    writeln!(
        md,
        "| run | node.json | commit served | first chunk | stored | chunk bytes by source | total ÷ file | CPU s by process |\n\
         |---|---:|---:|---:|---:|---|---:|---|"
    )?;
    for r in std::iter::once(&rep_b)
        .chain(two.iter())
        .chain(one.iter())
        .chain(libp2p.iter())
    {
        let by = r
            .by_peer
            .iter()
            .map(|(n, b)| format!("{n}: {:.1} MiB", *b as f64 / MIB))
            .collect::<Vec<_>>()
            .join(", ");
        let cpu = r
            .cpu
            .iter()
            .map(|(n, c)| format!("{n}: {c:.1}"))
            .collect::<Vec<_>>()
            .join(", ");
        writeln!(
            md,
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {by} | {:.3} | {cpu} |",
            r.label,
            r.startup,
            r.git,
            r.first_byte,
            r.done,
            r.total_received as f64 / size as f64
        )?;
    }
    let http_cpu = http.iter().map(|h| h.1).fold(f64::INFINITY, f64::min);
    writeln!(
        md,
        "\nHTTP baseline: A used {http_cpu:.1} CPU s per download (best run) for {:.2} s of wall time.\n",
        http_best
    )?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let gib = size as f64 / (1024.0 * MIB);
    writeln!(md, "## Where the time goes (one source)\n")?;
    writeln!(
        md,
        "A fetch moves the object in batches of at most {} MiB (`MAX_BATCH_BYTES`), up to 2 \
         requests in flight per provider and 8 (32 MiB) in all (`schedule.rs`: \
         `MAX_PER_PROVIDER`, `MAX_BYTES_IN_FLIGHT`). With one source the requests are \
         pipelined: the provider looks the next batch's chunks up by id, reads them, computes \
         each chunk's bao tree (checking its root against the id) and streams the encoding \
         over iroh QUIC (with `--no-blobs`: checks each chunk's BLAKE3 and sends the batch \
         over libp2p, noise-encrypted), while the seeder decrypts the last one, verifies it \
         (every 16 KiB group against the chunk id; with `--no-blobs` every chunk's BLAKE3), \
         spools it and queues it for the import (SHA-256, chunking, block writes, fsync), \
         asking for no more while that 64-chunk queue is full. Per batch, from this run's CPU counters (a node's CPU seconds over the \
         whole replication ÷ batches); *cores busy* is both nodes' CPU time ÷ wall time, out \
         of {cores}: near {cores} the two nodes are bound by the machine's CPU, near 1 they \
         mostly take turns.\n",
        hub_protocol::blocks::MAX_BATCH_BYTES / (1 << 20)
    )?;
    writeln!(
        md,
        "| run | batches (≈) | wall ms / batch | provider CPU ms / batch | seeder CPU ms / batch | cores busy |\n\
         |---|---:|---:|---:|---:|---:|"
    )?;
    let batches = size.div_ceil(hub_protocol::blocks::MAX_BATCH_BYTES as u64) as f64;
    for r in std::iter::once(&rep_b)
        .chain(one.iter())
        .chain(libp2p.iter())
    {
        let wall = (r.done - r.first_byte) / batches * 1e3;
        let seeder = r.cpu[0].1 / batches * 1e3;
        let provider = r.cpu[1].1 / batches * 1e3;
        writeln!(
            md,
            "| {} | {batches:.0} | {wall:.1} | {provider:.1} | {seeder:.1} | {:.2} |",
            r.label,
            (provider + seeder) / wall
        )?;
    }
    let provider_p2p = median(
        std::iter::once(&rep_b)
            .chain(one.iter())
            .map(|r| r.cpu[1].1)
            .collect(),
    ) / gib;
    let seeder_p2p = median(
        std::iter::once(&rep_b)
            .chain(one.iter())
            .map(|r| r.cpu[0].1)
            .collect(),
    ) / gib;
    writeln!(
        md,
        "\nCPU per GiB moved (medians of the one-source runs over the blob endpoint): the \
         providing node spends {provider_p2p:.1} s serving, against {:.1} s serving the same \
         file to curl over HTTP; the seeding node spends {seeder_p2p:.1} s receiving, verifying \
         and importing it (curl to /dev/null does none of that; see also the \"HTTP to disk\" \
         rows for a plain write of the bytes). With two sources, up to four batches are in \
         flight at once (two per source), on three node processes sharing {cores} cores.\n",
        http_cpu / gib
    )?;

    // The data-plane comparison (ADR 0005).
    let blobs_med = median(one_all.iter().map(|r| r.mib_s(size)).collect());
    let blobs_lfs_med = median(one_all.iter().map(|r| r.lfs_mib_s(size)).collect());
    let libp2p_med = median(libp2p.iter().map(|r| r.mib_s(size)).collect());
    let libp2p_lfs_med = median(libp2p.iter().map(|r| r.lfs_mib_s(size)).collect());
    let cpu_med =
        |runs: &[&Replication], i: usize| median(runs.iter().map(|r| r.cpu[i].1).collect()) / gib;
    let libp2p_all: Vec<&Replication> = libp2p.iter().collect();
    writeln!(
        md,
        "## Data plane: iroh blobs vs. libp2p request-response
"
    )?;
    writeln!(
        md,
        "The same one-source replication from A with the seeder's blob endpoint on (the \
         default: chunks as iroh-blobs `GetMany` over iroh QUIC, bao-verified per 16 KiB \
         group) and off (`--no-blobs`: chunks over `/hubmesh/blocks/1` on the libp2p swarm, \
         verified per chunk). Medians over {} and {} runs.\n",
        one_all.len(),
        libp2p_all.len()
    )?;
    writeln!(
        md,
        "| data plane | MiB/s spawn → stored | MiB/s LFS phase | provider CPU s / GiB | seeder CPU s / GiB |\n\
         |---|---:|---:|---:|---:|"
    )?;
    writeln!(
        md,
        "| iroh blobs | {blobs_med:.0} | {blobs_lfs_med:.0} | {:.1} | {:.1} |",
        cpu_med(&one_all, 1),
        cpu_med(&one_all, 0)
    )?;
    writeln!(
        md,
        "| libp2p request-response | {libp2p_med:.0} | {libp2p_lfs_med:.0} | {:.1} | {:.1} |",
        cpu_med(&libp2p_all, 1),
        cpu_med(&libp2p_all, 0)
    )?;
    writeln!(
        md,
        "\niroh ÷ libp2p: {:.2}× spawn → stored, {:.2}× LFS phase.",
        blobs_med / libp2p_med,
        blobs_lfs_med / libp2p_lfs_med
    )?;
    Ok(md)
}
