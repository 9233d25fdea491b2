//! One upstream fetch per LFS object, however many readers want it (single-flight), and the
//! readers served while it arrives.
//!
//! A [`Flight`] owns an unlinked spool file. Its fetch runs on one blocking thread: bytes read
//! from the upstream are appended to the spool and hashed (SHA-256) as they pass; readers (one
//! blocking thread each) read the spool with positioned reads up to what has arrived, so the
//! first bytes reach every client while the rest arrives. The last byte is held back until
//! the whole file's SHA-256 and size matched the pointer: a client whose download completes
//! has exactly the upstream's verified bytes; on a mismatch or a broken upstream its body
//! ends short with an error. Then the verified spool is imported into the chunk store
//! ([`hub_store::Store::import_expecting`], which checks again) and adopted by the repo; that
//! is the flight's outcome, which waiters that need the store (range requests, batch
//! downloads) wait for. Importing after the download rather than in the same pass keeps the
//! store's ingest off the client's path, and the import runs at a lower priority (nice +10,
//! inherited by the store's stage threads) so that on a busy node the readers still
//! streaming the spool come first (see `benches/results/mirror.md`). The spool has no name,
//! so it goes away with the last reader whatever happens.

use hub_store::{Expected, Sha256, Store};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use tokio::sync::{mpsc, watch};

/// The size of one piece handed to a reader's channel.
const PIECE: usize = 1 << 20;
/// Pieces buffered per reader.
const READER_DEPTH: usize = 8;

/// How a flight ended.
pub type Outcome = Option<Result<(), String>>;

#[derive(Debug)]
struct Progress {
    written: u64,
    /// Whether the downloaded bytes matched the pointer (what readers wait for).
    verified: Outcome,
}

/// One object being fetched.
#[derive(Debug)]
pub struct Flight {
    pub sha256: Sha256,
    pub size: u64,
    spool: File,
    progress: Mutex<Progress>,
    changed: Condvar,
    done: watch::Sender<Outcome>,
}

impl Flight {
    /// A flight spooling under `dir` (created if needed).
    pub fn new(dir: &Path, sha256: Sha256, size: u64) -> io::Result<Arc<Self>> {
        std::fs::create_dir_all(dir)?;
        let spool = tempfile::tempfile_in(dir)?;
        let (done, _) = watch::channel(None);
        Ok(Arc::new(Self {
            sha256,
            size,
            spool,
            progress: Mutex::new(Progress {
                written: 0,
                verified: None,
            }),
            changed: Condvar::new(),
            done,
        }))
    }

    /// Runs the fetch (blocking): `source` yields the upstream's bytes, which go to the spool
    /// (verified against the pointer's SHA-256 and size as they pass), then into the store;
    /// `adopt` runs after the store took them. Records the outcome.
    pub fn run(
        self: &Arc<Self>,
        store: &Store,
        source: Result<Box<dyn Read + Send>, String>,
        adopt: impl FnOnce() -> Result<(), String>,
    ) -> Result<(), String> {
        let verified = source.and_then(|source| self.download(source));
        {
            let mut p = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
            p.verified = Some(verified.clone());
        }
        self.changed.notify_all();
        let result = verified.and_then(|()| {
            // The import (SHA-256 again, chunker, BLAKE3, block writes: about as much CPU as
            // the download itself) runs behind the readers still streaming the spool, on a
            // thread of its own at a lower priority; the store's stage threads it starts
            // inherit that priority. See `benches/results/mirror.md`.
            std::thread::scope(|s| {
                std::thread::Builder::new()
                    .name("mirror-import".into())
                    .spawn_scoped(s, || {
                        lower_priority();
                        let spool = SpoolReader {
                            flight: self,
                            pos: 0,
                        };
                        let expected = Expected {
                            sha256: self.sha256,
                            size: self.size,
                        };
                        store
                            .import_expecting(spool, expected)
                            .map_err(|e| format!("store the upstream's bytes: {e}"))
                    })
                    .map_err(|e| format!("start the store import: {e}"))?
                    .join()
                    .map_err(|_| "the store import panicked".to_string())?
            })?;
            adopt()
        });
        self.finish(result.clone());
        result
    }

