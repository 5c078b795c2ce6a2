//! Step keys: when does a step re-run?
//!
//! A step's result is reused when its **key** — blake3 over one canonically serialized
//! [`KeyPreimage`] — matches a recorded action. Everything that can change the bytes a step
//! produces is in the pre-image; nothing else is, so unrelated edits never cause re-runs.
//!
//! # What is in the key
//!
//! | value | in key | notes |
//! |---|---|---|
//! | op name | yes | `op:` |
//! | op implementation version | yes | [`forge_ops::Op::version`]; bumped when the same inputs would give other bytes |
//! | store format version | yes | [`forge_cache::STORE_FORMAT`] |
//! | key format version | yes | [`KEY_FORMAT`]; bumped when this struct changes |
//! | `with:` params | yes | after `${…}` substitution, with defaults filled in, keys sorted |
//! | input artifacts | yes | the **content digests of upstream outputs**, not upstream keys (early cutoff) |
//! | op extras | yes | e.g. content digest of a `file:` source, an `exec` step's `deps` and hashed `env` values |
//! | seed | yes | the step's effective seed: its `seed:`, else `defaults.seed` (resolved once, at plan time; the op draws every random stream from it) |
//! | numeric backend class | yes | `cpu-flex-avx512`, `libtorch-cpu`, `libtorch-cuda`, … for compute ops (numerics differ); absent otherwise |
//! | step id / name | **no** | renaming a step, or two identical steps, share one result |
//! | `resources`, `--jobs`, device index | **no** | where and how wide it runs does not change bytes |
//! | `retries`, `timeout` | **no** | policy, not content |
//! | paths (store, pipeline, work dir) | **no** | moving the project keeps the cache valid |
//! | time, pid, host, log level | **no** | |
//!
//! # Early cutoff
//!
//! Because inputs enter as output *digests*, a re-run step that produces identical bytes leaves
//! every downstream key unchanged, and the re-run stops spreading (DICE's "equality" cutoff).
//!
//! # Why did it re-run?
//!
//! Every action stores its pre-image, and each (pipeline, step id) keeps a ref to the key it last
//! used. [`explain`] diffs the previous pre-image against the new one and names each changed field
//! with old → new values (`with.lr: 0.001 → 0.002`), so nobody has to diff hash dumps.
//!
//! # Limits
//!
//! `exec` commands can read files not listed in `deps` or depend on tools on `PATH`; such reads are
//! invisible to the key. List them in `deps`, or put tool versions in `env`.

use std::collections::BTreeMap;

use forge_cache::{ObjectDigest, STORE_FORMAT, StepKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Bumped whenever [`KeyPreimage`] or its serialization changes.
pub const KEY_FORMAT: u32 = 1;

/// Everything a step's result depends on. See the module docs for the table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KeyPreimage {
    pub key_format: u32,
    pub store_format: u32,
    pub op: String,
    pub op_version: u32,
    pub params: Value,
    /// Input name → digests of the upstream output trees, in reference order.
    pub inputs: BTreeMap<String, Vec<ObjectDigest>>,
    pub extras: Value,
    pub seed: u64,
    pub backend: Option<String>,
}

impl KeyPreimage {
    pub fn new(
        op: &str,
        op_version: u32,
        params: Value,
        inputs: BTreeMap<String, Vec<ObjectDigest>>,
        extras: Value,
        seed: u64,
        backend: Option<String>,
    ) -> Self {
        Self {
            key_format: KEY_FORMAT,
            store_format: STORE_FORMAT,
            op: op.into(),
            op_version,
            params,
            inputs,
            extras,
            seed,
            backend,
        }
    }

    pub fn to_json(&self) -> Value {
        canonical(serde_json::to_value(self).expect("pre-image serializes"))
    }

    pub fn key(&self) -> StepKey {
        let bytes = serde_json::to_vec(&self.to_json()).expect("json serializes");
        let mut h = blake3::Hasher::new();
        h.update(b"forge-step-key\0");
        h.update(&bytes);
        h.finalize().into()
    }
}

