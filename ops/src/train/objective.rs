//! What a training run minimises. The loop in [`super::trainer`] owns batches, accumulation, the
//! schedule, checkpoints and logging; an [`Objective`] turns one micro-batch of token rows into a
//! loss with gradient and the numbers to log about it. Phase 1 trains [`Lm`]; prompt baking,
//! Quiet-STaR and quantization-aware fine-tuning are further objectives over the same loop.

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::model::{Tables, TrmTitansMag, fused, kl_divergence, to_tensors};

/// One micro-batch's loss and statistics.
pub struct ObjectiveStep {
    /// What to minimise (with gradient), as a mean over the micro-batch.
    pub loss: Tensor<1>,
    /// The headline number, logged as `train/loss` (nats per token).
    pub reported: f64,
    /// Further means over the micro-batch to log, e.g. `train/kl_divergence`.
    pub extra: Vec<(&'static str, f64)>,
    /// Per block with attention: each head's largest attention logit (for QK-clip).
    pub max_logits: Vec<Tensor<1>>,
    pub memory_usage: Option<Tensor<1>>,
    pub memory_surprise: Option<Tensor<1>>,
}

/// A training objective.
pub trait Objective {
    /// The objective's name, as written in `objective:`.
    fn name(&self) -> &'static str;
    /// The loss of `model` on `rows` (packed token rows of `seq + 1` ids); `at` says which
    /// chunk of which step this is, for objectives that draw random numbers, and which
    /// interventions are in force.
    fn step(&self, model: &TrmTitansMag, rows: &[Vec<i64>], at: Draw) -> ObjectiveStep;
}

/// Where in training a micro-batch chunk is (the key of its random draws), and the
/// interventions in force there.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Draw {
    pub step: u64,
    pub micro: u64,
    pub chunk: u64,
    pub knobs: Knobs,
}

/// What the anti-theater interventions have changed so far (checkpointed with the run): the
/// factors on the objective's KL coefficient and on its reward threshold. Objectives without
/// those terms ignore them.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Knobs {
    pub kl_scale: f64,
    pub reward_threshold_scale: f64,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            kl_scale: 1.0,
            reward_threshold_scale: 1.0,
        }
    }
}

impl Knobs {
    /// The seed's intervention against theater: KL coefficient × 2, reward threshold × 1.5.
    pub fn tightened(self) -> Self {
        Self {
            kl_scale: self.kl_scale * 2.0,
            reward_threshold_scale: self.reward_threshold_scale * 1.5,
        }
    }
}

/// A frozen model the objective stays close to.
pub struct Reference<'a> {
    pub model: &'a TrmTitansMag,
    /// Weight of KL(reference ‖ model) in the loss.
    pub kl_coef: f64,
    /// Weight of the model's own loss on the data beside it in [`Lm`] (1 usually; 0:
    /// distillation alone, the model learns only what the reference predicts). Quiet-STaR's
    /// objective always counts its own loss in full.
    pub data_weight: f64,
}

/// Which next-token targets a loss counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Targets {
    /// Every real (non-padding) token.
    All,
    /// Within each record (from its `bos`), only the `start` token and what follows it: a
    /// reasoning trace and its answer, not the question (supervised baking).
    FromToken { bos: i64, start: i64 },
}

impl Targets {
    /// The labels of packed `rows` (each `seq + 1` ids: the label of position i is the token at
    /// i + 1), with 0 — padding, never a target — where a target does not count.
    pub fn labels(self, rows: &[Vec<i64>]) -> Vec<Vec<i64>> {
        rows.iter()
            .map(|r| match self {
                Self::All => r[1..].to_vec(),
                Self::FromToken { bos, start } => {
                    let mut counting = false;
                    let mut labels = Vec::with_capacity(r.len() - 1);
                    for (i, &t) in r.iter().enumerate() {
                        if t == bos {
                            counting = false;
                        } else if t == start {
                            counting = true;
                        }
                        if i > 0 {
                            labels.push(if counting { t } else { 0 });
                        }
                    }
                    labels
                }
            })
            .collect()
    }
}

