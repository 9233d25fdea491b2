//! Inference over HTTP: the OpenAI, TGI and HF Inference API routes, served from models stored
//! on this node — text generation by hub-infer's engine threads, sentence embeddings by its
//! BERT [`Embedder`] on blocking threads.
//!
//! Routes:
//! - `POST /v1/chat/completions`, `POST /v1/completions` (OpenAI; SSE streams end with
//!   `data: [DONE]`), `GET /v1/models` (the loaded models the caller may read);
//! - `POST /v1/embeddings` (OpenAI; `input` a string or a list, `encoding_format` `float` or
//!   `base64`);
//! - `POST /generate`, `POST /generate_stream` (TGI; the model is the body's `model` field, a
//!   hubmesh extension since a TGI server has one model; streams have no `[DONE]`);
//! - `GET /info?model=…`, `POST /tokenize` (TGI, the model named the same way);
//! - `POST /models/{ns}/{name}` (HF Inference API), by the model card's `pipeline_tag` (else
//!   the model's kind): text-generation `[{"generated_text"}]`, feature-extraction nested
//!   floats, sentence-similarity scores.
//!
//! Which kind a model is comes from its files: `config.json` with `model_type: "bert"` is an
//! embedding model (see `hub_infer::bert`), anything else goes to the generation engine.
//!
//! A model is a model repository id, `ns/name`, optionally `ns/name:revision`. The caller needs
//! read access to the repository (a private model is "not found" to others). The revision is
//! resolved to a commit on every request; the registry keys loaded models by commit, so a push
//! is served from the next request on, and the old engine ages out of the LRU.
//!
//! Log-probabilities come from the model's raw distribution (before temperature, top-k/top-p
//! and penalties), as OpenAI reports them: chat `logprobs: true` + `top_logprobs: N` (≤ 20) →
//! `choices[].logprobs.content[{token, logprob, bytes, top_logprobs}]`; legacy completions
//! `logprobs: N` → `{tokens, token_logprobs, top_logprobs, text_offset}`; TGI `details: true`
//! token logprobs, `top_n_tokens` → `top_tokens`, `decoder_input_details` → `details.prefill`
//! (the prompt's tokens, the first without a logprob; not with streaming, as in TGI). Streamed,
//! a token whose text is held back (an incomplete character or possible stop string) has its
//! entry sent with the next chunk that carries text, so each token is reported exactly once.
//! A token's `token`/`text` is that token decoded alone.
//!
//! Models are opened through `hub-models` ([`hub_models::Models`]): it resolves the revision,
//! loads a model in the background (shared by every request for it, not aborted when a
//! request goes away) within one memory budget for generation models and embedders, and
//! materializes its files. While it loads, `POST /models/{ns}/{name}` answers 503
//! `{"error", "error_type": "loading", "estimated_time"}` after a short grace unless the
//! request has `x-wait-for-model: true` (as the HF Inference API); the OpenAI and TGI routes
//! wait up to the configured load wait (default [`hub_models::DEFAULT_LOAD_WAIT`]) and then
//! answer 503. A model larger than the budget is a 422, one that would need busy models
//! unloaded a 503; weights not in this node's store are a 503. This module renders
//! `hub-models`' [`ModelError`] in each API's shape.
//!
//! Errors use each API's shape: OpenAI `{"error":{"message","type","code"}}` (bad requests are
//! 400), TGI `{"error","error_type"}` (bad requests are 422, like TGI's validation errors).
//! Requests that can never run (`max_tokens` past the context) are refused before any work;
//! a full queue is 429. Work is not tied to the request future: when the client goes away the
//! token stream is dropped and the engine frees the request's KV blocks before its next step.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::Stream;
use http::{HeaderMap, StatusCode};
use hub_infer::bert::{Embedder, Embeddings};
use hub_infer::chat::ChatMessage;
use hub_infer::sampling::SamplingParams;
use hub_infer::serve::{
    Finish, ModelHandle, RegistryError, Served, SubmitError, SubmitRequest, TextChunk, TextStream,
};
use hub_infer::tokenizer::{HfTokenizer, Tokenizer};
use hub_models::{LoadError, LoadFailure, ModelError, Opened, Wait, error_chain};
use hub_protocol::repo::{RepoId, RepoType};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::AppState;
use crate::access::read_access;
use crate::error::AppError;
use crate::extract::{Caller, Who, authenticate};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(list_models))
        .route("/generate", post(generate))
        .route("/generate_stream", post(generate_stream))
        .route("/models/{ns}/{name}", post(hf_inference))
        .route("/v1/embeddings", post(embeddings))
        .route("/info", get(info))
        .route("/tokenize", post(tokenize))
}

// ---------------------------------------------------------------------------------------------
// Errors

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    OpenAi,
    Tgi,
}

/// An error in the shape of the API it answers.
#[derive(Debug)]
struct ApiError {
    api: Api,
    status: StatusCode,
    /// OpenAI's `type` / TGI's `error_type`.
    kind: &'static str,
    /// OpenAI's `code`.
    code: Option<&'static str>,
    message: String,
    /// The HF Inference API's `estimated_time` (seconds) of a model still loading.
    estimated_time: Option<f64>,
}

impl ApiError {
    fn new(api: Api, status: StatusCode, kind: &'static str, message: String) -> Self {
        Self {
            api,
            status,
            kind,
            code: None,
            message,
            estimated_time: None,
        }
    }

    fn invalid(api: Api, message: impl Into<String>) -> Self {
        match api {
            Api::OpenAi => Self::new(
                api,
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                message.into(),
            ),
            Api::Tgi => Self::new(
                api,
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                format!("Input validation error: {}", message.into()),
            ),
        }
    }

