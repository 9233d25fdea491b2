//! The lab's network: one namespace per node, each joined by a veth pair to one bridge in
//! the lab's own namespace, where the controller (this process) also sits.
//!
//! `hub-netsim` re-runs itself under `unshare --user --map-root-user --net --mount` (see
//! [`super::reexec_in_namespace`]), so nothing here touches the machine's own network: the
//! bridge, the veths and the node namespaces live and die with that process. Node `i` is
//! `hn{i}` with address [`addr`]`(i)` on its `e0`; its peer end `hv{i}` is on the bridge
//! `hnbr` (10.77.255.254/16, the controller's address). Shaping: a tbf qdisc on both ends,
//! so each node's upload (`e0` egress) and download (`hv{i}` egress) are capped at the
//! link rate. Partitions are blackhole routes in the node namespaces. Counters: `hv{i}`'s
//! `rx_bytes` is everything node `i` sent (its egress, headers included).

use anyhow::{Context, Result, bail};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

const BRIDGE: &str = "hnbr";
const NETNS_DIR: &str = "/run/netns";

/// Node `i`'s address.
pub fn addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, (i / 200) as u8, (i % 200 + 1) as u8)
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ip(args: &[&str]) -> Result<()> {
    run("ip", args)
}

/// Gives `ip netns` a private `/run/netns` (a tmpfs in this mount namespace), so named
/// namespaces leave nothing behind on the machine, and mounts a sysfs of this network
/// namespace on `/sys` (the interface counters are read there).
pub fn private_mounts() -> Result<()> {
    run("mount", &["-t", "sysfs", "hub-netsim-sys", "/sys"])?;
    if std::fs::create_dir_all(NETNS_DIR).is_err() {
        // Not allowed to make it (not the machine's root): a private /run first.
        run("mount", &["-t", "tmpfs", "hub-netsim-run", "/run"])?;
        std::fs::create_dir_all(NETNS_DIR).context("create /run/netns")?;
    }
    run("mount", &["-t", "tmpfs", "hub-netsim-netns", NETNS_DIR])
}

/// The namespaces and links of one lab.
#[derive(Debug)]
pub struct LabNet {
    /// Blackhole routes in place: (in namespace of, to).
    cut: Vec<(usize, usize)>,
}

impl LabNet {
    /// Makes the bridge and `nodes` namespaces, each with a link shaped to `rate_mbit`
    /// (0: unshaped).
    pub fn build(nodes: usize, rate_mbit: u64) -> Result<Self> {
        ip(&["link", "set", "lo", "up"])?;
        ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["addr", "add", "10.77.255.254/16", "dev", BRIDGE])?;
        ip(&["link", "set", BRIDGE, "up"])?;
        for i in 0..nodes {
            let ns = format!("hn{i}");
            let hv = format!("hv{i}");
            let cidr = format!("{}/16", addr(i));
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &hv, "type", "veth", "peer", "name", "e0", "netns", &ns,
            ])?;
            ip(&["link", "set", &hv, "master", BRIDGE, "up"])?;
            ip(&["-n", &ns, "addr", "add", &cidr, "dev", "e0"])?;
            ip(&["-n", &ns, "link", "set", "e0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            if rate_mbit > 0 {
                let rate = format!("{rate_mbit}mbit");
                // A burst of 20 ms at the rate (at least 64 KiB): enough for the kernel's
                // timer granularity without letting a flow run far above the rate.
                let burst = (rate_mbit * 1_000_000 / 8 / 50).max(64 * 1024).to_string();
                let tbf = [
                    "root",
                    "tbf",
                    "rate",
                    rate.as_str(),
                    "burst",
                    burst.as_str(),
                    "latency",
                    "50ms",
                ];
                let mut up = vec!["-n", ns.as_str(), "qdisc", "add", "dev", "e0"];
                up.extend(tbf);
                run("tc", &up)?;
                let mut down = vec!["qdisc", "add", "dev", hv.as_str()];
                down.extend(tbf);
                run("tc", &down)?;
            }
        }
        Ok(Self { cut: Vec::new() })
    }

    /// Removes the cap on node `i`'s download (the tbf on `hv{i}`), keeping its upload's: a
    /// fetcher whose speed only its sources' caps should bound (two-sources scenario).
    pub fn unshape_download(&self, i: usize) -> Result<()> {
        let hv = format!("hv{i}");
        run("tc", &["qdisc", "del", "dev", hv.as_str(), "root"])
    }

    /// A command that runs `program` in node `i`'s namespace.
    pub fn command(&self, i: usize, program: &std::path::Path) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={NETNS_DIR}/hn{i}"))
            .arg("--")
            .arg(program);
        command
    }

    fn counter(&self, i: usize, name: &str) -> Result<u64> {
        let path = PathBuf::from(format!("/sys/class/net/hv{i}/statistics/{name}"));
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        text.trim()
            .parse()
            .with_context(|| format!("parse {}", path.display()))
    }

    /// Bytes node `i` sent over its link so far (IP packets, headers included).
    pub fn egress_bytes(&self, i: usize) -> Result<u64> {
        self.counter(i, "rx_bytes")
    }

    /// Cuts every node of `a` off from every node of `b` (blackhole routes both ways).
    pub fn partition(&mut self, a: &[usize], b: &[usize]) -> Result<()> {
        for &x in a {
            for &y in b {
                for (from, to) in [(x, y), (y, x)] {
                    let dest = format!("{}/32", addr(to));
                    ip(&[
                        "-n",
                        &format!("hn{from}"),
                        "route",
                        "add",
                        "blackhole",
                        &dest,
                    ])?;
                    self.cut.push((from, to));
                }
            }
        }
        Ok(())
    }

    /// Removes every blackhole route.
    pub fn heal(&mut self) -> Result<()> {
        for (from, to) in std::mem::take(&mut self.cut) {
            let dest = format!("{}/32", addr(to));
            ip(&[
                "-n",
                &format!("hn{from}"),
                "route",
                "del",
                "blackhole",
                &dest,
            ])?;
        }
        Ok(())
    }
}
