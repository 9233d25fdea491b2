//! `GET /api/models-tags-by-type` and `/api/datasets-tags-by-type` (`HfApi.get_model_tags`,
//! `get_dataset_tags`): the tags the node's public repos use, by type (`hub_core::tags`).

use crate::AppState;
use crate::error::AppError;
use crate::util::blocking;
use axum::Json;
use axum::extract::State;
use hub_protocol::repo::RepoType;
use serde_json::{Map, Value, json};

async fn by_type(state: &AppState, kind: RepoType) -> Result<Json<Value>, AppError> {
    let search = state.search().clone();
    let tags =
        blocking(move || hub_core::tags::tags_by_type(&search, kind).map_err(AppError::internal))
            .await?;
    let mut out = Map::new();
    for (kind, list) in tags {
        out.insert(
            kind.to_owned(),
            Value::Array(
                list.iter()
                    .map(|t| json!({ "id": t.id, "label": t.label, "type": t.kind }))
                    .collect(),
            ),
        );
    }
    Ok(Json(Value::Object(out)))
}

pub(super) async fn models(State(state): State<AppState>) -> Result<Json<Value>, AppError> {
    by_type(&state, RepoType::Model).await
}

pub(super) async fn datasets(State(state): State<AppState>) -> Result<Json<Value>, AppError> {
    by_type(&state, RepoType::Dataset).await
}
