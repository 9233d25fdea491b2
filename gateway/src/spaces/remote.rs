//! Spaces this gateway does not run: placed on a peer and reached over `/hubmesh/space/1`
//! tunnels (hub-spaces' `mesh` module documents placement and the protocol).
//!
//! The forwarding side: [`runs_here`] says whether this node runs a Space itself; otherwise
//! [`tunnel`] opens a stream to the peer it was placed on, or places it (hub-compute's
//! `place_space` over the live capacity adverts and RTTs, trying the candidates in order).
//! The app's requests then go over the stream with the same HTTP/1.1 proxy as to a local app
//! (`proxy::forward`), and `GET …/runtime` is asked of the peer ([`runtime`]), which starts
//! the Space there; the answer names the node that runs it (`node`).
//!
//! The serving side: [`space_tunnels`] is the handler the node passes to
//! `hub_spaces::mesh::spawn_tunnel_server`. It fetches the Space's repo over the mesh before
//! accepting, then serves the exchange with a router of the app and runtime routes only,
//! marked [`Forwarded`] so the request runs here (never placed again) and only for the Space
//! the tunnel named. The peer's requests arrive without credentials (the forwarding gateway
//! checked the visitor's access and never passes tokens on), so only public Spaces run on
//! peers.

use super::{SpacePath, runtime_of};
use crate::AppState;
use crate::error::AppError;
use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::routing::{any, get};
use futures::future::BoxFuture;
use futures::{AsyncRead, AsyncWrite};
use http::{HeaderValue, StatusCode, header};
use hub_net::{PeerId, Stream};
use hub_protocol::repo::RepoId;
use hub_protocol::signed::PublicKey;
use hub_spaces::mesh::{TunnelHandler, open_tunnel};
use hyper_util::service::TowerToHyperService;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Peers tried for one request before it fails.
const MAX_CANDIDATES: usize = 3;
/// Largest runtime answer read from a peer.
const MAX_RUNTIME: usize = 1 << 20;
/// How long a peer may take to fetch a Space's repo before it accepts a tunnel.
const FETCH_WAIT: Duration = Duration::from_secs(45);
/// Names the node that ran a request.
pub(crate) const SERVED_BY: &str = "x-hubmesh-served-by";

/// Marks a request a peer sent through a tunnel to `space`: it runs here.
#[derive(Debug, Clone)]
pub(crate) struct Forwarded {
    pub(crate) space: RepoId,
}

/// Whether this node's gateway runs `id` itself (hub-spaces' `Spaces::runs_here`).
pub(crate) fn runs_here(state: &AppState, id: &RepoId) -> bool {
    state.spaces().is_some_and(|s| s.runs_here(id))
}

/// The commit of `id`'s main branch here, for the opening request.
async fn commit_of(state: &AppState, id: &RepoId) -> Option<String> {
    let (repos, id) = (state.repos().clone(), id.clone());
    tokio::task::spawn_blocking(move || repos.resolve(&id, "main").ok())
        .await
        .ok()
        .flatten()
}

/// The peers that may run a Space, best first, leaving out `avoid` and the ones down lately.
fn candidates(state: &AppState, avoid: &[PeerId]) -> Vec<PeerId> {
    let Some(compute) = state.compute() else {
        return Vec::new();
    };
    let key = |p: &PeerId| hub_net::key_of_peer_id(p).map(PublicKey);
    let rtts: HashMap<PublicKey, Duration> = state
        .p2p()
        .peers()
        .into_iter()
        .filter_map(|(peer, info)| Some((key(&peer)?, info.rtt?)))
        .collect();
    let down = state.space_placements().down();
    let avoid: Vec<PublicKey> = avoid.iter().chain(&down).filter_map(key).collect();
    let now = hub_models::unix_now();
    let order = {
        let table = compute.table();
        hub_compute::place_space(&compute.me(), table.live(now), &rtts, &avoid, now)
    };
    order
        .into_iter()
        .filter_map(|k| hub_net::peer_id_of_key(&k.0))
        .collect()
}

/// A tunnel to the peer that runs `id`: the one it was placed on, or the first candidate
/// that accepts it (which it is then placed on). Peers that fail are marked down.
pub(crate) async fn tunnel(state: &AppState, id: &RepoId) -> Result<(PeerId, Stream), AppError> {
    let placements = state.space_placements();
    let commit = commit_of(state, id).await;
    let mut tried = Vec::new();
    let mut last_error = None;
    let placed = placements.get(id);
    let mut queue: Vec<PeerId> = placed.into_iter().collect();
    let mut planned = false;
    while tried.len() < MAX_CANDIDATES {
        let peer = match queue.pop() {
            Some(peer) => peer,
            None if !planned => {
                planned = true;
                queue = candidates(state, &tried);
                queue.reverse();
                match queue.pop() {
                    Some(peer) => peer,
                    None => break,
                }
            }
            None => break,
        };
        tried.push(peer);
        match open_tunnel(state.p2p(), peer, id, commit.as_deref()).await {
            Ok(stream) => {
                if placed != Some(peer) {
                    tracing::info!(space = %id.hub_id(), %peer, "Space placed on a peer");
                }
                placements.placed(id, peer);
                return Ok((peer, stream));
            }
            Err(error) => {
                tracing::info!(space = %id.hub_id(), %peer, %error, "Space tunnel failed; placing elsewhere");
                placements.failed(id, peer);
                last_error = Some(error.to_string());
            }
        }
    }
    Err(AppError::Coded {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "SpaceNotPlaced",
        message: match last_error {
            Some(why) => format!(
                "no node of the mesh runs Space {} now (last peer tried: {why}); retry shortly",
                id.hub_id()
            ),
            None => format!(
                "this node does not run Space {} and no peer advertises a free Space slot; retry shortly",
                id.hub_id()
            ),
        },
    })
}

