//! `config.json` of the Llama family (Llama, Mistral, Qwen2, Qwen3, SmolLM).
//!
//! Only the fields the forward pass needs are read; unknown fields are ignored so configs
//! written by newer `transformers` versions still load. Defaults follow `transformers`'
//! `LlamaConfig` (`rms_norm_eps = 1e-6`, `rope_theta = 10000`, `num_key_value_heads =
//! num_attention_heads`). Anything that would change the numbers and that we do not implement
//! yet (rope scaling other than `linear` and `llama3`, active sliding windows) is *rejected* by
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
    /// Rope scaling: `linear` and `llama3` (Llama 3.1+) are implemented (see
    /// [`LlamaConfig::rope_inv_freq`]); any other type (YaRN, dynamic, longrope, …) fails
    /// validation.
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// `"qwen3"` requires the per-head q/k RMSNorm weights (`self_attn.{q,k}_norm.weight`); they
    /// are used whenever present whatever the type.
    #[serde(default)]
    pub model_type: Option<String>,
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

/// A parsed, supported `rope_scaling`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// Position interpolation: every frequency divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1's frequency-dependent scaling (`transformers`' `_compute_llama3_parameters`).
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
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

    /// The parsed `rope_scaling`: `None` when absent, null or `"default"`; an error for types
    /// we do not implement or for missing/invalid parameters.
    pub fn rope_scaling(&self) -> Result<Option<RopeScaling>, ConfigError> {
        let unsupported = |msg: String| ConfigError::Unsupported(msg);
        let Some(value) = self.rope_scaling.as_ref().filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let obj = value
            .as_object()
            .ok_or_else(|| unsupported(format!("rope_scaling {value} is not an object")))?;
        // `rope_type` is the current key, `type` the legacy one.
        let kind = obj
            .get("rope_type")
            .or_else(|| obj.get("type"))
            .and_then(|v| v.as_str())
            .ok_or_else(|| unsupported(format!("rope_scaling {value} has no rope_type")))?;
        let num = |key: &str| -> Result<f64, ConfigError> {
            obj.get(key)
                .and_then(|v| v.as_f64())
                .filter(|x| x.is_finite() && *x > 0.0)
                .ok_or_else(|| {
                    unsupported(format!(
                        "rope_scaling {kind:?}: {key} missing or not a positive number"
                    ))
                })
        };
        match kind {
            "default" => Ok(None),
            "linear" => Ok(Some(RopeScaling::Linear {
                factor: num("factor")?,
            })),
            "llama3" => {
                let scaling = RopeScaling::Llama3 {
                    factor: num("factor")?,
                    low_freq_factor: num("low_freq_factor")?,
                    high_freq_factor: num("high_freq_factor")?,
                    original_max_position_embeddings: num("original_max_position_embeddings")?,
                };
                if let RopeScaling::Llama3 {
                    low_freq_factor,
                    high_freq_factor,
                    ..
                } = scaling
                    && high_freq_factor <= low_freq_factor
                {
                    return Err(unsupported(format!(
                        "rope_scaling llama3: high_freq_factor {high_freq_factor} must exceed \
                         low_freq_factor {low_freq_factor}"
                    )));
                }
                Ok(Some(scaling))
            }
            other => Err(unsupported(format!(
                "rope_scaling type {other:?} (only \"linear\" and \"llama3\" are implemented)"
            ))),
        }
    }

    /// RoPE inverse frequencies (`head_dim / 2` of them, f64): `rope_theta^(-2i/d)`, adjusted by
    /// `rope_scaling` exactly as `transformers`' `ROPE_INIT_FUNCTIONS` do (`linear`: divided by
    /// `factor`; `llama3`: low frequencies divided by `factor`, high ones kept, the band between
    /// interpolated). Neither type rescales attention (`attention_factor = 1`).
    pub fn rope_inv_freq(&self) -> Result<Vec<f64>, ConfigError> {
        let d = self.head_dim();
        let base = (0..d / 2).map(|i| 1.0 / self.rope_theta.powf(2.0 * i as f64 / d as f64));
        Ok(match self.rope_scaling()? {
            None => base.collect(),
            Some(RopeScaling::Linear { factor }) => base.map(|f| f / factor).collect(),
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old_ctx,
            }) => {
                let low_freq_wavelen = old_ctx / low_freq_factor;
                let high_freq_wavelen = old_ctx / high_freq_factor;
                base.map(|f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_freq_wavelen {
                        f
                    } else if wavelen > low_freq_wavelen {
                        f / factor
                    } else {
                        let smooth = (old_ctx / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
            }
        })
    }

    /// Whether the checkpoint must carry per-head q/k RMSNorm weights (Qwen3).
    pub fn requires_qk_norm(&self) -> bool {
        self.model_type.as_deref() == Some("qwen3")
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
        self.rope_scaling()?;
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
            // llama3 without its frequency parameters.
            r#","rope_scaling":{"rope_type":"llama3","factor":8.0}"#,
            r#","rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":4.0,
                "high_freq_factor":1.0,"original_max_position_embeddings":8192}"#,
            r#","rope_scaling":{"rope_type":"yarn","factor":4.0,
                "original_max_position_embeddings":32768}"#,
            r#","rope_scaling":{"type":"dynamic","factor":2.0}"#,
            r#","rope_scaling":{"factor":2.0}"#,
            r#","rope_scaling":{"rope_type":"linear","factor":0}"#,
            r#","sliding_window":64,"max_position_embeddings":128"#,
            r#","num_key_value_heads":3"#,
        ] {
            let err = LlamaConfig::from_json(&format!("{{{base}{extra}}}")).unwrap_err();
            assert!(matches!(err, ConfigError::Unsupported(_)), "{extra}: {err}");
        }
    }

    #[test]
    fn rope_scaling_types() {
        let base = r#""hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
            "num_attention_heads":4,"vocab_size":128"#;
        let cfg = |extra: &str| LlamaConfig::from_json(&format!("{{{base}{extra}}}")).unwrap();
        let plain = cfg("").rope_inv_freq().unwrap();
        assert_eq!(plain.len(), 8);
        assert_eq!(
            plain,
            cfg(r#","rope_scaling":{"rope_type":"default"}"#)
                .rope_inv_freq()
                .unwrap()
        );
        let linear = cfg(r#","rope_scaling":{"type":"linear","factor":4.0}"#)
            .rope_inv_freq()
            .unwrap();
        for (a, b) in linear.iter().zip(&plain) {
            assert!((a * 4.0 - b).abs() < 1e-15);
        }
        // Wavelengths 2π·10^(i/2): i=0 kept (< 16), i=1,2 interpolated, i>=3 divided (> 64).
        let llama3 = cfg(r#","rope_scaling":{"rope_type":"llama3","factor":8.0,
            "low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":64}"#)
        .rope_inv_freq()
        .unwrap();
        assert_eq!(llama3[0], plain[0]);
        for i in 3..8 {
            assert!((llama3[i] * 8.0 - plain[i]).abs() < 1e-15);
        }
        for i in 1..3 {
            let wavelen = 2.0 * std::f64::consts::PI / plain[i];
            let s = (64.0 / wavelen - 1.0) / 3.0;
            let want = (1.0 - s) * plain[i] / 8.0 + s * plain[i];
            assert!((llama3[i] - want).abs() < 1e-15, "{i}");
            assert!(llama3[i] < plain[i] && llama3[i] > plain[i] / 8.0);
        }
    }
}
