//! Quantized matrix kernels for CPU inference: a weight matrix kept in its GGUF block format
//! (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) times activations quantized to 8 bits, as llama.cpp
//! computes it.
//!
//! - [`QMatrix`] holds the file's bytes unchanged (`rows × cols`, blocks along a row).
//! - [`QActs`] quantizes `n` activation rows once per matmul: blocks of 32 `i8` with one `f32`
//!   scale each and the block's sum (for the formats with an offset: Q4_1's `m`, the k-quants'
//!   sub-block minimums). One activation format serves every weight format, because every
//!   weight format here has its scales on 32-element (or finer) sub-blocks.
//! - [`QMatrix::matmul`] computes `y = x Wᵀ` for those rows: the output rows are split across
//!   the rayon pool, and each weight row is read once and dotted with all `n` activation rows
//!   while it is in L1 (batched decode shares one read of the weights per step).
//! - Dot products run on AVX2/FMA/F16C when the CPU has them (checked once at run time), else
//!   on the scalar code in [`scalar`], which is also the reference the property tests hold the
//!   SIMD kernels to.
//! - [`attention::paged_attention`]: one step's causal attention over a paged f32 KV cache,
//!   all sequences and heads in one call on the same pool.
//!
//! Accuracy: every kernel sums exact integer products per 32-element block (or 16 for Q6_K's
//! scales) and accumulates those in `f32`, so SIMD and scalar agree to `f32` rounding.

use std::sync::OnceLock;

pub mod attention;
#[cfg(target_arch = "x86_64")]
mod avx2;
pub mod formats;
pub mod scalar;

pub use formats::QType;

/// Elements per activation block (and per the smallest weight block).
pub const QK: usize = 32;

/// Failure to build a [`QMatrix`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum QuantError {
    #[error("{qtype:?}: row of {cols} elements is not a multiple of the block of {block}")]
    RowLength {
        qtype: QType,
        cols: usize,
        block: usize,
    },
    #[error("bytes {start}..{end} of a {available}-byte buffer")]
    Range {
        start: usize,
        end: usize,
        available: usize,
    },
    #[error("{qtype:?} {rows}×{cols}: {actual} bytes, expected {expected}")]
    Size {
        qtype: QType,
        rows: usize,
        cols: usize,
        expected: usize,
        actual: usize,
    },
}

/// Which dot-product code runs: decided once per process from the CPU's features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    /// AVX2 + FMA + F16C (x86-64).
    Avx2,
}

/// The best [`Isa`] this CPU supports (`HUBMESH_QUANT_SCALAR=1` forces the scalar code).
pub fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        if std::env::var_os("HUBMESH_QUANT_SCALAR").is_some_and(|v| v == "1") {
            return Isa::Scalar;
        }
        if avx2_available() {
            Isa::Avx2
        } else {
            Isa::Scalar
        }
    })
}

/// Whether this CPU has AVX2, FMA and F16C (what [`Isa::Avx2`] needs).
pub fn avx2_available() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// `n` activation rows of `cols` elements, quantized to blocks of 32 `i8`.
#[derive(Debug, Clone, Default)]
pub struct QActs {
    rows: usize,
    cols: usize,
    /// Per block: scale `d` (value = `d · q`).
    pub(crate) d: Vec<f32>,
    /// Per block: `d · Σq` (the block's sum, for weight formats with an offset).
    pub(crate) s: Vec<f32>,
    pub(crate) qs: Vec<i8>,
}

/// One quantized activation row.
#[derive(Debug, Clone, Copy)]
pub struct ActRow<'a> {
    pub d: &'a [f32],
    pub s: &'a [f32],
    pub qs: &'a [i8],
}