/// Next-token prediction with deep supervision and the ACT halting loss, optionally with a KL
/// term to a frozen reference model, on all targets or only those [`Targets`] picks.
pub struct Lm<'a> {
    pub targets: Targets,
    pub sup_steps: usize,
    pub act_weight: f64,
    pub tables: &'a Tables,
    pub device: &'a Device,
    pub reference: Option<Reference<'a>>,
}

impl Objective for Lm<'_> {
    fn name(&self) -> &'static str {
        "lm"
    }

    fn step(&self, model: &TrmTitansMag, rows: &[Vec<i64>], _at: Draw) -> ObjectiveStep {
        let (x, mut y) = to_tensors(rows, self.device);
        if self.targets != Targets::All {
            let labels = self.targets.labels(rows);
            let [b, n] = y.dims();
            y = Tensor::<2, Int>::from_data(TensorData::new(labels.concat(), [b, n]), self.device);
        }
        let out = model.forward_train(x.clone(), y, self.sup_steps, self.act_weight, self.tables);
        let mut loss = out.loss;
        let mut extra = Vec::new();
        if let Some(r) = &self.reference {
            let ref_logp =
                fused::log_softmax(r.model.forward_logits(x, self.sup_steps, self.tables), 2);
            let kl = kl_divergence(ref_logp, out.logp, out.mask);
            extra.push((
                "train/kl_divergence",
                kl.clone().into_scalar::<f32>() as f64,
            ));
            loss = loss.mul_scalar(r.data_weight).add(kl.mul_scalar(r.kl_coef));
        }
        ObjectiveStep {
            loss,
            reported: out.ce.into_scalar::<f32>() as f64,
            extra,
            max_logits: out.max_logits,
            memory_usage: out.memory_usage,
            memory_surprise: out.memory_surprise,
        }
    }
}

/// Prompt baking (Bhargava et al., 2024): a frozen `teacher` reads `prompt` and then the row; the
/// model reads the row alone and learns to predict what the teacher predicts, minimising
/// KL(teacher(prompt + x) ‖ model(x)) over the next-token distribution at every position of the
/// data's rows `x` (the paper samples the teacher's own continuations; forge takes the data's, so
/// the objective needs no sampling and a step is reproducible).
///
/// The loss is a surrogate with the KL's exact gradient, `Σ_v (p − p_teacher) · logits` with both
/// probabilities held fixed: ∂KL/∂logits = p − p_teacher. Where the model already predicts the
/// teacher's distribution bit for bit (an empty prompt, the model its own teacher), the gradient
/// is exactly zero and the step changes nothing; the logged number, `train/loss`, is the KL itself
/// in nats per position. The KL is taken at the last supervision step, the teacher running the
/// same `sup_steps` recursions.
pub struct PromptBake<'a> {
    pub teacher: &'a TrmTitansMag,
    /// The prompt's ids (no end token; empty for no prompt).
    pub prompt: &'a [i64],
    pub sup_steps: usize,
    pub tables: &'a Tables,
    pub device: &'a Device,
}

/// One batch as [`PromptBake`] sees it.
struct Baked {
    /// The teacher's logits at the rows' positions (no gradient), `[b, s, v]`.
    teacher: Tensor<3>,
    /// The model's forward (its `logits` and `logp` with gradient).
    out: crate::model::TrainOutput,
    /// 1 where the input is a real token, `[b, s]`.
    mask: Tensor<2>,
}

