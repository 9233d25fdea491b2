//! The git-lfs batch API, as `huggingface_hub` (uploads) and the `git lfs` binary (uploads and
//! downloads) use it.
//!
//! `POST {repo}.git/info/lfs/objects/batch` answers, per object, with a transfer URL on this
//! node: `PUT /lfs-objects/{oid}` to upload, `GET /lfs-objects/{oid}` to download. Those
//! transfers carry no `Authorization` (huggingface_hub drops it on the PUT; git-lfs sends none
//! with `authenticated: true`), so the batch call, which is authorised, signs each URL: a
//! keyed BLAKE3 MAC over (operation, oid, size, expiry) with a key that exists only in this
//! process's memory. A URL is good for one object, one operation and one hour, and no longer
//! than the process lives (a client that retries after a restart asks the batch API again).
//!
//! Uploads stream into `hub-store`; the object is accepted only if its SHA-256 and size are
//! the ones signed. `verify` checks that the store has the object.

use crate::AppState;
use crate::access::read_access;
use crate::error::AppError;
use crate::extract::authenticate;
use crate::import::StreamImport;
use crate::util::{blocking, endpoint, stream_from_store};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use hub_auth::Access;
use hub_core::{AccessError, Need};
use hub_protocol::repo::{RepoId, RepoType};
use hub_store::Sha256;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

const LFS_JSON: &str = "application/vnd.git-lfs+json";
/// How long a signed transfer URL stays valid.
const URL_LIFETIME_SECS: u64 = 3600;
/// The largest object the batch API accepts (the Hub's per-file limit).
const MAX_OBJECT_SIZE: u64 = 50 * 1024 * 1024 * 1024;
/// Objects per batch request (huggingface_hub sends at most 256).
const MAX_BATCH: usize = 1000;

pub(crate) fn routes() -> Router<AppState> {
    let mut router = Router::new();
    for kind in RepoType::ALL {
        let base = format!("/{}{{ns}}/{{name}}/info/lfs", kind.url_prefix());
        router = router
            .route(
                &format!("{base}/objects/batch"),
                post(
                    move |state: State<AppState>,
                          headers: HeaderMap,
                          Path(p): Path<RepoPathParams>,
                          body: Bytes| { batch(state, headers, kind, p, body) },
                ),
            )
            .route(
                &format!("{base}/objects/verify"),
                post(
                    move |state: State<AppState>,
                          headers: HeaderMap,
                          Path(p): Path<RepoPathParams>,
                          body: Bytes| {
                        verify(state, headers, kind, p, body)
                    },
                ),
            )
            .route(&format!("{base}/locks/verify"), post(locks_verify));
    }
    router.route("/lfs-objects/{oid}", get(download).put(upload))
}

/// An error in git-lfs's shape: `{"message"}` with the LFS content type; 401s carry the
/// challenges git-lfs and git expect.
fn lfs_error(err: AppError) -> Response {
    let mut resp = err.into_response();
    let status = resp.status();
    let message = resp
        .headers()
        .get("x-error-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("error")
        .to_owned();
    *resp.body_mut() = Body::from(json!({ "message": message }).to_string());
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(LFS_JSON));
    headers.remove(header::CONTENT_LENGTH);
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(
            "lfs-authenticate",
            HeaderValue::from_static("Basic realm=\"hubmesh\""),
        );
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"hubmesh\""),
        );
    }
    resp
}

fn repo_id(kind: RepoType, ns: &str, name: &str) -> Result<RepoId, AppError> {
    let name = name.strip_suffix(".git").unwrap_or(name);
    RepoId::new(kind, ns, name).map_err(|_| AppError::RepoNotFound)
}

