//! Pipeline format v1: from the span-carrying YAML tree to [`Pipeline`], checking structure and
//! collecting *every* problem as a [`Diagnostic`] (unknown keys with "did you mean", wrong types,
//! bad names, bad durations). Op parameters (`with:`), references and the graph are checked by
//! [`crate::plan`], once matrices are expanded and variables substituted ([`interpolate`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use forge_ops::Resources;

use crate::diag::{Diagnostic, SourceFile, Span, did_you_mean};
use crate::yaml::{Node, NodeKind, key_string};

pub const PIPELINE_VERSION: i64 = 1;

pub const TOP_KEYS: &[&str] = &[
    "version",
    "name",
    "description",
    "defaults",
    "vars",
    "phases",
];
pub const DEFAULTS_KEYS: &[&str] = &["device", "seed", "executor", "remote", "slurm"];
pub const PHASE_KEYS: &[&str] = &["description", "steps"];
pub const STEP_KEYS: &[&str] = &[
    "op",
    "description",
    "inputs",
    "with",
    "matrix",
    "needs",
    "resources",
    "retries",
    "timeout",
    "seed",
    "slurm",
];
pub const RESOURCE_KEYS: &[&str] = &["cpus", "gpus"];
pub const SLURM_KEYS: &[&str] = &["partition", "account", "time", "mem", "extra"];

#[derive(Debug, Clone)]
pub struct Defaults {
    pub device: String,
    pub seed: u64,
    /// `local` or `slurm`, when the pipeline sets it (`--executor` wins).
    pub executor: Option<String>,
    /// The remote cache's URL, when the pipeline sets it (`--remote` and FORGE_REMOTE win).
    pub remote: Option<String>,
    /// Slurm options of every step (a step's own `slurm:` is laid over them).
    pub slurm: crate::slurm::options::SlurmOptions,
}

/// The executors `defaults.executor` and `--executor` name.
pub const EXECUTORS: &[&str] = &["local", "slurm"];

/// A reference to another step as written: `step`, `phase.step`, `phase.step.output`, optionally
/// with a matrix selector `step[axis=value]`.
#[derive(Debug, Clone)]
pub struct RefDecl {
    pub text: String,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct InputDecl {
    pub name: String,
    pub name_span: Span,
    pub refs: Vec<RefDecl>,
}

#[derive(Debug, Clone)]
pub struct MatrixAxis {
    pub name: String,
    pub span: Span,
    pub values: Vec<Node>,
}

#[derive(Debug, Clone)]
pub struct StepDecl {
    pub phase: String,
    pub name: String,
    pub name_span: Span,
    pub op: String,
    pub op_span: Span,
    pub inputs: Vec<InputDecl>,
    pub with: Option<Node>,
    pub matrix: Vec<MatrixAxis>,
    pub needs: Vec<RefDecl>,
    pub resources: Option<Resources>,
    pub retries: Option<u32>,
    pub timeout: Option<Duration>,
    /// The step's own seed, as written (it may be `${…}`); `defaults.seed` when absent.
    pub seed: Option<Node>,
    /// The step's own Slurm options (laid over `defaults.slurm`).
    pub slurm: Option<crate::slurm::options::SlurmOptions>,
}

impl StepDecl {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.phase, self.name)
    }
}

#[derive(Debug, Clone)]
pub struct Pipeline {
    pub file: SourceFile,
    pub path: PathBuf,
    /// Directory relative paths in the pipeline resolve against.
    pub dir: PathBuf,
    pub name: String,
    pub description: Option<String>,
    pub defaults: Defaults,
    pub vars: BTreeMap<String, Node>,
    pub steps: Vec<StepDecl>,
}

/// Everything wrong with a pipeline file.
#[derive(Debug)]
pub struct Invalid {
    pub file: SourceFile,
    pub diagnostics: Vec<Diagnostic>,
    /// The pipeline as far as it could be read, when its structure held (the problems are in
    /// single values, left at their defaults): planning it finds the problems beyond these.
    pub partial: Option<Box<Pipeline>>,
}

