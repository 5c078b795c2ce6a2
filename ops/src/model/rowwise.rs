//! Row-wise f32 kernels behind the flex backend's fused ops ([`super::fused`]): softmax and
//! log-softmax over the last axis, their backward passes, and SiLU with its backward pass.
//!
//! flex (burn 0.22) computes `exp` one element at a time through libm, which was ~13% of a tiny
//! training step (softmax over attention scores, log-softmax over the logits and its backward
//! pass, the sigmoid inside SiLU forward and backward). Here `exp` is a polynomial written so the
//! loops vectorise, and every loop runs under `pulp`'s run-time CPU dispatch (AVX-512 or AVX2+FMA
//! where the CPU has them). Only plain multiplies and adds are used (no fused multiply-add, no
//! reassociation: sums run in 16 fixed lanes), so every instruction set gives the same bits.
//! Rows are independent; large tensors split them over rayon's threads.

use rayon::prelude::*;

/// Below this many elements a tensor is processed on the calling thread.
const PARALLEL_FROM: usize = 1 << 15;

/// `e^x` within ~2 ulp for `x ∈ [−87.3, 88]`: 0 below (where f32 leaves the normal range; no
/// denormals), and `x` clamped to 88 above (e^88 ≈ 1.65e38; the callers only pass `x ≤ 0`).
/// Cephes' `expf`: `x = n ln 2 + r` with `|r| ≤ ln 2 / 2`, a degree-6 polynomial for `e^r`,
/// and `2^n` built in the exponent bits. NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so that n·C1 is exact.
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    const LO: f32 = -87.336_55;
    let underflow = x < LO;
    let xc = if x > 88.0 { 88.0 } else { x };
    let xc = if underflow { 0.0 } else { xc };
    // Round to nearest by adding and subtracting 1.5·2²³ (plain adds: no libm `floor` call
    // where the baseline target lacks a rounding instruction).
    const ROUND: f32 = 12_582_912.0;
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = xc - n * C1 - n * C2;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if underflow { 0.0 } else { e * scale }
}

/// `σ(x) = 1 / (1 + e^−x)`, from `e^−|x|` so that nothing overflows.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    let e = exp(-x.abs());
    let inv = 1.0 / (1.0 + e);
    if x >= 0.0 { inv } else { e * inv }
}

/// `op` folded over `term(0..n)` in a fixed order: 16 running lanes (lane `l` takes the terms
/// `i ≡ l mod 16` of the whole blocks), then the lanes in order, then the tail. The order does
/// not depend on the vector width, so neither does the result.
#[inline(always)]
fn fold16(n: usize, init: f32, term: impl Fn(usize) -> f32, op: impl Fn(f32, f32) -> f32) -> f32 {
    let whole = n / 16 * 16;
    let mut acc = [init; 16];
    for base in (0..whole).step_by(16) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a = op(*a, term(base + l));
        }
    }
    let mut r = init;
    for a in acc {
        r = op(r, a);
    }
    for i in whole..n {
        r = op(r, term(i));
    }
    r
}

/// Σ xs, in [`fold16`]'s order.
#[inline(always)]
fn sum(xs: &[f32]) -> f32 {
    fold16(xs.len(), 0.0, |i| xs[i], |a, b| a + b)
}

/// Σ a·b, in [`fold16`]'s order.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let b = &b[..a.len()];
    fold16(a.len(), 0.0, |i| a[i] * b[i], |s, t| s + t)
}

/// max xs (−∞ for none; exact, so its order does not matter).
#[inline(always)]
fn max(xs: &[f32]) -> f32 {
    fold16(
        xs.len(),
        f32::NEG_INFINITY,
        |i| xs[i],
        |m, v| if v > m { v } else { m },
    )
}

/// A kernel over whole rows: `row(out_row, inputs' rows…)`.
///
/// Kernels are types, not closures: a closure reached through a reference (`&F`) or a fn-item
/// shim is a separate function that LLVM may decline to inline into `pulp`'s
/// `#[target_feature]` entry point, and then the loops compile for the baseline x86-64 (SSE2)
/// instead of AVX-512 or AVX2 — which is what happened before (every kernel here ran as scalar
/// SSE code). Static calls to `#[inline(always)]` functions are always inlined.
trait RowKernel<const N: usize> {
    fn row(out: &mut [f32], ins: [&[f32]; N]);
}

/// A kernel over any chunk of elements.
trait ChunkKernel<const N: usize> {
    fn chunk(out: &mut [f32], ins: [&[f32]; N]);
}

/// What [`map_chunks`] runs on a chunk of whole units: [`Rows`] of a [`RowKernel`] or
/// [`Elements`] of a [`ChunkKernel`].
trait Kernel<const N: usize> {
    fn run(out: &mut [f32], ins: [&[f32]; N], unit: usize);
}

