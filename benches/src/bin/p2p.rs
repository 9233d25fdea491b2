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
use hub_benches::node::{
    Node, curl_to_file, curl_to_null, loadavg, machine, median, sha256_url, upload,
    write_safetensors,
};
use std::fmt::Write as _;
use std::path::PathBuf;
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

fn run(a: &Args) -> Result<String> {
    let load_start = loadavg();
    let file = a.data.join(FILE);
    let body = a.size_mib * 1024 * 1024 - 128;
    eprintln!("generating {} MiB …", a.size_mib);
    let (size, sha256) = write_safetensors(&file, body)?;

    let node_a = Node::start(&a.bin, a.data.join("a"), "A", &["--admin", "alice"])?;
    eprintln!("uploading through huggingface_hub …");
    let (upload_s, commit) = upload(
        &a.python,
        &node_a,
        &a.data.join("hf-home"),
        REPO,
        &file,
        FILE,
    )?;
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
