//! A [`Hub`] on a temporary data directory for this crate's unit tests: accounts with a site
//! admin, repositories, store, search index, and no mesh.

use crate::{Hub, HubParts, NoMesh};
use hub_auth::{AuthStore, Principal};
use std::sync::Arc;

/// The hub, its directory (dropped last) and the admin's principal.
pub(crate) fn hub() -> (tempfile::TempDir, Hub, Principal) {
    let dir = tempfile::tempdir().unwrap();
    let auth = Arc::new(AuthStore::open(dir.path().join("auth.redb")).unwrap());
    let mut token = String::new();
    auth.bootstrap_admin(&hub_protocol::name::Name::new("admin").unwrap(), |s| {
        token = s.expose().to_owned();
        Ok(())
    })
    .unwrap();
    let admin = auth.authenticate(&token).unwrap().unwrap();
    let hub = Hub::new(HubParts {
        auth,
        repos: Arc::new(hub_repo::Repos::open(dir.path().join("repos")).unwrap()),
        store: hub_store::Store::open(dir.path().join("store")).unwrap(),
        search: Arc::new(hub_search::SearchIndex::open(&dir.path().join("search")).unwrap()),
        mesh: Arc::new(NoMesh),
    });
    (dir, hub, admin)
}
