//! Access: may this caller do this to that repository?
//!
//! One path for every surface, in one order: (1) a write must belong here — a namespace whose
//! accepted namespace document does not list this node is refused by name
//! ([`AccessError::HostedElsewhere`]) before any lookup, so a write never fetches the repo
//! from the mesh first; (2) the repo is looked up, and a public repo that a peer announced is
//! fetched on demand for reads; (3) `hub-auth` decides on the repo's visibility. A repo the
//! caller may not see is [`AccessError::NotFound`], exactly like a missing one.

use crate::mesh::EnsureError;
use crate::{Error, Hub, blocking};
use hub_auth::{Access, Decision, Principal};
use hub_protocol::repo::RepoId;
use hub_repo::RepoMeta;
use std::time::Duration;

/// How long a read of a repo this node does not hold waits for its git data from peers.
pub const ENSURE_REPO_WAIT: Duration = Duration::from_secs(30);

/// What the caller wants to do; each level includes the ones before it.
///
/// The Hub's roles: `read` < `contributor` < `write` < `admin`. Adding commits needs
/// [`Need::Write`] (contributor and up); rewriting history or deleting a branch or tag needs
/// [`Need::RewriteHistory`] (write and up); visibility, rename or move, and deletion of the
/// repo need [`Need::Admin`] (admin only). Owners and site admins may do all of it, within
/// what their token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Need {
    Read,
    /// Read the repo's files: read access, and for a gated repo a grant or write access
    /// (`gate`). The repo's info and listing need only [`Need::Read`].
    Download,
    Write,
    RewriteHistory,
    Admin,
}

impl Need {
    fn verb(self) -> &'static str {
        match self {
            Need::Read => "read",
            Need::Download => "download the files of",
            Need::Write => "write to",
            Need::RewriteHistory => "rewrite the history of",
            Need::Admin => "administer",
        }
    }
}

/// A caller allowed to act on a repository, with what was looked up to decide it.
#[derive(Debug, Clone)]
pub struct Granted {
    pub id: RepoId,
    pub meta: RepoMeta,
    pub principal: Option<Principal>,
    /// What the caller was allowed to do (and everything below it).
    pub need: Need,
}

/// Why access was refused. Surfaces render it in their own shape (Hub headers, git's 401
/// challenge, LFS JSON, OpenAI errors).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    /// The repo does not exist, or the caller may not know that it does.
    #[error("Repository not found")]
    NotFound,
    /// The request needs a (valid) token.
    #[error("Invalid user token.")]
    Unauthorized,
    /// The caller may see the repo but not do this.
    #[error("You don't have the rights to {} {}", need.verb(), repo.hub_id())]
    Forbidden { repo: RepoId, need: Need },
    /// The namespace is hosted by other nodes of the mesh: writes belong there.
    #[error("{}", hosted_elsewhere_message(namespace, hosts))]
    HostedElsewhere {
        namespace: String,
        hosts: Vec<String>,
    },
    /// Announced by a peer but not arrived yet; retry shortly.
    #[error("{} is being fetched from the mesh ({why}); retry shortly", repo.hub_id())]
    Pending { repo: RepoId, why: String },
    /// A pull-through mirror could not get the repo from its upstream now; the text names
    /// the upstream and why.
    #[error("{0}")]
    Upstream(String),
    /// A pull-through mirror's policy refuses the repo.
    #[error("{0}")]
    Refused(String),
    /// A gated repo whose files the caller was not let in to (the Hub's `GatedRepo`);
    /// `anonymous`: no token was sent, so logging in may be enough.
    #[error("{}", gated_message(repo, *anonymous))]
    Gated { repo: RepoId, anonymous: bool },
    /// A pull-through mirror's upstream gates the repo and did not let the mirror in (also
    /// `GatedRepo`); the text names the upstream and the token to set.
    #[error("{0}")]
    UpstreamGated(String),
    #[error("access check failed")]
    Internal(#[source] Error),
}

fn gated_message(repo: &RepoId, anonymous: bool) -> String {
    let what = repo.kind().as_str();
    if anonymous {
        format!(
            "Access to {what} {} is restricted. You must have access to it and be authenticated to access it. Please log in.",
            repo.hub_id()
        )
    } else {
        format!(
            "Access to {what} {} is restricted and you are not in the authorized list. Ask for access to it first.",
            repo.hub_id()
        )
    }
}

impl From<Error> for AccessError {
    fn from(e: Error) -> Self {
        AccessError::Internal(e)
    }
}

impl From<hub_repo::RepoError> for AccessError {
    fn from(e: hub_repo::RepoError) -> Self {
        AccessError::Internal(e.into())
    }
}

impl From<tokio::task::JoinError> for AccessError {
    fn from(e: tokio::task::JoinError) -> Self {
        AccessError::Internal(e.into())
    }
}

