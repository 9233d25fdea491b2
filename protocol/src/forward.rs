//! `/hubmesh/infer/1`: an inference request forwarded to a peer, and its response streamed
//! back on the same libp2p stream.
//!
//! The stream carries frames, each a `u32` little-endian length followed by that many bytes
//! (at most [`MAX_FRAME`]); a frame opens with the format version and a kind byte. The
//! forwarding gateway writes one [`Frame::Request`] and then only reads: one [`Frame::Head`]
//! (status and headers, as the serving gateway answered), then [`Frame::Data`] chunks as the
//! serving node produces them (one per SSE event when streaming), then [`Frame::End`]; or a
//! [`Frame::Error`] at any point. Closing the stream cancels the request on the serving node.
//!
//! ```
//! use hub_protocol::forward::{Frame, ForwardRequest};
//!
//! let request = Frame::Request(ForwardRequest {
//!     path: "/v1/chat/completions".into(),
//!     headers: vec![("content-type".into(), "application/json".into())],
//!     body: br#"{"model":"alice/tiny","messages":[]}"#.to_vec(),
//! });
//! let bytes = request.encode();
//! let len = hub_protocol::forward::frame_len(bytes[..4].try_into().unwrap()).unwrap();
//! assert_eq!(Frame::decode(&bytes[4..4 + len]).unwrap(), request);
//! ```

use crate::signed::DecodeError;
use crate::signed::codec::{Reader, Writer};

/// The libp2p protocol name.
pub const INFER_PROTOCOL: &str = "/hubmesh/infer/1";

/// `/hubmesh/space/1`: a request to a Space app that runs on a peer. The same frames open
/// it: the gateway writes a [`Frame::Request`] naming the Space (`path` =
/// `/spaces/{ns}/{name}`, header [`SPACE_COMMIT_HEADER`] with the commit it expects), and
/// the peer answers [`Frame::Head`] (status 200: it runs the Space for this gateway) or
/// [`Frame::Error`] (it will not: mode, allow-list, no free slot, repo not found). After an
/// accepting head the stream carries one HTTP/1.1 exchange to the peer's app route, so the
/// app's answers stream (SSE) and a websocket upgrade is joined byte for byte, as on a local
/// loopback connection. Closing the stream ends the exchange.
pub const SPACE_PROTOCOL: &str = "/hubmesh/space/1";
/// The commit of the Space the opening request expects the peer to run (40 hex digits).
pub const SPACE_COMMIT_HEADER: &str = "x-hubmesh-space-commit";
/// Largest request body forwarded (an inference request is JSON: prompts, messages).
pub const MAX_BODY: usize = 4 << 20;
/// Largest frame: a request with the largest body and its headers.
pub const MAX_FRAME: usize = MAX_BODY + (64 << 10);
/// Most headers in a request or response head.
pub const MAX_HEADERS: usize = 32;

const VERSION: u8 = 1;
const REQUEST: u8 = 1;
const HEAD: u8 = 2;
const DATA: u8 = 3;
const END: u8 = 4;
const ERROR: u8 = 5;

/// An inference request as the receiving gateway got it (after its own access checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardRequest {
    /// Path and query, e.g. `/v1/chat/completions` or `/models/alice/tiny`.
    pub path: String,
    /// The headers that matter to the serving node (content type, `x-wait-for-model`), lower
    /// case; at most [`MAX_HEADERS`], each name ≤ 255 bytes and value ≤ 8 KiB.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The status and headers the serving gateway answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

/// One frame of `/hubmesh/infer/1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Request(ForwardRequest),
    Head(ResponseHead),
    /// Response body bytes, in order.
    Data(Vec<u8>),
    /// The response is complete.
    End,
    /// The serving node failed (before the head, or mid-body); a message for logs and clients.
    Error(String),
}

/// Why a frame is refused before it is read: its declared length is over [`MAX_FRAME`].
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, DecodeError> {
    let n = u32::from_le_bytes(prefix) as usize;
    if n > MAX_FRAME {
        return Err(DecodeError::NotCanonical("frame too large"));
    }
    Ok(n)
}

fn headers(w: &mut Writer, headers: &[(String, String)]) {
    let kept: Vec<_> = headers
        .iter()
        .filter(|(n, v)| n.len() <= u8::MAX as usize && v.len() <= 8 << 10)
        .take(MAX_HEADERS)
        .collect();
    w.u8(kept.len() as u8);
    for (name, value) in kept {
        w.str8(name);
        w.str16(value);
    }
}

