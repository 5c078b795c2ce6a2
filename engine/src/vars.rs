//! Command-line variable overrides (`--var name=value` on `apply` and `plan`, like terraform's
//! `-var`): parsing the flag, typing the value like the YAML it replaces, and applying it to a
//! pipeline's `vars:` before planning, so the planner validates the result exactly as if it had
//! been written in the file. Also which vars a step reads ([`used_by`]), so `forge plan` can name
//! a changed var as the reason for a re-run.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::diag::{Diagnostic, Span, did_you_mean};
use crate::pipeline::Pipeline;
use crate::yaml::{Node, NodeKind};

/// One `--var name=value`, as given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VarOverride {
    pub name: String,
    /// The text after `=`, read as a YAML value.
    pub value: String,
}

impl fmt::Display for VarOverride {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.value)
    }
}

impl std::str::FromStr for VarOverride {
    type Err = String;

    /// `name=value`; the value may be empty or contain `=`.
    fn from_str(s: &str) -> Result<Self, String> {
        let Some((name, value)) = s.split_once('=') else {
            return Err(format!(
                "`{s}` is not `name=value` (e.g. `--var base_steps=300`)"
            ));
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(format!(
                "`{s}` names no variable (e.g. `--var base_steps=300`)"
            ));
        }
        Ok(Self {
            name: name.into(),
            value: value.into(),
        })
    }
}

/// The broad type a YAML value has, as far as overriding it goes: an integer may replace a
/// float and the reverse, nothing else changes category.
fn category(kind: &NodeKind) -> &'static str {
    match kind {
        NodeKind::Null => "null",
        NodeKind::Bool(_) => "a boolean",
        NodeKind::Int(_) | NodeKind::Float(_) => "a number",
        NodeKind::Str(_) => "a string",
        NodeKind::Seq(_) => "a list",
        NodeKind::Map(_) => "a mapping",
    }
}

/// Give every node of an override the span of the declaration it replaces, so any diagnostic
/// about the value points at that var in the pipeline file (the command line has no file).
fn respan(node: &mut Node, span: Span) {
    node.span = span;
    match &mut node.kind {
        NodeKind::Seq(items) => items.iter_mut().for_each(|n| respan(n, span)),
        NodeKind::Map(m) => m.iter_mut().for_each(|(k, v)| {
            respan(k, span);
            respan(v, span);
        }),
        _ => {}
    }
}

/// The override's value typed like the YAML it replaces: parsed as a YAML value, except that a
/// var written as a string stays a string (`--var tag=123` is `"123"` when `tag: v1`).
fn typed(o: &VarOverride, declared: &Node) -> Result<Node, Diagnostic> {
    let flag = format!("--var {o}");
    let as_string = || Node {
        kind: NodeKind::Str(o.value.clone()),
        span: declared.span,
        quoted: true,
    };
    let mut node = match crate::yaml::load(&o.value) {
        Ok(n) => n,
        Err(_) if matches!(declared.kind, NodeKind::Str(_)) => return Ok(as_string()),
        Err(e) => {
            return Err(Diagnostic::error(format!(
                "`{flag}`: the value is not valid YAML ({})",
                e.message
            ))
            .label(declared.span, format!("`{}` is declared here", o.name))
            .help("quote the value for the shell, e.g. `--var 'gates=[0.9, 0.1, 0.05]'`")
            .code("vars::invalid"));
        }
    };
    let scalar = !matches!(node.kind, NodeKind::Seq(_) | NodeKind::Map(_));
    if matches!(declared.kind, NodeKind::Str(_)) && scalar {
        return Ok(as_string());
    }
    let (want, got) = (category(&declared.kind), category(&node.kind));
    if want != "null" && want != got {
        return Err(Diagnostic::error(format!(
            "`{flag}`: `{}` is {want} in the pipeline, and `{}` is {got}",
            o.name, o.value
        ))
        .label(declared.span, want)
        .help(format!(
            "give `{}` {want}, as the pipeline does (`{}`)",
            o.name,
            serde_json::to_string(&declared.to_json()).unwrap_or_default()
        ))
        .code("vars::type"));
    }
    respan(&mut node, declared.span);
    Ok(node)
}

