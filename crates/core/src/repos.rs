//! A repository's lifecycle: create, delete, move; and the changes to an existing repo that are
//! not commits (branches, tags, visibility), with the right each needs ([`Change::need`]).
//! Create, delete and move check access first (through
//! [`Hub::access`] / [`Hub::access_new`], so a write to a namespace hosted elsewhere is refused
//! by name before any lookup), does the work, and runs the after-write hook. Mirroring, Spaces
//! and the remote helper create and remove repos through these, as the HTTP API does.
//!
//! Must not depend on any surface: requests arrive parsed, answers leave as [`RepoOpError`].

use crate::{AccessError, Error, Granted, Hub, Need, blocking};
use hub_auth::Principal;
use hub_protocol::repo::RepoId;
use hub_repo::{Author, RepoError};

/// Why creating, deleting, moving or changing a repo was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepoOpError {
    #[error(transparent)]
    Access(#[from] AccessError),
    /// The namespace (user or organisation) has no account on this node.
    #[error("namespace {namespace} does not exist on this node")]
    NoNamespace { namespace: String },
    /// The repositories refused (already exists, not found, storage).
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error(transparent)]
    Storage(#[from] Error),
}

impl From<tokio::task::JoinError> for RepoOpError {
    fn from(e: tokio::task::JoinError) -> Self {
        RepoOpError::Storage(e.into())
    }
}

impl From<hub_auth::AuthError> for RepoOpError {
    fn from(e: hub_auth::AuthError) -> Self {
        RepoOpError::Storage(e.into())
    }
}

/// The git author of what `principal` writes: their user name, at `users.hubmesh`.
pub fn author_of(principal: &Principal) -> Author {
    Author::new(
        principal.user.name.clone(),
        format!("{}@users.hubmesh", principal.user.name),
    )
}

/// A change to an existing repo that is not a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    CreateBranch,
    /// Deleting a branch removes history.
    DeleteBranch,
    CreateTag,
    DeleteTag,
    /// Making the repo private or public.
    Visibility,
}

impl Change {
    /// The right a change needs (the Hub's roles: adding refs is a write; deleting one
    /// rewrites history; visibility is the admins').
    pub fn need(self) -> Need {
        match self {
            Change::CreateBranch | Change::CreateTag => Need::Write,
            Change::DeleteBranch | Change::DeleteTag => Need::RewriteHistory,
            Change::Visibility => Need::Admin,
        }
    }
}

/// Refuses `change` unless `granted` allows what it needs.
fn allowed(granted: &Granted, change: Change) -> Result<(), AccessError> {
    if granted.need >= change.need() {
        Ok(())
    } else {
        Err(AccessError::Forbidden {
            repo: granted.id.clone(),
            need: change.need(),
        })
    }
}

/// Permission to create one repository, from [`Hub::access_create`]: the only way to
/// [`Hub::create_repo`], so no surface creates a repo without the checks.
#[derive(Debug)]
pub struct CreateGrant {
    id: RepoId,
    author: Author,
}

impl CreateGrant {
    /// The repository it allows to create.
    pub fn id(&self) -> &RepoId {
        &self.id
    }

    /// Who creates it (the git author of its first commit).
    pub fn author(&self) -> &Author {
        &self.author
    }
}

impl Hub {
    /// May `principal` create `id`? The namespace must be hosted here, writable by the
    /// caller, and have an account here. The answer is what [`Hub::create_repo`] takes.
    pub async fn access_create(
        &self,
        principal: &Principal,
        id: &RepoId,
    ) -> Result<CreateGrant, RepoOpError> {
        // Namespaces are case-insensitive: `Admin/x` is created as `admin/x`.
        let (auth, namespace) = (self.auth().clone(), id.namespace().to_owned());
        let spelled = {
            let namespace = namespace.clone();
            blocking(move || Ok::<_, RepoOpError>(auth.namespace_spelling(&namespace)?)).await?
        };
        let Some(spelled) = spelled else {
            self.access_new(principal, id).await?;
            return Err(RepoOpError::NoNamespace { namespace });
        };
        let id = RepoId::new(id.kind(), &spelled, id.name())
            .map_err(|e| RepoOpError::Repo(hub_repo::RepoError::BadOperation(e.to_string())))?;
        self.access_new(principal, &id).await?;
        self.refuse_other_spelling(&id, None).await?;
        Ok(CreateGrant {
            id,
            author: author_of(principal),
        })
    }

