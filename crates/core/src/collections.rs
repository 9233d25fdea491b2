//! Collections: a namespace's curated, ordered lists of repos, papers and other collections,
//! as the Hub has them (`{namespace}/{title-slug}-{24 hex id}` slugs, items with an object id
//! and a position, private collections seen only by the namespace's members).
//!
//! **Storage and replication.** A collection belongs to a namespace, not to a repo, so it
//! cannot travel with a repo's signed refs. Collections are kept on the node where they are
//! made, one JSON file each under `{repos root}/collections/`, written atomically (temporary
//! file, then rename) under one lock; they do not replicate (ADR 0013). Other nodes do not
//! list them; a link to a collection works on the node that holds it.
//!
//! **Rights**, as on the Hub: anyone (anonymous too) reads a public collection; a private one
//! only the namespace's members; changing one needs write access to the namespace (the user
//! themself, or an org member with `contributor` or more).

use crate::{AccessError, Error, Hub, Need, blocking};
use hub_auth::Principal;
use hub_protocol::repo::{RepoId, RepoType};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Longest title, description and note accepted (the Hub's limits).
pub const MAX_TITLE: usize = 60;
pub const MAX_DESCRIPTION: usize = 150;
pub const MAX_NOTE: usize = 500;
/// Most items in one collection, and collections of one namespace.
pub const MAX_ITEMS: usize = 1000;
pub const MAX_PER_NAMESPACE: usize = 1000;
/// The themes a collection may have; the first is the default.
pub const THEMES: [&str; 6] = ["orange", "blue", "green", "purple", "pink", "indigo"];

/// What an item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemType {
    Model,
    Dataset,
    Space,
    Paper,
    Collection,
}

impl ItemType {
    pub fn as_str(self) -> &'static str {
        match self {
            ItemType::Model => "model",
            ItemType::Dataset => "dataset",
            ItemType::Space => "space",
            ItemType::Paper => "paper",
            ItemType::Collection => "collection",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "model" => ItemType::Model,
            "dataset" => ItemType::Dataset,
            "space" => ItemType::Space,
            "paper" => ItemType::Paper,
            "collection" => ItemType::Collection,
            _ => return None,
        })
    }

    /// The repo type of a repo item.
    pub fn repo_type(self) -> Option<RepoType> {
        match self {
            ItemType::Model => Some(RepoType::Model),
            ItemType::Dataset => Some(RepoType::Dataset),
            ItemType::Space => Some(RepoType::Space),
            _ => None,
        }
    }
}

/// One item of a collection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// The item's own id in the collection (24 hex digits).
    pub object_id: String,
    pub kind: ItemType,
    /// A repo id, a paper id, or a collection's slug.
    pub item_id: String,
    pub note: Option<String>,
}

/// A collection (items in their order: an item's position is its index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collection {
    /// 24 hex digits: the end of the slug, which never changes.
    pub id: String,
    pub namespace: String,
    pub title: String,
    pub description: Option<String>,
    pub private: bool,
    pub theme: String,
    /// Its place among its namespace's collections (0 first).
    pub position: u64,
    pub created_at: i64,
    pub updated_at: i64,
    pub items: Vec<Item>,
}

impl Collection {
    /// `{namespace}/{title-slug}-{id}`, as on the Hub.
    pub fn slug(&self) -> String {
        let title = slugify(&self.title);
        if title.is_empty() {
            format!("{}/{}", self.namespace, self.id)
        } else {
            format!("{}/{title}-{}", self.namespace, self.id)
        }
    }
}

/// Lower-case ASCII letters and digits, other runs made one `-`.
pub fn slugify(title: &str) -> String {
    let mut out = String::new();
    for c in title.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_owned()
}

/// The namespace and id a slug names (the title part may be stale: only the id counts).
pub fn parse_slug(slug: &str) -> Option<(&str, &str)> {
    let (namespace, rest) = slug.split_once('/')?;
    let id = rest.rsplit('-').next()?;
    (id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit()) && !namespace.is_empty())
        .then_some((namespace, id))
}

