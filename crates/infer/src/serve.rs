//! Serving: one engine thread per loaded model, a registry of warm models, and text streams.
//!
//! Who spawns whom, and which channels connect them:
//! - [`ModelHandle::spawn`] starts a dedicated OS thread that owns one [`Engine`] (the forward
//!   pass is CPU-heavy and synchronous, so it never runs on the async executor). The handle is a
//!   cheap `Clone` around the sending side of a **bounded** command channel.
//! - [`ModelHandle::submit`] sends a request and awaits the thread's answer (queued, or
//!   refused: queue full, too long, …). On success the caller holds a per-request receiver of
//!   [`StreamEvent`]s. It is bounded by `max_tokens + 1` events, the most a request can ever
//!   produce, so the engine thread never blocks on a slow client and never drops a token.
//! - Between steps the thread drops requests whose receiver is gone (`is_closed`): a client
//!   that disconnects frees its KV blocks before the next step.
//! - When every handle is dropped the thread finishes the requests it has, then exits.
//! - [`TextStream`] turns token events into text (incremental detokenization) and applies stop
//!   strings, holding back text that could be the start of one. Dropping it cancels.
//! - [`Registry`] maps `(repo, commit)` to a [`Served`] model — a generation handle or a
//!   sentence [`Embedder`]: it loads a model on first use (with a
//!   caller-supplied loader, so this crate does not know about repositories or stores), keeps
//!   it warm within one memory budget (weights + KV cache per generation model, weights per
//!   embedder), evicting the least
//!   recently used *idle* models (no request holds their handle) to make room. A model larger
//!   than the whole budget, or one that would need busy models evicted, is refused. Evicting
//!   drops the registry's handle; the engine thread exits with its last handle.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc::{Receiver as StdReceiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use candle_core::Device;
use tokio::sync::{mpsc, oneshot};

use crate::bert::Embedder;
use crate::chat::{ChatTemplate, ChatTemplateError};
use crate::engine::{
    Engine, EngineConfig, EngineInitError, GenerateRequest, StepModel, TokenEvent,
};
use crate::gguf::{GgufError, GgufFile};
use crate::model::{GgufWeights, Llama, LoadError};
use crate::sampling::{Sampled, SamplingParams};
use crate::scheduler::{AddError, FinishReason, RequestId};
use crate::tokenizer::{HfTokenizer, IncrementalDecoder, Tokenizer, TokenizerError};

/// Serving limits of one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    pub engine: EngineConfig,
    /// Commands (submissions, cancellations) that may wait for the engine thread.
    pub command_queue: usize,
    /// Workers of the engine pool every step runs on (`0`: one per core). Engines with the
    /// same count share one pool ([`crate::threads::engine_pool`]).
    pub threads: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            engine: EngineConfig::default(),
            command_queue: 64,
            threads: 0,
        }
    }
}

/// A model with what serving it needs besides the weights.
#[derive(Debug)]
pub struct LoadedModel {
    pub model: Llama,
    pub tokenizer: HfTokenizer,
    /// `None` when the repository has no chat template (chat requests are then refused).
    pub template: Option<ChatTemplate>,
}

/// A model directory could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelLoadError {
    #[error("read model directory {path}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Model(#[from] LoadError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Template(#[from] ChatTemplateError),
}

impl LoadedModel {
    /// Loads a model directory: a `*.gguf` file (the first by name; its weights stay in the
    /// file's quantization, run by hub-quant's kernels with 8-bit activations, as llama.cpp
    /// runs them — ADR 0014), or else `config.json` + safetensors + `tokenizer.json`. A
    /// missing chat template is not an error. On the CPU (serving on accelerators is future
    /// work).
    pub fn from_dir(dir: &Path) -> Result<Self, ModelLoadError> {
        let device = &Device::Cpu;
        let io = |source| ModelLoadError::Io {
            path: dir.to_owned(),
            source,
        };
        let mut ggufs = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|e| e == "gguf") {
                ggufs.push(path);
            }
        }
        ggufs.sort();
        let optional = |t: Result<ChatTemplate, ChatTemplateError>| match t {
            Ok(t) => Ok(Some(t)),
            Err(ChatTemplateError::Missing(_)) => Ok(None),
            Err(e) => Err(e),
        };
        if let Some(path) = ggufs.first() {
            let gguf = GgufFile::open(path)?;
            let model = Llama::from_gguf(&gguf, GgufWeights::Quantized, device)?;
            let tokenizer = HfTokenizer::from_gguf(&gguf)?;
            let special = tokenizer.special_tokens().clone();
            let template = optional(ChatTemplate::from_gguf(
                &gguf,
                special.bos_text(),
                special.eos_text(),
            ))?;
            return Ok(Self {
                model,
                tokenizer,
                template,
            });
        }
        let model = Llama::from_dir(dir, device)?;
        let tokenizer = HfTokenizer::from_dir(dir)?;
        let special = tokenizer.special_tokens().clone();
        let template = optional(ChatTemplate::from_dir(
            dir,
            special.bos_text(),
            special.eos_text(),
        ))?;
        Ok(Self {
            model,
            tokenizer,
            template,
        })
    }
}

