//! The lab: real `hubmesh up` processes, each in its own network namespace behind a shaped
//! link (module `netns`), driven over their HTTP API (modules `node`, `upload`).
//!
//! `hub-netsim run` re-runs itself inside a private user + network + mount namespace
//! ([`reexec_in_namespace`]), so the lab needs no privileges where the kernel allows
//! unprivileged user namespaces, and leaves nothing behind. Scenarios:
//!
//! - **fanout**: node 0 (the origin, admin of `alice`) publishes one file; nodes 1..=N seed
//!   `alice/*`, each bootstrapped from the origin and the node before it. Per node, the
//!   time from the commit until its counters show the object fetched and verified
//!   (`lfs_objects_fetched`, polled every 50 ms), the optimum (size ÷ link rate), the
//!   origin's egress in copies of the file (two ways: its link's byte counter, every IP
//!   packet it sent; and its own `chunk_bytes_sent` counter, the chunk payload it served),
//!   and each node's share of the chunk bytes served. Then every node's copy is downloaded
//!   through its gateway and hashed.
//! - **churn**: a fan-out as baseline, then a second file during whose fan-out the
//!   `kill_share` of the nodes that served the most so far are SIGKILLed at half the
//!   optimum; every survivor must complete with verified bytes; reported: the extra time.
//! - **partition-heal**: the halves are cut apart (blackhole routes); the origin commits
//!   to `alice/shared` (hosted on its side) and `alice/left`, node N/2+1 (admin of `bob`)
//!   to `bob/right`; after the heal, every node must hold all three at their hosts'
//!   commits. Reported: the time from the heal until the last node converged.
//! - **forgery**: a liar (admin of its own `alice`) commits refs to `alice/shared`,
//!   which it does not own, and a second liar serves corrupt chunks
//!   (`HUBMESH_TEST_CORRUPT_CHUNKS`); nobody may take the liar's refs, every node must end
//!   with the origin's verified bytes, and the corrupt chunks must be counted as rejected.
//! - **two-sources** (module `two_sources`): a fetch from one capped source, then one from
//!   two, each capped at the same rate (issue #17: two ≥ 1.8× one).

mod netns;
mod node;
mod two_sources;
mod upload;

use crate::report::{Spread, round3, table};
use crate::scenario::{Kind, LabConfig, Scenario};
use anyhow::{Context, Result, bail, ensure};
use netns::LabNet;
use node::{Node, agent};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

/// Set in the environment of the copy of `hub-netsim` that runs inside the namespace.
const INNER_ENV: &str = "HUB_NETSIM_INSIDE";
/// How often completion is polled.
const POLL: Duration = Duration::from_millis(50);

/// Where the lab finds the node binary and puts its data.
#[derive(Debug, Clone)]
pub struct LabOptions {
    pub hubmesh: PathBuf,
    pub work: PathBuf,
}

/// Runs this program again, with the same arguments, inside a private user + network +
/// mount namespace; `None` when this process already is that copy.
pub fn reexec_in_namespace() -> Result<Option<ExitStatus>> {
    if std::env::var_os(INNER_ENV).is_some() {
        return Ok(None);
    }
    let exe = std::env::current_exe().context("find this binary")?;
    let status = Command::new("unshare")
        .args([
            "--user",
            "--map-root-user",
            "--net",
            "--mount",
            "--propagation",
            "private",
            "--",
        ])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(INNER_ENV, "1")
        .status()
        .context("run unshare (util-linux) for the lab's namespace")?;
    Ok(Some(status))
}