/// Read and structurally check a pipeline file.
pub fn load(path: &Path) -> Result<Pipeline, Invalid> {
    let name = path.display().to_string();
    let text = match std::fs::read(path) {
        Ok(b) => String::from_utf8(b).map_err(|_| Invalid {
            file: SourceFile {
                name: name.clone(),
                text: Arc::new(String::new()),
            },
            diagnostics: vec![
                Diagnostic::error(format!("`{name}` is not valid UTF-8"))
                    .code("pipeline::encoding"),
            ],
            partial: None,
        })?,
        Err(e) => {
            return Err(Invalid {
                file: SourceFile { name: name.clone(), text: Arc::new(String::new()) },
                diagnostics: vec![
                    Diagnostic::error(format!("cannot read `{name}`: {e}"))
                        .help("pass the path of a pipeline YAML file, e.g. `forge apply pipelines/hello.yaml`")
                        .code("pipeline::read"),
                ],
                partial: None,
            });
        }
    };
    let file = SourceFile {
        name,
        text: Arc::new(text),
    };
    let dir = path.parent().map(Path::to_owned).unwrap_or_default();
    let dir = if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    };
    parse(file, path.to_owned(), dir)
}

pub fn parse(file: SourceFile, path: PathBuf, dir: PathBuf) -> Result<Pipeline, Invalid> {
    let root = match crate::yaml::load(&file.text) {
        Ok(r) => r,
        Err(d) => {
            return Err(Invalid {
                file,
                diagnostics: vec![d],
                partial: None,
            });
        }
    };
    let mut errs = Vec::new();
    let p = parse_root(&root, &file, path, dir, &mut errs);
    match p {
        Some(p) if errs.is_empty() => Ok(p),
        p => {
            errs.sort_by_key(|d| d.labels.first().map(|(s, _)| s.offset).unwrap_or(0));
            // Planning what was read is worth it only when every problem is one value that the
            // rest does not depend on; otherwise it would report the same problem again.
            let independent = errs.iter().all(|d| {
                matches!(
                    d.code,
                    Some("pipeline::version" | "pipeline::device" | "pipeline::duration")
                )
            });
            Err(Invalid {
                file,
                diagnostics: errs,
                partial: p.filter(|_| independent).map(Box::new),
            })
        }
    }
}

// ----- helpers -----------------------------------------------------------------------------------

fn type_error(node: &Node, what: &str, expected: &str) -> Diagnostic {
    Diagnostic::error(format!(
        "{what} must be {expected}, found {}",
        node.type_name()
    ))
    .label(node.span, format!("expected {expected}"))
    .code("pipeline::type")
}

fn expect_map<'a>(
    node: &'a Node,
    what: &str,
    errs: &mut Vec<Diagnostic>,
) -> Option<&'a [(Node, Node)]> {
    if let Some(m) = node.as_map() {
        Some(m)
    } else {
        errs.push(type_error(node, what, "a mapping"));
        None
    }
}

/// Report keys of `map` not in `allowed`.
fn check_keys(map: &[(Node, Node)], allowed: &[&str], context: &str, errs: &mut Vec<Diagnostic>) {
    for (k, _) in map {
        let name = key_string(k);
        if !allowed.contains(&name.as_str()) {
            let hint = did_you_mean(&name, allowed.iter().copied())
                .unwrap_or_else(|| format!("{context} keys are: {}", allowed.join(", ")));
            errs.push(
                Diagnostic::error(format!("unknown key `{name}` in {context}"))
                    .label(k.span, "unknown key")
                    .help(hint)
                    .code("pipeline::unknown-key"),
            );
        }
    }
}

fn get<'a>(map: &'a [(Node, Node)], key: &str) -> Option<&'a Node> {
    map.iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

fn string(node: &Node, what: &str, errs: &mut Vec<Diagnostic>) -> Option<String> {
    if let NodeKind::Str(s) = &node.kind {
        Some(s.clone())
    } else {
        errs.push(type_error(node, what, "a string"));
        None
    }
}

fn unsigned(node: &Node, what: &str, errs: &mut Vec<Diagnostic>) -> Option<u64> {
    match node.kind {
        NodeKind::Int(i) if i >= 0 => Some(i as u64),
        NodeKind::Int(i) => {
            errs.push(
                Diagnostic::error(format!("{what} must be a non-negative integer, found {i}"))
                    .label(node.span, "negative")
                    .code("pipeline::type"),
            );
            None
        }
        _ => {
            errs.push(type_error(node, what, "a non-negative integer"));
            None
        }
    }
}