/// What a client asks of a model, in tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct SubmitRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Keep generating past the model's end-of-sequence tokens.
    pub ignore_eos: bool,
}

/// What the engine thread sends for a request.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    Token(TokenEvent),
    /// The step computing this request failed; the request is gone.
    Failed(String),
}

/// A request was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// Too many requests wait already (HTTP 429).
    #[error("model is overloaded: too many requests waiting")]
    QueueFull,
    /// The request can never run (empty prompt, too long, …).
    #[error(transparent)]
    Invalid(AddError),
    /// The engine thread has stopped.
    #[error("model is shutting down")]
    Closed,
}

/// Engine counters, for tests and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineStats {
    pub running: usize,
    pub waiting: usize,
    pub free_blocks: usize,
    pub total_blocks: usize,
    /// Requests dropped because their receiver went away.
    pub cancelled: u64,
}

/// What engine threads report for monitoring, implemented above this crate (the gateway's
/// Prometheus metrics), so this crate needs no metrics library. Called on engine threads
/// between steps: implementations must be cheap and never block (atomics).
pub trait ServeObserver: Send + Sync + std::fmt::Debug {
    /// Changes of one engine's load since its last report. Gauges summed over engines stay
    /// right: an engine that exits reports its remaining load negated.
    fn load_changed(&self, waiting: i64, running: i64, kv_blocks_used: i64);
    /// Tokens generated in one step.
    fn generated(&self, tokens: u64);
    /// Time from a request's admission to its first generated token.
    fn first_token(&self, after: Duration);
}

/// The load last reported to the observer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Load {
    waiting: i64,
    running: i64,
    kv_blocks_used: i64,
}

impl Load {
    fn of<M: StepModel>(engine: &Engine<M>) -> Self {
        let s = engine.scheduler();
        Self {
            waiting: s.num_waiting() as i64,
            running: s.num_running() as i64,
            kv_blocks_used: (s.config().num_blocks - s.num_free_blocks()) as i64,
        }
    }
}

/// Reports load changes, first tokens and token counts to an optional observer.
#[derive(Debug)]
struct Reporter {
    observer: Option<Arc<dyn ServeObserver>>,
    last: Load,
    /// Admission times of requests that have not produced a token yet.
    admitted: HashMap<RequestId, Instant>,
}

impl Reporter {
    fn admitted(&mut self, id: RequestId) {
        if self.observer.is_some() {
            self.admitted.insert(id, Instant::now());
        }
    }

    fn token(&mut self, id: RequestId) {
        if let (Some(o), Some(t)) = (&self.observer, self.admitted.remove(&id)) {
            o.first_token(t.elapsed());
        }
    }

    fn report(&mut self, now: Load, generated: u64) {
        let Some(o) = &self.observer else { return };
        if generated > 0 {
            o.generated(generated);
        }
        if now != self.last {
            o.load_changed(
                now.waiting - self.last.waiting,
                now.running - self.last.running,
                now.kv_blocks_used - self.last.kv_blocks_used,
            );
            self.last = now;
        }
    }

    fn forget(&mut self, id: RequestId) {
        self.admitted.remove(&id);
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.report(Load::default(), 0);
    }
}

enum Command {
    Submit {
        request: SubmitRequest,
        reply: oneshot::Sender<Result<mpsc::Receiver<StreamEvent>, SubmitError>>,
    },
    Stats(oneshot::Sender<EngineStats>),
}