    fn model_not_found(api: Api, model: &str) -> Self {
        let mut e = Self::new(
            api,
            StatusCode::NOT_FOUND,
            match api {
                Api::OpenAi => "invalid_request_error",
                Api::Tgi => "not_found",
            },
            format!("The model `{model}` does not exist or you do not have access to it."),
        );
        e.code = Some("model_not_found");
        e
    }

    fn overloaded(api: Api) -> Self {
        Self::new(
            api,
            StatusCode::TOO_MANY_REQUESTS,
            "overloaded",
            "Model is overloaded".into(),
        )
    }

    fn unavailable(api: Api, message: String) -> Self {
        Self::new(api, StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    fn internal(api: Api, what: &str, e: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %e, "{what}");
        Self::new(
            api,
            StatusCode::INTERNAL_SERVER_ERROR,
            match api {
                Api::OpenAi => "server_error",
                Api::Tgi => "generation",
            },
            "internal error".into(),
        )
    }

    fn from_app(api: Api, model: &str, e: AppError) -> Self {
        match e {
            AppError::RepoNotFound | AppError::RevisionNotFound(_) | AppError::NotFound => {
                Self::model_not_found(api, model)
            }
            AppError::Unauthorized(m) => Self::new(
                api,
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                m.into(),
            ),
            AppError::Forbidden(m) => Self::new(api, StatusCode::FORBIDDEN, "permission_error", m),
            e => Self::internal(api, "inference request", &e),
        }
    }

    /// The API's answer to a [`ModelError`] of `model` (the name the request gave).
    fn from_model(api: Api, model: &str, e: ModelError) -> Self {
        match e {
            ModelError::NotFound => Self::model_not_found(api, model),
            ModelError::Loading {
                wait,
                waited,
                estimated,
            } => {
                let mut e = Self::unavailable(
                    api,
                    match wait {
                        Wait::Grace => format!("Model {model} is currently loading"),
                        Wait::Bounded => format!(
                            "Model {model} is still loading after {} s; retry later",
                            waited.as_secs()
                        ),
                    },
                );
                e.kind = "loading";
                e.estimated_time = Some(estimated.as_secs_f64());
                e
            }
            ModelError::Load(e) => load_error(api, model, &e),
            ModelError::LoaderStopped => Self::internal(api, "load model", &"loader stopped"),
            e @ ModelError::Evicted => {
                Self::unavailable(api, format!("cannot serve `{model}` now: {e}"))
            }
            e => Self::internal(api, "inference request", &e),
        }
    }

    fn from_submit(api: Api, e: SubmitError) -> Self {
        match e {
            SubmitError::QueueFull => Self::overloaded(api),
            SubmitError::Closed => Self::unavailable(api, "model is shutting down".into()),
            e => Self::invalid(api, e.to_string()),
        }
    }

    fn body(&self) -> Value {
        match self.api {
            Api::OpenAi => json!({"error": {
                "message": self.message,
                "type": self.kind,
                "code": self.code,
                "param": null,
            }}),
            Api::Tgi => {
                let mut v = json!({"error": self.message, "error_type": self.kind});
                if let Some(t) = self.estimated_time {
                    v["estimated_time"] = json!(t);
                }
                v
            }
        }
    }
}

/// An error in the shape of the API a path belongs to (OpenAI under `/v1/`, TGI and the HF
/// Inference API otherwise), for the compute mesh's routing layer.
pub(crate) fn api_error(
    path: &str,
    status: StatusCode,
    kind: &'static str,
    message: String,
    estimated_time: Option<f64>,
) -> Response {
    let api = if path.starts_with("/v1/") {
        Api::OpenAi
    } else {
        Api::Tgi
    };
    let mut e = ApiError::new(api, status, kind, message);
    e.estimated_time = estimated_time;
    e.into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

fn parse<T: DeserializeOwned>(api: Api, body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(api, format!("invalid request body: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Models

/// How long an HF Inference API request waits for its model: `x-wait-for-model: true` asks
/// to wait (up to the load wait), else a short grace.
fn hf_wait(headers: &HeaderMap) -> Wait {
    let wait = headers
        .get("x-wait-for-model")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    if wait { Wait::Bounded } else { Wait::Grace }
}

/// Resolves `model` (`ns/name[:revision]`) for the caller and returns its loaded engine.
async fn open_model(
    state: &AppState,
    who: &Who,
    api: Api,
    model: &str,
) -> Result<ModelHandle, ApiError> {
    match open_served(state, who, api, model, Wait::Bounded)
        .await?
        .served
    {
        Served::Generate(h) => Ok(h),
        Served::Embed(_) => Err(ApiError::invalid(
            api,
            format!("`{model}` is an embedding model: use /v1/embeddings"),
        )),
    }
}

/// Resolves `model` for the caller and loads it: a BERT directory (`model_type: "bert"`) as
/// an [`Embedder`], anything else as a generation engine. A model not loaded yet is loaded in
/// the background; the request waits for it as `wait` says.
async fn open_served(
    state: &AppState,
    who: &Who,
    api: Api,
    model: &str,
    wait: Wait,
) -> Result<Opened, ApiError> {
    let Some(inference) = state.inference().cloned() else {
        return Err(ApiError::unavailable(
            api,
            "inference is not enabled on this node".into(),
        ));
    };
    let (repo, revision) = model.split_once(':').unwrap_or((model, "main"));
    let id =
        RepoId::parse(RepoType::Model, repo).map_err(|_| ApiError::model_not_found(api, model))?;
    // The compute layer in front of these routes authenticated the request already.
    let principal = match &who.cached {
        Some(Caller(principal)) => principal.clone(),
        None => authenticate(state, &who.headers)
            .await
            .map_err(|e| ApiError::from_app(api, model, e))?,
    };
    read_access(state, principal.as_ref(), &id)
        .await
        .map_err(|e| ApiError::from_app(api, model, e))?;
    inference
        .open(&id, revision, wait)
        .await
        .map_err(|e| ApiError::from_model(api, model, e))
}

fn load_error(api: Api, name: &str, e: &LoadError) -> ApiError {
    match e {
        RegistryError::Load(LoadFailure::NotLocal(path)) => ApiError::unavailable(
            api,
            format!("the weights of `{name}` ({path}) are not on this node yet"),
        ),
        RegistryError::Load(LoadFailure::Model(e)) => {
            tracing::warn!(model = %name, error = %error_chain(&**e), "cannot load model");
            ApiError::new(
                api,
                StatusCode::UNPROCESSABLE_ENTITY,
                "unsupported_model",
                // The cause names paths in the data directory: it goes to the log only.
                format!(
                    "the model `{name}` cannot be served by this node: unsupported or invalid model files"
                ),
            )
        }
        RegistryError::Load(LoadFailure::Io(e)) => ApiError::internal(api, "materialize model", e),
        RegistryError::Engine(e) => ApiError::internal(api, "start engine", e),
        RegistryError::TooLarge { needed, budget } => ApiError::new(
            api,
            StatusCode::UNPROCESSABLE_ENTITY,
            "unsupported_model",
            format!(
                "the model `{name}` needs {} MiB of memory, more than this node's inference budget of {} MiB",
                needed >> 20,
                budget >> 20
            ),
        ),
        e @ RegistryError::Busy { .. } => {
            ApiError::unavailable(api, format!("cannot load `{name}` now: {e}"))
        }
        e @ (RegistryError::NotGeneration | RegistryError::Load(_)) => {
            ApiError::internal(api, "load model", e)
        }
    }
}

async fn list_models(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let api = Api::OpenAi;
    let principal = match authenticate(&state, &headers).await {
        Ok(p) => p,
        Err(e) => return ApiError::from_app(api, "", e).into_response(),
    };
    let mut data = Vec::new();
    let loaded = state
        .inference()
        .map(|i| i.loaded_models())
        .unwrap_or_default();
    let mut seen = std::collections::HashSet::new();
    for key in loaded {
        if !seen.insert(key.repo.clone()) {
            continue;
        }
        let Ok(id) = RepoId::parse(RepoType::Model, &key.repo) else {
            continue;
        };
        if read_access(&state, principal.as_ref(), &id).await.is_ok() {
            data.push(json!({
                "id": key.repo,
                "object": "model",
                "created": 0,
                "owned_by": id.namespace(),
            }));
        }
    }
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

// ---------------------------------------------------------------------------------------------
// Shared generation

/// A validated generation: prompt tokens and limits.
struct Job {
    model: ModelHandle,
    prompt: Vec<u32>,
    max_tokens: usize,
    sampling: SamplingParams,
    stop: Vec<String>,
}

impl Job {
    /// Checks the length against the model's context at once (no queueing for the impossible).
    fn new(
        api: Api,
        model: ModelHandle,
        prompt: Vec<u32>,
        max_tokens: Option<u64>,
        default_max: usize,
        sampling: SamplingParams,
        stop: Vec<String>,
    ) -> Result<Self, ApiError> {
        let limit = model.max_len();
        if prompt.is_empty() {
            return Err(ApiError::invalid(api, "the prompt is empty"));
        }
        let remaining = limit.saturating_sub(prompt.len());
        let max_tokens = match max_tokens {
            Some(0) => return Err(ApiError::invalid(api, "max_tokens must be at least 1")),
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
            None => default_max.min(remaining),
        };
        if max_tokens == 0 || max_tokens > remaining {
            return Err(ApiError::invalid(
                api,
                format!(
                    "This model's maximum context length is {limit} tokens. However, you requested {} tokens ({} in the prompt, {max_tokens} for the completion). Please reduce the prompt or max_tokens.",
                    prompt.len().saturating_add(max_tokens),
                    prompt.len()
                ),
            ));
        }
        if stop.len() > 8 {
            return Err(ApiError::invalid(api, "at most 8 stop sequences"));
        }
        Ok(Self {
            model,
            prompt,
            max_tokens,
            sampling,
            stop,
        })
    }

    async fn start(self, api: Api) -> Result<TextStream, ApiError> {
        self.model
            .submit_text(
                SubmitRequest {
                    prompt: self.prompt,
                    max_tokens: self.max_tokens,
                    sampling: self.sampling,
                    ignore_eos: false,
                },
                self.stop,
            )
            .await
            .map_err(|e| ApiError::from_submit(api, e))
    }
}

/// A whole generation.
struct Output {
    text: String,
    chunks: Vec<TextChunk>,
    finish: Finish,
}

async fn run_to_end(api: Api, mut stream: TextStream) -> Result<Output, ApiError> {
    let mut text = String::new();
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::internal(api, "generation", &e))?;
        text.push_str(&chunk.text);
        let finish = chunk.finish;
        chunks.push(chunk);
        if let Some(finish) = finish {
            return Ok(Output {
                text,
                chunks,
                finish,
            });
        }
    }
    Err(ApiError::internal(api, "generation", &"stream ended early"))
}

/// What an SSE renderer is shown.
enum Step<'a> {
    Chunk {
        chunk: &'a TextChunk,
        /// Tokens generated so far, this one included.
        generated: usize,
    },
    Error(String),
}

/// An SSE response of `stream`'s chunks, each rendered to events by `render`; `tail` events
/// follow the last chunk (not an error).
fn sse(
    stream: TextStream,
    head: Vec<Event>,
    render: impl FnMut(Step<'_>) -> Vec<Event> + Send + 'static,
    tail: Vec<Event>,
) -> Response {
    struct St<R> {
        stream: TextStream,
        queue: VecDeque<Event>,
        tail: Vec<Event>,
        render: R,
        done: bool,
    }
    let st = St {
        stream,
        queue: head.into(),
        tail,
        render,
        done: false,
    };
    let events = futures::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(e) = st.queue.pop_front() {
                return Some((Ok::<_, Infallible>(e), st));
            }
            if st.done {
                return None;
            }
            match st.stream.next().await {
                Some(Ok(chunk)) => {
                    let generated = st.stream.generated_tokens();
                    st.queue.extend((st.render)(Step::Chunk {
                        chunk: &chunk,
                        generated,
                    }));
                    if chunk.finish.is_some() {
                        st.queue.extend(std::mem::take(&mut st.tail));
                        st.done = true;
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "generation failed mid-stream");
                    st.queue.extend((st.render)(Step::Error(e.to_string())));
                    st.done = true;
                }
                None => st.done = true,
            }
        }
    });
    sse_response(events)
}

fn sse_response(
    events: impl Stream<Item = Result<Event, Infallible>> + Send + 'static,
) -> Response {
    (
        [("x-accel-buffering", "no")],
        Sse::new(events).keep_alive(KeepAlive::default()),
    )
        .into_response()
}

fn json_event(v: &Value) -> Event {
    Event::default().data(v.to_string())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn request_id(prefix: &str) -> String {
    let mut bytes = [0u8; 12];
    let _ = getrandom::fill(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{hex}")
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

// ---------------------------------------------------------------------------------------------
// OpenAI

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Message {
    role: String,
    content: Option<Content>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The sampling fields OpenAI's two endpoints share.
#[derive(Debug, Deserialize)]
struct OpenAiSampling {
    model: String,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
    stop: Option<OneOrMany>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    n: Option<u32>,
}

impl OpenAiSampling {
    /// The stop strings (`stop`: one or a list), taken out of the request.
    fn take_stop(&mut self) -> Vec<String> {
        self.stop
            .take()
            .map(OneOrMany::into_vec)
            .unwrap_or_default()
    }

    fn params(&self) -> Result<SamplingParams, ApiError> {
        let api = Api::OpenAi;
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid(
                api,
                format!("temperature must be between 0 and 2, got {temperature}"),
            ));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(ApiError::invalid(
                api,
                format!("top_p must be in (0, 1], got {p}"),
            ));
        }
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid(api, "only n = 1 is supported"));
        }
        Ok(SamplingParams {
            temperature,
            top_p: self.top_p,
            seed: self.seed,
            ..SamplingParams::default()
        })
    }

    fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    messages: Vec<Message>,
    #[serde(default)]
    logprobs: bool,
    top_logprobs: Option<u32>,
    #[serde(flatten)]
    sampling: OpenAiSampling,
}

/// Most alternatives per token: OpenAI's `top_logprobs` limit (also applied to the legacy
/// `logprobs` and TGI's `top_n_tokens`).
const MAX_TOP_LOGPROBS: u32 = 20;

fn check_top(api: Api, field: &str, n: u32) -> Result<usize, ApiError> {
    if n > MAX_TOP_LOGPROBS {
        return Err(ApiError::invalid(
            api,
            format!("{field} must be at most {MAX_TOP_LOGPROBS}, got {n}"),
        ));
    }
    Ok(n as usize)
}

/// The text of one token on its own (the `token` of a logprobs entry).
fn token_text(tokenizer: &HfTokenizer, id: u32) -> String {
    tokenizer.decode(&[id], false).unwrap_or_default()
}

/// A token of OpenAI chat `logprobs.content`: `{token, logprob, bytes, top_logprobs}`.
fn chat_logprob(tokenizer: &HfTokenizer, c: &TextChunk) -> Value {
    let entry = |id: u32, logprob: f32| {
        let token = token_text(tokenizer, id);
        json!({"bytes": token.as_bytes(), "token": token, "logprob": logprob})
    };
    let mut v = entry(c.token, c.logprob);
    v["top_logprobs"] = c
        .top_logprobs
        .iter()
        .map(|t| entry(t.token, t.logprob))
        .collect();
    v
}

/// OpenAI legacy completion `logprobs` of `chunks`: parallel `tokens`, `token_logprobs`,
/// `top_logprobs` (token text → logprob) and `text_offset` (characters, from `offset`).
/// Returns the offset after the last token.
fn completion_logprobs(
    tokenizer: &HfTokenizer,
    chunks: &[&TextChunk],
    offset: usize,
) -> (Value, usize) {
    let mut offset = offset;
    let (mut tokens, mut logprobs, mut tops, mut offsets) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for c in chunks {
        let token = token_text(tokenizer, c.token);
        offsets.push(offset);
        offset += token.chars().count();
        tokens.push(token);
        logprobs.push(c.logprob);
        let top: serde_json::Map<String, Value> = c
            .top_logprobs
            .iter()
            .map(|t| (token_text(tokenizer, t.token), json!(t.logprob)))
            .collect();
        tops.push(Value::Object(top));
    }
    (
        json!({"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets}),
        offset,
    )
}

async fn chat_completions(
    State(state): State<AppState>,
    who: Who,
    body: Bytes,
) -> Result<Response, ApiError> {
    let api = Api::OpenAi;
    let mut req: ChatRequest = parse(api, &body)?;
    let mut params = req.sampling.params()?;
    let top = req
        .top_logprobs
        .map(|n| check_top(api, "top_logprobs", n))
        .transpose()?;
    if top.is_some_and(|n| n > 0) && !req.logprobs {
        return Err(ApiError::invalid(
            api,
            "top_logprobs requires logprobs to be true",
        ));
    }
    let logprobs = req.logprobs;
    params.top_logprobs = top.unwrap_or(0);
    if req.messages.is_empty() {
        return Err(ApiError::invalid(api, "messages must not be empty"));
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for m in req.messages {
        let content = match m.content {
            None => String::new(),
            Some(Content::Text(t)) => t,
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for p in parts {
                    match (p.kind.as_str(), p.text) {
                        ("text", Some(t)) => text.push_str(&t),
                        (kind, _) => {
                            return Err(ApiError::invalid(
                                api,
                                format!("unsupported content part of type {kind:?}"),
                            ));
                        }
                    }
                }
                text
            }
        };
        messages.push(ChatMessage::new(m.role, content));
    }
    let name = req.sampling.model.clone();
    let model = open_model(&state, &who, api, &name).await?;
    let Some(template) = model.template() else {
        return Err(ApiError::invalid(
            api,
            format!("the model `{name}` has no chat template; use /v1/completions"),
        ));
    };
    let text = template
        .render(&messages, true)
        .map_err(|e| ApiError::invalid(api, e.to_string()))?;
    let prompt = model
        .tokenizer()
        .encode(&text, false)
        .map_err(|e| ApiError::internal(api, "tokenize", &e))?;
    let prompt_len = prompt.len();
    let include_usage = req.sampling.include_usage();
    let max = req
        .sampling
        .max_completion_tokens
        .or(req.sampling.max_tokens);
    let stop = req.sampling.take_stop();
    let tokenizer = model.clone();
    let job = Job::new(api, model, prompt, max, usize::MAX, params, stop)?;
    let stream = job.start(api).await?;
    let (id, created) = (request_id("chatcmpl"), now());
    if !req.sampling.stream {
        let out = run_to_end(api, stream).await?;
        let content: Vec<Value> = out
            .chunks
            .iter()
            .map(|c| chat_logprob(tokenizer.tokenizer(), c))
            .collect();
        return Ok(axum::Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": name,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": out.text},
                "logprobs": logprobs.then(|| json!({"content": content, "refusal": null})),
                "finish_reason": out.finish.openai(),
            }],
            "usage": usage(prompt_len, out.chunks.len()),
        }))
        .into_response());
    }
    let chunk = {
        let (id, name) = (id.clone(), name.clone());
        move |delta: Value, logprobs: Value, finish: Option<&str>| {
            json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": name,
                "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
            })
        }
    };
    let head = vec![json_event(&chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
        None,
    ))];
    // Tokens whose text is held back (an incomplete character or stop string) have their
    // logprobs sent with the next chunk that has text, so every token is reported once.
    let mut pending: Vec<Value> = Vec::new();
    let mut take_pending = move |c: &TextChunk| {
        if !logprobs {
            return Value::Null;
        }
        pending.push(chat_logprob(tokenizer.tokenizer(), c));
        if c.text.is_empty() && c.finish.is_none() {
            return Value::Null;
        }
        json!({"content": std::mem::take(&mut pending), "refusal": null})
    };
    let render = move |step: Step<'_>| match step {
        Step::Chunk {
            chunk: c,
            generated,
        } => {
            let mut events = Vec::new();
            let mut lp = take_pending(c);
            if !c.text.is_empty() {
                events.push(json_event(&chunk(
                    json!({"content": c.text}),
                    std::mem::take(&mut lp),
                    None,
                )));
            }
            if let Some(f) = c.finish {
                events.push(json_event(&chunk(json!({}), lp, Some(f.openai()))));
                if include_usage {
                    events.push(json_event(&json!({
                        "id": id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": name,
                        "choices": [],
                        "usage": usage(prompt_len, generated),
                    })));
                }
            }
            events
        }
        Step::Error(m) => vec![json_event(
            &json!({"error": {"message": m, "type": "server_error", "code": null}}),
        )],
    };
    let tail = vec![Event::default().data("[DONE]")];
    Ok(sse(stream, head, render, tail))
}

