//! The mirror's admin API (`hub-mirror`), for site admins: `GET /api/mirror` (upstream,
//! rules, mirrored repos), `POST /api/mirror/rules` `{"pattern", "rule": allow|deny|pin}`,
//! `DELETE /api/mirror/rules?pattern=`, `POST /api/mirror/refresh` `{"repo"?}` (pinned repos
//! included) and `GET /api/mirror/audit` (the audit log's events, for export). Without a
//! mirror the policy routes answer 404; the audit log exists on every node that has one.

use crate::AppState;
use crate::error::AppError;
use crate::extract::SiteAdmin;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use hub_mirror::{Action, Mirror};
use hub_protocol::repo::{RepoId, RepoType};
use serde_json::{Value, json};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/mirror", get(show))
        .route("/api/mirror/rules", post(add_rule).delete(remove_rule))
        .route("/api/mirror/refresh", post(refresh))
        .route("/api/mirror/audit", get(audit))
}

fn mirror(state: &AppState) -> Result<&Mirror, AppError> {
    state.mirror().ok_or(AppError::NotFound)
}

fn show_json(mirror: &Mirror) -> Value {
    let rules: Vec<Value> = mirror
        .rules()
        .iter()
        .map(|r| json!({"rule": r.action.as_str(), "pattern": r.pattern.as_str(), "source": r.source}))
        .collect();
    json!({
        "upstream": mirror.upstream(),
        "offline": mirror.offline(),
        "rules": rules,
        "repos": mirror.mirrored(),
    })
}

async fn show(State(state): State<AppState>, _: SiteAdmin) -> Result<Json<Value>, AppError> {
    Ok(Json(show_json(mirror(&state)?)))
}

#[derive(Debug, serde::Deserialize)]
struct RuleBody {
    pattern: String,
    #[serde(default = "allow")]
    rule: Action,
}

fn allow() -> Action {
    Action::Allow
}

async fn add_rule(
    State(state): State<AppState>,
    SiteAdmin(admin): SiteAdmin,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let body: RuleBody = serde_json::from_slice(&body).map_err(|e| {
        AppError::BadRequest(format!(
            "expected {{\"pattern\": \"ns/*\", \"rule\": \"allow|deny|pin\"}}: {e}"
        ))
    })?;
    let m = mirror(&state)?;
    let added = m
        .add_rule(body.rule, &body.pattern, &admin.user.name)
        .map_err(|e| AppError::BadRequest(e.to_string()))?;
    let mut out = show_json(m);
    out["added"] = json!(added);
    Ok(Json(out))
}

#[derive(Debug, serde::Deserialize)]
struct PatternQuery {
    pattern: String,
}

async fn remove_rule(
    State(state): State<AppState>,
    SiteAdmin(admin): SiteAdmin,
    Query(q): Query<PatternQuery>,
) -> Result<Json<Value>, AppError> {
    let m = mirror(&state)?;
    let removed = m
        .remove_rule(&q.pattern, &admin.user.name)
        .map_err(AppError::internal)?;
    let mut out = show_json(m);
    out["removed"] = json!(removed);
    Ok(Json(out))
}

/// `ns/name`, `datasets/ns/name`, `spaces/ns/name` (and `models/ns/name`).
fn parse_repo(text: &str) -> Result<RepoId, AppError> {
    let bad = || AppError::BadRequest(format!("not a repo id: {text:?}"));
    let (kind, rest) = match text.split_once('/') {
        Some((k @ ("models" | "datasets" | "spaces"), rest)) if rest.contains('/') => {
            (k.parse::<RepoType>().map_err(|_| bad())?, rest)
        }
        _ => (RepoType::Model, text),
    };
    RepoId::parse(kind, rest).map_err(|_| bad())
}

#[derive(Debug, Default, serde::Deserialize)]
struct RefreshBody {
    repo: Option<String>,
}

async fn refresh(
    State(state): State<AppState>,
    SiteAdmin(admin): SiteAdmin,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let body: RefreshBody = if body.is_empty() {
        RefreshBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| AppError::BadRequest(format!("expected {{\"repo\": \"ns/name\"}}: {e}")))?
    };
    let m = mirror(&state)?;
    let only = body.repo.as_deref().map(parse_repo).transpose()?;
    let results = m.refresh(only.as_ref()).await;
    let mut out = serde_json::Map::new();
    for (id, result) in results {
        let v = match result {
            Ok(outcome) => json!(outcome),
            Err(e) => json!({"error": e.to_string()}),
        };
        out.insert(id, v);
    }
    m.audit().record(
        &admin.user.name,
        "mirror-refresh",
        body.repo.as_deref(),
        json!({}),
    );
    Ok(Json(json!({ "results": out })))
}

async fn audit(State(state): State<AppState>, _: SiteAdmin) -> Result<Json<Value>, AppError> {
    let log = state.audit().ok_or(AppError::NotFound)?.clone();
    let bytes = crate::util::blocking(move || log.export().map_err(AppError::internal)).await?;
    let events: Vec<Value> = String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    Ok(Json(json!({ "events": events })))
}