/// A loaded model served by its engine thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ModelHandle {
    inner: Arc<HandleInner>,
}

#[derive(Debug)]
struct HandleInner {
    commands: SyncSender<Command>,
    tokenizer: HfTokenizer,
    template: Option<ChatTemplate>,
    /// Longest prompt + generation a request may have.
    max_len: usize,
    /// Weights + KV cache.
    memory_bytes: u64,
    /// Workers of the engine pool this model's steps run on.
    threads: usize,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Submit { request, .. } => f
                .debug_struct("Submit")
                .field("prompt_len", &request.prompt.len())
                .finish(),
            Command::Stats(_) => f.write_str("Stats"),
        }
    }
}

impl ModelHandle {
    /// Starts the engine thread for `loaded`.
    pub fn spawn(loaded: LoadedModel, config: ServeConfig) -> Result<Self, EngineInitError> {
        Self::spawn_observed(loaded, config, None)
    }

    /// Starts the engine thread for `loaded`, reporting to `observer`.
    pub fn spawn_observed(
        loaded: LoadedModel,
        config: ServeConfig,
        observer: Option<Arc<dyn ServeObserver>>,
    ) -> Result<Self, EngineInitError> {
        let LoadedModel {
            model,
            tokenizer,
            template,
        } = loaded;
        let weight_bytes = model.weight_bytes();
        Self::spawn_engine(model, weight_bytes, tokenizer, template, config, observer)
    }

    /// Starts the engine thread for any [`StepModel`] (a [`Llama`], or a sharded model:
    /// [`sharded`]) holding `weight_bytes` here.
    fn spawn_engine<M>(
        model: M,
        weight_bytes: u64,
        tokenizer: HfTokenizer,
        template: Option<ChatTemplate>,
        config: ServeConfig,
        observer: Option<Arc<dyn ServeObserver>>,
    ) -> Result<Self, EngineInitError>
    where
        M: StepModel + Send + 'static,
        M::Cache: Send,
    {
        let engine = Engine::new(model, config.engine.clone())?;
        let memory_bytes = weight_bytes + engine.kv_cache_bytes() as u64;
        let limits = engine.scheduler().config();
        let max_len = limits
            .max_model_len
            .min(limits.num_blocks * limits.block_size);
        let pool = crate::threads::engine_pool(config.threads)
            .map_err(|_| EngineInitError::InvalidConfig("build the engine thread pool"))?;
        let threads = pool.current_num_threads();
        let (commands, rx) = std::sync::mpsc::sync_channel(config.command_queue.max(1));
        std::thread::Builder::new()
            .name("hub-infer-engine".into())
            .spawn(move || {
                let reporter = Reporter {
                    observer,
                    last: Load::default(),
                    admitted: HashMap::new(),
                };
                engine_loop(engine, &pool, rx, reporter)
            })
            .map_err(|_| EngineInitError::InvalidConfig("spawn engine thread"))?;
        Ok(Self {
            inner: Arc::new(HandleInner {
                commands,
                tokenizer,
                template,
                max_len,
                memory_bytes,
                threads,
            }),
        })
    }

    pub fn tokenizer(&self) -> &HfTokenizer {
        &self.inner.tokenizer
    }

    pub fn template(&self) -> Option<&ChatTemplate> {
        self.inner.template.as_ref()
    }

    /// Bytes this model holds: its weights and its engine's KV cache.
    pub fn memory_bytes(&self) -> u64 {
        self.inner.memory_bytes
    }

    /// The most tokens (prompt + generated) one request may have.
    pub fn max_len(&self) -> usize {
        self.inner.max_len
    }

    /// Workers of the engine pool this model's forward passes run on.
    pub fn threads(&self) -> usize {
        self.inner.threads
    }

    /// Queues a request; its events arrive on the returned receiver. Dropping the receiver
    /// cancels the request. Cancel-safe: a dropped future leaves at most a request whose
    /// receiver is gone, which the engine thread drops before its next step.
    pub async fn submit(
        &self,
        request: SubmitRequest,
    ) -> Result<mpsc::Receiver<StreamEvent>, SubmitError> {
        let (reply, answer) = oneshot::channel();
        match self
            .inner
            .commands
            .try_send(Command::Submit { request, reply })
        {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(SubmitError::QueueFull),
            Err(TrySendError::Disconnected(_)) => return Err(SubmitError::Closed),
        }
        answer.await.map_err(|_| SubmitError::Closed)?
    }

