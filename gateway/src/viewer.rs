//! The dataset viewer API (`/datasets-server/…`), in the shape of the Hub's viewer service so
//! its clients can point their base URL here: `is-valid`, `splits`, `first-rows`, `rows`,
//! `size`, `info`, `parquet`, `search`, `filter`. HTTP only: which files make a split, how a
//! file is read and queried are `hub-viewer`'s; this module finds the dataset's files at
//! `main` (read access as for every read), hands them to it as ranges of the chunk store (LFS
//! files) or bytes (small git blobs), and renders the answers. The dataset page (`pages`)
//! shows rows through [`split_rows`].
//!
//! Every answer is computed from the files on each request (no cache, no conversion to
//! Parquet): a Parquet split costs its footers and the row groups a page touches; CSV and
//! JSON Lines splits are read from the start.

use crate::AppState;
use crate::error::AppError;
use crate::extract::Caller;
use crate::util::{blocking, endpoint};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use hub_auth::Principal;
use hub_protocol::repo::{RepoId, RepoType};
use hub_repo::{EntryKind, TreeEntry};
use hub_viewer::splits::Split;
use hub_viewer::table::{Format, Table};
use hub_viewer::{MemSource, RangeSource, SeekSource, ViewerError};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

/// Rows per page of `rows`, `search` and `filter` (the Hub's limit).
pub(crate) const MAX_PAGE: usize = 100;
/// The only config: repos without a loading script or `configs:` have this one.
pub(crate) const CONFIG: &str = "default";
/// The largest git blob read into memory as a data file (larger data files are LFS).
const MAX_BLOB: u64 = 64 * 1024 * 1024;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/datasets-server/is-valid", get(is_valid))
        .route("/datasets-server/splits", get(splits))
        .route("/datasets-server/first-rows", get(first_rows))
        .route("/datasets-server/rows", get(rows))
        .route("/datasets-server/search", get(search))
        .route("/datasets-server/filter", get(filter))
        .route("/datasets-server/size", get(size))
        .route("/datasets-server/info", get(info))
        .route("/datasets-server/parquet", get(parquet))
}

#[derive(Debug, Deserialize)]
struct Params {
    dataset: Option<String>,
    config: Option<String>,
    split: Option<String>,
    offset: Option<u64>,
    length: Option<usize>,
    query: Option<String>,
    #[serde(rename = "where")]
    where_clause: Option<String>,
    orderby: Option<String>,
}

impl Params {
    fn dataset(&self) -> Result<&str, AppError> {
        self.dataset
            .as_deref()
            .filter(|d| !d.is_empty())
            .ok_or_else(|| missing("dataset"))
    }

    fn split(&self) -> Result<&str, AppError> {
        if let Some(config) = self.config.as_deref()
            && config != CONFIG
        {
            return Err(not_found(format!("config {config:?} not found")));
        }
        self.split
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| missing("split"))
    }

    fn page(&self) -> Result<(u64, usize), AppError> {
        let length = self.length.unwrap_or(MAX_PAGE);
        if length > MAX_PAGE {
            return Err(AppError::Coded {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "InvalidParameter",
                message: format!("length must be at most {MAX_PAGE}"),
            });
        }
        Ok((self.offset.unwrap_or(0), length))
    }
}

fn missing(name: &str) -> AppError {
    AppError::Coded {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        code: "MissingRequiredParameter",
        message: format!("Parameter '{name}' is required"),
    }
}

fn not_found(message: String) -> AppError {
    AppError::Coded {
        status: StatusCode::NOT_FOUND,
        code: "ResponseNotFound",
        message,
    }
}

