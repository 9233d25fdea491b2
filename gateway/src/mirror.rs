//! The mirror's admin API (`hub-mirror`), for site admins: `GET /api/mirror` (upstream,
//! rules, mirrored repos), `POST /api/mirror/rules` `{"pattern", "rule": allow|deny|pin}`,
//! `DELETE /api/mirror/rules?pattern=`, `POST /api/mirror/refresh` `{"repo"?}` (pinned repos
//! included), `POST /api/mirror/evict` `{"quota"?: bytes or "20GiB"}` (evict the least
//! recently used content that is not pinned down to the quota, default the configured one;
//! `GET /api/mirror` shows the usage) and `GET /api/mirror/audit` (the audit log's events, for
//! export). Without a
//! mirror the policy routes answer 404; the audit log exists on every node that has one.
//!
//! Air-gap bundles against a running node (every node, mirror or not):
//! `POST /api/bundles/import[?trust=HEX]` with the bundle as the body (spooled to a file,
//! then `hub-mirror`'s `bundle::import`: every signature and hash checked before anything is
//! visible, all or nothing; the repo is listed at once, no restart), and
//! `GET /api/bundles/export?repo=ns/name[&type=model|dataset|space][&since=COMMIT]` (the
//! bundle, signed with the node's key). Both are the site admin's, and audited.

use crate::AppState;
use crate::error::AppError;
use crate::extract::SiteAdmin;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use hub_mirror::bundle::{self, Since};
use hub_mirror::{Action, Mirror};
use hub_protocol::repo::{RepoId, RepoType};
use serde_json::{Value, json};
use std::path::PathBuf;
use tokio::io::AsyncWriteExt;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/mirror", get(show))
        .route("/api/mirror/rules", post(add_rule).delete(remove_rule))
        .route("/api/mirror/refresh", post(refresh))
        .route("/api/mirror/evict", post(evict))
        .route("/api/mirror/audit", get(audit))
        .route(
            "/api/bundles/import",
            post(import_bundle).layer(DefaultBodyLimit::disable()),
        )
        .route("/api/bundles/export", get(export_bundle))
}

/// What a running node needs for bundles: where they are spooled, and the node's ed25519
/// secret key that signs exports.
#[derive(Clone)]
pub struct BundleSite {
    pub spool_dir: PathBuf,
    pub secret: [u8; 32],
}

impl std::fmt::Debug for BundleSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleSite")
            .field("spool_dir", &self.spool_dir)
            .finish_non_exhaustive()
    }
}

fn bundle_site(state: &AppState) -> Result<BundleSite, AppError> {
    state.bundles().cloned().ok_or(AppError::NotFound)
}

fn record(state: &AppState, actor: &str, action: &str, report: &bundle::Report) {
    if let Some(log) = state.audit() {
        log.record(
            actor,
            action,
            Some(&report.repo),
            json!({"signer": report.signer, "bundle_bytes": report.bundle_bytes, "refs": report.refs, "chunks": report.chunks}),
        );
    }
}

#[derive(Debug, Default, serde::Deserialize)]
struct ImportQuery {
    trust: Option<String>,
}

fn parse_key(hex_key: &str) -> Result<[u8; 32], AppError> {
    let bad = || AppError::BadRequest("trust is a 64-digit hex public key".into());
    let bytes = hex::decode(hex_key).map_err(|_| bad())?;
    bytes.try_into().map_err(|_| bad())
}

