//! The planner: expands matrices, substitutes variables, validates each op's `with:` block,
//! resolves references into a petgraph DAG, checks artifact kinds and reports cycles — all before
//! anything touches the store. The result, [`Plan`], is what the executor runs.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use forge_ops::{
    ArtifactKind, InputSignature, Op, OpRegistry, OutputSpec, Params, ParamsError, Resources,
};
use petgraph::graph::{DiGraph, NodeIndex};
use serde_json::Value;

use crate::diag::{Diagnostic, did_you_mean};
use crate::params_schema::ParamsSchema;
use crate::pipeline::{Invalid, Pipeline, RefDecl, Scope, StepDecl, interpolate};
use crate::yaml::{Node, NodeKind, key_string};

/// Where one input artifact comes from.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub step: usize,
    pub output: String,
    pub kind: ArtifactKind,
}

/// One runnable step: a declared step, or one instance of a matrix step.
#[derive(Clone)]
pub struct StepInstance {
    /// `phase.step` or `phase.step[axis=value,…]`.
    pub id: String,
    pub decl: usize,
    pub op: Arc<dyn Op>,
    /// Parsed params (defaults filled in); their canonical JSON is exactly what enters the key.
    pub params: Params,
    pub inputs: BTreeMap<String, Vec<Upstream>>,
    pub needs: Vec<usize>,
    pub outputs: Vec<OutputSpec>,
    pub resources: Resources,
    /// Slurm options (`defaults.slurm` with the step's own over them); used by
    /// `--executor slurm` only, and not part of the key.
    pub slurm: crate::slurm::options::SlurmOptions,
    pub retries: u32,
    pub timeout: Option<Duration>,
    /// The step's effective seed, resolved once here: the value in its key and the one its op
    /// draws every random stream from.
    pub seed: u64,
    /// The vars this instance reads (`${vars.…}` in its `with:`, `seed:` or matrix values) and
    /// their values: recorded beside its result so `forge plan` can say `var steps: 160 → 300`.
    pub vars: BTreeMap<String, Value>,
}

impl StepInstance {
    /// Every step this one waits for (data inputs and `needs`).
    pub fn deps(&self) -> impl Iterator<Item = usize> + '_ {
        self.inputs
            .values()
            .flatten()
            .map(|u| u.step)
            .chain(self.needs.iter().copied())
    }
}

/// A pipeline resolved into runnable steps and the DAG between them. The plan owns the graph:
/// who waits for whom ([`Plan::deps`], [`Plan::dependents`]) and the order steps are listed and
/// started in ([`Plan::order`]); the executor only walks it.
pub struct Plan {
    pub pipeline: Pipeline,
    pub steps: Vec<StepInstance>,
    /// Edges from a step to the steps that wait for it.
    pub graph: DiGraph<usize, ()>,
    /// Per step: the distinct steps it waits for (data inputs and `needs`), ascending.
    pub deps: Vec<Vec<usize>>,
    /// Per step: the distinct steps that wait for it, ascending.
    pub dependents: Vec<Vec<usize>>,
    /// Step indices in a topological order (dependencies first, file order among equals).
    pub order: Vec<usize>,
}

impl Plan {
    /// Steps matching a user's selector: an exact id, `phase.step` (all instances) or a bare step
    /// name when unique.
    pub fn select(&self, sel: &str) -> Vec<usize> {
        let exact: Vec<usize> = self
            .steps
            .iter()
            .enumerate()
            .filter(|(_, s)| s.id == sel)
            .map(|(i, _)| i)
            .collect();
        if !exact.is_empty() {
            return exact;
        }
        let decl_match = |d: &StepDecl| d.qualified() == sel || d.name == sel;
        self.steps
            .iter()
            .enumerate()
            .filter(|(_, s)| decl_match(&self.pipeline.steps[s.decl]))
            .map(|(i, _)| i)
            .collect()
    }

    /// `roots` and everything they depend on, transitively.
    pub fn with_ancestors(&self, roots: &[usize]) -> Vec<bool> {
        let mut keep = vec![false; self.steps.len()];
        let mut stack = roots.to_vec();
        while let Some(i) = stack.pop() {
            if !keep[i] {
                keep[i] = true;
                stack.extend(&self.deps[i]);
            }
        }
        keep
    }
}

