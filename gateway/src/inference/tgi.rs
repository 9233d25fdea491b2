//! The TGI routes: `POST /generate`, `POST /generate_stream` (the model is the body's `model`
//! field, a hubmesh extension since a TGI server has one model; streams have no `[DONE]`),
//! `GET /info?model=…`, `POST /tokenize`.

use super::JsonBody;
use super::embeddings::MAX_EMBED_INPUTS;
use super::error::{Api, ApiError, parse, stream_error};
use super::generate::{Job, Step, check_top, json_event, run_to_end, sse, token_text};
use super::{open_model, open_served};
use crate::AppState;
use crate::extract::Who;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use hub_infer::sampling::SamplingParams;
use hub_infer::serve::{Finish, Served, TextChunk};
use hub_infer::tokenizer::{HfTokenizer, Tokenizer};
use hub_models::Wait;
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Debug, Deserialize, Default)]
pub(super) struct TgiParameters {
    pub(super) max_new_tokens: Option<u64>,
    pub(super) temperature: Option<f32>,
    pub(super) top_k: Option<usize>,
    pub(super) top_p: Option<f32>,
    pub(super) repetition_penalty: Option<f32>,
    #[serde(default)]
    pub(super) do_sample: bool,
    pub(super) seed: Option<u64>,
    #[serde(default)]
    pub(super) stop: Vec<String>,
    #[serde(default)]
    pub(super) details: bool,
    /// Also return the prompt tokens with their log-probabilities (`details.prefill`).
    #[serde(default)]
    pub(super) decoder_input_details: bool,
    /// Alternatives per generated token (`top_tokens`).
    pub(super) top_n_tokens: Option<u32>,
    #[serde(default)]
    pub(super) return_full_text: bool,
}

#[derive(Debug, Deserialize)]
pub(super) struct TgiRequest {
    pub(super) inputs: String,
    #[serde(default)]
    pub(super) parameters: TgiParameters,
    /// hubmesh extension: the model repository (a TGI server has exactly one model).
    pub(super) model: Option<String>,
    #[serde(default)]
    pub(super) stream: bool,
}

impl TgiParameters {
    pub(super) fn sampling(&self) -> Result<SamplingParams, ApiError> {
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
pub(super) async fn tgi_job(
    state: &AppState,
    who: &Who,
    body: &JsonBody,
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

pub(super) fn tgi_token(c: &TextChunk) -> Value {
    json!({"id": c.token, "text": c.text, "logprob": c.logprob, "special": c.special})
}

/// TGI's `top_tokens` of one step: `[{id, text, logprob, special}]`, most likely first.
pub(super) fn tgi_top_tokens(tokenizer: &HfTokenizer, c: &TextChunk) -> Value {
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

pub(super) async fn tgi_generate_value(req: &TgiRequest, job: Job) -> Result<Value, ApiError> {
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

pub(super) async fn tgi_stream(req: TgiRequest, job: Job) -> Result<Response, ApiError> {
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
        Step::Error(m) => vec![json_event(&stream_error(Api::Tgi, &m))],
    };
    Ok(sse(stream, Vec::new(), render, Vec::new()))
}

pub(super) async fn generate(
    State(state): State<AppState>,
    who: Who,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let (req, job) = tgi_job(&state, &who, &body, None).await?;
    Ok(axum::Json(tgi_generate_value(&req, job).await?).into_response())
}

pub(super) async fn generate_stream(
    State(state): State<AppState>,
    who: Who,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let (req, job) = tgi_job(&state, &who, &body, None).await?;
    tgi_stream(req, job).await
}

#[derive(Debug, Deserialize)]
pub(super) struct InfoQuery {
    pub(super) model: Option<String>,
}

/// `GET /info?model=ns/name` (TGI's `Info`; the query names the model, a hubmesh extension).
pub(super) async fn info(
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
pub(super) struct TokenizeRequest {
    pub(super) inputs: String,
    pub(super) model: Option<String>,
    #[serde(default = "yes")]
    pub(super) add_special_tokens: bool,
}

pub(super) fn yes() -> bool {
    true
}

/// `POST /tokenize` (TGI): `[{"id", "text", "start", "stop"}]`, byte offsets into `inputs`.
pub(super) async fn tokenize(
    State(state): State<AppState>,
    who: Who,
    body: JsonBody,
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
