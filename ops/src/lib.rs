//! forge-ops: what a pipeline step *does*.
//!
//! This crate holds the [`Op`] trait, the [`StepContext`] a running op gets (work dir,
//! checkpoints, events, cancellation), the artifact kinds checked at plan time, and the built-in
//! ops. It is the only crate that will touch the numeric backend (burn); the engine above it knows
//! nothing of tensors, and the store below it nothing of ML.

pub mod artifact;
pub mod builtin;
pub mod context;
pub mod data;
pub mod device;
pub mod merge;
pub mod model;
pub mod op;
pub mod optim;
pub mod train;

pub use artifact::{
    ArtifactKind, InputArtifact, InputSignature, InputSpec, OutputSpec, StepInputs,
};
pub use context::{AlertLevel, CancelToken, EventSink, StepContext, StepEvent};
pub use op::{
    KeyContext, Op, OpError, OpRegistry, ParamsError, Resources, StepOutcome, TypedOp,
    parse_params, resolve_path,
};