/// Build the plan, or every diagnostic that stands in the way.
pub fn build(pipeline: Pipeline, registry: &OpRegistry) -> Result<Plan, Invalid> {
    let mut errs = Vec::new();
    let mut steps = Vec::new();
    // decl index → instance indices
    let mut instances_of: Vec<Vec<usize>> = Vec::new();
    // instance index → its matrix values (for selectors)
    let mut labels: Vec<BTreeMap<String, String>> = Vec::new();

    for (di, decl) in pipeline.steps.iter().enumerate() {
        let mut mine = Vec::new();
        let Some(op) = registry.get(&decl.op).cloned() else {
            if !decl.op.is_empty() {
                let hint = did_you_mean(&decl.op, registry.names()).unwrap_or_else(|| {
                    format!(
                        "available ops: {}",
                        registry.names().collect::<Vec<_>>().join(", ")
                    )
                });
                errs.push(
                    Diagnostic::error(format!(
                        "unknown op `{}` in step `{}`",
                        decl.op,
                        decl.qualified()
                    ))
                    .label(decl.op_span, "unknown op")
                    .help(hint)
                    .code("plan::unknown-op"),
                );
            }
            instances_of.push(mine);
            continue;
        };
        // This step's problems, one per place and message across its matrix instances.
        let mut decl_errs: Vec<(Diagnostic, String, Vec<String>)> = Vec::new();
        for combo in matrix_combinations(decl) {
            let (id, label) = instance_id(decl, &combo);
            let scope = Scope {
                vars: &pipeline.vars,
                matrix: if decl.matrix.is_empty() {
                    None
                } else {
                    Some(&combo)
                },
            };
            let mut ierrs = Vec::new();
            let raw = decl
                .with
                .as_ref()
                .map(|w| interpolate(w, &scope, &mut ierrs))
                .unwrap_or(Value::Null);
            let seed = step_seed(decl, &scope, pipeline.defaults.seed, &mut ierrs);
            let params = if ierrs.is_empty() {
                match op
                    .parse_params(&raw)
                    .and_then(|p| op.check_files(&p, &pipeline.dir).map(|()| p))
                {
                    Ok(p) => Some(p),
                    Err(e) => {
                        ierrs.push(params_diagnostic(decl, &id, op.as_ref(), &raw, &e));
                        // A parser stops at its first error: report the others too.
                        for other in further_param_errors(op.as_ref(), &raw, &e) {
                            ierrs.push(params_diagnostic(decl, &id, op.as_ref(), &raw, &other));
                        }
                        None
                    }
                }
            } else {
                None
            };
            for d in ierrs {
                let same = decl_errs.iter_mut().find(|(e, first, _)| {
                    e.code == d.code
                        && e.labels.first().map(|l| l.0) == d.labels.first().map(|l| l.0)
                        && e.message.replace(first.as_str(), "") == d.message.replace(&id, "")
                });
                match same {
                    Some((_, _, ids)) => ids.push(id.clone()),
                    None => decl_errs.push((d, id.clone(), vec![id.clone()])),
                }
            }
            let Some(params) = params else { continue };
            let outputs = op.outputs(&params);
            let resources = decl
                .resources
                .unwrap_or_else(|| op.default_resources(&params));
            let retries = decl.retries.unwrap_or_else(|| op.default_retries());
            mine.push(steps.len());
            labels.push(label);
            steps.push(StepInstance {
                id,
                decl: di,
                op: op.clone(),
                params,
                inputs: BTreeMap::new(),
                needs: Vec::new(),
                outputs,
                resources,
                slurm: decl.slurm.as_ref().map_or_else(
                    || pipeline.defaults.slurm.clone(),
                    |own| own.over(&pipeline.defaults.slurm),
                ),
                retries,
                timeout: decl.timeout,
                seed,
                vars: vars_read(decl, &combo, &pipeline.vars),
            });
        }
        for (mut d, first, ids) in decl_errs {
            if ids.len() > 1 {
                // `p.s[v=a]` → `p.s` (matrix instances v=a; v=b; …)
                let base = decl.qualified();
                let which: Vec<&str> = ids
                    .iter()
                    .map(|i| {
                        i[base.len()..]
                            .trim_start_matches('[')
                            .trim_end_matches(']')
                    })
                    .collect();
                d.message = d.message.replace(
                    &format!("`{first}`"),
                    &format!("`{base}` (matrix instances {})", which.join("; ")),
                );
            }
            errs.push(d);
        }
        instances_of.push(mine);
    }

    // Resolve references now that every instance's outputs are known.
    let resolver = Resolver {
        pipeline: &pipeline,
        instances_of: &instances_of,
        steps: &steps,
        labels: &labels,
    };
    let mut wiring = Vec::with_capacity(steps.len());
    for (si, s) in steps.iter().enumerate() {
        let decl = &pipeline.steps[s.decl];
        let mut inputs = BTreeMap::new();
        for input in &decl.inputs {
            let mut ups = Vec::new();
            for r in &input.refs {
                match resolver.resolve(decl, r, true) {
                    Ok(found) => ups.extend(found),
                    Err(d) => errs.push(d),
                }
            }
            inputs.insert(input.name.clone(), ups);
        }
        let mut needs = Vec::new();
        for r in &decl.needs {
            match resolver.resolve(decl, r, false) {
                Ok(found) => needs.extend(found.into_iter().map(|u| u.step)),
                Err(d) => errs.push(d),
            }
        }
        errs.extend(check_signature(s, decl, &inputs));
        errs.extend(check_metrics(s, decl, &inputs, &steps));
        wiring.push((si, inputs, needs));
    }
    // Steps that produced no instance (bad op or params) still get their references checked.
    for (di, decl) in pipeline.steps.iter().enumerate() {
        if instances_of[di].is_empty() {
            for r in decl
                .inputs
                .iter()
                .flat_map(|i| i.refs.iter())
                .chain(decl.needs.iter())
            {
                if let Err(d) = resolver.resolve(decl, r, false) {
                    errs.push(d);
                }
            }
        }
    }
    for (si, inputs, needs) in wiring {
        steps[si].inputs = inputs;
        steps[si].needs = needs;
    }

    let deps: Vec<Vec<usize>> = steps
        .iter()
        .map(|s| {
            let set: std::collections::BTreeSet<usize> = s.deps().collect();
            set.into_iter().collect()
        })
        .collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); steps.len()];
    let mut graph = DiGraph::new();
    let nodes: Vec<NodeIndex> = (0..steps.len()).map(|i| graph.add_node(i)).collect();
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            graph.add_edge(nodes[d], nodes[i], ());
            dependents[d].push(i);
        }
    }
    if errs.is_empty()
        && let Some(cycle) = find_cycle(&graph)
    {
        errs.push(cycle_diagnostic(&pipeline, &steps, &cycle));
    }
    if !errs.is_empty() {
        // A problem every instance of a matrix step shares (a reference) is one problem.
        let mut seen: Vec<Diagnostic> = Vec::new();
        errs.retain(|d| {
            let new = !seen.contains(d);
            if new {
                seen.push(d.clone());
            }
            new
        });
        errs.sort_by_key(|d| d.labels.first().map(|(s, _)| s.offset).unwrap_or(0));
        return Err(Invalid {
            file: pipeline.file.clone(),
            diagnostics: errs,
            partial: None,
        });
    }
    let order = topo_order(&deps, &dependents);
    Ok(Plan {
        pipeline,
        steps,
        graph,
        deps,
        dependents,
        order,
    })
}

