//! Ternary-weight × int8-activation products on the [`packed`](super::packed) format (W1.58A8).
//!
//! With codes `k = w + 1 ∈ {0, 1, 2}`, a row's dot product is `Σ w·x = Σ k·x − Σ x`: the kernel
//! multiplies the 2-bit codes straight out of the bytes (a shift and a mask per 32 lanes, the
//! layout's point) and subtracts the activations' sum once per token. The integer sum is exact;
//! one multiply by `γ / s_x` turns it into the output. On x86_64 CPUs with AVX2 the inner loops
//! are `crate::sys`'s `maddubs` loops (chosen at run time); elsewhere portable loops over 32
//! contiguous lanes compute the same integers. One token (GEMV) reads the codes straight from
//! the packed bytes; several tokens (GEMM) unpack each row's codes once and reuse them for every
//! token. Rows are split over rayon's pool when the product is large enough to pay for it.

use rayon::prelude::*;

use super::packed::{BLOCK, BLOCK_BYTES, PackedTernary, padded_cols, row_bytes};
use super::ternary::quantize_activations;

/// Weight-tokens from which a product is split over threads (below, waking the pool costs more
/// than it saves: a 512×1536 GEMV takes 0.016 ms on one thread, 0.042 ms split over two).
const PARALLEL_FROM: usize = 1 << 21;

/// Int8 activations of `n` tokens, each padded to the matrix's block width, with their
/// per-token scales and sums.
pub struct Activations {
    pub q: Vec<i8>,
    pub scales: Vec<f32>,
    sums: Vec<i32>,
    width: usize,
}

impl Activations {
    /// Quantize `n` tokens of `cols` features (row-major `x`) by absmax, per token.
    pub fn quantize(x: &[f32], cols: usize) -> Self {
        let n = x.len() / cols.max(1);
        let width = padded_cols(cols);
        let mut q = vec![0i8; n * width];
        let (mut scales, mut sums) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for (t, token) in x.chunks(cols).enumerate() {
            let (qt, s) = quantize_activations(token);
            sums.push(qt.iter().map(|&v| i32::from(v)).sum());
            q[t * width..t * width + cols].copy_from_slice(&qt);
            scales.push(s);
        }
        Self {
            q,
            scales,
            sums,
            width,
        }
    }

    pub fn tokens(&self) -> usize {
        self.scales.len()
    }
}

/// `Σ_c k_c · x_c` over one packed row (codes, not weights).
fn packed_dot(row: &[u8], x: &[i8]) -> i32 {
    crate::sys::packed_code_dot(row, x).unwrap_or_else(|| portable_packed_dot(row, x))
}

/// `Σ_c k_c · x_c` over unpacked codes.
fn codes_dot(codes: &[u8], x: &[i8]) -> i32 {
    crate::sys::code_dot(codes, x).unwrap_or_else(|| {
        codes
            .iter()
            .zip(x)
            .map(|(&k, &v)| i32::from(k) * i32::from(v))
            .sum()
    })
}

/// A packed row's codes, one byte each, in column order.
fn unpack_codes(row: &[u8], out: &mut [u8]) {
    for (block, codes) in row
        .chunks_exact(BLOCK_BYTES)
        .zip(out.chunks_exact_mut(BLOCK))
    {
        for g in 0..4 {
            let shift = 6 - 2 * g;
            for (k, &b) in codes[32 * g..32 * g + 32].iter_mut().zip(block) {
                *k = (b >> shift) & 0b11;
            }
        }
    }
}

/// [`packed_dot`] without SIMD.
fn portable_packed_dot(row: &[u8], x: &[i8]) -> i32 {
    let mut acc = 0i32;
    for (block, xb) in row.chunks_exact(BLOCK_BYTES).zip(x.chunks_exact(BLOCK)) {
        for g in 0..4 {
            let shift = 6 - 2 * g;
            let lanes = &xb[32 * g..32 * g + 32];
            acc += block
                .iter()
                .zip(lanes)
                .map(|(&b, &v)| i32::from((b >> shift) & 0b11) * i32::from(v))
                .sum::<i32>();
        }
    }
    acc
}