#[derive(Debug, Deserialize)]
struct CompletionRequest {
    prompt: OneOrMany,
    suffix: Option<String>,
    /// Alternatives per token to report (`null` = no logprobs).
    logprobs: Option<u32>,
    #[serde(flatten)]
    sampling: OpenAiSampling,
}

async fn completions(
    State(state): State<AppState>,
    who: Who,
    body: Bytes,
) -> Result<Response, ApiError> {
    let api = Api::OpenAi;
    let mut req: CompletionRequest = parse(api, &body)?;
    let mut params = req.sampling.params()?;
    let logprobs = req
        .logprobs
        .map(|n| check_top(api, "logprobs", n))
        .transpose()?;
    params.top_logprobs = logprobs.unwrap_or(0);
    let logprobs = logprobs.is_some();
    if req.suffix.is_some() {
        return Err(ApiError::invalid(api, "suffix is not supported"));
    }
    let mut prompts = req.prompt.into_vec();
    if prompts.len() != 1 {
        return Err(ApiError::invalid(
            api,
            "exactly one prompt per request is supported",
        ));
    }
    let prompt_text = prompts.remove(0);
    let name = req.sampling.model.clone();
    let model = open_model(&state, &who, api, &name).await?;
    let prompt = model
        .tokenizer()
        .encode(&prompt_text, true)
        .map_err(|e| ApiError::internal(api, "tokenize", &e))?;
    let prompt_len = prompt.len();
    let include_usage = req.sampling.include_usage();
    let max = req
        .sampling
        .max_tokens
        .or(req.sampling.max_completion_tokens);
    let stop = req.sampling.take_stop();
    // OpenAI's default for the legacy endpoint.
    let tokenizer = model.clone();
    let job = Job::new(api, model, prompt, max, 16, params, stop)?;
    let stream = job.start(api).await?;
    let (id, created) = (request_id("cmpl"), now());
    if !req.sampling.stream {
        let out = run_to_end(api, stream).await?;
        let chunks: Vec<&TextChunk> = out.chunks.iter().collect();
        let lp = logprobs.then(|| completion_logprobs(tokenizer.tokenizer(), &chunks, 0).0);
        return Ok(axum::Json(json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": name,
            "choices": [{
                "index": 0,
                "text": out.text,
                "logprobs": lp,
                "finish_reason": out.finish.openai(),
            }],
            "usage": usage(prompt_len, out.chunks.len()),
        }))
        .into_response());
    }
    // As for chat: logprobs of tokens without text yet go out with the next chunk.
    let mut pending: Vec<TextChunk> = Vec::new();
    let mut offset = 0;
    let render = move |step: Step<'_>| match step {
        Step::Chunk {
            chunk: c,
            generated,
        } => {
            if logprobs {
                pending.push(c.clone());
            }
            if c.text.is_empty() && c.finish.is_none() {
                return Vec::new();
            }
            let lp = logprobs.then(|| {
                let chunks: Vec<&TextChunk> = pending.iter().collect();
                let (lp, end) = completion_logprobs(tokenizer.tokenizer(), &chunks, offset);
                offset = end;
                pending.clear();
                lp
            });
            let mut v = json!({
                "id": id,
                "object": "text_completion",
                "created": created,
                "model": name,
                "choices": [{
                    "index": 0,
                    "text": c.text,
                    "logprobs": lp,
                    "finish_reason": c.finish.map(Finish::openai),
                }],
            });
            if c.finish.is_some() && include_usage {
                v["usage"] = usage(prompt_len, generated);
            }
            vec![json_event(&v)]
        }
        Step::Error(m) => vec![json_event(
            &json!({"error": {"message": m, "type": "server_error", "code": null}}),
        )],
    };
    Ok(sse(
        stream,
        Vec::new(),
        render,
        vec![Event::default().data("[DONE]")],
    ))
}

