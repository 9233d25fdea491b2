//! Spaces by host name: a request whose `Host` is `NS-NAME.<domain>` (one of the node's
//! Space domains, `localhost` by default) is the app of that Space, as if it were addressed
//! to `/spaces/NS/NAME/app/…` (`hub_spaces::host` matches the name).
//!
//! This runs before routing (it wraps the whole router, see `routes::router`): the request's
//! path is rewritten to the app's, so every other route of the node stays out of reach
//! under a Space's host, and the app then answers as under its path (same access checks, same
//! proxy). A path already under the app's prefix (the URLs the app writes with its root
//! path) is kept as it is.

use crate::AppState;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::{Uri, header};

pub(crate) async fn by_host(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().host())
        .map(str::to_owned);
    if let Some(host) = host {
        let path_and_query = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        if let Some(uri) = space_uri(&state, host, &path_and_query).await {
            *request.uri_mut() = uri;
        }
    }
    next.run(request).await
}

async fn space_uri(state: &AppState, host: String, path_and_query: &str) -> Option<Uri> {
    let spaces = state.spaces()?.clone();
    // Cheap refusal first: most requests are to the node itself.
    hub_spaces::host::space_label(&host, spaces.domains())?;
    let id = tokio::task::spawn_blocking(move || spaces.space_for_host(&host))
        .await
        .ok()??;
    let prefix = format!("/spaces/{}/app", id.hub_id());
    let rewritten = if path_and_query.starts_with(&format!("{prefix}/")) {
        path_and_query.to_owned()
    } else {
        format!("{prefix}{path_and_query}")
    };
    rewritten.parse().ok()
}