/// Kahn's algorithm, taking the lowest (file-order) ready step first, so plans print stably.
fn topo_order(deps: &[Vec<usize>], dependents: &[Vec<usize>]) -> Vec<usize> {
    let mut indeg: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut ready: std::collections::BTreeSet<usize> =
        (0..deps.len()).filter(|&i| indeg[i] == 0).collect();
    let mut out = Vec::with_capacity(deps.len());
    while let Some(i) = ready.pop_first() {
        out.push(i);
        for &j in &dependents[i] {
            indeg[j] -= 1;
            if indeg[j] == 0 {
                ready.insert(j);
            }
        }
    }
    out
}

fn matrix_combinations(decl: &StepDecl) -> Vec<BTreeMap<String, Node>> {
    let mut combos = vec![BTreeMap::new()];
    for axis in &decl.matrix {
        let mut next = Vec::new();
        for c in &combos {
            for v in &axis.values {
                let mut c2 = c.clone();
                c2.insert(axis.name.clone(), v.clone());
                next.push(c2);
            }
        }
        combos = next;
    }
    combos
}

/// The label of a matrix value: its `name` field, or the scalar itself.
fn value_label(v: &Node, index: usize) -> String {
    if let Some(n) = v.get("name").and_then(Node::as_str) {
        return n.to_owned();
    }
    match &v.kind {
        NodeKind::Str(s) => s.clone(),
        NodeKind::Int(_) | NodeKind::Float(_) | NodeKind::Bool(_) => key_string(v),
        _ => index.to_string(),
    }
}

