//! Confidence intervals by the bootstrap over evaluation rows. Models scored on the *same* rows
//! are compared pairwise: every resample draws row indices once and recomputes both models'
//! perplexities on them, so the interval reflects the difference between the models, not the
//! difficulty of the rows both happened to get. 95% intervals are the 2.5th and 97.5th
//! percentiles of `resamples` draws from the `Bootstrap` stream of the step's seed.

use rand::Rng;
use serde::Serialize;

use super::Scores;
use crate::rng::{Stream, stream};

/// A perplexity with its 95% interval, and how much data it rests on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
    pub rows: usize,
    pub tokens: usize,
}

/// `a`'s perplexity relative to `b`'s on the same rows, `ppl_a / ppl_b − 1` (negative: `a` is
/// better), with its paired 95% interval.
pub fn relative_perplexity(a: &Scores, b: &Scores, resamples: usize, seed: u64) -> Estimate {
    assert_eq!(a.tokens, b.tokens, "paired scores must be on the same rows");
    let ratio = |idx: &[usize]| {
        let tokens: usize = idx.iter().map(|&i| a.tokens[i]).sum();
        let (na, nb): (f64, f64) = idx
            .iter()
            .map(|&i| (a.nll[i], b.nll[i]))
            .fold((0.0, 0.0), |(x, y), (p, q)| (x + p, y + q));
        ((na - nb) / tokens.max(1) as f64).exp() - 1.0
    };
    estimate(a, ratio, resamples, seed)
}

/// `s`'s perplexity with its 95% interval.
pub fn perplexity(s: &Scores, resamples: usize, seed: u64) -> Estimate {
    let ppl = |idx: &[usize]| {
        let tokens: usize = idx.iter().map(|&i| s.tokens[i]).sum();
        (idx.iter().map(|&i| s.nll[i]).sum::<f64>() / tokens.max(1) as f64).exp()
    };
    estimate(s, ppl, resamples, seed)
}

fn estimate(s: &Scores, stat: impl Fn(&[usize]) -> f64, resamples: usize, seed: u64) -> Estimate {
    let n = s.nll.len();
    let all: Vec<usize> = (0..n).collect();
    let mut rng = stream(seed, Stream::Bootstrap);
    let mut draws: Vec<f64> = (0..resamples)
        .map(|_| {
            let idx: Vec<usize> = (0..n).map(|_| rng.random_range(0..n.max(1))).collect();
            stat(&idx)
        })
        .collect();
    draws.sort_by(f64::total_cmp);
    let at = |q: f64| draws[((q * (draws.len() - 1) as f64).round() as usize).min(draws.len() - 1)];
    Estimate {
        value: stat(&all),
        lo: at(0.025),
        hi: at(0.975),
        rows: n,
        tokens: s.token_count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(nll_per_token: &[f64]) -> Scores {
        Scores {
            nll: nll_per_token.iter().map(|l| l * 10.0).collect(),
            tokens: vec![10; nll_per_token.len()],
            ..Scores::default()
        }
    }

    #[test]
    fn a_uniformly_better_model_has_an_interval_below_zero() {
        // b is worse than a by exactly 0.1 nats per token on every row: the ratio is e^-0.1 − 1
        // on every resample, so the interval collapses onto it.
        let rows: Vec<f64> = (0..50).map(|i| 2.0 + (i % 7) as f64 * 0.3).collect();
        let a = scores(&rows);
        let b = scores(&rows.iter().map(|l| l + 0.1).collect::<Vec<_>>());
        let e = relative_perplexity(&a, &b, 200, 1);
        let want = (-0.1f64).exp() - 1.0;
        assert!((e.value - want).abs() < 1e-12);
        assert!((e.lo - want).abs() < 1e-9 && (e.hi - want).abs() < 1e-9);
        assert_eq!((e.rows, e.tokens), (50, 500));
    }

    #[test]
    fn noise_widens_the_interval_and_an_equal_model_straddles_zero() {
        let rows: Vec<f64> = (0..200)
            .map(|i| 2.0 + ((i * 37) % 11) as f64 * 0.2)
            .collect();
        let a = scores(&rows);
        // b differs row by row in both directions, evenly.
        let b = scores(
            &rows
                .iter()
                .enumerate()
                .map(|(i, l)| l + if i % 2 == 0 { 0.3 } else { -0.3 })
                .collect::<Vec<_>>(),
        );
        let e = relative_perplexity(&a, &b, 500, 2);
        assert!(e.lo < 0.0 && e.hi > 0.0, "{e:?}");
        let p = perplexity(&a, 500, 3);
        assert!(p.lo < p.value && p.value < p.hi, "{p:?}");
        // Deterministic from the seed.
        assert_eq!(perplexity(&a, 500, 3), p);
    }
}