/// `POST /api/bundles/import`: the body is spooled to an unnamed-after-use file, then
/// imported; a refused bundle leaves nothing (`bundle::import`).
async fn import_bundle(
    State(state): State<AppState>,
    SiteAdmin(admin): SiteAdmin,
    Query(q): Query<ImportQuery>,
    body: Body,
) -> Result<Json<Value>, AppError> {
    let site = bundle_site(&state)?;
    let trusted = q.trust.as_deref().map(parse_key).transpose()?;
    let spool_dir = site.spool_dir.clone();
    let tmp = crate::util::blocking(move || {
        std::fs::create_dir_all(&spool_dir).map_err(AppError::internal)?;
        tempfile::NamedTempFile::new_in(&spool_dir).map_err(AppError::internal)
    })
    .await?;
    let mut file = tokio::fs::File::from_std(tmp.reopen().map_err(AppError::internal)?);
    let mut stream = body.into_data_stream();
    while let Some(frame) = stream.next().await {
        let frame = frame.map_err(|e| AppError::BadRequest(format!("upload interrupted: {e}")))?;
        file.write_all(&frame).await.map_err(AppError::internal)?;
    }
    file.flush().await.map_err(AppError::internal)?;
    drop(file);
    let (repos, store) = (state.repos().clone(), state.store().clone());
    let report = crate::util::blocking(move || {
        let report = bundle::import(
            &repos,
            &store,
            tmp.path(),
            trusted.as_ref(),
            &site.spool_dir,
        )
        .map_err(|e| AppError::BadRequest(format!("bundle refused: {e}")))?;
        drop(tmp);
        Ok(report)
    })
    .await?;
    // Listed at once, as a push would be.
    if let Some(id) = report
        .repo
        .split_once('/')
        .and_then(|(kind, rest)| RepoId::parse(kind.parse().ok()?, rest).ok())
    {
        let (repos, search) = (state.repos().clone(), state.search().clone());
        crate::util::blocking(move || {
            hub_core::listing::reindex(&repos, &search, &id);
            Ok(())
        })
        .await?;
    }
    record(&state, &admin.user.name, "import", &report);
    Ok(Json(json!(report)))
}

#[derive(Debug, serde::Deserialize)]
struct ExportQuery {
    repo: String,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    since: Option<String>,
}

/// `GET /api/bundles/export`: the bundle, built into a spool file and streamed from it.
async fn export_bundle(
    State(state): State<AppState>,
    SiteAdmin(admin): SiteAdmin,
    Query(q): Query<ExportQuery>,
) -> Result<Response, AppError> {
    let site = bundle_site(&state)?;
    let kind: RepoType = q
        .kind
        .as_deref()
        .unwrap_or("model")
        .parse()
        .map_err(|_| AppError::BadRequest("type is model, dataset or space".into()))?;
    let id = RepoId::parse(kind, &q.repo)
        .map_err(|_| AppError::BadRequest(format!("not a repo id: {:?}", q.repo)))?;
    let since = match q.since {
        None => Since::Nothing,
        Some(s) if s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Since::Commit(s.to_ascii_lowercase())
        }
        Some(s) => {
            return Err(AppError::BadRequest(format!(
                "since {s:?} is not a commit id"
            )));
        }
    };
    let (repos, store) = (state.repos().clone(), state.store().clone());
    let (report, file) = crate::util::blocking(move || {
        std::fs::create_dir_all(&site.spool_dir).map_err(AppError::internal)?;
        let tmp = tempfile::NamedTempFile::new_in(&site.spool_dir).map_err(AppError::internal)?;
        if !repos.exists(&id) {
            return Err(AppError::RepoNotFound);
        }
        let report = bundle::export(&repos, &store, &id, &since, &site.secret, tmp.path())
            .map_err(|e| AppError::BadRequest(format!("export {}: {e}", id.hub_id())))?;
        // Streamed from the open file (the export replaced the temp file by its own); the
        // name goes now.
        let file = std::fs::File::open(tmp.path()).map_err(AppError::internal)?;
        Ok((report, file))
    })
    .await?;
    record(&state, &admin.user.name, "export", &report);
    let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, report.bundle_bytes.to_string()),
            (
                header::HeaderName::from_static("x-bundle-report"),
                serde_json::to_string(&report).unwrap_or_default(),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

fn mirror(state: &AppState) -> Result<&Mirror, AppError> {
    state.mirror().ok_or(AppError::NotFound)
}

fn show_json(mirror: &Mirror) -> Value {
    let rules: Vec<Value> = mirror
        .rules()
        .iter()
        .map(|r| json!({"rule": r.action.as_str(), "pattern": r.pattern.as_str(), "source": r.source}))
        .collect();
    json!({
        "upstream": mirror.upstream(),
        "offline": mirror.offline(),
        "rules": rules,
        "repos": mirror.mirrored(),
        "usage": mirror.usage(),
    })
}

#[derive(Debug, Default, serde::Deserialize)]
struct EvictBody {
    quota: Option<Value>,
}

/// `POST /api/mirror/evict`: down to the given quota or the configured one, now.
async fn evict(
    State(state): State<AppState>,
    SiteAdmin(admin): SiteAdmin,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let expected = "expected {\"quota\": bytes or \"20GiB\"} or an empty body";
    let body: EvictBody = if body.is_empty() {
        EvictBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| AppError::BadRequest(format!("{expected}: {e}")))?
    };
    let quota = match body.quota {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .ok_or_else(|| AppError::BadRequest(expected.into()))?,
        ),
        Some(Value::String(t)) => {
            Some(hub_mirror::quota::parse_size(&t).map_err(AppError::BadRequest)?)
        }
        Some(_) => return Err(AppError::BadRequest(expected.into())),
    };
    let m = mirror(&state)?.clone();
    let actor = admin.user.name.clone();
    let report =
        crate::util::blocking(move || m.evict(quota, &actor).map_err(AppError::BadRequest)).await?;
    Ok(Json(json!(report)))
}