/// `y = x · Wᵀ` for `w` `[rows, cols]` and quantized tokens `x`: `y` is `[tokens, rows]`,
/// row-major.
pub fn matmul(w: &PackedTernary, x: &Activations) -> Vec<f32> {
    assert_eq!(
        x.width,
        padded_cols(w.cols),
        "activations for {} columns",
        w.cols
    );
    let (n, rows, per_row) = (x.tokens(), w.rows, row_bytes(w.cols));
    // `codes`: a row's unpacked codes, one buffer per thread, used only for several tokens.
    let row_out = |codes: &mut Vec<u8>, r: usize, col: &mut [f32]| {
        let bytes = &w.bytes[r * per_row..(r + 1) * per_row];
        let token = |t: usize| &x.q[t * x.width..(t + 1) * x.width];
        let out = |t: usize, dot: i32| (dot - x.sums[t]) as f32 * (w.scale / x.scales[t]);
        if n == 1 {
            col[0] = out(0, packed_dot(bytes, token(0)));
        } else {
            codes.resize(x.width, 0);
            unpack_codes(bytes, codes);
            for (t, y) in col.iter_mut().enumerate() {
                *y = out(t, codes_dot(codes, token(t)));
            }
        }
    };
    // Computed row-major over weights ([rows, tokens]), then transposed to [tokens, rows]
    // (for one token the two layouts are the same).
    let mut by_row = vec![0f32; rows * n];
    let width = n.max(1);
    // A run of rows, from row `first`, into `out` (`width` outputs a row).
    let rows_out = |codes: &mut Vec<u8>, first: usize, out: &mut [f32]| {
        for (i, col) in out.chunks_mut(width).enumerate() {
            row_out(codes, first + i, col);
        }
    };
    let work = rows * w.cols * n;
    if work >= PARALLEL_FROM && rayon::current_num_threads() > 1 {
        // Tasks of at least PARALLEL_FROM / 4 weight-tokens each: enough to split over the
        // threads, few enough that scheduling costs nothing next to the products.
        let per_task = (PARALLEL_FROM / 4 / (w.cols * width).max(1)).clamp(1, rows);
        by_row
            .par_chunks_mut(per_task * width)
            .enumerate()
            .for_each_init(Vec::new, |codes, (t, out)| {
                rows_out(codes, t * per_task, out);
            });
    } else {
        rows_out(&mut Vec::new(), 0, &mut by_row);
    }
    if n == 1 {
        return by_row;
    }
    let mut out = vec![0f32; n * rows];
    for r in 0..rows {
        for t in 0..n {
            out[t * rows + r] = by_row[r * n + t];
        }
    }
    out
}

/// One token: `y = W x` (`x` has `cols` features).
pub fn gemv(w: &PackedTernary, x: &[f32]) -> Vec<f32> {
    matmul(w, &Activations::quantize(x, w.cols))
}

