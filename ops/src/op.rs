//! The `Op` trait: what one kind of step does. `engine` decides whether and when a step runs;
//! an op only says what its parameters are, what it consumes and produces, what besides its
//! parameters belongs in its cache key, and how to run.
//!
//! Most ops implement [`TypedOp`], which derives the object-safe [`Op`] from a typed parameter
//! struct (serde + schemars): its JSON Schema goes into `schemas/pipeline.schema.json`, and
//! parsing a step's `with:` block into it both validates the block and fills in defaults.

use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use forge_cache::Store;
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::artifact::{InputSignature, OutputSpec, StepInputs};
use crate::context::StepContext;
use crate::error::{OpError, ParamsError};

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

/// A step's parameters, parsed once at plan time: the canonical JSON that enters the key (defaults
/// filled in) and the op's typed struct, which every later call receives without re-parsing.
#[derive(Clone)]
pub struct Params {
    value: Value,
    typed: Arc<dyn Any + Send + Sync>,
}

impl Params {
    /// Parameters of an op whose typed form is `typed`; `value` must be its canonical JSON.
    pub fn new<P: Any + Send + Sync>(value: Value, typed: P) -> Self {
        Self {
            value,
            typed: Arc::new(typed),
        }
    }
    /// The canonical JSON form (what the key holds).
    pub fn value(&self) -> &Value {
        &self.value
    }
    /// The typed form, when it is a `P`.
    pub fn typed<P: Any>(&self) -> Option<&P> {
        self.typed.downcast_ref::<P>()
    }
}

impl std::fmt::Debug for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.value.fmt(f)
    }
}

impl std::ops::Index<&str> for Params {
    type Output = Value;
    fn index(&self, key: &str) -> &Value {
        &self.value[key]
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
    /// Validate a `with:` block and parse it, defaults filled in: the canonical form enters the
    /// key, the typed form every other call.
    fn parse_params(&self, raw: &Value) -> Result<Params, ParamsError>;
    fn inputs(&self, params: &Params) -> InputSignature;
    fn outputs(&self, params: &Params) -> Vec<OutputSpec>;
    /// The metric names its outputs' `metrics.json` will hold (`*` stands for one `/`-separated
    /// segment, e.g. `parents/*/fitness`); `None` when they cannot be known before it runs.
    fn metrics(&self, _params: &Params) -> Option<Vec<String>> {
        None
    }
    /// The metric names it reads from its inputs' `metrics.json` (a `validate` step's checks):
    /// the plan refuses one that an input's op does not write.
    fn checked_metrics(&self, _params: &Params) -> Vec<String> {
        Vec::new()
    }
    /// Key material besides params and input digests, e.g. the content digest of a `file:` path.
    fn key_extras(&self, _params: &Params, _cx: &KeyContext<'_>) -> Result<Value, OpError> {
        Ok(Value::Null)
    }
    /// Numeric backend class (`cpu-flex-avx512`, `libtorch-cuda`, …) for compute ops; part of the key.
    fn backend_class(&self, _params: &Params, _device: &str) -> Option<String> {
        None
    }
    fn default_resources(&self, _params: &Params) -> Resources {
        Resources::default()
    }
    /// How many times a transient failure is retried unless the step says otherwise.
    fn default_retries(&self) -> u32 {
        0
    }
    /// Files outside the store this step reads, for `apply --watch`.
    fn watch_paths(&self, _params: &Params, _pipeline_dir: &Path) -> Vec<PathBuf> {
        Vec::new()
    }
    /// Plan-time checks of those files (relative paths from the pipeline's directory), e.g. that
    /// a `file:` source exists: a problem is an invalid pipeline, located at the parameter.
    fn check_files(&self, _params: &Params, _pipeline_dir: &Path) -> Result<(), ParamsError> {
        Ok(())
    }
    fn run(
        &self,
        ctx: &StepContext,
        inputs: &StepInputs,
        params: &Params,
    ) -> Result<StepOutcome, OpError>;
}

/// An op with a typed parameter struct. Implement this; [`Op`] comes for free.
pub trait TypedOp: Send + Sync {
    type Params: DeserializeOwned + Serialize + JsonSchema + Send + Sync + 'static;
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
    fn metrics(&self, _params: &Self::Params) -> Option<Vec<String>> {
        None
    }
    fn checked_metrics(&self, _params: &Self::Params) -> Vec<String> {
        Vec::new()
    }
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
    fn check_files(&self, _params: &Self::Params, _pipeline_dir: &Path) -> Result<(), ParamsError> {
        Ok(())
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
            message: in_plain_terms(&e.inner().to_string()),
            hint: None,
        }
    })
}