/// Runs a lab scenario (inside the namespace) and returns its figures.
pub fn run(scenario: &Scenario, options: &LabOptions) -> Result<Value> {
    ensure!(
        std::env::var_os(INNER_ENV).is_some(),
        "the lab runs inside its namespace (hub-netsim re-runs itself there)"
    );
    ensure!(
        options.hubmesh.is_file(),
        "no hubmesh binary at {} (build it, or pass --hubmesh)",
        options.hubmesh.display()
    );
    netns::private_mounts().context(
        "the kernel refused the lab's namespaces (a private /run/netns in a user namespace)",
    )?;
    let config = &scenario.lab;
    let net = LabNet::build(config.nodes + 1, config.rate_mbit)
        .context("the kernel refused the lab's network (bridge, veth, tbf)")?;
    let dir = tempfile::Builder::new()
        .prefix("hub-netsim-")
        .tempdir_in(&options.work)
        .with_context(|| format!("make a directory in {}", options.work.display()))?;
    let mut lab = Lab {
        net,
        nodes: Vec::new(),
        hubmesh: options.hubmesh.clone(),
        root: dir.path().to_owned(),
        agent: agent(),
        config: config.clone(),
        seed: scenario.seed,
    };
    let result = match scenario.kind {
        Kind::Fanout => lab.fanout_scenario(),
        Kind::Churn => lab.churn_scenario(),
        Kind::PartitionHeal => lab.partition_scenario(),
        Kind::Forgery => lab.forgery_scenario(),
        Kind::TwoSources => lab.two_sources_scenario(),
        Kind::Sim => bail!("the simulation is not a lab scenario"),
    };
    // Stop the nodes before the directory goes.
    lab.nodes.clear();
    if result.is_err() {
        // Keep the logs of a failed run for whoever reads the error.
        let kept = dir.keep();
        eprintln!("lab: logs kept in {}", kept.display());
    }
    result
}

struct Lab {
    net: LabNet,
    /// Index `i` runs in namespace `i`; `None` before it started.
    nodes: Vec<Option<Node>>,
    hubmesh: PathBuf,
    root: PathBuf,
    agent: ureq::Agent,
    config: LabConfig,
    seed: u64,
}

/// What one fan-out of one file gave.
struct Fanout {
    completion: Vec<Option<f64>>,
    killed: Vec<usize>,
    verified: usize,
    origin_egress: u64,
    origin_chunks_sent: u64,
    served: Vec<u64>,
    size: u64,
}

/// Deterministic incompressible bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

impl Lab {
    fn node(&self, i: usize) -> Result<&Node> {
        self.nodes
            .get(i)
            .and_then(Option::as_ref)
            .with_context(|| format!("node {i} is not running"))
    }

    /// Starts node `i` with `args`; it bootstraps from the nodes named in `bootstrap`.
    fn start(
        &mut self,
        i: usize,
        args: &[&str],
        bootstrap: &[usize],
        env: &[(&str, &str)],
    ) -> Result<()> {
        let mut all: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        for &b in bootstrap {
            all.push("--bootstrap".into());
            all.push(self.node(b)?.p2p.clone());
        }
        let node = Node::start(&self.net, i, &self.hubmesh, &self.root, &all, env)?;
        if self.nodes.len() <= i {
            self.nodes.resize_with(i + 1, || None);
        }
        self.nodes[i] = Some(node);
        Ok(())
    }

    /// Waits until every running node has at least one connected peer.
    fn wait_connected(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        for node in self.nodes.iter().flatten() {
            while node.counter(&self.agent, "connected_peers").unwrap_or(0) == 0 {
                if Instant::now() > deadline {
                    bail!("node {} connected to no peer within 60 s", node.index);
                }
                std::thread::sleep(POLL);
            }
        }
        Ok(())
    }

    /// The origin (node 0, admin of `alice`) and `n` seeders of `patterns`, node `i`
    /// bootstrapped from the origin and node `i - 1`.
    fn start_fanout_nodes(&mut self, patterns: &[&str]) -> Result<()> {
        self.start(0, &["--admin", "alice"], &[], &[])?;
        for i in 1..=self.config.nodes {
            let mut args = Vec::new();
            for p in patterns {
                args.extend(["--seed", *p]);
            }
            let bootstrap: Vec<usize> = if i > 1 { vec![0, i - 1] } else { vec![0] };
            self.start(i, &args, &bootstrap, &[])?;
        }
        self.wait_connected()
    }

    fn optimum_s(&self, size: u64) -> Option<f64> {
        (self.config.rate_mbit > 0)
            .then(|| round3(size as f64 * 8.0 / (self.config.rate_mbit as f64 * 1e6)))
    }

