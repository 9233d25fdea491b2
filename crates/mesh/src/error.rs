//! Why replication's work fails: the typed errors its modules hand each other.
//!
//! What it owns: [`PackError`] (why one peer's pack was not had or did not apply),
//! [`LfsError`] (why one LFS object was not fetched), [`ScanError`] (why a repo's missing
//! LFS objects could not be listed), [`WithdrawError`] (why a withdrawn replica was not
//! dropped) and [`OnDemandRefused`] (why a read may not make this node fetch a repo). Their
//! texts are what users see (a repo's `last_error` in `/api/mesh`, the gateway's pending
//! answer, log lines).
//!
//! The errors that cross the replication service (module `replicate/service`) keep it pure
//! and comparable in tests: they are `Clone` and `Eq`, so the sources from other crates
//! (`hub-net`, `hub-repo`, `hub-store`, `hub-core`) are carried rendered; what the service
//! or its tests decide on is a variant, never a string to match.
//!
//! Must not depend on any other module of this crate (every module may use it).

use hub_protocol::manifest::Sha256;
use hub_protocol::replication::PackResponse;
use libp2p::PeerId;

/// Why a pack of the difference was not had from one peer, or did not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PackError {
    /// Nobody was asked: no gossip peer and no DHT provider.
    #[error("no peer to fetch from")]
    NoPeer,
    /// The request failed on the way (not connected, timeout, stream error).
    #[error("{peer}: {reason}")]
    Request { peer: PeerId, reason: String },
    /// The peer answered, refusing (`NotFound`, `TooLarge`, `Failed`).
    #[error("{peer} answered {answer:?}")]
    Refused { peer: PeerId, answer: PackResponse },
    /// The peer offered the pack as a blob that could not be fetched.
    #[error("pack blob from {peer}: {reason}")]
    Blob { peer: PeerId, reason: PackBlobError },
    /// The pack arrived but did not apply to the replica.
    #[error("apply pack from {peer}: {reason}")]
    Apply { peer: PeerId, reason: ApplyError },
}

/// Why a pack a peer holds as a blob for this node was not fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PackBlobError {
    #[error("offered a blob without a blob endpoint")]
    NoEndpoint,
    #[error("no address of its blob endpoint")]
    NoAddress,
    /// The peer sent data that failed verification (the peer is blamed for it).
    #[error("{reason} (after {bytes} good bytes)")]
    Bad { bytes: u64, reason: String },
    /// Connecting, a refusal, a timeout, a short answer.
    #[error("{0}")]
    Failed(String),
}

/// Why a fetched pack did not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ApplyError {
    /// The replica refused it (`hub_repo::ReplicaError`, rendered).
    #[error("{0}")]
    Replica(String),
    /// The blocking task that applies it ended without an answer.
    #[error("apply task failed")]
    Task,
}

/// Why one LFS object was not fetched into the store and the repo's LFS set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LfsError {
    /// No accepted signed update binds it to a manifest, so nothing could verify it.
    #[error("no accepted signed update binds this object to a manifest")]
    Unbound,
    /// No candidate served a manifest matching the signed binding.
    #[error("no peer served the manifest of {0}")]
    NoManifest(Sha256),
    /// No candidate served the chunks from `frontier` on that verified.
    #[error("no peer served chunks {frontier}.. of {sha256} that verified")]
    NoChunks { sha256: Sha256, frontier: u32 },
    /// The chunks verified against the manifest, but the file they make is another.
    #[error("content of {sha256} hashes to {got}, refused")]
    Mismatch { sha256: Sha256, got: Sha256 },
    /// Another fetch of the same object ran meanwhile and did not store it.
    #[error("a concurrent fetch of this object failed")]
    Concurrent,
    /// The store could not say which chunks it has.
    #[error("look up chunks of {sha256}: {reason}")]
    LookUp { sha256: Sha256, reason: String },
    /// The store did not import the verified chunks.
    #[error("import {sha256}: {reason}")]
    Import { sha256: Sha256, reason: String },
    /// The stored object could not join the GC roots and the repo's LFS set.
    #[error("{0}")]
    Record(String),
    /// A task the fetch runs on failed (`what`: which one; `reason`: its join error).
    #[error("{what} task: {reason}")]
    Task { what: &'static str, reason: String },
    /// A blocking task ended without an answer (`0`: which one).
    #[error("{0} task failed")]
    TaskEnded(&'static str),
}

/// Why the LFS objects a repo's tips reference could not be listed (a repo or store read).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ScanError {
    #[error("{0}")]
    Repo(String),
    #[error("{0}")]
    Store(String),
    /// An object stored for another repo could not be added to this one's LFS set.
    #[error("{0}")]
    Adopt(String),
}

/// Why a withdrawn repo's replica was not dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WithdrawError {
    /// Its LFS objects could not leave the GC roots (`hub_core::Error`, rendered).
    #[error("{0}")]
    Release(String),
    /// Its git data could not be deleted (`hub_repo::RepoError`, rendered).
    #[error("{0}")]
    Delete(String),
    #[error("withdrawal task failed")]
    Task,
}

/// Why a read may not make this node fetch a repo on demand now: the limit that was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OnDemandRefused {
    /// So many repos fetched on demand are remembered already.
    #[error("this node keeps {limit} repositories fetched on demand already")]
    Remembered { limit: usize },
    /// So many on-demand fetches started in the current window.
    #[error("this node started {limit} fetches on demand in the last minute")]
    Window { limit: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts users see (`last_error` in `/api/mesh`, the gateway's pending answer) read as
    /// they did when these were strings.
    #[test]
    fn texts_are_the_user_visible_ones() {
        let peer = PeerId::random();
        let refused = PackError::Refused {
            peer,
            answer: PackResponse::NotFound,
        };
        assert_eq!(refused.to_string(), format!("{peer} answered NotFound"));
        let blob = PackError::Blob {
            peer,
            reason: PackBlobError::Bad {
                bytes: 16384,
                reason: "hash mismatch".into(),
            },
        };
        assert_eq!(
            blob.to_string(),
            format!("pack blob from {peer}: hash mismatch (after 16384 good bytes)")
        );
        let apply = PackError::Apply {
            peer,
            reason: ApplyError::Task,
        };
        assert_eq!(
            apply.to_string(),
            format!("apply pack from {peer}: apply task failed")
        );
        let sha = Sha256([0xab; 32]);
        assert_eq!(
            LfsError::NoChunks {
                sha256: sha,
                frontier: 3
            }
            .to_string(),
            format!("no peer served chunks 3.. of {sha} that verified")
        );
        assert_eq!(
            OnDemandRefused::Window { limit: 8 }.to_string(),
            "this node started 8 fetches on demand in the last minute"
        );
    }
}
