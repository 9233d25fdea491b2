//! The mesh inspection API: what this node sees of the peer-to-peer mesh.
//!
//! - `GET /api/mesh/peers`: this node's peer id and listen addresses, its replication
//!   counters, and the peers connected now (addresses, chunk bytes received and sent, chunks
//!   that failed verification).
//! - `GET /api/mesh/repos/{type}/{namespace}/{name}`: the DHT providers of a repo, the last
//!   accepted signed-update seq, whether this node seeds it, and the state of its LFS
//!   replication (objects missing, fetched, unbound; bytes; last error).
//!
//! - `GET /api/mesh/seeds`: the seeding policy, each entry with its source (`config`:
//!   `--seed` / `[p2p] seed`, fixed while the node runs; `runtime`: added with
//!   `hubmesh seed add`; `fetched`: a repo users fetched through this gateway).
//! - `POST /api/mesh/seeds` `{"pattern": "alice/*"}` and `DELETE /api/mesh/seeds?pattern=…`:
//!   change the run-time policy (persisted in the data directory). They need a site admin's
//!   write token. Refusals carry `X-Error-Code`: `InvalidSeedPattern` (400),
//!   `SeedPatternFromConfig` (409), `SeedPatternNotFound` (404).
//!
//! The reads need no token: they say nothing a peer could not learn from the mesh itself
//! (identify, gossip, the DHT). A private repo of this node answers 404, as a missing one
//! does.

use crate::AppState;
use crate::error::AppError;
use crate::extract::SiteAdmin;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use hub_mesh::SeedError;
use hub_protocol::repo::{RepoId, RepoType};
use serde_json::{Value, json};
use std::time::Duration;

/// How long a repo query waits for the DHT's providers.
const PROVIDERS_TIMEOUT: Duration = Duration::from_secs(3);

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/mesh/peers", get(peers))
        .route("/api/mesh/repos/{kind}/{namespace}/{name}", get(repo))
        .route(
            "/api/mesh/seeds",
            get(list_seeds).post(add_seed).delete(remove_seed),
        )
}

fn seeds_json(state: &AppState) -> Value {
    let seeds: Vec<Value> = state
        .replication()
        .map(hub_mesh::Mesh::seeds)
        .unwrap_or_default()
        .into_iter()
        .map(|e| {
            json!({
                "pattern": e.pattern,
                "type": e.kind.map(|k| k.as_str()),
                "source": e.source.as_str(),
            })
        })
        .collect();
    Value::Array(seeds)
}

async fn list_seeds(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "seeds": seeds_json(&state) }))
}

fn seed_error(e: SeedError) -> AppError {
    let (status, code) = match &e {
        SeedError::Invalid(_) => (StatusCode::BAD_REQUEST, "InvalidSeedPattern"),
        SeedError::FromConfig(_) => (StatusCode::CONFLICT, "SeedPatternFromConfig"),
        SeedError::NotFound(_) => (StatusCode::NOT_FOUND, "SeedPatternNotFound"),
        SeedError::NoReplication => (StatusCode::SERVICE_UNAVAILABLE, "ReplicationUnavailable"),
        SeedError::TooManyFetched => (StatusCode::INSUFFICIENT_STORAGE, "TooManyFetchedRepos"),
        _ => return AppError::internal(e),
    };
    AppError::Coded {
        status,
        code,
        message: e.to_string(),
    }
}

/// The replication handle, or the error a node without replication answers.
fn replication(state: &AppState) -> Result<&hub_mesh::Mesh, AppError> {
    state
        .replication()
        .ok_or_else(|| seed_error(SeedError::NoReplication))
}

#[derive(Debug, serde::Deserialize)]
struct PatternBody {
    pattern: String,
}

async fn add_seed(
    State(state): State<AppState>,
    _: SiteAdmin,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let body: PatternBody = serde_json::from_slice(&body)
        .map_err(|e| AppError::BadRequest(format!("expected {{\"pattern\": \"ns/*\"}}: {e}")))?;
    let added = replication(&state)?
        .add_seed(&body.pattern)
        .await
        .map_err(seed_error)?;
    tracing::info!(pattern = %body.pattern, added, "seed pattern added");
    Ok(Json(json!({
        "pattern": body.pattern,
        "added": added,
        "seeds": seeds_json(&state),
    })))
}

