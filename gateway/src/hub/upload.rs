//! The Hub API (`/api/…`) and the resolve endpoint, as `huggingface_hub` uses them.
//!
//! What is here: repo create/delete, repo info (with `siblings`, `blobs=true`, `revision/`),
//! tree listing (Link-paginated), refs, commit history, branches and tags, README front-matter
//! validation, preupload, NDJSON commits, and `resolve` (HEAD and GET, single ranges, 206/416).
//!
//! Large files: preupload always answers `regular` (so the default Xet-enabled client sends
//! content inline), and the commit decides server-side, with the repo's `.gitattributes`, size
//! and binary test, which files become LFS: those are imported into `hub-store` and committed as
//! LFS pointers. `lfsFile` lines must name an object the store already has.
//!
//! Not here yet: the LFS batch API, private repos, listing/search, download counts.

use crate::AppState;
use crate::access::{access, read_access};
use crate::error::AppError;
use crate::extract::{authenticate, require_auth};
use crate::util::{blocking, endpoint, format_date, parse_json, stream_from_store, truthy};
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use hub_auth::Principal;
use hub_core::{Need, Pending};
use hub_protocol::repo::{RepoId, RepoType, validate_repo_path};
use hub_repo::{Author, CommitRequest, EntryKind, LfsRules, Operation, TreeEntry};
use hub_store::Sha256;
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;

/// Largest NDJSON commit body (inline content is base64 in it; big lines stream to the store).
pub const MAX_COMMIT_BODY: u64 = 64 * 1024 * 1024 * 1024;
/// Most lines (operations) in one commit.
const MAX_COMMIT_LINES: usize = 100_000;
/// Largest JSON body of the small endpoints.
const MAX_SMALL_BODY: usize = 1024 * 1024;
/// Tree entries per page.
const TREE_PAGE: usize = 1000;
/// Commits per page.
const COMMITS_PAGE: usize = 50;

pub(crate) fn routes() -> Router<AppState> {
    let repo = "/api/{kind}/{ns}/{name}";
    Router::new()
        .route("/api/repos/create", post(create_repo))
        .route("/api/repos/delete", axum::routing::delete(delete_repo))
        .route("/api/repos/move", post(move_repo))
        .route("/api/validate-yaml", post(validate_yaml))
        .route(repo, get(repo_info))
        .route(&format!("{repo}/revision/{{rev}}"), get(repo_info_at))
        .route(&format!("{repo}/tree/{{rev}}"), get(tree_root))
        .route(&format!("{repo}/tree/{{rev}}/{{*path}}"), get(tree_path))
        .route(&format!("{repo}/refs"), get(refs))
        .route(&format!("{repo}/paths-info/{{rev}}"), post(paths_info))
        .route(&format!("{repo}/settings"), axum::routing::put(settings))
        .route(&format!("{repo}/commits/{{rev}}"), get(commits))
        .route(&format!("{repo}/preupload/{{rev}}"), post(preupload))
        .route(
            &format!("{repo}/branch/{{branch}}"),
            post(create_branch).delete(delete_branch),
        )
        .route(
            &format!("{repo}/tag/{{rev}}"),
            post(create_tag).delete(delete_tag),
        )
        .route(
            &format!("{repo}/commit/{{rev}}"),
            post(commit).layer(DefaultBodyLimit::disable()),
        )
        .merge(resolve_routes())
        .layer(DefaultBodyLimit::max(MAX_SMALL_BODY))
}

/// `/{prefix}{ns}/{name}/resolve/{rev}/{*path}` for each repo type.
fn resolve_routes() -> Router<AppState> {
    let mut router = Router::new();
    for kind in RepoType::ALL {
        router = router.route(
            &format!(
                "/{}{{ns}}/{{name}}/resolve/{{rev}}/{{*path}}",
                kind.url_prefix()
            ),
            get(
                move |State(state): State<AppState>,
                      method: Method,
                      headers: HeaderMap,
                      Path(p): Path<ResolvePath>| {
                    resolve(state, method, headers, kind, p)
                },
            ),
        );
    }
    router
}

#[derive(Debug, Deserialize)]
struct RepoPath {
    kind: String,
    ns: String,
    name: String,
}

impl RepoPath {
    fn id(&self) -> Result<RepoId, AppError> {
        let kind: RepoType = self.kind.parse().map_err(|_| AppError::NotFound)?;
        if kind.plural() != self.kind {
            return Err(AppError::NotFound);
        }
        RepoId::new(kind, &self.ns, &self.name).map_err(|_| AppError::RepoNotFound)
    }
}

fn repo_url(headers: &HeaderMap, id: &RepoId) -> String {
    format!(
        "{}/{}{}",
        endpoint(headers),
        id.kind().url_prefix(),
        id.hub_id()
    )
}

fn author_of(principal: &Principal) -> Author {
    Author::new(
        principal.user.name.clone(),
        format!("{}@users.hubmesh", principal.user.name),
    )
}

// ---- repositories ---------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct CreateBody {
    name: String,
    organization: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    private: Option<bool>,
    visibility: Option<String>,
}

