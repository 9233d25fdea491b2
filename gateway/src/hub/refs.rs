//! Refs (`GET …/refs`), and creating and deleting branches and tags.

use super::{RepoPath, RevPath, granted, readable};
use crate::AppState;
use crate::error::AppError;
use crate::util::{blocking, parse_json, truthy};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use hub_core::Change;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Debug, Deserialize, Default)]
pub(super) struct RefsQuery {
    include_prs: Option<String>,
}

pub(super) async fn refs(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<RepoPath>,
    Query(q): Query<RefsQuery>,
) -> Result<Json<Value>, AppError> {
    let id = readable(&state, &headers, &path).await?;
    let repos = state.repos().clone();
    let (branches, tags, prs) = blocking(move || {
        let (branches, tags) = repos.refs(&id)?;
        // Pull-request heads (`refs/pr/N`), by number.
        let mut prs: Vec<(u64, String, String)> = repos
            .refs_under(&id, "refs/pr/")?
            .into_iter()
            .filter_map(|(name, target)| {
                let num = name.strip_prefix("refs/pr/")?.parse().ok()?;
                Some((num, name, target))
            })
            .collect();
        prs.sort();
        Ok((branches, tags, prs))
    })
    .await?;
    let item = |r: &hub_repo::RefInfo| json!({ "name": r.name, "ref": r.full_ref, "targetCommit": r.target });
    let mut body = json!({
        "branches": branches.iter().map(item).collect::<Vec<_>>(),
        "converts": [],
        "tags": tags.iter().map(item).collect::<Vec<_>>(),
    });
    if truthy(q.include_prs.as_deref()) {
        body["pullRequests"] = prs
            .iter()
            .map(|(num, name, target)| json!({ "name": num.to_string(), "ref": name, "targetCommit": target }))
            .collect();
    }
    Ok(Json(body))
}

// ---- branches and tags ----------------------------------------------------------------------

#[derive(Debug, Deserialize)]
pub(super) struct BranchPath {
    kind: String,
    ns: String,
    name: String,
    branch: String,
}

pub(super) async fn create_branch(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<BranchPath>,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let repo = RepoPath {
        kind: p.kind,
        ns: p.ns,
        name: p.name,
    };
    let granted = granted(&state, &headers, &repo, Change::CreateBranch.need()).await?;
    let start: Option<String> = if body.is_empty() {
        None
    } else {
        parse_json::<Value>(&body)?
            .get("startingPoint")
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    state
        .hub()
        .create_branch(&granted, &p.branch, start.as_deref())
        .await?;
    Ok(Json(json!({})))
}

pub(super) async fn delete_branch(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<BranchPath>,
) -> Result<Json<Value>, AppError> {
    let repo = RepoPath {
        kind: p.kind,
        ns: p.ns,
        name: p.name,
    };
    let granted = granted(&state, &headers, &repo, Change::DeleteBranch.need()).await?;
    state.hub().delete_branch(&granted, &p.branch).await?;
    Ok(Json(json!({})))
}

pub(super) async fn create_tag(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<RevPath>,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let granted = granted(&state, &headers, &p.repo(), Change::CreateTag.need()).await?;
    let body: Value = parse_json(&body)?;
    let tag = body
        .get("tag")
        .and_then(Value::as_str)
        .ok_or_else(|| AppError::BadRequest("missing \"tag\"".into()))?
        .to_owned();
    state.hub().create_tag(&granted, &tag, &p.rev).await?;
    Ok(Json(json!({})))
}

pub(super) async fn delete_tag(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<RevPath>,
) -> Result<Json<Value>, AppError> {
    let granted = granted(&state, &headers, &p.repo(), Change::DeleteTag.need()).await?;
    state.hub().delete_tag(&granted, &p.rev).await?;
    Ok(Json(json!({})))
}
