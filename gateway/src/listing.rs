//! Listing (`GET /api/models|datasets|spaces`) and keeping the search index in step with the
//! repositories.
//!
//! The index (`hub-search`) is derived data: every change to a repository (create, commit,
//! settings, branch or tag, delete) re-derives its document with [`reindex`], and the node
//! rebuilds the whole index from the repositories at start-up ([`rebuild`]), so a crash
//! between a commit and its reindex can never leave the listing wrong for long.

use crate::AppState;
use crate::error::AppError;
use crate::hub::{blocking, endpoint, format_date};
use crate::routes::authenticate;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router, routing::get};
use hub_protocol::repo::{RepoId, RepoType};
use hub_repo::{EntryKind, Repos};
use hub_search::{ListQuery, RepoDoc, SearchIndex, Sort};
use serde_json::{Value, json};

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/api/{kind}", get(list))
}

/// Builds the index document of one repository from its `main` branch and metadata.
pub fn document(repos: &Repos, id: &RepoId) -> Result<RepoDoc, hub_repo::RepoError> {
    let meta = repos.meta(id)?;
    let mut doc = RepoDoc::new(id.clone());
    doc.private = meta.private;
    doc.created_at = meta.created_at;
    doc.downloads = repos.downloads(id)?;
    if let Some(head) = repos.history(id, "main", 1)?.into_iter().next() {
        doc.sha = head.id;
        doc.last_modified = head.timestamp;
    }
    match repos.file(id, "main", "README.md") {
        Ok((entry, bytes)) if entry.lfs.is_none() => {
            let card = hub_search::parse_card(&String::from_utf8_lossy(&bytes));
            doc.tags = card.tags;
            doc.card_data = card.card_data;
            doc.pipeline_tag = card.pipeline_tag;
            doc.library_name = card.library_name;
        }
        Ok(_) | Err(hub_repo::RepoError::EntryNotFound { .. }) => {}
        Err(hub_repo::RepoError::RevisionNotFound { .. }) => {}
        Err(e) => return Err(e),
    }
    Ok(doc)
}

/// Re-derives one repository's document (or removes it when the repository is gone). Errors
/// are logged, not returned: the write that triggered it has already succeeded, and the next
/// start-up rebuilds the index anyway.
pub fn reindex(repos: &Repos, search: &SearchIndex, id: &RepoId) {
    let result = match document(repos, id) {
        Ok(doc) => search.upsert(doc).map_err(|e| e.to_string()),
        Err(hub_repo::RepoError::NotFound { .. }) => search.remove(id).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(error) = result {
        tracing::warn!(repo = %id, %error, "search index not updated");
    }
}

/// Rebuilds the whole index from the repositories (start-up). Returns the number of repos.
pub fn rebuild(
    repos: &Repos,
    search: &SearchIndex,
) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
    let mut docs = Vec::new();
    for kind in RepoType::ALL {
        for id in repos.list(kind)? {
            docs.push(document(repos, &id)?);
        }
    }
    let n = docs.len();
    search.upsert_many(docs)?;
    Ok(n)
}

/// Query parameters of the list endpoints; repeated keys (`filter`, `expand`) accumulate.
#[derive(Debug, Default)]
struct ListParams {
    author: Option<String>,
    search: Option<String>,
    filters: Vec<String>,
    sort: Option<Sort>,
    limit: Option<usize>,
    cursor: usize,
    full: bool,
    card_data: bool,
}

fn parse_params(raw: Option<&str>) -> Result<ListParams, AppError> {
    let mut p = ListParams::default();
    let truthy = |v: &str| v.eq_ignore_ascii_case("true") || v == "1";
    for (key, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        let value = value.into_owned();
        match key.as_ref() {
            "author" if !value.is_empty() => p.author = Some(value),
            "search" if !value.is_empty() => p.search = Some(value),
            "filter" if !value.is_empty() => p.filters.push(value),
            // Filters the Hub also accepts as their own parameters.
            "pipeline_tag" | "library" | "language" | "license" if !value.is_empty() => {
                p.filters.push(match key.as_ref() {
                    "license" => format!("license:{value}"),
                    _ => value,
                });
            }
            "sort" if !value.is_empty() => {
                p.sort = Some(value.parse().map_err(|_| {
                    AppError::BadRequest(format!(
                        "sort {value:?} is not one of downloads, likes, lastModified, createdAt"
                    ))
                })?);
            }
            "limit" => {
                p.limit = Some(
                    value
                        .parse()
                        .map_err(|_| AppError::BadRequest(format!("invalid limit {value:?}")))?,
                );
            }
            "cursor" => {
                p.cursor = value
                    .parse()
                    .map_err(|_| AppError::BadRequest("invalid cursor".into()))?;
            }
            "full" => p.full = truthy(&value),
            "cardData" => p.card_data = truthy(&value),
            _ => {}
        }
    }
    Ok(p)
}

