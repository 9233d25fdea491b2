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

    let sync = |b: &Repos| {
        let refs = a.public_refs(&id).unwrap();
        let want: Vec<[u8; 20]> = refs.values().copied().collect();
        let have = if b.exists(&id) {
            b.ref_tips(&id).unwrap()
        } else {
            Vec::new()
        };
        let pack = a.build_pack(&id, &want, &have, 1 << 20).unwrap();
        let outcome = if b.exists(&id) {
            b.apply_replica(&id, &pack, &refs).unwrap()
        } else {
            b.create_replica(&id, 1_700_000_000, &pack, &refs).unwrap()
        };
        (outcome, pack.len())
    };
    // The replica appears with its refs set, public, dated by the signed update.
    let (outcome, first_len) = sync(&b);
    assert_eq!(outcome, ReplicaOutcome::Updated { refs: 1 });
    assert!(!b.meta(&id).unwrap().private);
    assert_eq!(b.meta(&id).unwrap().created_at, 1_700_000_000);
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
    let refs = a.public_refs(&id).unwrap();
    // Refused when creating the replica: nothing is left, not even an empty repo.
    assert!(b.create_replica(&id, 0, &[], &refs).is_err());
    assert!(!b.exists(&id));
    assert!(b.create_replica(&id, 0, b"PACK garbage", &refs).is_err());
    assert!(!b.exists(&id));
    assert!(b.list(id.kind()).unwrap().is_empty());
    // Refused when updating an existing replica: its refs do not move.
    b.create_replica(&id, 0, &[], &Default::default()).unwrap();
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

#[test]
fn a_replica_pack_is_checked_whole_unreferenced_objects_included() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let (_a_dir, a, id) = setup();
    // A peer's pack carries, besides the signed refs' commits, a commit no ref reaches with
    // an unsafe path.
    let run = |args: &[&str], input: &[u8]| {
        let mut child = Command::new("git")
            .args(args)
            .env("GIT_DIR", a.git_dir(&id))
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "git {args:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let blob = run(&["hash-object", "-w", "--stdin"], b"x");
    let mut tree = b"100644 .git\0".to_vec();
    tree.extend((0..20).map(|i| u8::from_str_radix(&blob[2 * i..2 * i + 2], 16).unwrap()));
    let tree = run(
        &["hash-object", "-t", "tree", "-w", "--literally", "--stdin"],
        &tree,
    );
    let evil = run(&["commit-tree", &tree, "-m", "evil"], b"");
    let refs = a.public_refs(&id).unwrap();
    let mut want: Vec<[u8; 20]> = refs.values().copied().collect();
    let mut raw = [0u8; 20];
    for (i, b) in raw.iter_mut().enumerate() {
        *b = u8::from_str_radix(&evil[2 * i..2 * i + 2], 16).unwrap();
    }
    want.push(raw);
    let pack = a.build_pack(&id, &want, &[], 1 << 20).unwrap();
    let b_dir = tempfile::tempdir().unwrap();
    let b = Repos::open(b_dir.path()).unwrap();
    let err = b.create_replica(&id, 0, &pack, &refs).unwrap_err();
    assert!(
        matches!(&err, ReplicaError::Rejected { reason, .. } if reason.to_string().contains("invalid path")),
        "{err}"
    );
    assert!(!b.exists(&id));
    assert!(b.resolve(&id, &evil).is_err());
}
