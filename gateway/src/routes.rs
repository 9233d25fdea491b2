//! The router and its handlers.

use crate::error::AppError;
use crate::extract::Authed;
use crate::{AppState, metrics};
use axum::Json;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Router, http::header};
use http::{HeaderValue, Uri};
use serde_json::{Value, json};
use std::time::Instant;

/// The gateway's router, with request metrics around every route.
pub fn router(state: AppState) -> Router {
    // The inference routes behind the compute mesh's routing layer; the same stack serves
    // the jobs peers forward here (`compute::forwarded_jobs`).
    let inference = crate::compute::inference_routes(&state);
    crate::hub::start(&state);
    let routes = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/api/whoami-v2", get(whoami))
        .merge(crate::hub::routes())
        .merge(crate::listing::routes())
        .merge(crate::lfs::routes())
        .merge(crate::xet::routes())
        .merge(crate::git::routes())
        .merge(crate::admin::routes())
        .merge(crate::mesh::routes())
        .merge(crate::placements::routes())
        .merge(crate::mirror::routes())
        .merge(crate::compute::routes())
        .merge(crate::spaces::routes())
        .merge(inference)
        .merge(crate::viewer::routes())
        .merge(crate::pages::routes())
        .fallback(fallback)
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state.clone());
    // Before routing: repo ids in paths are resolved (another case, a moved repo's 307), and
    // before that a Space's host name (`NS-NAME.<domain>`) becomes its app's path.
    let routes = crate::hub::resolve_ids_before(routes, state.clone());
    let by_host = middleware::from_fn_with_state(state, crate::spaces::host::by_host);
    Router::new().fallback_service(tower::Layer::layer(&by_host, routes))
}

/// Records every request in the HTTP metrics, under its route template.
async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    // The path only: query strings can carry capabilities (signed LFS URLs).
    let path = request.uri().path().to_owned();
    let request_id = request_id(request.headers());
    let metrics = state.metrics();
    metrics.in_flight().inc();
    let mut response = next.run(request).await;
    metrics.in_flight().dec();
    let elapsed = started.elapsed();
    metrics.observe_request(&method, &route, response.status().as_u16(), elapsed);
    tracing::debug!(%method, %path, %request_id, status = response.status().as_u16(), ?elapsed, "request");
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// Every response names its request (`X-Request-Id`), as the Hub's do: the client's own id
/// when it sent a plain one, else a new random one. Clients quote it in error reports.
const REQUEST_ID: &str = "x-request-id";

fn request_id(headers: &http::HeaderMap) -> String {
    if let Some(id) = headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=128).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
    {
        return id.to_owned();
    }
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No entropy: a process-wide counter still tells requests apart.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        bytes[..8].copy_from_slice(&n.to_be_bytes());
    }
    hex::encode(bytes)
}

/// Nothing is routed here. Under the repo APIs that is a repo id the Hub would resolve but
/// this hub cannot hold (no namespace, like `gpt2`): `RepoNotFound`, as the Hub answers.
async fn fallback(uri: Uri) -> AppError {
    let path = uri.path();
    let repo_api = ["/api/models/", "/api/datasets/", "/api/spaces/"]
        .iter()
        .any(|prefix| path.starts_with(prefix));
    if repo_api || path.contains("/resolve/") {
        AppError::RepoNotFound
    } else {
        AppError::NotFound
    }
}

async fn health(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "version": hub_protocol::VERSION,
        "peer_id": state.p2p().peer_id().to_string(),
    }))
}

async fn metrics_text(State(state): State<AppState>) -> Result<Response, AppError> {
    let body = state.metrics().encode().map_err(AppError::internal)?;
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response())
}

