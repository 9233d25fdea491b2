//! Listing (`GET /api/models|datasets|spaces`): the HTTP side. Which repos a caller may see,
//! and the index documents themselves, are `hub-core`'s ([`hub_core::listing`]).

use crate::AppState;
use crate::error::AppError;
use crate::extract::Caller;
use crate::util::{blocking, endpoint, format_date, truthy};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router, routing::get};
use hub_core::listing::ListError;
use hub_protocol::repo::RepoType;
use hub_repo::EntryKind;
use hub_search::{ListQuery, Sort};
use serde_json::{Value, json};

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/api/{kind}", get(list))
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
    /// `gated=true|false`: only gated repos, or only repos that are not.
    gated: Option<bool>,
}

fn parse_params(raw: Option<&str>) -> Result<ListParams, AppError> {
    let mut p = ListParams::default();
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
            "full" => p.full = truthy(Some(&value)),
            "gated" if !value.is_empty() => p.gated = Some(truthy(Some(&value))),
            "cardData" => p.card_data = truthy(Some(&value)),
            _ => {}
        }
    }
    Ok(p)
}

async fn list(
    State(state): State<AppState>,
    Caller(principal): Caller,
    headers: HeaderMap,
    Path(kind): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, AppError> {
    let kind: RepoType = kind.parse().map_err(|_| AppError::NotFound)?;
    let params = parse_params(raw.as_deref())?;
    let page_size = state.config().list_page_size.max(1);
    let want = params.limit.unwrap_or(usize::MAX);
    let mut query = ListQuery::new(kind);
    query.author = params.author.clone();
    query.search = params.search.clone();
    query.filters = params.filters.clone();
    query.sort = params.sort;
    query.gated = params.gated;
    query.offset = params.cursor;
    query.limit = want.min(page_size).min(hub_search::MAX_LIMIT);
    let page = state
        .hub()
        .list(principal.as_ref(), query)
        .await
        .map_err(|e| match e {
            ListError::Storage(e) => AppError::from(e),
            other => AppError::internal(other),
        })?;
    let repos = state.repos().clone();
    let full = params.full;
    let (page, siblings) = blocking(move || {
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
                "gated": doc.gated.as_deref().map_or(json!(false), |g| json!(g)),
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
