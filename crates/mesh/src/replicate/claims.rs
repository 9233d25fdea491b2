//! Namespace claims (ADR 0006): an account created on this node claims its name for the
//! mesh, and names that are accounts here are never taken from other nodes.
//!
//! [`Mesh::claim_namespace`] is what the admin API (through `hub-core`'s `MeshPort`) and the
//! start-up wiring call: it makes this node the first claimant of a name nobody claimed (a
//! genesis naming the node key, persisted in the [`RefStore`](crate::RefStore), then
//! gossiped; peers that join later get it in the catch-up), holds it if it is this node's
//! already, and refuses it when an accepted document names other nodes. The other half, the
//! refusal of foreign documents and updates for local names, lives in the store itself
//! ([`RefStore::protect_local`](crate::RefStore::protect_local)), so every path that accepts
//! a document goes through it; the replication task only counts and reports the refusals.

use super::{Mesh, blocking, peer_id_of};
use crate::state::{Claim, RefStoreError};
use hub_core::ClaimError;
use hub_net::{Topic, Verdict};
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU64, Ordering};

impl Mesh {
    /// Claims `namespace` for this node before an account of that name is created here (see
    /// the module docs). `Ok` when it is this node's, newly or already.
    pub async fn claim_namespace(&self, namespace: &str) -> Result<(), ClaimError> {
        self.claim(namespace, false).await
    }

    /// At start, for `namespace`, an account of this node: claims it like
    /// [`Mesh::claim_namespace`], and when a document accepted before claims existed gives it
    /// to other nodes, forgets that chain and its repos' accepted updates first (local
    /// accounts win locally). Repos of those other nodes replicated here stay on disk, as
    /// repos of the local account; they are named in the log for the operator.
    pub async fn claim_local_account(&self, namespace: &str) -> Result<(), ClaimError> {
        self.claim(namespace, true).await
    }

    async fn claim(&self, namespace: &str, reclaim: bool) -> Result<(), ClaimError> {
        let control = self.control.clone();
        let name = namespace.to_owned();
        let failed = |reason: String| ClaimError::Failed {
            namespace: namespace.to_owned(),
            reason,
        };
        let stats = self.stats.clone();
        let claim = blocking(move || {
            let mut store = control.store.lock().unwrap_or_else(PoisonError::into_inner);
            match store.claim(&control.key, &name)? {
                Claim::Elsewhere(delegates) if reclaim => {
                    let dropped = store.forget_namespace(&name)?;
                    for repo in &dropped {
                        stats.repos.update(repo, |s| s.last_seq = None);
                    }
                    let held: Vec<String> = dropped
                        .iter()
                        .filter(|repo| control.repos.exists(repo))
                        .map(ToString::to_string)
                        .collect();
                    tracing::warn!(
                        namespace = %name,
                        ?delegates,
                        forgotten = dropped.len(),
                        ?held,
                        "another node's document for a local account's name forgotten; the \
                         repos held here stay as the local account's"
                    );
                    store.claim(&control.key, &name)
                }
                other => Ok(other),
            }
        })
        .await
        .ok_or_else(|| failed("claim task failed".into()))?
        .map_err(|e| failed(error_chain(&e)))?;
        match claim {
            Claim::Held => Ok(()),
            Claim::Made(genesis) => {
                tracing::info!(namespace, doc = %genesis.doc.id(), "namespace claimed for a local account");
                if !self.p2p.try_publish(Topic::Namespaces, genesis.encode()) {
                    // Peers still get it: it is in the catch-up every subscriber receives.
                    tracing::warn!(
                        namespace,
                        "swarm command queue full; claim not gossiped now"
                    );
                }
                Ok(())
            }
            Claim::Elsewhere(delegates) => Err(ClaimError::ClaimedElsewhere {
                namespace: namespace.to_owned(),
                hosts: delegates
                    .iter()
                    .filter_map(peer_id_of)
                    .map(|p| p.to_string())
                    .collect(),
            }),
        }
    }
}

/// Counts and logs a document or update refused because it would give an account name of
/// this node to other nodes. Gossipsub is told to ignore it: it is not forwarded from here,
/// but the peer that sent it is not penalised, since another site's `bob` is no forgery.
pub(super) fn refused(counter: &AtomicU64, error: &RefStoreError, what: &str) -> Verdict {
    counter.fetch_add(1, Ordering::Relaxed);
    tracing::info!(%error, "{what} refused: the namespace is an account of this node");
    Verdict::Ignore
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
