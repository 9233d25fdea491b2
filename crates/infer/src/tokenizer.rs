//! Text ↔ token ids: our own small [`Tokenizer`] trait, its implementation on Hugging Face's
//! `tokenizers` crate ([`HfTokenizer`]), and an [`IncrementalDecoder`] for streaming.
//!
//! Why a trait: the engine and the serving layer need four things (encode, decode, the special
//! ids, the vocabulary size); keeping `tokenizers`' types behind it keeps its churn (the 1.0
//! release is a restructure) out of the gateway, and lets tests use a toy tokenizer.
//!
//! Version: `tokenizers` **0.23**, not the 0.22 the issue names — candle-core 0.11.1 already
//! depends on 0.23 (with the pure-Rust `fancy-regex` backend), and one copy in the build beats
//! two. Features: only `fancy-regex` (no `onig` C library, no `http` hub download, no progress
//! bars, no C++ `esaxx`).
//!
//! Two sources:
//! - a repository's `tokenizer.json` (+ `tokenizer_config.json` for which tokens are BOS/EOS),
//!   [`HfTokenizer::from_dir`];
//! - GGUF metadata, when a GGUF file is all there is ([`HfTokenizer::from_gguf`]): a byte-level
//!   BPE (`tokenizer.ggml.model = gpt2`) is rebuilt from `tokenizer.ggml.tokens` and
//!   `.merges`; control tokens (`token_type` 3) become special added tokens so chat-template
//!   markers such as `<|im_start|>` encode as one id. The pre-tokenizer is chosen from
//!   `tokenizer.ggml.pre` and unknown values are rejected: a silently different split gives
//!   plausible but wrong ids.
//!
//! Streaming ([`IncrementalDecoder`]): a token may end in the middle of a UTF-8 character
//! (byte-level BPE splits emoji and CJK across tokens), and SentencePiece-style decoders treat
//! the first token of a text differently (leading-space stripping). The decoder therefore
//! decodes a short window of already-emitted tokens plus the new ones and emits only the new
//! suffix, holding it back while it ends in U+FFFD (the algorithm of TGI and vLLM).

use std::path::{Path, PathBuf};

use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PreTokenizerWrapper};

use crate::gguf::GgufFile;

/// A byte range `(start, end)` of a token in its text.
pub type Span = (usize, usize);

