//! `hub-core`'s [`MeshPort`] on the [`P2p`] handle: how the Hub's rules reach the mesh.

use crate::swarm::P2p;
use hub_core::{BoxFuture, EnsureError, LfsFetchError, LfsStream, MeshPort};
use hub_protocol::manifest::Sha256;
use hub_protocol::repo::RepoId;
use tokio::time::Instant;

impl MeshPort for P2p {
    fn ensure_repo<'a>(
        &'a self,
        repo: &'a RepoId,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<(), EnsureError>> {
        Box::pin(P2p::ensure_repo(self, repo, deadline))
    }

    fn ensure_lfs<'a>(
        &'a self,
        repo: &'a RepoId,
        sha256: Sha256,
        size: u64,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<(), LfsFetchError>> {
        Box::pin(P2p::ensure_lfs(self, repo, sha256, size, deadline))
    }

    fn stream_lfs<'a>(
        &'a self,
        repo: &'a RepoId,
        sha256: Sha256,
        size: u64,
        deadline: Instant,
    ) -> BoxFuture<'a, Option<LfsStream>> {
        Box::pin(P2p::stream_lfs(self, repo, sha256, size, deadline))
    }

    fn namespace_hosts<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Option<Vec<String>>> {
        Box::pin(async move {
            P2p::namespace_hosts(self, namespace)
                .await
                .map(|hosts| hosts.iter().map(ToString::to_string).collect())
        })
    }

    fn repo_changed(&self, repo: &RepoId) {
        P2p::repo_changed(self, repo);
    }
}
