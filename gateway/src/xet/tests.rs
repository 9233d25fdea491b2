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

/// Creates repo `admin/{name}` (private or not) and returns a Xet write token for it.
async fn repo_with_token(f: &crate::testing::Fixture, name: &str, private: bool) -> String {
    let created = send(
        &f.app,
        "POST",
        "/api/repos/create",
        Some(&f.admin),
        &[("content-type", "application/json")],
        format!(r#"{{"name":"{name}","organization":null,"private":{private}}}"#),
    )
    .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.text());
    let t = send(
        &f.app,
        "GET",
        &format!("/api/models/admin/{name}/xet-write-token/main"),
        Some(&f.admin),
        &[],
        "",
    )
    .await;
    assert_eq!(t.status, StatusCode::OK, "{}", t.text());
    let v: Value = serde_json::from_slice(&t.body).unwrap();
    v["accessToken"].as_str().unwrap().to_owned()
}

/// Uploads a one-xorb file of `chunks` with `token` (xorb, then shard); returns the chunk
/// hashes.
async fn upload_file(f: &crate::testing::Fixture, token: &str, chunks: &[Vec<u8>]) -> Vec<XetHash> {
    let mut xorb = Vec::new();
    let mut hashes = Vec::new();
    for c in chunks {
        hub_xet::xorb::write_uncompressed_chunk(&mut xorb, c);
        hashes.push((hash::chunk_hash(c), c.len() as u64));
    }
    let name = hash::xorb_hash(&hashes);
    let put = send(
        &f.app,
        "POST",
        &format!("/v1/xorbs/default/{name}"),
        Some(token),
        &[],
        xorb,
    )
    .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text());
    // A shard of one file: header, the file (one segment, SHA-256 in the metadata extension),
    // the bookend.
    let content: Vec<u8> = chunks.concat();
    let mut shard = b"HFRepoMetaData\0".to_vec();
    shard.extend_from_slice(&[
        85, 105, 103, 69, 106, 123, 129, 87, 131, 165, 189, 217, 92, 205, 209, 74, 169,
    ]);
    shard.extend_from_slice(&2u64.to_le_bytes());
    shard.extend_from_slice(&200u64.to_le_bytes());
    shard.extend_from_slice(&hash::file_hash(&hashes).0);
    shard.extend_from_slice(&(1u32 << 30).to_le_bytes());
    shard.extend_from_slice(&1u32.to_le_bytes());
    shard.extend_from_slice(&[0u8; 8]);
    shard.extend_from_slice(&name.0);
    for v in [0, content.len() as u32, 0, chunks.len() as u32] {
        shard.extend_from_slice(&v.to_le_bytes());
    }
    let sha: [u8; 32] = {
        use sha2::Digest;
        sha2::Sha256::digest(&content).into()
    };
    shard.extend_from_slice(&hub_xet::shard::sha256_from_xet(&sha));
    shard.extend_from_slice(&[0u8; 16]);
    shard.extend_from_slice(&[0xFF; 32]);
    shard.extend_from_slice(&[0u8; 16]);
    let put = send(&f.app, "POST", "/v1/shards", Some(token), &[], shard).await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text());
    hashes.into_iter().map(|(h, _)| h).collect()
}