/// `GET …/runtime` of a Space that runs on a peer: the peer's answer, plus `node`.
pub(crate) async fn runtime(state: &AppState, id: &RepoId) -> Result<Json<Value>, AppError> {
    let (peer, stream) = tunnel(state, id).await?;
    let peer_down = |e: &dyn std::fmt::Display| {
        tracing::info!(%peer, error = %e, "runtime query to a peer failed");
        AppError::Coded {
            status: StatusCode::BAD_GATEWAY,
            code: "SpacePeerError",
            message: "the node running the Space did not answer".into(),
        }
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(FuturesIo(stream))
        .await
        .map_err(|e| peer_down(&e))?;
    tokio::spawn(async move {
        if let Err(error) = conn.await {
            tracing::debug!(%error, "runtime tunnel ended");
        }
    });
    let request = http::Request::get(format!("/api/spaces/{}/runtime", id.hub_id()))
        .header(header::HOST, "hubmesh-peer")
        .body(Body::empty())
        .map_err(AppError::internal)?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| peer_down(&e))?;
    let status = response.status();
    let bytes = axum::body::to_bytes(Body::new(response.into_body()), MAX_RUNTIME)
        .await
        .map_err(|e| peer_down(&e))?;
    if !status.is_success() {
        state.space_placements().failed(id, peer);
        return Err(peer_down(&format!("status {status}")));
    }
    let mut value: Value = serde_json::from_slice(&bytes).map_err(|e| peer_down(&e))?;
    value["node"] = json!(peer.to_string());
    Ok(Json(value))
}

/// The handler of peers' tunnels to Spaces that run here; the node passes it to
/// `hub_spaces::mesh::spawn_tunnel_server`.
pub fn space_tunnels(state: &AppState) -> Arc<dyn TunnelHandler> {
    Arc::new(Tunnels {
        state: state.clone(),
    })
}

#[derive(Debug)]
struct Tunnels {
    state: AppState,
}

impl TunnelHandler for Tunnels {
    fn prepare(
        &self,
        peer: PeerId,
        space: RepoId,
        commit: Option<String>,
    ) -> BoxFuture<'static, Result<(), String>> {
        let state = self.state.clone();
        Box::pin(async move {
            let mesh = state.hub().mesh().clone();
            mesh.ensure_repo(&space, tokio::time::Instant::now() + FETCH_WAIT)
                .await
                .map_err(|e| format!("the Space's repo is not here: {e}"))?;
            let here = commit_of(&state, &space).await;
            if commit.is_some() && here != commit {
                // Replication brings the newer commit; the Space rebuilds when it lands.
                tracing::info!(%peer, space = %space.hub_id(), ?here, wanted = ?commit, "Space commit differs from the forwarding gateway's");
            }
            Ok(())
        })
    }

    fn serve(&self, peer: PeerId, space: RepoId, stream: Stream) -> BoxFuture<'static, ()> {
        let router = tunnel_routes()
            .layer(axum::Extension(Forwarded { space }))
            .with_state(self.state.clone());
        Box::pin(async move {
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(FuturesIo(stream), TowerToHyperService::new(router))
                .with_upgrades()
                .await;
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "Space tunnel ended");
            }
        })
    }
}

/// What a tunnel may reach: the app and the runtime of the Space it names.
fn tunnel_routes() -> Router<AppState> {
    Router::new()
        .route("/api/spaces/{ns}/{name}/runtime", get(forwarded_runtime))
        .route("/spaces/{ns}/{name}/app", any(super::proxy::app_root))
        .route("/spaces/{ns}/{name}/app/", any(super::proxy::app_root))
        .route("/spaces/{ns}/{name}/app/{*rest}", any(super::proxy::app))
}

async fn forwarded_runtime(
    State(state): State<AppState>,
    Path(path): Path<SpacePath>,
    axum::Extension(forwarded): axum::Extension<Forwarded>,
) -> Result<Json<Value>, AppError> {
    let id = path.id()?;
    if id != forwarded.space {
        return Err(AppError::NotFound);
    }
    let mut json = runtime_of(&state, &id).await?;
    json.0["node"] = json!(state.p2p().peer_id().to_string());
    Ok(json)
}

/// Adds [`SERVED_BY`] to a response relayed from `peer`.
pub(crate) fn served_by(response: &mut axum::response::Response, peer: &PeerId) {
    if let Ok(v) = HeaderValue::from_str(&peer.to_string()) {
        response.headers_mut().insert(SERVED_BY, v);
    }
}

/// A p2p stream (futures' `AsyncRead`/`AsyncWrite`) as hyper's IO.
pub(crate) struct FuturesIo<T>(pub(crate) T);

/// Bytes read from the stream per call.
const READ_CHUNK: usize = 16 * 1024;

impl<T: AsyncRead + Unpin> hyper::rt::Read for FuturesIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let mut chunk = [0u8; READ_CHUNK];
        let n = buf.remaining().min(READ_CHUNK);
        match Pin::new(&mut self.0).poll_read(cx, &mut chunk[..n]) {
            Poll::Ready(Ok(read)) => {
                buf.put_slice(&chunk[..read]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> hyper::rt::Write for FuturesIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}
