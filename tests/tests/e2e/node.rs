//! The node contract: node.json, health, metrics, admin token, lock, signals, restart, p2p.

use anyhow::Context;
use hub_tests::{Node, NodeOptions, http, hubmesh, wait_for};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

fn get_json(node: &Node, path: &str, token: Option<&str>) -> anyhow::Result<(u16, Value)> {
    let mut req = http().get(node.url(path));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let mut resp = req.call().with_context(|| format!("GET {path}"))?;
    let status = resp.status().as_u16();
    let body: Value = resp.body_mut().read_json()?;
    Ok((status, body))
}

fn metrics(node: &Node) -> anyhow::Result<String> {
    let mut resp = http().get(node.url("/metrics")).call()?;
    assert_eq!(resp.status(), 200);
    Ok(resp.body_mut().read_to_string()?)
}

#[test]
fn up_on_port_zero_writes_a_correct_node_json() -> anyhow::Result<()> {
    let node = Node::start()?;
    let info = &node.info;
    let http_addr: std::net::SocketAddr = info.http.parse()?;
    assert!(http_addr.ip().is_loopback(), "{info:?}");
    assert_ne!(
        http_addr.port(),
        0,
        "port 0 must be replaced by the bound port"
    );
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    assert!(
        info.peer_id.starts_with("12D3KooW"),
        "ed25519 peer id: {info:?}"
    );
    assert!(!info.p2p.is_empty());
    for addr in &info.p2p {
        assert!(addr.starts_with("/ip4/127.0.0.1/tcp/"), "{addr}");
        assert!(addr.ends_with(&format!("/p2p/{}", info.peer_id)), "{addr}");
        assert!(
            !addr.contains("/tcp/0/"),
            "p2p port 0 must be replaced: {addr}"
        );
    }
    let (status, health) = get_json(&node, "/health", None)?;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["peer_id"], info.peer_id.as_str());
    assert_eq!(health["version"], info.version.as_str());
    Ok(())
}

#[test]
fn metrics_answer_with_process_and_http_metrics() -> anyhow::Result<()> {
    let node = Node::start()?;
    get_json(&node, "/health", None)?;
    let text = metrics(&node)?;
    assert!(
        text.contains(r#"http_requests_total{method="GET",route="/health",status="200"} 1"#),
        "{text}"
    );
    let rss = text
        .lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .context("no process_resident_memory_bytes")?;
    let rss: f64 = rss.trim().parse()?;
    assert!(rss > 1e6 && rss < 4e9, "implausible RSS {rss}");
    assert!(text.contains("process_cpu_seconds_total"), "{text}");
    assert!(
        text.contains("http_request_duration_seconds_bucket"),
        "{text}"
    );
    Ok(())
}

#[test]
fn admin_token_has_mode_0600_and_authenticates() -> anyhow::Result<()> {
    let node = Node::start()?;
    let path = node.data_dir().join("admin.token");
    let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "admin.token mode {mode:o}");
    let token = node.admin_token()?;
    assert!(token.starts_with("hf_"));
    assert!(
        node.log().contains("admin.token"),
        "stderr must say where the token is"
    );
    assert!(
        !node.log().contains(&token),
        "the token itself must never be logged"
    );
    let (status, me) = get_json(&node, "/api/whoami-v2", Some(&token))?;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["name"], "admin");
    assert_eq!(me["auth"]["accessToken"]["role"], "write");
    let (status, _) = get_json(&node, "/api/whoami-v2", Some("hf_wrong"))?;
    assert_eq!(status, 401);
    Ok(())
}

#[test]
fn admin_flag_names_the_first_account() -> anyhow::Result<()> {
    let node = Node::start_with(NodeOptions {
        args: vec!["--admin".into(), "alice".into()],
        ..NodeOptions::default()
    })?;
    let (status, me) = get_json(&node, "/api/whoami-v2", Some(&node.admin_token()?))?;
    assert_eq!(status, 200);
    assert_eq!(me["name"], "alice");
    Ok(())
}

#[test]
fn second_up_on_the_same_data_dir_fails_at_once() -> anyhow::Result<()> {
    let node = Node::start()?;
    let data = node.data_dir().to_string_lossy().into_owned();
    let started = Instant::now();
    let out = hubmesh(&[
        "up",
        "--data",
        &data,
        "--http",
        "127.0.0.1:0",
        "--p2p-listen",
        "/ip4/127.0.0.1/tcp/0",
    ])?
    .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already in use"), "{stderr}");
    assert!(
        stderr.contains(&node.pid().unwrap_or_default().to_string()),
        "names the holder: {stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "must fail at once, not wait"
    );
    // The first node is unharmed.
    assert_eq!(get_json(&node, "/health", None)?.0, 200);
    assert!(node.data_dir().join("node.json").exists());
    Ok(())
}

