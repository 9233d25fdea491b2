//! Where a file's bytes come from: anything that can read a range at an offset.
//!
//! The gateway hands the viewer LFS files as the chunk store's reader (each range reads only
//! the chunks under it) and small git blobs as bytes in memory; the viewer never asks for more
//! than it needs (a Parquet file: its footer, then the column chunks of the row groups a query
//! touches).

use std::io::{self, Read, Seek, SeekFrom};
use std::sync::{Arc, Mutex};

/// A file that can be read by ranges. Implementations are shared between threads.
pub trait RangeSource: Send + Sync {
    /// The file's size in bytes.
    fn len(&self) -> u64;

    /// Whether the file is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `len` bytes at `offset` (fewer only at the end of the file).
    fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>>;
}

/// A file held in memory (a small git blob).
#[derive(Debug, Clone)]
pub struct MemSource(Arc<[u8]>);

impl MemSource {
    pub fn new(bytes: impl Into<Arc<[u8]>>) -> Self {
        Self(bytes.into())
    }
}

impl RangeSource for MemSource {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.0.len());
        let end = start.saturating_add(len).min(self.0.len());
        Ok(self.0[start..end].to_vec())
    }
}

/// Any `Read + Seek` (the chunk store's file reader, a file), behind a lock.
#[derive(Debug)]
pub struct SeekSource<R> {
    inner: Mutex<R>,
    len: u64,
}

impl<R: Read + Seek + Send> SeekSource<R> {
    /// Wraps `reader`, whose size is `len`.
    pub fn new(reader: R, len: u64) -> Self {
        Self {
            inner: Mutex::new(reader),
            len,
        }
    }
}

impl<R: Read + Seek + Send> RangeSource for SeekSource<R> {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut reader = self
            .inner
            .lock()
            .map_err(|_| io::Error::other("reader lock poisoned"))?;
        let want = usize::try_from(self.len.saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(len);
        let mut out = vec![0; want];
        reader.seek(SeekFrom::Start(offset))?;
        reader.read_exact(&mut out)?;
        Ok(out)
    }
}

/// Reads a source from an offset on, in ranges that start small ([`FIRST_STEP`]: Parquet
/// reads each page header this way, and a header is a few hundred bytes) and double up to
/// [`MAX_STEP`] for long sequential reads (CSV, JSON Lines).
#[derive(Debug)]
pub(crate) struct SourceReader {
    source: Arc<dyn RangeSource>,
    pos: u64,
    buf: Vec<u8>,
    at: usize,
    step: usize,
}

impl std::fmt::Debug for dyn RangeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RangeSource({} bytes)", self.len())
    }
}

const FIRST_STEP: usize = 4 * 1024;
const MAX_STEP: usize = 256 * 1024;

impl SourceReader {
    pub(crate) fn new(source: Arc<dyn RangeSource>, start: u64) -> Self {
        Self {
            source,
            pos: start,
            buf: Vec::new(),
            at: 0,
            step: FIRST_STEP,
        }
    }
}

impl Read for SourceReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.at == self.buf.len() {
            if self.pos >= self.source.len() {
                return Ok(0);
            }
            self.buf = self.source.read_at(self.pos, self.step)?;
            self.step = (self.step * 2).min(MAX_STEP);
            self.pos += self.buf.len() as u64;
            self.at = 0;
            if self.buf.is_empty() {
                return Ok(0);
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
