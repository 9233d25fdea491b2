//! The byte-level reader and writer behind every encoding in [`crate::signed`].
//!
//! Fixed-width integers are little-endian; strings and lists carry a length prefix whose width
//! is part of each format. The [`Reader`] checks every length against what is left of the
//! input *before* it allocates, so a hostile length costs nothing, and it never panics.

use super::DecodeError;
use crate::repo::{RepoId, RepoType};

/// Appends fields to a buffer.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            buf: Vec::with_capacity(n),
        }
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub(crate) fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    /// A string of at most 255 bytes behind a `u8` length. Callers validate the length first.
    pub(crate) fn str8(&mut self, s: &str) {
        debug_assert!(s.len() <= u8::MAX as usize);
        self.u8(s.len() as u8);
        self.bytes(s.as_bytes());
    }

    /// A repo id: its type as one byte (model 0, dataset 1, space 2), then namespace and name
    /// as `str8` (both ≤ 96 bytes by validation).
    pub(crate) fn repo(&mut self, repo: &RepoId) {
        self.u8(match repo.kind() {
            RepoType::Model => 0,
            RepoType::Dataset => 1,
            RepoType::Space => 2,
        });
        self.str8(repo.namespace());
        self.str8(repo.name());
    }

    /// A string of at most 65535 bytes behind a `u16` length. Callers validate the length first.
    pub(crate) fn str16(&mut self, s: &str) {
        debug_assert!(s.len() <= u16::MAX as usize);
        self.u16(s.len() as u16);
        self.bytes(s.as_bytes());
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads fields from a byte slice; every method fails with [`DecodeError::Truncated`] rather
/// than reading past the end.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.rest.len() {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub(crate) fn str8(&mut self) -> Result<&'a str, DecodeError> {
        let n = self.u8()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| DecodeError::Utf8)
    }

    /// A repo id written by [`Writer::repo`]; an unknown type or an invalid id is an error.
    pub(crate) fn repo(&mut self) -> Result<RepoId, DecodeError> {
        let kind = match self.u8()? {
            0 => RepoType::Model,
            1 => RepoType::Dataset,
            2 => RepoType::Space,
            _ => return Err(DecodeError::NotCanonical("unknown repo type")),
        };
        let namespace = self.str8()?;
        let name = self.str8()?;
        RepoId::new(kind, namespace, name).map_err(|_| DecodeError::NotCanonical("invalid repo id"))
    }

    pub(crate) fn str16(&mut self) -> Result<&'a str, DecodeError> {
        let n = self.u16()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| DecodeError::Utf8)
    }

    /// Checks that `count` entries of at least `min_len` bytes each can still follow, so a
    /// list's declared length is never trusted before its bytes are there.
    pub(crate) fn expect_entries(&self, count: usize, min_len: usize) -> Result<(), DecodeError> {
        match count.checked_mul(min_len) {
            Some(need) if need <= self.rest.len() => Ok(()),
            _ => Err(DecodeError::Truncated),
        }
    }

    /// The version byte and the kind byte that open every encoding.
    pub(crate) fn header(&mut self, kind: u8) -> Result<(), DecodeError> {
        let version = self.u8()?;
        if version != super::FORMAT_VERSION {
            return Err(DecodeError::Version(version));
        }
        let found = self.u8()?;
        if found != kind {
            return Err(DecodeError::Kind {
                expected: kind,
                found,
            });
        }
        Ok(())
    }

    /// Fails unless the whole input was consumed.
    pub(crate) fn end(self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.rest.len()))
        }
    }
}
