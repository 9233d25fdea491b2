//! hub-repo against real repositories on disk, checked with the real `git` binary.

mod receive;
mod replica;
mod trees;

use hub_protocol::repo::{PathError, RepoId, RepoType};
use hub_repo::{
    Author, CommitRequest, EntryKind, FileContent, LfsPointer, Operation, RepoError, Repos,
};
use std::process::Command;

fn author() -> Author {
    Author::new("alice", "alice@hubmesh.test")
}

fn setup() -> (tempfile::TempDir, Repos, RepoId) {
    let dir = tempfile::tempdir().unwrap();
    let repos = Repos::open(dir.path()).unwrap();
    let id = RepoId::parse(RepoType::Model, "alice/tiny").unwrap();
    repos.create(&id, &author()).unwrap();
    (dir, repos, id)
}

fn add(path: &str, bytes: &[u8]) -> Operation {
    Operation::Add {
        path: path.into(),
        content: FileContent::Regular(bytes.to_vec()),
    }
}

fn commit(
    repos: &Repos,
    id: &RepoId,
    branch: &str,
    ops: Vec<Operation>,
) -> Result<hub_repo::CommitInfo, RepoError> {
    repos.commit(
        id,
        CommitRequest {
            branch: branch.into(),
            message: "update\n\nwith details".into(),
            author: author(),
            parent: None,
            operations: ops,
        },
    )
}

/// Runs git against the bare repository and returns stdout; fails the test on a non-zero exit.
fn git(repos: &Repos, id: &RepoId, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(repos.git_dir(id))
        .args(args)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn paths(repos: &Repos, id: &RepoId, rev: &str) -> Vec<String> {
    repos
        .list_tree(id, rev, "", true)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == EntryKind::File)
        .map(|e| e.path)
        .collect()
}

#[test]
fn create_makes_a_valid_repo_with_gitattributes() {
    let (_d, repos, id) = setup();
    assert!(repos.exists(&id));
    let head = repos.resolve(&id, "main").unwrap();
    assert_eq!(head.len(), 40);
    assert_eq!(git(&repos, &id, &["rev-parse", "HEAD"]).trim(), head);
    git(&repos, &id, &["fsck", "--strict"]);
    let attrs = git(&repos, &id, &["show", "main:.gitattributes"]);
    assert!(attrs.contains("*.safetensors filter=lfs"));
    assert!(matches!(
        repos.create(&id, &author()),
        Err(RepoError::AlreadyExists { .. })
    ));
    assert_eq!(repos.list(RepoType::Model).unwrap(), vec![id.clone()]);
    assert!(repos.list(RepoType::Dataset).unwrap().is_empty());
}

#[test]
fn commit_regular_and_lfs_files() {
    let (_d, repos, id) = setup();
    let pointer = LfsPointer::new(&"ab".repeat(32), 1 << 30).unwrap();
    let info = commit(
        &repos,
        &id,
        "main",
        vec![
            add("config.json", b"{\"a\": 1}"),
            Operation::Add {
                path: "weights/model.safetensors".into(),
                content: FileContent::Lfs(pointer.clone()),
            },
        ],
    )
    .unwrap();
    assert_eq!(info.title, "update");
    assert_eq!(info.author, "alice");
    assert_eq!(info.parents.len(), 1);
    git(&repos, &id, &["fsck", "--strict"]);
    let tree = repos.list_tree(&id, &info.id, "", true).unwrap();
    let weights = tree
        .iter()
        .find(|e| e.path == "weights/model.safetensors")
        .unwrap();
    assert_eq!(weights.lfs.as_ref(), Some(&pointer));
    assert!(
        tree.iter()
            .any(|e| e.path == "weights" && e.kind == EntryKind::Directory)
    );
    let (entry, bytes) = repos.file(&id, "main", "config.json").unwrap();
    assert_eq!(bytes, b"{\"a\": 1}");
    assert_eq!(
        entry.oid,
        git(&repos, &id, &["rev-parse", "main:config.json"]).trim()
    );
    assert_eq!(
        git(&repos, &id, &["show", "main:weights/model.safetensors"]),
        pointer.encode()
    );
    // Non-recursive listing of a folder, as `/tree/main/weights` asks.
    let top = repos.list_tree(&id, "main", "weights", false).unwrap();
    assert_eq!(top.len(), 1);
    assert!(matches!(
        repos.list_tree(&id, "main", "nope", false),
        Err(RepoError::EntryNotFound { .. })
    ));
}

