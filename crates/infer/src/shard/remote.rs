//! Shard workers in other processes: one framed byte stream per remote worker carries both
//! the driver's jobs and the worker's all-reduce traffic with its stage's root.
//!
//! The stream is anything with blocking `Read` and `Write` halves: a TCP socket in tests, a
//! `/hubmesh/shard/1` libp2p stream on the mesh (hub-models bridges it). Every frame is
//! [`StreamLink`](super::collective::StreamLink)'s — a little-endian `u32` length (at most
//! [`MAX_FRAME`], refused before allocating), then the payload — whose first byte says which
//! of the two conversations it belongs to: [`TAG_CONTROL`] (jobs one way, replies the other)
//! or [`TAG_COLLECTIVE`] (all-reduce partial sums and totals). A reader thread on each side
//! splits them into two bounded channels; every receive on them is bounded by the step
//! timeout, and a closed stream (the peer's process died, its connection dropped) closes both
//! channels at once, so the driver sees "worker is gone" instead of waiting.
//!
//! Who runs what:
//! - worker side: [`serve_worker`] — after the caller has loaded its [`StageShard`] (by ranged
//!   reads of its own copy of the checkpoint) — sends [`Hello`] then runs the same loop as an
//!   in-process worker thread (`local::worker_loop`), its collective's link to the root being
//!   the stream's collective channel;
//! - coordinator side: [`RemoteRank::connect`] waits for the worker's hello and gives the
//!   driver a worker (jobs in, replies out) and its stage root a link;
//!   [`super::local::LocalShardedLlama::load_with_remote`] puts them in place of local ranks.
//!
//! Rank 0 of a tensor-parallel stage (the star's root) runs on the coordinator: the remote
//! ranks talk to it only, never to each other. A stage with `tensor_parallel = 1` may run
//! whole on a remote worker (its replies then carry hidden states or logits).

use std::io::{Read, Write};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::collective::{Link, LinkError, MAX_FRAME, StarCollective, SyncPrecision, Traffic};
use super::local::{Job, OwnedItem, Reply, worker_loop};
use super::stage::{StageOutput, StageShard};
use crate::model::SeqLogits;

/// Jobs and replies.
pub const TAG_CONTROL: u8 = 0;
/// All-reduce frames between a remote rank and its stage's root.
pub const TAG_COLLECTIVE: u8 = 1;

/// What a worker says first: it has loaded its shard, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    Ready { weight_bytes: u64 },
    Failed(String),
}

/// A stream's frame could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("bad shard frame: {0}")]
pub struct CodecError(String);

fn bad(what: &str) -> CodecError {
    CodecError(what.to_owned())
}

/// Reads one frame (`None` at a clean end of stream between frames).
fn read_frame<R: Read>(r: &mut R) -> Result<Option<Vec<u8>>, LinkError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME || len == 0 {
        return Err(LinkError::Frame(format!("frame of {len} bytes")));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    Ok(Some(buf))
}

/// The shared write half: one frame at a time, whoever writes.
#[derive(Debug)]
struct Writer<W>(Arc<Mutex<W>>);

impl<W> Clone for Writer<W> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<W: Write> Writer<W> {
    fn send(&self, tag: u8, payload: &[u8]) -> Result<(), LinkError> {
        let len = payload.len() + 1;
        if len > MAX_FRAME {
            return Err(LinkError::Frame(format!("{len} bytes is too large")));
        }
        let mut w = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut head = [0u8; 5];
        head[..4].copy_from_slice(&(len as u32).to_le_bytes());
        head[4] = tag;
        w.write_all(&head)?;
        w.write_all(payload)?;
        w.flush()?;
        Ok(())
    }
}

/// The collective half of a stream, as a [`Link`].
struct MuxLink<W> {
    writer: Writer<W>,
    rx: Receiver<Vec<u8>>,
    timeout: Duration,
}

