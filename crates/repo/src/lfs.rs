//! git-lfs pointer files (spec v1): the small text blob git stores in place of a large file.
//!
//! ```text
//! version https://git-lfs.github.com/spec/v1
//! oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393
//! size 12345
//! ```

/// Pointers are tiny; git-lfs itself never treats a blob over 1024 bytes as one.
pub const MAX_POINTER_SIZE: usize = 1024;

const VERSION_LINE: &str = "version https://git-lfs.github.com/spec/v1";

/// A parsed pointer: the SHA-256 (lowercase hex) and size of the real content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LfsPointer {
    pub sha256: String,
    pub size: u64,
}

impl LfsPointer {
    /// A pointer for `sha256` (64 hex digits, any case) and `size`; `None` for a bad hash.
    pub fn new(sha256: &str, size: u64) -> Option<Self> {
        is_sha256_hex(sha256).then(|| Self {
            sha256: sha256.to_ascii_lowercase(),
            size,
        })
    }

    /// The canonical pointer text, as git-lfs writes it.
    pub fn encode(&self) -> String {
        format!(
            "{VERSION_LINE}\noid sha256:{}\nsize {}\n",
            self.sha256, self.size
        )
    }

    /// Parses a blob as a pointer; `None` when it is not one. Never panics, reads at most
    /// [`MAX_POINTER_SIZE`] bytes' worth.
    pub fn parse(blob: &[u8]) -> Option<Self> {
        if blob.len() > MAX_POINTER_SIZE {
            return None;
        }
        let text = std::str::from_utf8(blob).ok()?;
        let mut lines = text.lines();
        if lines.next()? != VERSION_LINE {
            return None;
        }
        let (mut oid, mut size) = (None, None);
        for line in lines {
            if let Some(v) = line.strip_prefix("oid sha256:") {
                oid = Some(v);
            } else if let Some(v) = line.strip_prefix("size ") {
                size = Some(v.parse::<u64>().ok()?);
            } else if !line.starts_with("ext-") && !line.is_empty() {
                return None;
            }
        }
        Self::new(oid?, size?)
    }
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Parses 64 hex digits into `out`; false when they are not.
pub(crate) fn decode_hex32(hex: &[u8], out: &mut [u8; 32]) -> bool {
    if hex.len() != 64 {
        return false;
    }
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        match std::str::from_utf8(pair)
            .ok()
            .and_then(|s| u8::from_str_radix(s, 16).ok())
        {
            Some(b) => out[i] = b,
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let p = LfsPointer::new(&"AB".repeat(32), 42).unwrap();
        assert_eq!(p.sha256, "ab".repeat(32));
        assert_eq!(LfsPointer::parse(p.encode().as_bytes()), Some(p));
    }

    #[test]
    fn not_pointers() {
        let good_oid = "a".repeat(64);
        for bad in [
            String::new(),
            "hello".into(),
            format!("{VERSION_LINE}\noid sha256:{good_oid}\n"),
            format!("{VERSION_LINE}\nsize 3\n"),
            format!("{VERSION_LINE}\noid sha256:abc\nsize 3\n"),
            format!("{VERSION_LINE}\noid sha256:{good_oid}\nsize -3\n"),
            format!("{VERSION_LINE}\noid sha256:{good_oid}\nsize 3\nfoo bar\n"),
            format!(
                "{VERSION_LINE}\noid sha256:{good_oid}\nsize 3\n{}",
                "x".repeat(2000)
            ),
        ] {
            assert_eq!(LfsPointer::parse(bad.as_bytes()), None, "{bad:?}");
        }
        assert_eq!(LfsPointer::parse(&[0xff, 0xfe, 0x00]), None);
    }
}