fn read_headers(r: &mut Reader<'_>) -> Result<Vec<(String, String)>, DecodeError> {
    let n = r.u8()? as usize;
    if n > MAX_HEADERS {
        return Err(DecodeError::NotCanonical("too many headers"));
    }
    r.expect_entries(n, 3)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let name = r.str8()?.to_owned();
        let value = r.str16()?;
        if value.len() > 8 << 10 {
            return Err(DecodeError::NotCanonical("header value too long"));
        }
        out.push((name, value.to_owned()));
    }
    Ok(out)
}

impl Frame {
    /// The frame with its length prefix. Headers over the limits are left out; a body or
    /// message is cut at [`MAX_BODY`].
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(64);
        w.u8(VERSION);
        match self {
            Self::Request(r) => {
                w.u8(REQUEST);
                let path = truncate(&r.path, u16::MAX as usize);
                w.str16(path);
                headers(&mut w, &r.headers);
                let body = &r.body[..r.body.len().min(MAX_BODY)];
                w.u32(body.len() as u32);
                w.bytes(body);
            }
            Self::Head(h) => {
                w.u8(HEAD);
                w.u16(h.status);
                headers(&mut w, &h.headers);
            }
            Self::Data(d) => {
                w.u8(DATA);
                w.bytes(&d[..d.len().min(MAX_BODY)]);
            }
            Self::End => w.u8(END),
            Self::Error(m) => {
                w.u8(ERROR);
                w.str16(truncate(m, 4096));
            }
        }
        let payload = w.finish();
        let mut out = Vec::with_capacity(payload.len() + 4);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&payload);
        out
    }

    /// Decodes one frame's payload (without its length prefix). Never panics.
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        if payload.len() > MAX_FRAME {
            return Err(DecodeError::NotCanonical("frame too large"));
        }
        let mut r = Reader::new(payload);
        let version = r.u8()?;
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        let frame = match r.u8()? {
            REQUEST => {
                let path = r.str16()?.to_owned();
                let headers = read_headers(&mut r)?;
                let n = r.u32()? as usize;
                if n > MAX_BODY {
                    return Err(DecodeError::NotCanonical("body too large"));
                }
                let body = r.take(n)?.to_vec();
                Self::Request(ForwardRequest {
                    path,
                    headers,
                    body,
                })
            }
            HEAD => Self::Head(ResponseHead {
                status: r.u16()?,
                headers: read_headers(&mut r)?,
            }),
            DATA => {
                let n = payload.len() - 2;
                if n > MAX_BODY {
                    return Err(DecodeError::NotCanonical("data frame too large"));
                }
                Self::Data(r.take(n)?.to_vec())
            }
            END => Self::End,
            ERROR => Self::Error(r.str16()?.to_owned()),
            other => {
                return Err(DecodeError::Kind {
                    expected: REQUEST,
                    found: other,
                });
            }
        };
        r.end()?;
        Ok(frame)
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(frame: Frame) {
        let bytes = frame.encode();
        let n = frame_len(bytes[..4].try_into().unwrap()).unwrap();
        assert_eq!(n, bytes.len() - 4);
        assert_eq!(Frame::decode(&bytes[4..]).unwrap(), frame);
    }

    #[test]
    fn every_frame_kind_roundtrips() {
        roundtrip(Frame::Request(ForwardRequest {
            path: "/models/alice/tiny?x=1".into(),
            headers: vec![("x-wait-for-model".into(), "true".into())],
            body: vec![7; 1000],
        }));
        roundtrip(Frame::Head(ResponseHead {
            status: 200,
            headers: vec![("content-type".into(), "text/event-stream".into())],
        }));
        roundtrip(Frame::Data(b"data: {}\n\n".to_vec()));
        roundtrip(Frame::Data(Vec::new()));
        roundtrip(Frame::End);
        roundtrip(Frame::Error("model failed".into()));
    }

    #[test]
    fn oversized_and_malformed_frames_are_refused() {
        assert!(frame_len(((MAX_FRAME + 1) as u32).to_le_bytes()).is_err());
        assert!(Frame::decode(&[]).is_err());
        assert!(Frame::decode(&[2, END]).is_err(), "unknown version");
        assert!(Frame::decode(&[VERSION, 99]).is_err(), "unknown kind");
        assert!(Frame::decode(&[VERSION, END, 0]).is_err(), "trailing bytes");
        // A request declaring a body longer than what follows.
        let mut bytes = Frame::Request(ForwardRequest {
            path: "/".into(),
            headers: vec![],
            body: vec![1; 10],
        })
        .encode();
        bytes.truncate(bytes.len() - 3);
        assert!(Frame::decode(&bytes[4..]).is_err());
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for len in 0..2000usize {
            let bytes: Vec<u8> = (0..len % 97)
                .map(|i| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    if i == 0 { VERSION } else { (x >> 24) as u8 }
                })
                .collect();
            let _ = Frame::decode(&bytes);
        }
    }
}