impl<W> std::fmt::Debug for MuxLink<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxLink")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<W: Write + Send> Link for MuxLink<W> {
    fn send(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        self.writer.send(TAG_COLLECTIVE, frame)
    }

    fn recv(&mut self) -> Result<Vec<u8>, LinkError> {
        self.rx.recv_timeout(self.timeout).map_err(|e| match e {
            RecvTimeoutError::Timeout => LinkError::Timeout(self.timeout),
            RecvTimeoutError::Disconnected => LinkError::Closed,
        })
    }
}

/// Splits a stream's frames into its two conversations until it ends or breaks; the senders
/// drop with the thread, which is how the receivers learn the peer is gone.
fn spawn_demux<R: Read + Send + 'static>(
    name: String,
    mut reader: R,
    control: SyncSender<Vec<u8>>,
    collective: SyncSender<Vec<u8>>,
) -> std::io::Result<()> {
    std::thread::Builder::new().name(name).spawn(move || {
        while let Ok(Some(mut frame)) = read_frame(&mut reader) {
            let tag = frame[0];
            frame.remove(0);
            let to = match tag {
                TAG_CONTROL => &control,
                TAG_COLLECTIVE => &collective,
                _ => return,
            };
            if to.send(frame).is_err() {
                return;
            }
        }
    })?;
    Ok(())
}

/// The worker side: announces `shard` ready and serves jobs until the coordinator says
/// `Exit` or the stream ends. Blocking; run it on its own thread.
#[allow(clippy::too_many_arguments)]
pub fn serve_worker<R, W>(
    shard: StageShard,
    rank: usize,
    tensor_parallel: usize,
    precision: SyncPrecision,
    timeout: Duration,
    reader: R,
    writer: W,
) -> Result<(), LinkError>
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    let writer = Writer(Arc::new(Mutex::new(writer)));
    writer.send(
        TAG_CONTROL,
        &encode_hello(&Hello::Ready {
            weight_bytes: shard.weight_bytes(),
        }),
    )?;
    let (ctl_tx, ctl_rx) = sync_channel(4);
    let (coll_tx, coll_rx) = sync_channel(4);
    spawn_demux(format!("shard-rx-{rank}"), reader, ctl_tx, coll_tx)?;
    let coll = if tensor_parallel == 1 {
        StarCollective::solo()
    } else {
        StarCollective::member(
            rank,
            tensor_parallel,
            precision,
            Box::new(MuxLink {
                writer: writer.clone(),
                rx: coll_rx,
                timeout,
            }),
        )
    };
    // Decoded jobs in, replies out: the in-process worker loop, unchanged.
    let (jobs_tx, jobs_rx) = sync_channel(2);
    let (replies_tx, replies_rx) = sync_channel::<Result<Reply, String>>(2);
    let decoder = std::thread::Builder::new()
        .name(format!("shard-jobs-{rank}"))
        .spawn(move || {
            while let Ok(frame) = ctl_rx.recv() {
                let job = match decode_job(&frame) {
                    Ok(job) => job,
                    // A coordinator that speaks nonsense gets no more service.
                    Err(_) => Job::Exit,
                };
                let exit = matches!(job, Job::Exit);
                if jobs_tx.send(job).is_err() || exit {
                    return;
                }
            }
        })?;
    let reply_writer = writer.clone();
    let encoder = std::thread::Builder::new()
        .name(format!("shard-replies-{rank}"))
        .spawn(move || -> Result<(), LinkError> {
            while let Ok(reply) = replies_rx.recv() {
                reply_writer.send(TAG_CONTROL, &encode_reply(&reply))?;
            }
            Ok(())
        })?;
    worker_loop(shard, coll, jobs_rx, replies_tx);
    let _ = decoder.join();
    encoder
        .join()
        .unwrap_or_else(|_| Err(LinkError::Frame("reply encoder panicked".into())))
}

