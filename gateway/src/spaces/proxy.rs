//! The app of a Space at `/spaces/{ns}/{name}/app/…`.
//!
//! The caller needs read access to the Space (a private Space is "not found" to others). The
//! request waits while the Space starts or wakes ([`hub_spaces::Spaces::serve`], up to
//! [`WAKE_WAIT`]); a Space that cannot serve (paused, failed, still building after the wait)
//! answers 503 naming its stage. Then:
//! - a static Space is answered from its commit's files (`index.html` for folders);
//! - an app is proxied to its loopback port over HTTP/1.1 with one connection per request:
//!   streamed both ways (SSE included), and `Upgrade` (websockets) joined byte for byte once
//!   the app answers 101. The prefix is stripped for gradio (its `root_path` only shapes the
//!   URLs it writes) and kept for streamlit (`baseUrlPath`). Hop-by-hop headers and the
//!   caller's `Authorization` never reach the app: a Space never sees its visitors' hub
//!   tokens. `X-Forwarded-Host`/`-Proto`/`-Prefix` tell it where it is.
//!
//! A request that names a gradio session (`?session_hash=`, `…/heartbeat/{session}`, or
//! the JSON body of `POST …/queue/join`, read whole up to [`MAX_JOIN_BODY`]) goes to the
//! instance that session started on, so a session keeps its app across a swap to a new
//! commit while the old instance drains (`hub_spaces::route`). The request's
//! [`hub_spaces::InFlight`] is held until its answer (body or websocket) ends.

use super::{SpacePath, not_running, spaces};
use crate::AppState;
use crate::access::read_access;
use crate::error::AppError;
use crate::extract::authenticate;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use hub_spaces::Target;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use std::time::Duration;

/// How long a request waits for a Space to start or wake before a 503.
pub(crate) const WAKE_WAIT: Duration = Duration::from_secs(90);

/// Largest `queue/join` body read for its session (larger ones are refused with 413).
pub(crate) const MAX_JOIN_BODY: usize = 8 * 1024 * 1024;

#[derive(Debug, Deserialize)]
pub(super) struct AppPath {
    ns: String,
    name: String,
    rest: String,
}

pub(super) async fn app_root(
    State(state): State<AppState>,
    Path(path): Path<SpacePath>,
    request: Request,
) -> Response {
    let path = AppPath {
        ns: path.ns,
        name: path.name,
        rest: String::new(),
    };
    serve(state, path, request)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

pub(super) async fn app(
    State(state): State<AppState>,
    Path(path): Path<AppPath>,
    request: Request,
) -> Response {
    serve(state, path, request)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn serve(state: AppState, path: AppPath, request: Request) -> Result<Response, AppError> {
    let space = SpacePath {
        kind: None,
        ns: path.ns.clone(),
        name: path.name.clone(),
    };
    let id = space.id()?;
    let principal = authenticate(&state, request.headers()).await?;
    read_access(&state, principal.as_ref(), &id).await?;
    let prefix = format!("/spaces/{}/app", id.hub_id());
    // `/app` without its slash: relative URLs in the page would miss the prefix.
    if request.uri().path() == prefix {
        let query = request
            .uri()
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        return Ok((
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, format!("{prefix}/{query}"))],
        )
            .into_response());
    }
    let (session, request) = session_of(request).await?;
    let served = match spaces(&state)?
        .serve(&id, session.as_deref(), WAKE_WAIT)
        .await
    {
        Ok(served) => served,
        Err(unavailable) => return Ok(not_running(&unavailable)),
    };
    let in_flight = served.in_flight;
    match served.target {
        Target::Static { commit, index } => {
            static_file(&state, &id, &commit, &path.rest, &index).await
        }
        Target::App { port, keep_prefix } => {
            let upstream_path = if keep_prefix {
                request.uri().path().to_owned()
            } else {
                format!("/{}", path.rest)
            };
            let query = request
                .uri()
                .query()
                .map(|q| format!("?{q}"))
                .unwrap_or_default();
            forward(
                port,
                &format!("{upstream_path}{query}"),
                &prefix,
                request,
                in_flight,
            )
            .await
        }
    }
}

/// The gradio session a request belongs to, if it names one; the request comes back whole.
async fn session_of(request: Request) -> Result<(Option<String>, Request), AppError> {
    if let Some(session) = session_in_uri(request.uri()) {
        return Ok((Some(session), request));
    }
    let join =
        request.method() == http::Method::POST && request.uri().path().ends_with("/queue/join");
    if !join {
        return Ok((None, request));
    }
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_JOIN_BODY)
        .await
        .map_err(|_| {
            AppError::Coded {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: "SpaceRequestTooLarge",
                message: format!(
                    "a queue/join body is read whole, at most {MAX_JOIN_BODY} bytes (upload files separately)"
                ),
            }
        })?;
    let session = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("session_hash")?.as_str().map(str::to_owned));
    Ok((session, Request::from_parts(parts, Body::from(bytes))))
}

/// `?session_hash=…` or `…/heartbeat/{session}`.
fn session_in_uri(uri: &http::Uri) -> Option<String> {
    let from_query = uri.query().and_then(|q| {
        q.split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == "session_hash")
            .map(|(_, v)| v.to_owned())
    });
    from_query.or_else(|| {
        let (_, after) = uri.path().rsplit_once("/heartbeat/")?;
        Some(after.trim_end_matches('/').to_owned())
    })
}

