//! The `trm-titans-mag` model on burn: TRM recursion over a stack of MAG blocks (causal
//! sliding-window attention gated with a Titans neural long-term memory), deep supervision and an
//! ACT halting head. Only this crate touches burn.
//!
//! | module | owns |
//! |---|---|
//! | [`layers`] | seeded init, dense projections, RMSNorm, RoPE, SwiGLU |
//! | [`attention`] | causal sliding-window attention (+ max logits for QK-clip) |
//! | [`fused`] | softmax, log-softmax and SiLU as one op each with closed-form backward passes; per-head max |
//! | [`rowwise`] | flex's kernels for those ops: row-wise f32 loops with a vectorised `exp` |
//! | [`memory`] | Titans memory: test-time gradient updates with momentum and forgetting |
//! | [`block`] | the MAG block |
//! | [`trm`] | recursion, deep supervision, ACT |
//! | [`decode`] | incremental decoding: per-pass key/value and memory caches |
//! | [`mixing`] | Quiet-STaR's mixing head (in a model whose config asks for it) |
//! | [`thoughts`] | Quiet-STaR's parallel thoughts over a decoded text (the diagonal mask) |
//! | [`config`] | `ModelConfig` and presets |
//! | [`ternary`] | a BitNet b1.58 model's ternary layers: through the packed kernel, or computed in burn |
//! | [`weights`] | weight I/O: byte-stable safetensors, exact, partial and renamed loading |
//! | [`inputs`] | token rows into input ids and shifted labels |
//! | [`files`] | the files of a `model` artifact |
//! | [`hf`] | a model artifact as a Hugging Face transformers directory (with `hf/modeling_forge.py`) |

pub mod attention;
pub mod block;
pub mod config;
pub mod decode;
pub mod files;
pub mod fused;
pub mod hf;
pub mod inputs;
pub mod layers;
pub mod memory;
pub mod mixing;
pub mod rowwise;
pub mod ternary;
pub mod thoughts;
pub mod trm;
pub mod weights;

#[cfg(test)]
mod tests;

pub use config::{ModelConfig, size_category};
pub use inputs::to_tensors;
pub use trm::{InferOutput, Tables, TrainOutput, TrmTitansMag, kl_divergence};
pub use weights::{LoadReport, WeightsError, canonical_safetensors};
