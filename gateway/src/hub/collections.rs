//! Collections (`hub_core::collections`): `/api/collections` as `huggingface_hub`'s
//! `list_collections`, `create_collection`, `get_collection`, `update_collection_metadata`,
//! `delete_collection`, `add_collection_item`, `update_collection_item` and
//! `delete_collection_item` call it, and `hf collections …`.

use crate::AppState;
use crate::error::AppError;
use crate::extract::{authenticate, require_auth};
use crate::util::{format_date, parse_json};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use hub_core::collections::{Collection, Item, ItemType, MetadataUpdate};
use serde::Deserialize;
use serde_json::{Value, json};

/// Items shown per collection in a listing (the Hub's truncation).
const LISTED_ITEMS: usize = 4;
/// Collections per listing when the client gives no `limit`, and at most.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

#[derive(Debug, Deserialize)]
pub(super) struct SlugPath {
    ns: String,
    slug: String,
}

impl SlugPath {
    fn slug(&self) -> String {
        format!("{}/{}", self.ns, self.slug)
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct ItemPath {
    ns: String,
    slug: String,
    item: String,
}

fn item_json(i: &Item, position: usize) -> Value {
    let mut out = json!({
        "_id": i.object_id,
        "id": i.item_id,
        "type": i.kind.as_str(),
        "position": position,
    });
    if let Some(note) = &i.note {
        out["note"] = json!({ "text": note, "html": super::discussions::html_escape(note) });
    }
    match i.kind {
        ItemType::Collection => {
            out["slug"] = json!(i.item_id);
        }
        ItemType::Model | ItemType::Dataset | ItemType::Space => {
            out["author"] = json!(i.item_id.split('/').next().unwrap_or_default());
            out["repoType"] = json!(i.kind.as_str());
        }
        ItemType::Paper => {}
    }
    out
}

fn collection_json(c: &Collection, items: Option<usize>) -> Value {
    let shown = items.unwrap_or(usize::MAX);
    json!({
        "slug": c.slug(),
        "title": c.title,
        "description": c.description,
        "owner": { "name": c.namespace, "fullname": c.namespace, "type": "user" },
        "items": c.items.iter().take(shown).enumerate().map(|(n, i)| item_json(i, n)).collect::<Vec<_>>(),
        "lastUpdated": format_date(c.updated_at),
        "position": c.position,
        "private": c.private,
        "theme": c.theme,
        "upvotes": 0,
        "isUpvotedByUser": false,
        "gating": false,
    })
}

/// The 409 the Hub answers for a collection or item that exists, with the slug clients read.
fn conflict(e: hub_core::collections::CollectionError) -> Response {
    if let hub_core::collections::CollectionError::Conflict { message, slug } = &e {
        let mut resp = (
            axum::http::StatusCode::CONFLICT,
            Json(json!({ "error": message, "slug": slug })),
        )
            .into_response();
        if let Ok(v) = axum::http::HeaderValue::from_str(message) {
            resp.headers_mut().insert("x-error-message", v);
        }
        return resp;
    }
    AppError::from(e).into_response()
}

/// `GET /api/collections?owner=…&item=…&sort=…&limit=…`.
pub(super) async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, AppError> {
    let principal = authenticate(&state, &headers).await?;
    let (mut owners, mut item, mut limit) = (Vec::new(), None, DEFAULT_LIMIT);
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "owner" => owners.push(v.into_owned()),
            "item" => item = Some(v.into_owned()),
            "limit" => {
                limit = v
                    .parse::<usize>()
                    .map_err(|_| AppError::BadRequest(format!("invalid limit {v:?}")))?
                    .min(MAX_LIMIT);
            }
            _ => {}
        }
    }
    let found = state
        .hub()
        .list_collections(principal.as_ref(), &owners, item.as_deref())
        .await?;
    Ok(Json(Value::Array(
        found
            .iter()
            .take(limit)
            .map(|c| {
                let mut listed = collection_json(c, Some(LISTED_ITEMS));
                // The client numbers listed collections itself.
                if let Value::Object(o) = &mut listed {
                    o.remove("position");
                }
                listed
            })
            .collect(),
    )))
}