    /// Submits and wraps the events in a [`TextStream`].
    pub async fn submit_text(
        &self,
        request: SubmitRequest,
        stop: Vec<String>,
    ) -> Result<TextStream, SubmitError> {
        let events = self.submit(request).await?;
        Ok(TextStream::new(self.clone(), events, stop))
    }

    /// The engine's counters (answered between steps).
    pub async fn stats(&self) -> Result<EngineStats, SubmitError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .commands
            .try_send(Command::Stats(reply))
            .map_err(|e| match e {
                TrySendError::Full(_) => SubmitError::QueueFull,
                TrySendError::Disconnected(_) => SubmitError::Closed,
            })?;
        answer.await.map_err(|_| SubmitError::Closed)
    }
}

fn engine_loop<M>(
    mut engine: Engine<M>,
    pool: &rayon::ThreadPool,
    commands: StdReceiver<Command>,
    mut reporter: Reporter,
) where
    M: StepModel + Send,
    M::Cache: Send,
{
    let mut streams: HashMap<RequestId, mpsc::Sender<StreamEvent>> = HashMap::new();
    let mut next_id: RequestId = 0;
    let mut disconnected = false;
    let mut cancelled = 0;
    loop {
        if !engine.has_work() {
            if disconnected {
                return;
            }
            // Requests cancelled after the last step (their client left) changed the load:
            // report it before waiting, or the gauges stay stale while the engine is idle.
            reporter.report(Load::of(&engine), 0);
            match commands.recv() {
                Ok(cmd) => handle(
                    &mut engine,
                    &mut streams,
                    &mut next_id,
                    cancelled,
                    &mut reporter,
                    cmd,
                ),
                Err(_) => return,
            }
        }
        loop {
            match commands.try_recv() {
                Ok(cmd) => handle(
                    &mut engine,
                    &mut streams,
                    &mut next_id,
                    cancelled,
                    &mut reporter,
                    cmd,
                ),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    disconnected = true;
                    break;
                }
            }
        }
        streams.retain(|&id, tx| {
            let open = !tx.is_closed();
            if !open {
                reporter.forget(id);
                if engine.cancel(id) {
                    cancelled += 1;
                }
            }
            open
        });
        reporter.report(Load::of(&engine), 0);
        if !engine.has_work() {
            continue;
        }
        // The step's matmuls fan out over the engine pool (the thread budget); this thread
        // waits meanwhile.
        match pool.install(|| engine.step()) {
            Ok(events) => {
                let generated = events.len() as u64;
                for event in &events {
                    reporter.token(event.id);
                }
                // Before the events go out: a client that has its last token sees metrics
                // that count it.
                reporter.report(Load::of(&engine), generated);
                for event in events {
                    let (id, last) = (event.id, event.finish.is_some());
                    let Some(tx) = streams.get(&id) else {
                        continue;
                    };
                    // Capacity covers every event a request can produce, so `Full` cannot
                    // happen; `Closed` means the client left.
                    let sent = tx.try_send(StreamEvent::Token(event)).is_ok();
                    if last {
                        streams.remove(&id);
                    } else if !sent {
                        streams.remove(&id);
                        engine.cancel(id);
                        cancelled += 1;
                    }
                }
            }
            Err(e) => {
                let message = format!("{e}: {}", e.source);
                for id in e.aborted {
                    reporter.forget(id);
                    if let Some(tx) = streams.remove(&id) {
                        let _ = tx.try_send(StreamEvent::Failed(message.clone()));
                    }
                }
            }
        }
    }
}

