//! Router tests, in-process, for every Hub API endpoint's success and error paths. The
//! real-client tests (tests/py) show the same behaviour end to end; these pin the exact
//! statuses, headers and bodies and run in milliseconds.

mod golden;

use crate::GatewayConfig;
use crate::testing::{Fixture, Reply, fixture, fixture_with, fixture_with_mesh, send};
use base64::Engine;
use hub_auth::{Permissions, Scope};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::sync::Arc;

const UA_2X: (&str, &str) = ("user-agent", "huggingface_hub/2.4.0; python/3.11.7");
const UA_0X: (&str, &str) = ("user-agent", "unknown/None; hf_hub/0.36.2; python/3.11.7");

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn git_blob_sha1(bytes: &[u8]) -> String {
    use sha1_like::git_sha1;
    git_sha1(bytes)
}

/// git's blob id, computed independently of gix (SHA-1 over `blob <len>\0<bytes>`).
mod sha1_like {
    pub fn git_sha1(bytes: &[u8]) -> String {
        let out = std::process::Command::new("git")
            .args(["hash-object", "--stdin"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(bytes)?;
                child.wait_with_output()
            })
            .expect("run git hash-object");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }
}

async fn create(f: &Fixture, name: &str, extra: Value) -> Reply {
    let mut body = json!({ "name": name, "organization": null });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    send(
        &f.app,
        "POST",
        "/api/repos/create",
        Some(&f.admin),
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await
}

fn ndjson(lines: &[Value]) -> String {
    lines.iter().map(|l| format!("{l}\n")).collect()
}

async fn commit(f: &Fixture, repo: &str, branch: &str, lines: &[Value]) -> Reply {
    send(
        &f.app,
        "POST",
        &format!("/api/models/{repo}/commit/{branch}"),
        Some(&f.admin),
        &[("content-type", "application/x-ndjson")],
        ndjson(lines),
    )
    .await
}

fn header_line() -> Value {
    json!({ "key": "header", "value": { "summary": "test commit", "description": "" } })
}

fn file_line(path: &str, bytes: &[u8]) -> Value {
    json!({ "key": "file", "value": { "content": b64(bytes), "path": path, "encoding": "base64" } })
}

fn token(f: &Fixture, user: &str, scope: Scope) -> String {
    let auth = f.state.auth();
    if auth.user(user).unwrap().is_none() {
        auth.create_user(&hub_protocol::name::Name::new(user).unwrap(), None)
            .unwrap();
    }
    auth.create_token(user, "test", Permissions::Scope(scope))
        .unwrap()
        .1
        .expose()
        .to_owned()
}

#[tokio::test]
async fn create_repo_and_its_errors() {
    let f = fixture().await;
    let r = create(&f, "m1", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["url"], "http://localhost/admin/m1");
    let again = create(&f, "m1", json!({})).await;
    assert_eq!(again.status, 409);
    assert_eq!(
        again.json()["url"],
        "http://localhost/admin/m1",
        "exist_ok reads url from the 409"
    );
    let ds = create(
        &f,
        "d1",
        json!({ "type": "dataset", "visibility": "private" }),
    )
    .await;
    assert_eq!(ds.json()["url"], "http://localhost/datasets/admin/d1");
    for bad in [
        json!({ "name": "..", "organization": null }),
        json!({ "name": "a/b" }),
        json!({ "name": "x".repeat(97) }),
    ] {
        let r = send(
            &f.app,
            "POST",
            "/api/repos/create",
            Some(&f.admin),
            &[],
            bad.to_string(),
        )
        .await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    let r = create(
        &f,
        "both",
        json!({ "private": true, "visibility": "public" }),
    )
    .await;
    assert_eq!(r.status, 400);
    let r = send(
        &f.app,
        "POST",
        "/api/repos/create",
        None,
        &[],
        json!({ "name": "anon" }).to_string(),
    )
    .await;
    assert_eq!(r.status, 401);
    let read = token(&f, "bob", Scope::Read);
    let r = send(
        &f.app,
        "POST",
        "/api/repos/create",
        Some(&read),
        &[],
        json!({ "name": "m" }).to_string(),
    )
    .await;
    assert_eq!(r.status, 403, "read tokens cannot create");
    let write = token(&f, "bob", Scope::Write);
    let r = send(
        &f.app,
        "POST",
        "/api/repos/create",
        Some(&write),
        &[],
        json!({ "name": "m", "organization": "admin" }).to_string(),
    )
    .await;
    assert_eq!(r.status, 403, "not in someone else's namespace");
    let r = send(
        &f.app,
        "POST",
        "/api/repos/create",
        Some(&f.admin),
        &[],
        json!({ "name": "m", "organization": "ghost" }).to_string(),
    )
    .await;
    assert_eq!(r.status, 403, "unknown namespace: {}", r.text());
    let r = send(
        &f.app,
        "POST",
        "/api/repos/create",
        Some(&f.admin),
        &[],
        "{not json",
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("invalid JSON"));
}

#[tokio::test]
async fn info_tree_refs_commits() {
    let f = fixture().await;
    create(&f, "m", json!({})).await;
    let readme = "---\nlicense: mit\ntags: [demo]\npipeline_tag: text-generation\n---\n# M\n";
    let c = commit(
        &f,
        "admin/m",
        "main",
        &[
            header_line(),
            file_line("README.md", readme.as_bytes()),
            file_line("f/sub/a.txt", b"aaa"),
            file_line("w.bin", b"\0\x01binary"),
        ],
    )
    .await;
    assert_eq!(c.status, 200, "{}", c.text());
    let sha = c.json()["commitOid"].as_str().unwrap().to_owned();
    assert_eq!(
        c.json()["commitUrl"],
        format!("http://localhost/admin/m/commit/{sha}")
    );

    let info = send(
        &f.app,
        "GET",
        "/api/models/admin/m?blobs=true",
        None,
        &[],
        "",
    )
    .await
    .json();
    assert_eq!(info["id"], "admin/m");
    assert_eq!(info["sha"], sha);
    assert_eq!(info["private"], false);
    assert_eq!(info["cardData"]["license"], "mit");
    assert!(
        info["tags"]
            .as_array()
            .unwrap()
            .contains(&json!("license:mit"))
    );
    assert_eq!(info["pipeline_tag"], "text-generation");
    assert!(info["lastModified"].as_str().unwrap().ends_with('Z'));
    let sib: Vec<&Value> = info["siblings"].as_array().unwrap().iter().collect();
    let a = sib
        .iter()
        .find(|s| s["rfilename"] == "f/sub/a.txt")
        .unwrap();
    assert_eq!(a["blobId"], git_blob_sha1(b"aaa"));
    assert_eq!(a["size"], 3);
    let w = sib.iter().find(|s| s["rfilename"] == "w.bin").unwrap();
    assert_eq!(
        w["lfs"]["sha256"],
        sha256_hex(b"\0\x01binary"),
        "binary content goes to LFS"
    );
    assert_eq!(
        send(
            &f.app,
            "GET",
            &format!("/api/models/admin/m/revision/{sha}"),
            None,
            &[],
            ""
        )
        .await
        .json()["sha"],
        sha
    );

    let r = send(&f.app, "GET", "/api/models/admin/nope", None, &[], "").await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-error-code")),
        (404, Some("RepoNotFound"))
    );
    let r = send(
        &f.app,
        "GET",
        "/api/models/admin/m/revision/nope",
        None,
        &[],
        "",
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-error-code")),
        (404, Some("RevisionNotFound"))
    );
    let r = send(&f.app, "GET", "/api/bogus/admin/m", None, &[], "").await;
    assert_eq!(r.status, 404);

    let tree = send(
        &f.app,
        "GET",
        "/api/models/admin/m/tree/main/f%2Fsub?recursive=false",
        None,
        &[],
        "",
    )
    .await
    .json();
    assert_eq!(
        tree,
        json!([{ "type": "file", "oid": git_blob_sha1(b"aaa"), "size": 3, "path": "f/sub/a.txt" }])
    );
    let all = send(
        &f.app,
        "GET",
        "/api/models/admin/m/tree/main?recursive=True",
        None,
        &[],
        "",
    )
    .await
    .json();
    let paths: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            ".gitattributes",
            "README.md",
            "f",
            "f/sub",
            "f/sub/a.txt",
            "w.bin"
        ]
    );
    let w = all
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "w.bin")
        .unwrap();
    assert_eq!(w["size"], 8);
    assert_eq!(w["lfs"]["oid"], sha256_hex(b"\0\x01binary"));
    assert!(w.get("xetHash").is_none());
    let r = send(
        &f.app,
        "GET",
        "/api/models/admin/m/tree/main/nope",
        None,
        &[],
        "",
    )
    .await;
    assert_eq!(
        (
            r.status.as_u16(),
            r.header("x-error-code"),
            r.header("x-repo-commit")
        ),
        (404, Some("EntryNotFound"), Some(sha.as_str()))
    );

    let refs = send(
        &f.app,
        "GET",
        "/api/models/admin/m/refs?include_prs=1",
        None,
        &[],
        "",
    )
    .await
    .json();
    assert_eq!(
        refs["branches"],
        json!([{ "name": "main", "ref": "refs/heads/main", "targetCommit": sha }])
    );
    assert_eq!(refs["converts"], json!([]));
    assert_eq!(refs["pullRequests"], json!([]));
    let log = send(
        &f.app,
        "GET",
        "/api/models/admin/m/commits/main",
        None,
        &[],
        "",
    )
    .await
    .json();
    assert_eq!(log[0]["id"], sha);
    assert_eq!(log[0]["title"], "test commit");
    assert_eq!(log[0]["authors"], json!([{ "user": "admin" }]));
    assert_eq!(log[1]["title"], "initial commit");
}

