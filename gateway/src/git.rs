//! git smart HTTP: `git clone`, `fetch`, `pull` and `push` against the same bare repositories
//! the Hub API writes, at `/{ns}/{name}[.git]` (models), `/datasets/…` and `/spaces/…`.
//!
//! What is ours and what is delegated (see `docs/adr/0003-git-smart-http.md`):
//! - **Every decision is ours**: who may read or write (hub-auth, the same `authorize` the
//!   API uses; private repos are 404 to those who may not see them, and an anonymous caller
//!   is challenged with `401 WWW-Authenticate: Basic`), which ref updates are allowed, and
//!   what a pushed tree may contain (hub-repo's `Quarantine::check`).
//! - **Fetches** (read-only) are delegated, after our access check, to `git http-backend`
//!   running `git upload-pack --stateless-rpc` for that one repository: protocol v0 and v2,
//!   shallow and partial clones, gzip-encoded requests. Request and response bodies stream
//!   through bounded channels; nothing buffers a pack.
//! - **Pushes** are ours: we advertise refs, parse the commands (see [`pkt`]), stream the
//!   pack into a quarantine where `git index-pack` indexes it, check it with gix, and only
//!   then move objects in and update refs with compare-and-swap under the per-repo lock;
//!   the answer is `report-status`, inside `side-band-64k` when the client asked for it.
//!   Pushes are atomic: if any ref is refused, none moves.
//! - **Bounds** (see [`limits`]): git processes are capped overall and per client address
//!   (503 / 429 with `Retry-After` beyond), a request that moves no byte for the idle
//!   timeout is ended and its processes killed, and no git request holds a blocking thread
//!   while it waits on a client.

mod limits;
mod pkt;
#[cfg(test)]
mod tests;

pub(crate) use limits::Limiter;
pub use limits::{
    DEFAULT_GIT_IDLE_TIMEOUT, DEFAULT_MAX_GIT_PER_CLIENT, DEFAULT_MAX_GIT_PROCESSES, GitLimits,
};

use crate::AppState;
use crate::error::AppError;
use crate::extract::authenticate;
use crate::util::blocking;
use axum::Extension;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use hub_auth::{Access, Decision, Principal};
use hub_core::{AccessError, Need};
use hub_protocol::repo::{RepoId, RepoType};
use hub_repo::{Checked, Quarantine, ReceiveError, RefCommand, Rejection};
use limits::{Activity, Refused, Slot};
use pkt::{PushRequest, flush, write_pkt};
use serde::Deserialize;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// Largest pack one push may send (5 GiB); LFS content goes to the store, not into git.
pub(crate) const MAX_PACK_BYTES: u64 = 5 << 30;

/// Capabilities our receive-pack advertises.
const RECEIVE_CAPS: &str =
    "report-status delete-refs side-band-64k quiet ofs-delta object-format=sha1 agent=hubmesh";

/// Chunks in flight between the HTTP body and a git process, each way.
const CHANNEL_DEPTH: usize = 8;

/// Most bytes of CGI headers we accept from `git http-backend`.
const MAX_CGI_HEADERS: usize = 16 * 1024;

pub(crate) fn routes() -> Router<AppState> {
    let mut router = Router::new();
    for (prefix, kind) in [
        ("", RepoType::Model),
        ("/datasets", RepoType::Dataset),
        ("/spaces", RepoType::Space),
    ] {
        router = router
            .route(
                &format!("{prefix}/{{ns}}/{{name}}/info/refs"),
                info_refs_route(kind),
            )
            .route(
                &format!("{prefix}/{{ns}}/{{name}}/git-upload-pack"),
                upload_pack_route(kind),
            )
            .route(
                &format!("{prefix}/{{ns}}/{{name}}/git-receive-pack"),
                receive_pack_route(kind),
            );
    }
    router.layer(DefaultBodyLimit::disable())
}

#[derive(Debug, Deserialize)]
struct ServiceQuery {
    service: Option<String>,
}

/// The client's address, when the server recorded it (the node does; in-process tests
/// don't). Forwarding headers are not trusted: anyone can send them.
type Peer = Option<Extension<ConnectInfo<SocketAddr>>>;

