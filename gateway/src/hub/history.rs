//! Commit history (`GET …/commits/{rev}`), paginated with a `Link` header (`?p=`).

use super::{RevPath, percent_encode, readable};
use crate::AppState;
use crate::error::AppError;
use crate::util::{blocking, endpoint, format_date};
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// Commits per page.
const COMMITS_PAGE: usize = 50;

/// The query: the page `p`, and `expand[]=formatted` (each commit with a `formatted` title
/// and message, HTML-escaped, as the Hub renders them). Read from the raw query, since
/// `expand[]` may repeat.
fn parse_query(raw: Option<&str>) -> Result<(usize, bool), AppError> {
    let mut page = 0;
    let mut formatted = false;
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match &*k {
            "p" => {
                page = v
                    .parse()
                    .map_err(|_| AppError::BadRequest(format!("invalid page {v:?}")))?
            }
            "expand[]" | "expand" if v == "formatted" => formatted = true,
            _ => {}
        }
    }
    Ok((page, formatted))
}

/// `text` escaped for HTML.
fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub(super) async fn commits(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<RevPath>,
    RawQuery(raw): RawQuery,
) -> Result<Response, AppError> {
    let id = readable(&state, &headers, &p.repo()).await?;
    let (page, formatted) = parse_query(raw.as_deref())?;
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
            let mut v = json!({
                "id": c.id,
                "title": c.title,
                "message": c.message,
                "authors": [{ "user": c.author }],
                "date": format_date(c.timestamp),
            });
            if formatted {
                v["formatted"] = json!({
                    "title": html_escape(&c.title),
                    "message": html_escape(&c.message),
                });
            }
            v
        })
        .collect();
    let mut resp = Json(items).into_response();
    if log.len() > (page + 1) * COMMITS_PAGE {
        let url = format!(
            "{}/api/{}/{}/commits/{}?p={}{}",
            endpoint(&headers),
            id.kind().plural(),
            id.hub_id(),
            percent_encode(&p.rev, false),
            page + 1,
            if formatted {
                "&expand%5B%5D=formatted"
            } else {
                ""
            }
        );
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
    fn query_and_escaping() {
        assert_eq!(parse_query(None).unwrap(), (0, false));
        assert_eq!(
            parse_query(Some("p=2&expand%5B%5D=formatted")).unwrap(),
            (2, true)
        );
        assert_eq!(
            parse_query(Some("expand[]=formatted&expand[]=x")).unwrap(),
            (0, true)
        );
        assert!(parse_query(Some("p=x")).is_err());
        assert_eq!(
            html_escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