fn viewer_error(e: ViewerError) -> AppError {
    match e {
        ViewerError::Query(_) | ViewerError::TooManyRows(_) => AppError::Coded {
            status: StatusCode::BAD_REQUEST,
            code: "InvalidParameter",
            message: e.to_string(),
        },
        // A data file we cannot read is the dataset's problem, not the node's: say which.
        other => AppError::Coded {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "DatasetGenerationError",
            message: error_chain(&other),
        },
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A dataset's data files at `main`, once the caller may read it.
pub(crate) struct DatasetFiles {
    pub id: RepoId,
    pub commit: String,
    pub files: Vec<TreeEntry>,
    pub splits: Vec<Split>,
}

pub(crate) async fn dataset_files(
    state: &AppState,
    principal: Option<&Principal>,
    id: RepoId,
) -> Result<DatasetFiles, AppError> {
    // Rows are the files' content: a gated dataset's need a grant.
    crate::access::access(state, principal, &id, hub_core::Need::Download).await?;
    let repos = state.repos().clone();
    let id2 = id.clone();
    let (commit, files) = blocking(move || {
        let commit = repos.resolve(&id2, "main").map_err(AppError::from)?;
        let files: Vec<TreeEntry> = repos
            .list_tree(&id2, &commit, "", true)?
            .into_iter()
            .filter(|e| e.kind == EntryKind::File)
            .collect();
        Ok((commit, files))
    })
    .await?;
    let paths: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
    let splits = hub_viewer::splits::splits(&paths);
    Ok(DatasetFiles {
        id,
        commit,
        files,
        splits,
    })
}

fn dataset_id(name: &str) -> Result<RepoId, AppError> {
    let (ns, repo) = name.split_once('/').ok_or(AppError::RepoNotFound)?;
    RepoId::new(RepoType::Dataset, ns, repo).map_err(|_| AppError::RepoNotFound)
}

async fn load(
    state: &AppState,
    principal: Option<&Principal>,
    params: &Params,
) -> Result<DatasetFiles, AppError> {
    let id = dataset_id(params.dataset()?)?;
    dataset_files(state, principal, id).await
}

/// The file as a range source: an LFS object from the chunk store (only the ranges read),
/// or a git blob in memory.
fn open_source(
    state: &AppState,
    ds: &DatasetFiles,
    entry: &TreeEntry,
) -> Result<Arc<dyn RangeSource>, AppError> {
    if let Some(lfs) = &entry.lfs {
        let sha: hub_store::Sha256 = lfs
            .sha256
            .parse()
            .map_err(|_| AppError::internal(format!("bad LFS pointer in {}", entry.path)))?;
        if !state.hub().owns_lfs(&ds.id, &sha)? {
            return Err(AppError::Unavailable(format!(
                "{} is not on this node yet",
                entry.path
            )));
        }
        let reader = state.store().open_file(&sha)?;
        let len = reader.len();
        return Ok(Arc::new(SeekSource::new(reader, len)));
    }
    if entry.size > MAX_BLOB {
        return Err(AppError::Coded {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "TooBigContentError",
            message: format!("{} is too large to read outside LFS", entry.path),
        });
    }
    let (_, blob) = state.repos().file(&ds.id, &ds.commit, &entry.path)?;
    Ok(Arc::new(MemSource::new(blob)))
}

/// The table of split `split` (its files one after the other).
pub(crate) fn split_table(
    state: &AppState,
    ds: &DatasetFiles,
    split: &str,
) -> Result<Table, AppError> {
    let split = ds
        .splits
        .iter()
        .find(|s| s.name == split)
        .ok_or_else(|| not_found(format!("split {split:?} not found")))?;
    let mut tables = Vec::new();
    for path in &split.files {
        let entry = ds
            .files
            .iter()
            .find(|f| &f.path == path)
            .ok_or_else(|| AppError::internal("split file vanished"))?;
        let format = Format::of(path).ok_or_else(|| AppError::internal("not a data file"))?;
        let source = open_source(state, ds, entry)?;
        tables.push(Table::open(format, source).map_err(viewer_error)?);
    }
    Ok(Table::concat(tables))
}

fn features_json(table: &Table) -> Value {
    Value::Array(
        table
            .features()
            .iter()
            .enumerate()
            .map(|(i, f)| json!({"feature_idx": i, "name": f.name, "type": f.kind}))
            .collect(),
    )
}

fn rows_json(rows: impl IntoIterator<Item = (u64, hub_viewer::table::Row)>) -> Value {
    Value::Array(
        rows.into_iter()
            .map(|(i, row)| json!({"row_idx": i, "row": row, "truncated_cells": []}))
            .collect(),
    )
}

/// A page of a split for the dataset page: features, rows with their indices, total rows.
pub(crate) async fn split_rows(
    state: &AppState,
    ds: DatasetFiles,
    split: String,
    offset: u64,
    length: usize,
) -> Result<(Value, Vec<(u64, hub_viewer::table::Row)>, u64), AppError> {
    let state = state.clone();
    blocking(move || {
        let table = split_table(&state, &ds, &split)?;
        let rows = table.rows(offset, length).map_err(viewer_error)?;
        let total = table.num_rows().map_err(viewer_error)?;
        let indexed = rows
            .into_iter()
            .enumerate()
            .map(|(i, r)| (offset + i as u64, r))
            .collect();
        Ok((features_json(&table), indexed, total))
    })
    .await
}

async fn is_valid(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Query(params): Query<Params>,
) -> Result<Json<Value>, AppError> {
    let ds = load(&state, principal.as_ref(), &params).await?;
    let ok = !ds.splits.is_empty();
    Ok(Json(json!({
        "preview": ok,
        "viewer": ok,
        "search": ok,
        "filter": ok,
        "statistics": false,
    })))
}

async fn splits(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Query(params): Query<Params>,
) -> Result<Json<Value>, AppError> {
    let ds = load(&state, principal.as_ref(), &params).await?;
    let dataset = ds.id.hub_id();
    let splits: Vec<Value> = ds
        .splits
        .iter()
        .map(|s| json!({"dataset": dataset, "config": CONFIG, "split": s.name}))
        .collect();
    Ok(Json(json!({"splits": splits, "pending": [], "failed": []})))
}

async fn first_rows(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Query(params): Query<Params>,
) -> Result<Json<Value>, AppError> {
    let ds = load(&state, principal.as_ref(), &params).await?;
    let split = params.split()?.to_owned();
    let dataset = ds.id.hub_id();
    let (features, rows, _) = split_rows(&state, ds, split.clone(), 0, MAX_PAGE).await?;
    let n = rows.len();
    Ok(Json(json!({
        "dataset": dataset,
        "config": CONFIG,
        "split": split,
        "features": features,
        "rows": rows_json(rows),
        "truncated": n == MAX_PAGE,
    })))
}

async fn rows(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Query(params): Query<Params>,
) -> Result<Json<Value>, AppError> {
    let ds = load(&state, principal.as_ref(), &params).await?;
    let split = params.split()?.to_owned();
    let (offset, length) = params.page()?;
    let (features, rows, total) = split_rows(&state, ds, split, offset, length).await?;
    Ok(Json(json!({
        "features": features,
        "rows": rows_json(rows),
        "num_rows_total": total,
        "num_rows_per_page": MAX_PAGE,
        "partial": false,
    })))
}

enum Ask {
    Search(String),
    Filter(String, String),
}

async fn matching(
    state: &AppState,
    principal: Option<&Principal>,
    params: &Params,
    ask: Ask,
) -> Result<Json<Value>, AppError> {
    let ds = load(state, principal, params).await?;
    let split = params.split()?.to_owned();
    let (offset, length) = params.page()?;
    let state = state.clone();
    blocking(move || {
        let table = split_table(&state, &ds, &split)?;
        let m = match ask {
            Ask::Search(q) => hub_viewer::query::search(&table, &q, offset, length),
            Ask::Filter(w, o) => hub_viewer::query::filter(&table, &w, &o, offset, length),
        }
        .map_err(viewer_error)?;
        Ok(Json(json!({
            "features": features_json(&table),
            "rows": rows_json(m.rows),
            "num_rows_total": m.total,
            "num_rows_per_page": MAX_PAGE,
            "partial": false,
        })))
    })
    .await
}

async fn search(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Query(params): Query<Params>,
) -> Result<Json<Value>, AppError> {
    let q = params.query.clone().ok_or_else(|| missing("query"))?;
    matching(&state, principal.as_ref(), &params, Ask::Search(q)).await
}

async fn filter(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Query(params): Query<Params>,
) -> Result<Json<Value>, AppError> {
    let w = params.where_clause.clone().unwrap_or_default();
    let o = params.orderby.clone().unwrap_or_default();
    matching(&state, principal.as_ref(), &params, Ask::Filter(w, o)).await
}

/// Per split: rows, columns, bytes of its files.
struct SplitSize {
    name: String,
    rows: u64,
    columns: usize,
    bytes: u64,
    features: Value,
}

async fn split_sizes(state: &AppState, ds: DatasetFiles) -> Result<Vec<SplitSize>, AppError> {
    let state = state.clone();
    blocking(move || {
        let mut out = Vec::new();
        for split in &ds.splits {
            let table = split_table(&state, &ds, &split.name)?;
            let bytes = ds
                .files
                .iter()
                .filter(|f| split.files.contains(&f.path))
                .map(|f| f.lfs.as_ref().map_or(f.size, |l| l.size))
                .sum();
            let features = table
                .features()
                .iter()
                .map(|f| (f.name.clone(), f.kind.clone()))
                .collect::<serde_json::Map<_, _>>();
            out.push(SplitSize {
                name: split.name.clone(),
                rows: table.num_rows().map_err(viewer_error)?,
                columns: table.features().len(),
                bytes,
                features: Value::Object(features),
            });
        }
        Ok(out)
    })
    .await
}

async fn size(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Query(params): Query<Params>,
) -> Result<Json<Value>, AppError> {
    let ds = load(&state, principal.as_ref(), &params).await?;
    let dataset = ds.id.hub_id();
    let sizes = split_sizes(&state, ds).await?;
    let rows: u64 = sizes.iter().map(|s| s.rows).sum();
    let bytes: u64 = sizes.iter().map(|s| s.bytes).sum();
    let splits: Vec<Value> = sizes
        .iter()
        .map(|s| {
            json!({
                "dataset": dataset, "config": CONFIG, "split": s.name,
                "num_bytes_original_files": s.bytes, "num_rows": s.rows, "num_columns": s.columns,
            })
        })
        .collect();
    Ok(Json(json!({
        "size": {
            "dataset": {"dataset": dataset, "num_bytes_original_files": bytes, "num_rows": rows},
            "configs": [{
                "dataset": dataset, "config": CONFIG, "num_bytes_original_files": bytes,
                "num_rows": rows, "num_columns": sizes.first().map_or(0, |s| s.columns),
            }],
            "splits": splits,
        },
        "pending": [],
        "failed": [],
        "partial": false,
    })))
}

async fn info(
    State(state): State<AppState>,
    Caller(principal): Caller,
    Query(params): Query<Params>,
) -> Result<Json<Value>, AppError> {
    if let Some(config) = params.config.as_deref()
        && config != CONFIG
    {
        return Err(not_found(format!("config {config:?} not found")));
    }
    let ds = load(&state, principal.as_ref(), &params).await?;
    let dataset = ds.id.hub_id();
    let sizes = split_sizes(&state, ds).await?;
    let splits: serde_json::Map<String, Value> = sizes
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                json!({"name": s.name, "num_bytes": s.bytes, "num_examples": s.rows, "dataset_name": dataset}),
            )
        })
        .collect();
    Ok(Json(json!({
        "dataset_info": {
            "description": "",
            "citation": "",
            "homepage": "",
            "license": "",
            "features": sizes.first().map_or(json!({}), |s| s.features.clone()),
            "splits": splits,
            "dataset_name": dataset,
            "config_name": CONFIG,
        },
        "partial": false,
    })))
}

/// The dataset's Parquet files as they are in the repo (no conversion of other formats).
async fn parquet(
    State(state): State<AppState>,
    Caller(principal): Caller,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> Result<Json<Value>, AppError> {
    let ds = load(&state, principal.as_ref(), &params).await?;
    let dataset = ds.id.hub_id();
    let base = endpoint(&headers);
    let mut files = Vec::new();
    for split in &ds.splits {
        for path in split
            .files
            .iter()
            .filter(|p| Format::of(p) == Some(Format::Parquet))
        {
            let size = ds
                .files
                .iter()
                .find(|f| &f.path == path)
                .map_or(0, |f| f.lfs.as_ref().map_or(f.size, |l| l.size));
            files.push(json!({
                "dataset": dataset,
                "config": CONFIG,
                "split": split.name,
                "url": format!("{base}/datasets/{dataset}/resolve/{}/{path}", ds.commit),
                "filename": path.rsplit('/').next().unwrap_or(path),
                "size": size,
            }));
        }
    }
    Ok(Json(
        json!({"parquet_files": files, "pending": [], "failed": [], "partial": false}),
    ))
}

/// A viewer error as one line for a page.
pub(crate) fn error_text(e: &ViewerError) -> String {
    error_chain(e)
}
