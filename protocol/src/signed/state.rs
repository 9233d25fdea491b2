//! The acceptance state machine for namespace documents and signed ref updates.
//!
//! [`RefState`] holds what a node has accepted: for each namespace, the chain of documents
//! from its genesis to its current *head*, and for each repo, the last accepted
//! [`SignedRefUpdate`]. It is fed messages and the current time and answers accept or
//! reject; it does no I/O, reads no clock and draws no randomness, so the same inputs always
//! give the same answers. hub-mesh's `RefStore` persists every accepted message and rebuilds
//! the state with [`RefState::restore`] on start, so a restart forgets nothing (no rollback).
//!
//! # Namespace documents
//!
//! - The first document seen for a name (a *genesis*, `previous: None`) must be signed by a
//!   threshold of its own delegates. The first valid claim wins on this node (trust on first
//!   use, like SSH host keys); a different genesis for a known name is rejected as
//!   [`DocReject::ConflictingClaim`], carrying both ids so the caller can report it.
//! - A change names `previous`, which must be the current head, and must be signed by a
//!   threshold of the *head's* delegates: the old delegates hand over to the new ones, and a
//!   removed delegate can sign nothing afterwards. A change from an older document is a fork
//!   and rejected.
//! - Re-delivery of a document already in the chain is not an error ([`DocAccepted::Known`]):
//!   gossip delivers duplicates routinely.
//!
//! # Ref updates
//!
//! Checked in this order, cheap checks first so a flood of forgeries costs no signature
//! verification: the update is well-formed; it is for the repo the caller asked about (no
//! replays across repos); its namespace document is known, belongs to the repo's namespace
//! (no grafting) and is the current head (a superseded document's delegates may have been
//! removed); the signer is a delegate of it; `seq` is above the last accepted one (no replay,
//! no rollback, no second update with the same `seq`); `time` is not ahead of `now` by more
//! than [`MAX_CLOCK_SKEW_SECS`]; and finally the signature verifies.

use super::{
    DecodeError, DocId, NamespaceDoc, PublicKey, SignedNamespaceDoc, SignedRefUpdate,
    verify_payload,
};
use crate::repo::RepoId;
use std::collections::{BTreeMap, BTreeSet};

/// How far an update's `time` may be ahead of the receiver's clock, in seconds.
pub const MAX_CLOCK_SKEW_SECS: u64 = 600;

/// Why a ref update was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RefReject {
    #[error("malformed ref update")]
    Malformed(#[source] DecodeError),
    #[error("update is for {found}, not {expected}")]
    OtherRepo { expected: RepoId, found: RepoId },
    #[error("unknown namespace document {doc}")]
    UnknownNamespaceDoc { doc: DocId },
    #[error("namespace document {doc} is for namespace {doc_namespace:?}, not that of {repo}")]
    NamespaceMismatch {
        repo: RepoId,
        doc: DocId,
        doc_namespace: String,
    },
    #[error("namespace document {doc} was superseded by {current}")]
    SupersededNamespaceDoc { doc: DocId, current: DocId },
    #[error("signer {signer} is not a delegate of namespace document {doc}")]
    NotADelegate { signer: PublicKey, doc: DocId },
    #[error("sequence number {seq} is not above the last accepted {last}")]
    StaleSeq { seq: u64, last: u64 },
    #[error("update time {time} is ahead of the clock ({now})")]
    FromTheFuture { time: u64, now: u64 },
    #[error("signature by {signer} does not verify")]
    BadSignature { signer: PublicKey },
}

/// Why a namespace document was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DocReject {
    #[error("malformed namespace document")]
    Malformed(#[source] DecodeError),
    #[error(
        "namespace {name:?} is already claimed by document {known}; conflicting claim {offered}"
    )]
    ConflictingClaim {
        name: String,
        known: DocId,
        offered: DocId,
    },
    #[error("previous document {previous} of namespace {name:?} is unknown")]
    UnknownPrevious { name: String, previous: DocId },
    #[error("document builds on {previous}, but namespace {name:?} is at {head}")]
    Fork {
        name: String,
        previous: DocId,
        head: DocId,
    },
    #[error("document renames namespace {from:?} to {to:?}")]
    Renamed { from: String, to: String },
    #[error("signer {signer} is not a delegate of the authorising document")]
    NotADelegate { signer: PublicKey },
    #[error("signature by {signer} does not verify")]
    BadSignature { signer: PublicKey },
    #[error("{valid} valid delegate signatures, threshold is {threshold}")]
    BelowThreshold { valid: usize, threshold: u8 },
}

/// What accepting a namespace document did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocAccepted {
    /// The first document of a namespace this node did not know.
    Genesis { id: DocId },
    /// A new head, replacing `previous`.
    Updated { id: DocId, previous: DocId },
    /// Already in the chain; nothing changed.
    Known { id: DocId },
}