/// A boxed error from the `tokenizers` crate.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Failure to load or run a tokenizer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenizerError {
    #[error("read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parse {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: BoxError,
    },
    #[error("gguf tokenizer metadata: {0}")]
    Gguf(String),
    #[error("unsupported tokenizer: {0}")]
    Unsupported(String),
    #[error("build tokenizer")]
    Build(#[source] BoxError),
    #[error("encode")]
    Encode(#[source] BoxError),
    #[error("decode")]
    Decode(#[source] BoxError),
}

/// The tokens a model and its chat template treat specially.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: Option<(u32, String)>,
    /// End-of-sequence tokens (a model may have several, e.g. `<|im_end|>` and `<|endoftext|>`).
    pub eos: Vec<(u32, String)>,
    pub pad: Option<u32>,
}

impl SpecialTokens {
    pub fn bos_id(&self) -> Option<u32> {
        self.bos.as_ref().map(|(id, _)| *id)
    }

    pub fn eos_ids(&self) -> Vec<u32> {
        self.eos.iter().map(|(id, _)| *id).collect()
    }

    /// The BOS text a chat template's `bos_token` variable gets ("" when there is none).
    pub fn bos_text(&self) -> &str {
        self.bos.as_ref().map_or("", |(_, t)| t)
    }

    /// The first EOS text, for a chat template's `eos_token` ("" when there is none).
    pub fn eos_text(&self) -> &str {
        self.eos.first().map_or("", |(_, t)| t)
    }
}

/// What the engine and the serving layer need from a tokenizer.
pub trait Tokenizer: Send + Sync + std::fmt::Debug {
    /// Token ids of `text`; `add_special` adds what the tokenizer's post-processor adds (BOS for
    /// Llama 2, nothing for most chat models whose template already writes the markers).
    fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, TokenizerError>;

    /// Text of `ids`; `skip_special` drops special tokens (`<|im_end|>`) from the text. An id
    /// sequence that ends inside a UTF-8 character decodes with a trailing U+FFFD.
    fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError>;

    fn special_tokens(&self) -> &SpecialTokens;

    /// Vocabulary size including added tokens.
    fn vocab_size(&self) -> usize;
}

/// [`Tokenizer`] on Hugging Face's `tokenizers`.
#[derive(Debug, Clone)]
pub struct HfTokenizer {
    inner: tokenizers::Tokenizer,
    special: SpecialTokens,
}

/// Upper bound on GGUF vocabularies (the largest public ones are ~260 k).
const MAX_GGUF_VOCAB: usize = 1 << 21;

impl HfTokenizer {
    /// Wraps a `tokenizers` tokenizer; `bos`/`eos` name the special tokens (looked up in the
    /// vocabulary; names that are not in it are ignored).
    ///
    /// Padding configured in the file (all-MiniLM-L6-v2's pads every encoding to 128) is
    /// turned off: callers batch ragged sequences themselves and count real tokens.
    pub fn new(mut inner: tokenizers::Tokenizer, bos: Option<&str>, eos: &[&str]) -> Self {
        inner.with_padding(None);
        let lookup = |t: &str| inner.token_to_id(t).map(|id| (id, t.to_owned()));
        let special = SpecialTokens {
            bos: bos.and_then(lookup),
            eos: eos.iter().filter_map(|t| lookup(t)).collect(),
            pad: None,
        };
        Self { inner, special }
    }

    /// Truncates encodings to `max` tokens, special tokens included (`None`: no truncation).
    pub fn set_max_length(&mut self, max: Option<usize>) -> Result<(), TokenizerError> {
        let params = max.map(|max_length| tokenizers::TruncationParams {
            max_length,
            ..Default::default()
        });
        self.inner
            .with_truncation(params)
            .map_err(TokenizerError::Build)?;
        Ok(())
    }

    /// Token ids of `text` with their byte spans in it (special tokens have empty spans).
    pub fn encode_with_offsets(
        &self,
        text: &str,
        add_special: bool,
    ) -> Result<Vec<(u32, Span)>, TokenizerError> {
        let encoding = self
            .inner
            .encode(text, add_special)
            .map_err(TokenizerError::Encode)?;
        Ok(encoding
            .get_ids()
            .iter()
            .copied()
            .zip(encoding.get_offsets().iter().copied())
            .collect())
    }

    /// Parses `tokenizer.json` bytes.
    pub fn from_json_bytes(
        bytes: &[u8],
        bos: Option<&str>,
        eos: &[&str],
    ) -> Result<Self, TokenizerError> {
        let inner =
            tokenizers::Tokenizer::from_bytes(bytes).map_err(|source| TokenizerError::Parse {
                path: PathBuf::from("<tokenizer.json>"),
                source,
            })?;
        Ok(Self::new(inner, bos, eos))
    }

    /// Loads `tokenizer.json` from a model directory, with BOS/EOS from `tokenizer_config.json`
    /// (`bos_token` / `eos_token`, strings or `{"content": …}` objects) when present.
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        let path = dir.join("tokenizer.json");
        let bytes = std::fs::read(&path).map_err(|source| TokenizerError::Io {
            path: path.clone(),
            source,
        })?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|source| TokenizerError::Parse { path, source })?;
        let config = read_tokenizer_config(dir)?;
        let name = |key: &str| -> Option<String> {
            let v = config.as_ref()?.get(key)?;
            v.as_str()
                .or_else(|| v.get("content").and_then(|c| c.as_str()))
                .map(str::to_owned)
        };
        let bos = name("bos_token");
        let eos = name("eos_token");
        Ok(Self::new(
            inner,
            bos.as_deref(),
            eos.as_deref()
                .map(|e| vec![e])
                .unwrap_or_default()
                .as_slice(),
        ))
    }

    /// Rebuilds a byte-level BPE tokenizer from GGUF metadata (see the module docs).
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, TokenizerError> {
        let err = |m: String| TokenizerError::Gguf(m);
        let model = gguf
            .meta_str("tokenizer.ggml.model")
            .ok_or_else(|| err("no tokenizer.ggml.model".into()))?;
        if model != "gpt2" {
            return Err(TokenizerError::Unsupported(format!(
                "tokenizer.ggml.model = {model:?} (only byte-level BPE, \"gpt2\", is rebuilt from GGUF)"
            )));
        }
        let tokens = gguf
            .meta_str_array("tokenizer.ggml.tokens")
            .ok_or_else(|| err("no tokenizer.ggml.tokens string array".into()))?;
        if tokens.is_empty() || tokens.len() > MAX_GGUF_VOCAB {
            return Err(err(format!("{} tokens", tokens.len())));
        }
        let merges = gguf
            .meta_str_array("tokenizer.ggml.merges")
            .ok_or_else(|| err("no tokenizer.ggml.merges string array".into()))?;
        let token_types = gguf.meta_int_array("tokenizer.ggml.token_type");
        if let Some(types) = &token_types
            && types.len() != tokens.len()
        {
            return Err(err(format!(
                "{} token types for {} tokens",
                types.len(),
                tokens.len()
            )));
        }

        let mut vocab = Vocab::with_capacity(tokens.len());
        for (id, t) in tokens.iter().enumerate() {
            // Duplicates exist in some conversions ("[PAD…]" fillers); the first id wins.
            vocab.entry((*t).to_owned()).or_insert(id as u32);
        }
        let mut pairs = Vec::with_capacity(merges.len());
        for m in &merges {
            let (a, b) = m
                .split_once(' ')
                .ok_or_else(|| err(format!("merge {m:?} is not two tokens")))?;
            pairs.push((a.to_owned(), b.to_owned()));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, pairs)
            .build()
            .map_err(TokenizerError::Build)?;

        let byte_level = ByteLevel::new(false, true, true);
        let pre = gguf.meta_str("tokenizer.ggml.pre").unwrap_or("default");
        let pre_tokenizer: PreTokenizerWrapper = match pre {
            "default" | "gpt2" => byte_level.into(),
            // SmolLM: every digit is its own pre-token, then GPT-2's split (llama.cpp's
            // LLAMA_VOCAB_PRE_TYPE_SMOLLM; HF's tokenizer.json has Digits + ByteLevel).
            "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
            other => {
                return Err(TokenizerError::Unsupported(format!(
                    "tokenizer.ggml.pre = {other:?}"
                )));
            }
        };
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevel::default()));

        // Control (3) and user-defined (4) tokens match as whole strings before BPE.
        if let Some(types) = &token_types {
            let added: Vec<AddedToken> = tokens
                .iter()
                .zip(types)
                .filter(|(_, ty)| matches!(ty, 3 | 4))
                .map(|(t, ty)| AddedToken::from((*t).to_owned(), *ty == 3))
                .collect();
            inner
                .add_special_tokens(added.iter().filter(|t| t.special).cloned())
                .map_err(TokenizerError::Build)?;
            inner
                .add_tokens(added.into_iter().filter(|t| !t.special))
                .map_err(TokenizerError::Build)?;
        }

        let id = |key: &str| -> Result<Option<(u32, String)>, TokenizerError> {
            match gguf.meta_u64(key) {
                None => Ok(None),
                Some(id) => {
                    let t = tokens
                        .get(id as usize)
                        .ok_or_else(|| err(format!("{key} = {id} outside the vocabulary")))?;
                    Ok(Some((id as u32, (*t).to_owned())))
                }
            }
        };
        let bos = id("tokenizer.ggml.bos_token_id")?;
        let eos = id("tokenizer.ggml.eos_token_id")?;
        let pad = id("tokenizer.ggml.padding_token_id")?.map(|(id, _)| id);
        if gguf.meta_bool("tokenizer.ggml.add_bos_token") == Some(true)
            && let Some((bos_id, bos_text)) = &bos
        {
            let processor = TemplateProcessing::builder()
                .try_single(format!("{bos_text} $A"))
                .map_err(|e| TokenizerError::Build(e.into()))?
                .special_tokens(vec![(bos_text.clone(), *bos_id)])
                .build()
                .map_err(|e| TokenizerError::Build(e.into()))?;
            inner.with_post_processor(Some(processor));
        }
        Ok(Self {
            inner,
            special: SpecialTokens {
                bos,
                eos: eos.into_iter().collect(),
                pad,
            },
        })
    }

    /// Adds an end-of-sequence token (e.g. a chat model's end-of-turn marker) by its text.
    /// Returns false when the token is not in the vocabulary.
    pub fn add_eos(&mut self, token: &str) -> bool {
        match self.inner.token_to_id(token) {
            Some(id) if !self.special.eos.iter().any(|(e, _)| *e == id) => {
                self.special.eos.push((id, token.to_owned()));
                true
            }
            Some(_) => true,
            None => false,
        }
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

fn read_tokenizer_config(dir: &Path) -> Result<Option<serde_json::Value>, TokenizerError> {
    let path = dir.join("tokenizer_config.json");
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| TokenizerError::Parse {
                path,
                source: e.into(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TokenizerError::Io { path, source }),
    }
}

impl Tokenizer for HfTokenizer {
    fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .inner
            .encode(text, add_special)
            .map_err(TokenizerError::Encode)?;
        Ok(encoding.get_ids().to_vec())
    }

    fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(TokenizerError::Decode)
    }

    fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// Turns a stream of token ids into text deltas that never split a UTF-8 character.
