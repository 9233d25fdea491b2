//! Repo ids in request paths, resolved as the Hub resolves them (`hub_core::names`), before
//! routing: a repo asked for under another case (`/api/models/Admin/MyModel`) is served as the
//! stored one (the request's path is rewritten to its spelling), and a moved repo's old id
//! answers `307 Temporary Redirect` to the same path under the new id, as the Hub does after a
//! rename. Covers every surface that names a repo in its path: the API
//! (`/api/{type}s/{ns}/{name}/…`), resolve, git smart HTTP and the LFS batch API
//! (`/[{type}s/]{ns}/{name}[.git]/…`). The `Location` is relative (the client joins it to
//! the URL it asked for), so no `Host` header is trusted. A private repo's new id is told only
//! to callers who may read it.
//!
//! `huggingface_hub` follows the 307 (its API session follows redirects; `hf_hub_download`
//! follows redirects that stay on the same host); git follows it on the first request of a
//! fetch or push (`http.followRedirects=initial`, its default) and uses the new URL after.

use crate::AppState;
use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, Uri, header};
use hub_core::names::Lookup;
use hub_protocol::repo::{RepoId, RepoType};
use std::ops::Range;

/// `router`, with repo ids resolved before it routes (a layer on the router itself would run
/// after routing, too late to change which handler serves the path).
pub(crate) fn resolve_ids_before(router: Router, state: AppState) -> Router {
    let layered = tower::Layer::layer(&middleware::from_fn_with_state(state, resolve_ids), router);
    Router::new().fallback_service(layered)
}

/// A repo id in a request path: the id, the byte range of `ns/name` in the path, and
/// whether the name carried git's `.git` suffix.
#[derive(Debug, PartialEq, Eq)]
struct InPath {
    id: RepoId,
    span: Range<usize>,
    git_suffix: bool,
}

/// Segments of `path` (after the leading `/`) with their byte offsets.
fn segments(path: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut at = 0;
    for seg in path.split('/') {
        out.push((at, seg));
        at += seg.len() + 1;
    }
    out
}

/// The repo a request path names, if it names one.
fn repo_in_path(path: &str) -> Option<InPath> {
    let segs = segments(path);
    // segs[0] is the empty string before the leading slash.
    let seg = |i: usize| segs.get(i).map(|(_, s)| *s);
    let (kind, first) = if seg(1) == Some("api") {
        let kind = match seg(2)? {
            "models" => RepoType::Model,
            "datasets" => RepoType::Dataset,
            "spaces" => RepoType::Space,
            _ => return None,
        };
        (kind, 3)
    } else {
        let (kind, first) = match seg(1)? {
            "datasets" => (RepoType::Dataset, 2),
            "spaces" => (RepoType::Space, 2),
            _ => (RepoType::Model, 1),
        };
        // Only the repo surfaces: resolve, git and LFS.
        if !matches!(
            seg(first + 2)?,
            "resolve" | "info" | "git-upload-pack" | "git-receive-pack"
        ) {
            return None;
        }
        (kind, first)
    };
    let (start, ns) = *segs.get(first)?;
    let (name_at, raw_name) = *segs.get(first + 1)?;
    let (name, git_suffix) = match raw_name.strip_suffix(".git") {
        Some(n) => (n, true),
        None => (raw_name, false),
    };
    let id = RepoId::new(kind, ns, name).ok()?;
    Some(InPath {
        id,
        span: start..name_at + raw_name.len(),
        git_suffix,
    })
}

/// `uri` with the repo span of its path replaced by `id`.
fn with_id(uri: &Uri, found: &InPath, id: &RepoId) -> Option<String> {
    let path = uri.path();
    let suffix = if found.git_suffix { ".git" } else { "" };
    let mut out = format!(
        "{}{}/{}{suffix}{}",
        &path[..found.span.start],
        id.namespace(),
        id.name(),
        &path[found.span.end..]
    );
    if let Some(q) = uri.query() {
        out.push('?');
        out.push_str(q);
    }
    Some(out)
}

async fn resolve_ids(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let Some(found) = repo_in_path(request.uri().path()) else {
        return next.run(request).await;
    };
    match state.hub().lookup_id(&found.id).await {
        Lookup::AsIs => next.run(request).await,
        Lookup::Spelled(stored) => {
            if let Some(uri) =
                with_id(request.uri(), &found, &stored).and_then(|s| s.parse::<Uri>().ok())
            {
                *request.uri_mut() = uri;
            }
            next.run(request).await
        }
        Lookup::Moved(to) => {
            // The new id of a private repo is told only to those who may read it; others get
            // the old id's 404, as for any repo they may not see.
            let principal = crate::extract::authenticate(&state, request.headers())
                .await
                .ok()
                .flatten();
            if state
                .hub()
                .access(principal.as_ref(), &to, hub_core::Need::Read)
                .await
                .is_err()
            {
                return next.run(request).await;
            }
            let Some(location) =
                with_id(request.uri(), &found, &to).and_then(|s| HeaderValue::from_str(&s).ok())
            else {
                return next.run(request).await;
            };
            tracing::debug!(from = %found.id, to = %to, "moved repo: redirect");
            (
                StatusCode::TEMPORARY_REDIRECT,
                [(header::LOCATION, location)],
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_are_found_in_every_repo_surface() {
        let id = |kind, s| RepoId::parse(kind, s).unwrap();
        let cases = [
            ("/api/models/Org/M", id(RepoType::Model, "Org/M"), false),
            (
                "/api/datasets/o/d/tree/main",
                id(RepoType::Dataset, "o/d"),
                false,
            ),
            ("/o/m/resolve/main/a.txt", id(RepoType::Model, "o/m"), false),
            (
                "/spaces/o/s/resolve/main/a",
                id(RepoType::Space, "o/s"),
                false,
            ),
            ("/o/m.git/info/refs", id(RepoType::Model, "o/m"), true),
            (
                "/datasets/o/d.git/git-upload-pack",
                id(RepoType::Dataset, "o/d"),
                true,
            ),
            (
                "/o/m.git/info/lfs/objects/batch",
                id(RepoType::Model, "o/m"),
                true,
            ),
        ];
        for (path, want, git) in cases {
            let found = repo_in_path(path).unwrap_or_else(|| panic!("{path}"));
            assert_eq!((found.id, found.git_suffix), (want, git), "{path}");
        }
        for other in [
            "/api/whoami-v2",
            "/api/models",
            "/api/repos/create",
            "/o/m/blob/main/x",
            "/health",
            "/api/models/a b/c",
        ] {
            assert_eq!(repo_in_path(other), None, "{other}");
        }
        let uri: Uri = "/o/old.git/info/refs?service=git-upload-pack"
            .parse()
            .unwrap();
        let found = repo_in_path(uri.path()).unwrap();
        assert_eq!(
            with_id(&uri, &found, &id(RepoType::Model, "n/new")).unwrap(),
            "/n/new.git/info/refs?service=git-upload-pack"
        );
    }
}
