//! A Space's settings on this node: paused or not, sleep time, secrets and variables.
//! Persisted as JSON (mode 0600) in `SPACES/settings/<ns>/<name>.json`, written atomically.
//! Secrets leave this module only as environment variables of the app.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// At most this many secrets and as many variables per Space.
pub const MAX_ENTRIES: usize = 100;
/// Longest value of a secret or variable, bytes.
pub const MAX_VALUE: usize = 64 * 1024;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Seconds since the Unix epoch.
    pub updated: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Settings {
    #[serde(default)]
    pub paused: bool,
    /// Seconds without requests before the Space sleeps; `None`: the node's default;
    /// negative: never.
    #[serde(default)]
    pub sleep_time: Option<i64>,
    #[serde(default)]
    pub secrets: BTreeMap<String, Entry>,
    #[serde(default)]
    pub variables: BTreeMap<String, Entry>,
}

/// Why a secret or variable was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SettingError {
    #[error(
        "invalid key {0:?}: keys are letters, digits and underscores, not starting with a digit"
    )]
    Key(String),
    #[error("the value is larger than {MAX_VALUE} bytes")]
    TooLarge,
    #[error("a Space has at most {MAX_ENTRIES} secrets and {MAX_ENTRIES} variables")]
    TooMany,
    #[error("{0:?} is set by the node and cannot be overridden")]
    Reserved(String),
}

/// Names the node sets for the app itself.
const RESERVED: &[&str] = &["PATH", "HOME", "SPACE_ID", "SYSTEM", "PYTHONUNBUFFERED"];

/// Checks a key and value before they are stored.
pub fn check(
    key: &str,
    value: &str,
    existing: &BTreeMap<String, Entry>,
) -> Result<(), SettingError> {
    let valid = !key.is_empty()
        && key.len() <= 128
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(SettingError::Key(key.chars().take(64).collect()));
    }
    if RESERVED.contains(&key) || key.starts_with("GRADIO_") || key.starts_with("STREAMLIT_") {
        return Err(SettingError::Reserved(key.to_owned()));
    }
    if value.len() > MAX_VALUE {
        return Err(SettingError::TooLarge);
    }
    if !existing.contains_key(key) && existing.len() >= MAX_ENTRIES {
        return Err(SettingError::TooMany);
    }
    Ok(())
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Settings {
    /// The settings stored at `path`; defaults when there are none or they cannot be read
    /// (logged).
    pub fn load(path: &Path) -> Self {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
                tracing::warn!(path = %path.display(), %error, "unreadable Space settings; defaults used");
                Self::default()
            }),
            Err(_) => Self::default(),
        }
    }

    /// Writes the settings to `path` atomically, readable by the node only.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp: PathBuf = path.with_extension("json.tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_environment_variable_names() {
        let none = BTreeMap::new();
        assert!(check("HF_TOKEN", "x", &none).is_ok());
        for bad in ["", "1A", "A-B", "A B", "A=B", "ä"] {
            assert!(
                matches!(check(bad, "x", &none), Err(SettingError::Key(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            check("PATH", "x", &none),
            Err(SettingError::Reserved(_))
        ));
        assert!(matches!(
            check("GRADIO_SERVER_PORT", "1", &none),
            Err(SettingError::Reserved(_))
        ));
        assert_eq!(
            check("A", &"x".repeat(MAX_VALUE + 1), &none),
            Err(SettingError::TooLarge)
        );
    }

    #[test]
    fn saves_and_loads_privately() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ns/name.json");
        let mut s = Settings {
            paused: true,
            ..Settings::default()
        };
        s.secrets.insert(
            "K".into(),
            Entry {
                value: "v".into(),
                description: None,
                updated: 1,
            },
        );
        s.save(&path).unwrap();
        assert_eq!(Settings::load(&path), s);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, b"not json").unwrap();
        assert_eq!(Settings::load(&path), Settings::default());
    }
}