    /// Copies `source` into the spool, hashing; checks size and SHA-256.
    fn download(&self, mut source: Box<dyn Read + Send>) -> Result<(), String> {
        use sha2::Digest;
        let mut hash = sha2::Sha256::new();
        let mut buf = vec![0u8; PIECE];
        let mut written = 0u64;
        loop {
            let n = match source.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("read from the upstream: {e}")),
            };
            if written + n as u64 > self.size {
                return Err(format!(
                    "the upstream sent more than the announced {} bytes",
                    self.size
                ));
            }
            self.spool
                .write_all_at(&buf[..n], written)
                .map_err(|e| format!("write the spool: {e}"))?;
            hash.update(&buf[..n]);
            written += n as u64;
            self.progress
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .written = written;
            self.changed.notify_all();
        }
        if written != self.size {
            return Err(format!(
                "the upstream sent {written} bytes, not the announced {}",
                self.size
            ));
        }
        if hash.finalize().as_slice() != self.sha256.0 {
            return Err("the upstream's bytes do not match the pointer's SHA-256".into());
        }
        Ok(())
    }

    fn finish(&self, outcome: Result<(), String>) {
        self.done.send_replace(Some(outcome));
    }

    /// Waits (async) until the flight ended; its outcome.
    pub async fn wait(&self) -> Result<(), String> {
        let mut rx = self.done.subscribe();
        loop {
            if let Some(outcome) = rx.borrow_and_update().clone() {
                return outcome;
            }
            if rx.changed().await.is_err() {
                return Err("the fetch was dropped".into());
            }
        }
    }

    /// Waits (async) until the first bytes arrived or the flight ended; `false` when it ended
    /// in failure before any byte.
    pub async fn started(self: &Arc<Self>) -> bool {
        let flight = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut p = flight
                .progress
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            while p.written == 0 && p.verified.is_none() && flight.size > 0 {
                p = flight
                    .changed
                    .wait(p)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            !matches!(p.verified, Some(Err(_)))
        })
        .await
        .unwrap_or(false)
    }

    /// A reader of the whole object, from the spool, while it arrives.
    pub fn reader(self: &Arc<Self>) -> mpsc::Receiver<io::Result<Vec<u8>>> {
        self.range_reader(0, self.size)
    }

    /// A reader of bytes `start..end` of the object (a ranged GET), from the spool, while
    /// they arrive: the first bytes go out as soon as the fetch passed them, and, as for the
    /// whole file, the range's last byte is held back until the whole object was verified.
    pub fn range_reader(
        self: &Arc<Self>,
        start: u64,
        end: u64,
    ) -> mpsc::Receiver<io::Result<Vec<u8>>> {
        let (tx, rx) = mpsc::channel(READER_DEPTH);
        let flight = self.clone();
        let end = end.min(self.size);
        tokio::task::spawn_blocking(move || flight.feed(&tx, start.min(end), end));
        rx
    }

    fn feed(&self, tx: &mpsc::Sender<io::Result<Vec<u8>>>, start: u64, end: u64) {
        let mut pos = start;
        while pos < end {
            // What may be read: what arrived, less the last byte until verified.
            let (limit, outcome) = {
                let mut p = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
                loop {
                    let limit = match p.verified {
                        Some(Ok(())) => end,
                        _ => p.written.min(end - 1),
                    };
                    if limit > pos || p.verified.is_some() {
                        break (limit, p.verified.clone());
                    }
                    p = self.changed.wait(p).unwrap_or_else(PoisonError::into_inner);
                }
            };
            if limit > pos {
                let len = ((limit - pos) as usize).min(PIECE);
                let mut buf = vec![0u8; len];
                if let Err(e) = self.spool.read_exact_at(&mut buf, pos) {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
                pos += len as u64;
                if tx.blocking_send(Ok(buf)).is_err() {
                    return; // the client went away; the fetch goes on for the others
                }
                continue;
            }
            if let Some(Err(e)) = outcome {
                let _ = tx.blocking_send(Err(io::Error::other(e)));
                return;
            }
        }
    }
}

/// How much nicer than the node the import of a verified spool runs.
const IMPORT_NICE: i32 = 10;

/// Lowers the calling thread's priority by [`IMPORT_NICE`] (on Linux `setpriority` with pid 0
/// acts on the calling thread only, and threads it starts inherit it). Best effort: a failure
/// only means the import competes with the readers at the same priority.
fn lower_priority() {
    let now = rustix::process::getpriority_process(None).unwrap_or(0);
    if let Err(e) = rustix::process::setpriority_process(None, (now + IMPORT_NICE).min(19)) {
        tracing::debug!("mirror import keeps its priority: {e}");
    }
}

