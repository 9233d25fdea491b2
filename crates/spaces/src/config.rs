//! A Space's configuration: the YAML front matter of its `README.md`, as the Hub reads it
//! (`sdk`, `app_file`, `app_port`, `python_version`, `sdk_version`, `suggested_hardware`,
//! `models`, `datasets`).
//!
//! Parsing goes through `hub-search`'s bounded card parser (the same front matter the listing
//! indexes), so a hostile README cannot exhaust memory here either. What is wrong with a
//! configuration is a [`ConfigError`], which the Space shows as its `CONFIG_ERROR` stage.

use serde_json::{Map, Value};

/// The SDKs the Hub knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sdk {
    /// Files served as they are.
    Static,
    /// A Python app (`app_file`, default `app.py`) with gradio at `sdk_version`.
    Gradio,
    /// A Python app run by `streamlit run`.
    Streamlit,
    /// A container image built from the repo's `Dockerfile`.
    Docker,
}

impl Sdk {
    pub fn as_str(self) -> &'static str {
        match self {
            Sdk::Static => "static",
            Sdk::Gradio => "gradio",
            Sdk::Streamlit => "streamlit",
            Sdk::Docker => "docker",
        }
    }

    /// The PyPI package of a Python SDK.
    pub fn package(self) -> Option<&'static str> {
        match self {
            Sdk::Gradio => Some("gradio"),
            Sdk::Streamlit => Some("streamlit"),
            Sdk::Static | Sdk::Docker => None,
        }
    }
}

/// What a Space's README says about how to run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaceConfig {
    pub sdk: Sdk,
    /// The file to run (Python SDKs) or serve first (static: `index.html`).
    pub app_file: String,
    /// The port a docker app listens on (the Hub's default 7860).
    pub app_port: u16,
    /// `python_version` as written (`"3.11"`); the node's Python must match its major.minor
    /// when it is given.
    pub python_version: Option<String>,
    /// The SDK's version (`sdk_version`), pinned in the environment; the newest known to the
    /// index when absent.
    pub sdk_version: Option<String>,
    /// `suggested_hardware`, reported as the requested hardware.
    pub suggested_hardware: Option<String>,
    pub models: Vec<String>,
    pub datasets: Vec<String>,
}

/// Why a Space's configuration cannot be run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("the Space has no README.md with a YAML front matter naming its `sdk`")]
    NoReadme,
    #[error("invalid YAML front matter in README.md: {0}")]
    Yaml(String),
    #[error("README.md does not name an `sdk` (static, gradio, streamlit or docker)")]
    NoSdk,
    #[error("unknown sdk {0:?} (expected static, gradio, streamlit or docker)")]
    UnknownSdk(String),
    #[error("invalid {field}: {why}")]
    Field { field: &'static str, why: String },
}

/// The largest `sdk_version` or `python_version` string accepted.
const MAX_VERSION_LEN: usize = 32;

impl SpaceConfig {
    /// The configuration in `readme` (the whole file). Never panics.
    pub fn from_readme(readme: &str) -> Result<Self, ConfigError> {
        let card = hub_search::parse_card(readme);
        if let Some(error) = card.error {
            return Err(ConfigError::Yaml(error));
        }
        Self::from_card_data(&card.card_data)
    }

