//! The one error type of the gateway's Hub surfaces, and its renderings, one per API family.
//!
//! Every handler of the Hub API, git smart HTTP and the LFS batch API returns
//! `Result<_, AppError>`; the domain errors of the layers below (`hub-core`'s
//! [`hub_core::AccessError`], [`hub_core::CommitError`], [`hub_core::Error`], `hub-repo`'s and
//! `hub-store`'s errors) are mapped to it here, and only here. It leaves in one of three shapes:
//! - **the Hub API** ([`IntoResponse`]): the status, the Hub's `X-Error-Code` (when the error
//!   has one) and `X-Error-Message` headers, and a JSON body `{"error": message}` — the shapes
//!   `huggingface_hub`'s `hf_raise_for_status` reads;
//! - **the git-lfs batch API** ([`AppError::into_lfs_response`]): the same status and headers,
//!   a `{"message"}` body with git-lfs's content type, and the Basic challenges git-lfs expects;
//! - **git smart HTTP** ([`AppError::into_git_response`]): the Basic challenge git expects, a
//!   403's message as plain text (git prints it as `remote: …`), `Retry-After` on 429/503.
//!
//! A 500 never carries internal detail: the cause is logged here, where it is handled, and the
//! client sees a generic message. The inference APIs (OpenAI, TGI, HF) render `AppError` in
//! their own shapes in the `inference` module.

use axum::Json;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use hub_core::discussions::DiscussionError;
use hub_core::{AccessError, CommitError, RepoOpError, ResolveError};

/// The content type of the git-lfs batch API's bodies.
pub(crate) const LFS_JSON: &str = "application/vnd.git-lfs+json";

/// Seconds a client is told to wait (`Retry-After`) before retrying a 429 or a 503.
pub(crate) const RETRY_AFTER_SECS: u64 = 5;

/// An error on its way to an HTTP client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// No token, or a token that is not valid.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// Nothing is routed here.
    #[error("not found")]
    NotFound,
    /// The repository does not exist, or the caller may not know that it does.
    #[error("Repository not found")]
    RepoNotFound,
    #[error("{0}")]
    RevisionNotFound(String),
    /// A file or folder is not in the tree; `commit` lets clients cache the absence.
    #[error("{message}")]
    EntryNotFound {
        message: String,
        commit: Option<String>,
    },
    /// The state on the server differs from what the request expects.
    #[error("{0}")]
    Conflict(String),
    /// A precondition the request states does not hold (a stale `parentCommit`).
    #[error("{0}")]
    PreconditionFailed(String),
    /// Well-formed but invalid content (a path the Hub refuses).
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The node's disk is full (or at its reserved headroom); retrying later may succeed.
    #[error("not enough storage space on this node")]
    InsufficientStorage,
    /// Temporarily unavailable (content still arriving from peers); clients retry.
    #[error("{0}")]
    Unavailable(String),
    /// A `Range` that does not overlap a file of `size` bytes.
    #[error("requested range not satisfiable")]
    RangeNotSatisfiable { size: u64 },
    /// A refusal with its own `X-Error-Code` (e.g. `NamespaceHostedElsewhere`).
    #[error("{message}")]
    Coded {
        status: StatusCode,
        code: &'static str,
        message: String,
    },
    /// Something failed inside the node.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl AppError {
    pub fn internal(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Internal(e.into())
    }

    fn status(&self) -> StatusCode {
        match self {
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::NotFound
            | AppError::RepoNotFound
            | AppError::RevisionNotFound(_)
            | AppError::EntryNotFound { .. } => StatusCode::NOT_FOUND,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            AppError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
            AppError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Coded { status, .. } => *status,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The Hub's `X-Error-Code`, for errors the client dispatches on.
    fn code(&self) -> Option<&'static str> {
        match self {
            AppError::RepoNotFound => Some("RepoNotFound"),
            AppError::RevisionNotFound(_) => Some("RevisionNotFound"),
            AppError::EntryNotFound { .. } => Some("EntryNotFound"),
            AppError::Coded { code, .. } => Some(code),
            _ => None,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if let AppError::Internal(source) = &self {
            tracing::error!(error = %ErrorChain(source.as_ref()), "request failed");
        }
        let status = self.status();
        let message = self.to_string();
        let mut response = (status, Json(serde_json::json!({ "error": message }))).into_response();
        let headers = response.headers_mut();
        if let Some(code) = self.code() {
            headers.insert("x-error-code", HeaderValue::from_static(code));
        }
        // Header values must be visible ASCII; our messages are, but never trust that.
        if let Ok(value) = HeaderValue::from_str(&message) {
            headers.insert("x-error-message", value);
        }
        if let AppError::EntryNotFound {
            commit: Some(commit),
            ..
        } = &self
            && let Ok(value) = HeaderValue::from_str(commit)
        {
            headers.insert("x-repo-commit", value);
        }
        if let AppError::RangeNotSatisfiable { size } = &self
            && let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}"))
        {
            headers.insert(header::CONTENT_RANGE, value);
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"hubmesh\""),
            );
        }
        response
    }
}

