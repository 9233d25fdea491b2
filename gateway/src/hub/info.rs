//! Repo info (`GET /api/{type}s/{ns}/{name}[/revision/{rev}]`): the shape `model_info`,
//! `dataset_info` and `space_info` parse, with `siblings` (and their blob ids, sizes and LFS
//! fields with `blobs=true`) and the model card's tags and metadata.

use super::{RepoPath, RevPath};
use crate::AppState;
use crate::access::read_access;
use crate::error::AppError;
use crate::extract::authenticate;
use crate::util::{blocking, format_date, truthy};
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use hub_protocol::repo::RepoType;
use hub_repo::EntryKind;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Debug, Deserialize, Default)]
pub(super) struct InfoQuery {
    blobs: Option<String>,
}

/// The `expand` values of a query (`expand[]=a&expand[]=b` or `expand=a`): with any, the
/// answer has exactly those fields (and `id`, `_id`), as the Hub's has.
fn expand_of(raw: Option<&str>) -> Vec<String> {
    form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == "expand" || k == "expand[]")
        .map(|(_, v)| v.into_owned())
        .collect()
}

/// Keeps only the `expand`ed fields of `body` (plus `id` and `_id`).
fn keep_expanded(body: &mut Value, expand: &[String]) {
    if expand.is_empty() {
        return;
    }
    if let Value::Object(map) = body {
        map.retain(|k, _| k == "id" || k == "_id" || expand.iter().any(|e| e == k));
    }
}

pub(super) async fn repo_info(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<RepoPath>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, AppError> {
    let q: InfoQuery = query_of(raw.as_deref())?;
    let mut body = info(
        state,
        headers,
        path,
        "main".into(),
        truthy(q.blobs.as_deref()),
    )
    .await?;
    keep_expanded(&mut body.0, &expand_of(raw.as_deref()));
    Ok(body)
}

pub(super) async fn repo_info_at(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<RevPath>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, AppError> {
    let q: InfoQuery = query_of(raw.as_deref())?;
    let mut body = info(
        state,
        headers,
        path.repo(),
        path.rev,
        truthy(q.blobs.as_deref()),
    )
    .await?;
    keep_expanded(&mut body.0, &expand_of(raw.as_deref()));
    Ok(body)
}

/// The query's own fields (`blobs`); `expand[]` is read by [`expand_of`].
fn query_of(raw: Option<&str>) -> Result<InfoQuery, AppError> {
    let mut q = InfoQuery::default();
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        if k == "blobs" {
            q.blobs = Some(v.into_owned());
        }
    }
    Ok(q)
}

async fn info(
    state: AppState,
    headers: HeaderMap,
    path: RepoPath,
    rev: String,
    blobs: bool,
) -> Result<Json<Value>, AppError> {
    let id = path.id()?;
    let principal = authenticate(&state, &headers).await?;
    let meta = read_access(&state, principal.as_ref(), &id).await?;
    let (repos, store) = (state.repos().clone(), state.store().clone());
    blocking(move || {
        let downloads = repos.downloads(&id)?;
        let likes = hub_core::likes::likers(&repos, &id)?.len();
        let gated = super::gate::gated_json(hub_core::gate::gate(&repos, &id)?.mode);
        let sha = repos.resolve(&id, &rev)?;
        let head = repos.history(&id, &sha, 1)?;
        let entries = repos.list_tree(&id, &sha, "", true)?;
        let siblings: Vec<Value> = entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .map(|e| {
                let mut s = json!({ "rfilename": e.path });
                if blobs {
                    s["blobId"] = json!(e.oid);
                    s["size"] = json!(e.lfs.as_ref().map_or(e.size, |l| l.size));
                    if let Some(lfs) = &e.lfs {
                        s["lfs"] = json!({ "sha256": lfs.sha256, "size": lfs.size, "pointerSize": e.size });
                    }
                }
                s
            })
            .collect();
        let last_modified = head.first().map(|c| format_date(c.timestamp));
        let card = match repos.file(&id, &sha, "README.md") {
            Ok((entry, bytes)) if entry.lfs.is_none() => {
                hub_search::parse_card(&String::from_utf8_lossy(&bytes))
            }
            _ => hub_search::Card::default(),
        };
        let hub_id = id.hub_id();
        let mut body = json!({
            "_id": hub_id,
            "id": hub_id,
            "author": id.namespace(),
            "sha": sha,
            "lastModified": last_modified,
            "createdAt": format_date(meta.created_at),
            "private": meta.private,
            "downloads": downloads,
            "likes": likes,
            "disabled": false,
            "gated": gated,
            "tags": card.tags,
            "cardData": card.card_data,
            "siblings": siblings,
        });
        if let Some(t) = &card.pipeline_tag {
            body["pipeline_tag"] = json!(t);
        }
        if let Some(l) = &card.library_name {
            body["library_name"] = json!(l);
        }
        if id.kind() == RepoType::Space
            && let Some(sdk) = card.card_data.get("sdk").and_then(Value::as_str)
        {
            body["sdk"] = json!(sdk);
        }
        if id.kind() == RepoType::Model {
            body["modelId"] = json!(hub_id);
            let facts = hub_core::model_facts::model_facts(&repos, &store, &id, &sha)?;
            if let Some(v) = facts.safetensors {
                body["safetensors"] = v;
            }
            if let Some(v) = facts.gguf {
                body["gguf"] = v;
            }
            let files: Vec<&str> = entries
                .iter()
                .filter(|e| e.kind == EntryKind::File)
                .map(|e| e.path.as_str())
                .collect();
            let root: Vec<&str> = files.iter().copied().filter(|p| !p.contains('/')).collect();
            if let Some(info) = facts
                .config
                .as_ref()
                .and_then(|c| hub_core::card_rules::transformers_info(c, &root))
            {
                if card.pipeline_tag.is_none()
                    && let Some(p) = info.get("pipeline_tag")
                {
                    body["pipeline_tag"] = p.clone();
                }
                body["transformersInfo"] = info;
            }
            let pipeline = body["pipeline_tag"].as_str().map(str::to_owned);
            if let Some(w) = hub_core::card_rules::widget_data(&card.card_data, pipeline.as_deref()) {
                body["widgetData"] = w;
            }
            body["securityRepoStatus"] = hub_core::card_rules::repo_security(files);
            if let Some(v) = facts.config {
                body["config"] = Value::Object(v);
            }
            if let Some(index) = card.card_data.get("model-index") {
                body["model-index"] = index.clone();
            }
        }
        Ok(Json(body))
    })
    .await
}
