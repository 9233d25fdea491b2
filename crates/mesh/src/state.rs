//! The persisted trust state of replication: namespace chains and accepted signed refs.
//!
//! [`RefStore`] wraps hub-protocol's sans-IO [`RefState`] with a small redb database, so
//! that what a node accepted survives restarts. This is what makes "no rollback" hold: the
//! last accepted `seq` of each repo is durable before the update counts as accepted, so a
//! replay of an older, validly signed update is refused after a restart exactly as before
//! it. The namespace chains are stored too, because a restarted node that forgot them would
//! take the next genesis it hears for a name as the first claim.
//!
//! Tables (values are hub-protocol's canonical encodings, so the signatures are kept and can
//! be checked or re-gossiped as they are):
//! - `namespace_docs`: `(name, index in chain)` → [`SignedNamespaceDoc`];
//! - `ref_updates`: `type/namespace/name` → last accepted [`SignedRefUpdate`];
//! - `meta`: `"schema"` → the table layout version ([`SCHEMA`]).
//!
//! Every accepted message is committed in its own write transaction *before* the in-memory
//! state moves (check, commit, apply), so the state in memory never runs ahead of the disk.
//! On open the chains are verified again (signatures included) by [`RefState::restore`].
//!
//! All methods block on disk I/O (a commit syncs): the replication task owns the store and
//! calls it from a blocking thread.
//!
//! Local accounts win locally (ADR 0006): with [`RefStore::protect_local`], a document that
//! would give a name that is an account of this node to other nodes (a foreign genesis, or a
//! change whose delegates leave this node out), and an update of a repo in such a name not
//! bound to a document listing this node, are refused ([`RefStoreError::LocalNamespace`])
//! before any other check. [`RefStore::claim`] makes this node a name's first claimant when
//! an account is created.
//!
//! ```no_run
//! # fn run(update: hub_protocol::signed::SignedRefUpdate) -> Result<(), hub_mesh::RefStoreError> {
//! let mut store = hub_mesh::RefStore::open("hubmesh-data/refs.redb")?;
//! let repo = update.update.repo.clone();
//! match store.apply_ref_update(&repo, update, 1_700_000_000) {
//!     Ok(accepted) => println!("{repo} is at seq {}", accepted.update.seq),
//!     Err(hub_mesh::RefStoreError::Rejected(reason)) => println!("refused: {reason}"),
//!     Err(e) => return Err(e),
//! }
//! # Ok(()) }
//! ```

use hub_protocol::repo::RepoId;
use hub_protocol::signed::{
    DecodeError, DocAccepted, DocReject, NamespaceDoc, PublicKey, RefReject, RefState,
    RestoreError, SignedNamespaceDoc, SignedRefUpdate, SigningKey, Visibility,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Whether a name is an account (user or org) of this node: its namespace is never given to
/// other nodes here (ADR 0006). Called on a blocking thread.
pub type LocalNames = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// What [`RefStore::claim`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// No document named the namespace: this genesis (this node its only delegate) is now
    /// its head, to be gossiped.
    Made(SignedNamespaceDoc),
    /// The namespace's head lists this node already.
    Held,
    /// The namespace's head names only other nodes: these delegates.
    Elsewhere(Vec<PublicKey>),
}

const NAMESPACE_DOCS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("namespace_docs");
const REF_UPDATES: TableDefinition<&str, &[u8]> = TableDefinition::new("ref_updates");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Version of the table layout this code writes.
pub const SCHEMA: u64 = 1;

