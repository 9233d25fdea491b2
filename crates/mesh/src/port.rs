//! `hub-core`'s [`MeshPort`] on the replication handle ([`Mesh`]): how the Hub's rules reach
//! the mesh.

use crate::replicate::Mesh;
use hub_core::{BoxFuture, ClaimError, EnsureError, LfsFetchError, LfsStream, MeshPort};
use hub_protocol::manifest::Sha256;
use hub_protocol::repo::RepoId;
use tokio::time::Instant;

impl MeshPort for Mesh {
    fn ensure_repo<'a>(
        &'a self,
        repo: &'a RepoId,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<(), EnsureError>> {
        Box::pin(Mesh::ensure_repo(self, repo, deadline))
    }

    fn ensure_lfs<'a>(
        &'a self,
        repo: &'a RepoId,
        sha256: Sha256,
        size: u64,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<(), LfsFetchError>> {
        Box::pin(Mesh::ensure_lfs(self, repo, sha256, size, deadline))
    }

    fn stream_lfs<'a>(
        &'a self,
        repo: &'a RepoId,
        sha256: Sha256,
        size: u64,
        deadline: Instant,
    ) -> BoxFuture<'a, Option<LfsStream>> {
        Box::pin(Mesh::stream_lfs(self, repo, sha256, size, deadline))
    }

    fn namespace_hosts<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Option<Vec<String>>> {
        Box::pin(async move {
            Mesh::namespace_hosts(self, namespace)
                .await
                .map(|hosts| hosts.iter().map(ToString::to_string).collect())
        })
    }

    fn claim_namespace<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Result<(), ClaimError>> {
        Box::pin(Mesh::claim_namespace(self, namespace))
    }

    fn repo_changed(&self, repo: &RepoId) {
        Mesh::repo_changed(self, repo);
    }
}
