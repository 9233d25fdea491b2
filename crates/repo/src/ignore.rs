//! Which paths a `.gitignore` excludes: what the Hub answers as `shouldIgnore` at preupload,
//! so `upload_folder` leaves ignored files out of the commit.
//!
//! git's rules, with gix-glob's parser and matcher (the one gix-ignore builds on): blank lines
//! and `#` comments are skipped, the last matching pattern wins, `!` re-includes, a trailing
//! `/` matches directories only, a pattern with a `/` is anchored at the root, and a file below
//! an excluded directory stays excluded (git never looks inside it).

use gix_glob::Pattern;
use gix_glob::pattern::Case;
use gix_glob::wildmatch::Mode;

/// Longest `.gitignore` read; the rest is left out rather than parsed without bound.
pub const MAX_GITIGNORE: usize = 1024 * 1024;

/// The patterns of one (root) `.gitignore`.
#[derive(Debug, Clone, Default)]
pub struct IgnoreRules {
    patterns: Vec<Pattern>,
}

impl IgnoreRules {
    pub fn parse(gitignore: &str) -> Self {
        let text = match gitignore.char_indices().nth(MAX_GITIGNORE) {
            Some((end, _)) => &gitignore[..end],
            None => gitignore,
        };
        let patterns = text
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .filter_map(|l| gix_glob::parse(l.trim_end()))
            .collect();
        Self { patterns }
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether the file at the repo-relative `path` is excluded.
    pub fn is_ignored(&self, path: &str) -> bool {
        let path = path.trim_matches('/');
        // Every parent directory first: a file in an excluded directory cannot be re-included.
        for (i, b) in path.bytes().enumerate() {
            if b == b'/' && self.decide(&path[..i], true) {
                return true;
            }
        }
        self.decide(path, false)
    }

    fn decide(&self, path: &str, is_dir: bool) -> bool {
        let basename = path.rfind('/').map(|p| p + 1);
        self.patterns
            .iter()
            .rev()
            .find(|p| {
                p.matches_repo_relative_path(
                    path.as_bytes().into(),
                    basename,
                    Some(is_dir),
                    Case::Sensitive,
                    Mode::NO_MATCH_SLASH_LITERAL,
                )
            })
            .is_some_and(|p| !p.is_negative())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_semantics() {
        let rules = IgnoreRules::parse(
            "# comment\n\n*.log\n!keep.log\nbuild/\n/root-only.txt\ndocs/*.tmp\n**/cache/**\n",
        );
        for (path, ignored) in [
            ("a.log", true),
            ("deep/dir/b.log", true),
            ("keep.log", false),
            ("sub/keep.log", false),
            ("build/out.bin", true),
            ("src/build/x", true),
            ("build", false),
            ("root-only.txt", true),
            ("sub/root-only.txt", false),
            ("docs/a.tmp", true),
            ("docs/sub/a.tmp", false),
            ("x/cache/y/z.txt", true),
            ("model.safetensors", false),
            ("# comment", false),
        ] {
            assert_eq!(rules.is_ignored(path), ignored, "{path}");
        }
        assert!(IgnoreRules::parse("\n# only comments\n").is_empty());
    }

    #[test]
    fn an_excluded_directory_cannot_be_reincluded_into() {
        let rules = IgnoreRules::parse("out/\n!out/keep.txt\n");
        assert!(rules.is_ignored("out/keep.txt"));
    }
}
