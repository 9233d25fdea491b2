//! The swarm task: listeners, bootstrap dials, connection bookkeeping.

use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::identity::Keypair;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, connection_limits, identify, noise, ping, tcp, yamux};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The identify protocol name; peers of another network are told apart by it.
const PROTOCOL_VERSION: &str = "/hubmesh/0.1.0";

/// How the swarm listens and whom it joins.
#[derive(Debug, Clone)]
pub struct P2pConfig {
    /// Addresses to listen on; port 0 picks a free port.
    pub listen: Vec<Multiaddr>,
    /// Peers dialled at start-up.
    pub bootstrap: Vec<Multiaddr>,
    /// Most established connections in total.
    pub max_connections: u32,
    /// Most established connections with any one peer.
    pub max_connections_per_peer: u32,
    /// Most incoming connections still in their handshake.
    pub max_pending_incoming: u32,
    /// How long `spawn` waits for every listener to report an address.
    pub listen_timeout: Duration,
}

impl Default for P2pConfig {
    fn default() -> Self {
        Self {
            listen: vec!["/ip4/0.0.0.0/tcp/0".parse().expect("static multiaddr")],
            bootstrap: Vec::new(),
            max_connections: 256,
            max_connections_per_peer: 2,
            max_pending_incoming: 64,
            listen_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the swarm could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum P2pError {
    #[error("set up the tcp transport")]
    Transport(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("listen on {addr}")]
    Listen {
        addr: Multiaddr,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("no listen address reported for {addr} within {timeout:?}")]
    ListenTimeout { addr: Multiaddr, timeout: Duration },
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

#[derive(Debug, Default)]
struct Counters {
    connected_peers: AtomicU64,
}

/// A handle on the running swarm. Cheap to clone.
#[derive(Debug, Clone)]
pub struct P2p {
    peer_id: PeerId,
    listen_addrs: Arc<Vec<Multiaddr>>,
    counters: Arc<Counters>,
}

impl P2p {
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The addresses the swarm listened on once it started (without `/p2p/…`).
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen_addrs
    }

    /// Peers with at least one established connection now.
    pub fn connected_peers(&self) -> u64 {
        self.counters.connected_peers.load(Ordering::Relaxed)
    }
}

/// Builds the swarm, binds every listen address, dials the bootstrap peers and spawns the task
/// that drives the swarm until `cancel` fires.
pub async fn spawn(
    key: Keypair,
    config: P2pConfig,
    cancel: CancellationToken,
) -> Result<(P2p, JoinHandle<()>), P2pError> {
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established(Some(config.max_connections))
        .with_max_established_per_peer(Some(config.max_connections_per_peer))
        .with_max_pending_incoming(Some(config.max_pending_incoming));
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| P2pError::Transport(e.into()))?
        .with_behaviour(|key| Behaviour {
            limits: connection_limits::Behaviour::new(limits),
            identify: identify::Behaviour::new(identify::Config::new(
                PROTOCOL_VERSION.into(),
                key.public(),
            )),
            ping: ping::Behaviour::default(),
        })
        .map_err(|e| P2pError::Transport(e.into()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    let peer_id = *swarm.local_peer_id();

    let mut waiting: Vec<(ListenerId, Multiaddr)> = Vec::new();
    for addr in &config.listen {
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|e| P2pError::Listen {
                addr: addr.clone(),
                source: e.into(),
            })?;
        waiting.push((id, addr.clone()));
    }
    let deadline = tokio::time::Instant::now() + config.listen_timeout;
    while let Some((_, first)) = waiting.first() {
        let first = first.clone();
        let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .map_err(|_| P2pError::ListenTimeout {
                addr: first,
                timeout: config.listen_timeout,
            })?;
        match event {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                tracing::debug!(%address, "p2p listening");
                waiting.retain(|(id, _)| *id != listener_id);
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                if let Some((_, addr)) = waiting.iter().find(|(id, _)| *id == listener_id) {
                    let source = match reason {
                        Err(e) => e.into(),
                        Ok(()) => "listener closed".into(),
                    };
                    return Err(P2pError::Listen {
                        addr: addr.clone(),
                        source,
                    });
                }
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                if let Some((_, addr)) = waiting.iter().find(|(id, _)| *id == listener_id) {
                    return Err(P2pError::Listen {
                        addr: addr.clone(),
                        source: error.into(),
                    });
                }
            }
            other => tracing::trace!(?other, "p2p event during start-up"),
        }
    }
    let listen_addrs: Vec<Multiaddr> = swarm.listeners().cloned().collect();

    for addr in &config.bootstrap {
        match swarm.dial(addr.clone()) {
            Ok(()) => tracing::info!(%addr, "dialling bootstrap peer"),
            Err(error) => tracing::warn!(%addr, %error, "cannot dial bootstrap peer"),
        }
    }

    let counters = Arc::new(Counters::default());
    let handle = P2p {
        peer_id,
        listen_addrs: Arc::new(listen_addrs),
        counters: counters.clone(),
    };
    let task = tokio::spawn(drive(swarm, counters, cancel));
    Ok((handle, task))
}

async fn drive(mut swarm: Swarm<Behaviour>, counters: Arc<Counters>, cancel: CancellationToken) {
    let mut connected: HashSet<PeerId> = HashSet::new();
    loop {
        let event = tokio::select! {
            () = cancel.cancelled() => break,
            event = swarm.select_next_some() => event,
        };
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } if connected.insert(peer_id) => {
                tracing::info!(peer = %peer_id, addr = %endpoint.get_remote_address(), "peer connected");
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                cause,
                ..
            } if num_established == 0 && connected.remove(&peer_id) => {
                tracing::info!(peer = %peer_id, cause = ?cause, "peer disconnected");
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::warn!(peer = ?peer_id, %error, "outgoing connection failed");
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "p2p listening");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                tracing::debug!(peer = %peer_id, agent = %info.agent_version, protocol = %info.protocol_version, "identified peer");
            }
            _ => {}
        }
        counters
            .connected_peers
            .store(connected.len() as u64, Ordering::Relaxed);
    }
    tracing::debug!("p2p swarm stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback() -> P2pConfig {
        P2pConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            ..P2pConfig::default()
        }
    }

    #[tokio::test]
    async fn two_swarms_connect_through_bootstrap() {
        let cancel = CancellationToken::new();
        let (a, ta) = spawn(Keypair::generate_ed25519(), loopback(), cancel.clone())
            .await
            .unwrap();
        assert_eq!(a.listen_addrs().len(), 1);
        let boot = crate::with_peer_id(&a.listen_addrs()[0], a.peer_id());
        let (b, tb) = spawn(
            Keypair::generate_ed25519(),
            P2pConfig {
                bootstrap: vec![boot],
                ..loopback()
            },
            cancel.clone(),
        )
        .await
        .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while a.connected_peers() == 0 || b.connected_peers() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "peers never connected"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cancel.cancel();
        ta.await.unwrap();
        tb.await.unwrap();
    }

    #[tokio::test]
    async fn unbindable_address_is_a_clear_error() {
        let config = P2pConfig {
            listen: vec!["/ip4/203.0.113.1/tcp/0".parse().unwrap()],
            listen_timeout: Duration::from_secs(5),
            ..P2pConfig::default()
        };
        let err = spawn(
            Keypair::generate_ed25519(),
            config,
            CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("203.0.113.1"), "{err}");
    }
}