#[test]
fn delete_copy_and_delete_folder() {
    let (_d, repos, id) = setup();
    commit(
        &repos,
        &id,
        "main",
        vec![
            add("a/x.txt", b"x"),
            add("a/y.txt", b"y"),
            add("b.txt", b"b"),
        ],
    )
    .unwrap();
    commit(
        &repos,
        &id,
        "main",
        vec![
            Operation::Copy {
                src: "b.txt".into(),
                src_revision: None,
                dest: "c/b-copy.txt".into(),
            },
            Operation::Delete {
                path: "b.txt".into(),
            },
            Operation::DeleteFolder { path: "a/".into() },
        ],
    )
    .unwrap();
    assert_eq!(
        paths(&repos, &id, "main"),
        vec![".gitattributes", "c/b-copy.txt"]
    );
    assert_eq!(repos.file(&id, "main", "c/b-copy.txt").unwrap().1, b"b");
}

#[test]
fn delete_files_inside_folders() {
    let (_d, repos, id) = setup();
    commit(
        &repos,
        &id,
        "main",
        vec![
            add("sub/a.txt", b"a"),
            add("sub/b.txt", b"b"),
            add("a/b/c.txt", b"c"),
            add("x/y/z/w.txt", b"w"),
            add("x/keep.txt", b"k"),
        ],
    )
    .unwrap();
    let delete = |path: &str| Operation::Delete { path: path.into() };
    commit(&repos, &id, "main", vec![delete("sub/a.txt")]).unwrap();
    assert_eq!(
        paths(&repos, &id, "main"),
        vec![
            ".gitattributes",
            "a/b/c.txt",
            "sub/b.txt",
            "x/keep.txt",
            "x/y/z/w.txt"
        ]
    );
    // The last file of nested folders: the emptied folders go with it.
    commit(&repos, &id, "main", vec![delete("a/b/c.txt")]).unwrap();
    let all: Vec<String> = repos
        .list_tree(&id, "main", "", true)
        .unwrap()
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert!(
        !all.iter().any(|p| p == "a" || p.starts_with("a/")),
        "{all:?}"
    );
    // Several deletes in one commit, in the same folder and below one another.
    commit(
        &repos,
        &id,
        "main",
        vec![
            delete("sub/b.txt"),
            delete("x/y/z/w.txt"),
            delete("x/keep.txt"),
        ],
    )
    .unwrap();
    assert_eq!(
        repos
            .list_tree(&id, "main", "", true)
            .unwrap()
            .into_iter()
            .map(|e| e.path)
            .collect::<Vec<_>>(),
        vec![".gitattributes"]
    );
    git(&repos, &id, &["fsck", "--strict"]);
    // Missing files, a file deleted twice in one commit, and folders are still refused.
    commit(&repos, &id, "main", vec![add("d/f.txt", b"f")]).unwrap();
    let before = repos.resolve(&id, "main").unwrap();
    for ops in [
        vec![delete("d/missing.txt")],
        vec![delete("nodir/f.txt")],
        vec![delete("d/f.txt/x")],
        vec![delete("d/f.txt"), delete("d/f.txt")],
        vec![delete("d")],
    ] {
        let err = commit(&repos, &id, "main", ops.clone()).unwrap_err();
        assert!(
            matches!(err, RepoError::EntryNotFound { .. }),
            "{ops:?}: {err:?}"
        );
        assert_eq!(repos.resolve(&id, "main").unwrap(), before);
    }
    // A folder inside a folder.
    commit(
        &repos,
        &id,
        "main",
        vec![add("p/q/r.txt", b"r"), add("p/s.txt", b"s")],
    )
    .unwrap();
    commit(
        &repos,
        &id,
        "main",
        vec![Operation::DeleteFolder {
            path: "p/q/".into(),
        }],
    )
    .unwrap();
    assert_eq!(
        paths(&repos, &id, "main"),
        vec![".gitattributes", "d/f.txt", "p/s.txt"]
    );
}

