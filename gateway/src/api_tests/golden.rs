//! Golden tests for the Hub API responses whose exact shape clients parse: each response is
//! normalised (commit ids, dates and the fixture's token vary from run to run, signed LFS
//! URLs carry an expiry and a MAC) and compared with a committed file under `gateway/tests/golden/`. A refactor that
//! renames, drops or reshapes a field, a status or an error header fails here.
//!
//! A change that is meant regenerates the files, to be reviewed like code:
//!
//! ```text
//! HUBMESH_BLESS=1 cargo nextest run --workspace -E 'package(hub-gateway) and test(golden)'
//! ```
//!
//! Without `HUBMESH_BLESS` a missing golden file is a failure, never silently created.

use super::{commit, create, file_line, header_line};
use crate::testing::{Fixture, Reply, fixture, send};
use serde_json::{Map, Value, json};
use std::path::PathBuf;

/// The response headers a golden file records, when present.
const HEADERS: &[&str] = &[
    "content-type",
    "x-error-code",
    "x-error-message",
    "x-repo-commit",
    "www-authenticate",
    "lfs-authenticate",
    "link",
    "retry-after",
];

fn blessing() -> bool {
    std::env::var_os("HUBMESH_BLESS").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Replaces every run of exactly 40 hex digits (a commit or tree id) with `<oid>`.
fn mask_oids(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < bytes.len() {
        let run = bytes[i..]
            .iter()
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        if run == 0 {
            let c = s[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        } else {
            out.push_str(if run == 40 { "<oid>" } else { &s[i..i + run] });
            i += run;
        }
    }
    out
}

/// `2026-12-07T04:51:39.000Z` → `<date>`.
fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 24
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[23] == b'Z'
}

/// `…&exp=1765090000&sig=ab12…` → `…&exp=<exp>&sig=<sig>`.
fn mask_signed_url(s: &str) -> String {
    let Some(at) = s.find("&exp=") else {
        return s.to_owned();
    };
    format!("{}&exp=<exp>&sig=<sig>", &s[..at])
}

fn normalise(v: &Value) -> Value {
    match v {
        Value::String(s) if is_date(s) => json!("<date>"),
        // The fixture's admin token is random: only its place in the answer matters.
        Value::String(s) if s.starts_with("Bearer hf_") => json!("Bearer <token>"),
        Value::String(s) => json!(mask_signed_url(&mask_oids(s))),
        Value::Array(items) => Value::Array(items.iter().map(normalise).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), normalise(v)))
                .collect::<Map<_, _>>(),
        ),
        other => other.clone(),
    }
}

/// A response as its golden file holds it: status, the recorded headers, the body (JSON when
/// it parses, else text), normalised.
fn snapshot(r: &Reply) -> Value {
    let headers: Map<String, Value> = HEADERS
        .iter()
        .filter_map(|h| r.header(h).map(|v| ((*h).to_owned(), json!(v))))
        .collect();
    let body = serde_json::from_slice::<Value>(&r.body).unwrap_or_else(|_| json!(r.text()));
    normalise(&json!({
        "status": r.status.as_u16(),
        "headers": headers,
        "body": body,
    }))
}

fn golden(name: &str, r: &Reply) {
    let path = manifest_dir()
        .join("tests/golden")
        .join(format!("{name}.json"));
    let now = serde_json::to_string_pretty(&snapshot(r)).unwrap() + "\n";
    if blessing() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &now).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "golden file {} unreadable ({e}); HUBMESH_BLESS=1 creates it",
            path.display()
        )
    });
    assert!(
        committed == now,
        "{name}: the response changed.\ncommitted:\n{committed}now:\n{now}(if meant, regenerate with HUBMESH_BLESS=1)"
    );
}

