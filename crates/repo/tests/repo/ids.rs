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
    assert_eq!(repos.find_ignoring_case(&id("org/model")), Some(id("Org/Model")));
    assert_eq!(repos.find_ignoring_case(&id("ORG/MODEL")), Some(id("Org/Model")));
    // The exact spelling is not "found ignoring case", and other types are other ids.
    assert_eq!(repos.find_ignoring_case(&id("Org/Model")), None);
    let dataset = RepoId::parse(RepoType::Dataset, "org/model").unwrap();
    assert_eq!(repos.find_ignoring_case(&dataset), None);

    // A case-only rename: the index names the new spelling.
    repos.rename(&id("Org/Model"), &id("Org/MODEL")).unwrap();
    assert_eq!(repos.find_ignoring_case(&id("org/model")), Some(id("Org/MODEL")));
    // A rename to another name: the old one is gone from the index, the new one is in it.
    repos.rename(&id("Org/MODEL"), &id("Org/Renamed")).unwrap();
    assert_eq!(repos.find_ignoring_case(&id("org/model")), None);
    assert_eq!(repos.find_ignoring_case(&id("org/RENAMED")), Some(id("Org/Renamed")));
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
