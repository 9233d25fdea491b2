//! Model cards: the YAML front matter of a repo's `README.md` and the tags the Hub derives
//! from it.
//!
//! A card's metadata is the YAML between a first line `---` (blank lines before it are
//! allowed, as in `huggingface_hub`'s `REGEX_YAML_BLOCK`) and the next line that is exactly
//! `---`. [`parse_card`] never fails: a README without front matter has empty
//! [`Card::card_data`], and one whose front matter is unterminated, too large or not valid
//! YAML has empty `card_data` and a message in [`Card::error`] (what the gateway's
//! `validate-yaml` endpoint reports).
//!
//! The README comes from a user's push, so parsing is bounded: the front matter may be at most
//! [`MAX_FRONT_MATTER_BYTES`]; the YAML is read with `saphyr-parser`'s event parser and turned
//! into JSON here (see `card/yaml.rs`), with limits on nesting depth and on the size that
//! aliases may expand to, so neither a deep document nor a "billion laughs" alias bomb can
//! exhaust the stack or memory. The README body is never copied.

mod yaml;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashSet;

/// The largest front matter accepted, in bytes (the YAML between the two `---` lines).
pub const MAX_FRONT_MATTER_BYTES: usize = 1 << 20;

/// Tags longer than this (in bytes) are dropped from [`Card::tags`].
pub const MAX_TAG_LEN: usize = 256;

/// At most this many tags are derived from one card; the rest are dropped.
pub const MAX_TAGS: usize = 1024;

/// A parsed model (or dataset, or Space) card.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Card {
    /// The front matter as JSON; empty when absent or invalid.
    pub card_data: Map<String, Value>,
    /// Tags as the Hub derives them: `tags`, `library_name`, `pipeline_tag`, `license:<x>`,
    /// each `language`, `dataset:<x>` for each of `datasets`; deduplicated, first occurrence
    /// kept.
    pub tags: Vec<String>,
    /// `pipeline_tag`, when it is a string.
    pub pipeline_tag: Option<String>,
    /// `library_name`, when it is a string.
    pub library_name: Option<String>,
    /// Why the front matter was rejected, when it was; safe to show the README's author.
    pub error: Option<String>,
}

/// Parses a README's front matter and derives its tags. Never panics, never fails.
pub fn parse_card(readme: &str) -> Card {
    let (card_data, error) = match front_matter(readme) {
        FrontMatter::Absent => (Map::new(), None),
        FrontMatter::Unterminated => (
            Map::new(),
            Some("front matter starts with '---' but has no closing '---' line".to_owned()),
        ),
        FrontMatter::TooLarge => (
            Map::new(),
            Some(format!(
                "front matter is larger than {MAX_FRONT_MATTER_BYTES} bytes"
            )),
        ),
        FrontMatter::Yaml { text, first_line } => match yaml::to_json(text) {
            Ok(None | Some(Value::Null)) => (Map::new(), None),
            Ok(Some(Value::Object(map))) => (map, None),
            Ok(Some(_)) => (
                Map::new(),
                Some("front matter must be a YAML mapping (key: value)".to_owned()),
            ),
            Err(e) => (
                Map::new(),
                Some(format!(
                    "invalid YAML in front matter: {} at line {} column {}",
                    e.message,
                    e.line + first_line - 1,
                    e.column
                )),
            ),
        },
    };
    let tags = derive_tags(&card_data);
    let string_field = |key: &str| {
        card_data
            .get(key)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= MAX_TAG_LEN)
            .map(str::to_owned)
    };
    Card {
        pipeline_tag: string_field("pipeline_tag"),
        library_name: string_field("library_name"),
        card_data,
        tags,
        error,
    }
}