fn instance_id(
    decl: &StepDecl,
    combo: &BTreeMap<String, Node>,
) -> (String, BTreeMap<String, String>) {
    if decl.matrix.is_empty() {
        return (decl.qualified(), BTreeMap::new());
    }
    let mut label = BTreeMap::new();
    let parts: Vec<String> = decl
        .matrix
        .iter()
        .map(|axis| {
            let v = &combo[&axis.name];
            let idx = axis.values.iter().position(|x| x == v).unwrap_or(0);
            let l = value_label(v, idx);
            label.insert(axis.name.clone(), l.clone());
            format!("{}={l}", axis.name)
        })
        .collect();
    (format!("{}[{}]", decl.qualified(), parts.join(",")), label)
}

/// The vars one instance of `decl` reads, with their values.
fn vars_read(
    decl: &StepDecl,
    combo: &BTreeMap<String, Node>,
    vars: &BTreeMap<String, Node>,
) -> BTreeMap<String, Value> {
    let mut names = std::collections::BTreeSet::new();
    for node in decl.with.iter().chain(&decl.seed).chain(combo.values()) {
        crate::vars::used_by(node, &mut names);
    }
    names
        .into_iter()
        .filter_map(|n| Some((n.clone(), vars.get(&n)?.to_json())))
        .collect()
}

/// A step's effective seed: its own `seed:` (interpolated for this instance) or the pipeline's.
fn step_seed(decl: &StepDecl, scope: &Scope<'_>, default: u64, errs: &mut Vec<Diagnostic>) -> u64 {
    let Some(node) = &decl.seed else {
        return default;
    };
    let mut ierrs = Vec::new();
    let v = interpolate(node, scope, &mut ierrs);
    if !ierrs.is_empty() {
        errs.extend(ierrs);
        return default;
    }
    v.as_u64().unwrap_or_else(|| {
        errs.push(
            Diagnostic::error(format!(
                "`seed` of step `{}` must be a non-negative integer, not {v}",
                decl.qualified()
            ))
            .label(node.span, "not a seed")
            .help("write e.g. `seed: 7`, or `seed: \"${matrix.variant.seed}\"`")
            .code("plan::seed"),
        );
        default
    })
}

/// The value at `path` (map keys and list indices) inside a `with:` block.
fn value_at<'v>(raw: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(raw, |v, seg| match v {
        Value::Object(m) => m.get(seg.as_str()),
        Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

/// The errors of the `with:` block `raw` after `first`: drop the value each error points at and
/// parse again, keeping the errors the schema shows are about one key alone — a key it does not
/// allow there, or a string it does not allow — and stopping at the first that is not: a missing
/// key or a check across keys may only come from what was dropped.
fn further_param_errors(op: &dyn Op, raw: &Value, first: &ParamsError) -> Vec<ParamsError> {
    fn remove(v: &mut Value, path: &[String]) -> bool {
        let Some((last, parents)) = path.split_last() else {
            return false;
        };
        let parent = parents.iter().try_fold(v, |v, seg| match v {
            Value::Object(m) => m.get_mut(seg.as_str()),
            Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        });
        match parent {
            Some(Value::Object(m)) => m.remove(last.as_str()).is_some(),
            _ => false,
        }
    }
    let schema = ParamsSchema::of(op);
    let about_one_key = |e: &ParamsError| {
        let Some((key, parent)) = e.path.split_last() else {
            return false;
        };
        let unknown_key = value_at(raw, parent)
            .and_then(Value::as_object)
            .is_some_and(|m| {
                let allowed = schema.allowed_at(raw, parent);
                m.contains_key(key) && !allowed.keys.is_empty() && !allowed.keys.contains(key)
            });
        let bad_string = value_at(raw, &e.path)
            .and_then(Value::as_str)
            .is_some_and(|v| {
                let allowed = schema.allowed_at(raw, &e.path);
                !allowed.values.is_empty() && !allowed.values.iter().any(|a| a == v)
            });
        unknown_key || bad_string
    };
    let mut out: Vec<ParamsError> = Vec::new();
    let mut work = raw.clone();
    let mut last = first.path.clone();
    for _ in 0..32 {
        if !remove(&mut work, &last) {
            break;
        }
        let Err(e) = op.parse_params(&work) else {
            break;
        };
        if e.path == first.path || out.iter().any(|o| o.path == e.path) || !about_one_key(&e) {
            break;
        }
        last = e.path.clone();
        out.push(e);
    }
    out
}

