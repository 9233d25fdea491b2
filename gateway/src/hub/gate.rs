//! Gated repos (`hub_core::gate`): access requests as `huggingface_hub`'s
//! `list_{pending,accepted,rejected}_access_requests`, `accept/reject/cancel_access_request`
//! and `grant_access` call them (`…/user-access-request/{status|handle|grant}`), and a user's
//! own request (`POST …/user-access-request`, with the form's fields). The gate itself is set
//! through the repo's settings (`repos::settings`).

use super::{RepoPath, readable};
use crate::AppState;
use crate::error::AppError;
use crate::extract::require_auth;
use crate::util::{format_date, parse_json};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use hub_core::gate::{AccessRequest, GateMode, RequestRef, RequestStatus};
use serde::Deserialize;
use serde_json::{Map, Value, json};

#[derive(Debug, Deserialize)]
pub(super) struct StatusPath {
    kind: String,
    ns: String,
    name: String,
    status: String,
}

/// The `gated` of a settings body: `false`, `"auto"` or `"manual"`.
pub(super) fn parse_gated(value: &Value) -> Result<Option<GateMode>, AppError> {
    match value {
        Value::Bool(false) => Ok(None),
        Value::String(s) if s == "auto" => Ok(Some(GateMode::Auto)),
        Value::String(s) if s == "manual" => Ok(Some(GateMode::Manual)),
        other => Err(AppError::BadRequest(format!(
            "invalid gated status {other}: must be one of \"auto\", \"manual\" or false"
        ))),
    }
}

fn request_json(r: &AccessRequest) -> Value {
    let mut out = json!({
        "user": { "user": r.user, "fullname": r.user, "type": "user" },
        "requestId": r.id.to_string(),
        "status": r.status.as_str(),
        "timestamp": format_date(r.requested_at),
    });
    if let Some(fields) = &r.fields
        && !fields.is_empty()
    {
        out["fields"] = Value::Object(fields.clone());
    }
    if let Some(reason) = &r.reason {
        out["rejectionReason"] = json!(reason);
    }
    out
}

/// `GET …/user-access-request/{pending|accepted|rejected}`: for writers.
pub(super) async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<StatusPath>,
) -> Result<Json<Value>, AppError> {
    let principal = require_auth(&state, &headers).await?;
    let status: RequestStatus = p.status.parse().map_err(|()| AppError::NotFound)?;
    let id = RepoPath {
        kind: p.kind,
        ns: p.ns,
        name: p.name,
    }
    .id()?;
    let requests = state.hub().access_requests(&principal, &id, status).await?;
    Ok(Json(Value::Array(
        requests.iter().map(request_json).collect(),
    )))
}

#[derive(Debug, Deserialize)]
struct AskBody {
    #[serde(default)]
    fields: Map<String, Value>,
}

/// `POST …/user-access-request`: the caller asks for access, with the form's fields (the
/// card's `extra_gated_fields`). Answers the request's status.
pub(super) async fn ask(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<RepoPath>,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let principal = require_auth(&state, &headers).await?;
    let id = path.id()?;
    let body: AskBody = if body.is_empty() {
        AskBody { fields: Map::new() }
    } else {
        parse_json(&body)?
    };
    let status = state
        .hub()
        .request_access(&principal, &id, body.fields)
        .await?;
    Ok(Json(json!({ "status": status.as_str() })))
}

#[derive(Debug, Deserialize)]
struct HandleBody {
    user: Option<String>,
    #[serde(rename = "requestId")]
    request_id: Option<String>,
    status: String,
    #[serde(rename = "rejectionReason")]
    rejection_reason: Option<String>,
}

/// `POST …/user-access-request/handle`: a writer accepts, rejects or cancels (back to
/// pending) a request, named by `user` or `requestId`.
pub(super) async fn handle(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<RepoPath>,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let principal = require_auth(&state, &headers).await?;
    let id = path.id()?;
    let body: HandleBody = parse_json(&body)?;
    let status: RequestStatus = body.status.parse().map_err(|()| {
        AppError::BadRequest(format!(
            "invalid status {:?}: must be pending, accepted or rejected",
            body.status
        ))
    })?;
    let target = match (body.user, body.request_id) {
        (Some(user), None) => RequestRef::User(user),
        (None, Some(n)) => RequestRef::Id(
            n.parse()
                .map_err(|_| AppError::BadRequest(format!("invalid requestId {n:?}")))?,
        ),
        _ => {
            return Err(AppError::BadRequest(
                "give exactly one of \"user\" and \"requestId\"".into(),
            ));
        }
    };
    state
        .hub()
        .handle_access_request(&principal, &id, target, status, body.rejection_reason)
        .await?;
    Ok(Json(json!({})))
}

#[derive(Debug, Deserialize)]
struct GrantBody {
    user: String,
}

/// `POST …/user-access-request/grant`: a writer lets a user in without a request.
pub(super) async fn grant(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<RepoPath>,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let principal = require_auth(&state, &headers).await?;
    let id = path.id()?;
    let body: GrantBody = parse_json(&body)?;
    state
        .hub()
        .grant_access(&principal, &id, &body.user)
        .await?;
    Ok(Json(json!({})))
}

/// The `gated` field of repo info: `false`, `"auto"` or `"manual"`.
pub(super) fn gated_json(mode: Option<GateMode>) -> Value {
    mode.map_or(Value::Bool(false), |m| json!(m.as_str()))
}

/// `GET …/user-access-request`: the gate and the caller's own request (if any).
pub(super) async fn my_request(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<RepoPath>,
) -> Result<Json<Value>, AppError> {
    let principal = require_auth(&state, &headers).await?;
    let id = readable(&state, &headers, &path).await?;
    let gate = state.hub().gate(&id).await?;
    Ok(Json(json!({
        "gated": gated_json(gate.mode),
        "request": gate.requests.get(&principal.user.name).map(request_json),
    })))
}
