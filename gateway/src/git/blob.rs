//! Large git blobs for `resolve`, streamed by `git cat-file` instead of read whole.

use super::limits::Activity;
use super::process::supervise;
use crate::AppState;
use crate::error::AppError;
use axum::body::{Body, Bytes};
use http::StatusCode;
use hub_protocol::repo::RepoId;
use std::process::Stdio;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

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
