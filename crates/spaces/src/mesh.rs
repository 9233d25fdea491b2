//! Spaces on the mesh: where this gateway placed the Spaces it does not run
//! ([`Placements`]), the `/hubmesh/space/1` streams to the peers that run them
//! ([`open_tunnel`]), and the server that accepts such streams from peers
//! ([`spawn_tunnel_server`]).
//!
//! A gateway runs a Space itself when its mode allows and it has a free slot
//! ([`Spaces::runs_here`]); otherwise it asks hub-compute's `place_space` for the peers whose
//! capacity adverts offer a free Space slot, and opens a tunnel to the first that accepts.
//! Each request to the app (and each runtime query) is one stream: an opening
//! [`Frame::Request`] naming the Space and its commit, the peer's [`Frame::Head`] (accepted)
//! or [`Frame::Error`] (refused), then one HTTP/1.1 exchange carried on the stream
//! (hub-protocol's `forward` module documents the protocol). The peer fetches the Space's
//! repo over the mesh (replication) before it accepts, and then serves the request with its
//! own app route, which builds, starts or wakes the Space as for a local visitor.
//!
//! The peer that accepted is remembered per Space, so requests keep going to the instance
//! that runs it. When a tunnel cannot be opened or is refused, that peer is marked down for
//! [`DOWN_FOR`] and the Space is placed on the next candidate: a Space whose node died or
//! withdrew is re-placed by the next request or runtime query, through the same gateway URL.
//! Nothing of the app's state moves with it: a re-placed Space starts from its repo, as a
//! Hub Space without persistent storage restarts from its repo.
//!
//! Who spawns whom: the node calls [`spawn_tunnel_server`] (mode `mesh` only), which accepts
//! streams until the swarm stops; each accepted stream runs as a task of its own, at most
//! [`MAX_TUNNELS`] at once, handed to the gateway's [`TunnelHandler`].

use crate::{Spaces, Stage};
use futures::StreamExt;
use futures::future::BoxFuture;
use hub_net::{P2p, PeerId, Stream, StreamProtocol, read_frame, write_frame};
use hub_protocol::capacity::Mode;
use hub_protocol::forward::{
    ForwardRequest, Frame, ResponseHead, SPACE_COMMIT_HEADER, SPACE_PROTOCOL,
};
use hub_protocol::repo::{RepoId, RepoType};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// How long opening a stream to a peer may take.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a peer may take to accept a tunnel (it may fetch the Space's repo first).
pub const ACCEPT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the opening request may take to arrive once a peer opened a stream.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Tunnels this node serves at once (a gradio client holds a few open); more are refused.
pub const MAX_TUNNELS: usize = 256;
/// How long a peer that failed a tunnel is left out of placements.
pub const DOWN_FOR: Duration = Duration::from_secs(60);
/// Most Spaces a gateway remembers a placement for.
const MAX_PLACEMENTS: usize = 4096;

/// A tunnel to a peer could not be opened; nothing was sent to the app.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TunnelError {
    #[error("timed out opening a stream")]
    Timeout,
    #[error("open a stream: {0}")]
    Open(String),
    #[error("send the opening request: {0}")]
    Send(#[source] std::io::Error),
    #[error("refused: {0}")]
    Refused(String),
    #[error("no answer: {0}")]
    NoAnswer(String),
}

/// The opening request of a tunnel to `space` at `commit`.
fn hello(space: &RepoId, commit: Option<&str>) -> Frame {
    Frame::Request(ForwardRequest {
        path: format!("/spaces/{}", space.hub_id()),
        headers: commit
            .map(|c| vec![(SPACE_COMMIT_HEADER.to_owned(), c.to_owned())])
            .unwrap_or_default(),
        body: Vec::new(),
    })
}

/// The Space and commit an opening request names; `None` for anything else.
fn parse_hello(frame: Frame) -> Option<(RepoId, Option<String>)> {
    let Frame::Request(request) = frame else {
        return None;
    };
    let name = request.path.strip_prefix("/spaces/")?;
    let id = RepoId::parse(RepoType::Space, name).ok()?;
    let commit = request
        .headers
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(SPACE_COMMIT_HEADER))
        .map(|(_, v)| v)
        .filter(|c| c.len() == 40 && c.bytes().all(|b| b.is_ascii_hexdigit()));
    Some((id, commit))
}

/// Opens a tunnel to `space` on `peer`: the stream once the peer accepted, ready for one
/// HTTP/1.1 exchange.
pub async fn open_tunnel(
    p2p: &P2p,
    peer: PeerId,
    space: &RepoId,
    commit: Option<&str>,
) -> Result<Stream, TunnelError> {
    let mut stream = tokio::time::timeout(
        OPEN_TIMEOUT,
        p2p.streams()
            .open_stream(peer, StreamProtocol::new(SPACE_PROTOCOL)),
    )
    .await
    .map_err(|_| TunnelError::Timeout)?
    .map_err(|e| TunnelError::Open(e.to_string()))?;
    write_frame(&mut stream, &hello(space, commit))
        .await
        .map_err(TunnelError::Send)?;
    match tokio::time::timeout(ACCEPT_TIMEOUT, read_frame(&mut stream)).await {
        Ok(Ok(Frame::Head(head))) if head.status == 200 => Ok(stream),
        Ok(Ok(Frame::Error(why))) => Err(TunnelError::Refused(why)),
        Ok(Ok(_)) => Err(TunnelError::NoAnswer("unexpected frame".into())),
        Ok(Err(e)) => Err(TunnelError::NoAnswer(e.to_string())),
        Err(_) => Err(TunnelError::Timeout),
    }
}

