//! The `Op` trait: what one kind of step does. `engine` decides whether and when a step runs;
//! an op only says what its parameters are, what it consumes and produces, what besides its
//! parameters belongs in its cache key, and how to run.
//!
//! Most ops implement [`TypedOp`], which derives the object-safe [`Op`] from a typed parameter
//! struct (serde + schemars): its JSON Schema goes into `schemas/pipeline.schema.json`, and
//! parsing a step's `with:` block into it both validates the block and fills in defaults.

use std::path::{Path, PathBuf};

use forge_cache::Store;
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::artifact::{InputSignature, OutputSpec, StepInputs};
use crate::context::StepContext;

/// A step failed. `Transient` failures (network, a busy server) are retried with backoff;
/// everything else is deterministic and is not.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{0}")]
    Transient(String),
    #[error("{0}")]
    Failed(String),
    #[error("{message}")]
    FailedWithDetail { message: String, detail: String },
    #[error("cancelled: {0}")]
    Cancelled(String),
    #[error("I/O error on `{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] forge_cache::StoreError),
}

impl OpError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient(_))
    }
    /// Extra lines to show under the error (e.g. a command's stderr tail).
    pub fn detail(&self) -> Option<&str> {
        match self {
            Self::FailedWithDetail { detail, .. } => Some(detail),
            _ => None,
        }
    }
}

/// A step's `with:` block does not fit the op's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamsError {
    /// Path inside `with:` to the offending value (map keys and list indices).
    pub path: Vec<String>,
    pub message: String,
    pub hint: Option<String>,
}

impl ParamsError {
    pub fn at(path: &[&str], message: impl Into<String>) -> Self {
        Self {
            path: path.iter().map(|s| s.to_string()).collect(),
            message: message.into(),
            hint: None,
        }
    }
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// What key computation may look at besides the params: the pipeline's directory and the store's
/// stat-cached hashing, so `file:` inputs enter keys by content.
pub struct KeyContext<'a> {
    pub pipeline_dir: &'a Path,
    pub store: &'a Store,
}

/// What a successful run returns besides the outputs it wrote.
#[derive(Debug, Default, Clone)]
pub struct StepOutcome {
    /// Final metrics, stored with the action and shown by `forge show`.
    pub metrics: serde_json::Map<String, Value>,
}

/// Compute resources a step holds while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU slots (out of `--jobs`).
    #[serde(default = "one")]
    pub cpus: u32,
    /// GPUs; a GPU step holds its device exclusively.
    #[serde(default)]
    pub gpus: u32,
}

fn one() -> u32 {
    1
}

impl Default for Resources {
    fn default() -> Self {
        Self { cpus: 1, gpus: 0 }
    }
}

/// One kind of step. Object-safe; see [`TypedOp`] for the convenient way to implement it.
pub trait Op: Send + Sync {
    /// The name used in `op:`.
    fn name(&self) -> &'static str;
    /// Bumped whenever the same params and inputs would produce different bytes.
    fn version(&self) -> u32;
    /// One line for `forge schema` and editor hovers.
    fn description(&self) -> &'static str;
    /// JSON Schema of the `with:` block.
    fn params_schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema;
    /// Validate a `with:` block and return it with defaults filled in (the canonical form that
    /// enters the key).
    fn normalize_params(&self, raw: &Value) -> Result<Value, ParamsError>;
    fn inputs(&self, params: &Value) -> InputSignature;
    fn outputs(&self, params: &Value) -> Vec<OutputSpec>;
    /// Key material besides params and input digests, e.g. the content digest of a `file:` path.
    fn key_extras(&self, _params: &Value, _cx: &KeyContext<'_>) -> Result<Value, OpError> {
        Ok(Value::Null)
    }
    /// Numeric backend class (`cpu-flex`, `libtorch-cuda`, …) for compute ops; part of the key.
    fn backend_class(&self, _params: &Value, _device: &str) -> Option<String> {
        None
    }
    fn default_resources(&self, _params: &Value) -> Resources {
        Resources::default()
    }
    /// How many times a transient failure is retried unless the step says otherwise.
    fn default_retries(&self) -> u32 {
        0
    }
    /// Files outside the store this step reads, for `apply --watch`.
    fn watch_paths(&self, _params: &Value, _pipeline_dir: &Path) -> Vec<PathBuf> {
        Vec::new()
    }
    fn run(
        &self,
        ctx: &StepContext,
        inputs: &StepInputs,
        params: &Value,
    ) -> Result<StepOutcome, OpError>;
}

/// An op with a typed parameter struct. Implement this; [`Op`] comes for free.
pub trait TypedOp: Send + Sync {
    type Params: DeserializeOwned + Serialize + JsonSchema;
    const NAME: &'static str;
    const VERSION: u32;
    const DESCRIPTION: &'static str;

