//! Tree listing (`GET …/tree/{rev}[/{path}]`, optionally recursive), paginated with a `Link`
//! header as the Hub does, and the JSON of one tree entry (shared with `paths-info`).

use super::{RepoPath, RevPath, percent_encode, readable};
use crate::AppState;
use crate::error::AppError;
use crate::util::{blocking, endpoint, format_date, truthy};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use hub_protocol::repo::RepoId;
use hub_repo::{EntryKind, TreeEntry};
use serde::Deserialize;
use serde_json::{Value, json};

/// Tree entries per page.
const TREE_PAGE: usize = 1000;
/// Tree entries per page with `expand=true`: each costs a walk back through history for its
/// last commit, so pages are smaller.
const EXPANDED_PAGE: usize = 50;

#[derive(Debug, Deserialize, Default)]
pub(super) struct TreeQuery {
    recursive: Option<String>,
    cursor: Option<String>,
    /// `expand=true`: each entry with its `lastCommit` (and files with `securityFileStatus`).
    expand: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct TreePath {
    kind: String,
    ns: String,
    name: String,
    rev: String,
    path: String,
}

pub(super) async fn tree_root(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<RevPath>,
    Query(q): Query<TreeQuery>,
) -> Result<Response, AppError> {
    tree(state, headers, p.repo(), p.rev, String::new(), q).await
}

pub(super) async fn tree_path(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<TreePath>,
    Query(q): Query<TreeQuery>,
) -> Result<Response, AppError> {
    let repo = RepoPath {
        kind: p.kind,
        ns: p.ns,
        name: p.name,
    };
    tree(state, headers, repo, p.rev, p.path, q).await
}

pub(super) fn tree_entry_json(e: &TreeEntry) -> Value {
    match e.kind {
        EntryKind::Directory => {
            json!({ "type": "directory", "oid": e.oid, "size": 0, "path": e.path })
        }
        EntryKind::File => {
            let mut v = json!({
                "type": "file",
                "oid": e.oid,
                "size": e.lfs.as_ref().map_or(e.size, |l| l.size),
                "path": e.path,
            });
            if let Some(lfs) = &e.lfs {
                v["lfs"] = json!({ "oid": lfs.sha256, "size": lfs.size, "pointerSize": e.size });
            }
            v
        }
    }
}

async fn tree(
    state: AppState,
    headers: HeaderMap,
    repo: RepoPath,
    rev: String,
    path: String,
    q: TreeQuery,
) -> Result<Response, AppError> {
    let id = readable(&state, &headers, &repo).await?;
    let recursive = truthy(q.recursive.as_deref());
    let start: usize = match q.cursor.as_deref() {
        None => 0,
        Some(c) => c
            .parse()
            .map_err(|_| AppError::BadRequest("invalid cursor".into()))?,
    };
    let expand = truthy(q.expand.as_deref());
    // Expanded entries name commits: list the tree of the one commit they are found from.
    let at = if expand {
        let (repos, id, rev) = (state.repos().clone(), id.clone(), rev.clone());
        blocking(move || Ok(repos.resolve(&id, &rev)?)).await?
    } else {
        rev.clone()
    };
    let entries = state.hub().tree_at(&id, &at, &path, recursive).await?;
    let rev_for_link = rev;
    let page_size = if expand { EXPANDED_PAGE } else { TREE_PAGE };
    let page_entries: Vec<&TreeEntry> = entries.iter().skip(start).take(page_size).collect();
    let mut page: Vec<Value> = page_entries.iter().map(|e| tree_entry_json(e)).collect();
    if expand {
        let paths: Vec<String> = page_entries.iter().map(|e| e.path.clone()).collect();
        add_last_commits(&state, &id, &at, &mut page, paths).await?;
    }
    let st = state.clone();
    let page = blocking(move || {
        crate::xet::add_xet_hashes(&st, &mut page)?;
        Ok(page)
    })
    .await?;
    let mut resp = Json(page).into_response();
    if entries.len() > start + page_size {
        let mut url = format!(
            "{}/api/{}/{}/tree/{}",
            endpoint(&headers),
            id.kind().plural(),
            id.hub_id(),
            percent_encode(&rev_for_link, false)
        );
        if !path.is_empty() {
            url.push('/');
            url.push_str(&percent_encode(&path, false));
        }
        url.push_str(&format!(
            "?recursive={recursive}&expand={expand}&cursor={}",
            start + page_size
        ));
        if let Ok(v) = HeaderValue::from_str(&format!("<{url}>; rel=\"next\"")) {
            resp.headers_mut().insert(header::LINK, v);
        }
    }
    Ok(resp)
}

/// Adds `lastCommit` (`id`, `title`, `date`) and, to files, `securityFileStatus`
/// (`hub_core::card_rules::file_security`) to each entry of `page` (whose paths are
/// `paths`, in order) at `commit`: what `expand=true` asks for. An entry whose last change is
/// further back than the walk goes has none.
pub(super) async fn add_last_commits(
    state: &AppState,
    id: &RepoId,
    commit: &str,
    page: &mut [Value],
    paths: Vec<String>,
) -> Result<(), AppError> {
    let (repos, id, commit) = (state.repos().clone(), id.clone(), commit.to_owned());
    let found = {
        let paths = paths.clone();
        blocking(move || Ok(repos.last_commits(&id, &commit, &paths)?)).await?
    };
    for (entry, path) in page.iter_mut().zip(&paths) {
        if entry["type"] == "file" {
            entry["securityFileStatus"] = hub_core::card_rules::file_security(path);
        }
        if let Some(c) = found.get(path) {
            entry["lastCommit"] = json!({
                "id": c.id,
                "title": c.title,
                "date": format_date(c.timestamp),
            });
        }
    }
    Ok(())
}
