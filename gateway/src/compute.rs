//! The compute mesh in the gateway, HTTP only: routing of inference requests to the best
//! node, forwarding over `/hubmesh/infer/1`, the response cache, and the job handler that
//! runs peers' jobs through the inference routes.
//!
//! Every inference route (`POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
//! `/generate`, `/generate_stream`, `/models/{ns}/{name}`) passes through [`layer`]:
//!
//! 1. The body's JSON is parsed once, here, and handed to the handler in the request's
//!    extensions ([`crate::inference::ParsedBody`]). The request's model is read from it
//!    (`model`) or from the path; the caller is authenticated once (the handler reads the
//!    [`crate::extract::Caller`] stored here) and the caller's read
//!    access is checked here, at the gateway that received the request (a model this node
//!    does not hold is one the mesh announced: public).
//! 2. [`hub_compute::route`] orders the candidates from this node's own state and the live
//!    capacity adverts of its peers (and their ping RTTs); the choice and its reason are
//!    logged.
//! 3. Candidates are tried in order. A peer that cannot be reached, refuses the job, answers
//!    429/5xx, or fails or times out before the first byte of its answer is replaced by the
//!    next candidate; the client never sees it. Once the first body bytes are passed on, a
//!    failure ends the SSE stream with an error event (`data: {"error": …}`), never a hang.
//!    Every answer names the node that ran it in `x-hubmesh-served-by: <peer id>`.
//! 4. Run here ([`run_local`]): a model this node does not hold is fetched from the mesh first
//!    (git data, then the LFS files a model needs; the HF route answers 503 with
//!    `estimated_time` meanwhile unless `x-wait-for-model`, the others wait up to the load
//!    wait), then the request goes to the inference handlers. Deterministic requests
//!    ([`hub_compute::is_deterministic`]) that are not streamed are answered from the
//!    response cache when the same request hit the same commit before:
//!    `x-hubmesh-cache: hit|miss`.
//!
//! The serving side (`hub-models`' stream server, started by the node) accepts
//! `/hubmesh/infer/1` streams only in mode `mesh` and only from peers of the allow-list (every
//! peer when it is empty), at most [`hub_models::MAX_REMOTE_JOBS`] at once, and hands each job
//! to [`forwarded_jobs`]: the request runs through the same layer (marked [`Forwarded`], so it
//! is never forwarded again) as an anonymous caller (only the headers a forwarder sends are
//! kept, credentials never), so only public models serve peers: the layer checks that before
//! anything else, the response cache included. The response streams back frame by frame;
//! when the forwarding gateway goes away, the next write fails, the response body is dropped
//! and the engine frees the sequence.
//!
//! Adverts and the capacity table are `hub-models`' ([`hub_models::Compute`]); this module
//! reads them for routing and for `GET /api/mesh/compute`.

use crate::AppState;
use crate::access::read_access;
use crate::extract::authenticate;
use crate::inference::{ParsedBody, api_error, upstream_stream_error as sse_error};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use hub_compute::{CacheKey, CachedResponse, Target};
use hub_models::{
    BodyError, Compute, HOP_HEADERS, JobAnswer, JobError, JobHandler, REQUEST_HEADERS, unix_now,
};
use hub_net::PeerId;
use hub_net::read_frame;
use hub_protocol::forward::{ForwardRequest, Frame, MAX_BODY, ResponseHead};
use hub_protocol::repo::{RepoId, RepoType};
use hub_protocol::signed::PublicKey;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How long a forwarded request waits for the serving node's first bytes when the model is
/// warm there (a cold node gets the load wait).
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest non-streamed answer relayed or cached.
const MAX_RESPONSE: usize = 16 << 20;
/// Largest answer the cache keeps.
const MAX_CACHED: usize = 1 << 20;

pub const SERVED_BY: &str = "x-hubmesh-served-by";
pub const CACHE: &str = "x-hubmesh-cache";

/// Marks a request that a peer forwarded here: it runs here, never forwarded again.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Forwarded(pub(crate) PeerId);