/// Phase and step names: letters, digits, `_` and `-` (dots separate reference parts).
fn check_ident(node: &Node, what: &str, errs: &mut Vec<Diagnostic>) -> Option<String> {
    let name = key_string(node);
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    if ok {
        Some(name)
    } else {
        errs.push(
            Diagnostic::error(format!("`{name}` is not a valid {what} name"))
                .label(node.span, "invalid name")
                .help(format!(
                    "{what} names start with a letter and use letters, digits, `_` and `-` (dots separate parts of references)"
                ))
                .code("pipeline::name"),
        );
        None
    }
}

pub fn valid_device(d: &str) -> bool {
    matches!(d, "cpu" | "auto" | "cuda")
        || d.strip_prefix("cuda:")
            .is_some_and(|n| n.parse::<u32>().is_ok())
}

// ----- the tree walk -----------------------------------------------------------------------------

fn parse_root(
    root: &Node,
    file: &SourceFile,
    path: PathBuf,
    dir: PathBuf,
    errs: &mut Vec<Diagnostic>,
) -> Option<Pipeline> {
    let Some(map) = root.as_map() else {
        errs.push(type_error(
            root,
            "the pipeline file",
            "a mapping with `version`, `name` and `phases`",
        ));
        return None;
    };
    check_keys(map, TOP_KEYS, "the pipeline", errs);
    let top = Span::new(0, file.text.find('\n').unwrap_or(file.text.len()).max(1));
    let missing = |key: &str, example: &str| {
        Diagnostic::error(format!("missing required key `{key}`"))
            .label(top, "in this pipeline")
            .help(format!("add `{example}` at the top level"))
            .code("pipeline::missing-key")
    };

    match get(map, "version") {
        None => errs.push(missing("version", "version: 1")),
        Some(v) => match v.kind {
            NodeKind::Int(PIPELINE_VERSION) => {}
            NodeKind::Int(n) => errs.push(
                Diagnostic::error(format!("unsupported pipeline version {n}"))
                    .label(v.span, "this forge reads version 1")
                    .help("set `version: 1`")
                    .code("pipeline::version"),
            ),
            _ => errs.push(type_error(v, "`version`", "the integer 1")),
        },
    }
    let name = match get(map, "name") {
        None => {
            errs.push(missing("name", "name: my-pipeline"));
            None
        }
        Some(n) => string(n, "`name`", errs).and_then(|s| {
            let ok = !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
            if ok {
                Some(s)
            } else {
                errs.push(
                    Diagnostic::error(format!("`{s}` is not a valid pipeline name"))
                        .label(n.span, "invalid name")
                        .help("use letters, digits, `_`, `-` and `.`")
                        .code("pipeline::name"),
                );
                None
            }
        }),
    };
    let description = get(map, "description").and_then(|d| string(d, "`description`", errs));

    let mut defaults = Defaults {
        device: "cpu".into(),
        seed: 42,
        executor: None,
        remote: None,
        slurm: crate::slurm::options::SlurmOptions::default(),
    };
    if let Some(d) = get(map, "defaults")
        && let Some(dm) = expect_map(d, "`defaults`", errs)
    {
        check_keys(dm, DEFAULTS_KEYS, "`defaults`", errs);
        if let Some(dev) = get(dm, "device")
            && let Some(s) = string(dev, "`defaults.device`", errs)
        {
            if valid_device(&s) {
                defaults.device = s;
            } else {
                errs.push(
                    Diagnostic::error(format!("unknown device `{s}`"))
                        .label(dev.span, "not a device")
                        .help("use `cpu`, `cuda`, `cuda:N` or `auto`")
                        .code("pipeline::device"),
                );
            }
        }
        if let Some(seed) = get(dm, "seed")
            && let Some(s) = unsigned(seed, "`defaults.seed`", errs)
        {
            defaults.seed = s;
        }
        if let Some(ex) = get(dm, "executor")
            && let Some(s) = string(ex, "`defaults.executor`", errs)
        {
            if EXECUTORS.contains(&s.as_str()) {
                defaults.executor = Some(s);
            } else {
                errs.push(
                    Diagnostic::error(format!("unknown executor `{s}`"))
                        .label(ex.span, "not an executor")
                        .help("use `local` (this machine) or `slurm` (a batch job per step)")
                        .code("pipeline::executor"),
                );
            }
        }
        if let Some(r) = get(dm, "remote") {
            defaults.remote = string(r, "`defaults.remote`", errs);
        }
        if let Some(sl) = get(dm, "slurm") {
            defaults.slurm = slurm_options(sl, "`defaults.slurm`", errs).unwrap_or_default();
        }
    }

    let mut vars = BTreeMap::new();
    if let Some(v) = get(map, "vars")
        && let Some(vm) = expect_map(v, "`vars`", errs)
    {
        for (k, val) in vm {
            vars.insert(key_string(k), val.clone());
        }
    }

    let mut steps = Vec::new();
    match get(map, "phases") {
        None => errs.push(missing("phases", "phases: { <phase>: { steps: { … } } }")),
        Some(p) => {
            if let Some(pm) = expect_map(p, "`phases`", errs) {
                if pm.is_empty() {
                    errs.push(
                        Diagnostic::error("the pipeline has no phases")
                            .label(p.span, "empty")
                            .help("add at least one phase with one step")
                            .code("pipeline::empty"),
                    );
                }
                for (pk, pv) in pm {
                    let Some(phase) = check_ident(pk, "phase", errs) else {
                        continue;
                    };
                    parse_phase(&phase, pk, pv, &mut steps, errs);
                }
            }
        }
    }
    Some(Pipeline {
        file: file.clone(),
        path,
        dir,
        name: name?,
        description,
        defaults,
        vars,
        steps,
    })
}

