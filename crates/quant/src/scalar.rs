//! Portable dot products: exact integer sums per scale group, accumulated in `f32`. The
//! reference the SIMD kernels are tested against, and the fallback on CPUs without them.

use crate::formats::{QType, codes, f16_at, scale_min_k4};
use crate::{ActRow, QK};

/// `Σ w·a` of one weight row (raw blocks) and one quantized activation row.
pub fn dot(qtype: QType, w: &[u8], a: ActRow<'_>) -> f32 {
    let (bl, bb) = (qtype.block_len(), qtype.block_bytes());
    let mut q = [0i32; 256];
    let mut acc = 0f32;
    for (b, blk) in w.chunks_exact(bb).enumerate() {
        codes(qtype, blk, &mut q);
        let first = b * bl / QK; // first activation block of this weight block
        let aq = &a.qs[b * bl..(b + 1) * bl];
        let isum = |from: usize, len: usize| -> i32 {
            q[from..from + len]
                .iter()
                .zip(&aq[from..from + len])
                .map(|(&w, &x)| w * i32::from(x))
                .sum()
        };
        match qtype {
            QType::Q4_0 => {
                // Σ (q − 8)·x = Σ q·x − 8 Σx; Σx is d·s / d, so use the codes directly.
                let sx: i32 = aq.iter().map(|&x| i32::from(x)).sum();
                acc += f16_at(blk, 0) * a.d[first] * (isum(0, 32) - 8 * sx) as f32;
            }
            QType::Q5_0 => {
                let sx: i32 = aq.iter().map(|&x| i32::from(x)).sum();
                acc += f16_at(blk, 0) * a.d[first] * (isum(0, 32) - 16 * sx) as f32;
            }
            QType::Q4_1 | QType::Q5_1 => {
                acc +=
                    f16_at(blk, 0) * a.d[first] * isum(0, 32) as f32 + f16_at(blk, 2) * a.s[first];
            }
            QType::Q8_0 => acc += f16_at(blk, 0) * a.d[first] * isum(0, 32) as f32,
            QType::Q4K | QType::Q5K => {
                let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
                for j in 0..8 {
                    let (sc, m) = scale_min_k4(j, &blk[4..16]);
                    acc += d * f32::from(sc) * a.d[first + j] * isum(32 * j, 32) as f32
                        - dmin * f32::from(m) * a.s[first + j];
                }
            }
            QType::Q6K => {
                let d = f16_at(blk, 208);
                for j in 0..8 {
                    let mut s = 0i32;
                    for h in 0..2 {
                        let g = 2 * j + h;
                        let sx: i32 = aq[16 * g..16 * g + 16].iter().map(|&x| i32::from(x)).sum();
                        s += i32::from(blk[192 + g] as i8) * (isum(16 * g, 16) - 32 * sx);
                    }
                    acc += d * a.d[first + j] * s as f32;
                }
            }
        }
    }
    acc
}
