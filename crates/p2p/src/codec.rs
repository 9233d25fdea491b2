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

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PackCodec;

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

impl libp2p::request_response::Codec for PackCodec {
    type Protocol = StreamProtocol;
    type Request = PackRequest;
    type Response = PackResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<PackRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        PackRequest::decode(&read_bounded(io, MAX_REQUEST_LEN).await?).map_err(invalid)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<PackResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        PackResponse::decode(&read_bounded(io, MAX_RESPONSE_LEN).await?).map_err(invalid)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: PackRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&request.encode()).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: PackResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&response.encode()).await?;
        io.close().await
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BlockCodec;

impl libp2p::request_response::Codec for BlockCodec {
    type Protocol = StreamProtocol;
    type Request = BlockRequest;
    type Response = BlockResponse;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<BlockRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        BlockRequest::decode(&read_bounded(io, MAX_BLOCK_REQUEST_LEN).await?).map_err(invalid)
    }

    async fn read_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<BlockResponse>
    where
        T: AsyncRead + Unpin + Send,
    {
        BlockResponse::decode(&read_bounded(io, MAX_BLOCK_RESPONSE_LEN).await?).map_err(invalid)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: BlockRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&request.encode()).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: BlockResponse,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&response.encode()).await?;
        io.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::request_response::Codec;

    #[tokio::test]
    async fn oversized_and_garbage_streams_are_errors() {
        let protocol = StreamProtocol::new(hub_protocol::replication::GIT_PACK_PROTOCOL);
        let big = vec![0u8; MAX_REQUEST_LEN + 1];
        let err = PackCodec
            .read_request(&protocol, &mut futures::io::Cursor::new(big))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let err = PackCodec
            .read_response(&protocol, &mut futures::io::Cursor::new(b"junk".to_vec()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        let mut wire = futures::io::Cursor::new(Vec::new());
        PackCodec
            .write_response(&protocol, &mut wire, PackResponse::Pack(b"PACK".to_vec()))
            .await
            .unwrap();
        wire.set_position(0);
        assert_eq!(
            PackCodec.read_response(&protocol, &mut wire).await.unwrap(),
            PackResponse::Pack(b"PACK".to_vec())
        );
    }

    #[tokio::test]
    async fn block_codec_bounds_and_round_trips() {
        let protocol = StreamProtocol::new(hub_protocol::blocks::BLOCKS_PROTOCOL);
        let big = vec![0u8; MAX_BLOCK_REQUEST_LEN + 1];
        let err = BlockCodec
            .read_request(&protocol, &mut futures::io::Cursor::new(big))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let big = vec![0u8; MAX_BLOCK_RESPONSE_LEN + 1];
        let err = BlockCodec
            .read_response(&protocol, &mut futures::io::Cursor::new(big))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        let response = BlockResponse::Chunks(vec![b"chunk".to_vec(), vec![7; 100]]);
        let mut wire = futures::io::Cursor::new(Vec::new());
        BlockCodec
            .write_response(&protocol, &mut wire, response.clone())
            .await
            .unwrap();
        wire.set_position(0);
        assert_eq!(
            BlockCodec
                .read_response(&protocol, &mut wire)
                .await
                .unwrap(),
            response
        );
        let request = BlockRequest::Manifest {
            sha256: hub_protocol::manifest::Sha256([1; 32]),
        };
        let mut wire = futures::io::Cursor::new(Vec::new());
        BlockCodec
            .write_request(&protocol, &mut wire, request.clone())
            .await
            .unwrap();
        wire.set_position(0);
        assert_eq!(
            BlockCodec.read_request(&protocol, &mut wire).await.unwrap(),
            request
        );
    }
}