async fn create_repo(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    let principal = require_auth(&state, &headers).await?;
    let body: CreateBody = parse_json(&body)?;
    let kind = body_kind(body.kind.as_deref())?;
    let namespace = body
        .organization
        .clone()
        .unwrap_or_else(|| principal.user.name.clone());
    let id = RepoId::new(kind, &namespace, &body.name).map_err(|e| {
        AppError::BadRequest(format!("invalid repo id {namespace}/{}: {e}", body.name))
    })?;
    state.hub().access_new(&principal, &id).await?;
    let auth = state.auth().clone();
    let ns = namespace.clone();
    if blocking(move || auth.namespace_kind(&ns).map_err(AppError::internal))
        .await?
        .is_none()
    {
        return Err(AppError::Forbidden(format!(
            "namespace {namespace} does not exist on this node"
        )));
    }
    let private = visibility(body.private, body.visibility.as_deref())?.unwrap_or(false);
    let url = repo_url(&headers, &id);
    let repos = state.repos().clone();
    let author = author_of(&principal);
    let created = {
        let id = id.clone();
        blocking(move || Ok(repos.create_with(&id, &author, private))).await?
    };
    match created {
        Ok(_) => {
            state.hub().after_write(&id).await;
            Ok(Json(json!({ "url": url, "name": id.hub_id() })).into_response())
        }
        Err(hub_repo::RepoError::AlreadyExists { .. }) => {
            // `create_repo(exist_ok=True)` reads `url` from the 409 body.
            let message = format!("You already created this {} repo", kind.as_str());
            let mut resp = (
                StatusCode::CONFLICT,
                Json(json!({ "error": message, "url": url })),
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&message) {
                resp.headers_mut().insert("x-error-message", v);
            }
            Ok(resp)
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize)]
struct DeleteBody {
    name: String,
    organization: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

async fn delete_repo(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let principal = require_auth(&state, &headers).await?;
    let body: DeleteBody = parse_json(&body)?;
    let kind = body_kind(body.kind.as_deref())?;
    let namespace = body
        .organization
        .unwrap_or_else(|| principal.user.name.clone());
    let id = RepoId::new(kind, &namespace, &body.name).map_err(|_| AppError::RepoNotFound)?;
    access(&state, Some(&principal), &id, Need::Admin).await?;
    let hub = state.hub().clone();
    let deleted = id.clone();
    blocking(move || {
        // Its LFS objects stop being GC roots on its account; gc keeps what others hold.
        hub.release_lfs(&deleted)?;
        Ok(hub.repos().delete(&deleted)?)
    })
    .await?;
    state.hub().after_write(&id).await;
    Ok(Json(json!({})))
}

/// The `type` of a request body: `model` when absent.
fn body_kind(kind: Option<&str>) -> Result<RepoType, AppError> {
    kind.unwrap_or("model")
        .parse()
        .map_err(|e: hub_protocol::repo::RepoIdError| AppError::BadRequest(e.to_string()))
}

/// The requested visibility: `private` (0.x clients) or `visibility` (1.x and later).
fn visibility(private: Option<bool>, visibility: Option<&str>) -> Result<Option<bool>, AppError> {
    match (private, visibility) {
        (Some(_), Some(_)) => Err(AppError::BadRequest(
            "give either \"private\" or \"visibility\", not both".into(),
        )),
        (Some(p), None) => Ok(Some(p)),
        (None, Some("private")) => Ok(Some(true)),
        (None, Some("public")) => Ok(Some(false)),
        (None, Some(other)) => Err(AppError::BadRequest(format!(
            "visibility {other:?} is not supported (public or private)"
        ))),
        (None, None) => Ok(None),
    }
}

#[derive(Debug, Deserialize)]
struct MoveBody {
    #[serde(rename = "fromRepo")]
    from_repo: String,
    #[serde(rename = "toRepo")]
    to_repo: String,
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// `POST /api/repos/move`: rename a repository (same type), keeping history and settings.
async fn move_repo(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let principal = require_auth(&state, &headers).await?;
    let body: MoveBody = parse_json(&body)?;
    let kind = body_kind(body.kind.as_deref())?;
    let from = RepoId::parse(kind, &body.from_repo).map_err(|_| AppError::RepoNotFound)?;
    let to = RepoId::parse(kind, &body.to_repo)
        .map_err(|e| AppError::BadRequest(format!("invalid target {:?}: {e}", body.to_repo)))?;
    access(&state, Some(&principal), &from, Need::Admin).await?;
    state.hub().access_new(&principal, &to).await?;
    let repos = state.repos().clone();
    let (f, t) = (from.clone(), to.clone());
    blocking(move || Ok(repos.rename(&f, &t)?)).await?;
    state.hub().after_write(&from).await;
    state.hub().after_write(&to).await;
    Ok(Json(json!({})))
}

/// Checks that the caller may read the repo. Unknown repos, and private repos the caller may
/// not see, are the same `RepoNotFound`; a token that is sent must be valid (401 otherwise).
async fn readable(
    state: &AppState,
    headers: &HeaderMap,
    path: &RepoPath,
) -> Result<RepoId, AppError> {
    let id = path.id()?;
    let principal = authenticate(state, headers).await?;
    read_access(state, principal.as_ref(), &id).await?;
    Ok(id)
}

/// How long a download waits for LFS content still arriving from peers (HEAD / GET).
const ENSURE_LFS_WAIT_HEAD: Duration = Duration::from_secs(8);
const ENSURE_LFS_WAIT_GET: Duration = Duration::from_secs(25);

#[derive(Debug, Deserialize, Default)]
struct InfoQuery {
    blobs: Option<String>,
}

async fn repo_info(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<RepoPath>,
    Query(q): Query<InfoQuery>,
) -> Result<Json<Value>, AppError> {
    info(
        state,
        headers,
        path,
        "main".into(),
        truthy(q.blobs.as_deref()),
    )
    .await
}

#[derive(Debug, Deserialize)]
struct RevPath {
    kind: String,
    ns: String,
    name: String,
    rev: String,
}

impl RevPath {
    fn repo(&self) -> RepoPath {
        RepoPath {
            kind: self.kind.clone(),
            ns: self.ns.clone(),
            name: self.name.clone(),
        }
    }
}

async fn repo_info_at(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<RevPath>,
    Query(q): Query<InfoQuery>,
) -> Result<Json<Value>, AppError> {
    info(
        state,
        headers,
        path.repo(),
        path.rev,
        truthy(q.blobs.as_deref()),
    )
    .await
}

async fn info(
    state: AppState,
    headers: HeaderMap,
    path: RepoPath,
    rev: String,
    blobs: bool,
) -> Result<Json<Value>, AppError> {
    let id = path.id()?;
    let principal = authenticate(&state, &headers).await?;
    let meta = read_access(&state, principal.as_ref(), &id).await?;
    let repos = state.repos().clone();
    blocking(move || {
        let downloads = repos.downloads(&id)?;
        let sha = repos.resolve(&id, &rev)?;
        let head = repos.history(&id, &sha, 1)?;
        let entries = repos.list_tree(&id, &sha, "", true)?;
        let siblings: Vec<Value> = entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .map(|e| {
                let mut s = json!({ "rfilename": e.path });
                if blobs {
                    s["blobId"] = json!(e.oid);
                    s["size"] = json!(e.lfs.as_ref().map_or(e.size, |l| l.size));
                    if let Some(lfs) = &e.lfs {
                        s["lfs"] = json!({ "sha256": lfs.sha256, "size": lfs.size, "pointerSize": e.size });
                    }
                }
                s
            })
            .collect();
        let last_modified = head.first().map(|c| format_date(c.timestamp));
        let card = match repos.file(&id, &sha, "README.md") {
            Ok((entry, bytes)) if entry.lfs.is_none() => {
                hub_search::parse_card(&String::from_utf8_lossy(&bytes))
            }
            _ => hub_search::Card::default(),
        };
        let hub_id = id.hub_id();
        let mut body = json!({
            "_id": hub_id,
            "id": hub_id,
            "author": id.namespace(),
            "sha": sha,
            "lastModified": last_modified,
            "createdAt": format_date(meta.created_at),
            "private": meta.private,
            "downloads": downloads,
            "disabled": false,
            "gated": false,
            "tags": card.tags,
            "cardData": card.card_data,
            "siblings": siblings,
        });
        if let Some(t) = &card.pipeline_tag {
            body["pipeline_tag"] = json!(t);
        }
        if let Some(l) = &card.library_name {
            body["library_name"] = json!(l);
        }
        if id.kind() == RepoType::Model {
            body["modelId"] = json!(hub_id);
        }
        Ok(Json(body))
    })
    .await
}

#[derive(Debug, Deserialize)]
struct SettingsBody {
    private: Option<bool>,
    visibility: Option<String>,
}

/// `PUT /api/{type}s/{ns}/{name}/settings`: visibility (`private` or `visibility`).
async fn settings(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<RepoPath>,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let (id, _) = writable(&state, &headers, &path, Need::Admin).await?;
    let body: SettingsBody = parse_json(&body)?;
    let private = visibility(body.private, body.visibility.as_deref())?;
    if let Some(private) = private {
        let repos = state.repos().clone();
        let changed = id.clone();
        blocking(move || Ok(repos.set_private(&changed, private)?)).await?;
        state.hub().after_write(&id).await;
    }
    Ok(Json(json!({})))
}

// ---- trees, refs, commits -------------------------------------------------------------------

#[derive(Debug, Deserialize, Default)]
struct TreeQuery {
    recursive: Option<String>,
    cursor: Option<String>,
}

#[derive(Debug, Deserialize)]
struct TreePath {
    kind: String,
    ns: String,
    name: String,
    rev: String,
    path: String,
}

async fn tree_root(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<RevPath>,
    Query(q): Query<TreeQuery>,
) -> Result<Response, AppError> {
    tree(state, headers, p.repo(), p.rev, String::new(), q).await
}

async fn tree_path(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<TreePath>,
    Query(q): Query<TreeQuery>,
) -> Result<Response, AppError> {
    let repo = RepoPath {
        kind: p.kind,
        ns: p.ns,
        name: p.name,
    };
    tree(state, headers, repo, p.rev, p.path, q).await
}

fn tree_entry_json(e: &TreeEntry) -> Value {
    match e.kind {
        EntryKind::Directory => {
            json!({ "type": "directory", "oid": e.oid, "size": 0, "path": e.path })
        }
        EntryKind::File => {
            let mut v = json!({
                "type": "file",
                "oid": e.oid,
                "size": e.lfs.as_ref().map_or(e.size, |l| l.size),
                "path": e.path,
            });
            if let Some(lfs) = &e.lfs {
                v["lfs"] = json!({ "oid": lfs.sha256, "size": lfs.size, "pointerSize": e.size });
            }
            v
        }
    }
}

async fn tree(
    state: AppState,
    headers: HeaderMap,
    repo: RepoPath,
    rev: String,
    path: String,
    q: TreeQuery,
) -> Result<Response, AppError> {
    let id = readable(&state, &headers, &repo).await?;
    let recursive = truthy(q.recursive.as_deref());
    let start: usize = match q.cursor.as_deref() {
        None => 0,
        Some(c) => c
            .parse()
            .map_err(|_| AppError::BadRequest("invalid cursor".into()))?,
    };
    let repos = state.repos().clone();
    let (entries, rev_for_link) = {
        let id = id.clone();
        let path = path.clone();
        blocking(move || {
            let sha = repos.resolve(&id, &rev)?;
            let entries = repos.list_tree(&id, &sha, &path, recursive).map_err(|e| {
                match AppError::from(e) {
                    AppError::EntryNotFound { message, .. } => AppError::EntryNotFound {
                        message,
                        commit: Some(sha.clone()),
                    },
                    other => other,
                }
            })?;
            Ok((entries, rev))
        })
        .await?
    };
    let page: Vec<Value> = entries
        .iter()
        .skip(start)
        .take(TREE_PAGE)
        .map(tree_entry_json)
        .collect();
    let mut resp = Json(page).into_response();
    if entries.len() > start + TREE_PAGE {
        let mut url = format!(
            "{}/api/{}/{}/tree/{}",
            endpoint(&headers),
            id.kind().plural(),
            id.hub_id(),
            percent_encode(&rev_for_link, false)
        );
        if !path.is_empty() {
            url.push('/');
            url.push_str(&percent_encode(&path, false));
        }
        url.push_str(&format!(
            "?recursive={recursive}&cursor={}",
            start + TREE_PAGE
        ));
        if let Ok(v) = HeaderValue::from_str(&format!("<{url}>; rel=\"next\"")) {
            resp.headers_mut().insert(header::LINK, v);
        }
    }
    Ok(resp)
}

/// Percent-encodes everything but unreserved characters (and `/` when `keep_slash`).
fn percent_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Debug, Deserialize, Default)]
struct RefsQuery {
    include_prs: Option<String>,
}

async fn refs(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(path): Path<RepoPath>,
    Query(q): Query<RefsQuery>,
) -> Result<Json<Value>, AppError> {
    let id = readable(&state, &headers, &path).await?;
    let repos = state.repos().clone();
    let (branches, tags) = blocking(move || Ok(repos.refs(&id)?)).await?;
    let item = |r: &hub_repo::RefInfo| json!({ "name": r.name, "ref": r.full_ref, "targetCommit": r.target });
    let mut body = json!({
        "branches": branches.iter().map(item).collect::<Vec<_>>(),
        "converts": [],
        "tags": tags.iter().map(item).collect::<Vec<_>>(),
    });
    if truthy(q.include_prs.as_deref()) {
        body["pullRequests"] = json!([]);
    }
    Ok(Json(body))
}

#[derive(Debug, Deserialize, Default)]
struct CommitsQuery {
    p: Option<usize>,
}

async fn commits(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<RevPath>,
    Query(q): Query<CommitsQuery>,
) -> Result<Response, AppError> {
    let id = readable(&state, &headers, &p.repo()).await?;
    let page = q.p.unwrap_or(0);
    let repos = state.repos().clone();
    let rev = p.rev.clone();
    let log = {
        let id = id.clone();
        let want = (page + 1)
            .checked_mul(COMMITS_PAGE)
            .and_then(|n| n.checked_add(1))
            .ok_or_else(|| AppError::BadRequest("page out of range".into()))?;
        blocking(move || Ok(repos.history(&id, &rev, want)?)).await?
    };
    let items: Vec<Value> = log
        .iter()
        .skip(page * COMMITS_PAGE)
        .take(COMMITS_PAGE)
        .map(|c| {
            json!({
                "id": c.id,
                "title": c.title,
                "message": c.message,
                "authors": [{ "user": c.author }],
                "date": format_date(c.timestamp),
            })
        })
        .collect();
    let mut resp = Json(items).into_response();
    if log.len() > (page + 1) * COMMITS_PAGE {
        let url = format!(
            "{}/api/{}/{}/commits/{}?p={}",
            endpoint(&headers),
            id.kind().plural(),
            id.hub_id(),
            percent_encode(&p.rev, false),
            page + 1
        );
        if let Ok(v) = HeaderValue::from_str(&format!("<{url}>; rel=\"next\"")) {
            resp.headers_mut().insert(header::LINK, v);
        }
    }
    Ok(resp)
}

/// `POST …/paths-info/{rev}` (form body `paths=a&paths=b&expand=…`): the entries of the
/// given paths, files or folders; paths that do not exist are left out, as on the Hub.
/// Most paths in one `paths-info` call.
const MAX_PATHS_INFO: usize = 10_000;

/// The `paths` of a `paths-info` body: a form (`paths=a&paths=b`, what `huggingface_hub`
/// sends) or JSON (`{"paths": ["a", "b"], "expand": …}`, what huggingface.js sends).
fn paths_of(headers: &HeaderMap, body: &[u8]) -> Result<Vec<String>, AppError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
        || body.trim_ascii_start().starts_with(b"{");
    let paths: Vec<String> = if json {
        #[derive(Deserialize)]
        struct Body {
            #[serde(default)]
            paths: Vec<String>,
        }
        parse_json::<Body>(body)?.paths
    } else {
        form_urlencoded::parse(body)
            .filter(|(k, _)| k == "paths")
            .map(|(_, v)| v.into_owned())
            .collect()
    };
    Ok(paths
        .into_iter()
        .map(|p| p.trim_matches('/').to_owned())
        .collect())
}

