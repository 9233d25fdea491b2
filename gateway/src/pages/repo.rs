//! A repo's pages: the card (with a dataset's rows), the file browser, the file view,
//! commit history and a commit's diff.

use super::card;
use super::render::ctx;
use super::render::{PageError, page};
use super::session::Viewer;
use crate::AppState;
use crate::access::read_access;
use crate::error::AppError;
use crate::util::{blocking, endpoint};
use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use hub_core::Change;
use hub_protocol::repo::{RepoId, RepoType};
use hub_repo::{CommitInfo, EntryKind, RepoError, TreeEntry};
use hub_viewer::{MemSource, RangeSource, SeekSource};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// Rows per page of the dataset table.
const ROWS_PAGE: usize = 20;
/// Commits per page of the history.
const COMMITS_PAGE: usize = 50;
/// The largest text file shown inline, and the largest side of a diff.
const MAX_TEXT: u64 = 1024 * 1024;
const MAX_DIFF_SIDE: u64 = 256 * 1024;
/// Files diffed per commit page, and diff lines shown per file.
const MAX_DIFF_FILES: usize = 50;
const MAX_DIFF_LINES: usize = 2000;
/// Tensors listed in a weight file's header view.
const MAX_TENSORS_SHOWN: usize = 5000;
/// The largest README rendered.
const MAX_README: u64 = 1024 * 1024;

