//! `hubmesh store fsck|stats` on a stopped node's data directory, after real uploads.

use hub_tests::{Node, http, hubmesh};
use serde_json::Value;
use std::path::Path;

fn run(args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let out = hubmesh(args)?.output()?;
    Ok((
        out.status.success(),
        String::from_utf8(out.stdout)?,
        String::from_utf8(out.stderr)?,
    ))
}

/// Creates `admin/m` and commits one binary file (stored as LFS in the chunk store).
fn upload(node: &Node, bytes: &[u8]) -> anyhow::Result<()> {
    use base64::Engine;
    let token = node.admin_token()?;
    let agent = http();
    let r = agent
        .post(node.url("/api/repos/create"))
        .header("authorization", format!("Bearer {token}"))
        .send_json(serde_json::json!({ "name": "m" }))?;
    anyhow::ensure!(r.status() == 200, "create: {}", r.status());
    let body = format!(
        "{}\n{}\n",
        serde_json::json!({ "key": "header", "value": { "summary": "weights" } }),
        serde_json::json!({ "key": "file", "value": {
            "content": base64::engine::general_purpose::STANDARD.encode(bytes),
            "path": "w.bin", "encoding": "base64" } })
    );
    let r = agent
        .post(node.url("/api/models/admin/m/commit/main"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/x-ndjson")
        .send(body)?;
    anyhow::ensure!(r.status() == 200, "commit: {}", r.status());
    Ok(())
}

fn block_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            block_files(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn fsck_and_stats_on_a_stopped_node() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let data_arg = data.to_string_lossy().into_owned();
    let weights: Vec<u8> = (0..2_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut node = Node::start_with(hub_tests::NodeOptions {
        data: Some(data.clone()),
        ..Default::default()
    })?;
    upload(&node, &weights)?;

    // Not while the node runs.
    let (ok, _, err) = run(&["store", "fsck", "--data", &data_arg])?;
    assert!(!ok);
    assert!(
        err.contains("already in use") && err.contains("stopped"),
        "{err}"
    );
    assert!(node.terminate()?.success());

    let (ok, out, err) = run(&["store", "stats", "--data", &data_arg, "--json"])?;
    assert!(ok, "{err}");
    let stats: Value = serde_json::from_str(&out)?;
    assert_eq!(stats["files"], 1);
    assert_eq!(stats["logical_bytes"], weights.len());
    assert!(stats["stored_bytes"].as_u64().unwrap() >= weights.len() as u64);
    let (ok, out, _) = run(&["store", "stats", "--data", &data_arg])?;
    assert!(ok && out.contains("dedup ratio"), "{out}");

    let (ok, out, err) = run(&["store", "fsck", "--data", &data_arg, "--json"])?;
    assert!(ok, "{err}");
    assert!(err.contains("fsck: blocks"), "progress on stderr: {err}");
    let report: Value = serde_json::from_str(&out)?;
    assert_eq!(report["corrupt_blocks"], serde_json::json!([]));
    assert_eq!(report["files_checked"], 1);

    // Flip one byte of a block: fsck finds it, quarantines it, and says so with status 1.
    let mut blocks = Vec::new();
    block_files(&data.join("store/blocks"), &mut blocks);
    let block = blocks.first().expect("a block file");
    let mut bytes = std::fs::read(block)?;
    bytes[1000] ^= 0x40;
    std::fs::write(block, bytes)?;
    let (ok, out, err) = run(&["store", "fsck", "--data", &data_arg])?;
    assert!(!ok, "corruption must fail fsck");
    assert!(out.contains("corrupt block"), "{out}");
    assert!(err.contains("quarantined"), "{err}");
    let (ok, out, _) = run(&["store", "fsck", "--data", &data_arg])?;
    assert!(
        ok && out.contains("clean"),
        "after quarantine the store is consistent: {out}"
    );

    let (ok, _, err) = run(&["store", "stats", "--data", "/nonexistent/hubmesh"])?;
    assert!(!ok && err.contains("no chunk store"), "{err}");
    Ok(())
}