/// Where this gateway placed the Spaces it does not run, and the peers that failed lately.
#[derive(Debug, Default)]
pub struct Placements {
    inner: Mutex<PlacementsInner>,
}

#[derive(Debug, Default)]
struct PlacementsInner {
    placed: HashMap<RepoId, PeerId>,
    down: HashMap<PeerId, Instant>,
}

impl Placements {
    fn inner(&self) -> std::sync::MutexGuard<'_, PlacementsInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The peer `space` runs on, if it was placed and that peer has not failed since.
    pub fn get(&self, space: &RepoId) -> Option<PeerId> {
        self.inner().placed.get(space).copied()
    }

    /// `space` runs on `peer` (it accepted a tunnel).
    pub fn placed(&self, space: &RepoId, peer: PeerId) {
        let mut inner = self.inner();
        if inner.placed.len() >= MAX_PLACEMENTS && !inner.placed.contains_key(space) {
            // Forget an arbitrary one: its next request places it again.
            if let Some(any) = inner.placed.keys().next().cloned() {
                inner.placed.remove(&any);
            }
        }
        inner.placed.insert(space.clone(), peer);
        inner.down.remove(&peer);
    }

    /// A tunnel to `peer` for `space` failed: the Space is placed anew, and the peer is left
    /// out for [`DOWN_FOR`].
    pub fn failed(&self, space: &RepoId, peer: PeerId) {
        let mut inner = self.inner();
        if inner.placed.get(space) == Some(&peer) {
            inner.placed.remove(space);
        }
        inner.down.insert(peer, Instant::now());
    }

    /// The peers that failed within [`DOWN_FOR`].
    pub fn down(&self) -> Vec<PeerId> {
        let mut inner = self.inner();
        inner.down.retain(|_, at| at.elapsed() < DOWN_FOR);
        inner.down.keys().copied().collect()
    }
}

/// Serves the tunnels a peer opened to a Space that runs here (the gateway's app route).
pub trait TunnelHandler: Send + Sync + std::fmt::Debug {
    /// Makes ready to serve `space` at `commit` for `peer`: its repo fetched from the mesh
    /// when this node lacks it. An error refuses the tunnel, with its message.
    fn prepare(
        &self,
        peer: PeerId,
        space: RepoId,
        commit: Option<String>,
    ) -> BoxFuture<'static, Result<(), String>>;

    /// Serves the HTTP/1.1 exchange that follows the accepting head on `stream`.
    fn serve(&self, peer: PeerId, space: RepoId, stream: Stream) -> BoxFuture<'static, ()>;
}

/// Accepts `/hubmesh/space/1` streams until the swarm stops, when `spaces` runs in mode
/// `mesh`: from peers `allow` admits, for a Space that runs here already or fits a free slot.
pub fn spawn_tunnel_server(
    p2p: P2p,
    spaces: Spaces,
    allow: Arc<dyn Fn(&PeerId) -> bool + Send + Sync>,
    handler: Arc<dyn TunnelHandler>,
) {
    if spaces.mode() != Mode::Mesh {
        return;
    }
    let mut incoming = match p2p.streams().accept(StreamProtocol::new(SPACE_PROTOCOL)) {
        Ok(incoming) => incoming,
        Err(error) => {
            tracing::warn!(%error, "cannot accept Space tunnels");
            return;
        }
    };
    let permits = Arc::new(Semaphore::new(MAX_TUNNELS));
    tokio::spawn(async move {
        while let Some((peer, stream)) = incoming.next().await {
            let permit = permits.clone().try_acquire_owned().ok();
            let (spaces, allow, handler) = (spaces.clone(), allow.clone(), handler.clone());
            tokio::spawn(async move {
                accept(peer, stream, permit.is_some(), &spaces, &*allow, handler).await;
                drop(permit);
            });
        }
    });
}

