//! Quiet-STaR's learning signal (Zelikman et al., 2024, §4 and the authors' code): the mixing
//! head that interpolates the states before and after a thought, and the REINFORCE estimator
//! that makes thoughts which help predict the coming text more likely.
//!
//! With `n` thoughts sampled after position `j`, thought `i`'s reward is the log-likelihood of the
//! next `n_true` text tokens under the mixed prediction with thought `i`, minus the mean of the
//! same over the *other* thoughts at `j` (the authors' `trice_mode` baseline):
//!
//! ```text
//! r_i = ll_i − mean_{k≠i} ll_k           (no gradient)
//! L_REINFORCE = −mean_j Σ_i r_i · log p(thought_i)
//! ```
//!
//! so a thought better than its siblings gains probability and a worse one loses it; with one
//! thought there is no baseline and no signal.

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::Rng;

use crate::model::decode::Decoder;
use crate::model::fused::log_softmax;
use crate::model::mixing::MixingHead;
use crate::model::thoughts::Thoughts;
use crate::model::{ModelConfig, Tables, TrmTitansMag, kl_divergence};

use super::objective::{Draw, Objective, ObjectiveStep, Reference, Targets};

/// Each thought's reward at every position: its log-likelihood minus the mean of the other
/// thoughts' (`log_lik[i]` is thought `i`'s, `[b, s]`), detached. Fewer than two thoughts give
/// zero rewards: there is nothing to compare with.
pub fn rewards(log_lik: &[Tensor<2>]) -> Vec<Tensor<2>> {
    let n = log_lik.len();
    if n < 2 {
        return log_lik.iter().map(|l| l.clone().zeros_like()).collect();
    }
    let total = log_lik
        .iter()
        .cloned()
        .reduce(Tensor::add)
        .expect("two or more")
        .detach();
    log_lik
        .iter()
        .map(|l| {
            let l = l.clone().detach();
            let others = total.clone().sub(l.clone()).div_scalar((n - 1) as f64);
            l.sub(others)
        })
        .collect()
}

/// `−mean over real positions of Σ_i r_i · log p(thought_i)`: its gradient is REINFORCE's,
/// `−r ∇ log p(thought)`. `log_p[i]` is thought `i`'s log-probability (with gradient), `[b, s]`;
/// `mask` is 1 at positions that count.
pub fn reinforce_loss(log_p: &[Tensor<2>], rewards: &[Tensor<2>], mask: Tensor<2>) -> Tensor<1> {
    let n = mask.clone().sum().add_scalar(1e-9);
    log_p
        .iter()
        .zip(rewards)
        .map(|(lp, r)| lp.clone().mul(r.clone().detach()).mul(mask.clone()).sum())
        .reduce(Tensor::add)
        .expect("one thought or more")
        .neg()
        .div(n)
}

/// How thoughts are sampled and scored.
#[derive(Debug, Clone)]
pub struct ThoughtSettings {
    /// Thoughts sampled after each position (the authors' `n_passes`); REINFORCE needs ≥ 2.
    pub num_thoughts: usize,
    /// Tokens between the start and end thought tokens.
    pub thought_length: usize,
    /// Ground-truth tokens after the thought that score it (the authors' `n_ahead_talk`).
    pub n_true: usize,
    /// Sampling temperature of thought tokens.
    pub temperature: f64,
    /// The start- and end-of-thought token ids.
    pub start: i64,
    pub end: i64,
    /// A thought must beat its siblings' mean by more than this many nats to be reinforced
    /// upwards (worse-than-average thoughts are always pushed down); the seed's intervention
    /// against theater raises it × 1.5.
    pub reward_threshold: f64,
    /// Which true tokens score a thought (and count in the NLL and KL): all, or a reasoning
    /// trace's and its answer's only.
    pub targets: Targets,
}

