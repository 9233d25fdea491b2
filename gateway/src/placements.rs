//! Sharded models' placements (issue #22; the rules live in hub-models' `shards`).
//!
//! - `GET /api/mesh/placements`: the signed placements this node knows — those it made (it
//!   coordinates the model) and those it serves a shard of — the newest per model, each with
//!   its stages (layer range, nodes in rank order as peer ids) and its signed encoding (hex).
//! - `POST /api/mesh/placements` `{"model": "ns/name", "tensor_parallel": 2,
//!   "pipeline_parallel": 1, "sync": "f32"|"q8", "revision": "main"}` (site admin): plans
//!   the placement from the live capacity adverts, signs it, starts the shards on the chosen
//!   nodes and serves the model sharded from here; answers once it serves. Refusals carry
//!   `X-Error-Code`: `ModelNotFound` (404), `InvalidPlacement` (400: a shape the planner or
//!   the runtime does not take), `NotEnoughNodes` and `ModelDoesNotFit` (409),
//!   `ShardWorkerFailed` (502: a chosen node did not load its shard), `ShardingUnavailable`
//!   (503: inference is off here).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use hub_compute::PlanError;
use hub_models::PlaceError;
use hub_protocol::placement::{SignedPlacement, Sync};
use hub_protocol::repo::{RepoId, RepoType};
use hub_protocol::signed::PublicKey;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::AppError;
use crate::extract::SiteAdmin;

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/api/mesh/placements", get(list).post(place))
}

fn peer(key: &PublicKey) -> String {
    hub_net::peer_id_of_key(&key.0).map_or_else(|| hex::encode(key.0), |p| p.to_string())
}

fn placement_json(signed: &SignedPlacement) -> Value {
    let p = &signed.placement;
    json!({
        "model": p.model.hub_id(),
        "commit": hex::encode(p.commit),
        "seq": p.seq,
        "issued_at": p.issued_at,
        "made_by": peer(&p.made_by),
        "tensor_parallel": p.tensor_parallel,
        "pipeline_parallel": p.stages.len(),
        "sync": p.sync,
        "stages": p.stages.iter().map(|s| json!({
            "layers": [s.layers.start, s.layers.end],
            "nodes": s.nodes.iter().map(peer).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "signed": hex::encode(signed.encode()),
    })
}

async fn list(State(state): State<AppState>) -> Json<Value> {
    let placements: Vec<Value> = state
        .shards()
        .map(|s| s.placements())
        .unwrap_or_default()
        .iter()
        .map(placement_json)
        .collect();
    Json(json!({ "placements": placements }))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PlaceBody {
    model: String,
    #[serde(default = "one")]
    tensor_parallel: usize,
    #[serde(default = "one")]
    pipeline_parallel: usize,
    #[serde(default)]
    sync: Sync,
    #[serde(default = "main")]
    revision: String,
}

fn one() -> usize {
    1
}

fn main() -> String {
    "main".into()
}

fn coded(status: StatusCode, code: &'static str, message: String) -> AppError {
    AppError::Coded {
        status,
        code,
        message,
    }
}

fn place_error(e: PlaceError) -> AppError {
    let message = hub_models::error_chain(&e);
    match &e {
        PlaceError::UnknownModel(_) => coded(StatusCode::NOT_FOUND, "ModelNotFound", message),
        PlaceError::Unsupported(_) | PlaceError::Plan(PlanError::Shape) => {
            coded(StatusCode::BAD_REQUEST, "InvalidPlacement", message)
        }
        PlaceError::Plan(PlanError::NotEnoughNodes { .. }) => {
            coded(StatusCode::CONFLICT, "NotEnoughNodes", message)
        }
        PlaceError::Plan(PlanError::NotEnoughMemory { .. }) => {
            coded(StatusCode::CONFLICT, "ModelDoesNotFit", message)
        }
        PlaceError::Worker { .. } => coded(StatusCode::BAD_GATEWAY, "ShardWorkerFailed", message),
        _ => AppError::internal(e),
    }
}

async fn place(
    State(state): State<AppState>,
    _: SiteAdmin,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let body: PlaceBody = serde_json::from_slice(&body).map_err(|e| {
        AppError::BadRequest(format!(
            "expected {{\"model\": \"ns/name\", \"tensor_parallel\": 2, \"pipeline_parallel\": 1}}: {e}"
        ))
    })?;
    let model = RepoId::parse(RepoType::Model, &body.model)
        .map_err(|e| AppError::BadRequest(format!("model: {e}")))?;
    let shards = state.shards().ok_or_else(|| {
        coded(
            StatusCode::SERVICE_UNAVAILABLE,
            "ShardingUnavailable",
            "inference is off on this node".into(),
        )
    })?;
    let rtts = crate::compute::peer_rtts(&state);
    let signed = shards
        .place(
            &model,
            &body.revision,
            body.tensor_parallel,
            body.pipeline_parallel,
            body.sync,
            &rtts,
        )
        .await
        .map_err(place_error)?;
    tracing::info!(model = %model, seq = signed.placement.seq, "model placed");
    Ok(Json(placement_json(&signed)))
}
