//! Listing documents: what the search index holds for each repository, kept in step with the
//! repositories, and who may see which listed repo.
//!
//! The index (`hub-search`) is derived data: every write re-derives the repo's document
//! ([`reindex`], from [`Hub::after_write`]), and the node rebuilds the whole index from the
//! repositories at start-up ([`rebuild`]), so a crash between a commit and its reindex never
//! leaves the listing wrong for long.

use crate::{Error, Hub, blocking};
use hub_auth::{Access, Caller, Decision, Principal};
use hub_protocol::repo::{RepoId, RepoType};
use hub_repo::Repos;
use hub_search::{ListQuery, Page, RepoDoc, SearchIndex};

/// Builds the index document of one repository from its `main` branch and metadata.
pub fn document(repos: &Repos, id: &RepoId) -> Result<RepoDoc, hub_repo::RepoError> {
    let meta = repos.meta(id)?;
    let mut doc = RepoDoc::new(id.clone());
    doc.private = meta.private;
    doc.created_at = meta.created_at;
    doc.downloads = repos.downloads(id)?;
    doc.gated = match crate::gate::gate(repos, id) {
        Ok(gate) => gate.mode.map(|m| m.as_str().to_owned()),
        Err(e) => {
            tracing::warn!(repo = %id, error = %e, "gate not read for the listing");
            None
        }
    };
    if let Some(head) = repos.history(id, "main", 1)?.into_iter().next() {
        doc.sha = head.id;
        doc.last_modified = head.timestamp;
    }
    match repos.file(id, "main", "README.md") {
        Ok((entry, bytes)) if entry.lfs.is_none() => {
            let card = hub_search::parse_card(&String::from_utf8_lossy(&bytes));
            doc.tags = card.tags;
            doc.card_data = card.card_data;
            doc.pipeline_tag = card.pipeline_tag;
            doc.library_name = card.library_name;
        }
        Ok(_) | Err(hub_repo::RepoError::EntryNotFound { .. }) => {}
        Err(hub_repo::RepoError::RevisionNotFound { .. }) => {}
        Err(e) => return Err(e),
    }
    Ok(doc)
}

/// Re-derives one repository's document (or removes it when the repository is gone). Errors
/// are logged, not returned: the write that triggered it has already succeeded, and the next
/// start-up rebuilds the index anyway.
pub fn reindex(repos: &Repos, search: &SearchIndex, id: &RepoId) {
    let result = match document(repos, id) {
        Ok(doc) => search.upsert(doc).map_err(|e| e.to_string()),
        Err(hub_repo::RepoError::NotFound { .. }) => search.remove(id).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(error) = result {
        tracing::warn!(repo = %id, %error, "search index not updated");
    }
}

/// Rebuilds the whole index from the repositories (start-up). Returns the number of repos.
pub fn rebuild(
    repos: &Repos,
    search: &SearchIndex,
) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
    let mut docs = Vec::new();
    for kind in RepoType::ALL {
        for id in repos.list(kind)? {
            docs.push(document(repos, &id)?);
        }
    }
    let n = docs.len();
    search.upsert_many(docs)?;
    Ok(n)
}

/// Why a listing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListError {
    /// The query itself is not acceptable (too many filters, …).
    #[error(transparent)]
    Query(#[from] hub_search::SearchError),
    #[error(transparent)]
    Storage(#[from] Error),
}

impl From<tokio::task::JoinError> for ListError {
    fn from(e: tokio::task::JoinError) -> Self {
        ListError::Storage(e.into())
    }
}

impl Hub {
    /// One page of the listing as `principal` (`None`: anonymous) may see it: public repos,
    /// and the private repos of the caller's own and organisations' namespaces that
    /// `hub-auth` lets it read — a fine-grained token scoped to one repo lists no other
    /// private repo of the namespace. (A page may then hold fewer items than asked; its
    /// `next_offset` still continues where the index left off.) A repo whose document is
    /// still indexed but which no longer exists here is left out.
    pub async fn list(
        &self,
        principal: Option<&Principal>,
        mut query: ListQuery,
    ) -> Result<Page, ListError> {
        let (auth, search, repos, caller) = (
            self.auth().clone(),
            self.search().clone(),
            self.repos().clone(),
            principal.cloned(),
        );
        blocking(move || {
            // The caller's memberships, read once: they give the namespaces whose private
            // repos may be listed, and each such repo is then decided without more I/O.
            let orgs = match &caller {
                Some(p) => auth.orgs_of(&p.user.name).map_err(Error::from)?,
                None => Vec::new(),
            };
            query.include_private_of = match &caller {
                Some(p) => std::iter::once(p.user.name.clone())
                    .chain(orgs.iter().map(|(org, _)| org.clone()))
                    .collect(),
                None => Vec::new(),
            };
            let mut page = search.query(&query)?;
            let who = caller.as_ref().map(|principal| Caller {
                principal,
                orgs: &orgs,
            });
            // The index is refreshed after a repo changes; a repo deleted (or a replica
            // withdrawn) a moment ago is no longer listed even before its document is gone,
            // so the listing never names a repo that `info` already answers 404 for.
            page.items.retain(|doc| {
                (!doc.private
                    || hub_auth::decide(who.as_ref(), &doc.id, true, Access::Read)
                        == Decision::Allow)
                    && repos.exists(&doc.id)
            });
            Ok(page)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::hub;
    use hub_protocol::repo::{RepoId, RepoType};
    use hub_search::ListQuery;

    #[tokio::test]
    async fn a_repo_gone_from_disk_is_not_listed_before_its_document_is_dropped() {
        let (_dir, hub, admin) = hub();
        let kept = RepoId::parse(RepoType::Model, "admin/kept").unwrap();
        let gone = RepoId::parse(RepoType::Model, "admin/gone").unwrap();
        for id in [&kept, &gone] {
            let grant = hub.access_create(&admin, id).await.unwrap();
            hub.create_repo(grant, false).await.unwrap();
        }
        let ids = |page: hub_search::Page| page.items.into_iter().map(|d| d.id).collect::<Vec<_>>();
        let listed = hub
            .list(None, ListQuery::new(RepoType::Model))
            .await
            .unwrap();
        assert_eq!(ids(listed), [gone.clone(), kept.clone()]);
        // Deleted behind the index's back (as a withdrawn replica is, a moment before the
        // listing hook runs): the index still holds its document, the listing leaves it out.
        hub.repos().delete(&gone).unwrap();
        let listed = hub
            .list(None, ListQuery::new(RepoType::Model))
            .await
            .unwrap();
        assert_eq!(ids(listed), std::slice::from_ref(&kept));
        let listed = hub
            .list(Some(&admin), ListQuery::new(RepoType::Model))
            .await
            .unwrap();
        assert_eq!(ids(listed), [kept]);
    }
}
