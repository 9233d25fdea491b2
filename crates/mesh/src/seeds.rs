//! The seeding policy: which repos this node fetches and keeps.
//!
//! Three sources, merged: the patterns of the node's configuration (`--seed`, `[p2p] seed`;
//! fixed while the node runs), patterns added at run time (`hubmesh seed add`,
//! `POST /api/mesh/seeds`), and repos a user fetched through this node's gateway although no
//! pattern covered them ("any gateway serves the whole mesh"). The last two are persisted in
//! `DATA/seeds.list` (next to `refs.redb`), one entry a line, written atomically (temp file,
//! fsync, rename, fsync of the directory), so they survive restarts:
//!
//! ```text
//! # hubmesh seeding policy
//! pattern alice/*
//! fetched model/bob/tiny
//! ```
//!
//! Removing an entry stops future fetches; data already replicated stays.

use crate::error::OnDemandRefused;
use hub_protocol::replication::{SeedPattern, SeedPatternError};
use hub_protocol::repo::{RepoId, RepoType};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::Instant;

/// The file the run-time policy lives in, next to the ref store.
pub const SEEDS_FILE: &str = "seeds.list";

/// Most repos remembered as fetched: any reader of a gateway can make it fetch a public repo,
/// so the list (and what the node keeps syncing) is bounded. Past it, reads of repos no
/// pattern covers are not fetched (503, retry later); `hubmesh seed rm` makes room.
pub const MAX_FETCHED: usize = 4096;

/// Most repos no pattern covers that reads may make this node start fetching in one
/// [`ON_DEMAND_WINDOW`]; more answer 503 until the window ends. With [`MAX_FETCHED`] and
/// the LFS bound of on-demand repos (`replicate::MAX_ON_DEMAND_LFS`) it bounds what
/// anonymous readers can make a node download and keep.
pub const ON_DEMAND_PER_WINDOW: usize = 30;
/// See [`ON_DEMAND_PER_WINDOW`].
pub const ON_DEMAND_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// Where a seeding entry comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SeedSource {
    /// The node's configuration (`--seed`, `[p2p] seed`): changed only there.
    Config,
    /// Added at run time (`hubmesh seed add`).
    Runtime,
    /// A repo a user fetched through this node's gateway.
    Fetched,
}

impl SeedSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Config => "config",
            Self::Runtime => "runtime",
            Self::Fetched => "fetched",
        }
    }
}

/// One entry of the merged policy.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SeedEntry {
    /// `*`, `ns/*` or `ns/name`.
    pub pattern: String,
    /// The repo's type, for fetched repos (patterns name repos of every type).
    pub kind: Option<RepoType>,
    pub source: SeedSource,
}

/// Why the policy could not be changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SeedError {
    #[error(transparent)]
    Invalid(#[from] SeedPatternError),
    #[error(
        "seed pattern {0:?} comes from the node's configuration (--seed or [p2p] seed); change it there"
    )]
    FromConfig(String),
    #[error("no seed pattern {0:?} on this node")]
    NotFound(String),
    #[error("cannot save the seeding policy: {0}")]
    Io(String),
    #[error("this node runs no replication")]
    NoReplication,
    #[error(
        "already {MAX_FETCHED} repos remembered as fetched; remove some with `hubmesh seed rm`"
    )]
    TooManyFetched,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Dynamic {
    /// Run-time patterns, in the order they were added.
    patterns: Vec<(String, SeedPattern)>,
    fetched: BTreeSet<RepoId>,
}

/// The merged, shared, persisted policy.
#[derive(Debug)]
pub(crate) struct SeedPolicy {
    /// `None`: not persisted (tests).
    path: Option<PathBuf>,
    config: Vec<(String, SeedPattern)>,
    state: RwLock<Dynamic>,
    /// Serialises changes, so the file always holds the latest state.
    write: Mutex<()>,
    /// On-demand fetches started in the current window: (window start, count).
    on_demand: Mutex<(Instant, usize)>,
}

fn pattern_text(pattern: &SeedPattern) -> String {
    match pattern {
        SeedPattern::All => "*".to_owned(),
        SeedPattern::Namespace(ns) => format!("{ns}/*"),
        SeedPattern::Repo { namespace, name } => format!("{namespace}/{name}"),
    }
}

