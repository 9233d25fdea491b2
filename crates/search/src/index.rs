//! The on-disk listing index: a tantivy index of [`RepoDoc`]s.
//!
//! # Design
//!
//! - **One writer, synchronous commits.** tantivy allows one `IndexWriter` per index; ours sits
//!   behind a `Mutex` inside [`SearchIndex`] (one indexing thread, one merge thread, the
//!   15 MB minimum arena). Every [`SearchIndex::upsert`] / [`SearchIndex::remove`] commits and
//!   reloads the reader before returning, so the next query sees it and a restart keeps it.
//!   Bulk (re)indexing should use [`SearchIndex::upsert_many`]: one commit for many docs.
//! - **Filtering in tantivy, ordering in Rust.** Kind, author, visibility, filters and the
//!   substring search are term/regex queries on raw (untokenised) fields. The matches are
//!   collected with their sort value (a fast field) and their key (a string fast field), then
//!   sorted by (value descending, repo id ascending) and paged. Breaking ties by id keeps
//!   `offset` pagination stable across merges, which tantivy's doc-address order is not. The
//!   cost is O(matches) per query, fine for the repo counts of one node; stored documents are
//!   read only for the page returned.
//! - **Substring search** (as the Hub's `search=`): a `RegexQuery` `.*<needle>.*` over a raw
//!   field holding the lowercased `namespace/name`. Repo ids only contain `[a-z0-9._-/]` once
//!   lowercased, so a needle with any other character cannot match and returns an empty page
//!   without reaching tantivy; `.` and `-` are escaped; the needle is bounded by the longest
//!   possible id. An n-gram tokenizer would make long needles cheaper but grows the index
//!   several-fold and needs a phrase query for needles longer than n; the regex walks the term
//!   dictionary (one term per repo), which is cheap at our sizes.
//! - **Downloads in a side map.** [`SearchIndex::set_downloads`] only writes an in-memory map
//!   (O(1), no commit); queries and [`SearchIndex::get`] read counts through it, so sorting by
//!   downloads sees the new count at once. The map is folded into the index (stored document
//!   and fast field rewritten) on the next commit of any write, on [`SearchIndex::flush`], when
//!   it reaches [`DOWNLOADS_FLUSH_THRESHOLD`] entries, and on drop. A crash loses at most the
//!   counts set since the last fold. An upsert replaces the whole document, its `downloads`
//!   included: callers that do not track downloads read the current value with `get` first.
//! - **Visibility** is a raw field, `public` or `private:<namespace>`, so "public, or private
//!   in one of these namespaces" is one `Should` over terms.

mod collect;

use crate::doc::{ListQuery, MAX_LIMIT, Page, RepoDoc, Sort};
use collect::{Hit, SortCollector, SortValue};
use hub_protocol::name::MAX_NAME_LEN;
use hub_protocol::repo::RepoId;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};
use tantivy::collector::TopDocs;
use tantivy::directory::MmapDirectory;
use tantivy::indexer::IndexWriterOptions;
use tantivy::query::{BooleanQuery, Occur, Query, RegexQuery, TermQuery};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, Value as _,
};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, TantivyDocument, Term};

/// Pending download counts that trigger a fold into the index from `set_downloads`.
pub const DOWNLOADS_FLUSH_THRESHOLD: usize = 1024;

/// The writer's indexing arena (tantivy's minimum).
const WRITER_ARENA_BYTES: usize = 15_000_000;

/// The longest `search` string that could match: `namespace/name`.
const MAX_SEARCH_LEN: usize = 2 * MAX_NAME_LEN + 1;

/// The term a gated repo carries in the tags field, for `gated=true|false` (no card tag can
/// be it: tags equal to it are not indexed).
const GATED_TERM: &str = "\u{1}gated";

/// The most `filters` in one query.
pub const MAX_FILTERS: usize = 64;

/// The most namespaces in `include_private_of`.
pub const MAX_PRIVATE_NAMESPACES: usize = 4096;

/// Deepest `card_data` accepted (serde_json reads back at most 128 levels).
const MAX_CARD_DEPTH: usize = 100;

