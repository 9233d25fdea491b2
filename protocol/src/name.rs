//! Validation of the names people choose: users, organisations and the two parts of a repo id.
//!
//! The Hub (and `huggingface_hub`'s `validate_repo_id`) allows `[\w\-.]{1,96}` for each part of
//! `namespace/name`. We accept the ASCII subset of that and additionally reject the names that
//! are dangerous on a file system or in a URL: `.` and `..`, a leading `.` or `-`, and `--`/`..`
//! anywhere, as the Hub does.

use std::fmt;

/// The longest name part accepted, in bytes.
pub const MAX_NAME_LEN: usize = 96;

/// Why a name was rejected. The message names the rule and is safe to show a user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name is {len} bytes long, the limit is {MAX_NAME_LEN}")]
    TooLong { len: usize },
    #[error("name contains {found:?}; only letters, digits, '-', '_' and '.' are allowed")]
    BadChar { found: char },
    #[error("name may not start with {found:?}")]
    BadStart { found: char },
    #[error("name may not end with '.'")]
    TrailingDot,
    #[error("name may not contain {found:?}")]
    BadSequence { found: &'static str },
}

/// Checks one part of a repo id, or a user or organisation name.
pub fn validate_name_part(name: &str) -> Result<(), NameError> {
    let Some(first) = name.chars().next() else {
        return Err(NameError::Empty);
    };
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { len: name.len() });
    }
    if let Some(found) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(NameError::BadChar { found });
    }
    if matches!(first, '.' | '-') {
        return Err(NameError::BadStart { found: first });
    }
    if name.ends_with('.') {
        return Err(NameError::TrailingDot);
    }
    for found in ["..", "--"] {
        if name.contains(found) {
            return Err(NameError::BadSequence { found });
        }
    }
    Ok(())
}

/// A validated user or organisation name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        validate_name_part(&name)?;
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_hub_style_names() {
        for ok in [
            "a",
            "alice",
            "meta-llama",
            "Llama-3.1-8B",
            "x_y.z",
            "0abc",
            &"a".repeat(96),
        ] {
            assert_eq!(validate_name_part(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_dangerous_names() {
        let cases: &[(&str, NameError)] = &[
            ("", NameError::Empty),
            (&"a".repeat(97), NameError::TooLong { len: 97 }),
            ("..", NameError::BadStart { found: '.' }),
            (".hidden", NameError::BadStart { found: '.' }),
            ("-x", NameError::BadStart { found: '-' }),
            ("a..b", NameError::BadSequence { found: ".." }),
            ("a--b", NameError::BadSequence { found: "--" }),
            ("a.", NameError::TrailingDot),
            ("a/b", NameError::BadChar { found: '/' }),
            ("a\0b", NameError::BadChar { found: '\0' }),
            ("naïve", NameError::BadChar { found: 'ï' }),
            ("a b", NameError::BadChar { found: ' ' }),
        ];
        for (name, err) in cases {
            assert_eq!(validate_name_part(name).as_ref(), Err(err), "{name:?}");
        }
    }

    proptest! {
        #[test]
        fn accepted_names_are_path_safe(name in "\\PC{0,120}") {
            if validate_name_part(&name).is_ok() {
                prop_assert!(!name.is_empty() && name.len() <= MAX_NAME_LEN);
                prop_assert!(!name.contains('/') && !name.contains('\\') && !name.contains('\0'));
                prop_assert!(name != "." && name != ".." && !name.starts_with('.'));
            }
        }
    }
}
