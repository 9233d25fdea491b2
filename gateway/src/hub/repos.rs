//! Repositories: create, delete, move (rename), and settings (visibility).

use super::{RepoPath, granted, repo_url};
use crate::AppState;
use crate::error::AppError;
use crate::extract::require_auth;
use crate::util::parse_json;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hub_core::{Change, RepoOpError};
use hub_protocol::repo::{RepoId, RepoType};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Debug, Deserialize)]
struct CreateBody {
    name: String,
    organization: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    private: Option<bool>,
    visibility: Option<String>,
    /// A Space's SDK: the Space starts with the Hub's default README for it.
    sdk: Option<String>,
}

pub(super) async fn create_repo(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    let principal = require_auth(&state, &headers).await?;
    let body: CreateBody = parse_json(&body)?;
    let kind = body_kind(body.kind.as_deref())?;
    let namespace = body
        .organization
        .clone()
        .unwrap_or_else(|| principal.user.name.clone());
    let id = RepoId::new(kind, &namespace, &body.name).map_err(|e| {
        AppError::BadRequest(format!("invalid repo id {namespace}/{}: {e}", body.name))
    })?;
    let private = visibility(body.private, body.visibility.as_deref())?.unwrap_or(false);
    // The id as created: the namespace's stored spelling (ids are case-insensitive).
    let created = match state.hub().access_create(&principal, &id).await {
        Ok(grant) => {
            let id = grant.id().clone();
            let done = match body.sdk.as_deref() {
                Some(sdk) if kind == RepoType::Space => {
                    state.hub().create_space(grant, private, sdk).await
                }
                _ => state.hub().create_repo(grant, private).await,
            };
            done.map(|()| id)
        }
        Err(e) => Err(e),
    };
    match created {
        Ok(id) => Ok(
            Json(json!({ "url": repo_url(&headers, &id), "name": id.hub_id() })).into_response(),
        ),
        Err(RepoOpError::Repo(hub_repo::RepoError::AlreadyExists { repo })) => {
            // `create_repo(exist_ok=True)` reads `url` from the 409 body: the existing repo's,
            // which may be spelled in another case than the request's.
            Ok(already_exists(&repo, Some(repo_url(&headers, &repo))))
        }
        Err(e) => Err(e.into()),
    }
}

/// The Hub's 409 for a repo id that is taken (ids compare without case).
fn already_exists(repo: &RepoId, url: Option<String>) -> Response {
    let message = hub_core::names::already_created(repo.kind());
    let mut body = json!({ "error": message });
    if let Some(url) = url {
        body["url"] = json!(url);
    }
    let mut resp = (StatusCode::CONFLICT, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&message) {
        resp.headers_mut().insert("x-error-message", v);
    }
    resp
}

#[derive(Debug, Deserialize)]
struct DeleteBody {
    name: String,
    organization: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

pub(super) async fn delete_repo(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let principal = require_auth(&state, &headers).await?;
    let body: DeleteBody = parse_json(&body)?;
    let kind = body_kind(body.kind.as_deref())?;
    let namespace = body
        .organization
        .unwrap_or_else(|| principal.user.name.clone());
    let id = RepoId::new(kind, &namespace, &body.name).map_err(|_| AppError::RepoNotFound)?;
    state.hub().delete_repo(&principal, &id).await?;
    Ok(Json(json!({})))
}

/// The `type` of a request body: `model` when absent.
fn body_kind(kind: Option<&str>) -> Result<RepoType, AppError> {
    kind.unwrap_or("model")
        .parse()
        .map_err(|e: hub_protocol::repo::RepoIdError| AppError::BadRequest(e.to_string()))
}

/// The requested visibility: `private` (0.x clients) or `visibility` (1.x and later).
pub(super) fn visibility(
    private: Option<bool>,
    visibility: Option<&str>,
) -> Result<Option<bool>, AppError> {
    match (private, visibility) {
        (Some(_), Some(_)) => Err(AppError::BadRequest(
            "give either \"private\" or \"visibility\", not both".into(),
        )),
        (Some(p), None) => Ok(Some(p)),
        (None, Some("private")) => Ok(Some(true)),
        (None, Some("public")) => Ok(Some(false)),
        (None, Some(other)) => Err(AppError::BadRequest(format!(
            "visibility {other:?} is not supported (public or private)"
        ))),
        (None, None) => Ok(None),
    }
}

#[derive(Debug, Deserialize)]
struct MoveBody {
    #[serde(rename = "fromRepo")]
    from_repo: String,
    #[serde(rename = "toRepo")]
    to_repo: String,
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// `POST /api/repos/move`: rename a repository (same type), keeping history and settings.
pub(super) async fn move_repo(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    let principal = require_auth(&state, &headers).await?;
    let body: MoveBody = parse_json(&body)?;
    let kind = body_kind(body.kind.as_deref())?;
    let from = RepoId::parse(kind, &body.from_repo).map_err(|_| AppError::RepoNotFound)?;
    let to = RepoId::parse(kind, &body.to_repo)
        .map_err(|e| AppError::BadRequest(format!("invalid target {:?}: {e}", body.to_repo)))?;
    match state.hub().move_repo(&principal, &from, &to).await {
        Ok(()) => Ok(Json(json!({})).into_response()),
        Err(RepoOpError::Repo(hub_repo::RepoError::AlreadyExists { repo })) => {
            Ok(already_exists(&repo, None))
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize)]
struct SettingsBody {
    private: Option<bool>,
    visibility: Option<String>,
    /// `false`, `"auto"` or `"manual"` (`hub_core::gate`).
    gated: Option<Value>,
}

/// `PUT /api/{type}s/{ns}/{name}/settings`: visibility (`private` or `visibility`) and the
/// gate (`gated`).
pub(super) async fn settings(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<RepoPath>,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let granted = granted(&state, &headers, &path, Change::Visibility.need()).await?;
    let body: SettingsBody = parse_json(&body)?;
    let private = visibility(body.private, body.visibility.as_deref())?;
    let gated = body
        .gated
        .as_ref()
        .map(super::gate::parse_gated)
        .transpose()?;
    if let Some(private) = private {
        state.hub().set_private(&granted, private).await?;
    }
    if let (Some(gated), Some(principal)) = (gated, &granted.principal) {
        state.hub().set_gated(principal, &granted.id, gated).await?;
    }
    Ok(Json(json!({})))
}