    /// Publishes `bytes` as `repo`'s `model.bin` on the origin and waits until every
    /// seeder fetched it (or the deadline); `kill` SIGKILLs that many of the nodes that
    /// served the most, at half the optimum. Then downloads every survivor's copy.
    fn fan_out(&mut self, repo: &str, bytes: &[u8], kill: usize) -> Result<Fanout> {
        let n = self.config.nodes;
        let size = bytes.len() as u64;
        let token = self.node(0)?.admin_token()?;
        let fetched_before: Vec<u64> = (1..=n)
            .map(|i| self.node(i)?.counter(&self.agent, "lfs_objects_fetched"))
            .collect::<Result<_>>()?;
        let sent_before: Vec<u64> = (0..=n)
            .map(|i| self.node(i)?.counter(&self.agent, "chunk_bytes_sent"))
            .collect::<Result<_>>()?;
        // The upload reaches the origin before the clock starts; the commit starts it.
        let egress_before = self.net.egress_bytes(0)?;
        let origin = self.node(0)?;
        upload::publish_file(&self.agent, origin, &token, repo, "model.bin", bytes)
            .with_context(|| format!("publish {repo} on the origin"))?;
        let started = Instant::now();
        let deadline = started + Duration::from_secs(self.config.deadline_s);
        let kill_at = self.optimum_s(size).unwrap_or(1.0) / 2.0;
        let mut completion: Vec<Option<f64>> = vec![None; n];
        let mut killed = Vec::new();
        loop {
            let elapsed = started.elapsed().as_secs_f64();
            if kill > 0 && killed.is_empty() && elapsed >= kill_at {
                killed = self.kill_top_servers(kill, &sent_before)?;
                eprintln!("lab: killed nodes {killed:?} at {elapsed:.2} s");
            }
            let mut waiting = 0;
            for i in 1..=n {
                if completion[i - 1].is_some() || killed.contains(&i) {
                    continue;
                }
                let fetched = self.node(i)?.counter(&self.agent, "lfs_objects_fetched")?;
                if fetched > fetched_before[i - 1] {
                    completion[i - 1] = Some(round3(started.elapsed().as_secs_f64()));
                } else {
                    waiting += 1;
                }
            }
            if waiting == 0 && (kill == 0 || !killed.is_empty()) {
                break;
            }
            if Instant::now() > deadline {
                eprintln!("lab: deadline passed with {waiting} nodes still fetching");
                break;
            }
            std::thread::sleep(POLL);
        }
        let origin_egress = self.net.egress_bytes(0)? - egress_before;
        // Killed nodes count 0: their counters went with them.
        let mut served = Vec::new();
        for (slot, before) in self.nodes.iter().zip(&sent_before) {
            served.push(match slot {
                Some(node) => node.counter(&self.agent, "chunk_bytes_sent")? - before,
                None => 0,
            });
        }
        let want = hex::encode(Sha256::digest(bytes));
        let verified = self.verify_all(repo, &want)?;
        Ok(Fanout {
            completion,
            killed,
            verified,
            origin_egress,
            origin_chunks_sent: served[0],
            served,
            size,
        })
    }

    /// SIGKILLs the `k` seeders that served the most chunk bytes since `before`.
    fn kill_top_servers(&mut self, k: usize, before: &[u64]) -> Result<Vec<usize>> {
        let mut by_served = Vec::new();
        for (i, before) in before.iter().enumerate().skip(1) {
            let sent = self.node(i)?.counter(&self.agent, "chunk_bytes_sent")?;
            by_served.push((std::cmp::Reverse(sent - before), i));
        }
        by_served.sort();
        let victims: Vec<usize> = by_served.iter().take(k).map(|&(_, i)| i).collect();
        for &i in &victims {
            if let Some(node) = self.nodes[i].as_mut() {
                node.kill();
            }
            self.nodes[i] = None;
        }
        Ok(victims)
    }

