//! Receiving a `git push`: the pack goes into a quarantine, is checked, and only then joins
//! the repository and moves refs.
//!
//! The flow, driven by the gateway's `git-receive-pack` handler:
//!
//! 1. [`Repos::quarantine`] makes a private object directory (under the root's `.tmp/`)
//!    whose `info/alternates` names the repository's objects, so thin packs resolve against
//!    what the repository has while nothing new is visible to readers.
//! 2. [`Quarantine::index_pack`] streams the pack into `git index-pack --stdin --fix-thin`
//!    (the one step delegated to the `git` binary; see `docs/adr/0003-git-smart-http.md`),
//!    bounded by a byte limit.
//! 3. [`Quarantine::check`] validates every ref command and every new object with gix: ref
//!    names, connectivity, tree entries (paths, modes, duplicates, gitlinks), LFS pointers
//!    whose content the store must have, and whether each branch update is a fast-forward.
//! 4. [`Repos::apply_push`] takes the per-repo lock, re-checks each ref's old value, moves
//!    the pack in and updates all refs in one gix transaction with compare-and-swap.
//!
//! Dropping a [`Quarantine`] removes it, so a rejected or abandoned push leaves the
//! repository's refs and visible objects exactly as they were.
//!
//! Every object that enters is checked, referenced or not. A pack may carry objects no
//! updated ref reaches (git never sends such a pack; a crafted one can), and once moved in
//! they are in the object store for good: a later ref update to them finds them already
//! present, and a commit id names them. Checking only what the updated refs reach would let
//! an unchecked commit in, say one whose tree points at another repository's private LFS
//! object by its hash. So after the per-ref checks, [`Quarantine::check`] sweeps the
//! quarantine's own packs: every new commit not yet checked is checked with its history (the
//! same path, mode and LFS checks), and every new blob that is an LFS pointer must name an
//! object of this repository. Refusing such packs outright was the alternative, but telling
//! "unreferenced" apart needs the same walk, and checking them keeps odd but harmless packs
//! working. The invariant this buys: an object the repository has passed the checks, so the
//! walk may stop at known objects. Two more layers do not rely on it (for objects stored
//! before this rule): a commit the repository has but no ref reaches is checked again,
//! blobs included, when a push points a ref at it or at a descendant; and a commit id
//! resolves only when a ref reaches it (`crate::reach`).

use crate::lfs::{LfsPointer, MAX_POINTER_SIZE};
use crate::reach::Reach;
use crate::repos::{RepoError, Repos};
use gix::ObjectId;
use gix::refs::transaction::{Change, LogChange, PreviousValue, RefEdit, RefLog};
use hub_protocol::repo::{RepoId, validate_repo_path};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::PoisonError;
use std::time::{SystemTime, UNIX_EPOCH};

/// The all-zero object id git uses for "no object" (create / delete).
pub const ZERO_ID: &str = "0000000000000000000000000000000000000000";

/// Most commits one push may introduce (a bound on the checks' work).
pub const MAX_NEW_COMMITS: usize = 100_000;

/// Most commits the fast-forward check walks before giving up (and calling it a force push).
const MAX_ANCESTRY_WALK: usize = 1_000_000;

/// Distinguishes quarantines made in the same nanosecond.
static NEXT_QUARANTINE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How deep a chain of annotated tags may be.
const MAX_TAG_DEPTH: usize = 8;

/// One ref update a client asked for: `old new name` in the receive-pack request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefCommand {
    /// 40-hex old value, [`ZERO_ID`] when the client creates the ref.
    pub old: String,
    /// 40-hex new value, [`ZERO_ID`] when the client deletes the ref.
    pub new: String,
    /// Full ref name, `refs/heads/main`.
    pub name: String,
}

impl RefCommand {
    pub fn is_delete(&self) -> bool {
        self.new == ZERO_ID
    }

    pub fn is_create(&self) -> bool {
        self.old == ZERO_ID
    }
}

