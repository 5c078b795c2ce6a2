//! Absmean ternary weights and absmax int8 activations (BitNet b1.58's W1.58A8).

/// The smallest scale denominator: the reference code's clamp.
pub const EPS: f32 = 1e-5;

/// A tensor quantized to {−1, 0, +1}: `values[i] · scale ≈ w[i]` (`scale` = γ = mean|W|).
#[derive(Debug, Clone, PartialEq)]
pub struct Ternary {
    pub values: Vec<i8>,
    pub scale: f32,
}

impl Ternary {
    /// The dequantized weights `values · scale`.
    pub fn dequantize(&self) -> Vec<f32> {
        self.values
            .iter()
            .map(|&v| f32::from(v) * self.scale)
            .collect()
    }

    /// The share of zeros.
    pub fn sparsity(&self) -> f64 {
        if self.values.is_empty() {
            return 0.0;
        }
        self.values.iter().filter(|&&v| v == 0).count() as f64 / self.values.len() as f64
    }
}

/// BitNet b1.58's absmean quantization of a whole tensor: γ = max(mean|W|, ε),
/// `W_q = clamp(round(W / γ), −1, 1)`, one scale per tensor.
pub fn quantize_weights(w: &[f32]) -> Ternary {
    let mean = if w.is_empty() {
        0.0
    } else {
        (w.iter().map(|x| f64::from(x.abs())).sum::<f64>() / w.len() as f64) as f32
    };
    let gamma = mean.max(EPS);
    let s = 1.0 / gamma;
    let values = w
        .iter()
        .map(|&x| (x * s).round_ties_even().clamp(-1.0, 1.0) as i8)
        .collect();
    Ternary {
        values,
        scale: 1.0 / s,
    }
}

/// One token's activations as int8 by absmax: `x ≈ q / scale` with
/// `scale = 127 / max(max|x|, ε)`.
pub fn quantize_activations(x: &[f32]) -> (Vec<i8>, f32) {
    let max = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = 127.0 / max.max(EPS);
    let q = x
        .iter()
        .map(|&v| (v * scale).round_ties_even().clamp(-128.0, 127.0) as i8)
        .collect();
    (q, scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};

    #[test]
    fn absmean_quantization_of_a_hand_computed_tensor() {
        // mean|W| = (0.9 + 0.1 + 0.4 + 1.6 + 0.5 + 0.3) / 6 = 0.633…; W/γ = 1.42, −0.16, 0.63,
        // −2.53, 0.79, −0.47 → round → 1, 0, 1, −3 → −1, 1, 0.
        let w = [0.9, -0.1, 0.4, -1.6, 0.5, -0.3];
        let q = quantize_weights(&w);
        assert_eq!(q.values, [1, 0, 1, -1, 1, 0]);
        assert!((q.scale - 3.8 / 6.0).abs() < 1e-6, "{}", q.scale);
        let d = q.dequantize();
        assert!((d[0] - 0.633_333_3).abs() < 1e-6 && d[1] == 0.0 && d[3] < 0.0);
        assert!((q.sparsity() - 2.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn ties_round_to_even_and_all_zero_weights_stay_zero() {
        // γ = 1: W/γ = 0.5 and −0.5 round to 0, 1.5 to 2 → clipped to 1.
        let q = quantize_weights(&[0.5, -0.5, 1.5, -1.5]);
        assert_eq!(q.values, [0, 0, 1, -1]);
        let zero = quantize_weights(&[0.0; 5]);
        assert_eq!(zero.values, [0; 5]);
        assert_eq!(zero.scale, EPS);
    }

    #[test]
    fn a_gaussian_matrix_has_about_a_third_zeros() {
        // For W ~ N(0, σ²), γ = σ√(2/π) and a weight rounds to 0 when |W| < γ/2, so the
        // share of zeros is P(|Z| < 1/√(2π)) = erf(1/(2√π)) ≈ 0.310: "about a third".
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let normal = Normal::new(0.0f32, 0.02).unwrap();
        let w: Vec<f32> = (0..512 * 512).map(|_| normal.sample(&mut rng)).collect();
        let q = quantize_weights(&w);
        let zeros = q.sparsity();
        assert!((zeros - 1.0 / 3.0).abs() <= 0.03, "{zeros}");
        let plus = q.values.iter().filter(|&&v| v == 1).count() as f64 / w.len() as f64;
        let minus = q.values.iter().filter(|&&v| v == -1).count() as f64 / w.len() as f64;
        assert!((plus - minus).abs() < 0.01, "{plus} vs {minus}");
    }

    #[test]
    fn activations_use_the_int8_range_per_token() {
        let (q, s) = quantize_activations(&[0.5, -1.0, 0.25, 0.0]);
        assert_eq!(s, 127.0);
        assert_eq!(q, [64, -127, 32, 0]); // 63.5 → 64 (ties to even), 31.75 → 32
        let (q, _) = quantize_activations(&[0.0; 3]);
        assert_eq!(q, [0, 0, 0]);
        // Dequantized within half a step.
        let x = [0.3, -0.7, 0.11];
        let (q, s) = quantize_activations(&x);
        for (a, b) in x.iter().zip(&q) {
            assert!((a - f32::from(*b) / s).abs() <= 0.5 / s + 1e-7);
        }
    }
}
