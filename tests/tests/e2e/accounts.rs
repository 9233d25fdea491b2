//! Site accounts end to end: the `user`, `org` and `token` commands against a running node,
//! `whoami-v2` with every kind of token, immediate revocation, and the admin API's refusals.

use anyhow::Context;
use hub_tests::{Node, http, hubmesh};
use serde_json::{Value, json};

/// Runs the CLI; `(success, stdout, stderr)`.
fn run(args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let out = hubmesh(args)?.output()?;
    Ok((
        out.status.success(),
        String::from_utf8(out.stdout)?,
        String::from_utf8(out.stderr)?,
    ))
}

/// Runs an account command against `node` through its data directory; fails unless it succeeds.
fn cli(node: &Node, args: &[&str]) -> anyhow::Result<String> {
    let data = node.data_dir().to_string_lossy().into_owned();
    let mut all = args.to_vec();
    all.extend(["--data", &data]);
    let (ok, out, err) = run(&all)?;
    anyhow::ensure!(ok, "hubmesh {args:?} failed:\n{err}");
    Ok(out)
}

fn whoami(node: &Node, token: &str) -> anyhow::Result<(u16, Value)> {
    let mut resp = http()
        .get(node.url("/api/whoami-v2"))
        .header("authorization", format!("Bearer {token}"))
        .call()?;
    let status = resp.status().as_u16();
    Ok((status, resp.body_mut().read_json()?))
}

fn post(
    node: &Node,
    path: &str,
    token: Option<&str>,
    body: &Value,
) -> anyhow::Result<(u16, Value)> {
    let mut req = http().post(node.url(path));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let mut resp = req.send_json(body)?;
    let status = resp.status().as_u16();
    Ok((status, resp.body_mut().read_json()?))
}

#[test]
fn cli_creates_accounts_and_tokens_that_whoami_reports() -> anyhow::Result<()> {
    let node = Node::start()?;
    assert_eq!(
        cli(&node, &["user", "add", "alice"])?.trim(),
        "created user alice"
    );
    cli(&node, &["org", "add", "acme"])?;
    cli(
        &node,
        &["org", "member", "add", "acme", "alice", "--role", "write"],
    )?;

    let write = cli(&node, &["token", "create", "alice", "--scope", "write"])?;
    let write = write.trim();
    assert!(
        write.starts_with("hf_"),
        "stdout is the token alone: {write:?}"
    );
    let read = cli(&node, &["token", "create", "alice"])?;
    let read = read.trim();
    let fine: Value = serde_json::from_str(&cli(
        &node,
        &[
            "token",
            "create",
            "alice",
            "--scope",
            "write",
            "--repo",
            "acme/m",
            "--namespace",
            "alice",
            "--name",
            "ci",
            "--json",
        ],
    )?)?;
    let fine_secret = fine["token"].as_str().context("--json carries the token")?;
    assert_eq!(fine["role"], "fineGrained");
    assert_eq!(
        fine["grants"],
        json!([
            {"target": "model/acme/m", "access": "write"},
            {"target": "alice", "access": "write"}
        ])
    );

    for (token, role) in [
        (write, "write"),
        (read, "read"),
        (fine_secret, "fineGrained"),
    ] {
        let (status, v) = whoami(&node, token)?;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["name"], "alice");
        assert_eq!(v["orgs"][0]["name"], "acme", "{v}");
        assert_eq!(v["orgs"][0]["roleInOrg"], "write", "{v}");
        assert_eq!(v["auth"]["accessToken"]["role"], role, "{v}");
    }
    let (_, v) = whoami(&node, fine_secret)?;
    assert_eq!(v["auth"]["accessToken"]["displayName"], "ci");

    let listed: Value = serde_json::from_str(&cli(&node, &["token", "list", "alice", "--json"])?)?;
    assert_eq!(listed.as_array().map(Vec::len), Some(3), "{listed}");
    let text = listed.to_string();
    for secret in [write, read, fine_secret] {
        assert!(!text.contains(secret), "a listing shows a secret: {text}");
    }
    let text = cli(&node, &["token", "list", "alice"])?;
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(!text.contains(write), "{text}");
    Ok(())
}

#[test]
fn revoked_tokens_fail_at_once() -> anyhow::Result<()> {
    let node = Node::start()?;
    cli(&node, &["user", "add", "bob"])?;
    let created: Value = serde_json::from_str(&cli(
        &node,
        &["token", "create", "bob", "--scope", "write", "--json"],
    )?)?;
    let secret = created["token"].as_str().context("token")?;
    let id = created["id"].as_str().context("id")?;
    assert_eq!(whoami(&node, secret)?.0, 200);

    let out = cli(&node, &["token", "revoke", id])?;
    assert!(out.contains(id), "{out}");
    let (status, body) = whoami(&node, secret)?;
    assert_eq!(status, 401, "the very next request fails: {body}");
    assert!(!body.to_string().contains(secret));

    let data = node.data_dir().to_string_lossy().into_owned();
    let (ok, _, err) = run(&["token", "revoke", id, "--data", &data])?;
    assert!(!ok, "revoking twice fails");
    assert!(err.contains("404"), "{err}");
    // The admin's own token still works.
    assert_eq!(whoami(&node, &node.admin_token()?)?.0, 200);
    Ok(())
}

#[test]
fn admin_api_refuses_everyone_but_site_admins() -> anyhow::Result<()> {
    let node = Node::start()?;
    cli(&node, &["user", "add", "mallory"])?;
    let token = cli(&node, &["token", "create", "mallory", "--scope", "write"])?;
    let token = token.trim();

    let (status, v) = post(&node, "/api/admin/users", None, &json!({"name": "eve"}))?;
    assert_eq!(status, 401, "{v}");
    let (status, v) = post(
        &node,
        "/api/admin/users",
        Some(token),
        &json!({"name": "eve"}),
    )?;
    assert_eq!(status, 403, "{v}");
    let (status, v) = post(
        &node,
        "/api/admin/tokens",
        Some(token),
        &json!({"user": "admin", "scope": "write"}),
    )?;
    assert_eq!(status, 403, "{v}");
    assert!(v.get("token").is_none());

    // The CLI with an explicit node and a non-admin token explains the refusal.
    let url = node.url("");
    let (ok, _, err) = run(&["org", "add", "evil", "--node", &url, "--token", token])?;
    assert!(!ok);
    assert!(err.contains("403"), "{err}");
    assert!(!err.contains(token), "errors never show the token: {err}");

    // Names are shared between users and orgs.
    let data = node.data_dir().to_string_lossy().into_owned();
    let (ok, _, err) = run(&["org", "add", "mallory", "--data", &data])?;
    assert!(!ok);
    assert!(err.contains("409") && err.contains("taken"), "{err}");
    Ok(())
}

#[test]
fn cli_explains_when_no_node_runs() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().to_string_lossy().into_owned();
    let (ok, out, err) = run(&["user", "add", "alice", "--data", &data])?;
    assert!(!ok);
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("no running node") && err.contains("node.json"),
        "{err}"
    );

    // A port nobody listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let (ok, _, err) = run(&["token", "revoke", "abc", "--node", &url, "--token", "hf_x"])?;
    assert!(!ok);
    assert!(err.contains("cannot reach the node"), "{err}");
    Ok(())
}