/// Errors that end a push as a whole (the client sees `unpack <error>`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiveError {
    #[error("pack exceeds the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("index-pack failed: {message}")]
    IndexPack { message: String },
    #[error("run git index-pack")]
    Spawn(#[source] std::io::Error),
    #[error("read pack from client")]
    Read(#[source] std::io::Error),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

/// Why one ref update is refused; the `Display` text is the reason in `ng <ref> <reason>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    #[error("invalid object id")]
    BadObjectId,
    #[error("invalid ref name")]
    BadRefName,
    #[error("only refs/heads/* and refs/tags/* may be pushed")]
    RefNamespace,
    #[error("deleting the default branch main is not allowed")]
    DeleteMain,
    /// Deleting a branch or tag removes history: it needs the rights a force push needs.
    #[error("deleting a ref needs the owner, a site admin, or the write or admin role")]
    DeleteForbidden,
    #[error("stale info (the ref moved; fetch first)")]
    Stale,
    #[error("non-fast-forward")]
    NonFastForward,
    #[error("object {id} missing")]
    MissingObject { id: String },
    #[error("malformed object {id}")]
    Malformed { id: String },
    #[error("{id} is not a commit")]
    NotACommit { id: String },
    #[error("too many new commits (limit {limit})")]
    TooManyCommits { limit: usize },
    #[error("invalid path {path:?} in commit {commit}: {reason}")]
    BadPath {
        path: String,
        commit: String,
        reason: String,
    },
    #[error("bad file mode {mode} for {path:?} in commit {commit}")]
    BadMode {
        mode: String,
        path: String,
        commit: String,
    },
    #[error("submodule (gitlink) {path:?} in commit {commit} is not supported")]
    Gitlink { path: String, commit: String },
    #[error("duplicate entry {path:?} in commit {commit}")]
    Duplicate { path: String, commit: String },
    #[error("missing LFS object {oid} for {path:?} (upload it with git lfs first)")]
    MissingLfs { oid: String, path: String },
    /// A file over [`MAX_GIT_FILE`] pushed outside LFS: the Hub's refusal, with its hint.
    #[error(
        "Your push was rejected because it contains files larger than 10 MiB. Please use https://git-lfs.github.com/ to store large files. Offending file: {path} ({size} bytes)"
    )]
    TooLarge { path: String, size: u64 },
    #[error("push refused: another ref in it was rejected")]
    Atomic,
}

/// The largest file a user's push may carry in git itself (10 MiB, the Hub's limit); larger
/// files go through LFS. Replicas of signed updates (`hub_refs`) are not held to it.
pub const MAX_GIT_FILE: u64 = 10 * 1024 * 1024;

/// The outcome of checking one accepted command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// False for a non-fast-forward branch update or a moved tag: needs force rights.
    pub fast_forward: bool,
}

/// A private object directory holding a push's objects until it is accepted.
#[derive(Debug)]
pub struct Quarantine {
    /// A minimal bare git dir (HEAD, refs/, objects/ with alternates to the repository).
    dir: PathBuf,
    git_dir: PathBuf,
    repo: RepoId,
    /// Whether refs the hub itself writes (`refs/hub/*`, new `refs/pr/*`) may move:
    /// for replicas of a signed update, never for a user's push.
    hub_refs: bool,
}

/// The ref namespaces that replicate: branches, tags, pull-request heads, and the hub's own
/// records (`refs/hub/discussions`: every discussion of the repo, [`crate::Repos::append_record`]).
pub const REPLICATED_REF_PREFIXES: [&str; 4] =
    ["refs/heads/", "refs/tags/", "refs/pr/", "refs/hub/"];

impl Drop for Quarantine {
    fn drop(&mut self) {
        if self.dir.exists()
            && let Err(e) = std::fs::remove_dir_all(&self.dir)
        {
            tracing::warn!(dir = %self.dir.display(), error = %e, "remove push quarantine");
        }
    }
}

fn io(context: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RepoError {
    let path = path.to_owned();
    move |source| RepoError::Io {
        context,
        path,
        source,
    }
}

fn git_err<E: std::error::Error + Send + Sync + 'static>(
    context: &'static str,
) -> impl FnOnce(E) -> RepoError {
    move |e| RepoError::Git {
        context,
        source: Box::new(e),
    }
}

fn open(dir: &Path) -> Result<gix::Repository, RepoError> {
    gix::open_opts(dir, gix::open::Options::isolated()).map_err(git_err("open repository"))
}