/// Map a params error path back into the `with:` block's spans, with a hint from the op's schema:
/// the key it does not know (and which known key it is closest to), or the value it does not
/// allow (and which allowed value it is closest to).
fn params_diagnostic(
    decl: &StepDecl,
    id: &str,
    op: &dyn Op,
    raw: &Value,
    e: &ParamsError,
) -> Diagnostic {
    let schema = ParamsSchema::of(op);
    // An unknown key: the path ends at a key its parent has but the schema does not know.
    let unknown_key = e.path.split_last().and_then(|(key, parent)| {
        let allowed = schema.allowed_at(raw, parent);
        let present = value_at(raw, parent)
            .and_then(Value::as_object)?
            .contains_key(key);
        (present && !allowed.keys.is_empty() && !allowed.keys.contains(key))
            .then(|| (key.clone(), allowed.keys))
    });
    let mut node = decl.with.as_ref();
    let mut span = decl.with.as_ref().map(|w| w.span).unwrap_or(decl.name_span);
    for seg in &e.path {
        let Some(n) = node else { break };
        let next = match &n.kind {
            NodeKind::Map(m) => m.iter().find(|(k, _)| key_string(k) == *seg).map(|(k, v)| {
                // An unknown key points at the key, anything else at the value.
                if unknown_key.as_ref().is_some_and(|(u, _)| u == seg) {
                    (k, k.span)
                } else {
                    (v, v.span)
                }
            }),
            NodeKind::Seq(items) => seg
                .parse::<usize>()
                .ok()
                .and_then(|i| items.get(i))
                .map(|v| (v, v.span)),
            _ => None,
        };
        match next {
            Some((nn, sp)) => {
                node = Some(nn);
                span = sp;
            }
            None => break,
        }
    }
    let path = if e.path.is_empty() {
        "with".to_string()
    } else {
        format!("with.{}", e.path.join("."))
    };
    let suggest = |bad: &str, known: &[String], what: &str| {
        did_you_mean(bad, known.iter().map(String::as_str)).or_else(|| {
            (!known.is_empty()).then(|| format!("valid {what} here: {}", known.join(", ")))
        })
    };
    let help = e
        .hint
        .clone()
        .or_else(|| {
            unknown_key
                .as_ref()
                .and_then(|(k, known)| suggest(k, known, "keys"))
        })
        .or_else(|| {
            // A value the schema does not allow: the value itself, or an enum tag or map key
            // inside it.
            let here = value_at(raw, &e.path)?;
            let allowed = schema.allowed_at(raw, &e.path);
            match here {
                Value::String(v) if !allowed.values.is_empty() && !allowed.values.contains(v) => {
                    suggest(v, &allowed.values, "values")
                }
                Value::Object(m)
                    if m.keys()
                        .any(|k| !allowed.keys.is_empty() && !allowed.keys.contains(k)) =>
                {
                    let k = m.keys().find(|k| !allowed.keys.contains(k))?;
                    suggest(k, &allowed.keys, "keys")
                }
                Value::Object(m) => m.iter().find_map(|(k, v)| {
                    let mut inner = e.path.clone();
                    inner.push(k.clone());
                    let tag = schema.allowed_at(raw, &inner);
                    match v {
                        Value::String(v) if !tag.values.is_empty() && !tag.values.contains(v) => {
                            suggest(v, &tag.values, "values")
                        }
                        _ => None,
                    }
                    .or_else(|| {
                        (!allowed.values.is_empty() && !allowed.values.contains(k))
                            .then(|| suggest(k, &allowed.values, "values"))
                            .flatten()
                    })
                }),
                _ => None,
            }
        })
        .or_else(|| {
            // A required key is missing.
            let here = value_at(raw, &e.path)?.as_object()?;
            let allowed = schema.allowed_at(raw, &e.path);
            allowed
                .required
                .iter()
                .any(|k| !here.contains_key(k))
                .then(|| format!("see `forge schema` for the parameters of `{}`", decl.op))
        });
    Diagnostic::error(format!(
        "invalid `{path}` for op `{}` in step `{id}`: {}",
        decl.op, e.message
    ))
    .label(span, "here")
    .help_opt(help)
    .code("plan::params")
}