    /// Downloads `repo`'s `model.bin` from every running seeder at once and counts the
    /// copies whose SHA-256 is `want`.
    fn verify_all(&self, repo: &str, want: &str) -> Result<usize> {
        let agent = &self.agent;
        let results: Vec<Result<String>> = std::thread::scope(|s| {
            let handles: Vec<_> = self.nodes[1..]
                .iter()
                .flatten()
                .map(|node| {
                    s.spawn(move || upload::download_sha256(agent, node, repo, "model.bin"))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("download panicked")))
                })
                .collect()
        });
        let mut ok = 0;
        for result in results {
            match result {
                Ok(got) if got == want => ok += 1,
                Ok(got) => eprintln!("lab: a node served {repo} with SHA-256 {got}, not {want}"),
                Err(error) => eprintln!("lab: download failed: {error:#}"),
            }
        }
        Ok(ok)
    }

    fn fanout_json(&self, f: &Fanout) -> Value {
        let times: Vec<f64> = f.completion.iter().flatten().copied().collect();
        let spread = Spread::of(&times);
        let optimum = self.optimum_s(f.size);
        let total_served: u64 = f.served.iter().sum();
        let share = |b: u64| {
            if total_served == 0 {
                0.0
            } else {
                round3(b as f64 / total_served as f64)
            }
        };
        json!({
            "nodes": self.config.nodes,
            "nodes_completed": times.len(),
            "nodes_verified": f.verified,
            "nodes_killed": f.killed,
            "file_bytes": f.size,
            "rate_mbit": self.config.rate_mbit,
            "completion_s": spread,
            "completion_per_node_s": f.completion,
            "optimum_s": optimum,
            "p99_over_optimum": optimum.map(|o| round3(spread.p99 / o)),
            "origin_egress_copies": round3(f.origin_egress as f64 / f.size as f64),
            "origin_egress_measured_by": "rx_bytes of the origin's veth peer in the bridge namespace: every IP packet the origin sent, headers, gossip and HTTP answers included",
            "origin_chunk_copies": round3(f.origin_chunks_sent as f64 / f.size as f64),
            "upload_share": f.served.iter().enumerate().map(|(i, &b)| json!({
                "node": i, "chunk_bytes_sent": b, "share": share(b)
            })).collect::<Vec<_>>(),
        })
    }

    fn print_fanout(&self, title: &str, f: &Fanout) {
        let rows: Vec<Vec<String>> = (0..=self.config.nodes)
            .map(|i| {
                let done = if i == 0 {
                    "origin".to_owned()
                } else if f.killed.contains(&i) {
                    "killed".to_owned()
                } else {
                    f.completion[i - 1].map_or("-".into(), |t| format!("{t:.2}"))
                };
                vec![
                    i.to_string(),
                    done,
                    format!("{:.1}", f.served[i] as f64 / (1 << 20) as f64),
                ]
            })
            .collect();
        table(title, &["node", "done s", "served MiB"], &rows);
        let times: Vec<f64> = f.completion.iter().flatten().copied().collect();
        let s = Spread::of(&times);
        eprintln!(
            "completion p50 {:.2} s, p99 {:.2} s, max {:.2} s; optimum {}; origin egress {:.2} copies (link), {:.2} (chunks); verified {}",
            s.p50,
            s.p99,
            s.max,
            self.optimum_s(f.size)
                .map_or("n/a (unshaped)".into(), |o| format!("{o:.2} s")),
            f.origin_egress as f64 / f.size as f64,
            f.origin_chunks_sent as f64 / f.size as f64,
            f.verified,
        );
    }

    fn file(&self, salt: u64) -> Vec<u8> {
        noise(self.seed ^ salt, (self.config.file_mib << 20) as usize)
    }

    fn fanout_scenario(&mut self) -> Result<Value> {
        self.start_fanout_nodes(&["alice/*"])?;
        let bytes = self.file(1);
        let f = self.fan_out("alice/fanout", &bytes, 0)?;
        self.print_fanout("fan-out", &f);
        let mut value = self.fanout_json(&f);
        value["scenario"] = "fanout".into();
        Ok(value)
    }

    fn churn_scenario(&mut self) -> Result<Value> {
        self.start_fanout_nodes(&["alice/*"])?;
        let kill = ((self.config.nodes as f64 * self.config.kill_share).round() as usize).max(1);
        let first = self.file(1);
        let base = self.fan_out("alice/baseline", &first, 0)?;
        drop(first);
        self.print_fanout("baseline fan-out", &base);
        let second = self.file(2);
        let churn = self.fan_out("alice/churn", &second, kill)?;
        self.print_fanout("fan-out with churn", &churn);
        let base_json = self.fanout_json(&base);
        let mut value = self.fanout_json(&churn);
        let survivors = self.config.nodes - churn.killed.len();
        let base_max = Spread::of(
            &base
                .completion
                .iter()
                .flatten()
                .copied()
                .collect::<Vec<_>>(),
        )
        .max;
        let churn_max = value["completion_s"]["max"].as_f64().unwrap_or(0.0);
        value["scenario"] = "churn".into();
        value["survivors"] = survivors.into();
        value["baseline"] = base_json;
        value["extra_s"] = round3(churn_max - base_max).into();
        Ok(value)
    }

    fn partition_scenario(&mut self) -> Result<Value> {
        let n = self.config.nodes;
        let bob = n / 2 + 1;
        self.start(0, &["--admin", "alice", "--seed", "bob/*"], &[], &[])?;
        for i in 1..=n {
            let args: &[&str] = if i == bob {
                &["--admin", "bob", "--seed", "alice/*"]
            } else {
                &["--seed", "alice/*", "--seed", "bob/*"]
            };
            let bootstrap: Vec<usize> = if i > 1 { vec![0, i - 1] } else { vec![0] };
            self.start(i, args, &bootstrap, &[])?;
        }
        self.wait_connected()?;
        let seed = self.seed;
        let small = move |k: u64| noise(seed ^ k, 64 * 1024);
        let alice = self.node(0)?.admin_token()?;
        let bob_token = self.node(bob)?.admin_token()?;
        let agent = self.agent.clone();
        let v1 = upload::publish_file(
            &agent,
            self.node(0)?,
            &alice,
            "alice/shared",
            "w.bin",
            &small(1),
        )?;
        self.wait_repo(&(0..=n).collect::<Vec<_>>(), "alice/shared", &v1)?;

        let left: Vec<usize> = (0..bob).collect();
        let right: Vec<usize> = (bob..=n).collect();
        self.net.partition(&left, &right)?;
        let v2 = upload::publish_file(
            &agent,
            self.node(0)?,
            &alice,
            "alice/shared",
            "w.bin",
            &small(2),
        )?;
        let l1 = upload::publish_file(
            &agent,
            self.node(0)?,
            &alice,
            "alice/left",
            "w.bin",
            &small(3),
        )?;
        let r1 = upload::publish_file(
            &agent,
            self.node(bob)?,
            &bob_token,
            "bob/right",
            "w.bin",
            &small(4),
        )?;
        self.wait_repo(&left, "alice/shared", &v2)?;
        self.wait_repo(&left, "alice/left", &l1)?;
        self.wait_repo(&right, "bob/right", &r1)?;
        // The partition held: the right half still serves the old commit.
        for &i in &right {
            let sha = self.node(i)?.repo_sha(&self.agent, "alice/shared")?;
            ensure!(
                sha.as_deref() == Some(v1.as_str()),
                "node {i} saw across the partition: {sha:?}"
            );
        }

        self.net.heal()?;
        let healed = Instant::now();
        let all: Vec<usize> = (0..=n).collect();
        let results = [
            self.wait_repo(&all, "alice/shared", &v2),
            self.wait_repo(&all, "alice/left", &l1),
            self.wait_repo(&all, "bob/right", &r1),
        ];
        let heal_s = round3(healed.elapsed().as_secs_f64());
        let mut converged = 0;
        let mut rolled_back = 0;
        for &i in &all {
            let node = self.node(i)?;
            let shared = node.repo_sha(&self.agent, "alice/shared")?;
            let l = node.repo_sha(&self.agent, "alice/left")?;
            let r = node.repo_sha(&self.agent, "bob/right")?;
            if shared.as_deref() == Some(v1.as_str()) && i < bob {
                rolled_back += 1;
            }
            if shared.as_deref() == Some(v2.as_str())
                && l.as_deref() == Some(l1.as_str())
                && r.as_deref() == Some(r1.as_str())
            {
                converged += 1;
            }
        }
        let errors: Vec<String> = results
            .iter()
            .filter_map(|r| r.as_ref().err().map(|e| format!("{e:#}")))
            .collect();
        eprintln!(
            "partition-heal: {converged}/{} nodes converged {heal_s:.2} s after the heal; {rolled_back} rolled back",
            n + 1
        );
        Ok(json!({
            "scenario": "partition-heal",
            "nodes": n + 1,
            "halves": [left.len(), right.len()],
            "nodes_converged": converged,
            "nodes_rolled_back": rolled_back,
            "heal_convergence_s": heal_s,
            "errors": errors,
        }))
    }

    /// Waits until every node of `nodes` serves `repo` at `sha` (at most the deadline).
    fn wait_repo(&self, nodes: &[usize], repo: &str, sha: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(self.config.deadline_s);
        for &i in nodes {
            loop {
                let got = self.node(i)?.repo_sha(&self.agent, repo)?;
                if got.as_deref() == Some(sha) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("node {i} never served {repo} at {sha}; it serves {got:?}");
                }
                std::thread::sleep(POLL);
            }
        }
        Ok(())
    }

    fn forgery_scenario(&mut self) -> Result<Value> {
        let n = self.config.nodes;
        let corrupt = 1;
        let liar = n;
        // The origin, then a seeder that will serve corrupt chunks once it holds the file.
        self.start(0, &["--admin", "alice"], &[], &[])?;
        self.start(
            corrupt,
            &["--seed", "alice/*"],
            &[0],
            &[("HUBMESH_TEST_CORRUPT_CHUNKS", "1")],
        )?;
        self.wait_connected()?;
        let bytes = self.file(3);
        let want = hex::encode(Sha256::digest(&bytes));
        let token = self.node(0)?.admin_token()?;
        let agent = self.agent.clone();
        let honest = upload::publish_file(
            &agent,
            self.node(0)?,
            &token,
            "alice/shared",
            "model.bin",
            &bytes,
        )?;
        self.wait_repo(&[corrupt], "alice/shared", &honest)?;
        // The others join through the corrupt seeder first; the liar claims `alice` itself.
        for i in 2..liar {
            self.start(i, &["--seed", "alice/*"], &[corrupt, 0], &[])?;
        }
        self.start(
            liar,
            &["--admin", "alice", "--seed", "alice/*"],
            &[corrupt, 0],
            &[],
        )?;
        let honest_nodes: Vec<usize> = (0..liar).collect();
        self.wait_repo(&honest_nodes, "alice/shared", &honest)?;
        let lie = noise(self.seed ^ 9, 64 * 1024);
        let liar_token = self.node(liar)?.admin_token()?;
        // The liar's neighbours judge its claim and refs: wait until both refused gossip.
        let neighbours = [0, corrupt];
        let refused_before: Vec<u64> = neighbours
            .iter()
            .map(|&i| self.node(i)?.counter(&self.agent, "gossip_refused"))
            .collect::<Result<_>>()?;
        let forged = upload::publish_file(
            &agent,
            self.node(liar)?,
            &liar_token,
            "alice/shared",
            "model.bin",
            &lie,
        )?;
        let deadline = Instant::now() + Duration::from_secs(self.config.deadline_s);
        for (k, &i) in neighbours.iter().enumerate() {
            while self.node(i)?.counter(&self.agent, "gossip_refused")? <= refused_before[k] {
                if Instant::now() > deadline {
                    bail!("node {i} never judged the liar's gossip");
                }
                std::thread::sleep(POLL);
            }
        }
        let mut took_lie = Vec::new();
        for &i in &honest_nodes {
            let sha = self.node(i)?.repo_sha(&self.agent, "alice/shared")?;
            if sha.as_deref() == Some(forged.as_str()) {
                took_lie.push(i);
            }
        }
        let mut rejected = 0;
        let mut refused = 0;
        // The corrupt seeder's penalty as each node sees it: bad chunks counted against it.
        let corrupt_id = self.node(corrupt)?.peer_id.clone();
        let mut penalised_by = Vec::new();
        let mut bad_from_corrupt = 0;
        for &i in &honest_nodes {
            let (_, body) = self.node(i)?.get(&self.agent, "/api/mesh/peers")?;
            let c = &body["counters"];
            rejected += c["chunks_rejected"].as_u64().unwrap_or(0);
            refused += c["gossip_refused"].as_u64().unwrap_or(0);
            let bad = body["peers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["peer_id"].as_str() == Some(corrupt_id.as_str()))
                .filter_map(|p| p["bad_chunks"].as_u64())
                .sum::<u64>();
            if bad > 0 {
                penalised_by.push(i);
            }
            bad_from_corrupt += bad;
        }
        let verified = {
            let nodes: Vec<&Node> = honest_nodes[1..]
                .iter()
                .map(|&i| self.node(i))
                .collect::<Result<_>>()?;
            nodes
                .iter()
                .filter(|node| {
                    upload::download_sha256(&self.agent, node, "alice/shared", "model.bin")
                        .is_ok_and(|got| got == want)
                })
                .count()
        };
        eprintln!(
            "forgery: {} nodes took the liar's refs; {rejected} corrupt chunks rejected ({bad_from_corrupt} counted against the corrupt seeder, by nodes {penalised_by:?}); {refused} gossip messages refused; {verified}/{} honest seeders serve verified bytes",
            took_lie.len(),
            honest_nodes.len() - 1
        );
        Ok(json!({
            "scenario": "forgery",
            "nodes": n + 1,
            "nodes_taking_forged_refs": took_lie,
            "chunks_rejected": rejected,
            "corrupt_seeder": corrupt,
            "corrupt_seeder_bad_chunks": bad_from_corrupt,
            "corrupt_seeder_penalised_by": penalised_by,
            "gossip_refused": refused,
            "nodes_verified": verified,
            "honest_seeders": honest_nodes.len() - 1,
        }))
    }
}
