//! `…/settings`: what the Hub's settings page offers that this node supports, for those who
//! may change the repo's settings (its admins): visibility, gated access (off, automatic or
//! manual approval), rename or move, and delete (the repo's id typed again to confirm).
//! Discussions cannot be turned off on this node, so the page does not offer it.
//!
//! Every form posts here with the session's CSRF token and passes the `Origin` check
//! ([`super::session::check_post`]); the rules are `hub-core`'s, as for the API
//! (`set_private`, `set_gated`, `move_repo`, `delete_repo`), so a viewer who may not change
//! the settings gets the same refusal as from the API.

use super::forms::{form, see_other};
use super::render::ctx;
use super::render::{PageError, page};
use super::repo::{RepoParams, open, open_form};
use super::session::{Viewer, check_post};
use crate::AppState;
use crate::error::AppError;
use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hub_core::Change;
use hub_core::gate::GateMode;
use hub_protocol::repo::{RepoId, RepoType};

/// `GET …/settings`: the forms, for those who may change the settings; others are refused
/// as by the API (a 403, or the 404 of a repo they may not read).
pub(crate) async fn settings_form(
    State(state): State<AppState>,
    Extension(kind): Extension<RepoType>,
    viewer: Viewer,
    Path(p): Path<RepoParams>,
) -> Result<Response, PageError> {
    let Some((id, repo)) = open_form(&state, &viewer, kind, &p, Change::Visibility.need()).await?
    else {
        return Ok(see_other("/login"));
    };
    form_page(&state, &viewer, &id, repo, None).await
}

async fn form_page(
    state: &AppState,
    viewer: &Viewer,
    id: &RepoId,
    repo: super::repo::RepoCtx,
    error: Option<String>,
) -> Result<Response, PageError> {
    let gated = state
        .hub()
        .gate(id)
        .await
        .map_err(AppError::from)?
        .mode
        .map_or("off", GateMode::as_str);
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        page("settings.html", viewer, ctx! { repo, gated, error })?,
    )
        .into_response())
}

/// `POST …/settings`: one change, named by the form's `action`: `visibility`, `gated`,
/// `move` or `delete`.
pub(crate) async fn settings(
    State(state): State<AppState>,
    Extension(kind): Extension<RepoType>,
    viewer: Viewer,
    headers: HeaderMap,
    Path(p): Path<RepoParams>,
    body: Bytes,
) -> Result<Response, PageError> {
    let fields = form(&body)?;
    let principal = check_post(&viewer, &headers, fields.get("csrf").map(String::as_str))?;
    let id = RepoId::new(kind, &p.ns, &p.name).map_err(|_| AppError::RepoNotFound)?;
    let granted = state
        .hub()
        .access(Some(&principal), &id, Change::Visibility.need())
        .await
        .map_err(AppError::from)?;
    let get = |k: &str| fields.get(k).map_or("", |v| v.trim());
    let page_url = |id: &RepoId| format!("/{}{}", kind.url_prefix(), id.hub_id());
    match get("action") {
        // The visibility form predates `action`: no action is a visibility change.
        "" | "visibility" => {
            state
                .hub()
                .set_private(&granted, get("private") == "1")
                .await?;
            Ok(see_other(&page_url(&id)))
        }
        "gated" => {
            let mode = match get("gated") {
                "off" => None,
                "auto" => Some(GateMode::Auto),
                "manual" => Some(GateMode::Manual),
                other => {
                    return Err(
                        AppError::BadRequest(format!("unknown gated mode {other:?}")).into(),
                    );
                }
            };
            state
                .hub()
                .set_gated(&principal, &id, mode)
                .await
                .map_err(AppError::from)?;
            Ok(see_other(&format!("{}/settings", page_url(&id))))
        }
        "move" => {
            let to = match RepoId::parse(kind, get("to")) {
                Ok(to) => to,
                Err(e) => {
                    return retry(&state, &viewer, &id, format!("Invalid new name: {e}")).await;
                }
            };
            if to == id {
                return retry(&state, &viewer, &id, "That is the current name.".into()).await;
            }
            match state.hub().move_repo(&principal, &id, &to).await {
                Ok(()) => Ok(see_other(&page_url(&to))),
                Err(hub_core::RepoOpError::Repo(hub_repo::RepoError::AlreadyExists { .. })) => {
                    retry(
                        &state,
                        &viewer,
                        &id,
                        format!("{} already exists.", to.hub_id()),
                    )
                    .await
                }
                Err(e) => Err(AppError::from(e).into()),
            }
        }
        "delete" => {
            if get("confirm") != id.hub_id() {
                return retry(
                    &state,
                    &viewer,
                    &id,
                    format!("Type {} to confirm the deletion.", id.hub_id()),
                )
                .await;
            }
            state.hub().delete_repo(&principal, &id).await?;
            Ok(see_other(&format!("/{}", id.namespace())))
        }
        other => Err(AppError::BadRequest(format!("unknown settings action {other:?}")).into()),
    }
}

/// The settings page again, with what was wrong (a 400).
async fn retry(
    state: &AppState,
    viewer: &Viewer,
    id: &RepoId,
    error: String,
) -> Result<Response, PageError> {
    let (_, repo) = open(state, viewer, id.kind(), id.namespace(), id.name()).await?;
    form_page(state, viewer, id, repo, Some(error)).await
}
