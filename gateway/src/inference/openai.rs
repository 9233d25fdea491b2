//! The OpenAI routes: `POST /v1/chat/completions`, `POST /v1/completions` (SSE streams end
//! with `data: [DONE]`), `GET /v1/models` (the loaded models the caller may read).

use super::JsonBody;
use super::error::{Api, ApiError, parse, stream_error};
use super::generate::{
    Job, Step, check_top, json_event, now, request_id, run_to_end, sse, token_text, usage,
};
use super::open_model;
use crate::AppState;
use crate::access::read_access;
use crate::extract::{Who, authenticate};
use axum::extract::State;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use hub_infer::chat::ChatMessage;
use hub_infer::sampling::SamplingParams;
use hub_infer::serve::{Finish, TextChunk};
use hub_infer::tokenizer::{HfTokenizer, Tokenizer};
use hub_protocol::repo::{RepoId, RepoType};
use serde::Deserialize;
use serde_json::{Value, json};

pub(super) async fn list_models(State(state): State<AppState>, headers: HeaderMap) -> Response {
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

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub(super) fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub(super) struct ContentPart {
    #[serde(rename = "type")]
    pub(super) kind: String,
    pub(super) text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct Message {
    pub(super) role: String,
    pub(super) content: Option<Content>,
}

#[derive(Debug, Deserialize)]
pub(super) struct StreamOptions {
    #[serde(default)]
    pub(super) include_usage: bool,
}

/// The sampling fields OpenAI's two endpoints share.
#[derive(Debug, Deserialize)]
pub(super) struct OpenAiSampling {
    pub(super) model: String,
    pub(super) max_tokens: Option<u64>,
    pub(super) max_completion_tokens: Option<u64>,
    pub(super) temperature: Option<f32>,
    pub(super) top_p: Option<f32>,
    pub(super) seed: Option<u64>,
    pub(super) stop: Option<OneOrMany>,
    #[serde(default)]
    pub(super) stream: bool,
    pub(super) stream_options: Option<StreamOptions>,
    pub(super) n: Option<u32>,
}

impl OpenAiSampling {
    /// The stop strings (`stop`: one or a list), taken out of the request.
    pub(super) fn take_stop(&mut self) -> Vec<String> {
        self.stop
            .take()
            .map(OneOrMany::into_vec)
            .unwrap_or_default()
    }

    pub(super) fn params(&self) -> Result<SamplingParams, ApiError> {
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

    pub(super) fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct ChatRequest {
    pub(super) messages: Vec<Message>,
    #[serde(default)]
    pub(super) logprobs: bool,
    pub(super) top_logprobs: Option<u32>,
    #[serde(flatten)]
    pub(super) sampling: OpenAiSampling,
}

/// A token of OpenAI chat `logprobs.content`: `{token, logprob, bytes, top_logprobs}`.
pub(super) fn chat_logprob(tokenizer: &HfTokenizer, c: &TextChunk) -> Value {
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
pub(super) fn completion_logprobs(
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

pub(super) async fn chat_completions(
    State(state): State<AppState>,
    who: Who,
    body: JsonBody,
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
        Step::Error(m) => vec![json_event(&stream_error(Api::OpenAi, &m))],
    };
    let tail = vec![Event::default().data("[DONE]")];
    Ok(sse(stream, head, render, tail))
}

#[derive(Debug, Deserialize)]
pub(super) struct CompletionRequest {
    pub(super) prompt: OneOrMany,
    pub(super) suffix: Option<String>,
    /// Alternatives per token to report (`null` = no logprobs).
    pub(super) logprobs: Option<u32>,
    #[serde(flatten)]
    pub(super) sampling: OpenAiSampling,
}

pub(super) async fn completions(
    State(state): State<AppState>,
    who: Who,
    body: JsonBody,
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
        Step::Error(m) => vec![json_event(&stream_error(Api::OpenAi, &m))],
    };
    Ok(sse(
        stream,
        Vec::new(),
        render,
        vec![Event::default().data("[DONE]")],
    ))
}