/// Sort object keys recursively, so equal values always serialize to equal bytes.
pub fn canonical(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let sorted: BTreeMap<String, Value> =
                m.into_iter().map(|(k, v)| (k, canonical(v))).collect();
            Value::Object(sorted.into_iter().collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(canonical).collect()),
        other => other,
    }
}

/// The fields that differ between two pre-images, as `path: old → new` lines (at most `limit`).
pub fn explain(old: &Value, new: &Value, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    diff("", old, new, &mut out);
    let extra = out.len().saturating_sub(limit);
    out.truncate(limit);
    if extra > 0 {
        out.push(format!("and {extra} more"));
    }
    out
}

fn display_path(p: &str) -> String {
    // Params are written under `with:` in the pipeline; say it the way the user wrote it.
    if let Some(rest) = p.strip_prefix("params") {
        return format!("with{rest}");
    }
    if let Some(rest) = p.strip_prefix("inputs.") {
        return format!("input `{}`", rest.split('.').next().unwrap_or(rest));
    }
    p.to_owned()
}

/// A value as a plan line shows it: digests cut to 12 characters, long values elided.
pub(crate) fn short(v: &Value) -> String {
    match v {
        Value::String(s) if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
            s[..12].to_owned()
        }
        Value::String(s) => format!("{s:?}"),
        Value::Null => "(none)".into(),
        other => {
            let s = other.to_string();
            if s.len() > 60 {
                format!("{}…", &s[..60])
            } else {
                s
            }
        }
    }
}

fn diff(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    if old == new {
        return;
    }
    let join = |k: &str| {
        if path.is_empty() {
            k.to_owned()
        } else {
            format!("{path}.{k}")
        }
    };
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                diff(
                    &join(k),
                    a.get(k).unwrap_or(&Value::Null),
                    b.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() && path.starts_with("params") => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff(&join(&i.to_string()), x, y, out);
            }
        }
        (Value::Array(a), Value::Array(b)) if path.starts_with("inputs.") => {
            let fmt = |v: &Vec<Value>| v.iter().map(short).collect::<Vec<_>>().join(", ");
            out.push(format!(
                "{} changed: {} → {}",
                display_path(path),
                fmt(a),
                fmt(b)
            ));
        }
        _ => out.push(format!(
            "{}: {} → {}",
            display_path(path),
            short(old),
            short(new)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pre(params: Value) -> KeyPreimage {
        KeyPreimage::new("exec", 1, params, BTreeMap::new(), Value::Null, 42, None)
    }

    #[test]
    fn key_ignores_object_key_order_but_not_values() {
        let a = pre(json!({"a": 1, "b": {"x": 1, "y": 2}}));
        let b = pre(json!({"b": {"y": 2, "x": 1}, "a": 1}));
        assert_eq!(a.key(), b.key());
        assert_ne!(a.key(), pre(json!({"a": 2, "b": {"x": 1, "y": 2}})).key());
    }

    #[test]
    fn golden_key() {
        // Pins the serialization: if this changes, every user's cache is invalidated, so bump
        // KEY_FORMAT deliberately and update this value.
        let k = pre(json!({"run": "true"})).key();
        assert_eq!(k.to_hex(), golden());
    }

    fn golden() -> String {
        let bytes = br#"{"backend":null,"extras":null,"inputs":{},"key_format":1,"op":"exec","op_version":1,"params":{"run":"true"},"seed":42,"store_format":1}"#;
        let mut h = blake3::Hasher::new();
        h.update(b"forge-step-key\0");
        h.update(bytes);
        h.finalize().to_hex().to_string()
    }

    #[test]
    fn explain_names_changed_fields() {
        let a = pre(json!({"optimizer": {"lr": 0.001}, "n": 1})).to_json();
        let b = pre(json!({"optimizer": {"lr": 0.002}, "n": 1})).to_json();
        assert_eq!(explain(&a, &b, 5), ["with.optimizer.lr: 0.001 → 0.002"]);
    }
}
