//! The Xet CAS protocol on this node (ADR 0010), as `hf_xet` (huggingface_hub ≥ 1.20) speaks
//! it: the node is its own CAS server, `casUrl` is the address the client used.
//!
//! - `GET /api/{type}s/{ns}/{name}/xet-{read,write}-token/{rev}` → `{accessToken, exp,
//!   casUrl}`: a token for that repository and right (`hub_xet::token`), after the Hub's access
//!   check (a write token needs write access).
//! - `POST /v1/xorbs/{prefix}/{hash}` (write): a xorb, verified, answered, then stored in the
//!   background (`hub_xet`; a shard waits for the imports of the xorbs it names);
//!   `{"was_inserted": bool}`.
//! - `POST /v1/shards` (write): a shard; every file it describes is verified against the
//!   stored xorbs and its SHA-256, stored as an ordinary LFS object and recorded for the
//!   token's repository, all or nothing; `{"result": 1}`.
//! - `GET /v1/reconstructions/{file_id}` (read; `Range` honoured): the terms of a file this
//!   repository owns, with fetch URLs on this node.
//! - `GET /v1/xorb-data/{hash}?exp&sig` (signed, no credentials): chunk-aligned byte ranges of
//!   a xorb as this node serves it (chunks uncompressed).
//!
//! A node at its store's reserved free space refuses the write token (403) and xorbs / shards
//! (413), with `X-Error-Code: InsufficientStorage`: hf_xet retries any 5xx for minutes.
//!
//! - `GET /v1/chunks/{prefix}/{chunk}` (any Xet token): global dedup — a shard listing, with
//!   keyed chunk hashes, the chunks of the stored files that hold this chunk *and* that the
//!   caller may read (files uploaded for the token's repository or for a public, ungated
//!   one, still held there); 404 when there are none.
//!
//! Not routed (the client falls back): `/v2/*` (→ v1), `/v1/xorb-grants` (→ direct xorb
//! upload).
//! Formats and checks are `hub-xet`'s; access is `hub-core`'s.

use crate::AppState;
use crate::access::access;
use crate::error::AppError;
use crate::extract::authenticate;
use crate::util::{blocking, endpoint};
use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hub_core::Need;
use hub_protocol::repo::{RepoId, RepoType};
use hub_xet::XetHash;
use hub_xet::token::{self, Claims, Right, TokenError};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::OnceLock;
use tokio::sync::Semaphore;

/// How long a Xet token lives (the client refreshes it a minute before).
const TOKEN_SECS: u64 = 3600;
/// How long a xorb fetch URL lives.
const FETCH_URL_SECS: u64 = 3600;
/// Largest `lfs-files/duplicate` body.
const MAX_DUPLICATE_BODY: usize = 1024 * 1024;
/// Xorbs received and verified at once: each holds its serialized body (≤ 80 MiB, typically
/// 64 MiB) while its chunks are decoded and imported a chunk at a time. Three keep both cores
/// busy while a third xorb arrives.
const XORB_VERIFIERS: usize = 3;

pub(crate) fn routes() -> Router<AppState> {
    let token = "/api/{kind}/{ns}/{name}";
    Router::new()
        .route(
            &format!("{token}/xet-read-token/{{*rev}}"),
            get(
                |state: State<AppState>, headers: HeaderMap, p: Path<TokenPath>| {
                    issue_token(state, headers, p, Right::Read)
                },
            ),
        )
        .route(
            &format!("{token}/xet-write-token/{{*rev}}"),
            get(
                |state: State<AppState>, headers: HeaderMap, p: Path<TokenPath>| {
                    issue_token(state, headers, p, Right::Write)
                },
            ),
        )
        .route(
            "/v1/xorbs/{prefix}/{hash}",
            post(upload_xorb)
                .head(head_xorb)
                .layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/v1/shards",
            post(upload_shard).layer(DefaultBodyLimit::disable()),
        )
        .route(
            &format!("{token}/lfs-files/duplicate"),
            post(duplicate).layer(DefaultBodyLimit::max(MAX_DUPLICATE_BODY)),
        )
        .route("/v1/reconstructions/{file_id}", get(reconstruction))
        .route("/v1/xorb-data/{hash}", get(xorb_data))
        // Routed so they answer 404 (on which hf_xet falls back to v1, direct xorb uploads,
        // no global dedup) rather than whatever another surface's pattern would answer.
        .route("/v2/shards", post(not_served))
        .route("/v2/reconstructions/{file_id}", get(not_served))
        .route("/v1/xorb-grants/{prefix}/{hash}", post(not_served))
        .route("/v1/chunks/{prefix}/{hash}", get(global_dedup))
}