impl AppError {
    /// The git-lfs batch API's shape: `{"message"}` with the LFS content type; 401s carry the
    /// challenges git-lfs and git expect.
    pub(crate) fn into_lfs_response(self) -> Response {
        let mut resp = self.into_response();
        let status = resp.status();
        let message = resp
            .headers()
            .get("x-error-message")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("error")
            .to_owned();
        *resp.body_mut() = Body::from(serde_json::json!({ "message": message }).to_string());
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(LFS_JSON));
        headers.remove(header::CONTENT_LENGTH);
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                "lfs-authenticate",
                HeaderValue::from_static("Basic realm=\"hubmesh\""),
            );
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"hubmesh\""),
            );
        }
        resp
    }

    /// git smart HTTP's shape: the challenge git understands on a 401; a 403 carries its
    /// message as `text/plain`, which git prints to the user (`remote: …`), e.g. which node
    /// hosts a namespace; 429 and 503 say when to retry.
    pub(crate) fn into_git_response(self) -> Response {
        let mut resp = self.into_response();
        if resp.status() == StatusCode::FORBIDDEN
            && let Some(message) = resp
                .headers()
                .get("x-error-message")
                .and_then(|v| v.to_str().ok())
                .map(|m| format!("{m}\n"))
        {
            *resp.body_mut() = Body::from(message);
            let headers = resp.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            headers.remove(header::CONTENT_LENGTH);
        }
        if resp.status() == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"hubmesh\""),
            );
        }
        if matches!(
            resp.status(),
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        resp
    }
}

/// Displays an error with all its sources, `a: b: c`.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

impl From<hub_repo::RepoError> for AppError {
    fn from(e: hub_repo::RepoError) -> Self {
        use hub_repo::RepoError as E;
        match e {
            E::NotFound { .. } => AppError::RepoNotFound,
            E::AlreadyExists { repo } => {
                AppError::Conflict(hub_core::names::already_created(repo.kind()))
            }
            E::RevisionNotFound { revision } => {
                AppError::RevisionNotFound(format!("Invalid rev id: {revision}"))
            }
            E::EntryNotFound { path } => AppError::EntryNotFound {
                message: entry_not_found(&path),
                commit: None,
            },
            E::RefExists { name } => AppError::Conflict(format!("Reference {name} already exists")),
            E::ParentMismatch { .. } => {
                AppError::PreconditionFailed(hub_core::commit::PARENT_MOVED.to_owned())
            }
            E::InvalidPath { path, source } => {
                AppError::Unprocessable(format!("invalid path {path:?}: {source}"))
            }
            e @ (E::InvalidRefName { .. } | E::BadOperation(_)) => {
                AppError::BadRequest(e.to_string())
            }
            E::Io { ref source, .. }
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                ) =>
            {
                tracing::warn!(error = %ErrorChain(&e), "write refused");
                AppError::InsufficientStorage
            }
            other => AppError::internal(other),
        }
    }
}

