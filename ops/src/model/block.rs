//! One pre-norm block: attention and (optionally) the long-term memory combined by a learned
//! sigmoid gate — Titans' Memory-as-a-Gate (MAG) — followed by a SwiGLU feed-forward.
//!
//! ```text
//! h   = RMSNorm(x)
//! g   = σ(h W_g + b_g)                      per channel
//! x  += g ⊙ Attention(h) + (1 − g) ⊙ Memory(h)
//! x  += SwiGLU(RMSNorm(x))
//! ```

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::activation::sigmoid;

use super::attention::CausalAttention;
use super::layers::{Dense, Init, RmsNorm, Rope, SwiGlu};
use super::memory::{MemoryStats, NeuralMemory};

#[derive(Module, Debug)]
pub struct MagBlock {
    pub norm_attn: RmsNorm,
    pub attn: CausalAttention,
    pub memory: Option<NeuralMemory>,
    pub gate: Option<Dense>,
    pub gate_bias: Option<Param<Tensor<1>>>,
    pub norm_ffn: RmsNorm,
    pub ffn: SwiGlu,
}

/// Per-block statistics of one forward pass.
pub struct BlockStats {
    pub max_logit: Tensor<1>,
    pub memory: Option<MemoryStats>,
}

pub struct BlockSpec {
    pub d: usize,
    pub heads: usize,
    pub window: usize,
    pub d_ff: usize,
    /// `Some((slots, chunk, gate bias logits))` for a block with memory.
    pub memory: Option<(usize, usize, [f32; 3])>,
    /// Init std of the projections writing into the residual stream.
    pub out_std: f64,
}

impl MagBlock {
    pub fn new(init: &mut Init, spec: &BlockSpec) -> Self {
        let d = spec.d;
        let memory = spec.memory.map(|(slots, chunk, bias)| {
            NeuralMemory::new(init, d, slots, chunk, bias, spec.out_std)
        });
        let has_memory = memory.is_some();
        Self {
            norm_attn: RmsNorm::new(init, d),
            attn: CausalAttention::new(init, d, spec.heads, spec.window, spec.out_std),
            memory,
            gate: has_memory.then(|| Dense::new(init, d, d, 0.02)),
            // Start balanced between attention and memory.
            gate_bias: has_memory.then(|| init.constant([d], 0.0)),
            norm_ffn: RmsNorm::new(init, d),
            ffn: SwiGlu::new(init, d, spec.d_ff, spec.out_std),
        }
    }

    pub fn forward(&self, x: Tensor<3>, rope: &Rope, mask: &Tensor<4>) -> (Tensor<3>, BlockStats) {
        let d = x.dims()[2];
        let h = self.norm_attn.forward(x.clone());
        let (att, max_logit) = self.attn.forward(h.clone(), rope, mask);
        let (mixed, memory) = match (&self.memory, &self.gate, &self.gate_bias) {
            (Some(mem), Some(gate), Some(gb)) => {
                let (m, stats) = mem.forward(h.clone());
                let g = sigmoid(gate.forward(h).add(gb.val().reshape([1, 1, d])));
                let one_minus = g.clone().neg().add_scalar(1.0);
                (g.mul(att).add(one_minus.mul(m)), Some(stats))
            }
            _ => (att, None),
        };
        let x = x.add(mixed);
        let x = x.clone().add(self.ffn.forward(self.norm_ffn.forward(x)));
        (x, BlockStats { max_logit, memory })
    }
}