// ---------------------------------------------------------------------------------------------
// TGI and the HF Inference API

#[derive(Debug, Deserialize, Default)]
struct TgiParameters {
    max_new_tokens: Option<u64>,
    temperature: Option<f32>,
    top_k: Option<usize>,
    top_p: Option<f32>,
    repetition_penalty: Option<f32>,
    #[serde(default)]
    do_sample: bool,
    seed: Option<u64>,
    #[serde(default)]
    stop: Vec<String>,
    #[serde(default)]
    details: bool,
    /// Also return the prompt tokens with their log-probabilities (`details.prefill`).
    #[serde(default)]
    decoder_input_details: bool,
    /// Alternatives per generated token (`top_tokens`).
    top_n_tokens: Option<u32>,
    #[serde(default)]
    return_full_text: bool,
}

#[derive(Debug, Deserialize)]
struct TgiRequest {
    inputs: String,
    #[serde(default)]
    parameters: TgiParameters,
    /// hubmesh extension: the model repository (a TGI server has exactly one model).
    model: Option<String>,
    #[serde(default)]
    stream: bool,
}

impl TgiParameters {
    fn sampling(&self) -> Result<SamplingParams, ApiError> {
        let api = Api::Tgi;
        if let Some(t) = self.temperature
            && t <= 0.0
        {
            return Err(ApiError::invalid(
                api,
                "`temperature` must be strictly positive",
            ));
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p < 1.0)
        {
            return Err(ApiError::invalid(api, "`top_p` must be > 0.0 and < 1.0"));
        }
        if self.top_k == Some(0) {
            return Err(ApiError::invalid(api, "`top_k` must be strictly positive"));
        }
        if let Some(r) = self.repetition_penalty
            && r <= 0.0
        {
            return Err(ApiError::invalid(
                api,
                "`repetition_penalty` must be strictly positive",
            ));
        }
        // As TGI: any warping parameter turns sampling on.
        let sample = self.do_sample
            || self.temperature.is_some_and(|t| t != 1.0)
            || self.top_k.is_some()
            || self.top_p.is_some();
        Ok(SamplingParams {
            temperature: if sample {
                self.temperature.unwrap_or(1.0)
            } else {
                0.0
            },
            top_k: self.top_k,
            top_p: self.top_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
            top_logprobs: self
                .top_n_tokens
                .map(|n| check_top(api, "`top_n_tokens`", n))
                .transpose()?
                .unwrap_or(0),
            prompt_logprobs: self.decoder_input_details,
        })
    }
}

