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
    /// Effective number of slots in use (exp of the entropy of the address mass) / slots.
    pub usage: Tensor<1>,
    /// Mean Frobenius norm of the per-chunk gradient ("surprise").
    pub surprise: Tensor<1>,
}

fn l2_normalize(x: Tensor<3>) -> Tensor<3> {
    let norm = x
        .clone()
        .powf_scalar(2.0)
        .sum_dim(2)
        .add_scalar(1e-6)
        .sqrt();
    x.div(norm)
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
        // Slot usage: how evenly the write addresses spread over the slots.
        let mass = a.detach().abs().sum_dim(1).sum_dim(0).reshape([self.slots]);
        let p = mass.clone().div(mass.sum().add_scalar(1e-12));
        let entropy = p.clone().mul(p.add_scalar(1e-12).log()).sum().neg();
        let usage = entropy.exp().div_scalar(self.slots as f64);
        let surprise = Tensor::cat(surprise, 0).mean();
        (out, MemoryStats { usage, surprise })
    }
}