/// The verified spool, read in order (what the store imports).
struct SpoolReader<'a> {
    flight: &'a Flight,
    pos: u64,
}

impl Read for SpoolReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.flight.size - self.pos;
        let len = (buf.len() as u64).min(left) as usize;
        if len == 0 {
            return Ok(0);
        }
        let n = self.flight.spool.read_at(&mut buf[..len], self.pos)?;
        if n == 0 {
            return Err(io::Error::other("the spool is shorter than the file"));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn sha(data: &[u8]) -> Sha256 {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.import_reader(data).unwrap().sha256
    }

    async fn collect(mut rx: mpsc::Receiver<io::Result<Vec<u8>>>) -> (Vec<u8>, Option<String>) {
        let mut out = Vec::new();
        while let Some(item) = rx.recv().await {
            match item {
                Ok(b) => out.extend(b),
                Err(e) => return (out, Some(e.to_string())),
            }
        }
        (out, None)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_get_verified_bytes_while_they_arrive() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let sha256 = sha(&data);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let flight = Flight::new(&dir.path().join("spool"), sha256, data.len() as u64).unwrap();
        let readers: Vec<_> = (0..4).map(|_| flight.reader()).collect();
        let (f, s, d) = (flight.clone(), store.clone(), data.clone());
        let run =
            tokio::task::spawn_blocking(move || f.run(&s, Ok(Box::new(Cursor::new(d))), || Ok(())));
        for rx in readers {
            let (bytes, err) = collect(rx).await;
            assert_eq!(err, None);
            assert!(bytes == data);
        }
        run.await.unwrap().unwrap();
        assert!(store.has(&sha256).unwrap());
        assert_eq!(flight.wait().await, Ok(()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_range_streams_before_the_rest_arrives_and_ends_when_verified() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 13 % 251) as u8).collect();
        let sha256 = sha(&data);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let flight = Flight::new(&dir.path().join("spool"), sha256, data.len() as u64).unwrap();
        let mut rx = flight.range_reader(1000, 201_000);
        // A source that stops after its first MiB until released.
        let (release, gate) = std::sync::mpsc::channel::<()>();
        struct Gated {
            data: Cursor<Vec<u8>>,
            gate: std::sync::mpsc::Receiver<()>,
        }
        impl Read for Gated {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.data.position() == 1 << 20 {
                    let _ = self.gate.recv();
                }
                let left = (1u64 << 20).saturating_sub(self.data.position());
                let cap = if left > 0 {
                    buf.len().min(left as usize)
                } else {
                    buf.len()
                };
                self.data.read(&mut buf[..cap])
            }
        }
        let source = Gated {
            data: Cursor::new(data.clone()),
            gate,
        };
        let (f, s) = (flight.clone(), store.clone());
        let run = tokio::task::spawn_blocking(move || f.run(&s, Ok(Box::new(source)), || Ok(())));
        // All of the range but its last byte arrives while the source is stopped.
        let mut got = Vec::new();
        while got.len() < 199_999 {
            got.extend(rx.recv().await.unwrap().unwrap());
        }
        assert_eq!(got, data[1000..200_999]);
        assert!(flight.progress.lock().unwrap().verified.is_none());
        release.send(()).unwrap();
        while let Some(piece) = rx.recv().await {
            got.extend(piece.unwrap());
        }
        assert_eq!(got, data[1000..201_000]);
        run.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wrong_bytes_end_every_reader_short() {
        let data = vec![7u8; 200_000];
        let sha256 = sha(&data);
        let mut bad = data.clone();
        bad[100] ^= 1;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let flight = Flight::new(&dir.path().join("spool"), sha256, data.len() as u64).unwrap();
        let rx = flight.reader();
        let (f, s) = (flight.clone(), store.clone());
        let run = tokio::task::spawn_blocking(move || {
            f.run(&s, Ok(Box::new(Cursor::new(bad))), || Ok(()))
        });
        let (bytes, err) = collect(rx).await;
        assert!(err.is_some());
        assert!(bytes.len() < data.len(), "the last byte is held back");
        assert!(run.await.unwrap().is_err());
        assert!(!store.has(&sha256).unwrap());
        // A source that fails at once fails the flight, and `started` says so.
        let flight = Flight::new(&dir.path().join("spool"), sha256, 10).unwrap();
        flight
            .run(&store, Err("upstream down".into()), || Ok(()))
            .unwrap_err();
        assert!(!flight.started().await);
        assert_eq!(flight.wait().await, Err("upstream down".into()));
    }
}