async fn not_served() -> AppError {
    AppError::NotFound
}

/// The per-process key that signs tokens and fetch URLs (a restart invalidates them; clients
/// ask the token endpoint again).
fn key() -> Result<&'static [u8; 32], AppError> {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    crate::util::process_key(&KEY)
}

fn now() -> u64 {
    crate::util::unix_now()
}

/// The repository of a token route (`{rev}` is not checked: the commit is).
#[derive(Debug, Deserialize)]
pub(crate) struct TokenPath {
    kind: String,
    ns: String,
    name: String,
}

fn repo_of(kind: &str, ns: &str, name: &str) -> Result<RepoId, AppError> {
    let t: RepoType = kind.parse().map_err(|_| AppError::NotFound)?;
    if t.plural() != kind {
        return Err(AppError::NotFound);
    }
    RepoId::new(t, ns, name).map_err(|_| AppError::RepoNotFound)
}

async fn issue_token(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<TokenPath>,
    right: Right,
) -> Result<Response, AppError> {
    let id = repo_of(&p.kind, &p.ns, &p.name)?;
    let principal = authenticate(&state, &headers).await?;
    let need = match right {
        Right::Read => Need::Download,
        Right::Write => {
            if principal.is_none() {
                return Err(AppError::Unauthorized("Invalid user token."));
            }
            Need::Write
        }
    };
    let granted = access(&state, principal.as_ref(), &id, need).await?;
    if right == Right::Write {
        // A node at its reserved headroom refuses the upload here, before any xorb is sent,
        // with a status hf_xet (which fetches this token itself) does not retry.
        let st = state.clone();
        blocking(move || Ok(st.store().ensure_room(0)?))
            .await
            .map_err(|e| refuse_when_full(e, StatusCode::FORBIDDEN))?;
    }
    let exp = now() + TOKEN_SECS;
    let token = token::issue(
        key()?,
        &Claims {
            repo: granted.id.to_string(),
            right,
            exp,
        },
    );
    // huggingface_hub reads the headers, hf_xet's own refresh the body.
    let cas = endpoint(&headers);
    let mut response =
        Json(json!({ "accessToken": token, "exp": exp, "casUrl": cas })).into_response();
    let h = response.headers_mut();
    for (name, value) in [
        ("x-xet-cas-url", cas),
        ("x-xet-access-token", token),
        ("x-xet-token-expiration", exp.to_string()),
    ] {
        h.insert(
            name,
            header::HeaderValue::from_str(&value).map_err(AppError::internal)?,
        );
    }
    Ok(response)
}

#[derive(Debug, Deserialize)]
struct RepoOnly {
    kind: String,
    ns: String,
    name: String,
}

#[derive(Debug, Deserialize)]
struct DuplicateBody {
    target: DuplicateTarget,
    files: Vec<DuplicateFile>,
}

#[derive(Debug, Deserialize)]
struct DuplicateTarget {
    #[serde(rename = "type")]
    kind: String,
    name: String,
}

#[derive(Debug, Deserialize)]
struct DuplicateFile {
    sha256: String,
}

