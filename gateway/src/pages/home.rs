//! Home (search and sort over the listing index), user and org pages, and the mesh page.

use super::render::ctx;
use super::render::{PageError, page};
use super::session::Viewer;
use crate::AppState;
use crate::error::AppError;
use crate::util::blocking;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use hub_auth::NamespaceKind;
use hub_core::listing::ListError;
use hub_protocol::repo::RepoType;
use hub_search::{ListQuery, MAX_LIMIT, Page, RepoDoc, Sort};
use serde::{Deserialize, Serialize};

/// Repos per page of the home listing.
const PAGE: usize = 30;

#[derive(Debug, Deserialize, Default)]
pub(crate) struct HomeQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
    search: Option<String>,
    sort: Option<String>,
    p: Option<usize>,
}

/// A repo as the lists show it.
#[derive(Debug, Serialize)]
pub(crate) struct RepoItem {
    id: String,
    url: String,
    private: bool,
    pipeline: Option<String>,
    modified: i64,
    downloads: u64,
}

impl RepoItem {
    fn of(doc: &RepoDoc) -> Self {
        RepoItem {
            id: doc.id.hub_id(),
            url: format!("/{}{}", doc.id.kind().url_prefix(), doc.id.hub_id()),
            private: doc.private,
            pipeline: doc.pipeline_tag.clone(),
            modified: doc.last_modified,
            downloads: doc.downloads,
        }
    }
}

fn list_error(e: ListError) -> AppError {
    match e {
        ListError::Storage(e) => AppError::from(e),
        other => AppError::internal(other),
    }
}

/// The sorts the home page offers: trending (recent downloads: `Repos::trending_scores`),
/// most downloaded, recently updated, newest. Trending reads the index by downloads and
/// reorders by score (see [`trending`]).
const SORTS: [(&str, &str, Sort); 4] = [
    ("trending", "Trending", Sort::Downloads),
    ("downloads", "Most downloaded", Sort::Downloads),
    ("updated", "Recently updated", Sort::LastModified),
    ("created", "Newest", Sort::CreatedAt),
];

/// `GET /`: repos of one kind, searched and sorted.
pub(crate) async fn home(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(q): Query<HomeQuery>,
) -> Result<Response, PageError> {
    let kind = match q.kind.as_deref().unwrap_or("models") {
        "datasets" => RepoType::Dataset,
        "spaces" => RepoType::Space,
        _ => RepoType::Model,
    };
    let sort_key = q
        .sort
        .as_deref()
        .filter(|s| SORTS.iter().any(|(k, ..)| k == s))
        .unwrap_or("trending")
        .to_owned();
    let sort = SORTS
        .iter()
        .find(|(k, ..)| *k == sort_key)
        .map(|(.., s)| *s);
    let search = q.search.unwrap_or_default();
    let p = q.p.unwrap_or(0).min(10_000);
    let mut query = ListQuery::new(kind);
    query.search = Some(search.clone()).filter(|s| !s.is_empty());
    query.sort = sort;
    let listed = if sort_key == "trending" {
        trending(&state, &viewer, query, p).await?
    } else {
        query.limit = PAGE;
        query.offset = p * PAGE;
        state
            .hub()
            .list(viewer.principal.as_ref(), query)
            .await
            .map_err(list_error)?
    };
    let repos: Vec<RepoItem> = listed.items.iter().map(RepoItem::of).collect();
    let title = match kind {
        RepoType::Model => "Models",
        RepoType::Dataset => "Datasets",
        RepoType::Space => "Spaces",
    };
    Ok(page(
        "home.html",
        &viewer,
        ctx! {
            kind => kind.plural(),
            kind_title => title,
            search,
            sort => sort_key,
            sorts => SORTS.iter().map(|(k, l, _)| (*k, *l)).collect::<Vec<_>>(),
            total => listed.total,
            repos,
            prev => p.checked_sub(1),
            next => listed.next_offset.map(|_| p + 1),
        },
    )?)
}

/// Page `p` of the repos `query` matches, by trending score (ties: by all-time downloads).
/// The [`MAX_LIMIT`] most downloaded matches are ranked: a repo outside them has too few
/// downloads in all to trend above them in practice, and ranking is one range read each.
async fn trending(
    state: &AppState,
    viewer: &Viewer,
    mut query: ListQuery,
    p: usize,
) -> Result<Page, AppError> {
    query.limit = MAX_LIMIT;
    query.offset = 0;
    let mut listed = state
        .hub()
        .list(viewer.principal.as_ref(), query)
        .await
        .map_err(list_error)?;
    let repos = state.repos().clone();
    let items = std::mem::take(&mut listed.items);
    let mut ranked = blocking(move || {
        let ids: Vec<_> = items.iter().map(|d| d.id.clone()).collect();
        let scores = repos.trending_scores(&ids)?;
        Ok(items.into_iter().zip(scores).collect::<Vec<_>>())
    })
    .await?;
    // Stable: equal scores keep the index's order (most downloaded first).
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let shown = ranked.len();
    let start = (p * PAGE).min(shown);
    let end = (start + PAGE).min(shown);
    Ok(Page {
        items: ranked.drain(start..end).map(|(doc, _)| doc).collect(),
        next_offset: (end < shown).then_some(end),
        total: listed.total,
    })
}