async fn head_of(f: &Fixture) -> String {
    send(&f.app, "GET", "/api/models/admin/m", None, &[], "")
        .await
        .json()["sha"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn commits_and_their_errors_change_nothing_when_refused() {
    let f = fixture().await;
    create(&f, "m", json!({})).await;
    let before = head_of(&f).await;
    let cases: Vec<(String, u16, Option<&str>)> = vec![
        (
            ndjson(&[
                header_line(),
                json!({ "key": "deletedFile", "value": { "path": "missing.txt" } }),
            ]),
            404,
            Some("EntryNotFound"),
        ),
        // Paths the Hub refuses: 422, as the Hub answers.
        (ndjson(&[header_line(), file_line("../x", b"x")]), 422, None),
        (
            ndjson(&[header_line(), file_line(".git/config", b"x")]),
            422,
            None,
        ),
        (
            ndjson(&[header_line(), file_line("/etc/x", b"x")]),
            422,
            None,
        ),
        (ndjson(&[header_line(), file_line("a\0b", b"x")]), 422, None),
        (
            format!(
                "{}{{\"key\":\"file\",\"value\":{{\"path\":\"t\",\"cont",
                ndjson(&[header_line()])
            ),
            400,
            None,
        ),
        (
            ndjson(&[
                header_line(),
                json!({ "key": "lfsFile", "value": { "path": "w.bin", "algo": "sha256", "oid": "ab".repeat(32), "size": 3 } }),
            ]),
            400,
            None,
        ),
        (
            ndjson(&[
                json!({ "key": "header", "value": { "summary": "s", "parentCommit": "0".repeat(40) } }),
                file_line("a", b"a"),
            ]),
            // A stale parent: 412 Precondition Failed, as the Hub answers.
            412,
            None,
        ),
        (ndjson(&[file_line("a", b"a")]), 400, None),
        (ndjson(&[header_line()]), 400, None),
        ("not json\n".into(), 400, None),
    ];
    for (body, status, code) in cases {
        let r = send(
            &f.app,
            "POST",
            "/api/models/admin/m/commit/main",
            Some(&f.admin),
            &[],
            body.clone(),
        )
        .await;
        assert_eq!(
            (r.status.as_u16(), r.header("x-error-code")),
            (status, code),
            "{body:?}: {}",
            r.text()
        );
        assert!(r.json()["error"].is_string());
        assert_eq!(head_of(&f).await, before, "a refused commit moves nothing");
    }
    let r = commit(
        &f,
        "admin/m",
        "nobranch",
        &[header_line(), file_line("a", b"a")],
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-error-code")),
        (404, Some("RevisionNotFound"))
    );
    let read = token(&f, "admin", Scope::Read);
    let r = send(
        &f.app,
        "POST",
        "/api/models/admin/m/commit/main",
        Some(&read),
        &[],
        ndjson(&[header_line(), file_line("a", b"a")]),
    )
    .await;
    assert_eq!(r.status, 403);
    let ok = send(
        &f.app,
        "POST",
        "/api/models/admin/m/commit/main",
        Some(&f.admin),
        &[],
        ndjson(&[
            json!({ "key": "header", "value": { "summary": "s", "parentCommit": before } }),
            file_line("a", b"a"),
        ]),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
}

#[tokio::test]
async fn branches_tags_settings_delete() {
    let f = fixture().await;
    create(&f, "m", json!({})).await;
    let post = |uri: String, body: Value| {
        let app = f.app.clone();
        let token = f.admin.clone();
        async move { send(&app, "POST", &uri, Some(&token), &[], body.to_string()).await }
    };
    assert_eq!(
        post("/api/models/admin/m/branch/dev".into(), json!({}))
            .await
            .status,
        200
    );
    assert_eq!(
        post("/api/models/admin/m/branch/dev".into(), json!({}))
            .await
            .status,
        409
    );
    assert_eq!(
        post(
            "/api/models/admin/m/branch/refs%2Fpr%2F1".into(),
            json!({ "startingPoint": "dev" })
        )
        .await
        .status,
        200
    );
    assert_eq!(
        post(
            "/api/models/admin/m/branch/x".into(),
            json!({ "startingPoint": "nope" })
        )
        .await
        .status,
        404
    );
    assert_eq!(
        post("/api/models/admin/m/branch/bad..name".into(), json!({}))
            .await
            .status,
        400
    );
    assert_eq!(
        post(
            "/api/models/admin/m/tag/main".into(),
            json!({ "tag": "v1" })
        )
        .await
        .status,
        200
    );
    assert_eq!(
        post(
            "/api/models/admin/m/tag/main".into(),
            json!({ "tag": "v1" })
        )
        .await
        .status,
        409
    );
    assert_eq!(
        post("/api/models/admin/m/tag/main".into(), json!({}))
            .await
            .status,
        400
    );
    let refs = send(&f.app, "GET", "/api/models/admin/m/refs", None, &[], "")
        .await
        .json();
    assert_eq!(refs["tags"][0]["name"], "v1");
    let del = |uri: &'static str| send(&f.app, "DELETE", uri, Some(&f.admin), &[], "");
    assert_eq!(del("/api/models/admin/m/tag/v1").await.status, 200);
    assert_eq!(
        del("/api/models/admin/m/tag/v1")
            .await
            .header("x-error-code"),
        Some("RevisionNotFound")
    );
    assert_eq!(del("/api/models/admin/m/branch/dev").await.status, 200);
    assert_eq!(del("/api/models/admin/m/branch/main").await.status, 400);

    // Visibility: private hides the repo from everyone else, on every route.
    let r = send(
        &f.app,
        "PUT",
        "/api/models/admin/m/settings",
        Some(&f.admin),
        &[],
        json!({ "visibility": "private" }).to_string(),
    )
    .await;
    assert_eq!(r.status, 200);
    for uri in [
        "/api/models/admin/m",
        "/api/models/admin/m/tree/main",
        "/api/models/admin/m/refs",
        "/admin/m/resolve/main/.gitattributes",
    ] {
        let r = send(&f.app, "GET", uri, None, &[], "").await;
        assert_eq!(
            (r.status.as_u16(), r.header("x-error-code")),
            (404, Some("RepoNotFound")),
            "{uri}"
        );
    }
    let bob = token(&f, "bob", Scope::Write);
    let r = send(&f.app, "GET", "/api/models/admin/m", Some(&bob), &[], "").await;
    assert_eq!(r.status, 404);
    assert_eq!(
        send(
            &f.app,
            "GET",
            "/api/models/admin/m",
            Some(&f.admin),
            &[],
            ""
        )
        .await
        .json()["private"],
        true
    );
    let r = send(
        &f.app,
        "PUT",
        "/api/models/admin/m/settings",
        None,
        &[],
        json!({ "private": false }).to_string(),
    )
    .await;
    assert_eq!(r.status, 401);
    let r = send(
        &f.app,
        "PUT",
        "/api/models/admin/m/settings",
        Some(&f.admin),
        &[],
        json!({ "private": false }).to_string(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        send(&f.app, "GET", "/api/models/admin/m", None, &[], "")
            .await
            .json()["private"],
        false
    );

    let r = send(
        &f.app,
        "DELETE",
        "/api/repos/delete",
        Some(&bob),
        &[],
        json!({ "name": "m", "organization": "admin" }).to_string(),
    )
    .await;
    assert_eq!(r.status, 403);
    let r = send(
        &f.app,
        "DELETE",
        "/api/repos/delete",
        Some(&f.admin),
        &[],
        json!({ "name": "m", "organization": "admin" }).to_string(),
    )
    .await;
    assert_eq!(r.status, 200);
    let r = send(
        &f.app,
        "DELETE",
        "/api/repos/delete",
        Some(&f.admin),
        &[],
        json!({ "name": "m", "organization": "admin" }).to_string(),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.header("x-error-code")),
        (404, Some("RepoNotFound"))
    );
}

#[tokio::test]
async fn validate_yaml_and_preupload() {
    let f = fixture().await;
    create(&f, "m", json!({})).await;
    let ok = send(
        &f.app,
        "POST",
        "/api/validate-yaml",
        None,
        &[],
        json!({ "content": "---\nlicense: mit\n---\n", "repoType": "model" }).to_string(),
    )
    .await;
    assert_eq!(
        (ok.status.as_u16(), ok.json()),
        (200, json!({ "errors": [], "warnings": [] }))
    );
    let bad = send(
        &f.app,
        "POST",
        "/api/validate-yaml",
        None,
        &[],
        json!({ "content": "---\nlicense: [mit\n---\n" }).to_string(),
    )
    .await;
    assert_eq!(bad.status, 400);
    assert!(bad.json()["errors"][0]["message"].is_string());

    let files = json!({ "files": [
        { "path": "model.safetensors", "sample": b64(b"x"), "size": 100 },
        { "path": "notes.txt", "sample": b64(b"hello"), "size": 5 },
        { "path": "blob.dat", "sample": b64(b"\0\0"), "size": 2 },
    ] })
    .to_string();
    let modes = |r: Reply| -> Vec<(String, String)> {
        r.json()["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                assert_eq!(f["shouldIgnore"], false);
                (
                    f["path"].as_str().unwrap().to_owned(),
                    f["uploadMode"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    // Every client gets the Hub's answer: `lfs` by the repo's LFS rules (2.x clients then
    // upload through Xet, 0.x through the LFS batch API), `regular` for the rest.
    for ua in [UA_2X, UA_0X] {
        let r = send(
            &f.app,
            "POST",
            "/api/models/admin/m/preupload/main",
            Some(&f.admin),
            &[ua],
            files.clone(),
        )
        .await;
        assert_eq!(
            modes(r),
            [
                ("model.safetensors".into(), "lfs".into()),
                ("notes.txt".into(), "regular".into()),
                ("blob.dat".into(), "lfs".into())
            ]
        );
    }
    let r = send(
        &f.app,
        "POST",
        "/api/models/admin/m/preupload/main",
        Some(&f.admin),
        &[],
        json!({ "files": [{ "path": "../x", "sample": "", "size": 1 }] }).to_string(),
    )
    .await;
    assert_eq!(r.status, 400);
    let r = send(
        &f.app,
        "POST",
        "/api/models/admin/m/preupload/nope",
        Some(&f.admin),
        &[],
        files,
    )
    .await;
    assert_eq!(r.header("x-error-code"), Some("RevisionNotFound"));
}

#[tokio::test]
async fn resolve_regular_and_lfs_with_ranges() {
    let f = fixture().await;
    create(&f, "m", json!({})).await;
    let weights: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let c = commit(
        &f,
        "admin/m",
        "main",
        &[
            header_line(),
            file_line("config.json", b"{\"a\": 1}\n"),
            file_line("w.safetensors", &weights),
        ],
    )
    .await;
    let sha = c.json()["commitOid"].as_str().unwrap().to_owned();

    let head = send(
        &f.app,
        "HEAD",
        "/admin/m/resolve/main/config.json",
        None,
        &[],
        "",
    )
    .await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("x-repo-commit"), Some(sha.as_str()));
    assert_eq!(
        head.header("etag"),
        Some(format!("\"{}\"", git_blob_sha1(b"{\"a\": 1}\n")).as_str())
    );
    assert_eq!(
        head.header("content-length"),
        Some("9"),
        "HEAD keeps the real length"
    );
    assert!(head.body.is_empty());
    let get = send(
        &f.app,
        "GET",
        "/admin/m/resolve/main/config.json",
        None,
        &[],
        "",
    )
    .await;
    assert_eq!(&get.body[..], b"{\"a\": 1}\n");

    let head = send(
        &f.app,
        "HEAD",
        "/admin/m/resolve/main/w.safetensors",
        None,
        &[],
        "",
    )
    .await;
    assert_eq!(
        head.header("x-linked-etag"),
        Some(format!("\"{}\"", sha256_hex(&weights)).as_str())
    );
    assert_eq!(head.header("x-linked-size"), Some("300000"));
    assert_eq!(head.header("content-length"), Some("300000"));
    let get = send(
        &f.app,
        "GET",
        &format!("/admin/m/resolve/{sha}/w.safetensors"),
        None,
        &[],
        "",
    )
    .await;
    assert_eq!(get.body.len(), weights.len());
    assert!(get.body[..] == weights[..]);
    let part = send(
        &f.app,
        "GET",
        "/admin/m/resolve/main/w.safetensors",
        None,
        &[("range", "bytes=1000-1999")],
        "",
    )
    .await;
    assert_eq!(part.status, 206);
    assert_eq!(part.header("content-range"), Some("bytes 1000-1999/300000"));
    assert!(part.body[..] == weights[1000..2000]);
    let tail = send(
        &f.app,
        "GET",
        "/admin/m/resolve/main/config.json",
        None,
        &[("range", "bytes=5-")],
        "",
    )
    .await;
    assert_eq!((tail.status.as_u16(), &tail.body[..]), (206, &b" 1}\n"[..]));
    let past = send(
        &f.app,
        "GET",
        "/admin/m/resolve/main/w.safetensors",
        None,
        &[("range", "bytes=300000-")],
        "",
    )
    .await;
    assert_eq!(
        (past.status.as_u16(), past.header("content-range")),
        (416, Some("bytes */300000"))
    );

    let r = send(
        &f.app,
        "HEAD",
        "/admin/m/resolve/main/missing.txt",
        None,
        &[],
        "",
    )
    .await;
    assert_eq!(
        (
            r.status.as_u16(),
            r.header("x-error-code"),
            r.header("x-repo-commit")
        ),
        (404, Some("EntryNotFound"), Some(sha.as_str()))
    );
    let r = send(
        &f.app,
        "HEAD",
        "/admin/m/resolve/nobranch/config.json",
        None,
        &[],
        "",
    )
    .await;
    assert_eq!(r.header("x-error-code"), Some("RevisionNotFound"));
    let r = send(
        &f.app,
        "HEAD",
        "/admin/nope/resolve/main/config.json",
        None,
        &[],
        "",
    )
    .await;
    assert_eq!(r.header("x-error-code"), Some("RepoNotFound"));
    let r = send(
        &f.app,
        "GET",
        "/admin/m/resolve/main/config.json",
        Some("hf_bad"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 401, "a token that is sent must be valid");

    // Download counting: the query file counts, others do not.
    let before = send(&f.app, "GET", "/api/models/admin/m", None, &[], "")
        .await
        .json()["downloads"]
        .as_u64()
        .unwrap();
    send(
        &f.app,
        "GET",
        "/admin/m/resolve/main/w.safetensors",
        None,
        &[],
        "",
    )
    .await;
    send(
        &f.app,
        "GET",
        "/admin/m/resolve/main/config.json",
        None,
        &[],
        "",
    )
    .await;
    let after = send(&f.app, "GET", "/api/models/admin/m", None, &[], "")
        .await
        .json()["downloads"]
        .as_u64()
        .unwrap();
    assert_eq!(after, before + 1);
}

#[tokio::test]
async fn listing_paginates_with_absolute_links() {
    let f = fixture_with(GatewayConfig {
        list_page_size: 2,
        ..GatewayConfig::default()
    })
    .await;
    for name in ["a-one", "b-two", "c-three", "other"] {
        create(&f, name, json!({})).await;
    }
    create(&f, "hidden", json!({ "private": true })).await;
    let first = send(
        &f.app,
        "GET",
        "/api/models?search=-&sort=createdAt",
        None,
        &[("host", "hub.test:8080")],
        "",
    )
    .await;
    let page: Vec<String> = first
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(page.len(), 2);
    let link = first.header("link").unwrap().to_owned();
    assert!(
        link.starts_with("<http://hub.test:8080/api/models?"),
        "{link}"
    );
    assert!(
        link.contains("search=-") && link.contains("cursor=2") && link.ends_with("rel=\"next\""),
        "{link}"
    );
    let next = link
        .trim_start_matches("<http://hub.test:8080")
        .split('>')
        .next()
        .unwrap()
        .to_owned();
    let second = send(&f.app, "GET", &next, None, &[], "").await;
    let rest: Vec<String> = second
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(rest.len(), 1);
    assert!(second.header("link").is_none());
    let mut all = [page, rest].concat();
    all.sort();
    assert_eq!(all, ["admin/a-one", "admin/b-two", "admin/c-three"]);
    let anon = send(
        &f.app,
        "GET",
        "/api/models?author=admin&limit=10",
        None,
        &[],
        "",
    )
    .await
    .json();
    assert!(
        anon.as_array()
            .unwrap()
            .iter()
            .all(|m| m["id"] != "admin/hidden")
    );
    let mine = send(
        &f.app,
        "GET",
        "/api/models?search=hidden",
        Some(&f.admin),
        &[],
        "",
    )
    .await
    .json();
    assert_eq!(mine[0]["id"], "admin/hidden");
    assert_eq!(
        send(&f.app, "GET", "/api/models?sort=bogus", None, &[], "")
            .await
            .status,
        400
    );
    assert_eq!(
        send(&f.app, "GET", "/api/datasets", None, &[], "")
            .await
            .json(),
        json!([])
    );
}

#[tokio::test]
async fn lfs_batch_upload_verify_commit_and_download() {
    let f = fixture().await;
    create(&f, "m", json!({})).await;
    let data = b"large file content".repeat(10_000);
    let oid = sha256_hex(&data);
    let batch = |op: &str, token: Option<&str>| {
        let body = json!({ "operation": op, "transfers": ["basic", "multipart"], "objects": [{ "oid": oid, "size": data.len() }], "hash_algo": "sha256" }).to_string();
        let app = f.app.clone();
        let token = token.map(str::to_owned);
        async move {
            send(
                &app,
                "POST",
                "/admin/m.git/info/lfs/objects/batch",
                token.as_deref(),
                &[("content-type", "application/vnd.git-lfs+json")],
                body,
            )
            .await
        }
    };
    let r = batch("upload", None).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("lfs-authenticate"),
        Some("Basic realm=\"hubmesh\"")
    );
    assert!(r.json()["message"].is_string());
    let r = batch("upload", Some(&f.admin)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let obj = &r.json()["objects"][0];
    let href = obj["actions"]["upload"]["href"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://localhost")
        .to_owned();
    assert!(
        obj["actions"]["verify"]["href"]
            .as_str()
            .unwrap()
            .ends_with("/admin/m.git/info/lfs/objects/verify")
    );
    // A tampered signature, and content that is not the object, are refused.
    let forged = href.replace("sig=", "sig=00");
    assert_eq!(
        send(&f.app, "PUT", &forged, None, &[], data.clone())
            .await
            .status,
        403
    );
    let mut wrong = data.clone();
    wrong[0] ^= 1;
    assert_eq!(
        send(&f.app, "PUT", &href, None, &[], wrong).await.status,
        400
    );
    let stats = f.state.store().stats().unwrap();
    assert_eq!(
        (stats.files, stats.blocks),
        (0, 0),
        "a rejected upload left data in the store"
    );
    let verify = json!({ "oid": oid, "size": data.len() }).to_string();
    let r = send(
        &f.app,
        "POST",
        "/admin/m.git/info/lfs/objects/verify",
        Some(&f.admin),
        &[],
        verify.clone(),
    )
    .await;
    assert_eq!(r.status, 404, "nothing stored yet");
    assert_eq!(
        send(&f.app, "PUT", &href, None, &[], data.clone())
            .await
            .status,
        200
    );
    assert_eq!(
        send(
            &f.app,
            "POST",
            "/admin/m.git/info/lfs/objects/verify",
            Some(&f.admin),
            &[],
            verify
        )
        .await
        .status,
        200
    );
    let again = batch("upload", Some(&f.admin)).await.json();
    assert!(
        again["objects"][0].get("actions").is_none(),
        "stored objects need no upload"
    );

    let c = commit(&f, "admin/m", "main", &[header_line(), json!({ "key": "lfsFile", "value": { "path": "big.bin", "algo": "sha256", "oid": oid, "size": data.len() } })]).await;
    assert_eq!(c.status, 200, "{}", c.text());
    let got = send(
        &f.app,
        "GET",
        "/admin/m/resolve/main/big.bin",
        None,
        &[],
        "",
    )
    .await;
    assert!(got.body[..] == data[..]);

    let dl = batch("download", Some(&f.admin)).await.json();
    let href = dl["objects"][0]["actions"]["download"]["href"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://localhost")
        .to_owned();
    let got = send(&f.app, "GET", &href, None, &[], "").await;
    assert!(got.status == 200 && got.body[..] == data[..]);
    assert_eq!(
        send(&f.app, "PUT", &href, None, &[], data.clone())
            .await
            .status,
        403,
        "a download URL does not upload"
    );
    let locks = send(
        &f.app,
        "POST",
        "/admin/m.git/info/lfs/locks/verify",
        Some(&f.admin),
        &[],
        "{}",
    )
    .await;
    assert_eq!(locks.status, 501);
    let bad = send(
        &f.app,
        "POST",
        "/admin/m.git/info/lfs/objects/batch",
        Some(&f.admin),
        &[],
        json!({ "operation": "upload", "objects": [{ "oid": "xyz", "size": 1 }] }).to_string(),
    )
    .await;
    assert_eq!(bad.json()["objects"][0]["error"]["code"], 422);
}

#[tokio::test]
async fn paths_info_and_move() {
    let f = fixture().await;
    create(&f, "m", json!({})).await;
    commit(
        &f,
        "admin/m",
        "main",
        &[
            header_line(),
            file_line("d/a.txt", b"a"),
            file_line("w.bin", b"\0bin"),
        ],
    )
    .await;
    let form = "paths=d%2Fa.txt&paths=d&paths=w.bin&paths=missing&paths=..%2Fx&expand=false";
    let r = send(
        &f.app,
        "POST",
        "/api/models/admin/m/paths-info/main",
        None,
        &[("content-type", "application/x-www-form-urlencoded")],
        form,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let entries = r.json();
    let mut got: Vec<(String, String)> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_owned(),
                e["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("d".into(), "directory".into()),
            ("d/a.txt".into(), "file".into()),
            ("w.bin".into(), "file".into())
        ]
    );
    assert!(
        entries
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["path"] == "w.bin" && e["lfs"]["oid"] == sha256_hex(b"\0bin"))
    );
    // huggingface.js sends JSON; the answer is the same.
    let r = send(
        &f.app,
        "POST",
        "/api/models/admin/m/paths-info/main",
        None,
        &[("content-type", "application/json")],
        json!({"paths": ["d/a.txt", "d", "w.bin", "missing", "../x"], "expand": false}).to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), entries);

    let mv = |from: &str, to: &str, token: Option<&str>| {
        let body = json!({ "fromRepo": from, "toRepo": to, "type": "model" }).to_string();
        let app = f.app.clone();
        let token = token.map(str::to_owned);
        async move { send(&app, "POST", "/api/repos/move", token.as_deref(), &[], body).await }
    };
    let bob = token(&f, "bob", Scope::Write);
    assert_eq!(mv("admin/m", "bob/m", Some(&bob)).await.status, 403);
    assert_eq!(mv("admin/m", "admin/renamed", None).await.status, 401);
    assert_eq!(
        mv("admin/m", "admin/renamed", Some(&f.admin)).await.status,
        200
    );
    // The old id redirects to the new one, as the Hub's do after a rename.
    let old = send(&f.app, "GET", "/api/models/admin/m", None, &[], "").await;
    assert_eq!(
        (old.status.as_u16(), old.header("location")),
        (307, Some("/api/models/admin/renamed"))
    );
    let moved = send(
        &f.app,
        "GET",
        "/admin/renamed/resolve/main/d/a.txt",
        None,
        &[],
        "",
    )
    .await;
    assert_eq!(&moved.body[..], b"a");
    let listed = send(&f.app, "GET", "/api/models?author=admin", None, &[], "")
        .await
        .json();
    assert_eq!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["admin/renamed"]
    );
    assert_eq!(
        mv("admin/nope", "admin/x", Some(&f.admin))
            .await
            .header("x-error-code"),
        Some("RepoNotFound")
    );
    create(&f, "taken", json!({})).await;
    assert_eq!(
        mv("admin/renamed", "admin/taken", Some(&f.admin))
            .await
            .status,
        409
    );
}

#[tokio::test]
async fn knowing_a_hash_is_not_having_the_content() {
    let f = fixture().await;
    create(&f, "secret", json!({ "private": true })).await;
    let data = b"private weights".repeat(1000);
    let oid = sha256_hex(&data);
    let objects = json!([{ "oid": oid, "size": data.len() }]);
    let batch = |repo: &'static str, op: &'static str, token: String| {
        let app = f.app.clone();
        let body =
            json!({ "operation": op, "transfers": ["basic"], "objects": objects }).to_string();
        async move {
            send(
                &app,
                "POST",
                &format!("/{repo}.git/info/lfs/objects/batch"),
                Some(&token),
                &[],
                body,
            )
            .await
            .json()
        }
    };
    // The admin uploads the object to the private repo.
    let up = batch("admin/secret", "upload", f.admin.clone()).await;
    let href = up["objects"][0]["actions"]["upload"]["href"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://localhost")
        .to_owned();
    assert_eq!(
        send(&f.app, "PUT", &href, None, &[], data.clone())
            .await
            .status,
        200
    );

    // Bob knows the hash but not the content.
    let bob = token(&f, "bob", Scope::Write);
    let r = send(
        &f.app,
        "POST",
        "/api/repos/create",
        Some(&bob),
        &[],
        json!({ "name": "m" }).to_string(),
    )
    .await;
    assert_eq!(r.status, 200);
    let lfs_line = json!({ "key": "lfsFile", "value": { "path": "stolen.bin", "algo": "sha256", "oid": oid, "size": data.len() } });
    let body = ndjson(&[header_line(), lfs_line.clone()]);
    let r = send(
        &f.app,
        "POST",
        "/api/models/bob/m/commit/main",
        Some(&bob),
        &[],
        body.clone(),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("has not been uploaded to this repository")
    );
    let down = batch("bob/m", "download", bob.clone()).await;
    assert_eq!(
        down["objects"][0]["error"]["code"], 404,
        "no download through another repo"
    );
    let verify = send(
        &f.app,
        "POST",
        "/bob/m.git/info/lfs/objects/verify",
        Some(&bob),
        &[],
        json!({ "oid": oid, "size": data.len() }).to_string(),
    )
    .await;
    assert_eq!(verify.status, 404);
    // The batch answer does not reveal that the node has the object: bob must upload it.
    let up = batch("bob/m", "upload", bob.clone()).await;
    let href = up["objects"][0]["actions"]["upload"]["href"]
        .as_str()
        .expect("must upload")
        .trim_start_matches("http://localhost")
        .to_owned();
    // A URL signed for bob's repo cannot be replayed for another repo's object set.
    let forged = href.replace("repo=model%2Fbob%2Fm", "repo=model%2Fadmin%2Fsecret");
    assert_eq!(
        send(&f.app, "PUT", &forged, None, &[], data.clone())
            .await
            .status,
        403
    );
    // Once bob has sent the bytes, they are his to reference (stored once, deduplicated).
    assert_eq!(
        send(&f.app, "PUT", &href, None, &[], data.clone())
            .await
            .status,
        200
    );
    let r = send(
        &f.app,
        "POST",
        "/api/models/bob/m/commit/main",
        Some(&bob),
        &[],
        body,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

// ---- hub-core's rules, seen through the router -----------------------------------------------

fn org_member(f: &Fixture, org: &str, user: &str, role: hub_auth::Role) -> String {
    let auth = f.state.auth();
    if auth.org(org).unwrap().is_none() {
        auth.create_org(&hub_protocol::name::Name::new(org).unwrap(), None)
            .unwrap();
    }
    let t = token(f, user, Scope::Write);
    auth.set_member(org, user, role).unwrap();
    t
}

/// The status of a JSON call.
async fn code(f: &Fixture, method: &str, uri: &str, token: &str, body: Value) -> u16 {
    json_call(f, method, uri, token, body).await.status.as_u16()
}

async fn json_call(f: &Fixture, method: &str, uri: &str, token: &str, body: Value) -> Reply {
    send(
        &f.app,
        method,
        uri,
        Some(token),
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await
}

#[tokio::test]
async fn writes_to_a_namespace_hosted_elsewhere_are_refused_by_name_and_fetch_nothing() {
    let mesh = Arc::new(hub_core::FakeMesh::new());
    let f = fixture_with_mesh(mesh.clone()).await;
    mesh.host_elsewhere("bob", &["12D3KooWHost"]);
    let hosted = |r: &Reply| {
        assert_eq!(r.status, 403, "{}", r.text());
        assert_eq!(r.header("x-error-code"), Some("NamespaceHostedElsewhere"));
        assert!(r.text().contains("12D3KooWHost"), "{}", r.text());
    };
    let r = json_call(
        &f,
        "POST",
        "/api/repos/create",
        &f.admin,
        json!({"name": "x", "organization": "bob"}),
    )
    .await;
    hosted(&r);
    hosted(
        &commit(
            &f,
            "bob/x",
            "main",
            &[header_line(), file_line("a.txt", b"a")],
        )
        .await,
    );
    hosted(
        &json_call(
            &f,
            "DELETE",
            "/api/repos/delete",
            &f.admin,
            json!({"name": "x", "organization": "bob"}),
        )
        .await,
    );
    hosted(
        &json_call(
            &f,
            "POST",
            "/api/models/bob/x/branch/dev",
            &f.admin,
            json!({}),
        )
        .await,
    );
    hosted(
        &json_call(
            &f,
            "PUT",
            "/api/models/bob/x/settings",
            &f.admin,
            json!({"private": true}),
        )
        .await,
    );
    let batch = json!({"operation": "upload", "transfers": ["basic"], "objects": [{"oid": sha256_hex(b"x"), "size": 1}]});
    hosted(
        &json_call(
            &f,
            "POST",
            "/bob/x.git/info/lfs/objects/batch",
            &f.admin,
            batch,
        )
        .await,
    );
    // Moving a repo of this node into that namespace is refused the same way.
    assert_eq!(create(&f, "mine", json!({})).await.status, 200);
    hosted(
        &json_call(
            &f,
            "POST",
            "/api/repos/move",
            &f.admin,
            json!({"fromRepo": "admin/mine", "toRepo": "bob/mine"}),
        )
        .await,
    );
    assert!(
        mesh.ensured().is_empty(),
        "a write fetched {:?} from the mesh",
        mesh.ensured()
    );
}

/// ADR 0006: an account is created only for a name the mesh did not give to another node,
/// and creating one claims the name for this node.
#[tokio::test]
async fn accounts_are_refused_for_names_claimed_in_the_mesh_and_claim_theirs() {
    let mesh = Arc::new(hub_core::FakeMesh::new());
    let f = fixture_with_mesh(mesh.clone()).await;
    mesh.host_elsewhere("bob", &["12D3KooWHost"]);
    for kind in ["users", "orgs"] {
        let r = json_call(
            &f,
            "POST",
            &format!("/api/admin/{kind}"),
            &f.admin,
            json!({"name": "bob"}),
        )
        .await;
        assert_eq!(r.status, 409, "{}", r.text());
        assert_eq!(r.header("x-error-code"), Some("NamespaceClaimedInMesh"));
        assert!(
            r.header("x-error-message")
                .is_some_and(|m| m.contains("12D3KooWHost")),
            "{:?}",
            r.header("x-error-message")
        );
    }
    assert_eq!(f.state.auth().namespace_kind("bob").unwrap(), None);
    // Free names are claimed, then created; a bad name claims nothing.
    for (kind, name) in [("users", "carol"), ("orgs", "acme")] {
        let r = json_call(
            &f,
            "POST",
            &format!("/api/admin/{kind}"),
            &f.admin,
            json!({"name": name}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = json_call(
        &f,
        "POST",
        "/api/admin/users",
        &f.admin,
        json!({"name": "-bad-"}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(mesh.claimed(), ["carol", "acme"]);
    assert!(f.state.auth().namespace_kind("carol").unwrap().is_some());
}

#[tokio::test]
async fn reads_fetch_announced_repos_on_demand_once() {
    let mesh = Arc::new(hub_core::FakeMesh::new());
    let f = fixture_with_mesh(mesh.clone()).await;
    let id =
        hub_protocol::repo::RepoId::parse(hub_protocol::repo::RepoType::Model, "carol/m").unwrap();
    let repos = f.state.repos().clone();
    let arriving = id.clone();
    mesh.announce(
        &id,
        Some(Arc::new(move || {
            let author = hub_repo::Author::new("carol", "carol@users.hubmesh");
            repos
                .create_with(&arriving, &author, false)
                .map(|_| ())
                .map_err(|e| hub_core::EnsureError::Pending(e.to_string()))
        })),
    );
    let r = send(&f.app, "GET", "/api/models/carol/m", None, &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["id"], "carol/m");
    assert_eq!(mesh.ensured(), vec![id.clone()]);
    // Held now: no second fetch.
    assert_eq!(
        send(&f.app, "GET", "/api/models/carol/m", None, &[], "")
            .await
            .status,
        200
    );
    assert_eq!(mesh.ensured().len(), 1);

    // Announced but not arrived: a retryable 503; unknown to the mesh: RepoNotFound.
    let pending =
        hub_protocol::repo::RepoId::parse(hub_protocol::repo::RepoType::Model, "carol/slow")
            .unwrap();
    mesh.announce(&pending, None);
    let r = send(&f.app, "GET", "/api/models/carol/slow", None, &[], "").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    let r = send(&f.app, "GET", "/api/models/carol/none", None, &[], "").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-error-code"), Some("RepoNotFound"));
    assert_eq!(mesh.ensured().len(), 3);
}

#[tokio::test]
async fn every_write_tells_the_mesh_after_it_lands() {
    let mesh = Arc::new(hub_core::FakeMesh::new());
    let f = fixture_with_mesh(mesh.clone()).await;
    let id =
        hub_protocol::repo::RepoId::parse(hub_protocol::repo::RepoType::Model, "admin/m").unwrap();
    assert_eq!(create(&f, "m", json!({})).await.status, 200);
    assert_eq!(
        commit(
            &f,
            "admin/m",
            "main",
            &[header_line(), file_line("a.txt", b"a")]
        )
        .await
        .status,
        200
    );
    // A refused commit changes nothing and tells nobody.
    let refused = commit(
        &f,
        "admin/m",
        "main",
        &[header_line(), file_line("../x", b"a")],
    )
    .await;
    assert!(refused.status.is_client_error());
    assert_eq!(mesh.changed(), vec![id.clone(), id]);
}

#[tokio::test]
async fn org_roles_follow_the_hub_read_contributor_write_admin() {
    use hub_auth::Role;
    let f = fixture().await;
    let admin_t = org_member(&f, "acme", "ada", Role::Admin);
    let write_t = org_member(&f, "acme", "wes", Role::Write);
    let contrib_t = org_member(&f, "acme", "cody", Role::Contributor);
    let read_t = org_member(&f, "acme", "rae", Role::Read);
    let r = json_call(
        &f,
        "POST",
        "/api/repos/create",
        &admin_t,
        json!({"name": "m", "organization": "acme"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    for (who, t) in [
        ("admin", &admin_t),
        ("write", &write_t),
        ("contributor", &contrib_t),
    ] {
        let c = send(
            &f.app,
            "POST",
            "/api/models/acme/m/commit/main",
            Some(t),
            &[],
            ndjson(&[header_line(), file_line(&format!("{who}.txt"), b"x")]),
        )
        .await;
        assert_eq!(c.status, 200, "{who} may add commits: {}", c.text());
        assert_eq!(
            code(
                &f,
                "POST",
                &format!("/api/models/acme/m/branch/{who}"),
                t,
                json!({})
            )
            .await,
            200,
            "{who} creates a branch"
        );
        assert_eq!(
            code(
                &f,
                "POST",
                "/api/models/acme/m/tag/main",
                t,
                json!({"tag": format!("t-{who}")})
            )
            .await,
            200,
            "{who} creates a tag"
        );
    }
    let c = send(
        &f.app,
        "POST",
        "/api/models/acme/m/commit/main",
        Some(&read_t),
        &[],
        ndjson(&[header_line(), file_line("r.txt", b"x")]),
    )
    .await;
    assert_eq!(c.status, 403, "read may not commit");

    // Deleting branches and tags removes history: write and admin only.
    assert_eq!(
        code(
            &f,
            "DELETE",
            "/api/models/acme/m/branch/contributor",
            &contrib_t,
            json!({})
        )
        .await,
        403
    );
    assert_eq!(
        code(
            &f,
            "DELETE",
            "/api/models/acme/m/tag/t-contributor",
            &contrib_t,
            json!({})
        )
        .await,
        403
    );
    assert_eq!(
        code(
            &f,
            "DELETE",
            "/api/models/acme/m/branch/contributor",
            &write_t,
            json!({})
        )
        .await,
        200
    );
    assert_eq!(
        code(
            &f,
            "DELETE",
            "/api/models/acme/m/tag/t-contributor",
            &write_t,
            json!({})
        )
        .await,
        200
    );

    // Visibility, moves and deletion: admin only.
    for t in [&contrib_t, &write_t] {
        assert_eq!(
            code(
                &f,
                "PUT",
                "/api/models/acme/m/settings",
                t,
                json!({"private": true})
            )
            .await,
            403
        );
        assert_eq!(
            code(
                &f,
                "POST",
                "/api/repos/move",
                t,
                json!({"fromRepo": "acme/m", "toRepo": "acme/n"})
            )
            .await,
            403
        );
        assert_eq!(
            code(
                &f,
                "DELETE",
                "/api/repos/delete",
                t,
                json!({"name": "m", "organization": "acme"})
            )
            .await,
            403
        );
    }
    // Moving an org repo into one's own namespace is a move: refused to a contributor.
    assert_eq!(
        code(
            &f,
            "POST",
            "/api/repos/move",
            &contrib_t,
            json!({"fromRepo": "acme/m", "toRepo": "cody/m"})
        )
        .await,
        403
    );
    let info = send(&f.app, "GET", "/api/models/acme/m", None, &[], "").await;
    assert_eq!(info.status, 200, "still public and in place");
    assert_eq!(
        code(
            &f,
            "PUT",
            "/api/models/acme/m/settings",
            &admin_t,
            json!({"private": true})
        )
        .await,
        200
    );
    assert_eq!(
        code(
            &f,
            "POST",
            "/api/repos/move",
            &admin_t,
            json!({"fromRepo": "acme/m", "toRepo": "acme/n"})
        )
        .await,
        200
    );
    assert_eq!(
        code(
            &f,
            "DELETE",
            "/api/repos/delete",
            &admin_t,
            json!({"name": "n", "organization": "acme"})
        )
        .await,
        200
    );
}

#[tokio::test]
async fn listing_applies_a_fine_grained_tokens_scope_per_repo() {
    let f = fixture().await;
    let alice = token(&f, "alice", Scope::Write);
    for (name, private) in [("pub", false), ("priv", true), ("priv2", true)] {
        let r = json_call(
            &f,
            "POST",
            "/api/repos/create",
            &alice,
            json!({"name": name, "private": private}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let c = send(
            &f.app,
            "POST",
            &format!("/api/models/alice/{name}/commit/main"),
            Some(&alice),
            &[],
            ndjson(&[header_line(), file_line("secret-name.txt", b"x")]),
        )
        .await;
        assert_eq!(c.status, 200);
    }
    let grant = |target: &str, access| hub_auth::Grant {
        target: target.parse().unwrap(),
        access,
    };
    let scoped = |grants: Vec<hub_auth::Grant>| {
        f.state
            .auth()
            .create_token("alice", "scoped", Permissions::FineGrained(grants))
            .unwrap()
            .1
            .expose()
            .to_owned()
    };
    let only_pub = scoped(vec![grant("alice/pub", hub_auth::Access::Read)]);
    let one_priv = scoped(vec![grant("alice/priv", hub_auth::Access::Read)]);
    let names = |r: Reply| -> Vec<String> {
        assert_eq!(r.status, 200, "{}", r.text());
        let mut v: Vec<String> = r
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    };
    for q in ["author=alice", "search=priv", "author=alice&full=true", ""] {
        let listed = names(
            send(
                &f.app,
                "GET",
                &format!("/api/models?{q}"),
                Some(&only_pub),
                &[],
                "",
            )
            .await,
        );
        assert!(
            !listed.iter().any(|n| n.contains("priv")),
            "{q}: {listed:?}"
        );
        let listed = names(
            send(
                &f.app,
                "GET",
                &format!("/api/models?{q}"),
                Some(&one_priv),
                &[],
                "",
            )
            .await,
        );
        assert!(
            !listed.contains(&"alice/priv2".to_owned()),
            "{q}: {listed:?}"
        );
    }
    let listed = names(
        send(
            &f.app,
            "GET",
            "/api/models?author=alice",
            Some(&one_priv),
            &[],
            "",
        )
        .await,
    );
    assert_eq!(listed, vec!["alice/priv", "alice/pub"]);
    let listed = names(
        send(
            &f.app,
            "GET",
            "/api/models?author=alice",
            Some(&alice),
            &[],
            "",
        )
        .await,
    );
    assert_eq!(listed, vec!["alice/priv", "alice/priv2", "alice/pub"]);
}

#[tokio::test]
async fn lfs_batch_answers_anonymous_callers_alike_for_private_and_missing_repos() {
    let f = fixture().await;
    assert_eq!(
        create(&f, "secret", json!({"private": true})).await.status,
        200
    );
    for op in ["download", "upload"] {
        let body = json!({"operation": op, "transfers": ["basic"], "objects": [{"oid": sha256_hex(b"x"), "size": 1}]}).to_string();
        let private = send(
            &f.app,
            "POST",
            "/admin/secret.git/info/lfs/objects/batch",
            None,
            &[],
            body.clone(),
        )
        .await;
        let missing = send(
            &f.app,
            "POST",
            "/admin/nothing.git/info/lfs/objects/batch",
            None,
            &[],
            body,
        )
        .await;
        assert_eq!(private.status, 401, "{op}: {}", private.text());
        assert_eq!(
            (private.status, private.text()),
            (missing.status, missing.text()),
            "{op}"
        );
    }
}

#[tokio::test]
async fn hub_error_shapes_request_ids_and_create_pr() {
    let f = fixture().await;
    assert_eq!(create(&f, "m", json!({})).await.status, 200);
    // Repo ids without a namespace are RepoNotFound, with the Hub's code.
    for uri in [
        "/api/models/gpt2",
        "/api/models/gpt2/revision/main",
        "/api/datasets/squad",
        "/gpt2/resolve/main/config.json",
    ] {
        let r = send(&f.app, "GET", uri, None, &[], "").await;
        assert_eq!(
            (r.status.as_u16(), r.header("x-error-code")),
            (404, Some("RepoNotFound")),
            "{uri}"
        );
    }
    // Every response carries a request id: the client's own when it sent a plain one.
    let a = send(&f.app, "GET", "/api/models/admin/m", None, &[], "").await;
    let b = send(&f.app, "GET", "/nope", None, &[], "").await;
    let (ida, idb) = (
        a.header("x-request-id").unwrap(),
        b.header("x-request-id").unwrap(),
    );
    assert_eq!(ida.len(), 32);
    assert_ne!(ida, idb);
    let mine = send(
        &f.app,
        "GET",
        "/api/models/admin/m",
        None,
        &[("x-request-id", "trace-42")],
        "",
    )
    .await;
    assert_eq!(mine.header("x-request-id"), Some("trace-42"));
    let odd = send(
        &f.app,
        "GET",
        "/api/models/admin/m",
        None,
        &[("x-request-id", "a b\tc")],
        "",
    )
    .await;
    assert_ne!(odd.header("x-request-id"), Some("a b\tc"));
    // create_pr opens pull request #1 on refs/pr/1, and main does not move.
    let before = head_of(&f).await;
    let r = send(
        &f.app,
        "POST",
        "/api/models/admin/m/commit/main?create_pr=1",
        Some(&f.admin),
        &[],
        ndjson(&[header_line(), file_line("a.txt", b"a")]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v: Value = serde_json::from_str(&r.text()).unwrap();
    assert!(
        v["pullRequestUrl"]
            .as_str()
            .is_some_and(|u| u.ends_with("/admin/m/discussions/1")),
        "{v}"
    );
    assert_eq!(head_of(&f).await, before);
    let pr = send(
        &f.app,
        "GET",
        "/api/models/admin/m/discussions/1",
        None,
        &[],
        "",
    )
    .await;
    assert_eq!(pr.status, 200, "{}", pr.text());
    let pr: Value = serde_json::from_str(&pr.text()).unwrap();
    assert_eq!(pr["isPullRequest"], true);
    assert_eq!(pr["events"][1]["data"]["oid"], v["commitOid"]);
}
