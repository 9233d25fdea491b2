//! The inference widget of a model page, and the Space embedded in a Space page.
//!
//! The widget is a plain form (`POST …/widget`, `inputs`) that works without JavaScript: the
//! handler sends the text to the node's own HF Inference API route (`POST /models/{ns}/{name}`,
//! through the compute layer, so routing to peers and the response cache apply), with the
//! viewer's credential, and answers with the page showing the result. `/-/widget.js`, served as
//! a file (the pages' CSP allows scripts from this origin only, on the pages that have a
//! widget), sends the same form with `fetch` and `Accept: application/json` and shows the
//! API's answer in place. A signed-in viewer's form carries the session's CSRF token.
//!
//! Which widget: the card's `pipeline_tag` (`text-generation`; `feature-extraction` or
//! `sentence-similarity`, both embedded the same way), else the model's files, as the
//! inference routes load them: `config.json` with `model_type: "bert"` is an embedding model;
//! a `.gguf`, or a `config.json` with `.safetensors` weights, a generation model.
//!
//! A Space page embeds `/spaces/{ns}/{name}/app/` in an iframe sandboxed without
//! `allow-same-origin`: the app runs in an opaque origin, so it can read neither the page nor
//! the sign-in cookie, though it is served from this host. The page's CSP allows frames from
//! this origin and nothing more. A Space that is not serving shows its stage instead.

use super::render::{PageError, ctx, page};
use super::repo::{RepoParams, open};
use super::session::{Viewer, check_origin, csrf_matches};
use crate::AppState;
use crate::error::AppError;
use crate::util::blocking;
use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hub_protocol::repo::{RepoId, RepoType};
use hub_repo::{EntryKind, RepoError, Repos};
use serde::Serialize;
use serde_json::{Value, json};
use tower::ServiceExt;

pub(crate) const TEXT_GENERATION: &str = "text-generation";
pub(crate) const FEATURE_EXTRACTION: &str = "feature-extraction";
/// Longest input the widget sends.
const MAX_INPUT: usize = 4000;
/// Tokens a text-generation widget asks for.
const MAX_NEW_TOKENS: u32 = 32;
/// Largest answer of the API the widget reads.
const MAX_ANSWER: usize = 4 * 1024 * 1024;
/// Largest `config.json` read to tell an embedding model.
const MAX_CONFIG: u64 = 256 * 1024;
/// Values of an embedding the page shows.
const SHOWN_VALUES: usize = 8;

/// The CSP of a page with a widget: the pages' own, plus this origin's script and `fetch`.
pub(crate) fn widget_csp() -> String {
    format!("{}; script-src 'self'; connect-src 'self'", super::CSP)
}

/// The CSP of a Space page: the pages' own, plus frames from this origin.
pub(crate) fn space_csp() -> String {
    format!("{}; frame-src 'self'", super::CSP)
}

/// The widget a model shows (`None`: no widget), from its card's pipeline tag or its files.
pub(crate) fn kind(
    repos: &Repos,
    id: &RepoId,
    commit: &str,
    card_tag: Option<&str>,
) -> Result<Option<&'static str>, RepoError> {
    match card_tag {
        Some(TEXT_GENERATION) => return Ok(Some(TEXT_GENERATION)),
        Some(FEATURE_EXTRACTION | "sentence-similarity") => return Ok(Some(FEATURE_EXTRACTION)),
        Some(_) => return Ok(None),
        None => {}
    }
    let names = repos.file_names(id, commit, "")?;
    if names
        .iter()
        .any(|n| n.to_ascii_lowercase().ends_with(".gguf"))
    {
        return Ok(Some(TEXT_GENERATION));
    }
    if !names.iter().any(|n| n == "config.json") {
        return Ok(None);
    }
    let config = match repos
        .entries_at(id, commit, &["config.json".to_owned()])?
        .first()
    {
        Some(e) if e.kind == EntryKind::File && e.lfs.is_none() && e.size <= MAX_CONFIG => {
            let (_, bytes) = repos.file(id, commit, "config.json")?;
            serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null)
        }
        _ => Value::Null,
    };
    if config["model_type"] == "bert" {
        Ok(Some(FEATURE_EXTRACTION))
    } else if names.iter().any(|n| n.ends_with(".safetensors")) && config.is_object() {
        Ok(Some(TEXT_GENERATION))
    } else {
        Ok(None)
    }
}

/// The result a page shows.
#[derive(Debug, Serialize, Default)]
pub(crate) struct WidgetCtx {
    pub kind: &'static str,
    pub inputs: String,
    pub output: String,
    pub error: String,
}