struct Resolver<'a> {
    pipeline: &'a Pipeline,
    instances_of: &'a [Vec<usize>],
    steps: &'a [StepInstance],
    labels: &'a [BTreeMap<String, String>],
}

impl Resolver<'_> {
    fn find_decl(&self, phase: &str, name: &str) -> Option<usize> {
        self.pipeline
            .steps
            .iter()
            .position(|d| d.phase == phase && d.name == name)
    }

    fn all_names(&self) -> Vec<String> {
        self.pipeline
            .steps
            .iter()
            .map(StepDecl::qualified)
            .collect()
    }

    /// Resolve `r`, written in `from`, to the upstream artifacts it names.
    fn resolve(
        &self,
        from: &StepDecl,
        r: &RefDecl,
        want_output: bool,
    ) -> Result<Vec<Upstream>, Diagnostic> {
        let text = r.text.trim();
        let (path, selector) = match text.split_once('[') {
            Some((p, rest)) => match rest.strip_suffix(']') {
                Some(sel) => (p, Some(sel)),
                None => {
                    return Err(ref_error(
                        r,
                        format!("`{text}` has an unclosed `[`"),
                        "write `step[axis=value]`".into(),
                    ));
                }
            },
            None => (text, None),
        };
        let parts: Vec<&str> = path.split('.').collect();
        // Candidate readings: (phase, step, output)
        let candidates: Vec<(String, &str, Option<&str>)> = match parts.as_slice() {
            [s] => vec![(from.phase.clone(), s, None)],
            [a, b] => vec![(a.to_string(), b, None), (from.phase.clone(), a, Some(*b))],
            [a, b, c] => vec![(a.to_string(), b, Some(*c))],
            _ => {
                return Err(ref_error(
                    r,
                    format!("`{text}` is not a step reference"),
                    "write `step`, `phase.step` or `phase.step.output`".into(),
                ));
            }
        };
        let mut found = None;
        for (phase, step, output) in &candidates {
            if let Some(d) = self.find_decl(phase, step) {
                found = Some((d, *output));
                break;
            }
        }
        // A bare name may live in another phase, if only one has it.
        if found.is_none() && parts.len() == 1 {
            let hits: Vec<usize> = self
                .pipeline
                .steps
                .iter()
                .enumerate()
                .filter(|(_, d)| d.name == parts[0])
                .map(|(i, _)| i)
                .collect();
            match hits.as_slice() {
                [one] => found = Some((*one, None)),
                [] => {}
                many => {
                    let names: Vec<String> = many
                        .iter()
                        .map(|&i| self.pipeline.steps[i].qualified())
                        .collect();
                    return Err(ref_error(
                        r,
                        format!("`{text}` is ambiguous"),
                        format!("qualify it with its phase: {}", names.join(" or ")),
                    ));
                }
            }
        }
        let Some((decl, output)) = found else {
            let all = self.all_names();
            let hint = did_you_mean(path, all.iter().map(String::as_str))
                .or_else(|| {
                    did_you_mean(
                        parts[parts.len().min(2) - 1],
                        self.pipeline.steps.iter().map(|d| d.name.as_str()),
                    )
                })
                .unwrap_or_else(|| format!("steps in this pipeline: {}", all.join(", ")));
            return Err(ref_error(r, format!("unknown step `{path}`"), hint));
        };
        let mut insts: Vec<usize> = self.instances_of[decl].clone();
        if let Some(sel) = selector {
            let mut want = BTreeMap::new();
            for kv in sel.split(',') {
                let Some((k, v)) = kv.split_once('=') else {
                    return Err(ref_error(
                        r,
                        format!("bad selector `[{sel}]`"),
                        "write `[axis=value]`".into(),
                    ));
                };
                want.insert(k.trim().to_owned(), v.trim().to_owned());
            }
            insts.retain(|&i| want.iter().all(|(k, v)| self.labels[i].get(k) == Some(v)));
            if insts.is_empty() {
                let have: Vec<&str> = self.instances_of[decl]
                    .iter()
                    .map(|&i| self.steps[i].id.as_str())
                    .collect();
                return Err(ref_error(
                    r,
                    format!("no instance of `{path}` matches `[{sel}]`"),
                    format!("instances: {}", have.join(", ")),
                ));
            }
        }
        if !want_output {
            return Ok(insts
                .into_iter()
                .map(|i| Upstream {
                    step: i,
                    output: String::new(),
                    kind: ArtifactKind::Files,
                })
                .collect());
        }
        let mut out = Vec::new();
        for i in insts {
            let outs = &self.steps[i].outputs;
            let spec = match output {
                Some(o) => {
                    if let Some(s) = outs.iter().find(|x| x.name == o) {
                        s
                    } else {
                        let names: Vec<&str> = outs.iter().map(|o| o.name.as_str()).collect();
                        return Err(ref_error(
                            r,
                            format!(
                                "step `{}` has no output `{o}`",
                                self.pipeline.steps[decl].qualified()
                            ),
                            did_you_mean(o, names.iter().copied())
                                .unwrap_or_else(|| format!("its outputs: {}", names.join(", "))),
                        ));
                    }
                }
                None => {
                    if let [one] = outs.as_slice() {
                        one
                    } else {
                        let names: Vec<&str> = outs.iter().map(|o| o.name.as_str()).collect();
                        return Err(ref_error(
                            r,
                            format!(
                                "step `{}` has several outputs; name one",
                                self.pipeline.steps[decl].qualified()
                            ),
                            format!("write `{path}.<output>` with one of: {}", names.join(", ")),
                        ));
                    }
                }
            };
            out.push(Upstream {
                step: i,
                output: spec.name.clone(),
                kind: spec.kind,
            });
        }
        Ok(out)
    }
}

