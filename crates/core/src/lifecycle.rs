//! More of a repository's lifecycle, as the Hub has it: duplicating a repo into another
//! namespace (`POST /api/{type}s/{ns}/{name}/duplicate`), squashing a branch's history into one
//! commit (`super-squash`), and the README a new Space starts with.
//!
//! Access is checked first, as for [`crate::repos`]: duplicating needs read access to the source
//! and the right to create the target; squashing rewrites history ([`Need::RewriteHistory`]).

use crate::repos::CreateGrant;
use crate::{Granted, Hub, Need, RepoOpError, blocking};
use hub_auth::Principal;
use hub_protocol::repo::{RepoId, RepoType};
use hub_repo::{CommitInfo, CommitRequest, FileContent, Operation};

/// The Space SDKs the Hub knows (`sdk` of `create_repo` and of a Space's card).
pub const SPACE_SDKS: [&str; 4] = ["gradio", "streamlit", "docker", "static"];

/// The README a new Space starts with: the card the Hub writes (title, emoji, colours, sdk),
/// so that `space_info` shows its `sdk` and the Space has a card to edit.
pub fn default_space_readme(id: &RepoId, sdk: &str) -> String {
    format!(
        "---\ntitle: {name}\nemoji: 🚀\ncolorFrom: blue\ncolorTo: green\nsdk: {sdk}\npinned: false\n---\n\n\
         Check out the configuration reference at https://huggingface.co/docs/hub/spaces-config-reference\n",
        name = id.name(),
    )
}

impl Hub {
    /// Creates the Space `grant` allows with its default README for `sdk` (one of
    /// [`SPACE_SDKS`]) as a second commit, then runs the after-write hook.
    pub async fn create_space(
        &self,
        grant: CreateGrant,
        private: bool,
        sdk: &str,
    ) -> Result<(), RepoOpError> {
        let id = grant.id().clone();
        if id.kind() != RepoType::Space || !SPACE_SDKS.contains(&sdk) {
            return Err(RepoOpError::Repo(hub_repo::RepoError::BadOperation(
                format!(
                    "invalid Space sdk {sdk:?}: one of {}",
                    SPACE_SDKS.join(", ")
                ),
            )));
        }
        let author = grant.author().clone();
        self.create_repo(grant, private).await?;
        let (repos, readme) = (self.repos().clone(), default_space_readme(&id, sdk));
        let target = id.clone();
        blocking(move || {
            repos.commit(
                &target,
                CommitRequest {
                    branch: "main".into(),
                    message: "initial README".into(),
                    author,
                    parent: None,
                    operations: vec![Operation::Add {
                        path: "README.md".into(),
                        content: FileContent::Regular(readme.into_bytes()),
                    }],
                },
            )?;
            Ok::<_, RepoOpError>(())
        })
        .await?;
        self.after_write(&id).await;
        Ok(())
    }

    /// Duplicates `from` (which `principal` may read) into `to` (which they may create):
    /// all branches, tags and history, and `from`'s LFS objects, which become GC roots of
    /// `to` too. Answers `AlreadyExists` when `to` exists.
    pub async fn duplicate_repo(
        &self,
        principal: &Principal,
        from: &RepoId,
        to: &RepoId,
        private: bool,
    ) -> Result<(), RepoOpError> {
        self.access(Some(principal), from, Need::Read).await?;
        let grant = self.access_create(principal, to).await?;
        let (hub, f, t) = (self.clone(), from.clone(), grant.id().clone());
        blocking(move || {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            hub.repos().duplicate(&f, &t, private, now)?;
            // The copy holds the same pointers: their content is rooted on its account too.
            for sha in hub.repos().lfs_objects(&t)? {
                let sha = hub_store::Sha256(sha);
                if hub.store().has(&sha).map_err(crate::Error::from)? {
                    hub.store().add_root(&sha).map_err(crate::Error::from)?;
                }
            }
            Ok::<_, RepoOpError>(())
        })
        .await?;
        self.after_write(to).await;
        Ok(())
    }

