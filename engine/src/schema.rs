//! The pipeline JSON Schema (`forge schema`, committed as `schemas/pipeline.schema.json`).
//!
//! The document structure comes from the `*Doc` types below; each op's `with:` block gets its own
//! schema from the op's typed params, attached with `if op == <name> then with: <schema>`, so
//! editors complete and check parameters per op. Every value inside `with:`, whatever its type,
//! also accepts a `${…}` interpolation string, as the planner does.

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
    /// What the pipeline makes.
    description: Option<String>,
    /// Settings every step takes unless it sets its own.
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
    /// Where steps that miss the cache run: `local` (this machine, the default) or `slurm` (a
    /// batch job per step on the cluster; `--executor` wins).
    executor: Option<ExecutorDoc>,
    /// Remote cache URL (`s3://bucket/prefix`, `gs://…`, `az://…`, `file:///dir`); `--remote`
    /// and FORGE_REMOTE win.
    remote: Option<String>,
    /// Slurm options of every step, for `--executor slurm`.
    slurm: Option<crate::slurm::options::SlurmOptions>,
}

#[allow(dead_code)]
#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
enum ExecutorDoc {
    /// Every step in this process.
    Local,
    /// Every step as a Slurm batch job (`sbatch`) against the same store.
    Slurm,
}

#[allow(dead_code)]
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
struct PhaseDoc {
    /// What the phase does.
    description: Option<String>,
    /// Step name → step. Steps run in the order their inputs and `needs:` give.
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
    /// What the step does.
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
    /// This step's Slurm options, over `defaults.slurm` (for `--executor slurm`; not part of
    /// the key).
    slurm: Option<crate::slurm::options::SlurmOptions>,
}

#[allow(dead_code)]
#[derive(JsonSchema)]
#[serde(untagged)]
enum Seed {
    Value(u64),
    /// `${vars.<name>}` or `${matrix.<axis>[.<field>]}`.
    Interpolated(String),
}

/// Keywords editors read at a property (hover text, completion documentation and the value a
/// completion inserts); [`allow_interpolation`] keeps them there rather than inside an `anyOf`.
const PROPERTY_METADATA: [&str; 6] = [
    "title",
    "description",
    "default",
    "examples",
    "deprecated",
    "defaultSnippets",
];

/// Let every value in a `with:` block be a `${…}` string, whatever its type: each property's,
/// list item's and map value's schema `S` becomes `anyOf: [S, Interpolation]` (or gains the
/// branch when it already is an `anyOf`), with its description and default moved up beside the
/// `anyOf`. Schemas that take any string already are left alone.
fn allow_interpolation(v: &mut Value) {
    let Value::Object(m) = v else { return };
    for key in ["properties", "patternProperties"] {
        if let Some(Value::Object(props)) = m.get_mut(key) {
            for child in props.values_mut() {
                allow_interpolation(child);
                interpolable(child);
            }
        }
    }
    for key in ["additionalProperties", "items"] {
        if let Some(child @ Value::Object(_)) = m.get_mut(key) {
            allow_interpolation(child);
            interpolable(child);
        }
    }
    if let Some(Value::Array(items)) = m.get_mut("prefixItems") {
        for child in items {
            allow_interpolation(child);
            interpolable(child);
        }
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(branches)) = m.get_mut(key) {
            branches.iter_mut().for_each(allow_interpolation);
        }
    }
}

/// `S` → `{ description, default, anyOf: [S, Interpolation] }` unless `S` takes any string.
fn interpolable(v: &mut Value) {
    let Value::Object(m) = v else { return };
    if takes_any_string(m) {
        return;
    }
    let mut wrapper = serde_json::Map::new();
    for key in PROPERTY_METADATA {
        if let Some(x) = m.remove(key) {
            wrapper.insert(key.into(), x);
        }
    }
    let interpolation = json!({ "$ref": "#/$defs/Interpolation" });
    let only_any_of = m.len() == 1;
    let branches = match m.get_mut("anyOf") {
        Some(Value::Array(branches)) if only_any_of => {
            branches.push(interpolation);
            std::mem::take(branches)
        }
        _ => vec![Value::Object(std::mem::take(m)), interpolation],
    };
    wrapper.insert("anyOf".into(), Value::Array(branches));
    *m = wrapper;
}