/// `POST /api/{type}s/{ns}/{name}/lfs-files/duplicate` (`hf cp` between repositories): the
/// caller reads the source and writes the target; each named LFS object of the source then
/// belongs to the target too, so a commit there may name it. No bytes move.
async fn duplicate(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<RepoOnly>,
    Json(body): Json<DuplicateBody>,
) -> Result<Json<Value>, AppError> {
    if body.files.len() > 1000 {
        return Err(AppError::BadRequest("at most 1000 files per call".into()));
    }
    let source = repo_of(&p.kind, &p.ns, &p.name)?;
    let principal = crate::extract::require_auth(&state, &headers).await?;
    let source = access(&state, Some(&principal), &source, Need::Read)
        .await?
        .id;
    let kind: RepoType =
        body.target.kind.parse().map_err(|_| {
            AppError::BadRequest(format!("unknown repo type {:?}", body.target.kind))
        })?;
    let target = RepoId::parse(kind, &body.target.name).map_err(|_| AppError::RepoNotFound)?;
    let target = access(&state, Some(&principal), &target, Need::Write)
        .await?
        .id;
    let st = state.clone();
    let failed = blocking(move || {
        let mut failed = Vec::new();
        for f in body.files {
            let Ok(sha) = f.sha256.parse::<hub_store::Sha256>() else {
                failed.push(json!({ "sha256": f.sha256, "error": "invalid sha256" }));
                continue;
            };
            if !st.hub().owns_lfs(&source, &sha)? {
                failed.push(json!({ "sha256": f.sha256, "error": "not an LFS file of the source repository" }));
                continue;
            }
            st.hub().record_upload(&target, &sha)?;
        }
        Ok(failed)
    })
    .await?;
    Ok(Json(json!({ "failed": failed })))
}

/// The repository and right of the request's Xet token; `write` demands a write token.
fn claims(headers: &HeaderMap, write: bool) -> Result<(RepoId, Claims), AppError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(AppError::Unauthorized("a Xet token is required"))?;
    let claims = token::verify(key()?, token.trim(), now()).map_err(|e| match e {
        TokenError::Expired => AppError::Unauthorized("Xet token expired; ask for a new one"),
        _ => AppError::Unauthorized("invalid Xet token"),
    })?;
    if write && claims.right != Right::Write {
        return Err(AppError::Forbidden(
            "this Xet token only allows reading".into(),
        ));
    }
    let id = repo_from_label(&claims.repo).ok_or(AppError::Unauthorized("invalid Xet token"))?;
    Ok((id, claims))
}

/// A repository as tokens and the Xet index name it (`RepoId`'s text form, `model/ns/name`).
fn repo_from_label(label: &str) -> Option<RepoId> {
    let (kind, rest) = label.split_once('/')?;
    RepoId::parse(kind.parse().ok()?, rest).ok()
}

fn parse_hash(s: &str) -> Result<XetHash, AppError> {
    XetHash::from_hex(s).ok_or_else(|| AppError::BadRequest(format!("invalid Xet hash {s:?}")))
}

/// Reads a body of at most `limit` bytes.
async fn read_body(body: Body, limit: usize, what: &str) -> Result<axum::body::Bytes, AppError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        // axum reports the limit as http-body-util's `LengthLimitError` inside its error.
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text.push_str(&s.to_string());
            source = s.source();
        }
        if text.contains("length limit exceeded") {
            AppError::PayloadTooLarge(format!("{what} over {limit} bytes"))
        } else {
            AppError::BadRequest(format!("{what} upload interrupted: {e}"))
        }
    })
}

/// Reads a body of at most `limit` bytes into one buffer sized from its announced length, so a
/// 64 MiB xorb costs 64 MiB (collecting frames and then joining them would hold it twice).
async fn read_announced(
    body: Body,
    announced: u64,
    limit: usize,
    what: &str,
) -> Result<Vec<u8>, AppError> {
    use futures::StreamExt;
    let mut out = Vec::with_capacity(usize::try_from(announced).unwrap_or(limit).min(limit));
    let mut frames = body.into_data_stream();
    while let Some(frame) = frames.next().await {
        let frame =
            frame.map_err(|e| AppError::BadRequest(format!("{what} upload interrupted: {e}")))?;
        if out.len() + frame.len() > limit {
            return Err(AppError::PayloadTooLarge(format!(
                "{what} over {limit} bytes"
            )));
        }
        out.extend_from_slice(&frame);
    }
    Ok(out)
}

