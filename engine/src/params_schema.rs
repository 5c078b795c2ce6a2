//! What an op's parameter schema allows at one place in a `with:` block: the keys an object may
//! have, the values a string may take, the keys it must have. `plan` uses it to explain an
//! invalid `with:` block — which key is unknown and what it probably meant — from the schema
//! itself, never from the wording of a parser's error message.

use forge_ops::Op;
use serde_json::{Map, Value};

/// What the schema allows at a path.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// Keys an object here may have (empty when it is not an object, or any key goes).
    pub keys: Vec<String>,
    /// Values a string here may take (empty when any string goes).
    pub values: Vec<String>,
    /// Keys an object here must have.
    pub required: Vec<String>,
}

/// An op's parameter schema with its definitions, for lookups.
pub struct ParamsSchema {
    root: Value,
    defs: Map<String, Value>,
}

impl ParamsSchema {
    pub fn of(op: &dyn Op) -> Self {
        let mut generator = schemars::SchemaGenerator::default();
        let root = op.params_schema(&mut generator).to_value();
        let defs = generator.definitions().clone();
        Self { root, defs }
    }

    /// Follow `$ref`s to the schema they name.
    fn resolve<'a>(&'a self, mut s: &'a Value) -> &'a Value {
        for _ in 0..32 {
            match s.get("$ref").and_then(Value::as_str) {
                Some(r) => match r.rsplit('/').next().and_then(|n| self.defs.get(n)) {
                    Some(d) => s = d,
                    None => break,
                },
                None => break,
            }
        }
        s
    }

    /// The schema and its alternatives (`anyOf`/`oneOf` branches, resolved), flattened.
    fn alternatives<'a>(&'a self, s: &'a Value, out: &mut Vec<&'a Value>) {
        let s = self.resolve(s);
        let branches = ["anyOf", "oneOf", "allOf"]
            .iter()
            .filter_map(|k| s.get(*k).and_then(Value::as_array))
            .flatten()
            .collect::<Vec<_>>();
        if branches.is_empty() {
            out.push(s);
        } else {
            if s.get("properties").is_some() || s.get("enum").is_some() {
                out.push(s);
            }
            for b in branches {
                self.alternatives(b, out);
            }
        }
    }

    /// The alternatives that describe `raw`: for objects, the ones whose constant properties
    /// (an enum's tag, like `method: ties`) agree with it; all when none is decided that way.
    fn matching<'a>(&'a self, s: &'a Value, raw: Option<&Value>) -> Vec<&'a Value> {
        let mut all = Vec::new();
        self.alternatives(s, &mut all);
        let Some(Value::Object(obj)) = raw else {
            return all;
        };
        let tagged: Vec<&Value> = all
            .iter()
            .copied()
            .filter(|alt| {
                let props = alt.get("properties").and_then(Value::as_object);
                let consts: Vec<(&String, &Value)> = props
                    .into_iter()
                    .flatten()
                    .filter_map(|(k, p)| self.resolve(p).get("const").map(|c| (k, c)))
                    .collect();
                !consts.is_empty() && consts.iter().all(|(k, c)| obj.get(*k) == Some(*c))
            })
            .collect();
        if tagged.is_empty() { all } else { tagged }
    }

    /// What is allowed at `path` of the `with:` block `raw`.
    pub fn allowed_at(&self, raw: &Value, path: &[String]) -> Allowed {
        let mut nodes: Vec<&Value> = vec![&self.root];
        let mut here = Some(raw);
        for seg in path {
            let mut next = Vec::new();
            for n in &nodes {
                for alt in self.matching(n, here) {
                    if let Some(p) = alt.get("properties").and_then(|p| p.get(seg.as_str())) {
                        next.push(p);
                    } else if let Some(items) = alt.get("items")
                        && seg.parse::<usize>().is_ok()
                    {
                        next.push(items);
                    } else if let Some(extra) = alt.get("additionalProperties")
                        && extra.is_object()
                    {
                        next.push(extra);
                    }
                }
            }
            here = here.and_then(|h| match h {
                Value::Object(m) => m.get(seg.as_str()),
                Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
                _ => None,
            });
            if next.is_empty() {
                return Allowed::default();
            }
            nodes = next;
        }
        let mut out = Allowed::default();
        for n in nodes {
            for alt in self.matching(n, here) {
                if let Some(props) = alt.get("properties").and_then(Value::as_object) {
                    out.keys.extend(props.keys().cloned());
                }
                if let Some(req) = alt.get("required").and_then(Value::as_array) {
                    out.required
                        .extend(req.iter().filter_map(Value::as_str).map(str::to_owned));
                }
                out.values.extend(self.strings(alt));
                // A map whose keys are an enum (e.g. `mix: { math: 0.5 }`): the keys are values.
                if let Some(names) = alt.get("propertyNames") {
                    let mut alts = Vec::new();
                    self.alternatives(names, &mut alts);
                    for n in alts {
                        out.values.extend(self.strings(n));
                    }
                }
            }
        }
        for v in [&mut out.keys, &mut out.required] {
            v.sort();
            v.dedup();
        }
        let mut seen = std::collections::HashSet::new();
        out.values.retain(|v| seen.insert(v.clone()));
        out
    }

    /// The string constants a schema allows (`enum`, `const`).
    fn strings(&self, s: &Value) -> Vec<String> {
        let consts = s
            .get("enum")
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        consts
            .chain(s.get("const"))
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn merge() -> ParamsSchema {
        let reg = forge_ops::OpRegistry::builtin();
        ParamsSchema::of(reg.get("merge").expect("merge").as_ref())
    }

    #[test]
    fn keys_values_and_required_come_from_the_schema() {
        let s = merge();
        let raw = json!({ "strategy": "evolve" });
        let top = s.allowed_at(&raw, &[]);
        assert!(top.keys.contains(&"strategy".to_string()));
        assert!(top.keys.contains(&"evolve".to_string()));
        let strategy = s.allowed_at(&raw, &["strategy".into()]);
        assert_eq!(strategy.values, ["merge", "combo", "evolve"]);
        let evolve = s.allowed_at(&raw, &["evolve".into()]);
        assert!(evolve.keys.contains(&"generations".to_string()));
    }

    #[test]
    fn a_tagged_enum_offers_the_keys_of_its_own_variant() {
        let s = merge();
        let raw = json!({ "strategy": "merge", "technique": { "method": "slerp", "tt": 0.3 } });
        let t = s.allowed_at(&raw, &["technique".into()]);
        assert_eq!(t.keys, ["method", "t"]);
        assert_eq!(t.required, ["method"]);
        let typo = json!({ "strategy": "merge", "technique": { "method": "slurp" } });
        let m = s.allowed_at(&typo, &["technique".into(), "method".into()]);
        assert!(m.values.contains(&"frankenmerge".to_string()), "{m:?}");
    }
}
