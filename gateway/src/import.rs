//! Streaming a request body into the chunk store: [`StreamImport`] hands chunks from the async
//! side to a blocking `Store::import_reader` over a bounded channel, so memory stays at a few
//! chunks whatever the size. Dropped before [`StreamImport::finish`] (bad input, a client that
//! went away), it makes the import fail, so nothing truncated is ever recorded.

use crate::error::AppError;
use hub_store::{Expected, FileInfo, Store};
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

type Chunk = Result<Vec<u8>, std::io::Error>;

/// Chunks in flight between the request and the import.
const CHANNEL_DEPTH: usize = 8;

/// A `Read` over chunks sent from the async side. The end of the channel is the end of the
/// file only if the sender did not abort.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Chunk>,
    current: Vec<u8>,
    pos: usize,
    aborted: Arc<AtomicBool>,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.current.len() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => {
                    self.current = chunk;
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(e),
                None if self.aborted.load(Ordering::SeqCst) => {
                    return Err(std::io::Error::other("upload aborted"));
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len() - self.pos);
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// An import in progress, fed chunk by chunk.
pub(crate) struct StreamImport {
    tx: Option<tokio::sync::mpsc::Sender<Chunk>>,
    aborted: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<Result<FileInfo, hub_store::StoreError>>>,
    finished: bool,
}

impl StreamImport {
    pub(crate) fn start(store: Store) -> Self {
        Self::start_with(store, None)
    }

    /// An import that must yield `expected` (an LFS upload): anything else fails and leaves
    /// nothing in the store.
    pub(crate) fn start_expecting(store: Store, expected: Expected) -> Self {
        Self::start_with(store, Some(expected))
    }

    fn start_with(store: Store, expected: Option<Expected>) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(CHANNEL_DEPTH);
        let aborted = Arc::new(AtomicBool::new(false));
        let reader = ChannelReader {
            rx,
            current: Vec::new(),
            pos: 0,
            aborted: aborted.clone(),
        };
        let task = tokio::task::spawn_blocking(move || match expected {
            Some(expected) => store.import_expecting(reader, expected),
            None => store.import_reader(reader),
        });
        Self {
            tx: Some(tx),
            aborted,
            task: Some(task),
            finished: false,
        }
    }

    /// Hands one chunk to the import, waiting while the import is behind. Once the import
    /// has failed (a full disk, say), chunks are dropped: the caller reads the rest of the
    /// body, and [`StreamImport::finish`] reports the failure. A server that stops reading
    /// mid-upload is, to most HTTP clients, a reset connection rather than an answer.
    pub(crate) async fn send(&mut self, chunk: Vec<u8>) -> Result<(), AppError> {
        if let Some(tx) = &self.tx
            && tx.send(Ok(chunk)).await.is_err()
        {
            self.tx = None;
        }
        Ok(())
    }

    /// Ends the input and waits for the import: the file is durable when this returns.
    pub(crate) async fn finish(mut self) -> Result<FileInfo, AppError> {
        self.finished = true;
        drop(self.tx.take());
        let task = self
            .task
            .take()
            .ok_or_else(|| AppError::internal("import already finished"))?;
        task.await
            .map_err(AppError::internal)?
            .map_err(AppError::from)
    }
}

impl Drop for StreamImport {
    fn drop(&mut self) {
        if !self.finished {
            self.aborted.store(true, Ordering::SeqCst);
        }
    }
}
