//! Model configuration for `trm-titans-mag`, with the `tiny` (CPU, minutes) and `25m` (GPU)
//! presets. Every field has a default, so a pipeline names a preset and overrides what it needs.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A `trm-titans-mag` model's architecture and size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Architecture; only `trm-titans-mag` exists.
    #[serde(default = "d::arch")]
    pub arch: String,
    /// Start from a named configuration (`tiny`, `25m`); keys given next to it override it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// Vocabulary size (must match the tokenizer's).
    #[serde(default = "d::vocab")]
    pub vocab_size: usize,
    /// Width of the residual stream (embedding size); a multiple of `heads`.
    #[serde(default = "d::d_model")]
    pub d_model: usize,
    /// Transformer blocks per recursion pass.
    #[serde(default = "d::layers")]
    pub layers: usize,
    /// Attention heads per block.
    #[serde(default = "d::heads")]
    pub heads: usize,
    /// SwiGLU hidden width.
    #[serde(default = "d::d_ff")]
    pub d_ff: usize,
    /// Sliding attention window (tokens, the current one included).
    #[serde(default = "d::window")]
    pub window: usize,
    /// Longest sequence the rotary tables are built for.
    #[serde(default = "d::max_seq")]
    pub max_seq: usize,
    /// Base of the rotary position embedding's frequencies.
    #[serde(default = "d::rope_theta")]
    pub rope_theta: f64,
    /// Blocks (0-based) that carry a Titans long-term memory.
    #[serde(default = "d::memory_layers")]
    pub memory_layers: Vec<usize>,
    /// Memory width: address slots of the long-term memory.
    #[serde(default = "d::ltm_slots")]
    pub ltm_slots: usize,
    /// Tokens per memory update.
    #[serde(default = "d::mem_chunk")]
    pub mem_chunk: usize,
    /// Initial momentum η, step size θ and forgetting α of the memory, each in (0, 1). Set, they
    /// also replace the gates of an `init` model the step starts from (a variant's own memory
    /// behaviour); unset, a fresh model starts from 0.9, 0.1, 0.05 and an `init` model keeps its.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_gates: Option<[f64; 3]>,
    /// TRM: latent updates per cycle.
    #[serde(default = "d::n_inner")]
    pub n_inner: usize,
    /// TRM: cycles per supervision step (gradient flows through the last only).
    #[serde(default = "d::cycles")]
    pub cycles: usize,
    /// TRM: deep-supervision steps in training; the most ACT steps at inference.
    #[serde(default = "d::sup_steps")]
    pub sup_steps: usize,
    /// ACT: a token stops recursing once its halting probability reaches this.
    #[serde(default = "d::act_threshold")]
    pub act_threshold: f64,
    /// Weight of the halting head's BCE loss.
    #[serde(default = "d::act_weight")]
    pub act_weight: f64,
    /// Share the token embedding with the output head.
    #[serde(default = "d::tied")]
    pub tie_embeddings: bool,
    /// Quiet-STaR's mixing head over the states before and after a thought (set by
    /// `objective: quiet-star`, which adds the head to its input model).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mixing_head: bool,
}

mod d {
    pub fn arch() -> String {
        "trm-titans-mag".into()
    }
    pub fn vocab() -> usize {
        4096
    }
    pub fn d_model() -> usize {
        128
    }
    pub fn layers() -> usize {
        3
    }
    pub fn heads() -> usize {
        4
    }
    pub fn d_ff() -> usize {
        384
    }
    pub fn window() -> usize {
        128
    }
    pub fn max_seq() -> usize {
        256
    }
    pub fn rope_theta() -> f64 {
        10_000.0
    }
    pub fn memory_layers() -> Vec<usize> {
        vec![1]
    }
    pub fn ltm_slots() -> usize {
        64
    }
    pub fn mem_chunk() -> usize {
        16
    }

    pub fn n_inner() -> usize {
        1
    }
    pub fn cycles() -> usize {
        2
    }
    pub fn sup_steps() -> usize {
        2
    }
    pub fn act_threshold() -> f64 {
        0.95
    }
    pub fn act_weight() -> f64 {
        0.1
    }
    pub fn tied() -> bool {
        true
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self::tiny()
    }
}

/// The memory gates (η, θ, α) of a fresh model whose config sets none.
pub const DEFAULT_MEM_GATES: [f64; 3] = [0.9, 0.1, 0.05];

impl ModelConfig {
    /// The memory gates a fresh model of this config starts from.
    pub fn initial_mem_gates(&self) -> [f64; 3] {
        self.mem_gates.unwrap_or(DEFAULT_MEM_GATES)
    }

    /// ≈1–3M parameters; trains on two CPU cores in minutes.
    pub fn tiny() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("defaults")
    }

    /// d_model 512, 8 layers, 8 heads: ≈25M parameters, for a GPU.
    pub fn m25() -> Self {
        Self {
            vocab_size: 8192,
            d_model: 512,
            layers: 8,
            heads: 8,
            d_ff: 768,
            window: 256,
            max_seq: 512,
            memory_layers: vec![3, 7],
            ltm_slots: 512,
            mem_chunk: 32,
            ..Self::tiny()
        }
    }

    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "tiny" => Some(Self::tiny()),
            "25m" => Some(Self::m25()),
            _ => None,
        }
    }

    /// Problems with this config, as messages (empty when valid).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.arch != "trm-titans-mag" {
            p.push(format!(
                "unknown architecture `{}` (available: trm-titans-mag)",
                self.arch
            ));
        }
        if self.heads == 0
            || !self.d_model.is_multiple_of(self.heads)
            || !(self.d_model / self.heads).is_multiple_of(2)
        {
            p.push(format!(
                "d_model {} must split into `heads` ({}) heads of even size",
                self.d_model, self.heads
            ));
        }
        if let Some(l) = self.memory_layers.iter().find(|l| **l >= self.layers) {
            p.push(format!(
                "memory layer {l} does not exist (layers: {})",
                self.layers
            ));
        }
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("layers", self.layers),
            ("window", self.window),
            ("ltm_slots", self.ltm_slots),
            ("mem_chunk", self.mem_chunk),
            ("cycles", self.cycles),
            ("sup_steps", self.sup_steps),
            ("max_seq", self.max_seq),
        ] {
            if v == 0 {
                p.push(format!("{name} must be positive"));
            }
        }
        if self
            .mem_gates
            .iter()
            .flatten()
            .any(|g| !(*g > 0.0 && *g < 1.0))
        {
            p.push("mem_gates must each be in (0, 1)".into());
        }
        if !(0.0..=1.0).contains(&self.act_threshold) {
            p.push("act_threshold must be in [0, 1]".into());
        }
        p
    }
}

/// Size category of a parameter count (seed plan: tiny < 50M ≤ small < 500M ≤ medium < 2B ≤ large).
pub fn size_category(params: usize) -> &'static str {
    match params {
        n if n < 50_000_000 => "tiny",
        n if n < 500_000_000 => "small",
        n if n < 2_000_000_000 => "medium",
        _ => "large",
    }
}

#[cfg(test)]
impl ModelConfig {
    /// One 16-wide layer without memory over a 40-token vocabulary: unit tests' smallest model.
    pub fn micro() -> Self {
        ModelConfig {
            vocab_size: 40,
            d_model: 16,
            heads: 2,
            layers: 1,
            d_ff: 32,
            max_seq: 16,
            window: 16,
            memory_layers: vec![],
            ..ModelConfig::tiny()
        }
    }
}