async fn paths_info(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<RevPath>,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let id = readable(&state, &headers, &p.repo()).await?;
    let mut paths = paths_of(&headers, &body)?;
    if paths.len() > MAX_PATHS_INFO {
        return Err(AppError::BadRequest(format!(
            "at most {MAX_PATHS_INFO} paths per call"
        )));
    }
    let mut seen = std::collections::HashSet::new();
    paths.retain(|p| seen.insert(p.clone()));
    let repos = state.repos().clone();
    let rev = p.rev.clone();
    let entries = blocking(move || {
        let commit = repos.resolve(&id, &rev)?;
        let entries = repos.entries_at(&id, &commit, &paths)?;
        Ok(entries.iter().map(tree_entry_json).collect::<Vec<_>>())
    })
    .await?;
    Ok(Json(Value::Array(entries)))
}

// ---- branches and tags ----------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct BranchPath {
    kind: String,
    ns: String,
    name: String,
    branch: String,
}

/// The repo of `repo`, when the caller may do what `need` says to it (a token is required).
async fn writable(
    state: &AppState,
    headers: &HeaderMap,
    repo: &RepoPath,
    need: Need,
) -> Result<(RepoId, Principal), AppError> {
    let principal = require_auth(state, headers).await?;
    let id = repo.id()?;
    access(state, Some(&principal), &id, need).await?;
    Ok((id, principal))
}

