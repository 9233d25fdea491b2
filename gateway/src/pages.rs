//! Web pages for people, server-rendered at the Hub's URLs, so every URL a client prints
//! opens in a browser: home (search, sort), user and org pages, model/dataset/Space pages
//! (the card rendered from Markdown, its front matter as a metadata panel, branches and tags;
//! a dataset's first rows with paging), the file browser per revision (sizes, LFS badge, last
//! commit per entry), the file view (text, safetensors/GGUF headers), commit history and text
//! diffs, sign-in with a token, the create-repo, upload and visibility forms, the inference
//! widget, a Space's app embedded in its page, and the mesh page.
//!
//! - [`session`]: who is looking: a token (`Authorization`, as for the API) or the sign-in
//!   cookie (`HttpOnly`, `SameSite=Strict`); the CSRF token of the forms, bound to the
//!   session;
//! - [`card`]: README → front matter + sanitised HTML (pulldown-cmark, then ammonia's allow
//!   list: no scripts, event handlers, `javascript:` URLs or raw HTML survive);
//! - [`render`]: the templates (minijinja, compiled into the binary, HTML auto-escaping) and
//!   the page error, which keeps the Hub's `X-Error-Code` headers;
//! - [`highlight`]: a small per-line syntax highlighter for the file view;
//! - [`home`], [`repo`], [`refs`], [`forms`]: the pages;
//! - [`widget`]: a model page's inference widget and a Space page's embedded app;
//! - [`settings`]: a repo's settings (visibility, gated access, rename, delete);
//! - [`upload`]: the upload-a-file form (multipart, size-limited, committed by `hub-core`).
//!
//! Every page answers with a strict Content-Security-Policy (no script runs: the pages need
//! none; styles and images from this origin only; forms post here only; no framing). Two
//! pages add one thing each: a model page with an inference widget allows scripts (and
//! `fetch`) from this origin, for `/-/widget.js`; a Space page allows frames from this
//! origin, for its app (sandboxed). Access
//! is `hub-core`'s, as for the API: a private repo the viewer may not read is the same 404 as
//! a missing one, and listings leave it out.
//!
//! Routes do not shadow the API, git, LFS or resolve routes: those have static segments
//! (`api`, `info`, `resolve`, `git-upload-pack`, …) where these have parameters, and the
//! router prefers static segments (tests in `pages/tests.rs` check each still answers).

mod card;
mod forms;
mod highlight;
mod home;
mod refs;
mod render;
mod repo;
mod session;
mod settings;
#[cfg(test)]
mod tests;
mod upload;
mod widget;

use crate::AppState;
use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use axum::routing::{get, post};
use hub_protocol::repo::RepoType;

/// The Content-Security-Policy of every page.
pub(crate) const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub(crate) fn routes() -> Router<AppState> {
    let mut router = Router::new()
        .route("/", get(home::home))
        .route("/-/site.css", get(render::stylesheet))
        .route("/-/widget.js", get(widget::script))
        .route("/login", get(forms::login_form).post(forms::login))
        .route("/logout", post(forms::logout))
        .route("/new", get(forms::new_form).post(forms::new_repo))
        .route("/mesh", get(home::mesh))
        .route("/{ns}", get(home::namespace));
    for kind in RepoType::ALL {
        let base = format!("/{}{{ns}}/{{name}}", kind.url_prefix());
        let k = axum::Extension(kind);
        router = router
            .route(&base, get(repo::repo_page).layer(k))
            .route(
                &format!("{base}/tree/{{rev}}"),
                get(repo::tree_root).layer(k),
            )
            .route(
                &format!("{base}/tree/{{rev}}/{{*path}}"),
                get(repo::tree_path).layer(k),
            )
            .route(
                &format!("{base}/blob/{{rev}}/{{*path}}"),
                get(repo::blob).layer(k),
            )
            .route(
                &format!("{base}/commits/{{rev}}"),
                get(repo::commits).layer(k),
            )
            .route(
                &format!("{base}/commit/{{sha}}"),
                get(repo::commit).layer(k),
            )
            .route(&format!("{base}/branches"), get(refs::branches).layer(k))
            .route(&format!("{base}/widget"), post(widget::run).layer(k))
            .route(
                &format!("{base}/upload"),
                get(upload::upload_form)
                    .post(upload::upload)
                    .layer::<_, std::convert::Infallible>(k)
                    .layer(axum::extract::DefaultBodyLimit::max(upload::MAX_BODY)),
            )
            .route(
                &format!("{base}/settings"),
                get(settings::settings_form)
                    .post(settings::settings)
                    .layer(k),
            );
    }
    router.layer(axum::middleware::map_response(security_headers))
}

/// The headers every page carries.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    // A page that needs more (a widget's script, a Space's frame) sets its own, stricter
    // than nothing and built on this one.
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(CSP));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("private, no-cache"));
    response
}
