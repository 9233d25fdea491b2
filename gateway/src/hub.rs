//! The Hub API (`/api/…`) and the resolve endpoint, as `huggingface_hub` uses them: HTTP only,
//! one sub-module per surface. The decisions they share with git, the LFS batch API and the
//! mesh (access, a repo's LFS objects, commit planning, the after-write hook, listing
//! documents) are `hub-core`'s; this module parses requests and renders the Hub's JSON.
//!
//! - [`ids`]: repo ids in paths resolved before routing (case-insensitive; a moved repo's old
//!   id redirects with 307), for the API, resolve, git and LFS;
//! - [`repos`]: create (a Space with its default README), delete, move, settings (visibility);
//! - [`lifecycle`]: duplicate, super-squash, LFS files (list, delete), auth-check;
//! - [`account`]: a namespace's repositories with their storage;
//! - [`collections`]: collections (kept on the node that made them, `hub_core::collections`);
//! - [`likes`]: like, unlike, likers, a user's likes;
//! - [`discussions`]: discussions and pull requests (stored in the repo's own refs by
//!   `hub_core::discussions`, so they replicate with it);
//! - [`gate`]: gated repos' access requests (stored in the repo's refs by `hub_core::gate`);
//! - [`tags`]: the tags in use, by type (`hub_core::tags`);
//! - [`info`]: repo info (`siblings`, `blobs=true`, `revision/{rev}`);
//! - [`tree`]: tree listing (Link-paginated); [`paths_info`]: entries of given paths;
//! - [`history`]: commit history (Link-paginated);
//! - [`refs`]: refs, branches and tags;
//! - [`upload`]: README front-matter validation, preupload, NDJSON commits (read as they
//!   arrive by [`ndjson`]);
//! - [`webhooks`]: webhooks and their delivery worker (`hub_core::webhooks`);
//! - [`resolve`]: `resolve` downloads (HEAD and GET, single ranges, 206/416, LFS content
//!   still arriving from peers).
//!
//! Large files: preupload answers `regular` to clients that upload `lfs` files through Xet
//! (so they send content inline), and the commit decides server-side, with the repo's
//! `.gitattributes`, size and binary test, which files become LFS (`hub_core::commit`).
//!
//! Must not depend on the other surfaces' modules (git, lfs, listing, admin, mesh, inference)
//! except for `git::blob_body`, which streams a large git blob.

mod account;
mod collections;
mod discussions;
mod gate;
mod history;
mod ids;
mod info;
mod lifecycle;
mod likes;
mod ndjson;
mod paths_info;
mod refs;
mod repos;
mod resolve;
mod tags;
mod tree;
mod upload;
mod webhooks;

use crate::AppState;
use crate::access::{access, read_access};
use crate::error::AppError;
use crate::extract::{authenticate, require_auth};
use crate::util::endpoint;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use hub_auth::Principal;
use hub_core::{Granted, Need};
use hub_protocol::repo::{RepoId, RepoType};
use serde::Deserialize;

/// Largest JSON body of the small endpoints.
const MAX_SMALL_BODY: usize = 1024 * 1024;

/// Starts what the Hub API runs in the background (webhook deliveries).
pub(crate) fn start(state: &AppState) {
    webhooks::start_worker(state);
}

pub(crate) use ids::resolve_ids_before;

