//! pkt-lines (gitprotocol-common(5)): four hex digits of length (counting themselves), then
//! the payload; `0000` flush, `0001` delimiter, `0002` response end.

use anyhow::{Context, bail};
use std::io::{Read, Write};

/// Largest pkt-line git sends or accepts (65520 bytes with its length).
pub const MAX_PKT: usize = 65520;

/// One pkt-line read from a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pkt {
    Data(Vec<u8>),
    Flush,
    Delim,
    ResponseEnd,
}

/// Reads one pkt-line; `None` at a clean end of the stream (before any byte of a line).
pub fn read(r: &mut impl Read) -> anyhow::Result<Option<Pkt>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..]).context("read a pkt-line")?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            bail!("stream ended inside a pkt-line length");
        }
        got += n;
    }
    let text = std::str::from_utf8(&len).ok();
    let Some(n) = text.and_then(|t| usize::from_str_radix(t, 16).ok()) else {
        bail!("bad pkt-line length {:?}", String::from_utf8_lossy(&len));
    };
    match n {
        0 => Ok(Some(Pkt::Flush)),
        1 => Ok(Some(Pkt::Delim)),
        2 => Ok(Some(Pkt::ResponseEnd)),
        3 => bail!("bad pkt-line length 3"),
        n if n > MAX_PKT => bail!("pkt-line of {n} bytes is over the limit"),
        n => {
            let mut data = vec![0u8; n - 4];
            r.read_exact(&mut data).context("read a pkt-line payload")?;
            Ok(Some(Pkt::Data(data)))
        }
    }
}

/// Appends one data pkt-line to `out`.
pub fn write(out: &mut Vec<u8>, data: &[u8]) {
    debug_assert!(data.len() + 4 <= MAX_PKT);
    out.extend_from_slice(format!("{:04x}", data.len() + 4).as_bytes());
    out.extend_from_slice(data);
}

/// Appends the encoding of `pkt` to `w`.
pub fn encode(w: &mut impl Write, pkt: &Pkt) -> std::io::Result<()> {
    match pkt {
        Pkt::Data(d) => {
            w.write_all(format!("{:04x}", d.len() + 4).as_bytes())?;
            w.write_all(d)
        }
        Pkt::Flush => w.write_all(b"0000"),
        Pkt::Delim => w.write_all(b"0001"),
        Pkt::ResponseEnd => w.write_all(b"0002"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_bad_lengths() {
        let mut buf = Vec::new();
        write(&mut buf, b"hello\n");
        encode(&mut buf, &Pkt::Delim).unwrap();
        encode(&mut buf, &Pkt::Flush).unwrap();
        let mut r = &buf[..];
        assert_eq!(read(&mut r).unwrap(), Some(Pkt::Data(b"hello\n".to_vec())));
        assert_eq!(read(&mut r).unwrap(), Some(Pkt::Delim));
        assert_eq!(read(&mut r).unwrap(), Some(Pkt::Flush));
        assert_eq!(read(&mut r).unwrap(), None);
        for bad in [&b"zzzz"[..], b"0003", b"ffff", b"00", b"0009abc"] {
            assert!(read(&mut &bad[..]).is_err(), "{bad:?}");
        }
    }
}
