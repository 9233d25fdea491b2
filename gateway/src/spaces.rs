//! Spaces over HTTP: the runtime API as `huggingface_hub` calls it, and the apps themselves.
//!
//! Routes (the Space is `/api/spaces/{ns}/{name}`; every rule lives in `hub-spaces`):
//! - `GET …/runtime` (read access): `{stage, hardware: {current, requested}, gcTimeout,
//!   replicas, devMode, sha, errorMessage, …}`; the first query starts a Space that never
//!   ran on this node;
//! - `POST …/pause`, `POST …/restart[?factory=true]`, `POST …/sleeptime {"seconds"}` (write
//!   access), answered with the runtime;
//! - `GET|POST|DELETE …/secrets` and `…/variables` (write access): secrets are listed by key
//!   and description only, never with their values;
//! - `GET …/logs/build`, `GET …/logs/run` (write access): SSE, `data: {"data", "timestamp"}`
//!   per line; the kept lines, then new ones while the client stays (a build log ends
//!   when no build runs);
//! - `POST /api/spaces/{ns}/{name}/duplicate` is the Hub API's repo duplication
//!   (`hub/lifecycle.rs`); for a Space it also sets the body's `secrets` and `variables`
//!   through [`set_duplicate_settings`];
//! - `ANY /spaces/{ns}/{name}/app/…`: the app (see `proxy`), also reached by host name,
//!   `NS-NAME.<domain>` (see `host`).
//!
//! Until the node calls [`AppState::enable_spaces`], these answer 503 (`--spaces off`).

pub(crate) mod host;
mod proxy;

use crate::AppState;
use crate::access::{access, read_access};
use crate::error::AppError;
use crate::extract::authenticate;
use crate::util::{format_date, parse_json};
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use futures::StreamExt;
use http::{HeaderMap, StatusCode};
use hub_core::Need;
use hub_protocol::repo::{RepoId, RepoType};
use hub_spaces::{Settings, Spaces, SpacesError, Stage, Status};
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::UNIX_EPOCH;

/// Largest JSON body of the runtime API.
const MAX_BODY: usize = 1024 * 1024;

pub(crate) fn routes() -> Router<AppState> {
    // `{kind}` rather than `spaces`: the Hub API's `/api/{kind}/{ns}/{name}/…` routes share
    // the prefix, and the router matches a segment as static or as a parameter, not both.
    let space = "/api/{kind}/{ns}/{name}";
    Router::new()
        .route(&format!("{space}/runtime"), get(runtime))
        .route(&format!("{space}/pause"), post(pause))
        .route(&format!("{space}/restart"), post(restart))
        .route(&format!("{space}/sleeptime"), post(sleeptime))
        .route(
            &format!("{space}/secrets"),
            get(list_secrets).post(add_secret).delete(delete_secret),
        )
        .route(
            &format!("{space}/variables"),
            get(list_variables)
                .post(add_variable)
                .delete(delete_variable),
        )
        .route(&format!("{space}/logs/{{which}}"), get(logs))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .route("/spaces/{ns}/{name}/app", any(proxy::app_root))
        .route("/spaces/{ns}/{name}/app/", any(proxy::app_root))
        .route("/spaces/{ns}/{name}/app/{*rest}", any(proxy::app))
}

#[derive(Debug, Deserialize)]
struct SpacePath {
    /// `spaces` for the runtime API; absent for the app routes.
    #[serde(default)]
    kind: Option<String>,
    ns: String,
    name: String,
}

impl SpacePath {
    fn id(&self) -> Result<RepoId, AppError> {
        if self.kind.as_deref().is_some_and(|k| k != "spaces") {
            return Err(AppError::NotFound);
        }
        RepoId::new(RepoType::Space, &self.ns, &self.name).map_err(|_| AppError::RepoNotFound)
    }
}

fn spaces(state: &AppState) -> Result<&Spaces, AppError> {
    state.spaces().ok_or_else(|| AppError::Coded {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "SpacesDisabled",
        message: "this node does not run Spaces (--spaces off)".into(),
    })
}

impl From<SpacesError> for AppError {
    fn from(e: SpacesError) -> Self {
        match e {
            SpacesError::NotASpace(_) => AppError::RepoNotFound,
            SpacesError::Setting(e) => AppError::BadRequest(e.to_string()),
            SpacesError::Repo(e) => e.into(),
            SpacesError::TooMany(_) => AppError::Unavailable(e.to_string()),
            other => AppError::internal(other),
        }
    }
}

/// The caller with `need` on the Space, and its id.
async fn allowed(
    state: &AppState,
    headers: &HeaderMap,
    path: &SpacePath,
    need: Need,
) -> Result<RepoId, AppError> {
    let id = path.id()?;
    let principal = authenticate(state, headers).await?;
    if need == Need::Read {
        read_access(state, principal.as_ref(), &id).await?;
    } else {
        access(state, principal.as_ref(), &id, need).await?;
    }
    Ok(id)
}

