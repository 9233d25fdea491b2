//! `resolve` downloads (`/{prefix}{ns}/{name}/resolve/{rev}/{*path}`): HEAD and GET, single
//! byte ranges (206/416), the Hub's download counting, and LFS content still arriving from
//! peers (streamed as it arrives, or waited for, bounded, then a retryable 503).

use crate::AppState;
use crate::error::AppError;
use crate::extract::authenticate;
use crate::util::stream_from_store;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use axum::routing::get;
use hub_protocol::repo::{RepoId, RepoType};
use hub_store::Sha256;
use serde::Deserialize;
use std::time::Duration;

pub(super) fn routes() -> Router<AppState> {
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

/// How long a download waits for LFS content still arriving from peers (HEAD / GET).
const ENSURE_LFS_WAIT_HEAD: Duration = Duration::from_secs(8);
const ENSURE_LFS_WAIT_GET: Duration = Duration::from_secs(25);

#[derive(Debug, Deserialize)]
struct ResolvePath {
    ns: String,
    name: String,
    rev: String,
    path: String,
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
    // A gated repo's files need a grant (hub_core::gate).
    crate::access::access(&state, principal.as_ref(), &id, hub_core::Need::Download).await?;
    // A large blob is not read here: it streams below (git::blob_body).
    let hub_core::ResolvedFile {
        commit,
        entry,
        blob,
        missing,
    } = state.hub().resolve_file(&id, &p.rev, &p.path).await?;
    let missing = missing.map(|m| (m.sha256, m.size));
    // A whole-file GET of LFS content still arriving from peers streams it as its chunks
    // arrive (each verified); a fetch that fails part way ends the body short.
    let mut arriving = None;
    // A ranged GET of such content streams its range while it arrives (a pull-through
    // mirror), instead of waiting for the whole object.
    if let Some((sha, size)) = missing
        && method == Method::GET
        && let Some((a, b)) = parse_range(headers.get(header::RANGE), size)?
    {
        let deadline = tokio::time::Instant::now() + ENSURE_LFS_WAIT_HEAD;
        arriving = state
            .hub()
            .mesh()
            .stream_lfs_range(&id, sha, size, a..b + 1, deadline)
            .await;
    }
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
    // A HEAD of content a pull-through mirror streams on GET answers from the pointer (the
    // fetch starts now); everything else waits for the content, bounded.
    let answered_by_pointer = method == Method::HEAD
        && missing.is_some_and(|(sha, size)| state.hub().mesh().prefetch_lfs(&id, sha, size));
    if let Some((sha, size)) = missing.filter(|_| arriving.is_none() && !answered_by_pointer) {
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
                "the content of {} is not on this node yet ({error}); retry shortly",
                p.path
            )));
        }
    }
    state.hub().count_download(&id, &entry.path);
    if method == Method::GET
        && let Some(sha) = entry.lfs.as_ref().and_then(|l| l.sha256.parse().ok())
    {
        state.hub().mesh().lfs_served(&id, sha);
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
        // Files that arrived through Xet carry the headers Xet clients download by.
        if let Ok(sha256) = lfs.sha256.parse::<Sha256>() {
            let st = state.clone();
            let xet = crate::util::blocking(move || crate::xet::xet_hash_of(&st, &sha256)).await?;
            if let Some(hash) = xet {
                for (name, value) in crate::xet::resolve_headers(&headers, &id, &p.rev, &hash) {
                    builder = builder.header(name, value);
                }
            }
        }
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
