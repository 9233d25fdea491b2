//! Discussions and pull requests (`/api/{type}s/{ns}/{name}/discussions…`), as
//! `huggingface_hub`'s community methods and `hf discussions` call them. `hub_core::discussions`
//! stores, folds and decides; this module parses and renders the Hub's JSON.

use super::{RepoPath, readable};
use crate::AppState;
use crate::error::AppError;
use crate::extract::require_auth;
use crate::util::{format_date, parse_json};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use hub_core::discussions::{Discussion, Event, EventKind, EventView, Status};
use hub_protocol::repo::RepoId;
use serde::Deserialize;
use serde_json::{Value, json};

/// Discussions per page of the listing.
const PAGE: usize = 50;

#[derive(Debug, Deserialize)]
pub(super) struct NumPath {
    kind: String,
    ns: String,
    name: String,
    num: String,
}

#[derive(Debug, Deserialize)]
pub(super) struct CommentPath {
    kind: String,
    ns: String,
    name: String,
    num: String,
    comment: String,
}

fn repo_and_num(kind: &str, ns: &str, name: &str, num: &str) -> Result<(RepoPath, u64), AppError> {
    let repo = RepoPath {
        kind: kind.to_owned(),
        ns: ns.to_owned(),
        name: name.to_owned(),
    };
    let num = num
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| AppError::BadRequest(format!("invalid discussion number {num:?}")))?;
    Ok((repo, num))
}

fn author_json(name: &str) -> Value {
    json!({ "type": "user", "name": name, "fullname": name, "isPro": false, "isHf": false })
}

/// An event in the Hub's shape (`deserialize_event` reads `id`, `type`, `createdAt`,
/// `author.name` and `data`).
pub(super) fn event_json(e: &Event) -> Value {
    let (kind, data) = match &e.view {
        EventView::Comment {
            content,
            edited,
            hidden,
        } => (
            "comment",
            json!({
                "edited": edited,
                "hidden": hidden,
                "numEdits": u8::from(*edited),
                "editors": [e.author],
                "latest": { "raw": content, "html": html_escape(content), "updatedAt": format_date(e.created_at) },
            }),
        ),
        EventView::StatusChange { status } => {
            ("status-change", json!({ "status": status.as_str() }))
        }
        EventView::TitleChange { from, to } => ("title-change", json!({ "from": from, "to": to })),
        EventView::Commit { oid, subject } => ("commit", json!({ "oid": oid, "subject": subject })),
    };
    json!({
        "id": e.id,
        "type": kind,
        "createdAt": format_date(e.created_at),
        "author": author_json(&e.author),
        "data": data,
    })
}

pub(super) fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn summary_json(id: &RepoId, d: &Discussion) -> Value {
    json!({
        "num": d.num,
        "title": d.title,
        "status": d.status.as_str(),
        "author": author_json(&d.author),
        "createdAt": format_date(d.created_at),
        "isPullRequest": d.pull_request,
        "numComments": d.events.iter().filter(|e| matches!(e.view, EventView::Comment { .. })).count(),
        "pinned": false,
        "repo": { "name": id.hub_id(), "type": id.kind().as_str() },
    })
}

fn details_json(id: &RepoId, d: &Discussion) -> Value {
    let mut v = summary_json(id, d);
    v["events"] = Value::Array(d.events.iter().map(event_json).collect());
    if d.pull_request {
        v["changes"] = json!({
            "base": d.target.clone().unwrap_or_else(|| "refs/heads/main".into()),
            "mergeCommitId": d.merge_commit,
        });
        v["filesWithConflicts"] = json!([]);
    }
    v
}

#[derive(Debug, Deserialize, Default)]
pub(super) struct ListQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
    status: Option<String>,
    author: Option<String>,
    p: Option<usize>,
}

