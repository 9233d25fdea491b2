//! Small versions of the lab scenarios: `hub-netsim run` with real `hubmesh` processes,
//! each in its own network namespace. Skipped (saying why) only where the kernel refuses
//! a user + network namespace with a veth pair.

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn hubmesh() -> PathBuf {
    if let Some(path) = std::env::var_os("HUBMESH_BIN") {
        return path.into();
    }
    let netsim = PathBuf::from(env!("CARGO_BIN_EXE_hub-netsim"));
    let path = netsim.with_file_name("hubmesh");
    assert!(
        path.is_file(),
        "no hubmesh binary at {} (cargo build --workspace --all-targets)",
        path.display()
    );
    path
}

/// Why this machine cannot give the lab its namespaces; `None` when it can.
fn namespace_refusal() -> Option<String> {
    let probe = Command::new("unshare")
        .args(["--user", "--map-root-user", "--net", "--mount", "--"])
        .args([
            "ip", "link", "add", "hm0", "type", "veth", "peer", "name", "hm1",
        ])
        .output();
    match probe {
        Err(e) => Some(format!("cannot run unshare (util-linux): {e}")),
        Ok(out) if !out.status.success() => Some(format!(
            "the kernel refuses a user + network namespace with a veth pair: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(_) => None,
    }
}

/// Runs `scenario` (TOML text) and returns its JSON; `None` when skipped.
fn run(name: &str, scenario: &str) -> Option<Value> {
    let hubmesh = hubmesh();
    if let Some(reason) = namespace_refusal() {
        eprintln!("skipped {name}: {reason}");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, scenario).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hub-netsim"))
        .arg("run")
        .arg(&path)
        .arg("--json")
        .arg("--hubmesh")
        .arg(&hubmesh)
        .arg("--work")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{name} failed:\n{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    Some(serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}")))
}

#[test]
fn fanout_every_node_completes_with_verified_bytes() {
    let scenario =
        "kind = \"fanout\"\nnodes = 3\nfile_mib = 4\nrate_mbit = 100\ndeadline_s = 120\n";
    let Some(v) = run("fanout", scenario) else {
        return;
    };
    assert_eq!(v["nodes"], 3);
    assert_eq!(v["nodes_completed"], 3, "{v}");
    assert_eq!(v["nodes_verified"], 3, "{v}");
    let c = &v["completion_s"];
    assert!(
        c["p50"].as_f64().unwrap() <= c["max"].as_f64().unwrap(),
        "{v}"
    );
    // 4 MiB at 100 Mbit/s.
    assert_eq!(v["optimum_s"].as_f64().unwrap(), 0.336);
    // The origin sent at least one copy; on its link, at most one per node plus overhead.
    let egress = v["origin_egress_copies"].as_f64().unwrap();
    assert!((1.0..=3.5).contains(&egress), "{v}");
    let shares: f64 = v["upload_share"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["share"].as_f64().unwrap())
        .sum();
    assert!((shares - 1.0).abs() < 0.01, "{v}");
}

/// Swarming (ADR 0016) on shaped links: the fetchers leave to each other what one of them is
/// getting from the origin, so the origin sends each part about once (the goal:
/// at most 1.5 copies) and the seeders serve the rest.
#[test]
fn fanout_the_origin_sends_each_part_about_once() {
    let scenario =
        "kind = \"fanout\"\nnodes = 4\nfile_mib = 24\nrate_mbit = 40\ndeadline_s = 180\n";
    let Some(v) = run("fanout", scenario) else {
        return;
    };
    assert_eq!(v["nodes_completed"], 4, "{v}");
    assert_eq!(v["nodes_verified"], 4, "{v}");
    let origin = v["origin_chunk_copies"].as_f64().unwrap();
    assert!(
        origin <= 1.5,
        "the origin sent {origin} copies of its chunks: {v}"
    );
}

#[test]
fn churn_every_survivor_completes_with_verified_bytes() {
    let scenario = "kind = \"churn\"\nnodes = 4\nfile_mib = 8\nrate_mbit = 100\nkill_share = 0.25\ndeadline_s = 120\n";
    let Some(v) = run("churn", scenario) else {
        return;
    };
    assert_eq!(v["nodes_killed"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["survivors"], 3);
    assert_eq!(v["nodes_completed"], 3, "{v}");
    assert_eq!(v["nodes_verified"], 3, "{v}");
    assert_eq!(v["baseline"]["nodes_verified"], 4, "{v}");
    assert!(v["extra_s"].is_number(), "{v}");
}

#[test]
fn partition_heal_every_node_converges_and_none_rolls_back() {
    let scenario = "kind = \"partition-heal\"\nnodes = 3\nrate_mbit = 100\ndeadline_s = 120\n";
    let Some(v) = run("partition-heal", scenario) else {
        return;
    };
    assert_eq!(v["nodes"], 4);
    assert_eq!(v["errors"].as_array().unwrap().len(), 0, "{v}");
    assert_eq!(v["nodes_converged"], 4, "{v}");
    assert_eq!(v["nodes_rolled_back"], 0, "{v}");
}

#[test]
fn forgery_nobody_takes_forged_refs_or_corrupt_chunks() {
    let scenario =
        "kind = \"forgery\"\nnodes = 4\nfile_mib = 12\nrate_mbit = 100\ndeadline_s = 120\n";
    let Some(v) = run("forgery", scenario) else {
        return;
    };
    assert_eq!(
        v["nodes_taking_forged_refs"].as_array().unwrap().len(),
        0,
        "{v}"
    );
    assert_eq!(v["nodes_verified"], v["honest_seeders"], "{v}");
    assert!(v["gossip_refused"].as_u64().unwrap() >= 2, "{v}");
    // The corrupt seeder was asked (it holds the whole file, as the origin does, when the
    // others start: 12 MiB is three batches, spread over both), its chunks were rejected,
    // and the rejections were counted against it.
    assert!(v["chunks_rejected"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(
        v["corrupt_seeder_bad_chunks"], v["chunks_rejected"],
        "every rejected chunk came from the corrupt seeder: {v}"
    );
    assert!(
        !v["corrupt_seeder_penalised_by"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{v}"
    );
}