async fn create_branch(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<BranchPath>,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let repo = RepoPath {
        kind: p.kind,
        ns: p.ns,
        name: p.name,
    };
    let (id, _) = writable(&state, &headers, &repo, Need::Write).await?;
    let start: Option<String> = if body.is_empty() {
        None
    } else {
        parse_json::<Value>(&body)?
            .get("startingPoint")
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let repos = state.repos().clone();
    let changed = id.clone();
    blocking(move || Ok(repos.create_branch(&id, &p.branch, start.as_deref())?)).await?;
    state.hub().after_write(&changed).await;
    Ok(Json(json!({})))
}

async fn delete_branch(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<BranchPath>,
) -> Result<Json<Value>, AppError> {
    let repo = RepoPath {
        kind: p.kind,
        ns: p.ns,
        name: p.name,
    };
    let (id, _) = writable(&state, &headers, &repo, Need::RewriteHistory).await?;
    let repos = state.repos().clone();
    let changed = id.clone();
    blocking(move || Ok(repos.delete_branch(&id, &p.branch)?)).await?;
    state.hub().after_write(&changed).await;
    Ok(Json(json!({})))
}

async fn create_tag(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<RevPath>,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let (id, _) = writable(&state, &headers, &p.repo(), Need::Write).await?;
    let body: Value = parse_json(&body)?;
    let tag = body
        .get("tag")
        .and_then(Value::as_str)
        .ok_or_else(|| AppError::BadRequest("missing \"tag\"".into()))?
        .to_owned();
    let repos = state.repos().clone();
    let changed = id.clone();
    blocking(move || Ok(repos.create_tag(&id, &tag, &p.rev)?)).await?;
    state.hub().after_write(&changed).await;
    Ok(Json(json!({})))
}

async fn delete_tag(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<RevPath>,
) -> Result<Json<Value>, AppError> {
    let (id, _) = writable(&state, &headers, &p.repo(), Need::RewriteHistory).await?;
    let repos = state.repos().clone();
    let changed = id.clone();
    blocking(move || Ok(repos.delete_tag(&id, &p.rev)?)).await?;
    state.hub().after_write(&changed).await;
    Ok(Json(json!({})))
}

// ---- uploads ----------------------------------------------------------------------------------

/// `POST /api/validate-yaml`: parses the README's YAML front matter (delimiters, YAML syntax,
/// a mapping at the top) and reports what is wrong.
async fn validate_yaml(body: Bytes) -> Result<Response, AppError> {
    let body: Value = parse_json(&body)?;
    let content = body
        .get("content")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let errors: Vec<Value> = hub_search::parse_card(content)
        .error
        .into_iter()
        .map(|message| json!({ "message": message }))
        .collect();
    let status = if errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    Ok((status, Json(json!({ "errors": errors, "warnings": [] }))).into_response())
}

#[derive(Debug, Deserialize)]
struct PreuploadBody {
    files: Vec<PreuploadFile>,
}

#[derive(Debug, Deserialize)]
struct PreuploadFile {
    path: String,
    #[serde(default)]
    sample: String,
    #[serde(default)]
    size: u64,
}

/// Whether a client can upload `lfs`-mode files through the LFS batch API. huggingface_hub
/// 1.20 and later upload `lfs` files through Xet whenever hf_xet is installed, with no
/// fallback, and the server cannot tell whether it is; such clients (and unknown ones) get
/// `regular` for every file, and the commit stores big and binary files in LFS server-side.
/// Older clients use the LFS batch API when the server says `lfs`.
fn client_uses_lfs_batch(headers: &HeaderMap) -> bool {
    let Some(ua) = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    ua.split(';')
        .map(str::trim)
        .find_map(|part| {
            part.strip_prefix("huggingface_hub/")
                .or_else(|| part.strip_prefix("hf_hub/"))
        })
        .and_then(|version| {
            let mut parts = version.split('.').map(|p| {
                p.chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
                    .parse::<u32>()
                    .ok()
            });
            Some((parts.next()??, parts.next()??))
        })
        .is_some_and(|(major, minor)| (major, minor) < (1, 20))
}

async fn preupload(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<RevPath>,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let (id, _) = writable(&state, &headers, &p.repo(), Need::Write).await?;
    let body: PreuploadBody = parse_json(&body)?;
    if body.files.len() > 1000 {
        return Err(AppError::BadRequest(
            "at most 1000 files per preupload call".into(),
        ));
    }
    let repos = state.repos().clone();
    let rev = p.rev.clone();
    let rules = blocking(move || {
        let commit = repos.resolve(&id, &rev)?;
        Ok(match repos.file(&id, &commit, ".gitattributes") {
            Ok((_, bytes)) => LfsRules::parse(&String::from_utf8_lossy(&bytes)),
            Err(hub_repo::RepoError::EntryNotFound { .. }) => LfsRules::default(),
            Err(e) => return Err(e.into()),
        })
    })
    .await?;
    let lfs_batch = client_uses_lfs_batch(&headers);
    let mut files = Vec::with_capacity(body.files.len());
    for f in body.files {
        validate_repo_path(&f.path)
            .map_err(|e| AppError::BadRequest(format!("invalid path {:?}: {e}", f.path)))?;
        let sample = base64::engine::general_purpose::STANDARD
            .decode(f.sample.as_bytes())
            .unwrap_or_default();
        let mode = if lfs_batch && rules.wants_lfs(&f.path, f.size, &sample) {
            "lfs"
        } else {
            // Inline upload; the commit moves big and binary files to the store.
            "regular"
        };
        files.push(json!({ "path": f.path, "uploadMode": mode, "shouldIgnore": false }));
    }
    Ok(Json(json!({ "files": files })))
}

#[derive(Debug, Deserialize)]
struct CommitLine {
    key: String,
    value: Value,
}

#[derive(Debug, Deserialize)]
struct HeaderValueJson {
    summary: Option<String>,
    description: Option<String>,
    #[serde(rename = "parentCommit")]
    parent_commit: Option<String>,
}

#[derive(Debug, Deserialize)]
struct FileLine {
    path: String,
    content: String,
    encoding: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LfsFileLine {
    path: String,
    oid: String,
    algo: Option<String>,
    size: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct PathLine {
    path: String,
}

#[derive(Debug, Deserialize, Default)]
struct CommitQuery {
    create_pr: Option<String>,
}

async fn commit(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(p): Path<RevPath>,
    Query(q): Query<CommitQuery>,
    body: Body,
) -> Result<Json<Value>, AppError> {
    let (id, principal) = writable(&state, &headers, &p.repo(), Need::Write).await?;
    if truthy(q.create_pr.as_deref()) {
        // Until pull requests exist, a commit meant for review must not land on the branch.
        return Err(AppError::BadRequest(
            "pull requests are not supported on this hub yet (create_pr): commit to a branch \
             of your own instead"
                .into(),
        ));
    }
    let lines = crate::ndjson::read_lines(
        body,
        state.store().clone(),
        MAX_COMMIT_BODY,
        MAX_COMMIT_LINES,
    )
    .await?;
    let (header_line, pending) = parse_commit_lines(lines)?;
    let message = {
        let summary = header_line.summary.unwrap_or_default();
        let summary = if summary.trim().is_empty() {
            "Update".to_owned()
        } else {
            summary
        };
        match header_line.description.filter(|d| !d.trim().is_empty()) {
            Some(d) => format!("{summary}\n\n{d}"),
            None => summary,
        }
    };
    let request = CommitRequest {
        branch: p.rev.clone(),
        message,
        author: author_of(&principal),
        parent: header_line.parent_commit,
        operations: Vec::new(),
    };
    let info = state.hub().commit(&id, request, pending).await?;
    let url = format!("{}/commit/{}", repo_url(&headers, &id), info.id);
    Ok(Json(json!({
        "success": true,
        "commitOid": info.id,
        "commitUrl": url,
        "pullRequestUrl": null,
    })))
}

/// Parses the lines of an NDJSON commit body: a header line, then file operations. Every line
/// is checked before anything is committed.
fn parse_commit_lines(
    lines: Vec<crate::ndjson::Line>,
) -> Result<(HeaderValueJson, Vec<Pending>), AppError> {
    let bad = |msg: String| AppError::BadRequest(msg);
    let mut header_line = None;
    let mut pending = Vec::new();
    for (n, raw) in lines.into_iter().enumerate() {
        let raw = match raw {
            crate::ndjson::Line::Small(raw) => raw,
            crate::ndjson::Line::StoredFile { path, info } => {
                if header_line.is_none() {
                    return Err(bad("commit body must start with a header line".into()));
                }
                pending.push(Pending::Stored { path, info });
                continue;
            }
        };
        let raw = raw.strip_suffix(b"\r").unwrap_or(&raw);
        let line: CommitLine = serde_json::from_slice(raw)
            .map_err(|e| bad(format!("commit body line {}: invalid JSON: {e}", n + 1)))?;
        let field =
            |e: serde_json::Error| bad(format!("commit body line {} ({}): {e}", n + 1, line.key));
        match line.key.as_str() {
            "header" if header_line.is_none() && pending.is_empty() => {
                header_line = Some(
                    serde_json::from_value::<HeaderValueJson>(line.value.clone()).map_err(field)?,
                );
            }
            "header" => {
                return Err(bad(format!(
                    "commit body line {}: unexpected header",
                    n + 1
                )));
            }
            "file" => {
                let f: FileLine = serde_json::from_value(line.value.clone()).map_err(field)?;
                let bytes = match f.encoding.as_deref() {
                    Some("base64") => base64::engine::general_purpose::STANDARD
                        .decode(f.content.as_bytes())
                        .map_err(|e| {
                            bad(format!("commit body line {}: invalid base64: {e}", n + 1))
                        })?,
                    None | Some("utf-8") => f.content.into_bytes(),
                    Some(other) => return Err(bad(format!("unsupported encoding {other:?}"))),
                };
                pending.push(Pending::Inline {
                    path: f.path,
                    bytes,
                });
            }
            "lfsFile" => {
                let f: LfsFileLine = serde_json::from_value(line.value.clone()).map_err(field)?;
                if f.algo.as_deref().is_some_and(|a| a != "sha256") {
                    return Err(bad(format!("unsupported LFS hash algorithm {:?}", f.algo)));
                }
                validate_repo_path(&f.path).map_err(|e| {
                    AppError::Unprocessable(format!("invalid path {:?}: {e}", f.path))
                })?;
                let sha256: Sha256 = f
                    .oid
                    .parse()
                    .map_err(|_| bad(format!("invalid LFS oid {:?}", f.oid)))?;
                pending.push(Pending::Lfs {
                    path: f.path,
                    sha256,
                    size: f.size,
                });
            }
            "deletedFile" => {
                let f: PathLine = serde_json::from_value(line.value.clone()).map_err(field)?;
                pending.push(Pending::Other(Operation::Delete { path: f.path }));
            }
            "deletedFolder" => {
                let f: PathLine = serde_json::from_value(line.value.clone()).map_err(field)?;
                pending.push(Pending::Other(Operation::DeleteFolder { path: f.path }));
            }
            other => {
                return Err(bad(format!(
                    "commit body line {}: unknown key {other:?}",
                    n + 1
                )));
            }
        }
    }
    let header_line = header_line.ok_or_else(|| bad("commit body has no header line".into()))?;
    if pending.is_empty() {
        return Err(bad("commit has no operations".into()));
    }
    Ok((header_line, pending))
}

// ---- resolve ----------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct ResolvePath {
    ns: String,
    name: String,
    rev: String,
    path: String,
}

/// Whether a request for `path` counts as a download of the repo. As on the Hub: every
/// request (HEAD or GET) for a "query file" counts — by default the top-level `config.json`,
/// `config.yaml`, `hyperparams.yaml` and `meta.yaml` — so a model downloaded as many files
/// counts once per fetch of its config, not once per shard. GGUF files count too (the Hub's
/// rule for the gguf library, whose repos have no config.json).
fn counts_download(kind: RepoType, path: &str) -> bool {
    kind == RepoType::Model
        && (matches!(
            path,
            "config.json" | "config.yaml" | "hyperparams.yaml" | "meta.yaml"
        ) || path.ends_with(".gguf"))
}

/// A single byte range, resolved against the file size: `[start, end]` inclusive.
fn parse_range(value: Option<&HeaderValue>, size: u64) -> Result<Option<(u64, u64)>, AppError> {
    let Some(spec) = value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return Ok(None);
    };
    if spec.contains(',') {
        // Multiple ranges: serve the whole file, as RFC 9110 allows.
        return Ok(None);
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let unsatisfiable = AppError::RangeNotSatisfiable { size };
    // A position is digits; one past u64 is still a position (a suffix longer than any file
    // means the whole file, RFC 9110 §14.1.2), not malformed.
    let pos = |s: &str| -> Result<u64, AppError> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AppError::BadRequest("invalid Range".into()));
        }
        Ok(s.parse().unwrap_or(u64::MAX))
    };
    let range = if a.is_empty() {
        let n = pos(b)?;
        if n == 0 || size == 0 {
            return Err(unsatisfiable);
        }
        (size.saturating_sub(n), size - 1)
    } else {
        let start = pos(a)?;
        let end = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            pos(b)?.min(size.saturating_sub(1))
        };
        if start >= size || end < start {
            return Err(unsatisfiable);
        }
        (start, end)
    };
    Ok(Some(range))
}