fn handle<M: StepModel>(
    engine: &mut Engine<M>,
    streams: &mut HashMap<RequestId, mpsc::Sender<StreamEvent>>,
    next_id: &mut RequestId,
    cancelled: u64,
    reporter: &mut Reporter,
    cmd: Command,
) {
    match cmd {
        Command::Submit { request, reply } => {
            let id = *next_id;
            *next_id += 1;
            let capacity = request.max_tokens.saturating_add(1).max(1);
            let added = engine.add_request(GenerateRequest {
                id,
                prompt: request.prompt,
                max_tokens: request.max_tokens,
                sampling: request.sampling,
                stop_token_ids: Vec::new(),
                ignore_eos: request.ignore_eos,
            });
            let answer = match added {
                Ok(()) => {
                    let (tx, rx) = mpsc::channel(capacity);
                    streams.insert(id, tx);
                    reporter.admitted(id);
                    Ok(rx)
                }
                Err(AddError::QueueFull { .. }) => Err(SubmitError::QueueFull),
                Err(e) => Err(SubmitError::Invalid(e)),
            };
            if let Err(Ok(_)) = reply.send(answer) {
                // The submitter went away before hearing back.
                engine.cancel(id);
                streams.remove(&id);
                reporter.forget(id);
            }
        }
        Command::Stats(reply) => {
            let s = engine.scheduler();
            let _ = reply.send(EngineStats {
                running: s.num_running(),
                waiting: s.num_waiting(),
                free_blocks: s.num_free_blocks(),
                total_blocks: s.config().num_blocks,
                cancelled,
            });
        }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// `max_tokens` reached (or the model's length).
    Length,
    /// The model produced an end-of-sequence token.
    Eos,
    /// A stop string matched.
    StopSequence,
}

impl Finish {
    /// OpenAI's `finish_reason`.
    pub fn openai(self) -> &'static str {
        match self {
            Finish::Length => "length",
            Finish::Eos | Finish::StopSequence => "stop",
        }
    }

    /// TGI's `finish_reason`.
    pub fn tgi(self) -> &'static str {
        match self {
            Finish::Length => "length",
            Finish::Eos => "eos_token",
            Finish::StopSequence => "stop_sequence",
        }
    }
}

/// One generated token and the text it released.
#[derive(Debug, Clone, PartialEq)]
pub struct TextChunk {
    pub token: u32,
    /// Log-probability of `token` under the model's raw distribution.
    pub logprob: f32,
    /// The most likely tokens at this step, most likely first (as many as the request's
    /// [`SamplingParams::top_logprobs`]).
    pub top_logprobs: Vec<Sampled>,
    /// On the first chunk of a request with [`SamplingParams::prompt_logprobs`]: the
    /// log-probability of each prompt token after the first.
    pub prompt_logprobs: Option<Vec<f32>>,
    pub special: bool,
    /// Text released by this token (empty while a character or possible stop string is
    /// incomplete).
    pub text: String,
    /// Set on the last chunk.
    pub finish: Option<Finish>,
}

/// The generation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("generation failed: {0}")]
pub struct GenerationError(pub String);

/// Text of a request, chunk by chunk; dropping it cancels the request.
#[derive(Debug)]
pub struct TextStream {
    model: ModelHandle,
    events: mpsc::Receiver<StreamEvent>,
    decoder: IncrementalDecoder,
    stop: Vec<String>,
    /// Decoded text not yet released (it may begin a stop string).
    pending: String,
    done: bool,
    generated: usize,
}

impl TextStream {
    fn new(model: ModelHandle, events: mpsc::Receiver<StreamEvent>, stop: Vec<String>) -> Self {
        Self {
            model,
            events,
            decoder: IncrementalDecoder::new(true),
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
            done: false,
            generated: 0,
        }
    }

    /// Tokens generated so far.
    pub fn generated_tokens(&self) -> usize {
        self.generated
    }