async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(kind): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, AppError> {
    let kind: RepoType = kind.parse().map_err(|_| AppError::NotFound)?;
    let params = parse_params(raw.as_deref())?;
    let principal = authenticate(&state, &headers).await?;
    let visible = match &principal {
        Some(p) => {
            let auth = state.auth().clone();
            let user = p.user.name.clone();
            let mut namespaces = vec![user.clone()];
            let orgs = blocking(move || auth.orgs_of(&user).map_err(AppError::internal)).await?;
            namespaces.extend(orgs.into_iter().map(|(org, _)| org));
            namespaces
        }
        None => Vec::new(),
    };
    let page_size = state.config().list_page_size.max(1);
    let want = params.limit.unwrap_or(usize::MAX);
    let mut query = ListQuery::new(kind);
    query.author = params.author.clone();
    query.search = params.search.clone();
    query.filters = params.filters.clone();
    query.sort = params.sort;
    query.offset = params.cursor;
    query.limit = want.min(page_size).min(hub_search::MAX_LIMIT);
    query.include_private_of = visible;
    let search = state.search().clone();
    let repos = state.repos().clone();
    let full = params.full;
    let (page, siblings) = blocking(move || {
        let page = search.query(&query).map_err(AppError::internal)?;
        let mut siblings = Vec::new();
        if full {
            for doc in &page.items {
                let files = repos
                    .list_tree(&doc.id, "main", "", true)
                    .map(|entries| {
                        entries
                            .into_iter()
                            .filter(|e| e.kind == EntryKind::File)
                            .map(|e| json!({ "rfilename": e.path }))
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default();
                siblings.push(files);
            }
        }
        Ok((page, siblings))
    })
    .await?;
    let items: Vec<Value> = page
        .items
        .iter()
        .enumerate()
        .map(|(i, doc)| {
            let hub_id = doc.id.hub_id();
            let mut v = json!({
                "_id": hub_id,
                "id": hub_id,
                "author": doc.id.namespace(),
                "sha": doc.sha,
                "lastModified": format_date(doc.last_modified),
                "createdAt": format_date(doc.created_at),
                "private": doc.private,
                "downloads": doc.downloads,
                "likes": doc.likes,
                "tags": doc.tags,
            });
            if kind == RepoType::Model {
                v["modelId"] = json!(hub_id);
            }
            if let Some(t) = &doc.pipeline_tag {
                v["pipeline_tag"] = json!(t);
            }
            if let Some(l) = &doc.library_name {
                v["library_name"] = json!(l);
            }
            if params.card_data || params.full {
                v["cardData"] = Value::Object(doc.card_data.clone());
            }
            if let Some(s) = siblings.get(i) {
                v["siblings"] = json!(s);
            }
            v
        })
        .collect();
    let returned = params.cursor + items.len();
    let mut resp = Json(items).into_response();
    if let Some(next) = page.next_offset
        && params.limit.is_none_or(|l| returned < l)
    {
        // Keep every parameter, replace the cursor: the client follows this URL as is.
        let mut query: Vec<(String, String)> =
            form_urlencoded::parse(raw.as_deref().unwrap_or_default().as_bytes())
                .filter(|(k, _)| k != "cursor")
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
        query.push(("cursor".into(), next.to_string()));
        let qs = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(query)
            .finish();
        let url = format!("{}/api/{}?{qs}", endpoint(&headers), kind.plural());
        if let Ok(v) = HeaderValue::from_str(&format!("<{url}>; rel=\"next\"")) {
            resp.headers_mut().insert(header::LINK, v);
        }
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params() {
        let p = parse_params(Some("author=alice&search=lla&filter=a&filter=b&sort=lastModified&limit=3&cursor=6&full=True&cardData=true&direction=-1")).unwrap();
        assert_eq!(p.author.as_deref(), Some("alice"));
        assert_eq!(p.filters, ["a", "b"]);
        assert_eq!(p.sort, Some(Sort::LastModified));
        assert_eq!(
            (p.limit, p.cursor, p.full, p.card_data),
            (Some(3), 6, true, true)
        );
        assert!(parse_params(Some("sort=bogus")).is_err());
        assert!(parse_params(Some("limit=-1")).is_err());
        assert!(parse_params(None).is_ok());
    }
}
