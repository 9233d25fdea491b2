//! Fetches (`git clone`, `fetch`, `pull`): upload-pack is delegated, after our access check,
//! to `git http-backend` (CGI) for that one repository; bodies stream both ways through async
//! pipes and the process is supervised like every git process ([`super::process`]).

use super::limits::{Activity, Slot};
use super::process::{feed, idle_error, supervise};
use super::{allow, git_protocol, git_slot};
use crate::AppState;
use crate::error::AppError;
use axum::body::{Body, Bytes};
use axum::response::Response;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use hub_auth::Access;
use hub_protocol::repo::{RepoId, RepoType};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Stdio;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// Most bytes of CGI headers we accept from `git http-backend`.
const MAX_CGI_HEADERS: usize = 16 * 1024;

pub(super) async fn upload_pack(
    state: AppState,
    kind: RepoType,
    ns: String,
    name: String,
    client: Option<IpAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, AppError> {
    let allowed = allow(&state, kind, &ns, &name, &headers, Access::Read).await?;
    let slot = git_slot(&state, client)?;
    http_backend(&state, &allowed.id, "git-upload-pack", &headers, body, slot).await
}

/// Runs `git http-backend` (CGI) for one upload-pack request on one repository, after our
/// access check and with a [`Slot`]. The request body streams to its stdin and its stdout
/// streams back, through async pipes (no thread waits on the client); [`supervise`] kills
/// it when no byte moves for the idle timeout.
pub(super) async fn http_backend(
    state: &AppState,
    id: &RepoId,
    service_path: &'static str,
    headers: &HeaderMap,
    body: Body,
    slot: Slot,
) -> Result<Response, AppError> {
    let git_dir = state.repos().git_dir(id);
    let (Some(root), Some(dir_name)) = (git_dir.parent(), git_dir.file_name()) else {
        return Err(AppError::internal("repository path has no parent"));
    };
    let root: PathBuf = root.to_owned();
    let path_info = format!("/{}/{service_path}", dir_name.to_string_lossy());
    let is_post = service_path != "info/refs";
    let mut cmd = Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", &root)
        .env("PATH_INFO", &path_info)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("HOME", &root)
        .env("REQUEST_METHOD", if is_post { "POST" } else { "GET" })
        .env(
            "QUERY_STRING",
            if is_post {
                ""
            } else {
                "service=git-upload-pack"
            },
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that an idle request's `upload-pack` dies with it.
        .process_group(0)
        .kill_on_drop(true);
    if let Some(p) = git_protocol(headers) {
        cmd.env("GIT_PROTOCOL", p);
    }
    if is_post {
        cmd.env("CONTENT_TYPE", "application/x-git-upload-pack-request");
        if let Some(len) = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.parse::<u64>().is_ok())
        {
            cmd.env("CONTENT_LENGTH", len);
        }
        match headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
        {
            None => {}
            Some(enc) if enc.eq_ignore_ascii_case("gzip") => {
                cmd.env("HTTP_CONTENT_ENCODING", "gzip");
            }
            Some(_) => return Err(AppError::BadRequest("unsupported Content-Encoding".into())),
        }
    }
    let mut child = cmd.spawn().map_err(AppError::internal)?;
    let (Some(stdin), Some(mut stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(AppError::internal("git http-backend without pipes"));
    };
    let repo = id.to_string();
    let idle = state.git_limiter().limits().idle_timeout;
    let activity = Activity::new();
    tokio::spawn(supervise(child, activity.clone(), idle, slot, repo.clone()));
    tokio::spawn(feed(body, stdin, activity.clone(), idle));
    tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.take(4096).read_to_string(&mut text).await;
        if !text.trim().is_empty() {
            tracing::warn!(%repo, stderr = %text.trim(), "git http-backend");
        }
    });

    // stdout: CGI headers, then the body.
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let (end, sep) = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break (i, 4);
        }
        if let Some(i) = buf.windows(2).position(|w| w == b"\n\n") {
            break (i, 2);
        }
        let n = if buf.len() > MAX_CGI_HEADERS {
            0
        } else {
            stdout.read(&mut chunk).await.unwrap_or(0)
        };
        if n == 0 {
            if activity.timed_out() {
                return Err(idle_error(idle));
            }
            return Err(AppError::internal("git http-backend sent no headers"));
        }
        activity.touch();
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let rest = Bytes::copy_from_slice(&buf[end + sep..]);
    let mut status = StatusCode::OK;
    let mut content_type = None;
    for line in head.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("status") {
            let code = v.split(' ').next().and_then(|c| c.parse::<u16>().ok());
            status = code
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        } else if k.eq_ignore_ascii_case("content-type") {
            content_type = HeaderValue::from_str(v).ok();
        }
    }
    if !status.is_success() {
        tracing::warn!(repo = %id, %status, "git http-backend refused");
        return Err(AppError::internal(format!("git http-backend: {status}")));
    }
    let first = (!rest.is_empty()).then_some(Ok(rest));
    let body = futures::stream::iter(first).chain(futures::stream::unfold(
        (stdout, chunk, activity),
        |(mut stdout, mut chunk, activity)| async move {
            match stdout.read(&mut chunk).await {
                // Ended for idleness: an error, so the client sees a broken response rather
                // than a complete-looking short one.
                Ok(0) if activity.timed_out() => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "git request idle",
                    )),
                    (stdout, chunk, activity),
                )),
                Ok(0) => None,
                Ok(n) => {
                    activity.touch();
                    let bytes = Bytes::copy_from_slice(&chunk[..n]);
                    Some((Ok(bytes), (stdout, chunk, activity)))
                }
                Err(e) => Some((Err(e), (stdout, chunk, activity))),
            }
        },
    ));
    let mut resp = Response::new(Body::from_stream(body));
    let headers = resp.headers_mut();
    if let Some(ct) = content_type {
        headers.insert(header::CONTENT_TYPE, ct);
    }
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, max-age=0, must-revalidate"),
    );
    Ok(resp)
}
