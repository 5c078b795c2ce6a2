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

use super::CHUNK;
use rand::Rng;
use rayon::prelude::*;
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

/// `out[j] = f(j)` for every entry, chunks on rayon's threads.
fn fill(n: usize, f: impl Fn(usize) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0f32; n];
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, o)| {
        for (j, o) in o.iter_mut().enumerate() {
            *o = f(c * CHUNK + j);
        }
    });
    out
}

/// Weighted average of tensors.
pub fn linear(tensors: &[&[f32]], weights: &[f64], normalize: bool) -> Vec<f32> {
    let total: f64 = weights.iter().sum();
    let div = if normalize && total.abs() > EPS {
        total
    } else {
        1.0
    };
    fill(tensors[0].len(), |j| {
        let mut acc = 0f64;
        for (t, &w) in tensors.iter().zip(weights) {
            acc += w * t[j] as f64;
        }
        (acc / div) as f32
    })
}

/// Spherical interpolation from `a` (t = 0) to `b` (t = 1).
pub fn slerp(a: &[f32], b: &[f32], t: f64) -> Vec<f32> {
    let norm = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let (na, nb) = rayon::join(|| norm(a), || norm(b));
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
        return fill(a.len(), |j| {
            ((1.0 - t) * a[j] as f64 + t * b[j] as f64) as f32
        });
    }
    let theta0 = dot.acos();
    let sin0 = theta0.sin();
    let theta_t = theta0 * t;
    let s0 = (theta0 - theta_t).sin() / sin0;
    let s1 = theta_t.sin() / sin0;
    fill(a.len(), |j| (s0 * a[j] as f64 + s1 * b[j] as f64) as f32)
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
    if k >= n {
        return;
    }
    // The k-th largest magnitude t (with repeats): every entry above t is kept, and of those
    // equal to t, the first ones by position until k are kept — the top k by (magnitude
    // descending, position ascending). Selecting on a copy of the magnitudes' bits is one
    // contiguous pass, where selecting positions by magnitude jumps all over `delta`.
    let mut mags: Vec<u32> = delta.par_iter().map(|x| ordered(x.abs())).collect();
    let (_, &mut t, _) = mags.select_nth_unstable_by(k - 1, |x, y| y.cmp(x));
    drop(mags);
    let above = delta.par_iter().filter(|x| ordered(x.abs()) > t).count();
    let mut equal_kept = k - above;
    for d in delta.iter_mut() {
        let m = ordered(d.abs());
        if m > t {
            continue;
        }
        if m == t && equal_kept > 0 {
            equal_kept -= 1;
        } else {
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
    // Each model's task vector on its own thread (DARE's masks are per model streams).
    let deltas: Vec<Vec<f32>> = models
        .par_iter()
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
    fill(base.len(), |j| {
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
        (base[j] as f64 + lambda * mixed) as f32
    })
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

    /// The top k by (magnitude descending, position ascending), by a full sort.
    fn trim_by_sorting(delta: &[f32], density: f64) -> Vec<f32> {
        let k = ((density * delta.len() as f64) as usize).max(1);
        let mut idx: Vec<usize> = (0..delta.len()).collect();
        idx.sort_by_key(|&i| (std::cmp::Reverse(delta[i].abs().to_bits()), i));
        let mut out = vec![0.0; delta.len()];
        for &i in idx.iter().take(k) {
            out[i] = delta[i];
        }
        out
    }

    #[test]
    fn trimming_keeps_what_a_full_sort_keeps_ties_by_position() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        // Few distinct magnitudes and both signs, so the threshold is shared by many entries;
        // longer than one parallel chunk.
        let d: Vec<f32> = (0..3 * CHUNK + 17)
            .map(|_| rng.random_range(-4i32..=4) as f32 * 0.25)
            .collect();
        for density in [0.01, 0.3, 0.5, 0.77, 0.999] {
            let mut got = d.clone();
            magnitude_trim(&mut got, density);
            let want = trim_by_sorting(&d, density);
            assert_eq!(got, want, "density {density}");
            // At most k entries survive (kept zeros do not show).
            let k = ((density * d.len() as f64) as usize).max(1);
            assert!(got.iter().filter(|x| **x != 0.0).count() <= k);
        }
    }

    #[test]
    fn chunked_techniques_match_the_one_entry_at_a_time_formulas() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let n = 2 * CHUNK + 5;
        let mut sample =
            |s: f32| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0f32..1.0) * s).collect() };
        let (a, b, base) = (sample(1.0), sample(1.0), sample(0.1));
        let w = [0.3, 0.9];
        let lin = linear(&[&a, &b], &w, true);
        for j in [0, CHUNK - 1, CHUNK, n - 1] {
            let want = ((w[0] * a[j] as f64 + w[1] * b[j] as f64) / 1.2) as f32;
            assert_eq!(lin[j], want, "linear entry {j}");
        }
        let sl = slerp(&a, &b, 0.25);
        let na = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        let nb = b.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        let dot: f64 = a
            .iter()
            .zip(&b)
            .map(|(&x, &y)| (x as f64 / na) * (y as f64 / nb))
            .sum();
        let th = dot.acos();
        let (s0, s1) = ((th * 0.75).sin() / th.sin(), (th * 0.25).sin() / th.sin());
        for j in [0, CHUNK, n - 1] {
            assert_eq!(sl[j], (s0 * a[j] as f64 + s1 * b[j] as f64) as f32);
        }
        // TIES at full density: the elected-sign disjoint mean, entry by entry.
        let ties = task_arithmetic(
            "w",
            &base,
            &[&a, &b],
            &[1.0, 1.0],
            1.0,
            1.0,
            true,
            Sparsify::Ties,
        );
        for j in [1, CHUNK + 1, n - 2] {
            let (da, db) = ((a[j] - base[j]) as f64, (b[j] - base[j]) as f64);
            let s = if da + db >= 0.0 { 1.0 } else { -1.0 };
            let agree: Vec<f64> = [da, db]
                .into_iter()
                .filter(|x| *x != 0.0 && x.signum() == s)
                .collect();
            let mixed = agree.iter().sum::<f64>() / agree.len() as f64;
            assert_eq!(ties[j], (base[j] as f64 + mixed) as f32, "ties entry {j}");
        }
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
