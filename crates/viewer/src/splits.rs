//! Which data files make which split, by the `datasets` library's conventions for a repo
//! without a loading script: a file (or a folder above it) whose name holds a split keyword
//! (`train`/`training`, `validation`/`valid`/`val`/`dev`, `test`/`testing`/`eval`/`evaluation`)
//! between separators belongs to that split; when no file names a split, every data file is
//! `train`. Only the most common data format of the repo is used, as `datasets` does.

use crate::table::Format;

/// One split of the `default` config: its name and its files, in path order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub name: String,
    pub files: Vec<String>,
}

/// The splits of the data files among `paths` (a repo's files), in the order `train`,
/// `validation`, `test`. Hidden files and folders (`.gitattributes`, `.cache/…`) are ignored.
pub fn splits(paths: &[String]) -> Vec<Split> {
    let data: Vec<(&String, Format)> = paths
        .iter()
        .filter(|p| !p.split('/').any(|part| part.starts_with('.')))
        .filter_map(|p| Format::of(p).map(|f| (p, f)))
        .collect();
    // The most common format wins (ties: the first in `Format::ALL`).
    let Some(format) = Format::ALL
        .iter()
        .copied()
        .max_by_key(|f| {
            let n = data.iter().filter(|(_, g)| g == f).count();
            (n, std::cmp::Reverse(f.rank()))
        })
        .filter(|f| data.iter().any(|(_, g)| g == f))
    else {
        return Vec::new();
    };
    let mut files: Vec<&String> = data
        .iter()
        .filter(|(_, f)| *f == format)
        .map(|(p, _)| *p)
        .collect();
    files.sort();
    let named: Vec<(&String, Option<&'static str>)> =
        files.iter().map(|p| (*p, split_of(p))).collect();
    let mut out = Vec::new();
    if named.iter().all(|(_, s)| s.is_none()) {
        out.push(Split {
            name: "train".into(),
            files: files.iter().map(|p| (*p).clone()).collect(),
        });
        return out;
    }
    for split in ["train", "validation", "test"] {
        let files: Vec<String> = named
            .iter()
            .filter(|(_, s)| *s == Some(split))
            .map(|(p, _)| (*p).clone())
            .collect();
        if !files.is_empty() {
            out.push(Split {
                name: split.into(),
                files,
            });
        }
    }
    out
}

const KEYWORDS: [(&str, &[&str]); 3] = [
    ("train", &["train", "training"]),
    ("validation", &["validation", "valid", "val", "dev"]),
    ("test", &["test", "testing", "eval", "evaluation"]),
];

/// The split a path names: a keyword as a whole word of a folder or of the file name (words
/// are separated by `-`, `_`, `.`, ` ` and digits).
fn split_of(path: &str) -> Option<&'static str> {
    // The file name first, then folders from the nearest.
    for part in path.rsplit('/') {
        for word in part
            .split(|c: char| c == '-' || c == '_' || c == '.' || c == ' ' || c.is_ascii_digit())
            .filter(|w| !w.is_empty())
        {
            let word = word.to_ascii_lowercase();
            for (split, words) in KEYWORDS {
                if words.contains(&word.as_str()) {
                    return Some(split);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn files_named_by_split() {
        let s = splits(&paths(&[
            "README.md",
            ".gitattributes",
            "data/train-00000-of-00002.parquet",
            "data/train-00001-of-00002.parquet",
            "data/test-00000-of-00001.parquet",
            "data/validation-00000-of-00001.parquet",
        ]));
        let names: Vec<_> = s.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["train", "validation", "test"]);
        assert_eq!(s[0].files.len(), 2);
    }

    #[test]
    fn folders_name_splits_and_unnamed_files_are_train() {
        let s = splits(&paths(&["train/a.csv", "dev/b.csv"]));
        assert_eq!(s[1].name, "validation");
        let s = splits(&paths(&["data.jsonl", "more.jsonl"]));
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].name, "train");
        assert_eq!(s[0].files, ["data.jsonl", "more.jsonl"]);
    }

    #[test]
    fn the_most_common_format_wins_and_words_must_be_whole() {
        let s = splits(&paths(&["a.csv", "b.csv", "c.parquet", "contest.csv"]));
        assert_eq!(s[0].files, ["a.csv", "b.csv", "contest.csv"]);
        assert!(splits(&paths(&["model.safetensors"])).is_empty());
    }
}
