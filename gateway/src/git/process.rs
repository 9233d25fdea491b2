//! What every git process of a request shares: the request body pumped into a bounded
//! channel (and read back as a blocking `Read`), the body fed to a process's stdin, and the
//! supervisor that owns the process and its slot and kills its group when no byte moves.

use super::limits::{Activity, Slot};
use crate::error::AppError;
use axum::body::{Body, Bytes};
use futures::StreamExt;
use http::StatusCode;
use std::io::Read;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::Child;
use tokio::sync::mpsc;

/// Chunks in flight between the HTTP body and a git process, each way.
const CHANNEL_DEPTH: usize = 8;

/// Feeds an HTTP body into a bounded channel (for a blocking reader). A body that sends
/// nothing for `idle` ends with a `TimedOut` error, so the reader never waits forever.
pub(super) fn pump(body: Body, idle: Duration) -> mpsc::Receiver<std::io::Result<Bytes>> {
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
pub(super) struct ChannelReader {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    buf: Bytes,
}

impl ChannelReader {
    /// A reader over `body`, pumped by [`pump`] with the idle timeout `idle`.
    pub(super) fn new(body: Body, idle: Duration) -> Self {
        Self {
            rx: pump(body, idle),
            buf: Bytes::new(),
        }
    }
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

/// The answer to a git request ended for moving no byte.
pub(super) fn idle_error(idle: Duration) -> AppError {
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
pub(super) async fn feed(
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
pub(super) async fn supervise(
    mut child: Child,
    activity: Activity,
    idle: Duration,
    slot: Slot,
    repo: String,
) {
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
