//! The per-tensor merge techniques, with mergekit's semantics (anchors.md §B.2):
//!
//! - `linear`: Σ wᵢθᵢ, divided by Σ wᵢ when `normalize`.
//! - `slerp`: between two tensors, on the flattened vectors: the angle comes from normalised copies
//!   (norms ≤ 1e-8 are left unnormalised), |cos| > 0.9995 falls back to lerp, and the weights
//!   sin((1−t)Ω)/sin Ω and sin(tΩ)/sin Ω apply to the *un-normalised* originals. `t = 0` is the
//!   first tensor.
//! - `ties`: task vectors τᵢ = θᵢ − θ_base; each trimmed to its top `density` fraction by
//!   magnitude (k = ⌊density·n⌋, at least 1); the sign of every entry elected by the sign of the
//!   *sum* Σ wᵢτᵢ (≥ 0 counts as +); the disjoint mean Σ wᵢτᵢ·[agree] / Σ wᵢ·[agree] (a divisor
//!   below 1e-8 becomes 1) when `normalize`; times `lambda`; added to the base.
//! - `dare`: each entry of each τᵢ kept with probability `density` (Bernoulli, seeded by the
//!   merge seed, the tensor name and the model index, so it is the same however tensors are
//!   ordered or threaded) and rescaled, then combined like `ties` without sign election
//!   (mergekit's `dare_linear`). Rescaling defaults to the paper's 1/density, which keeps every
//!   entry's *expected value* equal to τ; mergekit's L1 matching (‖τ‖₁/‖m⊙τ‖₁ per tensor) is
//!   available as `rescale: l1`, and `none` turns rescaling off.

use rand::Rng;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// SLERP falls back to lerp above this |cos|.
pub const DOT_THRESHOLD: f64 = 0.9995;
/// Norms at or below this are not normalised.
pub const EPS: f64 = 1e-8;

/// How DARE rescales the entries it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Rescale {
    /// × 1/density: unbiased per entry (the DARE paper).
    #[default]
    Inverse,
    /// × ‖τ‖₁ / ‖m⊙τ‖₁ per tensor (mergekit).
    L1,
    /// No rescaling.
    None,
}

/// Weighted average of tensors.
pub fn linear(tensors: &[&[f32]], weights: &[f64], normalize: bool) -> Vec<f32> {
    let n = tensors[0].len();
    let mut out = vec![0f64; n];
    for (t, &w) in tensors.iter().zip(weights) {
        for (o, &x) in out.iter_mut().zip(t.iter()) {
            *o += w * x as f64;
        }
    }
    let total: f64 = weights.iter().sum();
    let div = if normalize && total.abs() > EPS {
        total
    } else {
        1.0
    };
    out.into_iter().map(|x| (x / div) as f32).collect()
}

/// Spherical interpolation from `a` (t = 0) to `b` (t = 1).
pub fn slerp(a: &[f32], b: &[f32], t: f64) -> Vec<f32> {
    let norm = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let (na, nb) = (norm(a), norm(b));
    let (na, nb) = (
        if na > EPS { na } else { 1.0 },
        if nb > EPS { nb } else { 1.0 },
    );
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 / na) * (y as f64 / nb))
        .sum();
    if dot.abs() > DOT_THRESHOLD {
        return a
            .iter()
            .zip(b)
            .map(|(&x, &y)| ((1.0 - t) * x as f64 + t * y as f64) as f32)
            .collect();
    }
    let theta0 = dot.acos();
    let sin0 = theta0.sin();
    let theta_t = theta0 * t;
    let s0 = (theta0 - theta_t).sin() / sin0;
    let s1 = theta_t.sin() / sin0;
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (s0 * x as f64 + s1 * y as f64) as f32)
        .collect()
}

/// SLERP of several tensors, folded left: r ← slerp(r, θᵢ, wᵢ / (w₀ + … + wᵢ)), so equal
/// weights give t = 1/2, 1/3, … and each input's share is its weight's.
pub fn slerp_many(tensors: &[&[f32]], weights: &[f64]) -> Vec<f32> {
    let mut acc = tensors[0].to_vec();
    let mut seen = weights[0];
    for (t, &w) in tensors.iter().zip(weights).skip(1) {
        seen += w;
        let frac = if seen.abs() > EPS { w / seen } else { 0.5 };
        acc = slerp(&acc, t, frac);
    }
    acc
}

