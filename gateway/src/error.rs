//! The one error boundary of the gateway.
//!
//! Every handler returns `Result<_, AppError>`. The response carries the status, the Hub's
//! `X-Error-Code` (when the error has one) and `X-Error-Message` headers, and a JSON body
//! `{"error": message}` — the shapes `huggingface_hub`'s `hf_raise_for_status` reads. A 500
//! never carries internal detail: the cause is logged here, where it is handled, and the client
//! sees a generic message.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};

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
            headers.insert(http::header::CONTENT_RANGE, value);
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"hubmesh\""),
            );
        }
        response
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
                AppError::Conflict(format!("repository {} already exists", repo.hub_id()))
            }
            E::RevisionNotFound { revision } => {
                AppError::RevisionNotFound(format!("Invalid rev id: {revision}"))
            }
            E::EntryNotFound { path } => AppError::EntryNotFound {
                message: format!("A file with this name doesn't exist: {path}"),
                commit: None,
            },
            E::RefExists { name } => AppError::Conflict(format!("reference {name} already exists")),
            E::ParentMismatch { .. } => AppError::PreconditionFailed(e.to_string()),
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