fn repo_text(repo: &RepoId) -> String {
    format!(
        "{}/{}/{}",
        repo.kind().as_str(),
        repo.namespace(),
        repo.name()
    )
}

fn parse_repo(text: &str) -> Option<RepoId> {
    let (kind, id) = text.split_once('/')?;
    RepoId::parse(kind.parse().ok()?, id).ok()
}

impl SeedPolicy {
    /// Loads the run-time part from `path` (none yet: empty) and merges `config`.
    /// Unreadable lines are skipped with a warning, never fatal.
    pub(crate) fn open(path: Option<PathBuf>, config: Vec<SeedPattern>) -> std::io::Result<Self> {
        let mut dynamic = Dynamic::default();
        if let Some(path) = &path {
            match std::fs::read_to_string(path) {
                Ok(text) => dynamic = parse(&text, path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let mut config: Vec<(String, SeedPattern)> =
            config.into_iter().map(|p| (pattern_text(&p), p)).collect();
        config.dedup_by(|a, b| a.0 == b.0);
        Ok(Self {
            path,
            config,
            state: RwLock::new(dynamic),
            write: Mutex::new(()),
            on_demand: Mutex::new((Instant::now(), 0)),
        })
    }

    /// Whether a read may make this node fetch `repo` now (and counts it when it is a new
    /// on-demand fetch): always for a repo the policy covers; for another, while fewer than
    /// [`MAX_FETCHED`] are remembered and fewer than [`ON_DEMAND_PER_WINDOW`] started in this
    /// window. The error says which limit was hit.
    pub(crate) fn admit_on_demand(
        &self,
        repo: &RepoId,
        now: Instant,
    ) -> Result<(), OnDemandRefused> {
        if self.matches(repo) {
            return Ok(());
        }
        let remembered = self
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .fetched
            .len();
        if remembered >= MAX_FETCHED {
            return Err(OnDemandRefused::Remembered { limit: MAX_FETCHED });
        }
        let mut window = self
            .on_demand
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if now.duration_since(window.0) >= ON_DEMAND_WINDOW {
            *window = (now, 0);
        }
        if window.1 >= ON_DEMAND_PER_WINDOW {
            return Err(OnDemandRefused::Window {
                limit: ON_DEMAND_PER_WINDOW,
            });
        }
        window.1 += 1;
        Ok(())
    }

    /// Whether `repo` is seeded only because a read fetched it on demand (no pattern).
    pub(crate) fn on_demand_only(&self, repo: &RepoId) -> bool {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        state.fetched.contains(repo)
            && !self.config.iter().any(|(_, p)| p.matches(repo))
            && !state.patterns.iter().any(|(_, p)| p.matches(repo))
    }

    /// Whether this node seeds `repo`.
    pub(crate) fn matches(&self, repo: &RepoId) -> bool {
        if self.config.iter().any(|(_, p)| p.matches(repo)) {
            return true;
        }
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        state.fetched.contains(repo) || state.patterns.iter().any(|(_, p)| p.matches(repo))
    }

    /// Every entry: configuration first, then run-time patterns, then fetched repos.
    pub(crate) fn list(&self) -> Vec<SeedEntry> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let pattern = |source| {
            move |(text, _): &(String, SeedPattern)| SeedEntry {
                pattern: text.clone(),
                kind: None,
                source,
            }
        };
        self.config
            .iter()
            .map(pattern(SeedSource::Config))
            .chain(state.patterns.iter().map(pattern(SeedSource::Runtime)))
            .chain(state.fetched.iter().map(|repo| SeedEntry {
                pattern: format!("{}/{}", repo.namespace(), repo.name()),
                kind: Some(repo.kind()),
                source: SeedSource::Fetched,
            }))
            .collect()
    }

    /// Adds a run-time pattern (blocking: writes the file). `false`: the policy had it already
    /// (from either source).
    pub(crate) fn add(&self, text: &str) -> Result<bool, SeedError> {
        let pattern = SeedPattern::parse(text)?;
        let text = pattern_text(&pattern);
        self.change(|state| {
            if self.config.iter().any(|(t, _)| *t == text)
                || state.patterns.iter().any(|(t, _)| *t == text)
            {
                return Ok(false);
            }
            state.patterns.push((text, pattern));
            Ok(true)
        })
    }

    /// Removes a run-time pattern, or the fetched repos (of every type) a `ns/name` pattern
    /// names (blocking: writes the file).
    pub(crate) fn remove(&self, text: &str) -> Result<(), SeedError> {
        let pattern = SeedPattern::parse(text)?;
        let text = pattern_text(&pattern);
        self.change(|state| {
            let before = (state.patterns.len(), state.fetched.len());
            state.patterns.retain(|(t, _)| *t != text);
            if let SeedPattern::Repo { .. } = pattern {
                state.fetched.retain(|repo| !pattern.matches(repo));
            }
            if before != (state.patterns.len(), state.fetched.len()) {
                Ok(true)
            } else if self.config.iter().any(|(t, _)| *t == text) {
                Err(SeedError::FromConfig(text.clone()))
            } else {
                Err(SeedError::NotFound(text.clone()))
            }
        })
        .map(|_| ())
    }

    /// Remembers a repo a user fetched through the gateway (blocking: writes the file).
    /// `false`: it was remembered already.
    pub(crate) fn add_fetched(&self, repo: &RepoId) -> Result<bool, SeedError> {
        self.change(|state| {
            if state.fetched.contains(repo) {
                return Ok(false);
            }
            if state.fetched.len() >= MAX_FETCHED {
                return Err(SeedError::TooManyFetched);
            }
            Ok(state.fetched.insert(repo.clone()))
        })
    }

    /// Applies `f` to a copy of the state; when it reports a change, persists the copy and
    /// only then makes it current (a failed write changes nothing).
    fn change(
        &self,
        f: impl FnOnce(&mut Dynamic) -> Result<bool, SeedError>,
    ) -> Result<bool, SeedError> {
        let _serial = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = self
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if !f(&mut next)? {
            return Ok(false);
        }
        if let Some(path) = &self.path {
            save(path, &next).map_err(|e| SeedError::Io(e.to_string()))?;
        }
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = next;
        Ok(true)
    }
}

fn parse(text: &str, path: &Path) -> Dynamic {
    let mut out = Dynamic::default();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parsed = match line.split_once(' ') {
            Some(("pattern", p)) => SeedPattern::parse(p.trim()).ok().map(|pattern| {
                let text = pattern_text(&pattern);
                if !out.patterns.iter().any(|(t, _)| *t == text) {
                    out.patterns.push((text, pattern));
                }
            }),
            Some(("fetched", r)) => parse_repo(r.trim()).map(|repo| {
                out.fetched.insert(repo);
            }),
            _ => None,
        };
        if parsed.is_none() {
            tracing::warn!(file = %path.display(), line, "unreadable seeding entry skipped");
        }
    }
    out
}

fn save(path: &Path, state: &Dynamic) -> std::io::Result<()> {
    let mut text = String::from("# hubmesh seeding policy (hubmesh seed add|rm|list)\n");
    for (pattern, _) in &state.patterns {
        text.push_str(&format!("pattern {pattern}\n"));
    }
    for repo in &state.fetched {
        text.push_str(&format!("fetched {}\n", repo_text(repo)));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_demand_fetches_are_bounded_per_window_and_in_all() {
        // Issue 14, item 15: an anonymous read made a node fetch any public repo of the
        // mesh, with no bound.
        let policy = SeedPolicy::open(None, config()).unwrap();
        let t0 = Instant::now();
        for i in 0..ON_DEMAND_PER_WINDOW {
            let r = repo(RepoType::Model, &format!("bob/r{i}"));
            policy.admit_on_demand(&r, t0).unwrap();
        }
        let next = repo(RepoType::Model, "bob/next");
        assert_eq!(
            policy.admit_on_demand(&next, t0),
            Err(OnDemandRefused::Window {
                limit: ON_DEMAND_PER_WINDOW
            })
        );
        // What the policy covers is always fetched.
        policy
            .admit_on_demand(&repo(RepoType::Model, "carol/x"), t0)
            .unwrap();
        policy
            .admit_on_demand(&next, t0 + ON_DEMAND_WINDOW)
            .unwrap();
        // Past MAX_FETCHED remembered repos, none at all.
        policy
            .change(|state| {
                for i in 0..MAX_FETCHED {
                    state
                        .fetched
                        .insert(repo(RepoType::Model, &format!("dave/r{i}")));
                }
                Ok(true)
            })
            .unwrap();
        let later = t0 + 2 * ON_DEMAND_WINDOW;
        assert_eq!(
            policy.admit_on_demand(&next, later),
            Err(OnDemandRefused::Remembered { limit: MAX_FETCHED })
        );
        assert!(policy.on_demand_only(&repo(RepoType::Model, "dave/r1")));
        assert!(!policy.on_demand_only(&repo(RepoType::Model, "carol/x")));
    }

    fn repo(kind: RepoType, id: &str) -> RepoId {
        RepoId::parse(kind, id).unwrap()
    }

    fn config() -> Vec<SeedPattern> {
        vec![SeedPattern::parse("carol/*").unwrap()]
    }

    #[test]
    fn run_time_patterns_and_fetched_repos_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SEEDS_FILE);
        let tiny = repo(RepoType::Model, "alice/tiny");
        let data = repo(RepoType::Dataset, "bob/data");
        {
            let policy = SeedPolicy::open(Some(path.clone()), config()).unwrap();
            assert!(!policy.matches(&tiny) && !policy.matches(&data));
            assert!(policy.matches(&repo(RepoType::Space, "carol/app")));
            assert!(policy.add("alice/*").unwrap());
            assert!(!policy.add("alice/*").unwrap(), "added twice");
            assert!(!policy.add("carol/*").unwrap(), "already in the config");
            assert!(policy.add_fetched(&data).unwrap());
            assert!(!policy.add_fetched(&data).unwrap());
            assert!(policy.matches(&tiny) && policy.matches(&data));
            assert!(!policy.matches(&repo(RepoType::Model, "bob/data")));
        }
        let policy = SeedPolicy::open(Some(path.clone()), config()).unwrap();
        let listed: Vec<(String, Option<RepoType>, SeedSource)> = policy
            .list()
            .into_iter()
            .map(|e| (e.pattern, e.kind, e.source))
            .collect();
        assert_eq!(
            listed,
            [
                ("carol/*".into(), None, SeedSource::Config),
                ("alice/*".into(), None, SeedSource::Runtime),
                (
                    "bob/data".into(),
                    Some(RepoType::Dataset),
                    SeedSource::Fetched
                ),
            ]
        );
        assert!(policy.matches(&tiny) && policy.matches(&data));

        // Removing: run-time patterns and fetched repos go, configured ones cannot.
        policy.remove("alice/*").unwrap();
        policy.remove("bob/data").unwrap();
        assert!(matches!(
            policy.remove("carol/*"),
            Err(SeedError::FromConfig(_))
        ));
        assert!(matches!(
            policy.remove("dave/*"),
            Err(SeedError::NotFound(_))
        ));
        assert!(matches!(
            policy.add("not a pattern"),
            Err(SeedError::Invalid(_))
        ));
        assert!(matches!(policy.add("a/b/c"), Err(SeedError::Invalid(_))));
        drop(policy);
        let policy = SeedPolicy::open(Some(path.clone()), Vec::new()).unwrap();
        assert!(policy.list().is_empty());
        assert!(!policy.matches(&tiny));
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn the_fetched_list_is_bounded() {
        let policy = SeedPolicy::open(None, Vec::new()).unwrap();
        for i in 0..MAX_FETCHED {
            let id = repo(RepoType::Model, &format!("ns/r{i}"));
            assert!(policy.add_fetched(&id).unwrap());
        }
        let one_more = repo(RepoType::Model, "ns/extra");
        assert!(matches!(
            policy.add_fetched(&one_more),
            Err(SeedError::TooManyFetched)
        ));
        assert!(!policy.matches(&one_more));
        // Known ones are still "already remembered", not an error.
        assert!(!policy.add_fetched(&repo(RepoType::Model, "ns/r0")).unwrap());
        policy.remove("ns/r0").unwrap();
        assert!(policy.add_fetched(&one_more).unwrap());
    }

    #[test]
    fn unreadable_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SEEDS_FILE);
        std::fs::write(
            &path,
            "# comment\n\npattern alice/*\npattern ../x\nfetched model/bob/tiny\nfetched nope\n\
             garbage\npattern alice/*\n",
        )
        .unwrap();
        let policy = SeedPolicy::open(Some(path), Vec::new()).unwrap();
        let listed: Vec<String> = policy.list().into_iter().map(|e| e.pattern).collect();
        assert_eq!(listed, ["alice/*", "bob/tiny"]);
    }
}