/// A serde message in the user's terms: the Rust type it expected (`expected u64`) as what to
/// write (`expected a whole number ≥ 0`).
fn in_plain_terms(message: &str) -> String {
    const TYPES: [(&str, &str); 14] = [
        ("usize", "a whole number ≥ 0"),
        ("u64", "a whole number ≥ 0"),
        ("u32", "a whole number ≥ 0"),
        ("u16", "a whole number ≥ 0"),
        ("u8", "a whole number ≥ 0"),
        ("isize", "a whole number"),
        ("i64", "a whole number"),
        ("i32", "a whole number"),
        ("i16", "a whole number"),
        ("i8", "a whole number"),
        ("f64", "a number"),
        ("f32", "a number"),
        ("char", "a single character"),
        ("unit", "nothing"),
    ];
    let mut out = message.replace("floating point `", "number `");
    for (rust, plain) in TYPES {
        let from = format!("expected {rust}");
        let mut at = 0;
        while let Some(i) = out[at..].find(&from).map(|i| i + at) {
            let end = i + from.len();
            // Only the whole word: `u8` is not the start of `u8_thing`.
            if out[end..].starts_with(|c: char| c.is_alphanumeric() || c == '_') {
                at = end;
                continue;
            }
            out.replace_range(i..end, &format!("expected {plain}"));
            at = i;
        }
    }
    out
}

fn typed<T: TypedOp>(params: &Params) -> &T::Params {
    // The engine only passes params that this op's `parse_params` produced.
    params
        .typed::<T::Params>()
        .unwrap_or_else(|| panic!("{}: params were parsed by another op", T::NAME))
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
    fn parse_params(&self, raw: &Value) -> Result<Params, ParamsError> {
        let raw = if raw.is_null() {
            Value::Object(Default::default())
        } else {
            raw.clone()
        };
        let raw = self.prepare_raw(raw)?;
        let p: T::Params = parse_params(&raw)?;
        self.check(&p)?;
        let value = serde_json::to_value(&p).expect("params serialize");
        Ok(Params::new(value, p))
    }
    fn inputs(&self, params: &Params) -> InputSignature {
        TypedOp::inputs(self, typed::<T>(params))
    }
    fn outputs(&self, params: &Params) -> Vec<OutputSpec> {
        TypedOp::outputs(self, typed::<T>(params))
    }
    fn metrics(&self, params: &Params) -> Option<Vec<String>> {
        TypedOp::metrics(self, typed::<T>(params))
    }
    fn checked_metrics(&self, params: &Params) -> Vec<String> {
        TypedOp::checked_metrics(self, typed::<T>(params))
    }
    fn key_extras(&self, params: &Params, cx: &KeyContext<'_>) -> Result<Value, OpError> {
        TypedOp::key_extras(self, typed::<T>(params), cx)
    }
    fn backend_class(&self, params: &Params, device: &str) -> Option<String> {
        TypedOp::backend_class(self, typed::<T>(params), device)
    }
    fn default_resources(&self, params: &Params) -> Resources {
        TypedOp::default_resources(self, typed::<T>(params))
    }
    fn default_retries(&self) -> u32 {
        TypedOp::default_retries(self)
    }
    fn watch_paths(&self, params: &Params, pipeline_dir: &Path) -> Vec<PathBuf> {
        TypedOp::watch_paths(self, typed::<T>(params), pipeline_dir)
    }
    fn check_files(&self, params: &Params, pipeline_dir: &Path) -> Result<(), ParamsError> {
        TypedOp::check_files(self, typed::<T>(params), pipeline_dir)
    }
    fn run(
        &self,
        ctx: &StepContext,
        inputs: &StepInputs,
        params: &Params,
    ) -> Result<StepOutcome, OpError> {
        TypedOp::run(self, ctx, inputs, typed::<T>(params))
    }
}