/// The same product in f32 on the dequantized weights and activations (the reference the
/// kernel must match; what a dequantized forward pass computes).
pub fn reference(w: &PackedTernary, x: &[f32]) -> Vec<f32> {
    let values = w.unpack();
    let mut out = Vec::new();
    for token in x.chunks(w.cols) {
        let (q, s) = quantize_activations(token);
        for r in 0..w.rows {
            let row = &values[r * w.cols..(r + 1) * w.cols];
            let y: f64 = row
                .iter()
                .zip(&q)
                .map(|(&wv, &xv)| f64::from(f32::from(wv) * w.scale) * f64::from(f32::from(xv) / s))
                .sum();
            out.push(y as f32);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::ternary::quantize_weights;
    use rand::{Rng, SeedableRng};

    fn case(rows: usize, cols: usize, tokens: usize, seed: u64) -> (PackedTernary, Vec<f32>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let w: Vec<f32> = (0..rows * cols)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let q = quantize_weights(&w);
        let x = (0..tokens * cols)
            .map(|_| rng.random_range(-3.0..3.0))
            .collect();
        (PackedTernary::pack(&q.values, rows, cols, q.scale), x)
    }

    #[test]
    fn the_simd_and_portable_loops_give_the_same_integers() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for blocks in [1, 3, 12] {
            let codes: Vec<u8> = (0..blocks * BLOCK)
                .map(|_| rng.random_range(0..3))
                .collect();
            let x: Vec<i8> = (0..blocks * BLOCK)
                .map(|_| rng.random_range(-128..=127))
                .collect();
            let values: Vec<i8> = codes.iter().map(|&k| k as i8 - 1).collect();
            let packed = PackedTernary::pack(&values, 1, blocks * BLOCK, 1.0);
            let want: i32 = codes
                .iter()
                .zip(&x)
                .map(|(&k, &v)| i32::from(k) * i32::from(v))
                .sum();
            assert_eq!(portable_packed_dot(&packed.bytes, &x), want);
            let mut unpacked = vec![0u8; blocks * BLOCK];
            unpack_codes(&packed.bytes, &mut unpacked);
            assert_eq!(unpacked, codes);
            // On a CPU without AVX2 these are the portable loops again.
            assert_eq!(packed_dot(&packed.bytes, &x), want);
            assert_eq!(codes_dot(&codes, &x), want);
            if let Some(simd) = crate::sys::packed_code_dot(&packed.bytes, &x) {
                assert_eq!(simd, want);
                assert_eq!(crate::sys::code_dot(&codes, &x), Some(want));
            }
        }
    }

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{i}: {x} vs {y}");
        }
    }

    #[test]
    fn the_kernel_equals_the_dequantized_reference_on_random_shapes() {
        let shapes = [
            (1, 1, 1),
            (3, 5, 2),
            (4, 127, 1),
            (5, 128, 3),
            (2, 129, 4),
            (17, 300, 2),
            // Large enough to be split over threads (≥ PARALLEL_FROM weight-tokens): one token
            // (GEMV) and several (GEMM), rows not a multiple of a task's.
            (2100, 1000, 1),
            (301, 1100, 7),
        ];
        for (i, &(rows, cols, tokens)) in shapes.iter().enumerate() {
            let (w, x) = case(rows, cols, tokens, i as u64);
            close(
                &matmul(&w, &Activations::quantize(&x, cols)),
                &reference(&w, &x),
            );
        }
        // Large enough to run on the thread pool.
        let (w, x) = case(700, 1000, 3, 9);
        const { assert!(700 * 1000 * 3 >= PARALLEL_FROM) };
        close(
            &matmul(&w, &Activations::quantize(&x, 1000)),
            &reference(&w, &x),
        );
        close(&gemv(&w, &x[..1000]), &reference(&w, &x[..1000]));
    }

    #[test]
    fn edge_cases_zero_weights_zero_activations_and_saturated_ones() {
        // All-zero activations give exactly zero; all-zero weights too.
        let (w, _) = case(4, 40, 1, 1);
        assert!(gemv(&w, &[0.0; 40]).iter().all(|&y| y == 0.0));
        let zeros = PackedTernary::pack(&[0; 80], 2, 40, 0.3);
        assert_eq!(gemv(&zeros, &[1.0; 40]), [0.0, 0.0]);
        // Every weight +1, every activation at the top of the int8 range: the sum is exact.
        let ones = PackedTernary::pack(&[1; 300], 1, 300, 2.0);
        let y = gemv(&ones, &[5.0; 300]);
        assert!((y[0] - 2.0 * 5.0 * 300.0).abs() < 1e-2, "{y:?}");
        let minus = PackedTernary::pack(&[-1; 300], 1, 300, 2.0);
        assert!((gemv(&minus, &[-5.0; 300])[0] - 3000.0).abs() < 1e-2);
    }
}