///
/// Holds the ids from the last emitted boundary on (a few tokens), so each step decodes a
/// short window, not the whole generation.
#[derive(Debug, Clone)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    /// `ids[..prefix]` is context already emitted before the last delta.
    prefix: usize,
    /// `ids[..read]` has been emitted.
    read: usize,
    skip_special: bool,
}

impl IncrementalDecoder {
    pub fn new(skip_special: bool) -> Self {
        Self {
            ids: Vec::new(),
            prefix: 0,
            read: 0,
            skip_special,
        }
    }

    /// Feeds one token; returns the text it completes, if any.
    pub fn step(
        &mut self,
        tokenizer: &dyn Tokenizer,
        id: u32,
    ) -> Result<Option<String>, TokenizerError> {
        self.ids.push(id);
        let before = tokenizer.decode(&self.ids[self.prefix..self.read], self.skip_special)?;
        let after = tokenizer.decode(&self.ids[self.prefix..], self.skip_special)?;
        if after.len() <= before.len() || after.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        let Some(delta) = after.get(before.len()..) else {
            // The window's earlier text changed under the new token (a decoder that rewrites
            // its prefix); wait for a cleaner boundary rather than emit a broken character.
            return Ok(None);
        };
        let delta = delta.to_owned();
        // Keep the ids of the last emitted stretch as context for the next step.
        self.ids.drain(..self.read);
        self.prefix = 0;
        self.read = self.ids.len();
        Ok(Some(delta))
    }

