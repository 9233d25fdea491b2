//! `/hubmesh/infer/1` frames on a raw stream ([`crate::P2p::streams`]): each a `u32`
//! little-endian length, then that many bytes of one [`Frame`] (hub-protocol's `forward`
//! encoding). The length is checked against [`hub_protocol::forward::MAX_FRAME`] before the
//! payload is read, so a peer cannot make this allocate more.
//!
//! ```
//! # async fn run() -> Result<(), hub_net::FrameError> {
//! use hub_protocol::forward::Frame;
//!
//! let mut wire = futures::io::Cursor::new(Vec::new());
//! hub_net::write_frame(&mut wire, &Frame::End).await.map_err(hub_net::FrameError::Closed)?;
//! wire.set_position(0);
//! assert_eq!(hub_net::read_frame(&mut wire).await?, Frame::End);
//! # Ok(()) }
//! ```

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use hub_protocol::forward::{Frame, frame_len};
use hub_protocol::signed::DecodeError;

/// Why no frame could be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The stream ended or failed before a whole frame arrived.
    #[error("stream closed: {0}")]
    Closed(std::io::Error),
    /// The length prefix or the frame is not a valid `/hubmesh/infer/1` frame.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Writes one frame and flushes it.
pub async fn write_frame<S>(stream: &mut S, frame: &Frame) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    stream.write_all(&frame.encode()).await?;
    stream.flush().await
}

/// Reads one frame: its length prefix (bounded), then its payload, decoded.
pub async fn read_frame<S>(stream: &mut S) -> Result<Frame, FrameError>
where
    S: AsyncRead + Unpin,
{
    let mut prefix = [0u8; 4];
    stream
        .read_exact(&mut prefix)
        .await
        .map_err(FrameError::Closed)?;
    let n = frame_len(prefix)?;
    let mut payload = vec![0u8; n];
    stream
        .read_exact(&mut payload)
        .await
        .map_err(FrameError::Closed)?;
    Ok(Frame::decode(&payload)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    #[tokio::test]
    async fn frames_round_trip_and_bad_prefixes_are_errors_not_allocations() {
        let frames = [Frame::Data(b"tok".to_vec()), Frame::End];
        let mut wire = Cursor::new(Vec::new());
        for frame in &frames {
            write_frame(&mut wire, frame).await.unwrap();
        }
        wire.set_position(0);
        for frame in &frames {
            assert_eq!(&read_frame(&mut wire).await.unwrap(), frame);
        }
        // The stream ends: closed, not a panic.
        assert!(matches!(
            read_frame(&mut wire).await,
            Err(FrameError::Closed(_))
        ));
        // A length over the bound is refused before anything is allocated for it.
        let mut huge = Cursor::new(u32::MAX.to_le_bytes().to_vec());
        assert!(matches!(
            read_frame(&mut huge).await,
            Err(FrameError::Decode(_))
        ));
        // A short payload is a closed stream.
        let mut short = Cursor::new([8u32.to_le_bytes().to_vec(), vec![1, 2]].concat());
        assert!(matches!(
            read_frame(&mut short).await,
            Err(FrameError::Closed(_))
        ));
    }
}
