//! `POST …/paths-info/{rev}`: the entries of given paths (files or folders), as
//! `get_paths_info` and `file_exists` read them; paths that do not exist are left out.

use super::tree::tree_entry_json;
use super::{RevPath, readable};
use crate::AppState;
use crate::error::AppError;
use crate::util::{blocking, parse_json};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use serde::Deserialize;
use serde_json::Value;

/// `POST …/paths-info/{rev}` (form body `paths=a&paths=b&expand=…`): the entries of the
/// given paths, files or folders; paths that do not exist are left out, as on the Hub.
/// Most paths in one `paths-info` call.
const MAX_PATHS_INFO: usize = 10_000;

/// The `paths` of a `paths-info` body: a form (`paths=a&paths=b`, what `huggingface_hub`
/// sends) or JSON (`{"paths": ["a", "b"], "expand": …}`, what huggingface.js sends).
fn paths_of(headers: &HeaderMap, body: &[u8]) -> Result<Vec<String>, AppError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
        || body.trim_ascii_start().starts_with(b"{");
    let paths: Vec<String> = if json {
        #[derive(Deserialize)]
        struct Body {
            #[serde(default)]
            paths: Vec<String>,
        }
        parse_json::<Body>(body)?.paths
    } else {
        form_urlencoded::parse(body)
            .filter(|(k, _)| k == "paths")
            .map(|(_, v)| v.into_owned())
            .collect()
    };
    Ok(paths
        .into_iter()
        .map(|p| p.trim_matches('/').to_owned())
        .collect())
}

pub(super) async fn paths_info(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<RevPath>,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let id = readable(&state, &headers, &p.repo()).await?;
    let mut paths = paths_of(&headers, &body)?;
    if paths.len() > MAX_PATHS_INFO {
        return Err(AppError::BadRequest(format!(
            "at most {MAX_PATHS_INFO} paths per call"
        )));
    }
    let mut seen = std::collections::HashSet::new();
    paths.retain(|p| seen.insert(p.clone()));
    let repos = state.repos().clone();
    let rev = p.rev.clone();
    let st = state.clone();
    let entries = blocking(move || {
        let commit = repos.resolve(&id, &rev)?;
        let entries = repos.entries_at(&id, &commit, &paths)?;
        let mut entries = entries.iter().map(tree_entry_json).collect::<Vec<_>>();
        crate::xet::add_xet_hashes(&st, &mut entries)?;
        Ok(entries)
    })
    .await?;
    Ok(Json(Value::Array(entries)))
}
