//! Likes (`hub_core::likes`): `POST`/`DELETE …/like`, `GET …/likers`, and a user's likes
//! (`GET /api/users/{user}/likes`).

use super::{RepoPath, readable};
use crate::AppState;
use crate::error::AppError;
use crate::extract::require_auth;
use crate::util::{blocking, format_date};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde_json::{Value, json};

async fn set(
    state: &AppState,
    headers: &HeaderMap,
    path: &RepoPath,
    like: bool,
) -> Result<Json<Value>, AppError> {
    let principal = require_auth(state, headers).await?;
    let id = path.id()?;
    state.hub().set_like(&principal, &id, like).await?;
    Ok(Json(json!({})))
}

pub(super) async fn like(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<RepoPath>,
) -> Result<Json<Value>, AppError> {
    set(&state, &headers, &path, true).await
}

pub(super) async fn unlike(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<RepoPath>,
) -> Result<Json<Value>, AppError> {
    set(&state, &headers, &path, false).await
}

/// `GET …/likers`: who likes the repo.
pub(super) async fn likers(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<RepoPath>,
) -> Result<Json<Value>, AppError> {
    let id = readable(&state, &headers, &path).await?;
    let repos = state.repos().clone();
    let likers = blocking(move || Ok(hub_core::likes::likers(&repos, &id)?)).await?;
    Ok(Json(Value::Array(
        likers
            .keys()
            .map(|user| json!({ "user": user, "fullname": user, "type": "user", "avatarUrl": "", "isPro": false }))
            .collect(),
    )))
}

/// `GET /api/users/{user}/likes`: the public repos `user` likes, newest first.
pub(super) async fn user_likes(
    State(state): State<AppState>,
    Path(user): Path<String>,
) -> Result<Json<Value>, AppError> {
    let likes = state.hub().user_likes(&user).await?;
    Ok(Json(Value::Array(
        likes
            .iter()
            .map(|(id, at)| {
                json!({
                    "createdAt": format_date(*at),
                    "repo": { "name": id.hub_id(), "type": id.kind().as_str() },
                })
            })
            .collect(),
    )))
}