/// Parses and validates a TGI request against `model` (the body's when `None`).
async fn tgi_job(
    state: &AppState,
    who: &Who,
    body: &[u8],
    model: Option<String>,
) -> Result<(TgiRequest, Job), ApiError> {
    let api = Api::Tgi;
    let req: TgiRequest = parse(api, body)?;
    let sampling = req.parameters.sampling()?;
    if req.parameters.decoder_input_details && req.stream {
        // As TGI: prefill details exist only in a whole response.
        return Err(ApiError::invalid(
            api,
            "`decoder_input_details` == true is not supported when streaming tokens",
        ));
    }
    let Some(name) = model.or_else(|| req.model.clone()) else {
        return Err(ApiError::invalid(
            api,
            "`model` is required: the model repository to generate with, `ns/name`",
        ));
    };
    let handle = open_model(state, who, api, &name).await?;
    let prompt = handle
        .tokenizer()
        .encode(&req.inputs, true)
        .map_err(|e| ApiError::internal(api, "tokenize", &e))?;
    let stop = req.parameters.stop.clone();
    let job = Job::new(
        api,
        handle,
        prompt,
        req.parameters.max_new_tokens,
        100,
        sampling,
        stop,
    )?;
    Ok((req, job))
}

fn tgi_token(c: &TextChunk) -> Value {
    json!({"id": c.token, "text": c.text, "logprob": c.logprob, "special": c.special})
}

