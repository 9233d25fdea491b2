//! Router tests of the Xet routes' refusals that the real client cannot reach on demand.

use super::*;
use crate::testing::{fixture_with_store, send};
use hub_xet::hash;

/// A node whose store is at its reserved headroom refuses Xet writes at once, in a way the
/// client does not retry (hf_xet retries every 5xx, 507 included, but no 4xx besides 408 and
/// 429): the write token with 403, a xorb sent with a token issued before the disk filled
/// with 413 — both with the Hub's error headers; reading is unaffected.
#[tokio::test]
async fn a_full_store_refuses_xet_writes_with_statuses_the_client_does_not_retry() {
    let mut config = hub_store::StoreConfig::default();
    config.reserved_bytes = u64::MAX / 4;
    let f = fixture_with_store(config).await;
    let created = send(
        &f.app,
        "POST",
        "/api/repos/create",
        Some(&f.admin),
        &[("content-type", "application/json")],
        r#"{"name":"full","organization":null}"#,
    )
    .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.text());

    let write = send(
        &f.app,
        "GET",
        "/api/models/admin/full/xet-write-token/main",
        Some(&f.admin),
        &[],
        "",
    )
    .await;
    assert_eq!(write.status, StatusCode::FORBIDDEN);
    assert_eq!(write.header("x-error-code"), Some("InsufficientStorage"));
    assert!(
        write
            .header("x-error-message")
            .is_some_and(|m| m.contains("disk is full")),
        "{:?}",
        write.headers
    );
    let read = send(
        &f.app,
        "GET",
        "/api/models/admin/full/xet-read-token/main",
        Some(&f.admin),
        &[],
        "",
    )
    .await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.text());

    // A write token issued before the disk filled.
    let repo = RepoId::new(RepoType::Model, "admin", "full").unwrap();
    let token = token::issue(
        key().unwrap(),
        &Claims {
            repo: repo.to_string(),
            right: Right::Write,
            exp: now() + 600,
        },
    );
    let data = b"some weights".as_slice();
    let mut xorb = Vec::new();
    hub_xet::xorb::write_uncompressed_chunk(&mut xorb, data);
    let name = hash::xorb_hash(&[(hash::chunk_hash(data), data.len() as u64)]);
    let length = xorb.len().to_string();
    let refused = send(
        &f.app,
        "POST",
        &format!("/v1/xorbs/default/{name}"),
        Some(&token),
        &[("content-length", length.as_str())],
        xorb,
    )
    .await;
    assert_eq!(
        refused.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        refused.text()
    );
    assert_eq!(refused.header("x-error-code"), Some("InsufficientStorage"));
    assert!(
        refused
            .header("x-error-message")
            .is_some_and(|m| m.contains("disk is full")),
        "{:?}",
        refused.headers
    );
    assert!(f.state.xet().unwrap().xorb(&name).unwrap().is_none());
    let stats = f.state.store().stats().unwrap();
    assert_eq!((stats.files, stats.blocks), (0, 0), "{stats:?}");
}
