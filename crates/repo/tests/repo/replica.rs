//! Replicating a repository between two roots: build the pack of the difference on one side,
//! apply it on the other.

use super::{add, commit, setup};
use hub_repo::{ReplicaError, ReplicaOutcome, Repos};

#[test]
fn a_replica_follows_its_origin_with_packs_of_the_difference() {
    let (_a_dir, a, id) = setup();
    commit(&a, &id, "main", vec![add("config.json", b"{}")]).unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let b = Repos::open(b_dir.path()).unwrap();
    b.create_replica(&id, 1_700_000_000).unwrap();
    assert!(!b.meta(&id).unwrap().private);
    assert_eq!(b.meta(&id).unwrap().created_at, 1_700_000_000);

    let sync = |b: &Repos| {
        let refs = a.public_refs(&id).unwrap();
        let want: Vec<[u8; 20]> = refs.values().copied().collect();
        let pack = a
            .build_pack(&id, &want, &b.ref_tips(&id).unwrap(), 1 << 20)
            .unwrap();
        (b.apply_replica(&id, &pack, &refs).unwrap(), pack.len())
    };
    let (outcome, first_len) = sync(&b);
    assert_eq!(outcome, ReplicaOutcome::Updated { refs: 1 });
    assert_eq!(
        b.resolve(&id, "main").unwrap(),
        a.resolve(&id, "main").unwrap()
    );
    let (_, bytes) = b.file(&id, "main", "config.json").unwrap();
    assert_eq!(bytes, b"{}");

    // A second commit and a branch travel as a pack of the difference only.
    commit(&a, &id, "main", vec![add("README.md", b"# tiny\n")]).unwrap();
    a.create_branch(&id, "dev", None).unwrap();
    let (outcome, second_len) = sync(&b);
    assert_eq!(outcome, ReplicaOutcome::Updated { refs: 2 });
    assert!(second_len < first_len + 200, "{second_len} vs {first_len}");
    assert_eq!(b.public_refs(&id).unwrap(), a.public_refs(&id).unwrap());
    assert_eq!(sync(&b).0, ReplicaOutcome::UpToDate);

    // A deleted branch is deleted on the replica too.
    a.delete_branch(&id, "dev").unwrap();
    assert_eq!(sync(&b).0, ReplicaOutcome::Updated { refs: 1 });
    assert_eq!(b.public_refs(&id).unwrap(), a.public_refs(&id).unwrap());
}

#[test]
fn missing_objects_and_limits_are_errors() {
    let (_dir, a, id) = setup();
    assert!(matches!(
        a.build_pack(&id, &[[7; 20]], &[], 1 << 20),
        Err(ReplicaError::MissingObject { .. })
    ));
    let want: Vec<[u8; 20]> = a.public_refs(&id).unwrap().values().copied().collect();
    assert!(matches!(
        a.build_pack(&id, &want, &[], 10),
        Err(ReplicaError::TooLarge { limit: 10 })
    ));
    // Refs naming objects the pack does not carry are refused; nothing moves.
    let b_dir = tempfile::tempdir().unwrap();
    let b = Repos::open(b_dir.path()).unwrap();
    b.create_replica(&id, 0).unwrap();
    let refs = a.public_refs(&id).unwrap();
    assert!(b.apply_replica(&id, &[], &refs).is_err());
    assert!(b.public_refs(&id).unwrap().is_empty());
    assert!(b.apply_replica(&id, b"PACK garbage", &refs).is_err());
    assert!(b.public_refs(&id).unwrap().is_empty());
}

#[test]
fn lfs_pointers_lists_what_the_tips_reference() {
    use hub_repo::{FileContent, LfsPointer, Operation};
    let (_d, repos, id) = setup();
    let lfs = |path: &str, hex: &str, size: u64| Operation::Add {
        path: path.into(),
        content: FileContent::Lfs(LfsPointer::new(&hex.repeat(32), size).unwrap()),
    };
    commit(&repos, &id, "main", vec![lfs("old.bin", "01", 5)]).unwrap();
    commit(
        &repos,
        &id,
        "main",
        vec![
            hub_repo::Operation::Delete {
                path: "old.bin".into(),
            },
            lfs("w/model.safetensors", "ab", 1 << 20),
            lfs("b.bin", "cd", 7),
            add("config.json", b"{}"),
        ],
    )
    .unwrap();
    let tips = repos.ref_tips(&id).unwrap();
    let all = repos.lfs_pointers(&id, &tips, 10).unwrap();
    // Only the tip's tree counts: the deleted pointer of the first commit is not listed.
    assert_eq!(
        all.into_iter().collect::<Vec<_>>(),
        vec![([0xab; 32], 1 << 20), ([0xcd; 32], 7)]
    );
    assert_eq!(repos.lfs_pointers(&id, &tips, 1).unwrap().len(), 1);
    assert!(repos.lfs_pointers(&id, &[[9; 20]], 10).unwrap().is_empty());
}