/// Global dedup answers only with chunks of files the caller may read: a file uploaded for a
/// private repository is found with that repository's token and with no other (not even
/// another repository of the same user: Xet tokens name a repository, not a user); a file of
/// a public repository is found with any token, and the answer keys its chunk hashes and
/// hides the chunks of the xorb that belong to no readable file.
#[tokio::test]
async fn global_dedup_answers_only_with_chunks_the_caller_may_read() {
    let f = crate::testing::fixture().await;
    let secret = repo_with_token(&f, "secret", true).await;
    let open = repo_with_token(&f, "open", false).await;
    let other = repo_with_token(&f, "other", false).await;
    let chunks_of = |seed: u8| -> Vec<Vec<u8>> {
        (0..4)
            .map(|i| vec![seed.wrapping_add(i); 9000 + usize::from(i) * 100])
            .collect()
    };
    let private = upload_file(&f, &secret, &chunks_of(1)).await;
    let query = |token: String, chunk: XetHash| {
        let app = f.app.clone();
        async move {
            send(
                &app,
                "GET",
                &format!("/v1/chunks/default-merkledb/{chunk}"),
                Some(&token),
                &[],
                "",
            )
            .await
        }
    };
    // The private file: its own repository's token finds it, no other does.
    let own = query(secret.clone(), private[0]).await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.text());
    let answer = hub_xet::dedup::parse_answer(&own.body).unwrap();
    assert_eq!(answer.xorbs.len(), 1);
    assert_eq!(
        answer.xorbs[0].1,
        private
            .iter()
            .map(|h| Some(hub_xet::dedup::keyed(&answer.key, h)))
            .collect::<Vec<_>>()
    );
    assert!(answer.expiry > now());
    for token in [&open, &other] {
        let refused = query(token.clone(), private[0]).await;
        assert_eq!(refused.status, StatusCode::NOT_FOUND, "{}", refused.text());
    }
    assert_eq!(
        query(secret.clone(), XetHash([3; 32])).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        send(
            &f.app,
            "GET",
            &format!("/v1/chunks/default-merkledb/{}", private[0]),
            None,
            &[],
            ""
        )
        .await
        .status,
        StatusCode::UNAUTHORIZED
    );

    // A public file that shares its xorb's first two chunks with a private one: another
    // repository's token finds the public file, and sees only its chunks.
    let mut mixed = chunks_of(1);
    mixed.truncate(2);
    mixed.push(vec![200; 9500]);
    let public = upload_file(&f, &open, &mixed).await;
    let found = query(other.clone(), public[0]).await;
    assert_eq!(found.status, StatusCode::OK, "{}", found.text());
    let answer = hub_xet::dedup::parse_answer(&found.body).unwrap();
    assert_eq!(answer.xorbs.len(), 1, "only the public file's xorb");
    assert_eq!(
        answer.xorbs[0].1,
        public
            .iter()
            .map(|h| Some(hub_xet::dedup::keyed(&answer.key, h)))
            .collect::<Vec<_>>()
    );
    let raw: Vec<[u8; 32]> = private.iter().chain(&public).map(|h| h.0).collect();
    assert!(
        !found.body.windows(32).any(|w| raw.iter().any(|r| r == w)),
        "a raw chunk hash leaked"
    );
}

/// Global dedup forgets files that no repository holds any more: once the only repository
/// holding a file is deleted, a query for its chunk answers 404 and the chunk's entry goes
/// from the index (so the chunk's list, at most 64 files, does not fill with files nobody
/// has); uploading the file again through a shard for another repository indexes it again.
#[tokio::test]
async fn global_dedup_forgets_files_no_repository_holds() {
    let f = crate::testing::fixture().await;
    let gone = repo_with_token(&f, "gone", false).await;
    let asker = repo_with_token(&f, "asker", false).await;
    let chunks: Vec<Vec<u8>> = (0..3u8).map(|i| vec![70 + i; 9100]).collect();
    let hashes = upload_file(&f, &gone, &chunks).await;
    let query = |token: String| {
        let app = f.app.clone();
        let chunk = hashes[0];
        async move {
            send(
                &app,
                "GET",
                &format!("/v1/chunks/default-merkledb/{chunk}"),
                Some(&token),
                &[],
                "",
            )
            .await
        }
    };
    assert_eq!(query(asker.clone()).await.status, StatusCode::OK);
    let candidates = |f: &crate::testing::Fixture| {
        f.state
            .xet()
            .unwrap()
            .dedup_candidates(&hashes[0])
            .unwrap()
            .len()
    };
    assert_eq!(candidates(&f), 1);

    let deleted = send(
        &f.app,
        "DELETE",
        "/api/repos/delete",
        Some(&f.admin),
        &[],
        json!({ "name": "gone", "organization": "admin" }).to_string(),
    )
    .await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.text());
    let refused = query(asker.clone()).await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND, "{}", refused.text());
    assert_eq!(
        candidates(&f),
        0,
        "the entry of a file nobody holds is forgotten"
    );

    let again = repo_with_token(&f, "again", false).await;
    upload_file(&f, &again, &chunks).await;
    assert_eq!(candidates(&f), 1);
    assert_eq!(query(asker).await.status, StatusCode::OK);
}