fn parse_id(hex: &str) -> Result<ObjectId, Rejection> {
    if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Rejection::BadObjectId);
    }
    ObjectId::from_hex(hex.as_bytes()).map_err(|_| Rejection::BadObjectId)
}

impl Repos {
    /// Creates an empty quarantine for a push into `id`.
    pub fn quarantine(&self, id: &RepoId) -> Result<Quarantine, RepoError> {
        let git_dir = self.git_dir(id);
        if !git_dir.join("HEAD").is_file() {
            return Err(RepoError::NotFound { repo: id.clone() });
        }
        self.quarantine_at(id, git_dir)
    }

    /// A quarantine whose objects and refs go into the repository at `git_dir` (the
    /// repo's own directory, or one being built out of sight under `.tmp/`); writers of `id`
    /// are still serialised by `id`'s lock.
    pub(crate) fn quarantine_at(
        &self,
        id: &RepoId,
        git_dir: PathBuf,
    ) -> Result<Quarantine, RepoError> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        // Under the root's `.tmp/`, which `Repos::open` clears, so a crash mid-push leaves
        // nothing behind; same filesystem as the repository, so accepting is a rename.
        let dir = self.root().join(".tmp").join(format!(
            "push-{}-{nanos:x}-{:x}",
            std::process::id(),
            NEXT_QUARANTINE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let q = Quarantine {
            dir: dir.clone(),
            git_dir: git_dir.clone(),
            repo: id.clone(),
            hub_refs: false,
        };
        let info = dir.join("objects").join("info");
        std::fs::create_dir_all(&info).map_err(io("create", &info))?;
        std::fs::create_dir_all(dir.join("objects").join("pack")).map_err(io("create", &dir))?;
        std::fs::create_dir_all(dir.join("refs")).map_err(io("create", &dir))?;
        let objects =
            std::fs::canonicalize(git_dir.join("objects")).map_err(io("resolve", &git_dir))?;
        let alternates = info.join("alternates");
        std::fs::write(&alternates, format!("{}\n", objects.display()))
            .map_err(io("write", &alternates))?;
        std::fs::write(dir.join("HEAD"), "ref: refs/heads/main\n").map_err(io("write", &dir))?;
        std::fs::write(
            dir.join("config"),
            "[core]\n\trepositoryformatversion = 0\n\tbare = true\n",
        )
        .map_err(io("write", &dir))?;
        Ok(q)
    }

    /// Accepts a checked push: under the per-repo lock, verifies every ref still has the
    /// value the client saw, moves the quarantined objects in, and updates all refs in one
    /// transaction (compare-and-swap on each). Either every ref moves or none does.
    pub fn apply_push(
        &self,
        quarantine: Quarantine,
        commands: &[RefCommand],
    ) -> Result<Result<(), Vec<Option<Rejection>>>, ReceiveError> {
        let lock = self.lock(&quarantine.repo);
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        let repo = open(&quarantine.git_dir)?;
        let mut edits = Vec::with_capacity(commands.len());
        let mut rejections = vec![None; commands.len()];
        for (i, c) in commands.iter().enumerate() {
            let current = current_value(&repo, &c.name)?;
            let old = if c.is_create() {
                None
            } else {
                parse_id(&c.old).ok()
            };
            if current != old {
                rejections[i] = Some(Rejection::Stale);
                continue;
            }
            let name =
                gix::refs::FullName::try_from(c.name.as_str()).map_err(git_err("ref name"))?;
            let expected = match old {
                Some(old) => PreviousValue::MustExistAndMatch(gix::refs::Target::Object(old)),
                None => PreviousValue::MustNotExist,
            };
            let change = if c.is_delete() {
                Change::Delete {
                    expected,
                    log: RefLog::AndReference,
                }
            } else {
                let new = parse_id(&c.new).map_err(|_| RepoError::BadOperation(c.new.clone()))?;
                Change::Update {
                    log: LogChange {
                        mode: RefLog::AndReference,
                        force_create_reflog: false,
                        message: "push".into(),
                    },
                    expected,
                    new: gix::refs::Target::Object(new),
                }
            };
            edits.push(RefEdit {
                change,
                name,
                deref: false,
            });
        }
        if rejections.iter().any(Option::is_some) {
            for r in &mut rejections {
                r.get_or_insert(Rejection::Atomic);
            }
            return Ok(Err(rejections));
        }
        quarantine.migrate()?;
        repo.edit_references(edits)
            .map_err(git_err("update references"))?;
        Ok(Ok(()))
    }

    /// Refs as receive-pack advertises them: every ref under `refs/` with its target.
    pub fn advertised_refs(&self, id: &RepoId) -> Result<Vec<(String, String)>, RepoError> {
        let repo = self.open_repo(id)?;
        let platform = repo.references().map_err(git_err("list references"))?;
        let mut out = Vec::new();
        for r in platform.all().map_err(git_err("list references"))? {
            let r = r.map_err(|e| RepoError::Git {
                context: "list references",
                source: e.into(),
            })?;
            if let Some(target) = r.target().try_id() {
                out.push((r.name().as_bstr().to_string(), target.to_string()));
            }
        }
        out.sort();
        Ok(out)
    }
}

fn current_value(repo: &gix::Repository, name: &str) -> Result<Option<ObjectId>, RepoError> {
    Ok(repo
        .try_find_reference(name)
        .map_err(git_err("read reference"))?
        .and_then(|r| r.target().try_id().map(ToOwned::to_owned)))
}

impl Quarantine {
    /// Lets the hub's own refs move (replicas of a signed update; see [`Quarantine::check`]).
    pub(crate) fn accept_hub_refs(&mut self) {
        self.hub_refs = true;
    }