/// `GET /api/whoami-v2`: the Hub's account summary for the caller's token: the user, their
/// organisations with their role in each, and the token's role (`read`, `write`,
/// `fineGrained`, the last with its grants).
async fn whoami(
    State(state): State<AppState>,
    Authed(principal): Authed,
) -> Result<Json<Value>, AppError> {
    let auth = state.auth().clone();
    let user = principal.user.name.clone();
    // (name, role, full name) of each organisation the user is in.
    let orgs = tokio::task::spawn_blocking(move || {
        auth.orgs_of(&user)?
            .into_iter()
            .map(|(name, role)| {
                let fullname = auth.org(&name)?.map(|o| o.fullname).unwrap_or_default();
                Ok((name, role, fullname))
            })
            .collect::<Result<Vec<_>, hub_auth::AuthError>>()
    })
    .await
    .map_err(AppError::internal)?
    .map_err(AppError::internal)?;
    let token = &principal.token;
    let mut access_token = json!({
        "displayName": token.display_name,
        "role": token.role().as_str(),
    });
    if !token.grants.is_empty() {
        access_token["fineGrained"] = json!({
            "scoped": token.grants.iter().map(|g| json!({
                "entity": g.target.to_string(),
                "permissions": match g.access {
                    hub_auth::Access::Read => vec!["repo.content.read"],
                    hub_auth::Access::Write => vec!["repo.content.read", "repo.write"],
                },
            })).collect::<Vec<_>>(),
        });
    }
    Ok(Json(json!({
        "type": "user",
        "name": principal.user.name,
        "fullname": principal.user.fullname,
        "isPro": false,
        "orgs": orgs
            .iter()
            .map(|(name, role, fullname)| json!({
                "type": "org",
                "name": name,
                "fullname": if fullname.is_empty() { name } else { fullname },
                "roleInOrg": role.as_str(),
            }))
            .collect::<Vec<_>>(),
        "auth": {
            "type": "access_token",
            "accessToken": access_token,
        },
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http::HeaderMap;
    use http::StatusCode;
    use tower::ServiceExt;

    use crate::testing::fixture;

    async fn call(app: &Router, path: &str, auth: Option<&str>) -> (StatusCode, HeaderMap, String) {
        let mut req = Request::builder().uri(path);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, headers, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn health_reports_version_and_peer() {
        let f = fixture().await;
        let (status, _, body) = call(&f.app, "/health", None).await;
        assert_eq!(status, StatusCode::OK);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "ok");
        assert_eq!(v["version"], hub_protocol::VERSION);
        assert_eq!(v["peer_id"], f.peer_id);
    }

    #[tokio::test]
    async fn metrics_count_requests_by_route_template() {
        let f = fixture().await;
        call(&f.app, "/health", None).await;
        call(&f.app, "/no/such/path/123", None).await;
        let (status, headers, body) = call(&f.app, "/metrics", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], metrics::CONTENT_TYPE);
        assert!(
            body.contains(r#"http_requests_total{method="GET",route="/health",status="200"} 1"#),
            "{body}"
        );
        assert!(
            body.contains(r#"http_requests_total{method="GET",route="unmatched",status="404"} 1"#),
            "{body}"
        );
        assert!(
            !body.contains("/no/such/path"),
            "raw paths must not become labels"
        );
        for name in [
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
            "p2p_connected_peers",
        ] {
            assert!(body.contains(name), "missing {name}: {body}");
        }
        assert!(body.trim_end().ends_with("# EOF"));
    }

    #[tokio::test]
    async fn whoami_with_valid_token() {
        let f = fixture().await;
        let (status, _, body) = call(
            &f.app,
            "/api/whoami-v2",
            Some(&format!("Bearer {}", f.admin)),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["name"], "admin");
        assert_eq!(v["orgs"], json!([]));
        assert_eq!(v["auth"]["accessToken"]["role"], "write");
    }

    #[tokio::test]
    async fn whoami_rejects_missing_and_bad_tokens() {
        let f = fixture().await;
        for auth in [
            None,
            Some("Bearer hf_nope"),
            Some("Basic Zm9vOmJhcg=="),
            Some("Bearer "),
        ] {
            let (status, headers, body) = call(&f.app, "/api/whoami-v2", auth).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
            assert_eq!(headers["x-error-message"], "Invalid user token.");
            assert!(headers.contains_key(header::WWW_AUTHENTICATE));
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["error"], "Invalid user token.");
            assert!(!body.contains(&f.admin));
        }
    }

    #[tokio::test]
    async fn unknown_route_is_json_404() {
        let f = fixture().await;
        let (status, _, body) = call(&f.app, "/nope", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"], "not found");
    }
}