/// A [`RowKernel`] over every row (one unit) of a chunk.
struct Rows<R>(std::marker::PhantomData<R>);

impl<const N: usize, R: RowKernel<N>> Kernel<N> for Rows<R> {
    #[inline(always)]
    fn run(out: &mut [f32], ins: [&[f32]; N], row_len: usize) {
        for (r, o) in out.chunks_exact_mut(row_len).enumerate() {
            let (a, b) = (r * row_len, (r + 1) * row_len);
            R::row(o, std::array::from_fn(|k| &ins[k][a..b]));
        }
    }
}

/// A [`ChunkKernel`] over a whole chunk.
struct Elements<E>(std::marker::PhantomData<E>);

impl<const N: usize, E: ChunkKernel<N>> Kernel<N> for Elements<E> {
    #[inline(always)]
    fn run(out: &mut [f32], ins: [&[f32]; N], _: usize) {
        E::chunk(out, ins);
    }
}

/// One task's work, run by `pulp` under the widest instruction set the CPU has.
struct Task<'a, const N: usize, K> {
    out: &'a mut [f32],
    ins: [&'a [f32]; N],
    unit: usize,
    kernel: std::marker::PhantomData<K>,
}

impl<const N: usize, K: Kernel<N>> pulp::WithSimd for Task<'_, N, K> {
    type Output = ();
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        K::run(self.out, self.ins, self.unit);
    }
}

/// [`RowKernel`] `R` over every row (`row_len` wide) of a new output the size of the inputs.
fn map_rows<const N: usize, R: RowKernel<N>>(inputs: [&[f32]; N], row_len: usize) -> Vec<f32> {
    assert!(row_len > 0 && inputs[0].len().is_multiple_of(row_len));
    map_chunks::<N, Rows<R>>(inputs, row_len)
}

/// [`ChunkKernel`] `E` over every element of a new output the size of the inputs.
fn map_elements<const N: usize, E: ChunkKernel<N>>(inputs: [&[f32]; N]) -> Vec<f32> {
    map_chunks::<N, Elements<E>>(inputs, 1)
}

/// Kernel `K` over chunks, whole multiples of `unit` elements, of a new output the size of the
/// inputs: in parallel for large tensors, each task under the widest instruction set the CPU
/// has.
fn map_chunks<const N: usize, K: Kernel<N>>(inputs: [&[f32]; N], unit: usize) -> Vec<f32> {
    let n = inputs[0].len();
    assert!(inputs.iter().all(|x| x.len() == n));
    let mut out = vec![0.0; n];
    let parallel = n >= PARALLEL_FROM;
    let chunk = if parallel {
        (PARALLEL_FROM / 4).div_ceil(unit) * unit
    } else {
        n.max(1)
    };
    let task = |(i, o): (usize, &mut [f32])| {
        let start = i * chunk;
        let ins = inputs.map(|x| &x[start..start + o.len()]);
        pulp::Arch::new().dispatch(Task::<N, K> {
            out: o,
            ins,
            unit,
            kernel: std::marker::PhantomData,
        });
    };
    if parallel {
        out.par_chunks_mut(chunk).enumerate().for_each(task);
    } else {
        out.chunks_mut(chunk).enumerate().for_each(task);
    }
    out
}

/// `e^(x − max x)` into `y`; returns `max x` and `Σ y`.
#[inline(always)]
fn exp_shifted(y: &mut [f32], x: &[f32]) -> (f32, f32) {
    let m = max(x);
    for (o, v) in y.iter_mut().zip(x) {
        *o = exp(*v - m);
    }
    (m, sum(y))
}

/// `softmax(x)` over rows of `row_len`.
pub fn softmax(x: &[f32], row_len: usize) -> Vec<f32> {
    map_rows::<1, Softmax>([x], row_len)
}

struct Softmax;

impl RowKernel<1> for Softmax {
    #[inline(always)]
    fn row(y: &mut [f32], [x]: [&[f32]; 1]) {
        let (_, z) = exp_shifted(y, x);
        let inv = 1.0 / z;
        for o in y.iter_mut() {
            *o *= inv;
        }
    }
}

/// `∂L/∂x = y ⊙ (g − Σ g ⊙ y)` of `y = softmax(x)`, per row.
pub fn softmax_backward(y: &[f32], g: &[f32], row_len: usize) -> Vec<f32> {
    map_rows::<2, SoftmaxBackward>([y, g], row_len)
}

struct SoftmaxBackward;

impl RowKernel<2> for SoftmaxBackward {
    #[inline(always)]
    fn row(dx: &mut [f32], [y, g]: [&[f32]; 2]) {
        let s = dot(g, y);
        for ((o, y), g) in dx.iter_mut().zip(y).zip(g) {
            *o = y * (g - s);
        }
    }
}