fn client_ip(peer: Peer) -> Option<IpAddr> {
    peer.map(|Extension(ConnectInfo(addr))| addr.ip())
}

fn info_refs_route(kind: RepoType) -> MethodRouter<AppState> {
    get(
        move |State(state): State<AppState>,
              Path((ns, name)): Path<(String, String)>,
              Query(q): Query<ServiceQuery>,
              peer: Peer,
              headers: HeaderMap| async move {
            info_refs(state, kind, ns, name, q, client_ip(peer), headers)
                .await
                .unwrap_or_else(git_error)
        },
    )
}

fn upload_pack_route(kind: RepoType) -> MethodRouter<AppState> {
    post(
        move |State(state): State<AppState>,
              Path((ns, name)): Path<(String, String)>,
              peer: Peer,
              headers: HeaderMap,
              body: Body| async move {
            upload_pack(state, kind, ns, name, client_ip(peer), headers, body)
                .await
                .unwrap_or_else(git_error)
        },
    )
}

fn receive_pack_route(kind: RepoType) -> MethodRouter<AppState> {
    post(
        move |State(state): State<AppState>,
              Path((ns, name)): Path<(String, String)>,
              peer: Peer,
              headers: HeaderMap,
              body: Body| async move {
            receive_pack(state, kind, ns, name, client_ip(peer), headers, body)
                .await
                .unwrap_or_else(git_error)
        },
    )
}

/// A slot for one git process (see [`limits`]), or the answer that says to come back.
fn git_slot(state: &AppState, client: Option<IpAddr>) -> Result<Slot, AppError> {
    state.git_limiter().acquire(client).map_err(|refused| {
        let (status, code, message) = match refused {
            Refused::Client => (
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "too many git requests from this address at once; retry later",
            ),
            Refused::Full => (
                StatusCode::SERVICE_UNAVAILABLE,
                "GitBusy",
                "the node runs as many git requests as it may; retry later",
            ),
        };
        tracing::info!(client = ?client, %status, "git request refused: no slot");
        AppError::Coded {
            status,
            code,
            message: message.into(),
        }
    })
}

/// Our error responses, with the challenge git understands on a 401. A 403 carries its
/// message as `text/plain`, which git prints to the user (`remote: …`), e.g. which node
/// hosts a namespace.
fn git_error(err: AppError) -> Response {
    let mut resp = err.into_response();
    if resp.status() == StatusCode::FORBIDDEN
        && let Some(message) = resp
            .headers()
            .get("x-error-message")
            .and_then(|v| v.to_str().ok())
            .map(|m| format!("{m}\n"))
    {
        *resp.body_mut() = Body::from(message);
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.remove(header::CONTENT_LENGTH);
    }
    if resp.status() == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"hubmesh\""),
        );
    }
    if matches!(
        resp.status(),
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        resp.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(limits::RETRY_AFTER_SECS),
        );
    }
    resp
}

/// A caller allowed to use one repository.
struct Allowed {
    id: RepoId,
    private: bool,
    principal: Option<Principal>,
}

/// Authenticates and authorises. Anonymous callers who are refused (a push, a private or
/// missing repo) get 401 so git retries with credentials; whether the repo exists is not
/// revealed to them. Authenticated callers who may not see a repo get 404.
async fn allow(
    state: &AppState,
    kind: RepoType,
    ns: &str,
    name: &str,
    headers: &HeaderMap,
    access: Access,
) -> Result<Allowed, AppError> {
    let principal = authenticate(state, headers).await?;
    let name = name.strip_suffix(".git").unwrap_or(name);
    let anonymous_refusal = || AppError::Unauthorized("Authentication required.");
    let id = match RepoId::new(kind, ns, name) {
        Ok(id) => id,
        Err(_) if principal.is_none() => return Err(anonymous_refusal()),
        Err(_) => return Err(AppError::RepoNotFound),
    };
    if principal.is_none() && access == Access::Write {
        return Err(anonymous_refusal());
    }
    let need = match access {
        Access::Read => Need::Read,
        Access::Write => Need::Write,
    };
    let meta = match state.hub().access(principal.as_ref(), &id, need).await {
        Ok(granted) => granted.meta,
        Err(AccessError::NotFound) if principal.is_none() => return Err(anonymous_refusal()),
        Err(e) => return Err(e.into()),
    };
    Ok(Allowed {
        id,
        private: meta.private,
        principal,
    })
}