    /// The next chunk; `None` after the last. Cancel-safe.
    pub async fn next(&mut self) -> Option<Result<TextChunk, GenerationError>> {
        if self.done {
            return None;
        }
        let event = match self.events.recv().await {
            Some(StreamEvent::Token(e)) => e,
            Some(StreamEvent::Failed(m)) => {
                self.done = true;
                return Some(Err(GenerationError(m)));
            }
            None => {
                self.done = true;
                return Some(Err(GenerationError("engine stopped".into())));
            }
        };
        self.generated += 1;
        let tokenizer = self.model.tokenizer();
        let special = tokenizer
            .decode(&[event.token], true)
            .is_ok_and(|t| t.is_empty());
        let mut finish = event.finish.map(|f| match f {
            FinishReason::Length => Finish::Length,
            FinishReason::Stop => Finish::Eos,
        });
        let step = self.decoder.step(tokenizer, event.token);
        let delta = match step {
            Ok(d) => d.unwrap_or_default(),
            Err(e) => {
                self.done = true;
                return Some(Err(GenerationError(e.to_string())));
            }
        };
        self.pending.push_str(&delta);
        if finish.is_some() {
            match self.decoder.finish(tokenizer) {
                Ok(rest) => self.pending.push_str(&rest),
                Err(e) => {
                    self.done = true;
                    return Some(Err(GenerationError(e.to_string())));
                }
            }
        }
        let text = if let Some(at) = self.first_stop() {
            self.pending.truncate(at);
            finish = Some(Finish::StopSequence);
            std::mem::take(&mut self.pending)
        } else if finish.is_some() {
            std::mem::take(&mut self.pending)
        } else {
            let keep = self.held_back();
            let released = self.pending[..self.pending.len() - keep].to_owned();
            self.pending.drain(..self.pending.len() - keep);
            released
        };
        if finish.is_some() {
            // Dropping the receiver (with `self`) cancels a request stopped by a string.
            self.done = true;
            self.events.close();
        }
        Some(Ok(TextChunk {
            token: event.token,
            logprob: event.logprob,
            top_logprobs: event.top_logprobs,
            prompt_logprobs: event.prompt_logprobs,
            special,
            text,
            finish,
        }))
    }

    /// Byte offset of the earliest stop string in `pending`.
    fn first_stop(&self) -> Option<usize> {
        self.stop.iter().filter_map(|s| self.pending.find(s)).min()
    }

    /// Length of the longest suffix of `pending` that is a proper prefix of a stop string.
    fn held_back(&self) -> usize {
        let p = &self.pending;
        self.stop
            .iter()
            .flat_map(|s| {
                (1..s.len().min(p.len() + 1))
                    .filter(|&n| s.is_char_boundary(n) && p.ends_with(&s[..n]))
                    .max()
            })
            .max()
            .unwrap_or(0)
    }
}

/// Which model: a repository and the commit its revision resolved to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelKey {
    pub repo: String,
    pub commit: String,
}

/// Registry limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Bytes the loaded models may take together, each counted as its weights plus its KV
    /// cache ([`ModelHandle::memory_bytes`]). Loading a model evicts the least recently used
    /// idle models until it fits; see [`default_memory_budget`] for the default.
    pub memory_budget: u64,
    pub serve: ServeConfig,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            memory_budget: default_memory_budget(),
            serve: ServeConfig::default(),
        }
    }
}

/// The budget when none is configured: half the machine's memory (`MemTotal` in
/// `/proc/meminfo`), else 4 GiB where that cannot be read.
pub fn default_memory_budget() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| parse_mem_total(&t))
        .map_or(4 << 30, |total| total / 2)
}

/// `MemTotal` of a `/proc/meminfo` text, in bytes.
fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => n.checked_mul(1024),
        None => Some(n),
        Some(_) => None,
    }
}

/// Estimated resident bytes of serving `model` with `engine`: weights plus the KV cache the
/// engine allocates up front. Activations are transient and not counted.
pub fn estimate_memory(model: &Llama, engine: &EngineConfig) -> u64 {
    model.weight_bytes() + model.kv_store_bytes(engine.num_blocks, engine.block_size)
}

/// A loaded model of either kind: a generation engine or a sentence embedder. Both count
/// against one memory budget in a [`Registry`].
#[derive(Debug, Clone)]
pub enum Served {
    Generate(ModelHandle),
    /// An embedder has no engine thread: a request embeds on a blocking thread of its own.
    Embed(Arc<Embedder>),
}

impl Served {
    /// Bytes the model holds: weights plus KV cache for generation, weights for embedders.
    pub fn memory_bytes(&self) -> u64 {
        match self {
            Served::Generate(h) => h.memory_bytes(),
            Served::Embed(e) => e.memory_bytes(),
        }
    }

    pub fn tokenizer(&self) -> &HfTokenizer {
        match self {
            Served::Generate(h) => h.tokenizer(),
            Served::Embed(e) => e.tokenizer(),
        }
    }

    /// No request holds it (only the registry does): evicting it interrupts nobody.
    fn idle(&self) -> bool {
        match self {
            Served::Generate(h) => Arc::strong_count(&h.inner) == 1,
            Served::Embed(e) => Arc::strong_count(e) == 1,
        }
    }
}

