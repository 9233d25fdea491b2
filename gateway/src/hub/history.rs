//! Commit history (`GET …/commits/{rev}`), paginated with a `Link` header (`?p=`).

use super::{RevPath, percent_encode, readable};
use crate::AppState;
use crate::error::AppError;
use crate::util::{blocking, endpoint, format_date};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

/// Commits per page.
const COMMITS_PAGE: usize = 50;

#[derive(Debug, Deserialize, Default)]
pub(super) struct CommitsQuery {
    p: Option<usize>,
}

pub(super) async fn commits(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<RevPath>,
    Query(q): Query<CommitsQuery>,
) -> Result<Response, AppError> {
    let id = readable(&state, &headers, &p.repo()).await?;
    let page = q.p.unwrap_or(0);
    let repos = state.repos().clone();
    let rev = p.rev.clone();
    let log = {
        let id = id.clone();
        let want = (page + 1)
            .checked_mul(COMMITS_PAGE)
            .and_then(|n| n.checked_add(1))
            .ok_or_else(|| AppError::BadRequest("page out of range".into()))?;
        blocking(move || Ok(repos.history(&id, &rev, want)?)).await?
    };
    let items: Vec<Value> = log
        .iter()
        .skip(page * COMMITS_PAGE)
        .take(COMMITS_PAGE)
        .map(|c| {
            json!({
                "id": c.id,
                "title": c.title,
                "message": c.message,
                "authors": [{ "user": c.author }],
                "date": format_date(c.timestamp),
            })
        })
        .collect();
    let mut resp = Json(items).into_response();
    if log.len() > (page + 1) * COMMITS_PAGE {
        let url = format!(
            "{}/api/{}/{}/commits/{}?p={}",
            endpoint(&headers),
            id.kind().plural(),
            id.hub_id(),
            percent_encode(&p.rev, false),
            page + 1
        );
        if let Ok(v) = HeaderValue::from_str(&format!("<{url}>; rel=\"next\"")) {
            resp.headers_mut().insert(header::LINK, v);
        }
    }
    Ok(resp)
}
