//! Causal sliding-window multi-head self-attention with rotary positions.
//!
//! Position `i` attends to positions `j` with `i - window < j <= i` and to nothing later: the
//! mask is applied to the scores as `-1e9` before the softmax, so masked weights are exactly zero
//! and a later token can never change an earlier position's output. The largest pre-softmax score
//! per head is kept for QK-clip (the optimizer rescales W_q and W_k when it exceeds τ).

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

use super::fused::{max_keeping, softmax};
use super::layers::{Dense, Init, Rope};

#[derive(Module, Debug)]
pub struct CausalAttention {
    pub wq: Dense,
    pub wk: Dense,
    pub wv: Dense,
    pub wo: Dense,
    pub n_heads: usize,
    pub window: usize,
}

/// The additive mask for `seq` positions and a window: 0 where allowed, -1e9 elsewhere.
pub fn causal_window_bias(seq: usize, window: usize, device: &Device) -> Tensor<4> {
    let mut v = vec![0f32; seq * seq];
    for i in 0..seq {
        for j in 0..seq {
            if j > i || i - j >= window {
                v[i * seq + j] = -1e9;
            }
        }
    }
    Tensor::from_data(TensorData::new(v, [1, 1, seq, seq]), device)
}

impl CausalAttention {
    pub fn new(init: &mut Init, d: usize, n_heads: usize, window: usize, out_std: f64) -> Self {
        assert!(
            d.is_multiple_of(n_heads) && (d / n_heads).is_multiple_of(2),
            "d_model must split into even-sized heads"
        );
        Self {
            wq: Dense::new(init, d, d, 0.02),
            wk: Dense::new(init, d, d, 0.02),
            wv: Dense::new(init, d, d, 0.02),
            wo: Dense::new(init, d, d, out_std),
            n_heads,
            window,
        }
    }

    /// `x`: `[batch, seq, d]`; `mask`: an additive mask `[1 or batch, 1, seq, seq]` (0 where a
    /// position may attend, -1e9 where not), e.g. [`causal_window_bias`] cut to `seq`, or a
    /// per-batch mask built for the batch. Returns the output and the maximum attention logit of
    /// each head (`[heads]`, detached).
    pub fn forward(&self, x: Tensor<3>, rope: &Rope, mask: &Tensor<4>) -> (Tensor<3>, Tensor<1>) {
        let [b, s, d] = x.dims();
        let h = self.n_heads;
        let dh = d / h;
        let split = |t: Tensor<3>| t.reshape([b, s, h, dh]).swap_dims(1, 2);
        let q = rope.apply(split(self.wq.forward(x.clone())));
        let k = rope.apply(split(self.wk.forward(x.clone())));
        let v = split(self.wv.forward(x));
        let scores = q.matmul(k.swap_dims(2, 3)).div_scalar((dh as f64).sqrt());
        let masked = scores.add(mask.clone());
        // Max over allowed positions only (masked scores sit near -1e9); detached.
        let max_logit = max_keeping(masked.clone(), 1);
        let weights = softmax(masked, 3);
        let out = weights.matmul(v).swap_dims(1, 2).reshape([b, s, d]);
        (self.wo.forward(out), max_logit)
    }
}
