//! The HF Inference API route, `POST /models/{ns}/{name}`, dispatched on the model card's
//! `pipeline_tag` (else the model's kind).

use super::JsonBody;
use super::embeddings::{check_inputs, run_embed};
use super::error::{Api, ApiError, parse};
use super::openai::OneOrMany;
use super::tgi::{tgi_generate_value, tgi_job, tgi_stream};
use super::{hf_wait, open_served};
use crate::AppState;
use crate::extract::Who;
use axum::extract::{Path as UrlPath, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use hub_infer::serve::Served;
use serde::Deserialize;
use serde_json::json;

/// `POST /models/{ns}/{name}`, dispatched on the model's pipeline tag:
/// - `text-generation`: `[{"generated_text"}]` (wrapped in an array, as the HF Inference API
///   and TGI's `/` route do), or an SSE stream with `"stream": true`;
/// - `feature-extraction`: `{"inputs": text | [text]}` → one embedding per text, nested
///   (`[[f32]]`, as text-embeddings-inference answers);
/// - `sentence-similarity`: `{"inputs": {"source_sentence", "sentences"}}` → cosine scores.
pub(super) async fn hf_inference(
    State(state): State<AppState>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    who: Who,
    body: JsonBody,
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

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum HfInputs {
    Texts(OneOrMany),
    Similarity {
        source_sentence: String,
        sentences: Vec<String>,
    },
}

#[derive(Debug, Deserialize)]
pub(super) struct HfEmbedRequest {
    pub(super) inputs: HfInputs,
}

pub(super) fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b)).max(1e-12)
}
