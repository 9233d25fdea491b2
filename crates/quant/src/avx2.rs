//! AVX2 + FMA + F16C dot products (x86-64). Same arithmetic as [`crate::scalar`]: exact
//! integer sums per scale group (`maddubs` of unsigned × signed bytes into `i16` pairs, then
//! `madd` into `i32`), scaled and accumulated in `f32` lanes.
//!
//! `unsafe` is confined to unaligned loads from slices whose length was checked just before;
//! the kernels are `#[target_feature]` functions, entered only after [`crate::avx2_available`].
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use crate::formats::{QType, scale_min_k4};
use crate::{ActRow, QK};

/// Entry point; the caller has checked [`crate::avx2_available`] and the slice lengths.
pub(crate) fn dot(qtype: QType, w: &[u8], a: ActRow<'_>) -> f32 {
    debug_assert!(crate::avx2_available());
    // SAFETY: AVX2, FMA and F16C are present (checked by the caller, `dot_with`).
    unsafe {
        match qtype {
            QType::Q4_0 => dot_q4_0(w, a),
            QType::Q4_1 => dot_q4_1(w, a),
            QType::Q5_0 => dot_q5_0(w, a),
            QType::Q5_1 => dot_q5_1(w, a),
            QType::Q8_0 => dot_q8_0(w, a),
            QType::Q4K => dot_q4k(w, a, false),
            QType::Q5K => dot_q4k(w, a, true),
            QType::Q6K => dot_q6k(w, a),
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn load32(b: &[u8]) -> __m256i {
    assert!(b.len() >= 32);
    // SAFETY: 32 readable bytes (checked); unaligned load.
    unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn load32_i8(b: &[i8]) -> __m256i {
    assert!(b.len() >= 32);
    // SAFETY: as `load32`.
    unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn load16(b: &[u8]) -> __m128i {
    assert!(b.len() >= 16);
    // SAFETY: 16 readable bytes (checked); unaligned load.
    unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn f16_at(b: &[u8], i: usize) -> f32 {
    let bits = u16::from_le_bytes([b[i], b[i + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// 8 lanes of `i32` pair sums of unsigned `u` (≤ 127 per byte pair product sum) × signed `s`.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_u8_i8(u: __m256i, s: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1))
}

/// Same for signed × signed: |w| × (x with w's sign).
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_i8_i8(w: __m256i, x: __m256i) -> __m256i {
    dot_u8_i8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w))
}

/// The 32 nibbles of 16 bytes in element order: low nibbles (0..16), then high (16..32).
#[target_feature(enable = "avx2,fma,f16c")]
fn nibbles16(b: &[u8]) -> __m256i {
    let q = load16(b);
    let m = _mm_set1_epi8(0xF);
    let lo = _mm_and_si128(q, m);
    let hi = _mm_and_si128(_mm_srli_epi16(q, 4), m);
    _mm256_set_m128i(hi, lo)
}

/// Q5_0/Q5_1's fifth bits: byte `e` of the result is `0x10` where bit `e` of the 4 little-endian
/// bytes `qh` is set, else 0 (element order, as [`nibbles16`]).
#[target_feature(enable = "avx2,fma,f16c")]
fn fifth_bits(qh: &[u8]) -> __m256i {
    let bits = i32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    // Byte e takes byte e / 8 of `bits`, then tests bit e % 8 of it.
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits),
        _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        ),
    );
    let mask = _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, mask), mask);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// Runs `block(b, blk)` over a row's blocks two at a time into two accumulators, so
/// consecutive blocks' FMAs do not wait on each other (the loop-carried latency, not the
/// loads, bounds a one-accumulator loop on data in cache).
#[target_feature(enable = "avx2,fma,f16c")]
fn two_accumulators(
    w: &[u8],
    block_bytes: usize,
    mut block: impl FnMut(usize, &[u8], __m256) -> __m256,
) -> f32 {
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut pairs = w.chunks_exact(2 * block_bytes);
    let mut b = 0;
    for pair in &mut pairs {
        acc0 = block(b, &pair[..block_bytes], acc0);
        acc1 = block(b + 1, &pair[block_bytes..], acc1);
        b += 2;
    }
    let rest = pairs.remainder();
    if !rest.is_empty() {
        acc0 = block(b, rest, acc0);
    }
    hsum(_mm256_add_ps(acc0, acc1))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_0(w: &[u8], a: ActRow<'_>) -> f32 {
    let eight = _mm256_set1_epi8(8);
    two_accumulators(w, 18, |b, blk, acc| {
        let q = _mm256_sub_epi8(nibbles16(&blk[2..]), eight);
        let p = dot_i8_i8(q, load32_i8(&a.qs[b * QK..]));
        let d = _mm256_set1_ps(f16_at(blk, 0) * a.d[b]);
        _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc)
    })
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_1(w: &[u8], a: ActRow<'_>) -> f32 {
    let mut mins = 0f32;
    let dots = two_accumulators(w, 20, |b, blk, acc| {
        let p = dot_u8_i8(nibbles16(&blk[4..]), load32_i8(&a.qs[b * QK..]));
        let d = _mm256_set1_ps(f16_at(blk, 0) * a.d[b]);
        mins += f16_at(blk, 2) * a.s[b];
        _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc)
    });
    dots + mins
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q5_0(w: &[u8], a: ActRow<'_>) -> f32 {
    let sixteen = _mm256_set1_epi8(16);
    two_accumulators(w, 22, |b, blk, acc| {
        let codes = _mm256_or_si256(nibbles16(&blk[6..]), fifth_bits(&blk[2..6]));
        let p = dot_i8_i8(_mm256_sub_epi8(codes, sixteen), load32_i8(&a.qs[b * QK..]));
        let d = _mm256_set1_ps(f16_at(blk, 0) * a.d[b]);
        _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc)
    })
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q5_1(w: &[u8], a: ActRow<'_>) -> f32 {
    let mut mins = 0f32;
    let dots = two_accumulators(w, 24, |b, blk, acc| {
        let codes = _mm256_or_si256(nibbles16(&blk[8..]), fifth_bits(&blk[4..8]));
        let p = dot_u8_i8(codes, load32_i8(&a.qs[b * QK..]));
        let d = _mm256_set1_ps(f16_at(blk, 0) * a.d[b]);
        mins += f16_at(blk, 2) * a.s[b];
        _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc)
    });
    dots + mins
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q8_0(w: &[u8], a: ActRow<'_>) -> f32 {
    two_accumulators(w, 34, |b, blk, acc| {
        let p = dot_i8_i8(load32(&blk[2..]), load32_i8(&a.qs[b * QK..]));
        let d = _mm256_set1_ps(f16_at(blk, 0) * a.d[b]);
        _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc)
    })
}

/// The dot products of one weight row with [`ROWS`] activation rows at once, for batched
/// decode: each weight block is unpacked once for all of them (the single-row kernels unpack
/// it once per row). Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0; `None` for the other formats. Each result is the
/// single-row kernel's, bit for bit: the same products, summed in the same order into the
/// same two accumulators per row.
pub(crate) fn dot_rows(qtype: QType, w: &[u8], a: [ActRow<'_>; ROWS]) -> Option<[f32; ROWS]> {
    debug_assert!(crate::avx2_available());
    // SAFETY: AVX2, FMA and F16C are present (checked by the caller).
    unsafe {
        match qtype {
            QType::Q4_0 => Some(rows_q4_0(w, a)),
            QType::Q4_1 => Some(rows_q4_1(w, a)),
            QType::Q5_0 => Some(rows_q5_0(w, a)),
            QType::Q5_1 => Some(rows_q5_1(w, a)),
            QType::Q8_0 => Some(rows_q8_0(w, a)),
            _ => None,
        }
    }
}

/// Activation rows per [`dot_rows`] call: 4 rows × 2 accumulators + the unpacked block and
/// temporaries fit the 16 AVX2 registers.
pub(crate) const ROWS: usize = 4;

/// One weight block unpacked: codes (as `dot` takes them), scale, and offset (Q4_1's `m`).
struct Unpacked {
    codes: __m256i,
    d: f32,
    m: f32,
}

/// The shared loop of [`dot_rows`]: `unpack` a block once, `dot` its codes with each row's
/// 32 activations; blocks in pairs into two accumulators, as [`two_accumulators`].
#[target_feature(enable = "avx2,fma,f16c")]
fn rows_with(
    w: &[u8],
    block_bytes: usize,
    a: [ActRow<'_>; ROWS],
    unpack: impl Fn(&[u8]) -> Unpacked,
    dot: impl Fn(__m256i, __m256i) -> __m256i,
    offset: bool,
) -> [f32; ROWS] {
    // Accumulators as locals indexed by constants (the `t` loops unroll), so they stay in
    // registers; a macro, not a closure taking `&mut`, which kept them in memory.
    let mut acc0 = [_mm256_setzero_ps(); ROWS];
    let mut acc1 = [_mm256_setzero_ps(); ROWS];
    let mut mins = [0f32; ROWS];
    macro_rules! block {
        ($b:expr, $acc:ident) => {{
            let b = $b;
            let u = unpack(&w[b * block_bytes..(b + 1) * block_bytes]);
            for t in 0..ROWS {
                let p = dot(u.codes, load32_i8(&a[t].qs[b * QK..]));
                let d = _mm256_set1_ps(u.d * a[t].d[b]);
                if offset {
                    mins[t] += u.m * a[t].s[b];
                }
                $acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), $acc[t]);
            }
        }};
    }
    let blocks = w.len() / block_bytes;
    let mut b = 0;
    while b + 2 <= blocks {
        block!(b, acc0);
        block!(b + 1, acc1);
        b += 2;
    }
    if b < blocks {
        block!(b, acc0);
    }
    let mut out = [0f32; ROWS];
    for t in 0..ROWS {
        let dots = hsum(_mm256_add_ps(acc0[t], acc1[t]));
        out[t] = if offset { dots + mins[t] } else { dots };
    }
    out
}

#[target_feature(enable = "avx2,fma,f16c")]
fn rows_q4_0(w: &[u8], a: [ActRow<'_>; ROWS]) -> [f32; ROWS] {
    let eight = _mm256_set1_epi8(8);
    let unpack = |blk: &[u8]| Unpacked {
        codes: _mm256_sub_epi8(nibbles16(&blk[2..]), eight),
        d: f16_at(blk, 0),
        m: 0.0,
    };
    rows_with(w, 18, a, unpack, |q, x| dot_i8_i8(q, x), false)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn rows_q4_1(w: &[u8], a: [ActRow<'_>; ROWS]) -> [f32; ROWS] {
    let unpack = |blk: &[u8]| Unpacked {
        codes: nibbles16(&blk[4..]),
        d: f16_at(blk, 0),
        m: f16_at(blk, 2),
    };
    rows_with(w, 20, a, unpack, |q, x| dot_u8_i8(q, x), true)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn rows_q5_0(w: &[u8], a: [ActRow<'_>; ROWS]) -> [f32; ROWS] {
    let sixteen = _mm256_set1_epi8(16);
    let unpack = |blk: &[u8]| Unpacked {
        codes: _mm256_sub_epi8(
            _mm256_or_si256(nibbles16(&blk[6..]), fifth_bits(&blk[2..6])),
            sixteen,
        ),
        d: f16_at(blk, 0),
        m: 0.0,
    };
    rows_with(w, 22, a, unpack, |q, x| dot_i8_i8(q, x), false)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn rows_q5_1(w: &[u8], a: [ActRow<'_>; ROWS]) -> [f32; ROWS] {
    let unpack = |blk: &[u8]| Unpacked {
        codes: _mm256_or_si256(nibbles16(&blk[8..]), fifth_bits(&blk[4..8])),
        d: f16_at(blk, 0),
        m: f16_at(blk, 2),
    };
    rows_with(w, 24, a, unpack, |q, x| dot_u8_i8(q, x), true)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn rows_q8_0(w: &[u8], a: [ActRow<'_>; ROWS]) -> [f32; ROWS] {
    let unpack = |blk: &[u8]| Unpacked {
        codes: load32(&blk[2..]),
        d: f16_at(blk, 0),
        m: 0.0,
    };
    rows_with(w, 34, a, unpack, |q, x| dot_i8_i8(q, x), false)
}

/// Q4_K, and Q5_K when `fifth` (its `qh` bits added as bit 4 of each code). The 8 sub-block
/// scales and minimums are unpacked once per super-block, the minimums' term summed apart, and
/// the sub-blocks alternate between two accumulators (as [`two_accumulators`]).
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4k(w: &[u8], a: ActRow<'_>, fifth: bool) -> f32 {
    let bb = if fifth { 176 } else { 144 };
    let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let mut mins = 0f32;
    let m4 = _mm256_set1_epi8(0xF);
    let one = _mm256_set1_epi8(1);
    for (b, blk) in w.chunks_exact(bb).enumerate() {
        let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
        let mut sc = [0f32; 8];
        let mut block_mins = 0f32;
        for (j, s) in sc.iter_mut().enumerate() {
            let (scale, m) = scale_min_k4(j, &blk[4..16]);
            *s = d * f32::from(scale);
            block_mins += f32::from(m) * a.s[b * 8 + j];
        }
        mins += dmin * block_mins;
        let qs = if fifth { &blk[48..176] } else { &blk[16..144] };
        let qh = if fifth {
            load32(&blk[16..48])
        } else {
            _mm256_setzero_si256()
        };
        for j in 0..4 {
            let q = load32(&qs[32 * j..]);
            let mut lo = _mm256_and_si256(q, m4);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            if fifth {
                let bit = |k: i64| {
                    let h = _mm256_srl_epi16(qh, _mm_set_epi64x(0, k));
                    _mm256_slli_epi16(_mm256_and_si256(h, one), 4)
                };
                lo = _mm256_or_si256(lo, bit(2 * j as i64));
                hi = _mm256_or_si256(hi, bit(2 * j as i64 + 1));
            }
            let ab = b * 8 + 2 * j; // activation block of `lo`; `hi` is the next
            let p = dot_u8_i8(lo, load32_i8(&a.qs[ab * QK..]));
            let f = _mm256_set1_ps(sc[2 * j] * a.d[ab]);
            acc0 = _mm256_fmadd_ps(f, _mm256_cvtepi32_ps(p), acc0);
            let p = dot_u8_i8(hi, load32_i8(&a.qs[(ab + 1) * QK..]));
            let f = _mm256_set1_ps(sc[2 * j + 1] * a.d[ab + 1]);
            acc1 = _mm256_fmadd_ps(f, _mm256_cvtepi32_ps(p), acc1);
        }
    }
    hsum(_mm256_add_ps(acc0, acc1)) - mins
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q6k(w: &[u8], a: ActRow<'_>) -> f32 {
    // Two accumulators: runs 0/2 into one, 1/3 into the other.
    let mut acc = [_mm256_setzero_ps(); 2];
    let m4 = _mm256_set1_epi8(0xF);
    let m2 = _mm256_set1_epi8(3);
    let off = _mm256_set1_epi8(32);
    for (b, blk) in w.chunks_exact(210).enumerate() {
        let d = f16_at(blk, 208);
        let sc = &blk[192..208];
        for n in 0..2 {
            let ql0 = load32(&blk[64 * n..]);
            let ql1 = load32(&blk[64 * n + 32..]);
            let qh = load32(&blk[128 + 32 * n..]);
            let high = |shift: i32| {
                let h = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(shift));
                _mm256_slli_epi16(_mm256_and_si256(h, m2), 4)
            };
            let runs = [
                _mm256_or_si256(_mm256_and_si256(ql0, m4), high(0)),
                _mm256_or_si256(_mm256_and_si256(ql1, m4), high(2)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), high(4)),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), high(6)),
            ];
            for (r, codes) in runs.into_iter().enumerate() {
                let ab = b * 8 + 4 * n + r; // activation block of these 32 elements
                let g = 8 * n + 2 * r; // its two 16-element scale groups
                let x = load32_i8(&a.qs[ab * QK..]);
                let q = _mm256_sub_epi8(codes, off);
                let p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(x, q));
                let s = _mm256_set_m128i(
                    _mm_set1_epi16(i16::from(sc[g + 1] as i8)),
                    _mm_set1_epi16(i16::from(sc[g] as i8)),
                );
                let p = _mm256_madd_epi16(p16, s);
                let f = _mm256_set1_ps(d * a.d[ab]);
                acc[r & 1] = _mm256_fmadd_ps(f, _mm256_cvtepi32_ps(p), acc[r & 1]);
            }
        }
    }
    hsum(_mm256_add_ps(acc[0], acc[1]))
}
