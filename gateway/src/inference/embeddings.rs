//! `POST /v1/embeddings` (OpenAI; `input` a string or a list, `encoding_format` `float` or
//! `base64`) and the embedding helpers the HF route shares.

use super::JsonBody;
use super::error::{Api, ApiError, parse};
use super::open_served;
use super::openai::OneOrMany;
use crate::AppState;
use crate::extract::Who;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use hub_infer::bert::{Embedder, Embeddings};
use hub_infer::serve::Served;
use hub_models::Wait;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

/// Most texts in one embedding request.
pub(super) const MAX_EMBED_INPUTS: usize = 256;

#[derive(Debug, Deserialize)]
pub(super) struct EmbeddingsRequest {
    pub(super) model: String,
    pub(super) input: OneOrMany,
    pub(super) encoding_format: Option<String>,
    pub(super) dimensions: Option<usize>,
}

pub(super) fn check_inputs(api: Api, texts: &[String]) -> Result<(), ApiError> {
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

/// Embeds on a blocking thread (the forward pass is CPU-heavy); not tied to the request.
pub(super) async fn run_embed(
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
pub(super) async fn embeddings(
    State(state): State<AppState>,
    who: Who,
    body: JsonBody,
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
