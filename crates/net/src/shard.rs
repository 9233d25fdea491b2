//! `/hubmesh/shard/1`: the stream a sharded model's coordinator opens to each of its remote
//! shard workers (hub-models' `shards`), carrying hub-infer's framed shard protocol — jobs,
//! replies and all-reduce frames on one stream (`hub_infer::shard::remote`).
//!
//! The shard workers are blocking threads (candle forward passes, all-reduces in lock step),
//! so the stream is handed to them as blocking `Read`/`Write` halves ([`blocking_halves`]):
//! each call drives the libp2p stream's future to completion on the calling thread. The
//! swarm task keeps polling the connection meanwhile, so a blocked reader wakes as soon as
//! bytes arrive, and fails as soon as the connection closes (the peer's process died).
//! Never call them from an async task.

use futures::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use libp2p::Stream;

/// The protocol name of shard streams.
pub const SHARD_PROTOCOL: &str = "/hubmesh/shard/1";

/// The read half of a shard stream, blocking.
#[derive(Debug)]
pub struct BlockingRead(ReadHalf<Stream>);

/// The write half of a shard stream, blocking; every `flush` flushes the stream.
#[derive(Debug)]
pub struct BlockingWrite(WriteHalf<Stream>);

/// Splits `stream` into blocking halves (see the module docs).
pub fn blocking_halves(stream: Stream) -> (BlockingRead, BlockingWrite) {
    let (r, w) = stream.split();
    (BlockingRead(r), BlockingWrite(w))
}

impl std::io::Read for BlockingRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        futures::executor::block_on(self.0.read(buf))
    }
}

impl std::io::Write for BlockingWrite {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        futures::executor::block_on(self.0.write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        futures::executor::block_on(self.0.flush())
    }
}

impl Drop for BlockingWrite {
    fn drop(&mut self) {
        // Tell the peer this side is done; it reads the end of the stream at once.
        let _ = futures::executor::block_on(self.0.close());
    }
}