impl From<hub_store::StoreError> for AppError {
    fn from(e: hub_store::StoreError) -> Self {
        use hub_store::StoreError as E;
        match e {
            e @ E::Mismatch { .. } => AppError::BadRequest(e.to_string()),
            e if e.is_storage_full() => {
                tracing::warn!(error = %ErrorChain(&e), "write refused");
                AppError::InsufficientStorage
            }
            e => AppError::internal(e),
        }
    }
}

impl From<hub_xet::XetError> for AppError {
    fn from(e: hub_xet::XetError) -> Self {
        use hub_xet::XetError as E;
        match e {
            E::Store(e) => e.into(),
            E::TooLarge(_) => AppError::PayloadTooLarge(e.to_string()),
            e if e.is_client_error() => AppError::BadRequest(e.to_string()),
            e => AppError::internal(e),
        }
    }
}

impl From<AccessError> for AppError {
    fn from(e: AccessError) -> Self {
        match e {
            AccessError::NotFound => AppError::RepoNotFound,
            AccessError::Unauthorized => AppError::Unauthorized("Invalid user token."),
            e @ AccessError::Forbidden { .. } => AppError::Forbidden(e.to_string()),
            e @ AccessError::HostedElsewhere { .. } => AppError::Coded {
                status: StatusCode::FORBIDDEN,
                code: "NamespaceHostedElsewhere",
                message: e.to_string(),
            },
            e @ AccessError::Pending { .. } => AppError::Unavailable(e.to_string()),
            AccessError::Upstream(why) => AppError::Unavailable(why),
            AccessError::Refused(why) => AppError::Forbidden(why),
            e @ AccessError::Gated { anonymous, .. } => AppError::Coded {
                status: if anonymous {
                    StatusCode::UNAUTHORIZED
                } else {
                    StatusCode::FORBIDDEN
                },
                code: "GatedRepo",
                message: e.to_string(),
            },
            AccessError::UpstreamGated(message) => AppError::Coded {
                status: StatusCode::FORBIDDEN,
                code: "GatedRepo",
                message,
            },
            AccessError::Internal(e) => e.into(),
            other => AppError::internal(other),
        }
    }
}

impl From<hub_core::Error> for AppError {
    fn from(e: hub_core::Error) -> Self {
        match e {
            hub_core::Error::Repo(e) => e.into(),
            hub_core::Error::Store(e) => e.into(),
            other => AppError::internal(other),
        }
    }
}

impl From<CommitError> for AppError {
    fn from(e: CommitError) -> Self {
        match e {
            e @ CommitError::InvalidPath { .. } => AppError::Unprocessable(e.to_string()),
            e @ (CommitError::NotUploaded { .. } | CommitError::SizeMismatch { .. }) => {
                AppError::BadRequest(e.to_string())
            }
            CommitError::Repo(e) => e.into(),
            CommitError::Storage(e) => e.into(),
            other => AppError::internal(other),
        }
    }
}

/// The Hub's message for a path that is not in a tree.
fn entry_not_found(path: &str) -> String {
    format!("A file with this name doesn't exist: {path}")
}

impl From<ResolveError> for AppError {
    fn from(e: ResolveError) -> Self {
        match e {
            ResolveError::Repo(e) => e.into(),
            ResolveError::NotInTree { path, commit } => AppError::EntryNotFound {
                message: entry_not_found(&path),
                commit: Some(commit),
            },
            ResolveError::Storage(e) => e.into(),
            other => AppError::internal(other),
        }
    }
}

impl From<RepoOpError> for AppError {
    fn from(e: RepoOpError) -> Self {
        match e {
            RepoOpError::Access(e) => e.into(),
            e @ RepoOpError::NoNamespace { .. } => AppError::Forbidden(e.to_string()),
            RepoOpError::Repo(e) => e.into(),
            RepoOpError::Storage(e) => e.into(),
            other => AppError::internal(other),
        }
    }
}

