//! Xet access tokens: what `xet-read-token` / `xet-write-token` hand out and the CAS routes
//! check. A token names one repository (`type/ns/name`), a right (read, or write which also
//! reads) and an expiry, and carries a keyed BLAKE3 MAC over them with the node's key, so
//! only the node that issued it accepts it, and not after it expires.

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    Read,
    Write,
}

/// A verified token's claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// `type/ns/name`, e.g. `models/alice/bert`.
    pub repo: String,
    pub right: Right,
    /// Unix seconds.
    pub exp: u64,
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("malformed Xet token")]
    Malformed,
    #[error("Xet token not issued by this node")]
    BadSignature,
    #[error("Xet token expired; ask for a new one")]
    Expired,
}

fn mac(key: &[u8; 32], payload: &str) -> String {
    blake3::keyed_hash(key, payload.as_bytes())
        .to_hex()
        .to_string()
}

/// Issues a token.
pub fn issue(key: &[u8; 32], claims: &Claims) -> String {
    let right = match claims.right {
        Right::Read => "r",
        Right::Write => "w",
    };
    let payload = format!("{}\n{right}\n{}", claims.repo, claims.exp);
    format!("xet1.{}.{}", hex::encode(&payload), mac(key, &payload))
}

/// Checks a token's MAC and expiry at time `now` (Unix seconds).
pub fn verify(key: &[u8; 32], token: &str, now: u64) -> Result<Claims, TokenError> {
    let rest = token.strip_prefix("xet1.").ok_or(TokenError::Malformed)?;
    let (payload, sig) = rest.split_once('.').ok_or(TokenError::Malformed)?;
    let payload = hex::decode(payload).map_err(|_| TokenError::Malformed)?;
    let payload = String::from_utf8(payload).map_err(|_| TokenError::Malformed)?;
    let expected = mac(key, &payload);
    let same = expected.len() == sig.len()
        && expected
            .bytes()
            .zip(sig.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return Err(TokenError::BadSignature);
    }
    let mut parts = payload.split('\n');
    let (Some(repo), Some(right), Some(exp), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let right = match right {
        "r" => Right::Read,
        "w" => Right::Write,
        _ => return Err(TokenError::Malformed),
    };
    let exp: u64 = exp.parse().map_err(|_| TokenError::Malformed)?;
    if exp <= now {
        return Err(TokenError::Expired);
    }
    Ok(Claims {
        repo: repo.to_owned(),
        right,
        exp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_until_they_expire_and_only_with_their_key() {
        let key = [7u8; 32];
        let claims = Claims {
            repo: "models/alice/bert".into(),
            right: Right::Write,
            exp: 1000,
        };
        let t = issue(&key, &claims);
        assert_eq!(verify(&key, &t, 999), Ok(claims.clone()));
        assert_eq!(verify(&key, &t, 1000), Err(TokenError::Expired));
        assert_eq!(verify(&[8u8; 32], &t, 999), Err(TokenError::BadSignature));
        // Changing the claims (a later expiry, another repo) breaks the MAC.
        let forged = issue(
            &[8u8; 32],
            &Claims {
                exp: 5000,
                ..claims.clone()
            },
        );
        assert_eq!(verify(&key, &forged, 999), Err(TokenError::BadSignature));
        assert_eq!(verify(&key, "xet1.zz.00", 0), Err(TokenError::Malformed));
        assert_eq!(verify(&key, "Bearer x", 0), Err(TokenError::Malformed));
    }
}
