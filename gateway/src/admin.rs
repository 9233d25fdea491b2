//! Site administration: `/api/admin/…`, for the CLI's `user`, `org` and `token` commands.
//!
//! Every route needs a site admin's coarse `write` token: anonymous callers get 401, everyone
//! else 403. Bodies and answers are JSON; errors leave through [`AppError`] like everywhere
//! else. A token's secret appears exactly once, in the answer to its creation; listings, logs
//! and errors name tokens only by their public id.
//!
//! - `POST /api/admin/users` `{"name", "fullname"?}` → the user;
//! - `POST /api/admin/orgs` `{"name", "fullname"?}` → the org;
//!
//!   Both claim the name for this node in the mesh first (ADR 0006): a name an accepted
//!   namespace document gives to other nodes is refused with 409 `NamespaceClaimedInMesh`,
//!   naming them, and no account is created;
//! - `POST /api/admin/orgs/{org}/members` `{"user", "role"}` → the membership (adds, or changes
//!   the role of, a member);
//! - `POST /api/admin/tokens` `{"user", "scope"?: "read"|"write", "repos"?: [...],
//!   "namespaces"?: [...], "displayName"?}` → the token with its secret (`token`). With `repos`
//!   or `namespaces` the token is fine-grained: each listed repo (`type/ns/name` or `ns/name`)
//!   and namespace gets `scope` access (default `read`); without them it is a coarse token;
//! - `GET /api/admin/users/{name}/tokens` → the user's tokens, without secrets;
//! - `DELETE /api/admin/tokens/{id}` → the revoked token; effective at once.

use crate::AppState;
use crate::error::AppError;
use crate::extract::SiteAdmin;
use crate::util::parse_json;
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use hub_auth::{AuthError, AuthStore, Grant, GrantTarget, Permissions, Role, Scope, TokenRecord};
use hub_protocol::name::Name;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

/// Largest request body of these routes.
const MAX_BODY: usize = 64 * 1024;
/// Most grants one fine-grained token may hold.
const MAX_GRANTS: usize = 256;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/admin/users", post(create_user))
        .route("/api/admin/users/{name}/tokens", get(list_tokens))
        .route("/api/admin/orgs", post(create_org))
        .route("/api/admin/orgs/{org}/members", post(add_member))
        .route("/api/admin/tokens", post(create_token))
        .route("/api/admin/tokens/{id}", delete(revoke_token))
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

/// Runs `f` on the account store off the async executor.
async fn with_store<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&AuthStore) -> Result<T, AuthError> + Send + 'static,
) -> Result<T, AppError> {
    let store: Arc<AuthStore> = state.auth().clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(AppError::internal)?
        .map_err(admin_error)
}

/// Account errors as HTTP errors. Unknown names in a body are the request's fault (400).
fn admin_error(e: AuthError) -> AppError {
    match e {
        AuthError::NameTaken { .. } => AppError::Conflict(e.to_string()),
        AuthError::NoSuchUser { .. }
        | AuthError::NoSuchOrg { .. }
        | AuthError::NoGrants
        | AuthError::BadDisplayName => AppError::BadRequest(e.to_string()),
        AuthError::NoSuchToken { .. } => AppError::NotFound,
        other => AppError::internal(other),
    }
}

/// Claims `name` for this node in the mesh before an account of that name is created here.
async fn claim(state: &AppState, name: &Name) -> Result<(), AppError> {
    match state.hub().mesh().claim_namespace(name.as_str()).await {
        Ok(()) => Ok(()),
        Err(e @ hub_core::ClaimError::ClaimedElsewhere { .. }) => Err(AppError::Coded {
            status: StatusCode::CONFLICT,
            code: "NamespaceClaimedInMesh",
            message: e.to_string(),
        }),
        Err(e) => Err(AppError::internal(e)),
    }
}

