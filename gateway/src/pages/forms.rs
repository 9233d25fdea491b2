//! The pages' forms: sign in and out, create a repo (a repo's settings are in
//! [`super::settings`]). Each write checks
//! the session's CSRF token and the request's `Origin` ([`super::session::check_post`]); the
//! rules themselves are `hub-core`'s, as for the API.

use super::render::ctx;
use super::render::{PageError, page};
use super::session::{Viewer, check_origin, check_post, cleared_cookie, session_cookie};
use crate::AppState;
use crate::error::AppError;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use hub_core::RepoOpError;
use hub_protocol::repo::{RepoId, RepoType};
use std::collections::HashMap;

/// The largest form body.
pub(crate) const MAX_FORM: usize = 16 * 1024;

pub(crate) fn form(body: &[u8]) -> Result<HashMap<String, String>, AppError> {
    if body.len() > MAX_FORM {
        return Err(AppError::PayloadTooLarge("form too large".into()));
    }
    Ok(form_urlencoded::parse(body).into_owned().collect())
}

pub(crate) fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// `GET /login`.
pub(crate) async fn login_form(viewer: Viewer) -> Result<Response, PageError> {
    Ok(page("login.html", &viewer, ctx! {})?)
}

/// `POST /login`: a valid token starts a cookie session; else the form again, with a 401.
pub(crate) async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PageError> {
    check_origin(&headers)?;
    let fields = form(&body)?;
    let token = fields
        .get("token")
        .map(|t| t.trim().to_owned())
        .unwrap_or_default();
    let principal =
        if token.is_empty() || token.len() > 256 || !token.bytes().all(|b| b.is_ascii_graphic()) {
            None
        } else {
            let auth = state.auth().clone();
            let secret = token.clone();
            tokio::task::spawn_blocking(move || auth.authenticate(&secret))
                .await
                .map_err(AppError::internal)?
                .map_err(AppError::internal)?
        };
    let anonymous = Viewer::anonymous();
    let Some(principal) = principal else {
        let mut response = page(
            "login.html",
            &anonymous,
            ctx! { error => "That token is not valid on this node." },
        )?;
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        return Ok(response);
    };
    tracing::info!(user = %principal.user.name, "signed in to the pages");
    let mut response = see_other(&format!("/{}", principal.user.name));
    if let Ok(v) = HeaderValue::from_str(&session_cookie(&token)) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(response)
}

/// `POST /logout`: ends the session.
pub(crate) async fn logout(
    viewer: Viewer,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PageError> {
    let fields = form(&body)?;
    check_post(&viewer, &headers, fields.get("csrf").map(String::as_str))?;
    let mut response = see_other("/");
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cleared_cookie()).map_err(AppError::internal)?,
    );
    Ok(response)
}

async fn owners(state: &AppState, viewer: &Viewer) -> Result<Vec<String>, AppError> {
    let Some(principal) = &viewer.principal else {
        return Ok(Vec::new());
    };
    let auth = state.auth().clone();
    let user = principal.user.name.clone();
    let orgs = tokio::task::spawn_blocking(move || auth.orgs_of(&user))
        .await
        .map_err(AppError::internal)?
        .map_err(AppError::internal)?;
    Ok(std::iter::once(principal.user.name.clone())
        .chain(orgs.into_iter().map(|(o, _)| o))
        .collect())
}

/// `GET /new`: the create-repo form (signed-in viewers; others go to sign in).
pub(crate) async fn new_form(
    State(state): State<AppState>,
    viewer: Viewer,
) -> Result<Response, PageError> {
    if viewer.csrf.is_none() {
        return Ok(see_other("/login"));
    }
    let owners = owners(&state, &viewer).await?;
    Ok(page("new.html", &viewer, ctx! { owners })?)
}

/// `POST /new`: creates the repo with `hub-core`'s rules and opens its page.
pub(crate) async fn new_repo(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, PageError> {
    let fields = form(&body)?;
    let principal = check_post(&viewer, &headers, fields.get("csrf").map(String::as_str))?;
    let get = |k: &str| fields.get(k).map_or("", |v| v.trim());
    let kind: RepoType = get("type").parse().unwrap_or(RepoType::Model);
    let owner = Some(get("owner"))
        .filter(|o| !o.is_empty())
        .unwrap_or(principal.user.name.as_str());
    let private = get("private") == "1";
    let retry = |error: String| -> Result<Response, PageError> {
        Ok((
            StatusCode::BAD_REQUEST,
            page("new.html", &viewer, ctx! { error, owners => vec![owner] })?,
        )
            .into_response())
    };
    let id = match RepoId::new(kind, owner, get("name")) {
        Ok(id) => id,
        Err(e) => return retry(format!("Invalid name: {e}")),
    };
    let grant = match state.hub().access_create(&principal, &id).await {
        Ok(grant) => grant,
        Err(e) => return Err(AppError::from(e).into()),
    };
    match state.hub().create_repo(grant, private).await {
        Ok(()) => Ok(see_other(&format!("/{}{}", kind.url_prefix(), id.hub_id()))),
        Err(RepoOpError::Repo(hub_repo::RepoError::AlreadyExists { .. })) => {
            retry(format!("{} already exists.", id.hub_id()))
        }
        Err(e) => Err(AppError::from(e).into()),
    }
}
