//! hub-quant's kernels against three references: its own scalar code (SIMD must agree to f32
//! rounding), candle's dequantization (the same bytes must mean the same numbers), and a NumPy
//! implementation of the block layouts (`tests/reference.py`, float64) for dequantized values
//! and dot products.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use candle_core::Device;
use candle_core::quantized::{GgmlDType, ggml_file};
use hub_quant::{Isa, QActs, QMatrix, QType, avx2_available, dot_with};
use proptest::prelude::*;

/// splitmix64: deterministic bytes from a proptest seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Offsets of the f16 fields of a block (random bytes there would be NaN/inf/huge).
fn f16_fields(t: QType) -> &'static [usize] {
    match t {
        QType::Q4_0 | QType::Q8_0 => &[0],
        QType::Q5_0 => &[0],
        QType::Q4_1 | QType::Q5_1 | QType::Q4K | QType::Q5K => &[0, 2],
        QType::Q6K => &[208],
    }
}

/// `rows × cols` random blocks: random codes and scale bytes, f16 scales of moderate size.
fn random_matrix(t: QType, rows: usize, cols: usize, rng: &mut Rng) -> QMatrix {
    let blocks = rows * cols / t.block_len();
    let mut data = Vec::with_capacity(blocks * t.block_bytes());
    for _ in 0..blocks {
        let start = data.len();
        data.extend((0..t.block_bytes()).map(|_| rng.next() as u8));
        for &f in f16_fields(t) {
            let v = half::f16::from_f32(rng.f32() * 0.05)
                .to_bits()
                .to_le_bytes();
            data[start + f..start + f + 2].copy_from_slice(&v);
        }
    }
    QMatrix::new(t, rows, cols, data).expect("sizes")
}

fn random_acts(rows: usize, cols: usize, rng: &mut Rng) -> Vec<f32> {
    (0..rows * cols).map(|_| rng.f32() * 3.0).collect()
}

fn candle_dtype(t: QType) -> GgmlDType {
    match t {
        QType::Q4_0 => GgmlDType::Q4_0,
        QType::Q4_1 => GgmlDType::Q4_1,
        QType::Q5_0 => GgmlDType::Q5_0,
        QType::Q5_1 => GgmlDType::Q5_1,
        QType::Q8_0 => GgmlDType::Q8_0,
        QType::Q4K => GgmlDType::Q4K,
        QType::Q5K => GgmlDType::Q5K,
        QType::Q6K => GgmlDType::Q6K,
    }
}

fn dequantized(m: &QMatrix) -> Vec<f32> {
    let mut out = vec![0f32; m.rows() * m.cols()];
    for (r, row) in out.chunks_exact_mut(m.cols()).enumerate() {
        m.dequantize_row(r, row);
    }
    out
}

fn raw(m: &QMatrix) -> Vec<u8> {
    (0..m.rows()).flat_map(|r| m.row_data(r).to_vec()).collect()
}

/// Bound for a kernel's f32 result against an exact sum: f32 rounding of the scaled partial
/// sums, relative to Σ|w·a|.
fn close(got: f32, want: f64, magnitude: f64) -> bool {
    (f64::from(got) - want).abs() <= 1e-5 * magnitude + 1e-6
}

#[test]
fn dequantization_matches_candle_bit_for_bit() {
    let mut rng = Rng(7);
    for t in QType::ALL {
        let m = random_matrix(t, 3, 512, &mut rng);
        let candle =
            ggml_file::qtensor_from_ggml(candle_dtype(t), &raw(&m), vec![3, 512], &Device::Cpu)
                .and_then(|q| q.dequantize(&Device::Cpu))
                .and_then(|d| d.flatten_all())
                .and_then(|d| d.to_vec1::<f32>())
                .expect("candle dequantize");
        let ours = dequantized(&m);
        let diff = ours
            .iter()
            .zip(&candle)
            .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
        assert!(diff == 0.0, "{t:?}: max |ours − candle| = {diff}");
    }
}