async fn upload_xorb(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((_prefix, hash)): Path<(String, String)>,
    body: Body,
) -> Result<Json<Value>, AppError> {
    claims(&headers, true)?;
    let hash = parse_hash(&hash)?;
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(hub_xet::xorb::MAX_XORB_UPLOAD as u64);
    let st = state.clone();
    blocking(move || Ok(st.store().ensure_room(announced)?))
        .await
        .map_err(|e| refuse_when_full(e, StatusCode::PAYLOAD_TOO_LARGE))?;
    // Where a xorb's time goes (the client waits on this route): waiting for a verifier,
    // receiving the body, verifying it; the import into the store follows after the answer.
    let t0 = std::time::Instant::now();
    let permit = VERIFIERS.acquire().await.map_err(AppError::internal)?;
    let waited = t0.elapsed();
    let bytes = read_announced(body, announced, hub_xet::xorb::MAX_XORB_UPLOAD, "xorb").await?;
    let received = t0.elapsed();
    state.metrics().xet_received(bytes.len() as u64);
    // Verified before the answer, so a bad xorb is refused here; imported after it, so the
    // client's next xorb overlaps this one's import (the shard waits for every import).
    // A xorb stored already is verified too before the answer says so: its name alone
    // proves nothing.
    // The check computes each chunk's store id as well, so the import hashes nothing again.
    let st = state.clone();
    let (verified_xorb, known) = blocking(move || {
        let v = hub_xet::xorb::verify_xorb(bytes, &hash)?;
        Ok((v, st.xet()?.xorb(&hash)?.is_some()))
    })
    .await?;
    if known {
        return Ok(Json(json!({ "was_inserted": false })));
    }
    let verified = t0.elapsed();
    let pending = Pending::start(hash);
    let st = state.clone();
    tokio::spawn(async move {
        let (_permit, _pending) = (permit, pending);
        let stored = blocking(move || Ok(st.xet()?.put_verified_xorb(&verified_xorb)?))
            .await
            .map_err(|e| refuse_when_full(e, StatusCode::PAYLOAD_TOO_LARGE));
        tracing::debug!(
            xorb = %hash,
            wait_ms = waited.as_millis() as u64,
            receive_ms = (received - waited).as_millis() as u64,
            verify_ms = (verified - received).as_millis() as u64,
            store_ms = (t0.elapsed() - verified).as_millis() as u64,
            ok = stored.is_ok(),
            "xorb"
        );
        if let Err(e) = stored {
            tracing::warn!(xorb = %hash, error = %e, "storing a verified xorb failed");
            let mut failed = FAILED_IMPORTS.lock().unwrap_or_else(|e| e.into_inner());
            if failed.len() >= 1024 {
                failed.clear();
            }
            failed.insert(hash, e);
        }
    });
    Ok(Json(json!({ "was_inserted": true })))
}

/// Xorbs received and verified at once, each holding its body until its import ends.
static VERIFIERS: Semaphore = Semaphore::const_new(XORB_VERIFIERS);

/// The imports of answered xorbs still running, by xorb: a shard waits only for those of the
/// xorbs it names (another session's imports do not hold it up).
static PENDING: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<XetHash, tokio::sync::watch::Receiver<()>>>,
> = std::sync::LazyLock::new(Default::default);

/// One running import of an answered xorb, registered in [`PENDING`] until dropped; a shard
/// naming the xorb waits for that.
struct Pending {
    xorb: XetHash,
    done: tokio::sync::watch::Sender<()>,
}

impl Pending {
    fn start(xorb: XetHash) -> Self {
        let (done, rx) = tokio::sync::watch::channel(());
        PENDING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(xorb, rx);
        Self { xorb, done }
    }

