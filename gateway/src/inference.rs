//! Inference over HTTP: the OpenAI, TGI and HF Inference API routes, served from models stored
//! on this node — text generation by hub-infer's engine threads, sentence embeddings by its
//! BERT [`Embedder`](hub_infer::bert::Embedder) on blocking threads.
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
//! `hub-models`' [`ModelError`](hub_models::ModelError) in each API's shape (in `error`).
//!
//! Errors use each API's shape: OpenAI `{"error":{"message","type","code"}}` (bad requests are
//! 400), TGI `{"error","error_type"}` (bad requests are 422, like TGI's validation errors).
//! Requests that can never run (`max_tokens` past the context) are refused before any work;
//! a full queue is 429. Work is not tied to the request future: when the client goes away the
//! token stream is dropped and the engine frees the request's KV blocks before its next step.

// One module per API family; `error` renders every error (and SSE error event) in its API's
// shape, `generate` holds what the generation routes share.
mod embeddings;
mod error;
mod generate;
mod hf;
mod openai;
mod tgi;

use self::embeddings::embeddings;
use self::error::{Api, ApiError};
use self::hf::hf_inference;
use self::openai::{chat_completions, completions, list_models};
use self::tgi::{generate, generate_stream, info, tokenize};
use crate::AppState;
use crate::extract::{Caller, Who, authenticate};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::HeaderMap;
use hub_infer::serve::{ModelHandle, Served};
use hub_models::{Opened, Wait};
use hub_protocol::repo::{RepoId, RepoType};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::sync::Arc;

pub(crate) use error::{api_error, upstream_stream_error};

/// The JSON of an inference request's body as the compute layer parsed it, put in the request's
/// extensions so that the handler does not parse the bytes again.
#[derive(Debug, Clone)]
pub(crate) struct ParsedBody(pub(crate) Arc<Value>);

/// An inference request's body: its bytes, and the JSON the compute layer parsed from them
/// ([`ParsedBody`]) when it did. Rejections are axum's `Bytes` ones.
#[derive(Debug)]
pub(crate) struct JsonBody {
    bytes: Bytes,
    parsed: Option<Arc<Value>>,
}

impl JsonBody {
    /// The body as `T`: from the parsed JSON when there is some; from the bytes otherwise,
    /// or when the JSON does not fit `T` (so the error reads as serde_json reports it for the
    /// bytes, with its position).
    fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        if let Some(value) = &self.parsed
            && let Ok(t) = <T as serde::Deserialize>::deserialize(&**value)
        {
            return Ok(t);
        }
        serde_json::from_slice(&self.bytes)
    }
}

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let parsed = request
            .extensions()
            .get::<ParsedBody>()
            .map(|p| p.0.clone());
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Self { bytes, parsed })
    }
}

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
/// an embedder, anything else as a generation engine. A model not loaded yet is loaded in
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
    // Running a gated model serves what its files hold: it needs a grant.
    crate::access::access(state, principal.as_ref(), &id, hub_core::Need::Download)
        .await
        .map_err(|e| ApiError::from_app(api, model, e))?;
    inference
        .open(&id, revision, wait)
        .await
        .map_err(|e| ApiError::from_model(api, model, e))
}

#[cfg(test)]
pub(crate) mod tests;
