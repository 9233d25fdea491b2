//! HTTP serving benchmark: a stored LFS file downloaded from a `hubmesh up` node's gateway
//! (`/{repo}/resolve/main/{file}`, read from the chunk store and verified) against nginx (the
//! Debian package, `sendfile on`) serving the same bytes from a plain file, alternating in
//! one run, with each server's CPU time.
//!
//! ```text
//! cargo build --release -p hub-node --bin hubmesh
//! cargo run --release -p hub-benches --bin serve -- [--size-mib 1024] [--reps 5]
//!     [--bin PATH] [--before-bin PATH] [--python .venv/bin/python] [--data DIR] [--out FILE]
//! ```
//!
//! `--before-bin` adds a second node running another `hubmesh` (e.g. main's, to compare a
//! change), with the same file uploaded, measured in the same rounds. nginx is installed with
//! `apt-get install -y nginx-light` when it is missing. Generated data goes to `--data`
//! (default `benches/data/serve`, gitignored) and is deleted at the end; results go to
//! `--out` (default `benches/results/serve.md`).

use anyhow::{Context, Result, bail};
use hub_benches::node::{
    Node, cpu_seconds, curl_to_null, loadavg, machine, median, sha256_url, upload,
    write_safetensors,
};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const MIB: f64 = 1024.0 * 1024.0;
const GIB: f64 = 1024.0 * MIB;
const REPO: &str = "alice/big";
const FILE: &str = "model.safetensors";
const NGINX: &str = "/usr/sbin/nginx";

struct Args {
    size_mib: u64,
    reps: usize,
    bin: PathBuf,
    before_bin: Option<PathBuf>,
    python: PathBuf,
    data: PathBuf,
    out: PathBuf,
}

