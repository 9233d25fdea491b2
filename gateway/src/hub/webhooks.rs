//! Webhooks (`hub_core::webhooks`): `/api/settings/webhooks` as `huggingface_hub`'s
//! `create_webhook`, `list_webhooks`, `get_webhook`, `update_webhook`, `enable_webhook`,
//! `disable_webhook` and `delete_webhook` call it; `GET …/{id}/logs` gives the delivery log;
//! and the delivery worker, which POSTs the queued payloads with `X-Webhook-Secret` and
//! retries failures with backoff.
//!
//! Deliveries go to `http://` URLs (this node has no TLS client), only to addresses the SSRF
//! filter allows (`hub_core::webhooks::target_allowed`: never link-local or metadata
//! addresses; loopback and private networks only with `[gateway] webhooks_allow_local`),
//! checked on every delivery after resolving the host; at most [`PARALLEL`] at a
//! time, each bounded by [`TIMEOUT`]; retries wait in at most `QUEUE` timers, beyond which
//! they are dropped and logged.

use crate::AppState;
use crate::error::AppError;
use crate::extract::require_auth;
use crate::util::{endpoint, format_date, parse_json};
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use hub_core::Hub;
use hub_core::webhooks::{
    Delivery, MAX_ATTEMPTS, QUEUE, Watched, Webhook, WebhookUpdate, entry_of, retry_delay,
};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Deliveries sent at the same time.
const PARALLEL: usize = 8;
/// Longest wait for a receiver's answer (connect included).
const TIMEOUT: Duration = Duration::from_secs(10);

fn webhook_json(w: &Webhook) -> Value {
    json!({
        "id": w.id,
        "url": w.url,
        "job": null,
        "watched": w.watched,
        "domains": w.domains,
        "secret": w.secret,
        "disabled": w.disabled,
    })
}

/// `GET /api/settings/webhooks`: the caller's webhooks.
pub(super) async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, AppError> {
    let principal = require_auth(&state, &headers).await?;
    let hooks = state.hub().list_webhooks(&principal);
    Ok(Json(Value::Array(hooks.iter().map(webhook_json).collect())))
}

#[derive(Debug, Deserialize)]
struct CreateBody {
    url: Option<String>,
    #[serde(rename = "jobSourceId")]
    job: Option<String>,
    watched: Vec<Watched>,
    domains: Option<Vec<String>>,
    secret: Option<String>,
}

/// `POST /api/settings/webhooks`.
pub(super) async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let principal = require_auth(&state, &headers).await?;
    let body: CreateBody = parse_json(&body)?;
    if body.job.is_some() {
        return Err(AppError::BadRequest(
            "webhooks that run Jobs are not supported here; give a url".into(),
        ));
    }
    let url = body
        .url
        .ok_or_else(|| AppError::BadRequest("a webhook needs a url".into()))?;
    let domains = body
        .domains
        .unwrap_or_else(|| vec!["repo".into(), "discussion".into()]);
    let hook = state
        .hub()
        .create_webhook(
            &principal,
            url,
            body.watched,
            domains,
            body.secret,
            Some(endpoint(&headers)),
        )
        .await?;
    Ok(Json(json!({ "webhook": webhook_json(&hook) })))
}

/// `GET /api/settings/webhooks/{id}`.
pub(super) async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    let principal = require_auth(&state, &headers).await?;
    let hook = state.hub().webhook(&principal, &id)?;
    Ok(Json(json!({ "webhook": webhook_json(&hook) })))
}

#[derive(Debug, Deserialize)]
struct UpdateBody {
    url: Option<String>,
    watched: Option<Vec<Watched>>,
    domains: Option<Vec<String>>,
    secret: Option<String>,
}

/// `POST /api/settings/webhooks/{id}`: an empty `watched` (what the client sends when the
/// caller gives none) keeps the watched items.
pub(super) async fn update(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let principal = require_auth(&state, &headers).await?;
    let body: UpdateBody = parse_json(&body)?;
    let update = WebhookUpdate {
        url: body.url,
        endpoint: Some(endpoint(&headers)),
        watched: body.watched,
        domains: body.domains,
        secret: body.secret,
    };
    let hook = state.hub().update_webhook(&principal, &id, update).await?;
    Ok(Json(json!({ "webhook": webhook_json(&hook) })))
}

async fn set_disabled(
    state: &AppState,
    headers: &HeaderMap,
    id: &str,
    disabled: bool,
) -> Result<Json<Value>, AppError> {
    let principal = require_auth(state, headers).await?;
    let hook = state
        .hub()
        .set_webhook_disabled(&principal, id, disabled)
        .await?;
    Ok(Json(json!({ "webhook": webhook_json(&hook) })))
}

/// `POST /api/settings/webhooks/{id}/enable`.
pub(super) async fn enable(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    set_disabled(&state, &headers, &id, false).await
}

/// `POST /api/settings/webhooks/{id}/disable`.
pub(super) async fn disable(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    set_disabled(&state, &headers, &id, true).await
}