/// Give every property the documentation editors show for it: a property that refers to a
/// definition without a description of its own takes the definition's.
fn describe_properties(root: &mut Value) {
    let descriptions: BTreeMap<String, Value> = root["$defs"]
        .as_object()
        .map(|defs| {
            defs.iter()
                .filter_map(|(name, d)| {
                    Some((format!("#/$defs/{name}"), d.get("description")?.clone()))
                })
                .collect()
        })
        .unwrap_or_default();
    fn referenced<'a>(
        p: &'a Value,
        descriptions: &'a BTreeMap<String, Value>,
    ) -> Option<&'a Value> {
        let direct = p.get("$ref").and_then(Value::as_str);
        let branches = p
            .get("anyOf")
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        direct
            .into_iter()
            .chain(branches.filter_map(|b| b.get("$ref").and_then(Value::as_str)))
            .find_map(|r| descriptions.get(r))
    }
    fn walk(v: &mut Value, descriptions: &BTreeMap<String, Value>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::Object(props)) = m.get_mut("properties") {
                    for p in props.values_mut() {
                        if p.get("description").is_none()
                            && let Some(d) = referenced(p, descriptions).cloned()
                        {
                            p["description"] = d;
                        }
                    }
                }
                m.values_mut().for_each(|c| walk(c, descriptions));
            }
            Value::Array(a) => a.iter_mut().for_each(|c| walk(c, descriptions)),
            _ => {}
        }
    }
    walk(root, &descriptions);
}

/// A default that yaml-language-server cannot write out as a completion (a list holding
/// mappings or lists: it inserts `[object Object]`) becomes a `defaultSnippets` body instead,
/// which it writes out as YAML; its description says what the default is.
fn snippet_for_nested_default(v: &mut Value) {
    fn nested_list(v: &Value) -> bool {
        match v {
            Value::Array(a) => a
                .iter()
                .any(|x| x.is_object() || x.is_array() || nested_list(x)),
            Value::Object(m) => m.values().any(nested_list),
            _ => false,
        }
    }
    match v {
        Value::Object(m) => {
            if m.get("default").is_some_and(nested_list) {
                let body = m.remove("default").expect("checked");
                m.insert(
                    "defaultSnippets".into(),
                    json!([{ "label": "default", "description": "the default", "body": body }]),
                );
            }
            m.values_mut().for_each(snippet_for_nested_default);
        }
        Value::Array(a) => a.iter_mut().for_each(snippet_for_nested_default),
        _ => {}
    }
}

/// Whether a schema accepts every string (so `${…}` already passes).
fn takes_any_string(m: &serde_json::Map<String, Value>) -> bool {
    let restricted = [
        "enum",
        "const",
        "pattern",
        "format",
        "minLength",
        "maxLength",
    ];
    let string_type = match m.get("type") {
        Some(Value::String(t)) => t == "string",
        Some(Value::Array(ts)) => ts.iter().any(|t| t == "string"),
        _ => false,
    };
    let only_metadata = m.keys().all(|k| PROPERTY_METADATA.contains(&k.as_str()));
    only_metadata || (string_type && !restricted.iter().any(|k| m.contains_key(*k)))
}