/// Replace the pipeline's vars with the overrides; every problem (an unknown name, a value of
/// another type, a name given twice) is a diagnostic, and nothing is replaced then.
pub fn apply(pipeline: &mut Pipeline, overrides: &[VarOverride]) -> Result<(), Vec<Diagnostic>> {
    let mut errs = Vec::new();
    let mut typed_values = Vec::new();
    let mut seen = BTreeSet::new();
    for o in overrides {
        if !seen.insert(o.name.as_str()) {
            errs.push(
                Diagnostic::error(format!("`--var {}` is given more than once", o.name))
                    .help("give each variable once")
                    .code("vars::duplicate"),
            );
            continue;
        }
        let Some(declared) = pipeline.vars.get(&o.name) else {
            let names = pipeline.vars.keys().map(String::as_str);
            let help = did_you_mean(&o.name, names).unwrap_or_else(|| {
                if pipeline.vars.is_empty() {
                    "this pipeline declares no `vars:`; --var can only override a declared one"
                        .into()
                } else {
                    format!(
                        "declared variables: {}",
                        pipeline.vars.keys().cloned().collect::<Vec<_>>().join(", ")
                    )
                }
            });
            errs.push(
                Diagnostic::error(format!(
                    "`--var {o}`: the pipeline declares no variable `{}`",
                    o.name
                ))
                .help(help)
                .code("vars::unknown"),
            );
            continue;
        };
        match typed(o, declared) {
            Ok(n) => typed_values.push((o.name.clone(), n)),
            Err(d) => errs.push(d),
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    pipeline.vars.extend(typed_values);
    Ok(())
}

/// The names of the vars a `with:` tree, seed or matrix value reads (`${vars.NAME…}`), added to
/// `out`. A `$${` is a literal and reads nothing.
pub fn used_by(node: &Node, out: &mut BTreeSet<String>) {
    match &node.kind {
        NodeKind::Str(s) => {
            let mut rest = s.as_str();
            while let Some(i) = rest.find("${") {
                let escaped = i > 0 && rest[..i].ends_with('$');
                let after = &rest[i + 2..];
                let end = after.find('}').unwrap_or(after.len());
                if !escaped {
                    let mut parts = after[..end].trim().split('.');
                    if parts.next() == Some("vars")
                        && let Some(name) = parts.next().filter(|n| !n.is_empty())
                    {
                        out.insert(name.to_owned());
                    }
                }
                rest = after.get(end + 1..).unwrap_or("");
            }
        }
        NodeKind::Seq(items) => items.iter().for_each(|n| used_by(n, out)),
        NodeKind::Map(m) => m.iter().for_each(|(_, v)| used_by(v, out)),
        _ => {}
    }
}

/// `var NAME: old → new` for each var read by a step whose value differs from what its last
/// result was built with (a var it did not read then counts as `(none)`). A result recorded
/// with no vars (none read, or a store older than this record) names none: the changed `with:`
/// values still explain the re-run.
pub fn changes(
    old: &BTreeMap<String, serde_json::Value>,
    new: &BTreeMap<String, serde_json::Value>,
) -> Vec<String> {
    if old.is_empty() {
        return Vec::new();
    }
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let null = serde_json::Value::Null;
    names
        .into_iter()
        .filter_map(|n| {
            let (a, b) = (old.get(n).unwrap_or(&null), new.get(n).unwrap_or(&null));
            (a != b).then(|| {
                format!(
                    "var {n}: {} → {}",
                    crate::key::short(a),
                    crate::key::short(b)
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::SourceFile;
    use std::sync::Arc;

    fn pipeline(text: &str) -> Pipeline {
        let file = SourceFile {
            name: "t.yaml".into(),
            text: Arc::new(text.into()),
        };
        crate::pipeline::parse(file, "t.yaml".into(), ".".into()).expect("valid")
    }

    const P: &str = "version: 1\nname: t\nvars: { steps: 160, lr: 2.5e-4, tag: v1, gates: [0.9, 0.1], any: null }\nphases:\n  a:\n    steps:\n      s:\n        op: exec\n        with: { run: \"echo ${vars.tag}\", n: \"${vars.steps}\", lit: \"$${vars.lr}\" }\n";

    fn o(s: &str) -> VarOverride {
        s.parse().unwrap()
    }

    #[test]
    fn parses_name_equals_value() {
        assert_eq!(
            o("steps=300"),
            VarOverride {
                name: "steps".into(),
                value: "300".into()
            }
        );
        assert_eq!(o("run=a=b").value, "a=b");
        assert_eq!(o("tag=").value, "");
        assert!("steps".parse::<VarOverride>().is_err());
        assert!("=3".parse::<VarOverride>().is_err());
    }

    #[test]
    fn values_are_typed_like_the_yaml() {
        let mut p = pipeline(P);
        apply(
            &mut p,
            &[
                o("steps=300"),
                o("lr=1"),
                o("tag=123"),
                o("gates=[0.8, 0.2]"),
                o("any={ a: 1 }"),
            ],
        )
        .unwrap();
        let v = |n: &str| p.vars[n].to_json();
        assert_eq!(v("steps"), serde_json::json!(300));
        assert_eq!(v("lr"), serde_json::json!(1));
        // A string var stays a string: `tag: v1` overridden with 123 is "123".
        assert_eq!(v("tag"), serde_json::json!("123"));
        assert_eq!(v("gates"), serde_json::json!([0.8, 0.2]));
        assert_eq!(v("any"), serde_json::json!({"a": 1}));
    }

    #[test]
    fn an_override_points_at_the_declaration() {
        let mut p = pipeline(P);
        let span = p.vars["gates"].span;
        apply(&mut p, &[o("gates=[0.8, 0.2]")]).unwrap();
        let NodeKind::Seq(items) = &p.vars["gates"].kind else {
            panic!("a list")
        };
        assert!(items.iter().all(|n| n.span == span));
    }

    #[test]
    fn unknown_names_mistyped_values_and_repeats_are_errors() {
        let mut p = pipeline(P);
        let before = p.vars.clone();
        let errs = apply(
            &mut p,
            &[
                o("stepz=3"),
                o("steps=many"),
                o("gates=1"),
                o("lr=1"),
                o("lr=2"),
            ],
        )
        .unwrap_err();
        let msgs: Vec<_> = errs.iter().map(|d| d.message.as_str()).collect();
        assert_eq!(
            msgs,
            [
                "`--var stepz=3`: the pipeline declares no variable `stepz`",
                "`--var steps=many`: `steps` is a number in the pipeline, and `many` is a string",
                "`--var gates=1`: `gates` is a list in the pipeline, and `1` is a number",
                "`--var lr` is given more than once",
            ]
        );
        assert_eq!(errs[0].help.as_deref(), Some("did you mean `steps`?"));
        // Nothing was replaced, not even the valid `lr=1`.
        assert_eq!(p.vars, before);
    }

    #[test]
    fn used_by_finds_var_references_but_not_literals() {
        let p = pipeline(P);
        let mut used = BTreeSet::new();
        used_by(p.steps[0].with.as_ref().unwrap(), &mut used);
        assert_eq!(used.into_iter().collect::<Vec<_>>(), ["steps", "tag"]);
    }

    #[test]
    fn changes_name_each_changed_var() {
        let m = |pairs: &[(&str, serde_json::Value)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect::<BTreeMap<_, _>>()
        };
        let old = m(&[("steps", 160.into()), ("tag", "v1".into())]);
        let new = m(&[
            ("steps", 300.into()),
            ("tag", "v1".into()),
            ("lr", 0.5.into()),
        ]);
        assert_eq!(
            changes(&old, &new),
            ["var lr: (none) → 0.5", "var steps: 160 → 300"]
        );
        assert!(changes(&old, &old).is_empty());
        assert!(changes(&BTreeMap::new(), &new).is_empty());
    }
}