/// `DELETE /api/settings/webhooks/{id}`.
pub(super) async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    let principal = require_auth(&state, &headers).await?;
    state.hub().delete_webhook(&principal, &id).await?;
    Ok(Json(json!({})))
}

/// `GET /api/settings/webhooks/{id}/logs`: the newest deliveries, oldest first.
pub(super) async fn logs(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    let principal = require_auth(&state, &headers).await?;
    let log = state.hub().webhook_log(&principal, &id)?;
    Ok(Json(Value::Array(
        log.iter()
            .map(|e| {
                json!({
                    "at": format_date(e.at),
                    "event": { "scope": e.scope, "action": e.action },
                    "repo": e.repo,
                    "attempt": e.attempt,
                    "status": e.status,
                    "error": e.error,
                    "ok": e.ok,
                })
            })
            .collect(),
    )))
}

/// Starts the delivery worker (once per node; nothing outside a Tokio runtime).
pub(crate) fn start_worker(state: &AppState) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let Some(mut queue) = state.hub().take_webhook_deliveries() else {
        return;
    };
    state
        .hub()
        .webhooks()
        .set_allow_local(state.config().webhooks_allow_local);
    let hub = state.hub().clone();
    runtime.spawn(async move {
        hub.prime_webhooks().await;
        let parallel = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
        let waiting = Arc::new(AtomicUsize::new(0));
        while let Some(delivery) = queue.recv().await {
            let Ok(permit) = parallel.clone().acquire_owned().await else {
                return;
            };
            let (hub, waiting) = (hub.clone(), waiting.clone());
            tokio::spawn(async move {
                let failed = attempt(&hub, &delivery).await;
                drop(permit);
                if failed {
                    retry(hub, delivery, waiting).await;
                }
            });
        }
    });
}

/// Sends one attempt and logs it; whether it failed.
async fn attempt(hub: &Hub, d: &Delivery) -> bool {
    if !hub.webhooks().active(&d.webhook) {
        return false;
    }
    let (status, error) = match tokio::time::timeout(TIMEOUT, post(hub, d)).await {
        Ok(Ok(status)) if (200..300).contains(&status) => (Some(status), None),
        Ok(Ok(status)) => (
            Some(status),
            Some(format!("the receiver answered {status}")),
        ),
        Ok(Err(e)) => (None, Some(e)),
        Err(_) => (
            None,
            Some(format!("no answer within {}s", TIMEOUT.as_secs())),
        ),
    };
    let ok = error.is_none();
    if !ok {
        tracing::debug!(webhook = %d.webhook, attempt = d.attempt, error = ?error, "webhook delivery failed");
    }
    hub.webhooks()
        .log(&d.webhook, entry_of(d, status, error, ok));
    !ok
}

/// Queues the next attempt after its backoff, unless this was the last or too many wait.
async fn retry(hub: Hub, mut d: Delivery, waiting: Arc<AtomicUsize>) {
    if d.attempt >= MAX_ATTEMPTS {
        return;
    }
    if waiting.fetch_add(1, Ordering::SeqCst) >= QUEUE {
        waiting.fetch_sub(1, Ordering::SeqCst);
        d.attempt += 1;
        let entry = entry_of(
            &d,
            None,
            Some("too many retries waiting: dropped".into()),
            false,
        );
        hub.webhooks().log(&d.webhook, entry);
        return;
    }
    d.attempt += 1;
    tokio::time::sleep(retry_delay(d.attempt)).await;
    waiting.fetch_sub(1, Ordering::SeqCst);
    hub.webhooks().enqueue(d);
}

/// POSTs the payload; the receiver's status.
async fn post(hub: &Hub, d: &Delivery) -> Result<u16, String> {
    let uri: http::Uri = d.url.parse().map_err(|e| format!("invalid url: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("only http:// receivers are supported by this node".into());
    }
    let host = uri.host().ok_or("the url has no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(80);
    // The SSRF filter: resolve, then connect only to an address the node's setting allows
    // (never link-local/metadata), so a name cannot point a delivery somewhere refused.
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((bare.as_str(), port))
        .await
        .map_err(|e| format!("resolve {host}: {e}"))?
        .collect();
    let allowed: Vec<std::net::SocketAddr> = addrs
        .iter()
        .copied()
        .filter(|a| hub.webhooks().allows(a.ip()))
        .collect();
    if allowed.is_empty() {
        return Err(format!(
            "{host} resolves to no address this node may send webhooks to"
        ));
    }
    let stream = tokio::net::TcpStream::connect(&allowed[..])
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or(host);
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let mut request = http::Request::builder()
        .method(http::Method::POST)
        .uri(path)
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "hubmesh-webhooks");
    if let Some(secret) = &d.secret {
        request = request.header("x-webhook-secret", secret.as_str());
    }
    let request = request
        .body(Body::from(d.body.as_ref().clone()))
        .map_err(|e| format!("request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("send: {e}"))?;
    Ok(response.status().as_u16())
}