/// TGI's `top_tokens` of one step: `[{id, text, logprob, special}]`, most likely first.
fn tgi_top_tokens(tokenizer: &HfTokenizer, c: &TextChunk) -> Value {
    c.top_logprobs
        .iter()
        .map(|t| {
            let special = tokenizer
                .decode(&[t.token], true)
                .is_ok_and(|s| s.is_empty());
            json!({"id": t.token, "text": token_text(tokenizer, t.token), "logprob": t.logprob, "special": special})
        })
        .collect()
}

async fn tgi_generate_value(req: &TgiRequest, job: Job) -> Result<Value, ApiError> {
    let seed = job.sampling.seed;
    let model = job.model.clone();
    let prompt = job.prompt.clone();
    let stream = job.start(Api::Tgi).await?;
    let out = run_to_end(Api::Tgi, stream).await?;
    let text = if req.parameters.return_full_text {
        format!("{}{}", req.inputs, out.text)
    } else {
        out.text
    };
    let mut v = json!({"generated_text": text});
    if req.parameters.details {
        v["details"] = json!({
            "finish_reason": out.finish.tgi(),
            "generated_tokens": out.chunks.len(),
            "seed": seed,
            "prefill": [],
            "tokens": out.chunks.iter().map(tgi_token).collect::<Vec<_>>(),
        });
        if req.parameters.top_n_tokens.is_some_and(|n| n > 0) {
            v["details"]["top_tokens"] = out
                .chunks
                .iter()
                .map(|c| tgi_top_tokens(model.tokenizer(), c))
                .collect();
        }
        if req.parameters.decoder_input_details {
            // The first prompt token has no logprob (nothing precedes it), as in TGI.
            let logprobs = out
                .chunks
                .first()
                .and_then(|c| c.prompt_logprobs.as_deref());
            v["details"]["prefill"] = prompt
                .iter()
                .enumerate()
                .map(|(i, &id)| {
                    let logprob = i
                        .checked_sub(1)
                        .and_then(|i| logprobs.and_then(|l| l.get(i)));
                    json!({"id": id, "text": token_text(model.tokenizer(), id), "logprob": logprob})
                })
                .collect();
        }
    }
    Ok(v)
}

