//! The case-folded index of repo ids in `meta.redb`: `find_ignoring_case` answers from it
//! (one read, no directory listing), and it follows create, rename (case-only too) and delete;
//! repos stored before it existed join it when the root is opened.

use super::author;
use hub_protocol::repo::{RepoId, RepoType};
use hub_repo::Repos;

fn id(s: &str) -> RepoId {
    RepoId::parse(RepoType::Model, s).unwrap()
}

#[test]
fn the_case_folded_index_follows_create_rename_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let repos = Repos::open(dir.path()).unwrap();
    repos.create(&id("Org/Model"), &author()).unwrap();
    assert_eq!(
        repos.find_ignoring_case(&id("org/model")),
        Some(id("Org/Model"))
    );
    assert_eq!(
        repos.find_ignoring_case(&id("ORG/MODEL")),
        Some(id("Org/Model"))
    );
    // The exact spelling is not "found ignoring case", and other types are other ids.
    assert_eq!(repos.find_ignoring_case(&id("Org/Model")), None);
    let dataset = RepoId::parse(RepoType::Dataset, "org/model").unwrap();
    assert_eq!(repos.find_ignoring_case(&dataset), None);

    // A case-only rename: the index names the new spelling.
    repos.rename(&id("Org/Model"), &id("Org/MODEL")).unwrap();
    assert_eq!(
        repos.find_ignoring_case(&id("org/model")),
        Some(id("Org/MODEL"))
    );
    // A rename to another name: the old one is gone from the index, the new one is in it.
    repos.rename(&id("Org/MODEL"), &id("Org/Renamed")).unwrap();
    assert_eq!(repos.find_ignoring_case(&id("org/model")), None);
    assert_eq!(
        repos.find_ignoring_case(&id("org/RENAMED")),
        Some(id("Org/Renamed"))
    );
    repos.delete(&id("Org/Renamed")).unwrap();
    assert_eq!(repos.find_ignoring_case(&id("org/renamed")), None);
}

#[test]
fn lookups_read_the_index_and_opening_indexes_older_repos() {
    let dir = tempfile::tempdir().unwrap();
    let repos = Repos::open(dir.path()).unwrap();
    repos.create(&id("Org/Model"), &author()).unwrap();
    // A repo that appears on disk without going through `Repos` (as one stored by a version
    // without the index): a lookup does not list directories, so it is not found yet...
    let old = id("Older/Thing");
    let target = repos.git_dir(&old);
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::rename(repos.git_dir(&id("Org/Model")), &target).unwrap();
    assert!(repos.exists(&old));
    assert_eq!(repos.find_ignoring_case(&id("older/thing")), None);
    // ... and the index's entry for a repo no longer on disk finds nothing.
    assert_eq!(repos.find_ignoring_case(&id("org/model")), None);
    drop(repos);
    // Opening the root again adds it to the index.
    let repos = Repos::open(dir.path()).unwrap();
    assert_eq!(repos.find_ignoring_case(&id("older/THING")), Some(old));
}

/// The lookup of another spelling with many namespaces on disk: the index (one read) against
/// the directory listing it replaced (a listing of the type's namespaces, then of the matching
/// one). Prints the times; run with `--run-ignored only` (the figures in the report).
#[test]
#[ignore = "a measurement, not a check"]
fn measure_the_index_against_a_directory_listing() {
    let namespaces: usize = std::env::var("IDS_NAMESPACES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir().unwrap();
    let repos = Repos::open(dir.path()).unwrap();
    repos.create(&id("Org/Model"), &author()).unwrap();
    let models = repos
        .git_dir(&id("Org/Model"))
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_owned();
    for i in 0..namespaces {
        std::fs::create_dir(models.join(format!("ns{i:06}"))).unwrap();
    }
    let wanted = id("org/model");
    // The listing `find_ignoring_case` did before the index (kept here to compare).
    let listing = |want: &RepoId| -> Option<RepoId> {
        let same =
            |a: &std::ffi::OsStr, b: &str| a.to_str().is_some_and(|a| a.eq_ignore_ascii_case(b));
        let file = format!("{}.git", want.name());
        for ns in std::fs::read_dir(&models).ok()?.flatten() {
            if !same(&ns.file_name(), want.namespace()) {
                continue;
            }
            for repo in std::fs::read_dir(ns.path()).ok()?.flatten() {
                if same(&repo.file_name(), &file) {
                    let name = repo.file_name().to_str()?.strip_suffix(".git")?.to_owned();
                    return RepoId::new(RepoType::Model, ns.file_name().to_str()?, &name).ok();
                }
            }
        }
        None
    };
    let rounds = 200;
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        let t = std::time::Instant::now();
        assert_eq!(repos.find_ignoring_case(&wanted), Some(id("Org/Model")));
        times[0].push(t.elapsed());
        let t = std::time::Instant::now();
        assert_eq!(listing(&wanted), Some(id("Org/Model")));
        times[1].push(t.elapsed());
    }
    for (name, mut v) in ["index", "listing"].into_iter().zip(times) {
        v.sort();
        println!(
            "{name:8} {namespaces} namespaces: median {:?}, p90 {:?}",
            v[v.len() / 2],
            v[v.len() * 9 / 10]
        );
    }
}