    /// Replaces the history of `branch` of the granted repo by one commit with its current
    /// files (history rewrite: [`Need::RewriteHistory`]).
    pub async fn super_squash(
        &self,
        granted: &Granted,
        branch: &str,
        message: &str,
    ) -> Result<CommitInfo, RepoOpError> {
        if granted.need < Need::RewriteHistory {
            return Err(crate::AccessError::Forbidden {
                repo: granted.id.clone(),
                need: Need::RewriteHistory,
            }
            .into());
        }
        let author = granted
            .principal
            .as_ref()
            .map(crate::author_of)
            .ok_or(crate::AccessError::Unauthorized)?;
        let (repos, id) = (self.repos().clone(), granted.id.clone());
        let (branch, message) = (branch.to_owned(), message.to_owned());
        let info = blocking(move || {
            Ok::<_, RepoOpError>(repos.super_squash(&id, &branch, &message, &author)?)
        })
        .await?;
        self.after_write(&granted.id).await;
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::hub;
    use hub_repo::RepoError;

    #[tokio::test]
    async fn duplicate_copies_history_and_refuses_an_existing_target() {
        let (_dir, hub, admin) = hub();
        let from = RepoId::parse(RepoType::Model, "admin/src").unwrap();
        let grant = hub.access_create(&admin, &from).await.unwrap();
        hub.create_repo(grant, false).await.unwrap();
        let head = hub.repos().resolve(&from, "main").unwrap();
        let to = RepoId::parse(RepoType::Model, "admin/copy").unwrap();
        hub.duplicate_repo(&admin, &from, &to, true).await.unwrap();
        assert_eq!(hub.repos().resolve(&to, "main").unwrap(), head);
        assert!(hub.repos().meta(&to).unwrap().private);
        assert!(matches!(
            hub.duplicate_repo(&admin, &from, &to, false).await,
            Err(RepoOpError::Repo(RepoError::AlreadyExists { .. }))
        ));
        let missing = RepoId::parse(RepoType::Model, "admin/none").unwrap();
        let other = RepoId::parse(RepoType::Model, "admin/other").unwrap();
        assert!(matches!(
            hub.duplicate_repo(&admin, &missing, &other, false).await,
            Err(RepoOpError::Access(crate::AccessError::NotFound))
        ));
    }

    #[tokio::test]
    async fn super_squash_keeps_the_tree_and_drops_the_parents() {
        let (_dir, hub, admin) = hub();
        let id = RepoId::parse(RepoType::Model, "admin/sq").unwrap();
        let grant = hub.access_create(&admin, &id).await.unwrap();
        hub.create_repo(grant, false).await.unwrap();
        for i in 0..3 {
            hub.repos()
                .commit(
                    &id,
                    CommitRequest {
                        branch: "main".into(),
                        message: format!("c{i}"),
                        author: crate::author_of(&admin),
                        parent: None,
                        operations: vec![Operation::Add {
                            path: format!("f{i}.txt"),
                            content: FileContent::Regular(vec![b'x'; i + 1]),
                        }],
                    },
                )
                .unwrap();
        }
        let before = hub.repos().list_tree(&id, "main", "", true).unwrap();
        let write = hub.access(Some(&admin), &id, Need::Write).await.unwrap();
        assert!(matches!(
            hub.super_squash(&write, "main", "squash").await,
            Err(RepoOpError::Access(crate::AccessError::Forbidden { .. }))
        ));
        let granted = hub
            .access(Some(&admin), &id, Need::RewriteHistory)
            .await
            .unwrap();
        let info = hub.super_squash(&granted, "main", "squash").await.unwrap();
        assert!(info.parents.is_empty());
        assert_eq!(hub.repos().history(&id, "main", 10).unwrap().len(), 1);
        assert_eq!(
            hub.repos().list_tree(&id, "main", "", true).unwrap(),
            before
        );
        assert!(matches!(
            hub.super_squash(&granted, "nope", "x").await,
            Err(RepoOpError::Repo(RepoError::RevisionNotFound { .. }))
        ));
    }

    #[tokio::test]
    async fn a_new_space_has_a_card_with_its_sdk() {
        let (_dir, hub, admin) = hub();
        let id = RepoId::parse(RepoType::Space, "admin/app").unwrap();
        let grant = hub.access_create(&admin, &id).await.unwrap();
        hub.create_space(grant, false, "gradio").await.unwrap();
        let (_, readme) = hub.repos().file(&id, "main", "README.md").unwrap();
        let card = hub_search::parse_card(&String::from_utf8(readme).unwrap());
        assert_eq!(card.card_data["sdk"], "gradio");
        let bad = RepoId::parse(RepoType::Space, "admin/bad").unwrap();
        let grant = hub.access_create(&admin, &bad).await.unwrap();
        assert!(hub.create_space(grant, false, "php").await.is_err());
        assert!(!hub.repos().exists(&bad));
    }
}