/// Rewards with the positive ones at or below `threshold` zeroed: only a thought clearly better
/// than its siblings is made more likely.
pub fn thresholded(rewards: Vec<Tensor<2>>, threshold: f64) -> Vec<Tensor<2>> {
    if threshold <= 0.0 {
        return rewards;
    }
    rewards
        .into_iter()
        .map(|r| {
            let keep = r
                .clone()
                .greater_elem(threshold)
                .float()
                .add(r.clone().lower_equal_elem(0.0).float());
            r.mul(keep)
        })
        .collect()
}

/// Where the tokens of a training-time thought come from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Drawn {
    /// Sampled from the model at the settings' temperature.
    Sampled,
    /// Uniform ids from `low..high`: thoughts of the same length that carry no information (the
    /// ablation).
    Random { low: i64, high: i64 },
}

impl ThoughtSettings {
    /// Positions a thought and its scored tokens take after their text position.
    pub fn span(&self) -> usize {
        self.thought_length + 2 + self.n_true
    }
}

/// One batch thought about: the terms of Quiet-STaR's loss and what to log.
pub struct Thought {
    /// NLL of the mixed predictions of the `n_true` tokens after each thought, mean over
    /// thoughts and scored tokens (with gradient).
    pub nll: Tensor<1>,
    /// The REINFORCE term (with gradient).
    pub reinforce: Tensor<1>,
    /// The model's own next-token log-probabilities without thoughts, `[b, s, v]` (with
    /// gradient; for the KL term to a reference).
    pub base_logp: Tensor<3>,
    /// 1 where the input position has a real next token, `[b, s]`.
    pub mask: Tensor<2>,
    /// Mean over scored tokens of (mixed − base) log-likelihood: what thinking buys, in nats.
    pub gain: f64,
    /// Mean reward over positions and thoughts whose reward is positive (the others' is ≤ 0).
    pub reward: f64,
    pub mixing_weight: f64,
    /// Every thought's sampled tokens: `[thought][row][position]` → `thought_length` ids.
    pub tokens: Vec<Vec<Vec<Vec<i64>>>>,
    /// Per thought, row-major `[b × s]`: its reward, and whether the mixed prediction's argmax
    /// is the next true token.
    pub rewards: Vec<Vec<f32>>,
    pub correct: Vec<Vec<bool>>,
    /// Row-major `[b × s]`: the position has a next true token.
    pub valid: Vec<bool>,
    /// Mean NLL of the next true token: under the mixed predictions (over thoughts) and under
    /// the model's own prediction without a thought.
    pub mixed_nll_next: f64,
    pub base_nll_next: f64,
}

/// One scored token after the thoughts (the `k`-th true token): its labels `[b, s]`, 1 where
/// they count, and the base prediction's total log-likelihood of them and their number.
struct Scored {
    labels: Tensor<2, Int>,
    valid: Tensor<2>,
    base: f64,
    count: f64,
}