fn parse_phase(
    phase: &str,
    key: &Node,
    node: &Node,
    steps: &mut Vec<StepDecl>,
    errs: &mut Vec<Diagnostic>,
) {
    let Some(map) = expect_map(node, &format!("phase `{phase}`"), errs) else {
        return;
    };
    check_keys(map, PHASE_KEYS, &format!("phase `{phase}`"), errs);
    let Some(sn) = get(map, "steps") else {
        errs.push(
            Diagnostic::error(format!("phase `{phase}` has no `steps`"))
                .label(key.span, "this phase")
                .help("add `steps:` with at least one step")
                .code("pipeline::missing-key"),
        );
        return;
    };
    let Some(sm) = expect_map(sn, &format!("`{phase}.steps`"), errs) else {
        return;
    };
    for (k, v) in sm {
        let Some(name) = check_ident(k, "step", errs) else {
            continue;
        };
        if let Some(s) = parse_step(phase, &name, k, v, errs) {
            steps.push(s);
        }
    }
}

fn parse_refs(node: &Node, what: &str, errs: &mut Vec<Diagnostic>) -> Vec<RefDecl> {
    let one = |n: &Node, errs: &mut Vec<Diagnostic>| {
        string(n, what, errs).map(|text| RefDecl { text, span: n.span })
    };
    match &node.kind {
        NodeKind::Seq(items) => items.iter().filter_map(|i| one(i, errs)).collect(),
        _ => one(node, errs).into_iter().collect(),
    }
}

