//! Model cards: the README's front matter (parsed by `hub-search`, as the listing does) for
//! the metadata panel, and its Markdown rendered to HTML that is safe to put in a page.
//!
//! Rendering is pulldown-cmark (CommonMark with tables, strikethrough, task lists, footnotes),
//! then ammonia's allow list: only formatting tags and attributes stay, URLs keep only the
//! `http`, `https` and `mailto` schemes (so `javascript:` links lose their `href`), and every
//! link gets `rel="noopener noreferrer nofollow"`. Raw HTML in the Markdown passes through the
//! same filter, so a `<script>`, an `onerror=` or an `<iframe>` never reaches the page.

use pulldown_cmark::{Options, Parser};
use serde_json::{Map, Value};
use std::collections::HashSet;

/// The README's body, after its front matter (`---` … `---`) if it has one.
pub(crate) fn body(readme: &str) -> &str {
    let text = readme.strip_prefix('\u{feff}').unwrap_or(readme);
    let Some(rest) = text
        .strip_prefix("---\n")
        .or_else(|| text.strip_prefix("---\r\n"))
    else {
        return text;
    };
    let mut offset = 0;
    for line in rest.split_inclusive('\n') {
        offset += line.len();
        if line.trim_end() == "---" {
            return &rest[offset..];
        }
    }
    text
}

/// Markdown to sanitised HTML.
pub(crate) fn render(markdown: &str) -> String {
    let options = Options::ENABLE_TABLES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_TASKLISTS
        | Options::ENABLE_FOOTNOTES;
    let mut html = String::with_capacity(markdown.len() * 3 / 2);
    pulldown_cmark::html::push_html(&mut html, Parser::new_ext(markdown, options));
    ammonia::Builder::default()
        .url_schemes(HashSet::from(["http", "https", "mailto"]))
        .link_rel(Some("noopener noreferrer nofollow"))
        .clean(&html)
        .to_string()
}

/// The metadata panel: the front matter's well-known keys, each as a list of strings.
pub(crate) fn panel(card_data: &Map<String, Value>) -> Vec<(&'static str, Vec<String>)> {
    const KEYS: [(&str, &str); 8] = [
        ("license", "License"),
        ("pipeline_tag", "Pipeline"),
        ("library_name", "Library"),
        ("base_model", "Base model"),
        ("datasets", "Datasets"),
        ("language", "Languages"),
        ("tags", "Tags"),
        ("metrics", "Metrics"),
    ];
    KEYS.iter()
        .filter_map(|(key, label)| {
            let values: Vec<String> = match card_data.get(*key)? {
                Value::Array(items) => items.iter().map(text).collect(),
                Value::Null => return None,
                other => vec![text(other)],
            };
            (!values.is_empty()).then_some((*label, values))
        })
        .collect()
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_matter_is_cut_from_the_body() {
        assert_eq!(body("---\nlicense: mit\n---\n# Hi\n"), "# Hi\n");
        assert_eq!(body("# No front matter\n"), "# No front matter\n");
        assert_eq!(body("---\nunterminated\n"), "---\nunterminated\n");
    }

    #[test]
    fn markdown_renders_and_scripts_do_not() {
        let html = render(
            "# Title\n\n[x](javascript:alert(1)) [ok](https://example.org)\n\n\
             <script>alert(1)</script><img src=x onerror=alert(1)>\
             <iframe src=\"https://evil\"></iframe><a href=\"JaVaScRiPt:alert(1)\">y</a>\n\n\
             | a | b |\n|---|---|\n| 1 | 2 |\n",
        );
        assert!(html.contains("<h1>Title</h1>"), "{html}");
        assert!(html.contains("<table>"), "{html}");
        assert!(html.contains("href=\"https://example.org\""), "{html}");
        let lower = html.to_lowercase();
        for bad in ["<script", "javascript:", "onerror", "<iframe"] {
            assert!(!lower.contains(bad), "{bad} survived: {html}");
        }
    }

    #[test]
    fn panel_lists_known_keys() {
        let data: Map<String, Value> = serde_json::from_str(
            r#"{"license":"apache-2.0","tags":["a","b"],"datasets":["x/y"],"other":1}"#,
        )
        .unwrap();
        let p = panel(&data);
        assert_eq!(p[0], ("License", vec!["apache-2.0".to_owned()]));
        assert!(p.iter().any(|(k, v)| *k == "Tags" && v.len() == 2));
        assert_eq!(p.len(), 3);
    }
}
