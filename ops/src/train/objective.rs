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
    /// The loss of `model` on `rows` (packed token rows of `seq + 1` ids).
    fn step(&self, model: &TrmTitansMag, rows: &[Vec<i64>]) -> ObjectiveStep;
}

/// A frozen model the objective stays close to.
pub struct Reference<'a> {
    pub model: &'a TrmTitansMag,
    /// Weight of KL(reference ‖ model) in the loss.
    pub kl_coef: f64,
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

    fn step(&self, model: &TrmTitansMag, rows: &[Vec<i64>]) -> ObjectiveStep {
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
            loss = loss.add(kl.mul_scalar(r.kl_coef));
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