impl From<hub_core::collections::CollectionError> for AppError {
    fn from(e: hub_core::collections::CollectionError) -> Self {
        use hub_core::collections::CollectionError as E;
        match e {
            E::Access(e) => e.into(),
            E::NotFound(message) => AppError::Coded {
                status: StatusCode::NOT_FOUND,
                code: "NotFound",
                message,
            },
            E::Conflict { message, .. } => AppError::Conflict(message),
            E::BadRequest(message) => AppError::BadRequest(message),
            E::Storage(e) => e.into(),
            other => AppError::internal(other),
        }
    }
}

impl From<hub_core::webhooks::WebhookError> for AppError {
    fn from(e: hub_core::webhooks::WebhookError) -> Self {
        use hub_core::webhooks::WebhookError as E;
        match e {
            E::NotFound(id) => AppError::Coded {
                status: StatusCode::NOT_FOUND,
                code: "NotFound",
                message: format!("Webhook {id} not found"),
            },
            E::BadRequest(message) => AppError::BadRequest(message),
            E::Storage(e) => e.into(),
            other => AppError::internal(other),
        }
    }
}

impl From<hub_core::gate::GateError> for AppError {
    fn from(e: hub_core::gate::GateError) -> Self {
        use hub_core::gate::GateError as E;
        match e {
            E::Access(e) => e.into(),
            e @ (E::NotGated { .. } | E::AlreadyGranted(_) | E::BadRequest(_)) => {
                AppError::BadRequest(e.to_string())
            }
            e @ (E::NoRequest(_) | E::AlreadyThere { .. }) => AppError::Coded {
                status: StatusCode::NOT_FOUND,
                code: "AccessRequestNotFound",
                message: e.to_string(),
            },
            E::Storage(e) => e.into(),
            other => AppError::internal(other),
        }
    }
}

impl From<hub_core::storage::LfsDeleteError> for AppError {
    fn from(e: hub_core::storage::LfsDeleteError) -> Self {
        use hub_core::storage::LfsDeleteError as E;
        match e {
            E::Access(e) => e.into(),
            e @ E::InvalidOid { .. } => AppError::BadRequest(e.to_string()),
            e @ E::InUse { .. } => AppError::Conflict(e.to_string()),
            E::Storage(e) => e.into(),
            other => AppError::internal(other),
        }
    }
}

impl From<DiscussionError> for AppError {
    fn from(e: DiscussionError) -> Self {
        match e {
            DiscussionError::Access(e) => e.into(),
            e @ (DiscussionError::NotFound { .. } | DiscussionError::CommentNotFound { .. }) => {
                AppError::Coded {
                    status: StatusCode::NOT_FOUND,
                    code: "EntryNotFound",
                    message: e.to_string(),
                }
            }
            e @ (DiscussionError::NotOpen { .. } | DiscussionError::Conflicts { .. }) => {
                AppError::Conflict(e.to_string())
            }
            e @ (DiscussionError::NotPullRequest { .. } | DiscussionError::Invalid(_)) => {
                AppError::BadRequest(e.to_string())
            }
            DiscussionError::Repo(e) => e.into(),
            DiscussionError::Storage(e) => e.into(),
            other => AppError::internal(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_507_without_detail() {
        let full = hub_store::StoreError::StorageFull {
            op: "write block",
            path: "/data/store/tmp/1.blk".into(),
            source: Some(std::io::Error::from(std::io::ErrorKind::StorageFull)),
        };
        let response = AppError::from(full).into_response();
        assert_eq!(response.status(), StatusCode::INSUFFICIENT_STORAGE);
        let message = response.headers()["x-error-message"].to_str().unwrap();
        assert!(!message.contains("/data"), "{message}");
        let repo_full = hub_repo::RepoError::Io {
            context: "write",
            path: "/data/repos/x".into(),
            source: std::io::Error::from_raw_os_error(28),
        };
        assert_eq!(
            AppError::from(repo_full).into_response().status(),
            StatusCode::INSUFFICIENT_STORAGE
        );
        let mismatch = hub_store::StoreError::Mismatch {
            sha256: hub_store::Sha256([1; 32]),
            size: 3,
            expected: hub_store::Sha256([2; 32]),
            expected_size: 3,
        };
        assert_eq!(
            AppError::from(mismatch).into_response().status(),
            StatusCode::BAD_REQUEST
        );
    }
}
