//! Who is calling: the request's token turned into a principal, as extractors.
//!
//! - [`Caller`]: anyone; `Caller(None)` is anonymous. A request that *sends* a token must
//!   send a valid one (401 otherwise): a client that sent a token expects it to be used.
//! - [`Authed`]: a caller with a valid token (401 otherwise).
//! - [`SiteAdmin`]: a site admin using a coarse write token (403 otherwise).
//!
//! A request is authenticated once: the first extraction stores the [`Caller`] in the
//! request's extensions (the compute layer extracts it before the inference handlers do), and
//! later extractions read it from there.

use crate::AppState;
use crate::error::AppError;
use axum::extract::FromRequestParts;
use axum::http::{HeaderMap, header, request::Parts};
use hub_auth::Principal;

/// The caller of a request: `None` when it sent no token.
#[derive(Debug, Clone)]
pub(crate) struct Caller(pub Option<Principal>);

/// A caller with a valid token.
#[derive(Debug, Clone)]
pub(crate) struct Authed(pub Principal);

/// A site admin using a coarse write token: site administration (accounts, seeding policy).
#[derive(Debug, Clone)]
pub(crate) struct SiteAdmin(pub Principal);

/// The request's headers and, when a layer in front already authenticated it, its [`Caller`]
/// (the inference routes: the compute layer authenticates before routing). Never rejects.
#[derive(Debug, Clone)]
pub(crate) struct Who {
    pub headers: HeaderMap,
    pub cached: Option<Caller>,
}

impl FromRequestParts<AppState> for Who {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &AppState,
    ) -> Result<Self, std::convert::Infallible> {
        Ok(Who {
            headers: parts.headers.clone(),
            cached: parts.extensions.get::<Caller>().cloned(),
        })
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        let caller = Caller(authenticate(state, &parts.headers).await?);
        parts.extensions.insert(caller.clone());
        Ok(caller)
    }
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        Caller::from_request_parts(parts, state)
            .await?
            .0
            .map(Authed)
            .ok_or(AppError::Unauthorized("Invalid user token."))
    }
}

impl FromRequestParts<AppState> for SiteAdmin {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let Authed(principal) = Authed::from_request_parts(parts, state).await?;
        site_admin(principal).map(SiteAdmin)
    }
}

fn site_admin(principal: Principal) -> Result<Principal, AppError> {
    if !principal.user.site_admin || !principal.token.is_coarse_write() {
        return Err(AppError::Forbidden(
            "site administration needs a site admin's write token".into(),
        ));
    }
    Ok(principal)
}

/// The principal behind the request, or 401 when there is none.
pub(crate) async fn require_auth(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Principal, AppError> {
    authenticate(state, headers)
        .await?
        .ok_or(AppError::Unauthorized("Invalid user token."))
}

/// The token in an `Authorization` header: `Bearer <token>` (the Hub API) or
/// `Basic base64(user:<token>)` (git and git-lfs, which take the token as the password).
fn bearer_or_basic(value: &http::HeaderValue) -> Option<String> {
    let v = value.to_str().ok()?.trim();
    let (scheme, rest) = v.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        Some(rest.to_owned())
    } else if scheme.eq_ignore_ascii_case("basic") {
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_user, password) = text.split_once(':')?;
        Some(password.to_owned())
    } else {
        None
    }
}

/// The principal behind the request's `Authorization: Bearer` header. `Ok(None)` when the
/// request carries no token; an error when it carries one that is not valid, since a client
/// that sent a token expects it to be used.
pub(crate) async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Principal>, AppError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let token = bearer_or_basic(value)
        .filter(|t| !t.is_empty() && t.len() <= 256)
        .ok_or(AppError::Unauthorized("Invalid user token."))?;
    let auth = state.auth().clone();
    let principal = tokio::task::spawn_blocking(move || auth.authenticate(&token))
        .await
        .map_err(AppError::internal)?
        .map_err(AppError::internal)?;
    principal
        .map(Some)
        .ok_or(AppError::Unauthorized("Invalid user token."))
}