/// Why the store failed or refused a message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RefStoreError {
    /// The ref update was refused; the store is unchanged.
    #[error("ref update rejected")]
    Rejected(#[source] RefReject),
    /// The namespace document was refused; the store is unchanged.
    #[error("namespace document rejected")]
    DocRejected(#[source] DocReject),
    #[error("open ref store {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("ref store")]
    Db(#[source] redb::Error),
    #[error("ref store schema {found} is not {SCHEMA}")]
    Schema { found: u64 },
    #[error("ref store holds an undecodable {what} at {key}")]
    Corrupt {
        what: &'static str,
        key: String,
        #[source]
        source: DecodeError,
    },
    #[error("ref store is inconsistent: {0}")]
    Inconsistent(String),
    #[error("restore ref store")]
    Restore(#[source] RestoreError),
    /// A document or update would give `name`, an account of this node, to other nodes.
    #[error("namespace {name:?} is an account of this node; not given to other nodes")]
    LocalNamespace { name: String },
    #[error("claim namespace {name:?}")]
    Claim {
        name: String,
        #[source]
        source: hub_protocol::signed::InvalidError,
    },
}

fn db_error(e: impl Into<redb::Error>) -> RefStoreError {
    RefStoreError::Db(e.into())
}

/// Accepted namespace chains and signed refs, on disk and in memory.
pub struct RefStore {
    db: Database,
    state: RefState,
    /// This node's key and its account names, once [`RefStore::protect_local`] was called.
    local: Option<(PublicKey, LocalNames)>,
}

impl std::fmt::Debug for RefStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefStore")
            .field("state", &self.state)
            .field("protects_local_names", &self.local.is_some())
            .finish_non_exhaustive()
    }
}

impl RefStore {
    /// Opens (or creates) the store at `path` and loads it into a [`RefState`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, RefStoreError> {
        let path = path.as_ref();
        let db = Database::create(path).map_err(|source| RefStoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        let tx = db.begin_write().map_err(db_error)?;
        {
            let mut meta = tx.open_table(META).map_err(db_error)?;
            let found = meta.get("schema").map_err(db_error)?.map(|v| v.value());
            match found {
                None => {
                    meta.insert("schema", SCHEMA).map_err(db_error)?;
                }
                Some(SCHEMA) => {}
                Some(found) => return Err(RefStoreError::Schema { found }),
            }
            tx.open_table(NAMESPACE_DOCS).map_err(db_error)?;
            tx.open_table(REF_UPDATES).map_err(db_error)?;
        }
        tx.commit().map_err(db_error)?;
        let state = load(&db)?;
        Ok(Self {
            db,
            state,
            local: None,
        })
    }

    /// From now on, refuses what would give an account name of this node (`is_local`) to
    /// nodes other than `me` (ADR 0006). What was accepted before stays.
    pub fn protect_local(&mut self, me: PublicKey, is_local: LocalNames) {
        self.local = Some((me, is_local));
    }

    /// `Err` when `doc` is for an account name of this node and leaves this node out.
    fn guard_doc(&self, doc: &NamespaceDoc) -> Result<(), RefStoreError> {
        match &self.local {
            Some((me, is_local)) if !doc.is_delegate(me) && is_local(doc.name()) => {
                Err(RefStoreError::LocalNamespace {
                    name: doc.name().to_owned(),
                })
            }
            _ => Ok(()),
        }
    }

    /// `Err` when `repo` is in an account name of this node and `signed` is not bound to a
    /// current document of it that lists this node (a foreign publisher's update).
    fn guard_update(&self, repo: &RepoId, signed: &SignedRefUpdate) -> Result<(), RefStoreError> {
        let Some((me, is_local)) = &self.local else {
            return Ok(());
        };
        let ours = self
            .state
            .head(repo.namespace())
            .is_some_and(|head| head.is_delegate(me) && head.id() == signed.update.namespace_doc);
        if ours || !is_local(repo.namespace()) {
            return Ok(());
        }
        Err(RefStoreError::LocalNamespace {
            name: repo.namespace().to_owned(),
        })
    }

    /// Claims `name` for the node of `key`: when no document names it yet, a genesis naming
    /// `key` as its only delegate is persisted and becomes its head ([`Claim::Made`]: the
    /// caller gossips it). Made when an account is created on this node, before it exists.
    pub fn claim(&mut self, key: &SigningKey, name: &str) -> Result<Claim, RefStoreError> {
        let me = key.public();
        if let Some(head) = self.state.head(name) {
            return Ok(if head.is_delegate(&me) {
                Claim::Held
            } else {
                Claim::Elsewhere(head.delegates().to_vec())
            });
        }
        let doc = NamespaceDoc::new(name, vec![me], 1, Visibility::Public).map_err(|source| {
            RefStoreError::Claim {
                name: name.to_owned(),
                source,
            }
        })?;
        let signed = doc.sign_genesis(&[key]);
        self.apply_namespace_doc(signed.clone())?;
        Ok(Claim::Made(signed))
    }

    /// The state as accepted so far.
    pub fn state(&self) -> &RefState {
        &self.state
    }

    /// Decides on a namespace document; if it is new and accepted, persists it, then
    /// applies it.
    pub fn apply_namespace_doc(
        &mut self,
        signed: SignedNamespaceDoc,
    ) -> Result<DocAccepted, RefStoreError> {
        self.guard_doc(&signed.doc)?;
        let verdict = self
            .state
            .check_namespace_doc(&signed)
            .map_err(RefStoreError::DocRejected)?;
        if matches!(verdict, DocAccepted::Known { .. }) {
            return Ok(verdict);
        }
        let name = signed.doc.name().to_owned();
        let index = u32::try_from(self.state.chain(&name).len())
            .map_err(|_| RefStoreError::Inconsistent(format!("chain of {name:?} too long")))?;
        let tx = self.db.begin_write().map_err(db_error)?;
        {
            let mut docs = tx.open_table(NAMESPACE_DOCS).map_err(db_error)?;
            docs.insert((name.as_str(), index), signed.encode().as_slice())
                .map_err(db_error)?;
        }
        tx.commit().map_err(db_error)?;
        self.state
            .apply_namespace_doc(signed)
            .map_err(RefStoreError::DocRejected)
    }

    /// Forgets `name`'s namespace chain and the accepted updates of its repos, and rebuilds
    /// the state: the name is unknown again. For a name that is an account of this node and
    /// whose document, accepted before claims existed, gives it to other nodes (ADR 0006); the
    /// caller claims it right after. Returns the repos whose accepted updates were dropped.
    pub fn forget_namespace(&mut self, name: &str) -> Result<Vec<RepoId>, RefStoreError> {
        let repos: Vec<RepoId> = self
            .state
            .accepted()
            .filter(|(repo, _)| repo.namespace() == name)
            .map(|(repo, _)| repo.clone())
            .collect();
        let tx = self.db.begin_write().map_err(db_error)?;
        {
            let mut docs = tx.open_table(NAMESPACE_DOCS).map_err(db_error)?;
            docs.retain(|(doc_name, _), _| doc_name != name)
                .map_err(db_error)?;
            let mut updates = tx.open_table(REF_UPDATES).map_err(db_error)?;
            for repo in &repos {
                updates
                    .remove(repo.to_string().as_str())
                    .map_err(db_error)?;
            }
        }
        tx.commit().map_err(db_error)?;
        self.state = load(&self.db)?;
        Ok(repos)
    }

    /// [`RefStore::apply_namespace_doc`] on wire bytes.
    pub fn apply_namespace_doc_bytes(
        &mut self,
        bytes: &[u8],
    ) -> Result<DocAccepted, RefStoreError> {
        let signed = SignedNamespaceDoc::decode(bytes)
            .map_err(|e| RefStoreError::DocRejected(DocReject::Malformed(e)))?;
        self.apply_namespace_doc(signed)
    }

    /// Decides on an update offered for `repo` at `now` (seconds since the Unix epoch); if
    /// accepted, persists it as the repo's last accepted update, then applies it.
    pub fn apply_ref_update(
        &mut self,
        repo: &RepoId,
        signed: SignedRefUpdate,
        now: u64,
    ) -> Result<&SignedRefUpdate, RefStoreError> {
        self.guard_update(repo, &signed)?;
        self.state
            .check_ref_update(repo, &signed, now)
            .map_err(RefStoreError::Rejected)?;
        let key = repo.to_string();
        let tx = self.db.begin_write().map_err(db_error)?;
        {
            let mut updates = tx.open_table(REF_UPDATES).map_err(db_error)?;
            updates
                .insert(key.as_str(), signed.encode().as_slice())
                .map_err(db_error)?;
        }
        tx.commit().map_err(db_error)?;
        self.state
            .apply_ref_update(repo, signed, now)
            .map_err(RefStoreError::Rejected)
    }

    /// [`RefStore::apply_ref_update`] on wire bytes.
    pub fn apply_ref_update_bytes(
        &mut self,
        repo: &RepoId,
        bytes: &[u8],
        now: u64,
    ) -> Result<&SignedRefUpdate, RefStoreError> {
        let signed = SignedRefUpdate::decode(bytes)
            .map_err(|e| RefStoreError::Rejected(RefReject::Malformed(e)))?;
        self.apply_ref_update(repo, signed, now)
    }
}

/// Reads every table and rebuilds the state, checking the chains again.
fn load(database: &Database) -> Result<RefState, RefStoreError> {
    let tx = database.begin_read().map_err(db_error)?;
    let docs = tx.open_table(NAMESPACE_DOCS).map_err(db_error)?;
    let mut chains: BTreeMap<String, Vec<SignedNamespaceDoc>> = BTreeMap::new();
    // Keys iterate sorted by (name, index), so each chain arrives in order.
    for row in docs.iter().map_err(db_error)? {
        let (key, value) = row.map_err(db_error)?;
        let (name, index) = key.value();
        let signed =
            SignedNamespaceDoc::decode(value.value()).map_err(|source| RefStoreError::Corrupt {
                what: "namespace document",
                key: format!("{name}#{index}"),
                source,
            })?;
        let chain = chains.entry(name.to_owned()).or_default();
        if index as usize != chain.len() || signed.doc.name() != name {
            return Err(RefStoreError::Inconsistent(format!(
                "namespace document {name}#{index} is out of place"
            )));
        }
        chain.push(signed);
    }
    let updates = tx.open_table(REF_UPDATES).map_err(db_error)?;
    let mut accepted = Vec::new();
    for row in updates.iter().map_err(db_error)? {
        let (key, value) = row.map_err(db_error)?;
        let key = key.value();
        let signed =
            SignedRefUpdate::decode(value.value()).map_err(|source| RefStoreError::Corrupt {
                what: "ref update",
                key: key.to_owned(),
                source,
            })?;
        if signed.update.repo.to_string() != key {
            return Err(RefStoreError::Inconsistent(format!(
                "ref update filed under {key} is for {}",
                signed.update.repo
            )));
        }
        accepted.push((signed.update.repo.clone(), signed));
    }
    RefState::restore(chains.into_values(), accepted).map_err(RefStoreError::Restore)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_protocol::repo::RepoType;
    use hub_protocol::signed::{
        DocId, NamespaceDoc, RefUpdate, SIGNING_CONTEXT, Signature, SigningKey, Visibility,
    };

    const NOW: u64 = 1_700_000_000;

    fn key(i: u8) -> SigningKey {
        SigningKey::from_bytes(&[i; 32])
    }

    fn update(repo: &RepoId, doc: DocId, seq: u64) -> RefUpdate {
        let mut u = RefUpdate::new(repo.clone(), doc, seq, NOW);
        u.refs.insert("refs/heads/main".into(), [seq as u8; 20]);
        u
    }

    #[test]
    fn replays_stay_rejected_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("refs.redb");
        let (a, b) = (key(1), key(2));
        let doc =
            NamespaceDoc::new("org", vec![a.public(), b.public()], 1, Visibility::Public).unwrap();
        let repo = RepoId::parse(RepoType::Model, "org/model").unwrap();
        let old = update(&repo, doc.id(), 1).sign(&a).unwrap();
        let current = update(&repo, doc.id(), 2).sign(&b).unwrap();
        {
            let mut store = RefStore::open(&path).unwrap();
            store
                .apply_namespace_doc_bytes(&doc.sign_genesis(&[&a]).encode())
                .unwrap();
            store.apply_ref_update(&repo, old.clone(), NOW).unwrap();
            store
                .apply_ref_update_bytes(&repo, &current.encode(), NOW)
                .unwrap();
        }

        // "Restart": a fresh process would do exactly this.
        let mut store = RefStore::open(&path).unwrap();
        assert_eq!(store.state().last_seq(&repo), Some(2));
        assert_eq!(store.state().head("org"), Some(&doc));
        for replay in [&old, &current] {
            assert!(matches!(
                store.apply_ref_update_bytes(&repo, &replay.encode(), NOW),
                Err(RefStoreError::Rejected(RefReject::StaleSeq { last: 2, .. }))
            ));
        }
        // The first claim on `org` still stands against a rival genesis.
        let rival =
            NamespaceDoc::new("org", vec![key(66).public()], 1, Visibility::Public).unwrap();
        assert!(matches!(
            store.apply_namespace_doc(rival.sign_genesis(&[&key(66)])),
            Err(RefStoreError::DocRejected(
                DocReject::ConflictingClaim { .. }
            ))
        ));
        // A non-delegate stays one.
        assert!(matches!(
            store.apply_ref_update(
                &repo,
                update(&repo, doc.id(), 3).sign(&key(66)).unwrap(),
                NOW
            ),
            Err(RefStoreError::Rejected(RefReject::NotADelegate { .. }))
        ));
        // Progress continues and is persisted too.
        let next = update(&repo, doc.id(), 3).sign(&a).unwrap();
        store.apply_ref_update(&repo, next.clone(), NOW).unwrap();
        drop(store);
        let mut store = RefStore::open(&path).unwrap();
        assert_eq!(store.state().last_accepted(&repo), Some(&next));
        assert!(store.apply_ref_update(&repo, current, NOW).is_err());
    }

    #[test]
    fn rotation_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("refs.redb");
        let (a, b) = (key(1), key(2));
        let v1 = NamespaceDoc::new("org", vec![a.public()], 1, Visibility::Public).unwrap();
        let v2 = NamespaceDoc::new("org", vec![b.public()], 1, Visibility::Public).unwrap();
        {
            let mut store = RefStore::open(&path).unwrap();
            store.apply_namespace_doc(v1.sign_genesis(&[&a])).unwrap();
            store
                .apply_namespace_doc(v2.sign_change(Some(v1.id()), &[&a]))
                .unwrap();
            // Re-delivery writes nothing and changes nothing.
            assert_eq!(
                store.apply_namespace_doc(v1.sign_genesis(&[&a])).unwrap(),
                DocAccepted::Known { id: v1.id() }
            );
        }
        let mut store = RefStore::open(&path).unwrap();
        assert_eq!(store.state().chain("org").len(), 2);
        let repo = RepoId::parse(RepoType::Model, "org/model").unwrap();
        assert!(matches!(
            store.apply_ref_update(&repo, update(&repo, v2.id(), 1).sign(&a).unwrap(), NOW),
            Err(RefStoreError::Rejected(RefReject::NotADelegate { .. }))
        ));
        store
            .apply_ref_update(&repo, update(&repo, v2.id(), 1).sign(&b).unwrap(), NOW)
            .unwrap();
    }

    /// ADR 0006: a name that is an account here is never given to other nodes, whether
    /// this node claimed it or not; other names still go to their first claimant.
    #[test]
    fn local_account_names_are_not_given_to_other_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("refs.redb");
        let (me, other) = (key(1), key(2));
        let local: LocalNames = Arc::new(|name| name == "bob" || name == "dave");
        let genesis = |name: &str, k: &SigningKey| {
            NamespaceDoc::new(name, vec![k.public()], 1, Visibility::Public)
                .unwrap()
                .sign_genesis(&[k])
        };
        let local_refusal = |r: Result<DocAccepted, RefStoreError>, ns: &str| {
            assert!(
                matches!(&r, Err(RefStoreError::LocalNamespace { name }) if name == ns),
                "{r:?}"
            );
        };
        // The other node's bob and its first repo.
        let theirs = genesis("bob", &other);
        let bob_x = RepoId::parse(RepoType::Model, "bob/x").unwrap();
        let their_update = update(&bob_x, theirs.doc.id(), 1).sign(&other).unwrap();
        {
            let mut store = RefStore::open(&path).unwrap();
            store.protect_local(me.public(), local.clone());
            // Unclaimed yet (an account made before claims existed): still refused.
            local_refusal(store.apply_namespace_doc(theirs.clone()), "bob");
            local_refusal(store.apply_namespace_doc(genesis("dave", &other)), "dave");
            assert!(store.state().head("dave").is_none());
            // Claimed at account creation: the claim is persisted and held.
            let Claim::Made(ours) = store.claim(&me, "bob").unwrap() else {
                panic!("bob was unclaimed")
            };
            assert_eq!(ours.doc.delegates(), [me.public()]);
            assert_eq!(store.claim(&me, "bob").unwrap(), Claim::Held);
            local_refusal(store.apply_namespace_doc(theirs.clone()), "bob");
            // A change of our chain that hands bob to the other node is refused too.
            let handover = NamespaceDoc::new("bob", vec![other.public()], 1, Visibility::Public)
                .unwrap()
                .sign_change(Some(ours.doc.id()), &[&me]);
            local_refusal(store.apply_namespace_doc(handover), "bob");
            // Their updates of bob/* are refused before waiting for a document.
            assert!(matches!(
                store.apply_ref_update(&bob_x, their_update.clone(), NOW),
                Err(RefStoreError::LocalNamespace { .. })
            ));
            // Ours pass.
            let mine = update(&bob_x, ours.doc.id(), 1).sign(&me).unwrap();
            store.apply_ref_update(&bob_x, mine, NOW).unwrap();
            // A name that is no account here goes to its first claimant, and is not ours.
            store.apply_namespace_doc(genesis("alice", &other)).unwrap();
            assert_eq!(
                store.claim(&me, "alice").unwrap(),
                Claim::Elsewhere(vec![other.public()])
            );
            // A name no document may carry cannot be claimed.
            assert!(matches!(
                store.claim(&me, "bad/name"),
                Err(RefStoreError::Claim { .. })
            ));
        }
        // A foreign chain accepted before claims existed (here: while unprotected) is
        // forgotten with its repos' updates, durably, and the name claimed.
        {
            let mut store = RefStore::open(&path).unwrap();
            store.apply_namespace_doc(genesis("dave", &other)).unwrap();
            let dave_m = RepoId::parse(RepoType::Model, "dave/m").unwrap();
            let head = store.state().head("dave").unwrap().id();
            store
                .apply_ref_update(&dave_m, update(&dave_m, head, 1).sign(&other).unwrap(), NOW)
                .unwrap();
            assert!(matches!(store.claim(&me, "dave"), Ok(Claim::Elsewhere(_))));
            assert_eq!(
                store.forget_namespace("dave").unwrap(),
                std::slice::from_ref(&dave_m)
            );
            assert!(store.state().head("dave").is_none());
            assert!(store.state().last_accepted(&dave_m).is_none());
            // Nothing else was forgotten.
            assert!(store.state().head("alice").is_some());
            assert_eq!(store.state().last_seq(&bob_x), Some(1));
            drop(store);
            let mut store = RefStore::open(&path).unwrap();
            assert!(store.state().head("dave").is_none());
            assert!(matches!(store.claim(&me, "dave"), Ok(Claim::Made(_))));
        }
        // After a restart the claim stands (the guard is set again by the node at start).
        let mut store = RefStore::open(&path).unwrap();
        assert_eq!(store.claim(&me, "bob").unwrap(), Claim::Held);
        assert!(matches!(
            store.apply_namespace_doc(theirs),
            Err(RefStoreError::DocRejected(
                DocReject::ConflictingClaim { .. }
            ))
        ));
        assert_eq!(store.state().last_seq(&bob_x), Some(1));
    }

    /// The node key file holds a 32-byte ed25519 secret that libp2p reads with
    /// `Keypair::ed25519_from_bytes`; hub-protocol's [`SigningKey::from_bytes`] on the same
    /// bytes is the same key, and signatures made by either verify under the other.
    #[test]
    fn node_key_is_the_same_ed25519_key_in_libp2p_and_hub_protocol() {
        for seed in [[0u8; 32], [7; 32], *b"0123456789abcdef0123456789abcdef"] {
            let ours = SigningKey::from_bytes(&seed);
            let libp2p_key = libp2p::identity::Keypair::ed25519_from_bytes(seed).unwrap();
            let libp2p_public = libp2p_key.public().try_into_ed25519().unwrap();
            assert_eq!(ours.public().0, libp2p_public.to_bytes());

            // A ref update signed by libp2p's key verifies in hub-protocol...
            let repo = RepoId::parse(RepoType::Model, "org/model").unwrap();
            let mut signed = update(&repo, DocId([1; 32]), 1).sign(&ours).unwrap();
            let mut message = SIGNING_CONTEXT.to_vec();
            message.extend(signed.update.encode());
            let by_libp2p: [u8; 64] = libp2p_key.sign(&message).unwrap().try_into().unwrap();
            // (ed25519 is deterministic: both sign the same bytes identically.)
            assert_eq!(signed.signature, Signature(by_libp2p));
            signed.signature = Signature(by_libp2p);
            signed.verify_signature().unwrap();
            // ...and one signed by hub-protocol verifies in libp2p.
            assert!(libp2p_key.public().verify(&message, &signed.signature.0));
        }
    }

    #[test]
    fn garbage_on_disk_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("refs.redb");
        {
            let store = RefStore::open(&path).unwrap();
            let tx = store.db.begin_write().unwrap();
            {
                let mut t = tx.open_table(REF_UPDATES).unwrap();
                t.insert("model/org/model", [1u8, 5, 0].as_slice()).unwrap();
            }
            tx.commit().unwrap();
        }
        assert!(matches!(
            RefStore::open(&path),
            Err(RefStoreError::Corrupt {
                what: "ref update",
                ..
            })
        ));
        std::fs::write(&path, b"not a database").unwrap();
        assert!(matches!(
            RefStore::open(&path),
            Err(RefStoreError::Open { .. })
        ));
    }
}
