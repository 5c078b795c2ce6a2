//! Muon × Grokfast: the optimizer math of Phase 1, as tensor functions.
//!
//! - [`newton_schulz5`]: Muon's quintic Newton–Schulz orthogonalisation, coefficients
//!   (3.4445, −4.7750, 2.0315), 5 steps, on `G / (‖G‖_F + 1e-7)`, transposed when rows > cols.
//! - [`GrokfastEma`]: the EMA gradient filter of Grokfast, `μ_t = α μ_{t−1} + (1−α) g_t`,
//!   `ĝ_t = g_t + λ μ_t` — the *slow* component is amplified; μ starts at the first gradient
//!   (so ĝ_1 = (1 + λ) g_1), exactly as `ironjr/grokfast`'s `gradfilter_ema`.
//! - [`muon_update`]: Nesterov momentum (β), orthogonalised, scaled by √max(1, fan_out/fan_in)
//!   ([`muon_shape_scale`]: the reference's √max(1, rows/cols) on PyTorch's `[out, in]` weights;
//!   burn's weights are `[in, out]`).
//!
//! Muon applies to 2-D hidden weights only ([`is_muon_param`]); embeddings, the output and
//! halting heads, norms and biases use AdamW. [`qk_clip`] bounds attention logits (MuonClip).

use burn::tensor::Tensor;

pub mod muon_grokfast;
pub mod qk_clip;

pub use muon_grokfast::{MuonGrokfast, OptimizerConfig, StepStats};
pub use qk_clip::qk_clip;

pub const NS_COEFFS: (f64, f64, f64) = (3.4445, -4.7750, 2.0315);
pub const NS_STEPS: usize = 5;

/// Approximately orthogonalise `g` (singular values pushed into roughly [0.5, 1.5]).
pub fn newton_schulz5(g: Tensor<2>) -> Tensor<2> {
    let (a, b, c) = NS_COEFFS;
    let [rows, cols] = g.dims();
    let transposed = rows > cols;
    let g = if transposed { g.transpose() } else { g };
    let norm = g.clone().powf_scalar(2.0).sum().sqrt().add_scalar(1e-7);
    let mut x = g.div(norm.reshape([1, 1]));
    for _ in 0..NS_STEPS {
        let xt = x.clone().transpose();
        let m = x.clone().matmul(xt);
        let bm = m
            .clone()
            .mul_scalar(b)
            .add(m.clone().matmul(m).mul_scalar(c));
        x = x.clone().mul_scalar(a).add(bm.matmul(x));
    }
    if transposed { x.transpose() } else { x }
}

/// Muon's scale for a weight with `fan_in` inputs and `fan_out` outputs: √max(1, fan_out/fan_in),
/// so a matrix that widens its input gets a larger step (KellerJordan/Muon's
/// `max(1, rows/cols)**0.5` on PyTorch's `[out, in]` layout).
pub fn muon_shape_scale(fan_in: usize, fan_out: usize) -> f64 {
    (fan_out as f64 / fan_in as f64).max(1.0).sqrt()
}

/// Muon's update direction for gradient `g` of a burn weight (`[in, out]`) and its momentum buffer
/// `m` (updated in place).
pub fn muon_update(g: Tensor<2>, momentum: &mut Tensor<2>, beta: f64) -> Tensor<2> {
    // momentum.lerp_(g, 1 − β); u = g.lerp(momentum, β)
    *momentum = momentum
        .clone()
        .mul_scalar(beta)
        .add(g.clone().mul_scalar(1.0 - beta));
    let u = g
        .mul_scalar(1.0 - beta)
        .add(momentum.clone().mul_scalar(beta));
    let [fan_in, fan_out] = u.dims();
    let scale = muon_shape_scale(fan_in, fan_out);
    newton_schulz5(u).mul_scalar(scale)
}

/// Grokfast's EMA filter state for one parameter.
#[derive(Debug, Clone, Default)]
pub struct GrokfastEma<const D: usize> {
    mu: Option<Tensor<D>>,
}

impl<const D: usize> GrokfastEma<D> {
    pub fn new() -> Self {
        Self { mu: None }
    }

