//! The state machine driven without sockets: every rejection reason, thresholds, rotation,
//! replays and a restore.

use super::*;
use crate::manifest::{Hash, Sha256};
use crate::repo::RepoType;
use crate::signed::{RefUpdate, SigningKey, Visibility};

const NOW: u64 = 1_700_000_000;

fn key(i: u8) -> SigningKey {
    SigningKey::from_bytes(&[i; 32])
}

fn repo(id: &str) -> RepoId {
    RepoId::parse(RepoType::Model, id).unwrap()
}

fn doc(name: &str, delegates: &[&SigningKey], threshold: u8) -> NamespaceDoc {
    NamespaceDoc::new(
        name,
        delegates.iter().map(|k| k.public()).collect(),
        threshold,
        Visibility::Public,
    )
    .unwrap()
}

fn update(repo: &RepoId, doc: &NamespaceDoc, seq: u64, tip: u8) -> RefUpdate {
    let mut u = RefUpdate::new(repo.clone(), doc.id(), seq, NOW);
    u.refs.insert("refs/heads/main".into(), [tip; 20]);
    u.lfs.insert(Sha256([tip; 32]), Hash([tip; 32]));
    u
}

/// `alice` (one delegate, key 1) with repo `alice/m` accepted at seq 1.
fn alice() -> (RefState, NamespaceDoc, RepoId) {
    let mut state = RefState::new();
    let d = doc("alice", &[&key(1)], 1);
    assert_eq!(
        state.apply_namespace_doc(d.sign_genesis(&[&key(1)])),
        Ok(DocAccepted::Genesis { id: d.id() })
    );
    let r = repo("alice/m");
    let signed = update(&r, &d, 1, 1).sign(&key(1)).unwrap();
    state.apply_ref_update(&r, signed, NOW).unwrap();
    (state, d, r)
}

#[test]
fn accepts_a_delegate_update_with_a_higher_seq() {
    let (mut state, d, r) = alice();
    assert_eq!(state.last_seq(&r), Some(1));
    let next = update(&r, &d, 7, 2).sign(&key(1)).unwrap();
    let accepted = state.apply_ref_update(&r, next.clone(), NOW).unwrap();
    assert_eq!(accepted, &next);
    assert_eq!(state.last_seq(&r), Some(7));
    assert_eq!(
        state.last_accepted(&r).unwrap().update.refs["refs/heads/main"],
        [2; 20]
    );
}

#[test]
fn rejects_a_non_delegate_key() {
    let (mut state, d, r) = alice();
    let forged = update(&r, &d, 2, 9).sign(&key(66)).unwrap();
    assert_eq!(
        state.apply_ref_update(&r, forged, NOW),
        Err(RefReject::NotADelegate {
            signer: key(66).public(),
            doc: d.id()
        })
    );
    assert_eq!(state.last_seq(&r), Some(1));
}

#[test]
fn rejects_an_update_bound_to_another_repo() {
    let (mut state, d, r) = alice();
    // A valid update of alice/other, offered as the state of alice/m.
    let other = repo("alice/other");
    let signed = update(&other, &d, 5, 5).sign(&key(1)).unwrap();
    assert_eq!(
        state.apply_ref_update(&r, signed.clone(), NOW),
        Err(RefReject::OtherRepo {
            expected: r.clone(),
            found: other.clone()
        })
    );
    // The same repo name under another type is another repo too.
    let dataset = RepoId::parse(RepoType::Dataset, "alice/m").unwrap();
    let signed = update(&dataset, &d, 5, 5).sign(&key(1)).unwrap();
    assert!(matches!(
        state.apply_ref_update(&r, signed, NOW),
        Err(RefReject::OtherRepo { .. })
    ));
    assert_eq!(state.last_seq(&r), Some(1));
}

#[test]
fn rejects_replays_and_the_same_seq_twice() {
    let (mut state, d, r) = alice();
    let old = update(&r, &d, 2, 2).sign(&key(1)).unwrap();
    state.apply_ref_update(&r, old.clone(), NOW).unwrap();
    state
        .apply_ref_update(&r, update(&r, &d, 3, 3).sign(&key(1)).unwrap(), NOW)
        .unwrap();
    // Replay of an older valid update: rollback refused.
    assert_eq!(
        state.apply_ref_update(&r, old, NOW),
        Err(RefReject::StaleSeq { seq: 2, last: 3 })
    );
    // Exact re-delivery of the accepted one.
    let current = state.last_accepted(&r).unwrap().clone();
    assert_eq!(
        state.apply_ref_update(&r, current, NOW),
        Err(RefReject::StaleSeq { seq: 3, last: 3 })
    );
    // Same seq, different content (an equivocating or racing signer).
    let twin = update(&r, &d, 3, 99).sign(&key(1)).unwrap();
    assert_eq!(
        state.apply_ref_update(&r, twin, NOW),
        Err(RefReject::StaleSeq { seq: 3, last: 3 })
    );
    assert_eq!(
        state.last_accepted(&r).unwrap().update.refs["refs/heads/main"],
        [3; 20]
    );
}