fn parse_step(
    phase: &str,
    name: &str,
    key: &Node,
    node: &Node,
    errs: &mut Vec<Diagnostic>,
) -> Option<StepDecl> {
    let id = format!("{phase}.{name}");
    let map = expect_map(node, &format!("step `{id}`"), errs)?;
    check_keys(map, STEP_KEYS, &format!("step `{id}`"), errs);
    let (op, op_span) = match get(map, "op") {
        None => {
            errs.push(
                Diagnostic::error(format!("step `{id}` has no `op`"))
                    .label(key.span, "this step")
                    .help("every step names its operation, e.g. `op: download`")
                    .code("pipeline::missing-key"),
            );
            (String::new(), key.span)
        }
        Some(o) => (string(o, "`op`", errs).unwrap_or_default(), o.span),
    };
    let mut inputs = Vec::new();
    if let Some(i) = get(map, "inputs")
        && let Some(im) = expect_map(i, &format!("`inputs` of `{id}`"), errs)
    {
        for (k, v) in im {
            let refs = parse_refs(v, "an input reference", errs);
            inputs.push(InputDecl {
                name: key_string(k),
                name_span: k.span,
                refs,
            });
        }
    }
    let needs = get(map, "needs")
        .map(|n| parse_refs(n, "a `needs` reference", errs))
        .unwrap_or_default();
    let with = get(map, "with").cloned();
    if let Some(w) = &with
        && !matches!(w.kind, NodeKind::Map(_) | NodeKind::Null)
    {
        errs.push(type_error(w, "`with`", "a mapping of the op's parameters"));
    }
    let mut matrix = Vec::new();
    if let Some(m) = get(map, "matrix")
        && let Some(mm) = expect_map(m, "`matrix`", errs)
    {
        for (k, v) in mm {
            let axis = key_string(k);
            match &v.kind {
                NodeKind::Seq(values) if !values.is_empty() => matrix.push(MatrixAxis {
                    name: axis,
                    span: k.span,
                    values: values.clone(),
                }),
                NodeKind::Seq(_) => errs.push(
                    Diagnostic::error(format!("matrix axis `{axis}` is empty"))
                        .label(v.span, "no values")
                        .help("a matrix axis lists at least one value")
                        .code("pipeline::matrix"),
                ),
                _ => errs.push(type_error(
                    v,
                    &format!("matrix axis `{axis}`"),
                    "a list of values",
                )),
            }
        }
    }
    let mut resources = None;
    if let Some(r) = get(map, "resources")
        && let Some(rm) = expect_map(r, "`resources`", errs)
    {
        check_keys(rm, RESOURCE_KEYS, "`resources`", errs);
        let mut res = Resources::default();
        if let Some(c) = get(rm, "cpus").and_then(|c| unsigned(c, "`resources.cpus`", errs)) {
            res.cpus = c as u32;
        }
        if let Some(g) = get(rm, "gpus").and_then(|g| unsigned(g, "`resources.gpus`", errs)) {
            res.gpus = g as u32;
        }
        resources = Some(res);
    }
    let retries = get(map, "retries")
        .and_then(|r| unsigned(r, "`retries`", errs))
        .map(|r| r as u32);
    let timeout = get(map, "timeout").and_then(|t| match &t.kind {
        NodeKind::Int(s) if *s > 0 => Some(Duration::from_secs(*s as u64)),
        NodeKind::Str(s) => match humantime::parse_duration(s) {
            Ok(d) if !d.is_zero() => Some(d),
            _ => {
                errs.push(
                    Diagnostic::error(format!("`{s}` is not a duration"))
                        .label(t.span, "invalid timeout")
                        .help("write a duration like `90s`, `30m` or `2h`, or a number of seconds")
                        .code("pipeline::duration"),
                );
                None
            }
        },
        _ => {
            errs.push(type_error(t, "`timeout`", "a duration like `30m`"));
            None
        }
    });
    Some(StepDecl {
        phase: phase.into(),
        name: name.into(),
        name_span: key.span,
        op,
        op_span,
        inputs,
        with,
        matrix,
        needs,
        resources,
        retries,
        timeout,
        seed: get(map, "seed").cloned(),
        slurm: get(map, "slurm").and_then(|n| slurm_options(n, "`slurm`", errs)),
    })
}

/// A `slurm:` block: `partition`, `account`, `time`, `mem` (strings) and `extra` (a list of
/// `sbatch` options).
fn slurm_options(
    node: &Node,
    what: &str,
    errs: &mut Vec<Diagnostic>,
) -> Option<crate::slurm::options::SlurmOptions> {
    let map = expect_map(node, what, errs)?;
    check_keys(map, SLURM_KEYS, what, errs);
    let mut o = crate::slurm::options::SlurmOptions::default();
    let field = |name: &str, errs: &mut Vec<Diagnostic>| {
        get(map, name).and_then(|v| string(v, &format!("`slurm.{name}`"), errs))
    };
    o.partition = field("partition", errs);
    o.account = field("account", errs);
    o.time = field("time", errs);
    o.mem = field("mem", errs);
    if let Some(extra) = get(map, "extra") {
        match &extra.kind {
            NodeKind::Seq(items) => {
                for it in items {
                    match &it.kind {
                        NodeKind::Str(s) if s.starts_with('-') => o.extra.push(s.clone()),
                        _ => errs.push(
                            Diagnostic::error("`slurm.extra` holds sbatch options")
                                .label(it.span, "not an option")
                                .help("write each as `--name=value`, e.g. `--qos=high`")
                                .code("pipeline::slurm"),
                        ),
                    }
                }
            }
            _ => errs.push(type_error(
                extra,
                "`slurm.extra`",
                "a list of sbatch options",
            )),
        }
    }
    Some(o)
}