/// Think after every position of `rows` (each `s + 1` ids: inputs and, shifted, labels): sample
/// `num_thoughts` thoughts per position in parallel ([`Thoughts`]), score each by the mixed
/// prediction of the next `n_true` true tokens (teacher-forced after the end token), and build
/// the NLL and REINFORCE terms. `rng` draws the thought tokens, from the model or at random
/// (`drawn`).
///
/// # Panics
/// When `n_true` is 0 or the rows are empty (nothing would score a thought).
#[allow(clippy::too_many_arguments)]
pub fn think(
    model: &TrmTitansMag,
    head: &MixingHead,
    rows: &[Vec<i64>],
    cfg: &ModelConfig,
    tables: &Tables,
    st: &ThoughtSettings,
    drawn: Drawn,
    rng: &mut impl Rng,
    device: &Device,
) -> Thought {
    assert!(
        st.n_true > 0,
        "a thought is scored by at least one true token"
    );
    let (b, s) = (rows.len(), rows[0].len() - 1);
    let ids = |f: &dyn Fn(usize, usize) -> i64| -> Tensor<2, Int> {
        let v: Vec<i64> = (0..b)
            .flat_map(|r| (0..s).map(move |j| (r, j)))
            .map(|(r, j)| f(r, j))
            .collect();
        Tensor::from_data(TensorData::new(v, [b, s]), device)
    };
    let scored = st.targets.labels(rows);
    let label = |r: usize, j: usize| -> i64 { if j < s { scored[r][j] } else { 0 } };
    let mut text = Decoder::new(model, cfg, tables, b, device).record_memory();
    let read = text.extend(ids(&|r, j| rows[r][j]));
    let (before, base_logp) = (read.state, log_softmax(read.logits, 2));
    // Scored token k of position j's thought is label j + k: the base state predicting it is
    // position j + k's, and it counts where it exists.
    let shifted = |x: Tensor<3>, k: usize| -> Tensor<3> {
        if k == 0 {
            return x;
        }
        let width = x.dims()[2];
        Tensor::cat(
            vec![x.narrow(1, k, s - k), Tensor::zeros([b, k, width], device)],
            1,
        )
    };
    // What does not depend on the thought, once: each scored token's labels, where they count,
    // and the base prediction's log-likelihood of them.
    let targets: Vec<Scored> = (0..st.n_true.min(s))
        .map(|k| {
            let labels = ids(&|r, j| label(r, j + k));
            let valid = labels.clone().not_equal_elem(0).float();
            let base = shifted(base_logp.clone().detach(), k)
                .gather(2, labels.clone().reshape([b, s, 1]))
                .reshape([b, s])
                .mul(valid.clone())
                .sum()
                .into_scalar::<f32>() as f64;
            let count = valid.clone().sum().into_scalar::<f32>() as f64;
            Scored {
                labels,
                valid,
                base,
                count,
            }
        })
        .collect();
    let mask = targets[0].valid.clone();

    let (mut lls, mut log_ps, mut tokens) = (Vec::new(), Vec::new(), Vec::new());
    let (mut gain, mut weights, mut scored) = (0.0, 0.0, 0.0);
    let (mut correct, mut mixed_nll_next) = (Vec::new(), 0.0);
    let flat_bool = |t: Tensor<2, burn::tensor::Bool>| -> Vec<bool> {
        t.into_data().try_to_vec::<bool>().expect("bool data")
    };
    for _ in 0..st.num_thoughts {
        let mut th = Thoughts::new(&text);
        let mut out = th.step(ids(&|_, _| st.start));
        let mut log_p = Tensor::<2>::zeros([b, s], device);
        let mut sampled = vec![vec![Vec::with_capacity(st.thought_length); s]; b];
        for _ in 0..st.thought_length {
            let logp = log_softmax(out.logits.clone(), 2);
            let next = match drawn {
                Drawn::Sampled => sample(&out.logits, st.temperature, rng),
                Drawn::Random { low, high } => {
                    (0..b * s).map(|_| rng.random_range(low..high)).collect()
                }
            };
            for (r, row) in sampled.iter_mut().enumerate() {
                for (j, t) in row.iter_mut().enumerate() {
                    t.push(next[r * s + j]);
                }
            }
            let next = ids(&|r, j| next[r * s + j]);
            log_p = log_p.add(
                logp.gather(2, next.clone().reshape([b, s, 1]))
                    .reshape([b, s]),
            );
            out = th.step(next);
        }
        out = th.step(ids(&|_, _| st.end));
        let mut ll = Tensor::<2>::zeros([b, s], device);
        for (k, t) in targets.iter().enumerate() {
            let (mixed, w) = head.mix(shifted(before.clone(), k), out.state.clone());
            let mixed_logp = log_softmax(model.logits_of(mixed), 2);
            if k == 0 {
                let argmax = mixed_logp.clone().detach().argmax(2).reshape([b, s]);
                correct.push(flat_bool(argmax.equal(t.labels.clone())));
            }
            let mixed_ll = mixed_logp
                .gather(2, t.labels.clone().reshape([b, s, 1]))
                .reshape([b, s])
                .mul(t.valid.clone());
            if k == 0 {
                mixed_nll_next -= mixed_ll.clone().detach().sum().into_scalar::<f32>() as f64;
            }
            gain += mixed_ll.clone().detach().sum().into_scalar::<f32>() as f64 - t.base;
            weights += w
                .detach()
                .reshape([b, s])
                .mul(t.valid.clone())
                .sum()
                .into_scalar::<f32>() as f64;
            scored += t.count;
            ll = ll.add(mixed_ll);
            if k + 1 < targets.len() {
                out = th.step(t.labels.clone());
            }
        }
        lls.push(ll);
        log_ps.push(log_p);
        tokens.push(sampled);
    }
    let r = rewards(&lls);
    let flat = |t: &Tensor<2>| -> Vec<f32> {
        t.clone()
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .expect("f32")
    };
    let per_thought: Vec<Vec<f32>> = r.iter().map(flat).collect();
    let valid = flat_bool(mask.clone().greater_elem(0.5));
    let next_count = targets[0].count.max(1.0);
    let base_nll_next = -targets[0].base / next_count;
    let r = thresholded(r, st.reward_threshold);
    let positive = r
        .iter()
        .map(|r| {
            r.clone()
                .clamp_min(0.0)
                .mul(mask.clone())
                .sum()
                .into_scalar::<f32>() as f64
        })
        .sum::<f64>();
    let reinforce = reinforce_loss(&log_ps, &r, mask.clone());
    let nll = lls
        .into_iter()
        .reduce(Tensor::add)
        .expect("one thought or more")
        .sum()
        .neg()
        .div_scalar(scored.max(1.0));
    let positions = mask.clone().sum().into_scalar::<f32>() as f64 * st.num_thoughts as f64;
    Thought {
        nll,
        reinforce,
        base_logp,
        mask,
        gain: gain / scored.max(1.0),
        reward: positive / positions.max(1.0),
        mixing_weight: weights / scored.max(1.0),
        tokens,
        rewards: per_thought,
        correct,
        valid,
        mixed_nll_next: mixed_nll_next / (next_count * st.num_thoughts as f64),
        base_nll_next,
    }
}

