//! Which files are LFS: the `filter=lfs` patterns of a repo's `.gitattributes`.
//!
//! Only the pattern syntax that `.gitattributes` files on the Hub use is supported: `*` and `?`
//! within a path component, `**` across components, patterns without `/` matching the file
//! name at any depth, patterns with `/` matching from the repository root. Anything richer
//! (character classes, negation, macros) is not an LFS rule the Hub writes; such lines are
//! ignored rather than guessed at.

/// The `.gitattributes` of a new repository: the Hub's default LFS patterns.
pub const DEFAULT_GITATTRIBUTES: &str = "\
*.7z filter=lfs diff=lfs merge=lfs -text
*.arrow filter=lfs diff=lfs merge=lfs -text
*.bin filter=lfs diff=lfs merge=lfs -text
*.bz2 filter=lfs diff=lfs merge=lfs -text
*.ckpt filter=lfs diff=lfs merge=lfs -text
*.ftz filter=lfs diff=lfs merge=lfs -text
*.gguf filter=lfs diff=lfs merge=lfs -text
*.gz filter=lfs diff=lfs merge=lfs -text
*.h5 filter=lfs diff=lfs merge=lfs -text
*.joblib filter=lfs diff=lfs merge=lfs -text
*.lfs.* filter=lfs diff=lfs merge=lfs -text
*.mlmodel filter=lfs diff=lfs merge=lfs -text
*.model filter=lfs diff=lfs merge=lfs -text
*.msgpack filter=lfs diff=lfs merge=lfs -text
*.npy filter=lfs diff=lfs merge=lfs -text
*.npz filter=lfs diff=lfs merge=lfs -text
*.onnx filter=lfs diff=lfs merge=lfs -text
*.ot filter=lfs diff=lfs merge=lfs -text
*.parquet filter=lfs diff=lfs merge=lfs -text
*.pb filter=lfs diff=lfs merge=lfs -text
*.pickle filter=lfs diff=lfs merge=lfs -text
*.pkl filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.pth filter=lfs diff=lfs merge=lfs -text
*.rar filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
saved_model/**/* filter=lfs diff=lfs merge=lfs -text
*.tar.* filter=lfs diff=lfs merge=lfs -text
*.tar filter=lfs diff=lfs merge=lfs -text
*.tflite filter=lfs diff=lfs merge=lfs -text
*.tgz filter=lfs diff=lfs merge=lfs -text
*.wasm filter=lfs diff=lfs merge=lfs -text
*.xz filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
*.zst filter=lfs diff=lfs merge=lfs -text
*tfevents* filter=lfs diff=lfs merge=lfs -text
";

/// Files above this size are stored as LFS whatever the patterns say (the Hub's 10 MiB rule).
pub const LFS_SIZE_THRESHOLD: u64 = 10 * 1024 * 1024;

/// The LFS rules of one `.gitattributes`.
#[derive(Debug, Clone, Default)]
pub struct LfsRules {
    /// (pattern, is LFS): later lines override earlier ones, as in git.
    patterns: Vec<(String, bool)>,
}

impl LfsRules {
    pub fn parse(gitattributes: &str) -> Self {
        let patterns = gitattributes
            .lines()
            .filter_map(|line| {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
                    return None;
                }
                let mut parts = line.split_whitespace();
                let pattern = parts.next()?;
                let mut lfs = None;
                for attr in parts {
                    match attr {
                        "filter=lfs" => lfs = Some(true),
                        "-filter" | "!filter" => lfs = Some(false),
                        a if a.starts_with("filter=") => lfs = Some(false),
                        _ => {}
                    }
                }
                Some((pattern.to_owned(), lfs?))
            })
            .collect();
        Self { patterns }
    }

    /// Whether `path` (repo-relative, `/`-separated) is LFS by pattern.
    pub fn matches(&self, path: &str) -> bool {
        self.patterns
            .iter()
            .rev()
            .find(|(pattern, _)| pattern_matches(pattern, path))
            .is_some_and(|(_, lfs)| *lfs)
    }

    /// Whether a file belongs in LFS: by pattern, by size, or because it is binary (has a NUL
    /// byte in its first 8000 bytes, git's own test).
    pub fn wants_lfs(&self, path: &str, size: u64, head: &[u8]) -> bool {
        self.matches(path) || size > LFS_SIZE_THRESHOLD || head.iter().take(8000).any(|&b| b == 0)
    }
}

