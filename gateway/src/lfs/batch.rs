//! The batch API (`POST {repo}.git/info/lfs/objects/batch`): per object, a signed transfer URL
//! on this node, or nothing to do, or a per-object error; and `objects/verify` after an
//! upload, and `locks/verify` (no locking here).

use super::signed::signed_url;
use super::{RepoPathParams, repo_id};
use crate::AppState;
use crate::access::read_access;
use crate::error::{AppError, LFS_JSON};
use crate::extract::authenticate;
use crate::util::{blocking, endpoint};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hub_auth::Access;
use hub_core::lfs_objects::MAX_OBJECT_SIZE;
use hub_core::{AccessError, Need, Transfer, TransferPlan};
use hub_protocol::repo::RepoType;
use hub_store::Sha256;
use serde::Deserialize;
use serde_json::{Value, json};

/// Objects per batch request (huggingface_hub sends at most 256).
const MAX_BATCH: usize = 1000;

/// How long a download batch waits for objects of its repo still arriving from peers
/// (`Hub::plan_downloads`); what has not arrived by then is answered 404 per object.
const BATCH_FETCH_WAIT: std::time::Duration = std::time::Duration::from_secs(25);

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

pub(super) async fn batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    kind: RepoType,
    p: RepoPathParams,
    body: Bytes,
) -> Response {
    match batch_inner(&state, &headers, kind, &p, &body).await {
        Ok(v) => ([(header::CONTENT_TYPE, LFS_JSON)], Json(v)).into_response(),
        Err(e) => e.into_lfs_response(),
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
        Access::Read => Need::Download,
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
    crate::access::audit(state, principal.as_ref(), &granted.id, need);
    let id = granted.id;

    let wanted: Vec<(String, u64)> = req
        .objects
        .iter()
        .map(|o| (o.oid.clone(), o.size))
        .collect();
    let transfer = match access {
        Access::Write => Transfer::Upload,
        Access::Read => Transfer::Download,
    };
    // What belongs to this repository decides (hub-core): another repository's copy in the
    // shared store does not count, so the answer reveals nothing about other repositories.
    let plans = match transfer {
        // Objects of a repo replicated from a peer may still be on their way: fetched from
        // the mesh now (bounded), as a download through `resolve` would.
        Transfer::Download => {
            let deadline = tokio::time::Instant::now() + BATCH_FETCH_WAIT;
            state.hub().plan_downloads(&id, wanted, deadline).await?
        }
        Transfer::Upload => {
            let hub = state.hub().clone();
            let repo = id.clone();
            blocking(move || Ok(hub.plan_transfers(&repo, transfer, &wanted)?)).await?
        }
    };
    let verify_href = format!(
        "{}/{}{}.git/info/lfs/objects/verify",
        endpoint(headers),
        id.kind().url_prefix(),
        id.hub_id()
    );
    let mut objects = Vec::with_capacity(req.objects.len());
    for (obj, plan) in req.objects.iter().zip(plans) {
        let size = obj.size;
        objects.push(match plan {
            TransferPlan::InvalidOid => {
                json!({ "oid": obj.oid, "size": size, "error": { "code": 422, "message": "oid must be 64 hex digits (sha256)" } })
            }
            TransferPlan::TooLarge => {
                json!({ "oid": obj.oid, "size": size, "error": { "code": 422, "message": format!("objects are limited to {MAX_OBJECT_SIZE} bytes") } })
            }
            // Already stored: no actions, nothing to upload.
            TransferPlan::Present(sha) => {
                json!({ "oid": sha.to_string(), "size": size, "authenticated": true })
            }
            TransferPlan::Upload(sha) => {
                let (href, expires_in) = signed_url(headers, "upload", &id, &sha, size)?;
                json!({
                    "oid": sha.to_string(), "size": size, "authenticated": true,
                    "actions": {
                        "upload": { "href": href, "expires_in": expires_in },
                        "verify": verify_action(headers, &verify_href, expires_in),
                    }
                })
            }
            TransferPlan::Download(sha) => {
                let (href, expires_in) = signed_url(headers, "download", &id, &sha, size)?;
                json!({
                    "oid": sha.to_string(), "size": size, "authenticated": true,
                    "actions": { "download": { "href": href, "expires_in": expires_in } }
                })
            }
            TransferPlan::Missing(sha) => {
                json!({ "oid": sha.to_string(), "size": size, "error": { "code": 404, "message": "object not found" } })
            }
        });
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

#[derive(Debug, Deserialize)]
struct VerifyBody {
    oid: String,
    size: u64,
}

/// `POST …/objects/verify`: 200 when the store has the object with that size.
pub(super) async fn verify(
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
    result.unwrap_or_else(AppError::into_lfs_response)
}

/// `POST …/locks/verify`: this node has no file locking; 501 makes git-lfs go on with the
/// push (it prints that the remote does not support locking).
pub(super) async fn locks_verify() -> Response {
    (
        StatusCode::NOT_IMPLEMENTED,
        [(header::CONTENT_TYPE, LFS_JSON)],
        Json(json!({ "message": "file locking is not supported by this server" })),
    )
        .into_response()
}