// ----- interpolation -----------------------------------------------------------------------------

/// Values visible to `${…}` in one step instance.
pub struct Scope<'a> {
    pub vars: &'a BTreeMap<String, Node>,
    /// Matrix axis → this instance's value; `None` for steps without a matrix.
    pub matrix: Option<&'a BTreeMap<String, Node>>,
}

/// Substitute `${vars.x}` / `${matrix.axis.field}` in a `with:` tree, producing JSON. A string that
/// is exactly one `${…}` takes the referenced value with its type (`"${vars.d_model}"` → `128`);
/// otherwise the parts are formatted into the string. `$${` is a literal `${`.
pub fn interpolate(
    node: &Node,
    scope: &Scope<'_>,
    errs: &mut Vec<Diagnostic>,
) -> serde_json::Value {
    use serde_json::Value;
    match &node.kind {
        NodeKind::Str(s) if s.contains("${") => interpolate_str(s, node, scope, errs),
        NodeKind::Seq(items) => {
            Value::Array(items.iter().map(|n| interpolate(n, scope, errs)).collect())
        }
        NodeKind::Map(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (key_string(k), interpolate(v, scope, errs)))
                .collect(),
        ),
        _ => node.to_json(),
    }
}

fn interpolate_str(
    s: &str,
    node: &Node,
    scope: &Scope<'_>,
    errs: &mut Vec<Diagnostic>,
) -> serde_json::Value {
    use serde_json::Value;
    let mut out = String::new();
    let mut rest = s;
    let mut whole: Option<Value> = None;
    while let Some(i) = rest.find("${") {
        if i > 0 && rest[..i].ends_with('$') {
            out.push_str(&rest[..i - 1]);
            out.push_str("${");
            rest = &rest[i + 2..];
            continue;
        }
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            errs.push(
                Diagnostic::error("unterminated `${` in a string")
                    .label(node.span, "missing `}`")
                    .help("write `${vars.name}`, or `$${` for a literal `${`")
                    .code("pipeline::interpolation"),
            );
            return Value::String(s.into());
        };
        let expr = after[..end].trim();
        let v = lookup(expr, node, scope, errs);
        if s.trim() == format!("${{{}}}", &after[..end]) {
            whole = v.clone();
        }
        match v {
            Some(Value::String(t)) => out.push_str(&t),
            Some(Value::Number(n)) => out.push_str(&n.to_string()),
            Some(Value::Bool(b)) => out.push_str(&b.to_string()),
            Some(Value::Null) => out.push_str("null"),
            Some(other) if whole.is_none() => {
                errs.push(
                    Diagnostic::error(format!(
                        "`${{{expr}}}` is a {} and cannot be part of a string",
                        json_type(&other)
                    ))
                    .label(node.span, "used inside a string")
                    .help("use it as the whole value (`key: \"${…}\"`) or pick a field of it")
                    .code("pipeline::interpolation"),
                );
            }
            _ => {}
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    whole.unwrap_or(Value::String(out))
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Array(_) => "list",
        serde_json::Value::Object(_) => "mapping",
        _ => "scalar",
    }
}

