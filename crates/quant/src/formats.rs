//! The GGUF block layouts (ggml's `block_q4_0`, … `block_q6_K`; little-endian, packed) and
//! their dequantization, written from the format's definition; the tests hold it to candle's
//! and to a NumPy implementation.

use half::f16;

/// A weight block format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QType {
    /// 32 elements: f16 `d`, 16 bytes of 4-bit `q`; `x = d (q − 8)`.
    Q4_0,
    /// 32 elements: f16 `d`, f16 `m`, 16 bytes of 4-bit `q`; `x = d q + m`.
    Q4_1,
    /// 32 elements: f16 `d`, 4 bytes of fifth bits `qh` (bit `e` for element `e`), 16 bytes
    /// of 4-bit `q`; `x = d (q − 16)` with `q` 5 bits. llama.cpp's fallback for Q4_K where a
    /// row is not a multiple of 256 (most of a "Q4_K_M" file of a small model).
    Q5_0,
    /// Q5_0's bits with f16 `d`, f16 `m` first; `x = d q + m` (the fallback for Q5_K).
    Q5_1,
    /// 32 elements: f16 `d`, 32 `i8`; `x = d q`.
    Q8_0,
    /// 256 elements: f16 `d`, f16 `dmin`, 12 bytes of 6-bit scales/mins for 8 sub-blocks of
    /// 32, 128 bytes of 4-bit `q`; `x = d·sc q − dmin·m`.
    Q4K,
    /// Q4_K's layout plus 32 bytes of fifth bits (`qh`) before the 4-bit `q`.
    Q5K,
    /// 256 elements: 128 bytes low 4 bits, 64 bytes high 2 bits, 16 `i8` scales (one per 16),
    /// f16 `d`; `x = d·sc (q − 32)`.
    Q6K,
}

impl QType {
    pub const ALL: [QType; 8] = [
        QType::Q4_0,
        QType::Q4_1,
        QType::Q5_0,
        QType::Q5_1,
        QType::Q8_0,
        QType::Q4K,
        QType::Q5K,
        QType::Q6K,
    ];

    /// Elements per block.
    pub fn block_len(self) -> usize {
        match self {
            QType::Q4_0 | QType::Q4_1 | QType::Q5_0 | QType::Q5_1 | QType::Q8_0 => 32,
            QType::Q4K | QType::Q5K | QType::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            QType::Q4_0 => 18,
            QType::Q4_1 => 20,
            QType::Q5_0 => 22,
            QType::Q5_1 => 24,
            QType::Q8_0 => 34,
            QType::Q4K => 144,
            QType::Q5K => 176,
            QType::Q6K => 210,
        }
    }

    /// The ggml type id (`general` GGUF tensor type) of this format.
    pub fn ggml_id(self) -> u32 {
        match self {
            QType::Q4_0 => 2,
            QType::Q4_1 => 3,
            QType::Q5_0 => 6,
            QType::Q5_1 => 7,
            QType::Q8_0 => 8,
            QType::Q4K => 12,
            QType::Q5K => 13,
            QType::Q6K => 14,
        }
    }

    pub fn from_ggml_id(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.ggml_id() == id)
    }
}

pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Scale and min of Q4_K/Q5_K sub-block `j` (0..8), 6 bits each, from the 12 packed bytes.
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Integer codes of one block as `(code, sub-block scale index)`-free values: fills `q` with
/// the block's unsigned codes (Q4_0: 0..16, Q4_1: 0..16, Q5_0/Q5_1: 0..32, Q8_0: i8, Q4_K: 0..16, Q5_K: 0..32,
/// Q6_K: 0..64) in element order.
pub(crate) fn codes(qtype: QType, blk: &[u8], q: &mut [i32]) {
    match qtype {
        QType::Q4_0 | QType::Q4_1 => {
            let qs = &blk[qtype.block_bytes() - 16..];
            for l in 0..16 {
                q[l] = i32::from(qs[l] & 0xF);
                q[l + 16] = i32::from(qs[l] >> 4);
            }
        }
        QType::Q5_0 | QType::Q5_1 => {
            let bb = qtype.block_bytes();
            let qh = u32::from_le_bytes([blk[bb - 20], blk[bb - 19], blk[bb - 18], blk[bb - 17]]);
            let qs = &blk[bb - 16..];
            for l in 0..16 {
                let bit = |e: usize| ((qh >> e) & 1) as i32;
                q[l] = i32::from(qs[l] & 0xF) | (bit(l) << 4);
                q[l + 16] = i32::from(qs[l] >> 4) | (bit(l + 16) << 4);
            }
        }
        QType::Q8_0 => {
            for l in 0..32 {
                q[l] = i32::from(blk[2 + l] as i8);
            }
        }
        QType::Q4K | QType::Q5K => {
            let (qh, qs) = if qtype == QType::Q5K {
                (Some(&blk[16..48]), &blk[48..176])
            } else {
                (None, &blk[16..144])
            };
            for j in 0..4 {
                for l in 0..32 {
                    let byte = qs[32 * j + l];
                    let (mut lo, mut hi) = (i32::from(byte & 0xF), i32::from(byte >> 4));
                    if let Some(qh) = qh {
                        lo |= i32::from((qh[l] >> (2 * j)) & 1) << 4;
                        hi |= i32::from((qh[l] >> (2 * j + 1)) & 1) << 4;
                    }
                    q[64 * j + l] = lo;
                    q[64 * j + 32 + l] = hi;
                }
            }
        }
        QType::Q6K => {
            let (ql, qh) = (&blk[..128], &blk[128..192]);
            for n in 0..2 {
                let (ql, qh, y) = (&ql[64 * n..], &qh[32 * n..], 128 * n);
                for l in 0..32 {
                    q[y + l] = i32::from((ql[l] & 0xF) | ((qh[l] & 3) << 4));
                    q[y + l + 32] = i32::from((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4));
                    q[y + l + 64] = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4));
                    q[y + l + 96] = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4));
                }
            }
        }
    }
}

/// Dequantizes one row of blocks (`out.len()` elements) to `f32`.
pub fn dequantize_row(qtype: QType, data: &[u8], out: &mut [f32]) {
    let (bl, bb) = (qtype.block_len(), qtype.block_bytes());
    assert_eq!(data.len() / bb * bl, out.len(), "{qtype:?} row length");
    let mut q = [0i32; 256];
    for (blk, y) in data.chunks_exact(bb).zip(out.chunks_exact_mut(bl)) {
        codes(qtype, blk, &mut q);
        match qtype {
            QType::Q4_0 => {
                let d = f16_at(blk, 0);
                for (y, &q) in y.iter_mut().zip(&q) {
                    *y = d * (q - 8) as f32;
                }
            }
            QType::Q4_1 | QType::Q5_1 => {
                let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
                for (y, &q) in y.iter_mut().zip(&q) {
                    *y = d * q as f32 + m;
                }
            }
            QType::Q5_0 => {
                let d = f16_at(blk, 0);
                for (y, &q) in y.iter_mut().zip(&q) {
                    *y = d * (q - 16) as f32;
                }
            }
            QType::Q8_0 => {
                let d = f16_at(blk, 0);
                for (y, &q) in y.iter_mut().zip(&q) {
                    *y = d * q as f32;
                }
            }
            QType::Q4K | QType::Q5K => {
                let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
                for (j, (y, q)) in y.chunks_exact_mut(32).zip(q.chunks_exact(32)).enumerate() {
                    let (sc, m) = scale_min_k4(j, &blk[4..16]);
                    let (d1, m1) = (d * f32::from(sc), dmin * f32::from(m));
                    for (y, &q) in y.iter_mut().zip(q) {
                        *y = d1 * q as f32 - m1;
                    }
                }
            }
            QType::Q6K => {
                let d = f16_at(blk, 208);
                for (j, (y, q)) in y.chunks_exact_mut(16).zip(q.chunks_exact(16)).enumerate() {
                    // One i8 scale per 16 elements, in element order.
                    let sc = f32::from(blk[192 + j] as i8);
                    for (y, &q) in y.iter_mut().zip(q) {
                        *y = d * sc * (q - 32) as f32;
                    }
                }
            }
        }
    }
}
