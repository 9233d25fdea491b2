//! The gateway's side of access: `hub-core` decides ([`hub_core::Hub::access`]), this module
//! renders its answers as the Hub API's errors and gives handlers short calls.
//!
//! Surfaces with their own error conventions (git's 401 challenge to anonymous callers, the
//! LFS batch API's JSON) start from the same [`hub_core::AccessError`] and adjust it there.

use crate::AppState;
use crate::error::AppError;
use http::StatusCode;
use hub_auth::Principal;
use hub_core::{AccessError, CommitError, Granted, Need};
use hub_protocol::repo::RepoId;

/// May `principal` do what `need` says to repo `id`? See [`hub_core::Hub::access`].
pub(crate) async fn access(
    state: &AppState,
    principal: Option<&Principal>,
    id: &RepoId,
    need: Need,
) -> Result<Granted, AppError> {
    Ok(state.hub().access(principal, id, need).await?)
}

/// Read access; the repo's metadata when allowed.
pub(crate) async fn read_access(
    state: &AppState,
    principal: Option<&Principal>,
    id: &RepoId,
) -> Result<hub_repo::RepoMeta, AppError> {
    Ok(access(state, principal, id, Need::Read).await?.meta)
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