/// Keep the top ⌊density·n⌋ (at least 1) entries of `delta` by magnitude, zero the rest. Ties at
/// the threshold are broken by position, so the result is deterministic.
pub fn magnitude_trim(delta: &mut [f32], density: f64) {
    let n = delta.len();
    if density >= 1.0 || n == 0 {
        return;
    }
    let k = ((density * n as f64) as usize).max(1);
    let mut idx: Vec<u32> = (0..n as u32).collect();
    let key = |i: &u32| (std::cmp::Reverse(ordered(delta[*i as usize].abs())), *i);
    idx.select_nth_unstable_by_key(k - 1, key);
    let mut keep = vec![false; n];
    for &i in &idx[..k] {
        keep[i as usize] = true;
    }
    for (d, k) in delta.iter_mut().zip(keep) {
        if !k {
            *d = 0.0;
        }
    }
}

fn ordered(x: f32) -> u32 {
    // Total order on non-negative floats (magnitudes) via their bit patterns.
    x.to_bits()
}

/// DARE's random drop: keep each entry with probability `density`, then rescale.
pub fn dare_drop(
    delta: &mut [f32],
    density: f64,
    rescale: Rescale,
    seed: u64,
    tensor: &str,
    model: usize,
) {
    if density >= 1.0 {
        return;
    }
    let mut rng = crate::rng::stream(seed, crate::rng::Stream::DareMask { tensor, model });
    let l1_before: f64 = delta.iter().map(|x| x.abs() as f64).sum();
    for d in delta.iter_mut() {
        if rng.random::<f64>() >= density {
            *d = 0.0;
        }
    }
    let factor = match rescale {
        Rescale::Inverse if density > 0.0 => 1.0 / density,
        Rescale::L1 => {
            let after: f64 = delta.iter().map(|x| x.abs() as f64).sum();
            if after > EPS { l1_before / after } else { 1.0 }
        }
        _ => 1.0,
    };
    if factor != 1.0 {
        for d in delta.iter_mut() {
            *d = (*d as f64 * factor) as f32;
        }
    }
}

/// How task vectors are sparsified before they are combined.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sparsify {
    /// TIES: magnitude trim + sign election by sum.
    Ties,
    /// DARE: random drop + rescale, no sign election.
    Dare { rescale: Rescale, seed: u64 },
}