impl QActs {
    /// Quantizes `x` (`rows × cols`, row-major; `cols` a multiple of 32), reusing `self`'s
    /// buffers. Each block is scaled so its largest magnitude maps to 127 (round to nearest).
    pub fn quantize_into(&mut self, x: &[f32], cols: usize) {
        assert!(cols.is_multiple_of(QK) && cols > 0, "cols {cols}");
        assert!(
            x.len().is_multiple_of(cols),
            "{} values, cols {cols}",
            x.len()
        );
        let nb = x.len() / QK;
        self.rows = x.len() / cols;
        self.cols = cols;
        self.d.resize(nb, 0.0);
        self.s.resize(nb, 0.0);
        self.qs.resize(x.len(), 0);
        for (b, block) in x.chunks_exact(QK).enumerate() {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for (q, &v) in self.qs[b * QK..(b + 1) * QK].iter_mut().zip(block) {
                // |v · id| ≤ 127 up to rounding; the clamp keeps NaN/inf inputs defined.
                let r = (v * id).round().clamp(-127.0, 127.0) as i8;
                *q = r;
                sum += i32::from(r);
            }
            self.d[b] = d;
            self.s[b] = d * sum as f32;
        }
    }

    pub fn quantize(x: &[f32], cols: usize) -> Self {
        let mut a = Self::default();
        a.quantize_into(x, cols);
        a
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn row(&self, i: usize) -> ActRow<'_> {
        let nb = self.cols / QK;
        ActRow {
            d: &self.d[i * nb..(i + 1) * nb],
            s: &self.s[i * nb..(i + 1) * nb],
            qs: &self.qs[i * self.cols..(i + 1) * self.cols],
        }
    }

    /// The values the quantized row stands for (`d · q`), for tests and references.
    pub fn dequantize_row(&self, i: usize) -> Vec<f32> {
        let r = self.row(i);
        r.qs.iter()
            .enumerate()
            .map(|(j, &q)| r.d[j / QK] * f32::from(q))
            .collect()
    }
}

/// A weight matrix in a GGUF block format: `rows` rows of `cols` elements, each row
/// `cols / block_len` consecutive blocks, exactly the file's bytes — held in its own buffer
/// ([`QMatrix::new`]) or as a range of a shared one, such as the whole file mapped into memory
/// ([`QMatrix::shared`]).
#[derive(Debug, Clone)]
pub struct QMatrix {
    qtype: QType,
    rows: usize,
    cols: usize,
    data: Storage,
}

/// A buffer several matrices read ranges of (a memory-mapped file).
pub type SharedBytes = std::sync::Arc<dyn AsRef<[u8]> + Send + Sync>;

#[derive(Clone)]
enum Storage {
    Owned(Vec<u8>),
    Shared {
        buf: SharedBytes,
        range: std::ops::Range<usize>,
    },
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Owned(v) => v,
            Storage::Shared { buf, range } => &AsRef::<[u8]>::as_ref(&**buf)[range.clone()],
        }
    }
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Storage::Owned(v) => write!(f, "Owned({} bytes)", v.len()),
            Storage::Shared { range, .. } => write!(f, "Shared({range:?})"),
        }
    }
}

impl QMatrix {
    pub fn new(qtype: QType, rows: usize, cols: usize, data: Vec<u8>) -> Result<Self, QuantError> {
        Self::check(qtype, rows, cols, data.len())?;
        Ok(Self {
            qtype,
            rows,
            cols,
            data: Storage::Owned(data),
        })
    }

    /// The matrix whose blocks are `buf[range]`, read in place (no copy).
    pub fn shared(
        qtype: QType,
        rows: usize,
        cols: usize,
        buf: SharedBytes,
        range: std::ops::Range<usize>,
    ) -> Result<Self, QuantError> {
        let available = AsRef::<[u8]>::as_ref(&*buf).len();
        if range.start > range.end || range.end > available {
            return Err(QuantError::Range {
                start: range.start,
                end: range.end,
                available,
            });
        }
        Self::check(qtype, rows, cols, range.len())?;
        Ok(Self {
            qtype,
            rows,
            cols,
            data: Storage::Shared { buf, range },
        })
    }

    /// Whether the blocks are read in place from a shared buffer ([`QMatrix::shared`]).
    pub fn is_shared(&self) -> bool {
        matches!(self.data, Storage::Shared { .. })
    }

