//! The anti-theater checks of Quiet-STaR training (the seed's §3 failure mode "theater": thoughts
//! that look like reasoning but change nothing). Each check is a measured number against the
//! seed's threshold; this module owns the statistics and the verdicts, the training step measures
//! the numbers on held-out data.
//!
//! | check | measured | passes when |
//! |---|---|---|
//! | divergence | normalised edit distance between the direct and the with-thoughts greedy outputs | > 0.3 |
//! | ablation | accuracy drop when thoughts are replaced by random tokens of the same length | > 0.02 |
//! | length | mean thought length, in tokens | ≥ 5 |
//! | diversity | mean pairwise edit distance between the thoughts at one position | ≥ 3 |
//! | correlation | Pearson correlation between a thought's reward and its answer's correctness | > 0.5 |
//!
//! A check that cannot be measured (no variance to correlate, no pairs to compare) fails: a
//! number that does not exist does not pass.

use serde::Serialize;

/// The seed's thresholds.
pub const MIN_DIVERGENCE: f64 = 0.3;
pub const MIN_ABLATION_DROP: f64 = 0.02;
pub const MIN_THOUGHT_LENGTH: f64 = 5.0;
pub const MIN_DIVERSITY: f64 = 3.0;
pub const MIN_CORRELATION: f64 = 0.5;

/// Levenshtein distance between two token sequences (insertions, deletions, substitutions).
pub fn edit_distance(a: &[i64], b: &[i64]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, x) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, y) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(x != y);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Edit distance over the longer length: 0 for equal sequences, 1 for nothing in common.
pub fn normalised_edit_distance(a: &[i64], b: &[i64]) -> f64 {
    let n = a.len().max(b.len());
    if n == 0 {
        return 0.0;
    }
    edit_distance(a, b) as f64 / n as f64
}

/// Mean edit distance over every pair of `thoughts` (the thoughts sampled at one position);
/// `None` with fewer than two.
pub fn mean_pairwise_edit_distance(thoughts: &[Vec<i64>]) -> Option<f64> {
    let mut total = 0usize;
    let mut pairs = 0usize;
    for (i, a) in thoughts.iter().enumerate() {
        for b in &thoughts[i + 1..] {
            total += edit_distance(a, b);
            pairs += 1;
        }
    }
    (pairs > 0).then(|| total as f64 / pairs as f64)
}

/// Pearson correlation of paired samples; `None` when either side has no variance.
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len().min(y.len());
    if n < 2 {
        return None;
    }
    let mean = |v: &[f64]| v[..n].iter().sum::<f64>() / n as f64;
    let (mx, my) = (mean(x), mean(y));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (dx, dy) = (x[i] - mx, y[i] - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

/// The measured numbers of one round of checks (`None`: could not be measured).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Measured {
    pub divergence: Option<f64>,
    pub ablation_drop: Option<f64>,
    pub thought_length: Option<f64>,
    pub diversity: Option<f64>,
    pub correlation: Option<f64>,
}

/// One check's verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub name: &'static str,
    pub value: Option<f64>,
    pub threshold: f64,
    /// `>` or `>=`.
    pub op: &'static str,
    pub passed: bool,
}

impl Measured {
    /// Every check against the seed's threshold, in the table's order.
    pub fn verdicts(&self) -> Vec<Verdict> {
        let check = |name, value: Option<f64>, op, threshold: f64| Verdict {
            name,
            value,
            threshold,
            op,
            passed: value.is_some_and(|v| match op {
                ">" => v > threshold,
                _ => v >= threshold,
            }),
        };
        vec![
            check("divergence", self.divergence, ">", MIN_DIVERGENCE),
            check("ablation", self.ablation_drop, ">", MIN_ABLATION_DROP),
            check("length", self.thought_length, ">=", MIN_THOUGHT_LENGTH),
            check("diversity", self.diversity, ">=", MIN_DIVERSITY),
            check("correlation", self.correlation, ">", MIN_CORRELATION),
        ]
    }

