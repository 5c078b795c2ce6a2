//! Phase 4: BitNet b1.58 ternary quantization (Ma et al., 2024), as plain numbers — no burn.
//!
//! | module | owns |
//! |---|---|
//! | [`ternary`] | absmean weight quantization to {−1, 0, +1} with one scale per tensor, and absmax int8 activations per token (W1.58A8) |
//! | [`packed`] | the packed 2-bit format (I2_S-style: four weights per byte, 128-weight blocks) and its exact round trip |
//! | [`kernel`] | ternary-weight × int8-activation products on the packed format |
//! | [`model`] | a whole model: which tensors become ternary or keep a precision, the `quantized-model` weights file |
//! | [`staged`] | layer-by-layer quantization with rollback of layers that cost too much |
//!
//! The formulas are the reference code's (`weight_quant` and `quant_input` of microsoft/BitNet):
//! `s = 1 / max(mean|W|, 1e-5)`, `W_q = clamp(round(s·W), −1, 1)`, `W ≈ W_q / s`; and per token
//! `s_x = 127 / max(max|x|, 1e-5)`, `x_q = clamp(round(s_x·x), −128, 127)`. Rounding is to the
//! nearest, ties to even, as `torch.round`.

pub mod kernel;
pub mod model;
pub mod packed;
pub mod staged;
pub mod ternary;

pub use packed::PackedTernary;
pub use ternary::{Ternary, quantize_activations, quantize_weights};
