//! Repository ids (`{type}/{namespace}/{name}`) and the paths of files inside a repository.
//!
//! A repo id is bound to its type: `model/alice/m` and `dataset/alice/m` are different repos,
//! as on the Hub. File paths are checked here once, for every way a path can arrive (API
//! commits, git pushes, peers): a path that passes [`validate_repo_path`] is safe to use as a
//! git tree path and never escapes a directory.

use crate::name::{NameError, validate_name_part};
use std::fmt;
use std::str::FromStr;

/// The three kinds of repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RepoType {
    Model,
    Dataset,
    Space,
}

impl RepoType {
    pub const ALL: [RepoType; 3] = [RepoType::Model, RepoType::Dataset, RepoType::Space];

    /// `model`, `dataset`, `space`: the Hub's `repo_type` values.
    pub fn as_str(self) -> &'static str {
        match self {
            RepoType::Model => "model",
            RepoType::Dataset => "dataset",
            RepoType::Space => "space",
        }
    }

    /// `models`, `datasets`, `spaces`: the segment in `/api/{plural}/…`.
    pub fn plural(self) -> &'static str {
        match self {
            RepoType::Model => "models",
            RepoType::Dataset => "datasets",
            RepoType::Space => "spaces",
        }
    }

    /// The prefix of the repo's web and resolve URLs: `""`, `datasets/`, `spaces/`.
    pub fn url_prefix(self) -> &'static str {
        match self {
            RepoType::Model => "",
            RepoType::Dataset => "datasets/",
            RepoType::Space => "spaces/",
        }
    }
}

impl FromStr for RepoType {
    type Err = RepoIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "model" | "models" => Ok(RepoType::Model),
            "dataset" | "datasets" => Ok(RepoType::Dataset),
            "space" | "spaces" => Ok(RepoType::Space),
            other => Err(RepoIdError::BadType(other.chars().take(32).collect())),
        }
    }
}

/// Why a repo id was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RepoIdError {
    #[error("repo type {0:?} is not one of model, dataset, space")]
    BadType(String),
    #[error("repo id must be 'namespace/name'")]
    Shape,
    #[error("invalid namespace")]
    Namespace(#[source] NameError),
    #[error("invalid repo name")]
    Name(#[source] NameError),
}

/// `{type}/{namespace}/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RepoId {
    kind: RepoType,
    namespace: String,
    name: String,
}

