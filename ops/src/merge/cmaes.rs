//! CMA-ES (Hansen's (μ/μ_w, λ) covariance matrix adaptation evolution strategy, as in his
//! `purecma`), ask-and-tell, maximising. It searches the continuous merge parameters of the
//! evolution (mergekit-evolve does the same with CMA-ES). Written here rather than taken from a
//! crate because the evolution needs what the crates do not give together: batches of candidates
//! evaluated in parallel through the fitness memo, a state that serialises into the step's
//! checkpoint after every generation, and samples drawn from forge's named random streams so a
//! resumed run draws the same ones.

use rand::Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::linalg::jacobi_eigen;

/// The search distribution and its evolution paths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CmaEs {
    pub mean: Vec<f64>,
    pub sigma: f64,
    /// Covariance, row-major n × n.
    pub cov: Vec<f64>,
    pub path_sigma: Vec<f64>,
    pub path_cov: Vec<f64>,
    /// Samples per generation (λ).
    pub lambda: usize,
    /// Generations told so far.
    pub generation: u32,
}

/// One sample: its coordinates and the normalised step that produced it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub x: Vec<f64>,
}

struct Constants {
    n: usize,
    mu: usize,
    weights: Vec<f64>,
    mu_eff: f64,
    c_sigma: f64,
    d_sigma: f64,
    c_c: f64,
    c_1: f64,
    c_mu: f64,
    chi_n: f64,
}

impl CmaEs {
    /// Start at `mean` with step size `sigma` and `lambda` samples per generation (at least 2).
    pub fn new(mean: Vec<f64>, sigma: f64, lambda: usize) -> Self {
        let n = mean.len();
        let mut cov = vec![0.0; n * n];
        for i in 0..n {
            cov[i * n + i] = 1.0;
        }
        Self {
            mean,
            sigma,
            cov,
            path_sigma: vec![0.0; n],
            path_cov: vec![0.0; n],
            lambda: lambda.max(2),
            generation: 0,
        }
    }

    fn constants(&self) -> Constants {
        let n = self.mean.len();
        let nf = n as f64;
        let mu = self.lambda / 2;
        let raw: Vec<f64> = (0..mu)
            .map(|i| (mu as f64 + 0.5).ln() - ((i + 1) as f64).ln())
            .collect();
        let sum: f64 = raw.iter().sum();
        let weights: Vec<f64> = raw.iter().map(|w| w / sum).collect();
        let mu_eff = 1.0 / weights.iter().map(|w| w * w).sum::<f64>();
        let c_sigma = (mu_eff + 2.0) / (nf + mu_eff + 5.0);
        Constants {
            n,
            mu,
            d_sigma: 1.0 + 2.0 * ((mu_eff - 1.0) / (nf + 1.0)).sqrt().max(1.0) - 2.0 + c_sigma,
            c_c: (4.0 + mu_eff / nf) / (nf + 4.0 + 2.0 * mu_eff / nf),
            c_1: 2.0 / ((nf + 1.3).powi(2) + mu_eff),
            c_mu: (1.0 - 2.0 / ((nf + 1.3).powi(2) + mu_eff))
                .min(2.0 * (mu_eff - 2.0 + 1.0 / mu_eff) / ((nf + 2.0).powi(2) + mu_eff)),
            chi_n: nf.sqrt() * (1.0 - 1.0 / (4.0 * nf) + 1.0 / (21.0 * nf * nf)),
            weights,
            mu_eff,
            c_sigma,
        }
    }

    /// λ samples of the current distribution, drawn from `rng`.
    pub fn ask(&self, rng: &mut impl Rng) -> Vec<Sample> {
        let n = self.mean.len();
        let (values, vectors) = jacobi_eigen(&self.cov, n);
        let d: Vec<f64> = values.iter().map(|v| v.max(1e-20).sqrt()).collect();
        (0..self.lambda)
            .map(|_| {
                let z: Vec<f64> = (0..n).map(|_| rng.sample(StandardNormal)).collect();
                // y = B (D ⊙ z)
                let x = (0..n)
                    .map(|i| {
                        let y: f64 = (0..n).map(|k| vectors[i * n + k] * d[k] * z[k]).sum();
                        self.mean[i] + self.sigma * y
                    })
                    .collect();
                Sample { x }
            })
            .collect()
    }

