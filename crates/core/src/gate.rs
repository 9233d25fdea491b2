//! Gated repositories: the gate (`auto` or `manual` approval, or none), users' access requests
//! and their status, and the rule that serves a gated repo's files only to those let in.
//!
//! **Storage.** As discussions and likes (ADR 0008), the gate lives in the repo itself: an
//! append-only record under `refs/hub/gate`, one thread for the gate's settings and one
//! thread per requesting user, each entry a JSON event; the state is the last event of each
//! thread. The ref is one of the refs the hosting node signs, so the gate and every grant
//! replicate with the repo, and every node that serves its files enforces the same list
//! (ADR 0013). Writes go to the hosting node, as commits do.
//!
//! **Rules**, as on the Hub: the repo's info, card and file listing stay readable to whoever
//! may read the repo; its files (resolve, git, LFS, Xet) need a grant, unless the caller may
//! write to the repo. A request to an `auto` gate is accepted at once; to a `manual` gate it
//! waits for a writer to accept or reject it. The card's `extra_gated_fields` name the fields
//! a request must fill in. Users are named as on every node (a grant to `bob` serves the
//! account `bob` on any node).

use crate::{AccessError, Error, Hub, Need, blocking};
use hub_auth::Principal;
use hub_protocol::repo::RepoId;
use hub_repo::{RepoError, Repos};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// The ref holding a repo's gate and access requests.
pub const GATE_REF: &str = "refs/hub/gate";
/// Largest serialized `fields` of one request, and longest rejection reason.
pub const MAX_FIELDS_BYTES: usize = 16 * 1024;
pub const MAX_REASON: usize = 200;

/// How requests to a gated repo are approved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GateMode {
    Auto,
    Manual,
}

impl GateMode {
    pub fn as_str(self) -> &'static str {
        match self {
            GateMode::Auto => "auto",
            GateMode::Manual => "manual",
        }
    }
}

/// Where an access request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestStatus {
    Pending,
    Accepted,
    Rejected,
}

impl RequestStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Pending => "pending",
            RequestStatus::Accepted => "accepted",
            RequestStatus::Rejected => "rejected",
        }
    }
}

impl std::str::FromStr for RequestStatus {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "pending" => Ok(RequestStatus::Pending),
            "accepted" => Ok(RequestStatus::Accepted),
            "rejected" => Ok(RequestStatus::Rejected),
            _ => Err(()),
        }
    }
}

/// One stored event (a record entry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum GateEvent {
    /// The gate changes (`None`: not gated).
    Settings {
        gated: Option<GateMode>,
        by: String,
        at: i64,
    },
    /// A user's request is made or handled (or access granted without one).
    Request {
        user: String,
        status: RequestStatus,
        by: String,
        at: i64,
        #[serde(default)]
        fields: Option<Map<String, Value>>,
        #[serde(default)]
        reason: Option<String>,
    },
}

/// A user's access request, folded from its events.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessRequest {
    pub user: String,
    /// The request's id: its thread number.
    pub id: u64,
    pub status: RequestStatus,
    /// When the user first asked (or was first granted access).
    pub requested_at: i64,
    pub fields: Option<Map<String, Value>>,
    pub reason: Option<String>,
}

/// A repo's gate: its mode and every request, by user.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Gate {
    pub mode: Option<GateMode>,
    pub requests: BTreeMap<String, AccessRequest>,
    /// The thread of the settings, once the gate was ever set.
    settings_thread: Option<u64>,
}

impl Gate {
    /// May `user` download files (ignoring write access, which always may)?
    pub fn lets_in(&self, user: &str) -> bool {
        self.mode.is_none()
            || self
                .requests
                .get(user)
                .is_some_and(|r| r.status == RequestStatus::Accepted)
    }
}

/// The gate of `id` (blocking). Entries that do not parse are skipped (never a panic).
pub fn gate(repos: &Repos, id: &RepoId) -> Result<Gate, RepoError> {
    let mut gate = Gate::default();
    for (thread, entries) in repos.read_all_records(id, GATE_REF)? {
        for entry in entries {
            match serde_json::from_slice::<GateEvent>(&entry) {
                Ok(GateEvent::Settings { gated, .. }) => {
                    gate.mode = gated;
                    gate.settings_thread = Some(thread);
                }
                Ok(GateEvent::Request {
                    user,
                    status,
                    at,
                    fields,
                    reason,
                    ..
                }) => {
                    let request =
                        gate.requests
                            .entry(user.clone())
                            .or_insert_with(|| AccessRequest {
                                user,
                                id: thread,
                                status,
                                requested_at: at,
                                fields: None,
                                reason: None,
                            });
                    request.status = status;
                    if fields.is_some() {
                        request.fields = fields;
                    }
                    request.reason = reason;
                }
                Err(_) => {}
            }
        }
    }
    Ok(gate)
}

