//! Titans neural long-term memory (Behrouz et al., 2025), in its chunked ("mini-batch") form.
//!
//! The memory is a matrix `M ∈ R^{slots×d}` read through slot addresses: token features are
//! projected to `slots` dimensions and L2-normalised, `a = norm(k W_a)`, and the memory predicts a
//! value as `a M`. It *learns at test time*: after each chunk of `C` tokens, `M` takes a step on the
//! associative loss `ℓ = (1/C) Σ_t ‖a_t M − v_t‖²`, whose gradient is written analytically,
//!
//! ```text
//! ∇_M ℓ = (2/C) Aᵀ (A M − V)
//! S_c   = η_c S_{c−1} − θ_c ∇_M ℓ           (momentum: the "surprise")
//! M_c   = (1 − α_c) M_{c−1} + S_c            (α_c: learned forgetting gate)
//! ```
//!
//! with data-dependent gates `η, θ, α ∈ (0, 1)` computed from the chunk. Tokens of chunk `c` read
//! `M_{c−1}`, which only earlier chunks wrote, so the memory is causal; and `M` starts from zero for
//! every sequence, so nothing leaks between sequences, batches or calls. The outer training learns
//! the projections and gates (gradients flow through the whole update chain).

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::activation::sigmoid;

use super::layers::{Dense, Init};

#[derive(Module, Debug)]
pub struct NeuralMemory {
    pub wk: Dense,
    pub wv: Dense,
    pub wq: Dense,
    /// Slot addressing: `[d, slots]`.
    pub address: Dense,
    pub wo: Dense,
    /// Gate projections `[d, 3]` (η, θ, α) and their biases.
    pub gates: Dense,
    pub gate_bias: Param<Tensor<1>>,
    pub chunk: usize,
    pub slots: usize,
}

/// What the memory did, for metrics.
#[derive(Debug, Clone)]
pub struct MemoryStats {
    /// The fraction of slots materially written by the end of the sequence: slots whose row of
    /// `M` holds at least a tenth of what an evenly spread write of a typical value
    /// (RMS ‖v‖ / √slots) would put there. 0 when the memory writes nothing; the number of
    /// slots written to, over all slots, when it does.
    pub usage: Tensor<1>,
    /// Mean Frobenius norm of the per-chunk gradient ("surprise").
    pub surprise: Tensor<1>,
}

pub(super) fn l2_normalize(x: Tensor<3>) -> Tensor<3> {
    let norm = x
        .clone()
        .powf_scalar(2.0)
        .sum_dim(2)
        .add_scalar(1e-6)
        .sqrt();
    x.div(norm)
}

/// The fraction of slots of `m` (`[b, slots, d]`) materially written, for values `v`
/// (`[b, seq, d]`); see [`MemoryStats::usage`].
pub fn slot_usage(m: Tensor<3>, v: Tensor<3>) -> Tensor<1> {
    let [b, slots, _] = m.dims();
    // RMS value norm per row: √(mean_t ‖v_t‖²), [b, 1, 1].
    let v_rms = v.powf_scalar(2.0).sum_dim(2).mean_dim(1).sqrt();
    let threshold = v_rms.mul_scalar(0.1 / (slots as f64).sqrt());
    let row_norm = m.powf_scalar(2.0).sum_dim(2).sqrt(); // [b, slots, 1]
    row_norm
        .greater_equal(threshold.expand([b, slots, 1]))
        .float()
        .mean()
        .reshape([1])
}

impl NeuralMemory {
    /// `gate_bias` sets the initial (η, θ, α) through their logits.
    pub fn new(
        init: &mut Init,
        d: usize,
        slots: usize,
        chunk: usize,
        gate_bias: [f32; 3],
        out_std: f64,
    ) -> Self {
        Self {
            wk: Dense::new(init, d, d, 0.02),
            wv: Dense::new(init, d, d, 0.02),
            wq: Dense::new(init, d, d, 0.02),
            address: Dense::new(init, d, slots, 0.02),
            wo: Dense::new(init, d, d, out_std),
            gates: Dense::new(init, d, 3, 0.02),
            gate_bias: init.values(gate_bias.to_vec(), [3]),
            chunk: chunk.max(1),
            slots,
        }
    }

    /// `h`: `[batch, seq, d]` → `[batch, seq, d]`.
    pub fn forward(&self, h: Tensor<3>) -> (Tensor<3>, MemoryStats) {
        let [b, s, d] = h.dims();
        let device = h.device();
        let a = l2_normalize(self.address.forward(self.wk.forward(h.clone())));
        let r = l2_normalize(self.address.forward(self.wq.forward(h.clone())));
        let v = self.wv.forward(h.clone());
        let mut m: Tensor<3> = Tensor::zeros([b, self.slots, d], &device);
        let mut mom: Tensor<3> = Tensor::zeros([b, self.slots, d], &device);
        let mut reads = Vec::new();
        let mut surprise = Vec::new();
        let mut start = 0;
        while start < s {
            let len = self.chunk.min(s - start);
            let a_c = a.clone().narrow(1, start, len);
            let v_c = v.clone().narrow(1, start, len);
            // Read before writing: this chunk sees only what earlier chunks stored.
            reads.push(r.clone().narrow(1, start, len).matmul(m.clone()));
            let pooled = h.clone().narrow(1, start, len).mean_dim(1);
            let g = sigmoid(
                self.gates
                    .forward(pooled)
                    .add(self.gate_bias.val().reshape([1, 1, 3])),
            );
            let eta = g.clone().narrow(2, 0, 1);
            let theta = g.clone().narrow(2, 1, 1);
            let alpha = g.narrow(2, 2, 1);
            let err = a_c.clone().matmul(m.clone()).sub(v_c);
            let grad = a_c.swap_dims(1, 2).matmul(err).mul_scalar(2.0 / len as f64);
            surprise.push(
                grad.clone()
                    .detach()
                    .powf_scalar(2.0)
                    .sum_dim(2)
                    .sum_dim(1)
                    .sqrt()
                    .mean(),
            );
            mom = eta.mul(mom).sub(theta.mul(grad));
            m = alpha.neg().add_scalar(1.0).mul(m).add(mom.clone());
            start += len;
        }
        let out = self.wo.forward(Tensor::cat(reads, 1));
        let usage = slot_usage(m.detach(), v.detach());
        let surprise = Tensor::cat(surprise, 0).mean();
        (out, MemoryStats { usage, surprise })
    }
}