#[test]
fn file_and_folder_of_one_name_are_refused() {
    let (_d, repos, id) = setup();
    commit(
        &repos,
        &id,
        "main",
        vec![add("dir/deep/f.txt", b"f"), add("file.txt", b"x")],
    )
    .unwrap();
    let before = repos.resolve(&id, "main").unwrap();
    let copy_to = |dest: &str| Operation::Copy {
        src: "file.txt".into(),
        src_revision: None,
        dest: dest.into(),
    };
    for ops in [
        // Both in one commit, in either order.
        vec![add("clash", b"1"), add("clash/inner", b"2")],
        vec![add("clash/inner", b"2"), add("clash", b"1")],
        vec![add("n/clash", b"1"), add("n/clash/deeper/inner", b"2")],
        // Against the existing tree: a folder where a file is, a file where a folder is.
        vec![add("file.txt/inner", b"2")],
        vec![add("dir", b"1")],
        vec![add("dir/deep", b"1")],
        vec![copy_to("dir/deep")],
        vec![copy_to("file.txt/inner")],
        vec![add("c", b"1"), copy_to("c/x")],
    ] {
        let err = commit(&repos, &id, "main", ops.clone()).unwrap_err();
        assert!(
            matches!(err, RepoError::BadOperation(_)),
            "{ops:?}: {err:?}"
        );
        assert_eq!(repos.resolve(&id, "main").unwrap(), before, "{ops:?}");
    }
    // Replacing a file by a folder is fine when the commit deletes the file first.
    commit(
        &repos,
        &id,
        "main",
        vec![
            Operation::Delete {
                path: "file.txt".into(),
            },
            add("file.txt/inner", b"2"),
        ],
    )
    .unwrap();
    assert_eq!(
        paths(&repos, &id, "main"),
        vec![".gitattributes", "dir/deep/f.txt", "file.txt/inner"]
    );
}

#[test]
fn a_failing_operation_commits_nothing() {
    let (_d, repos, id) = setup();
    let before = repos.resolve(&id, "main").unwrap();
    for ops in [
        vec![
            add("ok.txt", b"1"),
            Operation::Delete {
                path: "missing.txt".into(),
            },
        ],
        vec![
            add("ok.txt", b"1"),
            Operation::DeleteFolder {
                path: "nodir".into(),
            },
        ],
        vec![add("ok.txt", b"1"), add("../x", b"2")],
    ] {
        assert!(commit(&repos, &id, "main", ops).is_err());
        assert_eq!(
            repos.resolve(&id, "main").unwrap(),
            before,
            "branch must not move"
        );
    }
    assert_eq!(paths(&repos, &id, "main"), vec![".gitattributes"]);
}

#[test]
fn unsafe_paths_are_rejected() {
    let (_d, repos, id) = setup();
    for bad in [
        "../x",
        "/etc/x",
        "a/../../x",
        ".git/config",
        "sub/.GIT/hooks",
        "git~1/x",
        "a\0b",
        "a//b",
        "",
    ] {
        let err = commit(&repos, &id, "main", vec![add(bad, b"evil")]).unwrap_err();
        assert!(
            matches!(err, RepoError::InvalidPath { .. }),
            "{bad:?}: {err:?}"
        );
    }
    assert_eq!(paths(&repos, &id, "main"), vec![".gitattributes"]);
}

#[test]
fn bidi_paths_are_rejected_by_every_operation() {
    let (_d, repos, id) = setup();
    commit(&repos, &id, "main", vec![add("ok.txt", b"1")]).unwrap();
    let before = repos.resolve(&id, "main").unwrap();
    let bidi = "sub/report\u{202E}fdp.exe";
    for op in [
        add(bidi, b"evil"),
        Operation::Delete { path: bidi.into() },
        Operation::DeleteFolder {
            path: "\u{2066}sub".into(),
        },
        Operation::Copy {
            src: "ok.txt".into(),
            src_revision: None,
            dest: bidi.into(),
        },
        Operation::Copy {
            src: "ok\u{200F}.txt".into(),
            src_revision: None,
            dest: "copy.txt".into(),
        },
    ] {
        let err = commit(&repos, &id, "main", vec![add("fine.txt", b"2"), op.clone()]).unwrap_err();
        assert!(
            matches!(
                &err,
                RepoError::InvalidPath {
                    source: PathError::Bidi,
                    ..
                }
            ),
            "{op:?}: {err:?}"
        );
        assert_eq!(repos.resolve(&id, "main").unwrap(), before, "{op:?}");
    }
    assert!(matches!(
        repos.file(&id, "main", bidi),
        Err(RepoError::InvalidPath { .. })
    ));
}

