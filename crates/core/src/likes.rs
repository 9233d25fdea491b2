//! Likes of a repository, stored in the repo itself like its discussions (ADR 0008): an
//! append-only record of `{user, like, at}` events under `refs/hub/likes`, folded to the last
//! event per user. They replicate with the repo's signed refs; writes go to the hosting node.

use crate::{Error, Hub, Need, blocking};
use hub_auth::Principal;
use hub_protocol::repo::{RepoId, RepoType};
use hub_repo::{RepoError, Repos};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The ref holding a repo's likes.
pub const LIKES_REF: &str = "refs/hub/likes";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LikeEvent {
    user: String,
    like: bool,
    at: i64,
}

/// Who likes `id` now, with when they liked it (blocking), by user name.
pub fn likers(repos: &Repos, id: &RepoId) -> Result<BTreeMap<String, i64>, RepoError> {
    let mut state: BTreeMap<String, (bool, i64)> = BTreeMap::new();
    for thread in repos.record_threads(id, LIKES_REF)? {
        for entry in repos.read_records(id, LIKES_REF, thread)? {
            // Entries are in order: the last one of a user is their state.
            if let Ok(e) = serde_json::from_slice::<LikeEvent>(&entry) {
                state.insert(e.user, (e.like, e.at));
            }
        }
    }
    Ok(state
        .into_iter()
        .filter(|(_, (like, _))| *like)
        .map(|(user, (_, at))| (user, at))
        .collect())
}

impl Hub {
    /// Likes (`like`) or unlikes `id` as `principal`: anyone who may read it, with a token,
    /// on the node hosting it. Doing it twice changes nothing.
    pub async fn set_like(
        &self,
        principal: &Principal,
        id: &RepoId,
        like: bool,
    ) -> Result<(), crate::AccessError> {
        self.access(Some(principal), id, Need::Read).await?;
        self.hosted_here(id).await?;
        let (repos, repo, who) = (
            self.repos().clone(),
            id.clone(),
            crate::author_of(principal),
        );
        let changed = blocking(move || {
            if likers(&repos, &repo)?.contains_key(&who.name) == like {
                return Ok::<_, Error>(false);
            }
            let at = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let event = LikeEvent {
                user: who.name.clone(),
                like,
                at,
            };
            let bytes = serde_json::to_vec(&event).map_err(std::io::Error::other)?;
            let thread = repos.record_threads(&repo, LIKES_REF)?.first().copied();
            let message = if like { "like" } else { "unlike" };
            repos.append_record(&repo, LIKES_REF, thread, &bytes, message, &who)?;
            Ok(true)
        })
        .await?;
        if changed {
            self.after_write(id).await;
        }
        Ok(())
    }

    /// The public repos `user` likes, with when (newest first), found on this node.
    pub async fn user_likes(&self, user: &str) -> Result<Vec<(RepoId, i64)>, Error> {
        let (repos, user) = (self.repos().clone(), user.to_owned());
        blocking(move || {
            let mut out = Vec::new();
            for kind in RepoType::ALL {
                for id in repos.list(kind)? {
                    if repos.meta(&id)?.private {
                        continue;
                    }
                    if let Some(at) = likers(&repos, &id)?.get(&user) {
                        out.push((id, *at));
                    }
                }
            }
            out.sort_by_key(|like| std::cmp::Reverse(like.1));
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::hub;

    #[tokio::test]
    async fn like_unlike_and_count() {
        let (_dir, hub, admin) = hub();
        let id = RepoId::parse(RepoType::Model, "admin/liked").unwrap();
        let grant = hub.access_create(&admin, &id).await.unwrap();
        hub.create_repo(grant, false).await.unwrap();
        assert!(likers(hub.repos(), &id).unwrap().is_empty());
        hub.set_like(&admin, &id, true).await.unwrap();
        hub.set_like(&admin, &id, true).await.unwrap();
        let now = likers(hub.repos(), &id).unwrap();
        assert_eq!(now.keys().collect::<Vec<_>>(), ["admin"]);
        assert_eq!(hub.user_likes("admin").await.unwrap().len(), 1);
        hub.set_like(&admin, &id, false).await.unwrap();
        assert!(likers(hub.repos(), &id).unwrap().is_empty());
        assert!(hub.user_likes("admin").await.unwrap().is_empty());
    }
}
