//! `config.json` of the Llama family (Llama, Mistral, Qwen2, SmolLM).
//!
//! Only the fields the forward pass needs are read; unknown fields are ignored so configs
//! written by newer `transformers` versions still load. Defaults follow `transformers`'
//! `LlamaConfig` (`rms_norm_eps = 1e-6`, `rope_theta = 10000`, `num_key_value_heads =
//! num_attention_heads`). Anything that would change the numbers and that we do not implement
//! yet (`rope_scaling`, active sliding windows) is *rejected* by
//! [`LlamaConfig::validate`] rather than silently ignored: a wrong answer is worse than an error.

use serde::Deserialize;

/// The subset of a Hugging Face Llama-family `config.json` the engine uses.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LlamaConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Grouped-query attention: how many K/V heads the query heads share. Defaults to
    /// `num_attention_heads` (plain multi-head attention).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Explicit head size (Mistral-Nemo, Qwen3); defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    pub vocab_size: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    /// `eos_token_id` is an integer or a list of integers in the wild.
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// Rope scaling (Llama 3.1 `llama3`, YaRN, …) is not implemented; a non-null value fails
    /// validation.
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// Llama's flag for q/k/v/o biases: when set, the loader requires them. Bias tensors
    /// present in a checkpoint are used either way (Qwen2 has q/k/v biases and no flag).
    #[serde(default)]
    pub attention_bias: bool,
    /// Qwen2 ships a `sliding_window` with `use_sliding_window: false`.
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    /// Mistral's sliding window is not implemented; a window shorter than
    /// `max_position_embeddings` fails validation.
    #[serde(default)]
    pub sliding_window: Option<usize>,
}

/// One token id or several (`eos_token_id: [128001, 128008]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

fn default_rms_norm_eps() -> f64 {
    1e-6
}

fn default_rope_theta() -> f64 {
    10_000.0
}

fn default_max_position_embeddings() -> usize {
    2048
}

/// Why a config cannot be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("parse config.json")]
    Parse(#[source] serde_json::Error),
    #[error("unsupported config: {0}")]
    Unsupported(String),
}

impl LlamaConfig {
    /// Parses `config.json` text and validates it.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let config: LlamaConfig = serde_json::from_str(text).map_err(ConfigError::Parse)?;
        config.validate()?;
        Ok(config)
    }

    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// End-of-sequence ids from the config (may be empty).
    pub fn eos_token_ids(&self) -> Vec<u32> {
        self.eos_token_id
            .as_ref()
            .map(TokenIds::to_vec)
            .unwrap_or_default()
    }

    /// Checks the shape arithmetic and rejects features the forward pass lacks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let unsupported = |msg: String| Err(ConfigError::Unsupported(msg));
        if self.num_attention_heads == 0 || self.num_hidden_layers == 0 || self.vocab_size == 0 {
            return unsupported("zero heads, layers or vocabulary".into());
        }
        let kv = self.num_kv_heads();
        if kv == 0 || !self.num_attention_heads.is_multiple_of(kv) {
            return unsupported(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {kv}",
                self.num_attention_heads
            ));
        }
        let head_dim = self.head_dim();
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return unsupported(format!("head_dim {head_dim} must be even and non-zero"));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return unsupported(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return unsupported("rope_scaling".into());
        }
        if self.use_sliding_window != Some(false)
            && self
                .sliding_window
                .is_some_and(|w| w < self.max_position_embeddings)
        {
            return unsupported("sliding_window".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smollm_like_config_parses_with_defaults() {
        let c = LlamaConfig::from_json(
            r#"{"hidden_size":576,"intermediate_size":1536,"num_hidden_layers":30,
            "num_attention_heads":9,"num_key_value_heads":3,"vocab_size":49152,
            "rope_theta":100000.0,"rms_norm_eps":1e-5,"tie_word_embeddings":true,
            "eos_token_id":[2,0],"rope_scaling":null,"torch_dtype":"bfloat16"}"#,
        )
        .unwrap();
        assert_eq!(c.head_dim(), 64);
        assert_eq!(c.num_kv_heads(), 3);
        assert_eq!(c.eos_token_ids(), vec![2, 0]);
        assert_eq!(c.max_position_embeddings, 2048);
    }

    #[test]
    fn qwen2_config_with_disabled_sliding_window_parses() {
        let c = LlamaConfig::from_json(
            r#"{"hidden_size":896,"intermediate_size":4864,"num_hidden_layers":24,
            "num_attention_heads":14,"num_key_value_heads":2,"vocab_size":151936,
            "max_position_embeddings":32768,"sliding_window":32768,"max_window_layers":21,
            "use_sliding_window":false,"rope_theta":1000000.0,"tie_word_embeddings":true,
            "eos_token_id":151643,"model_type":"qwen2"}"#,
        )
        .unwrap();
        assert_eq!(c.head_dim(), 64);
        let mistral_v01 = r#"{"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
            "num_attention_heads":4,"vocab_size":128,"sliding_window":4096,
            "max_position_embeddings":32768}"#;
        assert!(LlamaConfig::from_json(mistral_v01).is_err());
    }

    #[test]
    fn unsupported_features_are_rejected() {
        let base = r#""hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
            "num_attention_heads":4,"vocab_size":128"#;
        for extra in [
            r#","rope_scaling":{"rope_type":"llama3","factor":8.0}"#,
            r#","sliding_window":64,"max_position_embeddings":128"#,
            r#","num_key_value_heads":3"#,
        ] {
            let err = LlamaConfig::from_json(&format!("{{{base}{extra}}}")).unwrap_err();
            assert!(matches!(err, ConfigError::Unsupported(_)), "{extra}: {err}");
        }
    }
}