/// The capacity table as this node sees it, plus its own advert, for `/api/mesh/compute`.
fn view(state: &AppState, compute: &Compute) -> Value {
    let now = unix_now();
    let mut view = serde_json::to_value(compute.table().view(now)).unwrap_or(Value::Null);
    let rtts: HashMap<PeerId, Duration> = state
        .p2p()
        .peers()
        .into_iter()
        .filter_map(|(id, info)| Some((id, info.rtt?)))
        .collect();
    if let Some(nodes) = view.get_mut("nodes").and_then(Value::as_array_mut) {
        for node in nodes {
            let peer = node
                .get("node")
                .and_then(Value::as_str)
                .and_then(|h| hex::decode(h).ok())
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .and_then(|k| hub_net::peer_id_of_key(&k));
            let rtt = peer.and_then(|p| rtts.get(&p));
            node["peer_id"] = json!(peer.map(|p| p.to_string()));
            node["rtt_ms"] = json!(rtt.map(|d| d.as_secs_f64() * 1e3));
        }
    }
    let load = state.inference().map(|m| m.snapshot());
    let own = compute.advert(load.as_ref(), now);
    let c = compute.counters();
    json!({
        "peer_id": state.p2p().peer_id().to_string(),
        "mode": compute.mode(),
        "local": serde_json::to_value(hub_compute::NodeView::from(&own)).unwrap_or(Value::Null),
        "table": view,
        "counters": {
            "served_here": c.served_here.load(Ordering::Relaxed),
            "forwarded": c.forwarded.load(Ordering::Relaxed),
            "failovers": c.failovers.load(Ordering::Relaxed),
            "remote_jobs": c.remote_jobs.load(Ordering::Relaxed),
            "cache_hits": c.cache_hits.load(Ordering::Relaxed),
        },
    })
}

/// Where `model` should run: this node's load, whether it holds the repo, the live adverts
/// and the peers' ping RTTs.
fn decide(
    state: &AppState,
    compute: &Compute,
    model: &RepoId,
    presence: Presence,
) -> hub_compute::Decision {
    let load = state.inference().map(|m| m.snapshot());
    compute.decide(load.as_ref(), model, presence.held, &peer_rtts(state))
}

/// The round-trip time to each connected peer that has one measured, by node key: what the
/// router and the shard planner weigh candidates by.
pub(crate) fn peer_rtts(state: &AppState) -> HashMap<PublicKey, Duration> {
    state
        .p2p()
        .peers()
        .into_iter()
        .filter_map(|(peer, info)| {
            let key = hub_net::key_of_peer_id(&peer)?;
            Some((PublicKey(key), info.rtt?))
        })
        .collect()
}

/// The inference routes behind [`layer`] (the router serves them; the job handler runs
/// peers' jobs through the same stack).
pub(crate) fn inference_routes(state: &AppState) -> Router<AppState> {
    crate::inference::routes()
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), layer))
}

/// The handler for the jobs peers forward here: each runs through [`inference_routes`],
/// marked [`Forwarded`], as an anonymous caller. The node passes it to
/// [`hub_models::Compute::start`].
pub fn forwarded_jobs(state: &AppState) -> Arc<dyn JobHandler> {
    Arc::new(Jobs {
        router: inference_routes(state).with_state(state.clone()),
    })
}

#[derive(Debug)]
struct Jobs {
    router: Router,
}

impl JobHandler for Jobs {
    fn run(
        &self,
        peer: PeerId,
        request: ForwardRequest,
    ) -> BoxFuture<'static, Result<JobAnswer, JobError>> {
        let router = self.router.clone();
        Box::pin(async move {
            let mut http_request = Request::new(Body::from(request.body));
            *http_request.method_mut() = Method::POST;
            *http_request.uri_mut() = request.path.parse().map_err(|_| JobError::InvalidPath)?;
            for (name, value) in &request.headers {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value),
                ) {
                    http_request.headers_mut().append(n, v);
                }
            }
            http_request.extensions_mut().insert(Forwarded(peer));
            let response = match tower::ServiceExt::oneshot(router, http_request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            let head = ResponseHead {
                status: response.status().as_u16(),
                headers: response
                    .headers()
                    .iter()
                    .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                    .collect(),
            };
            let body = response
                .into_body()
                .into_data_stream()
                .map(|chunk| {
                    chunk
                        .map(|b| b.to_vec())
                        .map_err(|e| Box::new(e) as BodyError)
                })
                .boxed();
            Ok(JobAnswer { head, body })
        })
    }
}

