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
//!
//! [`measure`] takes the numbers on held-out data: greedy outputs of held-out prompts with and
//! without thoughts (divergence), and Quiet-STaR's parallel thinking over held-out rows with the
//! model's sampled thoughts and with random ones (ablation: next-token accuracy of the mixed
//! prediction; length; diversity; correlation of each thought's reward with whether its mixed
//! prediction is right). [`Checks`] runs them as the training loop's [`Monitor`].

use burn::tensor::Device;
use serde::Serialize;

use super::quiet_star::{Drawn, ThoughtSettings, greedy_with_thoughts, think};
use super::trainer::{Checked, Monitor};
use crate::error::OpError;
use crate::eval::{Decoding, greedy_batch};
use crate::model::{ModelConfig, Tables, TrmTitansMag};

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

    /// The names of the checks that failed, in the checks' order.
    pub fn failed(&self) -> Vec<&'static str> {
        self.verdicts()
            .into_iter()
            .filter(|v| !v.passed)
            .map(|v| v.name)
            .collect()
    }
}

/// Tokens of a thought up to its first end, eos, bos or padding token (a thought that closes
/// itself early is that much shorter).
pub fn effective_length(thought: &[i64], end: i64) -> usize {
    thought
        .iter()
        .position(|&t| t == end || (0..=2).contains(&t))
        .unwrap_or(thought.len())
}

/// What the checks are measured on: held-out data the step never trains on.
pub struct CheckSet {
    /// Rows (`seq + 1` ids) thought about after every position.
    pub rows: Vec<Vec<i64>>,
    /// Prompts answered greedily with and without thoughts.
    pub prompts: Vec<Vec<i64>>,
    /// Tokens generated per prompt.
    pub max_new: usize,
    /// The ids random thoughts are drawn from (`low..high`: ordinary tokens).
    pub random_ids: (i64, i64),
}

/// The measured numbers and what they rest on.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Measurement {
    pub measured: Measured,
    /// Next-token accuracy of the mixed prediction with the model's thoughts, with random ones.
    pub accuracy_with_thoughts: f64,
    pub accuracy_random_thoughts: f64,
    /// Scored positions (× thoughts for the accuracies) and prompts.
    pub positions: usize,
    pub prompts: usize,
}

