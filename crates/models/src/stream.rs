//! `/hubmesh/infer/1` streams (frames on the wire are `hub_net`'s): the forwarding side's
//! [`open_job`], and what the serving side (`compute.rs`'s stream server,
//! which accepts streams) hands each job to: the [`JobHandler`] the gateway registers.
//!
//! Why a handler: a forwarded request runs through the gateway's own inference routes (its
//! routing layer, marked as forwarded so it is never forwarded again, and its handlers), so
//! that a job served for a peer answers byte for byte as it would over HTTP. This crate owns
//! the stream (admission: mode, allow-list, at most [`MAX_REMOTE_JOBS`]; frames; cancellation
//! when the forwarder goes away) and knows nothing of HTTP; the gateway turns a request into
//! an answer. The transport is `hub_net`'s handle, used through a few calls only. Imports
//! nothing of this crate.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use hub_net::{P2p, PeerId, Stream, StreamProtocol, write_frame};
use hub_protocol::forward::{ForwardRequest, Frame, INFER_PROTOCOL, ResponseHead};

/// Remote jobs this node runs at once; more are refused (the forwarder tries another node).
pub const MAX_REMOTE_JOBS: usize = 64;
/// How long opening a stream to a peer may take.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Headers a forwarded request carries to the serving node (never credentials).
pub const REQUEST_HEADERS: [&str; 3] = ["content-type", "accept", "x-wait-for-model"];
/// Headers never relayed from a serving node's answer (hop by hop, or recomputed).
pub const HOP_HEADERS: [&str; 4] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
];

/// Opening a job's stream to a peer failed; nothing ran on the peer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error("timed out opening a stream")]
    Timeout,
    #[error("{0}")]
    Open(String),
    #[error("send the request: {0}")]
    Send(#[source] std::io::Error),
}

/// Opens a job stream to `peer` and sends `request`. Until the request is sent nothing ran
/// on the peer, so a stream lost on the way (its connection closed as a second one to the
/// same peer replaced it) is opened again once.
pub async fn open_job(p2p: &P2p, peer: PeerId, request: &Frame) -> Result<Stream, OpenError> {
    let mut control = p2p.streams();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut stream = tokio::time::timeout(
            OPEN_TIMEOUT,
            control.open_stream(peer, StreamProtocol::new(INFER_PROTOCOL)),
        )
        .await
        .map_err(|_| OpenError::Timeout)?
        .map_err(|e| OpenError::Open(e.to_string()))?;
        match write_frame(&mut stream, request).await {
            Ok(()) => return Ok(stream),
            Err(e) if attempt < 2 => {
                tracing::debug!(%peer, error = %e, "stream lost before the request was sent; opening another");
            }
            Err(e) => return Err(OpenError::Send(e)),
        }
    }
}

/// A body chunk could not be produced.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The answer to a forwarded job: its head, then its body as it is produced (an SSE stream
/// chunk by chunk). Dropping the body cancels the job.
pub struct JobAnswer {
    pub head: ResponseHead,
    pub body: BoxStream<'static, Result<Vec<u8>, BodyError>>,
}

impl std::fmt::Debug for JobAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobAnswer")
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}

/// A forwarded job that cannot run at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    #[error("invalid path")]
    InvalidPath,
}

/// Runs the jobs peers forward here (the gateway's inference routes; see the module docs).
pub trait JobHandler: Send + Sync + std::fmt::Debug {
    /// Runs `request` for `peer` as an anonymous caller (its headers are already cut to
    /// [`REQUEST_HEADERS`]).
    fn run(
        &self,
        peer: PeerId,
        request: ForwardRequest,
    ) -> BoxFuture<'static, Result<JobAnswer, JobError>>;
}