    /// Whether every check passed.
    pub fn all_passed(&self) -> bool {
        self.verdicts().iter().all(|v| v.passed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distances_count_the_edits() {
        assert_eq!(edit_distance(&[1, 2, 3], &[1, 2, 3]), 0);
        assert_eq!(edit_distance(&[1, 2, 3], &[1, 9, 3]), 1); // a substitution
        assert_eq!(edit_distance(&[1, 2, 3], &[1, 3]), 1); // a deletion
        assert_eq!(edit_distance(&[], &[4, 5]), 2);
        assert_eq!(edit_distance(&[1, 2, 3, 4], &[4, 3, 2, 1]), 4);
        assert_eq!(normalised_edit_distance(&[1, 2], &[1, 2]), 0.0);
        assert_eq!(normalised_edit_distance(&[1, 2], &[3, 4, 5, 6]), 1.0);
        assert_eq!(normalised_edit_distance(&[], &[]), 0.0);
    }

    #[test]
    fn constant_thoughts_have_no_diversity_and_fail() {
        let same = vec![vec![7, 8, 9, 10, 11]; 4];
        assert_eq!(mean_pairwise_edit_distance(&same), Some(0.0));
        let m = Measured {
            diversity: mean_pairwise_edit_distance(&same),
            ..Measured::default()
        };
        assert!(!m.verdicts()[3].passed);
        // Different thoughts: (3 + 5 + 5) / 3 pairs.
        let varied = vec![
            vec![1, 2, 3, 4, 5],
            vec![1, 2, 9, 9, 9],
            vec![6, 6, 6, 6, 6],
        ];
        assert_eq!(mean_pairwise_edit_distance(&varied), Some(13.0 / 3.0));
        assert_eq!(mean_pairwise_edit_distance(&varied[..1]), None);
    }

    #[test]
    fn correlation_is_pearsons_and_undefined_without_variance() {
        let r = pearson(&[1.0, 2.0, 3.0, 4.0], &[2.0, 4.0, 6.0, 8.0]).unwrap();
        assert!((r - 1.0).abs() < 1e-12);
        let r = pearson(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]).unwrap();
        assert!((r + 1.0).abs() < 1e-12);
        // Every answer right (or every reward equal): nothing to correlate, so the check fails.
        assert_eq!(pearson(&[0.1, 0.5, 0.9], &[1.0, 1.0, 1.0]), None);
        let m = Measured {
            correlation: None,
            ..Measured::default()
        };
        assert!(!m.verdicts()[4].passed);
    }

    #[test]
    fn verdicts_use_the_seeds_thresholds_and_strictness() {
        let at = Measured {
            divergence: Some(0.3),
            ablation_drop: Some(0.02),
            thought_length: Some(5.0),
            diversity: Some(3.0),
            correlation: Some(0.5),
        };
        let passed: Vec<bool> = at.verdicts().iter().map(|v| v.passed).collect();
        // At the threshold: the strict checks fail, the inclusive ones pass.
        assert_eq!(passed, [false, false, true, true, false]);
        assert!(!at.all_passed());
        let good = Measured {
            divergence: Some(0.5),
            ablation_drop: Some(0.1),
            thought_length: Some(8.0),
            diversity: Some(4.0),
            correlation: Some(0.7),
        };
        assert!(good.all_passed());
        // A model whose mixing weight is forced to 0: thoughts change nothing, so the direct
        // and with-thoughts outputs agree and ablating the thoughts costs nothing.
        let ignored = Measured {
            divergence: Some(0.0),
            ablation_drop: Some(0.0),
            ..good
        };
        let failed: Vec<&str> = ignored
            .verdicts()
            .iter()
            .filter(|v| !v.passed)
            .map(|v| v.name)
            .collect();
        assert_eq!(failed, ["divergence", "ablation"]);
    }
}