impl Measurement {
    /// The numbers under the seed's names, each check's value beside its `_passed` flag (an
    /// unmeasurable value is left out and its flag is 0).
    pub fn metrics(&self) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        for v in self.measured.verdicts() {
            if let Some(x) = v.value {
                out.push((format!("anti_theater/{}", v.name), x));
            }
            out.push((
                format!("anti_theater/{}_passed", v.name),
                f64::from(u8::from(v.passed)),
            ));
        }
        out.push((
            "anti_theater/all_passed".into(),
            f64::from(u8::from(self.measured.all_passed())),
        ));
        out.push((
            "anti_theater/accuracy_with_thoughts".into(),
            self.accuracy_with_thoughts,
        ));
        out.push((
            "anti_theater/accuracy_random_thoughts".into(),
            self.accuracy_random_thoughts,
        ));
        out.push(("anti_theater/positions".into(), self.positions as f64));
        out.push(("anti_theater/prompts".into(), self.prompts as f64));
        out
    }

    /// One line: every check with its value, threshold and verdict.
    pub fn summary(&self) -> String {
        self.measured
            .verdicts()
            .iter()
            .map(|v| {
                let value = v.value.map_or("unmeasurable".into(), |x| format!("{x:.3}"));
                let mark = if v.passed { "ok" } else { "FAILED" };
                format!("{} {value} (needs {} {}) {mark}", v.name, v.op, v.threshold)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Measure the five checks for `model` on `set` (`rng` draws the sampled and random thoughts).
#[allow(clippy::too_many_arguments)]
pub fn measure(
    model: &TrmTitansMag,
    cfg: &ModelConfig,
    tables: &Tables,
    st: &ThoughtSettings,
    set: &CheckSet,
    eos: i64,
    rng: &mut impl rand::Rng,
    device: &Device,
) -> Measurement {
    let head = model
        .talk
        .as_ref()
        .expect("a Quiet-STaR model has a mixing head");
    let thought =
        |drawn, rng: &mut _| think(model, head, &set.rows, cfg, tables, st, drawn, rng, device);
    let own = thought(Drawn::Sampled, rng);
    let (low, high) = set.random_ids;
    let random = thought(Drawn::Random { low, high }, rng);
    let (b, s) = (set.rows.len(), set.rows[0].len() - 1);
    let accuracy = |t: &super::quiet_star::Thought| {
        let (mut right, mut n) = (0usize, 0usize);
        for c in &t.correct {
            for (i, ok) in c.iter().enumerate() {
                if t.valid[i] {
                    right += usize::from(*ok);
                    n += 1;
                }
            }
        }
        right as f64 / n.max(1) as f64
    };
    let (mut lengths, mut thoughts) = (Vec::new(), 0usize);
    let (mut diversity, mut compared) = (0.0, 0usize);
    let (mut rewards, mut correct) = (Vec::new(), Vec::new());
    for r in 0..b {
        for j in 0..s {
            let i = r * s + j;
            if !own.valid[i] {
                continue;
            }
            let here: Vec<Vec<i64>> = own.tokens.iter().map(|t| t[r][j].clone()).collect();
            for (k, th) in here.iter().enumerate() {
                lengths.push(effective_length(th, st.end));
                thoughts += 1;
                rewards.push(f64::from(own.rewards[k][i]));
                correct.push(f64::from(u8::from(own.correct[k][i])));
            }
            if let Some(d) = mean_pairwise_edit_distance(&here) {
                diversity += d;
                compared += 1;
            }
        }
    }
    // Divergence: the greedy outputs with and without thoughts, per prompt.
    let never = |_: &[i64]| false;
    let text = |_: &[i64]| String::new();
    let d = Decoding {
        cfg,
        eos,
        tables,
        device,
        decode: &text,
    };
    let direct = greedy_batch(model, set.prompts.clone(), set.max_new, &d, &never);
    let divergences: Vec<f64> = set
        .prompts
        .iter()
        .zip(&direct)
        .map(|(p, direct)| {
            let with = greedy_with_thoughts(
                model,
                cfg,
                tables,
                p,
                set.max_new,
                st,
                eos,
                super::quiet_star::ThoughtSource::Greedy,
                device,
            );
            normalised_edit_distance(direct, &with.ids)
        })
        .collect();
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let (with, without) = (accuracy(&own), accuracy(&random));
    Measurement {
        measured: Measured {
            divergence: mean(&divergences),
            ablation_drop: Some(with - without),
            thought_length: (thoughts > 0)
                .then(|| lengths.iter().sum::<usize>() as f64 / thoughts as f64),
            diversity: (compared > 0).then(|| diversity / compared as f64),
            correlation: pearson(&rewards, &correct),
        },
        accuracy_with_thoughts: with,
        accuracy_random_thoughts: without,
        positions: lengths.len() / st.num_thoughts.max(1),
        prompts: set.prompts.len(),
    }
}

/// The anti-theater checks as the training loop's [`Monitor`]: measured on `set` every `every`
/// steps and at the end, with random draws from [`crate::rng::Stream::TheaterCheck`].
pub struct Checks<'a> {
    pub cfg: &'a ModelConfig,
    pub tables: &'a Tables,
    pub settings: &'a ThoughtSettings,
    pub set: &'a CheckSet,
    pub eos: i64,
    pub seed: u64,
    pub every: u64,
    pub max_interventions: u32,
    pub fail_when_exhausted: bool,
    pub device: &'a Device,
}

impl Monitor for Checks<'_> {
    fn every(&self) -> u64 {
        self.every
    }
    fn max_interventions(&self) -> u32 {
        self.max_interventions
    }
    fn fail_when_exhausted(&self) -> bool {
        self.fail_when_exhausted
    }
    fn check(&self, model: &TrmTitansMag, step: u64) -> Result<Checked, OpError> {
        let mut rng = crate::rng::stream(self.seed, crate::rng::Stream::TheaterCheck { step });
        let m = measure(
            model,
            self.cfg,
            self.tables,
            self.settings,
            self.set,
            self.eos,
            &mut rng,
            self.device,
        );
        Ok(Checked {
            passed: m.measured.all_passed(),
            metrics: m.metrics(),
            summary: m.summary(),
        })
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
    fn a_thought_that_closes_itself_early_is_that_much_shorter() {
        let end = 4;
        assert_eq!(effective_length(&[20, 21, 22, 23, 24], end), 5);
        // Closed by the end token after two tokens; eos, bos and padding end it too.
        assert_eq!(effective_length(&[20, 21, end, 23, 24], end), 2);
        assert_eq!(effective_length(&[20, 2, 22, 23, 24], end), 1);
        assert_eq!(effective_length(&[0, 21, 22, 23, 24], end), 0);
        let m = Measured {
            thought_length: Some(effective_length(&[20, 21, end, 23, 24], end) as f64),
            ..Measured::default()
        };
        assert!(
            !m.verdicts()[2].passed,
            "a 2-token thought fails the length check"
        );
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
        let failed = ignored.failed();
        assert_eq!(failed, ["divergence", "ablation"]);
    }

    mod measured_on_a_model {
        use burn::module::Param;
        use burn::tensor::{Tensor, TensorData};

        use super::super::*;
        use crate::train::Targets;
        use crate::train::quiet_star::ThoughtSource;

        fn config() -> ModelConfig {
            ModelConfig {
                memory_layers: vec![0],
                ltm_slots: 8,
                mem_chunk: 4,
                max_seq: 48,
                mixing_head: true,
                ..ModelConfig::micro()
            }
        }

        fn settings(temperature: f64) -> ThoughtSettings {
            ThoughtSettings {
                num_thoughts: 3,
                thought_length: 5,
                n_true: 2,
                temperature,
                start: 3,
                end: 4,
                reward_threshold: 0.0,
                targets: Targets::All,
            }
        }

        fn set() -> CheckSet {
            CheckSet {
                rows: vec![(15..27).collect(), (20..32).collect()],
                prompts: vec![vec![1, 20, 21, 22], vec![1, 30, 31]],
                max_new: 8,
                random_ids: (15, 40),
            }
        }

        fn measure_with(model: &TrmTitansMag, temperature: f64, seed: u64) -> Measurement {
            use rand::SeedableRng;
            let cfg = config();
            let dev = crate::device::test_device();
            let tables = Tables::new(&cfg, &dev);
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            measure(
                model,
                &cfg,
                &tables,
                &settings(temperature),
                &set(),
                2,
                &mut rng,
                &dev,
            )
        }

        fn with_mixing_bias(mut model: TrmTitansMag, bias: f32) -> TrmTitansMag {
            let dev = crate::device::test_device();
            let mut head = model.talk.clone().expect("a mixing head");
            head.bias =
                Param::from_tensor(Tensor::from_data(TensorData::new(vec![bias], [1]), &dev));
            model.talk = Some(head);
            model
        }

        #[test]
        fn with_its_mixing_weight_forced_to_zero_thoughts_change_nothing_and_the_checks_fail() {
            use crate::eval::{Decoding, greedy_ids};
            use rand::SeedableRng;
            let cfg = ModelConfig {
                max_seq: 64,
                ..config()
            };
            let dev = crate::device::test_device();
            let mut model = TrmTitansMag::new(&cfg, 9, &dev);
            let tables = Tables::new(&cfg, &dev);
            let st = ThoughtSettings {
                num_thoughts: 2,
                n_true: 2,
                ..settings(1.0)
            };
            let prompt = [1, 20, 21, 22, 23];
            let decode = |ids: &[i64]| format!("{ids:?}");
            let d = Decoding {
                cfg: &cfg,
                eos: 2,
                tables: &tables,
                device: &dev,
                decode: &decode,
            };
            let direct = greedy_ids(&model, prompt.to_vec(), 12, &d, &|_| false);
            let run = |model: &TrmTitansMag, source| {
                super::super::greedy_with_thoughts(
                    model, &cfg, &tables, &prompt, 12, &st, 2, source, &dev,
                )
            };
            // w = σ(−40) ≈ 0: the mixed state is the state before the thought.
            let mut head = model.talk.clone().unwrap();
            head.bias =
                Param::from_tensor(Tensor::from_data(TensorData::new(vec![-40f32], [1]), &dev));
            model.talk = Some(head);
            let thinking = run(&model, ThoughtSource::Greedy);
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
            let ablated = run(
                &model,
                ThoughtSource::Random {
                    rng: &mut rng,
                    low: 15,
                    high: 40,
                },
            );
            assert!(!thinking.thoughts.is_empty() && thinking.thoughts.len() <= 12);
            assert!(thinking.thoughts.iter().all(|t| t.len() == 5));
            assert_ne!(
                thinking.thoughts, ablated.thoughts,
                "the ablation replaces the thoughts"
            );
            let divergence = normalised_edit_distance(&direct, &thinking.ids);
            assert_eq!(
                divergence, 0.0,
                "thoughts the mix ignores change the output"
            );
            // Random thoughts give the same answers, so any accuracy over them is the same: here,
            // the share of tokens agreeing with the direct output.
            assert_eq!(thinking.ids, ablated.ids);
            let accuracy = |ids: &[i64]| {
                ids.iter().zip(&direct).filter(|(a, b)| a == b).count() as f64 / direct.len() as f64
            };
            let drop = accuracy(&thinking.ids) - accuracy(&ablated.ids);
            let m = Measured {
                divergence: Some(divergence),
                ablation_drop: Some(drop),
                ..Measured::default()
            };
            let v = m.verdicts();
            assert!(!v[0].passed && !v[1].passed && !m.all_passed());
            // With the post-thought state weighted fully, the output follows the thoughts.
            let mut head = model.talk.clone().unwrap();
            head.bias =
                Param::from_tensor(Tensor::from_data(TensorData::new(vec![40f32], [1]), &dev));
            model.talk = Some(head);
            let listening = run(&model, ThoughtSource::Greedy);
            assert!(
                normalised_edit_distance(&direct, &listening.ids) > 0.0,
                "a model that uses its thoughts should answer differently: {direct:?} vs {:?}",
                listening.ids
            );
        }

        #[test]
        fn a_model_whose_mixing_weight_is_forced_to_zero_fails_divergence_and_ablation() {
            let dev = crate::device::test_device();
            let model = with_mixing_bias(TrmTitansMag::new(&config(), 9, &dev), -40.0);
            let m = measure_with(&model, 1.0, 1);
            // The mixed prediction is the one before the thought, whatever the thought: the
            // outputs agree exactly and random thoughts predict exactly as well.
            assert_eq!(m.measured.divergence, Some(0.0));
            assert_eq!(m.measured.ablation_drop, Some(0.0));
            assert_eq!(m.accuracy_with_thoughts, m.accuracy_random_thoughts);
            let failed = m.measured.failed();
            assert!(
                failed.starts_with(&["divergence", "ablation"]),
                "{failed:?}"
            );
            assert!(!m.measured.all_passed());
            assert_eq!(m.positions, 2 * 11);
            assert_eq!(m.prompts, 2);
            // Length is measured, not assumed: 5 tokens unless a thought closes early.
            let len = m.measured.thought_length.unwrap();
            assert!(len > 0.0 && len <= 5.0, "{len}");
            // The metrics carry every check's value and flag.
            let names: Vec<String> = m.metrics().into_iter().map(|(k, _)| k).collect();
            for k in [
                "anti_theater/divergence",
                "anti_theater/divergence_passed",
                "anti_theater/all_passed",
            ] {
                assert!(names.iter().any(|n| n == k), "{k}");
            }
        }

        #[test]
        fn a_model_that_uses_its_thoughts_moves_divergence_and_constant_thoughts_fail_diversity() {
            let dev = crate::device::test_device();
            let model = TrmTitansMag::new(&config(), 9, &dev);
            // Fully weighted post-thought states: the output follows the thought.
            let listening = measure_with(&with_mixing_bias(model.clone(), 40.0), 1.0, 1);
            assert!(
                listening.measured.divergence.unwrap() > 0.0,
                "{:?}",
                listening.measured
            );
            // Sampled at a vanishing temperature, the thoughts at one position are one thought.
            let constant = measure_with(&model, 1e-6, 1);
            assert_eq!(constant.measured.diversity, Some(0.0));
            assert!(!constant.measured.verdicts()[3].passed);
            // At temperature 1 they differ.
            let varied = measure_with(&model, 1.0, 1);
            assert!(varied.measured.diversity.unwrap() > 0.0);
        }

        /// The text's symbols, and fillers a thought pads itself with. A thought writes symbol
        /// `s` as `s + 8` (its own range), so its answer is the one such token in context.
        const SYMBOLS: std::ops::Range<i64> = 16..24;
        const FILLERS: std::ops::Range<i64> = 32..40;
        const SPELLED: i64 = SYMBOLS.end - SYMBOLS.start;

        /// The rule the texts follow: each symbol is the one three places on, mod 8.
        fn next_symbol(s: i64) -> i64 {
            SYMBOLS.start + (s - SYMBOLS.start + 3) % SPELLED
        }

        fn chain(first: i64, len: usize) -> Vec<i64> {
            std::iter::successors(Some(first), |&s| Some(next_symbol(s)))
                .take(len)
                .collect()
        }

        /// A training record: a chain, then `[thinking]`, the next symbol spelled as a thought
        /// writes it (right 60% of the time, a random symbol otherwise), five random fillers,
        /// `[/endthinking]` and the thought's symbol again, padded to 23 ids. With baking's
        /// targets (the start token and what follows), the model learns to find the next symbol
        /// only in its thought and to answer what the thought said, never to answer directly.
        fn record(rng: &mut impl rand::Rng) -> Vec<i64> {
            let mut row = chain(rng.random_range(SYMBOLS), rng.random_range(1..=12));
            let right = next_symbol(*row.last().expect("a chain"));
            let said = if rng.random_bool(0.6) {
                right
            } else {
                rng.random_range(SYMBOLS)
            };
            row.extend([3, said + SPELLED]);
            row.extend((0..5).map(|_| rng.random_range(FILLERS)));
            row.extend([4, said, 2]);
            row.resize(23, 0);
            row
        }

        /// How far a model has learned [`record`]s' two rules, teacher-forced on 64 fresh
        /// records and run as the decoder runs it (ACT halting, not a fixed recursion count):
        /// the share of thoughts whose most likely first token is the right next symbol (the
        /// records' thoughts are right 60% of the time, so once the model has the rule this
        /// nears 1; by chance it is 1 in 8), and the share of answers that repeat what the
        /// thought said.
        fn learned(
            model: &TrmTitansMag,
            cfg: &ModelConfig,
            tables: &Tables,
            rng: &mut impl rand::Rng,
        ) -> (f64, f64) {
            use burn::tensor::Int;
            let dev = crate::device::test_device();
            let (b, s) = (64, 22);
            let rows: Vec<Vec<i64>> = (0..b).map(|_| record(rng)).collect();
            let x: Vec<i64> = rows.iter().flat_map(|r| r[..s].to_vec()).collect();
            let x = Tensor::<2, Int>::from_data(TensorData::new(x, [b, s]), &dev);
            // As generation runs it: ACT halting at the config's threshold.
            let logits = model
                .infer(x, cfg.act_threshold, cfg.sup_steps, tables)
                .logits;
            let argmax: Vec<i64> = logits.argmax(2).into_data().iter::<i64>().collect();
            let (mut thought, mut answer) = (0, 0);
            for (i, row) in rows.iter().enumerate() {
                let open = row.iter().position(|&t| t == 3).expect("a thought");
                let right = next_symbol(row[open - 1]);
                thought += usize::from(argmax[i * s + open] == right + SPELLED);
                let close = open + 7;
                answer += usize::from(argmax[i * s + close] == row[close + 1]);
            }
            (thought as f64 / b as f64, answer as f64 / b as f64)
        }

        /// A micro model trained on [`record`]s until it has learned both rules
        /// (see [`learned`]): how many steps that takes depends on the backend's rounding
        /// (1,000 sufficed on one CPU's flex and fell far short on another CPU's libtorch), so
        /// the test trains to the criterion, checked every 250 steps, rather than for a count.
        fn trained_to_answer_through_its_thoughts(cfg: &ModelConfig) -> TrmTitansMag {
            use crate::optim::{MuonGrokfast, OptimizerConfig};
            use burn::optim::GradientsParams;
            use burn::tensor::Int;
            use rand::SeedableRng;
            const MAX_STEPS: usize = 6000;
            let dev = crate::device::test_device();
            let tables = Tables::new(cfg, &dev);
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
            let mut held_out = rand_chacha::ChaCha8Rng::seed_from_u64(6);
            let mut model = TrmTitansMag::new(cfg, 11, &dev);
            let mut opt = MuonGrokfast::new(OptimizerConfig {
                lr: 1e-2,
                ..OptimizerConfig::default()
            });
            let targets = Targets::FromToken { bos: 1, start: 3 };
            let (b, s) = (32, 22);
            let mut progress = Vec::new();
            for step in 1..=MAX_STEPS {
                let rows: Vec<Vec<i64>> = (0..b).map(|_| record(&mut rng)).collect();
                let x: Vec<i64> = rows.iter().flat_map(|r| r[..s].to_vec()).collect();
                let x = Tensor::<2, Int>::from_data(TensorData::new(x, [b, s]), &dev);
                let y = targets.labels(&rows).concat();
                let y = Tensor::<2, Int>::from_data(TensorData::new(y, [b, s]), &dev);
                let out = model.forward_train(x, y, cfg.sup_steps, 0.1, &tables);
                let grads = GradientsParams::from_grads(out.loss.backward(), &model);
                model = opt.step(model, grads, 1.0).0;
                if step % 250 == 0 {
                    let (thought, answer) = learned(&model, cfg, &tables, &mut held_out);
                    progress.push((step, thought, answer));
                    if thought >= 0.9 && answer >= 0.9 {
                        eprintln!("learned the records' rules: {progress:?}");
                        return model;
                    }
                }
            }
            panic!(
                "the micro model did not learn to answer through its thoughts in {MAX_STEPS} \
                 steps (step, right thoughts, answers repeating the thought): {progress:?}"
            )
        }

        /// The checks can pass: a model that can only answer through its thoughts, trusting them
        /// fully (mixing weight σ(40)), passes all five on chains it never saw whole; the same
        /// model with its mixing weight forced to 0 fails. The correlation has a ceiling near
        /// 0.71 here (rewards are relative to the other thoughts at a position, so two right
        /// thoughts both score 0), which is why this needs a 60/40 rather than a 90/10 model.
        #[test]
        fn a_model_that_answers_through_its_thoughts_passes_every_check() {
            use rand::SeedableRng;
            let dev = crate::device::test_device();
            // No memory block: a thought reads the Titans memory as its position's chunk left it
            // and never writes it ([`crate::model::thoughts`]), while the sequential records
            // this model is trained on write their thoughts' chunks before the answer reads
            // them, so with memory the two paths differ and whether the trained answer survives
            // the thought path depended on the backend's rounding (0.58 right on flex, 0.13 on
            // libtorch from a model right 94% of the time on records). Without memory they agree.
            let cfg = ModelConfig {
                vocab_size: 48,
                d_model: 32,
                d_ff: 64,
                memory_layers: vec![],
                ..config()
            };
            let tables = Tables::new(&cfg, &dev);
            let model = trained_to_answer_through_its_thoughts(&cfg);
            let set = CheckSet {
                rows: SYMBOLS.map(|first| chain(first, 13)).collect(),
                prompts: SYMBOLS.take(3).map(|first| chain(first, 3)).collect(),
                max_new: 6,
                random_ids: (SYMBOLS.start, FILLERS.end),
            };
            let st = ThoughtSettings {
                num_thoughts: 3,
                thought_length: 6,
                n_true: 1,
                ..settings(1.0)
            };
            let measure = |model: &TrmTitansMag| {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
                measure(model, &cfg, &tables, &st, &set, 2, &mut rng, &dev)
            };
            let (listening, ignoring) = (
                with_mixing_bias(model.clone(), 40.0),
                with_mixing_bias(model, -40.0),
            );
            let m = measure(&listening);
            assert!(m.measured.all_passed(), "{}: {m:?}", m.summary());
            assert_eq!(m.positions, 8 * 12);
            // Its own thoughts make it right far more often than random ones (at most 0.65 can
            // be).
            assert!(m.accuracy_with_thoughts > 0.3, "{m:?}");
            assert!(m.accuracy_random_thoughts < 0.2, "{m:?}");
            let ignored = measure(&ignoring);
            let failed = ignored.measured.failed();
            assert!(
                failed.starts_with(&["divergence", "ablation"]),
                "{}",
                ignored.summary()
            );
            // The report's `rl/mixed_nll` and `rl/direct_nll` (and so `rl/improvement_over_baked`)
            // are these numbers: the next symbol's NLL after the model's thoughts falls far
            // below its NLL without them when the thoughts are used, and equals it when not.
            let nll = |model: &TrmTitansMag| {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
                let head = model.talk.as_ref().expect("a mixing head");
                let t = crate::train::quiet_star::think(
                    model,
                    head,
                    &set.rows,
                    &cfg,
                    &tables,
                    &st,
                    crate::train::quiet_star::Drawn::Sampled,
                    &mut rng,
                    &dev,
                );
                (t.mixed_nll_next, t.base_nll_next)
            };
            let (mixed, direct) = nll(&listening);
            assert!(mixed < 0.5 * direct, "mixed {mixed} vs direct {direct}");
            let (mixed, same) = nll(&ignoring);
            assert_eq!(
                same, direct,
                "the direct prediction does not depend on the head"
            );
            assert!(
                (mixed - direct).abs() < 1e-4,
                "mixed {mixed} vs direct {direct}"
            );
            // And the baked model's NLL in the report reads the text the same way.
            let (sum, count) = crate::train::quiet_star::direct_nll(
                &ignoring,
                &cfg,
                &tables,
                &set.rows,
                Targets::All,
                &dev,
            );
            assert!(
                (sum / count - direct).abs() < 1e-4,
                "{} vs {direct}",
                sum / count
            );
        }
    }
}