/// A model loaded from its files, not yet admitted to a [`Registry`]'s budget.
#[derive(Debug)]
pub enum Loadable {
    /// Its engine (and KV cache) starts once it is admitted.
    Generate(Box<LoadedModel>),
    Embed(Box<Embedder>),
}

type Slot = Arc<Mutex<Option<Served>>>;

/// Loaded models by key, least recently used evicted when the memory budget needs room (see
/// the module docs). Generation models and embedders share the budget. Blocking: call it from
/// a blocking thread, since a first use loads the model.
#[derive(Debug, Default)]
pub struct Registry {
    config: RegistryConfig,
    /// Passed to every engine thread the registry starts.
    observer: Option<Arc<dyn ServeObserver>>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Most recently used last. A slot whose mutex is held is loading.
    slots: Vec<(ModelKey, Slot)>,
    /// Bytes of models admitted to the budget whose engine is still starting.
    reserved: u64,
}

/// [`Registry::get_or_load`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError<E> {
    #[error("load model")]
    Load(#[source] E),
    #[error("start engine")]
    Engine(#[source] EngineInitError),
    /// The model alone needs more than the whole budget.
    #[error("model needs {needed} bytes of memory, more than the budget of {budget} bytes")]
    TooLarge { needed: u64, budget: u64 },
    /// The model fits the budget, but the models that would have to go are serving requests.
    #[error(
        "model needs {needed} bytes of memory and only {available} bytes can be freed now: the other models are busy"
    )]
    Busy { needed: u64, available: u64 },
    /// [`Registry::get_or_load`] found an embedder under the key, not a generation model.
    #[error("the model is an embedding model, not a generation model")]
    NotGeneration,
}

/// A loaded model as the eviction planner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Resident {
    bytes: u64,
    /// No request holds it: evicting it interrupts nobody.
    idle: bool,
}

/// Which of `loaded` (least recently used first) to evict so that `needed` more bytes fit in
/// `budget` beside `reserved` ones: the least recently used idle ones first, as few as
/// possible in that order. Returns indices into `loaded`.
fn plan_eviction<E>(
    loaded: &[Resident],
    reserved: u64,
    needed: u64,
    budget: u64,
) -> Result<Vec<usize>, RegistryError<E>> {
    if needed > budget {
        return Err(RegistryError::TooLarge { needed, budget });
    }
    let mut used = reserved + loaded.iter().map(|r| r.bytes).sum::<u64>();
    let mut evict = Vec::new();
    for (i, r) in loaded.iter().enumerate() {
        if used + needed <= budget {
            break;
        }
        if r.idle {
            used -= r.bytes;
            evict.push(i);
        }
    }
    if used + needed > budget {
        return Err(RegistryError::Busy {
            needed,
            available: budget.saturating_sub(used),
        });
    }
    Ok(evict)
}

impl Registry {
    pub fn new(config: RegistryConfig) -> Self {
        Self {
            config,
            observer: None,
            state: Mutex::new(State::default()),
        }
    }

    /// Engines started from now on report to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn ServeObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The limits it runs with.
    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The generation engine of `key` if it is loaded now (marking it used); never blocks on
    /// a load.
    pub fn get(&self, key: &ModelKey) -> Option<ModelHandle> {
        match self.get_served(key)? {
            Served::Generate(h) => Some(h),
            Served::Embed(_) => None,
        }
    }

    /// The model of `key`, of either kind, if it is loaded now (marking it used); never
    /// blocks on a load.
    pub fn get_served(&self, key: &ModelKey) -> Option<Served> {
        let mut state = self.lock();
        let i = state.slots.iter().position(|(k, _)| k == key)?;
        let served = state.slots[i].1.try_lock().ok()?.clone()?;
        let entry = state.slots.remove(i);
        state.slots.push(entry);
        Some(served)
    }

    /// The generation engine of `key`, loading it with `load` on first use; see
    /// [`Registry::get_or_load_served`].
    pub fn get_or_load<E>(
        &self,
        key: &ModelKey,
        load: impl FnOnce() -> Result<LoadedModel, E>,
    ) -> Result<ModelHandle, RegistryError<E>> {
        match self.get_or_load_served(key, || load().map(|m| Loadable::Generate(Box::new(m))))? {
            Served::Generate(h) => Ok(h),
            Served::Embed(_) => Err(RegistryError::NotGeneration),
        }
    }