    /// Rewrite the raw `with:` block before it is parsed (e.g. expand a `preset:` name into its
    /// values, letting explicit keys override them).
    fn prepare_raw(&self, raw: Value) -> Result<Value, ParamsError> {
        Ok(raw)
    }
    /// Semantic checks beyond the types (e.g. "https sources need a digest").
    fn check(&self, _params: &Self::Params) -> Result<(), ParamsError> {
        Ok(())
    }
    fn inputs(&self, params: &Self::Params) -> InputSignature;
    fn outputs(&self, params: &Self::Params) -> Vec<OutputSpec>;
    fn key_extras(&self, _params: &Self::Params, _cx: &KeyContext<'_>) -> Result<Value, OpError> {
        Ok(Value::Null)
    }
    fn backend_class(&self, _params: &Self::Params, _device: &str) -> Option<String> {
        None
    }
    fn default_resources(&self, _params: &Self::Params) -> Resources {
        Resources::default()
    }
    fn default_retries(&self) -> u32 {
        0
    }
    fn watch_paths(&self, _params: &Self::Params, _pipeline_dir: &Path) -> Vec<PathBuf> {
        Vec::new()
    }
    fn run(
        &self,
        ctx: &StepContext,
        inputs: &StepInputs,
        params: &Self::Params,
    ) -> Result<StepOutcome, OpError>;
}

/// Parse a `with:` block into `P`, reporting where it does not fit.
pub fn parse_params<P: DeserializeOwned>(raw: &Value) -> Result<P, ParamsError> {
    serde_path_to_error::deserialize::<_, P>(raw).map_err(|e| {
        let path: Vec<String> = e
            .path()
            .iter()
            .filter_map(|seg| match seg {
                serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                serde_path_to_error::Segment::Enum { variant } => Some(variant.clone()),
                serde_path_to_error::Segment::Unknown => None,
            })
            .collect();
        ParamsError {
            path,
            message: e.inner().to_string(),
            hint: None,
        }
    })
}

fn typed<T: TypedOp>(params: &Value) -> T::Params {
    // The engine only passes params that `normalize_params` produced.
    parse_params(params)
        .unwrap_or_else(|e| panic!("{}: params were not normalized: {}", T::NAME, e.message))
}

impl<T: TypedOp> Op for T {
    fn name(&self) -> &'static str {
        T::NAME
    }
    fn version(&self) -> u32 {
        T::VERSION
    }
    fn description(&self) -> &'static str {
        T::DESCRIPTION
    }
    fn params_schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        generator.subschema_for::<T::Params>()
    }
    fn normalize_params(&self, raw: &Value) -> Result<Value, ParamsError> {
        let raw = if raw.is_null() {
            Value::Object(Default::default())
        } else {
            raw.clone()
        };
        let raw = self.prepare_raw(raw)?;
        let p: T::Params = parse_params(&raw)?;
        self.check(&p)?;
        Ok(serde_json::to_value(&p).expect("params serialize"))
    }
    fn inputs(&self, params: &Value) -> InputSignature {
        TypedOp::inputs(self, &typed::<T>(params))
    }
    fn outputs(&self, params: &Value) -> Vec<OutputSpec> {
        TypedOp::outputs(self, &typed::<T>(params))
    }
    fn key_extras(&self, params: &Value, cx: &KeyContext<'_>) -> Result<Value, OpError> {
        TypedOp::key_extras(self, &typed::<T>(params), cx)
    }
    fn backend_class(&self, params: &Value, device: &str) -> Option<String> {
        TypedOp::backend_class(self, &typed::<T>(params), device)
    }
    fn default_resources(&self, params: &Value) -> Resources {
        TypedOp::default_resources(self, &typed::<T>(params))
    }
    fn default_retries(&self) -> u32 {
        TypedOp::default_retries(self)
    }
    fn watch_paths(&self, params: &Value, pipeline_dir: &Path) -> Vec<PathBuf> {
        TypedOp::watch_paths(self, &typed::<T>(params), pipeline_dir)
    }
    fn run(
        &self,
        ctx: &StepContext,
        inputs: &StepInputs,
        params: &Value,
    ) -> Result<StepOutcome, OpError> {
        TypedOp::run(self, ctx, inputs, &typed::<T>(params))
    }
}

/// The set of ops a pipeline may name.
#[derive(Clone, Default)]
pub struct OpRegistry {
    ops: std::collections::BTreeMap<&'static str, std::sync::Arc<dyn Op>>,
}

impl OpRegistry {
    /// An empty registry.
    pub fn empty() -> Self {
        Self::default()
    }

    /// forge's built-in ops.
    pub fn builtin() -> Self {
        let mut r = Self::empty();
        r.register(crate::builtin::download::Download);
        r.register(crate::builtin::exec::Exec);
        r.register(crate::builtin::merge::Merge);
        r.register(crate::builtin::tokenizer::Tokenizer);
        r.register(crate::builtin::train::Train);
        r.register(crate::builtin::validate::Validate);
        r
    }

    /// Add (or replace) an op.
    pub fn register(&mut self, op: impl Op + 'static) -> &mut Self {
        self.ops.insert(op.name(), std::sync::Arc::new(op));
        self
    }

    pub fn get(&self, name: &str) -> Option<&std::sync::Arc<dyn Op>> {
        self.ops.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.ops.keys().copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = &std::sync::Arc<dyn Op>> + '_ {
        self.ops.values()
    }
}

/// Resolve a path from a pipeline relative to the pipeline's directory.
pub fn resolve_path(pipeline_dir: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_owned()
    } else {
        pipeline_dir.join(p)
    }
}