/// The `Git-Protocol` header, passed to git only when it is plain `key=value:…` text.
fn git_protocol(headers: &HeaderMap) -> Option<String> {
    let v = headers.get("git-protocol")?.to_str().ok()?;
    (v.len() <= 256
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"=:._-".contains(&b)))
    .then(|| v.to_owned())
}

async fn info_refs(
    state: AppState,
    kind: RepoType,
    ns: String,
    name: String,
    q: ServiceQuery,
    client: Option<IpAddr>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    match q.service.as_deref() {
        Some("git-upload-pack") => {
            let allowed = allow(&state, kind, &ns, &name, &headers, Access::Read).await?;
            let slot = git_slot(&state, client)?;
            http_backend(
                &state,
                &allowed.id,
                "info/refs",
                &headers,
                Body::empty(),
                slot,
            )
            .await
        }
        Some("git-receive-pack") => {
            let allowed = allow(&state, kind, &ns, &name, &headers, Access::Write).await?;
            let repos = state.repos().clone();
            let id = allowed.id.clone();
            let refs = blocking(move || Ok(repos.advertised_refs(&id)?)).await?;
            let mut body = Vec::new();
            write_pkt(&mut body, b"# service=git-receive-pack\n");
            flush(&mut body);
            if refs.is_empty() {
                let line = format!("{} capabilities^{{}}\0{RECEIVE_CAPS}\n", hub_repo::ZERO_ID);
                write_pkt(&mut body, line.as_bytes());
            }
            for (i, (name, target)) in refs.iter().enumerate() {
                let line = if i == 0 {
                    format!("{target} {name}\0{RECEIVE_CAPS}\n")
                } else {
                    format!("{target} {name}\n")
                };
                write_pkt(&mut body, line.as_bytes());
            }
            flush(&mut body);
            Ok(git_response(
                "application/x-git-receive-pack-advertisement",
                Body::from(body),
            ))
        }
        // The dumb protocol is not served.
        _ => Err(AppError::NotFound),
    }
}

fn git_response(content_type: &'static str, body: Body) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CACHE_CONTROL,
                "no-cache, max-age=0, must-revalidate",
            ),
        ],
        body,
    )
        .into_response()
}

async fn upload_pack(
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

/// Feeds an HTTP body into a bounded channel (for a blocking reader). A body that sends
/// nothing for `idle` ends with a `TimedOut` error, so the reader never waits forever.
fn pump(body: Body, idle: Duration) -> mpsc::Receiver<std::io::Result<Bytes>> {
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    tokio::spawn(async move {
        let mut stream = body.into_data_stream();
        loop {
            let item = match tokio::time::timeout(idle, stream.next()).await {
                Ok(None) => break,
                Ok(Some(chunk)) => chunk.map_err(std::io::Error::other),
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no request data for {}s", idle.as_secs()),
                )),
            };
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                break;
            }
        }
    });
    rx
}

/// A blocking `Read` over the chunks [`pump`] sends.
struct ChannelReader {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    buf: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.buf.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.buf = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf.split_to(n));
        Ok(n)
    }
}