    /// The model of `key`, loading it with `load` on first use. Concurrent first uses of one
    /// key load it once; other keys are not blocked meanwhile. A failed load is not cached.
    /// Before it is served (a generation model: before its engine starts), the least recently
    /// used idle models of either kind are evicted until the new one fits the memory budget;
    /// a model that cannot fit is refused (and dropped). The check runs once the weights are
    /// loaded (their size is known exactly then), so memory briefly exceeds the budget by one
    /// model's weights at most; a KV cache is allocated only after the check.
    pub fn get_or_load_served<E>(
        &self,
        key: &ModelKey,
        load: impl FnOnce() -> Result<Loadable, E>,
    ) -> Result<Served, RegistryError<E>> {
        let slot = {
            let mut state = self.lock();
            let slot = match state.slots.iter().position(|(k, _)| k == key) {
                Some(i) => state.slots.remove(i).1,
                None => Slot::default(),
            };
            state.slots.push((key.clone(), slot.clone()));
            slot
        };
        let mut guard = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(served) = guard.as_ref() {
            return Ok(served.clone());
        }
        let forget = |state: &mut State| state.slots.retain(|(_, s)| !Arc::ptr_eq(s, &slot));
        let loaded = match load() {
            Ok(loaded) => loaded,
            Err(e) => {
                // A failed load is not cached and takes no place in the LRU.
                forget(&mut self.lock());
                return Err(RegistryError::Load(e));
            }
        };
        let needed = match &loaded {
            Loadable::Generate(m) => estimate_memory(&m.model, &self.config.serve.engine),
            Loadable::Embed(e) => e.memory_bytes(),
        };
        {
            let mut state = self.lock();
            // Other models, least recently used first; one whose slot is locked is loading
            // (its bytes are in `reserved` once admitted).
            let mut candidates = Vec::new();
            let mut residents = Vec::new();
            for (_, s) in &state.slots {
                if Arc::ptr_eq(s, &slot) {
                    continue;
                }
                if let Ok(g) = s.try_lock()
                    && let Some(served) = g.as_ref()
                {
                    residents.push(Resident {
                        bytes: served.memory_bytes(),
                        idle: served.idle(),
                    });
                    candidates.push(s.clone());
                }
            }
            match plan_eviction(
                &residents,
                state.reserved,
                needed,
                self.config.memory_budget,
            ) {
                Ok(evict) => {
                    for i in evict {
                        let victim = &candidates[i];
                        // Emptied as well as removed, so a request that has just found the
                        // slot loads the model again instead of using an uncounted engine.
                        if let Ok(mut g) = victim.try_lock() {
                            g.take();
                        }
                        state.slots.retain(|(_, s)| !Arc::ptr_eq(s, victim));
                    }
                    state.reserved += needed;
                }
                Err(e) => {
                    forget(&mut state);
                    return Err(e);
                }
            }
        }
        let served = match loaded {
            Loadable::Generate(loaded) => ModelHandle::spawn_observed(
                *loaded,
                self.config.serve.clone(),
                self.observer.clone(),
            )
            .map(Served::Generate),
            Loadable::Embed(e) => Ok(Served::Embed(Arc::from(e))),
        };
        let mut state = self.lock();
        state.reserved -= needed;
        match served {
            Ok(served) => {
                *guard = Some(served.clone());
                Ok(served)
            }
            Err(e) => {
                forget(&mut state);
                Err(RegistryError::Engine(e))
            }
        }
    }

    /// Keys of the models loaded now (both kinds), most recently used first.
    pub fn loaded(&self) -> Vec<ModelKey> {
        let state = self.lock();
        state
            .slots
            .iter()
            .rev()
            .filter(|(_, s)| s.try_lock().map(|g| g.is_some()).unwrap_or(false))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Bytes the loaded models take ([`Served::memory_bytes`] summed).
    pub fn memory_used(&self) -> u64 {
        let state = self.lock();
        state
            .slots
            .iter()
            .filter_map(|(_, s)| s.try_lock().ok()?.as_ref().map(Served::memory_bytes))
            .sum()
    }
}

/// Test fixtures for this crate and the crates above it (feature `test-support`).
#[cfg(any(test, feature = "test-support"))]
pub mod fixture;
pub mod sharded;
#[cfg(test)]
mod tests;