    /// Where the push's objects land until it is accepted.
    pub fn objects_dir(&self) -> PathBuf {
        self.dir.join("objects")
    }

    /// Streams a pack into `git index-pack --stdin --fix-thin` inside the quarantine; at most
    /// `limit` bytes are read from `pack` (a longer pack is an error).
    pub fn index_pack(&self, pack: &mut dyn Read, limit: u64) -> Result<u64, ReceiveError> {
        let mut child = Command::new("git")
            .arg("index-pack")
            .arg("--stdin")
            .arg("--fix-thin")
            .arg(format!("--max-input-size={limit}"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("GIT_DIR", &self.git_dir)
            .env("GIT_OBJECT_DIRECTORY", self.objects_dir())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("HOME", &self.dir)
            .current_dir(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(ReceiveError::Spawn)?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        // Drain stderr on a thread so a chatty index-pack cannot block on a full pipe.
        let err_reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut buf);
            let _ = std::io::copy(&mut stderr, &mut std::io::sink());
            buf
        });
        let mut total = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        let mut outcome = Ok(());
        loop {
            let n = match pack.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    outcome = Err(ReceiveError::Read(e));
                    break;
                }
            };
            total += n as u64;
            if total > limit {
                outcome = Err(ReceiveError::TooLarge { limit });
                break;
            }
            if stdin.write_all(&buf[..n]).is_err() {
                // index-pack stopped reading: its exit status and stderr say why.
                break;
            }
        }
        drop(stdin);
        if outcome.is_err() {
            let _ = child.kill();
        }
        let status = child.wait().map_err(ReceiveError::Spawn)?;
        let stderr = err_reader.join().unwrap_or_default();
        outcome?;
        if !status.success() {
            let message = String::from_utf8_lossy(&stderr)
                .lines()
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or("failed")
                .trim()
                .trim_start_matches("fatal: ")
                .chars()
                .take(300)
                .collect();
            return Err(ReceiveError::IndexPack { message });
        }
        Ok(total)
    }

    /// Checks each command against the repository and the quarantined objects. `has_lfs`
    /// answers whether the store holds the LFS object with this SHA-256 (lowercase hex).
    /// The result has one entry per command, in order.
    pub fn check(
        &self,
        commands: &[RefCommand],
        has_lfs: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Vec<Result<Checked, Rejection>>, ReceiveError> {
        let real = open(&self.git_dir)?;
        let q = open(&self.dir)?;
        let mut walk = Walk {
            real: &real,
            q: &q,
            has_lfs,
            reach: None,
            commits: HashSet::new(),
            trees: HashSet::new(),
            blobs: HashSet::new(),
            hub_refs: self.hub_refs,
        };
        let mut out = Vec::with_capacity(commands.len());
        for c in commands {
            out.push(walk.command(c));
        }
        if out.iter().all(Result::is_ok)
            && let Err(rejection) = walk.sweep(&self.new_objects(&real, &q)?)
        {
            out = vec![Err(rejection); commands.len()];
        }
        Ok(out)
    }

    /// The objects in the quarantine's packs that the repository does not have (commits
    /// first, then blobs; trees and tags are reached through them).
    fn new_objects(
        &self,
        real: &gix::Repository,
        q: &gix::Repository,
    ) -> Result<Vec<(ObjectId, bool)>, RepoError> {
        let dir = self.objects_dir().join("pack");
        let mut commits = Vec::new();
        let mut blobs = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io("read", &dir))? {
            let path = entry.map_err(io("read", &dir))?.path();
            if path.extension().is_none_or(|e| e != "idx") {
                continue;
            }
            let index = gix::odb::pack::index::File::at(&path, real.object_hash())
                .map_err(git_err("read pack index"))?;
            for e in index.iter() {
                if real.has_object(e.oid) {
                    continue;
                }
                match q.try_find_header(e.oid).ok().flatten().map(|h| h.kind()) {
                    Some(gix::object::Kind::Commit) => commits.push((e.oid, true)),
                    Some(gix::object::Kind::Blob) => blobs.push((e.oid, false)),
                    _ => {}
                }
            }
        }
        commits.append(&mut blobs);
        Ok(commits)
    }

    /// Moves the quarantined packs into the repository: `.pack` (and `.rev`) before `.idx`,
    /// since a pack becomes visible when its index appears.
    fn migrate(&self) -> Result<(), RepoError> {
        let from = self.objects_dir().join("pack");
        let to = self.git_dir.join("objects").join("pack");
        std::fs::create_dir_all(&to).map_err(io("create", &to))?;
        let mut names: Vec<String> = std::fs::read_dir(&from)
            .map_err(io("read", &from))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with("pack-"))
            .collect();
        let rank = |n: &str| match n.rsplit('.').next() {
            Some("pack") => 0,
            Some("idx") => 2,
            _ => 1,
        };
        names.sort_by_key(|n| rank(n));
        for name in names {
            let (src, dst) = (from.join(&name), to.join(&name));
            std::fs::rename(&src, &dst).map_err(io("move pack", &src))?;
        }
        Ok(())
    }
}