/// Runs `git http-backend` (CGI) for one upload-pack request on one repository, after our
/// access check and with a [`Slot`]. The request body streams to its stdin and its stdout
/// streams back, through async pipes (no thread waits on the client); [`supervise`] kills
/// it when no byte moves for the idle timeout.
async fn http_backend(
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

/// Streams `len` bytes from `start` of a git blob too large to read whole (see
/// [`hub_repo::Repos::file_head`]) with `git cat-file blob`, which streams loose and
/// undeltified packed objects: the node holds one read buffer per response whatever the
/// blob's size. The process takes a shared slot of the git limits (so concurrent big reads
/// are bounded; beyond, 503 with `Retry-After`) and is ended like any git request when the
/// client reads nothing for the idle timeout.
pub(crate) fn blob_body(
    state: &AppState,
    id: &RepoId,
    oid: &str,
    start: u64,
    len: u64,
) -> Result<Body, AppError> {
    if oid.len() != 40 || !oid.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AppError::internal("malformed blob id"));
    }
    let slot = state
        .git_limiter()
        .acquire_shared()
        .map_err(|_| AppError::Coded {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "GitBusy",
            message: "the node reads as many large files as it may; retry later".into(),
        })?;
    let git_dir = state.repos().git_dir(id);
    let mut cmd = Command::new("git");
    cmd.args(["cat-file", "blob", oid])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_DIR", &git_dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("HOME", &git_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(AppError::internal)?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| AppError::internal("git cat-file without stdout"))?;
    let idle = state.git_limiter().limits().idle_timeout;
    let activity = Activity::new();
    tokio::spawn(supervise(
        child,
        activity.clone(),
        idle,
        slot,
        id.to_string(),
    ));
    struct Reading {
        stdout: tokio::process::ChildStdout,
        buf: Vec<u8>,
        skip: u64,
        left: u64,
        activity: Activity,
    }
    let reading = Reading {
        stdout,
        buf: vec![0u8; 64 * 1024],
        skip: start,
        left: len,
        activity,
    };
    let stream = futures::stream::unfold(reading, |mut r| async move {
        while r.left > 0 {
            let n = match r.stdout.read(&mut r.buf).await {
                Ok(0) => {
                    let e = std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "git cat-file ended early",
                    );
                    r.left = 0;
                    return Some((Err(e), r));
                }
                Ok(n) => n,
                Err(e) => {
                    r.left = 0;
                    return Some((Err(e), r));
                }
            };
            r.activity.touch();
            let mut data = &r.buf[..n];
            let skipped = usize::try_from(r.skip)
                .unwrap_or(usize::MAX)
                .min(data.len());
            r.skip -= skipped as u64;
            data = &data[skipped..];
            let take = usize::try_from(r.left)
                .unwrap_or(usize::MAX)
                .min(data.len());
            if take == 0 {
                continue;
            }
            r.left -= take as u64;
            let bytes = Bytes::copy_from_slice(&data[..take]);
            return Some((Ok(bytes), r));
        }
        // Done: dropping stdout ends `git cat-file` (the supervisor reaps it).
        None
    });
    Ok(Body::from_stream(stream))
}

/// The answer to a git request ended for moving no byte.
fn idle_error(idle: Duration) -> AppError {
    AppError::Coded {
        status: StatusCode::REQUEST_TIMEOUT,
        code: "RequestTimeout",
        message: format!(
            "no data moved for {}s; the git request was ended",
            idle.as_secs()
        ),
    }
}

/// Streams the request body to the git process's stdin. A client that sends nothing (or a
/// git that reads nothing) for `idle` ends the request as idle; dropping `stdin` is git's
/// end of input.
async fn feed(
    body: Body,
    mut stdin: tokio::process::ChildStdin,
    activity: Activity,
    idle: Duration,
) {
    let mut stream = body.into_data_stream();
    loop {
        let chunk = match tokio::time::timeout(idle, stream.next()).await {
            Ok(None) => return,
            Ok(Some(Ok(chunk))) => chunk,
            Ok(Some(Err(_))) => return,
            Err(_) => {
                activity.set_timed_out();
                return;
            }
        };
        activity.touch();
        match tokio::time::timeout(idle, stdin.write_all(&chunk)).await {
            Ok(Ok(())) => activity.touch(),
            Ok(Err(_)) => return,
            Err(_) => {
                activity.set_timed_out();
                return;
            }
        }
    }
}