fn ref_error(r: &RefDecl, msg: String, help: String) -> Diagnostic {
    Diagnostic::error(msg)
        .label(r.span, "this reference")
        .help(help)
        .code("plan::reference")
}

/// Input names, counts and kinds against the op's declared signature.
fn check_signature(
    s: &StepInstance,
    decl: &StepDecl,
    inputs: &BTreeMap<String, Vec<Upstream>>,
) -> Vec<Diagnostic> {
    let mut errs = Vec::new();
    let InputSignature::Fixed(specs) = s.op.inputs(&s.params) else {
        return errs;
    };
    for input in &decl.inputs {
        let Some(spec) = specs.iter().find(|x| x.name == input.name) else {
            let names: Vec<&str> = specs.iter().map(|x| x.name.as_str()).collect();
            let hint = did_you_mean(&input.name, names.iter().copied()).unwrap_or_else(|| {
                if names.is_empty() {
                    format!("op `{}` takes no inputs", decl.op)
                } else {
                    format!("op `{}` takes: {}", decl.op, names.join(", "))
                }
            });
            errs.push(
                Diagnostic::error(format!("op `{}` has no input `{}`", decl.op, input.name))
                    .label(input.name_span, "unknown input")
                    .help(hint)
                    .code("plan::input"),
            );
            continue;
        };
        let ups = &inputs[&input.name];
        if !spec.multiple && ups.len() > 1 {
            errs.push(
                Diagnostic::error(format!(
                    "input `{}` of step `{}` takes one artifact, but its references give {}",
                    input.name,
                    s.id,
                    ups.len()
                ))
                .label(input.name_span, "one artifact expected")
                .help("reference one matrix instance with `step[axis=value]`")
                .code("plan::input-count"),
            );
        }
        for (u, r) in ups.iter().zip(input.refs.iter().cycle()) {
            if !spec.accepts(u.kind) {
                let want: Vec<String> = spec
                    .accepts
                    .iter()
                    .map(std::string::ToString::to_string)
                    .collect();
                errs.push(
                    Diagnostic::error(format!(
                        "input `{}` of step `{}` expects {}, but `{}` produces a {}",
                        input.name,
                        s.id,
                        want.join(" or "),
                        r.text,
                        u.kind
                    ))
                    .label(r.span, format!("a {}", u.kind))
                    .help("wire an output of the expected kind into this input")
                    .code("plan::kind-mismatch"),
                );
            }
        }
    }
    for spec in specs.iter().filter(|x| x.required) {
        if !decl.inputs.iter().any(|i| i.name == spec.name) {
            errs.push(
                Diagnostic::error(format!(
                    "step `{}` is missing required input `{}`",
                    s.id, spec.name
                ))
                .label(decl.name_span, "this step")
                .help(format!("add `inputs: {{ {}: <step> }}`", spec.name))
                .code("plan::input"),
            );
        }
    }
    errs
}

