//! What a training run minimises. The loop in [`super::trainer`] owns batches, accumulation, the
//! schedule, checkpoints and logging; an [`Objective`] turns one micro-batch of token rows into a
//! loss with gradient and the numbers to log about it. Phase 1 trains [`Lm`]; prompt baking,
//! Quiet-STaR and quantization-aware fine-tuning are further objectives over the same loop.

use burn::tensor::{Device, Tensor};

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

/// Next-token prediction with deep supervision and the ACT halting loss, optionally with a KL
/// term to a frozen reference model.
pub struct Lm<'a> {
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
        let (x, y) = to_tensors(rows, self.device);
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
