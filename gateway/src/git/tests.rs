//! In-process router tests for git smart HTTP: discovery, auth challenges, visibility and
//! the receive-pack answer. The real-client tests are in `tests/py/test_git.py`.

use crate::testing::{Fixture, Reply, fixture, send};
use hub_auth::{Permissions, Scope};
use serde_json::json;

async fn create(f: &Fixture, name: &str, private: bool) {
    let body = json!({ "name": name, "organization": null, "private": private });
    let r = send(
        &f.app,
        "POST",
        "/api/repos/create",
        Some(&f.admin),
        &[("content-type", "application/json")],
        body.to_string(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

fn token(f: &Fixture, user: &str) -> String {
    let auth = f.state.auth();
    auth.create_user(&hub_protocol::name::Name::new(user).unwrap(), None)
        .unwrap();
    auth.create_token(user, "test", Permissions::Scope(Scope::Write))
        .unwrap()
        .1
        .expose()
        .to_owned()
}

fn main_of(f: &Fixture, repo: &str) -> String {
    let id = hub_protocol::repo::RepoId::parse(hub_protocol::repo::RepoType::Model, repo).unwrap();
    f.state.repos().resolve(&id, "main").unwrap()
}

/// The admin's `git-receive-pack` request with `body` into `admin/m`.
async fn receive_pack(f: &Fixture, body: impl Into<axum::body::Body>) -> Reply {
    send(
        &f.app,
        "POST",
        "/admin/m/git-receive-pack",
        Some(&f.admin),
        &[],
        body,
    )
    .await
}

fn pkt(s: &str) -> String {
    format!("{:04x}{s}", s.len() + 4)
}

#[tokio::test]
async fn receive_pack_discovery_challenges_then_advertises() {
    let f = fixture().await;
    create(&f, "m", false).await;
    let uri = "/admin/m/info/refs?service=git-receive-pack";
    let r = send(&f.app, "GET", uri, None, &[], "").await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"hubmesh\"")
    );
    let r = send(&f.app, "GET", uri, Some(&f.admin), &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/x-git-receive-pack-advertisement")
    );
    let body = r.text();
    assert!(
        body.starts_with("001f# service=git-receive-pack\n0000"),
        "{body}"
    );
    let main = main_of(&f, "admin/m");
    assert!(
        body.contains(&format!("{main} refs/heads/main\0report-status")),
        "{body}"
    );
    assert!(body.ends_with("0000"));
}

#[tokio::test]
async fn upload_pack_discovery_v0_and_v2_with_suffixes_and_prefixes() {
    let f = fixture().await;
    create(&f, "m", false).await;
    let r = send(
        &f.app,
        "GET",
        "/admin/m/info/refs?service=git-upload-pack",
        None,
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/x-git-upload-pack-advertisement")
    );
    assert!(
        r.text().starts_with("001e# service=git-upload-pack\n0000"),
        "{}",
        r.text()
    );
    assert!(r.text().contains("refs/heads/main"));
    let r = send(
        &f.app,
        "GET",
        "/admin/m.git/info/refs?service=git-upload-pack",
        None,
        &[("git-protocol", "version=2")],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.text().starts_with("000eversion 2\n"), "{}", r.text());
    // The dumb protocol is not served, nor are unknown services.
    for uri in [
        "/admin/m/info/refs",
        "/admin/m/info/refs?service=git-upload-archive",
    ] {
        let r = send(&f.app, "GET", uri, Some(&f.admin), &[], "").await;
        assert_eq!(r.status, 404, "{uri}");
    }
    // Datasets live under their prefix; a model path there is not found.
    let r = send(
        &f.app,
        "GET",
        "/datasets/admin/m/info/refs?service=git-upload-pack",
        Some(&f.admin),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn private_repos_challenge_anonymous_and_hide_from_others() {
    let f = fixture().await;
    create(&f, "secret", true).await;
    let bob = token(&f, "bob");
    for uri in [
        "/admin/secret/info/refs?service=git-upload-pack",
        "/admin/missing/info/refs?service=git-upload-pack",
    ] {
        let r = send(&f.app, "GET", uri, None, &[], "").await;
        assert_eq!(r.status, 401, "{uri}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Basic realm=\"hubmesh\"")
        );
        let r = send(&f.app, "GET", uri, Some(&bob), &[], "").await;
        assert_eq!(r.status, 404, "{uri}");
    }
    let r = send(
        &f.app,
        "POST",
        "/admin/secret/git-upload-pack",
        Some(&bob),
        &[],
        "0000",
    )
    .await;
    assert_eq!(r.status, 404);
    // Bob may not push to the admin's public repo either.
    create(&f, "public", false).await;
    let r = send(
        &f.app,
        "GET",
        "/admin/public/info/refs?service=git-receive-pack",
        Some(&bob),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, 403);
    // Basic credentials with the token as password work like Bearer.
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("admin:{}", f.admin));
    let r = send(
        &f.app,
        "GET",
        "/admin/secret/info/refs?service=git-upload-pack",
        None,
        &[("authorization", &format!("Basic {basic}"))],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn receive_pack_reports_per_ref_and_refuses_deleting_main() {
    let f = fixture().await;
    create(&f, "m", false).await;
    let main = main_of(&f, "admin/m");
    let zero = "0".repeat(40);
    let body = format!(
        "{}0000",
        pkt(&format!(
            "{main} {zero} refs/heads/main\0report-status side-band-64k agent=t\n"
        ))
    );
    let r = receive_pack(&f, body).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/x-git-receive-pack-result")
    );
    // One side-band packet (band 1) holding the report, then a flush.
    let text = r.text();
    assert_eq!(&text[4..5], "\u{1}", "{text:?}");
    assert!(text.contains("unpack ok\n"), "{text:?}");
    assert!(
        text.contains("ng refs/heads/main deleting the default branch main is not allowed\n"),
        "{text:?}"
    );
    assert!(text.ends_with("00000000"), "{text:?}");
    assert_eq!(main_of(&f, "admin/m"), main);

    // Without side-band: plain report-status. Deleting a missing branch is stale.
    let body = format!(
        "{}0000",
        pkt(&format!("{main} {zero} refs/heads/nope\0report-status\n"))
    );
    let r = receive_pack(&f, body).await;
    let text = r.text();
    assert!(text.starts_with("000eunpack ok\n"), "{text:?}");
    assert!(text.contains("ng refs/heads/nope stale info"), "{text:?}");
    assert!(text.ends_with("0000"));
}

#[tokio::test]
async fn receive_pack_rejects_malformed_requests() {
    let f = fixture().await;
    create(&f, "m", false).await;
    for body in ["", "zzzz", "0009abcde0000", "00a0short"] {
        let r = receive_pack(&f, body).await;
        assert_eq!(r.status, 400, "{body:?}: {}", r.text());
    }
    let r = send(
        &f.app,
        "POST",
        "/admin/m/git-receive-pack",
        None,
        &[],
        "0000",
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"hubmesh\"")
    );
    let r = send(
        &f.app,
        "POST",
        "/admin/m/git-receive-pack",
        Some(&f.admin),
        &[("content-encoding", "gzip")],
        "0000",
    )
    .await;
    assert_eq!(r.status, 400);
}

/// git probes with a flush-only body before streaming a pack larger than `http.postBuffer`:
/// like `git http-backend`, the answer is 200 with an empty result, after the same
/// credential check as a push.
#[tokio::test]
async fn receive_pack_answers_the_probe_before_a_large_push() {
    let f = fixture().await;
    create(&f, "m", false).await;
    let main = main_of(&f, "admin/m");
    let uri = "/admin/m/git-receive-pack";
    let r = send(&f.app, "POST", uri, Some(&f.admin), &[], "0000").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/x-git-receive-pack-result")
    );
    assert_eq!(r.text(), "");
    assert_eq!(main_of(&f, "admin/m"), main);
    let r = send(&f.app, "POST", uri, None, &[], "0000").await;
    assert_eq!(r.status, 401);
    let bob = token(&f, "bob");
    let r = send(&f.app, "POST", uri, Some(&bob), &[], "0000").await;
    assert_eq!(r.status, 403);
}

/// A ref name with a newline or an escape sequence would reach the push report raw (git
/// prints it to the user's terminal): the request is refused, nothing is echoed.
#[tokio::test]
async fn receive_pack_refuses_control_characters_in_ref_names() {
    let f = fixture().await;
    create(&f, "m", false).await;
    let main = main_of(&f, "admin/m");
    let zero = "0".repeat(40);
    for name in ["refs/heads/a\nb", "refs/heads/\u{1b}[2Jx"] {
        let body = format!(
            "{}0000",
            pkt(&format!("{main} {zero} {name}\0report-status\n"))
        );
        let r = receive_pack(&f, body).await;
        assert_eq!(r.status, 400, "{name:?}: {}", r.text());
        assert!(!r.text().contains(name), "{name:?} echoed: {}", r.text());
        assert!(!r.text().chars().any(char::is_control), "{}", r.text());
    }
    assert_eq!(main_of(&f, "admin/m"), main);
}
