//! The request-response codecs of `/hubmesh/git-pack/1` and `/hubmesh/blocks/1`: one
//! hub-protocol encoding per stream direction, read with a hard byte bound before it is
//! decoded.

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use hub_protocol::blocks::{
    BlockRequest, BlockResponse, MAX_BLOCK_REQUEST_LEN, MAX_BLOCK_RESPONSE_LEN,
};
use hub_protocol::replication::{MAX_REQUEST_LEN, MAX_RESPONSE_LEN, PackRequest, PackResponse};
use libp2p::StreamProtocol;
use std::io;
use std::marker::PhantomData;
use std::time::Duration;

/// A message of one of our request-response protocols: its hub-protocol encoding.
pub(crate) trait Wire: Sized + Send {
    fn to_wire(&self) -> Vec<u8>;
    fn from_wire(bytes: &[u8]) -> io::Result<Self>;
}

macro_rules! wire {
    ($($t:ty),*) => {$(
        impl Wire for $t {
            fn to_wire(&self) -> Vec<u8> {
                self.encode()
            }
            fn from_wire(bytes: &[u8]) -> io::Result<Self> {
                <$t>::decode(bytes).map_err(invalid)
            }
        }
    )*};
}
wire!(PackRequest, PackResponse, BlockRequest, BlockResponse);

/// A codec that writes one message per stream direction and reads it back with a hard byte
/// bound (`REQ` for requests, `RESP` for responses) before decoding it.
pub(crate) struct Bounded<Req, Resp, const REQ: usize, const RESP: usize>(
    PhantomData<fn() -> (Req, Resp)>,
);

impl<Req, Resp, const REQ: usize, const RESP: usize> Default for Bounded<Req, Resp, REQ, RESP> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<Req, Resp, const REQ: usize, const RESP: usize> Clone for Bounded<Req, Resp, REQ, RESP> {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl<Req, Resp, const REQ: usize, const RESP: usize> std::fmt::Debug
    for Bounded<Req, Resp, REQ, RESP>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bounded<{REQ}, {RESP}>")
    }
}

/// `/hubmesh/git-pack/1`.
pub(crate) type PackCodec = Bounded<PackRequest, PackResponse, MAX_REQUEST_LEN, MAX_RESPONSE_LEN>;
/// `/hubmesh/blocks/1`.
pub(crate) type BlockCodec =
    Bounded<BlockRequest, BlockResponse, MAX_BLOCK_REQUEST_LEN, MAX_BLOCK_RESPONSE_LEN>;

/// Reads the whole stream, failing once it is longer than `max` bytes.
async fn read_bounded<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    io.take(max as u64 + 1).read_to_end(&mut buf).await?;
    if buf.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message exceeds {max} bytes"),
        ));
    }
    Ok(buf)
}

fn invalid(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<Req: Wire, Resp: Wire, const REQ: usize, const RESP: usize> libp2p::request_response::Codec
    for Bounded<Req, Resp, REQ, RESP>
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Req>
    where
        T: AsyncRead + Unpin + Send,
    {
        Req::from_wire(&read_bounded(io, REQ).await?)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        Resp::from_wire(&read_bounded(io, RESP).await?)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Req,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&request.to_wire()).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Resp,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&response.to_wire()).await?;
        io.close().await
    }
}

/// How long a git-pack request may take, pack transfer included.
pub const PACK_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a `/hubmesh/blocks/1` request may take (one batch of at most 8 MiB).
pub const BLOCKS_TIMEOUT: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::request_response::Codec;

    #[tokio::test]
    async fn oversized_and_garbage_streams_are_errors() {
        let protocol = StreamProtocol::new(hub_protocol::replication::GIT_PACK_PROTOCOL);
        let big = vec![0u8; MAX_REQUEST_LEN + 1];
        let err = PackCodec::default()
            .read_request(&protocol, &mut futures::io::Cursor::new(big))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let err = PackCodec::default()
            .read_response(&protocol, &mut futures::io::Cursor::new(b"junk".to_vec()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        let mut wire = futures::io::Cursor::new(Vec::new());
        PackCodec::default()
            .write_response(&protocol, &mut wire, PackResponse::Pack(b"PACK".to_vec()))
            .await
            .unwrap();
        wire.set_position(0);
        assert_eq!(
            PackCodec::default()
                .read_response(&protocol, &mut wire)
                .await
                .unwrap(),
            PackResponse::Pack(b"PACK".to_vec())
        );
    }

    #[tokio::test]
    async fn block_codec_bounds_and_round_trips() {
        let protocol = StreamProtocol::new(hub_protocol::blocks::BLOCKS_PROTOCOL);
        let big = vec![0u8; MAX_BLOCK_REQUEST_LEN + 1];
        let err = BlockCodec::default()
            .read_request(&protocol, &mut futures::io::Cursor::new(big))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let big = vec![0u8; MAX_BLOCK_RESPONSE_LEN + 1];
        let err = BlockCodec::default()
            .read_response(&protocol, &mut futures::io::Cursor::new(big))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        let response = BlockResponse::Chunks(vec![b"chunk".to_vec(), vec![7; 100]]);
        let mut wire = futures::io::Cursor::new(Vec::new());
        BlockCodec::default()
            .write_response(&protocol, &mut wire, response.clone())
            .await
            .unwrap();
        wire.set_position(0);
        assert_eq!(
            BlockCodec::default()
                .read_response(&protocol, &mut wire)
                .await
                .unwrap(),
            response
        );
        let request = BlockRequest::Manifest {
            sha256: hub_protocol::manifest::Sha256([1; 32]),
        };
        let mut wire = futures::io::Cursor::new(Vec::new());
        BlockCodec::default()
            .write_request(&protocol, &mut wire, request.clone())
            .await
            .unwrap();
        wire.set_position(0);
        assert_eq!(
            BlockCodec::default()
                .read_request(&protocol, &mut wire)
                .await
                .unwrap(),
            request
        );
    }
}
