//! Receiving pushes: packs built by the real `git` binary go through the quarantine, the
//! checks and the ref transaction.

use hub_protocol::repo::{RepoId, RepoType};
use hub_repo::{Author, Checked, ReceiveError, RefCommand, Rejection, RepoError, Repos, ZERO_ID};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

struct Fixture {
    _dir: tempfile::TempDir,
    repos: Repos,
    id: RepoId,
    /// A scratch (non-bare) clone where pushes are prepared.
    work: PathBuf,
    /// The server's `main` when the fixture was made.
    base: String,
}

fn git(dir: &Path, args: &[&str], input: Option<&[u8]>) -> Vec<u8> {
    let mut child = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@t")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@t")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    if let Some(input) = input {
        stdin.write_all(input).unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn git_text(dir: &Path, args: &[&str], input: Option<&[u8]>) -> String {
    String::from_utf8(git(dir, args, input))
        .unwrap()
        .trim()
        .to_owned()
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let repos = Repos::open(dir.path().join("repos")).unwrap();
    let id = RepoId::parse(RepoType::Model, "alice/push").unwrap();
    repos
        .create(&id, &Author::new("alice", "alice@hubmesh.test"))
        .unwrap();
    let base = repos.resolve(&id, "main").unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    git(&work, &["init", "-q", "-b", "main"], None);
    let server = repos.git_dir(&id);
    git(
        &work,
        &["fetch", "-q", server.to_str().unwrap(), "main"],
        None,
    );
    git(&work, &["reset", "-q", "--hard", "FETCH_HEAD"], None);
    Fixture {
        _dir: dir,
        repos,
        id,
        work,
        base,
    }
}

impl Fixture {
    /// Commits `files` on top of the work tree's HEAD; returns the commit id.
    fn commit_files(&self, files: &[(&str, &[u8])]) -> String {
        for (path, bytes) in files {
            let p = self.work.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
        git(&self.work, &["add", "-A"], None);
        git(&self.work, &["commit", "-q", "-m", "work"], None);
        git_text(&self.work, &["rev-parse", "HEAD"], None)
    }

    /// A commit whose tree is written from raw entries, bypassing git's own checks.
    fn raw_commit(&self, entries: &[(&str, &[u8], &str)], parent: Option<&str>) -> String {
        let mut body = Vec::new();
        for (mode, name, oid) in entries {
            body.extend_from_slice(mode.as_bytes());
            body.push(b' ');
            body.extend_from_slice(name);
            body.push(0);
            body.extend_from_slice(&hex(oid));
        }
        let tree = git_text(
            &self.work,
            &["hash-object", "-t", "tree", "-w", "--literally", "--stdin"],
            Some(&body),
        );
        let mut args = vec!["commit-tree", tree.as_str(), "-m", "raw"];
        if let Some(p) = parent {
            args.extend(["-p", p]);
        }
        git_text(&self.work, &args, None)
    }

    fn blob(&self, bytes: &[u8]) -> String {
        git_text(&self.work, &["hash-object", "-w", "--stdin"], Some(bytes))
    }

    /// A thin pack of what `tip` has that the server's `main` lacks.
    fn pack(&self, tip: &str) -> Vec<u8> {
        let revs = format!("{tip}\n^{}\n", self.base);
        git(
            &self.work,
            &["pack-objects", "--stdout", "--thin", "--revs", "-q"],
            Some(revs.as_bytes()),
        )
    }

    fn main_update(&self, new: &str) -> Vec<RefCommand> {
        vec![RefCommand {
            old: self.base.clone(),
            new: new.to_owned(),
            name: "refs/heads/main".into(),
        }]
    }

    /// Quarantines `tip`'s pack and checks `commands` (every LFS object present).
    fn check(&self, tip: &str, commands: &[RefCommand]) -> Vec<Result<Checked, Rejection>> {
        let q = self.repos.quarantine(&self.id).unwrap();
        q.index_pack(&mut &self.pack(tip)[..], 1 << 30).unwrap();
        q.check(commands, &mut |_| true).unwrap()
    }

    fn server_has(&self, oid: &str) -> bool {
        Command::new("git")
            .args(["cat-file", "-e", oid])
            .env("GIT_DIR", self.repos.git_dir(&self.id))
            .status()
            .unwrap()
            .success()
    }

    fn no_quarantine_left(&self) -> bool {
        // Every quarantine lives under the root's `.tmp/`; none may outlive its push.
        let tmp = self._dir.path().join("repos").join(".tmp");
        let left: Vec<_> = std::fs::read_dir(tmp).unwrap().collect();
        left.is_empty()
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn fast_forward_push_is_applied_and_fsck_clean() {
    let f = fixture();
    let tip = f.commit_files(&[("a.txt", b"a"), ("dir/b.txt", b"b")]);
    let commands = f.main_update(&tip);
    let q = f.repos.quarantine(&f.id).unwrap();
    q.index_pack(&mut &f.pack(&tip)[..], 1 << 30).unwrap();
    // Nothing is visible before the push is applied; the objects wait in the quarantine.
    assert!(!f.server_has(&tip));
    assert!(!f.no_quarantine_left());
    let checks = q.check(&commands, &mut |_| true).unwrap();
    assert_eq!(checks, vec![Ok(Checked { fast_forward: true })]);
    f.repos.apply_push(q, &commands).unwrap().unwrap();
    assert_eq!(f.repos.resolve(&f.id, "main").unwrap(), tip);
    assert!(f.no_quarantine_left());
    git(&f.repos.git_dir(&f.id), &["fsck", "--strict"], None);
    let files: Vec<String> = f
        .repos
        .list_tree(&f.id, &tip, "", true)
        .unwrap()
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert!(files.contains(&"dir/b.txt".to_owned()), "{files:?}");
}

#[test]
fn bad_trees_are_rejected_and_leave_nothing() {
    let f = fixture();
    let blob = f.blob(b"x");
    let inner = {
        let mut body = b"100644 x\0".to_vec();
        body.extend(hex(&blob));
        git_text(
            &f.work,
            &["hash-object", "-t", "tree", "-w", "--literally", "--stdin"],
            Some(&body),
        )
    };
    type Entry<'a> = (&'a str, &'a [u8], &'a str);
    let cases: Vec<(Vec<Entry>, &str)> = vec![
        (vec![("40000", b"..", &inner)], "invalid path"),
        (vec![("40000", b".git", &inner)], "invalid path"),
        (vec![("40000", b".GiT", &inner)], "invalid path"),
        (vec![("40000", b"GIT~1", &inner)], "invalid path"),
        (vec![("100644", b"a/b", &blob)], "invalid path"),
        (vec![("100644", b"a\xff", &blob)], "invalid path"),
        (
            vec![("100644", "bill\u{202E}txt.exe".as_bytes(), &blob)],
            "bidirectional",
        ),
        (
            vec![("40000", "d\u{2067}".as_bytes(), &inner)],
            "bidirectional",
        ),
        (
            vec![("100644", b"a", &blob), ("100644", b"a", &blob)],
            "duplicate",
        ),
        (vec![("160000", b"sub", &blob)], "submodule"),
        (vec![("100664", b"a", &blob)], "bad file mode"),
    ];
    for (entries, expected) in cases {
        let tip = f.raw_commit(&entries, Some(&f.base));
        let commands = f.main_update(&tip);
        let q = f.repos.quarantine(&f.id).unwrap();
        q.index_pack(&mut &f.pack(&tip)[..], 1 << 30).unwrap();
        let checks = q.check(&commands, &mut |_| true).unwrap();
        let err = checks[0].clone().unwrap_err().to_string();
        assert!(err.contains(expected), "{entries:?}: {err}");
        drop(q);
        assert!(!f.server_has(&tip));
        assert!(f.no_quarantine_left());
        assert_eq!(f.repos.resolve(&f.id, "main").unwrap(), f.base);
    }
}

#[test]
fn lfs_pointers_need_their_object_in_the_store() {
    let f = fixture();
    let oid = "4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393";
    let pointer = format!("version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize 5\n");
    let tip = f.commit_files(&[("w.bin", pointer.as_bytes())]);
    let commands = f.main_update(&tip);
    let q = f.repos.quarantine(&f.id).unwrap();
    q.index_pack(&mut &f.pack(&tip)[..], 1 << 30).unwrap();
    let mut asked = Vec::new();
    let checks = q
        .check(&commands, &mut |sha| {
            asked.push(sha.to_owned());
            false
        })
        .unwrap();
    assert_eq!(asked, vec![oid.to_owned()]);
    assert_eq!(
        checks[0],
        Err(Rejection::MissingLfs {
            oid: oid.into(),
            path: "w.bin".into()
        })
    );
    let checks = q.check(&commands, &mut |_| true).unwrap();
    assert_eq!(checks[0], Ok(Checked { fast_forward: true }));
}

#[test]
fn non_fast_forward_and_tags_are_flagged() {
    let f = fixture();
    let orphan = f.raw_commit(&[("100644", b"a", &f.blob(b"a"))], None);
    let checks = f.check(&orphan, &f.main_update(&orphan));
    assert_eq!(
        checks[0],
        Ok(Checked {
            fast_forward: false
        })
    );
    // A new branch or tag is no force push.
    let create = vec![
        RefCommand {
            old: ZERO_ID.into(),
            new: orphan.clone(),
            name: "refs/heads/other".into(),
        },
        RefCommand {
            old: ZERO_ID.into(),
            new: orphan.clone(),
            name: "refs/tags/v1".into(),
        },
    ];
    let checks = f.check(&orphan, &create);
    assert!(
        checks
            .iter()
            .all(|c| *c == Ok(Checked { fast_forward: true }))
    );
}

#[test]
fn ref_rules() {
    let f = fixture();
    let tip = f.commit_files(&[("a.txt", b"a")]);
    let tree = git_text(&f.work, &["rev-parse", "HEAD^{tree}"], None);
    let cmd = |old: &str, new: &str, name: &str| RefCommand {
        old: old.into(),
        new: new.into(),
        name: name.into(),
    };
    let commands = vec![
        cmd(&f.base, ZERO_ID, "refs/heads/main"),
        cmd(ZERO_ID, &tip, "refs/pr/1"),
        cmd(ZERO_ID, &tip, "refs/heads/bad..name"),
        cmd(&tip, &tip, "refs/heads/main"),
        cmd(ZERO_ID, &tree, "refs/tags/tree"),
        cmd(ZERO_ID, &f.blob(b"not in the pack"), "refs/tags/blob"),
        cmd(ZERO_ID, "zz", "refs/heads/x"),
    ];
    let checks = f.check(&tip, &commands);
    assert_eq!(checks[0], Err(Rejection::DeleteMain));
    assert_eq!(checks[1], Err(Rejection::RefNamespace));
    assert_eq!(checks[2], Err(Rejection::BadRefName));
    assert_eq!(checks[3], Err(Rejection::Stale));
    assert!(matches!(checks[4], Err(Rejection::NotACommit { .. })));
    assert!(matches!(checks[5], Err(Rejection::MissingObject { .. })));
    assert_eq!(checks[6], Err(Rejection::BadObjectId));
}

#[test]
fn apply_is_compare_and_swap_and_all_or_nothing() {
    let f = fixture();
    let tip = f.commit_files(&[("a.txt", b"a")]);
    let mut commands = f.main_update(&tip);
    commands.push(RefCommand {
        old: ZERO_ID.into(),
        new: tip.clone(),
        name: "refs/heads/feature".into(),
    });
    let q = f.repos.quarantine(&f.id).unwrap();
    q.index_pack(&mut &f.pack(&tip)[..], 1 << 30).unwrap();
    assert!(
        q.check(&commands, &mut |_| true)
            .unwrap()
            .iter()
            .all(Result::is_ok)
    );
    // Someone creates `feature` between the checks and the apply.
    f.repos
        .create_branch(&f.id, "feature", Some("main"))
        .unwrap();
    let rejected = f.repos.apply_push(q, &commands).unwrap().unwrap_err();
    assert_eq!(rejected[0], Some(Rejection::Atomic));
    assert_eq!(rejected[1], Some(Rejection::Stale));
    assert_eq!(f.repos.resolve(&f.id, "main").unwrap(), f.base);
    assert!(!f.server_has(&tip));
    assert!(f.no_quarantine_left());
}

#[test]
fn deletes_and_pack_limits() {
    let f = fixture();
    f.repos.create_branch(&f.id, "old", Some("main")).unwrap();
    let delete = vec![RefCommand {
        old: f.base.clone(),
        new: ZERO_ID.into(),
        name: "refs/heads/old".into(),
    }];
    let q = f.repos.quarantine(&f.id).unwrap();
    assert_eq!(
        q.check(&delete, &mut |_| true).unwrap(),
        vec![Ok(Checked { fast_forward: true })]
    );
    f.repos.apply_push(q, &delete).unwrap().unwrap();
    assert!(f.repos.resolve(&f.id, "old").is_err());

    let tip = f.commit_files(&[("big.txt", &[7u8; 4096])]);
    let pack = f.pack(&tip);
    let q = f.repos.quarantine(&f.id).unwrap();
    let err = q.index_pack(&mut &pack[..], 100).unwrap_err();
    assert!(
        matches!(err, ReceiveError::TooLarge { limit: 100 }),
        "{err}"
    );
    drop(q);
    let q = f.repos.quarantine(&f.id).unwrap();
    let err = q
        .index_pack(&mut &b"PACK garbage"[..], 1 << 20)
        .unwrap_err();
    assert!(matches!(err, ReceiveError::IndexPack { .. }), "{err}");
    drop(q);
    assert!(f.no_quarantine_left());
}

/// An LFS pointer to `sha`, as a blob in the work repository.
fn pointer_blob(f: &Fixture, sha: &str) -> String {
    f.blob(
        format!("version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize 5\n")
            .as_bytes(),
    )
}

/// Another repository's private LFS object: this one may not point at it.
const FOREIGN: &str = "4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393";

#[test]
fn unreferenced_commits_in_a_pack_are_checked_too() {
    // Issue 14, item 1: a harmless ref update plus a commit no ref reaches, whose tree points
    // at another repository's private LFS object. Before every object was checked, the push
    // was accepted and the commit resolved by its id.
    let f = fixture();
    let evil = f.raw_commit(
        &[("100644", b"weights.bin", &pointer_blob(&f, FOREIGN))],
        None,
    );
    let tip = f.commit_files(&[("a.txt", b"harmless")]);
    let revs = format!("{tip}\n{evil}\n^{}\n", f.base);
    let pack = git(
        &f.work,
        &["pack-objects", "--stdout", "--thin", "--revs", "-q"],
        Some(revs.as_bytes()),
    );
    let commands = f.main_update(&tip);
    let q = f.repos.quarantine(&f.id).unwrap();
    q.index_pack(&mut &pack[..], 1 << 30).unwrap();
    let checks = q.check(&commands, &mut |sha| sha != FOREIGN).unwrap();
    if checks.iter().all(Result::is_ok) {
        f.repos.apply_push(q, &commands).unwrap().unwrap();
    } else {
        drop(q);
    }
    assert!(
        matches!(&checks[0], Err(Rejection::MissingLfs { oid, .. }) if oid == FOREIGN),
        "{checks:?}"
    );
    assert!(!f.server_has(&evil));
    assert!(f.no_quarantine_left());
    assert_eq!(f.repos.resolve(&f.id, "main").unwrap(), f.base);

    // An unreferenced commit with an unsafe path is refused the same way, and so is a loose
    // pointer blob that no commit holds.
    let bad = f.raw_commit(&[("100644", b".git", &f.blob(b"x"))], None);
    let lone = pointer_blob(&f, FOREIGN);
    for (extra, expected) in [(&bad, "invalid path"), (&lone, "missing LFS")] {
        let revs = if *extra == bad {
            format!("{tip}\n{bad}\n^{}\n", f.base)
        } else {
            format!("{tip}\n^{}\n", f.base)
        };
        let mut objects = git(
            &f.work,
            &["rev-list", "--objects", "--stdin"],
            Some(revs.as_bytes()),
        );
        objects.extend_from_slice(format!("{lone}\n").as_bytes());
        let pack = git(&f.work, &["pack-objects", "--stdout", "-q"], Some(&objects));
        let q = f.repos.quarantine(&f.id).unwrap();
        q.index_pack(&mut &pack[..], 1 << 30).unwrap();
        let checks = q.check(&commands, &mut |sha| sha != FOREIGN).unwrap();
        let err = checks[0].clone().unwrap_err().to_string();
        assert!(err.contains(expected), "{extra}: {err}");
    }
}

#[test]
fn a_stored_commit_no_ref_reaches_is_checked_again_when_a_ref_moves_to_it() {
    // A commit already in the object store (left by an older version that let unreferenced
    // objects in) is neither resolvable by id nor branchable, and a push that makes it
    // reachable checks it as if it were new, blobs included.
    let f = fixture();
    let evil = f.raw_commit(
        &[("100644", b"weights.bin", &pointer_blob(&f, FOREIGN))],
        None,
    );
    let server = f.repos.git_dir(&f.id);
    let pack = git(
        &f.work,
        &["pack-objects", "--stdout", "--revs", "-q"],
        Some(format!("{evil}\n").as_bytes()),
    );
    git(
        &server,
        &["index-pack", "--stdin", "--fix-thin"],
        Some(&pack),
    );
    assert!(f.server_has(&evil));
    assert!(matches!(
        f.repos.resolve(&f.id, &evil),
        Err(RepoError::RevisionNotFound { .. })
    ));
    assert!(f.repos.file(&f.id, &evil, "weights.bin").is_err());
    assert!(matches!(
        f.repos.create_branch(&f.id, "leak", Some(&evil)),
        Err(RepoError::RevisionNotFound { .. })
    ));
    // A merge of main and the stored commit: a fast-forward that would expose it.
    let tree = git_text(
        &f.work,
        &["rev-parse", &format!("{}^{{tree}}", f.base)],
        None,
    );
    let merge = git_text(
        &f.work,
        &[
            "commit-tree",
            &tree,
            "-p",
            &f.base,
            "-p",
            &evil,
            "-m",
            "merge",
        ],
        None,
    );
    let commands = f.main_update(&merge);
    let checks = f.check(&merge, &commands);
    let q = f.repos.quarantine(&f.id).unwrap();
    q.index_pack(&mut &f.pack(&merge)[..], 1 << 30).unwrap();
    let checks_owned = q.check(&commands, &mut |sha| sha != FOREIGN).unwrap();
    assert_eq!(checks[0], Ok(Checked { fast_forward: true }));
    assert!(
        matches!(&checks_owned[0], Err(Rejection::MissingLfs { oid, .. }) if oid == FOREIGN),
        "{checks_owned:?}"
    );
}