fn pattern_matches(pattern: &str, path: &str) -> bool {
    let pattern = pattern.strip_prefix('/').unwrap_or(pattern);
    if pattern.contains('/') {
        glob(pattern.as_bytes(), path.as_bytes())
    } else {
        let name = path.rsplit('/').next().unwrap_or(path);
        glob(pattern.as_bytes(), name.as_bytes())
    }
}

/// Wildcard matching: `*` and `?` stay within a component, `**` crosses them. Iterative,
/// remembering the last `*` and the last `**` to backtrack to, so it needs no recursion and
/// stays polynomial on hostile patterns.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // (pattern index after the star, text index the star currently extends to)
    let mut star: Option<(usize, usize)> = None;
    let mut double: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' if pattern.get(p + 1) == Some(&b'*') => {
                    let mut next = p + 2;
                    if pattern.get(next) == Some(&b'/') {
                        // `**/` also matches zero directories.
                        next += 1;
                    }
                    double = Some((next, t));
                    star = None;
                    p = next;
                    continue;
                }
                b'*' => {
                    star = Some((p + 1, t));
                    p += 1;
                    continue;
                }
                b'?' if text[t] != b'/' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                c if c != b'?' && c == text[t] => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        }
        if let Some((sp, st)) = star
            && text[st] != b'/'
        {
            star = Some((sp, st + 1));
            (p, t) = (sp, st + 1);
        } else if let Some((sp, st)) = double {
            double = Some((sp, st + 1));
            star = None;
            (p, t) = (sp, st + 1);
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rules() {
        let r = LfsRules::parse(DEFAULT_GITATTRIBUTES);
        for lfs in [
            "model.safetensors",
            "sub/dir/model-00001-of-00002.safetensors",
            "pytorch_model.bin",
            "x.tar.gz",
            "saved_model/variables/variables.data",
            "runs/events.out.tfevents.123",
            "q4.gguf",
        ] {
            assert!(r.matches(lfs), "{lfs}");
        }
        for plain in [
            "README.md",
            "config.json",
            "binary/readme.txt",
            "safetensors.md",
            "saved_model.txt",
        ] {
            assert!(!r.matches(plain), "{plain}");
        }
    }

    #[test]
    fn later_lines_win_and_size_and_binary_count() {
        let r = LfsRules::parse("*.json filter=lfs\nconfig.json -filter\n");
        assert!(r.matches("a.json"));
        assert!(!r.matches("config.json"));
        assert!(r.wants_lfs("notes.txt", LFS_SIZE_THRESHOLD + 1, b"text"));
        assert!(r.wants_lfs("notes.txt", 3, b"a\0b"));
        assert!(!r.wants_lfs("notes.txt", 3, b"abc"));
    }

    #[test]
    fn glob_semantics() {
        assert!(glob(b"a/*.bin", b"a/x.bin"));
        assert!(!glob(b"a/*.bin", b"a/b/x.bin"));
        assert!(glob(b"a/**/x.bin", b"a/x.bin"));
        assert!(glob(b"a/**/x.bin", b"a/b/c/x.bin"));
        assert!(glob(b"**", b"any/thing"));
        assert!(!glob(b"?", b"/"));
        // Pathological patterns stay fast.
        let long = "a".repeat(2000);
        assert!(!glob(b"*a*a*a*a*a*a*a*b", long.as_bytes()));
    }
}