/// Why persisted state could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    #[error("stored namespace document {index} of {name:?} is not valid")]
    Doc {
        name: String,
        index: usize,
        #[source]
        source: Box<DocReject>,
    },
    #[error("stored update for {key} is for {found}")]
    RepoMismatch { key: RepoId, found: RepoId },
}

/// The accepted namespace chains and the last accepted update per repo.
#[derive(Debug, Clone, Default)]
pub struct RefState {
    /// Namespace name → documents from genesis to head.
    chains: BTreeMap<String, Vec<SignedNamespaceDoc>>,
    /// Document id → (namespace, position in its chain).
    docs: BTreeMap<DocId, (String, usize)>,
    accepted: BTreeMap<RepoId, SignedRefUpdate>,
}

impl RefState {
    /// A state that knows nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds a state from what was persisted: each namespace's chain in order (checked
    /// again, signatures included) and the last accepted update per repo (trusted: it was
    /// checked when it was accepted, and may be bound to a since-superseded document).
    pub fn restore(
        chains: impl IntoIterator<Item = Vec<SignedNamespaceDoc>>,
        accepted: impl IntoIterator<Item = (RepoId, SignedRefUpdate)>,
    ) -> Result<Self, RestoreError> {
        let mut state = Self::new();
        for chain in chains {
            for (index, doc) in chain.into_iter().enumerate() {
                let name = doc.doc.name().to_owned();
                state
                    .apply_namespace_doc(doc)
                    .map_err(|source| RestoreError::Doc {
                        name,
                        index,
                        source: Box::new(source),
                    })?;
            }
        }
        for (key, update) in accepted {
            if update.update.repo != key {
                return Err(RestoreError::RepoMismatch {
                    key,
                    found: update.update.repo,
                });
            }
            state.accepted.insert(key, update);
        }
        Ok(state)
    }

    /// The current document of `namespace`.
    pub fn head(&self, namespace: &str) -> Option<&NamespaceDoc> {
        self.chains.get(namespace)?.last().map(|s| &s.doc)
    }

    /// The documents of `namespace` from genesis to head (empty if unknown).
    pub fn chain(&self, namespace: &str) -> &[SignedNamespaceDoc] {
        self.chains.get(namespace).map_or(&[], Vec::as_slice)
    }

    /// The known namespaces.
    pub fn namespaces(&self) -> impl Iterator<Item = &str> {
        self.chains.keys().map(String::as_str)
    }

    /// The last accepted update of `repo`.
    pub fn last_accepted(&self, repo: &RepoId) -> Option<&SignedRefUpdate> {
        self.accepted.get(repo)
    }

    /// The `seq` of the last accepted update of `repo`.
    pub fn last_seq(&self, repo: &RepoId) -> Option<u64> {
        self.accepted.get(repo).map(|u| u.update.seq)
    }

    /// Every repo's last accepted update.
    pub fn accepted(&self) -> impl Iterator<Item = (&RepoId, &SignedRefUpdate)> {
        self.accepted.iter()
    }

    /// Decides on a namespace document without changing anything.
    pub fn check_namespace_doc(
        &self,
        signed: &SignedNamespaceDoc,
    ) -> Result<DocAccepted, DocReject> {
        let name = signed.doc.name();
        let id = signed.doc.id();
        let chain = self.chain(name);
        if self.docs.contains_key(&id)
            && chain
                .iter()
                .any(|known| known.previous == signed.previous && known.doc == signed.doc)
        {
            return Ok(DocAccepted::Known { id });
        }
        let authority = match (signed.previous, chain.last()) {
            (None, None) => &signed.doc,
            (None, Some(_)) => {
                return Err(DocReject::ConflictingClaim {
                    name: name.to_owned(),
                    known: chain[0].doc.id(),
                    offered: id,
                });
            }
            (Some(previous), head) => {
                let Some((prev_name, _)) = self.docs.get(&previous) else {
                    return Err(DocReject::UnknownPrevious {
                        name: name.to_owned(),
                        previous,
                    });
                };
                if prev_name != name {
                    return Err(DocReject::Renamed {
                        from: prev_name.clone(),
                        to: name.to_owned(),
                    });
                }
                // `previous` is known under this name, so the chain is not empty.
                let Some(head) = head else {
                    return Err(DocReject::UnknownPrevious {
                        name: name.to_owned(),
                        previous,
                    });
                };
                let head_id = head.doc.id();
                if head_id != previous {
                    return Err(DocReject::Fork {
                        name: name.to_owned(),
                        previous,
                        head: head_id,
                    });
                }
                &head.doc
            }
        };
        check_threshold(signed, authority)?;
        Ok(match signed.previous {
            None => DocAccepted::Genesis { id },
            Some(previous) => DocAccepted::Updated { id, previous },
        })
    }

