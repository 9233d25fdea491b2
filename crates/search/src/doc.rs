//! The documents the index holds and the queries it answers.

use hub_protocol::repo::{RepoId, RepoType};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use std::str::FromStr;

/// The most items one [`ListQuery`] returns; larger limits are clamped to this.
pub const MAX_LIMIT: usize = 1000;

/// One repo as the listing endpoints show it. Stored whole in the index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepoDoc {
    /// Serialised as `type/namespace/name`.
    #[serde(with = "repo_id_serde")]
    pub id: RepoId,
    pub private: bool,
    /// Tags as [`crate::card::parse_card`] derives them (plus any the caller adds).
    pub tags: Vec<String>,
    pub pipeline_tag: Option<String>,
    pub library_name: Option<String>,
    /// The card's front matter as JSON.
    pub card_data: Map<String, Value>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub last_modified: i64,
    pub downloads: u64,
    pub likes: u64,
    /// The commit the document describes.
    pub sha: String,
    /// The gate's mode (`auto` or `manual`); `None`: not gated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gated: Option<String>,
}

impl RepoDoc {
    /// A document with no tags, card data, counts or times.
    pub fn new(id: RepoId) -> Self {
        Self {
            id,
            private: false,
            tags: Vec::new(),
            pipeline_tag: None,
            library_name: None,
            card_data: Map::new(),
            created_at: 0,
            last_modified: 0,
            downloads: 0,
            likes: 0,
            sha: String::new(),
            gated: None,
        }
    }
}

/// Orders for [`ListQuery::sort`]; all are descending, ties broken by repo id ascending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sort {
    Downloads,
    Likes,
    LastModified,
    CreatedAt,
}

impl Sort {
    /// The Hub's spelling: `downloads`, `likes`, `lastModified`, `createdAt`.
    pub fn as_str(self) -> &'static str {
        match self {
            Sort::Downloads => "downloads",
            Sort::Likes => "likes",
            Sort::LastModified => "lastModified",
            Sort::CreatedAt => "createdAt",
        }
    }
}

impl fmt::Display for Sort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `sort` value that is not one of [`Sort`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown sort key; expected downloads, likes, lastModified or createdAt")]
pub struct UnknownSort;

impl FromStr for Sort {
    type Err = UnknownSort;

    /// Accepts the Hub's camelCase names and their snake_case forms.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "downloads" => Ok(Sort::Downloads),
            "likes" => Ok(Sort::Likes),
            "lastModified" | "last_modified" => Ok(Sort::LastModified),
            "createdAt" | "created_at" => Ok(Sort::CreatedAt),
            _ => Err(UnknownSort),
        }
    }
}

/// What `list_models` / `list_datasets` / `list_spaces` ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub kind: RepoType,
    /// Only repos of this namespace (ASCII case-insensitive).
    pub author: Option<String>,
    /// Case-insensitive substring of `namespace/name`.
    pub search: Option<String>,
    /// Every one must be among the repo's tags, `pipeline_tag` or `library_name` (exact).
    pub filters: Vec<String>,
    /// `None`: by repo id ascending.
    pub sort: Option<Sort>,
    /// Clamped to [`MAX_LIMIT`].
    pub limit: usize,
    pub offset: usize,
    /// Namespaces whose private repos the caller may see (exact names). Private repos of any
    /// other namespace are never returned.
    pub include_private_of: Vec<String>,
    /// `Some(true)`: only gated repos; `Some(false)`: only repos that are not gated.
    pub gated: Option<bool>,
}

impl ListQuery {
    /// Everything public of one kind, by id, [`MAX_LIMIT`] at a time.
    pub fn new(kind: RepoType) -> Self {
        Self {
            kind,
            author: None,
            search: None,
            filters: Vec::new(),
            sort: None,
            limit: MAX_LIMIT,
            offset: 0,
            include_private_of: Vec::new(),
            gated: None,
        }
    }
}

/// One page of results.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub items: Vec<RepoDoc>,
    /// The offset of the next page; `None` on the last page.
    pub next_offset: Option<usize>,
    /// How many repos matched in all.
    pub total: usize,
}

mod repo_id_serde {
    use hub_protocol::repo::{RepoId, RepoType};
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(id: &RepoId, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(id)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<RepoId, D::Error> {
        let text = String::deserialize(deserializer)?;
        let (kind, rest) = text
            .split_once('/')
            .ok_or_else(|| D::Error::custom("repo id must be 'type/namespace/name'"))?;
        let kind: RepoType = kind.parse().map_err(D::Error::custom)?;
        RepoId::parse(kind, rest).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_doc_round_trips_through_json() {
        let mut doc = RepoDoc::new(RepoId::parse(RepoType::Dataset, "alice/squad").unwrap());
        doc.tags = vec!["en".into()];
        doc.created_at = -5;
        let text = serde_json::to_string(&doc).unwrap();
        assert!(text.contains("\"dataset/alice/squad\""), "{text}");
        let back: RepoDoc = serde_json::from_str(&text).unwrap();
        assert_eq!(back, doc);
        assert!(serde_json::from_str::<RepoDoc>(&text.replace("dataset/", "bogus/")).is_err());
    }

    #[test]
    fn sort_names() {
        for sort in [
            Sort::Downloads,
            Sort::Likes,
            Sort::LastModified,
            Sort::CreatedAt,
        ] {
            assert_eq!(sort.as_str().parse::<Sort>(), Ok(sort));
        }
        assert_eq!("created_at".parse::<Sort>(), Ok(Sort::CreatedAt));
        assert_eq!("trending".parse::<Sort>(), Err(UnknownSort));
    }
}