    /// Refuses a new id that names a stored repo under another spelling (the Hub's ids are
    /// case-insensitive), except `allowed` itself (a move that only changes the case).
    async fn refuse_other_spelling(
        &self,
        id: &RepoId,
        allowed: Option<&RepoId>,
    ) -> Result<(), RepoOpError> {
        let (repos, wanted) = (self.repos().clone(), id.clone());
        let found =
            blocking(move || Ok::<_, RepoOpError>(repos.find_ignoring_case(&wanted))).await?;
        match found {
            Some(repo) if Some(&repo) != allowed => {
                Err(RepoOpError::Repo(hub_repo::RepoError::AlreadyExists {
                    repo,
                }))
            }
            _ => Ok(()),
        }
    }

    /// Creates the repo `grant` allows (private or public), with an initial commit by its
    /// creator, and runs the after-write hook.
    pub async fn create_repo(&self, grant: CreateGrant, private: bool) -> Result<(), RepoOpError> {
        let CreateGrant { id, author } = grant;
        let (repos, created) = (self.repos().clone(), id.clone());
        blocking(move || Ok::<_, RepoOpError>(repos.create_with(&created, &author, private)?))
            .await?;
        if let Err(e) = self.redirects().forget(&id) {
            tracing::warn!(repo = %id, error = %e, "redirect not dropped");
        }
        self.after_write(&id).await;
        Ok(())
    }

    /// Deletes `id` (admins of the repo only). Its LFS objects stop being GC roots on its
    /// account; gc keeps what other repos hold.
    pub async fn delete_repo(&self, principal: &Principal, id: &RepoId) -> Result<(), RepoOpError> {
        self.access(Some(principal), id, Need::Admin).await?;
        let (hub, deleted) = (self.clone(), id.clone());
        blocking(move || {
            hub.release_lfs(&deleted)?;
            Ok::<_, RepoOpError>(hub.repos().delete(&deleted)?)
        })
        .await?;
        self.after_write(id).await;
        Ok(())
    }

    /// Renames `from` to `to` (same type), keeping history and settings: admin of `from`, and
    /// allowed to create `to`.
    pub async fn move_repo(
        &self,
        principal: &Principal,
        from: &RepoId,
        to: &RepoId,
    ) -> Result<(), RepoOpError> {
        self.access(Some(principal), from, Need::Admin).await?;
        self.access_new(principal, to).await?;
        self.refuse_other_spelling(to, Some(from)).await?;
        let (repos, f, t) = (self.repos().clone(), from.clone(), to.clone());
        blocking(move || Ok::<_, RepoOpError>(repos.rename(&f, &t)?)).await?;
        if let Err(e) = self.redirects().record(from, to) {
            tracing::warn!(repo = %from, error = %e, "redirect not recorded");
        }
        // The webhooks watching the old id see one `move`, not a delete and a create.
        self.move_webhooks(from, to).await;
        self.after_write(from).await;
        self.after_write(to).await;
        Ok(())
    }

    /// Creates `branch` of the granted repo at `start` (default: `main`'s head).
    pub async fn create_branch(
        &self,
        granted: &Granted,
        branch: &str,
        start: Option<&str>,
    ) -> Result<(), RepoOpError> {
        allowed(granted, Change::CreateBranch)?;
        let (repos, id) = (self.repos().clone(), granted.id.clone());
        let (branch, start) = (branch.to_owned(), start.map(str::to_owned));
        blocking(move || {
            Ok::<_, RepoOpError>(repos.create_branch(&id, &branch, start.as_deref())?)
        })
        .await?;
        self.after_write(&granted.id).await;
        Ok(())
    }

    /// Deletes `branch` of the granted repo.
    pub async fn delete_branch(&self, granted: &Granted, branch: &str) -> Result<(), RepoOpError> {
        allowed(granted, Change::DeleteBranch)?;
        let (repos, id, branch) = (self.repos().clone(), granted.id.clone(), branch.to_owned());
        blocking(move || Ok::<_, RepoOpError>(repos.delete_branch(&id, &branch)?)).await?;
        self.after_write(&granted.id).await;
        Ok(())
    }

    /// Tags revision `rev` of the granted repo as `tag`.
    pub async fn create_tag(
        &self,
        granted: &Granted,
        tag: &str,
        rev: &str,
    ) -> Result<(), RepoOpError> {
        allowed(granted, Change::CreateTag)?;
        let (repos, id) = (self.repos().clone(), granted.id.clone());
        let (tag, rev) = (tag.to_owned(), rev.to_owned());
        blocking(move || Ok::<_, RepoOpError>(repos.create_tag(&id, &tag, &rev)?)).await?;
        self.after_write(&granted.id).await;
        Ok(())
    }

