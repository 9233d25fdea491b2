//! The pages in-process: what they show, who sees what, the forms' CSRF and cookie rules, and
//! that the API, git, LFS and resolve routes still answer beside them.

use crate::testing::{Fixture, Reply, fixture, send};
use base64::Engine;
use serde_json::{Value, json};

const HTML: (&str, &str) = ("accept", "text/html");

async fn create(f: &Fixture, kind: &str, name: &str, private: bool) {
    let r = send(
        &f.app,
        "POST",
        "/api/repos/create",
        Some(&f.admin),
        &[("content-type", "application/json")],
        json!({ "name": name, "type": kind, "private": private }).to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

async fn commit(f: &Fixture, kind: &str, repo: &str, summary: &str, files: &[(&str, &[u8])]) {
    let mut body = json!({ "key": "header", "value": { "summary": summary, "description": "" } })
        .to_string()
        + "\n";
    for (path, bytes) in files {
        let content = base64::engine::general_purpose::STANDARD.encode(bytes);
        body += &json!({ "key": "file", "value": { "content": content, "path": path, "encoding": "base64" } })
            .to_string();
        body.push('\n');
    }
    let r = send(
        &f.app,
        "POST",
        &format!("/api/{kind}s/{repo}/commit/main"),
        Some(&f.admin),
        &[("content-type", "application/x-ndjson")],
        body,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

async fn get(f: &Fixture, uri: &str, extra: &[(&str, &str)]) -> Reply {
    send(&f.app, "GET", uri, None, extra, "").await
}

fn assert_page(r: &Reply) {
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let csp = r.header("content-security-policy").expect("a CSP header");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
}

const XSS_CARD: &str = "---\nlicense: apache-2.0\npipeline_tag: text-generation\ntags: [tiny, test]\n\
datasets: [admin/data]\n---\n# Tiny Llama <em>card</em>\n\nSome **bold** text.\n\n\
<script>alert('x')</script>\n\n[click](javascript:alert(1)) \
<a href=\"jAvAsCrIpT:alert(2)\">raw</a> <img src=\"x\" onerror=\"alert(3)\"> \
<iframe src=\"https://example.org\"></iframe><svg onload=\"alert(4)\"></svg>\n";

#[tokio::test]
async fn the_card_renders_with_its_metadata_and_scripts_stay_inert() {
    let f = fixture().await;
    create(&f, "model", "tiny", false).await;
    commit(
        &f,
        "model",
        "admin/tiny",
        "add card",
        &[("README.md", XSS_CARD.as_bytes())],
    )
    .await;
    let r = get(&f, "/admin/tiny", &[HTML]).await;
    assert_page(&r);
    let html = r.text();
    assert!(html.contains("<h1>Tiny Llama <em>card</em></h1>"), "{html}");
    assert!(html.contains("<strong>bold</strong>"));
    for shown in ["apache-2.0", "text-generation", "admin/data", "tiny"] {
        assert!(
            html.contains(shown),
            "{shown} missing from the panel: {html}"
        );
    }
    let lower = html.to_lowercase();
    for bad in [
        "<script",
        "javascript:",
        "onerror",
        "onload",
        "<iframe",
        "alert(",
    ] {
        assert!(!lower.contains(bad), "{bad} reached the page: {html}");
    }
}

#[tokio::test]
async fn private_repos_are_invisible_to_others_on_every_page() {
    let f = fixture().await;
    create(&f, "model", "secret-model", true).await;
    create(&f, "model", "open-model", false).await;
    for uri in ["/", "/?search=model", "/admin"] {
        let r = get(&f, uri, &[HTML]).await;
        assert_page(&r);
        assert!(r.text().contains("open-model"), "{uri}");
        assert!(
            !r.text().contains("secret-model"),
            "{uri} shows the private repo"
        );
    }
    for uri in [
        "/admin/secret-model",
        "/admin/secret-model/tree/main",
        "/admin/secret-model/blob/main/.gitattributes",
        "/admin/secret-model/commits/main",
        "/admin/secret-model/settings",
    ] {
        let hidden = get(&f, uri, &[HTML]).await;
        let missing = get(&f, &uri.replace("secret-model", "no-such-model"), &[HTML]).await;
        assert_eq!(hidden.status, 404, "{uri}");
        assert_eq!(hidden.status, missing.status, "{uri}");
        assert_eq!(
            hidden.header("x-error-code"),
            missing.header("x-error-code")
        );
        assert!(!hidden.text().contains("secret"), "{uri}");
    }
    // The owner sees it (a token in Authorization, as for the API).
    let r = send(
        &f.app,
        "GET",
        "/admin/secret-model",
        Some(&f.admin),
        &[HTML],
        "",
    )
    .await;
    assert_page(&r);
    assert!(r.text().contains("private"));
}

fn cookie_of(r: &Reply) -> String {
    let set = r.header("set-cookie").expect("a session cookie");
    assert!(set.contains("HttpOnly"), "{set}");
    assert!(set.contains("SameSite=Strict"), "{set}");
    set.split(';').next().unwrap().to_owned()
}

fn csrf_in(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    html[at..at + 32].to_owned()
}

#[tokio::test]
async fn sign_in_then_create_a_repo_through_the_form() {
    let f = fixture().await;
    // A bad token: the form again, 401, no cookie.
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let r = send(&f.app, "POST", "/login", None, &form, "token=hf_nope").await;
    assert_eq!(r.status, 401);
    assert!(r.header("set-cookie").is_none());
    let r = send(
        &f.app,
        "POST",
        "/login",
        None,
        &form,
        format!("token={}", f.admin),
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.text());
    let cookie = cookie_of(&r);
    let with_cookie = |extra: &'static str| {
        [
            ("cookie", cookie.clone()),
            ("content-type", extra.to_owned()),
        ]
    };

    let h = with_cookie("text/plain");
    let r = get(&f, "/new", &[(h[0].0, h[0].1.as_str())]).await;
    assert_page(&r);
    let csrf = csrf_in(&r.text());

    let h = with_cookie("application/x-www-form-urlencoded");
    let headers: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // No CSRF token, a wrong one, another site's Origin: refused, nothing created.
    for (body, origin) in [
        ("type=model&owner=admin&name=made-here".to_owned(), None),
        (
            "type=model&owner=admin&name=made-here&csrf=00000000000000000000000000000000"
                .to_owned(),
            None,
        ),
        (
            format!("type=model&owner=admin&name=made-here&csrf={csrf}"),
            Some("http://evil.example"),
        ),
    ] {
        let mut hs = headers.clone();
        if let Some(o) = origin {
            hs.push(("origin", o));
        }
        let r = send(&f.app, "POST", "/new", None, &hs, body).await;
        assert_eq!(r.status, 403, "{}", r.text());
    }
    let r = get(&f, "/api/models/admin/made-here", &[]).await;
    assert_eq!(r.status, 404);
    // Without a session at all: 401.
    let r = send(
        &f.app,
        "POST",
        "/new",
        None,
        &form,
        format!("name=x&csrf={csrf}"),
    )
    .await;
    assert_eq!(r.status, 401);

    let mut hs = headers.clone();
    hs.push(("origin", "http://localhost"));
    hs.push(("host", "localhost"));
    let r = send(
        &f.app,
        "POST",
        "/new",
        None,
        &hs,
        format!("type=dataset&owner=admin&name=made-here&private=1&csrf={csrf}"),
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.header("location"), Some("/datasets/admin/made-here"));
    let r = send(
        &f.app,
        "GET",
        "/api/datasets/admin/made-here",
        Some(&f.admin),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["private"], true);

    // Sign out ends the session.
    let r = send(
        &f.app,
        "POST",
        "/logout",
        None,
        &headers,
        format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(r.status, 303);
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
}

#[tokio::test]
async fn file_browser_shows_sizes_lfs_badges_and_last_commits() {
    let f = fixture().await;
    create(&f, "model", "files", false).await;
    let weights = safetensors(&[
        ("embed.weight", "F32", &[16, 8]),
        ("head.bias", "BF16", &[16]),
    ]);
    commit(
        &f,
        "model",
        "admin/files",
        "first files",
        &[("a.txt", b"hello\nworld\n"), ("sub/b.py", b"print(1)\n")],
    )
    .await;
    commit(
        &f,
        "model",
        "admin/files",
        "add weights",
        &[("model.safetensors", &weights)],
    )
    .await;
    commit(
        &f,
        "model",
        "admin/files",
        "change a",
        &[("a.txt", b"hello\nthere\nworld\n")],
    )
    .await;

    let r = get(&f, "/admin/files/tree/main", &[HTML]).await;
    assert_page(&r);
    let html = r.text();
    let row = |name: &str| {
        let at = html
            .find(&format!(">{name}<"))
            .unwrap_or_else(|| panic!("{name} not listed: {html}"));
        let end = html[at..].find("</tr>").unwrap() + at;
        html[at..end].to_owned()
    };
    assert!(row("a.txt").contains("change a"), "{}", row("a.txt"));
    assert!(row("a.txt").contains("18 B"));
    assert!(row("model.safetensors").contains("LFS"));
    assert!(row("model.safetensors").contains("add weights"));
    assert!(row("sub/").contains("first files"));
    assert!(!row("a.txt").contains("LFS"));

    let r = get(&f, "/admin/files/tree/main/sub", &[HTML]).await;
    assert_page(&r);
    assert!(r.text().contains("b.py"));

    // A text file with line numbers; a safetensors header.
    let r = get(&f, "/admin/files/blob/main/sub/b.py", &[HTML]).await;
    assert_page(&r);
    assert!(
        r.text().contains("print(<span class=\"tok-num\">1</span>)"),
        "{}",
        r.text()
    );
    let r = get(&f, "/admin/files/blob/main/model.safetensors", &[HTML]).await;
    assert_page(&r);
    let html = r.text();
    assert!(html.contains("144 parameters"), "{html}");
    assert!(html.contains("embed.weight") && html.contains("[16, 8]") && html.contains("BF16"));

    // History and the diff of the last commit.
    let r = get(&f, "/admin/files/commits/main", &[HTML]).await;
    assert_page(&r);
    let html = r.text();
    let newest = html.find("change a").unwrap();
    assert!(newest < html.find("add weights").unwrap());
    let at = html.find("/admin/files/commit/").unwrap() + 20;
    let sha = &html[at..at + 40];
    let r = get(&f, &format!("/admin/files/commit/{sha}"), &[HTML]).await;
    assert_page(&r);
    let html = r.text();
    assert!(html.contains("+there"), "{html}");
    assert!(html.contains(" hello"));
    assert!(!html.contains("model.safetensors"), "only a.txt changed");
    let r = get(&f, "/admin/files/commit/0000000", &[HTML]).await;
    assert_eq!(r.status, 404);
}

fn safetensors(tensors: &[(&str, &str, &[u64])]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for (name, dtype, shape) in tensors {
        let n: u64 = shape.iter().product::<u64>() * if *dtype == "F32" { 4 } else { 2 };
        header.insert(
            (*name).into(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}),
        );
        offset += n;
    }
    let text = Value::Object(header).to_string();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.resize(out.len() + offset as usize, 0);
    out
}

#[tokio::test]
async fn dataset_page_pages_through_rows_and_the_viewer_api_answers() {
    let f = fixture().await;
    create(&f, "dataset", "people", false).await;
    let mut train = String::from("name,age\n");
    for i in 0..45 {
        train += &format!("person {i},{}\n", 20 + i);
    }
    commit(
        &f,
        "dataset",
        "admin/people",
        "data",
        &[
            ("data/train.csv", train.as_bytes()),
            ("data/test.csv", b"name,age\nzed,99\n"),
        ],
    )
    .await;
    let r = get(&f, "/datasets/admin/people?split=train&offset=20", &[HTML]).await;
    assert_page(&r);
    let html = r.text();
    assert!(html.contains("Rows 21–40 of 45"), "{html}");
    assert!(html.contains("person 20") && html.contains("person 39"));
    assert!(!html.contains("person 40<") && !html.contains(">person 19<"));
    assert!(html.contains("offset=40") && html.contains("offset=0"));

    let api = |q: &'static str| get(&f, q, &[]);
    let r = api("/datasets-server/splits?dataset=admin/people").await;
    assert_eq!(
        r.json()["splits"],
        json!([
            {"dataset": "admin/people", "config": "default", "split": "train"},
            {"dataset": "admin/people", "config": "default", "split": "test"},
        ])
    );
    let r = api(
        "/datasets-server/rows?dataset=admin/people&config=default&split=train&offset=40&length=10",
    )
    .await;
    let v = r.json();
    assert_eq!(v["num_rows_total"], 45);
    assert_eq!(v["rows"].as_array().unwrap().len(), 5);
    assert_eq!(
        v["rows"][0],
        json!({"row_idx": 40, "row": {"name": "person 40", "age": 60}, "truncated_cells": []})
    );
    assert_eq!(
        v["features"][1],
        json!({"feature_idx": 1, "name": "age", "type": {"dtype": "int64", "_type": "Value"}})
    );
    let v = api("/datasets-server/first-rows?dataset=admin/people&config=default&split=test")
        .await
        .json();
    assert_eq!(v["rows"][0]["row"]["name"], "zed");
    let v = api("/datasets-server/filter?dataset=admin/people&config=default&split=train&where=age%3E%3D63&orderby=age%20DESC").await.json();
    assert_eq!(v["num_rows_total"], 2);
    assert_eq!(v["rows"][0]["row"]["age"], 64);
    let v = api(
        "/datasets-server/search?dataset=admin/people&config=default&split=train&query=PERSON%2044",
    )
    .await
    .json();
    assert_eq!(v["num_rows_total"], 1);
    let v = api("/datasets-server/size?dataset=admin/people")
        .await
        .json();
    assert_eq!(v["size"]["dataset"]["num_rows"], 46);
    let v = api("/datasets-server/info?dataset=admin/people")
        .await
        .json();
    assert_eq!(v["dataset_info"]["splits"]["train"]["num_examples"], 45);
    let v = api("/datasets-server/is-valid?dataset=admin/people")
        .await
        .json();
    assert_eq!(v["viewer"], true);

    // Errors: a bad clause, a missing split, a missing or private dataset.
    let r = api(
        "/datasets-server/filter?dataset=admin/people&config=default&split=train&where=age%20%3E",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("x-error-code"), Some("InvalidParameter"));
    let r = api("/datasets-server/rows?dataset=admin/people&config=default&split=nope").await;
    assert_eq!(r.status, 404);
    let r = api("/datasets-server/rows?dataset=admin/people&config=default&split=train&length=101")
        .await;
    assert_eq!(r.status, 422);
    create(&f, "dataset", "hidden", true).await;
    for q in [
        "/datasets-server/splits?dataset=admin/hidden",
        "/datasets-server/splits?dataset=admin/none",
        "/datasets-server/splits?dataset=nons",
    ] {
        let r = api(q).await;
        assert_eq!(r.status, 404, "{q}");
        assert_eq!(r.header("x-error-code"), Some("RepoNotFound"), "{q}");
    }
}

#[tokio::test]
async fn the_api_git_lfs_and_resolve_routes_still_answer_beside_the_pages() {
    let f = fixture().await;
    create(&f, "model", "m", false).await;
    commit(
        &f,
        "model",
        "admin/m",
        "add",
        &[
            ("README.md", b"# M\n"),
            ("w.safetensors", &safetensors(&[("x", "F32", &[2])])),
        ],
    )
    .await;
    let r = get(&f, "/admin/m/resolve/main/README.md", &[HTML]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "# M\n");
    let r = get(&f, "/api/models/admin/m", &[HTML]).await;
    assert_eq!(r.json()["id"], "admin/m");
    let r = get(&f, "/api/models/admin/m/tree/main", &[HTML]).await;
    assert!(r.json().is_array());
    let r = get(&f, "/api/models", &[HTML]).await;
    assert!(r.json().is_array());
    let r = get(&f, "/api/models/admin/m/revision/main", &[HTML]).await;
    assert_eq!(r.status, 200);
    let r = get(&f, "/admin/m/info/refs?service=git-upload-pack", &[HTML]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/x-git-upload-pack-advertisement")
    );
    let r = get(
        &f,
        "/admin/m.git/info/refs?service=git-upload-pack",
        &[HTML],
    )
    .await;
    assert_eq!(r.status, 200);
    let r = send(
        &f.app,
        "POST",
        "/admin/m.git/info/lfs/objects/batch",
        None,
        &[
            ("content-type", "application/vnd.git-lfs+json"),
            ("accept", "application/vnd.git-lfs+json"),
        ],
        json!({"operation": "download", "objects": []}).to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["objects"].is_array());
    // Health, metrics and unknown paths as before: JSON, not pages.
    assert_eq!(get(&f, "/health", &[]).await.json()["status"], "ok");
    let r = get(&f, "/nope", &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "not found");
    let r = get(&f, "/gpt2/resolve/main/config.json", &[]).await;
    assert_eq!(r.header("x-error-code"), Some("RepoNotFound"));
    // The pages at the same repo answer too.
    assert_page(&get(&f, "/admin/m", &[HTML]).await);
    assert_page(&get(&f, "/mesh", &[HTML]).await);
    assert_page(&get(&f, "/login", &[HTML]).await);
    let r = get(&f, "/-/site.css", &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/css"));
}

/// A `multipart/form-data` body of `fields` and one file.
fn multipart_body(fields: &[(&str, &str)], file: Option<(&str, &[u8])>) -> (String, Vec<u8>) {
    let boundary = "----hubmeshTestBoundary7";
    let mut body = Vec::new();
    for (k, v) in fields {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n")
                .as_bytes(),
        );
    }
    if let Some((name, bytes)) = file {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[tokio::test]
async fn upload_form_commits_by_the_lfs_rules_and_refuses_bad_posts() {
    let f = fixture().await;
    create(&f, "model", "up", false).await;
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let r = send(
        &f.app,
        "POST",
        "/login",
        None,
        &form,
        format!("token={}", f.admin),
    )
    .await;
    let cookie = cookie_of(&r);
    let r = get(&f, "/admin/up/upload", &[("cookie", cookie.as_str())]).await;
    assert_page(&r);
    let csrf = csrf_in(&r.text());
    // Anonymous: to the sign-in page.
    let r = get(&f, "/admin/up/upload", &[]).await;
    assert_eq!(r.status, 303);

    let post = |ct: String, body: Vec<u8>, with_cookie: bool| {
        let cookie = cookie.clone();
        let app = f.app.clone();
        async move {
            let mut h = vec![("content-type", ct)];
            if with_cookie {
                h.push(("cookie", cookie));
            }
            let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
            send(&app, "POST", "/admin/up/upload", None, &h, body).await
        }
    };
    // A binary file under the default rules (`*.bin`) becomes LFS; a text file a git blob.
    let weights: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let (ct, body) = multipart_body(
        &[("csrf", &csrf), ("path", "weights/")],
        Some(("w.bin", &weights)),
    );
    let r = post(ct, body, true).await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert!(
        r.header("location")
            .unwrap()
            .ends_with("/admin/up/blob/main/weights/w.bin")
    );
    let (ct, body) = multipart_body(
        &[("csrf", &csrf), ("message", "Add notes")],
        Some(("notes.md", b"# notes\n")),
    );
    assert_eq!(post(ct, body, true).await.status, 303);
    let r = get(&f, "/api/models/admin/up/tree/main?recursive=true", &[]).await;
    let tree = r.json();
    let entry = |p: &str| {
        tree.as_array()
            .unwrap()
            .iter()
            .find(|e| e["path"] == p)
            .cloned()
            .unwrap_or_else(|| panic!("{p} not in {tree}"))
    };
    assert_eq!(entry("weights/w.bin")["lfs"]["size"], 200_000);
    assert!(entry("notes.md").get("lfs").is_none_or(Value::is_null));
    let r = get(&f, "/admin/up/resolve/main/weights/w.bin", &[]).await;
    assert_eq!(r.body.as_ref(), weights.as_slice());
    let r = get(&f, "/api/models/admin/up/commits/main", &[]).await;
    assert_eq!(r.json()[0]["title"], "Add notes");

    // No CSRF token, no session, a bad path, no file, a garbled body: refused, nothing written.
    let (ct, body) = multipart_body(&[], Some(("x.txt", b"x")));
    assert_eq!(post(ct, body, true).await.status, 403);
    let (ct, body) = multipart_body(&[("csrf", &csrf)], Some(("x.txt", b"x")));
    assert_eq!(post(ct, body, false).await.status, 401);
    let (ct, body) = multipart_body(
        &[("csrf", &csrf), ("path", "../x.txt")],
        Some(("x.txt", b"x")),
    );
    assert_eq!(post(ct, body, true).await.status, 400);
    let (ct, body) = multipart_body(&[("csrf", &csrf)], None);
    assert_eq!(post(ct, body, true).await.status, 400);
    let r = post(
        "multipart/form-data; boundary=zz".into(),
        b"garbage".to_vec(),
        true,
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.header("x-error-message").is_some());
    // Past the size limit: a 413 with the Hub's error headers, before anything is parsed.
    let big = vec![b'a'; super::upload::MAX_BODY + 1];
    let r = post("multipart/form-data; boundary=zz".into(), big, true).await;
    assert_eq!(r.status, 413);
    assert!(r.header("x-error-code").is_some() || r.header("x-error-message").is_some());
    let r = get(&f, "/api/models/admin/up/tree/main?recursive=true", &[]).await;
    assert_eq!(r.json().as_array().unwrap().len(), 4, "{}", r.text());
}

#[tokio::test]
async fn pages_without_inference_or_spaces_have_no_widget_frame_or_script() {
    let f = fixture().await;
    create(&f, "model", "gen", false).await;
    commit(
        &f,
        "model",
        "admin/gen",
        "card",
        &[(
            "README.md",
            b"---\npipeline_tag: text-generation\n---\n# Gen\n",
        )],
    )
    .await;
    create(&f, "space", "app", false).await;
    for uri in ["/admin/gen", "/spaces/admin/app"] {
        let r = get(&f, uri, &[HTML]).await;
        assert_page(&r);
        let csp = r.header("content-security-policy").unwrap();
        assert_eq!(csp, super::CSP);
        assert!(!r.text().contains("<script") && !r.text().contains("<iframe"));
    }
    // The widget's post on a node without inference: a clear 503.
    let r = send(
        &f.app,
        "POST",
        "/admin/gen/widget",
        None,
        &[("content-type", "application/x-www-form-urlencoded")],
        "inputs=hello",
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.text());
    // The script is a file of this origin.
    let r = get(&f, "/-/widget.js", &[]).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/javascript")
    );
}

/// The repo ids of a home page's list, in order.
fn listed(html: &str) -> Vec<String> {
    let list = &html[html.find("id=\"repo-list\"").expect("the list")..];
    let list = &list[..list.find("</ul>").unwrap_or(list.len())];
    list.split("<a href=\"/")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn trending_ranks_the_repo_downloaded_more_recently_first() {
    let f = fixture().await;
    create(&f, "model", "older", false).await;
    create(&f, "model", "recent", false).await;
    let (older, recent) = (
        hub_protocol::repo::RepoId::parse(hub_protocol::repo::RepoType::Model, "admin/older")
            .unwrap(),
        hub_protocol::repo::RepoId::parse(hub_protocol::repo::RepoType::Model, "admin/recent")
            .unwrap(),
    );
    let repos = f.state.repos();
    let today = u32::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 86_400,
    )
    .unwrap();
    // `older`: 8 downloads four days ago; `recent`: 2 today. The index has the all-time
    // counts, as the download path leaves them.
    for _ in 0..8 {
        repos.count_download(&older);
    }
    repos.flush_downloads_on(today - 4).unwrap();
    for _ in 0..2 {
        repos.count_download(&recent);
    }
    repos.flush_downloads_on(today).unwrap();
    for id in [&older, &recent] {
        f.state
            .search()
            .set_downloads(id, repos.downloads(id).unwrap())
            .unwrap();
    }
    let r = get(&f, "/?sort=downloads", &[HTML]).await;
    assert_page(&r);
    assert_eq!(listed(&r.text()), ["admin/older", "admin/recent"]);
    for uri in ["/?sort=trending", "/"] {
        let r = get(&f, uri, &[HTML]).await;
        assert_page(&r);
        assert_eq!(listed(&r.text()), ["admin/recent", "admin/older"], "{uri}");
    }
    // A search narrows the trending list like the others.
    let r = get(&f, "/?sort=trending&search=old", &[HTML]).await;
    assert_eq!(listed(&r.text()), ["admin/older"]);
}

#[tokio::test]
async fn branches_page_lists_branches_and_tags_with_their_commits() {
    let f = fixture().await;
    create(&f, "dataset", "refs", false).await;
    commit(
        &f,
        "dataset",
        "admin/refs",
        "first <b>commit</b>",
        &[("a.txt", b"a")],
    )
    .await;
    for (uri, body) in [
        ("/api/datasets/admin/refs/branch/dev", json!({})),
        ("/api/datasets/admin/refs/tag/main", json!({ "tag": "v1" })),
    ] {
        let r = send(
            &f.app,
            "POST",
            uri,
            Some(&f.admin),
            &[("content-type", "application/json")],
            body.to_string(),
        )
        .await;
        assert_eq!(r.status, 200, "{uri}: {}", r.text());
    }
    let r = get(&f, "/datasets/admin/refs/branches", &[HTML]).await;
    assert_page(&r);
    let html = r.text();
    let main = html.find(">main</a>").expect("main");
    let dev = html.find(">dev</a>").expect("dev");
    assert!(main < dev, "main is listed first");
    assert!(
        html.contains("href=\"/datasets/admin/refs/tree/v1\""),
        "{html}"
    );
    assert!(
        html.contains("first &lt;b&gt;commit&lt;/b&gt;"),
        "titles are escaped"
    );
    let r = get(&f, "/datasets/admin/refs", &[HTML]).await;
    assert!(r.text().contains("href=\"/datasets/admin/refs/branches\""));
    create(&f, "model", "hidden", true).await;
    let r = get(&f, "/admin/hidden/branches", &[HTML]).await;
    assert_eq!(r.status, 404);
}