#[test]
fn rejects_bad_signatures_and_tampering() {
    let (mut state, d, r) = alice();
    let mut tampered = update(&r, &d, 2, 2).sign(&key(1)).unwrap();
    tampered
        .update
        .refs
        .insert("refs/heads/main".into(), [0xee; 20]);
    assert_eq!(
        state.apply_ref_update(&r, tampered, NOW),
        Err(RefReject::BadSignature {
            signer: key(1).public()
        })
    );
    let mut zeroed = update(&r, &d, 2, 2).sign(&key(1)).unwrap();
    zeroed.signature.0 = [0; 64];
    assert!(matches!(
        state.apply_ref_update(&r, zeroed, NOW),
        Err(RefReject::BadSignature { .. })
    ));
    // A signature by a delegate made for another signer's claim.
    let mut swapped = update(&r, &d, 2, 2).sign(&key(66)).unwrap();
    swapped.signer = key(1).public();
    assert!(matches!(
        state.apply_ref_update(&r, swapped, NOW),
        Err(RefReject::BadSignature { .. })
    ));
}

#[test]
fn rejects_unknown_and_grafted_namespace_docs() {
    let (mut state, d, r) = alice();
    // A document this node never saw.
    let unknown = doc("alice", &[&key(2)], 1);
    let signed = update(&r, &unknown, 2, 2).sign(&key(2)).unwrap();
    assert_eq!(
        state.apply_ref_update(&r, signed, NOW),
        Err(RefReject::UnknownNamespaceDoc { doc: unknown.id() })
    );
    // Grafting: mallory is a legitimate delegate of her own namespace and signs an update
    // for alice/m bound to her document.
    let mallory = doc("mallory", &[&key(66)], 1);
    state
        .apply_namespace_doc(mallory.sign_genesis(&[&key(66)]))
        .unwrap();
    let grafted = update(&r, &mallory, 2, 2).sign(&key(66)).unwrap();
    assert_eq!(
        state.apply_ref_update(&r, grafted, NOW),
        Err(RefReject::NamespaceMismatch {
            repo: r.clone(),
            doc: mallory.id(),
            doc_namespace: "mallory".into()
        })
    );
    // And alice's own key, bound to the wrong document, grafts nothing either.
    let wrong_doc = update(&r, &mallory, 2, 2).sign(&key(1)).unwrap();
    assert!(matches!(
        state.apply_ref_update(&r, wrong_doc, NOW),
        Err(RefReject::NamespaceMismatch { .. })
    ));
    assert_eq!(state.last_seq(&r), Some(1));
    let _ = d;
}

#[test]
fn rejects_malformed_bytes_and_updates_from_the_future() {
    let (mut state, d, r) = alice();
    let wire = update(&r, &d, 2, 2).sign(&key(1)).unwrap().encode();
    assert!(matches!(
        state.apply_ref_update_bytes(&r, &wire[..wire.len() - 1], NOW),
        Err(RefReject::Malformed(DecodeError::Truncated))
    ));
    assert!(matches!(
        state.apply_ref_update_bytes(&r, b"", NOW),
        Err(RefReject::Malformed(_))
    ));
    let mut bad_ref = update(&r, &d, 2, 2).sign(&key(1)).unwrap();
    bad_ref.update.refs.insert("../../etc".into(), [0; 20]);
    assert!(matches!(
        state.apply_ref_update(&r, bad_ref, NOW),
        Err(RefReject::Malformed(DecodeError::Invalid(_)))
    ));
    let mut future = update(&r, &d, 2, 2);
    future.time = NOW + MAX_CLOCK_SKEW_SECS + 1;
    assert_eq!(
        state.apply_ref_update(&r, future.sign(&key(1)).unwrap(), NOW),
        Err(RefReject::FromTheFuture {
            time: NOW + MAX_CLOCK_SKEW_SECS + 1,
            now: NOW
        })
    );
    future.time = NOW + MAX_CLOCK_SKEW_SECS;
    state
        .apply_ref_update(&r, future.sign(&key(1)).unwrap(), NOW)
        .unwrap();
    state.apply_ref_update_bytes(&r, &wire, NOW).unwrap_err();
}