    fn from_card_data(data: &Map<String, Value>) -> Result<Self, ConfigError> {
        let sdk = match data.get("sdk") {
            None | Some(Value::Null) => return Err(ConfigError::NoSdk),
            Some(Value::String(s)) => match s.as_str() {
                "static" => Sdk::Static,
                "gradio" => Sdk::Gradio,
                "streamlit" => Sdk::Streamlit,
                "docker" => Sdk::Docker,
                other => return Err(ConfigError::UnknownSdk(other.chars().take(64).collect())),
            },
            Some(other) => return Err(ConfigError::UnknownSdk(other.to_string())),
        };
        let app_file = match data.get("app_file") {
            None | Some(Value::Null) => match sdk {
                Sdk::Static => "index.html".to_owned(),
                _ => "app.py".to_owned(),
            },
            Some(Value::String(s)) => {
                hub_protocol::repo::validate_repo_path(s).map_err(|e| ConfigError::Field {
                    field: "app_file",
                    why: e.to_string(),
                })?;
                s.clone()
            }
            Some(_) => {
                return Err(ConfigError::Field {
                    field: "app_file",
                    why: "not a string".into(),
                });
            }
        };
        let app_port = match data.get("app_port") {
            None | Some(Value::Null) => 7860,
            Some(v) => v
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0)
                .ok_or_else(|| ConfigError::Field {
                    field: "app_port",
                    why: format!("{v} is not a port"),
                })?,
        };
        Ok(Self {
            sdk,
            app_file,
            app_port,
            python_version: version(data, "python_version")?,
            sdk_version: version(data, "sdk_version")?,
            suggested_hardware: data
                .get("suggested_hardware")
                .and_then(Value::as_str)
                .map(|s| s.chars().take(64).collect()),
            models: strings(data, "models"),
            datasets: strings(data, "datasets"),
        })
    }
}

/// A version field: a string or number of digits, dots and PEP 440 letters only, since it
/// ends up on pip's command line.
fn version(data: &Map<String, Value>, field: &'static str) -> Result<Option<String>, ConfigError> {
    let text = match data.get(field) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.trim().to_owned(),
        // YAML `3.10` is a number; the Hub reads it as the string it looks like.
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => {
            return Err(ConfigError::Field {
                field,
                why: "not a version string".into(),
            });
        }
    };
    let ok = !text.is_empty()
        && text.len() <= MAX_VERSION_LEN
        && text.starts_with(|c: char| c.is_ascii_digit())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '+' || c == '!');
    if ok {
        Ok(Some(text))
    } else {
        Err(ConfigError::Field {
            field,
            why: format!("{text:?} is not a version"),
        })
    }
}

fn strings(data: &Map<String, Value>, field: &str) -> Vec<String> {
    match data.get(field) {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_hub_fields_with_their_defaults() {
        let c = SpaceConfig::from_readme(
            "---\ntitle: Reverse\nsdk: gradio\nsdk_version: 5.49.1\npython_version: 3.11\nmodels:\n- a/b\n---\n# hi\n",
        )
        .unwrap();
        assert_eq!(c.sdk, Sdk::Gradio);
        assert_eq!(c.app_file, "app.py");
        assert_eq!(c.app_port, 7860);
        assert_eq!(c.sdk_version.as_deref(), Some("5.49.1"));
        assert_eq!(c.python_version.as_deref(), Some("3.11"));
        assert_eq!(c.models, vec!["a/b".to_owned()]);
        let s = SpaceConfig::from_readme("---\nsdk: static\n---\n").unwrap();
        assert_eq!((s.sdk, s.app_file.as_str()), (Sdk::Static, "index.html"));
    }

    #[test]
    fn refuses_what_cannot_run() {
        assert_eq!(
            SpaceConfig::from_readme("# no front matter"),
            Err(ConfigError::NoSdk)
        );
        assert!(matches!(
            SpaceConfig::from_readme("---\nsdk: cobol\n---\n"),
            Err(ConfigError::UnknownSdk(_))
        ));
        for bad in [
            "---\nsdk: gradio\nsdk_version: \"5; rm -rf /\"\n---\n",
            "---\nsdk: gradio\nsdk_version: \"--index-url=http://evil\"\n---\n",
            "---\nsdk: gradio\napp_file: ../../etc/passwd\n---\n",
            "---\nsdk: docker\napp_port: 70000\n---\n",
        ] {
            assert!(
                matches!(
                    SpaceConfig::from_readme(bad),
                    Err(ConfigError::Field { .. })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            SpaceConfig::from_readme("---\nsdk: [unclosed\n---\n"),
            Err(ConfigError::Yaml(_))
        ));
    }
}