#[derive(Debug, serde::Deserialize)]
struct PatternQuery {
    pattern: String,
}

async fn remove_seed(
    State(state): State<AppState>,
    _: SiteAdmin,
    Query(q): Query<PatternQuery>,
) -> Result<Json<Value>, AppError> {
    replication(&state)?
        .remove_seed(&q.pattern)
        .await
        .map_err(seed_error)?;
    tracing::info!(pattern = %q.pattern, "seed pattern removed");
    Ok(Json(json!({
        "pattern": q.pattern,
        "removed": true,
        "seeds": seeds_json(&state),
    })))
}

async fn peers(State(state): State<AppState>) -> Json<Value> {
    let p2p = state.p2p();
    // Connections are the transport's; chunk traffic and counters are replication's.
    let mesh = state.replication();
    let peers: Vec<Value> = p2p
        .peers()
        .into_iter()
        .filter(|(_, p)| p.connected)
        .map(|(id, p)| {
            let traffic = mesh.and_then(|m| m.peer_traffic(&id)).unwrap_or_default();
            json!({
                "peer_id": id.to_string(),
                "addrs": p.addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "chunk_bytes_received": traffic.chunk_bytes_received,
                "chunk_bytes_sent": traffic.chunk_bytes_sent,
                "bad_chunks": traffic.bad_chunks,
            })
        })
        .collect();
    let counters = mesh.map(hub_mesh::Mesh::counters).unwrap_or_default();
    Json(json!({
        "peer_id": p2p.peer_id().to_string(),
        "listen_addrs": p2p.listen_addrs().iter().map(ToString::to_string).collect::<Vec<_>>(),
        "blob_addrs": p2p.blob_addrs().iter().map(ToString::to_string).collect::<Vec<_>>(),
        "counters": {
            "connected_peers": p2p.connected_peers(),
            "gossip_accepted": counters.gossip_accepted,
            "gossip_refused": counters.gossip_refused,
            "repos_replicated": counters.repos_replicated,
            "lfs_objects_fetched": counters.lfs_objects_fetched,
            "chunk_bytes_received": counters.chunk_bytes_received,
            "chunk_bytes_sent": counters.chunk_bytes_sent,
            "blob_bytes_received": counters.blob_bytes_received,
            "blob_bytes_sent": counters.blob_bytes_sent,
            "pack_blob_bytes_received": counters.pack_blob_bytes_received,
            "chunks_rejected": counters.chunks_rejected,
            "foreign_claims_refused": counters.foreign_claims_refused,
            "foreign_updates_refused": counters.foreign_updates_refused,
        },
        "peers": peers,
    }))
}

async fn repo(
    State(state): State<AppState>,
    Path((kind, namespace, name)): Path<(String, String, String)>,
) -> Result<Json<Value>, AppError> {
    let kind: RepoType = kind.parse().map_err(|_| AppError::NotFound)?;
    let id = RepoId::new(kind, &namespace, &name).map_err(|_| AppError::RepoNotFound)?;
    let repos = state.repos().clone();
    let local = {
        let id = id.clone();
        tokio::task::spawn_blocking(move || repos.meta(&id).ok())
            .await
            .map_err(|_| AppError::Internal("repo metadata task failed".into()))?
    };
    let replication = state.replication().and_then(|m| m.repo_state(&id));
    match (&local, &replication) {
        (Some(meta), _) if meta.private => return Err(AppError::RepoNotFound),
        (None, None) => return Err(AppError::RepoNotFound),
        _ => {}
    }
    let providers = tokio::time::timeout(PROVIDERS_TIMEOUT, state.p2p().providers(&id))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let replication = replication.unwrap_or_default();
    Ok(Json(json!({
        "id": format!("{}/{}", id.namespace(), id.name()),
        "type": kind.as_str(),
        "local": local.is_some(),
        "providers": providers.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "last_seq": replication.last_seq,
        "seeded": replication.seeded,
        "lfs": {
            "missing": replication.lfs_missing,
            "fetched": replication.lfs_fetched,
            "unbound": replication.lfs_unbound,
            "chunk_bytes_received": replication.chunk_bytes_received,
        },
        "last_error": replication.last_error,
    })))
}
