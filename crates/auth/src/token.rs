//! Token secrets: generation, hashing, and keeping them out of logs.

use sha2::{Digest, Sha256};
use std::fmt;

/// The prefix of every token, as on the Hub.
const PREFIX: &str = "hf_";
/// Characters after the prefix: 34 of 62 symbols is about 202 bits of entropy.
const BODY_LEN: usize = 34;
const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A token's secret value. Shown to its owner once; never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSecret(String);

impl TokenSecret {
    /// A fresh random token from the operating system's generator.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut out = String::with_capacity(PREFIX.len() + BODY_LEN);
        out.push_str(PREFIX);
        let mut buf = [0u8; 64];
        while out.len() < PREFIX.len() + BODY_LEN {
            getrandom::fill(&mut buf)?;
            // Rejection sampling keeps every symbol equally likely (248 = 4 × 62).
            for b in buf.iter().filter(|&&b| b < 248) {
                if out.len() == PREFIX.len() + BODY_LEN {
                    break;
                }
                out.push(char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]));
            }
        }
        Ok(Self(out))
    }

    /// The secret itself, for writing it where its owner will read it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSecret(<redacted>)")
    }
}

/// The key under which a token is stored: the SHA-256 of its text.
pub(crate) fn token_hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A random public id for a token record.
pub(crate) fn token_id() -> Result<String, getrandom::Error> {
    let mut buf = [0u8; 8];
    getrandom::fill(&mut buf)?;
    Ok(hex::encode(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_look_like_hub_tokens_and_differ() {
        let a = TokenSecret::generate().unwrap();
        let b = TokenSecret::generate().unwrap();
        assert_ne!(a, b);
        for t in [&a, &b] {
            let s = t.expose();
            assert!(s.starts_with("hf_"), "{s}");
            assert_eq!(s.len(), 3 + BODY_LEN);
            assert!(s[3..].bytes().all(|c| c.is_ascii_alphanumeric()));
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let t = TokenSecret::generate().unwrap();
        let shown = format!("{t:?} {:?}", Some(&t));
        assert!(!shown.contains(&t.expose()[3..]), "{shown}");
    }
}