/// `GET /api/mesh/compute`: the capacity table as this node sees it (read-only, no token:
/// adverts are public to the mesh).
pub(crate) fn routes() -> Router<AppState> {
    Router::new().route(
        "/api/mesh/compute",
        axum::routing::get(|State(state): State<AppState>| async move {
            match state.compute() {
                Some(compute) => axum::Json(view(&state, compute)).into_response(),
                None => axum::Json(json!({
                    "peer_id": state.p2p().peer_id().to_string(),
                    "mode": "local",
                    "table": {"nodes": []},
                }))
                .into_response(),
            }
        }),
    )
}

/// Whether this node holds a model's repo, and whether the mesh announced it.
#[derive(Debug, Clone, Copy)]
struct Presence {
    held: bool,
    announced: bool,
}

impl Presence {
    async fn of(state: &AppState, model: &RepoId) -> Self {
        let (repos, id) = (state.repos().clone(), model.clone());
        let held = tokio::task::spawn_blocking(move || repos.exists(&id))
            .await
            .unwrap_or(false);
        let announced = state
            .replication()
            .and_then(|m| m.repo_state(model))
            .is_some_and(|s| s.last_seq.is_some());
        Self { held, announced }
    }
}

/// The model of an inference request: the body's `model` (`ns/name[:revision]`), or the
/// HF Inference API's path.
fn model_of(path: &str, body: Option<&Value>) -> Option<(RepoId, String)> {
    let name = match path.strip_prefix("/models/") {
        Some(rest) => rest.to_owned(),
        None => body?.get("model")?.as_str()?.to_owned(),
    };
    let (repo, revision) = name.split_once(':').unwrap_or((&name, "main"));
    Some((
        RepoId::parse(RepoType::Model, repo).ok()?,
        revision.to_owned(),
    ))
}

/// The routing layer in front of the inference routes (see the module docs).
pub(crate) async fn layer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(compute) = state.compute().cloned() else {
        return next.run(request).await;
    };
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return api_error(
                &path,
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!("request body over {} MiB", MAX_BODY >> 20),
                None,
            );
        }
    };
    // The body's JSON, parsed once: for the model, the cache, and (through the request's
    // extensions) the handler.
    let json = serde_json::from_slice::<Value>(&bytes).ok().map(Arc::new);
    if let Some(json) = &json {
        parts.extensions.insert(ParsedBody(json.clone()));
    }
    let Some((model, revision)) = model_of(&path, json.as_deref()) else {
        // Malformed: the handler gives the API's own error.
        return next
            .run(Request::from_parts(parts, Body::from(bytes)))
            .await;
    };
    let forwarded = parts.extensions.get::<Forwarded>().copied();
    let presence = Presence::of(&state, &model).await;
    if let Some(Forwarded(peer)) = forwarded {
        // A forwarded job carries no user's token (adverts announce public repos only): it
        // runs for an anonymous caller, checked here, before the response cache may answer.
        parts.headers.remove(http::header::AUTHORIZATION);
        parts.headers.remove(http::header::COOKIE);
        if presence.held && read_access(&state, None, &model).await.is_err() {
            tracing::info!(%model, %peer, "refused a forwarded job for a model that is not public");
            return next
                .run(Request::from_parts(parts, Body::from(bytes)))
                .await;
        }
        tracing::debug!(%model, %peer, "running a job forwarded by a peer");
        let request = (parts, bytes);
        return run_local(&state, &compute, request, &model, &revision, presence, next).await;
    }
    // The caller's rights are checked here, where the request arrived. A model this node
    // does not hold is one the mesh announced, and only public repos are announced.
    if presence.held {
        let authenticated = authenticate(&state, &parts.headers).await;
        let principal = authenticated.as_ref().ok().cloned().flatten();
        if read_access(&state, principal.as_ref(), &model)
            .await
            .is_err()
        {
            // The handler answers in the API's shape (401/403/404).
            return next
                .run(Request::from_parts(parts, Body::from(bytes)))
                .await;
        }
        // Authenticated once: the handler reads the caller from here.
        if let Ok(principal) = authenticated {
            parts.extensions.insert(crate::extract::Caller(principal));
        }
    }
    if !presence.held && !presence.announced {
        // Nobody has it: the handler answers "model not found" in the API's shape.
        return next
            .run(Request::from_parts(parts, Body::from(bytes)))
            .await;
    }
    let decision = decide(&state, &compute, &model, presence);
    tracing::info!(
        %model,
        candidates = ?decision.candidates.iter().map(|c| (target_name(&c.target), c.reason.as_str())).collect::<Vec<_>>(),
        "routing inference request"
    );
    let mut last_failure = None;
    for (i, candidate) in decision.candidates.iter().enumerate() {
        if i > 0 {
            compute.counters().failovers.fetch_add(1, Ordering::Relaxed);
        }
        match candidate.target {
            Target::Local => {
                tracing::info!(%model, reason = %candidate.reason, "running here");
                let request = (parts, bytes);
                return run_local(&state, &compute, request, &model, &revision, presence, next)
                    .await;
            }
            Target::Remote(key) => {
                let Some(peer) = hub_net::peer_id_of_key(&key.0) else {
                    continue;
                };
                match forward(&state, peer, &parts, &bytes).await {
                    Ok(response) => {
                        tracing::info!(%model, %peer, reason = %candidate.reason, "forwarded");
                        compute.counters().forwarded.fetch_add(1, Ordering::Relaxed);
                        return response;
                    }
                    Err(Failure { why, answer }) => {
                        tracing::warn!(%model, %peer, %why, "peer failed before its first token; trying the next candidate");
                        if answer.is_some() {
                            last_failure = answer;
                        }
                    }
                }
            }
        }
    }
    last_failure.unwrap_or_else(|| {
        api_error(
            &path,
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            if decision.candidates.is_empty() {
                format!(
                    "no node of the mesh can serve `{}` now (this node's inference mode is {})",
                    model.hub_id(),
                    compute.mode()
                )
            } else {
                format!(
                    "every node that could serve `{}` failed; retry later",
                    model.hub_id()
                )
            },
            None,
        )
    })
}