#[test]
fn threshold_two_of_three() {
    let (a, b, c, outsider) = (key(1), key(2), key(3), key(66));
    let genesis = doc("org", &[&a, &b, &c], 2);
    let mut state = RefState::new();

    // One signature is below the threshold, also for a genesis.
    assert_eq!(
        state.apply_namespace_doc(genesis.sign_genesis(&[&a])),
        Err(DocReject::BelowThreshold {
            valid: 1,
            threshold: 2
        })
    );
    // An outsider's signature does not count; it spoils the document.
    assert_eq!(
        state.apply_namespace_doc(genesis.sign_genesis(&[&a, &outsider])),
        Err(DocReject::NotADelegate {
            signer: outsider.public()
        })
    );
    // The same delegate twice counts once.
    let mut doubled = genesis.sign_genesis(&[&a]);
    doubled.signatures.push(doubled.signatures[0]);
    assert_eq!(
        state.apply_namespace_doc(doubled),
        Err(DocReject::BelowThreshold {
            valid: 1,
            threshold: 2
        })
    );
    // A broken signature spoils it too.
    let mut broken = genesis.sign_genesis(&[&a, &b]);
    broken.signatures[1].1.0[0] ^= 1;
    assert!(matches!(
        state.apply_namespace_doc(broken),
        Err(DocReject::BadSignature { .. })
    ));
    assert!(state.head("org").is_none(), "rejections change nothing");

    // Two of three: accepted. Signatures may be collected one at a time.
    let mut two = genesis.sign_genesis(&[&c]);
    two.add_signature(&a);
    let wire = two.encode();
    assert_eq!(
        state.apply_namespace_doc_bytes(&wire),
        Ok(DocAccepted::Genesis { id: genesis.id() })
    );
    assert_eq!(
        state.apply_namespace_doc_bytes(&wire),
        Ok(DocAccepted::Known { id: genesis.id() })
    );

    // Any single delegate may sign ref updates; the threshold is for the document.
    let r = repo("org/model");
    state
        .apply_ref_update(&r, update(&r, &genesis, 1, 1).sign(&b).unwrap(), NOW)
        .unwrap();

    // A change needs two of the current three as well.
    let next = doc("org", &[&a, &b], 1);
    assert!(matches!(
        state.apply_namespace_doc(next.sign_change(Some(genesis.id()), &[&a])),
        Err(DocReject::BelowThreshold { .. })
    ));
    assert_eq!(
        state.apply_namespace_doc(next.sign_change(Some(genesis.id()), &[&a, &b])),
        Ok(DocAccepted::Updated {
            id: next.id(),
            previous: genesis.id()
        })
    );
}

#[test]
fn delegate_rotation() {
    let (a, b, c, d) = (key(1), key(2), key(3), key(4));
    let mut state = RefState::new();
    let v1 = doc("org", &[&a, &b, &c], 2);
    state
        .apply_namespace_doc(v1.sign_genesis(&[&a, &b]))
        .unwrap();
    let r = repo("org/model");
    state
        .apply_ref_update(&r, update(&r, &v1, 1, 1).sign(&a).unwrap(), NOW)
        .unwrap();
    // An update `a` signs now and leaks later, for the replay below.
    let leaked = update(&r, &v1, 5, 5).sign(&a).unwrap();

    // Rotate `a` out and `d` in, authorised by the old set (b and c).
    let v2 = doc("org", &[&b, &c, &d], 2);
    // The new delegate alone cannot authorise its own entry.
    assert!(matches!(
        state.apply_namespace_doc(v2.sign_change(Some(v1.id()), &[&b, &d])),
        Err(DocReject::NotADelegate { .. })
    ));
    state
        .apply_namespace_doc(v2.sign_change(Some(v1.id()), &[&b, &c]))
        .unwrap();
    assert_eq!(state.head("org"), Some(&v2));
    assert_eq!(state.chain("org").len(), 2);

    // `a` signing under the new document: not a delegate.
    assert_eq!(
        state.apply_ref_update(&r, update(&r, &v2, 2, 2).sign(&a).unwrap(), NOW),
        Err(RefReject::NotADelegate {
            signer: a.public(),
            doc: v2.id()
        })
    );
    // `a`'s update under the old document, with a fresh seq: the document is superseded.
    assert_eq!(
        state.apply_ref_update(&r, leaked, NOW),
        Err(RefReject::SupersededNamespaceDoc {
            doc: v1.id(),
            current: v2.id()
        })
    );
    // `d` now signs; the seq carries on from the old document's updates.
    state
        .apply_ref_update(&r, update(&r, &v2, 2, 2).sign(&d).unwrap(), NOW)
        .unwrap();

    // `a` cannot take part in further changes, and the old set cannot fork from v1.
    let v3 = doc("org", &[&a], 1);
    assert!(matches!(
        state.apply_namespace_doc(v3.sign_change(Some(v2.id()), &[&a, &b])),
        Err(DocReject::NotADelegate { .. })
    ));
    assert_eq!(
        state.apply_namespace_doc(v3.sign_change(Some(v1.id()), &[&a, &b])),
        Err(DocReject::Fork {
            name: "org".into(),
            previous: v1.id(),
            head: v2.id()
        })
    );

    // Rotating back to an identical document extends the chain; re-delivering the genesis is
    // still recognised.
    state
        .apply_namespace_doc(v1.sign_change(Some(v2.id()), &[&b, &c]))
        .unwrap();
    assert_eq!(state.chain("org").len(), 3);
    assert_eq!(
        state.apply_namespace_doc(v1.sign_genesis(&[&a, &b])),
        Ok(DocAccepted::Known { id: v1.id() })
    );
}

