//! Chat templates: the Jinja programs Hugging Face repositories ship to turn a list of messages
//! into a prompt, rendered with `minijinja`.
//!
//! Sources, in the order [`ChatTemplate::from_dir`] tries them: `chat_template.jinja` (what
//! current `transformers` saves), the `chat_template` field of `tokenizer_config.json` (a string,
//! or a list of `{name, template}` of which `default` is used), or a GGUF file's
//! `tokenizer.chat_template` ([`ChatTemplate::from_gguf`]).
//!
//! The render context is what `transformers`' `apply_chat_template` passes: `messages`,
//! `add_generation_prompt`, `bos_token`, `eos_token`, plus the `raise_exception(msg)` function
//! many templates call to reject a conversation (it becomes [`ChatTemplateError::Raised`]).
//! Python string methods (`.strip()`, `.startswith()`, …) come from `minijinja-contrib`'s
//! `pycompat`, as in TGI. Environment options follow `transformers`: `trim_blocks` and
//! `lstrip_blocks` on, and the trailing newline kept.

use std::path::{Path, PathBuf};

use minijinja::{Environment, ErrorKind};
use serde::Serialize;

use crate::gguf::GgufFile;

/// A chat message as templates see it (`message.role`, `message.content`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Failure to find, compile or render a chat template.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChatTemplateError {
    #[error(
        "no chat template in {0} (looked for chat_template.jinja, tokenizer_config.json's chat_template, or gguf tokenizer.chat_template)"
    )]
    Missing(String),
    #[error("read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parse {path}")]
    Config {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("compile chat template")]
    Compile(#[source] minijinja::Error),
    /// The template called `raise_exception(message)`.
    #[error("chat template rejected the conversation: {0}")]
    Raised(String),
    #[error("render chat template")]
    Render(#[source] minijinja::Error),
}

/// A compiled chat template with the BOS/EOS strings it is rendered with.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

const NAME: &str = "chat";

/// Upper bound on a template's source: real ones are a few KB (Qwen3's tool template ~4 KB).
const MAX_TEMPLATE_BYTES: usize = 1 << 20;

impl ChatTemplate {
    /// Compiles template source.
    pub fn new(
        source: impl Into<String>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<Self, ChatTemplateError> {
        let source = source.into();
        if source.len() > MAX_TEMPLATE_BYTES {
            return Err(ChatTemplateError::Compile(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("template of {} bytes", source.len()),
            )));
        }
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .keep_trailing_newline(true)
                .build()
                .map_err(ChatTemplateError::Compile)?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, _> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned(NAME, source)
            .map_err(ChatTemplateError::Compile)?;
        Ok(Self {
            env,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
        })
    }

    /// Finds the template of a model directory (see the module docs for the order).
    pub fn from_dir(
        dir: &Path,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<Self, ChatTemplateError> {
        let jinja = dir.join("chat_template.jinja");
        match std::fs::read_to_string(&jinja) {
            Ok(source) => return Self::new(source, bos_token, eos_token),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ChatTemplateError::Io {
                    path: jinja,
                    source,
                });
            }
        }
        let path = dir.join("tokenizer_config.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ChatTemplateError::Missing(dir.display().to_string()));
            }
            Err(source) => return Err(ChatTemplateError::Io { path, source }),
        };
        let config: serde_json::Value = serde_json::from_str(&text)
            .map_err(|source| ChatTemplateError::Config { path, source })?;
        let source = match config.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(named)) => named
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_owned)),
            _ => None,
        };
        match source {
            Some(source) => Self::new(source, bos_token, eos_token),
            None => Err(ChatTemplateError::Missing(dir.display().to_string())),
        }
    }

    /// The template in a GGUF file's `tokenizer.chat_template`.
    pub fn from_gguf(
        gguf: &GgufFile,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<Self, ChatTemplateError> {
        match gguf.meta_str("tokenizer.chat_template") {
            Some(source) => Self::new(source, bos_token, eos_token),
            None => Err(ChatTemplateError::Missing(
                gguf.path().display().to_string(),
            )),
        }
    }

    /// Renders the prompt for `messages`; `add_generation_prompt` appends the assistant-turn
    /// opener so the model answers.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        let template = self
            .env
            .get_template(NAME)
            .map_err(ChatTemplateError::Render)?;
        template
            .render(minijinja::context! {
                messages => minijinja::Value::from(minijinja::value::Serde(messages)),
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| {
                // `raise_exception` errors surface as InvalidOperation with our message; keep
                // the template's own words, which are what a client should see.
                if e.kind() == ErrorKind::InvalidOperation
                    && let Some(detail) = e.detail()
                {
                    return ChatTemplateError::Raised(detail.to_owned());
                }
                ChatTemplateError::Render(e)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn chatml_renders_with_generation_prompt() {
        let t = ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap();
        let out = t
            .render(&[ChatMessage::new("user", "Hi there")], true)
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
        );
        let out = t.render(&[ChatMessage::new("user", "Hi")], false).unwrap();
        assert_eq!(out, "<|im_start|>user\nHi<|im_end|>\n");
    }

    #[test]
    fn raise_exception_becomes_an_error_with_the_message() {
        let source = "{{ bos_token }}{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}[{{ m['role'] }}] {{ m['content'] | trim }}{{ eos_token }}{% endfor %}";
        let t = ChatTemplate::new(source, "<s>", "</s>").unwrap();
        let ok = t
            .render(
                &[
                    ChatMessage::new("user", " a "),
                    ChatMessage::new("assistant", "b"),
                ],
                false,
            )
            .unwrap();
        assert_eq!(ok, "<s>[user] a</s>[assistant] b</s>");
        let err = t
            .render(
                &[ChatMessage::new("user", "a"), ChatMessage::new("user", "b")],
                false,
            )
            .unwrap_err();
        match err {
            ChatTemplateError::Raised(msg) => {
                assert_eq!(
                    msg,
                    "Conversation roles must alternate user/assistant/user/assistant/..."
                )
            }
            other => panic!("expected Raised, got {other:?}"),
        }
    }

    #[test]
    fn python_string_methods_and_namespace_work() {
        // Shapes used by Qwen/Llama 3 templates: namespace(), .strip(), .startswith(), tojson.
        let source = "{% set ns = namespace(sys='') %}{% for m in messages %}{% if m.role == 'system' %}{% set ns.sys = m.content.strip() %}{% endif %}{% endfor %}{{ ns.sys }}|{{ messages[-1].content.startswith('Q') }}|{{ messages[-1].role | tojson }}";
        let t = ChatTemplate::new(source, "", "").unwrap();
        let out = t
            .render(
                &[
                    ChatMessage::new("system", "  be brief \n"),
                    ChatMessage::new("user", "Q: why?"),
                ],
                true,
            )
            .unwrap();
        // Booleans print as Python does.
        assert_eq!(out, "be brief|True|\"user\"");
    }

    #[test]
    fn missing_template_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = ChatTemplate::from_dir(dir.path(), "", "").unwrap_err();
        assert!(matches!(err, ChatTemplateError::Missing(_)), "{err:?}");
        assert!(err.to_string().contains("no chat template"), "{err}");
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"bos_token":"<s>"}"#,
        )
        .unwrap();
        let err = ChatTemplate::from_dir(dir.path(), "", "").unwrap_err();
        assert!(matches!(err, ChatTemplateError::Missing(_)), "{err:?}");
    }

    #[test]
    fn templates_load_from_tokenizer_config_and_jinja_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = serde_json::json!({
            "chat_template": [
                {"name": "tool_use", "template": "TOOLS"},
                {"name": "default", "template": "{{ bos_token }}{{ messages[0].content }}"}
            ]
        });
        std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
        let t = ChatTemplate::from_dir(dir.path(), "<s>", "</s>").unwrap();
        assert_eq!(
            t.render(&[ChatMessage::new("user", "x")], true).unwrap(),
            "<s>x"
        );
        // chat_template.jinja takes precedence.
        std::fs::write(dir.path().join("chat_template.jinja"), "J{{ eos_token }}\n").unwrap();
        let t = ChatTemplate::from_dir(dir.path(), "<s>", "</s>").unwrap();
        assert_eq!(t.render(&[], true).unwrap(), "J</s>\n");
    }

    #[test]
    fn syntax_errors_fail_at_compile_time() {
        let err = ChatTemplate::new("{% for m in messages %}", "", "").unwrap_err();
        assert!(matches!(err, ChatTemplateError::Compile(_)), "{err:?}");
    }
}