/// The worker side's refusal: it could not load its shard.
pub fn refuse<W: Write>(writer: W, message: &str) -> Result<(), LinkError> {
    Writer(Arc::new(Mutex::new(writer))).send(
        TAG_CONTROL,
        &encode_hello(&Hello::Failed(message.to_owned())),
    )
}

/// The coordinator's end of a remote worker (see the module docs).
#[derive(Debug)]
pub struct RemoteRank {
    pub(super) jobs: SyncSender<Job>,
    pub(super) replies: Receiver<Result<Reply, String>>,
    pub(super) link: Option<Box<dyn Link>>,
    pub(super) weight_bytes: u64,
}

/// The worker did not become ready.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    #[error("worker refused: {0}")]
    Refused(String),
    #[error("worker went away before it was ready")]
    Closed,
    #[error("worker not ready within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("start stream threads")]
    Spawn(#[from] std::io::Error),
}

impl RemoteRank {
    /// Waits (at most `load_timeout`) for the worker at the other end of `reader`/`writer`
    /// to report its shard loaded. `step_timeout` then bounds every collective receive.
    pub fn connect<R, W>(
        name: &str,
        reader: R,
        writer: W,
        load_timeout: Duration,
        step_timeout: Duration,
    ) -> Result<Self, ConnectError>
    where
        R: Read + Send + 'static,
        W: Write + Send + 'static,
    {
        let writer = Writer(Arc::new(Mutex::new(writer)));
        let (ctl_tx, ctl_rx) = sync_channel(4);
        let (coll_tx, coll_rx) = sync_channel(4);
        spawn_demux(format!("{name}-rx"), reader, ctl_tx, coll_tx)?;
        let hello = match ctl_rx.recv_timeout(load_timeout) {
            Ok(frame) => decode_hello(&frame)?,
            Err(RecvTimeoutError::Timeout) => return Err(ConnectError::Timeout(load_timeout)),
            Err(RecvTimeoutError::Disconnected) => return Err(ConnectError::Closed),
        };
        let weight_bytes = match hello {
            Hello::Ready { weight_bytes } => weight_bytes,
            Hello::Failed(m) => return Err(ConnectError::Refused(m)),
        };
        let (jobs, jobs_rx) = sync_channel::<Job>(2);
        let (replies_tx, replies) = sync_channel(2);
        let job_writer = writer.clone();
        std::thread::Builder::new()
            .name(format!("{name}-tx"))
            .spawn(move || {
                while let Ok(job) = jobs_rx.recv() {
                    if job_writer.send(TAG_CONTROL, &encode_job(&job)).is_err() {
                        return;
                    }
                }
            })?;
        std::thread::Builder::new()
            .name(format!("{name}-replies"))
            .spawn(move || {
                while let Ok(frame) = ctl_rx.recv() {
                    let reply = decode_reply(&frame).map_err(|e| e.to_string());
                    let stop = reply.is_err();
                    if replies_tx.send(reply.and_then(|r| r)).is_err() || stop {
                        return;
                    }
                }
            })?;
        Ok(Self {
            jobs,
            replies,
            link: Some(Box::new(MuxLink {
                writer,
                rx: coll_rx,
                timeout: step_timeout,
            })),
            weight_bytes,
        })
    }

    /// Bytes of weights the worker holds.
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }
}

// --- codecs: little-endian, every count checked against the bytes left -------------------

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], CodecError> {
        if self.0.len() < n {
            return Err(bad("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn count(&mut self, elem: usize) -> Result<usize, CodecError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(elem) > self.0.len() {
            return Err(bad("count beyond the frame"));
        }
        Ok(n)
    }
    fn u32s(&mut self) -> Result<Vec<u32>, CodecError> {
        let n = self.count(4)?;
        Ok(self
            .take(4 * n)?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect())
    }
    fn f32s(&mut self) -> Result<Vec<f32>, CodecError> {
        let n = self.count(4)?;
        Ok(self
            .take(4 * n)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect())
    }
    fn end(&self) -> Result<(), CodecError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(bad("trailing bytes"))
        }
    }
}