impl PromptBake<'_> {
    fn forward(&self, model: &TrmTitansMag, rows: &[Vec<i64>]) -> Baked {
        let (x, _) = to_tensors(rows, self.device);
        let [b, s] = x.dims();
        let prompted: Vec<i64> = rows
            .iter()
            .flat_map(|r| self.prompt.iter().chain(&r[..s]).copied())
            .collect();
        let p = self.prompt.len();
        let xt = Tensor::<2, Int>::from_data(TensorData::new(prompted, [b, p + s]), self.device);
        let teacher = self
            .teacher
            .forward_logits(xt, self.sup_steps, self.tables)
            .narrow(1, p, s)
            .detach();
        // No targets: the cross-entropy and halting terms are zero; only the distribution counts.
        let none = Tensor::<2, Int>::zeros([b, s], self.device);
        let out = model.forward_train(x.clone(), none, self.sup_steps, 0.0, self.tables);
        let mask = x.not_equal_elem(0).float();
        Baked { teacher, out, mask }
    }

    /// Mean KL(teacher(prompt + x) ‖ model(x)) over the real positions of `rows`, no gradient.
    pub fn kl(&self, model: &TrmTitansMag, rows: &[Vec<i64>]) -> f64 {
        let f = self.forward(model, rows);
        let teacher_logp = fused::log_softmax(f.teacher, 2);
        kl_divergence(teacher_logp, f.out.logp.detach(), f.mask).into_scalar::<f32>() as f64
    }
}

