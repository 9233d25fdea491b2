//! The git-lfs batch API, as `huggingface_hub` (uploads) and the `git lfs` binary (uploads and
//! downloads) use it.
//!
//! `POST {repo}.git/info/lfs/objects/batch` answers, per object, with a transfer URL on this
//! node: `PUT /lfs-objects/{oid}` to upload, `GET /lfs-objects/{oid}` to download. Those
//! transfers carry no `Authorization` (huggingface_hub drops it on the PUT; git-lfs sends none
//! with `authenticated: true`), so the batch call, which is authorised, signs each URL: a
//! keyed BLAKE3 MAC over (operation, oid, size, expiry) with a key that exists only in this
//! process's memory. A URL is good for one object, one operation and one hour, and no longer
//! than the process lives (a client that retries after a restart asks the batch API again).
//!
//! Uploads stream into `hub-store`; the object is accepted only if its SHA-256 and size are
//! the ones signed. `verify` checks that the store has the object.
//!
//! Layout: [`batch`] answers the batch, verify and locks endpoints, [`transfer`] the signed
//! uploads and downloads, and [`signed`] makes and checks the transfer URLs. Whether an object
//! belongs to a repository, and adopting an upload, are `hub-core`'s (`hub_core::lfs_objects`);
//! errors leave in git-lfs's shape ([`AppError::into_lfs_response`]).

mod batch;
mod signed;
mod transfer;

use crate::AppState;
use crate::error::AppError;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use hub_protocol::repo::{RepoId, RepoType};
use serde::Deserialize;

pub(crate) fn routes() -> Router<AppState> {
    let mut router = Router::new();
    for kind in RepoType::ALL {
        let base = format!("/{}{{ns}}/{{name}}/info/lfs", kind.url_prefix());
        router = router
            .route(
                &format!("{base}/objects/batch"),
                post(
                    move |state: State<AppState>,
                          headers: HeaderMap,
                          Path(p): Path<RepoPathParams>,
                          body: Bytes| {
                        batch::batch(state, headers, kind, p, body)
                    },
                ),
            )
            .route(
                &format!("{base}/objects/verify"),
                post(
                    move |state: State<AppState>,
                          headers: HeaderMap,
                          Path(p): Path<RepoPathParams>,
                          body: Bytes| {
                        batch::verify(state, headers, kind, p, body)
                    },
                ),
            )
            .route(&format!("{base}/locks/verify"), post(batch::locks_verify));
    }
    router.route(
        "/lfs-objects/{oid}",
        get(transfer::download).put(transfer::upload),
    )
}

#[derive(Debug, Deserialize)]
struct RepoPathParams {
    ns: String,
    name: String,
}

fn repo_id(kind: RepoType, ns: &str, name: &str) -> Result<RepoId, AppError> {
    let name = name.strip_suffix(".git").unwrap_or(name);
    RepoId::new(kind, ns, name).map_err(|_| AppError::RepoNotFound)
}