#[test]
fn conflicting_claims_renames_and_unknown_history() {
    let (mut state, d, _) = alice();
    // A second, different genesis for a name already known: rejected and reported.
    let rival = doc("alice", &[&key(66)], 1);
    assert_eq!(
        state.apply_namespace_doc(rival.sign_genesis(&[&key(66)])),
        Err(DocReject::ConflictingClaim {
            name: "alice".into(),
            known: d.id(),
            offered: rival.id()
        })
    );
    assert_eq!(state.head("alice"), Some(&d));
    // A change from a document this node never saw.
    assert_eq!(
        state.apply_namespace_doc(rival.sign_change(Some(DocId([9; 32])), &[&key(66)])),
        Err(DocReject::UnknownPrevious {
            name: "alice".into(),
            previous: DocId([9; 32])
        })
    );
    // A change that takes over another namespace's chain under a new name.
    let renamed = doc("alice2", &[&key(1)], 1);
    assert_eq!(
        state.apply_namespace_doc(renamed.sign_change(Some(d.id()), &[&key(1)])),
        Err(DocReject::Renamed {
            from: "alice".into(),
            to: "alice2".into()
        })
    );
    assert!(matches!(
        state.apply_namespace_doc_bytes(&[1, 4, 0]),
        Err(DocReject::Malformed(_))
    ));
    assert_eq!(state.namespaces().collect::<Vec<_>>(), ["alice"]);
}

#[test]
fn checks_do_not_change_state_and_are_deterministic() {
    let (state, d, r) = alice();
    let next = update(&r, &d, 2, 2).sign(&key(1)).unwrap();
    for _ in 0..3 {
        assert_eq!(state.check_ref_update(&r, &next, NOW), Ok(()));
    }
    assert_eq!(state.last_seq(&r), Some(1));
}

#[test]
fn restore_keeps_rejecting_replays() {
    let (a, b, c, d) = (key(1), key(2), key(3), key(4));
    let mut state = RefState::new();
    let v1 = doc("org", &[&a, &b, &c], 2);
    state
        .apply_namespace_doc(v1.sign_genesis(&[&a, &b]))
        .unwrap();
    let r = repo("org/model");
    let old = update(&r, &v1, 1, 1).sign(&a).unwrap();
    state.apply_ref_update(&r, old.clone(), NOW).unwrap();
    let v2 = doc("org", &[&b, &c, &d], 2);
    state
        .apply_namespace_doc(v2.sign_change(Some(v1.id()), &[&b, &c]))
        .unwrap();

    let chains = state.namespaces().map(|n| state.chain(n).to_vec());
    let accepted = state.accepted().map(|(k, v)| (k.clone(), v.clone()));
    let mut restored = RefState::restore(chains, accepted).unwrap();
    assert_eq!(restored.head("org"), Some(&v2));
    assert_eq!(restored.last_seq(&r), Some(1));
    // The last accepted update is bound to the superseded v1 and still restores; a replay of
    // it is refused and the chain goes on from v2.
    assert!(restored.apply_ref_update(&r, old, NOW).is_err());
    restored
        .apply_ref_update(&r, update(&r, &v2, 2, 2).sign(&d).unwrap(), NOW)
        .unwrap();

    // A chain out of order, or an update filed under the wrong repo, does not restore.
    let reversed = vec![state.chain("org")[1].clone(), state.chain("org")[0].clone()];
    assert!(matches!(
        RefState::restore([reversed], []),
        Err(RestoreError::Doc { index: 0, .. })
    ));
    assert!(matches!(
        RefState::restore(
            [],
            [(repo("org/other"), update(&r, &v1, 1, 1).sign(&a).unwrap())]
        ),
        Err(RestoreError::RepoMismatch { .. })
    ));
}