fn put_u32(out: &mut Vec<u8>, v: usize) {
    out.extend_from_slice(&(v as u32).to_le_bytes());
}

fn put_u32s(out: &mut Vec<u8>, v: &[u32]) {
    put_u32(out, v.len());
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
}

fn put_f32s(out: &mut Vec<u8>, v: &[f32]) {
    put_u32(out, v.len());
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
}

fn encode_hello(h: &Hello) -> Vec<u8> {
    match h {
        Hello::Ready { weight_bytes } => {
            let mut out = vec![0];
            out.extend_from_slice(&weight_bytes.to_le_bytes());
            out
        }
        Hello::Failed(m) => {
            let mut out = vec![1];
            out.extend_from_slice(m.as_bytes());
            out
        }
    }
}

fn decode_hello(b: &[u8]) -> Result<Hello, CodecError> {
    let mut c = Cursor(b);
    let h = match c.u8()? {
        0 => Hello::Ready {
            weight_bytes: c.u64()?,
        },
        1 => return Ok(Hello::Failed(String::from_utf8_lossy(c.0).into_owned())),
        _ => return Err(bad("hello kind")),
    };
    c.end()?;
    Ok(h)
}

pub(super) fn encode_job(job: &Job) -> Vec<u8> {
    match job {
        Job::Cache {
            num_blocks,
            block_size,
        } => {
            let mut out = vec![0];
            put_u32(&mut out, *num_blocks);
            put_u32(&mut out, *block_size);
            out
        }
        Job::Step { items, hidden } => {
            let mut out = vec![1];
            put_u32(&mut out, items.len());
            for i in items.iter() {
                put_u32(&mut out, i.start_pos);
                out.push(u8::from(i.all_logits));
                put_u32s(&mut out, &i.tokens);
                put_u32s(&mut out, &i.block_table);
            }
            match hidden {
                Some(h) => {
                    out.push(1);
                    put_f32s(&mut out, h);
                }
                None => out.push(0),
            }
            out
        }
        Job::Traffic => vec![2],
        Job::Exit => vec![3],
    }
}

pub(super) fn decode_job(b: &[u8]) -> Result<Job, CodecError> {
    let mut c = Cursor(b);
    let job = match c.u8()? {
        0 => Job::Cache {
            num_blocks: c.u32()? as usize,
            block_size: c.u32()? as usize,
        },
        1 => {
            // An item takes at least 13 bytes.
            let n = c.count(13)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                let start_pos = c.u32()? as usize;
                let all_logits = match c.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(bad("all_logits flag")),
                };
                items.push(OwnedItem {
                    tokens: c.u32s()?,
                    start_pos,
                    block_table: c.u32s()?,
                    all_logits,
                });
            }
            let hidden = match c.u8()? {
                0 => None,
                1 => Some(Arc::new(c.f32s()?)),
                _ => return Err(bad("hidden flag")),
            };
            Job::Step {
                items: Arc::new(items),
                hidden,
            }
        }
        2 => Job::Traffic,
        3 => Job::Exit,
        _ => return Err(bad("job kind")),
    };
    c.end()?;
    Ok(job)
}

pub(super) fn encode_reply(r: &Result<Reply, String>) -> Vec<u8> {
    match r {
        Ok(Reply::Cache(bytes)) => {
            let mut out = vec![0];
            out.extend_from_slice(&(*bytes as u64).to_le_bytes());
            out
        }
        Ok(Reply::Out(StageOutput::None)) => vec![1],
        Ok(Reply::Out(StageOutput::Hidden(h))) => {
            let mut out = vec![2];
            put_f32s(&mut out, h);
            out
        }
        Ok(Reply::Out(StageOutput::Logits(l))) => {
            let mut out = vec![3];
            put_u32(&mut out, l.len());
            for s in l {
                put_u32(&mut out, s.vocab);
                put_f32s(&mut out, &s.data);
            }
            out
        }
        Ok(Reply::Traffic(t)) => {
            let mut out = vec![4];
            out.extend_from_slice(&t.sent.to_le_bytes());
            out.extend_from_slice(&t.received.to_le_bytes());
            out
        }
        Err(m) => {
            let mut out = vec![5];
            out.extend_from_slice(m.as_bytes());
            out
        }
    }
}