/// Why a gate operation was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GateError {
    #[error(transparent)]
    Access(#[from] AccessError),
    /// The repo has no gate (the Hub's 400).
    #[error("{} is not a gated repo", repo.hub_id())]
    NotGated { repo: RepoId },
    /// No request of that user or id (the Hub's 404).
    #[error("no access request found for {0}")]
    NoRequest(String),
    /// The request already has that status (the Hub's 404).
    #[error("the access request of {user} is already {}", status.as_str())]
    AlreadyThere { user: String, status: RequestStatus },
    /// `grant` to a user who already has access (the Hub's 400).
    #[error("{0} already has access to the repo")]
    AlreadyGranted(String),
    /// A request that misses a field the card's `extra_gated_fields` asks for, or too large.
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Storage(#[from] Error),
}

impl From<RepoError> for GateError {
    fn from(e: RepoError) -> Self {
        GateError::Storage(e.into())
    }
}

impl From<tokio::task::JoinError> for GateError {
    fn from(e: tokio::task::JoinError) -> Self {
        GateError::Storage(e.into())
    }
}

/// Whom a writer's decision is about: a user name or a request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestRef {
    User(String),
    Id(u64),
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The names of the fields the card's `extra_gated_fields` asks for (the card of `main`).
fn required_fields(repos: &Repos, id: &RepoId) -> Vec<String> {
    let Ok((entry, bytes)) = repos.file(id, "main", "README.md") else {
        return Vec::new();
    };
    if entry.lfs.is_some() {
        return Vec::new();
    }
    let card = hub_search::parse_card(&String::from_utf8_lossy(&bytes));
    match card.card_data.get("extra_gated_fields") {
        Some(Value::Object(fields)) => fields.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

fn append(
    repos: &Repos,
    id: &RepoId,
    thread: Option<u64>,
    event: &GateEvent,
    who: &hub_repo::Author,
    message: &str,
) -> Result<(), Error> {
    let bytes = serde_json::to_vec(event).map_err(std::io::Error::other)?;
    repos.append_record(id, GATE_REF, thread, &bytes, message, who)?;
    Ok(())
}

/// Folded gates by repo, with the `refs/hub/gate` tip they were folded at: a download reads
/// the tip (one ref lookup) and folds again only when it moved.
#[derive(Debug, Default)]
pub(crate) struct GateCache(Mutex<HashMap<RepoId, (String, Arc<Gate>)>>);

/// Gates cached at most (the cache is emptied when full).
const CACHED_GATES: usize = 1024;

impl Hub {
    /// The gate of `id` (the caller checked read access).
    pub async fn gate(&self, id: &RepoId) -> Result<Arc<Gate>, Error> {
        let (hub, id) = (self.clone(), id.clone());
        blocking(move || {
            let Some(tip) = hub.repos().refs_under(&id, GATE_REF)?.remove(GATE_REF) else {
                return Ok(Arc::new(Gate::default()));
            };
            let cache = &hub.inner.gates.0;
            if let Some((at, folded)) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&id)
                && *at == tip
            {
                return Ok(folded.clone());
            }
            let folded = Arc::new(gate(hub.repos(), &id)?);
            let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.len() >= CACHED_GATES {
                cache.clear();
            }
            cache.insert(id, (tip, folded.clone()));
            Ok(folded)
        })
        .await
    }

    /// After read access was granted: may `principal` download the files of `id`? Writers
    /// always may; others need the gate's grant. Anonymous callers of a gated repo are
    /// `GatedAnonymous` (log in), others `Gated`.
    pub(crate) async fn check_gate(
        &self,
        principal: Option<&Principal>,
        id: &RepoId,
        private: bool,
    ) -> Result<(), AccessError> {
        let gate = self.gate(id).await?;
        if gate.mode.is_none() {
            return Ok(());
        }
        let Some(principal) = principal else {
            return Err(AccessError::Gated {
                repo: id.clone(),
                anonymous: true,
            });
        };
        if gate.lets_in(&principal.user.name)
            || self
                .decide(Some(principal), id, private, Need::Write)
                .await
                .is_ok()
        {
            return Ok(());
        }
        Err(AccessError::Gated {
            repo: id.clone(),
            anonymous: false,
        })
    }

    /// Sets the gate of `id` (`None`: not gated); needs the right to change the repo's
    /// settings. Setting what is already set writes nothing.
    pub async fn set_gated(
        &self,
        principal: &Principal,
        id: &RepoId,
        mode: Option<GateMode>,
    ) -> Result<(), GateError> {
        self.access(Some(principal), id, crate::Change::Visibility.need())
            .await?;
        let (repos, repo, who) = (
            self.repos().clone(),
            id.clone(),
            crate::author_of(principal),
        );
        let changed = blocking(move || {
            let current = gate(&repos, &repo)?;
            if current.mode == mode {
                return Ok::<_, GateError>(false);
            }
            let event = GateEvent::Settings {
                gated: mode,
                by: who.name.clone(),
                at: now(),
            };
            append(
                &repos,
                &repo,
                current.settings_thread,
                &event,
                &who,
                "gate: settings",
            )?;
            Ok(true)
        })
        .await?;
        if changed {
            self.after_write(id).await;
        }
        Ok(())
    }

    /// `principal` asks for access to the gated repo `id`, with the form's `fields`. An
    /// `auto` gate accepts at once; a `manual` one records a pending request. Asking again
    /// changes nothing (a rejected request stays rejected until a writer changes it).
    pub async fn request_access(
        &self,
        principal: &Principal,
        id: &RepoId,
        fields: Map<String, Value>,
    ) -> Result<RequestStatus, GateError> {
        self.access(Some(principal), id, Need::Read).await?;
        self.hosted_here(id).await?;
        if serde_json::to_vec(&fields).map_or(0, |b| b.len()) > MAX_FIELDS_BYTES {
            return Err(GateError::BadRequest(format!(
                "the request's fields are over {MAX_FIELDS_BYTES} bytes"
            )));
        }
        let (repos, repo, who) = (
            self.repos().clone(),
            id.clone(),
            crate::author_of(principal),
        );
        let (status, changed) = blocking(move || {
            let current = gate(&repos, &repo)?;
            let Some(mode) = current.mode else {
                return Err(GateError::NotGated { repo });
            };
            if let Some(existing) = current.requests.get(&who.name) {
                return Ok((existing.status, false));
            }
            for name in required_fields(&repos, &repo) {
                let filled = match fields.get(&name) {
                    None | Some(Value::Null) => false,
                    Some(Value::String(s)) => !s.trim().is_empty(),
                    Some(Value::Bool(b)) => *b,
                    Some(_) => true,
                };
                if !filled {
                    return Err(GateError::BadRequest(format!(
                        "the field {name:?} of the access form is required"
                    )));
                }
            }
            let status = match mode {
                GateMode::Auto => RequestStatus::Accepted,
                GateMode::Manual => RequestStatus::Pending,
            };
            let event = GateEvent::Request {
                user: who.name.clone(),
                status,
                by: who.name.clone(),
                at: now(),
                fields: Some(fields),
                reason: None,
            };
            append(&repos, &repo, None, &event, &who, "gate: request")?;
            Ok((status, true))
        })
        .await?;
        if changed {
            self.after_write(id).await;
        }
        Ok(status)
    }

    /// The requests of the gated repo `id` with `status`, oldest first; for writers.
    pub async fn access_requests(
        &self,
        principal: &Principal,
        id: &RepoId,
        status: RequestStatus,
    ) -> Result<Vec<AccessRequest>, GateError> {
        self.access(Some(principal), id, Need::Write).await?;
        let gate = self.gate(id).await?;
        if gate.mode.is_none() {
            return Err(GateError::NotGated { repo: id.clone() });
        }
        let mut out: Vec<_> = gate
            .requests
            .values()
            .filter(|r| r.status == status)
            .cloned()
            .collect();
        out.sort_by_key(|r| (r.requested_at, r.id));
        Ok(out)
    }

    /// A writer moves a request to `status` (accept, reject with an optional reason, or
    /// back to pending, which cancels a grant).
    pub async fn handle_access_request(
        &self,
        principal: &Principal,
        id: &RepoId,
        target: RequestRef,
        status: RequestStatus,
        reason: Option<String>,
    ) -> Result<(), GateError> {
        self.access(Some(principal), id, Need::Write).await?;
        if reason
            .as_ref()
            .is_some_and(|r| r.chars().count() > MAX_REASON)
        {
            return Err(GateError::BadRequest(format!(
                "the rejection reason is over {MAX_REASON} characters"
            )));
        }
        let (repos, repo, who) = (
            self.repos().clone(),
            id.clone(),
            crate::author_of(principal),
        );
        blocking(move || {
            let current = gate(&repos, &repo)?;
            if current.mode.is_none() {
                return Err(GateError::NotGated { repo });
            }
            let request = match &target {
                RequestRef::User(user) => current.requests.get(user),
                RequestRef::Id(n) => current.requests.values().find(|r| r.id == *n),
            };
            let Some(request) = request else {
                return Err(GateError::NoRequest(match target {
                    RequestRef::User(user) => user,
                    RequestRef::Id(n) => format!("request {n}"),
                }));
            };
            if request.status == status {
                return Err(GateError::AlreadyThere {
                    user: request.user.clone(),
                    status,
                });
            }
            let event = GateEvent::Request {
                user: request.user.clone(),
                status,
                by: who.name.clone(),
                at: now(),
                fields: None,
                reason: reason.filter(|_| status == RequestStatus::Rejected),
            };
            append(
                &repos,
                &repo,
                Some(request.id),
                &event,
                &who,
                "gate: handle",
            )?;
            Ok(())
        })
        .await?;
        self.after_write(id).await;
        Ok(())
    }

    /// A writer lets `user` in without a request of theirs.
    pub async fn grant_access(
        &self,
        principal: &Principal,
        id: &RepoId,
        user: &str,
    ) -> Result<(), GateError> {
        self.access(Some(principal), id, Need::Write).await?;
        if hub_protocol::name::Name::new(user).is_err() {
            return Err(GateError::BadRequest(format!("invalid user name {user:?}")));
        }
        let (repos, repo, who, user) = (
            self.repos().clone(),
            id.clone(),
            crate::author_of(principal),
            user.to_owned(),
        );
        blocking(move || {
            let current = gate(&repos, &repo)?;
            if current.mode.is_none() {
                return Err(GateError::NotGated { repo });
            }
            let existing = current.requests.get(&user);
            if existing.is_some_and(|r| r.status == RequestStatus::Accepted) {
                return Err(GateError::AlreadyGranted(user));
            }
            let event = GateEvent::Request {
                user: user.clone(),
                status: RequestStatus::Accepted,
                by: who.name.clone(),
                at: now(),
                fields: None,
                reason: None,
            };
            append(
                &repos,
                &repo,
                existing.map(|r| r.id),
                &event,
                &who,
                "gate: grant",
            )?;
            Ok(())
        })
        .await?;
        self.after_write(id).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::hub;

    #[tokio::test]
    async fn a_manual_gate_lets_in_only_accepted_users() {
        let (_dir, hub, admin) = hub();
        let id = RepoId::parse(hub_protocol::repo::RepoType::Model, "admin/gated").unwrap();
        let grant = hub.access_create(&admin, &id).await.unwrap();
        hub.create_repo(grant, false).await.unwrap();
        // Not gated: nothing to request, everyone downloads.
        assert!(hub.gate(&id).await.unwrap().lets_in("bob"));
        assert!(matches!(
            hub.request_access(&admin, &id, Map::new()).await,
            Err(GateError::NotGated { .. })
        ));
        hub.set_gated(&admin, &id, Some(GateMode::Manual))
            .await
            .unwrap();
        let g = hub.gate(&id).await.unwrap();
        assert_eq!(g.mode, Some(GateMode::Manual));
        assert!(!g.lets_in("bob"));
        // The writer (admin) downloads; anonymous callers are asked to log in.
        hub.access(Some(&admin), &id, Need::Download).await.unwrap();
        assert!(matches!(
            hub.access(None, &id, Need::Download).await,
            Err(AccessError::Gated {
                anonymous: true,
                ..
            })
        ));
        // Grant, then cancel (back to pending), then reject with a reason.
        hub.grant_access(&admin, &id, "bob").await.unwrap();
        assert!(matches!(
            hub.grant_access(&admin, &id, "bob").await,
            Err(GateError::AlreadyGranted(_))
        ));
        assert!(hub.gate(&id).await.unwrap().lets_in("bob"));
        let accepted = hub
            .access_requests(&admin, &id, RequestStatus::Accepted)
            .await
            .unwrap();
        assert_eq!(accepted.len(), 1);
        let bob = RequestRef::Id(accepted[0].id);
        hub.handle_access_request(&admin, &id, bob.clone(), RequestStatus::Pending, None)
            .await
            .unwrap();
        assert!(!hub.gate(&id).await.unwrap().lets_in("bob"));
        assert!(matches!(
            hub.handle_access_request(&admin, &id, bob.clone(), RequestStatus::Pending, None)
                .await,
            Err(GateError::AlreadyThere { .. })
        ));
        hub.handle_access_request(
            &admin,
            &id,
            RequestRef::User("bob".into()),
            RequestStatus::Rejected,
            Some("no".into()),
        )
        .await
        .unwrap();
        let g = hub.gate(&id).await.unwrap();
        assert_eq!(g.requests["bob"].status, RequestStatus::Rejected);
        assert_eq!(g.requests["bob"].reason.as_deref(), Some("no"));
        assert!(matches!(
            hub.handle_access_request(
                &admin,
                &id,
                RequestRef::User("carol".into()),
                RequestStatus::Accepted,
                None
            )
            .await,
            Err(GateError::NoRequest(_))
        ));
        // Ungating lets everyone in again.
        hub.set_gated(&admin, &id, None).await.unwrap();
        assert!(hub.gate(&id).await.unwrap().lets_in("carol"));
        hub.access(None, &id, Need::Download).await.unwrap();
    }
}