/// Derives the Hub's tags from card metadata (see [`Card::tags`]).
pub fn derive_tags(card_data: &Map<String, Value>) -> Vec<String> {
    let mut tags = Tags::default();
    for (key, prefix) in [
        ("tags", ""),
        ("library_name", ""),
        ("pipeline_tag", ""),
        ("license", "license:"),
        ("language", ""),
        ("datasets", "dataset:"),
        // Dataset cards: the Hub lists these as prefixed tags.
        ("task_categories", "task_categories:"),
        ("task_ids", "task_ids:"),
        ("size_categories", "size_categories:"),
    ] {
        if let Some(value) = card_data.get(key) {
            tags.add_all(value, prefix);
        }
    }
    tags.list
}

#[derive(Default)]
struct Tags {
    list: Vec<String>,
    seen: HashSet<String>,
}

impl Tags {
    /// Adds a string, a number, or each of a list of them.
    fn add_all(&mut self, value: &Value, prefix: &str) {
        match value {
            Value::Array(items) => {
                for item in items {
                    self.add_one(item, prefix);
                }
            }
            other => self.add_one(other, prefix),
        }
    }

    fn add_one(&mut self, value: &Value, prefix: &str) {
        if self.list.len() >= MAX_TAGS {
            return;
        }
        let text = match value {
            Value::String(s) => s.trim().to_owned(),
            Value::Number(n) => n.to_string(),
            _ => return,
        };
        if text.is_empty() || prefix.len() + text.len() > MAX_TAG_LEN {
            return;
        }
        let tag = format!("{prefix}{text}");
        if self.seen.insert(tag.clone()) {
            self.list.push(tag);
        }
    }
}

enum FrontMatter<'a> {
    Absent,
    Unterminated,
    TooLarge,
    /// `first_line` is the README line (1-based) the YAML starts on.
    Yaml {
        text: &'a str,
        first_line: usize,
    },
}

/// Finds the front matter without copying or scanning more than the size limit past it.
fn front_matter(readme: &str) -> FrontMatter<'_> {
    let readme = readme.strip_prefix('\u{feff}').unwrap_or(readme);
    let bytes = readme.as_bytes();
    // Leading whitespace (blank lines included) may come before the opening `---`.
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let Some((opening, body_start)) = line_at(bytes, start) else {
        return FrontMatter::Absent;
    };
    if trim_line(opening) != b"---" {
        return FrontMatter::Absent;
    }
    let first_line = 1 + bytes[..body_start].iter().filter(|&&b| b == b'\n').count();
    let mut pos = body_start;
    while pos < bytes.len() {
        if pos - body_start > MAX_FRONT_MATTER_BYTES {
            return FrontMatter::TooLarge;
        }
        let Some((line, next)) = line_at(bytes, pos) else {
            break;
        };
        if trim_line(line) == b"---" {
            if pos - body_start > MAX_FRONT_MATTER_BYTES {
                return FrontMatter::TooLarge;
            }
            return FrontMatter::Yaml {
                // `pos` follows a '\n' (or is `body_start`, which does), so it is a char
                // boundary.
                text: &readme[body_start..pos],
                first_line,
            };
        }
        pos = next;
    }
    FrontMatter::Unterminated
}

/// The line starting at `start` (without its `\n`) and where the next line starts. Scans at most
/// [`MAX_FRONT_MATTER_BYTES`] + 1 bytes for the line end, so a README without newlines costs
/// bounded time per line.
fn line_at(bytes: &[u8], start: usize) -> Option<(&[u8], usize)> {
    if start >= bytes.len() {
        return None;
    }
    let window_end = bytes.len().min(start + MAX_FRONT_MATTER_BYTES + 1);
    match bytes[start..window_end].iter().position(|&b| b == b'\n') {
        Some(i) => Some((&bytes[start..start + i], start + i + 1)),
        None => Some((&bytes[start..window_end], window_end)),
    }
}

