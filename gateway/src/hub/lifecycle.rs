//! More of a repo's lifecycle over HTTP (`hub_core::lifecycle`, `hub_core::storage` decide):
//! `POST …/duplicate`, `POST …/super-squash/{rev}`, `GET …/lfs-files` and
//! `POST …/lfs-files/batch` (permanent deletion), and the access probes
//! `GET …/auth-check[/write]` (`HfApi.auth_check`).

use super::repos::visibility;
use super::{RepoPath, RevPath, granted, readable, repo_url};
use crate::AppState;
use crate::error::AppError;
use crate::extract::require_auth;
use crate::util::{format_date, parse_json};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use hub_core::{Need, RepoOpError};
use hub_protocol::repo::RepoId;
use serde::Deserialize;
use serde_json::{Value, json};

/// `GET …/auth-check`: 200 when the caller may read the repo, else the error a read gets.
pub(super) async fn auth_check(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<RepoPath>,
) -> Result<Json<Value>, AppError> {
    readable(&state, &headers, &path).await?;
    Ok(Json(json!({})))
}

/// `GET …/auth-check/write`: 200 when the caller may commit to the repo.
pub(super) async fn auth_check_write(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<RepoPath>,
) -> Result<Json<Value>, AppError> {
    granted(&state, &headers, &path, Need::Write).await?;
    Ok(Json(json!({})))
}

#[derive(Debug, Deserialize)]
struct DuplicateBody {
    /// `ns/name` of the copy.
    repository: String,
    private: Option<bool>,
    visibility: Option<String>,
    /// A Space's secrets and variables (`duplicate_space`); see `crate::spaces`.
    #[serde(default)]
    secrets: Option<Vec<crate::spaces::EntryBody>>,
    #[serde(default)]
    variables: Option<Vec<crate::spaces::EntryBody>>,
}

/// `POST /api/{type}s/{ns}/{name}/duplicate`: copies the repo (history, refs, LFS objects)
/// to `repository`, private or public (default: the source's visibility). 409 with the
/// copy's `url` when it exists, which `duplicate_repo(exist_ok=True)` reads.
pub(super) async fn duplicate(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<RepoPath>,
    body: Bytes,
) -> Result<Response, AppError> {
    let principal = require_auth(&state, &headers).await?;
    let from = path.id()?;
    let body: DuplicateBody = parse_json(&body)?;
    let to = super::repos::new_repo_id(RepoId::parse(from.kind(), &body.repository))?;
    let source = state
        .hub()
        .access(Some(&principal), &from, Need::Read)
        .await?;
    let private =
        visibility(body.private, body.visibility.as_deref())?.unwrap_or(source.meta.private);
    let url = repo_url(&headers, &to);
    match state
        .hub()
        .duplicate_repo(&principal, &from, &to, private)
        .await
    {
        Ok(()) => {
            if to.kind() == hub_protocol::repo::RepoType::Space {
                crate::spaces::set_duplicate_settings(&state, &to, body.secrets, body.variables)
                    .await?;
            }
            Ok(Json(json!({ "url": url })).into_response())
        }
        Err(RepoOpError::Repo(hub_repo::RepoError::AlreadyExists { .. })) => Ok(
            super::repos::conflict(hub_core::names::already_created(to.kind()), Some(url)),
        ),
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize, Default)]
struct SquashBody {
    message: Option<String>,
}

/// `POST …/super-squash/{branch}` (`{"message"}`): the branch becomes one commit holding its
/// current files. Tags are refused as the Hub does (only branches have history to squash).
pub(super) async fn super_squash(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<RevPath>,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let granted = granted(&state, &headers, &p.repo(), Need::RewriteHistory).await?;
    let body: SquashBody = if body.is_empty() {
        SquashBody::default()
    } else {
        parse_json(&body)?
    };
    let branch = p.rev.strip_prefix("refs/heads/").unwrap_or(&p.rev);
    if p.rev.starts_with("refs/tags/") || is_tag(&state, &granted.id, branch).await? {
        return Err(AppError::BadRequest(format!(
            "Invalid rev id: {branch} is a tag; only branches can be squashed"
        )));
    }
    let message = body
        .message
        .filter(|m| !m.trim().is_empty())
        .unwrap_or_else(|| format!("Super-squash branch '{branch}'"));
    let info = state.hub().super_squash(&granted, branch, &message).await?;
    Ok(Json(json!({ "commitId": info.id })))
}

/// Whether `name` is a tag and not a branch of `id`.
async fn is_tag(state: &AppState, id: &RepoId, name: &str) -> Result<bool, AppError> {
    let (repos, id, name) = (state.repos().clone(), id.clone(), name.to_owned());
    crate::util::blocking(move || {
        let (branches, tags) = repos.refs(&id)?;
        Ok(!branches.iter().any(|b| b.name == name) && tags.iter().any(|t| t.name == name))
    })
    .await
}

/// `GET …/lfs-files`: the repo's LFS objects (`list_lfs_files`), for callers who may write.
pub(super) async fn lfs_files(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<RepoPath>,
) -> Result<Json<Value>, AppError> {
    let granted = granted(&state, &headers, &path, Need::Write).await?;
    let files = state.hub().lfs_files(&granted).await?;
    Ok(Json(Value::Array(
        files
            .into_iter()
            .map(|f| {
                json!({
                    "fileOid": f.sha256,
                    "oid": f.sha256,
                    "filename": f.filename,
                    "size": f.size,
                    "ref": f.reference,
                    "pushedAt": format_date(f.pushed_at),
                })
            })
            .collect(),
    )))
}

#[derive(Debug, Deserialize)]
struct LfsBatchBody {
    deletions: LfsDeletions,
}

#[derive(Debug, Deserialize)]
struct LfsDeletions {
    sha: Vec<String>,
    /// The Hub rewrites history to drop the pointers; this hub does not (see
    /// `hub_core::storage::delete_lfs_files`): objects a ref's tip holds are refused instead.
    #[serde(default, rename = "rewriteHistory")]
    _rewrite_history: Option<bool>,
}

/// Most objects one deletion call names (the client sends batches of 1000).
const MAX_LFS_DELETIONS: usize = 1000;

/// `POST …/lfs-files/batch` (`{"deletions": {"sha": [...], "rewriteHistory"}}`):
/// `permanently_delete_lfs_files`, for callers who may rewrite the repo's history.
pub(super) async fn delete_lfs_files(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<RepoPath>,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let granted = granted(&state, &headers, &path, Need::RewriteHistory).await?;
    let body: LfsBatchBody = parse_json(&body)?;
    if body.deletions.sha.len() > MAX_LFS_DELETIONS {
        return Err(AppError::BadRequest(format!(
            "at most {MAX_LFS_DELETIONS} LFS files per call"
        )));
    }
    let deleted = state
        .hub()
        .delete_lfs_files(&granted, body.deletions.sha)
        .await?;
    Ok(Json(json!({ "deleted": deleted })))
}