/// The runtime in the Hub's shape.
fn runtime_json(status: &Status, settings: &Settings, default_sleep: Option<u64>) -> Value {
    let serving = status.stage.serving();
    let requested = status
        .suggested_hardware
        .clone()
        .unwrap_or_else(|| "cpu-basic".into());
    let gc_timeout = match settings.sleep_time {
        Some(s) if s < 0 => Value::Null,
        Some(s) => json!(s),
        None => default_sleep.map_or(Value::Null, |s| json!(s)),
    };
    json!({
        "stage": status.stage.as_str(),
        "hardware": {
            "current": if serving { Some("cpu-basic") } else { None },
            "requested": requested,
        },
        "gcTimeout": gc_timeout,
        "storage": null,
        "devMode": false,
        "replicas": {"current": u8::from(serving), "requested": 1},
        "sdk": status.sdk.map(|s| s.as_str()),
        "sha": status.commit,
        "errorMessage": status.error,
    })
}

async fn runtime_of(state: &AppState, id: &RepoId) -> Result<Json<Value>, AppError> {
    let spaces = spaces(state)?;
    let (status, settings) = spaces.runtime(id).await?;
    Ok(Json(runtime_json(
        &status,
        &settings,
        spaces.default_sleep_secs(),
    )))
}

async fn runtime(
    State(state): State<AppState>,
    Path(path): Path<SpacePath>,
    headers: HeaderMap,
) -> Result<Json<Value>, AppError> {
    let id = allowed(&state, &headers, &path, Need::Read).await?;
    runtime_of(&state, &id).await
}

async fn pause(
    State(state): State<AppState>,
    Path(path): Path<SpacePath>,
    headers: HeaderMap,
) -> Result<Json<Value>, AppError> {
    let id = allowed(&state, &headers, &path, Need::Write).await?;
    let spaces = spaces(&state)?;
    let status = spaces.pause(&id).await?;
    Ok(Json(runtime_json(
        &status,
        &spaces.settings(&id)?,
        spaces.default_sleep_secs(),
    )))
}

#[derive(Debug, Deserialize)]
struct RestartQuery {
    #[serde(default)]
    factory: Option<String>,
}

async fn restart(
    State(state): State<AppState>,
    Path(path): Path<SpacePath>,
    Query(query): Query<RestartQuery>,
    headers: HeaderMap,
) -> Result<Json<Value>, AppError> {
    let id = allowed(&state, &headers, &path, Need::Write).await?;
    let factory = matches!(query.factory.as_deref(), Some("true" | "1"));
    let spaces = spaces(&state)?;
    let status = spaces.restart(&id, factory).await?;
    Ok(Json(runtime_json(
        &status,
        &spaces.settings(&id)?,
        spaces.default_sleep_secs(),
    )))
}

#[derive(Debug, Deserialize)]
struct SleepBody {
    seconds: i64,
}

async fn sleeptime(
    State(state): State<AppState>,
    Path(path): Path<SpacePath>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let id = allowed(&state, &headers, &path, Need::Write).await?;
    let body: SleepBody = parse_json(&body)?;
    if body.seconds == 0 || body.seconds < -1 {
        return Err(AppError::BadRequest(
            "sleep time is a positive number of seconds, or -1 for never".into(),
        ));
    }
    let spaces = spaces(&state)?;
    let status = spaces.set_sleep_time(&id, body.seconds)?;
    Ok(Json(runtime_json(
        &status,
        &spaces.settings(&id)?,
        spaces.default_sleep_secs(),
    )))
}

#[derive(Debug, Deserialize)]
pub(crate) struct EntryBody {
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Debug, Deserialize)]
struct KeyBody {
    key: String,
}

fn entries_json(
    entries: &std::collections::BTreeMap<String, hub_spaces::Entry>,
    values: bool,
) -> Value {
    let map = entries
        .iter()
        .map(|(key, entry)| {
            let mut v = json!({
                "key": key,
                "description": entry.description,
                "updatedAt": format_date(i64::try_from(entry.updated).unwrap_or(0)),
            });
            if values {
                v["value"] = json!(entry.value);
            }
            (key.clone(), v)
        })
        .collect::<serde_json::Map<_, _>>();
    Value::Object(map)
}

async fn list_secrets(
    State(state): State<AppState>,
    Path(path): Path<SpacePath>,
    headers: HeaderMap,
) -> Result<Json<Value>, AppError> {
    let id = allowed(&state, &headers, &path, Need::Write).await?;
    let settings = spaces(&state)?.settings(&id)?;
    Ok(Json(entries_json(&settings.secrets, false)))
}