#[derive(Debug, Deserialize)]
struct CreateBody {
    title: String,
    namespace: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    private: bool,
}

/// `POST /api/collections`: 409 with the existing slug when the title is taken.
pub(super) async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    let principal = require_auth(&state, &headers).await?;
    let body: CreateBody = parse_json(&body)?;
    match state
        .hub()
        .create_collection(
            &principal,
            &body.namespace,
            &body.title,
            body.description,
            body.private,
        )
        .await
    {
        Ok(c) => Ok(Json(collection_json(&c, None)).into_response()),
        Err(e) => Ok(conflict(e)),
    }
}

/// `GET /api/collections/{namespace}/{slug}`.
pub(super) async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<SlugPath>,
) -> Result<Json<Value>, AppError> {
    let principal = authenticate(&state, &headers).await?;
    let c = state
        .hub()
        .collection(principal.as_ref(), &p.slug())
        .await?;
    Ok(Json(collection_json(&c, None)))
}

#[derive(Debug, Deserialize)]
struct UpdateBody {
    title: Option<String>,
    description: Option<String>,
    private: Option<bool>,
    theme: Option<String>,
    position: Option<u64>,
}

/// `PATCH /api/collections/{namespace}/{slug}`: answers `{"data": collection}`.
pub(super) async fn update(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<SlugPath>,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let principal = require_auth(&state, &headers).await?;
    let body: UpdateBody = parse_json(&body)?;
    let update = MetadataUpdate {
        title: body.title,
        description: body.description,
        private: body.private,
        theme: body.theme,
        position: body.position,
    };
    let c = state
        .hub()
        .update_collection(&principal, &p.slug(), update)
        .await?;
    Ok(Json(
        json!({ "success": true, "data": collection_json(&c, None) }),
    ))
}

/// `DELETE /api/collections/{namespace}/{slug}`.
pub(super) async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<SlugPath>,
) -> Result<Json<Value>, AppError> {
    let principal = require_auth(&state, &headers).await?;
    state.hub().delete_collection(&principal, &p.slug()).await?;
    Ok(Json(json!({})))
}

#[derive(Debug, Deserialize)]
struct NewItem {
    id: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Deserialize)]
struct AddBody {
    item: NewItem,
    note: Option<String>,
}

/// `POST /api/collections/{namespace}/{slug}/items`: 409 when the item is there already.
pub(super) async fn add_item(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<SlugPath>,
    body: Bytes,
) -> Result<Response, AppError> {
    let principal = require_auth(&state, &headers).await?;
    let body: AddBody = parse_json(&body)?;
    let kind = ItemType::parse(&body.item.kind).ok_or_else(|| {
        AppError::BadRequest(format!(
            "invalid item type {:?}: model, dataset, space, paper or collection",
            body.item.kind
        ))
    })?;
    match state
        .hub()
        .add_collection_item(&principal, &p.slug(), kind, &body.item.id, body.note)
        .await
    {
        Ok(c) => Ok(Json(collection_json(&c, None)).into_response()),
        Err(e) => Ok(conflict(e)),
    }
}

#[derive(Debug, Deserialize)]
struct ItemUpdate {
    note: Option<String>,
    position: Option<u64>,
}

/// `PATCH /api/collections/{namespace}/{slug}/items/{item}`: note and position.
pub(super) async fn update_item(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<ItemPath>,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let principal = require_auth(&state, &headers).await?;
    let body: ItemUpdate = parse_json(&body)?;
    let slug = format!("{}/{}", p.ns, p.slug);
    state
        .hub()
        .update_collection_item(&principal, &slug, &p.item, body.note, body.position)
        .await?;
    Ok(Json(json!({ "success": true })))
}

/// `DELETE /api/collections/{namespace}/{slug}/items/{item}`.
pub(super) async fn delete_item(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<ItemPath>,
) -> Result<Json<Value>, AppError> {
    let principal = require_auth(&state, &headers).await?;
    let slug = format!("{}/{}", p.ns, p.slug);
    state
        .hub()
        .delete_collection_item(&principal, &slug, &p.item)
        .await?;
    Ok(Json(json!({})))
}