    /// Decides on a namespace document and, if accepted, makes it the namespace's head.
    pub fn apply_namespace_doc(
        &mut self,
        signed: SignedNamespaceDoc,
    ) -> Result<DocAccepted, DocReject> {
        let verdict = self.check_namespace_doc(&signed)?;
        if let DocAccepted::Genesis { id } | DocAccepted::Updated { id, .. } = verdict {
            let name = signed.doc.name().to_owned();
            let chain = self.chains.entry(name.clone()).or_default();
            self.docs.insert(id, (name, chain.len()));
            chain.push(signed);
        }
        Ok(verdict)
    }

    /// [`RefState::apply_namespace_doc`] on wire bytes.
    pub fn apply_namespace_doc_bytes(&mut self, bytes: &[u8]) -> Result<DocAccepted, DocReject> {
        let signed = SignedNamespaceDoc::decode(bytes).map_err(DocReject::Malformed)?;
        self.apply_namespace_doc(signed)
    }

    /// Decides on an update offered for `repo` at time `now` (seconds since the Unix epoch)
    /// without changing anything.
    pub fn check_ref_update(
        &self,
        repo: &RepoId,
        signed: &SignedRefUpdate,
        now: u64,
    ) -> Result<(), RefReject> {
        let update = &signed.update;
        update
            .validate()
            .map_err(|e| RefReject::Malformed(e.into()))?;
        if &update.repo != repo {
            return Err(RefReject::OtherRepo {
                expected: repo.clone(),
                found: update.repo.clone(),
            });
        }
        let doc_id = update.namespace_doc;
        let Some((doc_namespace, _)) = self.docs.get(&doc_id) else {
            return Err(RefReject::UnknownNamespaceDoc { doc: doc_id });
        };
        if doc_namespace != repo.namespace() {
            return Err(RefReject::NamespaceMismatch {
                repo: repo.clone(),
                doc: doc_id,
                doc_namespace: doc_namespace.clone(),
            });
        }
        let head = self
            .chains
            .get(doc_namespace)
            .and_then(|c| c.last())
            .ok_or(RefReject::UnknownNamespaceDoc { doc: doc_id })?;
        let head_id = head.doc.id();
        if head_id != doc_id {
            return Err(RefReject::SupersededNamespaceDoc {
                doc: doc_id,
                current: head_id,
            });
        }
        if !head.doc.is_delegate(&signed.signer) {
            return Err(RefReject::NotADelegate {
                signer: signed.signer,
                doc: doc_id,
            });
        }
        if let Some(last) = self.last_seq(repo)
            && update.seq <= last
        {
            return Err(RefReject::StaleSeq {
                seq: update.seq,
                last,
            });
        }
        if update.time > now.saturating_add(MAX_CLOCK_SKEW_SECS) {
            return Err(RefReject::FromTheFuture {
                time: update.time,
                now,
            });
        }
        signed
            .verify_signature()
            .map_err(|_| RefReject::BadSignature {
                signer: signed.signer,
            })
    }

    /// Decides on an update offered for `repo` and, if accepted, records it as the repo's
    /// last accepted state.
    pub fn apply_ref_update(
        &mut self,
        repo: &RepoId,
        signed: SignedRefUpdate,
        now: u64,
    ) -> Result<&SignedRefUpdate, RefReject> {
        self.check_ref_update(repo, &signed, now)?;
        self.accepted.insert(repo.clone(), signed);
        Ok(&self.accepted[repo])
    }

    /// [`RefState::apply_ref_update`] on wire bytes.
    pub fn apply_ref_update_bytes(
        &mut self,
        repo: &RepoId,
        bytes: &[u8],
        now: u64,
    ) -> Result<&SignedRefUpdate, RefReject> {
        let signed = SignedRefUpdate::decode(bytes).map_err(RefReject::Malformed)?;
        self.apply_ref_update(repo, signed, now)
    }
}

#[cfg(test)]
mod tests;

/// Counts distinct delegates of `authority` with a valid signature on `signed`; any
/// signature from a non-delegate or that does not verify rejects the whole document.
fn check_threshold(signed: &SignedNamespaceDoc, authority: &NamespaceDoc) -> Result<(), DocReject> {
    let payload = signed.payload();
    let mut valid = BTreeSet::new();
    for (signer, signature) in &signed.signatures {
        if !authority.is_delegate(signer) {
            return Err(DocReject::NotADelegate { signer: *signer });
        }
        if verify_payload(signer, &payload, signature).is_err() {
            return Err(DocReject::BadSignature { signer: *signer });
        }
        valid.insert(*signer);
    }
    if valid.len() < authority.threshold() as usize {
        return Err(DocReject::BelowThreshold {
            valid: valid.len(),
            threshold: authority.threshold(),
        });
    }
    Ok(())
}