    /// Deletes `tag` of the granted repo.
    pub async fn delete_tag(&self, granted: &Granted, tag: &str) -> Result<(), RepoOpError> {
        allowed(granted, Change::DeleteTag)?;
        let (repos, id, tag) = (self.repos().clone(), granted.id.clone(), tag.to_owned());
        blocking(move || Ok::<_, RepoOpError>(repos.delete_tag(&id, &tag)?)).await?;
        self.after_write(&granted.id).await;
        Ok(())
    }

    /// Makes the granted repo private or public.
    pub async fn set_private(&self, granted: &Granted, private: bool) -> Result<(), RepoOpError> {
        allowed(granted, Change::Visibility)?;
        let (repos, id) = (self.repos().clone(), granted.id.clone());
        blocking(move || Ok::<_, RepoOpError>(repos.set_private(&id, private)?)).await?;
        self.after_write(&granted.id).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::hub;
    use hub_protocol::repo::RepoType;

    #[tokio::test]
    async fn create_move_delete_check_access_and_namespaces() {
        let (_dir, hub, admin) = hub();
        let id = RepoId::parse(RepoType::Model, "admin/m").unwrap();
        let grant = hub.access_create(&admin, &id).await.unwrap();
        hub.create_repo(grant, true).await.unwrap();
        assert!(hub.repos().meta(&id).unwrap().private);
        let grant = hub.access_create(&admin, &id).await.unwrap();
        assert!(matches!(
            hub.create_repo(grant, false).await,
            Err(RepoOpError::Repo(RepoError::AlreadyExists { .. }))
        ));
        // A namespace with no account here: refused by name, before anything is created.
        let orphan = RepoId::parse(RepoType::Model, "nobody/m").unwrap();
        assert!(matches!(
            hub.access_create(&admin, &orphan).await,
            Err(RepoOpError::NoNamespace { namespace }) if namespace == "nobody"
        ));
        assert!(hub.repos().meta(&orphan).is_err());

        let to = RepoId::parse(RepoType::Model, "admin/n").unwrap();
        hub.move_repo(&admin, &id, &to).await.unwrap();
        assert!(hub.repos().meta(&id).is_err());
        assert!(hub.repos().meta(&to).unwrap().private);
        assert!(matches!(
            hub.delete_repo(&admin, &id).await,
            Err(RepoOpError::Access(AccessError::NotFound))
        ));
        hub.delete_repo(&admin, &to).await.unwrap();
        assert!(hub.repos().meta(&to).is_err());
    }

    #[test]
    fn authors_are_users_at_users_hubmesh() {
        let (_dir, _hub, admin) = hub();
        let author = author_of(&admin);
        assert_eq!(
            (author.name.as_str(), author.email.as_str()),
            ("admin", "admin@users.hubmesh")
        );
    }

    #[tokio::test]
    async fn ref_and_visibility_changes_need_their_rights() {
        let (_dir, hub, admin) = hub();
        let id = RepoId::parse(RepoType::Model, "admin/m").unwrap();
        let grant = hub.access_create(&admin, &id).await.unwrap();
        hub.create_repo(grant, false).await.unwrap();
        let write = hub.access(Some(&admin), &id, Need::Write).await.unwrap();
        hub.create_branch(&write, "dev", None).await.unwrap();
        hub.create_tag(&write, "v1", "main").await.unwrap();
        // A write grant does not rewrite history or change visibility.
        for refused in [
            hub.delete_branch(&write, "dev").await,
            hub.delete_tag(&write, "v1").await,
            hub.set_private(&write, true).await,
        ] {
            assert!(
                matches!(
                    refused,
                    Err(RepoOpError::Access(AccessError::Forbidden { .. }))
                ),
                "{refused:?}"
            );
        }
        let admin_grant = hub.access(Some(&admin), &id, Need::Admin).await.unwrap();
        hub.delete_branch(&admin_grant, "dev").await.unwrap();
        hub.delete_tag(&admin_grant, "v1").await.unwrap();
        hub.set_private(&admin_grant, true).await.unwrap();
        assert!(hub.repos().meta(&id).unwrap().private);
        assert_eq!(Change::DeleteTag.need(), Need::RewriteHistory);
    }
}