async fn show(State(state): State<AppState>, _: SiteAdmin) -> Result<Json<Value>, AppError> {
    Ok(Json(show_json(mirror(&state)?)))
}

#[derive(Debug, serde::Deserialize)]
struct RuleBody {
    pattern: String,
    #[serde(default = "allow")]
    rule: Action,
}

fn allow() -> Action {
    Action::Allow
}

async fn add_rule(
    State(state): State<AppState>,
    SiteAdmin(admin): SiteAdmin,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let body: RuleBody = serde_json::from_slice(&body).map_err(|e| {
        AppError::BadRequest(format!(
            "expected {{\"pattern\": \"ns/*\", \"rule\": \"allow|deny|pin\"}}: {e}"
        ))
    })?;
    let m = mirror(&state)?;
    let added = m
        .add_rule(body.rule, &body.pattern, &admin.user.name)
        .map_err(|e| AppError::BadRequest(e.to_string()))?;
    let mut out = show_json(m);
    out["added"] = json!(added);
    Ok(Json(out))
}

#[derive(Debug, serde::Deserialize)]
struct PatternQuery {
    pattern: String,
}

async fn remove_rule(
    State(state): State<AppState>,
    SiteAdmin(admin): SiteAdmin,
    Query(q): Query<PatternQuery>,
) -> Result<Json<Value>, AppError> {
    let m = mirror(&state)?;
    let removed = m
        .remove_rule(&q.pattern, &admin.user.name)
        .map_err(AppError::internal)?;
    let mut out = show_json(m);
    out["removed"] = json!(removed);
    Ok(Json(out))
}

/// `ns/name`, `datasets/ns/name`, `spaces/ns/name` (and `models/ns/name`).
fn parse_repo(text: &str) -> Result<RepoId, AppError> {
    let bad = || AppError::BadRequest(format!("not a repo id: {text:?}"));
    let (kind, rest) = match text.split_once('/') {
        Some((k @ ("models" | "datasets" | "spaces"), rest)) if rest.contains('/') => {
            (k.parse::<RepoType>().map_err(|_| bad())?, rest)
        }
        _ => (RepoType::Model, text),
    };
    RepoId::parse(kind, rest).map_err(|_| bad())
}

#[derive(Debug, Default, serde::Deserialize)]
struct RefreshBody {
    repo: Option<String>,
}

async fn refresh(
    State(state): State<AppState>,
    SiteAdmin(admin): SiteAdmin,
    body: Bytes,
) -> Result<Json<Value>, AppError> {
    let body: RefreshBody = if body.is_empty() {
        RefreshBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| AppError::BadRequest(format!("expected {{\"repo\": \"ns/name\"}}: {e}")))?
    };
    let m = mirror(&state)?;
    let only = body.repo.as_deref().map(parse_repo).transpose()?;
    let results = m.refresh(only.as_ref()).await;
    let mut out = serde_json::Map::new();
    for (id, result) in results {
        let v = match result {
            Ok(outcome) => json!(outcome),
            Err(e) => json!({"error": e.to_string()}),
        };
        out.insert(id, v);
    }
    m.audit().record(
        &admin.user.name,
        "mirror-refresh",
        body.repo.as_deref(),
        json!({}),
    );
    Ok(Json(json!({ "results": out })))
}

async fn audit(State(state): State<AppState>, _: SiteAdmin) -> Result<Json<Value>, AppError> {
    let log = state.audit().ok_or(AppError::NotFound)?.clone();
    let bytes = crate::util::blocking(move || log.export().map_err(AppError::internal)).await?;
    let events: Vec<Value> = String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    Ok(Json(json!({ "events": events })))
}