#[test]
fn parent_commit_is_checked() {
    let (_d, repos, id) = setup();
    let head = repos.resolve(&id, "main").unwrap();
    let with_parent = |parent: &str| {
        repos.commit(
            &id,
            CommitRequest {
                branch: "main".into(),
                message: "m".into(),
                author: author(),
                parent: Some(parent.into()),
                operations: vec![add("f.txt", parent.as_bytes())],
            },
        )
    };
    assert!(matches!(
        with_parent(&"0".repeat(40)),
        Err(RepoError::ParentMismatch { .. })
    ));
    assert!(
        matches!(
            with_parent(&head[..4]),
            Err(RepoError::ParentMismatch { .. })
        ),
        "too short a prefix"
    );
    with_parent(&head[..7].to_ascii_uppercase()).unwrap();
    assert!(
        matches!(with_parent(&head), Err(RepoError::ParentMismatch { .. })),
        "head moved on"
    );
}

#[test]
fn branches_tags_and_revisions() {
    let (_d, repos, id) = setup();
    let first = commit(&repos, &id, "main", vec![add("v1.txt", b"1")]).unwrap();
    repos.create_branch(&id, "dev", None).unwrap();
    repos.create_tag(&id, "v1.0", "main").unwrap();
    let on_dev = commit(&repos, &id, "dev", vec![add("dev.txt", b"d")]).unwrap();
    repos.create_branch(&id, "refs/pr/1", Some("dev")).unwrap();
    assert_eq!(repos.resolve(&id, "main").unwrap(), first.id);
    assert_eq!(repos.resolve(&id, "dev").unwrap(), on_dev.id);
    assert_eq!(repos.resolve(&id, "v1.0").unwrap(), first.id);
    assert_eq!(repos.resolve(&id, "refs/tags/v1.0").unwrap(), first.id);
    assert_eq!(repos.resolve(&id, "refs/pr/1").unwrap(), on_dev.id);
    assert_eq!(repos.resolve(&id, &on_dev.id).unwrap(), on_dev.id);
    assert_eq!(repos.resolve(&id, &on_dev.id[..8]).unwrap(), on_dev.id);
    for bad in [
        "nope",
        "main~1",
        "HEAD",
        "main^",
        ":/v1",
        "@{0}",
        "refs/remotes/x",
        "",
        &"f".repeat(40),
    ] {
        assert!(
            matches!(
                repos.resolve(&id, bad),
                Err(RepoError::RevisionNotFound { .. })
            ),
            "{bad:?}"
        );
    }
    let (branches, tags) = repos.refs(&id).unwrap();
    let names: Vec<_> = branches.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["dev", "main"]);
    assert_eq!(tags[0].name, "v1.0");
    assert_eq!(tags[0].target, first.id);
    assert!(matches!(
        repos.create_tag(&id, "v1.0", "dev"),
        Err(RepoError::RefExists { .. })
    ));
    assert!(matches!(
        repos.create_branch(&id, "bad..name", None),
        Err(RepoError::InvalidRefName { .. })
    ));
    repos.delete_tag(&id, "v1.0").unwrap();
    repos.delete_branch(&id, "dev").unwrap();
    assert!(matches!(
        repos.delete_branch(&id, "dev"),
        Err(RepoError::RevisionNotFound { .. })
    ));
    assert!(repos.delete_branch(&id, "main").is_err());
    git(&repos, &id, &["fsck", "--strict"]);
}

#[test]
fn history_is_newest_first() {
    let (_d, repos, id) = setup();
    let a = commit(&repos, &id, "main", vec![add("a", b"a")]).unwrap();
    let b = commit(&repos, &id, "main", vec![add("b", b"b")]).unwrap();
    let log = repos.history(&id, "main", 10).unwrap();
    assert_eq!(log.len(), 3);
    assert_eq!(log[0].id, b.id);
    assert_eq!(log[1].id, a.id);
    assert_eq!(log[2].title, "initial commit");
    assert_eq!(repos.history(&id, "main", 1).unwrap().len(), 1);
}