struct Walk<'a> {
    /// [`Quarantine::hub_refs`].
    hub_refs: bool,
    real: &'a gix::Repository,
    q: &'a gix::Repository,
    has_lfs: &'a mut dyn FnMut(&str) -> bool,
    /// What the repository's refs reach, walked when first needed.
    reach: Option<Reach<'a>>,
    /// Commits already checked (in this push).
    commits: HashSet<ObjectId>,
    /// (tree, path prefix length, strict) already checked: a tree's verdict depends only on
    /// its contents, on how long the path leading to it is, and on whether known blobs are
    /// checked too.
    trees: HashSet<(ObjectId, usize, bool)>,
    blobs: HashSet<ObjectId>,
}

impl Walk<'_> {
    fn command(&mut self, c: &RefCommand) -> Result<Checked, Rejection> {
        let old = if c.is_create() {
            None
        } else {
            Some(parse_id(&c.old)?)
        };
        let new = if c.is_delete() {
            None
        } else {
            Some(parse_id(&c.new)?)
        };
        if c.name.len() > 255 || gix::refs::FullName::try_from(c.name.as_str()).is_err() {
            return Err(Rejection::BadRefName);
        }
        // Pull-request heads are branches; a push may move an existing one (the hub opens
        // them), and only replicas write the hub's own refs.
        let is_pr = c.name.starts_with("refs/pr/");
        let is_branch = c.name.starts_with("refs/heads/") || is_pr;
        let allowed = match () {
            _ if c.name.starts_with("refs/heads/") || c.name.starts_with("refs/tags/") => true,
            _ if self.hub_refs => REPLICATED_REF_PREFIXES
                .iter()
                .any(|p| c.name.starts_with(p)),
            _ => is_pr && !c.is_create() && !c.is_delete(),
        };
        if !allowed {
            return Err(Rejection::RefNamespace);
        }
        if new.is_none() && c.name == "refs/heads/main" {
            return Err(Rejection::DeleteMain);
        }
        let current = current_value(self.real, &c.name).map_err(|_| Rejection::Stale)?;
        if current != old {
            return Err(Rejection::Stale);
        }
        let Some(new) = new else {
            return Ok(Checked { fast_forward: true });
        };
        let commit = self.peel_to_commit(new)?;
        self.check_history(commit)?;
        let fast_forward = match old {
            None => true,
            Some(_) if !is_branch => false,
            Some(old) => self.is_ancestor(old, commit)?,
        };
        Ok(Checked { fast_forward })
    }

    fn read(&self, id: ObjectId) -> Result<gix::Object<'_>, Rejection> {
        self.q
            .try_find_object(id)
            .map_err(|_| Rejection::Malformed { id: id.to_string() })?
            .ok_or_else(|| Rejection::MissingObject { id: id.to_string() })
    }

    fn peel_to_commit(&self, mut id: ObjectId) -> Result<ObjectId, Rejection> {
        for _ in 0..MAX_TAG_DEPTH {
            let obj = self.read(id)?;
            match obj.kind {
                gix::object::Kind::Commit => return Ok(id),
                gix::object::Kind::Tag => {
                    id = gix::objs::TagRefIter::from_bytes(&obj.data, self.q.object_hash())
                        .target_id()
                        .map_err(|_| Rejection::Malformed { id: id.to_string() })?;
                }
                _ => return Err(Rejection::NotACommit { id: id.to_string() }),
            }
        }
        Err(Rejection::NotACommit { id: id.to_string() })
    }

    /// Checks the objects of the pack no ref update reached (module docs).
    fn sweep(&mut self, objects: &[(ObjectId, bool)]) -> Result<(), Rejection> {
        for &(id, is_commit) in objects {
            if is_commit {
                self.check_history(id)?;
            } else {
                self.check_blob(id, "(a file of no new commit)", false)?;
            }
        }
        Ok(())
    }

    /// Whether the repository's refs reach `id`, a commit it has.
    fn reached(&mut self, id: ObjectId) -> bool {
        if self.reach.is_none() {
            self.reach = Reach::new(self.real).ok();
        }
        self.reach.as_mut().is_some_and(|r| r.reaches(id))
    }

    /// Checks every commit reachable from `tip` that the repository does not have yet, or
    /// has but no ref reaches (then strictly: its known blobs too).
    fn check_history(&mut self, tip: ObjectId) -> Result<(), Rejection> {
        let mut stack = vec![tip];
        while let Some(id) = stack.pop() {
            if self.commits.contains(&id) {
                continue;
            }
            let strict = self.real.has_object(id);
            if strict && self.reached(id) {
                continue;
            }
            self.commits.insert(id);
            if self.commits.len() > MAX_NEW_COMMITS {
                return Err(Rejection::TooManyCommits {
                    limit: MAX_NEW_COMMITS,
                });
            }
            let obj = self.read(id)?;
            if obj.kind != gix::object::Kind::Commit {
                return Err(Rejection::NotACommit { id: id.to_string() });
            }
            let malformed = || Rejection::Malformed { id: id.to_string() };
            let mut iter = gix::objs::CommitRefIter::from_bytes(&obj.data, self.q.object_hash());
            let tree = iter.tree_id().map_err(|_| malformed())?;
            let parents: Vec<ObjectId> = iter.parent_ids().collect();
            drop(obj);
            let commit = id.to_string();
            self.check_tree(tree, "", &commit, strict)?;
            stack.extend(parents);
        }
        Ok(())
    }

    fn check_tree(
        &mut self,
        tree: ObjectId,
        prefix: &str,
        commit: &str,
        strict: bool,
    ) -> Result<(), Rejection> {
        if !self.trees.insert((tree, prefix.len(), strict)) {
            return Ok(());
        }
        let obj = self.read(tree)?;
        if obj.kind != gix::object::Kind::Tree {
            return Err(Rejection::Malformed {
                id: tree.to_string(),
            });
        }
        let known = self.real.has_object(tree);
        let data = obj.data.clone();
        drop(obj);
        let mut names = HashSet::new();
        let mut subtrees = Vec::new();
        for entry in gix::objs::TreeRefIter::from_bytes(&data, self.q.object_hash()) {
            let entry = entry.map_err(|_| Rejection::Malformed {
                id: tree.to_string(),
            })?;
            let name = entry.filename.to_vec();
            let shown = String::from_utf8_lossy(&name);
            let path = format!("{prefix}{shown}");
            let bad_path = |reason: &str| Rejection::BadPath {
                path: path.chars().take(300).collect(),
                commit: commit.to_owned(),
                reason: reason.to_owned(),
            };
            let Ok(name_str) = std::str::from_utf8(&name) else {
                return Err(bad_path("name is not UTF-8"));
            };
            if name_str.is_empty() || name_str.contains('/') || name_str.contains('\0') {
                return Err(bad_path("bad name"));
            }
            if let Err(e) = validate_repo_path(&path) {
                return Err(bad_path(&e.to_string()));
            }
            if !names.insert(name.clone()) {
                return Err(Rejection::Duplicate {
                    path,
                    commit: commit.to_owned(),
                });
            }
            let oid = entry.oid.to_owned();
            match entry.mode.value() {
                0o100644 | 0o100755 | 0o120000 => {
                    if !known || strict {
                        self.check_blob(oid, &path, strict)?;
                    }
                }
                0o040000 => subtrees.push((oid, format!("{path}/"))),
                0o160000 => {
                    return Err(Rejection::Gitlink {
                        path,
                        commit: commit.to_owned(),
                    });
                }
                other => {
                    return Err(Rejection::BadMode {
                        mode: format!("{other:o}"),
                        path,
                        commit: commit.to_owned(),
                    });
                }
            }
        }
        for (oid, prefix) in subtrees {
            self.check_tree(oid, &prefix, commit, strict)?;
        }
        Ok(())
    }

    /// A blob new to the repository (or any, when `strict`) must exist, and when it is an LFS
    /// pointer the store must hold the content it names.
    fn check_blob(&mut self, oid: ObjectId, path: &str, strict: bool) -> Result<(), Rejection> {
        if (!strict && self.real.has_object(oid)) || !self.blobs.insert(oid) {
            return Ok(());
        }
        let header = self
            .q
            .try_find_header(oid)
            .map_err(|_| Rejection::Malformed {
                id: oid.to_string(),
            })?
            .ok_or_else(|| Rejection::MissingObject {
                id: oid.to_string(),
            })?;
        if header.kind() != gix::object::Kind::Blob {
            return Err(Rejection::Malformed {
                id: oid.to_string(),
            });
        }
        if !self.hub_refs && header.size() > MAX_GIT_FILE {
            return Err(Rejection::TooLarge {
                path: path.chars().take(300).collect(),
                size: header.size(),
            });
        }
        if header.size() > MAX_POINTER_SIZE as u64 {
            return Ok(());
        }
        let pointer = LfsPointer::parse(&self.read(oid)?.data);
        if let Some(pointer) = pointer
            && !(self.has_lfs)(&pointer.sha256)
        {
            return Err(Rejection::MissingLfs {
                oid: pointer.sha256,
                path: path.chars().take(300).collect(),
            });
        }
        Ok(())
    }

    /// Whether `old` is reachable from `new` (a fast-forward from `old` to `new`).
    fn is_ancestor(&self, old: ObjectId, new: ObjectId) -> Result<bool, Rejection> {
        let mut seen = HashSet::new();
        let mut stack = vec![new];
        while let Some(id) = stack.pop() {
            if id == old {
                return Ok(true);
            }
            if !seen.insert(id) {
                continue;
            }
            if seen.len() > MAX_ANCESTRY_WALK {
                return Ok(false);
            }
            let obj = self.read(id)?;
            let iter = gix::objs::CommitRefIter::from_bytes(&obj.data, self.q.object_hash());
            stack.extend(iter.parent_ids());
        }
        Ok(false)
    }
}
