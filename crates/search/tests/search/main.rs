//! Integration tests of hub-search: the index on a real directory, driven through its public
//! API only.

mod index;

use hub_protocol::repo::{RepoId, RepoType};
use hub_search::{ListQuery, RepoDoc, SearchIndex};

pub fn id(kind: RepoType, hub_id: &str) -> RepoId {
    RepoId::parse(kind, hub_id).expect("valid repo id")
}

pub fn model(hub_id: &str) -> RepoDoc {
    RepoDoc::new(id(RepoType::Model, hub_id))
}

pub fn open(dir: &tempfile::TempDir) -> SearchIndex {
    SearchIndex::open(&dir.path().join("search")).expect("open index")
}

/// The hub ids of a query's page, in order.
pub fn ids(index: &SearchIndex, q: &ListQuery) -> Vec<String> {
    index
        .query(q)
        .expect("query")
        .items
        .iter()
        .map(|d| d.id.hub_id())
        .collect()
}

pub fn models() -> ListQuery {
    ListQuery::new(RepoType::Model)
}