/// The total NLL of the next true token at every position of `rows` (each `s + 1` ids) that
/// `targets` counts, under `model`'s own prediction without thoughts (incremental ACT inference,
/// as [`think`] reads the text), and the number of tokens scored.
pub fn direct_nll(
    model: &TrmTitansMag,
    cfg: &ModelConfig,
    tables: &Tables,
    rows: &[Vec<i64>],
    targets: Targets,
    device: &Device,
) -> (f64, f64) {
    let (b, s) = (rows.len(), rows[0].len() - 1);
    let x: Vec<i64> = rows.iter().flat_map(|r| r[..s].to_vec()).collect();
    let x = Tensor::<2, Int>::from_data(TensorData::new(x, [b, s]), device);
    let y = targets.labels(rows).concat();
    let y = Tensor::<2, Int>::from_data(TensorData::new(y, [b, s]), device);
    let valid = y.clone().not_equal_elem(0).float();
    let logits = Decoder::new(model, cfg, tables, b, device).extend(x).logits;
    let ll = log_softmax(logits, 2)
        .gather(2, y.reshape([b, s, 1]))
        .reshape([b, s])
        .mul(valid.clone())
        .sum()
        .into_scalar::<f32>() as f64;
    (-ll, valid.sum().into_scalar::<f32>() as f64)
}

