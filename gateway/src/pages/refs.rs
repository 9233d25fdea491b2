//! `…/branches`: a repo's branches and tags, each with the commit it points to (title,
//! author, date), linking to its files and its history.

use super::render::ctx;
use super::render::{PageError, page};
use super::repo::{RepoParams, open};
use super::session::Viewer;
use crate::AppState;
use crate::util::blocking;
use axum::Extension;
use axum::extract::{Path, State};
use axum::response::Response;
use hub_protocol::repo::RepoType;
use hub_repo::RefInfo;
use serde::Serialize;

/// Refs shown per kind (a repo with more shows the first ones, by name).
const MAX_REFS: usize = 500;

#[derive(Debug, Serialize)]
struct RefRow {
    name: String,
    target: String,
    title: String,
    author: String,
    time: i64,
}

/// `GET …/branches`: branches (`main` first) and tags.
pub(crate) async fn branches(
    State(state): State<AppState>,
    Extension(kind): Extension<RepoType>,
    viewer: Viewer,
    Path(p): Path<RepoParams>,
) -> Result<Response, PageError> {
    let (id, repo) = open(&state, &viewer, kind, &p.ns, &p.name).await?;
    let repos = state.repos().clone();
    let (branches, tags, more) = blocking(move || {
        let (mut branches, tags) = repos.refs(&id)?;
        branches.sort_by(|a, b| (a.name != "main", &a.name).cmp(&(b.name != "main", &b.name)));
        let more = branches.len() > MAX_REFS || tags.len() > MAX_REFS;
        let rows = |refs: Vec<RefInfo>| -> Result<Vec<RefRow>, crate::error::AppError> {
            let mut out = Vec::new();
            for r in refs.into_iter().take(MAX_REFS) {
                let head = repos.history(&id, &r.target, 1)?.into_iter().next();
                out.push(RefRow {
                    title: head.as_ref().map(|c| c.title.clone()).unwrap_or_default(),
                    author: head.as_ref().map(|c| c.author.clone()).unwrap_or_default(),
                    time: head.as_ref().map_or(0, |c| c.timestamp),
                    name: r.name,
                    target: r.target,
                });
            }
            Ok(out)
        };
        Ok((rows(branches)?, rows(tags)?, more))
    })
    .await?;
    Ok(page(
        "branches.html",
        &viewer,
        ctx! { repo, branches, tags, more },
    )?)
}
