//! Who is looking at a page, and the forms' CSRF tokens.
//!
//! A page request is authenticated by an `Authorization` token (as for the API: a bad one is
//! a 401) or by the sign-in cookie, which holds the token itself: `HttpOnly` (no script reads
//! it), `SameSite=Strict` (no other site's page sends it), `Path=/`. A cookie whose token no
//! longer works (revoked) is anonymous. Only the pages read the cookie: the API, git and LFS
//! take tokens from `Authorization` alone, so a cookie never authorises them.
//!
//! Forms that change something carry a CSRF token: a keyed BLAKE3 hash of the session's
//! token under a key drawn at start (so it changes with the session and cannot be made
//! without it). A write also checks `Origin`, when the browser sends it, against `Host`.

use crate::AppState;
use crate::error::AppError;
use crate::extract::authenticate;
use axum::extract::FromRequestParts;
use axum::http::{HeaderMap, header, request::Parts};
use hub_auth::Principal;
use std::sync::OnceLock;

pub(crate) const COOKIE: &str = "hubmesh_session";

/// The viewer of a page: a principal (or anonymous), and the CSRF token of its forms.
#[derive(Debug, Clone)]
pub(crate) struct Viewer {
    pub principal: Option<Principal>,
    /// Set for a cookie session only (a token in `Authorization` posts no forms).
    pub csrf: Option<String>,
    /// The viewer's credential as the API takes it (`Authorization`), for a page that calls
    /// the node's own API on the viewer's behalf (the inference widget).
    pub credential: Credential,
}

/// An `Authorization` value, never printed.
#[derive(Clone, Default)]
pub(crate) struct Credential(pub Option<axum::http::HeaderValue>);

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Credential(..)"
        } else {
            "None"
        })
    }
}

impl Viewer {
    pub fn name(&self) -> Option<&str> {
        self.principal.as_ref().map(|p| p.user.name.as_str())
    }

    pub fn anonymous() -> Viewer {
        Viewer {
            principal: None,
            csrf: None,
            credential: Credential::default(),
        }
    }
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        if let Some(given) = parts.headers.get(header::AUTHORIZATION) {
            let principal = authenticate(state, &parts.headers).await?;
            return Ok(Viewer {
                principal,
                csrf: None,
                credential: Credential(Some(given.clone())),
            });
        }
        let Some(token) = cookie(&parts.headers, COOKIE) else {
            return Ok(Viewer::anonymous());
        };
        if token.is_empty() || token.len() > 256 {
            return Ok(Viewer::anonymous());
        }
        let auth = state.auth().clone();
        let secret = token.clone();
        let principal = tokio::task::spawn_blocking(move || auth.authenticate(&secret))
            .await
            .map_err(AppError::internal)?
            .map_err(AppError::internal)?;
        let csrf = principal.as_ref().map(|_| csrf_token(&token));
        let credential = match &principal {
            Some(_) => Credential(
                axum::http::HeaderValue::from_str(&format!("Bearer {token}"))
                    .ok()
                    .map(|mut v| {
                        v.set_sensitive(true);
                        v
                    }),
            ),
            None => Credential::default(),
        };
        Ok(Viewer {
            principal,
            csrf,
            credential,
        })
    }
}

/// A cookie's value from the request's `Cookie` headers.
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_owned())
}

fn key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut k = [0u8; 32];
        // Without entropy the key is still secret enough to nobody: fail closed instead.
        if getrandom::fill(&mut k).is_err() {
            k = *blake3::hash(format!("{:?}", std::time::SystemTime::now()).as_bytes()).as_bytes();
        }
        k
    })
}

/// The CSRF token of the session whose token is `token`.
pub(crate) fn csrf_token(token: &str) -> String {
    hex::encode(&blake3::keyed_hash(key(), token.as_bytes()).as_bytes()[..16])
}

/// Checks a form post: a cookie session, its CSRF token in the form, and a same-origin
/// `Origin` when there is one. Returns the principal.
pub(crate) fn check_post(
    viewer: &Viewer,
    headers: &HeaderMap,
    form_csrf: Option<&str>,
) -> Result<Principal, AppError> {
    check_origin(headers)?;
    let (Some(principal), Some(expected)) = (&viewer.principal, &viewer.csrf) else {
        return Err(AppError::Unauthorized("Sign in first."));
    };
    if !same_secret(form_csrf.unwrap_or_default(), expected) {
        return Err(AppError::Forbidden("invalid or missing CSRF token".into()));
    }
    Ok(principal.clone())
}

/// Whether `form_csrf` is the CSRF token of the viewer's cookie session (false without one).
pub(crate) fn csrf_matches(viewer: &Viewer, form_csrf: Option<&str>) -> bool {
    viewer
        .csrf
        .as_deref()
        .is_some_and(|expected| same_secret(form_csrf.unwrap_or_default(), expected))
}

/// Constant-time comparison: the token is a secret of the session.
fn same_secret(given: &str, expected: &str) -> bool {
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// A browser's `Origin` must name this host (`null` and other sites are refused).
pub(crate) fn check_origin(headers: &HeaderMap) -> Result<(), AppError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, h)| h);
    if host.is_some() && origin_host == host {
        Ok(())
    } else {
        Err(AppError::Forbidden("cross-origin form post refused".into()))
    }
}

/// `Set-Cookie` for a new session.
pub(crate) fn session_cookie(token: &str) -> String {
    format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age=2592000")
}

/// `Set-Cookie` that ends the session.
pub(crate) fn cleared_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}