async fn resolve(
    state: AppState,
    method: Method,
    headers: HeaderMap,
    kind: RepoType,
    p: ResolvePath,
) -> Result<Response, AppError> {
    let id = RepoId::new(kind, &p.ns, &p.name).map_err(|_| AppError::RepoNotFound)?;
    let principal = authenticate(&state, &headers).await?;
    read_access(&state, principal.as_ref(), &id).await?;
    let repos = state.repos().clone();
    let hub = state.hub().clone();
    let (commit, entry, blob, missing) = {
        let id = id.clone();
        let (rev, path) = (p.rev.clone(), p.path.clone());
        blocking(move || {
            let commit = repos.resolve(&id, &rev)?;
            // A large blob is not read here: it streams below (git::blob_body).
            match repos.file_head(&id, &commit, &path) {
                Ok((entry, blob)) => {
                    // An LFS file whose content is not here yet (a replica still fetching it).
                    let mut missing = None;
                    if let Some(lfs) = &entry.lfs {
                        let sha: Sha256 = lfs
                            .sha256
                            .parse()
                            .map_err(|_| AppError::internal("malformed LFS pointer"))?;
                        // Stored for another repo is not here: a repo serves only its own
                        // objects (a pointer alone proves nothing, issue 14).
                        if !hub.owns_lfs(&id, &sha)? {
                            missing = Some((sha, lfs.size));
                        }
                    }
                    Ok((commit, entry, blob, missing))
                }
                Err(e) => Err(match AppError::from(e) {
                    AppError::EntryNotFound { message, .. } => AppError::EntryNotFound {
                        message,
                        commit: Some(commit),
                    },
                    other => other,
                }),
            }
        })
        .await?
    };
    // A whole-file GET of LFS content still arriving from peers streams it as its chunks
    // arrive (each verified); a fetch that fails part way ends the body short.
    let mut arriving = None;
    if let Some((sha, size)) = missing
        && method == Method::GET
        && !headers.contains_key(header::RANGE)
    {
        let deadline = tokio::time::Instant::now() + ENSURE_LFS_WAIT_HEAD;
        arriving = state
            .hub()
            .mesh()
            .stream_lfs(&id, sha, size, deadline)
            .await;
        if arriving.is_some() {
            tracing::info!(repo = %id, %sha, "streaming LFS content while it arrives from peers");
        }
    }
    if let Some((sha, size)) = missing.filter(|_| arriving.is_none()) {
        // Fetched from peers ahead of the rest and waited for (bounded); else a retryable
        // 503, on HEAD as on GET, never a 500 halfway through a body.
        let wait = if method == Method::HEAD {
            ENSURE_LFS_WAIT_HEAD
        } else {
            ENSURE_LFS_WAIT_GET
        };
        let deadline = tokio::time::Instant::now() + wait;
        if let Err(error) = state
            .hub()
            .mesh()
            .ensure_lfs(&id, sha, size, deadline)
            .await
        {
            tracing::debug!(repo = %id, %sha, %error, "LFS content not here yet");
            return Err(AppError::Unavailable(format!(
                "the content of {} is not on this node yet; retry shortly",
                p.path
            )));
        }
    }
    if counts_download(kind, &entry.path) {
        state.repos().count_download(&id);
        let (repos, search, id) = (state.repos().clone(), state.search().clone(), id.clone());
        tokio::task::spawn_blocking(move || {
            if let Err(error) = repos
                .downloads(&id)
                .map_err(|e| e.to_string())
                .and_then(|n| search.set_downloads(&id, n).map_err(|e| e.to_string()))
            {
                tracing::warn!(repo = %id, %error, "download count not indexed");
            }
        });
    }
    let size = entry.lfs.as_ref().map_or(entry.size, |l| l.size);
    let range = parse_range(headers.get(header::RANGE), size)?;
    let mut builder = Response::builder()
        .header("x-repo-commit", &commit)
        .header(header::ETAG, format!("\"{}\"", entry.oid))
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, "application/octet-stream");
    if let Some(lfs) = &entry.lfs {
        builder = builder
            .header("x-linked-etag", format!("\"{}\"", lfs.sha256))
            .header("x-linked-size", lfs.size.to_string());
    }
    let (status, start, len) = match range {
        Some((a, b)) => {
            builder = builder.header(header::CONTENT_RANGE, format!("bytes {a}-{b}/{size}"));
            (StatusCode::PARTIAL_CONTENT, a, b - a + 1)
        }
        None => (StatusCode::OK, 0, size),
    };
    builder = builder
        .status(status)
        .header(header::CONTENT_LENGTH, len.to_string());
    if method == Method::HEAD {
        return builder.body(Body::empty()).map_err(AppError::internal);
    }
    let body = match &entry.lfs {
        None => match blob {
            Some(blob) => {
                let (start, end) = (start as usize, (start + len) as usize);
                Body::from(blob[start..end].to_vec())
            }
            None => crate::git::blob_body(&state, &id, &entry.oid, start, len)?,
        },
        Some(_) if let Some(rx) = arriving => {
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item.map(Bytes::from), rx))
            });
            Body::from_stream(stream)
        }
        Some(lfs) => {
            let sha256: Sha256 = lfs
                .sha256
                .parse()
                .map_err(|_| AppError::internal("malformed LFS pointer"))?;
            stream_from_store(state.store().clone(), sha256, start, len).await?
        }
    };
    builder.body(body).map_err(AppError::internal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lfs_batch_only_for_clients_before_xet_by_default() {
        let ua = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::USER_AGENT, HeaderValue::from_str(v).unwrap());
            h
        };
        assert!(client_uses_lfs_batch(&ua(
            "huggingface_hub/0.36.2; python/3.11.7; torch/2.1"
        )));
        assert!(client_uses_lfs_batch(&ua(
            "transformers/4.40; hf_hub/1.19.3; python/3.11"
        )));
        assert!(!client_uses_lfs_batch(&ua(
            "huggingface_hub/2.4.0; python/3.11.7"
        )));
        assert!(!client_uses_lfs_batch(&ua(
            "huggingface_hub/1.20.0.dev0; python/3.11.7"
        )));
        assert!(!client_uses_lfs_batch(&ua("curl/8.0")));
        assert!(!client_uses_lfs_batch(&HeaderMap::new()));
    }

    #[test]
    fn dates_are_hub_style() {
        assert_eq!(format_date(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_date(1_714_564_800), "2024-05-01T12:00:00.000Z");
        assert_eq!(format_date(951_782_400), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn ranges() {
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(parse_range(None, 10).unwrap(), None);
        assert_eq!(
            parse_range(Some(&h("bytes=0-3")), 10).unwrap(),
            Some((0, 3))
        );
        assert_eq!(parse_range(Some(&h("bytes=5-")), 10).unwrap(), Some((5, 9)));
        assert_eq!(parse_range(Some(&h("bytes=-4")), 10).unwrap(), Some((6, 9)));
        assert_eq!(
            parse_range(Some(&h("bytes=8-100")), 10).unwrap(),
            Some((8, 9))
        );
        assert_eq!(parse_range(Some(&h("bytes=0-1,3-4")), 10).unwrap(), None);
        assert!(matches!(
            parse_range(Some(&h("bytes=10-")), 10),
            Err(AppError::RangeNotSatisfiable { size: 10 })
        ));
        assert!(matches!(
            parse_range(Some(&h("bytes=5-2")), 10),
            Err(AppError::RangeNotSatisfiable { .. })
        ));
        assert!(matches!(
            parse_range(Some(&h("bytes=x-2")), 10),
            Err(AppError::BadRequest(_))
        ));
        // A suffix longer than the file, even past u64, is the whole file.
        let huge = format!("bytes=-{}", "9".repeat(40));
        assert_eq!(parse_range(Some(&h(&huge)), 10).unwrap(), Some((0, 9)));
        assert_eq!(
            parse_range(Some(&h("bytes=-18446744073709551615")), 10).unwrap(),
            Some((0, 9))
        );
        let far = format!("bytes=2-{}", "9".repeat(40));
        assert_eq!(parse_range(Some(&h(&far)), 10).unwrap(), Some((2, 9)));
        assert!(matches!(
            parse_range(Some(&h("bytes=-+3")), 10),
            Err(AppError::BadRequest(_))
        ));
    }

    fn parse_commit_body(body: &[u8]) -> Result<(HeaderValueJson, Vec<Pending>), AppError> {
        let lines = body
            .split(|&b| b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .map(|l| crate::ndjson::Line::Small(l.to_vec()))
            .collect();
        parse_commit_lines(lines)
    }

    #[test]
    fn commit_bodies() {
        let ok = b"{\"key\":\"header\",\"value\":{\"summary\":\"s\"}}\n{\"key\":\"file\",\"value\":{\"path\":\"a.txt\",\"content\":\"aGk=\",\"encoding\":\"base64\"}}\n";
        let (h, ops) = parse_commit_body(ok).unwrap();
        assert_eq!(h.summary.as_deref(), Some("s"));
        assert!(matches!(&ops[0], Pending::Inline { bytes, .. } if bytes == b"hi"));
        for bad in [
            &b""[..],
            b"{\"key\":\"header\",\"value\":{}}\n",
            b"{\"key\":\"file\",\"value\":{\"path\":\"a\",\"content\":\"\"}}\n",
            b"{\"key\":\"header\",\"value\":{}}\n{\"key\":\"file\",\"value\":{\"path\":\"a\",\"cont",
            b"{\"key\":\"header\",\"value\":{}}\n{\"key\":\"file\",\"value\":{\"path\":\"a\",\"content\":\"!!\",\"encoding\":\"base64\"}}\n",
            b"{\"key\":\"header\",\"value\":{}}\n{\"key\":\"nope\",\"value\":{}}\n",
        ] {
            assert!(matches!(parse_commit_body(bad), Err(AppError::BadRequest(_))), "{}", String::from_utf8_lossy(bad));
        }
        // A path the Hub refuses is 422, not a malformed body.
        let bad_path = b"{\"key\":\"header\",\"value\":{}}\n{\"key\":\"lfsFile\",\"value\":{\"path\":\"../x\",\"oid\":\"00\"}}\n";
        assert!(matches!(
            parse_commit_body(bad_path),
            Err(AppError::Unprocessable(_))
        ));
    }

    #[tokio::test]
    async fn resolve_serves_only_lfs_objects_of_the_repo() {
        // Issue 14, item 1: a public repo whose commit (written below the API's checks, as
        // an older version let a push or a peer's pack do) points at an object stored for a
        // private repo. Before, resolve served it because the store had it.
        let f = crate::testing::fixture().await;
        let (repos, store) = (f.state.repos(), f.state.store());
        let author = hub_repo::Author::new("admin", "admin@hubmesh.test");
        let private = RepoId::parse(RepoType::Model, "admin/private").unwrap();
        repos.create_with(&private, &author, true).unwrap();
        let secret = store.import_reader(&b"private bytes"[..]).unwrap();
        repos.add_lfs_objects(&private, &[secret.sha256.0]).unwrap();
        let public = RepoId::parse(RepoType::Model, "admin/public").unwrap();
        repos.create(&public, &author).unwrap();
        let pointer = hub_repo::LfsPointer::new(&secret.sha256.to_string(), secret.size).unwrap();
        for id in [&private, &public] {
            let add = hub_repo::Operation::Add {
                path: "w.bin".into(),
                content: hub_repo::FileContent::Lfs(pointer.clone()),
            };
            let request = hub_repo::CommitRequest {
                branch: "main".into(),
                message: "w".into(),
                author: author.clone(),
                parent: None,
                operations: vec![add],
            };
            repos.commit(id, request).unwrap();
        }
        for method in ["GET", "HEAD"] {
            let r = crate::testing::send(
                &f.app,
                method,
                "/admin/public/resolve/main/w.bin",
                None,
                &[],
                Body::empty(),
            )
            .await;
            assert_ne!(r.status, StatusCode::OK, "{method}");
            assert!(!r.text().contains("private bytes"));
        }
        // The private repo's owner still reads it there.
        let r = crate::testing::send(
            &f.app,
            "GET",
            "/admin/private/resolve/main/w.bin",
            Some(&f.admin),
            &[],
            Body::empty(),
        )
        .await;
        assert_eq!(
            (r.status, r.text().as_str()),
            (StatusCode::OK, "private bytes")
        );
    }
}