    /// Waits until no import of these xorbs is running.
    async fn wait_for(xorbs: impl Iterator<Item = XetHash>) {
        let waits: Vec<_> = {
            let pending = PENDING.lock().unwrap_or_else(|e| e.into_inner());
            xorbs.filter_map(|x| pending.get(&x).cloned()).collect()
        };
        for mut rx in waits {
            // Nothing is ever sent: `changed` ends (with an error) when the import drops its
            // sender.
            while rx.changed().await.is_ok() {}
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut pending = PENDING.lock().unwrap_or_else(|e| e.into_inner());
        // Unless a later upload of the same xorb registered its own import meanwhile.
        if pending
            .get(&self.xorb)
            .is_some_and(|rx| rx.same_channel(&self.done.subscribe()))
        {
            pending.remove(&self.xorb);
        }
    }
}

/// Why the import of an answered xorb failed (a full disk, an I/O error), for the shard that
/// names it; bounded.
static FAILED_IMPORTS: std::sync::LazyLock<std::sync::Mutex<BTreeMap<XetHash, AppError>>> =
    std::sync::LazyLock::new(Default::default);

async fn head_xorb(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((_prefix, hash)): Path<(String, String)>,
) -> Result<StatusCode, AppError> {
    claims(&headers, false)?;
    let hash = parse_hash(&hash)?;
    let st = state.clone();
    let known = blocking(move || Ok(st.xet()?.xorb(&hash)?.is_some())).await?;
    Ok(if known {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    })
}

async fn upload_shard(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, AppError> {
    let (repo, _) = claims(&headers, true)?;
    let t0 = std::time::Instant::now();
    let bytes = read_body(body, hub_xet::shard::MAX_SHARD_BYTES, "shard").await?;
    let received = t0.elapsed();
    state.metrics().xet_received(bytes.len() as u64);
    // Every xorb the shard names that was answered is in the store (or failed: then that
    // failure is the answer).
    if let Ok(files) = hub_xet::shard::parse_shard(&bytes) {
        let named: Vec<XetHash> = files
            .iter()
            .flat_map(|f| f.segments.iter().map(|s| s.xorb))
            .collect();
        Pending::wait_for(named.iter().copied()).await;
        let mut failed = FAILED_IMPORTS.lock().unwrap_or_else(|e| e.into_inner());
        for x in named {
            if let Some(e) = failed.remove(&x) {
                return Err(e);
            }
        }
    }
    let st = state.clone();
    let files = blocking(move || {
        let records = st.xet()?.put_shard(&bytes).inspect_err(|e| {
            tracing::info!(error = %e, "Xet shard refused");
        })?;
        // The files now belong to the token's repository: a commit there may name them.
        for r in &records {
            st.hub().record_upload(&repo, &r.sha256)?;
        }
        // And global dedup may offer them to whoever may read that repository.
        let hashes: Vec<XetHash> = records.iter().map(|r| r.file_hash).collect();
        st.xet()?.add_owner(&hashes, &repo.to_string())?;
        Ok(records.len())
    })
    .await
    .map_err(|e| refuse_when_full(e, StatusCode::PAYLOAD_TOO_LARGE))?;
    tracing::info!(
        files,
        receive_ms = received.as_millis() as u64,
        store_ms = (t0.elapsed() - received).as_millis() as u64,
        "Xet shard stored"
    );
    Ok(Json(json!({ "result": 1 })))
}

/// A Xet upload this node's disk cannot take, answered so that `hf_xet` gives up at once:
/// xet-core's retry rule (`retry_wrapper.rs`, for the token route too) retries every 5xx —
/// 507 included, for minutes — and 408 / 429, but no other 4xx. So a 4xx: 403 for the write
/// token, 413 ("larger than the server is able to process") for a xorb or shard, with the
/// Hub's error headers saying why.
fn refuse_when_full(e: AppError, status: StatusCode) -> AppError {
    match e {
        AppError::InsufficientStorage => AppError::Coded {
            status,
            code: "InsufficientStorage",
            message: "this node's disk is full (at its reserved free space): it cannot store \
                      this Xet upload"
                .into(),
        },
        e => e,
    }
}

/// A `Range: bytes=a-b` / `bytes=a-` header as `[a, b+1)`; anything else is the whole file.
fn file_range(headers: &HeaderMap) -> Result<Option<(u64, u64)>, AppError> {
    let Some(spec) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return Ok(None);
    };
    let bad = || AppError::BadRequest("invalid Range".into());
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let a: u64 = a.trim().parse().map_err(|_| bad())?;
    let end = match b.trim() {
        "" => u64::MAX,
        b => b
            .parse::<u64>()
            .map_err(|_| bad())?
            .checked_add(1)
            .ok_or_else(bad)?,
    };
    if end <= a {
        return Err(bad());
    }
    Ok(Some((a, end)))
}

/// `GET /v1/chunks/{prefix}/{chunk}`: global dedup (see the module docs). The caller may
/// read a file when it was uploaded for the token's repository or for a repository anyone
/// may read (public and not gated), and that repository still holds it. The answer's chunk
/// hashes are keyed with a key of this answer's own, valid for as long as a token.
async fn global_dedup(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((_prefix, hash)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let (repo, _) = claims(&headers, false)?;
    let chunk = parse_hash(&hash)?;
    let st = state.clone();
    let candidates = blocking(move || Ok(st.xet()?.dedup_candidates(&chunk)?)).await?;
    // Which owners the caller may read: the token's repository, or one open to anyone.
    let mut may_read: BTreeMap<String, Option<RepoId>> = BTreeMap::new();
    for owner in candidates.iter().flat_map(|(_, owners)| owners) {
        if may_read.contains_key(owner) {
            continue;
        }
        let readable = match repo_from_label(owner) {
            Some(id) if id == repo => Some(id),
            Some(id) => state
                .hub()
                .access(None, &id, Need::Download)
                .await
                .is_ok()
                .then_some(id),
            None => None,
        };
        may_read.insert(owner.clone(), readable);
    }
    let st = state.clone();
    let now = now();
    let answer = blocking(move || {
        let mut files = Vec::new();
        // Owners that no longer hold their file (whoever may read them): forgotten, so the
        // index does not keep what no repository has any more.
        let mut stale = Vec::new();
        for (file, owners) in candidates {
            let mut offered = false;
            for owner in &owners {
                let Some(id) = repo_from_label(owner) else {
                    stale.push((file.file_hash, owner.clone()));
                    continue;
                };
                if !st.hub().owns_lfs(&id, &file.sha256)? {
                    stale.push((file.file_hash, owner.clone()));
                } else if may_read.get(owner).is_some_and(Option::is_some) {
                    offered = true;
                }
            }
            if offered {
                files.push(file);
            }
        }
        let forgotten = st.xet()?.forget_stale(&chunk, &stale)?;
        if forgotten > 0 {
            tracing::debug!(%chunk, forgotten, "global dedup: files no repository holds forgotten");
        }
        let msg = format!("xet-dedup\n{chunk}\n{now}");
        let answer_key = *blake3::keyed_hash(key()?, msg.as_bytes()).as_bytes();
        Ok(st
            .xet()?
            .dedup_answer(&files, &answer_key, now, now + TOKEN_SECS)?)
    })
    .await?;
    let Some(answer) = answer else {
        return Err(AppError::NotFound);
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::from(answer))
        .map_err(AppError::internal)
}

fn fetch_sig(xorb: &XetHash, exp: u64) -> Result<String, AppError> {
    let msg = format!("xorb-data\n{xorb}\n{exp}");
    Ok(blake3::keyed_hash(key()?, msg.as_bytes())
        .to_hex()
        .to_string())
}

async fn reconstruction(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(file_id): Path<String>,
) -> Result<Response, AppError> {
    let (repo, _) = claims(&headers, false)?;
    let file = parse_hash(&file_id)?;
    let range = file_range(&headers)?;
    let st = state.clone();
    let found = blocking(move || {
        let xet = st.xet()?;
        let Some(record) = xet.file(&file)? else {
            return Ok(None);
        };
        // Only files of the token's repository: a hash alone opens nothing.
        if !st.hub().owns_lfs(&repo, &record.sha256)? {
            return Ok(None);
        }
        Ok(Some((record.size, xet.reconstruction(&file, range)?)))
    })
    .await?;
    let Some((size, recon)) = found else {
        return Err(AppError::EntryNotFound {
            message: format!("no file with Xet hash {file_id} in this repository"),
            commit: None,
        });
    };
    let Some((_, recon)) = recon else {
        return Err(AppError::RangeNotSatisfiable { size });
    };
    let base = endpoint(&headers);
    let exp = now() + FETCH_URL_SECS;
    let mut terms = Vec::with_capacity(recon.terms.len());
    let mut fetch: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for t in &recon.terms {
        let hex = t.xorb.hex();
        terms.push(json!({
            "hash": hex,
            "unpacked_length": t.unpacked_length,
            "range": { "start": t.start, "end": t.end },
        }));
        let info = json!({
            "range": { "start": t.start, "end": t.end },
            "url": format!("{base}/v1/xorb-data/{hex}?exp={exp}&sig={}", fetch_sig(&t.xorb, exp)?),
            "url_range": { "start": t.bytes.0, "end": t.bytes.1 },
        });
        let list = fetch.entry(hex).or_default();
        if !list.contains(&info) {
            list.push(info);
        }
    }
    Ok(Json(json!({
        "offset_into_first_range": recon.offset_into_first_range,
        "terms": terms,
        "fetch_info": fetch,
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
struct FetchQuery {
    exp: u64,
    sig: String,
}

async fn xorb_data(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(hash): Path<String>,
    Query(q): Query<FetchQuery>,
) -> Result<Response, AppError> {
    let xorb = parse_hash(&hash)?;
    let expected = fetch_sig(&xorb, q.exp)?;
    let same = expected.len() == q.sig.len()
        && expected
            .bytes()
            .zip(q.sig.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return Err(AppError::Forbidden("invalid xorb URL".into()));
    }
    if q.exp <= now() {
        return Err(AppError::Forbidden(
            "xorb URL expired; ask for the reconstruction again".into(),
        ));
    }
    let range = file_range(&headers)?;
    let st = state.clone();
    let plan = blocking(move || {
        let xet = st.xet()?;
        let Some(record) = xet.xorb(&xorb)? else {
            return Ok(None);
        };
        let (first, last) = match range {
            Some((a, end)) => (a, end - 1),
            None => (0, record.served_offset(record.chunks.len()) - 1),
        };
        let limit = hub_xet::xorb::MAX_XORB_UPLOAD as u64;
        Ok(xet
            .xorb_range(&xorb, first, last, limit)?
            .map(|r| (first, last, r)))
    })
    .await?;
    let Some((first, last, plan)) = plan else {
        return Err(AppError::NotFound);
    };
    let len = plan.len();
    // Streamed a chunk at a time through a bounded channel: a client fetching many 64 MiB
    // ranges at once costs a few chunks each, not the ranges.
    let store = state.store().clone();
    let pieces = blocking(move || Ok(plan.pieces(&store)?)).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(8);
    tokio::task::spawn_blocking(move || {
        for piece in pieces {
            let failed = piece.is_err();
            if let Err(e) = &piece {
                tracing::error!(xorb = %xorb, error = %e, "reading a xorb range failed");
            }
            if tx
                .blocking_send(piece.map(axum::body::Bytes::from))
                .is_err()
                || failed
            {
                return;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let status = if range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len.to_string());
    if range.is_some() {
        builder = builder.header(header::CONTENT_RANGE, format!("bytes {first}-{last}/*"));
    }
    builder
        .body(Body::from_stream(stream))
        .map_err(AppError::internal)
}

/// The Xet file hash of a stored object, when it arrived through Xet here (resolve headers,
/// `xetHash` in listings). Blocking.
pub(crate) fn xet_hash_of(
    state: &AppState,
    sha256: &hub_store::Sha256,
) -> Result<Option<XetHash>, AppError> {
    Ok(state.xet()?.xet_hash_of(sha256)?)
}

/// The headers a resolve answer carries for a file with a Xet hash: the hash and where to get
/// a read token and the reconstruction — all on this node.
pub(crate) fn resolve_headers(
    headers: &HeaderMap,
    id: &RepoId,
    rev: &str,
    hash: &XetHash,
) -> [(&'static str, String); 2] {
    let base = endpoint(headers);
    let rev: String = rev
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let auth = format!(
        "{base}/api/{}/{}/xet-read-token/{rev}",
        id.kind().plural(),
        id.hub_id()
    );
    let recon = format!("{base}/v1/reconstructions/{hash}");
    [
        ("x-xet-hash", hash.hex()),
        (
            "link",
            format!("<{auth}>; rel=\"xet-auth\", <{recon}>; rel=\"xet-reconstruction-info\""),
        ),
    ]
}

/// Adds `xetHash` to the tree / paths-info entries of LFS files that arrived through Xet.
/// Blocking.
pub(crate) fn add_xet_hashes(state: &AppState, entries: &mut [Value]) -> Result<(), AppError> {
    let xet = state.xet()?;
    for e in entries {
        let Some(oid) = e
            .get("lfs")
            .and_then(|l| l.get("oid"))
            .and_then(Value::as_str)
        else {
            continue;
        };
        let Ok(sha) = oid.parse::<hub_store::Sha256>() else {
            continue;
        };
        if let Some(h) = xet.xet_hash_of(&sha)? {
            e["xetHash"] = json!(h.hex());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