/// A model repo with a README (card data), a text file in a folder, and a binary file the
/// commit stores in LFS.
async fn model(f: &Fixture) -> Reply {
    assert_eq!(create(f, "golden", json!({})).await.status, 200);
    let readme = b"---\nlicense: mit\ntags:\n- golden\npipeline_tag: text-generation\nlibrary_name: transformers\n---\n# Golden\n";
    let mut weights = vec![0u8; 2048];
    weights[..8].copy_from_slice(b"\x10\0\0\0\0\0\0\0");
    let r = commit(
        f,
        "admin/golden",
        "main",
        &[
            header_line(),
            file_line("README.md", readme),
            file_line("config/config.json", b"{\"hidden_size\": 8}\n"),
            file_line("model.safetensors", &weights),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r
}

#[tokio::test]
async fn golden_hub_responses() {
    let f = fixture().await;
    let committed = model(&f).await;
    golden("commit_response", &committed);

    let get = |uri: &'static str| send(&f.app, "GET", uri, Some(&f.admin), &[], "");
    golden("model_info", &get("/api/models/admin/golden").await);
    golden(
        "model_info_blobs",
        &get("/api/models/admin/golden?blobs=true").await,
    );
    golden(
        "tree_recursive",
        &get("/api/models/admin/golden/tree/main?recursive=true").await,
    );
    golden("refs", &get("/api/models/admin/golden/refs").await);
    golden(
        "commits",
        &get("/api/models/admin/golden/commits/main").await,
    );

    let paths_info = send(
        &f.app,
        "POST",
        "/api/models/admin/golden/paths-info/main",
        Some(&f.admin),
        &[("content-type", "application/x-www-form-urlencoded")],
        "paths=model.safetensors&paths=config&paths=missing.txt&expand=true",
    )
    .await;
    golden("paths_info", &paths_info);

    let oid = "4f".repeat(32);
    let batch = json!({
        "operation": "upload",
        "transfers": ["basic"],
        "objects": [{ "oid": oid, "size": 5 }, { "oid": "not-an-oid", "size": 1 }],
    });
    let lfs = |authed: bool| {
        send(
            &f.app,
            "POST",
            "/admin/golden.git/info/lfs/objects/batch",
            authed.then_some(f.admin.as_str()),
            &[
                ("content-type", "application/vnd.git-lfs+json"),
                ("accept", "application/vnd.git-lfs+json"),
            ],
            batch.to_string(),
        )
    };
    golden("lfs_batch_upload", &lfs(true).await);
    // The LFS family's error shape: `{"message"}`, git-lfs's content type, Basic challenges.
    golden("lfs_batch_error_unauthenticated", &lfs(false).await);
}

#[tokio::test]
async fn golden_hub_errors() {
    let f = fixture().await;
    model(&f).await;
    let get = |uri: &'static str| send(&f.app, "GET", uri, Some(&f.admin), &[], "");
    golden("error_repo_not_found", &get("/api/models/admin/nope").await);
    golden(
        "error_revision_not_found",
        &get("/api/models/admin/golden/revision/nope").await,
    );
    // EntryNotFound carries the commit it looked at, for clients that cache absences.
    golden(
        "error_entry_not_found",
        &get("/admin/golden/resolve/main/missing.txt").await,
    );
    let anonymous = send(
        &f.app,
        "GET",
        "/api/whoami-v2",
        Some("hf_not_a_token"),
        &[],
        "",
    )
    .await;
    golden("error_unauthorized", &anonymous);
}

#[tokio::test]
async fn golden_refusals_of_writes_hosted_elsewhere_per_api_family() {
    let mesh = std::sync::Arc::new(hub_core::FakeMesh::new());
    let f = crate::testing::fixture_with_mesh(mesh.clone()).await;
    mesh.host_elsewhere("bob", &["12D3KooWHost"]);
    // The Hub API: 403 with its own X-Error-Code.
    let r = send(
        &f.app,
        "POST",
        "/api/repos/create",
        Some(&f.admin),
        &[("content-type", "application/json")],
        json!({ "name": "x", "organization": "bob" }).to_string(),
    )
    .await;
    golden("error_hosted_elsewhere_hub", &r);
    // git smart HTTP: the message as plain text, which git prints as `remote: …`.
    let r = send(
        &f.app,
        "GET",
        "/bob/x.git/info/refs?service=git-receive-pack",
        Some(&f.admin),
        &[],
        "",
    )
    .await;
    golden("error_hosted_elsewhere_git", &r);
    // git smart HTTP: an anonymous push is challenged with Basic.
    let r = send(
        &f.app,
        "GET",
        "/admin/x.git/info/refs?service=git-receive-pack",
        None,
        &[],
        "",
    )
    .await;
    golden("error_git_unauthenticated", &r);
}

/// The package's directory as Cargo or nextest gives it when the test runs, so a test binary
/// built from one checkout and reused from another (same target dir) reads this checkout's files.
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}