#[test]
fn sigterm_exits_zero_and_restart_keeps_identity_and_token() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let opts = || NodeOptions {
        data: Some(dir.path().join("data")),
        ..NodeOptions::default()
    };
    let mut first = Node::start_with(opts())?;
    let token = first.admin_token()?;
    let peer_id = first.info.peer_id.clone();
    let status = first.terminate()?;
    assert!(
        status.success(),
        "SIGTERM must exit 0, got {status}:\n{}",
        first.log()
    );
    assert!(
        !dir.path().join("data/node.json").exists(),
        "node.json is removed on clean shutdown"
    );

    let second = Node::start_with(opts())?;
    assert_eq!(second.info.peer_id, peer_id, "same key, same peer id");
    assert_eq!(second.admin_token()?, token, "token file unchanged");
    let (status, me) = get_json(&second, "/api/whoami-v2", Some(&token))?;
    assert_eq!(status, 200, "the old token still works: {me}");
    assert!(!second.log().contains("created the admin account"));
    Ok(())
}

#[test]
fn sigterm_during_a_request_stream_still_exits_zero() -> anyhow::Result<()> {
    // Several keep-alive connections open at the time of the signal must not stall shutdown.
    let mut node = Node::start()?;
    let agent = http();
    for _ in 0..5 {
        assert_eq!(agent.get(node.url("/health")).call()?.status(), 200);
    }
    let status = node.terminate()?;
    assert!(status.success(), "{status}:\n{}", node.log());
    Ok(())
}

#[test]
fn bootstrap_connects_two_nodes() -> anyhow::Result<()> {
    let a = Node::start()?;
    let b = Node::start_with(NodeOptions {
        args: vec!["--bootstrap".into(), a.info.p2p[0].clone()],
        ..NodeOptions::default()
    })?;
    for node in [&a, &b] {
        wait_for("a p2p connection", Duration::from_secs(30), || {
            Ok(metrics(node)?
                .lines()
                .any(|l| l == "p2p_connected_peers 1")
                .then_some(()))
        })?;
    }
    assert!(
        b.log().contains(&a.info.peer_id),
        "B logs the peer it joined"
    );
    Ok(())
}

#[test]
fn a_relative_data_dir_works_for_git_pushes_too() -> anyhow::Result<()> {
    // The default data dir (`./hubmesh-data`) is relative; git runs in other directories.
    let dir = tempfile::tempdir()?;
    let mut child = hubmesh(&[
        "up",
        "--data",
        "rel-data",
        "--http",
        "127.0.0.1:0",
        "--p2p-listen",
        "/ip4/127.0.0.1/tcp/0",
    ])?
    .current_dir(dir.path())
    .stderr(std::process::Stdio::null())
    .spawn()?;
    let info_path = dir.path().join("rel-data/node.json");
    let result = (|| -> anyhow::Result<()> {
        let info: hub_protocol::NodeInfo = wait_for("node.json", Duration::from_secs(60), || {
            Ok(std::fs::read(&info_path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok()))
        })?;
        let token = std::fs::read_to_string(dir.path().join("rel-data/admin.token"))?;
        let token = token.trim();
        let r = http()
            .post(format!("http://{}/api/repos/create", info.http))
            .header("authorization", format!("Bearer {token}"))
            .send_json(serde_json::json!({ "name": "m" }))?;
        anyhow::ensure!(r.status() == 200, "create: {}", r.status());
        let work = dir.path().join("clone");
        let url = format!("http://admin:{token}@{}/admin/m", info.http);
        let git = |args: &[&str], cwd: &std::path::Path| -> anyhow::Result<()> {
            let out = std::process::Command::new("git")
                .args(["-c", "user.name=t", "-c", "user.email=t@t"])
                .args(args)
                .current_dir(cwd)
                .env("GIT_TERMINAL_PROMPT", "0")
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("HOME", dir.path())
                .output()?;
            anyhow::ensure!(
                out.status.success(),
                "git {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        };
        git(
            &["clone", &url, work.to_str().unwrap_or_default()],
            dir.path(),
        )?;
        std::fs::write(work.join("a.txt"), "a")?;
        git(&["add", "a.txt"], &work)?;
        git(&["commit", "-m", "a"], &work)?;
        git(&["push", "origin", "HEAD:main"], &work)?;
        Ok(())
    })();
    child.kill().ok();
    child.wait().ok();
    result
}
