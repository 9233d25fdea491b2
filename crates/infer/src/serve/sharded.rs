//! Serving a sharded model ([`crate::shard`]): the same engine thread, scheduler, sampling and
//! text streams as a single-node model — only the [`StepModel`] differs — so every route that
//! serves a [`ModelHandle`] serves a sharded one unchanged.
//!
//! A sharded model is not loaded by the [`Registry`] on first use (its workers are placed by
//! whoever built the placement); [`Registry::insert_generate`] puts it in place of the model
//! of its key, and [`Registry::remove`] takes it out when it must be placed again. Its memory
//! is what this node holds of it (its local ranks' weights plus the engine's bookkeeping); it
//! is not checked against the budget, since the placement sized every rank already.

use std::path::Path;
use std::sync::{Arc, Mutex};

use super::{
    ChatTemplate, ChatTemplateError, HfTokenizer, ModelHandle, ModelKey, ModelLoadError, Registry,
    ServeConfig, ServeObserver, Served,
};
use crate::engine::EngineInitError;
use crate::shard::local::LocalShardedLlama;
use crate::tokenizer::Tokenizer;

/// A sharded model with its tokenizer and chat template, ready for an engine.
#[derive(Debug)]
pub struct ShardedLoaded {
    pub model: LocalShardedLlama,
    pub tokenizer: HfTokenizer,
    pub template: Option<ChatTemplate>,
}

impl ShardedLoaded {
    /// `model`, with the tokenizer and chat template of the safetensors model directory
    /// `dir` (a missing template is not an error).
    pub fn from_dir(dir: &Path, model: LocalShardedLlama) -> Result<Self, ModelLoadError> {
        let tokenizer = HfTokenizer::from_dir(dir)?;
        let special = tokenizer.special_tokens().clone();
        let template = match ChatTemplate::from_dir(dir, special.bos_text(), special.eos_text()) {
            Ok(t) => Some(t),
            Err(ChatTemplateError::Missing(_)) => None,
            Err(e) => return Err(e.into()),
        };
        Ok(Self {
            model,
            tokenizer,
            template,
        })
    }
}

impl ModelHandle {
    /// Starts the engine thread of a sharded model.
    pub fn spawn_sharded(
        loaded: ShardedLoaded,
        config: ServeConfig,
        observer: Option<Arc<dyn ServeObserver>>,
    ) -> Result<Self, EngineInitError> {
        let weight_bytes = loaded.model.weight_bytes().iter().flatten().sum();
        Self::spawn_engine(
            loaded.model,
            weight_bytes,
            loaded.tokenizer,
            loaded.template,
            config,
            observer,
        )
    }
}

impl Registry {
    /// Serves `handle` as the model of `key`, replacing whatever was there (see the module
    /// docs).
    pub fn insert_generate(&self, key: ModelKey, handle: ModelHandle) {
        let mut state = self.lock();
        state.slots.retain(|(k, _)| *k != key);
        state
            .slots
            .push((key, Arc::new(Mutex::new(Some(Served::Generate(handle))))));
    }

    /// Stops serving the model of `key` (requests holding its handle finish first). `false`
    /// when none was there.
    pub fn remove(&self, key: &ModelKey) -> bool {
        let mut state = self.lock();
        let before = state.slots.len();
        state.slots.retain(|(k, _)| k != key);
        before != state.slots.len()
    }

    /// The observer every engine of this registry reports to.
    pub fn observer(&self) -> Option<Arc<dyn ServeObserver>> {
        self.observer.clone()
    }
}