#[derive(Debug, Deserialize)]
pub(crate) struct RepoParams {
    pub ns: String,
    pub name: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RevParams {
    ns: String,
    name: String,
    rev: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct PathParams {
    ns: String,
    name: String,
    rev: String,
    path: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ShaParams {
    ns: String,
    name: String,
    sha: String,
}

/// The repo as every page's header shows it.
#[derive(Debug, Serialize, Clone)]
pub(crate) struct RepoCtx {
    pub id: String,
    pub kind: &'static str,
    pub ns: String,
    pub name: String,
    pub url: String,
    pub private: bool,
}

/// The repo, once the viewer may read it (else the same 404 as a missing repo).
pub(crate) async fn open(
    state: &AppState,
    viewer: &Viewer,
    kind: RepoType,
    ns: &str,
    name: &str,
) -> Result<(RepoId, RepoCtx), PageError> {
    let id = RepoId::new(kind, ns, name).map_err(|_| AppError::RepoNotFound)?;
    let meta = read_access(state, viewer.principal.as_ref(), &id).await?;
    let ctx = RepoCtx {
        id: id.hub_id(),
        kind: kind.as_str(),
        ns: id.namespace().to_owned(),
        name: id.name().to_owned(),
        url: format!("/{}{}", kind.url_prefix(), id.hub_id()),
        private: meta.private,
    };
    Ok((id, ctx))
}

/// The repo for a signed-in viewer's form page: `None` for a viewer who is not signed in (the
/// page sends them to sign in); else the repo once the viewer has `need` on it (a 403, or the
/// 404 of a repo they may not read, as the API answers).
pub(crate) async fn open_form(
    state: &AppState,
    viewer: &Viewer,
    kind: RepoType,
    p: &RepoParams,
    need: hub_core::Need,
) -> Result<Option<(RepoId, RepoCtx)>, PageError> {
    let (id, repo) = open(state, viewer, kind, &p.ns, &p.name).await?;
    if viewer.csrf.is_none() {
        return Ok(None);
    }
    state
        .hub()
        .access(viewer.principal.as_ref(), &id, need)
        .await
        .map_err(AppError::from)?;
    Ok(Some((id, repo)))
}

/// Percent-encodes a repo path for a URL, keeping `/`.
pub(crate) fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Debug, Deserialize, Default)]
pub(crate) struct CardQuery {
    split: Option<String>,
    offset: Option<u64>,
}

#[derive(Debug, Serialize)]
struct RefItem {
    name: String,
    target: String,
}

#[derive(Debug, Serialize)]
struct ViewerCtx {
    error: Option<String>,
    splits: Vec<String>,
    split: String,
    columns: Vec<String>,
    rows: Vec<(u64, Vec<String>)>,
    first: u64,
    last: u64,
    total: u64,
    prev: Option<u64>,
    next: Option<u64>,
}

/// A cell as the table shows it: strings as they are, other values as JSON, cut long.
fn cell(v: Option<&Value>) -> String {
    let text = match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    if text.chars().count() > 300 {
        let cut: String = text.chars().take(300).collect();
        format!("{cut}…")
    } else {
        text
    }
}

/// `GET /{ns}/{name}` (and `/datasets/…`, `/spaces/…`): the card and the metadata panel; a
/// dataset's rows.
pub(crate) async fn repo_page(
    State(state): State<AppState>,
    Extension(kind): Extension<RepoType>,
    viewer: Viewer,
    headers: HeaderMap,
    Path(p): Path<RepoParams>,
    Query(q): Query<CardQuery>,
) -> Result<Response, PageError> {
    let (id, repo) = open(&state, &viewer, kind, &p.ns, &p.name).await?;
    let repos = state.repos().clone();
    let rid = id.clone();
    let inference = kind == RepoType::Model && state.inference().is_some();
    let (readme, files, branches, tags, downloads, widget) = blocking(move || {
        let commit = repos.resolve(&rid, "main")?;
        let readme = match repos
            .entries_at(&rid, &commit, &["README.md".to_owned()])?
            .first()
        {
            Some(e) if e.kind == EntryKind::File && e.lfs.is_none() && e.size <= MAX_README => {
                let (_, bytes) = repos.file(&rid, &commit, "README.md")?;
                Some(String::from_utf8_lossy(&bytes).into_owned())
            }
            _ => None,
        };
        let files = repos.file_count(&rid, &commit)?;
        let (branches, tags) = repos.refs(&rid)?;
        let downloads = repos.downloads(&rid).unwrap_or(0);
        let widget = if inference {
            let tag = readme
                .as_deref()
                .and_then(|t| hub_search::parse_card(t).pipeline_tag);
            super::widget::kind(&repos, &rid, &commit, tag.as_deref())?
        } else {
            None
        };
        Ok((readme, files, branches, tags, downloads, widget))
    })
    .await?;
    let (card_html, panel, card_error) = match readme {
        Some(text) => {
            let parsed = hub_search::parse_card(&text);
            let html = blocking(move || Ok(card::render(card::body(&text)))).await?;
            (Some(html), card::panel(&parsed.card_data), parsed.error)
        }
        None => (None, Vec::new(), None),
    };
    let can_admin = match &viewer.principal {
        Some(p) => state
            .hub()
            .access(Some(p), &id, Change::Visibility.need())
            .await
            .is_ok(),
        None => false,
    };
    let space = if kind == RepoType::Space {
        super::widget::space(&state, &id).await?
    } else {
        None
    };
    let viewer_ctx = if kind == RepoType::Dataset {
        Some(dataset_rows(&state, &viewer, id.clone(), q).await)
    } else {
        None
    };
    let refs = |r: Vec<hub_repo::RefInfo>| {
        r.into_iter()
            .map(|r| RefItem {
                name: r.name,
                target: r.target,
            })
            .collect::<Vec<_>>()
    };
    let widget = widget.map(|kind| super::widget::WidgetCtx {
        kind,
        ..Default::default()
    });
    let csp = match (&widget, &space) {
        (Some(_), _) => Some(super::widget::widget_csp()),
        (_, Some(_)) => Some(super::widget::space_csp()),
        _ => None,
    };
    let mut response = page(
        "repo.html",
        &viewer,
        ctx! {
            clone_url => format!("{}{}", endpoint(&headers), repo.url),
            widget,
            space,
            repo,
            rev => "main",
            card_html,
            panel,
            card_error,
            files,
            downloads,
            branches => refs(branches),
            tags => refs(tags),
            can_admin,
            viewer => viewer_ctx,
        },
    )?;
    if let Some(csp) = csp {
        super::widget::set_csp(&mut response, &csp);
    }
    Ok(response)
}

async fn dataset_rows(state: &AppState, viewer: &Viewer, id: RepoId, q: CardQuery) -> ViewerCtx {
    let mut ctx = ViewerCtx {
        error: None,
        splits: Vec::new(),
        split: String::new(),
        columns: Vec::new(),
        rows: Vec::new(),
        first: 0,
        last: 0,
        total: 0,
        prev: None,
        next: None,
    };
    let ds = match crate::viewer::dataset_files(state, viewer.principal.as_ref(), id).await {
        Ok(ds) => ds,
        Err(e) => {
            ctx.error = Some(e.to_string());
            return ctx;
        }
    };
    ctx.splits = ds.splits.iter().map(|s| s.name.clone()).collect();
    let Some(split) = q
        .split
        .filter(|s| ctx.splits.contains(s))
        .or_else(|| ctx.splits.first().cloned())
    else {
        ctx.error = Some("No data files (Parquet, CSV, TSV, JSON Lines) in this dataset.".into());
        return ctx;
    };
    ctx.split = split.clone();
    let offset = q.offset.unwrap_or(0);
    match crate::viewer::split_rows(state, ds, split, offset, ROWS_PAGE).await {
        Ok((features, rows, total)) => {
            ctx.columns = features
                .as_array()
                .map(|fs| {
                    fs.iter()
                        .filter_map(|f| f["name"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            ctx.rows = rows
                .iter()
                .map(|(i, row)| (*i, ctx.columns.iter().map(|c| cell(row.get(c))).collect()))
                .collect();
            ctx.total = total;
            ctx.first = if rows.is_empty() { offset } else { offset + 1 };
            ctx.last = offset + rows.len() as u64;
            ctx.prev = (offset > 0).then(|| offset.saturating_sub(ROWS_PAGE as u64));
            ctx.next = (ctx.last < total).then_some(ctx.last);
        }
        Err(e) => ctx.error = Some(e.to_string()),
    }
    ctx
}

#[derive(Debug, Serialize)]
struct EntryItem {
    name: String,
    href: String,
    dir: bool,
    size: u64,
    lfs: bool,
    commit: Option<String>,
    title: Option<String>,
    time: Option<i64>,
}

pub(crate) async fn tree_root(
    State(state): State<AppState>,
    Extension(kind): Extension<RepoType>,
    viewer: Viewer,
    Path(p): Path<RevParams>,
) -> Result<Response, PageError> {
    tree(state, kind, viewer, p.ns, p.name, p.rev, String::new()).await
}

pub(crate) async fn tree_path(
    State(state): State<AppState>,
    Extension(kind): Extension<RepoType>,
    viewer: Viewer,
    Path(p): Path<PathParams>,
) -> Result<Response, PageError> {
    tree(state, kind, viewer, p.ns, p.name, p.rev, p.path).await
}

/// `…/tree/{rev}[/{path}]`: one folder: sizes, LFS badges, each entry's last commit.
async fn tree(
    state: AppState,
    kind: RepoType,
    viewer: Viewer,
    ns: String,
    name: String,
    rev: String,
    path: String,
) -> Result<Response, PageError> {
    let (id, repo) = open(&state, &viewer, kind, &ns, &name).await?;
    let path = path.trim_matches('/').to_owned();
    // The listing and the last commits are read from the one commit the revision names.
    let at = {
        let (repos, id, rev) = (state.repos().clone(), id.clone(), rev.clone());
        blocking(move || Ok(repos.resolve(&id, &rev)?)).await?
    };
    let entries = state.hub().tree_at(&id, &at, &path, false).await?;
    let repos = state.repos().clone();
    let paths: Vec<String> = entries.iter().map(|e| e.path.clone()).collect();
    let rid = id.clone();
    let last = blocking(move || Ok(repos.last_commits(&rid, &at, &paths)?)).await?;
    let mut items: Vec<EntryItem> = entries.iter().map(|e| entry_item(e, &last)).collect();
    items.sort_by(|a, b| b.dir.cmp(&a.dir).then_with(|| a.name.cmp(&b.name)));
    let mut crumbs = Vec::new();
    let mut so_far = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if !so_far.is_empty() {
            so_far.push('/');
        }
        so_far.push_str(part);
        crumbs.push((part.to_owned(), encode_path(&so_far)));
    }
    Ok(page(
        "tree.html",
        &viewer,
        ctx! { repo, rev, crumbs, entries => items },
    )?)
}

fn entry_item(e: &TreeEntry, last: &HashMap<String, CommitInfo>) -> EntryItem {
    let name = e.path.rsplit('/').next().unwrap_or(&e.path).to_owned();
    let commit = last.get(&e.path);
    EntryItem {
        href: encode_path(&e.path),
        dir: e.kind == EntryKind::Directory,
        size: e.lfs.as_ref().map_or(e.size, |l| l.size),
        lfs: e.lfs.is_some(),
        commit: commit.map(|c| c.id.clone()),
        title: commit.map(|c| c.title.clone()),
        time: commit.map(|c| c.timestamp),
        name,
    }
}

#[derive(Debug, Serialize)]
struct TensorItem {
    name: String,
    dtype: String,
    shape: Vec<u64>,
}

#[derive(Debug, Serialize)]
struct HeaderCtx {
    format: &'static str,
    parameters: u64,
    metadata: Vec<(String, String)>,
    tensors: Vec<TensorItem>,
    truncated: bool,
    shown: usize,
}

/// `…/blob/{rev}/{path}`: a file: text with line numbers, a weight file's header, or its
/// size and download link.
pub(crate) async fn blob(
    State(state): State<AppState>,
    Extension(kind): Extension<RepoType>,
    viewer: Viewer,
    Path(p): Path<PathParams>,
) -> Result<Response, PageError> {
    let (id, repo) = open(&state, &viewer, kind, &p.ns, &p.name).await?;
    let file = state.hub().resolve_file(&id, &p.rev, &p.path).await?;
    let size = file.entry.lfs.as_ref().map_or(file.entry.size, |l| l.size);
    let download = format!(
        "/{}{}/resolve/{}/{}",
        kind.url_prefix(),
        id.hub_id(),
        encode_path(&p.rev),
        encode_path(&p.path)
    );
    let lower = p.path.to_ascii_lowercase();
    let weights = lower.ends_with(".safetensors") || lower.ends_with(".gguf");
    let mut header = None;
    let mut header_error = None;
    let mut lines: Option<Vec<Vec<super::highlight::Token>>> = None;
    let mut note = String::new();
    // The bytes to read: the store's ranges for LFS content held here, else a small blob.
    let source: Option<Arc<dyn RangeSource>> = match (&file.entry.lfs, &file.blob) {
        (Some(lfs), _) if file.missing.is_none() => {
            let sha: hub_store::Sha256 = lfs
                .sha256
                .parse()
                .map_err(|_| AppError::internal("malformed LFS pointer"))?;
            let reader = state.store().open_file(&sha)?;
            let len = reader.len();
            Some(Arc::new(SeekSource::new(reader, len)))
        }
        (Some(_), _) => {
            note = "This LFS file is not on this node yet.".into();
            None
        }
        (None, Some(bytes)) => Some(Arc::new(MemSource::new(bytes.clone()))),
        (None, None) => {
            note = "This file is too large to show; download it.".into();
            None
        }
    };
    if let (true, Some(source)) = (weights, source.clone()) {
        let path = p.path.clone();
        match blocking(move || Ok(hub_viewer::headers::read(&path, source))).await? {
            Ok(Some(h)) => {
                let parameters = h.parameters();
                let total = h.tensors.len();
                header = Some(HeaderCtx {
                    format: h.format,
                    parameters,
                    metadata: h.metadata,
                    truncated: total > MAX_TENSORS_SHOWN,
                    shown: total.min(MAX_TENSORS_SHOWN),
                    tensors: h
                        .tensors
                        .into_iter()
                        .take(MAX_TENSORS_SHOWN)
                        .map(|t| TensorItem {
                            name: t.name,
                            dtype: t.dtype,
                            shape: t.shape,
                        })
                        .collect(),
                });
            }
            Ok(None) => {}
            Err(e) => header_error = Some(crate::viewer::error_text(&e)),
        }
    } else if let (None, Some(bytes)) = (&file.entry.lfs, &file.blob) {
        match std::str::from_utf8(bytes) {
            Ok(text) if (bytes.len() as u64) <= MAX_TEXT && !text.contains('\0') => {
                let ext = lower.rsplit_once('.').map_or("", |(_, e)| e);
                lines = Some(super::highlight::highlight(ext, text));
            }
            _ => note = "Binary file.".into(),
        }
    } else if note.is_empty() {
        note = "Large file: download it to see it.".into();
    }
    let lang = lower.rsplit_once('.').map_or("", |(_, e)| e).to_owned();
    Ok(page(
        "blob.html",
        &viewer,
        ctx! {
            repo,
            rev => p.rev,
            path => p.path,
            size,
            lfs => file.entry.lfs.as_ref().map(|l| l.sha256.clone()),
            download,
            header,
            header_error,
            lines,
            lang,
            note,
        },
    )?)
}

#[derive(Debug, Deserialize, Default)]
pub(crate) struct CommitsQuery {
    p: Option<usize>,
}

#[derive(Debug, Serialize)]
struct CommitItem {
    id: String,
    title: String,
    author: String,
    time: i64,
}

/// `…/commits/{rev}`: history, newest first.
pub(crate) async fn commits(
    State(state): State<AppState>,
    Extension(kind): Extension<RepoType>,
    viewer: Viewer,
    Path(p): Path<RevParams>,
    Query(q): Query<CommitsQuery>,
) -> Result<Response, PageError> {
    let (id, repo) = open(&state, &viewer, kind, &p.ns, &p.name).await?;
    let page_no = q.p.unwrap_or(0).min(1000);
    let repos = state.repos().clone();
    let (rid, rev) = (id.clone(), p.rev.clone());
    let want = (page_no + 1) * COMMITS_PAGE + 1;
    let history = blocking(move || match repos.history(&rid, &rev, want) {
        Ok(h) => Ok(h),
        Err(RepoError::RevisionNotFound { .. }) => Err(AppError::RevisionNotFound(rev)),
        Err(e) => Err(e.into()),
    })
    .await?;
    let more = history.len() > (page_no + 1) * COMMITS_PAGE;
    let items: Vec<CommitItem> = history
        .into_iter()
        .skip(page_no * COMMITS_PAGE)
        .take(COMMITS_PAGE)
        .map(|c| CommitItem {
            id: c.id,
            title: c.title,
            author: c.author,
            time: c.timestamp,
        })
        .collect();
    Ok(page(
        "commits.html",
        &viewer,
        ctx! { repo, rev => p.rev, commits => items, more, next => page_no + 1 },
    )?)
}

#[derive(Debug, Serialize)]
struct FileDiff {
    path: String,
    change: &'static str,
    lines: Vec<(&'static str, String)>,
    note: String,
}

/// `…/commit/{sha}`: a commit and the diff of its text files against its first parent.
pub(crate) async fn commit(
    State(state): State<AppState>,
    Extension(kind): Extension<RepoType>,
    viewer: Viewer,
    Path(p): Path<ShaParams>,
) -> Result<Response, PageError> {
    let (id, repo) = open(&state, &viewer, kind, &p.ns, &p.name).await?;
    if p.sha.len() > 64 || !p.sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AppError::RevisionNotFound(p.sha).into());
    }
    let repos = state.repos().clone();
    let (rid, sha) = (id.clone(), p.sha.clone());
    let (info, files, more_files) = blocking(move || {
        let info = match repos.history(&rid, &sha, 1) {
            Ok(mut h) if !h.is_empty() => h.remove(0),
            Ok(_) | Err(RepoError::RevisionNotFound { .. }) => {
                return Err(AppError::RevisionNotFound(sha));
            }
            Err(e) => return Err(e.into()),
        };
        // Only the files that differ are read: the trees are compared by object id.
        let parent = info.parents.first().cloned();
        let (paths, more) =
            repos.changed_files(&rid, parent.as_deref(), &info.id, MAX_DIFF_FILES + 1)?;
        let more = more || paths.len() > MAX_DIFF_FILES;
        let paths: Vec<String> = paths.into_iter().take(MAX_DIFF_FILES).collect();
        let at = |commit: Option<&str>| -> Result<HashMap<String, TreeEntry>, AppError> {
            let Some(commit) = commit else {
                return Ok(HashMap::new());
            };
            Ok(repos
                .entries_at(&rid, commit, &paths)?
                .into_iter()
                .filter(|e| e.kind == EntryKind::File)
                .map(|e| (e.path.clone(), e))
                .collect())
        };
        let after = at(Some(&info.id))?;
        let before = at(parent.as_deref())?;
        let changed: Vec<(&String, Option<&TreeEntry>, Option<&TreeEntry>)> = paths
            .iter()
            .map(|p| (p, before.get(p), after.get(p)))
            .collect();
        let mut out = Vec::new();
        for (path, b, a) in changed {
            let read = |commit: &str, e: &TreeEntry| -> Result<Option<String>, AppError> {
                if e.lfs.is_some() || e.size > MAX_DIFF_SIDE {
                    return Ok(None);
                }
                let (_, bytes) = repos.file(&rid, commit, &e.path)?;
                Ok(String::from_utf8(bytes).ok().filter(|t| !t.contains('\0')))
            };
            let change = match (b, a) {
                (None, _) => "added",
                (_, None) => "deleted",
                _ => "modified",
            };
            let old = match (b, &parent) {
                (Some(e), Some(parent)) => read(parent, e)?.map(Some),
                _ => Some(None),
            };
            let new = match a {
                Some(e) => read(&info.id, e)?.map(Some),
                None => Some(None),
            };
            let mut diff = FileDiff {
                path: path.clone(),
                change,
                lines: Vec::new(),
                note: String::new(),
            };
            match (old, new) {
                (Some(old), Some(new)) => {
                    diff.lines =
                        text_diff(old.as_deref().unwrap_or(""), new.as_deref().unwrap_or(""));
                    if diff.lines.is_empty() {
                        diff.note = "No text changes.".into();
                    }
                }
                _ => {
                    let lfs = |e: Option<&TreeEntry>| {
                        e.and_then(|e| e.lfs.as_ref()).map(|l| l.sha256.clone())
                    };
                    diff.note = match (lfs(b), lfs(a)) {
                        (None, None) => "Binary or large file.".into(),
                        (from, to) => format!(
                            "LFS file: {} → {}",
                            from.as_deref().map_or("none", |s| &s[..s.len().min(12)]),
                            to.as_deref().map_or("none", |s| &s[..s.len().min(12)]),
                        ),
                    };
                }
            }
            out.push(diff);
        }
        Ok((info, out, more))
    })
    .await?;
    let body = info
        .message
        .split_once('\n')
        .map(|(_, rest)| rest.trim().to_owned())
        .unwrap_or_default();
    Ok(page(
        "commit.html",
        &viewer,
        ctx! {
            repo,
            id => info.id,
            title => info.title,
            author => info.author,
            time => info.timestamp,
            parent => info.parents.first(),
            body,
            files,
            more_files,
        },
    )?)
}

/// A unified diff (3 lines of context) as tagged lines: `hunk`, `add`, `del`, `ctx`.
pub(crate) fn text_diff(old: &str, new: &str) -> Vec<(&'static str, String)> {
    let diff = similar::TextDiff::from_lines(old, new);
    let mut out = Vec::new();
    for hunk in diff.unified_diff().context_radius(3).iter_hunks() {
        out.push(("hunk", hunk.header().to_string()));
        for change in hunk.iter_changes() {
            let (tag, sign) = match change.tag() {
                similar::ChangeTag::Insert => ("add", '+'),
                similar::ChangeTag::Delete => ("del", '-'),
                similar::ChangeTag::Equal => ("ctx", ' '),
            };
            let text = change.value().trim_end_matches(['\n', '\r']);
            out.push((tag, format!("{sign}{text}")));
            if out.len() >= MAX_DIFF_LINES {
                out.push(("hunk", "… diff cut here".into()));
                return out;
            }
        }
    }
    out
}