/// A line without trailing spaces, tabs or `\r`.
fn trim_line(line: &[u8]) -> &[u8] {
    let end = line
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t' | b'\r'))
        .map_or(0, |i| i + 1);
    &line[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn derives_tags_like_the_hub() {
        let card = parse_card(
            "---\n\
             license: apache-2.0\n\
             language:\n- en\n- fr\n\
             tags:\n- text-generation\n- llama\n\
             datasets: squad\n\
             library_name: transformers\n\
             pipeline_tag: text-generation\n\
             ---\n# My model\n",
        );
        assert_eq!(card.error, None);
        assert_eq!(
            card.tags,
            [
                "text-generation",
                "llama",
                "transformers",
                "license:apache-2.0",
                "en",
                "fr",
                "dataset:squad",
            ]
        );
        assert_eq!(card.pipeline_tag.as_deref(), Some("text-generation"));
        assert_eq!(card.library_name.as_deref(), Some("transformers"));
        assert_eq!(card.card_data["language"], json!(["en", "fr"]));
        assert_eq!(card.card_data["license"], json!("apache-2.0"));
    }

    #[test]
    fn strings_and_lists_are_both_accepted() {
        let card = parse_card(
            "---\ntags: single\nlicense: [mit, other]\nlanguage: en\ndatasets:\n  - a/b\n  - c\n---\n",
        );
        assert_eq!(
            card.tags,
            [
                "single",
                "license:mit",
                "license:other",
                "en",
                "dataset:a/b",
                "dataset:c"
            ]
        );
    }

    #[test]
    fn non_string_tag_values() {
        let card = parse_card(
            "---\ntags: [2023, true, null, {a: 1}, '  spaced  ', '']\nlicense: {x: 1}\n---\n",
        );
        assert_eq!(card.error, None);
        assert_eq!(card.tags, ["2023", "spaced"]);
    }

    #[test]
    fn no_front_matter() {
        for readme in [
            "",
            "# Title\n\ntext",
            "----\nfoo: 1\n----\n",
            "text\n---\na: 1\n---\n",
        ] {
            let card = parse_card(readme);
            assert_eq!(card, Card::default(), "{readme:?}");
        }
    }

    #[test]
    fn empty_and_leading_whitespace() {
        assert_eq!(parse_card("---\n---\nbody"), Card::default());
        assert_eq!(parse_card("---\n# only a comment\n---\n"), Card::default());
        let card = parse_card("\u{feff}\n  \n---  \r\nlicense: mit\r\n---\r\nbody");
        assert_eq!(card.error, None);
        assert_eq!(card.tags, ["license:mit"]);
        // The closing line may end the file.
        assert_eq!(parse_card("---\nlicense: mit\n---").tags, ["license:mit"]);
    }

    #[test]
    fn scalars_resolve_as_yaml_1_2_core() {
        let card = parse_card(
            "---\n\
             a: 1\nb: -2.5\nc: true\nd: ~\ne: '1'\nf: 0x1f\ng: 1e3\nh: .inf\ni: 1.0.0\n\
             j: 99999999999999999999\nk: null\nl: \"true\"\nm: !!str 3\n\
             ---\n",
        );
        assert_eq!(card.error, None);
        assert_eq!(
            Value::Object(card.card_data),
            json!({
                "a": 1, "b": -2.5, "c": true, "d": null, "e": "1", "f": 31, "g": 1000.0,
                "h": ".inf", "i": "1.0.0", "j": 1e20, "k": null, "l": "true", "m": "3",
            })
        );
    }

    #[test]
    fn nested_structures_and_aliases() {
        let card = parse_card(
            "---\n\
             base: &b {lr: 0.1, layers: [1, 2]}\n\
             copy: *b\n\
             model-index:\n  - name: m\n    results: []\n\
             1: numeric key\n\
             ---\n",
        );
        assert_eq!(card.error, None);
        assert_eq!(card.card_data["copy"], card.card_data["base"]);
        assert_eq!(
            card.card_data["model-index"],
            json!([{"name": "m", "results": []}])
        );
        assert_eq!(card.card_data["1"], json!("numeric key"));
    }

    #[test]
    fn invalid_yaml_is_reported() {
        let card = parse_card("\n---\nlicense: mit\ntags: [a, b\n---\nbody");
        assert!(card.card_data.is_empty());
        assert!(card.tags.is_empty());
        let error = card.error.expect("an error");
        assert!(
            error.starts_with("invalid YAML in front matter: "),
            "{error}"
        );
        assert!(error.contains("line "), "{error}");

        let card = parse_card("---\n- just\n- a list\n---\n");
        assert!(card.card_data.is_empty());
        assert!(card.error.unwrap().contains("mapping"));

        let card = parse_card("---\na: *nope\n---\n");
        assert!(
            card.error.as_deref().unwrap_or_default().contains("anchor"),
            "{card:?}"
        );
    }

    #[test]
    fn unterminated_front_matter() {
        let card = parse_card("---\nlicense: mit\n# no closing line\n");
        assert!(card.card_data.is_empty());
        assert!(card.error.unwrap().contains("closing"));
        assert!(parse_card("---").error.unwrap().contains("closing"));
    }

    #[test]
    fn huge_front_matter_is_rejected() {
        let mut readme = String::from("---\n");
        while readme.len() < MAX_FRONT_MATTER_BYTES + 100 {
            readme.push_str("key_with_some_length: value with some length too\n");
        }
        readme.push_str("---\nbody\n");
        let card = parse_card(&readme);
        assert!(card.card_data.is_empty());
        assert!(card.error.unwrap().contains("larger than"));

        // One enormous line, no newline at all.
        let readme = format!("---\n{}", "x".repeat(3 * MAX_FRONT_MATTER_BYTES));
        assert!(parse_card(&readme).error.unwrap().contains("larger than"));
    }

    #[test]
    fn alias_bombs_and_deep_nesting_are_bounded() {
        let mut bomb = String::from("---\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..30 {
            let p = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        bomb.push_str("---\n");
        let card = parse_card(&bomb);
        assert!(card.card_data.is_empty());
        assert!(card.error.unwrap().contains("too large"));

        // Our depth limit, then the parser's own flow-level limit.
        for (levels, expected) in [(70, "nested too deep"), (10_000, "recursion limit")] {
            let deep = format!(
                "---\na: {}{}\n---\n",
                "[".repeat(levels),
                "]".repeat(levels)
            );
            let card = parse_card(&deep);
            assert!(card.card_data.is_empty());
            let error = card.error.unwrap();
            assert!(error.contains(expected), "{error}");
        }
        // Block-style nesting has no parser limit; ours applies.
        let mut deep = String::from("---\n");
        for level in 0..200 {
            deep.push_str(&format!("{}k{level}:\n", " ".repeat(level)));
        }
        deep.push_str("---\n");
        assert!(parse_card(&deep).error.unwrap().contains("nested too deep"));
    }

    #[test]
    fn tags_are_bounded() {
        let long = "t".repeat(MAX_TAG_LEN + 1);
        let mut readme = format!("---\npipeline_tag: {long}\ntags:\n- {long}\n");
        for i in 0..MAX_TAGS + 10 {
            readme.push_str(&format!("- t{i}\n"));
        }
        readme.push_str("---\n");
        let card = parse_card(&readme);
        assert_eq!(card.tags.len(), MAX_TAGS);
        assert_eq!(card.tags[0], "t0");
        assert_eq!(card.pipeline_tag, None);
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_text(s in "\\PC{0,400}") {
            let _ = parse_card(&s);
            let _ = parse_card(&format!("---\n{s}\n---\n"));
        }

        #[test]
        fn never_panics_on_yaml_like_text(
            s in "([-:\\[\\]{}&*!|>'\"#,?%@` \n\t]|[a-z0-9]{1,3}){0,200}"
        ) {
            let card = parse_card(&format!("---\n{s}\n---\n"));
            // Whatever came out is valid JSON that round-trips.
            let text = serde_json::to_string(&card.card_data).unwrap();
            let back: Map<String, Value> = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(back, card.card_data);
        }
    }
}