fn lookup(
    expr: &str,
    node: &Node,
    scope: &Scope<'_>,
    errs: &mut Vec<Diagnostic>,
) -> Option<serde_json::Value> {
    let mut parts = expr.split('.');
    let root = parts.next().unwrap_or("");
    let fail = |errs: &mut Vec<Diagnostic>, msg: String, help: String| {
        errs.push(
            Diagnostic::error(msg)
                .label(node.span, format!("in `${{{expr}}}`"))
                .help(help)
                .code("pipeline::interpolation"),
        );
        None
    };
    let (table, what): (&BTreeMap<String, Node>, &str) = match root {
        "vars" => (scope.vars, "variable"),
        "matrix" => match scope.matrix {
            Some(m) => (m, "matrix axis"),
            None => {
                return fail(
                    errs,
                    format!("`${{{expr}}}` refers to a matrix, but this step has no `matrix`"),
                    "add a `matrix:` to the step or use `${vars.…}`".into(),
                );
            }
        },
        other => {
            return fail(
                errs,
                format!("unknown interpolation root `{other}`"),
                "interpolations are `${vars.<name>}` or `${matrix.<axis>[.<field>]}`".into(),
            );
        }
    };
    let Some(name) = parts.next().filter(|n| !n.is_empty()) else {
        return fail(
            errs,
            format!("`${{{expr}}}` names no {what}"),
            format!("write `${{{root}.<name>}}`"),
        );
    };
    let Some(mut cur) = table.get(name) else {
        let hint = did_you_mean(name, table.keys().map(String::as_str)).unwrap_or_else(|| {
            if table.is_empty() {
                format!("no {what}s are defined")
            } else {
                format!(
                    "defined {what}s: {}",
                    table.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            }
        });
        return fail(errs, format!("unknown {what} `{name}`"), hint);
    };
    for field in parts {
        if let Some(n) = cur.get(field) {
            cur = n;
        } else {
            let fields: Vec<String> = cur
                .as_map()
                .map(|m| m.iter().map(|(k, _)| key_string(k)).collect())
                .unwrap_or_default();
            let hint = did_you_mean(field, fields.iter().map(String::as_str))
                .unwrap_or_else(|| format!("available fields: {}", fields.join(", ")));
            return fail(errs, format!("`{name}` has no field `{field}`"), hint);
        }
    }
    if root == "matrix" {
        // Matrix values may themselves use `${vars.…}`.
        return Some(interpolate(
            cur,
            &Scope {
                vars: scope.vars,
                matrix: None,
            },
            errs,
        ));
    }
    Some(cur.to_json())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<Pipeline, Invalid> {
        let file = SourceFile {
            name: "t.yaml".into(),
            text: Arc::new(s.into()),
        };
        parse(file, "t.yaml".into(), ".".into())
    }

    #[test]
    fn collects_all_errors_at_once() {
        let e = parse_str("version: 2\nname: ok\nphazes: {}\n").unwrap_err();
        let msgs: Vec<_> = e.diagnostics.iter().map(|d| d.message.as_str()).collect();
        // In file order; a missing key points at the top of the file.
        let expected = [
            "missing required key `phases`",
            "unsupported pipeline version 2",
            "unknown key `phazes` in the pipeline",
        ];
        assert_eq!(msgs, expected);
        assert_eq!(
            e.diagnostics[2].help.as_deref(),
            Some("did you mean `phases`?")
        );
    }

    #[test]
    fn interpolation_keeps_types_and_formats_strings() {
        let p = parse_str(
            "version: 1\nname: t\nvars: { d: 128, tag: x }\nphases:\n  a:\n    steps:\n      s:\n        op: exec\n        with: { n: \"${vars.d}\", s: \"m-${vars.tag}-${vars.d}\", lit: \"$${vars.d}\" }\n",
        )
        .unwrap();
        let mut errs = Vec::new();
        let v = interpolate(
            p.steps[0].with.as_ref().unwrap(),
            &Scope {
                vars: &p.vars,
                matrix: None,
            },
            &mut errs,
        );
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(
            v,
            serde_json::json!({"n": 128, "s": "m-x-128", "lit": "${vars.d}"})
        );
    }

    #[test]
    fn matrix_values_may_use_vars() {
        let p = parse_str(
            "version: 1\nname: t\nvars: { n: 7 }\nphases:\n  a:\n    steps:\n      s:\n        op: exec\n        matrix: { v: [{ name: x, steps: \"${vars.n}\" }] }\n        with: { k: \"${matrix.v.steps}\" }\n",
        )
        .unwrap();
        let combo: BTreeMap<String, Node> =
            [("v".to_string(), p.steps[0].matrix[0].values[0].clone())].into();
        let mut errs = Vec::new();
        let v = interpolate(
            p.steps[0].with.as_ref().unwrap(),
            &Scope {
                vars: &p.vars,
                matrix: Some(&combo),
            },
            &mut errs,
        );
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(v, serde_json::json!({"k": 7}));
    }
}