pub(crate) fn routes() -> Router<AppState> {
    let repo = "/api/{kind}/{ns}/{name}";
    Router::new()
        .route("/api/repos/create", post(repos::create_repo))
        .route(
            "/api/repos/delete",
            axum::routing::delete(repos::delete_repo),
        )
        .route("/api/repos/move", post(repos::move_repo))
        .route("/api/validate-yaml", post(upload::validate_yaml))
        .route("/api/models-tags-by-type", get(tags::models))
        .route("/api/datasets-tags-by-type", get(tags::datasets))
        .route(
            "/api/settings/webhooks",
            get(webhooks::list).post(webhooks::create),
        )
        .route(
            "/api/settings/webhooks/{id}",
            get(webhooks::get)
                .post(webhooks::update)
                .delete(webhooks::delete),
        )
        .route("/api/settings/webhooks/{id}/enable", post(webhooks::enable))
        .route(
            "/api/settings/webhooks/{id}/disable",
            post(webhooks::disable),
        )
        .route("/api/settings/webhooks/{id}/logs", get(webhooks::logs))
        .route(
            "/api/collections",
            get(collections::list).post(collections::create),
        )
        .route(
            "/api/collections/{ns}/{slug}",
            get(collections::get)
                .patch(collections::update)
                .delete(collections::delete),
        )
        .route(
            "/api/collections/{ns}/{slug}/items",
            post(collections::add_item),
        )
        .route(
            "/api/collections/{ns}/{slug}/items/{item}",
            axum::routing::patch(collections::update_item).delete(collections::delete_item),
        )
        .route("/api/settings/repositories", get(account::my_repositories))
        .route(
            "/api/organizations/{org}/settings/repositories",
            get(account::org_repositories),
        )
        .route(
            &format!("{repo}/like"),
            post(likes::like).delete(likes::unlike),
        )
        .route(&format!("{repo}/likers"), get(likes::likers))
        .route("/api/users/{user}/likes", get(likes::user_likes))
        .route(
            &format!("{repo}/user-access-request"),
            get(gate::my_request).post(gate::ask),
        )
        .route(
            &format!("{repo}/user-access-request/handle"),
            post(gate::handle),
        )
        .route(
            &format!("{repo}/user-access-request/grant"),
            post(gate::grant),
        )
        .route(
            &format!("{repo}/user-access-request/{{status}}"),
            get(gate::list),
        )
        .route(&format!("{repo}/auth-check"), get(lifecycle::auth_check))
        .route(
            &format!("{repo}/auth-check/write"),
            get(lifecycle::auth_check_write),
        )
        .route(&format!("{repo}/duplicate"), post(lifecycle::duplicate))
        .route(
            &format!("{repo}/super-squash/{{rev}}"),
            post(lifecycle::super_squash),
        )
        .route(&format!("{repo}/lfs-files"), get(lifecycle::lfs_files))
        .route(
            &format!("{repo}/lfs-files/batch"),
            post(lifecycle::delete_lfs_files),
        )
        .route(
            &format!("{repo}/discussions"),
            get(discussions::list).post(discussions::create),
        )
        .route(
            &format!("{repo}/discussions/{{num}}"),
            get(discussions::get),
        )
        .route(
            &format!("{repo}/discussions/{{num}}/comment"),
            post(discussions::comment),
        )
        .route(
            &format!("{repo}/discussions/{{num}}/title"),
            post(discussions::title),
        )
        .route(
            &format!("{repo}/discussions/{{num}}/status"),
            post(discussions::status),
        )
        .route(
            &format!("{repo}/discussions/{{num}}/merge"),
            post(discussions::merge),
        )
        .route(
            &format!("{repo}/discussions/{{num}}/comment/{{comment}}/edit"),
            post(discussions::edit_comment),
        )
        .route(
            &format!("{repo}/discussions/{{num}}/comment/{{comment}}/hide"),
            post(discussions::hide_comment),
        )
        .route(repo, get(info::repo_info))
        .route(&format!("{repo}/revision/{{rev}}"), get(info::repo_info_at))
        .route(&format!("{repo}/tree/{{rev}}"), get(tree::tree_root))
        .route(
            &format!("{repo}/tree/{{rev}}/{{*path}}"),
            get(tree::tree_path),
        )
        .route(&format!("{repo}/refs"), get(refs::refs))
        .route(
            &format!("{repo}/paths-info/{{rev}}"),
            post(paths_info::paths_info),
        )
        .route(
            &format!("{repo}/settings"),
            axum::routing::put(repos::settings),
        )
        .route(&format!("{repo}/commits/{{rev}}"), get(history::commits))
        .route(
            &format!("{repo}/preupload/{{rev}}"),
            post(upload::preupload),
        )
        .route(
            &format!("{repo}/branch/{{branch}}"),
            post(refs::create_branch).delete(refs::delete_branch),
        )
        .route(
            &format!("{repo}/tag/{{rev}}"),
            post(refs::create_tag).delete(refs::delete_tag),
        )
        .route(
            &format!("{repo}/commit/{{rev}}"),
            post(upload::commit).layer(DefaultBodyLimit::disable()),
        )
        .merge(resolve::routes())
        .layer(DefaultBodyLimit::max(MAX_SMALL_BODY))
}

#[derive(Debug, Deserialize)]
struct RepoPath {
    kind: String,
    ns: String,
    name: String,
}

impl RepoPath {
    fn id(&self) -> Result<RepoId, AppError> {
        let kind: RepoType = self.kind.parse().map_err(|_| AppError::NotFound)?;
        if kind.plural() != self.kind {
            return Err(AppError::NotFound);
        }
        RepoId::new(kind, &self.ns, &self.name).map_err(|_| AppError::RepoNotFound)
    }
}

fn repo_url(headers: &HeaderMap, id: &RepoId) -> String {
    format!(
        "{}/{}{}",
        endpoint(headers),
        id.kind().url_prefix(),
        id.hub_id()
    )
}

/// Checks that the caller may read the repo. Unknown repos, and private repos the caller may
/// not see, are the same `RepoNotFound`; a token that is sent must be valid (401 otherwise).
async fn readable(
    state: &AppState,
    headers: &HeaderMap,
    path: &RepoPath,
) -> Result<RepoId, AppError> {
    let id = path.id()?;
    let principal = authenticate(state, headers).await?;
    read_access(state, principal.as_ref(), &id).await?;
    Ok(id)
}

#[derive(Debug, Deserialize)]
struct RevPath {
    kind: String,
    ns: String,
    name: String,
    rev: String,
}

impl RevPath {
    fn repo(&self) -> RepoPath {
        RepoPath {
            kind: self.kind.clone(),
            ns: self.ns.clone(),
            name: self.name.clone(),
        }
    }
}

/// The repo of `repo`, when the caller may do what `need` says to it (a token is required).
async fn writable(
    state: &AppState,
    headers: &HeaderMap,
    repo: &RepoPath,
    need: Need,
) -> Result<(RepoId, Principal), AppError> {
    let principal = require_auth(state, headers).await?;
    let id = repo.id()?;
    access(state, Some(&principal), &id, need).await?;
    Ok((id, principal))
}

/// As [`writable`], with `hub-core`'s grant (what the changes of `hub_core::repos` take).
async fn granted(
    state: &AppState,
    headers: &HeaderMap,
    repo: &RepoPath,
    need: Need,
) -> Result<Granted, AppError> {
    let principal = require_auth(state, headers).await?;
    let id = repo.id()?;
    access(state, Some(&principal), &id, need).await
}

/// Percent-encodes everything but unreserved characters (and `/` when `keep_slash`).
fn percent_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