/// `GET …/discussions`: newest first, filtered by `type` (`discussion`, `pull_request`),
/// `status` (`open`, `closed`, `merged`, `draft`) and `author`, `PAGE` per page (`p`).
pub(super) async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<RepoPath>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, AppError> {
    let id = readable(&state, &headers, &path).await?;
    let all = state.hub().discussions(&id).await?;
    let closed = all.iter().filter(|d| d.status != Status::Open).count();
    let kept: Vec<&Discussion> = all
        .iter()
        .filter(|d| match q.kind.as_deref() {
            Some("discussion") => !d.pull_request,
            Some("pull_request") => d.pull_request,
            _ => true,
        })
        .filter(|d| match q.status.as_deref() {
            Some("open") => d.status == Status::Open,
            // The Hub's closed tab holds merged pull requests too.
            Some("closed") => matches!(d.status, Status::Closed | Status::Merged),
            Some("merged") => d.status == Status::Merged,
            Some("draft") => d.status == Status::Draft,
            _ => true,
        })
        .filter(|d| q.author.as_deref().is_none_or(|a| d.author == a))
        .collect();
    let start = q.p.unwrap_or(0).saturating_mul(PAGE);
    let page: Vec<Value> = kept
        .iter()
        .skip(start)
        .take(PAGE)
        .map(|d| summary_json(&id, d))
        .collect();
    Ok(Json(json!({
        "discussions": page,
        "count": kept.len(),
        "start": start,
        "numClosedDiscussions": closed,
    })))
}

#[derive(Debug, Deserialize)]
struct CreateBody {
    title: String,
    #[serde(default)]
    description: String,
    #[serde(default, rename = "pullRequest")]
    pull_request: bool,
}

/// `POST …/discussions` (`{"title", "description", "pullRequest"}`): a new discussion, or a
/// pull request into `main` whose head `refs/pr/N` starts at `main`.
pub(super) async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<RepoPath>,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let principal = require_auth(&state, &headers).await?;
    let id = path.id()?;
    let body: CreateBody = parse_json(&body)?;
    let d = state
        .hub()
        .open_discussion(
            &principal,
            &id,
            &body.title,
            &body.description,
            body.pull_request.then_some("main"),
        )
        .await?;
    let mut v = details_json(&id, &d);
    v["url"] = json!(discussion_url(&headers, &id, d.num));
    Ok(Json(v))
}

/// The discussion's page, as the Hub's `pullRequestUrl` names it (`…/discussions/N`).
pub(super) fn discussion_url(headers: &HeaderMap, id: &RepoId, num: u64) -> String {
    format!("{}/discussions/{num}", super::repo_url(headers, id))
}

/// `GET …/discussions/{num}`: the discussion with its events.
pub(super) async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<NumPath>,
) -> Result<Json<Value>, AppError> {
    let (repo, num) = repo_and_num(&p.kind, &p.ns, &p.name, &p.num)?;
    let id = readable(&state, &headers, &repo).await?;
    let d = state.hub().discussion(&id, num).await?;
    Ok(Json(details_json(&id, &d)))
}

/// Adds one event by the caller; the answer carries it under `key`.
async fn add(
    state: &AppState,
    headers: &HeaderMap,
    repo: RepoPath,
    num: u64,
    kind: EventKind,
    key: &str,
) -> Result<Json<Value>, AppError> {
    let principal = require_auth(state, headers).await?;
    let id = repo.id()?;
    let event = state
        .hub()
        .discussion_event(&principal, &id, num, kind)
        .await?;
    let mut body = serde_json::Map::new();
    body.insert(key.to_owned(), event_json(&event));
    Ok(Json(Value::Object(body)))
}

#[derive(Debug, Deserialize)]
struct CommentBody {
    comment: String,
}

/// `POST …/discussions/{num}/comment` (`{"comment"}`) → `{"newMessage": event}`.
pub(super) async fn comment(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<NumPath>,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let (repo, num) = repo_and_num(&p.kind, &p.ns, &p.name, &p.num)?;
    let body: CommentBody = parse_json(&body)?;
    let kind = EventKind::Comment {
        content: body.comment,
    };
    add(&state, &headers, repo, num, kind, "newMessage").await
}