async fn tgi_stream(req: TgiRequest, job: Job) -> Result<Response, ApiError> {
    let seed = job.sampling.seed;
    let input_length = job.prompt.len();
    let details = req.parameters.details;
    let mut text = if req.parameters.return_full_text {
        req.inputs.clone()
    } else {
        String::new()
    };
    let model = job.model.clone();
    let top = req.parameters.top_n_tokens.is_some_and(|n| n > 0);
    let stream = job.start(Api::Tgi).await?;
    let render = move |step: Step<'_>| match step {
        Step::Chunk {
            chunk: c,
            generated,
        } => {
            text.push_str(&c.text);
            let last = c.finish.is_some();
            let mut v = json!({
                "index": generated,
                "token": tgi_token(c),
                "generated_text": last.then(|| text.clone()),
                "details": (last && details).then(|| json!({
                    "finish_reason": c.finish.map(Finish::tgi),
                    "generated_tokens": generated,
                    "seed": seed,
                    "input_length": input_length,
                })),
            });
            if top {
                v["top_tokens"] = tgi_top_tokens(model.tokenizer(), c);
            }
            vec![json_event(&v)]
        }
        Step::Error(m) => vec![json_event(&json!({"error": m, "error_type": "generation"}))],
    };
    Ok(sse(stream, Vec::new(), render, Vec::new()))
}

async fn generate(
    State(state): State<AppState>,
    who: Who,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (req, job) = tgi_job(&state, &who, &body, None).await?;
    Ok(axum::Json(tgi_generate_value(&req, job).await?).into_response())
}

async fn generate_stream(
    State(state): State<AppState>,
    who: Who,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (req, job) = tgi_job(&state, &who, &body, None).await?;
    tgi_stream(req, job).await
}

/// `POST /models/{ns}/{name}`, dispatched on the model's pipeline tag:
/// - `text-generation`: `[{"generated_text"}]` (wrapped in an array, as the HF Inference API
///   and TGI's `/` route do), or an SSE stream with `"stream": true`;
/// - `feature-extraction`: `{"inputs": text | [text]}` → one embedding per text, nested
///   (`[[f32]]`, as text-embeddings-inference answers);
/// - `sentence-similarity`: `{"inputs": {"source_sentence", "sentences"}}` → cosine scores.
async fn hf_inference(
    State(state): State<AppState>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    who: Who,
    body: Bytes,
) -> Result<Response, ApiError> {
    let api = Api::Tgi;
    let model = format!("{ns}/{name}");
    let opened = open_served(&state, &who, api, &model, hf_wait(&who.headers)).await?;
    let embedder = match (&opened.served, opened.pipeline_tag.as_str()) {
        (Served::Embed(e), "feature-extraction" | "sentence-similarity") => Some(e.clone()),
        (Served::Generate(_), "text-generation") => None,
        (Served::Embed(_), tag) | (Served::Generate(_), tag) => {
            return Err(ApiError::new(
                api,
                StatusCode::UNPROCESSABLE_ENTITY,
                "unsupported_model",
                format!("the pipeline `{tag}` of `{model}` is not served by this node"),
            ));
        }
    };
    let Some(embedder) = embedder else {
        let (req, job) = tgi_job(&state, &who, &body, Some(model)).await?;
        if req.stream {
            return tgi_stream(req, job).await;
        }
        return Ok(axum::Json(json!([tgi_generate_value(&req, job).await?])).into_response());
    };
    let req: HfEmbedRequest = parse(api, &body)?;
    match req.inputs {
        HfInputs::Texts(texts) => {
            let texts = texts.into_vec();
            check_inputs(api, &texts)?;
            let out = run_embed(api, embedder, texts).await?;
            Ok(axum::Json(json!(out.vectors)).into_response())
        }
        HfInputs::Similarity {
            source_sentence,
            sentences,
        } => {
            check_inputs(api, &sentences)?;
            let mut texts = vec![source_sentence];
            texts.extend(sentences);
            let out = run_embed(api, embedder, texts).await?;
            let (source, rest) = out.vectors.split_first().expect("one vector per input");
            let scores: Vec<f32> = rest.iter().map(|v| cosine(source, v)).collect();
            Ok(axum::Json(json!(scores)).into_response())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Embeddings

/// Most texts in one embedding request.
const MAX_EMBED_INPUTS: usize = 256;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum HfInputs {
    Texts(OneOrMany),
    Similarity {
        source_sentence: String,
        sentences: Vec<String>,
    },
}

#[derive(Debug, Deserialize)]
struct HfEmbedRequest {
    inputs: HfInputs,
}

#[derive(Debug, Deserialize)]
struct EmbeddingsRequest {
    model: String,
    input: OneOrMany,
    encoding_format: Option<String>,
    dimensions: Option<usize>,
}

fn check_inputs(api: Api, texts: &[String]) -> Result<(), ApiError> {
    if texts.is_empty() {
        return Err(ApiError::invalid(api, "the input is empty"));
    }
    if texts.len() > MAX_EMBED_INPUTS {
        return Err(ApiError::invalid(
            api,
            format!("at most {MAX_EMBED_INPUTS} inputs per request"),
        ));
    }
    Ok(())
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b)).max(1e-12)
}

/// Embeds on a blocking thread (the forward pass is CPU-heavy); not tied to the request.
async fn run_embed(
    api: Api,
    embedder: Arc<Embedder>,
    texts: Vec<String>,
) -> Result<Embeddings, ApiError> {
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        embedder.embed(&refs)
    })
    .await
    .map_err(|e| ApiError::internal(api, "embed", &e))?
    .map_err(|e| ApiError::internal(api, "embed", &e))
}

