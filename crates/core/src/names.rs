//! Repo ids as the Hub resolves them: **case-insensitive** (`Org/Model` and `org/model` are one
//! repo, kept under the spelling it was created with, and a new repo whose id differs from an
//! existing one only in case is refused as existing), and **redirected after a move** (the old
//! id answers with the new one, as the Hub's 307s do, until a repo is created at the old id).
//!
//! Every surface asks [`Hub::lookup_id`] with the id of a request; the gateway rewrites a
//! [`Lookup::Spelled`] request to the stored spelling and answers a [`Lookup::Moved`] one with a
//! 307 to the new location, for the API, resolve, git and LFS alike.
//!
//! Redirects are kept on the node that made the move, in one JSON file (`redirects.json` beside
//! the repositories), at most [`MAX_REDIRECTS`] (the oldest are dropped first).

use crate::{Hub, blocking};
use hub_protocol::repo::RepoId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

/// The most redirects a node keeps.
pub const MAX_REDIRECTS: usize = 10_000;

/// The Hub's text for creating (or moving to) an id that is taken: `You already created this
/// model repo` (409; the same for an id that differs from the stored one only in case).
pub fn already_created(kind: hub_protocol::repo::RepoType) -> String {
    format!("You already created this {} repo", kind.as_str())
}

/// What a request's repo id names here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A stored repo, spelled as stored (or nothing this node knows of by another spelling or
    /// an old name: the request goes on as it is).
    AsIs,
    /// A stored repo under another spelling (case): serve it as that one.
    Spelled(RepoId),
    /// The repo was moved: the old id redirects to this one.
    Moved(RepoId),
}

/// The key of an id in the redirect table: lowercase `type/namespace/name`.
fn key(id: &RepoId) -> String {
    id.to_string().to_ascii_lowercase()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Redirect {
    to: String,
    /// Order of insertion, to drop the oldest when full.
    seq: u64,
}

/// The redirects of moved repos (old id to new id), persisted.
#[derive(Debug)]
pub struct Redirects {
    path: PathBuf,
    map: Mutex<Option<BTreeMap<String, Redirect>>>,
}

impl Redirects {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            map: Mutex::new(None),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<String, Redirect>) -> T) -> T {
        let mut guard = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let map = guard.get_or_insert_with(|| {
            std::fs::read(&self.path)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default()
        });
        f(map)
    }

    fn save(&self, map: &BTreeMap<String, Redirect>) -> std::io::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec(map).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&tmp, &self.path)
    }

    /// Where `id` was moved to, if it was.
    pub fn target(&self, id: &RepoId) -> Option<RepoId> {
        let to = self.with(|m| m.get(&key(id)).map(|r| r.to.clone()))?;
        let (kind, rest) = to.split_once('/')?;
        RepoId::parse(kind.parse().ok()?, rest).ok()
    }

    /// Records the move of `from` to `to`: earlier redirects to `from` now lead to `to`, and
    /// a redirect away from `to` (a name taken again) is dropped.
    pub fn record(&self, from: &RepoId, to: &RepoId) -> std::io::Result<()> {
        self.with(|m| {
            let target = to.to_string();
            for r in m
                .values_mut()
                .filter(|r| r.to.eq_ignore_ascii_case(&from.to_string()))
            {
                r.to = target.clone();
            }
            m.remove(&key(to));
            let seq = m.values().map(|r| r.seq + 1).max().unwrap_or(0);
            m.insert(key(from), Redirect { to: target, seq });
            while m.len() > MAX_REDIRECTS {
                let Some(oldest) = m.iter().min_by_key(|(_, r)| r.seq).map(|(k, _)| k.clone())
                else {
                    break;
                };
                m.remove(&oldest);
            }
            self.save(m)
        })
    }

    /// A repo was created at `id`: its old redirect, if any, ends.
    pub fn forget(&self, id: &RepoId) -> std::io::Result<()> {
        self.with(|m| {
            if m.remove(&key(id)).is_some() {
                self.save(m)
            } else {
                Ok(())
            }
        })
    }
}

impl Hub {
    /// What the repo id of a request names on this node (see [`Lookup`]). Reads the disk only
    /// when the id is not stored as spelled.
    pub async fn lookup_id(&self, id: &RepoId) -> Lookup {
        let (hub, id) = (self.clone(), id.clone());
        blocking(move || Ok::<_, tokio::task::JoinError>(hub.lookup_id_blocking(&id)))
            .await
            .unwrap_or(Lookup::AsIs)
    }

    fn lookup_id_blocking(&self, id: &RepoId) -> Lookup {
        if self.repos().exists(id) {
            return Lookup::AsIs;
        }
        if let Some(stored) = self.repos().find_ignoring_case(id) {
            return Lookup::Spelled(stored);
        }
        match self.inner.redirects.target(id) {
            Some(to) if self.repos().exists(&to) => Lookup::Moved(to),
            _ => Lookup::AsIs,
        }
    }

    /// The node's redirects of moved repos.
    pub fn redirects(&self) -> &Redirects {
        &self.inner.redirects
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::hub;
    use hub_protocol::repo::RepoType;

    #[tokio::test]
    async fn ids_are_case_insensitive_and_moves_redirect() {
        let (_dir, hub, admin) = hub();
        let id = RepoId::parse(RepoType::Model, "admin/MyModel").unwrap();
        let grant = hub.access_create(&admin, &id).await.unwrap();
        hub.create_repo(grant, false).await.unwrap();
        assert_eq!(hub.lookup_id(&id).await, Lookup::AsIs);
        let lower = RepoId::parse(RepoType::Model, "ADMIN/mymodel").unwrap();
        assert_eq!(hub.lookup_id(&lower).await, Lookup::Spelled(id.clone()));
        // Creating a name that differs only in case is refused as existing.
        assert!(matches!(
            hub.access_create(&admin, &lower).await,
            Err(crate::RepoOpError::Repo(hub_repo::RepoError::AlreadyExists { repo })) if repo == id
        ));
        let to = RepoId::parse(RepoType::Model, "admin/renamed").unwrap();
        hub.move_repo(&admin, &id, &to).await.unwrap();
        assert_eq!(hub.lookup_id(&id).await, Lookup::Moved(to.clone()));
        assert_eq!(hub.lookup_id(&lower).await, Lookup::Moved(to.clone()));
        // A second move: the first old id leads to the newest one.
        let last = RepoId::parse(RepoType::Model, "admin/last").unwrap();
        hub.move_repo(&admin, &to, &last).await.unwrap();
        assert_eq!(hub.lookup_id(&id).await, Lookup::Moved(last.clone()));
        // A repo created at the old id takes the name back.
        let grant = hub.access_create(&admin, &id).await.unwrap();
        hub.create_repo(grant, false).await.unwrap();
        assert_eq!(hub.lookup_id(&id).await, Lookup::AsIs);
        // The redirects survive a restart of the table.
        let reopened = Redirects::new(hub.repos().root().join("redirects.json"));
        assert_eq!(reopened.target(&to), Some(last));
        assert_eq!(reopened.target(&id), None);
    }
}