fn parse_name(name: &str) -> Result<Name, AppError> {
    Name::new(name).map_err(|e| {
        let shown: String = name.chars().take(100).collect();
        AppError::BadRequest(format!("invalid name {shown:?}: {e}"))
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamedBody {
    name: String,
    fullname: Option<String>,
}

impl NamedBody {
    fn fullname(&self) -> Result<Option<String>, AppError> {
        match &self.fullname {
            Some(f) if f.len() > 200 || f.chars().any(char::is_control) => Err(
                AppError::BadRequest("fullname must be at most 200 printable characters".into()),
            ),
            other => Ok(other.clone()),
        }
    }
}

/// `POST /api/admin/users`.
async fn create_user(
    State(state): State<AppState>,
    SiteAdmin(admin): SiteAdmin,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let body: NamedBody = parse_json(&body)?;
    let name = parse_name(&body.name)?;
    let fullname = body.fullname()?;
    claim(&state, &name).await?;
    let user = with_store(&state, move |s| s.create_user(&name, fullname.as_deref())).await?;
    tracing::info!(admin = %admin.user.name, user = %user.name, "user created");
    Ok(Json(json!({
        "type": "user",
        "name": user.name,
        "fullname": user.fullname,
        "isSiteAdmin": user.site_admin,
    })))
}

/// `POST /api/admin/orgs`.
async fn create_org(
    State(state): State<AppState>,
    SiteAdmin(admin): SiteAdmin,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let body: NamedBody = parse_json(&body)?;
    let name = parse_name(&body.name)?;
    let fullname = body.fullname()?;
    claim(&state, &name).await?;
    let org = with_store(&state, move |s| s.create_org(&name, fullname.as_deref())).await?;
    tracing::info!(admin = %admin.user.name, org = %org.name, "organisation created");
    Ok(Json(json!({
        "type": "org",
        "name": org.name,
        "fullname": org.fullname,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberBody {
    user: String,
    role: String,
}

/// `POST /api/admin/orgs/{org}/members`.
async fn add_member(
    State(state): State<AppState>,
    SiteAdmin(admin): SiteAdmin,
    Path(org): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let body: MemberBody = parse_json(&body)?;
    let role: Role = body
        .role
        .parse()
        .map_err(|e: hub_auth::ParseError| AppError::BadRequest(e.to_string()))?;
    let org_exists = {
        let org = org.clone();
        with_store(&state, move |s| s.org(&org)).await?.is_some()
    };
    if !org_exists {
        return Err(AppError::NotFound);
    }
    // Names fold as on the Hub: the member is the stored account, whatever the case asked.
    let user = state
        .hub()
        .account_spelling(&body.user)
        .await
        .unwrap_or(body.user);
    let body = MemberBody {
        user,
        role: body.role,
    };
    let (o, u) = (org.clone(), body.user.clone());
    with_store(&state, move |s| s.set_member(&o, &u, role)).await?;
    tracing::info!(admin = %admin.user.name, %org, user = %body.user, %role, "member set");
    Ok(Json(json!({
        "org": org,
        "user": body.user,
        "role": role.as_str(),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TokenBody {
    user: String,
    scope: Option<String>,
    #[serde(default)]
    repos: Vec<String>,
    #[serde(default)]
    namespaces: Vec<String>,
    display_name: Option<String>,
}

impl TokenBody {
    fn permissions(&self) -> Result<Permissions, AppError> {
        let scope: Scope = match &self.scope {
            Some(s) => s
                .parse()
                .map_err(|e: hub_auth::ParseError| AppError::BadRequest(e.to_string()))?,
            None => Scope::Read,
        };
        if self.repos.is_empty() && self.namespaces.is_empty() {
            return Ok(Permissions::Scope(scope));
        }
        if self.repos.len() + self.namespaces.len() > MAX_GRANTS {
            return Err(AppError::BadRequest(format!(
                "a token holds at most {MAX_GRANTS} grants"
            )));
        }
        let mut grants = Vec::new();
        for repo in &self.repos {
            let target: GrantTarget = repo
                .parse()
                .map_err(|e: hub_auth::GrantTargetError| AppError::BadRequest(e.to_string()))?;
            if !matches!(target, GrantTarget::Repo(_)) {
                return Err(AppError::BadRequest(format!(
                    "{repo:?} is a namespace, not a repo id; list it under \"namespaces\""
                )));
            }
            grants.push(Grant {
                target,
                access: scope.into(),
            });
        }
        for ns in &self.namespaces {
            parse_name(ns)?;
            grants.push(Grant {
                target: GrantTarget::Namespace(ns.clone()),
                access: scope.into(),
            });
        }
        Ok(Permissions::FineGrained(grants))
    }
}

/// A token as the admin API shows it: never with its secret.
fn token_json(t: &TokenRecord) -> Value {
    json!({
        "id": t.id,
        "user": t.user,
        "displayName": t.display_name,
        "role": t.role().as_str(),
        "scope": t.scope.as_str(),
        "grants": t.grants.iter().map(|g| json!({
            "target": g.target.to_string(),
            "access": g.access.as_str(),
        })).collect::<Vec<_>>(),
        "createdAt": t.created_at,
    })
}

/// `POST /api/admin/tokens`: the only answer that ever carries a token's secret.
async fn create_token(
    State(state): State<AppState>,
    SiteAdmin(admin): SiteAdmin,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let body: TokenBody = parse_json(&body)?;
    let permissions = body.permissions()?;
    let display_name = body
        .display_name
        .clone()
        .unwrap_or_else(|| format!("created by {}", admin.user.name));
    // The token is the stored account's (so whoami names it as stored), whatever the case.
    let user = state
        .hub()
        .account_spelling(&body.user)
        .await
        .unwrap_or_else(|| body.user.clone());
    let (record, secret) = with_store(&state, move |s| {
        s.create_token(&user, &display_name, permissions)
    })
    .await?;
    tracing::info!(admin = %admin.user.name, user = %record.user, token_id = %record.id, role = record.role().as_str(), "token created");
    let mut out = token_json(&record);
    out["token"] = Value::String(secret.expose().to_owned());
    Ok(Json(out))
}

/// `GET /api/admin/users/{name}/tokens`.
async fn list_tokens(
    State(state): State<AppState>,
    _: SiteAdmin,
    Path(name): Path<String>,
) -> Result<Json<Value>, AppError> {
    let tokens = with_store(&state, move |s| {
        Ok(match s.user(&name)? {
            Some(_) => Some(s.list_tokens(&name)?),
            None => None,
        })
    })
    .await?
    .ok_or(AppError::NotFound)?;
    Ok(Json(Value::Array(tokens.iter().map(token_json).collect())))
}

/// `DELETE /api/admin/tokens/{id}`.
async fn revoke_token(
    State(state): State<AppState>,
    SiteAdmin(admin): SiteAdmin,
    Path(id): Path<String>,
) -> Result<Json<Value>, AppError> {
    let record = with_store(&state, move |s| s.revoke_token(&id)).await?;
    tracing::info!(admin = %admin.user.name, user = %record.user, token_id = %record.id, "token revoked");
    let mut out = token_json(&record);
    out["revoked"] = Value::Bool(true);
    Ok(Json(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::extract::Request;
    use http::{StatusCode, header};
    use tower::ServiceExt;

    use crate::testing::fixture;

    async fn call(
        app: &Router,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = match body {
            Some(v) => Body::from(v.to_string()),
            None => Body::empty(),
        };
        let resp = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value)
    }

    #[tokio::test]
    async fn accounts_tokens_and_whoami_through_the_api() {
        let f = fixture().await;
        let admin = Some(f.admin.as_str());
        let (s, v) = call(
            &f.app,
            "POST",
            "/api/admin/users",
            admin,
            Some(json!({"name": "alice", "fullname": "Alice"})),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["name"], "alice");
        let (s, v) = call(
            &f.app,
            "POST",
            "/api/admin/orgs",
            admin,
            Some(json!({"name": "acme"})),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (s, v) = call(
            &f.app,
            "POST",
            "/api/admin/orgs",
            admin,
            Some(json!({"name": "alice"})),
        )
        .await;
        assert_eq!(s, StatusCode::CONFLICT, "{v}");
        let (s, v) = call(
            &f.app,
            "POST",
            "/api/admin/orgs/acme/members",
            admin,
            Some(json!({"user": "alice", "role": "contributor"})),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["role"], "contributor");

        let (s, v) = call(
            &f.app,
            "POST",
            "/api/admin/tokens",
            admin,
            Some(json!({"user": "alice", "scope": "write", "displayName": "laptop"})),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let write = v["token"].as_str().unwrap().to_owned();
        let write_id = v["id"].as_str().unwrap().to_owned();
        assert_eq!(v["role"], "write");
        let (s, v) = call(&f.app, "POST", "/api/admin/tokens", admin, Some(json!({"user": "alice", "scope": "write", "repos": ["acme/m"], "namespaces": ["alice"]}))).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let fine = v["token"].as_str().unwrap().to_owned();
        assert_eq!(v["role"], "fineGrained");
        assert_eq!(
            v["grants"],
            json!([{"target": "model/acme/m", "access": "write"}, {"target": "alice", "access": "write"}])
        );

        let (s, v) = call(&f.app, "GET", "/api/whoami-v2", Some(&write), None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["name"], "alice");
        assert_eq!(
            v["orgs"],
            json!([{"type": "org", "name": "acme", "fullname": "acme", "roleInOrg": "contributor"}])
        );
        assert_eq!(v["auth"]["accessToken"]["role"], "write");
        assert_eq!(v["auth"]["accessToken"]["displayName"], "laptop");
        let (s, v) = call(&f.app, "GET", "/api/whoami-v2", Some(&fine), None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["auth"]["accessToken"]["role"], "fineGrained");

        let (s, v) = call(&f.app, "GET", "/api/admin/users/alice/tokens", admin, None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let listed = v.to_string();
        assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
        assert!(
            !listed.contains(&write) && !listed.contains(&fine),
            "secrets listed: {listed}"
        );

        let (s, v) = call(
            &f.app,
            "DELETE",
            &format!("/api/admin/tokens/{write_id}"),
            admin,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["revoked"], true);
        let (s, _) = call(&f.app, "GET", "/api/whoami-v2", Some(&write), None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, _) = call(
            &f.app,
            "DELETE",
            &format!("/api/admin/tokens/{write_id}"),
            admin,
            None,
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn only_site_admins_with_write_tokens_administer() {
        let f = fixture().await;
        let admin = Some(f.admin.as_str());
        call(
            &f.app,
            "POST",
            "/api/admin/users",
            admin,
            Some(json!({"name": "bob"})),
        )
        .await;
        let (_, v) = call(
            &f.app,
            "POST",
            "/api/admin/tokens",
            admin,
            Some(json!({"user": "bob", "scope": "write"})),
        )
        .await;
        let bob = v["token"].as_str().unwrap().to_owned();
        let (_, v) = call(
            &f.app,
            "POST",
            "/api/admin/tokens",
            admin,
            Some(json!({"user": "admin", "scope": "read"})),
        )
        .await;
        let admin_read = v["token"].as_str().unwrap().to_owned();
        let attempts = [
            ("POST", "/api/admin/users", Some(json!({"name": "eve"}))),
            ("POST", "/api/admin/orgs", Some(json!({"name": "evil"}))),
            (
                "POST",
                "/api/admin/orgs/x/members",
                Some(json!({"user": "bob", "role": "admin"})),
            ),
            (
                "POST",
                "/api/admin/tokens",
                Some(json!({"user": "admin", "scope": "write"})),
            ),
            ("GET", "/api/admin/users/admin/tokens", None),
            ("DELETE", "/api/admin/tokens/0011", None),
        ];
        for (method, path, body) in attempts {
            let (s, v) = call(&f.app, method, path, None, body.clone()).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{method} {path}: {v}");
            for token in [&bob, &admin_read] {
                let (s, v) = call(&f.app, method, path, Some(token), body.clone()).await;
                assert_eq!(s, StatusCode::FORBIDDEN, "{method} {path}: {v}");
                assert!(!v.to_string().contains(token.as_str()));
            }
        }
    }

    #[tokio::test]
    async fn bad_requests_get_our_error_shape() {
        let f = fixture().await;
        let admin = Some(f.admin.as_str());
        let cases = [
            (
                "/api/admin/users",
                json!({"name": "../x"}),
                StatusCode::BAD_REQUEST,
            ),
            (
                "/api/admin/users",
                json!({"nmae": "x"}),
                StatusCode::BAD_REQUEST,
            ),
            (
                "/api/admin/users",
                json!({"name": "admin"}),
                StatusCode::CONFLICT,
            ),
            (
                "/api/admin/orgs/nope/members",
                json!({"user": "admin", "role": "read"}),
                StatusCode::NOT_FOUND,
            ),
            (
                "/api/admin/tokens",
                json!({"user": "nobody"}),
                StatusCode::BAD_REQUEST,
            ),
            (
                "/api/admin/tokens",
                json!({"user": "admin", "scope": "owner"}),
                StatusCode::BAD_REQUEST,
            ),
            (
                "/api/admin/tokens",
                json!({"user": "admin", "repos": ["a/b/c/d"]}),
                StatusCode::BAD_REQUEST,
            ),
            (
                "/api/admin/tokens",
                json!({"user": "admin", "repos": ["alice"]}),
                StatusCode::BAD_REQUEST,
            ),
            (
                "/api/admin/tokens",
                json!({"user": "admin", "namespaces": ["a/b"]}),
                StatusCode::BAD_REQUEST,
            ),
        ];
        for (path, body, want) in cases {
            let (s, v) = call(&f.app, "POST", path, admin, Some(body.clone())).await;
            assert_eq!(s, want, "{path} {body}: {v}");
            assert!(v["error"].is_string(), "{v}");
        }
        call(
            &f.app,
            "POST",
            "/api/admin/orgs",
            admin,
            Some(json!({"name": "acme"})),
        )
        .await;
        let (s, v) = call(
            &f.app,
            "POST",
            "/api/admin/orgs/acme/members",
            admin,
            Some(json!({"user": "admin", "role": "owner"})),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        let (s, v) = call(&f.app, "GET", "/api/admin/users/nobody/tokens", admin, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    }
}