/// The metrics a step checks (a `validate` step's) against what its inputs' ops write.
fn check_metrics(
    s: &StepInstance,
    decl: &StepDecl,
    inputs: &BTreeMap<String, Vec<Upstream>>,
    steps: &[StepInstance],
) -> Vec<Diagnostic> {
    let checked = s.op.checked_metrics(&s.params);
    let mut errs = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for u in inputs.values().flatten() {
        let up = &steps[u.step];
        let Some(provided) = up.op.metrics(&up.params) else {
            continue;
        };
        for m in &checked {
            let known = provided.iter().any(|p| forge_ops::op::metric_matches(p, m));
            if known || !seen.insert((m.clone(), up.op.name())) {
                continue;
            }
            let span = find_string(decl.with.as_ref(), m).unwrap_or(decl.name_span);
            let hint = did_you_mean(m, provided.iter().map(String::as_str)).unwrap_or_else(|| {
                format!(
                    "`{}` writes: {}",
                    up.op.name(),
                    if provided.is_empty() {
                        "no metrics".to_string()
                    } else {
                        provided.join(", ")
                    }
                )
            });
            errs.push(
                Diagnostic::error(format!(
                    "step `{}` checks `{m}`, which `{}` (op `{}`) never writes into its `metrics.json`",
                    s.id,
                    up.id,
                    up.op.name()
                ))
                .label(span, "a metric no input has")
                .help(hint)
                .code("plan::metric"),
            );
        }
    }
    errs
}

/// The span of the first string equal to `text` inside `node`.
fn find_string(node: Option<&Node>, text: &str) -> Option<crate::diag::Span> {
    let node = node?;
    match &node.kind {
        NodeKind::Str(s) if s == text => Some(node.span),
        NodeKind::Map(m) => m.iter().find_map(|(_, v)| find_string(Some(v), text)),
        NodeKind::Seq(items) => items.iter().find_map(|v| find_string(Some(v), text)),
        _ => None,
    }
}

fn find_cycle(g: &DiGraph<usize, ()>) -> Option<Vec<usize>> {
    for scc in petgraph::algo::tarjan_scc(g) {
        let self_loop = scc.len() == 1 && g.contains_edge(scc[0], scc[0]);
        if scc.len() > 1 || self_loop {
            // Walk inside the component until a node repeats.
            let members: std::collections::HashSet<NodeIndex> = scc.iter().copied().collect();
            let start = *scc.iter().min_by_key(|n| g[**n]).expect("non-empty");
            let mut path = vec![start];
            let mut pos: HashMap<NodeIndex, usize> = HashMap::from([(start, 0)]);
            let mut cur = start;
            loop {
                let next = g
                    .neighbors(cur)
                    .filter(|n| members.contains(n))
                    .min_by_key(|n| g[*n])
                    .expect("in a cycle");
                if let Some(&p) = pos.get(&next) {
                    let mut cyc: Vec<usize> = path[p..].iter().map(|n| g[*n]).collect();
                    cyc.push(g[next]);
                    return Some(cyc);
                }
                pos.insert(next, path.len());
                path.push(next);
                cur = next;
            }
        }
    }
    None
}

fn cycle_diagnostic(p: &Pipeline, steps: &[StepInstance], cycle: &[usize]) -> Diagnostic {
    let names: Vec<&str> = cycle.iter().map(|&i| steps[i].id.as_str()).collect();
    let mut d =
        Diagnostic::error(format!("dependency cycle: {}", names.join(" → "))).code("plan::cycle");
    for w in cycle.windows(2) {
        let (a, b) = (w[0], w[1]);
        let decl = &p.steps[steps[b].decl];
        // Point at b's reference to a.
        let from_a = &p.steps[steps[a].decl];
        let span = decl
            .inputs
            .iter()
            .flat_map(|i| i.refs.iter())
            .chain(decl.needs.iter())
            .find(|r| {
                let t = r.text.split('[').next().unwrap_or("");
                t == from_a.name
                    || t == from_a.qualified()
                    || t.starts_with(&format!("{}.", from_a.qualified()))
                    || (t.starts_with(&format!("{}.", from_a.name)) && from_a.phase == decl.phase)
            })
            .map(|r| r.span)
            .unwrap_or(decl.name_span);
        d = d.label(span, format!("`{}` needs `{}`", steps[b].id, steps[a].id));
    }
    d.help("a step cannot depend on its own result; remove one of these references")
}
