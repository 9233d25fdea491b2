//! hub-search: the listing index behind `list_models`, `list_datasets` and `list_spaces`, and
//! the model-card parsing that feeds it.
//!
//! - [`card`]: [`parse_card`] reads a README's YAML front matter into JSON (`cardData`) and
//!   derives the Hub's tags (`license:mit`, `dataset:squad`, `en`, …); bounded and panic-free
//!   on any input.
//! - [`SearchIndex`]: a tantivy index of [`RepoDoc`]s in a directory the caller chooses (the
//!   node uses `DATA/search/`), answering [`ListQuery`]s: kind, author, case-insensitive
//!   substring of `namespace/name`, tag filters, sort, offset paging, and visibility of private
//!   repos. Its module docs explain the design (commits, substring search, download counts).
//!
//! Place in the crate graph: `protocol ← store ← repo ← {auth, search, infer} ← … ← gateway`.
//! This crate depends only on `hub-protocol` among ours; the gateway (or the node's indexer)
//! builds [`RepoDoc`]s from repos and calls the blocking methods here from `spawn_blocking`.
//! tantivy types stay out of the public API.
//!
//! ```
//! use hub_protocol::repo::{RepoId, RepoType};
//! use hub_search::{ListQuery, RepoDoc, SearchIndex, Sort, parse_card};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let index = SearchIndex::open(&dir.path().join("search")).unwrap();
//!
//! let card = parse_card("---\nlicense: mit\npipeline_tag: text-generation\n---\n# Llama\n");
//! let mut doc = RepoDoc::new(RepoId::parse(RepoType::Model, "meta/Llama-3").unwrap());
//! doc.tags = card.tags;
//! doc.pipeline_tag = card.pipeline_tag;
//! doc.card_data = card.card_data;
//! index.upsert(doc).unwrap();
//! index.set_downloads(&RepoId::parse(RepoType::Model, "meta/Llama-3").unwrap(), 42).unwrap();
//!
//! let mut q = ListQuery::new(RepoType::Model);
//! q.search = Some("LLAMA".into());
//! q.filters = vec!["license:mit".into()];
//! q.sort = Some(Sort::Downloads);
//! let page = index.query(&q).unwrap();
//! assert_eq!(page.items[0].id.hub_id(), "meta/Llama-3");
//! assert_eq!(page.items[0].downloads, 42);
//! ```

pub mod card;
mod doc;
mod index;

pub use card::{Card, parse_card};
pub use doc::{ListQuery, MAX_LIMIT, Page, RepoDoc, Sort, UnknownSort};
pub use index::{
    DOWNLOADS_FLUSH_THRESHOLD, MAX_FILTERS, MAX_PRIVATE_NAMESPACES, SearchError, SearchIndex,
};