    fn check(qtype: QType, rows: usize, cols: usize, len: usize) -> Result<(), QuantError> {
        let block = qtype.block_len();
        if cols == 0 || !cols.is_multiple_of(block) {
            return Err(QuantError::RowLength { qtype, cols, block });
        }
        let expected = rows
            .checked_mul(cols / block)
            .and_then(|b| b.checked_mul(qtype.block_bytes()));
        if expected != Some(len) {
            return Err(QuantError::Size {
                qtype,
                rows,
                cols,
                expected: expected.unwrap_or(usize::MAX),
                actual: len,
            });
        }
        Ok(())
    }

    pub fn qtype(&self) -> QType {
        self.qtype
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The bytes held (the file's size of this tensor).
    pub fn size_bytes(&self) -> usize {
        self.data.bytes().len()
    }

    pub fn row_bytes(&self) -> usize {
        self.cols / self.qtype.block_len() * self.qtype.block_bytes()
    }

    /// The raw blocks of row `r`.
    pub fn row_data(&self, r: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.data.bytes()[r * rb..(r + 1) * rb]
    }

    /// Dequantizes row `r` into `out` (`cols` values): an embedding lookup.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        formats::dequantize_row(self.qtype, self.row_data(r), out);
    }

    /// Dot product of weight row `r` with one quantized activation row.
    pub fn dot(&self, r: usize, a: ActRow<'_>) -> f32 {
        dot_with(isa(), self.qtype, self.row_data(r), a)
    }

    /// `y = x Wᵀ`: `y` is `acts.rows() × self.rows()`, row-major. Output rows are split across
    /// the current rayon pool; each weight row meets every activation row while in cache.
    pub fn matmul(&self, acts: &QActs, y: &mut [f32]) {
        self.matmul_with(isa(), acts, y);
    }

    /// [`QMatrix::matmul`] with a given instruction set (tests and benches compare them).
    pub fn matmul_with(&self, isa: Isa, acts: &QActs, y: &mut [f32]) {
        matmul_many_with(isa, &[self], acts, &mut [y]);
    }
}

/// `ys[i] = x mats[i]ᵀ` for several matrices of the same input width (a layer's q/k/v, or
/// gate/up): one quantized input, and one split over the pool for all their rows together,
/// so a decode step wakes the pool once per group instead of once per projection.
pub fn matmul_many(mats: &[&QMatrix], acts: &QActs, ys: &mut [&mut [f32]]) {
    matmul_many_with(isa(), mats, acts, ys);
}

/// [`matmul_many`] with a given instruction set.
pub fn matmul_many_with(isa: Isa, mats: &[&QMatrix], acts: &QActs, ys: &mut [&mut [f32]]) {
    use rayon::prelude::*;
    assert_eq!(mats.len(), ys.len(), "one output per matrix");
    let n = acts.rows();
    for (m, y) in mats.iter().zip(ys.iter()) {
        assert_eq!(acts.cols(), m.cols, "activation width");
        assert_eq!(y.len(), n * m.rows, "output size");
    }
    let total_rows: usize = mats.iter().map(|m| m.rows).sum();
    if n == 0 || total_rows == 0 {
        return;
    }
    let bytes: usize = mats.iter().map(|m| m.size_bytes()).sum();
    let rows: Vec<ActRow<'_>> = (0..n).map(|i| acts.row(i)).collect();
    // Small products (a k/v projection of a small model, a tiny test model) run on this
    // thread: below ~32 KiB of weights × activation rows the pool's wake-ups cost more than
    // the split saves.
    let threads = rayon::current_num_threads().max(1);
    let sequential = threads == 1 || bytes * n < SEQUENTIAL_BYTES;
    // Chunks of output rows: a few per worker so the pool balances, each big enough that a
    // task (tens of µs) outweighs its scheduling. Rows × n results, transposed at the end.
    let chunk = total_rows.div_ceil(threads * 4).max(16);
    let mut temps: Vec<Vec<f32>> = if n == 1 {
        Vec::new()
    } else {
        mats.iter().map(|m| vec![0f32; n * m.rows]).collect()
    };
    let mut tasks: Vec<(&QMatrix, usize, &mut [f32])> = Vec::new();
    if n == 1 {
        for (m, y) in mats.iter().zip(ys.iter_mut()) {
            for (c, out) in y.chunks_mut(chunk).enumerate() {
                tasks.push((m, c * chunk, out));
            }
        }
    } else {
        for (m, t) in mats.iter().zip(temps.iter_mut()) {
            for (c, out) in t.chunks_mut(chunk * n).enumerate() {
                tasks.push((m, c * chunk, out));
            }
        }
    }
    let run = |(m, first, out): (&QMatrix, usize, &mut [f32])| {
        let rb = m.row_bytes();
        let data = m.data.bytes();
        for (i, out) in out.chunks_exact_mut(n).enumerate() {
            let w = &data[(first + i) * rb..(first + i + 1) * rb];
            dot_all(isa, m.qtype, w, &rows, out);
        }
    };
    if sequential {
        tasks.into_iter().for_each(run);
    } else {
        tasks.into_par_iter().for_each(run);
    }
    for ((m, t), y) in mats.iter().zip(&temps).zip(ys.iter_mut()) {
        for (r, col) in t.chunks_exact(n).enumerate() {
            for (i, &v) in col.iter().enumerate() {
                y[i * m.rows + r] = v;
            }
        }
    }
}

/// Weight bytes × activation rows under which [`QMatrix::matmul`] stays on the calling thread.
pub const SEQUENTIAL_BYTES: usize = 32 << 10;

/// `out[t]` = weight row `w` · activation row `t`, for every row of `acts` (whose widths the
/// caller checked against the matrix once): several rows per kernel call where the ISA has a
/// multi-row kernel (each weight block unpacked once per group), with results identical to
/// [`dot_with`] row by row.
fn dot_all(isa: Isa, qtype: QType, w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]) {
    let mut t = 0;
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 && avx2_available() {
        use avx2::ROWS;
        while t + ROWS <= out.len() {
            let rows = std::array::from_fn(|k| acts[t + k]);
            let Some(dots) = avx2::dot_rows(qtype, w, rows) else {
                break;
            };
            out[t..t + ROWS].copy_from_slice(&dots);
            t += ROWS;
        }
        // The single-row kernel without `dot_with`'s per-call length checks (a division per
        // row, a tenth of a small model's row): the widths were checked per matmul, and the
        // kernels bound-check every slice they read.
        for (o, a) in out.iter_mut().zip(acts).skip(t) {
            *o = avx2::dot(qtype, w, *a);
        }
        return;
    }
    for (o, a) in out.iter_mut().zip(acts).skip(t) {
        *o = dot_with(isa, qtype, w, *a);
    }
}

/// Dot product of one weight row (raw blocks) with one activation row. [`Isa::Avx2`] on a CPU
/// without it runs the scalar code.
///
/// Panics if `w` and `a` do not hold the same number of elements.
pub fn dot_with(isa: Isa, qtype: QType, w: &[u8], a: ActRow<'_>) -> f32 {
    let cols = w.len() / qtype.block_bytes() * qtype.block_len();
    assert!(
        w.len().is_multiple_of(qtype.block_bytes())
            && a.qs.len() == cols
            && a.d.len() == cols / QK
            && a.s.len() == cols / QK,
        "{qtype:?}: {} weight bytes, {} activations",
        w.len(),
        a.qs.len()
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if avx2_available() => avx2::dot(qtype, w, a),
        _ => scalar::dot(qtype, w, a),
    }
}

/// A rayon pool of `threads` workers for [`QMatrix::matmul`] (run it inside `install`).
pub fn thread_pool(threads: usize) -> Result<rayon::ThreadPool, rayon::ThreadPoolBuildError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .thread_name(|i| format!("hub-quant-{i}"))
        .build()
}