fn hosted_elsewhere_message(namespace: &str, hosts: &[String]) -> String {
    match hosts {
        [] => format!(
            "namespace {namespace:?} is hosted by other nodes of the mesh; send writes to them"
        ),
        [one] => {
            format!("namespace {namespace:?} is hosted by node {one}; send writes to that node")
        }
        many => format!(
            "namespace {namespace:?} is hosted by nodes {}; send writes to one of them",
            many.join(", ")
        ),
    }
}

impl Hub {
    /// May `principal` (`None`: anonymous) do what `need` says to the existing repo `id`?
    pub async fn access(
        &self,
        principal: Option<&Principal>,
        id: &RepoId,
        need: Need,
    ) -> Result<Granted, AccessError> {
        if need > Need::Download {
            self.hosted_here(id).await?;
        }
        let meta = self.meta(id, need <= Need::Download).await?;
        self.decide(principal, id, meta.private, need).await?;
        if need == Need::Download {
            self.check_gate(principal, id, meta.private).await?;
        }
        Ok(Granted {
            id: id.clone(),
            meta,
            principal: principal.cloned(),
            need,
        })
    }

    /// May `principal` create `id` (a new repo, or the target of a move)? The namespace must
    /// be hosted here and writable by the caller.
    pub async fn access_new(&self, principal: &Principal, id: &RepoId) -> Result<(), AccessError> {
        self.hosted_here(id).await?;
        self.decide(Some(principal), id, false, Need::Write).await
    }

    /// `hub-auth`'s decision for a repo of known visibility, as an [`AccessError`].
    pub async fn decide(
        &self,
        principal: Option<&Principal>,
        id: &RepoId,
        private: bool,
        need: Need,
    ) -> Result<(), AccessError> {
        let auth = self.auth().clone();
        let (caller, repo) = (principal.cloned(), id.clone());
        let decision = blocking(move || -> Result<Decision, Error> {
            let caller = caller.as_ref();
            Ok(match need {
                Need::Read | Need::Download => auth.decide(caller, &repo, private, Access::Read)?,
                Need::Write => auth.decide(caller, &repo, private, Access::Write)?,
                Need::RewriteHistory => auth.decide_force_push(caller, &repo, private)?,
                Need::Admin => auth.decide_admin(caller, &repo, private)?,
            })
        })
        .await?;
        match decision {
            Decision::Allow => Ok(()),
            Decision::NotFound => Err(AccessError::NotFound),
            Decision::Unauthorized => Err(AccessError::Unauthorized),
            Decision::Forbidden => Err(AccessError::Forbidden {
                repo: id.clone(),
                need,
            }),
        }
    }

    /// Refuses writes to a namespace whose accepted namespace document does not list this
    /// node as a delegate: the write would never be announced (only delegates sign).
    pub async fn hosted_here(&self, id: &RepoId) -> Result<(), AccessError> {
        match self.mesh().namespace_hosts(id.namespace()).await {
            None => Ok(()),
            Some(hosts) => Err(AccessError::HostedElsewhere {
                namespace: id.namespace().to_owned(),
                hosts,
            }),
        }
    }

    /// The repo's metadata; [`AccessError::NotFound`] when it does not exist. With `fetch`, a
    /// public repo this node does not hold but a peer announced is fetched on demand (the
    /// pack of the difference, then its LFS content in the background), waiting up to
    /// [`ENSURE_REPO_WAIT`] for the git part, else [`AccessError::Pending`].
    async fn meta(&self, id: &RepoId, fetch: bool) -> Result<RepoMeta, AccessError> {
        let lookup = || {
            let (repos, id) = (self.repos().clone(), id.clone());
            blocking(move || match repos.meta(&id) {
                Ok(meta) => Ok(Some(meta)),
                Err(hub_repo::RepoError::NotFound { .. }) => Ok(None),
                Err(e) => Err(AccessError::from(e)),
            })
        };
        if let Some(meta) = lookup().await? {
            return Ok(meta);
        }
        if !fetch {
            return Err(AccessError::NotFound);
        }
        let deadline = tokio::time::Instant::now() + ENSURE_REPO_WAIT;
        match self.mesh().ensure_repo(id, deadline).await {
            Ok(()) => {
                tracing::info!(repo = %id, "served from the mesh: fetched on demand");
                lookup().await?.ok_or(AccessError::NotFound)
            }
            Err(EnsureError::Pending(why)) => Err(AccessError::Pending {
                repo: id.clone(),
                why,
            }),
            Err(EnsureError::Unknown) => Err(AccessError::NotFound),
            Err(EnsureError::Unavailable(why)) => Err(AccessError::Upstream(why)),
            Err(EnsureError::Refused(why)) => Err(AccessError::Refused(why)),
            Err(EnsureError::Gated(why)) => Err(AccessError::UpstreamGated(why)),
        }
    }
}