/// Quiet-STaR as a training objective (`objective: quiet-star`): think after every position
/// ([`think`]) and minimise the mixed prediction's NLL, the REINFORCE term, and `kl_coef` ×
/// KL(reference ‖ model) over the model's own next-token distributions without thoughts, the
/// reference (the baked model) read through the same ACT inference, so the term is exactly 0
/// until the model moves. The model must carry a mixing head (`mixing_head: true`).
pub struct QuietStar<'a> {
    pub settings: ThoughtSettings,
    pub cfg: &'a ModelConfig,
    pub tables: &'a Tables,
    pub device: &'a Device,
    pub reference: Option<Reference<'a>>,
    /// The step's seed: thoughts are drawn from [`crate::rng::Stream::Thoughts`].
    pub seed: u64,
}

impl Objective for QuietStar<'_> {
    fn name(&self) -> &'static str {
        "quiet-star"
    }

    fn step(&self, model: &TrmTitansMag, rows: &[Vec<i64>], at: Draw) -> ObjectiveStep {
        let head = model
            .talk
            .as_ref()
            .expect("a Quiet-STaR model has a mixing head");
        let mut rng = crate::rng::stream(
            self.seed,
            crate::rng::Stream::Thoughts {
                step: at.step,
                micro: at.micro,
                chunk: at.chunk,
            },
        );
        let settings = ThoughtSettings {
            reward_threshold: self.settings.reward_threshold * at.knobs.reward_threshold_scale,
            ..self.settings.clone()
        };
        let t = think(
            model,
            head,
            rows,
            self.cfg,
            self.tables,
            &settings,
            Drawn::Sampled,
            &mut rng,
            self.device,
        );
        let mut loss = t.nll.clone().add(t.reinforce);
        let mut extra = vec![
            ("rl/reward", t.reward),
            ("rl/mixing_weight", t.mixing_weight),
            ("rl/thinking_gain", t.gain),
        ];
        if let Some(r) = &self.reference {
            let b = rows.len();
            let s = rows[0].len() - 1;
            let x: Vec<i64> = rows.iter().flat_map(|row| row[..s].to_vec()).collect();
            let x = Tensor::<2, Int>::from_data(TensorData::new(x, [b, s]), self.device);
            let state = Decoder::new(r.model, self.cfg, self.tables, b, self.device)
                .extend(x)
                .state;
            let ref_logp = log_softmax(r.model.logits_of(state), 2);
            let kl = kl_divergence(ref_logp, t.base_logp, t.mask);
            extra.push(("rl/kl_divergence", kl.clone().into_scalar::<f32>() as f64));
            loss = loss.add(kl.mul_scalar(r.kl_coef * at.knobs.kl_scale));
        }
        ObjectiveStep {
            loss,
            reported: t.nll.into_scalar::<f32>() as f64,
            extra,
            max_logits: Vec::new(),
            memory_usage: None,
            memory_surprise: None,
        }
    }
}

/// Where the tokens of a thought come from when generating with thoughts.
pub enum ThoughtSource<'r> {
    /// The model's own greedy thought.
    Greedy,
    /// Random ids from `low..high` (the ablation: a thought of the same length that carries no
    /// information).
    Random {
        rng: &'r mut dyn rand::RngCore,
        low: i64,
        high: i64,
    },
}

/// What [`greedy_with_thoughts`] produced.
pub struct WithThoughts {
    /// The generated ids (eos not included).
    pub ids: Vec<i64>,
    /// The thought before each generated token (`thought_length` ids each).
    pub thoughts: Vec<Vec<i64>>,
}

