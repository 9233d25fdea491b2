//! In-process test fixture shared by the router tests: a full [`AppState`] on a temporary data
//! directory (accounts with an admin, repositories, store, search index, a loopback swarm) and
//! a helper to send requests through the router with `tower::ServiceExt::oneshot`.

use crate::{AppState, GatewayConfig, Parts, router};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use http::{HeaderMap, StatusCode, header};
use hub_auth::AuthStore;
use hub_net::{CancellationToken, Keypair, P2pConfig};
use std::sync::Arc;
use tower::ServiceExt;

pub(crate) struct Fixture {
    /// Keeps the data directory alive as long as the fixture.
    _dir: tempfile::TempDir,
    pub app: Router,
    pub state: AppState,
    /// The admin's write token.
    pub admin: String,
    pub peer_id: String,
    cancel: CancellationToken,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

pub(crate) async fn fixture() -> Fixture {
    fixture_with(GatewayConfig::default()).await
}

pub(crate) async fn fixture_with(config: GatewayConfig) -> Fixture {
    fixture_on(config, None, hub_store::StoreConfig::default()).await
}

/// A fixture whose chunk store runs with `store` (e.g. a reserved headroom no disk has).
pub(crate) async fn fixture_with_store(store: hub_store::StoreConfig) -> Fixture {
    fixture_on(GatewayConfig::default(), None, store).await
}

/// A fixture whose Hub rules see `mesh` (an in-memory [`hub_core::FakeMesh`]) instead of the
/// real swarm.
pub(crate) async fn fixture_with_mesh(mesh: Arc<dyn hub_core::MeshPort>) -> Fixture {
    fixture_on(
        GatewayConfig::default(),
        Some(mesh),
        hub_store::StoreConfig::default(),
    )
    .await
}

async fn fixture_on(
    config: GatewayConfig,
    mesh: Option<Arc<dyn hub_core::MeshPort>>,
    store: hub_store::StoreConfig,
) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let auth = Arc::new(AuthStore::open(dir.path().join("auth.redb")).unwrap());
    let mut admin = String::new();
    auth.bootstrap_admin(&hub_protocol::name::Name::new("admin").unwrap(), |s| {
        admin = s.expose().to_owned();
        Ok(())
    })
    .unwrap();
    let cancel = CancellationToken::new();
    let p2p_config = P2pConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        ..P2pConfig::default()
    };
    let (p2p, _task) = hub_net::spawn(Keypair::generate_ed25519(), p2p_config, cancel.clone())
        .await
        .unwrap();
    let peer_id = p2p.peer_id().to_string();
    let parts = Parts {
        auth,
        repos: Arc::new(hub_repo::Repos::open(dir.path().join("repos")).unwrap()),
        store: hub_store::Store::open_with_config(dir.path().join("store"), store).unwrap(),
        search: Arc::new(hub_search::SearchIndex::open(&dir.path().join("search")).unwrap()),
        p2p,
        replication: None,
        config,
    };
    let state = match mesh {
        Some(mesh) => AppState::with_mesh(parts, mesh),
        None => AppState::new(parts),
    };
    Fixture {
        _dir: dir,
        app: router(state.clone()),
        state,
        admin,
        peer_id,
        cancel,
    }
}

/// A response, read whole.
pub(crate) struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends one request through the router.
pub(crate) async fn send(
    app: &Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
    body: impl Into<Body>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let resp = app
        .clone()
        .oneshot(req.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), 64 << 20)
        .await
        .unwrap();
    Reply {
        status,
        headers,
        body,
    }
}
