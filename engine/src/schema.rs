//! The pipeline JSON Schema (`forge schema`, committed as `schemas/pipeline.schema.json`).
//!
//! The document structure comes from the `*Doc` types below; each op's `with:` block gets its own
//! schema from the op's typed params, attached with `if op == <name> then with: <schema>`, so
//! editors complete and check parameters per op. Numbers and booleans inside `with:` also accept a
//! `${…}` interpolation string.

use std::collections::BTreeMap;

use forge_ops::{OpRegistry, Resources};
use schemars::JsonSchema;
use serde_json::{Value, json};

#[allow(dead_code)]
#[derive(JsonSchema)]
#[schemars(
    deny_unknown_fields,
    title = "forge pipeline",
    description = "A forge pipeline: phases of content-addressed steps"
)]
struct PipelineDoc {
    /// Pipeline format version; always 1.
    #[schemars(range(min = 1, max = 1))]
    version: u32,
    /// Pipeline name (letters, digits, `_`, `-`, `.`); results are recorded under it.
    name: String,
    description: Option<String>,
    defaults: Option<DefaultsDoc>,
    /// Values for `${vars.<name>}` interpolation in `with:` blocks.
    vars: Option<BTreeMap<String, Value>>,
    /// Phases in order; each holds named steps.
    phases: BTreeMap<String, PhaseDoc>,
}

#[allow(dead_code)]
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct DefaultsDoc {
    /// `cpu`, `cuda`, `cuda:N` or `auto`.
    device: Option<String>,
    /// Seed of every step without its own `seed:`; part of every key.
    seed: Option<u64>,
}

#[allow(dead_code)]
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct PhaseDoc {
    description: Option<String>,
    steps: BTreeMap<String, StepDoc>,
}

#[allow(dead_code)]
#[derive(JsonSchema)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[allow(dead_code)]
#[derive(JsonSchema)]
#[serde(untagged)]
enum Timeout {
    /// A duration like `90s`, `30m`, `2h`.
    Text(String),
    /// Seconds.
    Seconds(u64),
}

#[allow(dead_code)]
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct StepDoc {
    /// The operation this step runs.
    op: String,
    description: Option<String>,
    /// Input name → reference(s): `step`, `phase.step`, `phase.step.output`, `step[axis=value]`.
    inputs: Option<BTreeMap<String, OneOrMany>>,
    /// The op's parameters.
    with: Option<Value>,
    /// Axis → values; the step runs once per combination. Use `${matrix.<axis>[.<field>]}` in `with:`.
    matrix: Option<BTreeMap<String, Vec<Value>>>,
    /// Order-only dependencies (no data flows).
    needs: Option<OneOrMany>,
    /// Resources held while running.
    resources: Option<Resources>,
    /// Retries of transient failures (network); deterministic failures are never retried.
    retries: Option<u32>,
    /// Cancel the step after this long.
    timeout: Option<Timeout>,
    /// This step's seed (default: `defaults.seed`): every random stream of the step is drawn from
    /// it, and it is part of the step's key. May be `${…}`, e.g. one per matrix instance.
    seed: Option<Seed>,
}

#[allow(dead_code)]
#[derive(JsonSchema)]
#[serde(untagged)]
enum Seed {
    Value(u64),
    /// `${vars.<name>}` or `${matrix.<axis>[.<field>]}`.
    Interpolated(String),
}

/// Make numbers/booleans also accept `${…}` strings.
fn allow_interpolation(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (_, child) in m.iter_mut() {
                allow_interpolation(child);
            }
            let scalar = |t: &Value| matches!(t.as_str(), Some("integer" | "number" | "boolean"));
            let is_typed = m
                .get("type")
                .is_some_and(|t| scalar(t) || t.as_array().is_some_and(|a| a.iter().any(scalar)));
            if is_typed {
                let orig = Value::Object(std::mem::take(m));
                m.insert(
                    "anyOf".into(),
                    json!([orig, { "$ref": "#/$defs/Interpolation" }]),
                );
            }
        }
        Value::Array(a) => a.iter_mut().for_each(allow_interpolation),
        _ => {}
    }
}

/// The full schema for pipelines using `registry`'s ops.
pub fn pipeline_schema(registry: &OpRegistry) -> Value {
    let settings = schemars::generate::SchemaSettings::draft2020_12();
    let mut generator = settings.into_generator();
    let mut root = generator.root_schema_for::<PipelineDoc>().to_value();
    let mut op_refs = Vec::new();
    let mut op_names = Vec::new();
    for op in registry.iter() {
        let mut s = op.params_schema(&mut generator).to_value();
        allow_interpolation(&mut s);
        op_names.push(json!({ "const": op.name(), "description": op.description() }));
        op_refs.push(json!({
            "if": { "properties": { "op": { "const": op.name() } }, "required": ["op"] },
            "then": { "properties": { "with": s } }
        }));
    }
    let mut defs = generator.take_definitions(true);
    for v in defs.values_mut() {
        allow_interpolation(v);
    }
    defs.insert(
        "Interpolation".into(),
        json!({ "type": "string", "pattern": "\\$\\{[^}]+\\}", "description": "`${vars.<name>}` or `${matrix.<axis>[.<field>]}`" }),
    );
    let root_obj = root.as_object_mut().expect("object schema");
    let mut all_defs = root_obj
        .remove("$defs")
        .and_then(|d| d.as_object().cloned())
        .unwrap_or_default();
    all_defs.extend(defs);
    if let Some(step) = all_defs.get_mut("StepDoc").and_then(Value::as_object_mut) {
        step.insert("allOf".into(), Value::Array(op_refs));
        if let Some(op) = step.get_mut("properties").and_then(|p| p.get_mut("op")) {
            *op = json!({ "description": "The operation this step runs.", "oneOf": op_names });
        }
    }
    root_obj.insert("$defs".into(), Value::Object(all_defs));
    crate::key::canonical(root)
}

/// The schema as `forge schema` prints it (and as committed).
pub fn pipeline_schema_text(registry: &OpRegistry) -> String {
    let mut s =
        serde_json::to_string_pretty(&pipeline_schema(registry)).expect("schema serializes");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{PHASE_KEYS, STEP_KEYS, TOP_KEYS};

    fn props(schema: &Value, def: Option<&str>) -> Vec<String> {
        let obj = match def {
            None => schema,
            Some(d) => &schema["$defs"][d],
        };
        let mut v: Vec<String> = obj["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    }

    fn sorted(keys: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = keys.iter().map(std::string::ToString::to_string).collect();
        v.sort();
        v
    }

    #[test]
    fn schema_keys_match_the_parser() {
        let s = pipeline_schema(&OpRegistry::builtin());
        assert_eq!(props(&s, None), sorted(TOP_KEYS));
        assert_eq!(props(&s, Some("PhaseDoc")), sorted(PHASE_KEYS));
        assert_eq!(props(&s, Some("StepDoc")), sorted(STEP_KEYS));
    }
}