#[derive(Debug, Deserialize)]
struct TitleBody {
    title: String,
}

/// `POST …/discussions/{num}/title` (`{"title"}`) → `{"newTitle": event}`.
pub(super) async fn title(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<NumPath>,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let (repo, num) = repo_and_num(&p.kind, &p.ns, &p.name, &p.num)?;
    let body: TitleBody = parse_json(&body)?;
    let kind = EventKind::TitleChange {
        from: String::new(),
        to: body.title,
    };
    add(&state, &headers, repo, num, kind, "newTitle").await
}

#[derive(Debug, Deserialize)]
struct StatusBody {
    status: String,
    comment: Option<String>,
}

/// `POST …/discussions/{num}/status` (`{"status": "open"|"closed", "comment"?}`) →
/// `{"newStatus": event}`; the comment, when given, is added first.
pub(super) async fn status(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<NumPath>,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let (repo, num) = repo_and_num(&p.kind, &p.ns, &p.name, &p.num)?;
    let body: StatusBody = parse_json(&body)?;
    let status = match body.status.as_str() {
        "open" => Status::Open,
        "closed" => Status::Closed,
        other => {
            return Err(AppError::BadRequest(format!(
                "invalid status {other:?}: open or closed"
            )));
        }
    };
    if let Some(c) = body.comment.filter(|c| !c.trim().is_empty()) {
        let principal = require_auth(&state, &headers).await?;
        let id = repo.id()?;
        // Checked first as the status change is (author or writer), so a refused change
        // leaves no comment behind.
        let current = state.hub().discussion(&id, num).await?;
        if current.author == principal.user.name
            || state
                .hub()
                .access(Some(&principal), &id, hub_core::Need::Write)
                .await
                .is_ok()
        {
            state
                .hub()
                .discussion_event(&principal, &id, num, EventKind::Comment { content: c })
                .await?;
        }
    }
    let kind = EventKind::StatusChange {
        status,
        merge_commit: None,
    };
    add(&state, &headers, repo, num, kind, "newStatus").await
}

#[derive(Debug, Deserialize, Default)]
struct MergeBody {
    comment: Option<String>,
}

/// `POST …/discussions/{num}/merge` (`{"comment"?}`): merges the pull request.
pub(super) async fn merge(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<NumPath>,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let (repo, num) = repo_and_num(&p.kind, &p.ns, &p.name, &p.num)?;
    let body: MergeBody = if body.is_empty() || body.as_ref() == b"null" {
        MergeBody::default()
    } else {
        parse_json(&body)?
    };
    let principal = require_auth(&state, &headers).await?;
    let id = repo.id()?;
    let d = state
        .hub()
        .merge_pull_request(&principal, &id, num, body.comment.as_deref())
        .await?;
    Ok(Json(details_json(&id, &d)))
}

#[derive(Debug, Deserialize)]
struct EditBody {
    content: String,
}

/// `POST …/discussions/{num}/comment/{id}/edit` (`{"content"}`) → `{"updatedComment"}`.
pub(super) async fn edit_comment(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<CommentPath>,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let (repo, num) = repo_and_num(&p.kind, &p.ns, &p.name, &p.num)?;
    let body: EditBody = parse_json(&body)?;
    let kind = EventKind::CommentEdit {
        target: p.comment.to_ascii_lowercase(),
        content: body.content,
    };
    add(&state, &headers, repo, num, kind, "updatedComment").await
}

/// `POST …/discussions/{num}/comment/{id}/hide` → `{"updatedComment"}`.
pub(super) async fn hide_comment(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<CommentPath>,
) -> Result<Json<Value>, AppError> {
    let (repo, num) = repo_and_num(&p.kind, &p.ns, &p.name, &p.num)?;
    let kind = EventKind::CommentHide {
        target: p.comment.to_ascii_lowercase(),
    };
    add(&state, &headers, repo, num, kind, "updatedComment").await
}