impl RepoId {
    pub fn new(kind: RepoType, namespace: &str, name: &str) -> Result<Self, RepoIdError> {
        validate_name_part(namespace).map_err(RepoIdError::Namespace)?;
        validate_name_part(name).map_err(RepoIdError::Name)?;
        Ok(Self {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    /// Parses `namespace/name` for a repo of type `kind`.
    pub fn parse(kind: RepoType, id: &str) -> Result<Self, RepoIdError> {
        let (namespace, name) = id.split_once('/').ok_or(RepoIdError::Shape)?;
        if name.contains('/') {
            return Err(RepoIdError::Shape);
        }
        Self::new(kind, namespace, name)
    }

    pub fn kind(&self) -> RepoType {
        self.kind
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `namespace/name`, as the Hub's APIs write it.
    pub fn hub_id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl fmt::Display for RepoId {
    /// `type/namespace/name`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.kind.as_str(), self.namespace, self.name)
    }
}

/// The longest file path accepted inside a repository, in bytes.
pub const MAX_PATH_LEN: usize = 4096;

/// Why a file path was rejected. Messages are safe to show a user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    #[error("path must be relative (no leading '/')")]
    Absolute,
    #[error("path contains a NUL byte, a control character or a backslash")]
    BadChar,
    #[error("path contains a bidirectional control character")]
    Bidi,
    #[error("path has an empty component ('//' or a trailing '/')")]
    EmptyComponent,
    #[error("path may not contain '.' or '..' components")]
    DotComponent,
    #[error("path may not contain a '.git' component")]
    GitComponent,
}

/// Checks a file path inside a repository (`dir/sub/file.bin`).
///
/// Rejected: empty, absolute, NUL/control characters and `\`, bidirectional controls (which
/// make a path display as another: `evil\u{202E}txt.exe`), empty components, `.` and `..`,
/// and any component that git or a case-insensitive file system would take for `.git`
/// (`.git`, `.GIT`, `.git.`, `.git ` and the 8.3 short name `git~1`).
pub fn validate_repo_path(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute);
    }
    if path.chars().any(|c| c.is_control() || c == '\\') {
        return Err(PathError::BadChar);
    }
    if path.chars().any(is_bidi_control) {
        return Err(PathError::Bidi);
    }
    for component in path.split('/') {
        match component {
            "" => return Err(PathError::EmptyComponent),
            "." | ".." => return Err(PathError::DotComponent),
            c if is_git_dir_name(c) => return Err(PathError::GitComponent),
            _ => {}
        }
    }
    Ok(())
}

/// The characters that reorder how text is displayed (Unicode's explicit bidirectional
/// formatting characters and the implicit marks), as the Hub and git hosts refuse them.
fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

fn is_git_dir_name(component: &str) -> bool {
    let trimmed = component.trim_end_matches(['.', ' ']);
    trimmed.eq_ignore_ascii_case(".git") || trimmed.eq_ignore_ascii_case("git~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn repo_ids() {
        let id = RepoId::parse(RepoType::Dataset, "alice/squad-v2").unwrap();
        assert_eq!(id.to_string(), "dataset/alice/squad-v2");
        assert_eq!(id.hub_id(), "alice/squad-v2");
        assert_eq!(RepoType::from_str("models").unwrap(), RepoType::Model);
        for bad in [
            "alice",
            "alice/",
            "/m",
            "a/b/c",
            "../m",
            "alice/..",
            &format!("a/{}", "x".repeat(97)),
        ] {
            assert!(RepoId::parse(RepoType::Model, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn paths() {
        for ok in [
            "README.md",
            "a/b/c.bin",
            ".gitattributes",
            "x/.github/y",
            "dir.git/x",
            "git~2",
            "模型/файл-é.bin",
        ] {
            assert_eq!(validate_repo_path(ok), Ok(()), "{ok}");
        }
        let bad = [
            ("", PathError::Empty),
            ("/etc/x", PathError::Absolute),
            ("../x", PathError::DotComponent),
            ("a/../../x", PathError::DotComponent),
            ("a/./x", PathError::DotComponent),
            ("a//x", PathError::EmptyComponent),
            ("a/", PathError::EmptyComponent),
            (".git/config", PathError::GitComponent),
            ("sub/.GIT/x", PathError::GitComponent),
            ("GIT~1/x", PathError::GitComponent),
            (".git./x", PathError::GitComponent),
            ("a\0b", PathError::BadChar),
            ("a\\b", PathError::BadChar),
            ("a\nb", PathError::BadChar),
            ("invoice\u{202E}fdp.exe", PathError::Bidi),
            ("a/\u{2066}b\u{2069}", PathError::Bidi),
            ("\u{200F}x", PathError::Bidi),
            ("x\u{200E}", PathError::Bidi),
            ("\u{202A}/x", PathError::Bidi),
            ("x\u{061C}y", PathError::Bidi),
        ];
        for (path, err) in bad {
            assert_eq!(validate_repo_path(path), Err(err), "{path:?}");
        }
    }

    proptest! {
        #[test]
        fn accepted_paths_never_escape(path in "[a-zA-Z0-9._~/\\\\ -]{0,40}") {
            if validate_repo_path(&path).is_ok() {
                let joined = std::path::Path::new("/root").join(&path);
                prop_assert!(joined.starts_with("/root"));
                for c in std::path::Path::new(&path).components() {
                    prop_assert!(matches!(c, std::path::Component::Normal(_)), "{path:?}");
                }
            }
        }
    }
}