/// Owns one git process and its [`Slot`] until the process ends: waits for it, and kills
/// its process group once no byte has moved (see [`Activity`]) for `idle`.
async fn supervise(mut child: Child, activity: Activity, idle: Duration, slot: Slot, repo: String) {
    let group = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .and_then(rustix::process::Pid::from_raw);
    loop {
        let quiet = activity.idle_for();
        if quiet >= idle {
            tracing::info!(%repo, idle = ?quiet, "git request idle; killing its processes");
            activity.set_timed_out();
            // The leader is not reaped yet (we have not seen it exit), so its group id is
            // still ours to signal.
            if let Some(group) = group {
                let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
            }
            let _ = child.kill().await;
            break;
        }
        tokio::select! {
            _ = child.wait() => break,
            () = tokio::time::sleep(idle - quiet) => {}
        }
    }
    drop(slot);
}

/// What one push came to, for the report.
struct PushOutcome {
    unpack: Result<(), String>,
    refs: Vec<(String, Result<(), String>)>,
}

async fn receive_pack(
    state: AppState,
    kind: RepoType,
    ns: String,
    name: String,
    client: Option<IpAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, AppError> {
    let allowed = allow(&state, kind, &ns, &name, &headers, Access::Write).await?;
    if headers.contains_key(header::CONTENT_ENCODING) {
        return Err(AppError::BadRequest(
            "compressed receive-pack requests are not supported".into(),
        ));
    }
    // Held by the work below (which runs `git index-pack`), not by this future.
    let slot = git_slot(&state, client)?;
    let mut reader = ChannelReader {
        rx: pump(body, state.git_limiter().limits().idle_timeout),
        buf: Bytes::new(),
    };
    let worker_state = state.clone();
    let id = allowed.id.clone();
    // The work does not depend on this future: it runs to completion (or to the end of the
    // request body) on the blocking pool even if the client goes away.
    let (request, outcome) = blocking(move || {
        let _slot = slot;
        let request = pkt::read_push_request(&mut reader)
            .map_err(|e| AppError::BadRequest(format!("receive-pack request: {e}")))?;
        if request.is_probe() {
            return Ok((request, None));
        }
        let outcome = receive(&worker_state, &allowed, &request, &mut reader);
        Ok((request, Some(outcome)))
    })
    .await?;
    // git's probe before a large push (credentials checked above): `git http-backend`
    // answers it with an empty result, and so do we.
    let Some(outcome) = outcome else {
        return Ok(git_response(
            "application/x-git-receive-pack-result",
            Body::empty(),
        ));
    };
    let moved = outcome.unpack.is_ok() && outcome.refs.iter().all(|(_, r)| r.is_ok());
    if moved {
        state.hub().after_write(&id).await;
    }
    Ok(git_response(
        "application/x-git-receive-pack-result",
        Body::from(report(&request, &outcome)),
    ))
}

/// Receives the pack, checks it and moves refs; never panics, and on any refusal leaves the
/// repository as it was.
fn receive(
    state: &AppState,
    allowed: &Allowed,
    request: &PushRequest,
    pack: &mut dyn Read,
) -> PushOutcome {
    let commands = &request.commands;
    let fail_all = |reason: &str| PushOutcome {
        unpack: Ok(()),
        refs: commands
            .iter()
            .map(|c| (c.name.clone(), Err(reason.to_owned())))
            .collect(),
    };
    let unpack_error = |e: &dyn std::fmt::Display| {
        tracing::info!(repo = %allowed.id, error = %e, "push: unpack failed");
        PushOutcome {
            unpack: Err(e.to_string()),
            refs: commands
                .iter()
                .map(|c| (c.name.clone(), Err("unpacker error".to_owned())))
                .collect(),
        }
    };
    let quarantine: Quarantine = match state.repos().quarantine(&allowed.id) {
        Ok(q) => q,
        Err(e) => return unpack_error(&e),
    };
    if commands.iter().any(|c| !c.is_delete())
        && let Err(e) = quarantine.index_pack(pack, MAX_PACK_BYTES)
    {
        return match e {
            ReceiveError::TooLarge { .. } | ReceiveError::IndexPack { .. } => unpack_error(&e),
            other => unpack_error(&other),
        };
    }
    // An LFS pointer may only name an object uploaded to this repository (the store is
    // shared; a hash alone is no proof of having the content).
    let hub = state.hub();
    let mut has_lfs = |hex: &str| {
        hex.parse::<hub_protocol::manifest::Sha256>()
            .ok()
            .is_some_and(|oid| hub.owns_lfs(&allowed.id, &oid).unwrap_or(false))
    };
    let checks = match quarantine.check(commands, &mut has_lfs) {
        Ok(c) => c,
        Err(e) => return unpack_error(&e),
    };
    // Rewriting history (a non-fast-forward update) and deleting a ref need more than adding
    // commits: the owner, a site admin, or org role write/admin (`contributor` may not).
    let needs_force = checks.iter().any(|c| {
        matches!(
            c,
            Ok(Checked {
                fast_forward: false
            })
        )
    });
    let deletes = commands.iter().any(RefCommand::is_delete);
    let may_force = (needs_force || deletes)
        && matches!(
            state.auth().decide_force_push(
                allowed.principal.as_ref(),
                &allowed.id,
                allowed.private
            ),
            Ok(Decision::Allow)
        );
    let verdicts: Vec<Result<(), Rejection>> = checks
        .into_iter()
        .zip(commands)
        .map(|(c, command)| match c {
            Ok(_) if command.is_delete() && !may_force => Err(Rejection::DeleteForbidden),
            Ok(Checked {
                fast_forward: false,
            }) if !may_force => Err(Rejection::NonFastForward),
            Ok(_) => Ok(()),
            Err(r) => Err(r),
        })
        .collect();
    if verdicts.iter().any(Result::is_err) {
        tracing::info!(repo = %allowed.id, "push refused");
        return PushOutcome {
            unpack: Ok(()),
            refs: commands
                .iter()
                .zip(verdicts)
                .map(|(c, v)| {
                    let reason = v.err().unwrap_or(Rejection::Atomic);
                    (c.name.clone(), Err(reason.to_string()))
                })
                .collect(),
        };
    }
    match state.repos().apply_push(quarantine, commands) {
        Ok(Ok(())) => {
            tracing::info!(repo = %allowed.id, refs = commands.len(), "push accepted");
            PushOutcome {
                unpack: Ok(()),
                refs: commands.iter().map(|c| (c.name.clone(), Ok(()))).collect(),
            }
        }
        Ok(Err(rejections)) => PushOutcome {
            unpack: Ok(()),
            refs: commands
                .iter()
                .zip(rejections)
                .map(|(c, r): (&RefCommand, Option<Rejection>)| {
                    (
                        c.name.clone(),
                        Err(r.unwrap_or(Rejection::Atomic).to_string()),
                    )
                })
                .collect(),
        },
        Err(e) => {
            tracing::error!(repo = %allowed.id, error = %e, "push: apply failed");
            fail_all("internal error")
        }
    }
}

/// The `report-status` answer, wrapped in side-band 1 when the client asked for it.
fn report(request: &PushRequest, outcome: &PushOutcome) -> Vec<u8> {
    if !request.has("report-status") {
        return if request.has("side-band-64k") {
            b"0000".to_vec()
        } else {
            Vec::new()
        };
    }
    let mut status = Vec::new();
    let unpack = match &outcome.unpack {
        Ok(()) => "unpack ok\n".to_owned(),
        Err(e) => format!("unpack {}\n", one_line(e)),
    };
    write_pkt(&mut status, unpack.as_bytes());
    for (name, result) in &outcome.refs {
        // The parser refused control characters in names already; never echo raw ones.
        let name = one_line(name);
        let line = match result {
            Ok(()) => format!("ok {name}\n"),
            Err(reason) => format!("ng {name} {}\n", one_line(reason)),
        };
        write_pkt(&mut status, line.as_bytes());
    }
    flush(&mut status);
    if !request.has("side-band-64k") {
        return status;
    }
    let mut out = Vec::new();
    for chunk in status.chunks(pkt::MAX_PKT_LEN - 5) {
        let mut data = Vec::with_capacity(chunk.len() + 1);
        data.push(1);
        data.extend_from_slice(chunk);
        write_pkt(&mut out, &data);
    }
    flush(&mut out);
    out
}

/// A reason fit for one pkt-line: no newlines, bounded.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1000)
        .collect()
}
