//! forge: build small language models from a declarative YAML pipeline.
//!
//! This crate is the engine and the CLI. It reads a pipeline file ([`pipeline`], [`yaml`]),
//! plans it into a DAG of steps ([`plan`]), computes each step's cache key ([`key`]), and runs
//! what is not cached ([`executor`]), reporting [`events`] as it goes. It knows nothing of
//! tensors: what a step *does* lives in `forge-ops`, where its results live in `forge-cache`.

pub mod cli;
pub mod dag;
pub mod diag;
pub mod eval;
pub mod events;
pub mod executor;
pub mod exit;
pub mod generate;
pub mod hardware;
pub mod import;
pub mod key;
pub mod load;
pub mod lookup;
pub mod metrics;
pub mod metrics_export;
pub mod params_schema;
pub mod pipeline;
pub mod plan;
pub mod report;
pub mod saved_plan;
pub mod schema;
pub mod serve;
pub mod slurm;
pub mod sync;
pub mod tensorboard;
pub mod vars;
pub mod watch;
pub mod yaml;

pub use cli::main_with_registry;
pub use forge_cache as cache;
pub use forge_ops as ops;