#[test]
fn concurrent_commits_are_serialised() {
    let (_d, repos, id) = setup();
    std::thread::scope(|s| {
        for t in 0..4 {
            let (repos, id) = (&repos, &id);
            s.spawn(move || {
                for i in 0..5 {
                    commit(
                        repos,
                        id,
                        "main",
                        vec![add(&format!("t{t}/f{i}.txt"), b"x")],
                    )
                    .unwrap();
                }
            });
        }
    });
    assert_eq!(paths(&repos, &id, "main").len(), 1 + 20);
    assert_eq!(repos.history(&id, "main", 100).unwrap().len(), 1 + 20);
}

#[test]
fn concurrent_commits_with_a_parent_conflict_cleanly() {
    let (_d, repos, id) = setup();
    let head = repos.resolve(&id, "main").unwrap();
    let results: Vec<Result<hub_repo::CommitInfo, RepoError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let (repos, id, head) = (&repos, &id, &head);
                s.spawn(move || {
                    repos.commit(
                        id,
                        CommitRequest {
                            branch: "main".into(),
                            message: format!("writer {t}"),
                            author: author(),
                            parent: Some(head.clone()),
                            operations: vec![add(&format!("t{t}.txt"), b"x")],
                        },
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Exactly one writer saw `head` as the branch head; every other one is a clear conflict.
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "{results:?}");
    for r in &results {
        assert!(
            matches!(r, Ok(_) | Err(RepoError::ParentMismatch { .. })),
            "{r:?}"
        );
    }
    assert_eq!(repos.history(&id, "main", 100).unwrap().len(), 2);
}

#[test]
fn stale_ref_locks_are_cleared_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let id = RepoId::parse(RepoType::Model, "alice/tiny").unwrap();
    let git_dir = {
        let repos = Repos::open(dir.path()).unwrap();
        repos.create(&id, &author()).unwrap();
        repos.create_tag(&id, "v1", "main").unwrap();
        repos.git_dir(&id)
    };
    // What a writer killed between taking the locks and committing leaves behind.
    for lock in [
        "refs/heads/main.lock",
        "refs/tags/v1.lock",
        "packed-refs.lock",
        "HEAD.lock",
    ] {
        std::fs::write(
            git_dir.join(lock),
            "0000000000000000000000000000000000000000\n",
        )
        .unwrap();
    }
    let repos = Repos::open(dir.path()).unwrap();
    commit(&repos, &id, "main", vec![add("after-crash.txt", b"x")]).unwrap();
    repos.delete_tag(&id, "v1").unwrap();
    for lock in [
        "refs/heads/main.lock",
        "refs/tags/v1.lock",
        "packed-refs.lock",
        "HEAD.lock",
    ] {
        assert!(!git_dir.join(lock).exists(), "{lock} left in place");
    }
    git(&repos, &id, &["fsck", "--strict"]);
}

#[test]
fn delete_repo_and_unknown_repo() {
    let (_d, repos, id) = setup();
    repos.delete(&id).unwrap();
    assert!(!repos.exists(&id));
    assert!(matches!(
        repos.resolve(&id, "main"),
        Err(RepoError::NotFound { .. })
    ));
    assert!(matches!(repos.delete(&id), Err(RepoError::NotFound { .. })));
    repos.create(&id, &author()).unwrap();
}

#[test]
fn visibility_and_download_counts_persist() {
    let dir = tempfile::tempdir().unwrap();
    let public = RepoId::parse(RepoType::Model, "alice/pub").unwrap();
    let private = RepoId::parse(RepoType::Dataset, "alice/priv").unwrap();
    {
        let repos = Repos::open(dir.path()).unwrap();
        repos.create(&public, &author()).unwrap();
        repos.create_with(&private, &author(), true).unwrap();
        assert!(!repos.meta(&public).unwrap().private);
        assert!(repos.meta(&private).unwrap().private);
        assert!(repos.meta(&public).unwrap().created_at > 1_600_000_000);
        for _ in 0..3 {
            repos.count_download(&public);
        }
        assert_eq!(
            repos.downloads(&public).unwrap(),
            3,
            "pending counts are visible"
        );
        assert_eq!(repos.flush_downloads().unwrap(), 1);
        repos.count_download(&public);
        repos.flush_downloads().unwrap();
        repos.set_private(&public, true).unwrap();
    }
    let repos = Repos::open(dir.path()).unwrap();
    assert_eq!(repos.downloads(&public).unwrap(), 4);
    assert!(repos.meta(&public).unwrap().private);
    repos.delete(&public).unwrap();
    assert!(matches!(
        repos.meta(&public),
        Err(RepoError::NotFound { .. })
    ));
    repos.create(&public, &author()).unwrap();
    assert_eq!(
        repos.downloads(&public).unwrap(),
        0,
        "a re-created repo starts from zero"
    );
    assert!(!repos.meta(&public).unwrap().private);
}

#[test]
fn rename_keeps_history_visibility_and_downloads() {
    let (_d, repos, id) = setup();
    commit(&repos, &id, "main", vec![add("a.txt", b"a")]).unwrap();
    repos.set_private(&id, true).unwrap();
    repos.count_download(&id);
    repos.flush_downloads().unwrap();
    let head = repos.resolve(&id, "main").unwrap();
    let to = RepoId::parse(RepoType::Model, "bob/renamed").unwrap();
    repos.rename(&id, &to).unwrap();
    assert!(!repos.exists(&id));
    assert_eq!(repos.resolve(&to, "main").unwrap(), head);
    assert!(repos.meta(&to).unwrap().private);
    assert_eq!(repos.downloads(&to).unwrap(), 1);
    assert!(matches!(
        repos.rename(&id, &to),
        Err(RepoError::NotFound { .. })
    ));
    repos.create(&id, &author()).unwrap();
    assert!(matches!(
        repos.rename(&id, &to),
        Err(RepoError::AlreadyExists { .. })
    ));
    assert_eq!(repos.downloads(&id).unwrap(), 0);
}

#[test]
fn lfs_objects_belong_to_repos_and_follow_renames() {
    let (_d, repos, id) = setup();
    let other = RepoId::parse(RepoType::Model, "alice/other").unwrap();
    repos.create(&other, &author()).unwrap();
    let (a, b) = ([1u8; 32], [2u8; 32]);
    repos.add_lfs_objects(&id, &[a, b]).unwrap();
    assert!(repos.has_lfs_object(&id, &a).unwrap());
    assert!(
        !repos.has_lfs_object(&other, &a).unwrap(),
        "objects are per repository"
    );
    let to = RepoId::parse(RepoType::Model, "alice/renamed").unwrap();
    repos.rename(&id, &to).unwrap();
    assert!(repos.has_lfs_object(&to, &b).unwrap());
    assert!(!repos.has_lfs_object(&id, &b).unwrap());
    repos.delete(&to).unwrap();
    repos.create(&to, &author()).unwrap();
    assert!(
        !repos.has_lfs_object(&to, &a).unwrap(),
        "a re-created repo starts empty"
    );
}

#[test]
fn commit_ids_resolve_only_when_a_ref_reaches_them() {
    let (_d, repos, id) = setup();
    let first = commit(&repos, &id, "main", vec![add("a.txt", b"1")]).unwrap();
    let second = commit(&repos, &id, "main", vec![add("a.txt", b"2")]).unwrap();
    repos.create_branch(&id, "dev", None).unwrap();
    let on_dev = commit(&repos, &id, "dev", vec![add("dev.txt", b"d")]).unwrap();
    // Tips and their history resolve, by full id and by prefix, for every reader.
    for c in [&first, &second, &on_dev] {
        assert_eq!(repos.resolve(&id, &c.id).unwrap(), c.id);
        assert_eq!(repos.resolve(&id, &c.id[..10]).unwrap(), c.id);
    }
    assert_eq!(repos.file(&id, &first.id, "a.txt").unwrap().1, b"1");
    // Once no ref reaches a commit, its id names nothing: not to resolve, list, read,
    // copy from or branch from.
    repos.delete_branch(&id, "dev").unwrap();
    let gone = &on_dev.id;
    for rev in [gone.as_str(), &gone[..10]] {
        assert!(
            matches!(
                repos.resolve(&id, rev),
                Err(RepoError::RevisionNotFound { .. })
            ),
            "{rev}"
        );
    }
    assert!(repos.list_tree(&id, gone, "", true).is_err());
    assert!(repos.file(&id, gone, "dev.txt").is_err());
    assert!(repos.history(&id, gone, 10).is_err());
    assert!(repos.create_branch(&id, "again", Some(gone)).is_err());
    assert!(repos.create_tag(&id, "v1", gone).is_err());
    let copy = Operation::Copy {
        src: "dev.txt".into(),
        src_revision: Some(gone.clone()),
        dest: "stolen.txt".into(),
    };
    assert!(commit(&repos, &id, "main", vec![copy]).is_err());
    // The object itself is still there (git gc has not run): only reachability hides it.
    git(&repos, &id, &["cat-file", "-e", gone]);
    // A tag keeps what it points to reachable.
    repos.create_tag(&id, "v1", &first.id).unwrap();
    assert_eq!(repos.resolve(&id, &first.id).unwrap(), first.id);
}

#[test]
fn a_new_ref_may_expose_only_lfs_objects_of_its_repo() {
    let (_d, repos, id) = setup();
    let sha = [0xab; 32];
    let pointer = LfsPointer::new(&"ab".repeat(32), 5).unwrap();
    // Commits written below the gateway's checks (as legacy data or a replica still fetching
    // its content would be).
    commit(
        &repos,
        &id,
        "main",
        vec![Operation::Add {
            path: "w/weights.bin".into(),
            content: FileContent::Lfs(pointer),
        }],
    )
    .unwrap();
    let err = repos.create_branch(&id, "dev", None).unwrap_err();
    assert!(
        matches!(&err, RepoError::BadOperation(m) if m.contains("w/weights.bin") && m.contains(&"ab".repeat(32))),
        "{err}"
    );
    assert!(repos.create_tag(&id, "v1", "main").is_err());
    assert_eq!(repos.refs(&id).unwrap().0.len(), 1);
    repos.add_lfs_objects(&id, &[sha]).unwrap();
    repos.create_branch(&id, "dev", None).unwrap();
    repos.create_tag(&id, "v1", "main").unwrap();
}

/// `file_head` reads a blob only up to INLINE_BLOB_MAX; a larger one is left for a streaming
/// read, with its size from the object's header (loose and packed alike).
#[test]
fn file_head_leaves_large_blobs_unread() {
    let (_dir, repos, id) = setup();
    let small = b"{\"a\": 1}".to_vec();
    let large: Vec<u8> = (0..hub_repo::INLINE_BLOB_MAX + 1)
        .map(|i| (i % 251) as u8)
        .collect();
    let pointer = LfsPointer::new(&"ab".repeat(32), 1 << 40).unwrap();
    commit(
        &repos,
        &id,
        "main",
        vec![
            add("small.json", &small),
            add("large.raw", &large),
            Operation::Add {
                path: "w.safetensors".into(),
                content: FileContent::Lfs(pointer.clone()),
            },
        ],
    )
    .unwrap();
    for packed in [false, true] {
        if packed {
            git(&repos, &id, &["repack", "-a", "-d"]);
        }
        let (entry, blob) = repos.file_head(&id, "main", "small.json").unwrap();
        assert_eq!(
            (entry.size, blob.as_deref()),
            (small.len() as u64, Some(&small[..]))
        );
        let (entry, blob) = repos.file_head(&id, "main", "large.raw").unwrap();
        assert_eq!((entry.size, blob), (large.len() as u64, None));
        assert_eq!(
            entry.oid,
            git(&repos, &id, &["rev-parse", "main:large.raw"]).trim()
        );
        let (entry, blob) = repos.file_head(&id, "main", "w.safetensors").unwrap();
        assert_eq!(entry.lfs.as_ref(), Some(&pointer));
        assert!(blob.is_some());
    }
    assert!(matches!(
        repos.file_head(&id, "main", "missing"),
        Err(RepoError::EntryNotFound { .. })
    ));
}

#[test]
fn entries_at_finds_files_and_folders_and_leaves_out_the_rest() {
    let (_dir, repos, id) = setup();
    commit(
        &repos,
        &id,
        "main",
        vec![
            add("top.txt", b"t"),
            add("a/b/c.txt", b"c"),
            add("a/d.txt", b"d"),
        ],
    )
    .unwrap();
    let paths: Vec<String> = [
        "a/b/c.txt",
        "a",
        "a/b",
        "top.txt",
        "missing",
        "a/missing",
        "top.txt/x",
        "../x",
        "a/d.txt",
    ]
    .iter()
    .map(|p| (*p).to_owned())
    .collect();
    let got: Vec<(String, EntryKind)> = repos
        .entries_at(&id, "main", &paths)
        .unwrap()
        .into_iter()
        .map(|e| (e.path, e.kind))
        .collect();
    assert_eq!(
        got,
        [
            ("a/b/c.txt".to_owned(), EntryKind::File),
            ("a".to_owned(), EntryKind::Directory),
            ("a/b".to_owned(), EntryKind::Directory),
            ("top.txt".to_owned(), EntryKind::File),
            ("a/d.txt".to_owned(), EntryKind::File),
        ]
    );
    // Sizes and blob ids agree with the single-file read.
    let one = repos
        .entries_at(&id, "main", &["a/d.txt".to_owned()])
        .unwrap();
    let (entry, _) = repos.file(&id, "main", "a/d.txt").unwrap();
    assert_eq!((one[0].size, &one[0].oid), (entry.size, &entry.oid));
}

#[test]
fn trending_scores_favour_recent_downloads_and_forget_old_days() {
    let dir = tempfile::tempdir().unwrap();
    let older = RepoId::parse(RepoType::Model, "alice/older").unwrap();
    let recent = RepoId::parse(RepoType::Model, "alice/recent").unwrap();
    let idle = RepoId::parse(RepoType::Model, "alice/idle").unwrap();
    let day = 20_000;
    {
        let repos = Repos::open(dir.path()).unwrap();
        for id in [&older, &recent, &idle] {
            repos.create(id, &author()).unwrap();
        }
        // 10 downloads three days ago, 3 today: all-time, `older` leads; recently, not.
        for _ in 0..10 {
            repos.count_download(&older);
        }
        repos.flush_downloads_on(day - 3).unwrap();
        for _ in 0..3 {
            repos.count_download(&recent);
        }
        repos.flush_downloads_on(day).unwrap();
        assert_eq!(repos.downloads(&older).unwrap(), 10);
        let s = repos
            .trending_scores_on(&[older.clone(), recent.clone(), idle.clone()], day)
            .unwrap();
        assert_eq!(s, vec![10.0 / 8.0, 3.0, 0.0]);
        // Counts not flushed yet count as today's.
        repos.count_download(&idle);
        let s = repos
            .trending_scores_on(std::slice::from_ref(&idle), day)
            .unwrap();
        assert_eq!(s, vec![1.0]);
        repos.flush_downloads_on(day).unwrap();
    }
    // Persisted: a reopened database has the same window.
    let repos = Repos::open(dir.path()).unwrap();
    let ids = [older.clone(), recent.clone(), idle.clone()];
    assert_eq!(
        repos.trending_scores_on(&ids, day).unwrap(),
        vec![1.25, 3.0, 1.0]
    );
    // A rename keeps the score; a delete drops it.
    let renamed = RepoId::parse(RepoType::Model, "alice/renamed").unwrap();
    repos.rename(&recent, &renamed).unwrap();
    assert_eq!(
        repos
            .trending_scores_on(std::slice::from_ref(&renamed), day)
            .unwrap(),
        vec![3.0]
    );
    repos.delete(&idle).unwrap();
    repos.create(&idle, &author()).unwrap();
    assert_eq!(
        repos
            .trending_scores_on(std::slice::from_ref(&idle), day)
            .unwrap(),
        vec![0.0]
    );
    // A week on, the first flush of the day deletes what left the window: `older`'s day is
    // gone even read as of its own day.
    repos.count_download(&renamed);
    repos.flush_downloads_on(day + 7).unwrap();
    assert_eq!(
        repos
            .trending_scores_on(std::slice::from_ref(&older), day - 3)
            .unwrap(),
        vec![0.0]
    );
    assert_eq!(
        repos
            .trending_scores_on(std::slice::from_ref(&renamed), day + 7)
            .unwrap(),
        vec![1.0]
    );
    assert_eq!(repos.downloads(&older).unwrap(), 10, "all-time counts stay");
}