async fn accept(
    peer: PeerId,
    mut stream: Stream,
    has_room: bool,
    spaces: &Spaces,
    allow: &(dyn Fn(&PeerId) -> bool + Send + Sync),
    handler: Arc<dyn TunnelHandler>,
) {
    let opening = tokio::time::timeout(HELLO_TIMEOUT, read_frame(&mut stream)).await;
    let Some((space, commit)) = opening.ok().and_then(Result::ok).and_then(parse_hello) else {
        tracing::debug!(%peer, "bad or missing Space tunnel request");
        let _ = write_frame(&mut stream, &Frame::Error("expected a Space".into())).await;
        return;
    };
    let refused = if !allow(&peer) {
        Some("this node does not run Spaces for this peer".to_owned())
    } else if !has_room {
        Some("too many Space tunnels open".to_owned())
    } else if !spaces.admits(&space) {
        Some("no free Space slot".to_owned())
    } else {
        handler.prepare(peer, space.clone(), commit).await.err()
    };
    if let Some(why) = refused {
        tracing::info!(%peer, space = %space.hub_id(), %why, "Space tunnel refused");
        let _ = write_frame(&mut stream, &Frame::Error(why)).await;
        return;
    }
    let head = Frame::Head(ResponseHead {
        status: 200,
        headers: Vec::new(),
    });
    if write_frame(&mut stream, &head).await.is_err() {
        return;
    }
    tracing::debug!(%peer, space = %space.hub_id(), "serving a Space tunnel");
    handler.serve(peer, space, stream).await;
}

impl Spaces {
    /// This node's Spaces mode.
    pub fn mode(&self) -> Mode {
        self.shared.config.mode
    }

    /// Spaces that hold a slot: building, starting or serving.
    fn active(&self) -> Vec<RepoId> {
        let spaces = self.spaces.lock().unwrap_or_else(PoisonError::into_inner);
        spaces
            .iter()
            .filter(|(_, s)| {
                let stage = s.status().stage;
                stage.serving() || stage.on_the_way()
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn free_slots(&self) -> usize {
        usize::from(self.shared.config.slots).saturating_sub(self.active().len())
    }

    /// Whether this node's gateway runs `space` itself: its mode is not `off`, and it knows
    /// the Space already (whatever its stage) or has a free slot for it.
    pub fn runs_here(&self, space: &RepoId) -> bool {
        if self.mode() == Mode::Off {
            return false;
        }
        let known = self
            .spaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(space);
        known || self.free_slots() > 0
    }

    /// Whether a peer's tunnel to `space` is accepted: mode `mesh`, and the Space holds a
    /// slot here already or a slot is free.
    pub fn admits(&self, space: &RepoId) -> bool {
        if self.mode() != Mode::Mesh {
            return false;
        }
        let stage = self
            .spaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(space)
            .map(|s| s.status().stage);
        let holds_slot =
            stage.is_some_and(|s| s.serving() || s.on_the_way() || s == Stage::Sleeping);
        holds_slot || self.free_slots() > 0
    }

    /// What this node offers for Spaces, for its capacity advert.
    pub fn slots(&self) -> hub_protocol::capacity::SpaceSlots {
        let (total, available) = memory();
        let config = &self.shared.config;
        hub_protocol::capacity::SpaceSlots {
            mode: config.mode,
            cpus: std::thread::available_parallelism()
                .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
            memory_total_bytes: total,
            memory_free_bytes: available.min(total),
            memory_per_slot_bytes: config.sandbox.memory_bytes,
            slots_total: config.slots,
            slots_free: u16::try_from(self.free_slots()).unwrap_or(u16::MAX),
            hardware: "cpu-basic".into(),
        }
    }
}

/// The machine's memory and what is available now (`/proc/meminfo`); zeros when unknown.
fn memory() -> (u64, u64) {
    let Ok(info) = std::fs::read_to_string("/proc/meminfo") else {
        return (0, 0);
    };
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kib| kib.saturating_mul(1024))
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_requests_round_trip_and_garbage_is_refused() {
        let id = RepoId::parse(RepoType::Space, "alice/echo").unwrap();
        let commit = "ab".repeat(20);
        assert_eq!(
            parse_hello(hello(&id, Some(&commit))),
            Some((id.clone(), Some(commit)))
        );
        assert_eq!(parse_hello(hello(&id, None)), Some((id, None)));
        assert_eq!(parse_hello(Frame::End), None);
        let bad = Frame::Request(ForwardRequest {
            path: "/api/models".into(),
            headers: vec![(SPACE_COMMIT_HEADER.into(), "zz".into())],
            body: Vec::new(),
        });
        assert_eq!(parse_hello(bad), None);
        let odd_commit = Frame::Request(ForwardRequest {
            path: "/spaces/alice/echo".into(),
            headers: vec![(SPACE_COMMIT_HEADER.into(), "../../etc".into())],
            body: Vec::new(),
        });
        assert!(matches!(parse_hello(odd_commit), Some((_, None))));
    }

    #[test]
    fn a_failed_peer_loses_its_placements_and_is_left_out() {
        let placements = Placements::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let id = RepoId::parse(RepoType::Space, "alice/echo").unwrap();
        placements.placed(&id, a);
        assert_eq!(placements.get(&id), Some(a));
        placements.failed(&id, a);
        assert_eq!(placements.get(&id), None);
        assert_eq!(placements.down(), vec![a]);
        // Placing anew on the other peer; the first stays down.
        placements.placed(&id, b);
        assert_eq!(placements.get(&id), Some(b));
        assert_eq!(placements.down(), vec![a]);
        // A peer that accepts again is up again.
        placements.placed(&id, a);
        assert!(placements.down().is_empty());
    }

    #[test]
    fn memory_is_read_or_zero() {
        let (total, available) = memory();
        assert!(available <= total || total == 0);
    }
}
