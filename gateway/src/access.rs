//! The gateway's side of access: `hub-core` decides ([`hub_core::Hub::access`]); this module
//! gives handlers short calls whose refusals are [`AppError`]s (mapped in `error`).
//!
//! Surfaces with their own conventions (git's 401 challenge to anonymous callers, the LFS
//! batch API's) start from the same [`hub_core::AccessError`] and adjust it there.

use crate::AppState;
use crate::error::AppError;
use hub_auth::Principal;
use hub_core::{Granted, Need};
use hub_protocol::repo::RepoId;

/// May `principal` do what `need` says to repo `id`? See [`hub_core::Hub::access`].
pub(crate) async fn access(
    state: &AppState,
    principal: Option<&Principal>,
    id: &RepoId,
    need: Need,
) -> Result<Granted, AppError> {
    let granted = state.hub().access(principal, id, need).await?;
    audit(state, principal, id, need);
    Ok(granted)
}

/// Records a granted access in the audit log (surfaces that call `hub-core` directly, git
/// and the LFS batch API, call this after their own refusal handling).
pub(crate) fn audit(state: &AppState, principal: Option<&Principal>, id: &RepoId, need: Need) {
    let Some(log) = state.audit() else {
        return;
    };
    let actor = principal.map_or("anonymous", |p| p.user.name.as_str());
    let repo = format!("{}/{}/{}", id.kind().plural(), id.namespace(), id.name());
    match need {
        Need::Read | Need::Download => log.record_read(actor, &repo),
        Need::Write | Need::RewriteHistory => {
            log.record(actor, "write", Some(&repo), serde_json::json!({}));
        }
        Need::Admin => log.record(actor, "admin", Some(&repo), serde_json::json!({})),
    }
}

/// Read access; the repo's metadata when allowed.
pub(crate) async fn read_access(
    state: &AppState,
    principal: Option<&Principal>,
    id: &RepoId,
) -> Result<hub_repo::RepoMeta, AppError> {
    Ok(access(state, principal, id, Need::Read).await?.meta)
}