/// `log_softmax(x) = x − max − ln Σ e^(x − max)` over rows of `row_len`.
pub fn log_softmax(x: &[f32], row_len: usize) -> Vec<f32> {
    map_rows::<1, LogSoftmax>([x], row_len)
}

struct LogSoftmax;

impl RowKernel<1> for LogSoftmax {
    #[inline(always)]
    fn row(y: &mut [f32], [x]: [&[f32]; 1]) {
        let (m, z) = exp_shifted(y, x);
        let shift = m + z.ln();
        for (o, v) in y.iter_mut().zip(x) {
            *o = *v - shift;
        }
    }
}

/// `∂L/∂x = g − e^y ⊙ Σ g` of `y = log_softmax(x)`, per row.
pub fn log_softmax_backward(y: &[f32], g: &[f32], row_len: usize) -> Vec<f32> {
    map_rows::<2, LogSoftmaxBackward>([y, g], row_len)
}

struct LogSoftmaxBackward;

impl RowKernel<2> for LogSoftmaxBackward {
    #[inline(always)]
    fn row(dx: &mut [f32], [y, g]: [&[f32]; 2]) {
        let s = sum(g);
        for ((o, y), g) in dx.iter_mut().zip(y).zip(g) {
            *o = g - exp(*y) * s;
        }
    }
}

/// `x σ(x)`, element-wise.
pub fn silu(x: &[f32]) -> Vec<f32> {
    map_elements::<1, Silu>([x])
}

struct Silu;

impl ChunkKernel<1> for Silu {
    #[inline(always)]
    fn chunk(y: &mut [f32], [x]: [&[f32]; 1]) {
        for (o, v) in y.iter_mut().zip(x) {
            *o = *v * sigmoid(*v);
        }
    }
}

/// `∂L/∂x = g ⊙ σ(x) ⊙ (1 + x (1 − σ(x)))` of `y = x σ(x)`.
pub fn silu_backward(x: &[f32], g: &[f32]) -> Vec<f32> {
    map_elements::<2, SiluBackward>([x, g])
}

struct SiluBackward;

impl ChunkKernel<2> for SiluBackward {
    #[inline(always)]
    fn chunk(dx: &mut [f32], [x, g]: [&[f32]; 2]) {
        for ((o, x), g) in dx.iter_mut().zip(x).zip(g) {
            let s = sigmoid(*x);
            *o = g * s * (1.0 + x * (1.0 - s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The polynomial `exp` is within 2 ulp of libm's over the range the callers use and beyond,
    /// exact at 0, 0 below the normal range, and NaN for NaN.
    #[test]
    fn exp_matches_libm() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_3;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        for x in [-87.336_54f32, -87.3, -87.2] {
            let got = exp(x);
            assert!(got.is_normal() && ((got as f64 / (x as f64).exp()) - 1.0).abs() < 1e-6);
        }
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan());
        assert!(sigmoid(-200.0) >= 0.0 && sigmoid(200.0) == 1.0);
    }

    /// Rows that are not a multiple of the 16 lanes, several tasks, masked (−∞) entries: each row
    /// of the softmax sums to 1 and equals the f64 reference.
    #[test]
    fn softmax_rows_match_f64() {
        for row_len in [1, 5, 16, 37, 300] {
            let rows = (PARALLEL_FROM * 2).div_ceil(row_len);
            let x: Vec<f32> = (0..rows * row_len)
                .map(|i| {
                    if i % 7 == 3 {
                        f32::NEG_INFINITY
                    } else {
                        ((i * 37 % 101) as f32 - 50.0) / 9.0
                    }
                })
                .collect();
            let y = softmax(&x, row_len);
            let ly = log_softmax(&x, row_len);
            for (xr, (yr, lr)) in x
                .chunks(row_len)
                .zip(y.chunks(row_len).zip(ly.chunks(row_len)))
            {
                let m = xr.iter().fold(f64::NEG_INFINITY, |m, v| m.max(*v as f64));
                if m == f64::NEG_INFINITY {
                    continue; // a fully masked row has no softmax
                }
                let z: f64 = xr.iter().map(|v| (*v as f64 - m).exp()).sum();
                for ((v, got), lgot) in xr.iter().zip(yr).zip(lr) {
                    let want = (*v as f64 - m).exp() / z;
                    assert!((*got as f64 - want).abs() < 1e-6, "{got} vs {want}");
                    if v.is_finite() {
                        let lwant = *v as f64 - m - z.ln();
                        assert!((*lgot as f64 - lwant).abs() < 1e-5, "{lgot} vs {lwant}");
                    } else {
                        assert_eq!(*got, 0.0);
                    }
                }
            }
        }
    }
}