#[derive(Debug, Serialize)]
struct Section {
    title: &'static str,
    repos: Vec<RepoItem>,
}

/// `GET /{ns}`: a user's or an org's repos (and an org's members). For a client that does
/// not ask for HTML, an unknown name is the API's JSON 404, as before pages existed.
pub(crate) async fn namespace(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    Path(ns): Path<String>,
) -> Result<Response, Response> {
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    let auth = state.auth().clone();
    let name = ns.clone();
    let found = tokio::task::spawn_blocking(move || {
        let kind = auth.namespace_kind(&name)?;
        let members = match kind {
            Some(NamespaceKind::Org) => auth.members(&name)?,
            _ => Vec::new(),
        };
        Ok::<_, hub_auth::AuthError>((kind, members))
    })
    .await;
    let (kind, members) = match found {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => return Err(PageError(AppError::internal(e)).into_response()),
        Err(e) => return Err(PageError(AppError::internal(e)).into_response()),
    };
    let Some(kind) = kind else {
        return Err(if wants_html {
            PageError(AppError::NotFound).into_response()
        } else {
            AppError::NotFound.into_response()
        });
    };
    let mut sections = Vec::new();
    for (repo_kind, title) in [
        (RepoType::Model, "Models"),
        (RepoType::Dataset, "Datasets"),
        (RepoType::Space, "Spaces"),
    ] {
        let mut query = ListQuery::new(repo_kind);
        query.author = Some(ns.clone());
        query.sort = Some(Sort::LastModified);
        query.limit = 100;
        let listed = state
            .hub()
            .list(viewer.principal.as_ref(), query)
            .await
            .map_err(|e| PageError(list_error(e)).into_response())?;
        sections.push(Section {
            title,
            repos: listed.items.iter().map(RepoItem::of).collect(),
        });
    }
    let ns_kind = match kind {
        NamespaceKind::Org => "organization",
        _ => "user",
    };
    page(
        "namespace.html",
        &viewer,
        ctx! {
            ns,
            ns_kind,
            members => members.iter().map(|(m, r)| (m.clone(), r.as_str())).collect::<Vec<_>>(),
            sections,
        },
    )
    .map_err(|e| PageError(e).into_response())
}

#[derive(Debug, Serialize)]
struct PeerItem {
    id: String,
    addrs: Vec<String>,
    received: u64,
    sent: u64,
}

#[derive(Debug, Serialize)]
struct SeedItem {
    pattern: String,
    source: &'static str,
}

/// `GET /mesh`: this node, its connected peers and their traffic, what it seeds, and its
/// inference capacity.
pub(crate) async fn mesh(
    State(state): State<AppState>,
    viewer: Viewer,
) -> Result<Response, PageError> {
    let p2p = state.p2p();
    let replication = state.replication();
    let peers: Vec<PeerItem> = p2p
        .peers()
        .into_iter()
        .filter(|(_, p)| p.connected)
        .map(|(id, p)| {
            let traffic = replication
                .and_then(|m| m.peer_traffic(&id))
                .unwrap_or_default();
            PeerItem {
                id: id.to_string(),
                addrs: p.addrs.iter().map(ToString::to_string).collect(),
                received: traffic.chunk_bytes_received,
                sent: traffic.chunk_bytes_sent,
            }
        })
        .collect();
    let seeds: Vec<SeedItem> = replication
        .map(hub_mesh::Mesh::seeds)
        .unwrap_or_default()
        .into_iter()
        .map(|e| SeedItem {
            pattern: e.pattern,
            source: e.source.as_str(),
        })
        .collect();
    let capacity: Vec<(&str, String)> = match state.inference() {
        Some(models) => {
            let s = models.snapshot();
            vec![
                ("Loaded models", s.loaded.len().to_string()),
                ("Running sequences", s.running.to_string()),
                ("Waiting requests", s.waiting.to_string()),
                ("Memory budget", super::render::human_size(s.memory_budget)),
                ("Memory free", super::render::human_size(s.memory_free())),
                ("Decode tokens/s", format!("{:.1}", s.decode_tokens_per_s)),
            ]
        }
        None => Vec::new(),
    };
    Ok(page(
        "mesh.html",
        &viewer,
        ctx! {
            peer_id => p2p.peer_id().to_string(),
            listen => p2p.listen_addrs().iter().map(ToString::to_string).collect::<Vec<_>>(),
            peers,
            seeds,
            replicating => replication.is_some(),
            capacity,
        },
    )?)
}