    /// Update the distribution from `samples` and their fitness (higher is better; a
    /// non-finite fitness ranks last).
    pub fn tell(&mut self, samples: &[Sample], fitness: &[f64]) {
        let k = self.constants();
        let n = k.n;
        let mut order: Vec<usize> = (0..samples.len()).collect();
        let key = |i: usize| {
            if fitness[i].is_finite() {
                fitness[i]
            } else {
                f64::NEG_INFINITY
            }
        };
        order.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
        let old = self.mean.clone();
        let ys: Vec<Vec<f64>> = order[..k.mu]
            .iter()
            .map(|&i| {
                (0..n)
                    .map(|j| (samples[i].x[j] - old[j]) / self.sigma)
                    .collect()
            })
            .collect();
        let step: Vec<f64> = (0..n)
            .map(|j| ys.iter().zip(&k.weights).map(|(y, w)| w * y[j]).sum())
            .collect();
        for j in 0..n {
            self.mean[j] = old[j] + self.sigma * step[j];
        }
        // C^{-1/2} step, through the eigendecomposition.
        let (values, vectors) = jacobi_eigen(&self.cov, n);
        let bt_step: Vec<f64> = (0..n)
            .map(|a| (0..n).map(|i| vectors[i * n + a] * step[i]).sum::<f64>())
            .collect();
        let whitened: Vec<f64> = (0..n)
            .map(|i| {
                (0..n)
                    .map(|a| vectors[i * n + a] * bt_step[a] / values[a].max(1e-20).sqrt())
                    .sum()
            })
            .collect();
        let cs = (k.c_sigma * (2.0 - k.c_sigma) * k.mu_eff).sqrt();
        for (p, w) in self.path_sigma.iter_mut().zip(&whitened) {
            *p = (1.0 - k.c_sigma) * *p + cs * w;
        }
        let ps_norm = self.path_sigma.iter().map(|v| v * v).sum::<f64>().sqrt();
        let g = f64::from(self.generation + 1);
        let h_sigma = ps_norm / (1.0 - (1.0 - k.c_sigma).powf(2.0 * g)).sqrt() / k.chi_n
            < 1.4 + 2.0 / (n as f64 + 1.0);
        let h = if h_sigma { 1.0 } else { 0.0 };
        let cc = (k.c_c * (2.0 - k.c_c) * k.mu_eff).sqrt();
        for (p, s) in self.path_cov.iter_mut().zip(&step) {
            *p = (1.0 - k.c_c) * *p + h * cc * s;
        }
        let decay = 1.0 - k.c_1 - k.c_mu + (1.0 - h) * k.c_1 * k.c_c * (2.0 - k.c_c);
        for a in 0..n {
            for b in 0..n {
                let rank_mu: f64 = ys
                    .iter()
                    .zip(&k.weights)
                    .map(|(y, w)| w * y[a] * y[b])
                    .sum();
                self.cov[a * n + b] = decay * self.cov[a * n + b]
                    + k.c_1 * self.path_cov[a] * self.path_cov[b]
                    + k.c_mu * rank_mu;
            }
        }
        self.sigma *= ((k.c_sigma / k.d_sigma) * (ps_norm / k.chi_n - 1.0)).exp();
        self.generation += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::{Stream, stream};

    #[test]
    fn it_finds_the_optimum_of_an_ill_conditioned_quadratic() {
        // Maximise −Σ 10^i (x_i − t_i)²: a rotated-free but badly scaled bowl.
        let target = [0.7, -1.2, 2.0, 0.1, -0.4];
        let f = |x: &[f64]| {
            -x.iter()
                .zip(&target)
                .enumerate()
                .map(|(i, (a, b))| 10f64.powi(i as i32) * (a - b).powi(2))
                .sum::<f64>()
        };
        let mut es = CmaEs::new(vec![0.0; 5], 1.0, 10);
        for g in 0..200 {
            let samples = es.ask(&mut stream(7, Stream::Search { generation: g }));
            let fit: Vec<f64> = samples.iter().map(|s| f(&s.x)).collect();
            es.tell(&samples, &fit);
        }
        for (m, t) in es.mean.iter().zip(&target) {
            assert!((m - t).abs() < 1e-3, "{:?}", es.mean);
        }
    }

    #[test]
    fn the_state_round_trips_and_the_search_is_reproducible() {
        let run = |stop: Option<u32>, from: Option<CmaEs>| {
            let mut es = from.unwrap_or_else(|| CmaEs::new(vec![1.0, 1.0], 0.5, 6));
            while es.generation < 8 {
                if stop == Some(es.generation) {
                    break;
                }
                let s = es.ask(&mut stream(
                    3,
                    Stream::Search {
                        generation: es.generation,
                    },
                ));
                let fit: Vec<f64> = s
                    .iter()
                    .map(|s| -(s.x[0].powi(2) + s.x[1].powi(2)))
                    .collect();
                es.tell(&s, &fit);
            }
            es
        };
        let whole = run(None, None);
        let half: CmaEs =
            serde_json::from_str(&serde_json::to_string(&run(Some(4), None)).unwrap()).unwrap();
        assert_eq!(run(None, Some(half)), whole);
    }
}