fn args() -> Result<Args> {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| "target".into(), PathBuf::from);
    let mut a = Args {
        size_mib: 1024,
        reps: 5,
        bin: target.join("release/hubmesh"),
        before_bin: None,
        python: PathBuf::from(".venv/bin/python"),
        data: PathBuf::from("benches/data/serve"),
        out: PathBuf::from("benches/results/serve.md"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--size-mib" => a.size_mib = value.parse().context("parse --size-mib")?,
            "--reps" => a.reps = value.parse().context("parse --reps")?,
            "--bin" => a.bin = value.into(),
            "--before-bin" => a.before_bin = Some(value.into()),
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

/// nginx serving one directory on 127.0.0.1, one worker, `sendfile on`, no access log.
struct Nginx {
    child: Child,
    port: u16,
}

impl Nginx {
    fn start(dir: &Path, root: &Path) -> Result<Nginx> {
        if !Path::new(NGINX).is_file() {
            eprintln!("installing nginx-light …");
            let ok = Command::new("apt-get")
                .args(["install", "-y", "-q", "nginx-light"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .status()
                .context("run apt-get")?
                .success();
            if !ok || !Path::new(NGINX).is_file() {
                bail!("nginx is not installed and apt-get could not install it");
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = std::path::absolute(dir)?;
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "worker_processes 1;\ndaemon off;\npid {pid};\nerror_log {err};\n\
                 events {{ worker_connections 64; }}\n\
                 http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  \
                 default_type application/octet-stream;\n  \
                 server {{ listen 127.0.0.1:{port}; root {root}; }}\n}}\n",
                pid = dir.join("nginx.pid").display(),
                err = dir.join("nginx.err").display(),
                root = std::path::absolute(root)?.display(),
            ),
        )?;
        let child = Command::new(NGINX)
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(&dir)
            .stdin(Stdio::null())
            .spawn()
            .context("spawn nginx")?;
        let nginx = Nginx { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("nginx did not listen on {port} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(nginx)
    }

    /// CPU seconds of the master and its workers.
    fn cpu_seconds(&self) -> f64 {
        let pid = self.child.id();
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        cpu_seconds(pid)
            + children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok())
                .map(cpu_seconds)
                .sum::<f64>()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: graceful shutdown of the master and its workers.
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Ok(None) = self.child.try_wait() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One download: which server, seconds, server CPU seconds, load average after it.
struct Sample {
    server: usize,
    secs: f64,
    cpu: f64,
    load: String,
}

fn main() -> Result<()> {
    let a = args()?;
    for bin in std::iter::once(&a.bin).chain(&a.before_bin) {
        if !bin.is_file() {
            bail!(
                "no hubmesh binary at {}: build it or pass --bin",
                bin.display()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&a.data);
    std::fs::create_dir_all(&a.data)?;
    let result = run(&a);
    let _ = std::fs::remove_dir_all(&a.data);
    let md = result?;
    hub_benches::write_results(&a.out, &md).with_context(|| format!("write {}", a.out.display()))
}

fn run(a: &Args) -> Result<String> {
    let load_start = loadavg();
    let www = a.data.join("www");
    std::fs::create_dir_all(&www)?;
    let file = www.join(FILE);
    eprintln!("generating {} MiB …", a.size_mib);
    let (size, sha256) = write_safetensors(&file, a.size_mib * 1024 * 1024 - 128)?;

    let strict = a.data.join("strict.toml");
    std::fs::write(&strict, "[store]\nreverify_after_secs = 0\n")?;
    let strict = strict.to_str().context("non-UTF-8 data path")?;
    let mut nodes = vec![
        (
            "hubmesh, every read verified",
            Node::start(
                &a.bin,
                a.data.join("a"),
                "A",
                &["--admin", "alice", "--config", strict],
            )?,
        ),
        (
            "hubmesh, default (60 s window)",
            Node::start(&a.bin, a.data.join("w"), "W", &["--admin", "alice"])?,
        ),
    ];
    if let Some(before) = &a.before_bin {
        nodes.push((
            "hubmesh (--before-bin)",
            Node::start(before, a.data.join("b"), "B", &["--admin", "alice"])?,
        ));
    }
    let mut upload_s = Vec::new();
    for (_, node) in &nodes {
        eprintln!("uploading to {} through huggingface_hub …", node.name);
        let (secs, _) = upload(&a.python, node, &a.data.join("hf-home"), REPO, &file, FILE)?;
        upload_s.push(secs);
    }
    let nginx = Nginx::start(&a.data, &www)?;
    let nginx_url = format!("http://127.0.0.1:{}/{FILE}", nginx.port);
    let url = |n: &Node| format!("http://{}/{REPO}/resolve/main/{FILE}", n.http);
    for (_, node) in &nodes {
        if sha256_url(&url(node))? != sha256 {
            bail!("{} serves other bytes", node.name);
        }
    }
    if sha256_url(&nginx_url)? != sha256 {
        bail!("nginx serves other bytes");
    }

    // Rounds: nginx, then each node, alternating, so load drifts hit all alike.
    let names: Vec<&str> = std::iter::once("nginx")
        .chain(nodes.iter().map(|(n, _)| *n))
        .collect();
    let mut samples = Vec::new();
    for round in 0..a.reps {
        for server in 0..names.len() {
            let (target, cpu_of): (String, Box<dyn Fn() -> f64>) = if server == 0 {
                (nginx_url.clone(), Box::new(|| nginx.cpu_seconds()))
            } else {
                let node = &nodes[server - 1].1;
                (url(node), Box::new(|| node.cpu_seconds()))
            };
            let cpu0 = cpu_of();
            let (bytes, secs) = curl_to_null(&target)?;
            let cpu = cpu_of() - cpu0;
            if bytes != size {
                bail!("{}: curl got {bytes} bytes, not {size}", names[server]);
            }
            let load = loadavg();
            eprintln!(
                "round {round} {}: {secs:.2} s, {:.0} MiB/s, CPU {cpu:.2} s, load {load}",
                names[server],
                size as f64 / MIB / secs
            );
            samples.push(Sample {
                server,
                secs,
                cpu,
                load,
            });
        }
    }
    drop(nginx);
    for (_, node) in nodes {
        node.stop()?;
    }
    let load_end = loadavg();

    let of = |s: usize| samples.iter().filter(move |x| x.server == s);
    let best = |s: usize| of(s).map(|x| x.secs).fold(f64::INFINITY, f64::min);
    let med = |s: usize| median(of(s).map(|x| x.secs).collect());
    let cpu_gib = |s: usize| median(of(s).map(|x| x.cpu).collect()) / (size as f64 / GIB);

    let mut md = String::new();
    writeln!(md, "# HTTP serving benchmark\n")?;
    writeln!(
        md,
        "Generated by `cargo run --release -p hub-benches --bin serve -- --size-mib {} --reps {}{}` \
         (source: `benches/src/bin/serve.rs`). All numbers come from one run on one machine; \
         the servers take turns, round by round.\n",
        a.size_mib,
        a.reps,
        if a.before_bin.is_some() {
            " --before-bin …"
        } else {
            ""
        }
    )?;
    writeln!(
        md,
        "Machine: {}. Load average (1, 5, 15 min) at the start: {load_start}; at the end: \
         {load_end}; after each download in the table. Other work on the machine shares its \
         cores with the servers and curl: compare ratios within the run, not absolute speeds.\n",
        machine()
    )?;
    writeln!(
        md,
        "File: `{FILE}`, {:.0} MiB ({size} bytes, pseudo-random), uploaded with \
         `huggingface_hub` `upload_file` ({}).\n",
        size as f64 / MIB,
        upload_s
            .iter()
            .map(|s| format!("{s:.1} s"))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    writeln!(md, "## How it is measured\n")?;
    writeln!(
        md,
        "- **nginx**: the Debian package's `nginx`, one worker, `sendfile on`, `tcp_nopush on`, \
         no access log, serving the generated file from a plain directory on the same disk.\n\
         - **hubmesh**: `curl -s -o /dev/null` of `/{REPO}/resolve/main/{FILE}` from a node's \
         gateway: the file is read from the chunk store (block files). *Every read verified*: \
         a node with `[store] reverify_after_secs = 0`, which checks every chunk against its \
         BLAKE3 id on every download. *Default*: a node with the default 60 s window (ADR \
         0001, \"Serving\"): a chunk verified from the same block in the last 60 s is not \
         hashed again, so a round hashes whatever chunks' windows have run out. Everything is \
         served from the page cache (each server's file is read once to check its SHA-256 \
         before the rounds).\n\
         - Seconds: curl's `time_total`. CPU: user + system seconds of the server's processes \
         during the download (`/proc/PID/stat`), median over the rounds, per GiB.\n"
    )?;
    writeln!(md, "## Results\n")?;
    writeln!(
        md,
        "| round | server | seconds | MiB/s | server CPU s | load after |\n|---:|---|---:|---:|---:|---|"
    )?;
    for (i, s) in samples.iter().enumerate() {
        writeln!(
            md,
            "| {} | {} | {:.2} | {:.0} | {:.2} | {} |",
            i / names.len() + 1,
            names[s.server],
            s.secs,
            size as f64 / MIB / s.secs,
            s.cpu,
            s.load
        )?;
    }
    writeln!(md)?;
    writeln!(
        md,
        "| server | best MiB/s | median MiB/s | best ÷ nginx's best | median ÷ nginx's median | CPU s per GiB (median) | CPU ÷ nginx's |\n|---|---:|---:|---:|---:|---:|---:|"
    )?;
    for (s, name) in names.iter().enumerate() {
        writeln!(
            md,
            "| {name} | {:.0} | {:.0} | {:.2}× | {:.2}× | {:.2} | {:.1}× |",
            size as f64 / MIB / best(s),
            size as f64 / MIB / med(s),
            best(0) / best(s),
            med(0) / med(s),
            cpu_gib(s),
            cpu_gib(s) / cpu_gib(0)
        )?;
    }
    writeln!(md)?;
    writeln!(md, "## Goal\n")?;
    let strict = med(0) / med(1);
    let window = med(0) / med(2);
    let met = |r: f64| if r >= 0.8 { "yes" } else { "**no**" };
    writeln!(
        md,
        "| goal | measured | met |\n|---|---:|---|\n\
         | HTTP download of a stored {:.0} MiB LFS file, every chunk verified, ≥ 0.8× nginx (median ÷ median) | {strict:.2}× | {} |\n\
         | (same, node defaults: chunks verified in the last 60 s not hashed again) | {window:.2}× | {} |",
        size as f64 / MIB,
        met(strict),
        met(window)
    )?;
    Ok(md)
}