/// Generalised task arithmetic (mergekit's `GTATask`) for one tensor.
#[allow(clippy::too_many_arguments)]
pub fn task_arithmetic(
    name: &str,
    base: &[f32],
    models: &[&[f32]],
    weights: &[f64],
    density: f64,
    lambda: f64,
    normalize: bool,
    how: Sparsify,
) -> Vec<f32> {
    let n = base.len();
    let deltas: Vec<Vec<f32>> = models
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut d: Vec<f32> = m.iter().zip(base).map(|(x, b)| x - b).collect();
            match how {
                Sparsify::Ties => magnitude_trim(&mut d, density),
                Sparsify::Dare { rescale, seed } => {
                    dare_drop(&mut d, density, rescale, seed, name, i);
                }
            }
            d
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for j in 0..n {
        let elect = match how {
            Sparsify::Ties => {
                let s: f64 = deltas
                    .iter()
                    .zip(weights)
                    .map(|(d, w)| w * d[j] as f64)
                    .sum();
                Some(if s >= 0.0 { 1.0 } else { -1.0 })
            }
            Sparsify::Dare { .. } => None,
        };
        let (mut mixed, mut div) = (0.0f64, 0.0f64);
        for (d, &w) in deltas.iter().zip(weights) {
            let x = d[j] as f64;
            let agree = match elect {
                // mergekit's mask: sign(τ) == majority sign, where sign(0) = 0 never agrees.
                Some(s) => x != 0.0 && x.signum() == s,
                None => true,
            };
            if agree {
                mixed += w * x;
                div += w;
            }
        }
        if normalize {
            if div.abs() < EPS {
                div = 1.0;
            }
            mixed /= div;
        }
        out.push((base[j] as f64 + lambda * mixed) as f32);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn linear_is_the_weighted_mean() {
        close(
            &linear(&[&[1.0, 2.0], &[3.0, 6.0]], &[1.0, 3.0], true),
            &[2.5, 5.0],
        );
        close(
            &linear(&[&[1.0, 2.0], &[3.0, 6.0]], &[1.0, 3.0], false),
            &[10.0, 20.0],
        );
    }

    #[test]
    fn slerp_endpoints_and_midpoint() {
        let a = [1.0f32, 0.0];
        let b = [0.0f32, 2.0];
        close(&slerp(&a, &b, 0.0), &a);
        close(&slerp(&a, &b, 1.0), &b);
        // Ω = 90°: s0 = s1 = sin 45° / sin 90° = √½, applied to the un-normalised originals.
        let h = std::f32::consts::FRAC_1_SQRT_2;
        close(&slerp(&a, &b, 0.5), &[h, 2.0 * h]);
        // Nearly parallel vectors fall back to lerp.
        close(&slerp(&[1.0, 0.0], &[2.0, 0.001], 0.5), &[1.5, 0.0005]);
    }

    #[test]
    fn slerp_many_with_equal_weights_folds_with_one_over_i() {
        let (a, b, c) = ([1.0f32, 0.0, 0.0], [0.0f32, 1.0, 0.0], [0.0f32, 0.0, 1.0]);
        let ab = slerp(&a, &b, 0.5);
        close(
            &slerp_many(&[&a, &b, &c], &[1.0, 1.0, 1.0]),
            &slerp(&ab, &c, 1.0 / 3.0),
        );
    }

    #[test]
    fn ties_elects_signs_by_sum_not_by_count() {
        // Entry 0: two small positive deltas and one large negative. Counting votes says +,
        // summing says − (0.1 + 0.1 − 1.0 < 0): TIES keeps only the negative one.
        let base = [0.0f32, 0.0];
        let m1 = [0.1f32, 1.0];
        let m2 = [0.1f32, 1.0];
        let m3 = [-1.0f32, -0.5];
        let ties = |lambda: f64, normalize: bool| {
            let models: [&[f32]; 3] = [&m1, &m2, &m3];
            task_arithmetic(
                "w",
                &base,
                &models,
                &[1.0; 3],
                1.0,
                lambda,
                normalize,
                Sparsify::Ties,
            )
        };
        // Entry 1: sum +1.5 → + elected, disjoint mean of the two agreeing 1.0s.
        close(&ties(1.0, true), &[-1.0, 1.0]);
        // λ scales the merged delta; without normalisation the agreeing deltas add up.
        let out = ties(0.5, false);
        close(&out, &[-0.5, 1.0]);
    }

    #[test]
    fn ties_trims_to_the_largest_magnitudes() {
        let mut d = [0.1f32, -3.0, 0.5, 2.0];
        magnitude_trim(&mut d, 0.5);
        assert_eq!(d, [0.0, -3.0, 0.0, 2.0]);
        let mut d = [0.1f32, -3.0, 0.5, 2.0];
        magnitude_trim(&mut d, 0.1); // ⌊0.4⌋ = 0 → at least one entry kept
        assert_eq!(d, [0.0, -3.0, 0.0, 0.0]);
    }

    #[test]
    fn dare_keeps_the_expected_value_and_is_seeded() {
        let n = 200_000;
        let base = vec![0.0f32; n];
        let m = vec![0.5f32; n];
        let how = Sparsify::Dare {
            rescale: Rescale::Inverse,
            seed: 7,
        };
        let out = task_arithmetic("w", &base, &[&m], &[1.0], 0.3, 1.0, true, how);
        let kept = out.iter().filter(|x| **x != 0.0).count() as f64 / n as f64;
        assert!((kept - 0.3).abs() < 0.01, "kept {kept}");
        // Kept entries are rescaled to 0.5 / 0.3; the mean stays 0.5.
        assert!(
            out.iter()
                .all(|x| *x == 0.0 || (x - 0.5 / 0.3).abs() < 1e-5)
        );
        let mean = out.iter().map(|x| *x as f64).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
        // Same seed and name → same mask; another seed → another mask.
        assert_eq!(
            out,
            task_arithmetic("w", &base, &[&m], &[1.0], 0.3, 1.0, true, how)
        );
        let other = Sparsify::Dare {
            rescale: Rescale::Inverse,
            seed: 8,
        };
        assert_ne!(
            out,
            task_arithmetic("w", &base, &[&m], &[1.0], 0.3, 1.0, true, other)
        );
        // L1 matching keeps the tensor's L1 norm exactly.
        let mut d = vec![0.5f32; 1000];
        dare_drop(&mut d, 0.3, Rescale::L1, 1, "x", 0);
        let l1: f32 = d.iter().map(|x| x.abs()).sum();
        assert!((l1 - 500.0).abs() < 1e-2, "{l1}");
    }
}
