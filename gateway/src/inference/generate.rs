//! What the generation routes share: a validated [`Job`] (prompt, limits, sampling), running
//! it to the end or as an SSE stream, token logprob helpers, ids and usage.

use super::error::{Api, ApiError};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use hub_infer::sampling::SamplingParams;
use hub_infer::serve::{Finish, ModelHandle, SubmitRequest, TextChunk, TextStream};
use hub_infer::tokenizer::{HfTokenizer, Tokenizer};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

/// A validated generation: prompt tokens and limits.
pub(super) struct Job {
    pub(super) model: ModelHandle,
    pub(super) prompt: Vec<u32>,
    pub(super) max_tokens: usize,
    pub(super) sampling: SamplingParams,
    pub(super) stop: Vec<String>,
}

impl Job {
    /// Checks the length against the model's context at once (no queueing for the impossible).
    pub(super) fn new(
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

    pub(super) async fn start(self, api: Api) -> Result<TextStream, ApiError> {
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
pub(super) struct Output {
    pub(super) text: String,
    pub(super) chunks: Vec<TextChunk>,
    pub(super) finish: Finish,
}

pub(super) async fn run_to_end(api: Api, mut stream: TextStream) -> Result<Output, ApiError> {
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
pub(super) enum Step<'a> {
    Chunk {
        chunk: &'a TextChunk,
        /// Tokens generated so far, this one included.
        generated: usize,
    },
    Error(String),
}

/// An SSE response of `stream`'s chunks, each rendered to events by `render`; `tail` events
/// follow the last chunk (not an error).
pub(super) fn sse(
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

pub(super) fn sse_response(
    events: impl Stream<Item = Result<Event, Infallible>> + Send + 'static,
) -> Response {
    (
        [("x-accel-buffering", "no")],
        Sse::new(events).keep_alive(KeepAlive::default()),
    )
        .into_response()
}

pub(super) fn json_event(v: &Value) -> Event {
    Event::default().data(v.to_string())
}

pub(super) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(super) fn request_id(prefix: &str) -> String {
    let mut bytes = [0u8; 12];
    let _ = getrandom::fill(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{hex}")
}

pub(super) fn usage(prompt: usize, completion: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

/// Most alternatives per token: OpenAI's `top_logprobs` limit (also applied to the legacy
/// `logprobs` and TGI's `top_n_tokens`).
pub(super) const MAX_TOP_LOGPROBS: u32 = 20;

pub(super) fn check_top(api: Api, field: &str, n: u32) -> Result<usize, ApiError> {
    if n > MAX_TOP_LOGPROBS {
        return Err(ApiError::invalid(
            api,
            format!("{field} must be at most {MAX_TOP_LOGPROBS}, got {n}"),
        ));
    }
    Ok(n as usize)
}

/// The text of one token on its own (the `token` of a logprobs entry).
pub(super) fn token_text(tokenizer: &HfTokenizer, id: u32) -> String {
    tokenizer.decode(&[id], false).unwrap_or_default()
}
