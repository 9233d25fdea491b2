//! `POST …/paths-info/{rev}`: the entries of given paths (files or folders), as
//! `get_paths_info` and `file_exists` read them; paths that do not exist are left out.

use super::tree::{add_last_commits, tree_entry_json};
use super::{RevPath, readable};
use crate::AppState;
use crate::error::AppError;
use crate::util::{blocking, parse_json, truthy};
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
fn paths_of(headers: &HeaderMap, body: &[u8]) -> Result<(Vec<String>, bool), AppError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
        || body.trim_ascii_start().starts_with(b"{");
    let (paths, expand): (Vec<String>, bool) = if json {
        #[derive(Deserialize)]
        struct Body {
            #[serde(default)]
            paths: Vec<String>,
            #[serde(default)]
            expand: Value,
        }
        let body = parse_json::<Body>(body)?;
        let expand = body.expand == Value::Bool(true) || body.expand == "true";
        (body.paths, expand)
    } else {
        let mut expand = false;
        let mut paths = Vec::new();
        for (k, v) in form_urlencoded::parse(body) {
            match &*k {
                "paths" => paths.push(v.into_owned()),
                "expand" => expand = truthy(Some(&v)),
                _ => {}
            }
        }
        (paths, expand)
    };
    Ok((
        paths
            .into_iter()
            .map(|p| p.trim_matches('/').to_owned())
            .collect(),
        expand,
    ))
}

pub(super) async fn paths_info(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<RevPath>,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let id = readable(&state, &headers, &p.repo()).await?;
    let (mut paths, expand) = paths_of(&headers, &body)?;
    if paths.len() > MAX_PATHS_INFO {
        return Err(AppError::BadRequest(format!(
            "at most {MAX_PATHS_INFO} paths per call"
        )));
    }
    let mut seen = std::collections::HashSet::new();
    paths.retain(|p| seen.insert(p.clone()));
    let repos = state.repos().clone();
    let rev = p.rev.clone();
    let (commit, found) = {
        let id = id.clone();
        blocking(move || {
            let commit = repos.resolve(&id, &rev)?;
            let entries = repos.entries_at(&id, &commit, &paths)?;
            Ok((commit, entries))
        })
        .await?
    };
    let mut entries: Vec<Value> = found.iter().map(tree_entry_json).collect();
    if expand {
        let paths = found.iter().map(|e| e.path.clone()).collect();
        add_last_commits(&state, &id, &commit, &mut entries, paths).await?;
    }
    let st = state.clone();
    let entries = blocking(move || {
        crate::xet::add_xet_hashes(&st, &mut entries)?;
        Ok(entries)
    })
    .await?;
    Ok(Json(Value::Array(entries)))
}
