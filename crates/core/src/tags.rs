//! The tags in use, by type (`/api/models-tags-by-type`, `/api/datasets-tags-by-type`): what
//! the public repos of one kind listed on this node carry, grouped as the Hub groups them —
//! `pipeline_tag`, `library`, `license`, `dataset`, and for datasets `task_categories`,
//! `task_ids`, `size_categories`. The Hub answers its fixed vocabulary; a node answers the
//! tags its repos use (at most [`MAX_REPOS`] repos are read).

use hub_protocol::repo::RepoType;
use hub_search::{ListQuery, SearchError, SearchIndex};
use std::collections::BTreeMap;

/// Repos read at most for one answer.
pub const MAX_REPOS: usize = 10_000;

/// One tag: its id as it appears in `tags`, a label, and its type.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Tag {
    pub id: String,
    pub label: String,
    pub kind: &'static str,
}

/// The prefixed tag types (`license:mit` is a `license` tag labelled `mit`).
const PREFIXED: [(&str, &str); 5] = [
    ("license:", "license"),
    ("dataset:", "dataset"),
    ("task_categories:", "task_categories"),
    ("task_ids:", "task_ids"),
    ("size_categories:", "size_categories"),
];

/// `text-generation` → `Text Generation`.
fn label_of(id: &str) -> String {
    id.split(['-', '_'])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The tags of the public repos of `kind`, by type, each type sorted by id.
pub fn tags_by_type(
    search: &SearchIndex,
    kind: RepoType,
) -> Result<BTreeMap<&'static str, Vec<Tag>>, SearchError> {
    let mut seen: BTreeMap<&'static str, BTreeMap<String, Tag>> = BTreeMap::new();
    let mut add = |kind: &'static str, id: &str, label: String| {
        seen.entry(kind)
            .or_default()
            .entry(id.to_owned())
            .or_insert(Tag {
                id: id.to_owned(),
                label,
                kind,
            });
    };
    let mut query = ListQuery::new(kind);
    let mut read = 0;
    loop {
        let page = search.query(&query)?;
        for doc in &page.items {
            if let Some(p) = &doc.pipeline_tag {
                add("pipeline_tag", p, label_of(p));
            }
            if let Some(l) = &doc.library_name {
                add("library", l, l.clone());
            }
            for tag in &doc.tags {
                if let Some((prefix, kind)) = PREFIXED.iter().find(|(p, _)| tag.starts_with(p)) {
                    add(kind, tag, tag[prefix.len()..].to_owned());
                }
            }
        }
        read += page.items.len();
        match page.next_offset {
            Some(next) if read < MAX_REPOS => query.offset = next,
            _ => break,
        }
    }
    Ok(seen
        .into_iter()
        .map(|(k, tags)| (k, tags.into_values().collect()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_protocol::repo::RepoId;
    use hub_search::RepoDoc;

    #[test]
    fn tags_are_grouped_by_type_from_public_repos() {
        let dir = tempfile::tempdir().unwrap();
        let search = SearchIndex::open(dir.path()).unwrap();
        let mut doc = RepoDoc::new(RepoId::parse(RepoType::Dataset, "a/d").unwrap());
        doc.tags = vec![
            "task_categories:text-classification".into(),
            "license:mit".into(),
            "en".into(),
        ];
        let mut hidden = RepoDoc::new(RepoId::parse(RepoType::Dataset, "a/p").unwrap());
        hidden.private = true;
        hidden.tags = vec!["license:secret".into()];
        search.upsert_many([doc, hidden]).unwrap();
        let got = tags_by_type(&search, RepoType::Dataset).unwrap();
        assert_eq!(got["license"].len(), 1);
        assert_eq!(got["license"][0].label, "mit");
        assert_eq!(
            got["task_categories"][0].id,
            "task_categories:text-classification"
        );
        assert!(tags_by_type(&search, RepoType::Model).unwrap().is_empty());
        assert_eq!(label_of("text-generation"), "Text Generation");
    }
}