/// The per-process signing key, from the OS generator (an error if it has none).
fn key() -> Result<&'static [u8; 32], AppError> {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    if let Some(k) = KEY.get() {
        return Ok(k);
    }
    let mut k = [0u8; 32];
    getrandom::fill(&mut k).map_err(|e| AppError::internal(format!("no OS randomness: {e}")))?;
    Ok(KEY.get_or_init(|| k))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The MAC of one transfer: operation, repository, object, size, expiry.
fn sign(op: &str, repo: &str, oid: &Sha256, size: u64, expires: u64) -> Result<String, AppError> {
    let msg = format!("{op}\n{repo}\n{oid}\n{size}\n{expires}");
    Ok(blake3::keyed_hash(key()?, msg.as_bytes())
        .to_hex()
        .to_string())
}

fn signed_url(
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
struct Signed {
    op: String,
    /// The repository the transfer is for (`type/ns/name`).
    repo: String,
    size: u64,
    exp: u64,
    sig: String,
}

/// Checks a transfer URL's signature, operation and expiry.
fn check_signed(q: &Signed, op: &str, oid: &Sha256) -> Result<(), AppError> {
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

#[derive(Debug, Deserialize)]
struct BatchRequest {
    operation: String,
    objects: Vec<BatchObject>,
    #[serde(default)]
    transfers: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct BatchObject {
    oid: String,
    size: u64,
}

#[derive(Debug, Deserialize)]
struct RepoPathParams {
    ns: String,
    name: String,
}

async fn batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    kind: RepoType,
    p: RepoPathParams,
    body: Bytes,
) -> Response {
    match batch_inner(&state, &headers, kind, &p, &body).await {
        Ok(v) => ([(header::CONTENT_TYPE, LFS_JSON)], Json(v)).into_response(),
        Err(e) => lfs_error(e),
    }
}

async fn batch_inner(
    state: &AppState,
    headers: &HeaderMap,
    kind: RepoType,
    p: &RepoPathParams,
    body: &[u8],
) -> Result<Value, AppError> {
    let id = repo_id(kind, &p.ns, &p.name)?;
    let req: BatchRequest = serde_json::from_slice(body)
        .map_err(|e| AppError::BadRequest(format!("invalid batch request: {e}")))?;
    if req.objects.len() > MAX_BATCH {
        return Err(AppError::BadRequest(format!(
            "at most {MAX_BATCH} objects per batch"
        )));
    }
    if !req.transfers.is_empty() && !req.transfers.iter().any(|t| t == "basic") {
        return Err(AppError::BadRequest(
            "only the basic transfer is supported".into(),
        ));
    }
    let access = match req.operation.as_str() {
        "upload" => Access::Write,
        "download" => Access::Read,
        other => return Err(AppError::BadRequest(format!("unknown operation {other:?}"))),
    };
    let principal = authenticate(state, headers).await?;
    let need = match access {
        Access::Read => Need::Read,
        Access::Write => Need::Write,
    };
    // Uploads to a namespace another node hosts are refused by name (hub-core checks that
    // before any lookup, so nothing is fetched from the mesh first).
    let granted = match state.hub().access(principal.as_ref(), &id, need).await {
        Ok(granted) => granted,
        // git-lfs sends its first request without credentials and expects a challenge; a
        // missing repo and one the caller may not see answer alike (nothing leaks).
        Err(AccessError::NotFound | AccessError::Unauthorized) if principal.is_none() => {
            return Err(AppError::Unauthorized("authentication required"));
        }
        Err(e) => return Err(e.into()),
    };
    let id = granted.id;

    let wanted: Vec<(String, u64)> = req
        .objects
        .iter()
        .map(|o| (o.oid.clone(), o.size))
        .collect();
    // Per object: its parsed oid, and the size it is stored with *for this repository* (None:
    // not uploaded to it — another repository's copy in the shared store does not count, so
    // the answer reveals nothing about other repositories and a hash is no proof of content).
    let hub = state.hub().clone();
    let repo = id.clone();
    let present: Vec<Option<(Sha256, Option<u64>)>> = blocking(move || {
        wanted
            .iter()
            .map(|(oid, _)| {
                let Ok(sha) = oid.parse::<Sha256>() else {
                    return Ok(None);
                };
                Ok(Some((sha, hub.lfs_size(&repo, &sha)?)))
            })
            .collect()
    })
    .await?;
    let verify_href = format!(
        "{}/{}{}.git/info/lfs/objects/verify",
        endpoint(headers),
        id.kind().url_prefix(),
        id.hub_id()
    );
    let mut objects = Vec::with_capacity(req.objects.len());
    for (obj, parsed) in req.objects.iter().zip(present) {
        let Some((sha, stored)) = parsed else {
            objects.push(json!({ "oid": obj.oid, "size": obj.size, "error": { "code": 422, "message": "oid must be 64 hex digits (sha256)" } }));
            continue;
        };
        if obj.size > MAX_OBJECT_SIZE {
            objects.push(json!({ "oid": obj.oid, "size": obj.size, "error": { "code": 422, "message": format!("objects are limited to {MAX_OBJECT_SIZE} bytes") } }));
            continue;
        }
        let oid = sha.to_string();
        let has = stored == Some(obj.size);
        match access {
            Access::Write if has => {
                // Already stored: no actions, nothing to upload.
                objects.push(json!({ "oid": oid, "size": obj.size, "authenticated": true }));
            }
            Access::Write => {
                let (href, expires_in) = signed_url(headers, "upload", &id, &sha, obj.size)?;
                objects.push(json!({
                    "oid": oid, "size": obj.size, "authenticated": true,
                    "actions": {
                        "upload": { "href": href, "expires_in": expires_in },
                        "verify": verify_action(headers, &verify_href, expires_in),
                    }
                }));
            }
            Access::Read if has => {
                let (href, expires_in) = signed_url(headers, "download", &id, &sha, obj.size)?;
                objects.push(json!({
                    "oid": oid, "size": obj.size, "authenticated": true,
                    "actions": { "download": { "href": href, "expires_in": expires_in } }
                }));
            }
            Access::Read => {
                objects.push(json!({ "oid": oid, "size": obj.size, "error": { "code": 404, "message": "object not found" } }));
            }
        }
    }
    Ok(json!({ "transfer": "basic", "objects": objects, "hash_algo": "sha256" }))
}

/// The `verify` action: git-lfs sends the action's `header` and no credentials of its own,
/// so the caller's `Authorization` goes back to it there (huggingface_hub sends its own).
fn verify_action(headers: &HeaderMap, href: &str, expires_in: u64) -> Value {
    let mut action = json!({ "href": href, "expires_in": expires_in });
    if let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        action["header"] = json!({ "Authorization": auth });
    }
    action
}

/// `PUT /lfs-objects/{oid}`: streams the body into the store; accepted only if the content
/// hashes to `oid` and has the signed size.
async fn upload(
    State(state): State<AppState>,
    Path(oid): Path<String>,
    Query(q): Query<Signed>,
    body: Body,
) -> Response {
    let result = async {
        let sha: Sha256 = oid
            .parse()
            .map_err(|_| AppError::BadRequest("invalid oid".into()))?;
        check_signed(&q, "upload", &sha)?;
        let mut import = StreamImport::start_expecting(
            state.store().clone(),
            hub_store::Expected {
                sha256: sha,
                size: q.size,
            },
        );
        let mut stream = body.into_data_stream();
        let mut received: u64 = 0;
        while let Some(frame) = stream.next().await {
            let frame =
                frame.map_err(|e| AppError::BadRequest(format!("upload interrupted: {e}")))?;
            received += frame.len() as u64;
            if received > q.size {
                return Err(AppError::BadRequest(format!(
                    "more than the {} bytes announced",
                    q.size
                )));
            }
            import.send(frame.to_vec()).await?;
        }
        if received != q.size {
            return Err(AppError::BadRequest(format!(
                "got {received} bytes, expected {}",
                q.size
            )));
        }
        // The store refuses (and deletes) content other than `sha`: a rejected upload
        // leaves nothing behind.
        let info = import.finish().await?;
        let repo = signed_repo(&q)?;
        let hub = state.hub().clone();
        blocking(move || Ok(hub.record_upload(&repo, &sha)?)).await?;
        tracing::info!(%sha, size = info.size, new_bytes = info.new_bytes, "LFS object stored");
        Ok(StatusCode::OK)
    }
    .await;
    match result {
        Ok(status) => status.into_response(),
        Err(e) => lfs_error(e),
    }
}

/// `GET /lfs-objects/{oid}`: the object's bytes, for a signed download URL.
async fn download(
    State(state): State<AppState>,
    Path(oid): Path<String>,
    Query(q): Query<Signed>,
) -> Response {
    let result = async {
        let sha: Sha256 = oid
            .parse()
            .map_err(|_| AppError::BadRequest("invalid oid".into()))?;
        check_signed(&q, "download", &sha)?;
        let body = stream_from_store(state.store().clone(), sha, 0, q.size).await?;
        Response::builder()
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, q.size.to_string())
            .body(body)
            .map_err(AppError::internal)
    }
    .await;
    result.unwrap_or_else(lfs_error)
}