/// `POST /{ns}/{name}/widget` (models): runs the widget's form through the node's API.
pub(crate) async fn run(
    State(state): State<AppState>,
    Extension(kind): Extension<RepoType>,
    viewer: Viewer,
    headers: HeaderMap,
    Path(p): Path<RepoParams>,
    body: Bytes,
) -> Result<Response, PageError> {
    if kind != RepoType::Model {
        return Err(AppError::NotFound.into());
    }
    check_origin(&headers)?;
    let (id, repo) = open(&state, &viewer, kind, &p.ns, &p.name).await?;
    let fields = super::forms::form(&body)?;
    if viewer.csrf.is_some() && !csrf_matches(&viewer, fields.get("csrf").map(String::as_str)) {
        return Err(AppError::Forbidden("invalid or missing CSRF token".into()).into());
    }
    let inputs = fields
        .get("inputs")
        .map(|t| t.trim().to_owned())
        .unwrap_or_default();
    if inputs.is_empty() || inputs.chars().count() > MAX_INPUT {
        return Err(AppError::BadRequest(format!(
            "the widget's input must be 1 to {MAX_INPUT} characters"
        ))
        .into());
    }
    if state.inference().is_none() {
        return Err(AppError::Unavailable("inference is not enabled on this node".into()).into());
    }
    let widget = {
        let (repos, rid) = (state.repos().clone(), id.clone());
        blocking(move || {
            let commit = repos.resolve(&rid, "main")?;
            let tag = match repos
                .entries_at(&rid, &commit, &["README.md".to_owned()])?
                .first()
            {
                Some(e) if e.kind == EntryKind::File && e.lfs.is_none() => {
                    let (_, bytes) = repos.file(&rid, &commit, "README.md")?;
                    hub_search::parse_card(&String::from_utf8_lossy(&bytes)).pipeline_tag
                }
                _ => None,
            };
            Ok(self::kind(&repos, &rid, &commit, tag.as_deref())?)
        })
        .await?
    };
    let Some(widget) = widget else {
        return Err(AppError::BadRequest("this model has no inference widget".into()).into());
    };
    let request = if widget == TEXT_GENERATION {
        json!({"inputs": inputs, "parameters": {"max_new_tokens": MAX_NEW_TOKENS}})
    } else {
        json!({"inputs": inputs})
    };
    let (status, answer) = call_api(&state, &viewer, &id, &request).await?;
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    if wants_json {
        return Ok((status, [(header::CONTENT_TYPE, "application/json")], answer).into_response());
    }
    let value: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
    let mut ctx = WidgetCtx {
        kind: widget,
        inputs,
        ..WidgetCtx::default()
    };
    if status.is_success() {
        ctx.output = show(widget, &value);
    } else {
        ctx.error = value["error"]
            .as_str()
            .map_or_else(|| format!("inference failed ({status})"), str::to_owned);
    }
    let mut response = page("widget.html", &viewer, ctx! { repo, widget => ctx })?;
    if !status.is_success() {
        *response.status_mut() = status;
    }
    set_csp(&mut response, &widget_csp());
    Ok(response)
}

/// `POST /models/{ns}/{name}` through the node's inference routes (and the compute layer in
/// front of them), as the viewer: the status and the body.
async fn call_api(
    state: &AppState,
    viewer: &Viewer,
    id: &RepoId,
    body: &Value,
) -> Result<(StatusCode, Bytes), AppError> {
    let mut request = Request::post(format!("/models/{}", id.hub_id()))
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-wait-for-model", "true");
    if let Some(credential) = &viewer.credential.0 {
        request = request.header(header::AUTHORIZATION, credential.clone());
    }
    let request = request
        .body(Body::from(body.to_string()))
        .map_err(AppError::internal)?;
    let router = crate::compute::inference_routes(state).with_state(state.clone());
    let response = router.oneshot(request).await.map_err(AppError::internal)?;
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), MAX_ANSWER)
        .await
        .map_err(|e| AppError::internal(format!("reading the inference answer: {e}")))?;
    Ok((status, bytes))
}

/// An answer as the page shows it: the generated text, or an embedding's size and first
/// values (the same text `/-/widget.js` writes).
fn show(kind: &str, value: &Value) -> String {
    if kind == TEXT_GENERATION {
        return value[0]["generated_text"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
    }
    let vector = match value.get(0) {
        Some(Value::Array(v)) => v.clone(),
        _ => value.as_array().cloned().unwrap_or_default(),
    };
    let shown: Vec<String> = vector
        .iter()
        .take(SHOWN_VALUES)
        .map(|x| format!("{:.4}", x.as_f64().unwrap_or(f64::NAN)))
        .collect();
    format!("{} dimensions: {}, …", vector.len(), shown.join(", "))
}

/// Replaces the page's CSP (the pages' layer keeps a CSP a handler set).
pub(crate) fn set_csp(response: &mut Response, csp: &str) {
    if let Ok(v) = HeaderValue::from_str(csp) {
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, v);
    }
}

/// What a Space page shows of its app.
#[derive(Debug, Serialize)]
pub(crate) struct SpaceCtx {
    pub stage: &'static str,
    /// Whether the app is embedded (serving, or asleep: loading it wakes it).
    pub embedded: bool,
    pub app: String,
    pub error: Option<String>,
}

/// The Space's stage and app URL; `None` when this node runs no Spaces.
pub(crate) async fn space(state: &AppState, id: &RepoId) -> Result<Option<SpaceCtx>, AppError> {
    let Some(spaces) = state.spaces() else {
        return Ok(None);
    };
    let (status, _) = spaces.runtime(id).await?;
    Ok(Some(SpaceCtx {
        stage: status.stage.as_str(),
        embedded: status.stage.serving() || status.stage == hub_spaces::Stage::Sleeping,
        app: format!("/spaces/{}/app/", id.hub_id()),
        error: status.error,
    }))
}

/// `GET /-/widget.js`.
pub(crate) async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("templates/widget.js"),
    )
        .into_response()
}