pub(super) fn decode_reply(b: &[u8]) -> Result<Result<Reply, String>, CodecError> {
    let mut c = Cursor(b);
    let r = match c.u8()? {
        0 => Reply::Cache(usize::try_from(c.u64()?).map_err(|_| bad("cache bytes beyond usize"))?),
        1 => Reply::Out(StageOutput::None),
        2 => Reply::Out(StageOutput::Hidden(c.f32s()?)),
        3 => {
            let n = c.count(8)?;
            let mut seqs = Vec::with_capacity(n);
            for _ in 0..n {
                let vocab = c.u32()? as usize;
                seqs.push(SeqLogits {
                    vocab,
                    data: c.f32s()?,
                });
            }
            Reply::Out(StageOutput::Logits(seqs))
        }
        4 => Reply::Traffic(Traffic {
            sent: c.u64()?,
            received: c.u64()?,
        }),
        5 => return Ok(Err(String::from_utf8_lossy(c.0).into_owned())),
        _ => return Err(bad("reply kind")),
    };
    c.end()?;
    Ok(Ok(r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn jobs_and_replies_round_trip() {
        let job = Job::Step {
            items: Arc::new(vec![
                OwnedItem {
                    tokens: vec![1, 2, 3],
                    start_pos: 5,
                    block_table: vec![0, 7],
                    all_logits: true,
                },
                OwnedItem {
                    tokens: vec![9],
                    start_pos: 0,
                    block_table: vec![3],
                    all_logits: false,
                },
            ]),
            hidden: Some(Arc::new(vec![0.5, -1.25])),
        };
        let back = decode_job(&encode_job(&job)).unwrap();
        assert_eq!(format!("{job:?}"), format!("{back:?}"));
        for r in [
            Ok(Reply::Cache(4096)),
            Ok(Reply::Out(StageOutput::None)),
            Ok(Reply::Out(StageOutput::Hidden(vec![1.0, 2.0]))),
            Ok(Reply::Out(StageOutput::Logits(vec![SeqLogits {
                vocab: 2,
                data: vec![0.1, 0.2, 0.3, 0.4],
            }]))),
            Ok(Reply::Traffic(Traffic {
                sent: 3,
                received: 4,
            })),
            Err("tensor failed".to_owned()),
        ] {
            let back = decode_reply(&encode_reply(&r)).unwrap();
            assert_eq!(format!("{r:?}"), format!("{back:?}"));
        }
        let h = Hello::Ready { weight_bytes: 77 };
        assert_eq!(decode_hello(&encode_hello(&h)).unwrap(), h);
    }

    #[test]
    fn oversized_counts_are_refused_before_allocating() {
        // A step claiming 2^32-1 items in a 6-byte frame.
        let mut frame = vec![1];
        frame.extend_from_slice(&u32::MAX.to_le_bytes());
        frame.push(0);
        assert!(decode_job(&frame).is_err());
        let mut reply = vec![2];
        reply.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_reply(&reply).is_err());
        // A frame length over the cap is refused before the payload is read.
        let mut stream: &[u8] = &((MAX_FRAME as u32 + 1).to_le_bytes());
        assert!(matches!(read_frame(&mut stream), Err(LinkError::Frame(_))));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_job(&bytes);
            let _ = decode_reply(&bytes);
            let _ = decode_hello(&bytes);
            let mut s: &[u8] = &bytes;
            let _ = read_frame(&mut s);
        }
    }
}