    /// Text not yet emitted (an incomplete character at the end comes out as U+FFFD).
    pub fn finish(&mut self, tokenizer: &dyn Tokenizer) -> Result<String, TokenizerError> {
        let before = tokenizer.decode(&self.ids[self.prefix..self.read], self.skip_special)?;
        let after = tokenizer.decode(&self.ids[self.prefix..], self.skip_special)?;
        self.ids.clear();
        self.prefix = 0;
        self.read = 0;
        Ok(after.get(before.len()..).unwrap_or_default().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A word-level-ish BPE over ASCII letters with `<s>`/`</s>` specials, saved as a
    /// repository's tokenizer.json + tokenizer_config.json.
    fn write_repo(dir: &Path) {
        let mut vocab = Vocab::new();
        for (i, c) in ('a'..='z').chain([' ']).enumerate() {
            vocab.insert(c.to_string(), i as u32);
        }
        let n = vocab.len() as u32;
        vocab.insert("ab".into(), n);
        vocab.insert("<s>".into(), n + 1);
        vocab.insert("</s>".into(), n + 2);
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, vec![("a".into(), "b".into())])
            .build()
            .unwrap();
        let mut tok = tokenizers::Tokenizer::new(bpe);
        tok.add_special_tokens([
            AddedToken::from("<s>", true),
            AddedToken::from("</s>", true),
        ])
        .unwrap();
        std::fs::write(dir.join("tokenizer.json"), tok.to_string(true).unwrap()).unwrap();
        std::fs::write(
            dir.join("tokenizer_config.json"),
            r#"{"bos_token":"<s>","eos_token":{"content":"</s>","special":true}}"#,
        )
        .unwrap();
    }

    #[test]
    fn loads_tokenizer_json_with_specials_from_config() {
        let dir = tempfile::tempdir().unwrap();
        write_repo(dir.path());
        let tok = HfTokenizer::from_dir(dir.path()).unwrap();
        let special = tok.special_tokens();
        assert_eq!(special.bos, Some((28, "<s>".into())));
        assert_eq!(special.eos_ids(), vec![29]);
        assert_eq!(special.eos_text(), "</s>");
        let ids = tok.encode("<s>abc</s>", false).unwrap();
        assert_eq!(ids, vec![28, 27, 2, 29]);
        // No decoder in this tokenizer.json: `tokenizers` joins tokens with spaces.
        assert_eq!(tok.decode(&ids, true).unwrap(), "ab c");
        assert_eq!(tok.vocab_size(), 30);
        let mut tok = tok;
        assert!(tok.add_eos("<s>"));
        assert!(!tok.add_eos("<missing>"));
        assert_eq!(tok.special_tokens().eos_ids(), vec![29, 28]);
    }

    #[test]
    fn missing_or_broken_tokenizer_json_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = HfTokenizer::from_dir(dir.path()).unwrap_err();
        assert!(matches!(err, TokenizerError::Io { .. }), "{err:?}");
        std::fs::write(dir.path().join("tokenizer.json"), "{not json").unwrap();
        let err = HfTokenizer::from_dir(dir.path()).unwrap_err();
        assert!(matches!(err, TokenizerError::Parse { .. }), "{err:?}");
    }
}