fn target_name(target: &Target) -> String {
    match target {
        Target::Local => "local".into(),
        Target::Remote(key) => {
            hub_net::peer_id_of_key(&key.0).map_or_else(|| "?".into(), |p| p.to_string())
        }
    }
}

/// Runs the request on this node: fetches a model it does not hold from the mesh, then
/// answers from the cache or the inference handlers.
async fn run_local(
    state: &AppState,
    compute: &Compute,
    (parts, bytes): (http::request::Parts, Bytes),
    model: &RepoId,
    revision: &str,
    presence: Presence,
    next: Next,
) -> Response {
    let path = parts.uri.path().to_owned();
    compute
        .counters()
        .served_here
        .fetch_add(1, Ordering::Relaxed);
    if let Err(response) = fetch_if_missing(state, &parts, model, revision, presence).await {
        return with_served_by(state, response);
    }
    let json = parts.extensions.get::<ParsedBody>().map(|p| p.0.clone());
    let streamed = json
        .as_ref()
        .and_then(|v| v.get("stream"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
        || path == "/generate_stream";
    let cache_key = match &json {
        Some(body) if compute.has_cache() && !streamed && hub_compute::is_deterministic(body) => {
            let (repos, id, rev) = (state.repos().clone(), model.clone(), revision.to_owned());
            let commit = tokio::task::spawn_blocking(move || repos.resolve(&id, &rev).ok())
                .await
                .ok()
                .flatten()
                .and_then(|c| hex::decode(c).ok()?.try_into().ok());
            commit.map(|c| CacheKey::new(&path, model, &c, body))
        }
        _ => None,
    };
    if let Some(key) = &cache_key {
        let hit = compute.cache().and_then(|mut cache| cache.get(key));
        if let Some(hit) = hit {
            compute
                .counters()
                .cache_hits
                .fetch_add(1, Ordering::Relaxed);
            let mut response = Response::new(Body::from(hit.body.clone()));
            if let Ok(v) = HeaderValue::from_str(&hit.content_type) {
                response.headers_mut().insert(http::header::CONTENT_TYPE, v);
            }
            response
                .headers_mut()
                .insert(CACHE, HeaderValue::from_static("hit"));
            return with_served_by(state, response);
        }
    }
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let response = match cache_key {
        Some(key) if response.status() == StatusCode::OK => {
            let (mut head, body) = response.into_parts();
            match axum::body::to_bytes(body, MAX_CACHED).await {
                Ok(body) => {
                    let content_type = head
                        .headers
                        .get(http::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("application/json")
                        .to_owned();
                    if let Some(mut cache) = compute.cache() {
                        cache.insert(
                            key,
                            CachedResponse {
                                content_type,
                                body: body.to_vec(),
                            },
                        );
                    }
                    head.headers.insert(CACHE, HeaderValue::from_static("miss"));
                    Response::from_parts(head, Body::from(body))
                }
                Err(_) => api_error(
                    &path,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "response too large".into(),
                    None,
                ),
            }
        }
        Some(_) | None => response,
    };
    with_served_by(state, response)
}

fn with_served_by(state: &AppState, mut response: Response) -> Response {
    if !response.headers().contains_key(SERVED_BY)
        && let Ok(v) = HeaderValue::from_str(&state.p2p().peer_id().to_string())
    {
        response.headers_mut().insert(SERVED_BY, v);
    }
    response
}

/// Cold start: a model this node does not hold (or whose weights have not all arrived) is
/// fetched from the mesh. The HF route answers 503 with `estimated_time` while that runs
/// (unless `x-wait-for-model: true`); the others wait up to the load wait.
async fn fetch_if_missing(
    state: &AppState,
    parts: &http::request::Parts,
    model: &RepoId,
    revision: &str,
    presence: Presence,
) -> Result<(), Response> {
    let path = parts.uri.path();
    let missing = if presence.held {
        missing_weights(state, model, revision).await
    } else {
        None
    };
    if presence.held && missing.as_ref().is_none_or(Vec::is_empty) {
        return Ok(());
    }
    // Not here and never announced by a peer: the handler answers "model not found".
    if !presence.held && !presence.announced {
        return Ok(());
    }
    let name = model.hub_id();
    let wait = state
        .inference()
        .map_or(hub_models::DEFAULT_LOAD_WAIT, |i| i.load_wait());
    let waits = !path.starts_with("/models/")
        || parts
            .headers
            .get("x-wait-for-model")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
    let fetch = {
        let (state, model, revision) = (state.clone(), model.clone(), revision.to_owned());
        async move { fetch_model(&state, &model, &revision, Instant::now() + wait).await }
    };
    if !waits {
        tokio::spawn(fetch);
        return Err(api_error(
            path,
            StatusCode::SERVICE_UNAVAILABLE,
            "loading",
            format!("Model {name} is currently loading"),
            Some(hub_models::LOAD_ESTIMATE.as_secs_f64()),
        ));
    }
    fetch.await.map_err(|why| {
        api_error(
            path,
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("the model `{name}` is not on this node and could not be fetched from the mesh: {why}"),
            None,
        )
    })
}

/// The LFS files of a model's root this node lacks: `(sha256, size)`. `None` when the
/// revision cannot be read.
async fn missing_weights(
    state: &AppState,
    model: &RepoId,
    revision: &str,
) -> Option<Vec<(hub_store::Sha256, u64)>> {
    let (repos, store, id, rev) = (
        state.repos().clone(),
        state.store().clone(),
        model.clone(),
        revision.to_owned(),
    );
    tokio::task::spawn_blocking(move || {
        hub_models::files::missing_weights(&repos, &store, &id, &rev)
    })
    .await
    .ok()
    .flatten()
}

/// Brings a model's repo and weights here from the mesh, by `deadline`.
async fn fetch_model(
    state: &AppState,
    model: &RepoId,
    revision: &str,
    deadline: Instant,
) -> Result<(), hub_models::FetchError> {
    hub_models::files::fetch_model(
        state.hub().mesh().as_ref(),
        state.repos().clone(),
        state.store().clone(),
        model,
        revision,
        deadline,
    )
    .await
}

/// Why a peer did not answer usefully before its first byte; `answer` is its error response
/// (429, 5xx) when it sent one, returned if every candidate fails.
struct Failure {
    why: String,
    answer: Option<Response>,
}

impl From<String> for Failure {
    fn from(why: String) -> Self {
        Self { why, answer: None }
    }
}

fn head_headers(head: &ResponseHead) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in &head.headers {
        if HOP_HEADERS.contains(&name.as_str()) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(n, v);
        }
    }
    headers
}

/// Sends the request to `peer` and relays its answer (see the module docs for failover).
async fn forward(
    state: &AppState,
    peer: PeerId,
    parts: &http::request::Parts,
    body: &Bytes,
) -> Result<Response, Failure> {
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned());
    let headers = REQUEST_HEADERS
        .iter()
        .filter_map(|name| {
            let value = parts.headers.get(*name)?.to_str().ok()?;
            Some(((*name).to_owned(), value.to_owned()))
        })
        .collect();
    let request = Frame::Request(ForwardRequest {
        path: path.clone(),
        headers,
        body: body.to_vec(),
    });
    let mut stream = hub_models::open_job(state.p2p(), peer, &request)
        .await
        .map_err(|e| e.to_string())?;
    // A cold peer fetches and loads the model before its first byte.
    let first_bytes = FIRST_BYTES_TIMEOUT.max(
        state
            .inference()
            .map_or(hub_models::DEFAULT_LOAD_WAIT, |i| i.load_wait()),
    );
    let deadline = tokio::time::Instant::now() + first_bytes;
    let head = match tokio::time::timeout_at(deadline, read_frame(&mut stream)).await {
        Err(_) => return Err("no answer before the timeout".to_owned().into()),
        Ok(Err(e)) => return Err(e.to_string().into()),
        Ok(Ok(Frame::Head(head))) => head,
        Ok(Ok(Frame::Error(m))) => return Err(format!("refused: {m}").into()),
        Ok(Ok(other)) => return Err(format!("protocol error: {other:?} before the head").into()),
    };
    let status = StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut headers = head_headers(&head);
    if !headers.contains_key(SERVED_BY)
        && let Ok(v) = HeaderValue::from_str(&peer.to_string())
    {
        headers.insert(SERVED_BY, v);
    }
    let sse = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let build = |status, headers: HeaderMap, body: Body| {
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response
    };
    if !sse {
        // A JSON answer is relayed whole, so a failure part way is still a failover.
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, read_frame(&mut stream)).await {
                Err(_) => return Err("answer not complete before the timeout".to_owned().into()),
                Ok(Err(e)) => return Err(e.to_string().into()),
                Ok(Ok(Frame::Data(d))) if out.len() + d.len() <= MAX_RESPONSE => {
                    out.extend_from_slice(&d);
                }
                Ok(Ok(Frame::Data(_))) => return Err("answer too large".to_owned().into()),
                Ok(Ok(Frame::End)) => break,
                Ok(Ok(Frame::Error(m))) => return Err(format!("failed: {m}").into()),
                Ok(Ok(other)) => return Err(format!("protocol error: {other:?}").into()),
            }
        }
        let response = build(status, headers, Body::from(out));
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return Err(Failure {
                why: format!("answered {status}"),
                answer: Some(response),
            });
        }
        return Ok(response);
    }
    // Streamed: wait for the first event before committing to this peer.
    let first = match tokio::time::timeout_at(deadline, read_frame(&mut stream)).await {
        Err(_) => return Err("no first token before the timeout".to_owned().into()),
        Ok(Err(e)) => return Err(e.to_string().into()),
        Ok(Ok(Frame::Data(d))) => Some(d),
        Ok(Ok(Frame::End)) => None,
        Ok(Ok(Frame::Error(m))) => return Err(format!("failed: {m}").into()),
        Ok(Ok(other)) => return Err(format!("protocol error: {other:?}").into()),
    };
    let Some(first) = first else {
        return Ok(build(status, headers, Body::empty()));
    };
    let rest = futures::stream::unfold(Some(stream), move |stream| async move {
        let mut stream = stream?;
        match read_frame(&mut stream).await {
            Ok(Frame::Data(d)) => Some((Ok::<_, std::io::Error>(Bytes::from(d)), Some(stream))),
            Ok(Frame::End) => None,
            Ok(Frame::Error(m)) => Some((Ok(sse_error(&m)), None)),
            Ok(other) => Some((Ok(sse_error(&format!("protocol error: {other:?}"))), None)),
            Err(e) => {
                tracing::warn!(%peer, error = %e, "serving peer failed mid-stream");
                Some((
                    Ok(sse_error(&format!(
                        "the node serving this request failed: {e}"
                    ))),
                    None,
                ))
            }
        }
    });
    let body = futures::stream::once(async move { Ok(Bytes::from(first)) }).chain(rest);
    Ok(build(status, headers, Body::from_stream(body)))
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        self.answer
            .unwrap_or_else(|| (StatusCode::BAD_GATEWAY, self.why).into_response())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::tests::{chat, post, setup};
    use hub_infer::engine::EngineConfig;
    use tower::ServiceExt;

    #[test]
    fn the_model_comes_from_the_body_or_the_hf_path() {
        let model_of = |path: &str, body: &[u8]| {
            model_of(path, serde_json::from_slice::<Value>(body).ok().as_ref())
        };
        let (id, rev) = model_of("/v1/chat/completions", br#"{"model":"bob/tiny:dev"}"#).unwrap();
        assert_eq!((id.hub_id().as_str(), rev.as_str()), ("bob/tiny", "dev"));
        let (id, rev) = model_of("/models/bob/tiny", b"{}").unwrap();
        assert_eq!((id.hub_id().as_str(), rev.as_str()), ("bob/tiny", "main"));
        assert!(model_of("/generate", br#"{"inputs":"x"}"#).is_none());
        assert!(model_of("/generate", b"not json").is_none());
        assert!(model_of("/v1/completions", br#"{"model":"../etc"}"#).is_none());
    }

    #[test]
    fn sse_errors_are_openai_shaped_events() {
        let event = sse_error("peer gone");
        let text = std::str::from_utf8(&event).unwrap();
        let json: Value =
            serde_json::from_str(text.strip_prefix("data: ").unwrap().trim()).unwrap();
        assert_eq!(json["error"]["message"], "peer gone");
        assert!(text.ends_with("\n\n"));
    }

    #[tokio::test]
    async fn a_forwarded_job_never_gets_a_private_models_cached_answer() {
        // Issue 14, item 15: the response cache answered a job a peer forwarded before any
        // access check, so replaying a deterministic request for a private model returned the
        // answer its owner had got.
        let (f, _cache) = setup(EngineConfig::default()).await;
        assert!(
            f.state
                .enable_compute(Arc::new(Compute::new(hub_models::ComputeConfig {
                    mode: hub_compute::Mode::Mesh,
                    secret: [7; 32],
                    advert_period: Duration::from_secs(3600),
                    allow_peers: Vec::new(),
                    cache_entries: 16,
                })))
        );
        let secret = chat(json!({"model": "admin/secret"}));
        for expected in ["miss", "hit"] {
            let r = post(&f, "/v1/chat/completions", Some(&f.admin), secret.clone()).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            assert_eq!(r.header(CACHE), Some(expected));
        }
        let forwarded = |body: &Value, token: Option<&str>| {
            let mut req = axum::extract::Request::builder()
                .method("POST")
                .uri("/v1/chat/completions")
                .header("content-type", "application/json");
            if let Some(t) = token {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            let mut req = req.body(axum::body::Body::from(body.to_string())).unwrap();
            req.extensions_mut()
                .insert(Forwarded(hub_net::PeerId::random()));
            f.app.clone().oneshot(req)
        };
        // Not for a peer, whatever headers it relays: a forwarded job is anonymous.
        for token in [None, Some(f.admin.as_str())] {
            let r = forwarded(&secret, token).await.unwrap();
            assert_eq!(r.status(), StatusCode::NOT_FOUND);
            assert!(r.headers().get(CACHE).is_none());
        }
        // A public model's forwarded job still runs, and shares the cache.
        let public = chat(json!({}));
        let r = post(&f, "/v1/chat/completions", None, public.clone()).await;
        assert_eq!(r.header(CACHE), Some("miss"));
        let r = forwarded(&public, None).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[CACHE], "hit");
    }
}
