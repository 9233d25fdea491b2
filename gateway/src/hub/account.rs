//! A namespace's repositories with their storage (`list_user_repos`, `hf repos ls`):
//! `GET /api/settings/repositories` (the caller's own) and
//! `GET /api/organizations/{org}/settings/repositories` (an organisation the caller is in).

use crate::AppState;
use crate::error::AppError;
use crate::extract::Authed;
use crate::util::format_date;
use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

pub(super) async fn my_repositories(
    State(state): State<AppState>,
    Authed(principal): Authed,
) -> Result<Json<Value>, AppError> {
    repositories(&state, &principal, None).await
}

pub(super) async fn org_repositories(
    State(state): State<AppState>,
    Authed(principal): Authed,
    Path(org): Path<String>,
) -> Result<Json<Value>, AppError> {
    repositories(&state, &principal, Some(&org)).await
}

async fn repositories(
    state: &AppState,
    principal: &hub_auth::Principal,
    namespace: Option<&str>,
) -> Result<Json<Value>, AppError> {
    let repos = state
        .hub()
        .namespace_storage(principal, namespace)
        .await
        .map_err(|e| match e {
            hub_core::AccessError::NotFound => AppError::NotFound,
            e => e.into(),
        })?;
    let total: u64 = repos.iter().map(|r| r.storage).sum();
    Ok(Json(Value::Array(
        repos
            .iter()
            .map(|r| {
                json!({
                    "id": r.id.hub_id(),
                    "type": r.id.kind().as_str(),
                    "updatedAt": format_date(r.updated_at),
                    "visibility": if r.private { "private" } else { "public" },
                    "storage": r.storage,
                    "storagePercent": if total == 0 { 0.0 } else {
                        r.storage as f64 * 100.0 / total as f64
                    },
                })
            })
            .collect(),
    )))
}
