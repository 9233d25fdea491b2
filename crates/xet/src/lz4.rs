//! LZ4 frame decompression (the LZ4 frame format 1.6.x, and the block format inside it), as
//! xorb chunks carry it. Written here, safe and bounded: every length comes from the
//! untrusted upload, so output never exceeds the caller's `limit` and every read is checked.

use crate::XetError;

const MAGIC: u32 = 0x184D_2204;

fn bad(what: &str) -> XetError {
    XetError::Malformed(format!("lz4: {what}"))
}

struct Input<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Input<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], XetError> {
        let end = self
            .at
            .checked_add(n)
            .ok_or_else(|| bad("length overflow"))?;
        let s = self
            .data
            .get(self.at..end)
            .ok_or_else(|| bad("truncated"))?;
        self.at = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, XetError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, XetError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Decompresses one LZ4 frame, refusing output longer than `limit`.
pub fn decompress_frame(data: &[u8], limit: usize) -> Result<Vec<u8>, XetError> {
    let mut input = Input { data, at: 0 };
    if input.u32()? != MAGIC {
        return Err(bad("not an LZ4 frame"));
    }
    let flg = input.u8()?;
    let _bd = input.u8()?;
    if flg >> 6 != 1 {
        return Err(bad("unsupported frame version"));
    }
    let block_checksum = flg & 0x10 != 0;
    let content_size = flg & 0x08 != 0;
    let content_checksum = flg & 0x04 != 0;
    let dict_id = flg & 0x01 != 0;
    if content_size {
        input.take(8)?;
    }
    if dict_id {
        return Err(bad("dictionaries are not supported"));
    }
    input.take(1)?; // header checksum
    let mut out = Vec::new();
    loop {
        let size = input.u32()?;
        if size == 0 {
            break;
        }
        let uncompressed = size & 0x8000_0000 != 0;
        let len = (size & 0x7FFF_FFFF) as usize;
        let block = input.take(len)?;
        if uncompressed {
            if out.len() + block.len() > limit {
                return Err(bad("output over its limit"));
            }
            out.extend_from_slice(block);
        } else {
            decompress_block(block, &mut out, limit)?;
        }
        if block_checksum {
            input.take(4)?;
        }
    }
    if content_checksum {
        input.take(4)?;
    }
    Ok(out)
}

/// Decodes one LZ4 block, appending to `out` (earlier output may be referenced: linked blocks).
fn decompress_block(block: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), XetError> {
    let mut input = Input { data: block, at: 0 };
    loop {
        let token = input.u8()?;
        let mut lit = (token >> 4) as usize;
        if lit == 15 {
            loop {
                let b = input.u8()?;
                lit += b as usize;
                if b != 255 {
                    break;
                }
            }
        }
        if out.len() + lit > limit {
            return Err(bad("output over its limit"));
        }
        out.extend_from_slice(input.take(lit)?);
        if input.at == block.len() {
            return Ok(());
        }
        let o = input.take(2)?;
        let offset = u16::from_le_bytes([o[0], o[1]]) as usize;
        if offset == 0 || offset > out.len() {
            return Err(bad("match offset out of range"));
        }
        let mut mlen = (token & 0x0F) as usize;
        if mlen == 15 {
            loop {
                let b = input.u8()?;
                mlen += b as usize;
                if b != 255 {
                    break;
                }
            }
        }
        mlen += 4;
        if out.len() + mlen > limit {
            return Err(bad("output over its limit"));
        }
        let start = out.len() - offset;
        for i in 0..mlen {
            let b = out[start + i];
            out.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame written by the `lz4` command line tool (`printf 'abcabcabcabcabcabcabcabc' | lz4 -c`
    /// gives this shape: literals "abc" then a match at offset 3).
    fn frame_of(block: &[u8]) -> Vec<u8> {
        let mut f = MAGIC.to_le_bytes().to_vec();
        f.extend_from_slice(&[0x60, 0x40, 0x82]);
        f.extend_from_slice(&(block.len() as u32).to_le_bytes());
        f.extend_from_slice(block);
        f.extend_from_slice(&0u32.to_le_bytes());
        f
    }

    #[test]
    fn literals_and_an_overlapping_match_decode() {
        // token: 3 literals, match length 4+15+2=21; "abc", offset 3, extra length 2.
        let block = [0x3F, b'a', b'b', b'c', 3, 0, 2, 0x00];
        let out = decompress_frame(&frame_of(&block), 1 << 20).unwrap();
        assert_eq!(out, b"abc".repeat(8));
    }

    #[test]
    fn bad_offsets_truncation_and_limits_are_errors() {
        assert!(decompress_frame(&frame_of(&[0x3F, b'a', b'b', b'c', 9, 0, 2]), 1 << 20).is_err());
        let f = frame_of(&[0x3F, b'a', b'b', b'c', 3, 0, 2, 0x00]);
        assert!(decompress_frame(&f[..f.len() - 5], 1 << 20).is_err());
        assert!(decompress_frame(&f, 10).is_err());
        assert!(decompress_frame(b"nope", 10).is_err());
    }
}