#[test]
fn activation_quantization_error_is_at_most_half_a_step() {
    let mut rng = Rng(11);
    let x = random_acts(3, 256, &mut rng);
    let a = QActs::quantize(&x, 256);
    for r in 0..3 {
        let back = a.dequantize_row(r);
        for (i, (&v, &b)) in x[r * 256..].iter().zip(&back).enumerate() {
            let block = &x[r * 256 + i / 32 * 32..][..32];
            let step = block.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            assert!(
                (v - b).abs() <= step * 0.5001,
                "row {r} col {i}: {v} vs {b}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// SIMD and scalar kernels agree, and both equal the exact (f64) dot product of the
    /// dequantized weights with the dequantized activations up to f32 rounding.
    #[test]
    fn kernels_match_scalar_and_exact_dot(seed in any::<u64>(), blocks in 1usize..5, ti in 0usize..QType::ALL.len()) {
        let t = QType::ALL[ti];
        let mut rng = Rng(seed);
        let cols = blocks * t.block_len();
        let m = random_matrix(t, 2, cols, &mut rng);
        let a = QActs::quantize(&random_acts(1, cols, &mut rng), cols);
        let w = dequantized(&m);
        let x = a.dequantize_row(0);
        for r in 0..2 {
            let row = &w[r * cols..(r + 1) * cols];
            let exact: f64 = row.iter().zip(&x).map(|(&p, &q)| f64::from(p) * f64::from(q)).sum();
            let mag: f64 = row.iter().zip(&x).map(|(&p, &q)| (f64::from(p) * f64::from(q)).abs()).sum();
            let scalar = dot_with(Isa::Scalar, t, m.row_data(r), a.row(0));
            prop_assert!(close(scalar, exact, mag), "{t:?} scalar {scalar} exact {exact}");
            if avx2_available() {
                let simd = dot_with(Isa::Avx2, t, m.row_data(r), a.row(0));
                prop_assert!(close(simd, f64::from(scalar), mag), "{t:?} avx2 {simd} scalar {scalar}");
            }
        }
    }

    /// A batched matmul gives every activation row exactly what it gets alone (so greedy
    /// output cannot depend on the batch), with either instruction set.
    #[test]
    fn batched_matmul_equals_rows_alone(seed in any::<u64>(), n in 1usize..10, rows in 1usize..80, ti in 0usize..QType::ALL.len(), nb in 1usize..4) {
        let t = QType::ALL[ti];
        let mut rng = Rng(seed);
        let cols = nb * t.block_len();
        let m = random_matrix(t, rows, cols, &mut rng);
        let x = random_acts(n, cols, &mut rng);
        let isas: &[Isa] = if avx2_available() { &[Isa::Scalar, Isa::Avx2] } else { &[Isa::Scalar] };
        for &isa in isas {
            let all = QActs::quantize(&x, cols);
            let mut y = vec![0f32; n * rows];
            m.matmul_with(isa, &all, &mut y);
            for i in 0..n {
                let one = QActs::quantize(&x[i * cols..(i + 1) * cols], cols);
                let mut yi = vec![0f32; rows];
                m.matmul_with(isa, &one, &mut yi);
                prop_assert_eq!(&y[i * rows..(i + 1) * rows], &yi[..], "{:?} {:?} row {}", t, isa, i);
            }
        }
    }
}

/// Big enough to be split over the pool (past `SEQUENTIAL_BYTES`): the same numbers as on one
/// thread, and the same as each activation row alone, for batches that use the multi-row
/// kernel (groups of 4) and a remainder. A matrix read in place from a shared buffer
/// (`QMatrix::shared`, as a mapped file) gives the same numbers as an owned one.
#[test]
fn pooled_shared_and_sequential_matmuls_agree() {
    let mut rng = Rng(11);
    for t in [
        QType::Q4_0,
        QType::Q4_1,
        QType::Q5_0,
        QType::Q8_0,
        QType::Q4K,
    ] {
        let (rows, cols, n) = (300, 1024, 7);
        let owned = random_matrix(t, rows, cols, &mut rng);
        assert!(owned.size_bytes() * n > hub_quant::SEQUENTIAL_BYTES);
        let mut buf = vec![7u8; 13];
        let start = buf.len();
        for r in 0..rows {
            buf.extend_from_slice(owned.row_data(r));
        }
        let end = buf.len();
        buf.extend_from_slice(&[1, 2, 3]);
        let buf: hub_quant::SharedBytes = std::sync::Arc::new(buf);
        let shared = QMatrix::shared(t, rows, cols, buf.clone(), start..end).unwrap();
        assert!(shared.is_shared() && !owned.is_shared());
        // A range of the wrong size, and one past the buffer's end, are errors.
        assert!(QMatrix::shared(t, rows, cols, buf.clone(), start..end - 1).is_err());
        assert!(QMatrix::shared(t, rows, cols, buf, start + 4..end + 4).is_err());
        let x = random_acts(n, cols, &mut rng);
        let acts = QActs::quantize(&x, cols);
        let run = |m: &QMatrix, threads: usize| {
            let mut y = vec![0f32; n * rows];
            hub_quant::thread_pool(threads)
                .unwrap()
                .install(|| m.matmul(&acts, &mut y));
            y
        };
        let one = run(&owned, 1);
        assert_eq!(run(&owned, 3), one, "{t:?}");
        assert_eq!(run(&shared, 2), one, "{t:?}");
        for i in 0..n {
            let alone = QActs::quantize(&x[i * cols..(i + 1) * cols], cols);
            let mut yi = vec![0f32; rows];
            owned.matmul(&alone, &mut yi);
            assert_eq!(&one[i * rows..(i + 1) * rows], &yi[..], "{t:?} row {i}");
        }
    }
}

/// A grouped matmul (`matmul_many`: a layer's q/k/v or gate/up, one quantized input and one
/// split over the pool) gives each matrix exactly its own `matmul`'s numbers, for batch 1 and
/// batched rows, on one thread and on a pool, with matrices of different formats and heights.
#[test]
fn grouped_matmul_equals_each_matrix_alone() {
    let mut rng = Rng(31);
    let cols = 512;
    let mats = [
        random_matrix(QType::Q4_1, 200, cols, &mut rng),
        random_matrix(QType::Q5_0, 64, cols, &mut rng),
        random_matrix(QType::Q8_0, 33, cols, &mut rng),
        random_matrix(QType::Q4K, 70, cols, &mut rng),
    ];
    let refs: Vec<&QMatrix> = mats.iter().collect();
    for n in [1, 5] {
        let acts = QActs::quantize(&random_acts(n, cols, &mut rng), cols);
        for threads in [1, 2] {
            let pool = hub_quant::thread_pool(threads).unwrap();
            let mut ys: Vec<Vec<f32>> = mats.iter().map(|m| vec![0f32; n * m.rows()]).collect();
            pool.install(|| {
                let mut outs: Vec<&mut [f32]> = ys.iter_mut().map(Vec::as_mut_slice).collect();
                hub_quant::matmul_many(&refs, &acts, &mut outs);
            });
            for (m, y) in mats.iter().zip(&ys) {
                let mut alone = vec![0f32; n * m.rows()];
                m.matmul(&acts, &mut alone);
                assert_eq!(y, &alone, "{:?} n {n} threads {threads}", m.qtype());
            }
        }
    }
}

#[test]
fn bad_sizes_are_errors() {
    assert!(QMatrix::new(QType::Q4K, 1, 32, vec![0; 18]).is_err());
    assert!(QMatrix::new(QType::Q4_0, 2, 32, vec![0; 18]).is_err());
    assert!(QMatrix::new(QType::Q4_0, usize::MAX, 32, vec![0; 18]).is_err());
    assert!(QMatrix::new(QType::Q4_0, 2, 32, vec![0; 36]).is_ok());
}

fn ggml_name(t: QType) -> &'static str {
    match t {
        QType::Q4_0 => "Q4_0",
        QType::Q4_1 => "Q4_1",
        QType::Q5_0 => "Q5_0",
        QType::Q5_1 => "Q5_1",
        QType::Q8_0 => "Q8_0",
        QType::Q4K => "Q4_K",
        QType::Q5K => "Q5_K",
        QType::Q6K => "Q6_K",
    }
}

fn python() -> PathBuf {
    std::env::var_os("HUBMESH_INFER_PYTHON").map_or_else(
        || manifest_dir().join("../../.venv-infer/bin/python"),
        PathBuf::from,
    )
}

/// Dequantized values and dot products against NumPy (float64), per format.
#[test]
fn numpy_reference_dequantization_and_dots() {
    let mut rng = Rng(23);
    let mut cases = Vec::new();
    let mut ours = Vec::new();
    for t in QType::ALL {
        let (rows, cols, n) = (4, 512, 2);
        let m = random_matrix(t, rows, cols, &mut rng);
        let a = QActs::quantize(&random_acts(n, cols, &mut rng), cols);
        let acts: Vec<Vec<f32>> = (0..n).map(|i| a.dequantize_row(i)).collect();
        let mut y = vec![0f32; n * rows];
        m.matmul(&a, &mut y);
        let hex: String = raw(&m).iter().map(|b| format!("{b:02x}")).collect();
        cases.push(serde_json::json!({
            "qtype": ggml_name(t),
            "rows": rows, "cols": cols, "data": hex, "acts": acts,
        }));
        let deq = dequantized(&m);
        let mags: Vec<f64> = (0..rows * n)
            .map(|k| {
                let (row, i) = (k / n, k % n);
                deq[row * cols..(row + 1) * cols]
                    .iter()
                    .zip(&acts[i])
                    .map(|(&w, &x)| (f64::from(w) * f64::from(x)).abs())
                    .sum()
            })
            .collect();
        ours.push((t, deq, y, rows, n, mags));
    }
    let mut child = Command::new(python())
        .arg(manifest_dir().join("tests/reference.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the NumPy reference (HUBMESH_INFER_PYTHON or .venv-infer)");
    let job = serde_json::json!({ "cases": cases }).to_string();
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(job.as_bytes())
        .expect("write job");
    let out = child.wait_with_output().expect("reference output");
    assert!(out.status.success(), "reference.py failed");
    let refs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    for ((t, deq, y, rows, n, mags), r) in ours.into_iter().zip(refs) {
        let want: Vec<f64> = r["dequantized"]
            .as_array()
            .expect("rows")
            .iter()
            .flat_map(|row| {
                row.as_array()
                    .expect("row")
                    .iter()
                    .map(|v| v.as_f64().expect("f64"))
            })
            .collect();
        // f32 rounding of `d·sc·q − m` against float64: a few ulps of the value (k-quant
        // values reach ~100 with these random scales), at least 1e-6.
        let deq_diff = deq.iter().zip(&want).fold(0f64, |m, (&a, &b)| {
            m.max((f64::from(a) - b).abs() / (1.0 + b.abs()))
        });
        assert!(
            deq_diff <= 1e-6,
            "{t:?}: dequantized max abs diff / (1 + |value|) {deq_diff}"
        );
        for row in 0..rows {
            for i in 0..n {
                let want = r["dots"][row][i].as_f64().expect("dot");
                let got = f64::from(y[i * rows + row]);
                assert!(
                    (got - want).abs() <= 1e-5 * mags[row * n + i] + 1e-6,
                    "{t:?} row {row} act {i}: {got} vs NumPy {want}"
                );
            }
        }
    }
}

/// The package's directory as Cargo or nextest gives it when the test runs, so a test binary
/// built from one checkout and reused from another (same target dir) reads this checkout's files.
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}