async fn add_secret(
    State(state): State<AppState>,
    Path(path): Path<SpacePath>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, AppError> {
    let id = allowed(&state, &headers, &path, Need::Write).await?;
    let body: EntryBody = parse_json(&body)?;
    spaces(&state)?
        .set_entry(&id, true, &body.key, &body.value, body.description)
        .await?;
    Ok(StatusCode::OK)
}

async fn delete_secret(
    State(state): State<AppState>,
    Path(path): Path<SpacePath>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, AppError> {
    let id = allowed(&state, &headers, &path, Need::Write).await?;
    let body: KeyBody = parse_json(&body)?;
    spaces(&state)?.delete_entry(&id, true, &body.key).await?;
    Ok(StatusCode::OK)
}

async fn list_variables(
    State(state): State<AppState>,
    Path(path): Path<SpacePath>,
    headers: HeaderMap,
) -> Result<Json<Value>, AppError> {
    let id = allowed(&state, &headers, &path, Need::Write).await?;
    let settings = spaces(&state)?.settings(&id)?;
    Ok(Json(entries_json(&settings.variables, true)))
}

async fn add_variable(
    State(state): State<AppState>,
    Path(path): Path<SpacePath>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let id = allowed(&state, &headers, &path, Need::Write).await?;
    let body: EntryBody = parse_json(&body)?;
    let settings = spaces(&state)?
        .set_entry(&id, false, &body.key, &body.value, body.description)
        .await?;
    Ok(Json(entries_json(&settings.variables, true)))
}

async fn delete_variable(
    State(state): State<AppState>,
    Path(path): Path<SpacePath>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let id = allowed(&state, &headers, &path, Need::Write).await?;
    let body: KeyBody = parse_json(&body)?;
    let settings = spaces(&state)?.delete_entry(&id, false, &body.key).await?;
    Ok(Json(entries_json(&settings.variables, true)))
}

#[derive(Debug, Deserialize)]
struct LogsPath {
    kind: String,
    ns: String,
    name: String,
    which: String,
}

/// `GET …/logs/{build,run}`: SSE, one `data: {"data": line, "timestamp": …}` event per line.
async fn logs(
    State(state): State<AppState>,
    Path(path): Path<LogsPath>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let build = match path.which.as_str() {
        "build" => true,
        "run" => false,
        _ => return Err(AppError::NotFound),
    };
    let space = SpacePath {
        kind: Some(path.kind),
        ns: path.ns,
        name: path.name,
    };
    let id = allowed(&state, &headers, &space, Need::Write).await?;
    let spaces = spaces(&state)?;
    let log = spaces.log(&id, build)?;
    let (kept, rx) = log.snapshot();
    // A build log that cannot grow (no build running) ends after its lines, as the Hub's
    // does once a build is over; a run log follows the app.
    let done = build
        && !matches!(
            spaces.space(&id)?.status().stage,
            Stage::Building | Stage::RunningBuilding
        );
    let event = |line: hub_spaces::LogLine| {
        let secs = line
            .time
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let data = json!({"data": format!("{}\n", line.text), "timestamp": format_date(i64::try_from(secs).unwrap_or(0))});
        Ok::<_, std::convert::Infallible>(Event::default().data(data.to_string()))
    };
    let kept = futures::stream::iter(kept.into_iter().map(event));
    let follow = futures::stream::unfold(rx, move |mut rx| async move {
        if done {
            return None;
        }
        loop {
            match rx.recv().await {
                Ok(line) => return Some((line, rx)),
                // A slow follower skips what it missed.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .map(event);
    Ok(Sse::new(kept.chain(follow))
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Sets the `secrets` and `variables` of a duplicated Space (`duplicate_space`'s body:
/// lists of `{key, value, description}`); nothing when Spaces are off or the lists are empty.
pub(crate) async fn set_duplicate_settings(
    state: &AppState,
    to: &RepoId,
    secrets: Option<Vec<EntryBody>>,
    variables: Option<Vec<EntryBody>>,
) -> Result<(), AppError> {
    let (secrets, variables) = (secrets.unwrap_or_default(), variables.unwrap_or_default());
    if secrets.is_empty() && variables.is_empty() {
        return Ok(());
    }
    let spaces = spaces(state)?;
    for (secret, entry) in secrets
        .into_iter()
        .map(|e| (true, e))
        .chain(variables.into_iter().map(|e| (false, e)))
    {
        spaces
            .set_entry(to, secret, &entry.key, &entry.value, entry.description)
            .await?;
    }
    Ok(())
}

/// The stage a request found, as a 503 the client can read: `X-Error-Code: SpaceNotRunning`,
/// the stage in `X-Space-Stage` and in the message.
pub(crate) fn not_running(unavailable: &hub_spaces::Unavailable) -> Response {
    let mut response = AppError::Coded {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "SpaceNotRunning",
        message: unavailable.message.clone(),
    }
    .into_response();
    if let Ok(v) = http::HeaderValue::from_str(unavailable.stage.as_str()) {
        response.headers_mut().insert("x-space-stage", v);
    }
    if unavailable.stage.on_the_way() || unavailable.stage == Stage::Sleeping {
        response.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from(crate::error::RETRY_AFTER_SECS),
        );
    }
    response
}