/// The schema's stable identifier: it names version 1 of the pipeline format, whatever the URL the
/// file is served from (see docs/schema.md for catalogues such as SchemaStore's).
pub const SCHEMA_ID: &str = "urn:forge:pipeline-schema:v1";

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
        // What editors call the block (their "insert the required keys" completion, hovers).
        if let Value::Object(m) = &mut s {
            m.insert("title".into(), json!(format!("{} parameters", op.name())));
        }
        op_names.push(json!({ "const": op.name(), "description": op.description() }));
        op_refs.push(json!({
            "if": { "properties": { "op": { "const": op.name() } }, "required": ["op"] },
            "then": { "properties": { "with": s } }
        }));
    }
    // The document's own definitions (steps, phases, defaults) are not interpolated by the
    // planner; only what op parameters use is.
    let doc_defs: Vec<String> = root
        .get("$defs")
        .and_then(Value::as_object)
        .map(|d| d.keys().cloned().collect())
        .unwrap_or_default();
    let mut defs = generator.take_definitions(true);
    defs.retain(|name, _| !doc_defs.contains(name));
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
    root_obj.insert("$id".into(), json!(SCHEMA_ID));
    root_obj.insert("$defs".into(), Value::Object(all_defs));
    describe_properties(&mut root);
    snippet_for_nested_default(&mut root);
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

    /// Every property schema under `op`'s `with:` (following `$ref`s), with its path.
    fn with_properties(schema: &Value) -> Vec<(String, Value)> {
        fn walk(
            s: &Value,
            path: &str,
            root: &Value,
            seen: &mut Vec<String>,
            out: &mut Vec<(String, Value)>,
        ) {
            let Value::Object(m) = s else { return };
            if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                if seen.iter().any(|x| x == r) {
                    return;
                }
                seen.push(r.to_owned());
                let name = r.rsplit('/').next().unwrap();
                walk(&root["$defs"][name], path, root, seen, out);
                seen.pop();
            }
            if let Some(Value::Object(props)) = m.get("properties") {
                for (k, p) in props {
                    let here = format!("{path}.{k}");
                    out.push((here.clone(), p.clone()));
                    walk(p, &here, root, seen, out);
                }
            }
            for key in ["anyOf", "oneOf", "allOf"] {
                for b in m.get(key).and_then(Value::as_array).into_iter().flatten() {
                    walk(b, path, root, seen, out);
                }
            }
            for key in ["items", "additionalProperties"] {
                if let Some(c) = m.get(key) {
                    walk(c, &format!("{path}[]"), root, seen, out);
                }
            }
        }
        let mut out = Vec::new();
        for branch in schema["$defs"]["StepDoc"]["allOf"].as_array().unwrap() {
            let op = branch["if"]["properties"]["op"]["const"].as_str().unwrap();
            walk(
                &branch["then"]["properties"]["with"],
                op,
                schema,
                &mut Vec::new(),
                &mut out,
            );
        }
        out
    }

    fn accepts_interpolation(p: &Value) -> bool {
        let m = p.as_object().unwrap();
        takes_any_string(m)
            || m.get("anyOf")
                .and_then(Value::as_array)
                .is_some_and(|bs| bs.iter().any(|b| b["$ref"] == "#/$defs/Interpolation"))
    }

    #[test]
    fn every_with_value_accepts_an_interpolation_and_is_documented() {
        let s = pipeline_schema(&OpRegistry::builtin());
        let props = with_properties(&s);
        assert!(props.len() > 100, "{} properties", props.len());
        for (path, p) in &props {
            assert!(accepts_interpolation(p), "{path} rejects `${{…}}`: {p}");
            let tag = p["anyOf"][0].get("const").is_some();
            assert!(
                tag || p
                    .get("description")
                    .and_then(Value::as_str)
                    .is_some_and(|d| d.len() > 5),
                "{path} has no description: {p}"
            );
            let inner = p["anyOf"].as_array().into_iter().flatten();
            for b in inner {
                for key in ["description", "default"] {
                    assert!(b.get(key).is_none(), "{path}: `{key}` inside anyOf: {p}");
                }
            }
        }
    }

    #[test]
    fn interpolation_wraps_a_typed_value_and_leaves_free_strings() {
        let mut s = json!({ "properties": {
            "n": { "type": "integer", "description": "A count.", "default": 3 },
            "name": { "type": "string", "description": "Any text." },
            "mode": { "enum": ["a", "b"] },
            "opt": { "anyOf": [{ "$ref": "#/$defs/X" }, { "type": "null" }], "description": "Maybe." },
            "list": { "type": "array", "items": { "type": "number" } }
        }});
        allow_interpolation(&mut s);
        let interp = json!({ "$ref": "#/$defs/Interpolation" });
        let p = &s["properties"];
        assert_eq!(
            p["n"],
            json!({ "description": "A count.", "default": 3, "anyOf": [{ "type": "integer" }, interp] })
        );
        assert_eq!(
            p["name"],
            json!({ "type": "string", "description": "Any text." })
        );
        assert_eq!(p["mode"]["anyOf"], json!([{ "enum": ["a", "b"] }, interp]));
        assert_eq!(
            p["opt"],
            json!({ "description": "Maybe.", "anyOf": [{ "$ref": "#/$defs/X" }, { "type": "null" }, interp] })
        );
        assert_eq!(
            p["list"]["anyOf"][0]["items"],
            json!({ "anyOf": [{ "type": "number" }, interp] })
        );
    }

    #[test]
    fn a_list_of_mappings_default_becomes_a_snippet() {
        let mut s = json!({ "properties": {
            "stages": { "default": [{ "until": 1.0 }] },
            "betas": { "default": [0.9, 0.95] }
        }});
        snippet_for_nested_default(&mut s);
        let p = &s["properties"];
        assert_eq!(
            p["stages"]["defaultSnippets"][0]["body"],
            json!([{ "until": 1.0 }])
        );
        assert!(p["stages"].get("default").is_none());
        assert_eq!(p["betas"], json!({ "default": [0.9, 0.95] }));
    }

    #[test]
    fn only_with_values_and_the_seed_take_an_interpolation_outside_with() {
        let s = pipeline_schema(&OpRegistry::builtin());
        let step = &s["$defs"]["StepDoc"]["properties"];
        for key in [
            "retries",
            "needs",
            "timeout",
            "resources",
            "inputs",
            "matrix",
        ] {
            assert!(
                !step[key].to_string().contains("Interpolation"),
                "step `{key}` must not take `${{…}}`: {}",
                step[key]
            );
        }
        assert!(
            step["seed"].to_string().contains("Seed"),
            "{}",
            step["seed"]
        );
        let defaults = &s["$defs"]["DefaultsDoc"]["properties"];
        assert!(!defaults["seed"].to_string().contains("Interpolation"));
    }

    #[test]
    fn schema_keys_match_the_parser() {
        let s = pipeline_schema(&OpRegistry::builtin());
        assert_eq!(props(&s, None), sorted(TOP_KEYS));
        assert_eq!(props(&s, Some("PhaseDoc")), sorted(PHASE_KEYS));
        assert_eq!(props(&s, Some("StepDoc")), sorted(STEP_KEYS));
    }
}
