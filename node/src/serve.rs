//! The HTTP server loop: hyper's HTTP/1 connections over the gateway's router, with the
//! bounds `axum::serve` does not offer.
//!
//! - **Header-read timeout**: a connection that has not sent a whole request head within
//!   [`HttpLimits::header_read_timeout`] is closed (slowloris). hyper has this timer, but
//!   only with a `Timer` configured, which `axum::serve` does not do; it also covers a
//!   keep-alive connection that sits idle between requests.
//! - **Idle timeout**: a request body that sends nothing, or a client that reads nothing of
//!   its response, for [`HttpLimits::idle_timeout`] ends the connection. Time the server
//!   spends computing an answer does not count: only waiting on the client does.
//! - **Connection cap**: at most [`HttpLimits::max_connections`] at once; beyond that the
//!   loop stops accepting (the kernel's backlog holds new connections) until one closes, so
//!   file descriptors remain for the node's own files.
//! - The client's address reaches handlers as `ConnectInfo<SocketAddr>`.
//!
//! Shutdown: on `stop`, the loop stops accepting and asks every connection to finish its
//! in-flight request and close; it returns when all are closed (the caller bounds the wait).

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::ConnectInfo;
use hub_net::CancellationToken;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Sleep;

/// Default of [`HttpLimits::header_read_timeout`] (hyper's own default).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of [`HttpLimits::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Default of [`HttpLimits::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// File descriptors kept free of connections for the node's own files (databases, chunk
/// store, git processes and their pipes, p2p sockets).
pub const RESERVED_FDS: u64 = 1024;

/// How long a connection may take, and how many there may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// A request head (request line and headers) must arrive within this time, counted from
    /// the connection's start or the end of its previous response.
    pub header_read_timeout: Duration,
    /// A request body that sends nothing, or a client that reads nothing, this long ends
    /// its connection.
    pub idle_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Raises this process's soft limit of open files to its hard limit, and returns the soft
/// limit now in force (`None`: unlimited). A node holds a descriptor per connection and per
/// open file; the usual soft limit of 1024 is far below what it needs.
pub fn raise_nofile_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                tracing::debug!(from = ?limit.current, to = ?limit.maximum, "raised the open-file limit");
                return limit.maximum;
            }
            Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
        }
    }
    limit.current
}

/// The connection cap that leaves [`RESERVED_FDS`] descriptors free under `nofile`.
pub fn connection_cap(wanted: usize, nofile: Option<u64>) -> usize {
    let Some(nofile) = nofile else {
        return wanted;
    };
    let fit = usize::try_from(nofile.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
    if fit < wanted {
        tracing::warn!(
            nofile,
            wanted,
            cap = fit.max(1),
            "open-file limit too low for gateway.max_connections; serving fewer at once"
        );
    }
    wanted.min(fit).max(1)
}

/// Serves `app` on `listener` until `stop` fires and every connection has closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    stop: CancellationToken,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let slot = tokio::select! {
            () = stop.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (stream, remote) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors or memory, or the peer gave up before we accepted:
                    // back off briefly rather than spin (as axum::serve does).
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let limits = limits.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            serve_connection(stream, remote, app, &limits, stop).await;
            drop(slot);
        });
    }
    // Every connection holds a slot until it closes: when all are back, all are closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
    Ok(())
}

async fn serve_connection(
    stream: TcpStream,
    remote: SocketAddr,
    app: Router,
    limits: &HttpLimits,
    stop: CancellationToken,
) {
    let idle = limits.idle_timeout;
    let service = tower::ServiceExt::map_request(app, move |req: axum::http::Request<Incoming>| {
        let (mut parts, body) = req.into_parts();
        parts.extensions.insert(ConnectInfo(remote));
        axum::http::Request::from_parts(parts, Body::new(IdleBody::new(body, idle)))
    });
    let io = TokioIo::new(StallGuard::new(stream, idle));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let conn = builder
        .serve_connection(io, TowerToHyperService::new(service))
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%remote, error = %e, "connection ended");
            }
            return;
        }
        () = stop.cancelled() => conn.as_mut().graceful_shutdown(),
    }
    if let Err(e) = conn.await {
        tracing::debug!(%remote, error = %e, "connection ended");
    }
}

fn stalled(what: &str, idle: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("client {what} nothing for {}s", idle.as_secs()),
    )
}

/// A request body that fails when the client sends nothing for `idle` (a handler reading it
/// sees an error, and the connection ends).
struct IdleBody {
    inner: Incoming,
    idle: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl IdleBody {
    fn new(inner: Incoming, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            timer: None,
        }
    }
}

impl HttpBody for IdleBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.timer = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let idle = this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                ready!(timer.as_mut().poll(cx));
                Poll::Ready(Some(Err(stalled("sent", idle).into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A connection whose writes fail once the client has read nothing for `idle` (a full
/// socket buffer that does not drain). Reads are not timed here: hyper reads while a handler
/// computes (to notice a client that hangs up), and that wait is not the client's.
struct StallGuard {
    inner: TcpStream,
    idle: Duration,
    write_timer: Option<Pin<Box<Sleep>>>,
}

impl StallGuard {
    fn new(inner: TcpStream, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            write_timer: None,
        }
    }

    /// Wraps a write-side poll: resets the timer on progress, fails once it expires.
    fn guard<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(r) => {
                self.write_timer = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let idle = self.idle;
                let timer = self
                    .write_timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                ready!(timer.as_mut().poll(cx));
                Poll::Ready(Err(stalled("read", idle)))
            }
        }
    }
}

impl AsyncRead for StallGuard {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for StallGuard {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.guard(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.guard(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.guard(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_leaves_descriptors_for_files() {
        assert_eq!(connection_cap(4096, None), 4096);
        assert_eq!(connection_cap(4096, Some(1 << 20)), 4096);
        assert_eq!(
            connection_cap(4096, Some(2048)),
            2048 - RESERVED_FDS as usize
        );
        assert_eq!(connection_cap(4096, Some(10)), 1);
    }
}