/// The largest stored document accepted, in bytes of JSON.
const MAX_DOC_BYTES: usize = 16 << 20;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Errors of [`SearchIndex`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SearchError {
    #[error("open search index at {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: BoxError,
    },
    #[error("write search index")]
    Write(#[source] BoxError),
    #[error("read search index")]
    Read(#[source] BoxError),
    #[error("stored document {key} is corrupt")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("document for {repo} rejected: {reason}")]
    InvalidDoc { repo: String, reason: &'static str },
    #[error("invalid query: {0}")]
    InvalidQuery(&'static str),
}

fn write_err(e: impl Into<BoxError>) -> SearchError {
    SearchError::Write(e.into())
}

fn read_err(e: impl Into<BoxError>) -> SearchError {
    SearchError::Read(e.into())
}

#[derive(Debug, Clone, Copy)]
struct Fields {
    /// `type/namespace/name`: identity, deletes, tie-breaks (indexed, fast).
    key: Field,
    kind: Field,
    /// Lowercased namespace.
    author: Field,
    /// Lowercased `namespace/name`, for substring search.
    id_lc: Field,
    /// `public` or `private:<namespace>`.
    visibility: Field,
    /// Tags plus `pipeline_tag` and `library_name`.
    tags: Field,
    downloads: Field,
    likes: Field,
    created_at: Field,
    last_modified: Field,
    /// The whole [`RepoDoc`] as JSON (stored only).
    doc: Field,
}

const F_DOWNLOADS: &str = "downloads";
const F_LIKES: &str = "likes";
const F_CREATED_AT: &str = "created_at";
const F_LAST_MODIFIED: &str = "last_modified";
const F_KEY: &str = "key";

impl Fields {
    fn schema() -> (Schema, Fields) {
        let mut b = Schema::builder();
        let fields = Fields {
            key: b.add_text_field(F_KEY, STRING | FAST),
            kind: b.add_text_field("kind", STRING),
            author: b.add_text_field("author", STRING),
            id_lc: b.add_text_field("id_lc", STRING),
            visibility: b.add_text_field("visibility", STRING),
            tags: b.add_text_field("tags", STRING),
            downloads: b.add_u64_field(F_DOWNLOADS, FAST | INDEXED),
            likes: b.add_u64_field(F_LIKES, FAST),
            created_at: b.add_i64_field(F_CREATED_AT, FAST),
            last_modified: b.add_i64_field(F_LAST_MODIFIED, FAST),
            doc: b.add_text_field("doc", STORED),
        };
        (b.build(), fields)
    }
}

/// The listing index. Blocking; `Send + Sync`; share it in an `Arc`.
pub struct SearchIndex {
    path: PathBuf,
    reader: IndexReader,
    writer: Mutex<IndexWriter>,
    fields: Fields,
    /// Download counts not yet folded into the index, by key.
    pending_downloads: RwLock<HashMap<String, u64>>,
}

impl std::fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchIndex")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn key_of(id: &RepoId) -> String {
    id.to_string()
}

impl SearchIndex {
    /// Opens the index in `dir`, creating the directory and an empty index if needed.
    ///
    /// Fails if another `SearchIndex` (in this or another process) has the directory open, or
    /// if the directory holds an index with another schema (it is derived data: delete it and
    /// reindex).
    pub fn open(dir: &Path) -> Result<Self, SearchError> {
        let open_err = |e: BoxError| SearchError::Open {
            path: dir.to_owned(),
            source: e,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.into()))?;
        let (schema, fields) = Fields::schema();
        let directory = MmapDirectory::open(dir).map_err(|e| open_err(e.into()))?;
        let index = Index::open_or_create(directory, schema).map_err(|e| open_err(e.into()))?;
        let writer = index
            .writer_with_options(
                IndexWriterOptions::builder()
                    .num_worker_threads(1)
                    .num_merge_threads(1)
                    .memory_budget_per_thread(WRITER_ARENA_BYTES)
                    .build(),
            )
            .map_err(|e| open_err(e.into()))?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(|e| open_err(e.into()))?;
        Ok(Self {
            path: dir.to_owned(),
            reader,
            writer: Mutex::new(writer),
            fields,
            pending_downloads: RwLock::new(HashMap::new()),
        })
    }

    /// The directory the index lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many repos (of all kinds, private included) the index holds.
    pub fn len(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Whether the index holds no repo (a node may then rebuild it from its repos).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds `doc`, replacing any document with the same id. Visible to the next query.
    #[tracing::instrument(skip_all, fields(repo = %doc.id))]
    pub fn upsert(&self, doc: RepoDoc) -> Result<(), SearchError> {
        self.upsert_many(std::iter::once(doc))
    }

    /// [`Self::upsert`] for many documents with a single commit (bulk indexing). Validates all
    /// documents before writing any.
    pub fn upsert_many(&self, docs: impl IntoIterator<Item = RepoDoc>) -> Result<(), SearchError> {
        let prepared = docs
            .into_iter()
            .map(|doc| self.prepare(&doc).map(|d| (key_of(&doc.id), d)))
            .collect::<Result<Vec<_>, _>>()?;
        if prepared.is_empty() {
            return Ok(());
        }
        let mut writer = self.lock_writer();
        let mut touched = HashSet::new();
        for (key, doc) in prepared {
            writer.delete_term(Term::from_field_text(self.fields.key, &key));
            writer.add_document(doc).map_err(write_err)?;
            touched.insert(key);
        }
        self.commit(&mut writer, &touched)
    }

    /// Removes the repo's document, if any. Visible to the next query.
    #[tracing::instrument(skip_all, fields(repo = %id))]
    pub fn remove(&self, id: &RepoId) -> Result<(), SearchError> {
        let key = key_of(id);
        let mut writer = self.lock_writer();
        writer.delete_term(Term::from_field_text(self.fields.key, &key));
        self.commit(&mut writer, &HashSet::from([key]))
    }

    /// Sets a repo's download count. Cheap: it updates an in-memory map that queries read
    /// through, folded into the index by the next write, [`Self::flush`], drop, or here once
    /// [`DOWNLOADS_FLUSH_THRESHOLD`] counts are pending (then this call commits). A count for
    /// a repo not in the index is dropped at the next fold.
    pub fn set_downloads(&self, id: &RepoId, downloads: u64) -> Result<(), SearchError> {
        let pending = {
            let mut map = self.write_pending();
            map.insert(key_of(id), downloads);
            map.len()
        };
        if pending >= DOWNLOADS_FLUSH_THRESHOLD {
            self.flush()?;
        }
        Ok(())
    }

    /// Folds pending download counts into the index and commits.
    pub fn flush(&self) -> Result<(), SearchError> {
        if self.read_pending().is_empty() {
            return Ok(());
        }
        let mut writer = self.lock_writer();
        self.commit(&mut writer, &HashSet::new())
    }

    /// The repo's document (with its current download count), if indexed.
    pub fn get(&self, id: &RepoId) -> Result<Option<RepoDoc>, SearchError> {
        let key = key_of(id);
        let pending = self.read_pending();
        let searcher = self.reader.searcher();
        let mut doc = self.load_by_key(&searcher, &key)?;
        if let (Some(doc), Some(&n)) = (doc.as_mut(), pending.get(&key)) {
            doc.downloads = n;
        }
        Ok(doc)
    }

    /// One page of repos matching `q`.
    pub fn query(&self, q: &ListQuery) -> Result<Page, SearchError> {
        let empty = Page {
            items: Vec::new(),
            next_offset: None,
            total: 0,
        };
        let Some(query) = self.build_query(q)? else {
            return Ok(empty);
        };
        // Held until the counts are applied, so a concurrent fold cannot clear a count between
        // our taking the searcher (which predates the fold) and our reading the map.
        let pending = self.read_pending();
        let searcher = self.reader.searcher();
        let value = match q.sort {
            None => SortValue::None,
            Some(Sort::Downloads) => SortValue::U64(F_DOWNLOADS),
            Some(Sort::Likes) => SortValue::U64(F_LIKES),
            Some(Sort::LastModified) => SortValue::I64(F_LAST_MODIFIED),
            Some(Sort::CreatedAt) => SortValue::I64(F_CREATED_AT),
        };
        let mut hits: Vec<Hit> = searcher
            .search(&query, &SortCollector { key: F_KEY, value })
            .map_err(read_err)?;
        if q.sort == Some(Sort::Downloads) {
            for hit in &mut hits {
                if let Some(&n) = pending.get(&hit.key) {
                    hit.value = n;
                }
            }
        }
        hits.sort_unstable_by(|a, b| b.value.cmp(&a.value).then_with(|| a.key.cmp(&b.key)));
        let total = hits.len();
        let limit = q.limit.min(MAX_LIMIT);
        let start = q.offset.min(total);
        let end = start.saturating_add(limit).min(total);
        let mut items = Vec::with_capacity(end - start);
        for hit in &hits[start..end] {
            let stored: TantivyDocument = searcher.doc(hit.address).map_err(read_err)?;
            let mut doc = self.decode(&stored, &hit.key)?;
            if let Some(&n) = pending.get(&hit.key) {
                doc.downloads = n;
            }
            items.push(doc);
        }
        let next_offset = (end < total && limit > 0).then_some(end);
        Ok(Page {
            items,
            next_offset,
            total,
        })
    }

    /// The tantivy query for `q`, or `None` when nothing can match.
    fn build_query(&self, q: &ListQuery) -> Result<Option<Box<dyn Query>>, SearchError> {
        let f = &self.fields;
        if q.filters.len() > MAX_FILTERS {
            return Err(SearchError::InvalidQuery("too many filters"));
        }
        if q.include_private_of.len() > MAX_PRIVATE_NAMESPACES {
            return Err(SearchError::InvalidQuery("too many namespaces"));
        }
        let term = |field: Field, text: &str| -> Box<dyn Query> {
            Box::new(TermQuery::new(
                Term::from_field_text(field, text),
                IndexRecordOption::Basic,
            ))
        };
        let mut must = vec![term(f.kind, q.kind.as_str())];

        let mut visible = vec![(Occur::Should, term(f.visibility, "public"))];
        for ns in &q.include_private_of {
            visible.push((Occur::Should, term(f.visibility, &format!("private:{ns}"))));
        }
        must.push(Box::new(BooleanQuery::new(visible)));

        if let Some(author) = &q.author {
            must.push(term(f.author, &author.to_ascii_lowercase()));
        }
        for filter in &q.filters {
            must.push(term(f.tags, filter));
        }
        let mut must_not = Vec::new();
        match q.gated {
            Some(true) => must.push(term(f.tags, GATED_TERM)),
            Some(false) => must_not.push(term(f.tags, GATED_TERM)),
            None => {}
        }
        if let Some(search) = q.search.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            let Some(pattern) = substring_pattern(search) else {
                return Ok(None);
            };
            let regex = RegexQuery::from_pattern(&pattern, f.id_lc)
                .map_err(|_| SearchError::InvalidQuery("search string"))?;
            must.push(Box::new(regex));
        }
        Ok(Some(Box::new(BooleanQuery::new(
            must.into_iter()
                .map(|q| (Occur::Must, q))
                .chain(must_not.into_iter().map(|q| (Occur::MustNot, q)))
                .collect(),
        ))))
    }

    /// Validates `doc` and turns it into a tantivy document.
    fn prepare(&self, doc: &RepoDoc) -> Result<TantivyDocument, SearchError> {
        let invalid = |reason| SearchError::InvalidDoc {
            repo: doc.id.to_string(),
            reason,
        };
        if json_depth(&doc.card_data) > MAX_CARD_DEPTH {
            return Err(invalid("card data is nested too deep"));
        }
        let json = serde_json::to_string(doc).map_err(|_| invalid("not serialisable"))?;
        if json.len() > MAX_DOC_BYTES {
            return Err(invalid("document is too large"));
        }
        let f = &self.fields;
        let hub_id = doc.id.hub_id();
        let mut out = TantivyDocument::new();
        out.add_text(f.key, key_of(&doc.id));
        out.add_text(f.kind, doc.id.kind().as_str());
        out.add_text(f.author, doc.id.namespace().to_ascii_lowercase());
        out.add_text(f.id_lc, hub_id.to_ascii_lowercase());
        out.add_text(
            f.visibility,
            if doc.private {
                format!("private:{}", doc.id.namespace())
            } else {
                "public".to_owned()
            },
        );
        let tags = doc
            .tags
            .iter()
            .chain(&doc.pipeline_tag)
            .chain(&doc.library_name)
            .filter(|t| !t.is_empty() && t.len() <= crate::card::MAX_TAG_LEN);
        let mut seen = HashSet::new();
        for tag in tags {
            if seen.insert(tag.as_str()) && tag != GATED_TERM {
                out.add_text(f.tags, tag);
            }
        }
        if doc.gated.is_some() {
            out.add_text(f.tags, GATED_TERM);
        }
        out.add_u64(f.downloads, doc.downloads);
        out.add_u64(f.likes, doc.likes);
        out.add_i64(f.created_at, doc.created_at);
        out.add_i64(f.last_modified, doc.last_modified);
        out.add_text(f.doc, json);
        Ok(out)
    }

    fn decode(&self, stored: &TantivyDocument, key: &str) -> Result<RepoDoc, SearchError> {
        let json = stored
            .get_first(self.fields.doc)
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        serde_json::from_str(json).map_err(|source| SearchError::Corrupt {
            key: key.to_owned(),
            source,
        })
    }

    fn load_by_key(&self, searcher: &Searcher, key: &str) -> Result<Option<RepoDoc>, SearchError> {
        let query = TermQuery::new(
            Term::from_field_text(self.fields.key, key),
            IndexRecordOption::Basic,
        );
        let top = searcher
            .search(&query, &TopDocs::with_limit(1).order_by_score())
            .map_err(read_err)?;
        let Some((_, address)) = top.into_iter().next() else {
            return Ok(None);
        };
        let stored: TantivyDocument = searcher.doc(address).map_err(read_err)?;
        self.decode(&stored, key).map(Some)
    }

    /// Folds pending downloads (except for `touched` keys, just rewritten by the caller),
    /// commits, reloads the reader and forgets the folded counts.
    fn commit(
        &self,
        writer: &mut MutexGuard<'_, IndexWriter>,
        touched: &HashSet<String>,
    ) -> Result<(), SearchError> {
        let snapshot = self.read_pending().clone();
        let result = self.fold_and_commit(writer, touched, &snapshot);
        if let Err(e) = &result {
            tracing::warn!(error = %e, "search index commit failed; rolling back");
            if let Err(e) = writer.rollback() {
                tracing::warn!(error = %e, "search index rollback failed");
            }
            return result;
        }
        let mut pending = self.write_pending();
        // Keep counts set while we committed; an upsert's own count wins over an older one.
        pending.retain(|key, n| snapshot.get(key) != Some(n));
        Ok(())
    }

    fn fold_and_commit(
        &self,
        writer: &mut IndexWriter,
        touched: &HashSet<String>,
        snapshot: &HashMap<String, u64>,
    ) -> Result<(), SearchError> {
        let searcher = self.reader.searcher();
        for (key, &downloads) in snapshot {
            if touched.contains(key) {
                continue;
            }
            let Some(mut doc) = self.load_by_key(&searcher, key)? else {
                continue;
            };
            doc.downloads = downloads;
            let prepared = self.prepare(&doc)?;
            writer.delete_term(Term::from_field_text(self.fields.key, key));
            writer.add_document(prepared).map_err(write_err)?;
        }
        writer.commit().map_err(write_err)?;
        self.reader.reload().map_err(write_err)?;
        Ok(())
    }

    fn lock_writer(&self) -> MutexGuard<'_, IndexWriter> {
        // A panic while holding the lock leaves at most uncommitted operations, which the next
        // commit either applies or a failed one rolls back.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read_pending(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, u64>> {
        self.pending_downloads
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write_pending(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, u64>> {
        self.pending_downloads
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for SearchIndex {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::warn!(error = %e, path = %self.path.display(), "flush download counts on close");
        }
    }
}

/// `.*<needle>.*` for a case-insensitive substring of a lowercased repo id, or `None` when the
/// needle cannot occur in any repo id.
fn substring_pattern(needle: &str) -> Option<String> {
    if needle.len() > MAX_SEARCH_LEN {
        return None;
    }
    let mut pattern = String::with_capacity(needle.len() * 2 + 4);
    pattern.push_str(".*");
    for c in needle.chars() {
        match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_' | '/') => pattern.push(c),
            c @ ('.' | '-') => {
                pattern.push('\\');
                pattern.push(c);
            }
            _ => return None,
        }
    }
    pattern.push_str(".*");
    Some(pattern)
}

/// Nesting depth of a JSON object, without recursion.
fn json_depth(map: &serde_json::Map<String, serde_json::Value>) -> usize {
    use serde_json::Value;
    let mut max = 1;
    let mut stack: Vec<(&Value, usize)> = map.values().map(|v| (v, 2)).collect();
    while let Some((value, depth)) = stack.pop() {
        max = max.max(depth);
        match value {
            Value::Array(items) => stack.extend(items.iter().map(|v| (v, depth + 1))),
            Value::Object(map) => stack.extend(map.values().map(|v| (v, depth + 1))),
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substring_patterns_escape_and_reject() {
        assert_eq!(
            substring_pattern("Llama-3.1").as_deref(),
            Some(r".*llama\-3\.1.*")
        );
        assert_eq!(substring_pattern("a_b/c").as_deref(), Some(".*a_b/c.*"));
        for bad in ["a*", "(", "[a-z]", "ü", "a b", "\\d", "^a$", "a|b"] {
            assert_eq!(substring_pattern(bad), None, "{bad}");
        }
        assert!(substring_pattern(&"a".repeat(MAX_SEARCH_LEN)).is_some());
        assert_eq!(substring_pattern(&"a".repeat(MAX_SEARCH_LEN + 1)), None);
        // Every accepted pattern compiles.
        let (_, fields) = Fields::schema();
        for s in ["-", ".", "a.b-c_d/e", &"z".repeat(MAX_SEARCH_LEN)] {
            let p = substring_pattern(s).unwrap();
            RegexQuery::from_pattern(&p, fields.id_lc).unwrap();
        }
    }

    #[test]
    fn json_depth_counts_levels() {
        let v: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(r#"{"a": {"b": [1, [2]]}, "c": 1}"#).unwrap();
        assert_eq!(json_depth(&v), 5);
        assert_eq!(json_depth(&serde_json::Map::new()), 1);
    }

    #[test]
    fn search_index_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<SearchIndex>();
    }
}