    /// Filter a gradient: returns `g + λ μ` after updating μ.
    pub fn filter(&mut self, g: Tensor<D>, alpha: f64, lambda: f64) -> Tensor<D> {
        let prev = self.mu.take().unwrap_or_else(|| g.clone());
        let mu = prev
            .mul_scalar(alpha)
            .add(g.clone().mul_scalar(1.0 - alpha));
        self.mu = Some(mu.clone());
        g.add(mu.mul_scalar(lambda))
    }

    pub fn state(&self) -> Option<&Tensor<D>> {
        self.mu.as_ref()
    }
}

/// Which parameters Muon updates: 2-D weights inside the blocks that are real matrices (not the
/// 3-wide memory gate projection); everything else is AdamW's.
pub fn is_muon_param(path: &str, dims: &[usize]) -> bool {
    dims.len() == 2 && path.starts_with("blocks.") && dims.iter().all(|d| *d > 3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn dev() -> Device {
        crate::device::test_device().inner()
    }

    fn mat(rows: usize, cols: usize, v: Vec<f32>) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v, [rows, cols]), &dev())
    }

    fn data(t: Tensor<2>) -> Vec<f64> {
        t.into_data()
            .try_to_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect()
    }

    /// Singular values of a rows×cols matrix (rows ≤ cols) via eig(X Xᵀ).
    fn singular_values(x: &[f64], rows: usize, cols: usize) -> Vec<f64> {
        let mut g = vec![0.0; rows * rows];
        for i in 0..rows {
            for j in 0..rows {
                g[i * rows + j] = (0..cols).map(|k| x[i * cols + k] * x[j * cols + k]).sum();
            }
        }
        crate::linalg::jacobi_eigen(&g, rows)
            .0
            .into_iter()
            .map(|e| e.max(0.0).sqrt())
            .collect()
    }

    #[test]
    fn newton_schulz_singular_values_land_in_band() {
        use rand::SeedableRng;
        use rand_distr::{Distribution, Normal};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let normal = Normal::new(0.0, 1.0).unwrap();
        for (rows, cols) in [(8, 16), (16, 8), (12, 12), (4, 32)] {
            // Gradient-like input: Gaussian, columns scaled over an order of magnitude.
            let v: Vec<f32> = (0..rows * cols)
                .map(|i| {
                    (normal.sample(&mut rng) * 10f64.powf((i % cols) as f64 / cols as f64 - 0.5))
                        as f32
                })
                .collect();
            let x = data(newton_schulz5(mat(rows, cols, v)));
            let (r, c, x) = if rows > cols {
                // Singular values of the transpose are the same.
                let mut t = vec![0.0; rows * cols];
                for i in 0..rows {
                    for j in 0..cols {
                        t[j * rows + i] = x[i * cols + j];
                    }
                }
                (cols, rows, t)
            } else {
                (rows, cols, x)
            };
            let sv = singular_values(&x, r, c);
            for s in &sv {
                assert!(
                    (0.6..=1.3).contains(s),
                    "{rows}x{cols}: singular value {s} outside [0.6, 1.3]: {sv:?}"
                );
            }
        }
    }

    /// The scalar fact behind the band: five quintic steps take every normalised singular value
    /// s ∈ [0.002, 1] into [0.6, 1.3] (smaller ones are amplified ≈ a⁵ = 483× but not further).
    #[test]
    fn quintic_maps_the_unit_interval_into_the_band() {
        let (a, b, c) = NS_COEFFS;
        let mut s0 = 0.002;
        while s0 <= 1.0 {
            let mut s = s0;
            for _ in 0..NS_STEPS {
                s = a * s + b * s.powi(3) + c * s.powi(5);
            }
            assert!((0.6..=1.3).contains(&s), "s0 = {s0} → {s}");
            s0 += 0.0005;
        }
    }

    #[test]
    fn newton_schulz_matches_the_scalar_quintic_on_a_diagonal() {
        // For diag(4, 1) every singular value follows s ← a s + b s³ + c s⁵ independently.
        let out = data(newton_schulz5(mat(2, 2, vec![4.0, 0.0, 0.0, 1.0])));
        let (a, b, c) = NS_COEFFS;
        let n = (17f64).sqrt() + 1e-7;
        let mut s = [4.0 / n, 1.0 / n];
        for _ in 0..5 {
            for v in &mut s {
                *v = a * *v + b * v.powi(3) + c * v.powi(5);
            }
        }
        assert!(
            (out[0] - s[0]).abs() < 1e-4 && (out[3] - s[1]).abs() < 1e-4,
            "{out:?} vs {s:?}"
        );
        assert!(out[1].abs() < 1e-6 && out[2].abs() < 1e-6);
    }

    #[test]
    fn grokfast_matches_a_hand_computed_example() {
        // α = 0.5, λ = 2. Step 1: μ = g1 = [1, −2], ĝ = 3·g1 = [3, −6].
        // Step 2: g2 = [3, 0], μ = 0.5·[1, −2] + 0.5·[3, 0] = [2, −1], ĝ = [3, 0] + 2·[2, −1] = [7, −2].
        let mut f = GrokfastEma::<2>::new();
        let g1 = mat(1, 2, vec![1.0, -2.0]);
        let g2 = mat(1, 2, vec![3.0, 0.0]);
        assert_eq!(data(f.filter(g1, 0.5, 2.0)), vec![3.0, -6.0]);
        assert_eq!(data(f.filter(g2, 0.5, 2.0)), vec![7.0, -2.0]);
        assert_eq!(data(f.state().unwrap().clone()), vec![2.0, -1.0]);
    }

    #[test]
    fn muon_update_uses_nesterov_momentum_and_shape_scaling() {
        // First step, β = 0.95: momentum = 0.05 g; u = 0.05 g + 0.95·0.05 g = 0.0975 g, and NS5
        // normalises the scale away, so the update equals NS5(g) · √max(1, fan_out/fan_in): a
        // [2 in, 4 out] weight gets √2.
        let g = mat(2, 4, vec![1.0, 0.5, -0.25, 2.0, 0.0, 1.0, 3.0, -1.0]);
        let mut m = Tensor::zeros([2, 4], &dev());
        let u = data(muon_update(g.clone(), &mut m, 0.95));
        let expected: Vec<f64> = data(newton_schulz5(g.clone()))
            .into_iter()
            .map(|v| v * 2f64.sqrt())
            .collect();
        for (a, b) in u.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-4, "{u:?} vs {expected:?}");
        }
        let mom = data(m);
        for (a, b) in mom.iter().zip(data(g)) {
            assert!((a - 0.05 * b).abs() < 1e-6);
        }
    }

    #[test]
    fn muon_scales_by_fan_out_over_fan_in_on_burns_in_out_layout() {
        // The reference scales PyTorch's [out, in] weights by √max(1, out/in): the FFN's up and
        // gate projections (d → d_ff) by √3, its down projection (d_ff → d) by 1. burn stores
        // the same weights as [in, out].
        let (d, d_ff) = (128, 384);
        assert!(
            (muon_shape_scale(d, d_ff) - 3f64.sqrt()).abs() < 1e-12,
            "ffn.up [d, d_ff]"
        );
        assert_eq!(muon_shape_scale(d_ff, d), 1.0, "ffn.down [d_ff, d]");
        assert_eq!(muon_shape_scale(d, d), 1.0, "square");
        // And the update applies it by the tensor's own dims: [in, out] = [4, 2] shrinks → 1.
        let g = mat(4, 2, vec![1.0, 0.5, -0.25, 2.0, 0.0, 1.0, 3.0, -1.0]);
        let mut m = Tensor::zeros([4, 2], &dev());
        let u = data(muon_update(g.clone(), &mut m, 0.95));
        for (a, b) in u.iter().zip(data(newton_schulz5(g))) {
            assert!((a - b).abs() < 1e-4);
        }
    }

    #[test]
    fn muon_param_selection() {
        assert!(is_muon_param("blocks.0.attn.wq.weight", &[128, 128]));
        assert!(!is_muon_param("blocks.1.memory.gates.weight", &[128, 3]));
        assert!(!is_muon_param("embed", &[4096, 128]));
        assert!(!is_muon_param("blocks.0.norm_attn.gain", &[128]));
        assert!(!is_muon_param("halt.weight", &[128, 1]));
    }
}