/// `POST /v1/embeddings` (OpenAI): `input` a string or a list of strings; `encoding_format`
/// `float` (default) or `base64` (little-endian f32, what the `openai` Python client asks for).
async fn embeddings(
    State(state): State<AppState>,
    who: Who,
    body: Bytes,
) -> Result<Response, ApiError> {
    let api = Api::OpenAi;
    let req: EmbeddingsRequest = parse(api, &body)?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                api,
                format!("unsupported encoding_format `{other}`: use `float` or `base64`"),
            ));
        }
    };
    let texts = req.input.into_vec();
    check_inputs(api, &texts)?;
    let opened = open_served(&state, &who, api, &req.model, Wait::Bounded).await?;
    let Served::Embed(embedder) = opened.served else {
        return Err(ApiError::invalid(
            api,
            format!("`{}` is not an embedding model", req.model),
        ));
    };
    if let Some(d) = req.dimensions
        && d != embedder.dim()
    {
        return Err(ApiError::invalid(
            api,
            format!(
                "`{}` has {} dimensions; `dimensions` cannot change it",
                req.model,
                embedder.dim()
            ),
        ));
    }
    let out = run_embed(api, embedder, texts).await?;
    let data: Vec<Value> = out
        .vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    bytes
                ))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(axum::Json(json!({
        "object": "list",
        "data": data,
        "model": req.model,
        "usage": {"prompt_tokens": out.tokens, "total_tokens": out.tokens},
    }))
    .into_response())
}

// ---------------------------------------------------------------------------------------------
// TGI /info and /tokenize

#[derive(Debug, Deserialize)]
struct InfoQuery {
    model: Option<String>,
}

/// `GET /info?model=ns/name` (TGI's `Info`; the query names the model, a hubmesh extension).
async fn info(
    State(state): State<AppState>,
    who: Who,
    Query(q): Query<InfoQuery>,
) -> Result<Response, ApiError> {
    let api = Api::Tgi;
    let Some(model) = q.model else {
        return Err(ApiError::invalid(
            api,
            "`model` is required: `/info?model=ns/name`",
        ));
    };
    let opened = open_served(&state, &who, api, &model, Wait::Bounded).await?;
    let (max_input, max_total) = match &opened.served {
        Served::Generate(h) => (h.max_len().saturating_sub(1), h.max_len()),
        Served::Embed(e) => (e.max_len(), e.max_len()),
    };
    Ok(axum::Json(json!({
        "model_id": model.split_once(':').map_or(model.as_str(), |(m, _)| m),
        "model_sha": opened.commit,
        "model_pipeline_tag": opened.pipeline_tag,
        "max_concurrent_requests": 128,
        "max_best_of": 1,
        "max_stop_sequences": 8,
        "max_input_tokens": max_input,
        "max_total_tokens": max_total,
        "validation_workers": 1,
        "max_client_batch_size": MAX_EMBED_INPUTS,
        "router": "hubmesh",
        "version": env!("CARGO_PKG_VERSION"),
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
struct TokenizeRequest {
    inputs: String,
    model: Option<String>,
    #[serde(default = "yes")]
    add_special_tokens: bool,
}

fn yes() -> bool {
    true
}

/// `POST /tokenize` (TGI): `[{"id", "text", "start", "stop"}]`, byte offsets into `inputs`.
async fn tokenize(
    State(state): State<AppState>,
    who: Who,
    body: Bytes,
) -> Result<Response, ApiError> {
    let api = Api::Tgi;
    let req: TokenizeRequest = parse(api, &body)?;
    let Some(model) = req.model else {
        return Err(ApiError::invalid(
            api,
            "`model` is required: the model repository whose tokenizer to use, `ns/name`",
        ));
    };
    let opened = open_served(&state, &who, api, &model, Wait::Bounded).await?;
    let tokens = opened
        .served
        .tokenizer()
        .encode_with_offsets(&req.inputs, req.add_special_tokens)
        .map_err(|e| ApiError::internal(api, "tokenize", &e))?;
    let out: Vec<Value> = tokens
        .into_iter()
        .map(|(id, (start, stop))| {
            let text = req.inputs.get(start..stop).unwrap_or_default();
            json!({"id": id, "text": text, "start": start, "stop": stop})
        })
        .collect();
    Ok(axum::Json(json!(out)).into_response())
}

#[cfg(test)]
pub(crate) mod tests;