/// A file of a static Space's commit.
async fn static_file(
    state: &AppState,
    id: &hub_protocol::repo::RepoId,
    commit: &str,
    rest: &str,
    index: &str,
) -> Result<Response, AppError> {
    let file = if rest.is_empty() {
        index.to_owned()
    } else if rest.ends_with('/') {
        format!("{rest}index.html")
    } else {
        rest.to_owned()
    };
    let (repos, id, commit2, path) = (
        state.repos().clone(),
        id.clone(),
        commit.to_owned(),
        file.clone(),
    );
    let found =
        crate::util::blocking(move || Ok::<_, AppError>(repos.file_head(&id, &commit2, &path)))
            .await?;
    match found {
        Ok((entry, Some(bytes))) if entry.lfs.is_none() => Ok((
            [
                (header::CONTENT_TYPE, content_type(&file)),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            bytes,
        )
            .into_response()),
        Ok(_) => Err(AppError::Unprocessable(format!(
            "{file} is too large (or an LFS file) to be served by a static Space"
        ))),
        Err(
            hub_repo::RepoError::EntryNotFound { .. } | hub_repo::RepoError::InvalidPath { .. },
        ) => Err(AppError::NotFound),
        Err(e) => Err(AppError::internal(e)),
    }
}

fn content_type(path: &str) -> &'static str {
    let ext = path
        .rsplit_once('.')
        .map_or("", |(_, e)| e)
        .to_ascii_lowercase();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "wasm" => "application/wasm",
        "txt" | "md" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
        && headers.contains_key(header::UPGRADE)
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap, upgrade: bool) {
    for (name, value) in from {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n) || n == "authorization" {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
    if upgrade {
        if let Some(u) = from.get(header::UPGRADE) {
            to.insert(header::UPGRADE, u.clone());
        }
        to.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Sends `request` to the app on `port` as `path_and_query`, streaming both ways.
async fn forward(
    port: u16,
    path_and_query: &str,
    prefix: &str,
    mut request: Request,
    in_flight: Option<hub_spaces::InFlight>,
) -> Result<Response, AppError> {
    let upgrade = is_upgrade(request.headers());
    let app_down = |e: &dyn std::fmt::Display| {
        tracing::debug!(port, error = %e, "Space app did not answer");
        AppError::Coded {
            status: StatusCode::BAD_GATEWAY,
            code: "SpaceAppError",
            message: "the Space's app did not answer".into(),
        }
    };
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| app_down(&e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| app_down(&e))?;
    tokio::spawn(async move {
        if let Err(error) = conn.with_upgrades().await {
            tracing::debug!(%error, "Space app connection ended");
        }
    });
    let mut builder = http::Request::builder()
        .method(request.method().clone())
        .uri(path_and_query);
    let headers = builder.headers_mut().expect("a fresh builder has headers");
    copy_headers(request.headers(), headers, upgrade);
    if let Some(host) = request.headers().get(header::HOST) {
        headers.insert(HeaderName::from_static("x-forwarded-host"), host.clone());
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("http"),
    );
    if let Ok(p) = HeaderValue::from_str(prefix) {
        headers.insert(HeaderName::from_static("x-forwarded-prefix"), p);
    }
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let outgoing = builder
        .body(request.into_body())
        .map_err(AppError::internal)?;
    let mut response = sender
        .send_request(outgoing)
        .await
        .map_err(|e| app_down(&e))?;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let app_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            let _in_flight = in_flight;
            match tokio::try_join!(client_upgrade, app_upgrade) {
                Ok((client, app)) => {
                    let (mut client, mut app) = (TokioIo::new(client), TokioIo::new(app));
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut app).await;
                }
                Err(error) => tracing::debug!(%error, "Space websocket upgrade failed"),
            }
        });
        let mut out = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
        let h = out.headers_mut().expect("a fresh builder has headers");
        copy_headers(response.headers(), h, true);
        return out.body(Body::empty()).map_err(AppError::internal);
    }
    let (parts, body) = response.into_parts();
    let mut out = Response::builder().status(parts.status);
    let h = out.headers_mut().expect("a fresh builder has headers");
    copy_headers(&parts.headers, h, false);
    // The instance counts the request until its body (an SSE stream, say) ends.
    let body = Body::new(body).into_data_stream().map(move |chunk| {
        let _held = &in_flight;
        chunk
    });
    out.body(Body::from_stream(body))
        .map_err(AppError::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_tokens_stay_here() {
        let mut from = HeaderMap::new();
        from.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer hf_secret"),
        );
        from.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        from.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        from.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        let mut to = HeaderMap::new();
        copy_headers(&from, &mut to, false);
        assert!(to.get(header::AUTHORIZATION).is_none());
        assert!(to.get(header::UPGRADE).is_none());
        assert_eq!(to[header::ACCEPT], "text/event-stream");
        assert!(is_upgrade(&from));
        let mut to = HeaderMap::new();
        copy_headers(&from, &mut to, true);
        assert_eq!(to[header::UPGRADE], "websocket");
        assert_eq!(to[header::CONNECTION], "upgrade");
        assert!(to.get(header::AUTHORIZATION).is_none());
    }

    #[test]
    fn sessions_are_found_in_the_query_and_the_heartbeat_path() {
        let uri = |s: &str| s.parse::<http::Uri>().expect("uri");
        assert_eq!(
            session_in_uri(&uri("/gradio_api/queue/data?x=1&session_hash=abc123")).as_deref(),
            Some("abc123")
        );
        assert_eq!(
            session_in_uri(&uri("/gradio_api/heartbeat/abc123")).as_deref(),
            Some("abc123")
        );
        assert_eq!(session_in_uri(&uri("/gradio_api/info")), None);
    }

    #[test]
    fn static_files_get_their_types() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("a/b.JS"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("blob"), "application/octet-stream");
    }
}