/// In an op's raw parameters, overlay the block `raw[key]` on the preset it names with
/// `preset:` (keys given beside it win); an unknown name is an error listing `names`.
pub fn expand_preset(
    raw: &mut Value,
    key: &str,
    preset: impl Fn(&str) -> Option<Value>,
    names: &str,
) -> Result<(), ParamsError> {
    let Some(block) = raw.get_mut(key).and_then(Value::as_object_mut) else {
        return Ok(());
    };
    let Some(name) = block
        .get("preset")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return Ok(());
    };
    let Some(Value::Object(mut base)) = preset(&name) else {
        return Err(
            ParamsError::at(&[key, "preset"], format!("unknown preset `{name}`"))
                .with_hint(format!("presets: {names}")),
        );
    };
    for (k, v) in block.iter() {
        base.insert(k.clone(), v.clone());
    }
    *block = base;
    Ok(())
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

/// Whether metric `name` matches a declared `pattern`: segment by segment (`/`), where a `*` in a
/// pattern segment stands for any text inside one segment (`parents/*_lo` matches `parents/0_lo`).
pub fn metric_matches(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), name.split('/').collect());
    p.len() == n.len()
        && p.iter().zip(&n).all(|(p, n)| match p.split_once('*') {
            None => p == n,
            Some((pre, post)) => {
                n.len() >= pre.len() + post.len() && n.starts_with(pre) && n.ends_with(post)
            }
        })
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

#[cfg(test)]
mod tests {
    use super::{in_plain_terms, metric_matches};

    #[test]
    fn parameter_errors_name_what_to_write_not_rust_types() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct P {
            n: usize,
            x: f64,
            k: i32,
        }
        let err = |v: serde_json::Value| super::parse_params::<P>(&v).unwrap_err().message;
        let m = err(serde_json::json!({ "n": -3, "x": 1.0, "k": 1 }));
        assert_eq!(
            m,
            "invalid value: integer `-3`, expected a whole number ≥ 0"
        );
        let m = err(serde_json::json!({ "n": 2.5, "x": 1.0, "k": 1 }));
        assert_eq!(m, "invalid type: number `2.5`, expected a whole number ≥ 0");
        let m = err(serde_json::json!({ "n": 1, "x": "high", "k": 1 }));
        assert_eq!(m, r#"invalid type: string "high", expected a number"#);
        let m = err(serde_json::json!({ "n": 1, "x": 1.0, "k": "a" }));
        assert_eq!(m, r#"invalid type: string "a", expected a whole number"#);
        // Only whole words change.
        assert_eq!(in_plain_terms("expected u8_thing"), "expected u8_thing");
        assert_eq!(
            in_plain_terms("expected u8, got"),
            "expected a whole number ≥ 0, got"
        );
    }

    #[test]
    fn metric_patterns_match_within_one_segment() {
        assert!(metric_matches("val/loss", "val/loss"));
        assert!(metric_matches("parents/*/fitness", "parents/2/fitness"));
        assert!(metric_matches(
            "final/test_vs/*_lo",
            "final/test_vs/control_lo"
        ));
        assert!(!metric_matches(
            "final/test_vs/*_lo",
            "final/test_vs/control"
        ));
        assert!(!metric_matches("parents/*/fitness", "parents/2/3/fitness"));
        assert!(!metric_matches("val/loss", "val/perplexity"));
    }
}
