//! git smart HTTP: `git clone`, `fetch`, `pull` and `push` against the same bare repositories
//! the Hub API writes, at `/{ns}/{name}[.git]` (models), `/datasets/…` and `/spaces/…`.
//!
//! What is ours and what is delegated (see `docs/adr/0003-git-smart-http.md`):
//! - **Every decision is ours**, and none is made here: who may read or write (hub-core's
//!   `Hub::access`, as for the API; private repos are 404 to those who may not see them, and
//!   an anonymous caller is challenged with `401 WWW-Authenticate: Basic`), which ref updates
//!   are allowed (`hub_core::push`), and what a pushed tree may contain (hub-repo's
//!   `Quarantine::check`).
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
//!
//! Layout: this module routes, checks access and renders errors the way git reads them;
//! [`fetch`] runs `git http-backend` for upload-pack, [`push`] is receive-pack, [`blob`]
//! streams large blobs for `resolve`, [`process`] holds the plumbing every git process shares
//! (body pumps, idle supervision), [`pkt`] the pkt-line codec and [`limits`] the bounds.

mod blob;
mod fetch;
mod limits;
mod pkt;
mod process;
mod push;
#[cfg(test)]
mod tests;

pub(crate) use blob::blob_body;
pub(crate) use limits::Limiter;
pub use limits::{
    DEFAULT_GIT_IDLE_TIMEOUT, DEFAULT_MAX_GIT_PER_CLIENT, DEFAULT_MAX_GIT_PROCESSES, GitLimits,
};

use crate::AppState;
use crate::error::AppError;
use crate::extract::authenticate;
use axum::Extension;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use http::{HeaderMap, StatusCode, header};
use hub_auth::{Access, Principal};
use hub_core::{AccessError, Need};
use hub_protocol::repo::{RepoId, RepoType};
use limits::{Refused, Slot};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};

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
                .unwrap_or_else(AppError::into_git_response)
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
            fetch::upload_pack(state, kind, ns, name, client_ip(peer), headers, body)
                .await
                .unwrap_or_else(AppError::into_git_response)
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
            push::receive_pack(state, kind, ns, name, client_ip(peer), headers, body)
                .await
                .unwrap_or_else(AppError::into_git_response)
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
        // Cloning a gated repo needs a grant, as downloading its files does.
        Access::Read => Need::Download,
        Access::Write => Need::Write,
    };
    let meta = match state.hub().access(principal.as_ref(), &id, need).await {
        Ok(granted) => granted.meta,
        Err(AccessError::NotFound) if principal.is_none() => return Err(anonymous_refusal()),
        Err(e) => return Err(e.into()),
    };
    crate::access::audit(state, principal.as_ref(), &id, need);
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
            fetch::http_backend(
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
            push::advertise(&state, &allowed.id).await
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
