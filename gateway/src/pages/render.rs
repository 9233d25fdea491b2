//! Templates (minijinja, compiled into the binary from `pages/templates/`, HTML auto-escaped:
//! only the sanitised card is marked safe), the stylesheet, and the page error.

use super::session::Viewer;
use crate::error::AppError;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use minijinja::{AutoEscape, Environment};
use std::sync::OnceLock;

const TEMPLATES: [(&str, &str); 16] = [
    ("base.html", include_str!("templates/base.html")),
    ("home.html", include_str!("templates/home.html")),
    ("namespace.html", include_str!("templates/namespace.html")),
    ("repo.html", include_str!("templates/repo.html")),
    ("tree.html", include_str!("templates/tree.html")),
    ("blob.html", include_str!("templates/blob.html")),
    ("commits.html", include_str!("templates/commits.html")),
    ("commit.html", include_str!("templates/commit.html")),
    ("branches.html", include_str!("templates/branches.html")),
    ("login.html", include_str!("templates/login.html")),
    ("new.html", include_str!("templates/new.html")),
    ("settings.html", include_str!("templates/settings.html")),
    ("mesh.html", include_str!("templates/mesh.html")),
    ("widget.html", include_str!("templates/widget.html")),
    ("upload.html", include_str!("templates/upload.html")),
    (
        "widget_form.html",
        include_str!("templates/widget_form.html"),
    ),
];

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            // The templates are ours and tested: one that does not parse is a build bug.
            if let Err(e) = env.add_template(name, source) {
                tracing::error!(template = name, error = %e, "page template does not parse");
            }
        }
        // HTML-escape strings without minijinja's `/` → `&#x2f;` (paths and repo ids are
        // full of slashes; `/` is not special in HTML text or quoted attributes).
        env.set_formatter(|out, state, value| match value.as_str() {
            Some(text) if *state.auto_escape() == AutoEscape::Html && !value.is_safe() => {
                out.write_str(&html_escape(text)).map_err(|_| {
                    minijinja::Error::new(minijinja::ErrorKind::WriteFailure, "write page")
                })
            }
            _ => minijinja::escape_formatter(out, state, value),
        });
        env.add_filter("size", human_size);
        env.add_filter("date", |t: i64| {
            crate::util::format_date(t)[..10].to_owned()
        });
        env
    })
}

/// Bytes as people read them (`1.5 kB`, `3.2 GB`).
pub(crate) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A template context from `key => value` pairs (or `key` for a variable of that name);
/// values are anything `Serialize`.
macro_rules! ctx {
    ($($key:ident $(=> $value:expr)?),* $(,)?) => {{
        #[allow(unused_mut)]
        let mut map = serde_json::Map::new();
        $(
            map.insert(
                stringify!($key).to_owned(),
                serde_json::to_value(&$crate::pages::render::pick!($key $(, $value)?))
                    .unwrap_or_default(),
            );
        )*
        map
    }};
}

macro_rules! pick {
    ($key:ident) => {
        $key
    };
    ($key:ident, $value:expr) => {
        $value
    };
}

pub(crate) use {ctx, pick};

/// Renders template `name` with `ctx` plus the viewer (`user`, `csrf`).
pub(crate) fn page(
    name: &str,
    viewer: &Viewer,
    mut ctx: serde_json::Map<String, serde_json::Value>,
) -> Result<Response, AppError> {
    ctx.insert("user".into(), viewer.name().into());
    ctx.insert("csrf".into(), viewer.csrf.clone().into());
    let html = env()
        .get_template(name)
        .and_then(|t| t.render(minijinja::value::Serde(&ctx)))
        .map_err(AppError::internal)?;
    Ok(Html(html).into_response())
}

/// A page error: the API's status and `X-Error-*` headers, with an HTML body.
#[derive(Debug)]
pub(crate) struct PageError(pub AppError);

impl From<AppError> for PageError {
    fn from(e: AppError) -> Self {
        PageError(e)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let api = self.0.into_response();
        let status = api.status();
        let mut headers = api.headers().clone();
        let message = match status {
            StatusCode::NOT_FOUND => "Not found: no such page, or you may not see it.".to_owned(),
            StatusCode::UNAUTHORIZED => "Sign in to see this page.".to_owned(),
            s if s.is_server_error() => "Something went wrong on this node.".to_owned(),
            _ => headers
                .get("x-error-message")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("This request was refused.")
                .to_owned(),
        };
        // A browser shown a 401 challenge would open a password box: the page says it instead.
        headers.remove(header::WWW_AUTHENTICATE);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        headers.remove(header::CONTENT_LENGTH);
        let body = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{code} · hubmesh</title>\
             <link rel=\"stylesheet\" href=\"/-/site.css\"></head><body><header class=\"top\">\
             <a class=\"brand\" href=\"/\">hubmesh</a></header><main><h1 class=\"error\">{code}</h1>\
             <p>{msg}</p></main></body></html>",
            code = status.as_u16(),
            msg = html_escape(&message),
        );
        let mut response = (status, body).into_response();
        *response.headers_mut() = headers;
        response
    }
}

pub(crate) fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `GET /-/site.css`.
pub(crate) async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("templates/site.css"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_template_parses() {
        let mut env = minijinja::Environment::new();
        for (name, source) in super::TEMPLATES {
            env.add_template(name, source)
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
        for (name, _) in super::TEMPLATES {
            super::env().get_template(name).unwrap();
        }
    }
}

macro_rules! via_app_error {
    ($($t:ty),* $(,)?) => {
        $(impl From<$t> for PageError {
            fn from(e: $t) -> Self {
                PageError(AppError::from(e))
            }
        })*
    };
}

via_app_error!(
    hub_repo::RepoError,
    hub_core::ResolveError,
    hub_core::AccessError,
    hub_store::StoreError,
    hub_core::RepoOpError,
);