/// The repository a (verified) transfer URL was signed for.
fn signed_repo(q: &Signed) -> Result<RepoId, AppError> {
    let (kind, rest) = q
        .repo
        .split_once('/')
        .ok_or_else(|| AppError::BadRequest("invalid transfer URL".into()))?;
    let kind: RepoType = kind
        .parse()
        .map_err(|_| AppError::BadRequest("invalid transfer URL".into()))?;
    RepoId::parse(kind, rest).map_err(|_| AppError::BadRequest("invalid transfer URL".into()))
}

#[derive(Debug, Deserialize)]
struct VerifyBody {
    oid: String,
    size: u64,
}

/// `POST …/objects/verify`: 200 when the store has the object with that size.
async fn verify(
    State(state): State<AppState>,
    headers: HeaderMap,
    kind: RepoType,
    p: RepoPathParams,
    body: Bytes,
) -> Response {
    let result = async {
        let id = repo_id(kind, &p.ns, &p.name)?;
        let principal = authenticate(&state, &headers).await?;
        if principal.is_none() {
            return Err(AppError::Unauthorized("authentication required"));
        }
        read_access(&state, principal.as_ref(), &id).await?;
        let req: VerifyBody = serde_json::from_slice(&body)
            .map_err(|e| AppError::BadRequest(format!("invalid verify request: {e}")))?;
        let sha: Sha256 = req
            .oid
            .parse()
            .map_err(|_| AppError::BadRequest("invalid oid".into()))?;
        let hub = state.hub().clone();
        let repo = id.clone();
        let size = blocking(move || Ok(hub.lfs_size(&repo, &sha)?)).await?;
        match size {
            Some(s) if s == req.size => {
                Ok(([(header::CONTENT_TYPE, LFS_JSON)], Json(json!({}))).into_response())
            }
            Some(s) => Err(AppError::BadRequest(format!(
                "object {} is {s} bytes, not {}",
                req.oid, req.size
            ))),
            None => Err(AppError::EntryNotFound {
                message: format!("object {} not found", req.oid),
                commit: None,
            }),
        }
    }
    .await;
    result.unwrap_or_else(lfs_error)
}

/// `POST …/locks/verify`: this node has no file locking; 501 makes git-lfs go on with the
/// push (it prints that the remote does not support locking).
async fn locks_verify() -> Response {
    (
        StatusCode::NOT_IMPLEMENTED,
        [(header::CONTENT_TYPE, LFS_JSON)],
        Json(json!({ "message": "file locking is not supported by this server" })),
    )
        .into_response()
}