/// Quiet-STaR inference, greedy: before each new token the model thinks after the last position
/// (`[thinking]`, `thought_length` tokens from `source`, `[/endthinking]`), and the token is the
/// argmax of the mixed prediction from the states before and after the thought. Thoughts are never
/// part of the text. Stops at eos or after `max_new` tokens (or `max_seq`).
#[allow(clippy::too_many_arguments)]
pub fn greedy_with_thoughts(
    model: &TrmTitansMag,
    cfg: &ModelConfig,
    tables: &Tables,
    prompt: &[i64],
    max_new: usize,
    st: &ThoughtSettings,
    eos: i64,
    mut source: ThoughtSource<'_>,
    device: &Device,
) -> WithThoughts {
    let head = model
        .talk
        .as_ref()
        .expect("a Quiet-STaR model has a mixing head");
    let one = |id: i64| Tensor::<2, Int>::from_data(TensorData::new(vec![id], [1, 1]), device);
    let argmax = |logits: Tensor<3>| -> i64 {
        let v = logits.dims()[2];
        logits.reshape([v]).argmax(0).into_scalar::<i64>()
    };
    let mut out = WithThoughts {
        ids: Vec::new(),
        thoughts: Vec::new(),
    };
    if prompt.is_empty() || prompt.len() + st.span() >= cfg.max_seq {
        return out; // no room for a thought
    }
    let mut dec = Decoder::new(model, cfg, tables, 1, device).record_memory();
    let ids =
        Tensor::<2, Int>::from_data(TensorData::new(prompt.to_vec(), [1, prompt.len()]), device);
    let n = prompt.len();
    let mut before = dec.extend(ids).state.narrow(1, n - 1, 1);
    while out.ids.len() < max_new && dec.len() + st.span() < cfg.max_seq {
        let mut th = Thoughts::from(&dec, dec.len() - 1);
        let mut step = th.step(one(st.start));
        let mut thought = Vec::with_capacity(st.thought_length);
        for _ in 0..st.thought_length {
            let token = match &mut source {
                ThoughtSource::Greedy => argmax(step.logits.clone()),
                ThoughtSource::Random { rng, low, high } => rng.random_range(*low..*high),
            };
            thought.push(token);
            step = th.step(one(token));
        }
        let after = th.step(one(st.end)).state;
        let (mixed, _) = head.mix(before.clone(), after);
        let next = argmax(model.logits_of(mixed));
        out.thoughts.push(thought);
        if next == eos {
            break;
        }
        out.ids.push(next);
        before = dec.extend(one(next)).state;
    }
    out
}

