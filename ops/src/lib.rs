//! forge-ops: what a pipeline step *does*.
//!
//! This crate holds the [`Op`] trait, the [`StepContext`] a running op gets (work dir,
//! checkpoints, events, cancellation), the artifact kinds checked at plan time, the built-in ops
//! and the library they are glue over. It is the only crate that touches the numeric backend
//! (burn); the engine above it knows nothing of tensors, and the store below it nothing of ML.
//!
//! | module | owns |
//! |---|---|
//! | [`op`], [`error`], [`context`], [`artifact`] | the op interface: params, typed errors, what a running step may touch, artifact kinds |
//! | [`builtin`] | the built-in ops (thin: parameters → library calls → artifacts) |
//! | [`data`] | built-in generators, the record format, hub tables, training batches and curricula |
//! | [`text`] | the BPE tokenizer and text ↔ ids |
//! | [`model`] | the `trm-titans-mag` model, its weight I/O and artifact files |
//! | [`optim`] | Muon × Grokfast, QK-clip |
//! | [`train`] | the training loop and its objectives |
//! | [`eval`] | every measurement of a model, and merge fitness |
//! | [`merge`] | merge techniques, combos, the evolution |
//! | [`bake`] | Phase 3: the thinking tokens (names, tokenizer, embedding rows) |
//! | [`quant`] | Phase 4: BitNet b1.58 ternary quantization, the packed 2-bit format and its kernel |
//! | [`fetch`] | HTTP(S)/hub downloads and archive extraction |
//! | [`rng`] | the named random streams |
//! | [`linalg`] | small dense `f64` linear algebra (CMA-ES's eigendecomposition) |
//! | [`device`] | which burn backend a `device:` runs on |
//! | [`sys`] | the OS calls that need `unsafe` (the only module allowed it) |

pub mod artifact;
pub mod bake;
pub mod builtin;
pub mod context;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod fetch;
pub mod linalg;
pub mod merge;
pub mod model;
pub mod op;
pub mod optim;
pub mod quant;
pub mod rng;
pub mod sys;
pub mod text;
pub mod train;

pub use artifact::{
    ArtifactKind, InputArtifact, InputSignature, InputSpec, OutputSpec, StepInputs,
};
pub use context::{AlertLevel, CancelToken, EventSink, StepContext, StepEvent};
pub use error::{OpError, ParamsError, Tier};
pub use op::{
    KeyContext, Op, OpRegistry, Params, Resources, StepOutcome, TypedOp, parse_params, resolve_path,
};
