//! `forge import mergekit CONFIG`: a mergekit merge config (`merge_method`, `models` or
//! `slices`, `base_model`, `parameters`, `dtype`) as a forge pipeline: a `download` step per
//! model and one `merge` step (`strategy: merge`) with the equivalent technique. mergekit's
//! methods map onto forge's techniques with the same arithmetic (`ops/src/merge/methods.rs`):
//!
//! | mergekit | forge technique |
//! |---|---|
//! | `linear` | `linear` (`normalize` default true) |
//! | `slerp` | `slerp`, models `[base_model, other]` (t = 0 is the base) |
//! | `task_arithmetic` | `dare` with `density: 1` (nothing dropped), `normalize: false` |
//! | `ties` | `ties` (`normalize` default true) |
//! | `dare_linear` | `dare` with `rescale: l1` (mergekit's rescaling), `normalize: false` |
//! | `passthrough` + `slices` | `frankenmerge` slices (`layer_range` is half-open, as forge's) |
//!
//! What forge cannot express — other methods (`dare_ties`, `model_stock`, `della`, …),
//! per-layer gradients and `filter:` parameters, densities that differ between models, LoRA
//! references, slices mixing several models — is an error naming it; everything is checked and
//! reported at once.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Map, Value, json};

/// A converted config: the pipeline's YAML and what the user should know about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    pub yaml: String,
    /// Things converted with a caveat (dtype, models to fetch first, …).
    pub notes: Vec<String>,
}

/// Why a config could not be converted: every problem found.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("reading `{path}`: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("`{path}` is not valid YAML: {message}")]
    Yaml { path: String, message: String },
    #[error("{}", .problems.join("\n"))]
    Unsupported { problems: Vec<String> },
}

/// The mergekit methods forge has an equivalent for.
pub const SUPPORTED: &[&str] = &[
    "linear",
    "slerp",
    "task_arithmetic",
    "ties",
    "dare_linear",
    "passthrough",
];