/// One token per stream from `logits` (`[b, s, v]`) at `temperature`, row-major `[b × s]`.
fn sample(logits: &Tensor<3>, temperature: f64, rng: &mut impl Rng) -> Vec<i64> {
    let [_, _, v] = logits.dims();
    let values: Vec<f32> = logits
        .clone()
        .div_scalar(temperature.max(1e-6))
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .expect("f32 logits");
    values
        .chunks(v)
        .map(|row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let w: Vec<f64> = row.iter().map(|l| f64::from(l - max).exp()).collect();
            let mut u = rng.random::<f64>() * w.iter().sum::<f64>();
            for (i, wi) in w.iter().enumerate() {
                if u < *wi {
                    return i as i64;
                }
                u -= wi;
            }
            (v - 1) as i64
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use burn::module::{Module, Param};
    use burn::tensor::{Int, TensorData};

    use super::*;
    use crate::model::fused::log_softmax;
    use crate::model::mixing::INITIAL_MIXING_WEIGHT;

    /// A micro model with a memory block and a mixing head.
    fn thinking_config(max_seq: usize) -> ModelConfig {
        ModelConfig {
            memory_layers: vec![0],
            ltm_slots: 8,
            mem_chunk: 4,
            max_seq,
            mixing_head: true,
            ..ModelConfig::micro()
        }
    }

    /// Two thoughts of `thought_length` tokens between ids 3 and 4, scored on two true tokens.
    fn settings(thought_length: usize) -> ThoughtSettings {
        ThoughtSettings {
            num_thoughts: 2,
            thought_length,
            n_true: 2,
            temperature: 1.0,
            start: 3,
            end: 4,
            reward_threshold: 0.0,
            targets: Targets::All,
        }
    }

    fn vec2(t: Tensor<2>) -> Vec<f32> {
        t.into_data().try_to_vec().unwrap()
    }

    #[test]
    fn the_reward_threshold_withholds_small_positive_rewards_only() {
        let dev = crate::device::test_device();
        let r = Tensor::<2>::from_data(
            TensorData::new(vec![0.01f32, 0.2, -0.3, 0.05], [1, 4]),
            &dev,
        );
        let kept = thresholded(vec![r.clone()], 0.05).remove(0);
        // 0.01 and 0.05 are not more than 0.05 better: not reinforced; −0.3 is still pushed down.
        assert_eq!(vec2(kept), vec![0.0, 0.2, -0.3, 0.0]);
        assert_eq!(vec2(thresholded(vec![r.clone()], 0.0).remove(0)), vec2(r));
    }

    #[test]
    fn rewards_are_each_thoughts_log_likelihood_against_the_others_mean() {
        let dev = crate::device::test_device();
        let t = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [1, 2]), &dev);
        let r = rewards(&[
            t(vec![-1.0, -2.0]),
            t(vec![-3.0, -2.0]),
            t(vec![-2.0, -5.0]),
        ]);
        // Position 0: -1 − mean(-3, -2) = 1.5; -3 − mean(-1, -2) = -1.5; -2 − mean(-1, -3) = 0.
        let got: Vec<Vec<f32>> = r.into_iter().map(vec2).collect();
        assert_eq!(got, vec![vec![1.5, 1.5], vec![-1.5, 1.5], vec![0.0, -3.0]]);
        // One thought: no baseline, no signal.
        assert_eq!(
            vec2(rewards(&[t(vec![-1.0, -2.0])]).remove(0)),
            vec![0.0, 0.0]
        );
    }

    /// A two-thought policy: a categorical over 4 thought tokens, one token per thought.
    #[derive(Module, Debug)]
    struct Policy {
        logits: Param<Tensor<1>>,
    }

    #[test]
    fn reinforce_makes_the_better_thought_more_likely_and_the_worse_less() {
        let dev = crate::device::test_device();
        let mut policy = Policy {
            logits: Param::from_tensor(Tensor::zeros([4], &dev)),
        };
        // Thought A is token 1, thought B token 2. After A the answer is likelier (log-lik
        // −0.5) than after B (−2.0).
        let (a, b) = (1i64, 2i64);
        let log_lik = [
            Tensor::<2>::from_data(TensorData::new(vec![-0.5f32], [1, 1]), &dev),
            Tensor::<2>::from_data(TensorData::new(vec![-2.0f32], [1, 1]), &dev),
        ];
        let r = rewards(&log_lik);
        let log_p = |p: &Policy, token: i64| -> Tensor<2> {
            let lp = log_softmax(p.logits.val().reshape([1, 4]), 1);
            lp.select(
                1,
                Tensor::<1, Int>::from_data(TensorData::new(vec![token], [1]), &dev),
            )
        };
        let before = (vec2(log_p(&policy, a))[0], vec2(log_p(&policy, b))[0]);
        for _ in 0..5 {
            let loss = reinforce_loss(
                &[log_p(&policy, a), log_p(&policy, b)],
                &r,
                Tensor::ones([1, 1], &dev),
            );
            let grads = loss.backward();
            let g = policy.logits.val().grad(&grads).unwrap();
            let stepped = policy.logits.val().inner().sub(g.mul_scalar(0.5));
            policy.logits = Param::from_tensor(Tensor::from_inner(stepped).require_grad());
        }
        let after = (vec2(log_p(&policy, a))[0], vec2(log_p(&policy, b))[0]);
        assert!(
            after.0 > before.0,
            "the better thought lost probability: {before:?} → {after:?}"
        );
        assert!(
            after.1 < before.1,
            "the worse thought gained probability: {before:?} → {after:?}"
        );
        // Equal log-likelihoods: no reward, no change.
        let same = rewards(&[log_lik[0].clone(), log_lik[0].clone()]);
        let loss = reinforce_loss(
            &[log_p(&policy, a), log_p(&policy, b)],
            &same,
            Tensor::ones([1, 1], &dev),
        );
        let g = policy.logits.val().grad(&loss.backward()).unwrap();
        assert!(g.abs().max().into_scalar::<f32>() == 0.0);
    }

    #[test]
    fn the_kl_to_the_reference_is_zero_against_itself_and_positive_once_the_model_moves() {
        use burn::optim::{AdamWConfig, GradientsParams};
        let cfg = ModelConfig {
            max_seq: 32,
            mixing_head: true,
            ..ModelConfig::micro()
        };
        let dev = crate::device::test_device();
        let mut model = TrmTitansMag::new(&cfg, 7, &dev);
        let reference = model.clone().valid();
        let tables = Tables::new(&cfg, &dev);
        let objective = QuietStar {
            settings: settings(2),
            cfg: &cfg,
            tables: &tables,
            device: &dev,
            reference: Some(Reference {
                model: &reference,
                kl_coef: 0.1,
                data_weight: 1.0,
            }),
            seed: 1,
        };
        let rows: Vec<Vec<i64>> = vec![(10..19).collect(), (20..29).collect()];
        let kl = |out: &ObjectiveStep| {
            out.extra
                .iter()
                .find(|(k, _)| *k == "rl/kl_divergence")
                .expect("a KL term")
                .1
        };
        let out = objective.step(&model, &rows, Draw::default());
        assert_eq!(kl(&out), 0.0, "the model is its own reference");
        let mut optim = AdamWConfig::new().init();
        let grads = GradientsParams::from_grads(out.loss.backward(), &model);
        model = optim.step(1e-2, model, grads);
        let moved = objective.step(&model, &rows, Draw::default());
        assert!(
            kl(&moved) > 0.0,
            "the model moved but the KL is {}",
            kl(&moved)
        );
    }

    #[test]
    fn thinking_gives_finite_terms_with_gradient_and_is_reproducible_from_its_seed() {
        use rand::SeedableRng;
        let cfg = thinking_config(32);
        let dev = crate::device::test_device();
        let model = TrmTitansMag::new(&cfg, 5, &dev);
        let head = model.talk.clone().expect("a mixing head");
        let tables = Tables::new(&cfg, &dev);
        let st = settings(3);
        // Two rows of 10 inputs; the second ends in padding.
        let rows = vec![
            (10..21).collect::<Vec<i64>>(),
            vec![1, 20, 21, 22, 23, 24, 25, 2, 0, 0, 0],
        ];
        let run = |seed: u64| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            think(
                &model,
                &head,
                &rows,
                &cfg,
                &tables,
                &st,
                Drawn::Sampled,
                &mut rng,
                &dev,
            )
        };
        let t = run(1);
        assert_eq!(t.tokens.len(), 2);
        assert_eq!(t.tokens[0][1].len(), 10);
        assert!(t.tokens[0].iter().flatten().all(|th| th.len() == 3));
        let nll = t.nll.clone().into_scalar::<f32>();
        assert!(nll.is_finite() && nll > 0.0, "{nll}");
        assert!((t.mixing_weight - INITIAL_MIXING_WEIGHT).abs() < 0.05);
        // The gradient reaches the model through the thoughts and the head.
        let grads = t.nll.add(t.reinforce).backward();
        for (name, g) in [
            ("head", head.out.weight.val().grad(&grads)),
            ("wq", model.blocks[0].attn.wq.weight.val().grad(&grads)),
            ("embed", model.embed.val().grad(&grads)),
        ] {
            let g = g.unwrap_or_else(|| panic!("{name} has no gradient"));
            assert!(
                g.abs().sum().into_scalar::<f32>() > 0.0,
                "{name}'s gradient is zero"
            );
        }
        // The same seed samples the same thoughts; another seed others.
        assert_eq!(run(1).tokens, t.tokens);
        assert_ne!(run(2).tokens, t.tokens);
    }
}
