//! Signed transfer URLs: the batch call is authorised, the transfers it hands out carry no
//! credentials, so each URL carries a keyed BLAKE3 MAC over (operation, repository, object,
//! size, expiry) with a key that exists only in this process's memory.

use crate::error::AppError;
use crate::util::endpoint;
use axum::http::HeaderMap;
use hub_protocol::repo::{RepoId, RepoType};
use hub_store::Sha256;
use serde::Deserialize;
use std::sync::OnceLock;

/// How long a signed transfer URL stays valid.
const URL_LIFETIME_SECS: u64 = 3600;

/// The per-process signing key, from the OS generator (an error if it has none).
fn key() -> Result<&'static [u8; 32], AppError> {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    crate::util::process_key(&KEY)
}

fn now() -> u64 {
    crate::util::unix_now()
}

/// The MAC of one transfer: operation, repository, object, size, expiry.
fn sign(op: &str, repo: &str, oid: &Sha256, size: u64, expires: u64) -> Result<String, AppError> {
    let msg = format!("{op}\n{repo}\n{oid}\n{size}\n{expires}");
    Ok(blake3::keyed_hash(key()?, msg.as_bytes())
        .to_hex()
        .to_string())
}

pub(super) fn signed_url(
    headers: &HeaderMap,
    op: &str,
    repo: &RepoId,
    oid: &Sha256,
    size: u64,
) -> Result<(String, u64), AppError> {
    let expires = now() + URL_LIFETIME_SECS;
    let repo = repo.to_string();
    let sig = sign(op, &repo, oid, size, expires)?;
    Ok((
        format!(
            "{}/lfs-objects/{oid}?op={op}&repo={}&size={size}&exp={expires}&sig={sig}",
            endpoint(headers),
            repo.replace('/', "%2F")
        ),
        URL_LIFETIME_SECS,
    ))
}

#[derive(Debug, Deserialize)]
pub(super) struct Signed {
    op: String,
    /// The repository the transfer is for (`type/ns/name`).
    repo: String,
    pub(super) size: u64,
    exp: u64,
    sig: String,
}

/// Checks a transfer URL's signature, operation and expiry.
pub(super) fn check_signed(q: &Signed, op: &str, oid: &Sha256) -> Result<(), AppError> {
    let expected = sign(op, &q.repo, oid, q.size, q.exp)?;
    // Constant-time comparison of the hex strings.
    let same = expected.len() == q.sig.len()
        && expected
            .bytes()
            .zip(q.sig.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if q.op != op || !same {
        return Err(AppError::Forbidden("invalid transfer URL".into()));
    }
    if q.exp < now() {
        return Err(AppError::Forbidden(
            "transfer URL expired; ask the batch API again".into(),
        ));
    }
    Ok(())
}

/// The repository a (verified) transfer URL was signed for.
pub(super) fn signed_repo(q: &Signed) -> Result<RepoId, AppError> {
    let (kind, rest) = q
        .repo
        .split_once('/')
        .ok_or_else(|| AppError::BadRequest("invalid transfer URL".into()))?;
    let kind: RepoType = kind
        .parse()
        .map_err(|_| AppError::BadRequest("invalid transfer URL".into()))?;
    RepoId::parse(kind, rest).map_err(|_| AppError::BadRequest("invalid transfer URL".into()))
}