impl Objective for PromptBake<'_> {
    fn name(&self) -> &'static str {
        "prompt-bake"
    }

    fn step(&self, model: &TrmTitansMag, rows: &[Vec<i64>], _at: Draw) -> ObjectiveStep {
        let Baked { teacher, out, mask } = self.forward(model, rows);
        let [b, s, _] = out.logits.dims();
        let kl = kl_divergence(
            fused::log_softmax(teacher.clone(), 2),
            out.logp.detach(),
            mask.clone(),
        );
        // ∂KL/∂logits = p − p_teacher, each from the same softmax: exactly 0 where they agree.
        let p = fused::softmax(out.logits.clone().detach(), 2);
        let p_teacher = fused::softmax(teacher, 2);
        let weight = mask
            .clone()
            .div(mask.sum().add_scalar(1e-9).reshape([1, 1]))
            .reshape([b, s, 1]);
        let grad = p.sub(p_teacher).mul(weight).detach();
        ObjectiveStep {
            loss: out.logits.mul(grad).sum(),
            reported: kl.into_scalar::<f32>() as f64,
            extra: Vec::new(),
            max_logits: out.max_logits,
            memory_usage: out.memory_usage,
            memory_surprise: out.memory_surprise,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_targets_skip_each_records_question_and_keep_its_trace_and_end() {
        // <s> q q [thinking] t a </s> <s> q [thinking] t  (bos 1, eos 2, start 3)
        let row = vec![1, 20, 21, 3, 30, 31, 2, 1, 22, 3, 32];
        let labels = Targets::FromToken { bos: 1, start: 3 }.labels(std::slice::from_ref(&row));
        assert_eq!(labels[0], vec![0, 0, 3, 30, 31, 2, 0, 0, 3, 32]);
        assert_eq!(
            Targets::All.labels(std::slice::from_ref(&row))[0],
            row[1..].to_vec()
        );
        // A row that starts inside a trace (no bos yet) counts nothing until its first start.
        let labels = Targets::FromToken { bos: 1, start: 3 }.labels(&[vec![30, 31, 2, 1, 3, 33]]);
        assert_eq!(labels[0], vec![0, 0, 0, 3, 33]);
    }
}

#[cfg(test)]
mod prompt_bake_tests {
    use burn::module::Module;
    use burn::optim::{AdamWConfig, GradientsParams};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::model::ModelConfig;

    fn rows(seed: u64, n: usize, len: usize) -> Vec<Vec<i64>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| (0..len).map(|_| rng.random_range(3..40)).collect())
            .collect()
    }

    fn flat(t: Tensor<2>) -> Vec<f32> {
        t.into_data().try_to_vec().unwrap()
    }

    #[test]
    fn prompt_baking_brings_the_unprompted_model_to_the_prompted_one_on_held_out_rows() {
        let cfg = ModelConfig::micro();
        let dev = crate::device::test_device();
        let tables = Tables::new(&cfg, &dev);
        // A teacher for which the prompt matters: trained to count up after the prompt and down
        // without it. Baked, the model must count up with no prompt.
        let prompt = [1, 30, 31, 32, 33];
        let count = |start: i64, step: i64, n: usize| -> Vec<i64> {
            (0..n as i64)
                .map(|i| 3 + (start + step * i).rem_euclid(26))
                .collect()
        };
        let mut model = TrmTitansMag::new(&cfg, 3, &dev);
        let lm = Lm {
            targets: Targets::All,
            sup_steps: cfg.sup_steps,
            act_weight: 0.0,
            tables: &tables,
            device: &dev,
            reference: None,
        };
        let mut optim = AdamWConfig::new().init();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..150 {
            let batch: Vec<Vec<i64>> = (0..8)
                .map(|i| {
                    let start = rng.random_range(0..26);
                    if i % 2 == 0 {
                        prompt.iter().copied().chain(count(start, 1, 12)).collect()
                    } else {
                        count(start, -1, 17)
                    }
                })
                .collect();
            let out = lm.step(&model, &batch, Draw::default());
            let grads = GradientsParams::from_grads(out.loss.backward(), &model);
            model = optim.step(1e-2, model, grads);
        }
        let teacher = model.clone().valid();
        let ascending = |seed: u64, n: usize| -> Vec<Vec<i64>> {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..n)
                .map(|_| count(rng.random_range(0..26), 1, 12))
                .collect()
        };
        let bake = PromptBake {
            teacher: &teacher,
            prompt: &prompt,
            sup_steps: cfg.sup_steps,
            tables: &tables,
            device: &dev,
        };
        let held_out = ascending(99, 16);
        let before = bake.kl(&model.clone().valid(), &held_out);
        let mut optim = AdamWConfig::new().init();
        for step in 0..100 {
            let out = bake.step(&model, &ascending(step, 8), Draw::default());
            let grads = GradientsParams::from_grads(out.loss.backward(), &model);
            model = optim.step(1e-2, model, grads);
        }
        let after = bake.kl(&model.valid(), &held_out);
        assert!(
            before > 1e-3,
            "the prompt must matter to the teacher: KL {before}"
        );
        eprintln!("held-out KL {before:.5} -> {after:.5}");
        assert!(
            after < before / 5.0,
            "held-out KL fell only from {before:.5} to {after:.5}"
        );
    }

    #[test]
    fn baking_an_empty_prompt_has_zero_kl_and_zero_gradient_and_changes_nothing() {
        let cfg = ModelConfig::micro();
        let dev = crate::device::test_device();
        let tables = Tables::new(&cfg, &dev);
        let model = TrmTitansMag::new(&cfg, 4, &dev);
        let teacher = model.clone().valid();
        let bake = PromptBake {
            teacher: &teacher,
            prompt: &[],
            sup_steps: cfg.sup_steps,
            tables: &tables,
            device: &dev,
        };
        let batch = rows(5, 4, 12);
        let out = bake.step(&model, &batch, Draw::default());
        assert_eq!(out.reported, 0.0);
        let grads = out.loss.backward();
        for (name, w) in [
            ("embed", model.embed.val()),
            ("wq", model.blocks[0].attn.wq.weight.val()),
            ("ffn.down", model.blocks[0].ffn.down.weight.val()),
            ("halt", model.halt.weight.val()),
        ] {
            if let Some(g) = w.grad(&grads) {
                assert!(flat(g).iter().all(|v| *v == 0.0), "{name} has a gradient");
            }
        }
        // So an optimizer step (without weight decay, which shrinks weights whatever the loss)
        // leaves every weight as it was.
        let before = flat(model.blocks[0].attn.wq.weight.val());
        let mut optim = AdamWConfig::new().with_weight_decay(0.0).init();
        let out = bake.step(&model, &batch, Draw::default());
        let grads = GradientsParams::from_grads(out.loss.backward(), &model);
        let model = optim.step(1e-2, model, grads);
        assert_eq!(flat(model.blocks[0].attn.wq.weight.val()), before);
    }
}