/// Why a collection operation was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CollectionError {
    #[error(transparent)]
    Access(#[from] AccessError),
    /// No such collection (or one the caller may not see), or no such item.
    #[error("{0}")]
    NotFound(String),
    /// The namespace already has a collection with this title, or the item is there already;
    /// `slug` names the collection (the Hub's 409 body).
    #[error("{message}")]
    Conflict { message: String, slug: String },
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Storage(#[from] Error),
}

impl From<std::io::Error> for CollectionError {
    fn from(e: std::io::Error) -> Self {
        CollectionError::Storage(e.into())
    }
}

impl From<tokio::task::JoinError> for CollectionError {
    fn from(e: tokio::task::JoinError) -> Self {
        CollectionError::Storage(e.into())
    }
}

/// The collections of this node: one JSON file per collection.
#[derive(Debug)]
pub struct CollectionStore {
    dir: PathBuf,
    lock: Mutex<()>,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn new_id() -> Result<String, CollectionError> {
    let mut buf = [0u8; 12];
    getrandom::fill(&mut buf).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(hex::encode(buf))
}

impl CollectionStore {
    pub fn new(dir: impl AsRef<Path>) -> Self {
        Self {
            dir: dir.as_ref().to_owned(),
            lock: Mutex::new(()),
        }
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn read(&self, id: &str) -> Result<Option<Collection>, CollectionError> {
        match std::fs::read(self.path(id)) {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn write(&self, c: &Collection) -> Result<(), CollectionError> {
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!(".{}.tmp", c.id));
        std::fs::write(&tmp, serde_json::to_vec(c).map_err(std::io::Error::other)?)?;
        std::fs::rename(&tmp, self.path(&c.id))?;
        Ok(())
    }

    /// Every collection (files that do not parse are skipped).
    pub fn all(&self) -> Result<Vec<Collection>, CollectionError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if let Some(c) = self.read(id)? {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// The collection a slug names, if any.
    pub fn get(&self, slug: &str) -> Result<Option<Collection>, CollectionError> {
        let Some((namespace, id)) = parse_slug(slug) else {
            return Ok(None);
        };
        Ok(self.read(id)?.filter(|c| c.namespace == namespace))
    }

    /// Changes the collection `slug` names with `f`, under the store's lock.
    fn update<T>(
        &self,
        slug: &str,
        f: impl FnOnce(&mut Collection) -> Result<T, CollectionError>,
    ) -> Result<(T, Collection), CollectionError> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut c = self
            .get(slug)?
            .ok_or_else(|| CollectionError::NotFound(format!("Collection {slug} not found")))?;
        let out = f(&mut c)?;
        c.updated_at = now();
        self.write(&c)?;
        Ok((out, c))
    }
}

fn check_len(what: &str, s: &str, max: usize) -> Result<(), CollectionError> {
    if s.chars().count() > max {
        return Err(CollectionError::BadRequest(format!(
            "the {what} is longer than {max} characters"
        )));
    }
    Ok(())
}

/// A paper id as the Hub has them (arXiv: `2307.09288`).
fn is_paper_id(s: &str) -> bool {
    let Some((a, b)) = s.split_once('.') else {
        return false;
    };
    a.len() == 4
        && (4..=5).contains(&b.len())
        && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit())
}

/// Moves `items[from]` to `to` (clamped to the end).
fn move_to<T>(items: &mut Vec<T>, from: usize, to: usize) {
    let item = items.remove(from);
    let to = to.min(items.len());
    items.insert(to, item);
}

/// What a metadata update changes (`None`: unchanged).
#[derive(Debug, Clone, Default)]
pub struct MetadataUpdate {
    pub title: Option<String>,
    pub description: Option<String>,
    pub private: Option<bool>,
    pub theme: Option<String>,
    pub position: Option<u64>,
}

impl Hub {
    /// The node's collections.
    pub fn collections(&self) -> &CollectionStore {
        &self.inner.collections
    }

    /// A repo id standing for namespace-level rights (the auth rules decide on repos).
    fn namespace_target(namespace: &str) -> Result<RepoId, CollectionError> {
        RepoId::new(RepoType::Model, namespace, "collections")
            .map_err(|_| CollectionError::NotFound(format!("no namespace {namespace:?}")))
    }

    /// May `principal` see `c`?
    pub async fn may_see_collection(&self, principal: Option<&Principal>, c: &Collection) -> bool {
        if !c.private {
            return true;
        }
        let Ok(target) = Self::namespace_target(&c.namespace) else {
            return false;
        };
        self.decide(principal, &target, true, Need::Read)
            .await
            .is_ok()
    }

    async fn may_change(
        &self,
        principal: &Principal,
        namespace: &str,
    ) -> Result<(), CollectionError> {
        let target = Self::namespace_target(namespace)?;
        self.decide(Some(principal), &target, false, Need::Write)
            .await?;
        Ok(())
    }

    /// The collection `slug` names, when `principal` may see it.
    pub async fn collection(
        &self,
        principal: Option<&Principal>,
        slug: &str,
    ) -> Result<Collection, CollectionError> {
        let (hub, s) = (self.clone(), slug.to_owned());
        let found = blocking(move || hub.collections().get(&s)).await?;
        match found {
            Some(c) if self.may_see_collection(principal, &c).await => Ok(c),
            _ => Err(CollectionError::NotFound(format!(
                "Collection {slug} not found"
            ))),
        }
    }

    /// Creates a collection of `namespace`; a title the namespace already uses is a conflict
    /// naming the existing collection.
    pub async fn create_collection(
        &self,
        principal: &Principal,
        namespace: &str,
        title: &str,
        description: Option<String>,
        private: bool,
    ) -> Result<Collection, CollectionError> {
        self.may_change(principal, namespace).await?;
        let title = title.trim().to_owned();
        if title.is_empty() {
            return Err(CollectionError::BadRequest(
                "a collection needs a title".into(),
            ));
        }
        check_len("title", &title, MAX_TITLE)?;
        if let Some(d) = &description {
            check_len("description", d, MAX_DESCRIPTION)?;
        }
        let (hub, namespace) = (self.clone(), namespace.to_owned());
        blocking(move || {
            let store = hub.collections();
            let _guard = store.lock.lock().unwrap_or_else(|e| e.into_inner());
            let mine: Vec<_> = store
                .all()?
                .into_iter()
                .filter(|c| c.namespace == namespace)
                .collect();
            if let Some(same) = mine.iter().find(|c| slugify(&c.title) == slugify(&title)) {
                return Err(CollectionError::Conflict {
                    message: format!("You already have a collection named {title:?}"),
                    slug: same.slug(),
                });
            }
            if mine.len() >= MAX_PER_NAMESPACE {
                return Err(CollectionError::BadRequest(format!(
                    "{namespace} has {MAX_PER_NAMESPACE} collections already"
                )));
            }
            let at = now();
            let c = Collection {
                id: new_id()?,
                namespace,
                title,
                description,
                private,
                theme: THEMES[0].to_owned(),
                position: mine.iter().map(|c| c.position + 1).max().unwrap_or(0),
                created_at: at,
                updated_at: at,
                items: Vec::new(),
            };
            store.write(&c)?;
            Ok(c)
        })
        .await
    }

    /// The collections `principal` may see, newest change first, of `owners` (all when
    /// empty) holding `item` (`{type}s/{id}`, when given).
    pub async fn list_collections(
        &self,
        principal: Option<&Principal>,
        owners: &[String],
        item: Option<&str>,
    ) -> Result<Vec<Collection>, CollectionError> {
        let hub = self.clone();
        let all = blocking(move || hub.collections().all()).await?;
        let mut out = Vec::new();
        for c in all {
            if !owners.is_empty() && !owners.contains(&c.namespace) {
                continue;
            }
            if let Some(item) = item
                && !c.items.iter().any(|i| {
                    let (kind, id) = item.split_once('/').unwrap_or(("", item));
                    i.item_id == id && format!("{}s", i.kind.as_str()) == kind
                })
            {
                continue;
            }
            if self.may_see_collection(principal, &c).await {
                out.push(c);
            }
        }
        out.sort_by_key(|c| std::cmp::Reverse((c.updated_at, c.id.clone())));
        Ok(out)
    }

    /// Changes a collection's title, description, visibility, theme or place among its
    /// namespace's collections. The slug's id stays; its title part follows the title.
    pub async fn update_collection(
        &self,
        principal: &Principal,
        slug: &str,
        update: MetadataUpdate,
    ) -> Result<Collection, CollectionError> {
        let c = self.collection(Some(principal), slug).await?;
        self.may_change(principal, &c.namespace).await?;
        if let Some(t) = &update.title {
            if t.trim().is_empty() {
                return Err(CollectionError::BadRequest(
                    "a collection needs a title".into(),
                ));
            }
            check_len("title", t, MAX_TITLE)?;
        }
        if let Some(d) = &update.description {
            check_len("description", d, MAX_DESCRIPTION)?;
        }
        if let Some(theme) = &update.theme
            && !THEMES.contains(&theme.as_str())
        {
            return Err(CollectionError::BadRequest(format!(
                "theme {theme:?} is not one of {}",
                THEMES.join(", ")
            )));
        }
        let (hub, slug) = (self.clone(), slug.to_owned());
        blocking(move || {
            let store = hub.collections();
            let position = update.position;
            let ((), c) = store.update(&slug, |c| {
                if let Some(t) = update.title {
                    c.title = t.trim().to_owned();
                }
                if let Some(d) = update.description {
                    c.description = Some(d);
                }
                if let Some(p) = update.private {
                    c.private = p;
                }
                if let Some(t) = update.theme {
                    c.theme = t;
                }
                Ok(())
            })?;
            let Some(to) = position else {
                return Ok(c);
            };
            // Renumber the namespace's collections with this one at `to`.
            let _guard = store.lock.lock().unwrap_or_else(|e| e.into_inner());
            let mut mine: Vec<_> = store
                .all()?
                .into_iter()
                .filter(|o| o.namespace == c.namespace)
                .collect();
            mine.sort_by_key(|o| (o.position, o.created_at));
            let from = mine.iter().position(|o| o.id == c.id).unwrap_or(0);
            move_to(&mut mine, from, usize::try_from(to).unwrap_or(usize::MAX));
            let mut moved = c;
            for (i, mut o) in mine.into_iter().enumerate() {
                if o.position != i as u64 {
                    o.position = i as u64;
                    store.write(&o)?;
                }
                if o.id == moved.id {
                    moved = o;
                }
            }
            Ok(moved)
        })
        .await
    }

    /// Deletes a collection; `NotFound` when there is none.
    pub async fn delete_collection(
        &self,
        principal: &Principal,
        slug: &str,
    ) -> Result<(), CollectionError> {
        let c = self.collection(Some(principal), slug).await?;
        self.may_change(principal, &c.namespace).await?;
        let hub = self.clone();
        blocking(move || {
            let store = hub.collections();
            let _guard = store.lock.lock().unwrap_or_else(|e| e.into_inner());
            match std::fs::remove_file(store.path(&c.id)) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    /// Adds an item at the end. A repo must exist and be readable by the caller; a collection
    /// must be one they may see; a paper id must look like one. An item already there is a
    /// conflict.
    pub async fn add_collection_item(
        &self,
        principal: &Principal,
        slug: &str,
        kind: ItemType,
        item_id: &str,
        note: Option<String>,
    ) -> Result<Collection, CollectionError> {
        let c = self.collection(Some(principal), slug).await?;
        self.may_change(principal, &c.namespace).await?;
        if let Some(n) = &note {
            check_len("note", n, MAX_NOTE)?;
        }
        let item_id = match kind.repo_type() {
            Some(repo_type) => {
                let id = RepoId::parse(repo_type, item_id).map_err(|_| {
                    CollectionError::NotFound(format!("{} {item_id} not found", kind.as_str()))
                })?;
                self.access(Some(principal), &id, Need::Read)
                    .await
                    .map_err(|e| match e {
                        AccessError::NotFound => CollectionError::NotFound(format!(
                            "{} {item_id} not found",
                            kind.as_str()
                        )),
                        other => other.into(),
                    })?;
                id.hub_id()
            }
            None if kind == ItemType::Paper => {
                if !is_paper_id(item_id) {
                    return Err(CollectionError::BadRequest(format!(
                        "{item_id:?} is not a paper id"
                    )));
                }
                item_id.to_owned()
            }
            None => self.collection(Some(principal), item_id).await?.slug(),
        };
        let (hub, slug) = (self.clone(), slug.to_owned());
        blocking(move || {
            let result = hub.collections().update(&slug, |c| {
                if c.items
                    .iter()
                    .any(|i| i.kind == kind && i.item_id == item_id)
                {
                    return Err(CollectionError::Conflict {
                        message: format!("{item_id} is already in the collection"),
                        slug: c.slug(),
                    });
                }
                if c.items.len() >= MAX_ITEMS {
                    return Err(CollectionError::BadRequest(format!(
                        "a collection holds at most {MAX_ITEMS} items"
                    )));
                }
                c.items.push(Item {
                    object_id: new_id()?,
                    kind,
                    item_id,
                    note,
                });
                Ok(())
            });
            result.map(|((), c)| c)
        })
        .await
    }

    /// Changes an item's note and/or moves it to `position`.
    pub async fn update_collection_item(
        &self,
        principal: &Principal,
        slug: &str,
        object_id: &str,
        note: Option<String>,
        position: Option<u64>,
    ) -> Result<Collection, CollectionError> {
        let c = self.collection(Some(principal), slug).await?;
        self.may_change(principal, &c.namespace).await?;
        if let Some(n) = &note {
            check_len("note", n, MAX_NOTE)?;
        }
        let (hub, slug, object_id) = (self.clone(), slug.to_owned(), object_id.to_owned());
        blocking(move || {
            let result = hub.collections().update(&slug, |c| {
                let Some(from) = c.items.iter().position(|i| i.object_id == object_id) else {
                    return Err(CollectionError::NotFound(format!(
                        "item {object_id} not found"
                    )));
                };
                if let Some(n) = note {
                    c.items[from].note = Some(n);
                }
                if let Some(to) = position {
                    move_to(
                        &mut c.items,
                        from,
                        usize::try_from(to).unwrap_or(usize::MAX),
                    );
                }
                Ok(())
            });
            result.map(|((), c)| c)
        })
        .await
    }

    /// Removes an item; `NotFound` when it is not there.
    pub async fn delete_collection_item(
        &self,
        principal: &Principal,
        slug: &str,
        object_id: &str,
    ) -> Result<(), CollectionError> {
        let c = self.collection(Some(principal), slug).await?;
        self.may_change(principal, &c.namespace).await?;
        let (hub, slug, object_id) = (self.clone(), slug.to_owned(), object_id.to_owned());
        blocking(move || {
            hub.collections().update(&slug, |c| {
                let before = c.items.len();
                c.items.retain(|i| i.object_id != object_id);
                if c.items.len() == before {
                    return Err(CollectionError::NotFound(format!(
                        "item {object_id} not found"
                    )));
                }
                Ok(())
            })?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::hub;

    #[test]
    fn slugs_as_the_hub_has_them() {
        assert_eq!(slugify("ICCV 2023"), "iccv-2023");
        assert_eq!(slugify("  Recent   models!! "), "recent-models");
        assert_eq!(slugify("日本"), "");
        let id = "64f9a55bb3115b4f513ec026";
        assert_eq!(
            parse_slug(&format!("TheBloke/recent-models-{id}")),
            Some(("TheBloke", id))
        );
        assert_eq!(parse_slug(&format!("a/{id}")), Some(("a", id)));
        assert_eq!(parse_slug("a/recent-models"), None);
        assert_eq!(parse_slug(id), None);
        assert!(is_paper_id("2307.09288") && !is_paper_id("2307.0928x"));
    }

    #[tokio::test]
    async fn items_keep_their_positions_and_titles_are_unique() {
        let (_dir, hub, admin) = hub();
        let id = RepoId::parse(RepoType::Model, "admin/m").unwrap();
        let grant = hub.access_create(&admin, &id).await.unwrap();
        hub.create_repo(grant, false).await.unwrap();
        let c = hub
            .create_collection(&admin, "admin", "My Models", None, false)
            .await
            .unwrap();
        assert!(c.slug().starts_with("admin/my-models-"));
        assert!(matches!(
            hub.create_collection(&admin, "admin", "my models", None, false)
                .await,
            Err(CollectionError::Conflict { slug, .. }) if slug == c.slug()
        ));
        let slug = c.slug();
        hub.add_collection_item(&admin, &slug, ItemType::Model, "admin/m", None)
            .await
            .unwrap();
        hub.add_collection_item(
            &admin,
            &slug,
            ItemType::Paper,
            "2307.09288",
            Some("n".into()),
        )
        .await
        .unwrap();
        assert!(matches!(
            hub.add_collection_item(&admin, &slug, ItemType::Model, "admin/m", None)
                .await,
            Err(CollectionError::Conflict { .. })
        ));
        assert!(matches!(
            hub.add_collection_item(&admin, &slug, ItemType::Model, "admin/none", None)
                .await,
            Err(CollectionError::NotFound(_))
        ));
        let c = hub.collection(None, &slug).await.unwrap();
        let paper = c.items[1].object_id.clone();
        let c = hub
            .update_collection_item(&admin, &slug, &paper, None, Some(0))
            .await
            .unwrap();
        assert_eq!(c.items[0].item_id, "2307.09288");
        assert_eq!(c.items[0].note.as_deref(), Some("n"));
        hub.delete_collection_item(&admin, &slug, &paper)
            .await
            .unwrap();
        // Private: others do not see it; the slug follows the title.
        let c = hub
            .update_collection(
                &admin,
                &slug,
                MetadataUpdate {
                    title: Some("Renamed".into()),
                    private: Some(true),
                    ..MetadataUpdate::default()
                },
            )
            .await
            .unwrap();
        assert!(c.slug().starts_with("admin/renamed-") && c.slug().ends_with(&c.id));
        assert!(hub.collection(None, &c.slug()).await.is_err());
        assert!(
            hub.list_collections(None, &[], None)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            hub.list_collections(Some(&admin), &[], Some("models/admin/m"))
                .await
                .unwrap()
                .len(),
            1
        );
        hub.delete_collection(&admin, &slug).await.unwrap();
        assert!(hub.collection(Some(&admin), &slug).await.is_err());
    }
}