/// Convert the mergekit config at `path`.
pub fn mergekit_file(path: &Path) -> Result<Imported, ImportError> {
    let text = std::fs::read_to_string(path).map_err(|source| ImportError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("merge");
    mergekit(&text, name, &path.display().to_string())
}

/// Convert a mergekit config's text; `name` becomes the pipeline's name, `origin` is named in
/// the header comment.
pub fn mergekit(text: &str, name: &str, origin: &str) -> Result<Imported, ImportError> {
    let doc = crate::yaml::load(text)
        .map_err(|d| ImportError::Yaml {
            path: origin.into(),
            message: d.message.clone(),
        })?
        .to_json();
    let mut c = Converter::default();
    let merge = c.convert(&doc);
    if !c.problems.is_empty() {
        return Err(ImportError::Unsupported {
            problems: c.problems,
        });
    }
    let merge = merge.expect("no problems, so a step");
    Ok(Imported {
        yaml: render(&c, &merge, &pipeline_name(name), origin),
        notes: c.notes,
    })
}

/// The merge step: inputs (step names) and `with:`.
struct MergeStep {
    models: Vec<String>,
    base: Option<String>,
    technique: Value,
    method: String,
}

#[derive(Default)]
struct Converter {
    problems: Vec<String>,
    notes: Vec<String>,
    /// mergekit model reference → step name, in first-seen order.
    models: Vec<(String, String)>,
}

/// Top-level keys of a mergekit config that forge reads or knowingly passes over.
const KEYS: &[&str] = &[
    "merge_method",
    "models",
    "slices",
    "base_model",
    "parameters",
    "dtype",
    "out_dtype",
    "tokenizer_source",
    "tokenizer",
    "chat_template",
    "name",
];

impl Converter {
    fn problem(&mut self, p: impl Into<String>) {
        self.problems.push(p.into());
    }

    fn convert(&mut self, doc: &Value) -> Option<MergeStep> {
        let Some(obj) = doc.as_object() else {
            self.problem(
                "a mergekit config is a mapping with `merge_method` and `models` or `slices`",
            );
            return None;
        };
        for k in obj.keys().filter(|k| !KEYS.contains(&k.as_str())) {
            self.problem(format!("`{k}` is not a mergekit config key forge knows"));
        }
        for k in ["dtype", "out_dtype"] {
            if let Some(d) = obj.get(k).and_then(Value::as_str)
                && d != "float32"
            {
                self.notes.push(format!(
                    "`{k}: {d}` is not carried over: forge merges and writes float32 (a `quantize` step makes a model smaller)"
                ));
            }
        }
        if let Some(t) = obj.get("tokenizer_source").or_else(|| obj.get("tokenizer"))
            && t.as_str() != Some("base")
        {
            self.problem(format!(
                "`tokenizer_source: {}`: forge keeps the first model's tokenizer and cannot build a union or take another model's",
                compact(t)
            ));
        }
        if obj.contains_key("chat_template") {
            self.notes
                .push("`chat_template` is not carried over: forge models have none".into());
        }
        let Some(method) = obj
            .get("merge_method")
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            self.problem(
                "`merge_method` is missing (one of linear, slerp, task_arithmetic, ties, dare_linear, passthrough)",
            );
            return None;
        };
        if !SUPPORTED.contains(&method.as_str()) {
            let why = match method.as_str() {
                "dare_ties" => {
                    "forge's `dare` is mergekit's `dare_linear` (no sign election) and its `ties` trims by magnitude, not at random"
                }
                "breadcrumbs" | "breadcrumbs_ties" => {
                    "forge has no outlier-and-small-magnitude sparsification"
                }
                "della" | "della_linear" => "forge has no magnitude-ranked drop probabilities",
                "model_stock" | "nuslerp" | "arcee_fusion" | "sce" | "karcher" | "nearswap" => {
                    "forge has no such technique"
                }
                _ => "it is not a method forge knows",
            };
            self.problem(format!(
                "merge_method `{method}` cannot be expressed: {why} (forge converts {})",
                SUPPORTED.join(", ")
            ));
            return None;
        }
        let globals = self.parameters(obj.get("parameters"), "parameters");
        let base = obj
            .get("base_model")
            .and_then(|b| self.reference(b, "base_model"));
        if method == "passthrough" {
            return self.passthrough(obj, base);
        }
        let entries = self.entries(obj)?;
        self.arithmetic(&method, entries, base, &globals)
    }

    /// `models:` (or one slice whose sources all cover the same layer range) as
    /// (reference, parameters).
    fn entries(&mut self, obj: &Map<String, Value>) -> Option<Vec<(String, Map<String, Value>)>> {
        let list: Vec<&Value> = match (obj.get("models"), obj.get("slices")) {
            (Some(Value::Array(models)), None) => models.iter().collect(),
            (None, Some(Value::Array(slices))) => {
                let [slice] = slices.as_slice() else {
                    self.problem(format!(
                        "{} slices with merge_method `{}`: forge merges whole models, so only one slice covering every layer converts",
                        slices.len(),
                        obj["merge_method"].as_str().unwrap_or("?")
                    ));
                    return None;
                };
                let sources = slice.get("sources").and_then(Value::as_array);
                let Some(sources) = sources else {
                    self.problem("a slice needs `sources`");
                    return None;
                };
                let ranges: Vec<&Value> = sources
                    .iter()
                    .filter_map(|s| s.get("layer_range"))
                    .collect();
                if ranges.windows(2).any(|w| w[0] != w[1])
                    || ranges
                        .first()
                        .and_then(|r| r.get(0))
                        .and_then(Value::as_u64)
                        != Some(0)
                {
                    self.problem(format!(
                        "the slice's sources cover different layers ({}): forge merges whole models",
                        ranges.iter().map(|r| compact(r)).collect::<Vec<_>>().join(", ")
                    ));
                    return None;
                }
                if let Some(r) = ranges.first() {
                    self.notes.push(format!(
                        "the slice covers layers {}: forge merges every layer, the same merge only if that is all of them",
                        compact(r)
                    ));
                }
                sources.iter().collect()
            }
            (Some(_), Some(_)) => {
                self.problem("give either `models` or `slices`, not both");
                return None;
            }
            _ => {
                self.problem("`models` (a list) or `slices` is missing");
                return None;
            }
        };
        let mut out = Vec::new();
        for (i, e) in list.into_iter().enumerate() {
            let reference = e
                .get("model")
                .and_then(|m| self.reference(m, &format!("models[{i}]")));
            if e.get("model").is_none() {
                self.problem(format!("models[{i}] has no `model`"));
            }
            let params = self.parameters(e.get("parameters"), &format!("models[{i}].parameters"));
            if let Some(r) = reference {
                out.push((r, params));
            }
        }
        Some(out)
    }

    /// A model reference as a step name (recorded for its `download` step).
    fn reference(&mut self, v: &Value, at: &str) -> Option<String> {
        let Some(r) = v.as_str() else {
            self.problem(format!(
                "{at}: `{}` is not a model name or path (forge converts plain references)",
                compact(v)
            ));
            return None;
        };
        if r.contains('+') {
            self.problem(format!(
                "{at}: `{r}` applies a LoRA; forge merges full models only (merge the LoRA into its model first)"
            ));
            return None;
        }
        if let Some((_, step)) = self.models.iter().find(|(m, _)| m == r) {
            return Some(step.clone());
        }
        let mut step = step_name(r);
        while self.models.iter().any(|(_, s)| *s == step) || step == "merged" {
            step.push('_');
        }
        self.models.push((r.to_owned(), step.clone()));
        Some(step)
    }

    /// Scalar parameters; a gradient (list) or `filter:` list is an error.
    fn parameters(&mut self, v: Option<&Value>, at: &str) -> Map<String, Value> {
        let mut out = Map::new();
        let Some(v) = v else { return out };
        let Some(obj) = v.as_object() else {
            self.problem(format!("{at} is not a mapping"));
            return out;
        };
        for (k, v) in obj {
            match v {
                Value::Number(_) | Value::Bool(_) => {
                    out.insert(k.clone(), v.clone());
                }
                Value::Array(items) if items.iter().any(|i| i.get("filter").is_some()) => {
                    self.problem(format!(
                        "{at}.{k}: per-tensor `filter:` values cannot be expressed: forge applies one value to every tensor"
                    ));
                }
                Value::Array(_) => self.problem(format!(
                    "{at}.{k}: a gradient over layers ({}) cannot be expressed: forge applies one value to every layer",
                    compact(v)
                )),
                other => self.problem(format!("{at}.{k}: `{}` is not a number", compact(other))),
            }
        }
        out
    }

    fn arithmetic(
        &mut self,
        method: &str,
        entries: Vec<(String, Map<String, Value>)>,
        base: Option<String>,
        globals: &Map<String, Value>,
    ) -> Option<MergeStep> {
        let param = |p: &Map<String, Value>, k: &str| p.get(k).or_else(|| globals.get(k)).cloned();
        let known: &[&str] = match method {
            "linear" => &["weight", "normalize"],
            "slerp" => &["t"],
            "task_arithmetic" => &["weight", "normalize", "lambda"],
            "ties" => &["weight", "density", "normalize", "lambda", "int8_mask"],
            _ => &[
                "weight",
                "density",
                "normalize",
                "lambda",
                "rescale",
                "int8_mask",
            ],
        };
        for (k, _) in globals
            .iter()
            .chain(entries.iter().flat_map(|(_, p)| p.iter()))
        {
            if !known.contains(&k.as_str()) {
                self.problem(format!(
                    "parameter `{k}` has no meaning for `{method}` in forge"
                ));
            }
        }
        // Task arithmetic works on task vectors: the base among `models` adds nothing.
        let task = matches!(method, "task_arithmetic" | "ties" | "dare_linear");
        let entries: Vec<(String, Map<String, Value>)> = if task {
            if base.is_none() {
                self.problem(format!("`{method}` needs `base_model`"));
                return None;
            }
            entries
                .into_iter()
                .filter(|(m, _)| Some(m) != base.as_ref())
                .collect()
        } else {
            entries
        };
        let models: Vec<String> = entries.iter().map(|(m, _)| m.clone()).collect();
        let weights: Vec<Value> = entries
            .iter()
            .map(|(_, p)| param(p, "weight").unwrap_or(json!(1.0)))
            .collect();
        let number = |v: &Option<Value>| v.as_ref().and_then(Value::as_f64);
        let shared = |this: &mut Self, k: &str| -> Option<Value> {
            let vals: Vec<Option<Value>> = entries.iter().map(|(_, p)| param(p, k)).collect();
            if vals.windows(2).any(|w| w[0] != w[1]) {
                this.problem(format!(
                    "`{k}` differs between models ({}): forge uses one {k} for all of them",
                    vals.iter()
                        .map(|v| v.as_ref().map_or("unset".into(), compact))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            vals.into_iter().next().flatten()
        };
        let mut t = Map::new();
        t.insert("method".into(), json!(method));
        let (models, base) = match method {
            "linear" => {
                t.insert("weights".into(), Value::Array(weights));
                let normalize = shared(self, "normalize").unwrap_or(json!(true));
                t.insert("normalize".into(), normalize);
                if base.is_some() {
                    self.notes
                        .push("`base_model` takes no part in a linear merge".into());
                }
                (models, None)
            }
            "slerp" => {
                let Some(base) = base else {
                    self.problem("`slerp` needs `base_model` (the t = 0 end)");
                    return None;
                };
                let others: Vec<String> = models.into_iter().filter(|m| *m != base).collect();
                let [other] = others.as_slice() else {
                    self.problem(format!(
                        "`slerp` interpolates between `base_model` and one other model, not {}",
                        others.len()
                    ));
                    return None;
                };
                let tv = shared(self, "t");
                let Some(tv) = number(&tv) else {
                    self.problem("`slerp` needs a number `t`");
                    return None;
                };
                t.insert("t".into(), json!(tv));
                (vec![base, other.clone()], None)
            }
            _ => {
                t.insert(
                    "method".into(),
                    json!(if method == "ties" { "ties" } else { "dare" }),
                );
                t.insert("weights".into(), Value::Array(weights));
                let density = match method {
                    "task_arithmetic" => json!(1.0),
                    _ => shared(self, "density").unwrap_or(json!(1.0)),
                };
                t.insert("density".into(), density);
                t.insert(
                    "lambda".into(),
                    shared(self, "lambda").unwrap_or(json!(1.0)),
                );
                let normalize = shared(self, "normalize").unwrap_or(json!(method == "ties"));
                t.insert("normalize".into(), normalize);
                if method == "dare_linear" {
                    let rescale = shared(self, "rescale").unwrap_or(json!(true));
                    t.insert(
                        "rescale".into(),
                        json!(if rescale == json!(true) { "l1" } else { "none" }),
                    );
                }
                (models, base)
            }
        };
        if models.is_empty() {
            self.problem("no model to merge");
            return None;
        }
        Some(MergeStep {
            models,
            base,
            technique: Value::Object(t),
            method: method.into(),
        })
    }

    fn passthrough(&mut self, obj: &Map<String, Value>, base: Option<String>) -> Option<MergeStep> {
        let Some(slices) = obj.get("slices").and_then(Value::as_array) else {
            self.problem("`passthrough` needs `slices` (forge's frankenmerge)");
            return None;
        };
        let mut out = Vec::new();
        let mut models: Vec<String> = Vec::new();
        for (i, s) in slices.iter().enumerate() {
            let sources = s.get("sources").and_then(Value::as_array);
            let [src] = sources.map(Vec::as_slice).unwrap_or_default() else {
                self.problem(format!(
                    "slices[{i}] of a passthrough merge needs exactly one source (forge's frankenmerge copies layers, it does not mix them)"
                ));
                continue;
            };
            let Some(model) = src
                .get("model")
                .and_then(|m| self.reference(m, &format!("slices[{i}]")))
            else {
                continue;
            };
            let range = src.get("layer_range").and_then(Value::as_array);
            let range: Option<Vec<u64>> =
                range.map(|r| r.iter().filter_map(Value::as_u64).collect());
            let Some([a, b]) = range.as_deref().and_then(|r| <[u64; 2]>::try_from(r).ok()) else {
                self.problem(format!("slices[{i}] needs `layer_range: [start, end]`"));
                continue;
            };
            if src.get("parameters").is_some() {
                self.problem(format!(
                    "slices[{i}]: `parameters` have no meaning for passthrough in forge"
                ));
            }
            let index = models.iter().position(|m| *m == model).unwrap_or_else(|| {
                models.push(model.clone());
                models.len() - 1
            });
            out.push(json!({ "model": index, "layers": [a, b] }));
        }
        // Embeddings, final norm and heads come from the base model when there is one.
        let rest_from = match base {
            Some(b) => models.iter().position(|m| *m == b).unwrap_or_else(|| {
                models.push(b.clone());
                models.len() - 1
            }),
            None => 0,
        };
        if models.is_empty() {
            return None;
        }
        let technique = json!({ "method": "frankenmerge", "slices": out, "rest_from": rest_from });
        Some(MergeStep {
            models,
            base: None,
            technique,
            method: "passthrough".into(),
        })
    }
}

/// A step name from a model reference: its last path component, in letters, digits, `_`, `-`.
fn step_name(reference: &str) -> String {
    let last = reference
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(reference);
    let mut s: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if !s.starts_with(|c: char| c.is_ascii_alphabetic()) {
        s.insert_str(0, "m_");
    }
    s
}

/// A pipeline name from the config's file name.
fn pipeline_name(stem: &str) -> String {
    let s: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if s.is_empty() { "merge".into() } else { s }
}

/// Whether a reference names a local directory (`file:` source) rather than a hub repository.
fn is_local(reference: &str) -> bool {
    reference.starts_with(['/', '.', '~']) || Path::new(reference).exists()
}

fn render(c: &Converter, m: &MergeStep, name: &str, origin: &str) -> String {
    let mut y = String::new();
    let _ = writeln!(
        y,
        "# Imported from {origin} by `forge import mergekit` (merge_method: {}).",
        m.method
    );
    let _ = writeln!(y, "version: 1\nname: {name}\nphases:\n  merge:\n    steps:");
    let used: BTreeSet<&str> = m.models.iter().chain(&m.base).map(String::as_str).collect();
    for (reference, step) in c.models.iter().filter(|(_, s)| used.contains(s.as_str())) {
        let source = if is_local(reference) {
            format!("file:{reference}")
        } else {
            let _ = writeln!(
                y,
                "      # `{reference}` from the Hugging Face hub: fetch the model directory first,\n      # e.g. `huggingface-cli download {reference} --local-dir models/{step}`"
            );
            format!("file:models/{step}")
        };
        let _ = writeln!(
            y,
            "      {step}:\n        op: download\n        with: {{ source: {}, kind: model }}",
            flow(&json!(source))
        );
    }
    let mut inputs = Map::new();
    inputs.insert("models".into(), json!(m.models));
    if let Some(b) = &m.base {
        inputs.insert("base".into(), json!(b));
    }
    let _ = writeln!(
        y,
        "      merged:\n        op: merge\n        inputs: {}\n        with:\n          strategy: merge\n          technique: {}",
        flow(&Value::Object(inputs)),
        method_first(&m.technique)
    );
    y
}

/// A JSON value as a one-line YAML flow (`{ a: 1, b: [x, y] }`), strings quoted only when they
/// need it.
fn flow(v: &Value) -> String {
    match v {
        Value::Object(m) => flow_map(m.iter()),
        Value::Array(a) => format!("[{}]", a.iter().map(flow).collect::<Vec<_>>().join(", ")),
        Value::String(s) => {
            let plain = !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
                && s.parse::<f64>().is_err()
                && !matches!(s.as_str(), "true" | "false" | "null" | "yes" | "no");
            if plain {
                s.clone()
            } else {
                Value::String(s.clone()).to_string()
            }
        }
        other => other.to_string(),
    }
}

/// A technique as a flow mapping with `method` first, as people write it.
fn method_first(t: &Value) -> String {
    let fields = t.as_object().into_iter().flatten();
    let (method, rest): (Vec<_>, Vec<_>) = fields.partition(|(k, _)| *k == "method");
    flow_map(method.into_iter().chain(rest))
}

/// `{ k: v, … }` in the order given.
fn flow_map<'a>(fields: impl Iterator<Item = (&'a String, &'a Value)>) -> String {
    let parts: Vec<String> = fields.map(|(k, v)| format!("{k}: {}", flow(v))).collect();
    format!("{{ {} }}", parts.join(", "))
}

/// A value as one line, for messages.
fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => flow(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_quotes_only_what_needs_it() {
        assert_eq!(
            flow(&json!({ "a": [1, 0.5], "s": "file:x y", "t": "ties", "n": "1.0" })),
            r#"{ a: [1, 0.5], n: "1.0", s: "file:x y", t: ties }"#
        );
    }

    #[test]
    fn step_names_are_valid_and_distinct() {
        assert_eq!(step_name("psmathur/orca_mini_v3_13b"), "orca_mini_v3_13b");
        assert_eq!(step_name("./models/7B.v2/"), "m_7b_v2");
        let mut c = Converter::default();
        let a = c.reference(&json!("x/model"), "a").unwrap();
        let b = c.reference(&json!("y/model"), "b").unwrap();
        assert_eq!((a.as_str(), b.as_str()), ("model", "model_"));
        assert_eq!(c.reference(&json!("x/model"), "c").unwrap(), "model");
    }
}
