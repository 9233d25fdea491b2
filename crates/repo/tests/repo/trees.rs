//! Answers read from trees alone: each path's last commit (checked against `git log`), the
//! file count, the files two commits differ in, a folder's file names.

use super::{add, commit, git, setup};
use hub_repo::Operation;

fn delete(path: &str) -> Operation {
    Operation::Delete { path: path.into() }
}

#[test]
fn last_commits_of_files_and_folders_in_many_folders_match_git_log() {
    let (_d, repos, id) = setup();
    let c1 = commit(
        &repos,
        &id,
        "main",
        vec![
            add("a.txt", b"a"),
            add("e.txt", b"e"),
            add("sub/b.txt", b"b"),
            add("sub/deep/c.txt", b"c"),
            add("other/d.txt", b"d"),
        ],
    )
    .unwrap();
    let c2 = commit(&repos, &id, "main", vec![add("sub/b.txt", b"b2")]).unwrap();
    let c3 = commit(&repos, &id, "main", vec![add("other/d.txt", b"d2")]).unwrap();
    commit(&repos, &id, "main", vec![delete("e.txt")]).unwrap();
    // Back with the same content: its last change is the commit that brought it back.
    let c5 = commit(&repos, &id, "main", vec![add("e.txt", b"e")]).unwrap();
    // A file that changes and changes back still last changed when it changed back.
    commit(&repos, &id, "main", vec![add("a.txt", b"a2")]).unwrap();
    let c7 = commit(&repos, &id, "main", vec![add("a.txt", b"a")]).unwrap();
    let paths: Vec<String> = [
        ".gitattributes",
        "a.txt",
        "e.txt",
        "sub",
        "sub/b.txt",
        "sub/deep",
        "sub/deep/c.txt",
        "other",
        "other/d.txt",
        "missing.txt",
        "sub/missing/x.txt",
    ]
    .iter()
    .map(|p| (*p).to_owned())
    .collect();
    let found = repos.last_commits(&id, "main", &paths).unwrap();
    let id_of = |p: &str| found.get(p).map(|c| c.id.clone());
    assert_eq!(id_of("a.txt"), Some(c7.id.clone()));
    assert_eq!(id_of("e.txt"), Some(c5.id.clone()));
    assert_eq!(id_of("sub"), Some(c2.id.clone()));
    assert_eq!(id_of("sub/b.txt"), Some(c2.id.clone()));
    assert_eq!(id_of("sub/deep/c.txt"), Some(c1.id.clone()));
    assert_eq!(id_of("other/d.txt"), Some(c3.id.clone()));
    assert_eq!(id_of("missing.txt"), None);
    assert_eq!(id_of("sub/missing/x.txt"), None);
    assert_eq!(found["sub/b.txt"].title, "update");
    // git's own answer for every path that exists.
    for path in paths.iter().filter(|p| !p.contains("missing")) {
        let want = git(
            &repos,
            &id,
            &["log", "-1", "--format=%H", "main", "--", path],
        );
        assert_eq!(id_of(path).as_deref(), Some(want.trim()), "{path}");
    }
    // From an older commit, the answers are as of that commit.
    let old = repos
        .last_commits(&id, &c3.id, &["e.txt".to_owned(), "a.txt".to_owned()])
        .unwrap();
    assert_eq!(old["e.txt"].id, c1.id);
    assert_eq!(old["a.txt"].id, c1.id);
}

#[test]
fn file_count_changed_files_and_file_names_read_trees_only() {
    let (_d, repos, id) = setup();
    let c1 = commit(
        &repos,
        &id,
        "main",
        vec![
            add("a.txt", b"a"),
            add("sub/b.txt", b"b"),
            add("sub/deep/c.txt", b"c"),
            add("same/x.txt", b"x"),
        ],
    )
    .unwrap();
    // With .gitattributes, made by `create`.
    assert_eq!(repos.file_count(&id, &c1.id).unwrap(), 5);
    assert_eq!(
        repos.file_names(&id, "main", "").unwrap(),
        vec![".gitattributes", "a.txt"]
    );
    assert_eq!(repos.file_names(&id, "main", "sub").unwrap(), vec!["b.txt"]);
    assert!(repos.file_names(&id, "main", "nope").unwrap().is_empty());
    let c2 = commit(
        &repos,
        &id,
        "main",
        vec![
            add("sub/deep/c.txt", b"c2"),
            delete("a.txt"),
            add("new/n.txt", b"n"),
        ],
    )
    .unwrap();
    assert_eq!(repos.file_count(&id, "main").unwrap(), 5);
    let (changed, cut) = repos.changed_files(&id, Some(&c1.id), &c2.id, 100).unwrap();
    assert_eq!(changed, vec!["a.txt", "new/n.txt", "sub/deep/c.txt"]);
    assert!(!cut);
    let (changed, cut) = repos.changed_files(&id, Some(&c1.id), &c2.id, 2).unwrap();
    assert_eq!(changed.len(), 2);
    assert!(cut);
    // Against nothing (a root commit): every file.
    let (all, _) = repos.changed_files(&id, None, &c1.id, 100).unwrap();
    assert_eq!(
        all,
        vec![
            ".gitattributes",
            "a.txt",
            "same/x.txt",
            "sub/b.txt",
            "sub/deep/c.txt"
        ]
    );
    // git agrees.
    let out = git(&repos, &id, &["diff", "--name-only", &c1.id, &c2.id]);
    let mut want: Vec<&str> = out.lines().collect();
    want.sort();
    assert_eq!(want, vec!["a.txt", "new/n.txt", "sub/deep/c.txt"]);
}
